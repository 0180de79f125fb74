"""Pilots that cannot start hold their cluster back (issue 16, item 13; :mod:`pilot.manager.holds`).

The expected values come from the documented rule (docs/configuration.md, "Pilots that cannot start"): after
``failed_starts_before_hold`` failed starts in a row the cluster is held for ``2 * poll_interval``, then gets one
probe pilot; each failed probe doubles the wait, at most ``failed_start_hold_max``; a pilot that starts, or a
change of the cluster file, ends the hold. The fast tests drive the rule with real pilot records in the embedded
LaunchPad and a real ``local`` cluster; the must-show runs real SLURM jobs whose interpreter does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pilot.config import load_config
from pilot.manager.cycle import Manager
from pilot.manager.holds import FAILED, IGNORED, STARTED, classify, stderr_path
from pilot.manager.policy import Decision
from pilot.manager.runtime import CycleReport
from tests.manager.helpers import add_sleepers, local_cluster, write_config

POLL = 2.0


class Clock:
    """A manager clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def box(tmp_path, launchpad):
    """A Manager of one ``local`` cluster "box" (category md) with a hand-moved clock, and its config dir."""
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    work = tmp_path / "work"
    work.mkdir()
    cdir = write_config(tmp_path / "cfg", lp_file, {"box": local_cluster(work, lp_file, ["md"])},
                        poll_interval=POLL, failed_start_hold_max=10)
    clock = Clock()
    mgr = Manager(load_config(cdir), launchpad, clock=clock)
    yield mgr, clock, cdir, work
    mgr.close()


_seq = iter(range(1000, 10**6))


def ended_pilot(mgr: Manager, clock: Clock, state: str = "FAILED", exit_code: int | None = 127,
                **fields) -> str:
    """A pilot record as the tracker leaves it when the scheduler says the job ended: submitted a moment ago,
    ended now."""
    job_id = str(next(_seq))
    name = f"fwp.md.{job_id}"
    mgr.records.add_intent(name, "box", "md", 300, 20, "/dev/null", clock() - 5)
    mgr.records.update(name, job_id=job_id, fworker=f"box-{job_id}", state=state, exit_code=exit_code,
                       end_time=clock(), **fields)
    return name


def live_pilot(mgr: Manager, clock: Clock) -> str:
    job_id = str(next(_seq))
    name = f"fwp.md.{job_id}"
    mgr.records.add_intent(name, "box", "md", 300, 20, "/dev/null", clock())
    mgr.records.update(name, job_id=job_id, fworker=f"box-{job_id}", state="PENDING")
    return name


def review(mgr: Manager) -> None:
    mgr.holds.review(mgr.clusters, CycleReport(started=mgr.clock()))


def wanted(mgr: Manager, n: int = 3) -> int:
    """How many of ``n`` pilots the gate lets the policy's decision for box/md submit now."""
    d = Decision(cluster="box", category="md", ready=10, pending=0, running=0, submit=n, reason="demand",
                 fireworks_per_pilot=5)
    (out,) = mgr.holds.gate([d], mgr.clock())
    return out.submit


def hold_doc(mgr: Manager) -> dict | None:
    return (mgr.records.cluster_state("box") or {}).get("hold")


# ================================================================== the rule for one pilot
def test_classify_follows_the_documented_rule():
    base = {"state": "FAILED", "exit_code": 1}
    cases = [
        ({**base}, True, STARTED),                                                  # ran a Firework
        ({**base, "exit": {"stop": "ERROR", "code": 1, "fireworks": 2}}, False, STARTED),
        ({**base, "exit": {"stop": "IDLE", "code": 0, "fireworks": 0}}, False, STARTED),
        ({**base, "exit": {"stop": "DEADLINE", "code": 0, "fireworks": 0}}, False, STARTED),
        ({**base, "exit": {"stop": "ERROR", "code": 2, "fireworks": 0}}, False, FAILED),
        ({**base, "exit": {"stop": "INTERNAL", "code": 70, "fireworks": 0}}, False, FAILED),
        ({"state": "FAILED", "exit_code": 127}, False, FAILED),                     # no exit record, non-zero
        ({"state": "COMPLETED", "exit_code": 0}, False, FAILED),                    # never wrote a heartbeat
        ({"state": "COMPLETED", "exit_code": 0, "heartbeat": 1.0}, False, STARTED),
        ({"state": "TIMEOUT", "exit_code": None, "heartbeat": 1.0}, False, IGNORED),
        ({"state": "NODE_FAIL", "exit_code": None}, False, FAILED),                 # killed at once
        ({"state": "CANCELLED", "exit_code": None}, False, IGNORED),               # pilot cancel / scancel
        ({"state": "RUNNING"}, False, IGNORED),
    ]
    for rec, ran, expected in cases:
        assert classify(rec, ran)[0] == expected, (rec, ran)


