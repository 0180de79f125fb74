"""The manager's reruns of a dead pilot's work: the compare-and-set protocol of :mod:`pilot.rerun_protocol`
(shared with the worker's requeue, which may not import this room), the manager's lock wait, and the release
of a checkout the dead pilot left half done.

The manager read a launch (RUNNING, or RESERVED) of a pilot it knows is dead, and the Firework holding it;
:func:`conditional_rerun` puts the Firework back to READY only if both are still as read, within the
``max_reruns`` bound and the ``pilot_reruns`` history the worker's requeue shares (see the leaf for the steps
and why the history is a collection of its own). The manager publishes the bound (:func:`publish_bound`) in its
``pilot_manager`` document every cycle, so that workers read the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pilot import rerun_protocol
from pilot.rerun_protocol import (
    DEFAULT_MAX_RERUNS,
    LostLaunch,
    RerunResult,
    bookkeeping,
    history_text,
    publish_bound,
    rerun_doc,
    set_launch_state,
    utcnow,
)

#: seconds to wait for a workflow lock before giving up for this cycle (FireWorks' default is 300)
LOCK_SECONDS = rerun_protocol.LOCK_SECONDS


def conditional_rerun(lp: Any, lost: LostLaunch, max_reruns: int, now: float | None = None,
                      lock_seconds: float | None = None,
                      before_claim: Callable[[LostLaunch], None] | None = None, kill: bool = False) -> RerunResult:
    """:func:`pilot.rerun_protocol.conditional_rerun` with the manager's lock wait (:data:`LOCK_SECONDS`)."""
    return rerun_protocol.conditional_rerun(lp, lost, max_reruns, now=now,
                                            lock_seconds=LOCK_SECONDS if lock_seconds is None else lock_seconds,
                                            before_claim=before_claim, kill=kill)


def stale_lock_seconds() -> float:
    """How long a workflow lock may be seen held, attempt after attempt, before the manager takes it by force:
    FireWorks' own ``WFLOCK_EXPIRATION_SECS`` (300 s unless the FW_config says otherwise), the time after which
    FireWorks itself calls a lock expired."""
    from fireworks.fw_config import WFLOCK_EXPIRATION_SECS

    return float(WFLOCK_EXPIRATION_SECS)


def release_half_checkout(lp: Any, lost: LostLaunch, lock_seconds: float | None = None,
                          kill: bool = False) -> RerunResult:
    """A checkout the dead pilot left half done: its launch document exists (so it names the pilot), but the
    Firework, already RESERVED or RUNNING by ``_get_a_fw_to_run``, never got the launch into its ``launches``.

    Under the workflow lock, and only if the Firework is still in that state, still without the launch and
    holds no other active launch (no other pilot owns it): the workflow refreshed (FireWorks then derives the
    state from the launches it does hold: READY when none) and the orphan launch marked READY, as
    ``cancel_reservation`` does. Not counted: the Firework never ran under that launch.
    """
    from fireworks.core import launchpad as lpmod

    with lpmod.WFLock(lp, lost.fw_id, expire_secs=LOCK_SECONDS if lock_seconds is None else lock_seconds,
                      kill=kill):
        fw = lp.fireworks.find_one({"fw_id": lost.fw_id, "state": {"$in": ["RESERVED", "RUNNING"]},
                                    "launches": {"$ne": lost.launch_id}}, {"state": 1, "launches": 1})
        held = list((fw or {}).get("launches") or [])
        if fw is None or lp.launches.count_documents({"launch_id": {"$in": held},
                                                      "state": {"$in": ["RUNNING", "RESERVED"]}}):
            return RerunResult.MOVED_ON
        same: dict[str, Any] = ({"launches": held} if held else
                                {"$or": [{"launches": {"$exists": False}}, {"launches": []}]})
        if lp.fireworks.find_one_and_update({"fw_id": lost.fw_id, "state": fw["state"], **same},
                                            {"$set": {"updated_on": utcnow()}}) is None:
            return RerunResult.MOVED_ON
        bookkeeping(lp, lost.fw_id, fizzle=True)
        set_launch_state(lp, lost.launch_id, lost.state, "READY", f"{lost.reason}; checkout never finished",
                         lost.pilot)
    return RerunResult.RERUN


def orphan_reservation_seconds() -> float:
    """How long a Firework may stay RESERVED with no launch at all before it is taken for an orphan: twice
    FireWorks' lock expiry (600 s by default), longer than a checkout can take even through a database outage
    (the worker retries for --db-retry-time, 300 s by default)."""
    return 2.0 * stale_lock_seconds()


def orphan_reservations(lp: Any, now: float) -> list[dict[str, Any]]:
    """Fireworks RESERVED for longer than :func:`orphan_reservation_seconds` that no RESERVED or RUNNING launch
    names: a pilot killed between FireWorks' reservation (``_get_a_fw_to_run`` sets the state) and the launch
    document it writes next (found by the soak test). Nothing names the pilot, so only time can tell."""
    from datetime import datetime, timezone

    cutoff = datetime.fromtimestamp(now - orphan_reservation_seconds(), tz=timezone.utc)
    out = []
    for fw in lp.fireworks.find({"state": "RESERVED", "updated_on": {"$lt": cutoff}},
                                {"fw_id": 1, "updated_on": 1}):
        if not lp.launches.count_documents({"fw_id": fw["fw_id"], "state": {"$in": ["RESERVED", "RUNNING"]}}):
            out.append(fw)
    return out


def release_orphan_reservation(lp: Any, fw: dict[str, Any], kill: bool = False) -> RerunResult:
    """Put an orphan reservation (:func:`orphan_reservations`) back to READY: under the workflow lock, only if
    still no launch names it and it is still RESERVED with the ``updated_on`` read; FireWorks' refresh then
    derives READY from the launches it holds (none active). Not counted: it never ran."""
    from fireworks.core import launchpad as lpmod

    fw_id = int(fw["fw_id"])
    with lpmod.WFLock(lp, fw_id, expire_secs=LOCK_SECONDS, kill=kill):
        if lp.launches.count_documents({"fw_id": fw_id, "state": {"$in": ["RESERVED", "RUNNING"]}}):
            return RerunResult.MOVED_ON
        if lp.fireworks.find_one_and_update({"fw_id": fw_id, "state": "RESERVED", "updated_on": fw["updated_on"]},
                                            {"$set": {"updated_on": utcnow()}}) is None:
            return RerunResult.MOVED_ON
        bookkeeping(lp, fw_id, fizzle=True)
    return RerunResult.RERUN


__all__ = ["DEFAULT_MAX_RERUNS", "LOCK_SECONDS", "LostLaunch", "RerunResult", "conditional_rerun",
           "history_text", "orphan_reservation_seconds", "orphan_reservations", "publish_bound",
           "release_half_checkout", "release_orphan_reservation", "rerun_doc", "stale_lock_seconds"]
