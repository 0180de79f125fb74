"""Core-hours from the scheduler into the pilot records, once per cycle per cluster.

The budget (:mod:`pilot.manager.budget`), ``pilot status`` and ``pilot report`` all add up what the *scheduler*
charged each pilot, never an estimate: a site bills ``sacct``'s CPUTimeRAW, not the manager's clock. So each cycle,
in each cluster's thread of the status phase (right after its status query, :meth:`Gate.refresh_cluster`), the
:class:`AccountingRefresher` asks the scheduler's accounting (:mod:`queue_adapters.accounting`) about this
manager's pilots of the cluster that are not settled yet: running ones (usage so far) and ended ones until the
scheduler gives final numbers. Each answer goes into the pilot's record as ``usage`` {cpus, seconds, core_seconds,
account, start, end, final, checked}.

The pilots are asked in batches (``accounting_max_ids`` of the adapter: command lines have limits), longest
unasked first, so a scheduler that answers for only part of a batch (OpenPBS >= 23.06 prints only the first job of
``qstat -f -F json ID1 ID2``) still reaches every pilot in turn. A query that fails (accounting daemon down, SSH
gone) is logged and recorded on the cluster (``accounting`` {ok, error, time}, shown by ``pilot status``), never
raised: the pilots keep their last numbers and the next cycle asks again. It does not back the cluster off either:
accounting is not what submitting needs. Schedulers without an accounting query here (Torque, SGE, local) get none.

It is a gate that never closes: :class:`~pilot.manager.gates.Gates` is the manager's one hook into each cluster's
thread, and the budget gate after it reads what it wrote.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.fit import number as fit_number
from pilot.manager.gates import UnitAsk
from queue_adapters.accounting import accounting_of, batches
from queue_adapters.base import SchedulerQueryError

if TYPE_CHECKING:
    from pilot.manager.records import Records
    from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings

log = logging.getLogger("pilot.manager")

__all__ = ["SETTLE_DAYS", "AccountingRefresher", "CoreHours", "day_split", "fold_core_hours", "number", "usage_of",
           "utc_day"]

#: an ended pilot whose final numbers the scheduler has not given within this many days is asked no more (its
#: last numbers stay): the job has left the scheduler's memory (LSF's CLEAN_PERIOD, PBS's job_history_duration)
SETTLE_DAYS = 2.0


class AccountingRefresher:
    """Reads what the scheduler charged our unsettled pilots of each cluster, every cycle (module docstring)."""

    def __init__(self, records: Records, settings: ManagerSettings) -> None:
        self.records = records
        self.settings = settings

    def refresh(self, now: float) -> None:
        """Nothing to learn from the database: the budget gate reads the records itself."""

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        """Never closed: this gate only gathers."""
        return None

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        """Ask the cluster's accounting about its unsettled pilots and write what it says (in the cluster's thread;
        a failure is logged and recorded, never raised: the LaunchPad failing meanwhile too)."""
        from pymongo.errors import PyMongoError

        if self.settings.dry_run or rt.name in report.errors:
            return   # a cluster that just failed is not asked again this cycle: its pilots keep their numbers
        try:
            self._refresh(rt)
        except PyMongoError as e:
            log.warning("%s: core-hours: the LaunchPad failed (%s); asking again next cycle", rt.name, e)

    def _refresh(self, rt: ClusterRuntime) -> None:
        from pilot.transport import ConnectError, TransportError

        acct = accounting_of(rt.adapter)
        if acct is None:
            return
        now = self.settings.clock()
        pending = due(self.records.unsettled_usage(rt.name, ended_since=now - SETTLE_DAYS * 86400), now)
        if not pending:
            return
        names = {str(d["job_id"]): str(d["_id"]) for d in pending}
        size = int(getattr(acct, "accounting_max_ids", None) or 100)
        errors = []
        for ids in (b for group in by_cluster(list(names)) for b in batches(group, size)):
            try:
                argv = acct.accounting_command(ids)
                if argv is None:
                    return
                res = rt.run(argv)
                usage = acct.parse_accounting(res.returncode, res.stdout, res.stderr)
            except (SchedulerQueryError, TransportError, ValueError) as e:
                errors.append(f"accounting query failed: {e}")
                # asked: these go to the back of the line, the next batches are asked next cycle first
                self.records.set_usages({names[j]: None for j in ids}, now)
                if isinstance(e, ConnectError):
                    break
                continue
            self.records.set_usages({names[j]: (usage[j].to_record() if j in usage else None) for j in ids}, now)
        error = "; ".join(dict.fromkeys(errors)) or None
        if error:
            log.warning("%s: %s; the pilots keep their last core-hours, asking again next cycle", rt.name, error)
        self.records.set_accounting_state(rt.name, error, now)


#: a running pilot's core-hours are read again after this many seconds: while it runs, the budget counts its whole
#: wall time anyway (used + committed), so reading it every cycle would change nothing but the cost
LIVE_EVERY = 600.0


def by_cluster(job_ids: list[str]) -> list[list[str]]:
    """The job ids in groups: those of each federated cluster (``123;clA``), and the plain ones, in their order
    within each. A batch is made of one group, so ``sacct -M`` is asked only where its ids are."""
    groups: dict[str, list[str]] = {}
    for j in job_ids:
        groups.setdefault(j.partition(";")[2], []).append(j)
    return list(groups.values())


def due(unsettled: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Of the unsettled pilots (longest unanswered first), those to ask now: every ended one (its final numbers),
    a running one when its last reading is :data:`LIVE_EVERY` seconds old."""
    out = []
    for d in unsettled:
        u = usage_of(d)
        if d.get("end_time") is not None or now - float(number(u.get("checked")) or 0.0) >= LIVE_EVERY:
            out.append(d)
    return out