# ================================================================== counting, holding, probing
def test_failed_starts_hold_the_cluster_with_growing_delays(box):
    mgr, clock, _, work = box
    assert mgr.config.pilot.failed_starts_before_hold == 3          # the documented default
    assert wanted(mgr) == 3                                          # no failure yet: the gate does not cut
    ended_pilot(mgr, clock)
    review(mgr)
    # one failed start: at most 3 - 1 = 2 pilots without a heartbeat in flight
    assert wanted(mgr) == 2 and hold_doc(mgr) is None
    live_pilot(mgr, clock)
    assert wanted(mgr) == 1
    ended_pilot(mgr, clock)
    ended_pilot(mgr, clock)
    review(mgr)
    hold = hold_doc(mgr)
    assert hold is not None and hold["failures"] == 3
    assert hold["until"] == pytest.approx(clock() + 2 * POLL)        # 2 * poll_interval
    assert wanted(mgr) == 0
    assert mgr.holds.allows("box", clock()) is False
    # the wait is over, but a pilot is still in flight: no probe yet
    clock.t += 2 * POLL + 0.1
    assert wanted(mgr) == 0
    mgr.records.pilots.delete_many({"state": "PENDING"})
    assert wanted(mgr) == 1                                          # one probe pilot, not 3
    # each failed probe doubles the wait: 8 s, then 10 s (failed_start_hold_max), then still 10 s
    for expected in (8.0, 10.0, 10.0):
        ended_pilot(mgr, clock)
        review(mgr)
        hold = hold_doc(mgr)
        assert hold["delay"] == expected and hold["until"] == pytest.approx(clock() + expected)
        assert wanted(mgr) == 0
        clock.t += expected + 0.1
    assert hold_doc(mgr)["failures"] == 6
    # the hold says which pilot failed last, and why
    assert hold["pilot"]["state"] == "FAILED" and hold["pilot"]["exit_code"] == 127
    assert "exit code 127" in hold["pilot"]["why"]
    assert hold["stderr_path"] == f"{work}/pilot-{hold['pilot']['job_id']}.err"


def test_a_pilot_that_starts_ends_the_hold(box, launchpad):
    mgr, clock, _, _ = box
    for _ in range(3):
        ended_pilot(mgr, clock)
    review(mgr)
    assert hold_doc(mgr) is not None
    clock.t += 2 * POLL + 1
    # the probe ran a Firework: FireWorks' launch names its FWorker; its job still ended non-zero
    name = ended_pilot(mgr, clock, exit_code=1)
    fworker = mgr.records.pilots.find_one({"_id": name})["fworker"]
    launchpad.launches.insert_one({"launch_id": 99, "fw_id": 1, "state": "COMPLETED", "fworker": {"name": fworker}})
    review(mgr)
    doc = mgr.records.cluster_state("box")
    assert doc["hold"] is None and doc["failed_starts"] == 0
    assert wanted(mgr) == 3
    # an idle pilot that exited normally resets the count too
    ended_pilot(mgr, clock)
    ended_pilot(mgr, clock)
    ended_pilot(mgr, clock, state="COMPLETED", exit_code=0, heartbeat=clock(),
                exit={"time": clock(), "stop": "IDLE", "reason": "no work", "code": 0, "fireworks": 0})
    review(mgr)
    assert mgr.records.cluster_state("box")["failed_starts"] == 0


