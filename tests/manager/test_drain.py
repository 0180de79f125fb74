"""``pilot drain`` / ``pilot resume`` (issue 20): on the real SLURM cluster and on the emulated PBS cluster, with
the real command line as a subprocess, the real manager and real pilots.

A drained cluster gets no new pilot, its running pilot finishes its current Firework and exits (exit record
``DRAINED``), the next Fireworks stay READY; ``resume`` undoes it; a drain ``--until`` a time is lifted by the
manager at that time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest

from pilot.cli.drain import drained_lines
from pilot.config import load_config
from pilot.manager.cycle import Manager
from pilot.manager.drain import parse_until
from pilot.status.gates import cluster_gates, gate_waits, gates_json
from tests.helpers import wait_for
from tests.manager.helpers import add_sleepers, fw_states, local_cluster, readable_lp_file, ssh_cluster, write_config
from tests.manager.test_slurm import our_jobs, world  # noqa: F401  (the fixture of the SLURM manager tests)
from tests.status.test_status import validate


def pilot_cli(config_dir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``pilot --config-dir DIR ARGS...`` as a person runs it (a process of its own)."""
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(config_dir), *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def md_decision(report):
    (d,) = [d for d in report.decisions if d.category == "md"]
    return d


def live_jobs(info, prefix):
    return [j for j in our_jobs(info.slurm_conf, info.user, prefix) if j[2] in ("PENDING", "RUNNING", "COMPLETING")]


# ----------------------------------------------------------------------------- --until, the command's errors
def test_until_forms():
    now = dt.datetime(2026, 12, 7, 10, 0).timestamp()   # local time, as the command reads a time without a zone
    assert parse_until("2h", now) == now + 7200
    assert parse_until("30m", now) == now + 1800
    assert parse_until("1h30m", now) == now + 5400
    assert parse_until("1d", now) == now + 86400
    assert parse_until("14:00", now) == now + 4 * 3600
    assert parse_until("2026-12-08T06:30", now) == dt.datetime(2026, 12, 8, 6, 30).timestamp()
    assert parse_until("2026-12-07T12:00:00+00:00", now) == dt.datetime(
        2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    for bad in ("09:00", "2026-12-06T10:00", "0m", "soon", ""):
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_until(bad, now)


def test_drain_refuses_an_unknown_cluster_and_a_past_time(launchpad, tmp_path):
    lp_file = readable_lp_file(launchpad, tmp_path)
    cfg = write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "w", lp_file, ["md"])})
    res = pilot_cli(cfg, "drain", "alpah", check=False)
    assert res.returncode == 1
    assert "no cluster named 'alpah'" in res.stderr and "did you mean 'alpha'?" in res.stderr
    res = pilot_cli(cfg, "drain", "alpha", "--until", "2001-01-01T00:00", check=False)
    assert res.returncode == 2 and "--until" in res.stderr and "not in the future" in res.stderr
    assert launchpad.db["pilot_clusters"].count_documents({"drain": {"$ne": None}}) == 0
    res = pilot_cli(cfg, "resume", "alpha")
    assert "alpha was not drained" in res.stdout
    # what `pilot config check` says (pilot.cli.drain.drained_lines): the drained clusters, from the LaunchPad
    t0 = time.time()
    j = json.loads(pilot_cli(cfg, "drain", "alpha", "--until", "1h", "--json").stdout)
    until = dt.datetime.fromisoformat(j["until"]).replace(tzinfo=dt.timezone.utc).timestamp()
    assert j["drained"] and j["changed"] and t0 + 3600 <= until <= time.time() + 3600
    (line,) = [ln for ln in pilot_cli(cfg, "config", "check").stdout.splitlines() if ln.startswith("drained:")]
    assert line.startswith("drained: alpha until ") and "resume alpha" in line
    assert set(json.loads(pilot_cli(cfg, "config", "check", "--json").stdout)["drained"]) == {"alpha"}
    pilot_cli(cfg, "resume", "alpha")
    assert drained_lines(cfg, load_config(cfg)) == []
    assert json.loads(pilot_cli(cfg, "config", "check", "--json").stdout)["drained"] == {}


def test_config_check_note_is_quiet_when_the_launchpad_does_not_answer(tmp_path):
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text(f"host: 127.0.0.1\nport: {port}\nname: nothing\n")
    cfg = write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "w", lp_file, ["md"])})
    t0 = time.monotonic()
    assert drained_lines(cfg, load_config(cfg)) == []
    assert time.monotonic() - t0 < 10


def test_status_reads_drains_and_maintenance_from_the_cluster_record():
    now = 1_800_000_000.0
    doc = {"_id": "c", "drain": {"since": now - 60, "until": now + 3600, "by": "ann@login"},
           "maintenance": [{"name": "over", "start": now - 7200, "end": now - 3600, "partition": None},
                           {"name": "next", "start": now + 600, "end": None, "partition": "gpu"}],
           "maintenance_checked": now - 30, "maintenance_error": None}
    g = cluster_gates(doc, now)
    assert g.drain == {"since": now - 60, "until": now + 3600, "by": "ann@login"}
    assert [r["name"] for r in g.maintenance] == ["next"]            # the one that is over is not shown
    assert cluster_gates({**doc, "drain": {**doc["drain"], "until": now - 1}}, now).drain is None   # lifted
    assert cluster_gates({"_id": "c", "reachable": True}, now) is None
    j = gates_json(g)
    assert j["drain"]["until"] == "2027-01-15T09:00:00" and j["maintenance"]["reservations"][0]["end"] is None