# ====================================================================== adding it up (pure)
DAY = 86400
#: the longest run a pilot record is split over days for (a bigger number is not a pilot's: a damaged record)
MAX_RUN = 366 * DAY


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's ``usage`` (:mod:`pilot.manager.accounting`), {} when it has none or it is not a mapping."""
    u = rec.get("usage")
    return u if isinstance(u, dict) else {}


def number(value: Any) -> float | None:
    """A finite number from a record (as :func:`pilot.fit.number` reads one, infinity left out: it sums to
    nothing), else None: a hand-edited or older record may hold anything."""
    v = fit_number(value)
    return v if v is not None and math.isfinite(v) else None


def utc_day(t: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of epoch seconds ``t``."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def day_split(start: float | None, seconds: int, core_seconds: int, fallback: float | None = None) -> dict[str, int]:
    """A pilot's core-seconds per UTC day: its run ``[start, start + seconds)`` cut at midnight, each piece
    weighted by its share of the run. The pieces add up to ``core_seconds`` exactly (the last day takes the
    rounding), so the days of a report sum to what the scheduler charged, to the second. Without a start (or
    without run time) everything is on the day of ``fallback`` (the record's end or submit time)."""
    seconds = min(seconds, MAX_RUN)
    if start is None or seconds <= 0:
        t = start if start is not None else fallback
        return {utc_day(t if t is not None else 0.0): core_seconds} if core_seconds else {}
    out: dict[str, int] = {}
    given = 0
    t, end = float(start), float(start) + seconds
    while t < end:
        cut = min(end, (math.floor(t / DAY) + 1) * DAY)
        share = core_seconds * (cut - t) // seconds if cut < end else core_seconds - given
        out[utc_day(t)] = out.get(utc_day(t), 0) + int(share)
        given += int(share)
        t = cut
    return out


@dataclass
class CoreHours:
    """What the scheduler charged this manager's pilots on one cluster and account (core-seconds, exact).

    Attributes
    ----------
    cluster, account : str, str | None
        The account as the scheduler names it (None: it names none, the user's default without association).
    core_seconds : int
        All of it.
    pilots, unsettled : int
        Pilots counted; of them, those whose numbers may still grow (running, or final numbers not yet given).
    by_category : dict[str, int]
    by_day : dict[str, dict[str, int]]
        UTC day -> category -> core-seconds (:func:`day_split`).
    """

    cluster: str
    account: str | None
    core_seconds: int = 0
    pilots: int = 0
    unsettled: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_day: dict[str, dict[str, int]] = field(default_factory=dict)

    def day_total(self, day: str) -> int:
        return sum(self.by_day.get(day, {}).values())

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "account": self.account, "core_seconds": self.core_seconds,
                "core_hours": round(self.core_seconds / 3600.0, 6), "pilots": self.pilots,
                "unsettled": self.unsettled, "by_category": dict(sorted(self.by_category.items())),
                "by_day": {d: dict(sorted(c.items())) for d, c in sorted(self.by_day.items())}}


def fold_core_hours(recs: list[dict[str, Any]], since: float | None = None,
                    until: float | None = None) -> list[CoreHours]:
    """The pilot records with ``usage`` added up per cluster and account (sorted); with ``since``/``until``
    only the days in that window count (whole pilots are split by day first, :func:`day_split`)."""
    rows: dict[tuple[str, str | None], CoreHours] = {}
    lo = utc_day(since) if since is not None else None
    hi = utc_day(until) if until is not None else None
    for r in recs:
        u = usage_of(r)
        charged = number(u.get("core_seconds"))
        if charged is None:
            continue
        key = (str(r.get("cluster")), str(u.get("account")) if u.get("account") else None)
        row = rows.setdefault(key, CoreHours(cluster=key[0], account=key[1]))
        cat = str(r.get("category") or "")
        days = day_split(number(u.get("start")), int(number(u.get("seconds")) or 0), int(charged),
                         fallback=number(r.get("end_time")) or number(r.get("submit_time")))
        counted = False
        for day, cs in days.items():
            if (lo is not None and day < lo) or (hi is not None and day > hi):
                continue
            counted = True
            row.core_seconds += cs
            row.by_category[cat] = row.by_category.get(cat, 0) + cs
            per = row.by_day.setdefault(day, {})
            per[cat] = per.get(cat, 0) + cs
        if counted or not days:
            row.pilots += 1
            row.unsettled += 0 if u.get("final") else 1
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or ""))]
