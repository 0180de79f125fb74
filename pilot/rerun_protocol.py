"""Putting a Firework whose pilot lost it back to READY as a compare-and-set, so that a pilot that finishes
first wins: the one protocol of the manager's reruns (:mod:`pilot.manager.reruns`) and the worker's requeue
(:mod:`pilot.worker.settle`).

A leaf (stdlib, pymongo through the LaunchPad, FireWorks; nothing of pilot) because the worker may not import
the manager: both rooms use this module instead of each keeping a copy.

Why not ``LaunchPad.rerun_fw``: it reads the Firework, then reruns it with no condition. A pilot that completes
the Firework in between has its COMPLETED launch archived, the Firework set READY and its COMPLETED children
reset to WAITING; its result is dropped while the work runs again (issue 16, item 3).

How: the caller read a launch (RUNNING, or RESERVED) that its pilot will not finish, and the Firework holding
it. Under FireWorks' own workflow lock (:class:`fireworks.core.launchpad.WFLock`, the one every workflow
refresh takes, held for a bounded time so a stale lock costs one retry, not 300 s) :func:`claim_and_settle`

1. re-reads the launch: if it is no longer in the state read (the pilot completed or fizzled it, someone
   else requeued it), nothing is done;
2. compare-and-sets the Firework (one ``find_one_and_update`` on ``fireworks`` conditioned on ``fw_id``, the
   state read and the launch id in its ``launches``): if that loses, nothing is done;
3. only then does FireWorks' own bookkeeping, exactly what ``rerun_fw`` does for the winning case
   (``spec._recovery`` unset, :meth:`Workflow.rerun_fw`, ``_update_wf``: the launch archived, the workflow
   states refreshed), or, past the bound, a refresh that leaves the Firework FIZZLED;
4. marks the launch document itself (conditioned on its state) FIZZLED with the reason (a RESERVED launch
   becomes READY, as ``cancel_reservation`` does), so ``detect_lostruns`` and ``pilot status`` see it ended.

``complete_launch`` writes the launch without that lock and without a condition, so a pilot that completes
*after* step 2 (a pilot declared dead that was not) still lands its result, in the archived launch; this is
logged. The dead-pilot rule is what keeps that from happening to live pilots.

The bound and the history: the ``pilot_reruns`` collection, one document per Firework (``_id`` = fw_id:
``count``, ``history`` = [{time, by, reason, pilot}]), and the bound the manager publishes in its
``pilot_manager`` document (``max_reruns``; :data:`DEFAULT_MAX_RERUNS` when no manager ever wrote it). A
collection of its own, not ``spec._pilot_reruns``: FireWorks replaces whole Firework documents from in-memory
copies (``_upsert_fws``, ``_update_wf``), which could drop an entry written meanwhile, and the report already
reads ``pilot_reruns``. Only a launch that ran is written into the history, and only one whose loss is the
Firework's doing (:attr:`LostLaunch.counted`: a crash, or a Firework that never fits) is counted toward the
bound; a reservation that never ran is neither. The count goes up only after the rerun won (a crash between
the two loses one count, never adds a rerun).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("pilot.manager")

#: seconds to wait for a workflow lock before giving up (FireWorks' default is 300)
LOCK_SECONDS = 10.0
#: where the bound is published (the manager's heartbeat document in ``pilot_manager``)
BOUND_FIELD = "max_reruns"
#: the bound when no manager published one (the default of ``max_reruns`` in pilot.yaml)
DEFAULT_MAX_RERUNS = 3

T = TypeVar("T")


class RerunResult(enum.Enum):
    """What a conditional rerun did."""

    RERUN = "rerun"          # back to READY (counted, unless it was only reserved or not the Firework's doing)
    FIZZLED = "fizzled"      # past the bound: FIZZLED with the history in its message
    MOVED_ON = "moved on"    # the launch or the Firework changed since it was read: nothing done


@dataclass(frozen=True)
class LostLaunch:
    """A launch whose pilot will not finish it, as read, and the reason to rerun its Firework."""

    fw_id: int
    launch_id: int
    state: str               # RUNNING or RESERVED: the launch's state when read (and the Firework's, by default)
    pilot: str               # the pilot's job name
    reason: str
    by: str = "manager"      # "manager", or the worker's name
    #: the launch never reached the Firework's ``launches`` (a checkout left half done)
    half: bool = False
    #: the Firework's state when read, where the caller read it apart from the launch's (the worker does)
    fw_state: str | None = None
    #: the loss counts toward ``max_reruns`` (the Firework's doing: a crash, or it never fits); False: the
    #: pilot was told to stop, so the rerun is written into the history but not counted
    counted: bool = True

    @property
    def ran(self) -> bool:
        """The Firework ran under this launch (both RUNNING when read): its rerun goes into the history."""
        return self.state == "RUNNING" and (self.fw_state or self.state) == "RUNNING"


def _direct(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one database step as it is (the manager's way; the worker passes its retrying ``DbRetry``)."""
    del what
    return fn(*args)


