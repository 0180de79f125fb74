"""Maintenance reservations: no pilot whose wall time would run into one (SLURM).

Why: SLURM starts no job whose time limit overlaps a maintenance reservation (``flags=maint``) on its nodes; a
pilot submitted an hour before a maintenance with a 2 h wall time waits in the queue until the maintenance is
over. Meanwhile it holds a slot of ``max_queued`` and counts as serving its demand, so the work waits with it
instead of going to another cluster (or to a queue profile with a shorter wall time, which still fits before the
maintenance begins).

So the manager reads the cluster's reservations (``scontrol show reservation``,
:mod:`queue_adapters.slurm_reservations`) at most every :attr:`MaintenanceGate.interval` seconds and on its
first cycle, in the cluster's thread of the status phase, and keeps the ``MAINT`` ones. A pilot submitted now
with wall time ``W`` overlaps a reservation ``[start, end)`` when ``now < end`` and ``now + W > start``; then
its unit (queue profile) is closed with the reason ``maintenance NAME from 12-08 06:00 to 12-08 10:00: a 2 h
pilot would run into it``. A profile with a shorter wall time may still get pilots that end before it. A
reservation whose ``PartitionName`` is set and differs from the profile's partition is ignored; one on nodes
rather than a partition, or a profile without a partition (the cluster's default), counts: better a pilot less
before the maintenance than one stuck in the queue.

A cluster without live pilots and without READY work of its categories is not asked (nor contacted at all, as
by the status query): a host that is down costs nothing until there is work for it, and then its reservations
are read before its first pilot is planned. A cluster that does not answer fails like any other command of the
manager (backed off, reported); an answer that is an error (``scontrol`` failing) is logged and written to the
cluster's record, and the last reservations read are kept.

What the manager saw is written into the cluster's ``pilot_clusters`` record (``maintenance: [{name, start, end,
partition}]``, ``maintenance_checked``, ``maintenance_error``) for ``pilot status``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from pilot.manager.drain import short_clock

if TYPE_CHECKING:
    from pilot.manager.gates import UnitAsk
    from pilot.manager.records import Records
    from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings

log = logging.getLogger("pilot.manager")

__all__ = ["CHECK_INTERVAL", "MaintenanceGate", "overlap_reason", "walltime_words"]

#: seconds between two reads of a cluster's reservations (a maintenance is announced days ahead)
CHECK_INTERVAL = 300.0


def walltime_words(seconds: float) -> str:
    """``2 h``, ``1 h 30 min``, ``10 min``: a pilot's wall time in the reason."""
    m = int(round(seconds / 60.0))
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def overlap_reason(res: dict[str, Any], walltime: float, now: float) -> str | None:
    """Why a pilot of ``walltime`` seconds submitted ``now`` runs into the reservation ``res`` ({name, start, end
    (None: no end)}, epoch seconds); None when it does not: it ends before the start, or the reservation is over."""
    start, end = float(res["start"]), res.get("end")
    if end is not None and now >= float(end):
        return None
    if now + walltime <= start:
        return None
    to = f" to {short_clock(float(end), now)}" if end is not None else " (no end given)"
    return (f"maintenance {res['name']} from {short_clock(start, now)}{to}: a {walltime_words(walltime)} pilot "
            "would run into it")


