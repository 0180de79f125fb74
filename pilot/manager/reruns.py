"""Putting a dead pilot's Firework back to READY as a compare-and-set, so that a pilot that finishes first wins.

Why not ``LaunchPad.rerun_fw``: it reads the Firework, then reruns it with no condition. A pilot that completes
the Firework in between has its COMPLETED launch archived, the Firework set READY and its COMPLETED children
reset to WAITING; its result is dropped while the work runs again (issue 16, item 3).

How: the manager read a launch (RUNNING, or RESERVED) of a pilot it knows is dead, and the Firework holding
it. Under FireWorks' own workflow lock (:class:`fireworks.core.launchpad.WFLock`, the one every workflow
refresh takes, held for a bounded time so a stale lock costs one retry, not 300 s) it

1. re-reads the launch: if it is no longer in the state read (the pilot completed or fizzled it, someone
   else requeued it), nothing is done;
2. compare-and-sets the Firework (one ``find_one_and_update`` on ``fireworks`` conditioned on ``fw_id``, the
   state read and the launch id in its ``launches``): if that loses, nothing is done;
3. only then does FireWorks' own bookkeeping, exactly what ``rerun_fw`` does for the winning case
   (``spec._recovery`` unset, :meth:`Workflow.rerun_fw`, ``_update_wf``: the launch archived, the workflow
   states refreshed), or, past the bound, a refresh that leaves the Firework FIZZLED;
4. marks the launch document itself (conditioned on its state) FIZZLED with the reason (a RESERVED launch
   becomes READY, as ``cancel_reservation`` does), so ``detect_lostruns`` and ``pilot status`` see it ended.

A checkout the dead pilot left half done (launch document written, Firework RESERVED without it) is
released by :func:`release_half_checkout`, under the same lock and conditions.

``complete_launch`` writes the launch without that lock and without a condition, so a pilot that completes
*after* step 2 (a pilot declared dead that was not) still lands its result, in the archived launch; this is
logged. The dead-pilot rule is what keeps that from happening to live pilots.

The bound and the history are shared with the worker's requeue (``pilot/worker/settle.py``), which cannot
import this room; they share the data instead: the ``pilot_reruns`` collection, one document per Firework
(``_id`` = fw_id: ``count``, ``history`` = [{time, by, reason, pilot}]), and the bound the manager publishes
in its ``pilot_manager`` document (``max_reruns``). A collection of its own, not ``spec._pilot_reruns``:
FireWorks replaces whole Firework documents from in-memory copies (``_upsert_fws``, ``_update_wf``), which
could drop an entry written meanwhile, and the report already reads ``pilot_reruns``. The count goes up only
after the rerun won (a crash between the two loses one count, never adds a rerun).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pilot.manager")

#: seconds to wait for a workflow lock before giving up for this cycle (FireWorks' default is 300)
LOCK_SECONDS = 10.0
#: where the bound the worker's requeue reads is published (the manager's heartbeat document)
BOUND_FIELD = "max_reruns"
DEFAULT_MAX_RERUNS = 3


class RerunResult(enum.Enum):
    """What a conditional rerun did."""

    RERUN = "rerun"          # back to READY (counted, unless it was only reserved)
    FIZZLED = "fizzled"      # past the bound: FIZZLED with the history in its message
    MOVED_ON = "moved on"    # the launch or the Firework changed since it was read: nothing done


@dataclass(frozen=True)
class LostLaunch:
    """A launch of a dead pilot as the manager read it, and the reason to rerun its Firework."""

    fw_id: int
    launch_id: int
    state: str               # RUNNING or RESERVED: the state of both the launch and the Firework when read
    pilot: str               # the pilot's job name
    reason: str
    by: str = "manager"
    #: the launch never reached the Firework's ``launches`` (a checkout left half done)
    half: bool = False


def rerun_doc(db: Any, fw_id: int) -> dict[str, Any]:
    """The Firework's rerun document (``count``, ``history``), empty when it was never rerun."""
    return db["pilot_reruns"].find_one({"_id": fw_id}) or {}