def test_work_waits_on_gates_only_when_no_open_unit_serves_it():
    drained = {"cluster": "a", "unit": "a", "category": "md", "ready": 4, "submit": 0, "pending": 0, "running": 0,
               "reason": "drained (pilot resume a)"}
    other = {**drained, "cluster": "b", "unit": "b", "reason": "demand", "submit": 1}
    assert [w.to_dict() for w in gate_waits({"decisions": [drained]})] == [
        {"category": "md", "ready": 4, "reasons": ["a: drained (pilot resume a)"]}]
    assert gate_waits({"decisions": [drained, other]}) == []
    assert gate_waits({"decisions": [{**drained, "reason": "max_queued"}]}) == []


# ----------------------------------------------------------------------------- the real SLURM cluster
@pytest.mark.slurm
def test_drained_cluster_pilot_finishes_its_firework_and_leaves_resume_undoes_it(world, launchpad,  # noqa: F811
                                                                                   slurm_cluster):
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"])})
    add_sleepers(launchpad, "md", 3, 8)   # one pilot (5 Fireworks a pilot); each Firework runs 8 s
    mgr = Manager(cfg, launchpad)
    try:
        (sub,) = mgr.run_cycle().submitted
        wait_for(lambda: fw_states(launchpad).get("RUNNING") == 1, 90, 0.3, "the pilot to start a Firework")
        out = pilot_cli(cfg.config_dir, "drain", "pilotci").stdout
        assert out.startswith("pilotci is drained: the manager submits no new pilot to it.")
        assert "1 running pilot leaves after its current Firework." in out
        rec = wait_for(lambda: launchpad.db["pilots"].find_one({"_id": sub["job_name"], "exit.stop": "DRAINED"}),
                       60, 0.5, "the pilot to leave with exit record DRAINED")
        assert rec["exit"]["fireworks"] == 1 and rec["drain"] is True
        assert fw_states(launchpad) == {"COMPLETED": 1, "READY": 2}   # the next ones were not taken
        for _ in range(3):   # no new pilot while drained, and the decision says why
            report = mgr.run_cycle()
            assert report.submitted == []
            assert md_decision(report).reason == "drained (pilot resume pilotci)"
            time.sleep(1)
        assert live_jobs(slurm_cluster, prefix) == []
        assert launchpad.db["pilots"].find_one({"_id": sub["job_name"]})["state"] == "COMPLETED"
        doc = json.loads(pilot_cli(cfg.config_dir, "status", "--json").stdout)
        validate(doc)   # docs/status.schema.json
        (c,) = [c for c in doc["clusters"] if c["name"] == "pilotci"]
        assert c["drain"]["until"] is None and "@" in c["drain"]["by"]
        assert doc["needs_you"]["waiting_on_gates"] == [
            {"category": "md", "ready": 2, "reasons": ["pilotci: drained (pilot resume pilotci)"]}]
        text = pilot_cli(cfg.config_dir, "status").stdout
        print(text)
        assert "pilotci: DRAINED since " in text and "category md: 2 READY Fireworks wait" in text
        out = pilot_cli(cfg.config_dir, "resume", "pilotci").stdout
        assert out.startswith("pilotci is resumed")
        assert len(mgr.run_cycle().submitted) == 1
        assert len(live_jobs(slurm_cluster, prefix)) == 1
    finally:
        mgr.close()


@pytest.mark.slurm
def test_a_drain_until_a_time_is_lifted_by_the_manager(world, launchpad, slurm_cluster):  # noqa: F811
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"])})
    add_sleepers(launchpad, "md", 1, 1)
    out = pilot_cli(cfg.config_dir, "drain", "pilotci", "--until", "4s").stdout
    assert "pilotci is drained until " in out and "(the manager also lifts it at that time)" in out
    until = launchpad.db["pilot_clusters"].find_one({"_id": "pilotci"})["drain"]["until"]
    mgr = Manager(cfg, launchpad)
    try:
        report = mgr.run_cycle()
        assert report.submitted == []
        shown = dt.datetime.fromtimestamp(until).strftime("%H:%M")
        assert md_decision(report).reason == f"drained until {shown} (pilot resume pilotci)"
        time.sleep(max(0.0, until - time.time()) + 0.5)
        report = mgr.run_cycle()
        assert len(report.submitted) == 1 and not md_decision(report).reason.startswith("drained")
        assert launchpad.db["pilot_clusters"].find_one({"_id": "pilotci"})["drain"] is None
    finally:
        mgr.close()


