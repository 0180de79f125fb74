"""Throughput of ``pilot worker`` against ``rlaunch rapidfire`` on the same embedded LaunchPad server.

Not a timed unit test (timings on a shared machine say nothing about correctness): it runs only with
``PILOT_BENCH=1`` and prints its numbers. Each round resets the database, adds N no-op Fireworks, and times the
whole process (start-up included) of ``rlaunch rapidfire`` and of ``pilot worker`` until each has drained them;
the two alternate so that both see the same machine load.

    PILOT_BENCH=1 PILOT_BENCH_N=500 PILOT_BENCH_ROUNDS=3 python3 -m pytest tests/test_worker_bench.py -s -q
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fireworks import Firework, LaunchPad, ScriptTask, Workflow
from fireworks.user_objects.firetasks.script_task import PyTask

from tests.helpers import REPO, EmbeddedServer

pytestmark = pytest.mark.skipif(os.environ.get("PILOT_BENCH") != "1", reason="benchmark: set PILOT_BENCH=1")

N = int(os.environ.get("PILOT_BENCH_N", "500"))
ROUNDS = int(os.environ.get("PILOT_BENCH_ROUNDS", "3"))


def _fill(lp: LaunchPad, task_kind: str) -> None:
    lp.reset("", require_password=False, max_reset_wo_password=10**9)
    if task_kind == "pytask":
        def task():
            return PyTask(func="math.floor", args=[1.5])
    else:
        def task():
            return ScriptTask.from_str("true")
    lp.bulk_add_wfs([Workflow([Firework([task()], spec={"_category": "bench"}, name=f"noop-{i}")])
                     for i in range(N)])


def _timed(cmd: list[str], cwd: Path) -> float:
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return elapsed


@pytest.mark.parametrize("task_kind", ["pytask", "script"])
def test_worker_vs_rapidfire(tmp_path, task_kind):
    server = EmbeddedServer(tmp_path / "db").start()
    try:
        lp = LaunchPad(host=server.uri, name="bench", uri_mode=True, strm_lvl="ERROR")
        lp_file = tmp_path / "lp.yaml"
        lp.to_file(str(lp_file))
        rlaunch = str(Path(sys.executable).with_name("rlaunch"))
        runs: dict[str, list[float]] = {"rlaunch rapidfire": [], "pilot worker": [], "pilot worker --deadline": []}
        for _ in range(ROUNDS):
            _fill(lp, task_kind)
            runs["rlaunch rapidfire"].append(_timed(
                [rlaunch, "-l", str(lp_file), "--loglvl", "ERROR", "rapidfire"], tmp_path / "rf"))
            assert lp.fireworks.count_documents({"state": "COMPLETED"}) == N
            _fill(lp, task_kind)
            runs["pilot worker"].append(_timed(
                [sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", "bench", "-n", "bench-1",
                 "--no-deadline", "--idle-timeout", "0", "--fw-log-level", "ERROR"], tmp_path / "pw"))
            assert lp.fireworks.count_documents({"state": "COMPLETED"}) == N
            _fill(lp, task_kind)
            runs["pilot worker --deadline"].append(_timed(
                [sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", "bench", "-n", "bench-1",
                 "--deadline", str(time.time() + 7200), "--margin", "60", "--idle-timeout", "0",
                 "--fw-log-level", "ERROR"], tmp_path / "pw"))
            assert lp.fireworks.count_documents({"state": "COMPLETED"}) == N
        print(f"\n{N} no-op Fireworks ({task_kind}), {ROUNDS} rounds, embedded server, {os.cpu_count()} CPUs "
              f"(repo {REPO.name}):")
        for what, times in runs.items():
            best, med = min(times), statistics.median(times)
            print(f"  {what:26s} best {best:6.1f} s ({N / best:5.1f} FW/s)  median {med:6.1f} s "
                  f"({N / med:5.1f} FW/s)  all: {', '.join(f'{t:.1f}' for t in times)}")
    finally:
        server.stop()
