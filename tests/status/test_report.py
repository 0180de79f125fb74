"""``pilot report`` on real data: a manager run with local pilots (real OpenMM segments, sleepers, a failing
Firework, a pilot killed with SIGKILL and its work rerun, a Firework run by hand), and one on the two real
SLURM clusters.

Every expected number is computed here from the LaunchPad's raw documents (launches, pilots, pilot_reruns),
with this file's own arithmetic, never by calling pilot.report.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from fireworks import Firework, FWorker, LaunchPad, ScriptTask

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import add_interrupted, cancel_local_pilots, local_cluster, run_cycles_until, write_config

CORES = 2
ENGINE = {
    "nsteps": 1500,
    "platform": "CPU",
    "platform_properties": {"Threads": "1"},
    "traj_interval": 100,
    "temperature": 300,
    "seed": 1,
    "chunk_seconds": 0.3,
}
SEGMENT = {
    "segment_hours": 2.0 / 3600,
    "startup_slack_s": 20,
    "deadline_margin_s": 10,
    "min_segment_s": 1,
    "stop_margin_s": 5,
}


# ============================================================================ independent arithmetic
def iso_to_epoch(s: str) -> float:
    """FireWorks writes datetime.isoformat() of UTC times (with or without +00:00)."""
    d = dt.datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


def expected(
    db,
    since: float | None = None,
    until: float | None = None,
    cores: dict[str, int] | None = None,
    now: float | None = None,
) -> dict[str, dict]:
    """Per cluster numbers from the raw documents (pilot time clipped to [since, until])."""
    now = time.time() if now is None else now
    until = now if until is None else until
    lo = -1e30 if since is None else since
    pilots = list(db["pilots"].find())
    by_worker = {p["fworker"]: p["cluster"] for p in pilots if p.get("fworker")}
    out: dict[str, dict] = {}

    def cl(name):
        return out.setdefault(
            name,
            {
                "segments": 0,
                "fireworks": 0,
                "fizzled": 0,
                "runs_finished": 0,
                "busy_s": 0.0,
                "pilot_s": 0.0,
                "waits": [],
                "started": 0,
                "reruns": 0,
                "steps": 0,
            },
        )

    for p in pilots:
        c = cl(p["cluster"])
        if p.get("start_time") is None:
            continue
        if lo <= p["start_time"] < until:
            c["started"] += 1
            # SLURM gives start times in whole seconds while submit_time is the manager's clock before sbatch:
            # a pilot that starts at once shows e.g. -0.7 s; the documented rule counts that as 0
            c["waits"].append(max(0.0, p["start_time"] - p["submit_time"]))
        end = p["end_time"] if p.get("end_time") is not None else now
        a, b = max(p["start_time"], lo), min(end, until)
        if b > a:
            c["pilot_s"] += b - a
    for ln in db["launches"].find():
        if ln["state"] not in ("COMPLETED", "FIZZLED") or not ln.get("time_end"):
            continue
        t = iso_to_epoch(ln["time_end"])
        if not (lo <= t < until):
            continue
        c = cl(by_worker.get(ln["fworker"]["name"], "(not a pilot)"))
        c["busy_s"] += ln["runtime_secs"]
        sd = (ln.get("action") or {}).get("stored_data") or {}
        if ln["state"] == "FIZZLED":
            c["fizzled"] += 1
            continue
        c["fireworks"] += 1
        if "steps_done" in sd:
            c["segments"] += 1
            c["steps"] += sd["steps_done"]
            if sd.get("outcome") == "finished":
                c["runs_finished"] += 1
    for r in db["pilot_reruns"].find():
        for h in r["history"]:
            if lo <= h["time"] < until:
                owner = next(p["cluster"] for p in pilots if p["_id"] == h["pilot"])
                cl(owner)["reruns"] += 1
    for name, c in out.items():
        k = (cores or {}).get(name, 1)
        c["cpu_h"] = c["pilot_s"] * k / 3600
    return out


def run_report(cfg_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "report", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def check_png(path: Path, trajectory: bool | None = None) -> None:
    """A real figure: the expected size, many colours, the first cluster's colour (C0) over a real area.

    ``trajectory``: whether the figure has the trajectory panel (segments that recorded their time step:
    10 x 9 in) or not (10 x 6.5 in); None: either."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(path))
    heights = {None: (650, 900), True: (900,), False: (650,)}[trajectory]
    assert img.shape[1] == 1000 and img.shape[0] in heights, img.shape  # figsize 10 x 6.5 (9) in at 100 dpi
    rgb = (img[:, :, :3] * 255).round().astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
    c0 = np.array([0x1F, 0x77, 0xB4])  # matplotlib's first colour, the stacked area
    near = np.abs(rgb - c0).sum(axis=2) < 30
    # cumulative area of real completions: about 1/3 of the panel when the Fireworks finish early in the window,
    # less when a loaded machine makes them late (17,000 pixels seen); an empty panel has none
    assert near.sum() > 8000, near.sum()
    assert (rgb != 255).any(axis=2).mean() > 0.05  # not a blank canvas


