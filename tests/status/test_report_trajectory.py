"""Nanoseconds of trajectory in ``pilot report`` (issue 22): real GROMACS and OpenMM segments run by FireWorks on
FWorkers named like two clusters' pilots, plus older segment records without a time step on a third cluster.

The expected numbers come from the programs themselves, never from pilot.report or the segment tasks: GROMACS'
time step and initial step from ``gmx dump -s`` of the .tpr, the steps of each segment from the "Writing
checkpoint, step N" lines mdrun writes into md.log at the end of every segment; OpenMM's step size from the
deserialized Integrator (``getStepSize()``) and the steps from the final State's ``getStepCount()``. The core
hours are the pilots' charged core-seconds (set here), summed by this file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.status.test_report import check_png, iso_to_epoch

openmm = pytest.importorskip("openmm", reason="OpenMM not installed (pip install 'fireworks-pilot[md]')")
pytestmark = pytest.mark.skipif(shutil.which("gmx") is None, reason="GROMACS `gmx` not on PATH")

G_NSTEPS = 4000                      # ~2 s of mdrun here: 2-4 segments of ~1 s
G_ENGINE = {"ntmpi": 1, "ntomp": 1, "pin": "off"}
G_ENV = {"GMX_MAXBACKUP": "-1", "OMP_NUM_THREADS": "1"}
O_DT = 0.003                         # not GROMACS' 2 fs: the time step must come from each engine's own input
O_ENGINE = {"nsteps": 1200, "segment_steps": 500, "platform": "CPU", "platform_properties": {"Threads": "1"},
            "traj_interval": 100, "temperature": 300, "seed": 1, "chunk_seconds": 0.2}
O_ENV = {"OPENMM_CPU_THREADS": "1"}
CORES = {"east": 4, "west": 2}       # charged by the "scheduler" (the pilots' usage); "old" has none: 1 assumed


# ============================================================================ what the programs say
def gmx_out(*args: str, cwd: Path) -> str:
    res = subprocess.run(["gmx", "-quiet", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **G_ENV})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def gromacs_numbers(run_dir: Path) -> dict:
    """dt and init-step of the .tpr (`gmx dump -s`), and each segment's steps from md.log's final checkpoints."""
    dump = gmx_out("dump", "-s", "md.tpr", cwd=run_dir)
    dt_ps = float(re.search(r"^\s+dt\s+=\s+(\S+)$", dump, re.M).group(1))
    init = int(re.search(r"^\s+init-step\s+=\s+(\S+)$", dump, re.M).group(1))
    marks = [int(s) for s in re.findall(r"^Writing checkpoint, step (\d+) at", (run_dir / "md.log").read_text(),
                                        re.M)]
    steps = [b - a for a, b in zip([init, *marks], marks, strict=False)]
    final = int(re.search(r"^step = (\d+)$", gmx_out("dump", "-cp", "md.cpt", cwd=run_dir), re.M).group(1))
    assert marks[-1] == final == init + G_NSTEPS
    return {"dt_ps": dt_ps, "steps": steps}


def openmm_numbers(run_dir: Path) -> dict:
    """The integrator's step size and the final state's step count, as OpenMM reads its own files."""
    integ = openmm.XmlSerializer.deserialize((run_dir / "integrator.xml").read_text())
    state = openmm.XmlSerializer.deserialize((run_dir / "md_state.xml").read_text())
    return {"dt_ps": integ.getStepSize().value_in_unit(openmm.unit.picosecond), "steps": state.getStepCount()}


# ============================================================================ the campaign
def _rapidfire(lp, fworker: str, tmp: Path) -> None:
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    launch = tmp / f"launch-{fworker}"
    launch.mkdir()
    rapidfire(lp, FWorker(name=fworker, category="md"), m_dir=str(launch), nlaunches=0, sleep_time=0.2,
              strm_lvl="ERROR")


def _pilot(job: str, cluster: str, start: float, end: float, cores: int | None) -> dict:
    doc = {"_id": job, "job_name": job, "cluster": cluster, "category": "md", "state": "COMPLETED",
           "submit_time": start - 5, "start_time": start, "end_time": end, "fworker": f"{cluster}-{job}",
           "profile": "default", "walltime": 600.0}
    if cores:
        secs = int(end - start)
        doc["usage"] = {"cpus": cores, "seconds": secs, "core_seconds": cores * secs, "account": "chem",
                        "start": start, "end": start + secs, "final": True}
    return doc


def _old_records(lp, source_fworker: str) -> int:
    """Copies of the OpenMM segments' launches as the segment tasks wrote them before ``dt_ps`` existed (the same
    record without that key), by the pilot of cluster ``old``; returns how many advanced."""
    docs = list(lp.launches.find({"fworker.name": source_fworker, "state": "COMPLETED"}))
    for i, d in enumerate(docs):
        d.pop("_id")
        d["launch_id"] = 900_000 + i
        d["fworker"]["name"] = "old-o3"
        d["action"]["stored_data"].pop("dt_ps")
    lp.launches.insert_many(docs)
    return sum(1 for d in docs if d["action"]["stored_data"]["steps_done"] > 0)


@pytest.fixture(scope="module")
def campaign(mongo_uri):
    """GROMACS segments on ``east-g1``, OpenMM segments on ``west-o1``, old records on ``old-o3``, and their pilots."""
    from fireworks import LaunchPad

    from tasks.testsystems import gromacs_water_box, openmm_water_box
    from tasks.workflow import make_md_workflow

    tmp = Path(tempfile.mkdtemp(prefix="pilot-traj-"))
    name = f"pilottest_{uuid.uuid4().hex[:12]}"
    lp = LaunchPad(host=mongo_uri, name=name, uri_mode=True, logdir=None, strm_lvl="ERROR")
    lp.reset("", require_password=False, max_reset_wo_password=1000)
    cwd = os.getcwd()
    try:
        t0 = time.time()
        gdir, odir = tmp / "g", tmp / "o"
        gdir.mkdir()
        shutil.copy(gromacs_water_box(tmp / "gbuild", G_NSTEPS), gdir / "md.tpr")
        lp.add_wf(make_md_workflow(gdir, "gromacs", "gwater", segment_hours=0.0003, engine_params=G_ENGINE,
                                   env=G_ENV))
        _rapidfire(lp, "east-g1", tmp)
        openmm_water_box(odir, seed=5, dt_ps=O_DT)
        lp.add_wf(make_md_workflow(odir, "openmm", "omm", segment_hours=0.0005, engine_params=O_ENGINE, env=O_ENV))
        _rapidfire(lp, "west-o1", tmp)
        t1 = time.time()
        n_old = _old_records(lp, "west-o1")
        # the pilots ran from before the first segment to after the last, inside one UTC day
        midnight = dt.datetime.fromtimestamp(t0, dt.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                          microsecond=0).timestamp()
        a, b = max(t0 - 30, midnight), min(t1, midnight + 86399)    # ended before the report's "now"
        lp.db["pilots"].insert_many([_pilot("g1", "east", a, b, CORES["east"]),
                                     _pilot("o1", "west", a, b, CORES["west"]), _pilot("o3", "old", a, b, None)])
        lp_file = tmp / "my_launchpad.yaml"
        lp.to_file(str(lp_file))
        yield {"lp": lp, "lp_file": lp_file, "tmp": tmp, "gromacs": gromacs_numbers(gdir),
               "openmm": openmm_numbers(odir), "n_old": n_old, "window": (a, b), "t1": t1}
    finally:
        os.chdir(cwd)   # the Rockets stay in their launch dirs
        lp.connection.drop_database(name)
        shutil.rmtree(tmp, ignore_errors=True)


def expected_days(c: dict) -> dict[tuple[str, str], dict]:
    """Per (UTC day, cluster): segments from the raw launches, ns from the programs' numbers, core hours from
    the pilots' core-seconds (all pilot time is on one day)."""
    lp, g, o = c["lp"], c["gromacs"], c["openmm"]
    out: dict[tuple[str, str], dict] = {}
    cluster = {"east-g1": "east", "west-o1": "west", "old-o3": "old"}
    for ln in lp.launches.find({"state": "COMPLETED"}):
        sd = ln["action"]["stored_data"]
        day = dt.datetime.fromtimestamp(iso_to_epoch(ln["time_end"]), dt.timezone.utc).strftime("%Y-%m-%d")
        row = out.setdefault((day, cluster[ln["fworker"]["name"]]), {"segments": 0, "ns": 0.0})
        row["segments"] += 1
        if cluster[ln["fworker"]["name"]] == "east":   # mdrun's own count for this segment (1-based number)
            row["ns"] += g["steps"][sd["segment"] - 1] * g["dt_ps"] / 1000
    west_days = [k for k in out if k[1] == "west"]
    if len(west_days) == 1:     # OpenMM's numbers are totals: a run across UTC midnight is checked as a sum only
        out[west_days[0]]["ns"] = o["steps"] * o["dt_ps"] / 1000
    a, b = c["window"]
    day = dt.datetime.fromtimestamp(a, dt.timezone.utc).strftime("%Y-%m-%d")
    for name, cores in (("east", CORES["east"]), ("west", CORES["west"]), ("old", 1)):
        out.setdefault((day, name), {"segments": 0, "ns": 0.0})["core_hours"] = (
            cores * int(b - a) if cores > 1 else b - a) / 3600
    return out