def test_cancelled_pilots_count_neither_way(box):
    mgr, clock, _, _ = box
    ended_pilot(mgr, clock)
    ended_pilot(mgr, clock)
    for _ in range(3):
        ended_pilot(mgr, clock, state="CANCELLED", exit_code=None)
    review(mgr)
    assert mgr.records.cluster_state("box")["failed_starts"] == 2 and hold_doc(mgr) is None
    # each record is judged once
    review(mgr)
    assert mgr.records.cluster_state("box")["failed_starts"] == 2


def test_changing_the_cluster_file_ends_the_hold(box):
    mgr, clock, cdir, _ = box
    for _ in range(3):
        ended_pilot(mgr, clock)
    old = live_pilot(mgr, clock)                  # submitted under the old settings, fails later
    review(mgr)
    assert hold_doc(mgr) is not None
    clock.t += 1
    path = cdir / "clusters" / "box.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["setup"] = "echo fixed\n"
    path.write_text(yaml.safe_dump(doc))
    review(mgr)                                   # the next cycle reads the file again
    assert mgr.clusters["box"].config.setup.strip() == "echo fixed"
    assert mgr.records.cluster_state("box")["hold"] is None and wanted(mgr) == 3
    # the old pilot's failure does not count against the new settings
    mgr.records.update(old, state="FAILED", exit_code=127, end_time=clock())
    review(mgr)
    assert mgr.records.cluster_state("box")["failed_starts"] == 0
    assert mgr.records.pilots.find_one({"_id": old})["start_outcome"] == IGNORED
    # a file that does not load is ignored: the cluster keeps its settings
    path.write_text("scheduler: [broken\n")
    review(mgr)
    assert mgr.clusters["box"].config.setup.strip() == "echo fixed"


def test_the_stderr_tail_is_read_on_the_cluster_and_scrubbed(box, launchpad):
    mgr, clock, _, work = box
    mgr.holds.secrets = ["s3cretPassw0rd"]
    names = [ended_pilot(mgr, clock) for _ in range(3)]
    job_id = mgr.records.pilots.find_one({"_id": names[-1]})["job_id"]
    lines = [f"line {i}" for i in range(30)] + [
        "pymongo.errors.OperationFailure: auth failed for mongodb://alice:s3cretPassw0rd@203.0.113.200/db",
        "/bin/bash: line 40: /nonexistent/bin/python3: No such file or directory"]
    Path(stderr_path(str(work), job_id)).write_text("\n".join(lines) + "\n")
    review(mgr)
    hold = hold_doc(mgr)
    tail = hold["stderr_tail"].splitlines()
    assert len(tail) == 20 and tail[0] == "line 12"
    assert "No such file or directory" in tail[-1]
    assert "s3cretPassw0rd" not in hold["stderr_tail"] and "203.0.113.200" in hold["stderr_tail"]
    # the command to see the rest works as written (a local cluster: no ssh)
    res = subprocess.run(hold["see_more"], shell=True, capture_output=True, text=True, timeout=30, check=True)
    assert res.stdout.splitlines() == lines


# ================================================================== end to end, local scheduler
def pilot_status_json(cdir: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cdir), "status", "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout)


def test_local_pilots_that_cannot_start_are_held_until_the_file_is_fixed(tmp_path, launchpad, monkeypatch):
    """A real manager and real local pilots whose ``setup:`` line runs an interpreter that does not exist."""
    monkeypatch.setenv("PILOT_LOCAL_STATE", str(tmp_path / "work" / "localsched"))
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    bad = local_cluster(tmp_path / "work", lp_file, ["md"], setup="/nonexistent/bin/python3 -c pass\n")
    cdir = write_config(tmp_path / "cfg", lp_file, {"box": bad}, poll_interval=POLL)
    add_sleepers(launchpad, "md", 1, 0.5)
    mgr = Manager(load_config(cdir), launchpad)
    try:
        hold, submitted = run_until_held(mgr, timeout=60)
        assert submitted <= 3 and hold["failures"] == 3
        assert mgr.run_cycle().submitted == []          # held: nothing within the first wait
        doc = pilot_status_json(cdir)
        (cl,) = doc["clusters"]
        assert cl["hold"]["failures"] == 3 and "No such file or directory" in cl["hold"]["stderr_tail"]
        assert [h["cluster"] for h in doc["needs_you"]["held"]] == ["box"]
        fix(cdir / "clusters" / "box.yaml", setup=None)
        reports = [mgr.run_cycle(), mgr.run_cycle()]
        assert sum(len(r.submitted) for r in reports) >= 1, [d.log_line() for r in reports for d in r.decisions]
        assert mgr.records.cluster_state("box")["hold"] is None
    finally:
        mgr.close()
        _stop_local_pilots()