# ============================================================================ the local run
def _run_by_hand(lp: LaunchPad, tmp: Path) -> None:
    """A Firework run by hand (not by a pilot), before the pilots."""
    from fireworks.core.rocket_launcher import launch_rocket

    hand = Firework(
        [ScriptTask.from_str("true")],
        spec={"_category": "hand", "_launch_dir": str(tmp / "hand")},
        name="by-hand",
    )
    (tmp / "hand").mkdir()
    lp.add_wf(hand)
    cwd = os.getcwd()
    try:
        assert launch_rocket(lp, FWorker(name="by-hand", category="hand"), strm_lvl="ERROR")
    finally:
        os.chdir(cwd)  # the Rocket stays in its launch dir, which the fixture deletes at the end


def _add_work(lp: LaunchPad, tmp: Path) -> int:
    """One OpenMM run in ~3 segments, three sleepers, one failing Firework; returns the victim's fw_id (to be
    killed)."""
    from tasks.testsystems import openmm_water_box
    from tasks.workflow import make_md_workflow

    run_dir = tmp / "sim"
    openmm_water_box(run_dir, seed=3)
    lp.add_wf(
        make_md_workflow(run_dir, "openmm", "sim", engine_params=ENGINE, env={"OPENMM_CPU_THREADS": "1"}, **SEGMENT)
    )
    for i in range(3):
        lp.add_wf(Firework([ScriptTask.from_str("sleep 0.3")], spec={"_category": "md"}, name=f"sleep-{i}"))
    lp.add_wf(
        Firework([ScriptTask.from_str("exit 3", {"fizzle_bad_rc": True})], spec={"_category": "md"}, name="fails")
    )
    # its first run outlasts its pilot's kill however slow the machine is (and its own session outlives the
    # pilot's process group by those 20 s at most); the rerun takes 0.5 s
    return add_interrupted(lp, "slow", tmp / "victim-started", first=20)


def _run_and_kill_a_pilot(mgr: Manager, lp: LaunchPad, tmp: Path, victim: int) -> str:
    """Cycle until the victim runs, SIGKILL its whole pilot, cycle until all is done; the killed pilot's name."""

    def victim_running():
        return lp.launches.find_one({"fw_id": victim, "state": "RUNNING"})

    run_cycles_until(mgr, victim_running, timeout=90, interval=1)
    launch = victim_running()
    pilot = lp.db["pilots"].find_one({"fworker": launch["fworker"]["name"]})
    job = json.loads((tmp / "work" / "localsched" / "jobs" / f"{pilot['job_id']}.json").read_text())
    os.killpg(int(job["pid"]), signal.SIGKILL)  # the whole pilot dies: the launch stays RUNNING

    def all_done():
        states = {d["state"] for d in lp.fireworks.find({}, {"state": 1})}
        live = lp.db["pilots"].count_documents({"state": {"$in": ["SUBMITTING", "PENDING", "RUNNING"]}})
        return states <= {"COMPLETED", "FIZZLED"} and live == 0

    run_cycles_until(mgr, all_done, timeout=240, interval=1)
    return str(pilot["_id"])


def _cancel_local_jobs() -> None:
    """No local pilot outlives the fixture."""
    cancel_local_pilots()