def run_report(c: dict, *args: str) -> subprocess.CompletedProcess[str]:
    empty = c["tmp"] / "no-config"
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(empty), "report", "-l",
                           str(c["lp_file"]), *args], capture_output=True, text=True, check=False, timeout=120)


# ============================================================================ tests
def test_segments_record_their_steps_and_time_step(campaign):
    """What each engine's segments store, against the engine's own numbers."""
    lp, g, o = campaign["lp"], campaign["gromacs"], campaign["openmm"]
    east = sorted((ln["action"]["stored_data"] for ln in lp.launches.find({"fworker.name": "east-g1"})),
                  key=lambda s: s["segment"])
    west = [ln["action"]["stored_data"] for ln in lp.launches.find({"fworker.name": "west-o1"})]
    assert len(east) >= 2 and len(west) >= 3, (len(east), len(west))
    assert [s["steps_done"] for s in east] == g["steps"]          # per segment, as mdrun logged its checkpoints
    assert {s["dt_ps"] for s in east} == {g["dt_ps"]} == {0.002}
    assert sum(s["steps_done"] for s in west) == o["steps"] == O_ENGINE["nsteps"]
    assert [s["dt_ps"] for s in west] == [pytest.approx(o["dt_ps"], rel=1e-12)] * len(west)
    assert o["dt_ps"] == pytest.approx(O_DT, rel=1e-12)


