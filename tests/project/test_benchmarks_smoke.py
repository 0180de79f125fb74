"""The benchmark command keeps working: ``benchmarks/run.py --smoke`` runs every benchmark at its tiniest size
(in ``--only`` groups at the same time: together they are every benchmark, see ``GROUPS``).

Not a benchmark and no timing assertions: it checks that the command exits 0 and writes a JSON file with the
expected structure, and that the numbers it reports are consistent with what was asked (the right count of
pilots, every no-op Firework completed, the campaign finished), so that a benchmark that silently measures
nothing fails here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


#: the benchmarks in groups that ``run.py --smoke --only`` runs at the same time: the first waits mostly on the
#: real SLURM cluster (its jobs, sacct), the others on their own local processes; one after the other they leave
#: this 2-core machine mostly idle (load average below 1). The SLURM users stay in one group, one after the
#: other, so that none sees another's jobs in the queue (submission counts the user's queued jobs).
GROUPS = (("submission", "waste", "scale"), ("overhead", "dbserver"), ("replay", "packing"))


def _smoke(group: tuple[str, ...], tmp_path: Path) -> subprocess.Popen[str]:
    out = tmp_path / f"bench-{group[0]}.json"
    # the benchmarks start `python -m pilot` servers from temporary directories: this tree must be importable
    # there whether or not (and wherever) the package is installed
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    cwd = tmp_path / group[0]
    cwd.mkdir()
    return subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--only",
                             ",".join(group), "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def _run_every_group(tmp_path: Path) -> tuple[dict, str]:
    """Every group at once; each run's own checks; their results merged into one document, and their stdout."""
    procs = [_smoke(group, tmp_path) for group in GROUPS]
    try:
        outputs = [p.communicate(timeout=540) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    data: dict = {"benchmarks": {}, "loadavg": {}, "goals": []}
    stdout = ""
    for group, p, (so, se) in zip(GROUPS, procs, outputs, strict=True):
        assert p.returncode == 0, f"{group}: stdout:\n{so[-3000:]}\nstderr:\n{se[-3000:]}"
        part = json.loads((tmp_path / f"bench-{group[0]}.json").read_text())
        assert part["mode"] == "smoke" and part["errors"] == {} and part["only"] == list(group)
        assert {"date", "cores", "memory_gib", "os", "loadavg_start", "loadavg_end"} <= set(part["machine"])
        assert set(part["benchmarks"]) == set(part["loadavg"]) == set(group)
        assert "results:" in so and "peak RSS" in so, so[-3000:]
        for key in ("benchmarks", "loadavg"):
            data[key].update(part[key])
        data["goals"] += part["goals"]
        stdout += so
    return data, stdout


def test_smoke_run_writes_every_benchmark(clusters, cluster_venv, tmp_path):
    data, stdout = _run_every_group(tmp_path)
    b = data["benchmarks"]
    assert set(b) == {"submission", "overhead", "waste", "scale", "dbserver", "replay", "packing"}
    assert set(data["loadavg"]) == set(b)

    (row,) = b["submission"]["rows"]
    assert row["ours"]["jobs"] == math.ceil(row["ready"] / 4) == row["right_number"]
    assert row["qlaunch"]["jobs"] >= 1 and row["qlaunch"]["commands"]["sbatch"] == row["qlaunch"]["jobs"]
    for side in ("ours", "qlaunch"):
        assert {"wall_s", "scheduler_calls", "ssh_connects", "jobs_in_queue"} <= set(row[side])

    for side in ("ours", "rlaunch"):
        o = b["overhead"][side]
        assert o["fireworks"] == 10 and o["fw_per_s"] > 0 and o["peak_rss_mib"] > 0
    assert b["overhead"]["fork_breakdown"]["child_first_rocket_ms"] > 0

    w = b["waste"]
    assert w["systems"] == ["ours", "rlaunch", "rlaunch_close", "rlaunch_maxh"]
    for side in w["systems"]:
        m = w[side]
        assert m["campaign_complete"] is True
        assert m["work_done_s"] >= m["work_required_s"] - 0.5
        assert {"segments_killed_by_scheduler", "work_redone_s", "utilisation_busy"} <= set(m)
        # every second of pilot time is a segment's or one of the losses (sacct's times are whole seconds)
        lost = m["lost_startup_s"] + m["lost_gaps_s"] + m["lost_tail_s"] + m["lost_empty_jobs_s"]
        assert abs(m["busy_s"] + lost - m["pilot_time_s"]) <= 2.0 * m["pilots_started"] + 1.0, m

    (srow,) = b["scale"]["rows"]
    assert srow["fireworks"] == 200 and len(srow["cycles"]) == 2
    assert srow["cycles"][0]["submitted"] == b["scale"]["clusters"]
    assert srow["cycles"][1]["submitted"] == 0 and srow["cycles"][1]["db_commands"] > 0
    assert srow["peak_rss_mib"] > 0

    d = b["dbserver"]
    assert d["errors"] == {} and set(d["engines"]) == {"baseline", "ours"}
    for side, e in d["engines"].items():
        # each server ran the intended code: the extracted baseline commit, or this tree
        assert e["pilot_file"] == (str(REPO / "pilot" / "__init__.py") if side == "ours" else
                                   str(Path(e["tree"]) / "pilot" / "__init__.py"))
        # every Firework went in, 2/3 of them READY, and the restored server counts them all
        assert e["load"]["fireworks"] == e["fireworks_counted"] == 1000
        assert e["ready_counted"] == e["load"]["states"]["READY"] == e["blocking"]["count_ready"]["result"]
        assert abs(e["ready_counted"] - 1000 * 2 / 3) < 10
        assert e["snapshot"]["exit_code"] == 0 and e["snapshot"]["peak_mib"] > 0
        for key in ("count_ready", "find_one_fw_id", "demand", "reserve", "checkout_fw"):
            assert e[key]["runs"] >= 1 and e[key]["median_s"] > 0
        assert e["blocking"]["unindexed_count_all"]["result"] == 1000
        assert e["blocking"]["unindexed_find_one_match"]["result"] == 1
    p = b["packing"]   # every Firework ran, never more at once than the 4 slots (FireWorks' own launch records)
    for side in ("ours", "rlaunch"):
        x = p[side]
        assert x["fireworks"] == 8 and x["fw_per_s"] > 0 and 1 <= x["max_running"] <= 4 and x["peak_rss_mib"] > 0
        assert 0 < x["utilisation"] <= 1 and 0 < x["mean_running"] <= 4
    r = b["replay"]   # tests/project/test_replay_bench.py checks the campaign itself
    assert r["audit"]["problems"] == [] and r["complete"] is True
    assert r["attempts"] == r["segments_done"] + r["killed"]
    # every goal row of issue 18 that this run measured is in the JSON, with its numbers
    names = {g["name"] for g in data["goals"]}
    assert any("utilisation" in n for n in names) and any("replay: makespan" in n for n in names), names
    assert "ours/baseline" in stdout
