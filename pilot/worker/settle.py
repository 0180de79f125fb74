"""What happens to a Firework at the end of its child: a result the task reported stands; a launch that is
still RUNNING is archived (marked FIZZLED with a message) and the Firework goes back to READY, so that no
Firework is left RUNNING by a pilot that stopped it, crashed under it or ran out of time."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from pilot.rerun_protocol import LostLaunch, RerunResult, conditional_rerun, read_bound, set_launch_state
from pilot.worker.logs import LOG, secs
from pilot.worker.model import ACTIVE_STATES, FINAL_LAUNCH_STATES, LaunchRecord, Outcome
from pilot.worker.protocol import CHILD_NO_WORK

#: seconds to wait for a workflow lock when requeueing (FireWorks' default, 300, would hold the pilot)
LOCK_SECONDS = 30.0

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
        #: the longest time this pilot could give a Firework: from now (it starts taking work) to deadline - margin
        self.window = None if cfg.deadline is None else cfg.deadline - cfg.margin - time.time()

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
                         {"state": 1, "launches": 1, "name": 1, "spec._pilot.walltime": 1})
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
                counted, count_note = self.counts(child, fw_doc, record.duration)
                record.outcome = self._bounded_requeue(LostLaunch(
                    fw_id, child.launch_id, launch_state or "", os.environ.get("PILOT_JOB_NAME") or self.cfg.name,
                    f"{message}; {count_note}", by=self.cfg.name, fw_state=str(fw_doc.get("state")),
                    counted=counted))
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

    def counts(self, child: ChildState, fw_doc: dict[str, Any], duration: float) -> tuple[bool, str]:
        """Whether this requeue counts toward ``max_reruns``, and the words the history gets for it.

        Counted: a crash (the Firework's process died without a stop request: it may kill every pilot that
        takes it), and a Firework that never fits: stopped after it ran as long as it asked for
        (``spec._pilot.walltime``), or, asking for nothing, as long as this pilot's whole usable time. Not
        counted: the pilot was told to stop (the deadline, SIGUSR1, SIGTERM/SIGINT) while the Firework was still
        within what it asked for: a preemption is not the Firework's doing.
        """
        if child.stop_sent_at is None:
            return True, "counted toward max_reruns (the Firework's process died)"
        walltime = ((fw_doc.get("spec") or {}).get("_pilot") or {}).get("walltime")
        offered: float | None
        if isinstance(walltime, (int, float)) and not isinstance(walltime, bool):
            offered, what = float(walltime), f"its walltime of {secs(float(walltime))} s"
        else:
            offered, what = self.window, "this pilot's whole usable time"
        if offered is not None and duration >= offered:
            return True, (f"counted toward max_reruns: it never fits (stopped after {secs(duration)} s, "
                          f"not less than {what})")
        return False, "not counted toward max_reruns (the pilot was told to stop)"

    def _bounded_requeue(self, lost: LostLaunch) -> Outcome:
        """Requeue as a compare-and-set under the workflow lock, within the bound shared with the manager.

        The protocol of :mod:`pilot.rerun_protocol`, the manager's too: the history in ``pilot_reruns`` (one
        document per Firework), the bound ``max_reruns`` the manager publishes in its ``pilot_manager``
        document (3 when no manager ever wrote it). Only a RUNNING launch goes into the history, and only a
        counted one (:meth:`counts`) toward the bound; the count goes up after the requeue won. Past the bound
        the launch is FIZZLED with the history and the Firework follows it. A workflow lock held too long
        leaves the Firework RUNNING here: the manager puts it back once this pilot has ended.
        """
        import fireworks.core.launchpad as lpmod

        max_reruns = self.db("reading max_reruns", read_bound, self.lp.db)
        try:
            result = conditional_rerun(self.lp, lost, max_reruns, lock_seconds=LOCK_SECONDS, call=self.db)
        except lpmod.LockedWorkflowError as exc:
            LOG.error("fw %d: not requeued, its workflow stayed locked (%s); the manager puts it back once this "
                      "pilot has ended", lost.fw_id, exc)
            return Outcome.LOST
        if result is RerunResult.MOVED_ON:
            launch = self.db(f"reading launch {lost.launch_id}", self.lp.launches.find_one,
                             {"launch_id": lost.launch_id}, {"state": 1}) or {}
            LOG.info("fw %d: not requeued: it moved on (its launch is now %s)", lost.fw_id, launch.get("state"))
            if launch.get("state") in FINAL_LAUNCH_STATES:   # its result stands; refresh as settle() does
                self.db(f"refreshing the workflow of fw {lost.fw_id}", self.lp._refresh_wf, lost.fw_id)
                return Outcome(launch["state"])
            return Outcome.LOST
        if result is RerunResult.FIZZLED:
            LOG.error("fw %d FIZZLED: already requeued max_reruns=%d times", lost.fw_id, max_reruns)
            return Outcome.FIZZLED
        return Outcome.REQUEUED

    def fizzle_launch(self, launch_id: int, message: str) -> None:
        """Mark a launch FIZZLED with ``message`` (history kept), without touching its Firework."""
        launch = self.lp.launches.find_one({"launch_id": launch_id}, {"state": 1}) or {}
        if launch.get("state") in ACTIVE_STATES:
            set_launch_state(self.lp, launch_id, str(launch["state"]), "FIZZLED", message, self.cfg.name)