def test_json_trajectory_rows_match_the_programs(campaign, tmp_path):
    png = tmp_path / "t.png"
    res = run_report(campaign, "--json", "--plot", str(png))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    tr = doc["trajectory"]
    g, o = campaign["gromacs"], campaign["openmm"]
    east_ns, west_ns = sum(g["steps"]) * g["dt_ps"] / 1000, o["steps"] * o["dt_ps"] / 1000
    assert east_ns == pytest.approx(0.008) and west_ns == pytest.approx(0.0036)   # 4000 x 2 fs, 1200 x 3 fs
    by = {r["cluster"]: r for r in tr["clusters"]}
    assert by["east"]["ns"] == pytest.approx(east_ns, abs=1e-6)
    assert by["west"]["ns"] == pytest.approx(west_ns, abs=1e-6)
    # the old records: counted as segments, their trajectory unknown (null), never zero
    assert by["old"]["segments"] == len(list(campaign["lp"].launches.find({"fworker.name": "old-o3"})))
    assert (by["old"]["ns"], by["old"]["ns_unknown_segments"]) == (None, campaign["n_old"])
    assert tr["unit"] == "ns" and tr["total_ns"] == pytest.approx(east_ns + west_ns, abs=1e-6)
    assert tr["ns_unknown_segments"] == campaign["n_old"]
    total_ps = (east_ns + west_ns) * 1000
    assert tr["headline"].startswith(f"{total_ps:.3g} ps in ")
    assert tr["headline"].endswith(f" on 2 clusters (+{campaign['n_old']} segments of unknown length)")
    exp = expected_days(campaign)
    got = {(r["day"], r["cluster"]): r for r in tr["days"]}
    assert set(got) == set(exp)
    cum: dict[str, float] = {}
    for key in sorted(exp):
        e, r = exp[key], got[key]
        assert r["segments"] == e["segments"], key
        assert r["core_hours"] == pytest.approx(e["core_hours"], abs=1e-4), key
        if key[1] == "old":
            assert r["ns"] is None and r["cumulative_ns"] is None and r["ns_unknown_segments"] == campaign["n_old"]
            continue
        assert r["ns"] == pytest.approx(e["ns"], abs=1e-6) and r["ns_unknown_segments"] == 0, key
        cum[key[1]] = cum.get(key[1], 0.0) + e["ns"]
        assert r["cumulative_ns"] == pytest.approx(cum[key[1]], abs=1e-6), key
    assert sum(r["ns"] or 0 for r in tr["days"]) == pytest.approx(east_ns + west_ns, abs=1e-6)
    # the figure gained the trajectory panel: taller, and the first cluster's colour fills its band
    check_png(png, trajectory=True)
    _check_trajectory_band(png)


