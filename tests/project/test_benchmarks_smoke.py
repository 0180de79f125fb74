"""The benchmark command keeps working: ``benchmarks/run.py --smoke`` runs every benchmark at its tiniest size.

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


def test_smoke_run_writes_every_benchmark(clusters, cluster_venv, tmp_path):
    out = tmp_path / "bench.json"
    # the benchmarks start `python -m pilot` servers from temporary directories: this tree must be importable
    # there whether or not (and wherever) the package is installed
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, timeout=540, cwd=tmp_path, env=env, check=False)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke" and data["errors"] == {}
    assert {"date", "cores", "memory_gib", "os", "loadavg_start", "loadavg_end"} <= set(data["machine"])
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
    assert "ours/baseline" in res.stdout
    assert "results:" in res.stdout and "peak RSS" in res.stdout