def fix(path: Path, **fields) -> None:
    doc = yaml.safe_load(path.read_text())
    for k, v in fields.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(yaml.safe_dump(doc))


def run_until_held(mgr: Manager, timeout: float) -> tuple[dict, int]:
    """Cycle until the cluster is held; (its hold, pilots submitted meanwhile)."""
    deadline = time.monotonic() + timeout
    submitted = 0
    while time.monotonic() < deadline:
        submitted += len(mgr.run_cycle().submitted)
        hold = (mgr.records.cluster_state(next(iter(mgr.clusters))) or {}).get("hold")
        if hold:
            return hold, submitted
        time.sleep(1.0)
    raise TimeoutError(f"not held after {timeout} s ({submitted} pilots submitted)")


def _stop_local_pilots() -> None:
    from pilot import localsched

    for line in localsched.status([]):
        jid, state = line.split("|")[:2]
        if state in ("PENDING", "RUNNING"):
            localsched.cancel([jid])


# ================================================================== the must-show, real SLURM
@pytest.mark.slurm
def test_slurm_pilots_with_a_missing_interpreter_are_held_until_the_file_is_fixed(
        launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    from tests.manager.helpers import ssh_cluster
    from tests.manager.test_slurm import scancel_all

    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "t" + os.urandom(4).hex()[:6]
    work = str(remote_tmp / slurm_cluster.name)
    good = ssh_cluster(slurm_cluster, work, str(lp_file), ["md"], cluster_venv)
    bad = {**good, "python": "/nonexistent/bin/python3"}
    cdir = write_config(tmp_path / "cfg", lp_file, {slurm_cluster.name: bad}, poll_interval=POLL,
                        job_name_prefix=prefix)
    (fw_id,) = add_sleepers(launchpad, "md", 1, 0.5)
    mgr = Manager(load_config(cdir), launchpad)
    try:
        hold, submitted = run_until_held(mgr, timeout=60)
        # at most the configured number of pilots before the hold, all of them failed starts
        assert submitted <= 3 and hold["failures"] == 3
        assert launchpad.db["pilots"].count_documents({}) == submitted
        # held: the next cycle, within the first wait (2 * poll_interval), submits nothing
        assert mgr.run_cycle().submitted == []
        doc = pilot_status_json(cdir)
        (cl,) = doc["clusters"]
        # the real error of the batch job, read from its stderr file on the cluster
        assert "/nonexistent/bin/python3" in cl["hold"]["stderr_tail"]
        assert "No such file or directory" in cl["hold"]["stderr_tail"]
        assert cl["hold"]["pilot"]["state"] == "FAILED" and cl["hold"]["see_more"].startswith("ssh ")
        assert [h["cluster"] for h in doc["needs_you"]["held"]] == [slurm_cluster.name]
        # fix the file; the same manager picks it up: a pilot within two cycles, and the work is done
        fix(cdir / "clusters" / f"{slurm_cluster.name}.yaml", python=None)
        reports = [mgr.run_cycle(), mgr.run_cycle()]
        assert sum(len(r.submitted) for r in reports) >= 1, [d.log_line() for r in reports for d in r.decisions]
        deadline = time.monotonic() + 60
        while launchpad.get_fw_by_id(fw_id).state != "COMPLETED":
            assert time.monotonic() < deadline, "the fixed cluster's pilot did not run the Firework"
            mgr.run_cycle()
            time.sleep(1.0)
        assert mgr.records.cluster_state(slurm_cluster.name)["hold"] is None
    finally:
        mgr.close()
        scancel_all(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)
