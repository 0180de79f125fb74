"""Reruns of a dead pilot's work are compare-and-sets, bounded once for manager and worker (issue 16).

Expected values come from FireWorks' semantics: a Firework whose launch COMPLETED is COMPLETED and its
child READY (``Workflow.refresh``); a rerun archives the launch (``archived_launches``) and leaves the
Firework READY (``Workflow.rerun_fw``); a FIZZLED launch leaves its Firework FIZZLED. Runs on the embedded
LaunchPad (the ``launchpad`` fixture): no cluster needed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fireworks import Firework, FWorker, ScriptTask, Workflow
from fireworks.core.firework import FWAction

from pilot.manager import reruns
from pilot.manager.records import Records
from pilot.manager.runtime import CycleReport, ManagerSettings
from pilot.manager.tracking import Tracker
from pilot.worker.children import ChildState
from pilot.worker.database import DbRetry
from pilot.worker.model import Outcome, WorkerConfig
from pilot.worker.settle import Settler


def add_chain(lp, name: str = "seg") -> tuple[int, int]:
    """A parent -> child workflow; returns (parent fw_id, child fw_id)."""
    parent = Firework(ScriptTask.from_str("true"), name=f"{name}-parent", spec={"_category": "md"})
    child = Firework(ScriptTask.from_str("true"), name=f"{name}-child", spec={"_category": "md"}, parents=[parent])
    ids = (parent.fw_id, child.fw_id)   # add_wf renumbers the Fireworks in place
    old_new = lp.add_wf(Workflow([parent, child]))
    return old_new[ids[0]], old_new[ids[1]]


def checkout(lp, fworker: str, fw_id: int, tmp: Path, state: str = "RUNNING") -> int:
    fw, launch_id = lp.checkout_fw(FWorker(name=fworker), str(tmp), fw_id=fw_id, state=state)
    assert fw is not None and fw.fw_id == fw_id
    return int(launch_id)


def dead_pilot(records: Records, job: str, job_id: str) -> str:
    """The record of a pilot that ended (FAILED) with its Fireworks still held: returns its FWorker name."""
    records.add_intent(job, "box", "md", 3600.0, 60.0, "/dev/null", now=time.time() - 100)
    records.update(job, job_id=job_id, fworker=f"box-{job_id}", state="FAILED", end_time=time.time())
    return f"box-{job_id}"


def tracker(lp, max_reruns: int = 3) -> Tracker:
    return Tracker(Records(lp.db), lp, SimpleNamespace(max_reruns=max_reruns, poll_interval=60.0),  # type: ignore[arg-type]
                   ManagerSettings())


def fw_doc(lp, fw_id: int) -> dict:
    return lp.fireworks.find_one({"fw_id": fw_id})


def test_completion_between_read_and_rerun_wins(launchpad, tmp_path):
    lp = launchpad
    parent, child = add_chain(lp)
    tr = tracker(lp)
    launch_id = checkout(lp, dead_pilot(tr.records, "fwp.md.a", "101"), parent, tmp_path)

    def pilot_completes(lost: reruns.LostLaunch) -> None:   # after the manager's read, before its CAS
        assert (lost.fw_id, lost.launch_id, lost.state) == (parent, launch_id, "RUNNING")
        lp.complete_launch(launch_id, FWAction(stored_data={"energy": -42.0}), "COMPLETED")

    tr.before_claim = pilot_completes
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)

    assert report.reruns == [] and report.fizzled == []
    doc = fw_doc(lp, parent)
    assert doc["state"] == "COMPLETED"
    assert doc["launches"] == [launch_id] and not doc.get("archived_launches")
    launch = lp.launches.find_one({"launch_id": launch_id})
    assert launch["state"] == "COMPLETED" and launch["action"]["stored_data"] == {"energy": -42.0}
    assert fw_doc(lp, child)["state"] == "READY"          # untouched: what its parent's completion made it
    assert lp.db["pilot_reruns"].count_documents({}) == 0  # nothing counted
    assert tr.records.pilots.find_one({"_id": "fwp.md.a"})["reconciled"] is True


def test_completed_launch_whose_refresh_was_skipped_is_not_rerun(launchpad, tmp_path):
    """The pilot's launch write landed but its workflow refresh did not (the lock was taken): the Firework
    document still says RUNNING. The rerun must look at the launch, not only at the Firework."""
    lp = launchpad
    parent, child = add_chain(lp)
    tr = tracker(lp)
    launch_id = checkout(lp, dead_pilot(tr.records, "fwp.md.b", "102"), parent, tmp_path)

    def launch_written_refresh_skipped(lost: reruns.LostLaunch) -> None:   # complete_launch's first half
        launch = lp.get_launch_by_id(launch_id)
        launch.state, launch.action = "COMPLETED", FWAction(stored_data={"energy": -1.0})
        lp.launches.find_one_and_replace({"launch_id": launch_id}, launch.to_db_dict())

    tr.before_claim = launch_written_refresh_skipped
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)
    assert report.reruns == []
    assert fw_doc(lp, parent)["state"] == "COMPLETED"     # refreshed after the CAS lost
    assert fw_doc(lp, parent)["launches"] == [launch_id]
    assert fw_doc(lp, child)["state"] == "READY"


def test_reserved_firework_of_a_dead_pilot_goes_back_to_ready(launchpad, tmp_path):
    lp = launchpad
    parent, child = add_chain(lp)
    tr = tracker(lp)
    launch_id = checkout(lp, dead_pilot(tr.records, "fwp.md.c", "103"), parent, tmp_path, state="RESERVED")
    assert fw_doc(lp, parent)["state"] == "RESERVED"
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)
    assert report.reruns == [parent]
    doc = fw_doc(lp, parent)
    assert doc["state"] == "READY" and not doc.get("launches") and doc["archived_launches"] == [launch_id]
    assert lp.launches.find_one({"launch_id": launch_id})["state"] == "READY"   # as cancel_reservation does
    assert fw_doc(lp, child)["state"] == "WAITING"
    assert lp.db["pilot_reruns"].count_documents({}) == 0   # a reservation that never ran is not counted


def test_half_done_checkout_of_a_dead_pilot_goes_back_to_ready(launchpad, tmp_path):
    """The pilot died inside ``checkout_fw``: the Firework is RESERVED and its launch document written, but the
    launch never reached the Firework's ``launches``."""
    from fireworks.core.firework import Launch

    lp = launchpad
    parent, child = add_chain(lp)
    tr = tracker(lp)
    fworker = dead_pilot(tr.records, "fwp.md.h", "104")
    assert lp._get_a_fw_to_run(fw_id=parent).fw_id == parent     # FireWorks' first step of a checkout
    launch = Launch("RESERVED", str(tmp_path), FWorker(name=fworker), launch_id=lp.get_new_launch_id(),
                    fw_id=parent)
    lp.launches.insert_one(launch.to_db_dict())                   # its second; the third never happened
    assert fw_doc(lp, parent)["state"] == "RESERVED"
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)
    assert report.reruns == [parent]
    assert fw_doc(lp, parent)["state"] == "READY"
    assert lp.launches.find_one({"launch_id": launch.launch_id})["state"] == "READY"
    assert fw_doc(lp, child)["state"] == "WAITING"
    assert lp.db["pilot_reruns"].count_documents({}) == 0