class MaintenanceGate:
    """The SLURM clusters' maintenance reservations, read from each cluster every :attr:`interval` seconds.

    Parameters
    ----------
    records : Records
        Where what the manager saw is written for ``pilot status`` (the cluster's ``pilot_clusters`` record).
    settings : ManagerSettings
        The manager's clock and dry-run switch (a dry run writes nothing).
    interval : float
        Seconds between two reads of one cluster's reservations.
    """

    def __init__(self, records: Records, settings: ManagerSettings, interval: float = CHECK_INTERVAL) -> None:
        self.records = records
        self.settings = settings
        self.interval = float(interval)
        #: cluster -> its MAINT reservations {name, start, end, partition} (epoch seconds), the last answer
        self.reservations: dict[str, list[dict[str, Any]]] = {}
        #: cluster -> when its reservations were last asked for (clock of the manager)
        self.checked: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()   # refresh_cluster runs in each cluster's thread
        self._restored = False

    def _restore(self) -> None:
        """The reservations a previous manager read (kept in the clusters' records), until the clusters answer
        again: a restarted manager whose ``scontrol`` fails, or whose cluster is backed off, must not submit
        into a maintenance it already knew of."""
        self._restored = True
        for doc in self.records.clusters.find({"maintenance": {"$type": "array"}}, {"maintenance": 1}):
            kept = [m for m in doc["maintenance"] if isinstance(m, dict) and isinstance(m.get("start"), int | float)
                    and m.get("name")]
            self.reservations.setdefault(str(doc["_id"]), kept)

    def refresh(self, now: float) -> None:
        """Once, at the first cycle: the reservations the manager read before it was restarted."""
        if not self._restored:
            self._restore()

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        """Read the cluster's reservations when :attr:`interval` has passed (SLURM clusters only). The LaunchPad
        failing meanwhile (what to ask, where to write the answer) is logged: the cycle's demand query reports
        it, and the cluster is asked again next cycle."""
        from pymongo.errors import PyMongoError

        try:
            self._read(rt, report)
        except PyMongoError as e:
            log.warning("%s: maintenance reservations: the LaunchPad failed (%s); asking again next cycle",
                        rt.name, e)
            with self._lock:
                self.checked.pop(rt.name, None)

    def _read(self, rt: ClusterRuntime, report: CycleReport) -> None:
        from pilot.transport import LoginRequired, TransportError
        from queue_adapters.base import SchedulerQueryError
        from queue_adapters.slurm_reservations import parse_reservations, reservations_command

        if getattr(rt.config.scheduler, "value", rt.config.scheduler) != "slurm" or rt.name in report.errors:
            return   # (a cluster that already failed this cycle is asked again next cycle)
        now = self.settings.clock()
        with self._lock:
            last = self.checked.get(rt.name)
            if last is not None and now - last < self.interval:
                return
        if not self._wanted(rt):
            return
        with self._lock:
            self.checked[rt.name] = now
        argv = reservations_command()
        try:
            res = rt.run(argv)
            found = parse_reservations(res.returncode, res.stdout, res.stderr, rt.adapter.tz)
        except TransportError as e:
            # the cluster did not answer: a failure like any other command's (backed off, reported; a lapsed
            # one-time-password login stays "needs login")
            rt.fail(f"maintenance reservations ({' '.join(argv)}): {e}", report,
                    needs_login=isinstance(e, LoginRequired))
            self._failed(rt.name, f"{' '.join(argv)}: {e}", now)
            return
        except SchedulerQueryError as e:
            self._failed(rt.name, f"{' '.join(argv)}: {e}", now)
            return
        maint: list[dict[str, Any]] = [
            {"name": r.name, "start": r.start.timestamp(), "end": r.end.timestamp() if r.end else None,
             "partition": r.partition} for r in found if r.maintenance and r.start is not None]
        with self._lock:
            old = self.reservations.get(rt.name)
            self.reservations[rt.name] = maint
            self._errors.pop(rt.name, None)
        if old is None or {m["name"] for m in maint} != {m["name"] for m in old}:
            for m in maint:
                end = "(no end)" if m["end"] is None else short_clock(float(m["end"]), now)
                log.info("%s: maintenance reservation %s from %s to %s%s", rt.name, m["name"],
                         short_clock(float(m["start"]), now), end,
                         f" (partition {m['partition']})" if m["partition"] else "")
        if not self.settings.dry_run:
            self.records.set_maintenance(rt.name, maint, now)

    def _wanted(self, rt: ClusterRuntime) -> bool:
        """Is the cluster one the manager has to do with now: live pilots of ours, or READY work of its categories?
        A cluster with neither is not contacted at all (as by the status query), so that a host that is down or
        hangs costs nothing until there is work for it; once there is, its reservations are read before its first
        pilot is planned. Two indexed look-ups, only when a reading is due."""
        from pilot.manager.records import live_query

        if self.records.pilots.find_one({**live_query(), "cluster": rt.name}, {"_id": 1}) is not None:
            return True
        query = {"state": "READY", "spec._category": {"$in": list(rt.config.categories)}}
        return self.records.db["fireworks"].find_one(query, {"_id": 1}) is not None

    def _failed(self, cluster: str, error: str, now: float) -> None:
        """A failed read: logged (once per distinct error), written for ``pilot status``; the last answer stays."""
        with self._lock:
            told = self._errors.get(cluster) == error
            self._errors[cluster] = error
        if not told:
            log.warning("%s: could not read the maintenance reservations (%s); keeping the last answer, trying "
                        "again in %.0f s", cluster, error, self.interval)
        if not self.settings.dry_run:
            self.records.set_maintenance_error(cluster, error, now)

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        for res in self.reservations.get(ask.cluster, ()):
            if res.get("partition") and ask.partition and res["partition"] != ask.partition:
                continue   # another partition's maintenance
            why = overlap_reason(res, ask.walltime, now)
            if why:
                return why
        return None

