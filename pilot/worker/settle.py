"""What happens to a Firework at the end of its child: a result the task reported stands; a launch that is
still RUNNING is archived (marked FIZZLED with a message) and the Firework goes back to READY, so that no
Firework is left RUNNING by a pilot that stopped it, crashed under it or ran out of time."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from pilot.worker.logs import LOG, secs
from pilot.worker.model import ACTIVE_STATES, FINAL_LAUNCH_STATES, LaunchRecord, Outcome
from pilot.worker.protocol import CHILD_NO_WORK

#: seconds to wait for a workflow lock when requeueing (FireWorks' default, 300, would hold the pilot)
LOCK_SECONDS = 30.0
#: the bound when no manager published one (the default of ``max_reruns`` in pilot.yaml)
DEFAULT_MAX_RERUNS = 3

if TYPE_CHECKING:
    from pilot.worker.children import ChildState
    from pilot.worker.database import DbRetry
    from pilot.worker.model import WorkerConfig


def firework_final(child: ChildState) -> bool:
    """True when the worker completed the child's launch and the workflow refresh took its lock."""
    return child.fw_id is not None and child.end_state in FINAL_LAUNCH_STATES and not child.lock_failed


def describe_status(child: ChildState) -> str:
    """The child's exit status in words, for the log and the archived launch."""
    status = child.status
    if status is None:
        return "killed by the worker, exit status unknown" if child.status_lost else "unknown status"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.WEXITSTATUS(status)}"