def test_firework_taken_by_a_live_pilot_is_left_alone(launchpad, tmp_path):
    """The dead pilot's launch is archived and a live pilot runs the Firework now: nothing to do."""
    lp = launchpad
    parent, _ = add_chain(lp)
    tr = tracker(lp)
    old = checkout(lp, dead_pilot(tr.records, "fwp.md.o", "105"), parent, tmp_path)
    lp.rerun_fw(parent)                                   # archived; the old launch document stays RUNNING
    new = checkout(lp, "box-999", parent, tmp_path)       # a live pilot's
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)
    assert report.reruns == []
    doc = fw_doc(lp, parent)
    assert doc["state"] == "RUNNING" and doc["launches"] == [new] and doc["archived_launches"] == [old]
    assert lp.launches.find_one({"launch_id": new})["state"] == "RUNNING"


def worker_requeue(lp, fw_id: int, launch_id: int, name: str, tmp: Path) -> Outcome:
    """The worker's settle path for a Firework process killed under it (no stop request)."""
    cfg = WorkerConfig(launchpad_file=tmp / "none.yaml", categories=("md",), name=name, deadline=None)
    settler = Settler(cfg, lp, DbRetry(cfg, [], time.sleep), set())
    child = ChildState(pid=0, call_fd=-1, reply_fd=-1, fw_id=fw_id, launch_id=launch_id,
                       started_mono=time.monotonic(), status=signal.SIGKILL)
    assert os.WIFSIGNALED(child.status or 0)
    return settler.settle(child).outcome