@pytest.fixture(scope="module")
def local_run(mongo_uri):
    """One manager run with local pilots; yields (config dir, LaunchPad, facts about the run)."""
    tmp = Path(tempfile.mkdtemp(prefix="pilot-report-"))
    name = f"pilottest_{uuid.uuid4().hex[:12]}"
    lp = LaunchPad(host=mongo_uri, name=name, uri_mode=True, logdir=None, strm_lvl="ERROR")
    lp.reset("", require_password=False, max_reset_wo_password=1000)
    old_state = os.environ.get("PILOT_LOCAL_STATE")
    os.environ["PILOT_LOCAL_STATE"] = str(tmp / "work" / "localsched")   # the local adapter: work_dir/localsched
    lp_file = tmp / "my_launchpad.yaml"
    lp.to_file(str(lp_file))
    try:
        cfg_dir = write_config(
            tmp / "cfg",
            lp_file,
            {
                "box": local_cluster(
                    tmp / "work",
                    lp_file,
                    ["md", "slow"],
                    pilot={"walltime": 120, "cores": CORES},
                    idle_timeout=3,
                    limits={"max_queued": 4, "max_running": 4},
                    heartbeat_interval=1,   # the killed pilot is dead after 3 s of silence, not 6
                )
            },
        )
        cfg = load_config(cfg_dir)
        _run_by_hand(lp, tmp)
        victim = _add_work(lp, tmp)
        mgr = Manager(cfg, lp)
        killed = _run_and_kill_a_pilot(mgr, lp, tmp, victim)
        mgr.close()
        yield cfg_dir, lp, {"killed": killed, "tmp": tmp}
    finally:
        _cancel_local_jobs()
        if old_state is None:
            os.environ.pop("PILOT_LOCAL_STATE", None)
        else:
            os.environ["PILOT_LOCAL_STATE"] = old_state
        lp.connection.drop_database(name)
        shutil.rmtree(tmp, ignore_errors=True)


