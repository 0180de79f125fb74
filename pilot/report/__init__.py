"""``pilot report``: throughput per cluster and per day, from the LaunchPad alone.

What it counts (all from the LaunchPad's database; the config directory, when there is one, only adds the
cores per pilot):

* **MD segments**: COMPLETED launches whose ``action.stored_data`` holds a segment record
  (``steps_done``, written by :class:`tasks.segment.MDSegmentTask`); **runs finished**: those whose
  ``outcome`` is ``finished``; **Fireworks**: every COMPLETED launch; **fizzled**: FIZZLED launches.
  A launch counts on the day (and in the window) in which it *ended* (``time_end``).
* **Pilot hours / CPU hours**: each pilot's run time (``start_time`` .. ``end_time``, or now while it runs,
  from the ``pilots`` records) clipped to the window and split at UTC midnight, times the cores of one pilot
  (``pilot.cores * pilot.nodes`` of the cluster's config; 1 without a config, and the report says so).
* **Utilisation**: the time pilots spent running Fireworks (the launches' ``runtime_secs``, matched to the
  pilot by the FWorker name the pilot uses, ``CLUSTER-JOBID``; a Firework still running counts up to now)
  divided by the pilots' run time.
* **Queue waits**: ``start_time - submit_time`` of the pilots that started in the window (median, max).
* **Reruns**: Fireworks the manager put back to READY after their pilot died (``pilot_reruns`` history).

Days are UTC days: FireWorks stores launch times as ISO strings in UTC, and grouping them is then a string
operation the database does itself. The launches are read with **one aggregation** (grouped by FWorker,
time bin, state and kind), never document by document; the pilot records with one projected query; the
reruns with one aggregation. So the report stays fast on a LaunchPad with a million launches.

:func:`gather_report` builds a :class:`ThroughputReport`; :func:`format_report` (text),
:meth:`ThroughputReport.to_dict` (``--json``) and :func:`plot_report` (PNG, matplotlib, imported lazily)
present it.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.manager.records import PENDING_STATES, RUNNING_STATES

__all__ = [
    "OTHER",
    "SCHEMA_VERSION",
    "ClusterThroughput",
    "DayThroughput",
    "ThroughputReport",
    "Timeline",
    "format_report",
    "gather_report",
    "iso_utc",
    "parse_when",
    "plot_report",
    "utc_day",
]

#: Version of the ``--json`` document; raised when a field changes meaning or goes away.
SCHEMA_VERSION = 1
#: The "cluster" of launches whose FWorker is no pilot of this manager (rlaunch by hand, another manager).
OTHER = "(not a pilot)"
#: Bin lengths of the timeline: (ISO prefix length, seconds), chosen by the span of the window.
_RESOLUTIONS = ((19, 1.0), (16, 60.0), (13, 3600.0))
#: A pilot that ended up to this long before ``since`` may still own launches that ended after it
#: (clocks of the scheduler and of the compute node differ a little).
_CLOCK_SLACK_S = 3600.0


# ============================================================================ time helpers
def iso_utc(t: float) -> str:
    """Epoch seconds as the ISO UTC text FireWorks stores (``2024-05-01T12:00:00[.ffffff]``, no offset).

    Strings in this form compare like the times they stand for, with or without FireWorks' ``+00:00``.
    """
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f" if d.microsecond else "%Y-%m-%dT%H:%M:%S")


def utc_day(t: float) -> str:
    """``YYYY-MM-DD`` of epoch seconds, in UTC."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d")