@pytest.mark.parametrize(("max_reruns", "order", "published"),
                         [(4, "MWMWM", True), (2, "MWW", True), (3, "WWWW", False)])
def test_manager_and_worker_share_one_bound_and_history(launchpad, tmp_path, max_reruns, order, published):
    """Requeued exactly max_reruns times across both paths, then FIZZLED with the history. Without a manager
    that published its bound, a worker uses max_reruns' documented default, 3."""
    lp = launchpad
    parent, child = add_chain(lp)
    tr = tracker(lp, max_reruns)
    if published:
        reruns.publish_bound(lp.db, max_reruns)   # what the manager's every cycle does
    launches = []
    for i, who in enumerate(order):
        fworker = dead_pilot(tr.records, f"fwp.md.{i}", str(200 + i))
        launches.append(checkout(lp, fworker, parent, tmp_path))
        if who == "M":
            tr.reconcile_lost_work(CycleReport(started=time.time()))
        else:
            outcome = worker_requeue(lp, parent, launches[-1], fworker, tmp_path)
            assert outcome is (Outcome.REQUEUED if i < max_reruns else Outcome.FIZZLED)
        expected = "READY" if i < max_reruns else "FIZZLED"
        assert fw_doc(lp, parent)["state"] == expected, (i, who)
    assert len(order) == max_reruns + 1
    doc = lp.db["pilot_reruns"].find_one({"_id": parent})
    assert doc["count"] == max_reruns
    assert [h["by"] == "manager" for h in doc["history"]] == [w == "M" for w in order[:max_reruns]]
    fw = fw_doc(lp, parent)
    assert fw["archived_launches"] == launches[:max_reruns] and fw["launches"] == [launches[-1]]
    last = lp.launches.find_one({"launch_id": launches[-1]})
    message = last["action"]["stored_data"]["_message"]
    assert last["state"] == "FIZZLED" and f"max_reruns={max_reruns}" in message
    for h in doc["history"]:
        assert h["reason"] in message
    assert fw_doc(lp, child)["state"] == "WAITING"


def test_one_failing_record_does_not_stop_the_others(launchpad, tmp_path, monkeypatch):
    lp = launchpad
    a, _ = add_chain(lp, "a")
    b, _ = add_chain(lp, "b")
    tr = tracker(lp)
    checkout(lp, dead_pilot(tr.records, "fwp.md.x", "301"), a, tmp_path)
    checkout(lp, dead_pilot(tr.records, "fwp.md.y", "302"), b, tmp_path)
    # a's workflow is locked by someone else (a stale lock): its rerun gives up after the lock wait
    monkeypatch.setattr(reruns, "LOCK_SECONDS", 0.3)
    lp.workflows.update_one({"nodes": a}, {"$set": {"locked": True}})

    def boom(lost: reruns.LostLaunch) -> None:
        if lost.fw_id == b:
            raise RuntimeError("database hiccup")

    tr.before_claim = boom
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)   # neither failure escapes
    assert report.reruns == []
    assert [fw_doc(lp, f)["state"] for f in (a, b)] == ["RUNNING", "RUNNING"]
    assert tr.records.pilots.count_documents({"reconciled": True}) == 0
    assert lp.db["pilot_reruns"].count_documents({}) == 0   # a failed rerun is not counted

    lp.workflows.update_one({"nodes": a}, {"$unset": {"locked": True}})
    tr.before_claim = None
    report = CycleReport(started=time.time())
    tr.reconcile_lost_work(report)   # the next cycle retries both
    assert sorted(report.reruns) == sorted([a, b])
    assert [fw_doc(lp, f)["state"] for f in (a, b)] == ["READY", "READY"]
    assert tr.records.pilots.count_documents({"reconciled": True}) == 2