# ----------------------------------------------------------------------------- the emulated PBS cluster
@pytest.fixture
def pbs_world(launchpad, remote_tmp, pbs_cluster, cluster_venv, tmp_path):
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = "d" + os.urandom(4).hex()[:6]
    # the worker starts 4 s after its job does: the drain given right after the submission comes first
    clusters = {pbs_cluster.name: ssh_cluster(pbs_cluster, str(remote_tmp / pbs_cluster.name), str(lp_file), ["md"],
                                              cluster_venv, idle_timeout=30,
                                              setup=f"source {cluster_venv}/bin/activate\nsleep 4\n")}
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, clusters, job_name_prefix=prefix))
    mgr = Manager(cfg, launchpad)
    yield cfg, mgr
    for rt in mgr.clusters.values():   # whatever of ours is still alive, through the emulator's own qdel
        ids = [r["job_id"] for r in mgr.records.live(rt.name) if r.get("job_id")]
        if ids:
            rt.run(rt.adapter.cancel_command(ids))
    mgr.close()


@pytest.mark.emulated
def test_drained_emulated_cluster_gets_no_pilot_and_a_queued_one_leaves_when_it_starts(pbs_world, launchpad,
                                                                                         pbs_cluster):
    cfg, mgr = pbs_world
    name = pbs_cluster.name
    add_sleepers(launchpad, "md", 2, 1)
    (sub,) = mgr.run_cycle().submitted
    out = pilot_cli(cfg.config_dir, "drain", name).stdout   # at once: the pilot is queued or starting
    assert f"{name} is drained" in out
    rec = wait_for(lambda: launchpad.db["pilots"].find_one({"_id": sub["job_name"], "exit.stop": "DRAINED"}),
                   60, 0.5, "the pilot to leave with exit record DRAINED")
    assert rec["exit"]["fireworks"] == 0 and fw_states(launchpad) == {"READY": 2}
    report = mgr.run_cycle()
    assert report.submitted == [] and md_decision(report).reason == f"drained (pilot resume {name})"
    pilot_cli(cfg.config_dir, "resume", name)
    assert len(mgr.run_cycle().submitted) == 1


def test_marks_follow_the_drains_and_a_submission_under_way_stops(launchpad, tmp_path):
    """The gate puts the pilots' marks in step with the drains every cycle: a mark left on a cluster that is not
    drained (a ``pilot resume`` between the manager's read and its marking) comes off, a pilot recorded after
    the drain was given gets one; and a submission of a cycle planned before the drain stops at the drain."""
    from pilot.manager.drain import DrainGate, drain_cluster
    from pilot.manager.records import Records
    from pilot.manager.runtime import CycleReport, ManagerSettings

    lp_file = readable_lp_file(launchpad, tmp_path)
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, {
        "alpha": local_cluster(tmp_path / "wa", lp_file, ["md"]),
        "beta": local_cluster(tmp_path / "wb", lp_file, ["md"])}))
    records = Records(launchpad.db)
    now = time.time()
    for name, cluster in (("p-a1", "alpha"), ("p-b1", "beta")):
        records.add_intent(name, cluster, "md", 3600.0, 60.0, "/x.sh", now)
    launchpad.db["pilots"].update_one({"_id": "p-b1"}, {"$set": {"drain": True}})   # stale: beta is not drained
    drain_cluster(records, "alpha", None, now)
    records.add_intent("p-a2", "alpha", "md", 3600.0, 60.0, "/x.sh", now)          # came after the drain
    gate = DrainGate(records, ManagerSettings())
    gate.refresh(now)
    marks = {d["_id"]: d.get("drain") for d in launchpad.db["pilots"].find()}
    assert marks == {"p-a1": True, "p-a2": True, "p-b1": None}
    assert set(gate.drains) == {"alpha"}

    mgr = Manager(cfg, launchpad)
    try:
        report = CycleReport(started=now)
        assert mgr.submit(mgr.clusters["alpha"], "md", report) is False          # drained: nothing recorded
        assert launchpad.db["pilots"].count_documents({"cluster": "alpha"}) == 2
        assert report.errors == {} and mgr.clusters["alpha"].failures == 0      # not a failure of the cluster
    finally:
        mgr.close()


def test_fair_share_remembers_only_pilots_that_ran(launchpad):
    """A refused submission or a pilot cancelled in the queue ended without starting: it took no room on a
    cluster, and fair share's window (Records.recently_ended) leaves it out."""
    from pilot.manager.records import Records

    records = Records(launchpad.db)
    now = time.time()
    for name in ("ran", "refused", "cancelled", "long-ago"):
        records.add_intent(name, "alpha", "md", 3600.0, 60.0, "/x.sh", now - 7200)
    records.update("ran", state="COMPLETED", start_time=now - 3000, end_time=now - 60)
    records.update("refused", state="SUBMIT_FAILED", end_time=now - 60, reconciled=True)
    records.update("cancelled", state="CANCELLED", end_time=now - 60)
    records.update("long-ago", state="COMPLETED", start_time=now - 7000, end_time=now - 5000)
    assert [r["_id"] for r in records.recently_ended(now - 3600)] == ["ran"]