def _parse_iso(text: str) -> float | None:
    """Epoch seconds of an ISO time as FireWorks writes it (naive means UTC); None if unreadable."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    s = text.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def _bin_start(prefix: str) -> float | None:
    """Epoch seconds of the start of a time bin given as an ISO prefix (``2024-05-01T12``, ``...:34``)."""
    n = len(prefix)
    if n == 13:
        prefix += ":00:00"
    elif n == 16:
        prefix += ":00"
    return _parse_iso(prefix)


_REL = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|hours|d|day|days|w|week|weeks)\s*(ago)?\s*$", re.IGNORECASE
)
_REL_UNITS = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}


def parse_when(text: str, now: float | None = None) -> float:
    """Read a ``--since``/``--until`` value: an ISO date or time, or an age.

    Accepted: ``2024-05-01`` (midnight UTC), ``2024-05-01T12:30`` / ``2024-05-01 12:30:00`` (UTC unless an
    offset is given, e.g. ``+02:00``), ``now``, ``today`` (midnight UTC), and ages ``90s``, ``30m``, ``12h``,
    ``3d``, ``2w`` (optionally followed by ``ago``).

    Returns
    -------
    float
        Epoch seconds.

    Raises
    ------
    ValueError
        Saying which forms are accepted.
    """
    now = time.time() if now is None else float(now)
    s = text.strip()
    low = s.lower()
    if low == "now":
        return now
    if low == "today":
        d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
        return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    m = _REL.match(s)
    if m:
        return now - float(m.group(1)) * _REL_UNITS[m.group(2).lower()]
    t = _parse_iso(s)
    if t is None:
        raise ValueError(
            f"{text!r} is not a date: write 2024-05-01, 2024-05-01T12:30 (UTC, or with an offset "
            "such as +02:00), today, now, or an age such as 12h, 3d, 2w"
        )
    return t


# ============================================================================ results
class _PilotTime:
    """Derived numbers shared by the per-cluster and per-day rows (busy_s, pilot_s, cpu_s in seconds)."""

    busy_s: float
    pilot_s: float
    cpu_s: float

    @property
    def pilot_hours(self) -> float:
        return self.pilot_s / 3600.0

    @property
    def cpu_hours(self) -> float:
        return self.cpu_s / 3600.0

    @property
    def utilisation(self) -> float | None:
        """Busy time / pilot time, or None without pilot time."""
        return self.busy_s / self.pilot_s if self.pilot_s > 0 else None


@dataclass
class ClusterThroughput(_PilotTime):
    """What one cluster (or :data:`OTHER`) delivered in the window.

    Attributes
    ----------
    name : str
    cores_per_pilot : int
        ``pilot.cores * pilot.nodes`` from the config, else 1.
    cores_from_config : bool
        False when ``cores_per_pilot`` is the assumed 1 (no config dir, or the cluster is not in it).
    segments, runs_finished, fireworks, fizzled, steps : int
        COMPLETED launches with MD segment data; of those, the ones that finished their run; all COMPLETED
        launches; FIZZLED launches; MD steps done by the segments.
    busy_s : float
        Seconds pilots spent running Fireworks (ended launches' ``runtime_secs``; running ones up to now).
    pilot_s : float
        Seconds pilots ran (clipped to the window).
    cpu_s : float
        ``pilot_s`` times the cores of each pilot.
    pilots_submitted, pilots_started : int
        Pilots submitted / started in the window.
    pilots_ended : dict[str, int]
        Pilots that ended in the window, by final state.
    pilots_running, pilots_pending : int
        Pilots running / waiting now (from the records, whatever the window).
    queue_waits : list[float]
        ``start - submit`` of the pilots that started in the window (seconds).
    reruns : int
        Fireworks the manager put back to READY in the window after a pilot of this cluster died.
    """

    name: str
    cores_per_pilot: int = 1
    cores_from_config: bool = False
    segments: int = 0
    runs_finished: int = 0
    fireworks: int = 0
    fizzled: int = 0
    steps: int = 0
    busy_s: float = 0.0
    pilot_s: float = 0.0
    cpu_s: float = 0.0
    pilots_submitted: int = 0
    pilots_started: int = 0
    pilots_ended: dict[str, int] = field(default_factory=dict)
    pilots_running: int = 0
    pilots_pending: int = 0
    queue_waits: list[float] = field(default_factory=list)
    reruns: int = 0

    @property
    def queue_wait_median(self) -> float | None:
        return statistics.median(self.queue_waits) if self.queue_waits else None

    @property
    def queue_wait_max(self) -> float | None:
        return max(self.queue_waits) if self.queue_waits else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cores_per_pilot": self.cores_per_pilot,
            "cores_from_config": self.cores_from_config,
            "segments": self.segments,
            "runs_finished": self.runs_finished,
            "fireworks": self.fireworks,
            "fizzled": self.fizzled,
            "md_steps": self.steps,
            "busy_hours": _r(self.busy_s / 3600.0),
            "pilot_hours": _r(self.pilot_hours),
            "cpu_hours": _r(self.cpu_hours),
            "utilisation": _r(self.utilisation),
            "pilots": {
                "submitted": self.pilots_submitted,
                "started": self.pilots_started,
                "ended": dict(sorted(self.pilots_ended.items())),
                "running": self.pilots_running,
                "pending": self.pilots_pending,
            },
            "queue_wait_s": {
                "n": len(self.queue_waits),
                "median": _r(self.queue_wait_median),
                "max": _r(self.queue_wait_max),
            },
            "reruns": self.reruns,
        }


@dataclass
class DayThroughput(_PilotTime):
    """One cluster on one UTC day."""

    day: str
    cluster: str
    segments: int = 0
    runs_finished: int = 0
    fireworks: int = 0
    fizzled: int = 0
    busy_s: float = 0.0
    pilot_s: float = 0.0
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "cluster": self.cluster,
            "segments": self.segments,
            "runs_finished": self.runs_finished,
            "fireworks": self.fireworks,
            "fizzled": self.fizzled,
            "busy_hours": _r(self.busy_s / 3600.0),
            "pilot_hours": _r(self.pilot_s / 3600.0),
            "cpu_hours": _r(self.cpu_hours),
            "utilisation": _r(self.utilisation),
        }


@dataclass
class Timeline:
    """What the plot shows.

    Attributes
    ----------
    resolution_s : float
        Length of one completion bin (1 s, 1 min or 1 h, chosen from the window's span).
    completions : dict[str, list[tuple[float, int, int]]]
        Per cluster, sorted ``(bin end, segments, fireworks)`` completed in that bin.
    pilots : dict[str, list[tuple[float, float]]]
        Per cluster, the ``(start, end)`` of each pilot's run, clipped to the window.
    """

    resolution_s: float = 1.0
    completions: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    pilots: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass
class ThroughputReport:
    """The result of :func:`gather_report`."""

    generated_at: float
    since: float | None
    until: float
    first_activity: float | None
    config_dir: str | None
    clusters: list[ClusterThroughput]
    days: list[DayThroughput]
    timeline: Timeline
    notes: list[str] = field(default_factory=list)
    queries: int = 0

    def total(self) -> ClusterThroughput:
        """All clusters summed (``cores_per_pilot`` is meaningless there: CPU seconds are summed)."""
        t = ClusterThroughput(name="total")
        for c in self.clusters:
            for attr in (
                "segments",
                "runs_finished",
                "fireworks",
                "fizzled",
                "steps",
                "busy_s",
                "pilot_s",
                "cpu_s",
                "pilots_submitted",
                "pilots_started",
                "pilots_running",
                "pilots_pending",
                "reruns",
            ):
                setattr(t, attr, getattr(t, attr) + getattr(c, attr))
            for k, v in c.pilots_ended.items():
                t.pilots_ended[k] = t.pilots_ended.get(k, 0) + v
            t.queue_waits.extend(c.queue_waits)
        return t

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (``schema_version`` 1)."""
        tot = self.total()
        totals = tot.to_dict()
        totals.pop("name")
        totals.pop("cores_per_pilot")
        totals.pop("cores_from_config")
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": iso_utc(self.generated_at),
            "window": {
                "since": iso_utc(self.since) if self.since is not None else None,
                "until": iso_utc(self.until),
                "first_activity": iso_utc(self.first_activity) if self.first_activity else None,
            },
            "days_are": "UTC",
            "config_dir": self.config_dir,
            "clusters": [c.to_dict() for c in self.clusters],
            "totals": totals,
            "days": [d.to_dict() for d in self.days],
            "notes": list(self.notes),
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


# ============================================================================ gathering
def _cores(config: Any | None, cluster: str) -> tuple[int, bool]:
    if config is None:
        return 1, False
    c = getattr(config, "clusters", {}).get(cluster)
    if c is None:
        return 1, False
    return max(1, int(c.pilot.cores) * int(c.pilot.nodes)), True


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _split_days(start: float, end: float) -> Iterable[tuple[str, float]]:
    """``(UTC day, seconds)`` pieces of the interval [start, end)."""
    t = start
    while t < end:
        d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        midnight = (d.replace(hour=0, minute=0, second=0, microsecond=0) + _dt.timedelta(days=1)).timestamp()
        stop = min(end, midnight)
        yield d.strftime("%Y-%m-%d"), stop - t
        t = stop


def _cluster_of_worker(name: str | None, by_fworker: dict[str, str], known: Iterable[str]) -> str:
    if not name:
        return OTHER
    if name in by_fworker:
        return by_fworker[name]
    # a pilot whose record is outside the query (or gone): its FWorker name is CLUSTER-JOBID
    for cluster in sorted(known, key=len, reverse=True):
        if name.startswith(cluster + "-"):
            return cluster
    return OTHER


def gather_report(
    db: Any,
    config: Any | None = None,
    since: float | None = None,
    until: float | None = None,
    now: float | None = None,
    notes: Sequence[str] = (),
) -> ThroughputReport:
    """Read the LaunchPad database and build a :class:`ThroughputReport`.

    Parameters
    ----------
    db : pymongo.database.Database
        The LaunchPad's database (``LaunchPad.db``).
    config : pilot.config.Config | None
        The loaded config directory (cores per pilot, the clusters to list even when idle).
    since, until : float | None
        The window in epoch seconds (``since`` None: all history; ``until`` None: now).
    now : float | None
        Epoch seconds of "now" (running pilots and Fireworks count up to it).
    notes : sequence of str
        Notes to carry into the report (e.g. why there is no config).

    Returns
    -------
    ThroughputReport
    """
    now = time.time() if now is None else float(now)
    until = now if until is None else float(until)
    if since is not None and since >= until:
        raise ValueError(
            f"the window is empty: --since {iso_utc(since)} is not before --until {iso_utc(until)}"
        )
    end_now = min(now, until)
    queries = 0
    report_notes = list(notes)

    clusters: dict[str, ClusterThroughput] = {}

    def cl(name: str) -> ClusterThroughput:
        if name not in clusters:
            cores, from_cfg = _cores(config, name)
            clusters[name] = ClusterThroughput(name=name, cores_per_pilot=cores, cores_from_config=from_cfg)
        return clusters[name]

    for name in sorted(getattr(config, "clusters", {}) or {}):
        cl(name)

    # ---- 1. pilot records (one projected query)
    pq: dict[str, Any] = {"submit_time": {"$lte": until}}
    if since is not None:
        pq["$or"] = [{"end_time": None}, {"end_time": {"$gte": since - _CLOCK_SLACK_S}}]
    proj = {"cluster": 1, "state": 1, "submit_time": 1, "start_time": 1, "end_time": 1, "fworker": 1}
    pilots = list(db["pilots"].find(pq, proj))
    queries += 1
    lo = since if since is not None else -math.inf
    by_fworker: dict[str, str] = {}
    by_job: dict[str, str] = {}
    days: dict[tuple[str, str], DayThroughput] = {}
    timeline = Timeline()
    first: float | None = None

    def day(d: str, cluster: str) -> DayThroughput:
        key = (d, cluster)
        if key not in days:
            days[key] = DayThroughput(day=d, cluster=cluster)
        return days[key]

    running_fworkers: set[str] = set()
    for p in pilots:
        name = str(p.get("cluster") or "?")
        c = cl(name)
        by_job[str(p["_id"])] = name
        if p.get("fworker"):
            by_fworker[str(p["fworker"])] = name
        state = str(p.get("state") or "")
        sub, start, end = _f(p.get("submit_time")), _f(p.get("start_time")), _f(p.get("end_time"))
        if state in RUNNING_STATES:
            c.pilots_running += 1
            if p.get("fworker"):
                running_fworkers.add(str(p["fworker"]))
        elif state in PENDING_STATES:
            c.pilots_pending += 1
        if sub is not None and lo <= sub < until:
            c.pilots_submitted += 1
        if start is not None and lo <= start < until:
            c.pilots_started += 1
            if sub is not None:
                c.queue_waits.append(max(0.0, start - sub))
        if end is not None and lo <= end < until:
            c.pilots_ended[state] = c.pilots_ended.get(state, 0) + 1
        if start is None:
            continue
        run_end = end if end is not None else (end_now if state in RUNNING_STATES else None)
        if run_end is None:
            continue  # ended without an end time: nothing certain to count
        a, b = max(start, lo), min(run_end, until)
        if b > a:
            c.pilot_s += b - a
            c.cpu_s += (b - a) * c.cores_per_pilot
            timeline.pilots.setdefault(name, []).append((a, b))
            first = a if first is None else min(first, a)
            for d, secs in _split_days(a, b):
                dd = day(d, name)
                dd.pilot_s += secs
                dd.cpu_s += secs * c.cores_per_pilot

    # ---- 2. launches: the span decides the bin length, then one aggregation
    match: dict[str, Any] = {"state": {"$in": ["COMPLETED", "FIZZLED"]}}
    tq: dict[str, Any] = {"$lt": iso_utc(until)}
    if since is not None:
        tq["$gte"] = iso_utc(since)
    match["time_end"] = tq
    if since is None and first is None:
        # no pilot ran: the first launch gives the span (pilots give it otherwise; one query saved)
        earliest = list(db["launches"].find(match, {"time_end": 1, "_id": 0}).sort("time_end", 1).limit(1))
        queries += 1
        if earliest:
            first = _parse_iso(earliest[0].get("time_end"))
    span = until - (since if since is not None else (first if first is not None else until))
    prefix, res = (
        _RESOLUTIONS[0] if span <= 2 * 3600 else _RESOLUTIONS[1] if span <= 7 * 86400 else _RESOLUTIONS[2]
    )
    timeline.resolution_s = res
    missing = None
    is_seg = {"$cond": [{"$eq": [{"$ifNull": ["$action.stored_data.steps_done", missing]}, missing]}, 0, 1]}
    pipeline = [
        {"$match": match},
        {
            "$group": {
                "_id": {
                    "w": "$fworker.name",
                    "bin": {"$substr": ["$time_end", 0, prefix]},
                    "state": "$state",
                    "seg": is_seg,
                    "fin": {"$cond": [{"$eq": ["$action.stored_data.outcome", "finished"]}, 1, 0]},
                },
                "n": {"$sum": 1},
                "busy": {"$sum": "$runtime_secs"},
                "steps": {"$sum": "$action.stored_data.steps_done"},
            }
        },
    ]
    known = set(clusters) | {str(p.get("cluster")) for p in pilots if p.get("cluster")}
    bins: dict[tuple[str, str], list[int]] = {}
    for row in db["launches"].aggregate(pipeline):
        key = row.get("_id") or {}
        cname = _cluster_of_worker(key.get("w"), by_fworker, known)
        c = cl(cname)
        bin_key = str(key.get("bin") or "")
        n = int(row.get("n") or 0)
        busy = _f(row.get("busy")) or 0.0
        seg = bool(key.get("seg"))
        dd = day(bin_key[:10], cname)
        c.busy_s += busy
        dd.busy_s += busy
        if key.get("state") == "COMPLETED":
            c.fireworks += n
            dd.fireworks += n
            cnt = bins.setdefault((cname, bin_key), [0, 0])
            cnt[1] += n
            if seg:
                c.segments += n
                dd.segments += n
                cnt[0] += n
                c.steps += int(_f(row.get("steps")) or 0)
                if key.get("fin"):
                    c.runs_finished += n
                    dd.runs_finished += n
        else:
            c.fizzled += n
            dd.fizzled += n
    queries += 1
    for (cname, bin_key), (nseg, nfw) in bins.items():
        t_bin = _bin_start(bin_key)
        if t_bin is None:
            continue
        timeline.completions.setdefault(cname, []).append((t_bin + res, nseg, nfw))
        if since is None:
            first = t_bin if first is None else min(first, t_bin)
    for series in timeline.completions.values():
        series.sort()

    # ---- 3. Fireworks running now under running pilots: busy up to now
    if running_fworkers and end_now > lo:
        for doc in db["launches"].find(
            {"state": "RUNNING", "fworker.name": {"$in": sorted(running_fworkers)}},
            {"fworker.name": 1, "time_start": 1, "_id": 0},
        ):
            start = _parse_iso(doc.get("time_start"))
            if start is None:
                continue
            a, b = max(start, lo), end_now
            if b > a:
                cname = _cluster_of_worker((doc.get("fworker") or {}).get("name"), by_fworker, known)
                cl(cname).busy_s += b - a
                day(utc_day(b), cname).busy_s += b - a
        queries += 1

    # ---- 4. reruns (one aggregation over the manager's rerun history)
    rq: dict[str, Any] = {"$lt": until}
    if since is not None:
        rq["$gte"] = since
    rerun_rows = list(
        db["pilot_reruns"].aggregate(
            [
                {"$unwind": "$history"},
                {"$match": {"history.time": rq}},
                {"$group": {"_id": "$history.pilot", "n": {"$sum": 1}}},
            ]
        )
    )
    queries += 1
    unknown = [str(r["_id"]) for r in rerun_rows if str(r.get("_id")) not in by_job]
    if unknown:
        for p in db["pilots"].find({"_id": {"$in": unknown}}, {"cluster": 1}):
            by_job[str(p["_id"])] = str(p.get("cluster") or "?")
        queries += 1
    for r in rerun_rows:
        cl(by_job.get(str(r.get("_id")), OTHER)).reruns += int(r.get("n") or 0)

    assumed = sorted(
        c.name for c in clusters.values() if not c.cores_from_config and c.name != OTHER and c.pilot_s > 0
    )
    if assumed:
        why = "no config dir" if config is None else "not in the config dir"
        report_notes.append(
            f"cores per pilot assumed 1 for {', '.join(assumed)} ({why}): CPU hours = pilot hours"
        )
    if OTHER in clusters:
        report_notes.append(
            f"{OTHER}: launches by FWorkers that are no pilot of this manager (rlaunch by hand, "
            "another manager)"
        )
    order = sorted(clusters.values(), key=lambda c: (c.name == OTHER, c.name))
    return ThroughputReport(
        generated_at=now,
        since=since,
        until=until,
        first_activity=first,
        config_dir=str(config.config_dir) if config is not None else None,
        clusters=order,
        days=sorted(days.values(), key=lambda d: (d.day, d.cluster == OTHER, d.cluster)),
        timeline=timeline,
        notes=report_notes,
        queries=queries,
    )


# ============================================================================ text
def _num(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.1 or ax == 0:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  " + "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _window_text(r: ThroughputReport) -> str:
    def fmt(t: float) -> str:
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")

    start = r.since if r.since is not None else r.first_activity
    head = f"{fmt(start)} .. {fmt(r.until)} UTC" if start is not None else f"until {fmt(r.until)} UTC"
    if r.since is None:
        head += " (all history)"
    return head


def format_report(r: ThroughputReport) -> str:
    """The report as aligned text tables (per cluster, then per UTC day)."""
    lines = [f"Throughput {_window_text(r)}"]
    if not r.clusters:
        lines.append("  nothing recorded: no pilots and no Fireworks ran in this window")
        lines.extend(f"note: {n}" for n in r.notes)
        return "\n".join(lines)
    headers = [
        "cluster",
        "pilots",
        "segments",
        "runs done",
        "fireworks",
        "fizzled",
        "pilot-h",
        "CPU-h",
        "busy",
        "queue wait med/max",
        "reruns",
    ]
    rows = []
    tot = r.total()
    for c in [*r.clusters, tot]:
        cpu = c.cpu_hours
        cores = "" if c.name == "total" else (f" x{c.cores_per_pilot}" if c.cores_from_config else " x1?")
        rows.append(
            [
                c.name,
                str(c.pilots_started),
                str(c.segments),
                str(c.runs_finished),
                str(c.fireworks),
                str(c.fizzled),
                _num(c.pilot_hours),
                _num(cpu) + cores,
                _pct(c.utilisation),
                f"{_dur(c.queue_wait_median)} / {_dur(c.queue_wait_max)}",
                str(c.reruns),
            ]
        )
    lines.extend(_table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 10}))
    live = [
        f"{c.name}: {c.pilots_running} running, {c.pilots_pending} queued"
        for c in r.clusters
        if c.pilots_running or c.pilots_pending
    ]
    if live:
        lines.append("  pilots now: " + "; ".join(live))
    if r.days:
        lines.append("")
        lines.append("Per day (UTC)")
        drows = [
            [
                d.day,
                d.cluster,
                str(d.segments),
                str(d.fireworks),
                str(d.fizzled),
                _num(d.pilot_s / 3600.0),
                _num(d.cpu_hours),
                _pct(d.utilisation),
            ]
            for d in r.days
        ]
        lines.extend(
            _table(
                ["day", "cluster", "segments", "fireworks", "fizzled", "pilot-h", "CPU-h", "busy"],
                drows,
                right={2, 3, 4, 5, 6, 7},
            )
        )
    lines.append("")
    lines.append(
        "pilots = pilots started; busy = time running Fireworks / pilot time; CPU-h = pilot-h x cores "
        "per pilot (x1? = assumed)"
    )
    lines.extend(f"note: {n}" for n in r.notes)
    return "\n".join(lines)


# ============================================================================ plot
def _step_running(intervals: list[tuple[float, float]]) -> tuple[list[float], list[int]]:
    """Times and counts of a step function: how many intervals are open at each change."""
    events: list[tuple[float, int]] = []
    for a, b in intervals:
        events.append((a, 1))
        events.append((b, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    ts: list[float] = []
    ns: list[int] = []
    n = 0
    for t, dn in events:
        n += dn
        if ts and ts[-1] == t:
            ns[-1] = n
        else:
            ts.append(t)
            ns.append(n)
    return ts, ns


def plot_report(r: ThroughputReport, path: str | Path, what: str = "auto", title: str | None = None) -> Path:
    """Write the throughput figure (PNG): cumulative completions per cluster (stacked), and pilots running.

    Parameters
    ----------
    r : ThroughputReport
    path : str | Path
        The PNG to write (its folder must exist).
    what : str
        ``segments``, ``fireworks``, or ``auto`` (segments when there are any, else Fireworks).
    title : str | None
        Figure title (default: a summary of the window).

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    path = Path(path)
    tot = r.total()
    if what == "auto":
        what = "segments" if tot.segments > 0 else "fireworks"
    if what not in ("segments", "fireworks"):
        raise ValueError(f"what={what!r}: use segments, fireworks or auto")
    idx = 1 if what == "segments" else 2
    names = [
        c.name for c in r.clusters if r.timeline.completions.get(c.name) or r.timeline.pilots.get(c.name)
    ]
    start = r.since if r.since is not None else r.first_activity
    if start is None:
        start = r.until - 3600.0
    end = min(r.until, r.generated_at)
    if r.until >= r.generated_at:
        # no explicit end: stop the axis shortly after the last activity rather than at "now"
        last = max(
            [b for ivs in r.timeline.pilots.values() for (_a, b) in ivs]
            + [t for series in r.timeline.completions.values() for (t, *_x) in series],
            default=None,
        )
        if last is not None and last > start:
            end = min(end, last + max(0.05 * (last - start), r.timeline.resolution_s))
    all_t = sorted({t for n in names for (t, *_x) in r.timeline.completions.get(n, [])} | {start, end})

    def to_dt(ts: Iterable[float]) -> list[_dt.datetime]:
        return [_dt.datetime.fromtimestamp(t) for t in ts]  # local time on the axis

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=[2.2, 1])
    cum_rows = []
    for n in names:
        series = r.timeline.completions.get(n, [])
        j, acc = 0, 0
        ys: list[int] = []
        for t in all_t:
            while j < len(series) and series[j][0] <= t:
                acc += int(series[j][idx])
                j += 1
            ys.append(acc)
        cum_rows.append(ys)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if cum_rows:
        ax1.stackplot(
            to_dt(all_t),
            cum_rows,
            labels=names,
            step="post",
            colors=[colors[i % len(colors)] for i in range(len(names))],
        )
        ax1.legend(loc="upper left", frameon=False)
    total = sum(c.segments if what == "segments" else c.fireworks for c in r.clusters)
    ax1.set_ylabel(f"{what} completed (cumulative)")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    for i, n in enumerate(names):
        ts, ns = _step_running(r.timeline.pilots.get(n, []))
        if not ts:
            continue
        ts = [start, *ts, end]
        ns = [0, *ns, ns[-1]]
        ax2.step(to_dt(ts), ns, where="post", label=n, color=colors[i % len(colors)])
    ax2.set_ylabel("pilots running")
    ax2.set_ylim(bottom=0)
    ax2.yaxis.get_major_locator().set_params(integer=True)
    ax2.grid(alpha=0.3)
    ax2.set_xlim(to_dt([start])[0], to_dt([end])[0])
    loc = mdates.AutoDateLocator()
    ax2.xaxis.set_major_locator(loc)
    ax2.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    span_h = (end - start) / 3600.0
    secs = end - start
    span = (
        f"{secs:.0f} s"
        if secs < 120
        else f"{secs / 60:.0f} min"
        if span_h < 2
        else f"{span_h:.0f} h"
        if span_h < 72
        else f"{span_h / 24:.0f} days"
    )
    fig.suptitle(
        title
        or f"{total} {what} on {len(names)} cluster{'s' if len(names) != 1 else ''} in {span} "
        f"({_num(tot.cpu_hours)} CPU hours)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