class Settler:
    """Settles each child's Firework against the database (through the worker's retrying ``db``)."""

    def __init__(self, cfg: WorkerConfig, lp: Any, db: DbRetry, crashed: set[int]) -> None:
        self.cfg = cfg
        self.lp = lp
        self.db = db
        #: Fireworks whose process died here without a stop request: not pulled again by this worker
        self.crashed = crashed

    def settle(self, child: ChildState) -> LaunchRecord:
        """Make sure the child's Firework is not left RUNNING and say what became of it."""
        exit_ok = child.status is not None and os.WIFEXITED(child.status)
        code = os.WEXITSTATUS(child.status) if exit_ok and child.status is not None else None
        status_text = describe_status(child)
        fw_id = child.fw_id if child.fw_id is not None else child.reserved_fw

        if fw_id is None:
            if code == CHILD_NO_WORK:
                return LaunchRecord(Outcome.NO_WORK)
            detail = f"Firework child {child.pid} failed before taking a Firework ({status_text})"
            LOG.warning("%s; see its traceback above", detail)
            return LaunchRecord(Outcome.CHILD_FAILED, detail=detail)

        duration = time.monotonic() - child.started_mono if child.started_mono is not None else 0.0
        if firework_final(child):
            # FireWorks completed the launch and refreshed the workflow: nothing to check or repair.
            outcome = Outcome(child.end_state)
            LOG.info("fw %d %s in %s s", fw_id, outcome.value, secs(duration))
            return LaunchRecord(outcome, fw_id, child.launch_id, child.name, duration)

        fw_doc = self.db(f"reading fw {fw_id}", self.lp.fireworks.find_one, {"fw_id": fw_id},
                         {"state": 1, "launches": 1, "name": 1})
        if fw_doc is None:
            LOG.error("fw %d: vanished from the database while it ran (%s)", fw_id, status_text)
            return LaunchRecord(Outcome.LOST, fw_id, child.launch_id, child.name, duration)
        name = child.name or str(fw_doc.get("name", ""))

        launch_state = None
        if child.launch_id is not None:
            launch_doc = self.db(f"reading launch {child.launch_id}", self.lp.launches.find_one,
                                 {"launch_id": child.launch_id}, {"state": 1})
            launch_state = launch_doc.get("state") if launch_doc else None

        if launch_state in FINAL_LAUNCH_STATES:
            # The task's own result stands; only the workflow refresh may be missing (its lock was taken).
            if fw_doc.get("state") in ACTIVE_STATES:
                self.db(f"refreshing the workflow of fw {fw_id}", self.lp._refresh_wf, fw_id)
            outcome = Outcome(launch_state)
            LOG.info("fw %d %s in %s s (child %s)", fw_id, outcome.value, secs(duration), status_text)
            return LaunchRecord(outcome, fw_id, child.launch_id, name, duration)
        return self._requeue(child, fw_id, fw_doc, launch_state, LaunchRecord(
            Outcome.REQUEUED, fw_id, child.launch_id, name, duration), status_text)

    def _requeue(self, child: ChildState, fw_id: int, fw_doc: dict[str, Any], launch_state: str | None,
                 record: LaunchRecord, status_text: str) -> LaunchRecord:
        """The launch is still RUNNING (or was never fully created): back to READY, keeping the history."""
        why = child.stop_why or "the Firework process died"
        message = f"pilot {self.cfg.name}: {why}; Firework process {status_text}"
        if fw_doc.get("state") in ACTIVE_STATES:
            if child.launch_id is not None and child.launch_id in (fw_doc.get("launches") or []):
                record.outcome = self._bounded_requeue(fw_id, child.launch_id, str(fw_doc.get("state")),
                                                       launch_state, message)
                if record.outcome is not Outcome.REQUEUED:
                    record.detail = why
                    return record
            else:  # reserved, but the launch never reached the Firework document
                self.db(f"refreshing the workflow of fw {fw_id}", self.lp._refresh_wf, fw_id)
        if child.launch_id is not None and launch_state in ACTIVE_STATES:
            self.db(f"archiving launch {child.launch_id}", self.fizzle_launch, child.launch_id,
                    f"{message}; Firework requeued to READY")
        note = ""
        if child.stop_sent_at is None:
            self.crashed.add(fw_id)
            note = "; this worker will not pull it again"
        else:
            note = f"; {time.monotonic() - child.stop_sent_at:.2f} s after the stop request"
        new_state = self.db(f"reading fw {fw_id}", self.lp.fireworks.find_one, {"fw_id": fw_id}, {"state": 1})
        LOG.warning("fw %d requeued (now %s) after %s s: %s, Firework process %s%s", fw_id,
                    (new_state or {}).get("state"), secs(record.duration), why, status_text, note)
        record.detail = why
        return record

    def _bounded_requeue(self, fw_id: int, launch_id: int, fw_state: str, launch_state: str | None,
                         message: str) -> Outcome:
        """Requeue as a compare-and-set under the workflow lock, within the bound shared with the manager.

        The same protocol as the manager's :mod:`pilot.manager.reruns` (which this room may not import): the
        count and history in ``pilot_reruns`` (one document per Firework), the bound ``max_reruns`` the manager
        publishes in its ``pilot_manager`` document (3 when no manager ever wrote it). Only a RUNNING launch
        counts (a reservation that never ran is not the Firework's fault); the count goes up after the requeue
        won. Past the bound the launch is FIZZLED with the history and the Firework follows it. A workflow lock
        held too long leaves the Firework RUNNING here: the manager puts it back once this pilot has ended.
        """
        import fireworks.core.launchpad as lpmod

        counted = fw_state == "RUNNING" and launch_state == "RUNNING"
        doc = self.db(f"reading the reruns of fw {fw_id}", self.lp.db["pilot_reruns"].find_one, {"_id": fw_id}) or {}
        bound = self.db("reading max_reruns", self.lp.db["pilot_manager"].find_one, {"_id": "manager"},
                        {"max_reruns": 1}) or {}
        max_reruns = int(bound.get("max_reruns", DEFAULT_MAX_RERUNS))
        count = int(doc.get("count") or 0)
        fizzle = counted and count >= max_reruns
        try:
            won = self.db(f"requeueing fw {fw_id}", self._claim_and_rerun, fw_id, launch_id, fw_state,
                          launch_state, fizzle, message, doc, max_reruns)
        except lpmod.LockedWorkflowError as exc:
            LOG.error("fw %d: not requeued, its workflow stayed locked (%s); the manager puts it back once this "
                      "pilot has ended", fw_id, exc)
            return Outcome.LOST
        if not won:
            launch = self.db(f"reading launch {launch_id}", self.lp.launches.find_one, {"launch_id": launch_id},
                             {"state": 1}) or {}
            LOG.info("fw %d: not requeued: it moved on (its launch is now %s)", fw_id, launch.get("state"))
            if launch.get("state") in FINAL_LAUNCH_STATES:   # its result stands; refresh as settle() does
                self.db(f"refreshing the workflow of fw {fw_id}", self.lp._refresh_wf, fw_id)
                return Outcome(launch["state"])
            return Outcome.LOST
        if fizzle:
            LOG.error("fw %d FIZZLED: already requeued %d times (max_reruns=%d)", fw_id, count, max_reruns)
            return Outcome.FIZZLED
        if counted:
            self.db(f"counting the requeue of fw {fw_id}", self.lp.db["pilot_reruns"].update_one, {"_id": fw_id},
                    {"$inc": {"count": 1}, "$push": {"history": {
                        "time": time.time(), "by": self.cfg.name, "reason": message,
                        # the job name, as the manager writes it, so `pilot report` finds the pilot's cluster
                        "pilot": os.environ.get("PILOT_JOB_NAME") or self.cfg.name}}},
                    upsert=True)
        return Outcome.REQUEUED

    def _claim_and_rerun(self, fw_id: int, launch_id: int, fw_state: str, launch_state: str | None, fizzle: bool,
                         message: str, doc: dict[str, Any], max_reruns: int) -> bool:
        """Under the workflow lock: the launch and the Firework still as read (else False), then FireWorks'
        own rerun (``rerun_fw``'s effects: launch archived, workflow refreshed) or, past the bound, the launch
        FIZZLED with the history and the workflow refreshed."""
        import datetime

        import fireworks.core.launchpad as lpmod

        with lpmod.WFLock(self.lp, fw_id, expire_secs=LOCK_SECONDS, kill=False):
            launch = self.lp.launches.find_one({"launch_id": launch_id}, {"state": 1})
            if not launch or launch.get("state") != launch_state or self.lp.fireworks.find_one_and_update(
                    {"fw_id": fw_id, "state": fw_state, "launches": launch_id},
                    {"$set": {"updated_on": datetime.datetime.now(datetime.timezone.utc)}}) is None:
                return False
            if fizzle:
                history = "; ".join(f"{h.get('by')}: {h.get('reason')}" for h in doc.get("history") or [])
                self.fizzle_launch(launch_id, f"{message}; not requeued: already requeued {doc.get('count')} "
                                   f"times (max_reruns={max_reruns}). History: {history or 'none recorded'}")
                wf = self.lp.get_wf_by_fw_id_lzyfw(fw_id)
                updated = wf.refresh(fw_id)
            else:
                self.lp.fireworks.update_one({"fw_id": fw_id}, {"$unset": {"spec._recovery": ""}})
                wf = self.lp.get_wf_by_fw_id_lzyfw(fw_id)
                updated = wf.rerun_fw(fw_id)
            self.lp._update_wf(wf, updated)
        return True

    def fizzle_launch(self, launch_id: int, message: str) -> None:
        """Mark a launch FIZZLED with ``message`` (history kept), without touching its Firework."""
        from fireworks.core.firework import FWAction

        launch = self.lp.get_launch_by_id(launch_id)
        if launch.state not in ACTIVE_STATES:
            return
        prev = launch.state
        launch.state = "FIZZLED"
        launch.action = FWAction(stored_data={"_message": message, "_pilot": {"name": self.cfg.name,
                                                                               "requeued": True}})
        self.lp.launches.find_one_and_replace({"launch_id": launch_id, "state": prev}, launch.to_db_dict())