def rerun_doc(db: Any, fw_id: int) -> dict[str, Any]:
    """The Firework's rerun document (``count``, ``history``), empty when it was never rerun."""
    return db["pilot_reruns"].find_one({"_id": fw_id}) or {}


def read_bound(db: Any) -> int:
    """The bound the manager published, or :data:`DEFAULT_MAX_RERUNS` when no manager ever did."""
    doc = db["pilot_manager"].find_one({"_id": "manager"}, {BOUND_FIELD: 1}) or {}
    return int(doc.get(BOUND_FIELD, DEFAULT_MAX_RERUNS))


def publish_bound(db: Any, max_reruns: int) -> None:
    """Tell the workers the bound (they read it before counting a requeue of their own)."""
    db["pilot_manager"].update_one({"_id": "manager"}, {"$set": {BOUND_FIELD: int(max_reruns)}}, upsert=True)


def history_text(history: list[dict[str, Any]]) -> str:
    """The history as one line per rerun, for the FIZZLED message a person reads."""
    lines = []
    for h in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(h.get("time") or 0)))
        lines.append(f"{when} UTC by {h.get('by', 'manager')}: {h.get('reason')} (pilot {h.get('pilot')})")
    return "; ".join(lines) or "no earlier reruns recorded"


def set_launch_state(lp: Any, launch_id: int, expected: str, state: str, message: str, pilot: str) -> bool:
    """Move a launch document from ``expected`` to ``state`` with ``message`` (its history kept, as FireWorks'
    Launch keeps it); False when the launch was no longer ``expected`` (its pilot wrote it meanwhile)."""
    from fireworks.core.firework import FWAction

    launch = lp.get_launch_by_id(launch_id)
    if launch.state != expected:
        return False
    launch.state = state
    launch.action = FWAction(stored_data={"_message": message, "_pilot": {"name": pilot, "requeued": True},
                                          "_exception": {"_stacktrace": message, "_details": None}})
    return lp.launches.find_one_and_replace({"launch_id": launch_id, "state": expected},
                                            launch.to_db_dict()) is not None


def utcnow() -> Any:
    """Now, as FireWorks writes ``updated_on``."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def bookkeeping(lp: Any, fw_id: int, fizzle: bool) -> None:
    """Step 3 (under the lock): FireWorks' own rerun (or, with ``fizzle``, its refresh) of the workflow."""
    if not fizzle:
        lp.fireworks.update_one({"fw_id": fw_id}, {"$unset": {"spec._recovery": ""}})
    wf = lp.get_wf_by_fw_id_lzyfw(fw_id)
    updated = wf.refresh(fw_id) if fizzle else wf.rerun_fw(fw_id)
    lp._update_wf(wf, updated)


def _claim(lp: Any, lost: LostLaunch) -> bool:
    """Steps 1 and 2 (under the lock): the launch and the Firework are still as read."""
    launch = lp.launches.find_one({"launch_id": lost.launch_id}, {"state": 1})
    if not launch or launch.get("state") != lost.state:
        return False
    fw = lp.fireworks.find_one_and_update(
        {"fw_id": lost.fw_id, "state": lost.fw_state or lost.state, "launches": lost.launch_id},
        {"$set": {"updated_on": utcnow()}}, projection={"fw_id": 1})
    return fw is not None


def _refresh_if_stuck(lp: Any, fw_id: int) -> None:
    """(Under the lock.) A launch that ended while its Firework still shows RUNNING/RESERVED (its completion's
    refresh met a lock): refresh the workflow, so the Firework follows its launch."""
    fw = lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1, "launches": 1})
    if not fw or fw.get("state") not in ("RUNNING", "RESERVED"):
        return
    active = lp.launches.count_documents({"launch_id": {"$in": list(fw.get("launches") or [])},
                                          "state": {"$in": ["RUNNING", "RESERVED"]}})
    if not active:
        bookkeeping(lp, fw_id, fizzle=True)


