"""Benchmark 2, pilot overhead: N no-op Fireworks through one ``pilot worker`` versus ``rlaunch rapidfire``.

Both run locally (as this user) against the same database server (the embedded server, or ``MONGODB_URI``),
each on its own fresh database holding N READY one-Firework workflows whose only task is
``PyTask(func="os.getpid")``; both log at FireWorks' default level (INFO) into a file.

* ours: ``python -m pilot worker -l LP -c CAT --name bench-worker --no-deadline --idle-timeout 0
  --launch-dir DIR`` (exits as soon as no READY Firework is left);
* FireWorks: ``rlaunch -l LP -w FWORKER rapidfire`` in DIR (exits when nothing is READY or will be).

With ``repeat`` > 1 the two alternate (ours first, then rlaunch first, ...) and the median run of each is
reported, with the range. Reported: wall time from process start to exit and Fireworks per second (N / wall),
the steady rate from the launches themselves ((N - 1) / (last launch start - first launch start), without
interpreter start-up), the database commands per Firework (served by the embedded server, ``pilotStats``),
and peak RSS of the process and of its children (the worker forks one child per Firework).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import BenchError, Database, PeakSampler, short_id


def _add_noops(lp: Any, category: str, n: int) -> None:
    from fireworks import Firework
    from fireworks.user_objects.firetasks.script_task import PyTask

    for k in range(0, n, 500):
        lp.bulk_add_wfs([Firework([PyTask(func="os.getpid")], spec={"_category": category}, name=f"noop-{i}")
                         for i in range(k, min(n, k + 500))])


def _launch_times(lp: Any) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of every COMPLETED launch, from FireWorks' own state history."""
    out = []
    for d in lp.launches.find({"state": "COMPLETED"}, {"state_history": 1}):
        hist = {h["state"]: h for h in d.get("state_history") or []}
        try:
            start = _epoch(hist["RUNNING"]["created_on"])
            end = _epoch(hist["COMPLETED"]["created_on"])
        except KeyError:
            continue
        out.append((start, end))
    return sorted(out)


def _epoch(v: Any) -> float:
    if isinstance(v, datetime.datetime):
        dt = v
    else:
        dt = datetime.datetime.fromisoformat(str(v))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def _rlaunch() -> str:
    exe = Path(sys.executable).parent / "rlaunch"
    if exe.exists():
        return str(exe)
    found = shutil.which("rlaunch")
    if not found:
        raise BenchError(f"rlaunch not found next to {sys.executable} nor on PATH: pip install fireworks")
    return found


def run_one(db: Database, which: str, n: int, work: Path, timeout: float) -> dict[str, Any]:
    lp = db.launchpad()
    cat = f"noop{short_id()}"
    _add_noops(lp, cat, n)
    d = work / which
    d.mkdir(parents=True)
    lp_file = d / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    if which == "ours":
        argv = [sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", cat, "--name", "bench-worker",
                "--no-deadline", "--idle-timeout", "0", "--launch-dir", str(d)]
    else:
        fw_file = d / "my_fworker.yaml"
        fw_file.write_text(yaml.safe_dump({"name": "bench-rlaunch", "category": cat, "query": "{}"}))
        argv = [_rlaunch(), "-l", str(lp_file), "-w", str(fw_file), "rapidfire"]
    before = db.server_stats(lp)
    log_path = d / "output.log"
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, TQDM_DISABLE="1"))
        sampler = PeakSampler(proc.pid).start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
            raise BenchError(f"{which}: {n} no-op Fireworks not done in {timeout:.0f} s; log: {log_path}") from None
        finally:
            rss = sampler.stop()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"{which} exited {rc}: {log_path.read_text()[-1500:]}")
    srv = Database.stats_diff(db.server_stats(lp), before)
    states: dict[str, int] = {}
    for doc in lp.fireworks.find({}, {"state": 1}):
        states[doc["state"]] = states.get(doc["state"], 0) + 1
    times = _launch_times(lp)
    steady = None
    if len(times) > 1 and times[-1][0] > times[0][0]:
        steady = (len(times) - 1) / (times[-1][0] - times[0][0])
    per_fw = [e - s for s, e in times]
    gaps = [times[i + 1][0] - times[i][1] for i in range(len(times) - 1)]
    db.drop(lp)
    if states.get("COMPLETED") != n:
        raise BenchError(f"{which}: expected {n} COMPLETED Fireworks, got {states}; log: {log_path}")
    return {"fireworks": n, "wall_s": wall, "fw_per_s": n / wall, "steady_fw_per_s": steady,
            "mean_launch_s": sum(per_fw) / len(per_fw) if per_fw else None,
            "mean_gap_s": sum(gaps) / len(gaps) if gaps else None,
            "db_commands_per_fw": (sum(srv.values()) / n) if srv else None, "db_commands_by_name": srv,
            **rss}