def history_text(history: list[dict[str, Any]]) -> str:
    """The history as one line per rerun, for the FIZZLED message a person reads."""
    lines = []
    for h in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(h.get("time") or 0)))
        lines.append(f"{when} UTC by {h.get('by', 'manager')}: {h.get('reason')} (pilot {h.get('pilot')})")
    return "; ".join(lines) or "no earlier reruns recorded"


def publish_bound(db: Any, max_reruns: int) -> None:
    """Tell the workers the bound (they read it before counting a requeue of their own)."""
    db["pilot_manager"].update_one({"_id": "manager"}, {"$set": {BOUND_FIELD: int(max_reruns)}}, upsert=True)


def _set_launch_state(lp: Any, launch_id: int, expected: str, state: str, message: str, pilot: str) -> bool:
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


def _claim(lp: Any, lost: LostLaunch) -> bool:
    """Steps 1 and 2 (under the lock): the launch and the Firework are still as read."""
    launch = lp.launches.find_one({"launch_id": lost.launch_id}, {"state": 1})
    if not launch or launch.get("state") != lost.state:
        return False
    fw = lp.fireworks.find_one_and_update(
        {"fw_id": lost.fw_id, "state": lost.state, "launches": lost.launch_id},
        {"$set": {"updated_on": _utcnow()}}, projection={"fw_id": 1})
    return fw is not None


def _bookkeeping(lp: Any, fw_id: int, fizzle: bool) -> None:
    """Step 3 (under the lock): FireWorks' own rerun (or, with ``fizzle``, its refresh) of the workflow."""
    if not fizzle:
        lp.fireworks.update_one({"fw_id": fw_id}, {"$unset": {"spec._recovery": ""}})
    wf = lp.get_wf_by_fw_id_lzyfw(fw_id)
    updated = wf.refresh(fw_id) if fizzle else wf.rerun_fw(fw_id)
    lp._update_wf(wf, updated)


def conditional_rerun(lp: Any, lost: LostLaunch, max_reruns: int, now: float | None = None,
                      lock_seconds: float | None = None,
                      before_claim: Callable[[LostLaunch], None] | None = None) -> RerunResult:
    """Put ``lost``'s Firework back to READY if it is still as read, or FIZZLE it past ``max_reruns``.

    ``before_claim`` is called after the caller's read and before the lock: tests complete the Firework
    there to show that the completion wins. A :class:`LockedWorkflowError` (lock held longer than
    ``lock_seconds``, default :data:`LOCK_SECONDS`) or a database error propagates: the caller retries next
    cycle.
    """
    from fireworks.core import launchpad as lpmod

    now = time.time() if now is None else now
    lock_seconds = LOCK_SECONDS if lock_seconds is None else lock_seconds
    doc = rerun_doc(lp.db, lost.fw_id)
    count = int(doc.get("count") or 0)
    reserved = lost.state == "RESERVED"      # never started: not counted, never fizzled
    fizzle = not reserved and count >= max_reruns
    if before_claim is not None:
        before_claim(lost)
    with lpmod.WFLock(lp, lost.fw_id, expire_secs=lock_seconds, kill=False):
        if not _claim(lp, lost):
            result = RerunResult.MOVED_ON
            _refresh_if_stuck(lp, lost.fw_id)
        elif fizzle:
            result = _fizzle(lp, lost, doc, max_reruns)
        else:
            _bookkeeping(lp, lost.fw_id, fizzle=False)
            result = RerunResult.RERUN
            final = "READY" if reserved else "FIZZLED"
            msg = f"{lost.reason}; Firework put back to READY by the {lost.by}"
            if not _set_launch_state(lp, lost.launch_id, lost.state, final, msg, lost.pilot):
                log.warning("fw %d: launch %d was written by its pilot just after the rerun (a pilot taken for "
                            "dead); its result stays in the archived launch", lost.fw_id, lost.launch_id)
    if result is RerunResult.RERUN and not reserved:
        lp.db["pilot_reruns"].update_one({"_id": lost.fw_id}, {"$inc": {"count": 1}, "$push": {"history": {
            "time": now, "by": lost.by, "reason": lost.reason, "pilot": lost.pilot}}}, upsert=True)
    return result