def test_report_json_matches_the_documents(local_run):
    cfg_dir, lp, facts = local_run
    now = time.time()
    res = run_report(cfg_dir, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    exp = expected(lp.db, cores={"box": CORES}, now=now)
    # the scenario really happened
    fizzled = [
        ((d.get("action") or {}).get("stored_data") or {}).get("_exception", {}).get("_stacktrace", "")[-800:]
        for d in lp.launches.find({"state": "FIZZLED"})
    ]
    assert exp["box"]["segments"] >= 2 and exp["box"]["runs_finished"] == 1, fizzled
    assert exp["box"]["fizzled"] >= 1 and exp["box"]["reruns"] == 1
    assert exp["(not a pilot)"]["fireworks"] == 1
    by = {c["name"]: c for c in doc["clusters"]}
    assert set(by) == {"box", "(not a pilot)"}
    box = by["box"]
    e = exp["box"]
    assert box["cores_per_pilot"] == CORES and box["cores_from_config"] is True
    for key in ("segments", "fireworks", "fizzled", "runs_finished", "reruns"):
        assert box[key] == e[key], key
    assert box["md_steps"] == e["steps"] == ENGINE["nsteps"]
    assert box["pilot_hours"] == pytest.approx(e["pilot_s"] / 3600, abs=1e-4)
    assert box["cpu_hours"] == pytest.approx(e["cpu_h"], abs=1e-4)
    assert box["busy_hours"] == pytest.approx(e["busy_s"] / 3600, abs=1e-4)
    assert box["utilisation"] == pytest.approx(e["busy_s"] / e["pilot_s"], abs=1e-3)
    assert 0.05 < box["utilisation"] < 1.0
    assert box["pilots"]["started"] == e["started"]
    assert box["queue_wait_s"]["n"] == len(e["waits"])
    assert box["queue_wait_s"]["median"] == pytest.approx(statistics.median(e["waits"]), abs=1e-3)
    assert box["queue_wait_s"]["max"] == pytest.approx(max(e["waits"]), abs=1e-3)
    # the killed pilot ended FAILED (localsched: exit by signal), the others COMPLETED after idling
    states = {p["_id"]: p["state"] for p in lp.db["pilots"].find()}
    assert states[facts["killed"]] == "FAILED"
    ended = {}
    for s in states.values():
        ended[s] = ended.get(s, 0) + 1
    assert box["pilots"]["ended"] == ended
    other = by["(not a pilot)"]
    assert (other["fireworks"], other["pilot_hours"], other["utilisation"]) == (1, 0.0, None)
    # totals and days add up
    assert doc["totals"]["segments"] == e["segments"]
    assert doc["totals"]["fireworks"] == e["fireworks"] + 1
    assert sum(d["segments"] for d in doc["days"]) == e["segments"]
    assert sum(d["cpu_hours"] for d in doc["days"] if d["cluster"] == "box") == pytest.approx(
        e["cpu_h"], abs=1e-3
    )


def test_json_schema(local_run):
    cfg_dir, _lp, _facts = local_run
    doc = json.loads(run_report(cfg_dir, "--json").stdout)
    assert doc["schema_version"] == 1
    assert set(doc) == {
        "schema_version",
        "generated_at",
        "window",
        "days_are",
        "config_dir",
        "clusters",
        "totals",
        "days",
        "notes",
        "core_hours",
        "trajectory",
    }
    assert doc["days_are"] == "UTC" and doc["window"]["since"] is None and doc["config_dir"] == str(cfg_dir)
    cluster_keys = {
        "name",
        "cores_per_pilot",
        "cores_from_config",
        "segments",
        "runs_finished",
        "fireworks",
        "fizzled",
        "md_steps",
        "busy_hours",
        "pilot_hours",
        "cpu_hours",
        "cpu_hours_source",
        "utilisation",
        "pilots",
        "queue_wait_s",
        "reruns",
    }
    for c in doc["clusters"]:
        assert set(c) == cluster_keys
        assert set(c["pilots"]) == {"submitted", "started", "ended", "running", "pending"}
        assert set(c["queue_wait_s"]) == {"n", "median", "max"}
    for d in doc["days"]:
        assert set(d) == {
            "day",
            "cluster",
            "segments",
            "runs_finished",
            "fireworks",
            "fizzled",
            "busy_hours",
            "pilot_hours",
            "cpu_hours",
            "utilisation",
        }
        dt.date.fromisoformat(d["day"])
    dt.datetime.fromisoformat(doc["generated_at"])


def test_since_filters_by_end_time_and_clips_pilot_time(local_run):
    cfg_dir, lp, _facts = local_run
    ends = sorted(
        iso_to_epoch(d["time_end"]) for d in lp.launches.find({"state": {"$in": ["COMPLETED", "FIZZLED"]}})
    )
    since = ends[len(ends) // 2] - 0.0005  # half of the launches ended after this
    since_text = dt.datetime.fromtimestamp(since, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    now = time.time()
    res = run_report(cfg_dir, "--json", "--since", since_text)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    exp = expected(lp.db, since=since, cores={"box": CORES}, now=now)
    box = next(c for c in doc["clusters"] if c["name"] == "box")
    e = exp["box"]
    assert 0 < e["fireworks"] < expected(lp.db, now=now)["box"]["fireworks"]
    for key in ("segments", "fireworks", "fizzled", "runs_finished", "reruns"):
        assert box[key] == e[key], key
    assert box["pilot_hours"] == pytest.approx(e["pilot_s"] / 3600, abs=1e-4)
    assert box["busy_hours"] == pytest.approx(e["busy_s"] / 3600, abs=1e-4)
    assert doc["window"]["since"].startswith(since_text[:19])
    # --until before the first launch: nothing completed in the window
    first = dt.datetime.fromtimestamp(ends[0] - 5, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    doc2 = json.loads(run_report(cfg_dir, "--json", "--until", first).stdout)
    assert doc2["totals"]["fireworks"] == 0 and doc2["totals"]["segments"] == 0


def test_text_table_and_plot(local_run, tmp_path):
    cfg_dir, lp, _facts = local_run
    png = tmp_path / "throughput.png"
    res = run_report(cfg_dir, "--plot", str(png))
    assert res.returncode == 0, res.stderr
    e = expected(lp.db, cores={"box": CORES})["box"]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Throughput ") and lines[0].endswith("UTC (all history)")
    assert lines[1].split() == [
        "cluster",
        "pilots",
        "segments",
        "runs",
        "done",
        "fireworks",
        "fizzled",
        "pilot-h",
        "CPU-h",
        "busy",
        "queue",
        "wait",
        "med/max",
        "reruns",
    ]
    row = next(ln.split() for ln in lines if ln.strip().startswith("box "))
    assert row[1:6] == [str(e["started"]), str(e["segments"]), "1", str(e["fireworks"]), str(e["fizzled"])]
    assert row[8] == f"x{CORES}"  # cores from the config
    assert f"wrote {png}" in res.stdout
    check_png(png, trajectory=True)   # the OpenMM segments recorded their time step


def test_status_and_report_take_an_optional_config_by_one_rule(tmp_path):
    """No config (no folder, or one without pilot.yaml and clusters/): a note; a broken one: its first problem."""
    from pilot.cli.common import optional_config

    assert optional_config(tmp_path / "absent") == (None, [f"no config in {tmp_path / 'absent'}"])
    (tmp_path / "my_launchpad.yaml").write_text("host: 127.0.0.1\nport: 1\nname: x\n")
    assert optional_config(tmp_path) == (None, [f"no config in {tmp_path}"])   # only a LaunchPad file
    (tmp_path / "pilot.yaml").write_text("poll_interval: 0\n")
    config, notes = optional_config(tmp_path)
    assert config is None and len(notes) == 1
    assert notes[0].startswith(f"the config in {tmp_path} is not usable (") and "more)" in notes[0]
    assert notes[0].endswith(f"run `pilot --config-dir {tmp_path} config check`")


def test_without_config_cores_are_assumed_one_and_said_so(local_run, tmp_path):
    cfg_dir, _lp, _facts = local_run
    lp_file = Path(load_config(cfg_dir).pilot.launchpad_file)
    empty = tmp_path / "empty"
    res = subprocess.run(
        [sys.executable, "-m", "pilot", "--config-dir", str(empty), "report", "--json", "-l", str(lp_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    box = next(c for c in doc["clusters"] if c["name"] == "box")
    assert (box["cores_per_pilot"], box["cores_from_config"]) == (1, False)
    assert box["cpu_hours"] == box["pilot_hours"]
    assert f"no config in {empty}" in doc["notes"]
    assert any("cores per pilot assumed 1 for box (no config dir)" in n for n in doc["notes"])
    assert doc["config_dir"] is None


def test_errors_are_actionable(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pilot", "--config-dir", str(tmp_path), "report"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 1
    assert f"no LaunchPad file at {tmp_path / 'my_launchpad.yaml'}" in res.stderr
    assert f"pilot --config-dir {tmp_path} launchpad init" in res.stderr  # the hint keeps the --config-dir typed
    (tmp_path / "my_launchpad.yaml").write_text("host: 127.0.0.1\nport: 1\nname: x\n")
    res = subprocess.run(
        [sys.executable, "-m", "pilot", "--config-dir", str(tmp_path), "report", "--since", "last tuesday"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2
    assert "'last tuesday' is not a date" in res.stderr
    # nothing listens on port 1: the address, the driver's reason, what to check
    res = subprocess.run(
        [sys.executable, "-m", "pilot", "--config-dir", str(tmp_path), "report"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 1
    assert "127.0.0.1:1" in res.stderr and "'x'" in res.stderr
    assert "Connection refused" in res.stderr and "is the database running?" in res.stderr.lower()
    assert f"pilot --config-dir {tmp_path} launchpad init" in res.stderr


def test_parse_when_and_iso_strings_order_like_fireworks_times():
    from pilot.report import iso_utc, parse_when

    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_when("2023-11-14", now) == 1_699_920_000.0
    assert parse_when("2023-11-14T22:13", now) == now - 20
    assert parse_when("2023-11-14T23:13:20+01:00", now) == now
    assert parse_when("12h", now) == now - 43200
    assert parse_when("3d ago", now) == now - 3 * 86400
    assert parse_when("today", now) == 1_699_920_000.0
    assert parse_when("now", now) == now
    with pytest.raises(ValueError, match="is not a date"):
        parse_when("yesterday-ish", now)
    # FireWorks stores datetime.isoformat() of aware UTC times; our bounds must sort the same way
    fw = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()  # '2023-11-14T22:13:20+00:00'
    assert iso_utc(now) <= fw < iso_utc(now + 0.5)
    fw_us = dt.datetime.fromtimestamp(now + 0.25, dt.timezone.utc).isoformat()
    assert iso_utc(now) < fw_us < iso_utc(now + 0.5)


# ============================================================================ real SLURM, two clusters
@pytest.mark.slurm
def test_report_on_two_slurm_clusters(
    launchpad, remote_tmp, slurm_cluster, slurm_cluster2, cluster_venv, tmp_path
):
    from tests.manager.helpers import add_sleepers, ssh_cluster

    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "r" + os.urandom(4).hex()[:6]
    clusters = {
        "alpha": ssh_cluster(
            slurm_cluster,
            str(remote_tmp / "a"),
            str(lp_file),
            ["md"],
            cluster_venv,
            pilot={"walltime": "5", "cores": 2, "partition": "debug"},
            idle_timeout=2,
        ),
        "beta": ssh_cluster(slurm_cluster2, str(remote_tmp / "b"), str(lp_file), ["post"], cluster_venv,
                            idle_timeout=2),
    }   # idle_timeout 2 s, not 5: the test waits for every pilot to end once the work is done
    cfg_dir = write_config(tmp_path / "cfg", lp_file, clusters, job_name_prefix=prefix)
    cfg = load_config(cfg_dir)
    add_sleepers(launchpad, "md", 4, 0.5)
    add_sleepers(launchpad, "post", 2, 0.5)
    mgr = Manager(cfg, launchpad)
    try:
        run_cycles_until(
            mgr,
            lambda: (
                launchpad.db["pilots"].count_documents(
                    {"state": {"$nin": ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]}}
                )
                == 0
                and launchpad.fireworks.count_documents({"state": "COMPLETED"}) == 6
            ),
            timeout=240,
            interval=2,
        )
    finally:
        mgr.close()
        for info in (slurm_cluster, slurm_cluster2):
            ids = subprocess.run(
                ["squeue", "-h", "-u", info.user, "-o", "%i|%j"],
                capture_output=True,
                text=True,
                check=False,
                env=dict(os.environ, SLURM_CONF=info.slurm_conf),
                timeout=30,
            ).stdout.split()
            mine = [x.split("|")[0] for x in ids if x.split("|")[1].startswith(prefix)]
            if mine:
                subprocess.run(
                    ["scancel", *mine],
                    check=False,
                    env=dict(os.environ, SLURM_CONF=info.slurm_conf),
                    timeout=30,
                )
    now = time.time()
    res = run_report(cfg_dir, "--json", "--plot", str(tmp_path / "slurm.png"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    exp = expected(launchpad.db, cores={"alpha": 2, "beta": 1}, now=now)
    by = {c["name"]: c for c in doc["clusters"]}
    assert set(by) == {"alpha", "beta"}
    assert (by["alpha"]["fireworks"], by["beta"]["fireworks"]) == (4, 2)
    for name in ("alpha", "beta"):
        c, e = by[name], exp[name]
        assert c["segments"] == 0 and c["fireworks"] == e["fireworks"]
        assert c["pilots"]["started"] == e["started"] >= 1
        assert c["cpu_hours"] == pytest.approx(e["cpu_h"], abs=1e-4)
        assert c["utilisation"] == pytest.approx(e["busy_s"] / e["pilot_s"], abs=1e-3)
        assert c["queue_wait_s"]["max"] == pytest.approx(max(e["waits"]), abs=1e-3)
    assert by["alpha"]["cpu_hours"] == pytest.approx(2 * by["alpha"]["pilot_hours"], abs=1e-4)
    check_png(tmp_path / "slurm.png", trajectory=False)   # sleepers: no MD segment


def test_report_reads_the_database_in_a_fixed_number_of_commands(local_run, mongo_uri):
    """No per-document round trips: the same few commands whatever the number of launches and pilots."""
    from pymongo import MongoClient, monitoring

    from pilot.report import gather_report

    _cfg_dir, lp, _facts = local_run
    seen: list[str] = []

    class Listener(monitoring.CommandListener):
        def started(self, event):
            if event.command_name in ("find", "aggregate", "getMore", "count", "countDocuments", "distinct"):
                seen.append(event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    client = MongoClient(mongo_uri, event_listeners=[Listener()])
    try:
        rep = gather_report(client[lp.db.name], load_config(_cfg_dir))
    finally:
        client.close()
    n_launches = lp.launches.count_documents({})
    assert n_launches > len(seen)
    # pilots, launches (one aggregation), reruns, the killed pilot's record; no getMore: all in first batches
    assert seen == ["find", "aggregate", "aggregate"] or seen == ["find", "aggregate", "aggregate", "find"], (
        seen
    )
    assert rep.queries == len(seen)