def run(n: int, repeat: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    db = Database().start()
    work = Path(tempfile.mkdtemp(prefix="pilot-bench-overhead-"))
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "rlaunch": []}
    try:
        for k in range(repeat):
            order = ("ours", "rlaunch") if k % 2 == 0 else ("rlaunch", "ours")
            for which in order:
                through = "pilot worker" if which == "ours" else "rlaunch rapidfire"
                log(f"overhead: {n} no-op Fireworks through {through}"
                    f" (run {k + 1}/{repeat}) ...")
                runs[which].append(run_one(db, which, n, work / f"r{k}", timeout=max(300.0, n * 2.0)))
        log("overhead: where a forked child's time goes ...")
        breakdown = fork_breakdown(db, min(30, max(5, n // 10)), work)
    finally:
        server_mib = db.server_peak_mib()
        db.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(rs, key=lambda r: r["fw_per_s"])
        return dict(ordered[(len(ordered) - 1) // 2],
                    fw_per_s_range=[ordered[0]["fw_per_s"], ordered[-1]["fw_per_s"]])

    return {"fireworks": n, "repeat": repeat, "ours": median(runs["ours"]), "rlaunch": median(runs["rlaunch"]),
            "all_runs": runs, "fork_breakdown": breakdown, "server_peak_rss_mib": server_mib}


# ============================================================================ where the time goes
def _child_rockets(lp_dict: dict[str, Any], fworker: Any, pause: float) -> tuple[int, float, float, float, float]:
    """Fork a child that connects (new client + hello), waits ``pause`` s (as a pre-forked standby child
    does), runs two Rockets and exits. Returns (pid, fork s, connect s, first rocket s, second rocket s)."""
    import json

    from fireworks import LaunchPad
    from fireworks.core.rocket_launcher import launch_rocket

    r, w = os.pipe()
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t1 = time.perf_counter()
            child_lp = LaunchPad.from_dict(lp_dict)
            child_lp.connection.admin.command("hello")
            t2 = time.perf_counter()
            time.sleep(pause)
            t3 = time.perf_counter()
            launch_rocket(child_lp, fworker, strm_lvl="ERROR")
            t4 = time.perf_counter()
            launch_rocket(child_lp, fworker, strm_lvl="ERROR")
            t5 = time.perf_counter()
            os.write(w, json.dumps([t1 - t, t2 - t1, t4 - t3, t5 - t4]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    fork_s, conn_s, first, second = json.loads(data)
    return pid, fork_s, conn_s, first, second


def breakdown_main(argv: list[str]) -> int:
    """``run.py _fork-breakdown --lp-file F --category C --n K --dir D``: what running a Firework in a freshly
    forked child with its own LaunchPad client costs (fork, new client + hello, launch_rocket, exit; the
    design of the first pilot worker, before its fork server and worker-side LaunchPad calls), next to
    ``launch_rocket`` in-process as rlaunch does; the variants are interleaved (one of each
    per round) so that the load of the shared machine affects them alike. Needs 1 + 7K READY no-op Fireworks
    of C. Prints one JSON line of medians in milliseconds."""
    import argparse
    import json
    import statistics

    from fireworks import FWorker, LaunchPad
    from fireworks.core.rocket_launcher import launch_rocket
    from fireworks.utilities.fw_utilities import get_my_host, get_my_ip

    ap = argparse.ArgumentParser(prog="run.py _fork-breakdown")
    ap.add_argument("--lp-file", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    os.chdir(a.dir)
    get_my_host()
    get_my_ip()
    lp = LaunchPad.from_file(a.lp_file)
    plain = lp.to_dict()
    warm_pool = dict(plain, mongoclient_kwargs={"minPoolSize": 2})
    fworker = FWorker(name="bench-breakdown", category=a.category)
    launch_rocket(lp, fworker, strm_lvl="ERROR")   # resolves the task class once, as the worker's children do
    cols: dict[str, list[float]] = {k: [] for k in (
        "in_process_rocket", "fork", "connect", "child_first_rocket", "child_second_rocket",
        "child_first_rocket_after_pause", "warm_pool_first_rocket")}
    for _ in range(a.n):
        t = time.perf_counter()
        launch_rocket(lp, fworker, strm_lvl="ERROR")
        cols["in_process_rocket"].append(time.perf_counter() - t)
        _, f, c, first, second = _child_rockets(plain, fworker, 0.0)
        cols["fork"].append(f)
        cols["connect"].append(c)
        cols["child_first_rocket"].append(first)
        cols["child_second_rocket"].append(second)
        cols["child_first_rocket_after_pause"].append(_child_rockets(plain, fworker, 0.3)[3])
        cols["warm_pool_first_rocket"].append(_child_rockets(warm_pool, fworker, 0.3)[3])
    out: dict[str, Any] = {"fireworks": a.n}
    for k, v in cols.items():
        out[f"{k}_ms"] = round(1000 * statistics.median(v), 1)
    print(json.dumps(out))
    return 0


def fork_breakdown(db: Database, n: int, work: Path) -> dict[str, Any]:
    import json

    lp = db.launchpad()
    cat = f"brk{short_id()}"
    _add_noops(lp, cat, 1 + 7 * n)
    d = work / "breakdown"
    d.mkdir(parents=True)
    lp_file = d / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    try:
        res = subprocess.run([sys.executable, str(Path(__file__).with_name("run.py")), "_fork-breakdown",
                              "--lp-file", str(lp_file), "--category", cat, "--n", str(n), "--dir", str(d)],
                             capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            raise BenchError(f"fork breakdown failed (exit {res.returncode}): {res.stderr[-1500:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        db.drop(lp)