def _fizzle(lp: Any, lost: LostLaunch, doc: dict[str, Any], max_reruns: int) -> RerunResult:
    """Past the bound (under the lock): the launch FIZZLED with the history as its message, then the workflow
    refreshed (the Firework follows its launch to FIZZLED, as ``complete_launch(..., "FIZZLED")`` leaves it)."""
    msg = (f"{lost.reason}; not rerun: already rerun {int(doc.get('count') or 0)} times (max_reruns={max_reruns}). "
           f"History: {history_text(list(doc.get('history') or []))}")
    if not set_launch_state(lp, lost.launch_id, lost.state, "FIZZLED", msg, lost.pilot):
        return RerunResult.MOVED_ON
    bookkeeping(lp, lost.fw_id, fizzle=True)
    return RerunResult.FIZZLED


def claim_and_settle(lp: Any, lost: LostLaunch, fizzle: bool, doc: dict[str, Any], max_reruns: int,
                     lock_seconds: float, kill: bool = False) -> RerunResult:
    """Steps 1 to 4 under the workflow lock. A :class:`LockedWorkflowError` (lock held longer than
    ``lock_seconds``) or a database error propagates; with ``kill`` a lock still held after ``lock_seconds`` is
    taken by force (a stale lock, see :func:`conditional_rerun`)."""
    from fireworks.core import launchpad as lpmod

    with lpmod.WFLock(lp, lost.fw_id, expire_secs=lock_seconds, kill=kill):
        if not _claim(lp, lost):
            _refresh_if_stuck(lp, lost.fw_id)
            return RerunResult.MOVED_ON
        if fizzle:
            return _fizzle(lp, lost, doc, max_reruns)
        bookkeeping(lp, lost.fw_id, fizzle=False)
        final = "FIZZLED" if lost.state == "RUNNING" else "READY"
        if not set_launch_state(lp, lost.launch_id, lost.state, final, f"{lost.reason}; Firework requeued to READY",
                                lost.pilot):
            log.warning("fw %d: launch %d was written by its pilot just after the rerun (a pilot taken for "
                        "dead); its result stays in the archived launch", lost.fw_id, lost.launch_id)
    return RerunResult.RERUN


def conditional_rerun(lp: Any, lost: LostLaunch, max_reruns: int, now: float | None = None,
                      lock_seconds: float | None = None,
                      before_claim: Callable[[LostLaunch], None] | None = None,
                      call: Callable[..., Any] = _direct, kill: bool = False) -> RerunResult:
    """Put ``lost``'s Firework back to READY if it is still as read, or FIZZLE it past ``max_reruns``.

    ``before_claim`` is called after the caller's read and before the lock: tests complete the Firework
    there to show that the completion wins. ``call(what, fn, *args)`` runs each database step (the worker's
    retries connection errors). A :class:`LockedWorkflowError` (lock held longer than ``lock_seconds``,
    default :data:`LOCK_SECONDS`) or a database error propagates: the caller retries later. ``kill`` takes a
    lock that is still held after that wait by force: only for a lock the caller has seen held, attempt after
    attempt, for longer than any holder keeps it (a pilot killed in the instant FireWorks held the lock for its
    checkout leaves ``locked: true`` in the workflow for ever; FireWorks has no holder or time in the lock).
    """
    now = time.time() if now is None else now
    lock_seconds = LOCK_SECONDS if lock_seconds is None else lock_seconds
    doc = call(f"reading the reruns of fw {lost.fw_id}", rerun_doc, lp.db, lost.fw_id)
    count = int(doc.get("count") or 0)
    counted = lost.ran and lost.counted
    if before_claim is not None:
        before_claim(lost)
    result = call(f"requeueing fw {lost.fw_id}", claim_and_settle, lp, lost, counted and count >= max_reruns, doc,
                  max_reruns, lock_seconds, kill)
    if result is RerunResult.RERUN and lost.ran:
        update: dict[str, Any] = {"$push": {"history": {"time": now, "by": lost.by, "reason": lost.reason,
                                                        "pilot": lost.pilot}}}
        if counted:
            update["$inc"] = {"count": 1}
        call(f"recording the rerun of fw {lost.fw_id}", lp.db["pilot_reruns"].update_one, {"_id": lost.fw_id},
             update, True)
    return result


__all__ = ["BOUND_FIELD", "DEFAULT_MAX_RERUNS", "LOCK_SECONDS", "LostLaunch", "RerunResult", "bookkeeping",
           "claim_and_settle", "conditional_rerun", "history_text", "publish_bound", "read_bound", "rerun_doc",
           "set_launch_state", "utcnow"]