def _fizzle(lp: Any, lost: LostLaunch, doc: dict[str, Any], max_reruns: int) -> RerunResult:
    """Past the bound (under the lock): the launch FIZZLED with the history as its message, then the workflow
    refreshed (the Firework follows its launch to FIZZLED, as ``complete_launch(..., "FIZZLED")`` leaves it)."""
    msg = (f"{lost.reason}; not rerun: already rerun {int(doc.get('count') or 0)} times (max_reruns={max_reruns}). "
           f"History: {history_text(list(doc.get('history') or []))}")
    if not _set_launch_state(lp, lost.launch_id, lost.state, "FIZZLED", msg, lost.pilot):
        return RerunResult.MOVED_ON
    _bookkeeping(lp, lost.fw_id, fizzle=True)
    return RerunResult.FIZZLED


def release_half_checkout(lp: Any, lost: LostLaunch, lock_seconds: float | None = None) -> RerunResult:
    """A checkout the dead pilot left half done: its launch document exists (so it names the pilot), but the
    Firework, already RESERVED or RUNNING by ``_get_a_fw_to_run``, never got the launch into its ``launches``.

    Under the workflow lock, and only if the Firework is still in that state, still without the launch and
    holds no other active launch (no other pilot owns it): the workflow refreshed (FireWorks then derives the
    state from the launches it does hold: READY when none) and the orphan launch marked READY, as
    ``cancel_reservation`` does. Not counted: the Firework never ran under that launch.
    """
    from fireworks.core import launchpad as lpmod

    with lpmod.WFLock(lp, lost.fw_id, expire_secs=LOCK_SECONDS if lock_seconds is None else lock_seconds,
                      kill=False):
        fw = lp.fireworks.find_one({"fw_id": lost.fw_id, "state": {"$in": ["RESERVED", "RUNNING"]},
                                    "launches": {"$ne": lost.launch_id}}, {"state": 1, "launches": 1})
        held = list((fw or {}).get("launches") or [])
        if fw is None or lp.launches.count_documents({"launch_id": {"$in": held},
                                                      "state": {"$in": ["RUNNING", "RESERVED"]}}):
            return RerunResult.MOVED_ON
        same: dict[str, Any] = ({"launches": held} if held else
                                {"$or": [{"launches": {"$exists": False}}, {"launches": []}]})
        if lp.fireworks.find_one_and_update({"fw_id": lost.fw_id, "state": fw["state"], **same},
                                            {"$set": {"updated_on": _utcnow()}}) is None:
            return RerunResult.MOVED_ON
        _bookkeeping(lp, lost.fw_id, fizzle=True)
        _set_launch_state(lp, lost.launch_id, lost.state, "READY", f"{lost.reason}; checkout never finished",
                          lost.pilot)
    return RerunResult.RERUN


def _utcnow() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _refresh_if_stuck(lp: Any, fw_id: int) -> None:
    """(Under the lock.) A launch that ended while its Firework still shows RUNNING/RESERVED (its completion's
    refresh met a lock): refresh the workflow, as the worker's settle does, so the Firework follows its launch."""
    fw = lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1, "launches": 1})
    if not fw or fw.get("state") not in ("RUNNING", "RESERVED"):
        return
    active = lp.launches.count_documents({"launch_id": {"$in": list(fw.get("launches") or [])},
                                          "state": {"$in": ["RUNNING", "RESERVED"]}})
    if not active:
        _bookkeeping(lp, fw_id, fizzle=True)


__all__ = ["DEFAULT_MAX_RERUNS", "LOCK_SECONDS", "LostLaunch", "RerunResult", "conditional_rerun",
           "history_text", "publish_bound", "release_half_checkout", "rerun_doc"]