def test_a_stale_workflow_lock_is_taken_by_force_after_fireworks_expiry(launchpad, tmp_path, monkeypatch):
    """A pilot killed in the instant FireWorks held the workflow lock for its checkout leaves ``locked: true``
    for ever (found by the soak test). Reruns fail on it until it has been seen locked, try after try, for
    FireWorks' own WFLOCK_EXPIRATION_SECS; then the lock is taken by force and the Firework goes back to READY."""
    from fireworks.fw_config import WFLOCK_EXPIRATION_SECS

    lp = launchpad
    parent, child = add_chain(lp)
    clock = [time.time()]
    tr = Tracker(Records(lp.db), lp, SimpleNamespace(max_reruns=3, poll_interval=60.0),  # type: ignore[arg-type]
                 ManagerSettings(clock=lambda: clock[0]))
    launch_id = checkout(lp, dead_pilot(tr.records, "fwp.md.lock", "401"), parent, tmp_path)
    lp.workflows.update_one({"nodes": parent}, {"$set": {"locked": True}})   # its holder died
    monkeypatch.setattr(reruns, "LOCK_SECONDS", 0.3)

    t0 = clock[0]
    for offset in (0.0, WFLOCK_EXPIRATION_SECS / 2, WFLOCK_EXPIRATION_SECS - 1):
        clock[0] = t0 + offset
        report = CycleReport(started=clock[0])
        tr.reconcile_lost_work(report)
        assert report.reruns == [] and fw_doc(lp, parent)["state"] == "RUNNING"
    clock[0] += 2   # now locked, through every try, for longer than FireWorks calls a lock expired
    report = CycleReport(started=clock[0])
    tr.reconcile_lost_work(report)
    assert report.reruns == [parent]
    assert fw_doc(lp, parent)["state"] == "READY" and fw_doc(lp, parent)["archived_launches"] == [launch_id]
    assert "locked" not in lp.workflows.find_one({"nodes": parent})
    assert fw_doc(lp, child)["state"] == "WAITING"
    assert tr.records.pilots.count_documents({"reconciled": True}) == 1


def test_a_reservation_whose_pilot_died_inside_the_checkout_goes_back_to_ready(launchpad, tmp_path):
    """Found by the soak test: a pilot killed between FireWorks' reservation (``_get_a_fw_to_run`` sets the
    Firework RESERVED) and the launch document it writes next leaves a RESERVED Firework that no launch names.
    Once it has been so for twice FireWorks' lock expiry it goes back to READY (uncounted); a reservation that a
    launch names is left alone."""
    lp = launchpad
    orphan, orphan_child = add_chain(lp, "orphan")
    held, _ = add_chain(lp, "held")
    assert lp._get_a_fw_to_run(query={"fw_id": orphan}, checkout=True).fw_id == orphan   # then the pilot died
    checkout(lp, "box-live", held, tmp_path, state="RESERVED")     # a live pilot's reservation, with its launch
    clock = [time.time()]
    tr = Tracker(Records(lp.db), lp, SimpleNamespace(max_reruns=3, poll_interval=60.0),  # type: ignore[arg-type]
                 ManagerSettings(clock=lambda: clock[0]))
    report = CycleReport(started=clock[0])
    tr.reconcile_lost_work(report)
    assert report.reruns == [] and fw_doc(lp, orphan)["state"] == "RESERVED"   # may still be mid-checkout
    clock[0] += reruns.orphan_reservation_seconds() + 1
    report = CycleReport(started=clock[0])
    tr.reconcile_lost_work(report)
    assert report.reruns == [orphan]
    assert fw_doc(lp, orphan)["state"] == "READY" and not fw_doc(lp, orphan).get("launches")
    assert fw_doc(lp, orphan_child)["state"] == "WAITING"
    assert fw_doc(lp, held)["state"] == "RESERVED"
    assert lp.db["pilot_reruns"].count_documents({}) == 0