def _check_trajectory_band(png: Path) -> None:
    """The middle panel (rows 40-75 % of the 900-pixel figure) holds a real C0 area, the stacked trajectory."""
    import matplotlib.image as mpimg
    import numpy as np

    rgb = (mpimg.imread(str(png))[:, :, :3] * 255).round().astype(int)
    near = np.abs(rgb - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 30
    band = near[int(0.40 * 900):int(0.75 * 900)]
    assert band.sum() > 5000, band.sum()


def test_text_report_has_the_trajectory_section(campaign):
    res = run_report(campaign)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("Trajectory (MD segments: steps x time step): "))
    assert lines[i + 1].split() == ["day", "cluster", "segments", "CPU-h", "ns", "cumulative", "ns"]
    rows = {ln.split()[1]: ln.split() for ln in lines[i + 2:i + 5]}
    g = campaign["gromacs"]
    assert rows["east"][4] == f"{sum(g['steps']) * g['dt_ps'] / 1000:.4f}"      # 0.0080
    assert rows["old"][4:] == ["?", "?"]
    per = next(ln for ln in lines[i:] if ln.startswith("  per cluster: "))
    assert "east 8 ps" in per and "west 3.6 ps" in per and f"old ? (+{campaign['n_old']} unknown)" in per
    assert any("recorded no time step" in ln for ln in lines[i:])


def test_trajectory_rows_in_few_commands_and_by_window(campaign, mongo_uri):
    """``trajectory_rows(db, since, until)``: the JSON's rows, from the report's fixed commands (no per-Firework
    round trip), and the window: segments that ended outside it add nothing."""
    from pymongo import MongoClient, monitoring

    from pilot.report import trajectory_rows

    seen: list[str] = []

    class Listener(monitoring.CommandListener):
        def started(self, event):
            if event.command_name in ("find", "aggregate", "getMore", "count", "distinct"):
                seen.append(event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    lp = campaign["lp"]
    client = MongoClient(mongo_uri, event_listeners=[Listener()])
    try:
        db = client[lp.db.name]
        rows = trajectory_rows(db, None, None)
        assert seen == ["find", "aggregate", "aggregate"], seen   # pilots, launches, reruns
        assert rows == json.loads(run_report(campaign, "--json").stdout)["trajectory"]["days"]
        ends = sorted(iso_to_epoch(d["time_end"]) for d in lp.launches.find({"fworker.name": "east-g1"}))
        early = trajectory_rows(db, None, ends[0] + 1e-3)     # only the first GROMACS segment ended by then
        east = [r for r in early if r["cluster"] == "east" and r["segments"]]
        g = campaign["gromacs"]
        assert [r["ns"] for r in east] == [pytest.approx(g["steps"][0] * g["dt_ps"] / 1000, abs=1e-6)]
        late = trajectory_rows(db, campaign["t1"] + 3600, campaign["t1"] + 7200)
        assert all(r["ns"] in (0, None) and not r["segments"] for r in late), late
    finally:
        client.close()


def test_headline_units_on_a_campaign():
    """The campaign sentence of the issue ("13 microseconds in 15 days on four clusters"), from report rows."""
    from pilot.report import ClusterThroughput, DayThroughput, ThroughputReport, Timeline
    from pilot.report.trajectory import headline, ns_text, trajectory_lines

    start = 1_780_000_000.0
    tl = Timeline(resolution_s=3600.0, trajectory={n: [(start + 15 * 86400, 3300.0)] for n in "abcd"})
    rep = ThroughputReport(generated_at=start + 20 * 86400, since=start, until=start + 20 * 86400,
                           first_activity=start, config_dir=None,
                           clusters=[ClusterThroughput(name=n, segments=10, ns=3300.0) for n in "abcd"],
                           days=[DayThroughput(day="2026-05-28", cluster=n, segments=10, ns=3300.0) for n in "abcd"],
                           timeline=tl)
    assert headline(rep) == "13.2 µs in 15 days on 4 clusters"
    assert [ns_text(x) for x in (0.008, 850.0, 13_200.0, 1.5e6)] == ["8 ps", "850 ns", "13.2 µs", "1.5 ms"]
    assert rep.to_dict()["trajectory"]["total_ns"] == 13_200.0
    lines = trajectory_lines(rep)     # from 1000 ns on, the table is in µs
    assert lines[2].split() == ["day", "cluster", "segments", "CPU-h", "µs", "cumulative", "µs"]
    assert lines[3].split() == ["2026-05-28", "a", "10", "0.00", "3.30", "3.30"]
    assert lines[-1] == "  per cluster: a 3.3 µs, b 3.3 µs, c 3.3 µs, d 3.3 µs"
