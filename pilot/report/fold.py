"""Query rows -> :class:`~pilot.report.model.ThroughputReport`: the arithmetic of ``pilot report``.

No database here: :func:`pilot.report.gather.gather_report` hands :class:`Fold` the rows of
:mod:`pilot.report.queries` in the order it reads them (pilot records, launch groups, running launches,
reruns); each step adds to the per-cluster rows, the per-UTC-day rows and the plot's timeline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pilot.isotime import epoch_seconds
from pilot.manager.accounting import day_split, fold_core_hours, number, usage_of
from pilot.manager.records import PENDING_STATES, RUNNING_STATES
from pilot.report.model import OTHER, ClusterThroughput, DayThroughput, ThroughputReport, Timeline
from pilot.report.times import bin_start, split_days, utc_day

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["RESOLUTIONS", "Fold", "cluster_of_worker", "resolution"]

#: Bin lengths of the timeline: (ISO prefix length, seconds), chosen by the span of the window.
RESOLUTIONS = ((19, 1.0), (16, 60.0), (13, 3600.0))

Row = dict[str, Any]


def _cores(config: Config | None, cluster: str, profile: str | None = None) -> tuple[int, bool]:
    """Cores of one pilot of ``cluster`` (of queue ``profile``; None or one the file no longer has: its first),
    and whether the config said so (else 1 is assumed)."""
    if config is None:
        return 1, False
    c = getattr(config, "clusters", {}).get(cluster)
    if c is None:
        return 1, False
    return max(1, c.pilot_cores(profile)), True


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def cluster_of_worker(name: str | None, by_fworker: dict[str, str], known: Iterable[str]) -> str:
    if not name:
        return OTHER
    if name in by_fworker:
        return by_fworker[name]
    # a pilot whose record is outside the query (or gone): its FWorker name is CLUSTER-JOBID
    for cluster in sorted(known, key=len, reverse=True):
        if name.startswith(cluster + "-"):
            return cluster
    return OTHER


def resolution(since: float | None, until: float, first: float | None) -> tuple[int, float]:
    """``(ISO prefix length, seconds)`` of the completion bins: the span of the window decides."""
    span = until - (since if since is not None else (first if first is not None else until))
    return RESOLUTIONS[0] if span <= 2 * 3600 else RESOLUTIONS[1] if span <= 7 * 86400 else RESOLUTIONS[2]


class Fold:
    """The report being built: per cluster, per (UTC day, cluster), the timeline, and what links a launch
    to its cluster (the pilots' FWorker names and job names)."""

    def __init__(
        self, config: Config | None, since: float | None, until: float, now: float, notes: Sequence[str] = ()
    ) -> None:
        self.config = config
        self.since = since
        self.until = until
        self.end_now = min(now, until)
        self.lo = since if since is not None else -math.inf
        self.notes = list(notes)
        self.clusters: dict[str, ClusterThroughput] = {}
        self.days: dict[tuple[str, str], DayThroughput] = {}
        self.timeline = Timeline()
        #: start of the first activity (pilot run or completion bin); the span of an unbounded window
        self.first: float | None = None
        self.by_fworker: dict[str, str] = {}
        self.by_job: dict[str, str] = {}
        self.running_fworkers: set[str] = set()
        self.known: set[str] = set()
        #: the pilot records with core-hours from the scheduler (pilot.manager.accounting)
        self.charged: list[Row] = []
        for name in sorted(getattr(config, "clusters", {}) or {}):
            self.cluster(name)

    def cluster(self, name: str) -> ClusterThroughput:
        if name not in self.clusters:
            cores, from_cfg = _cores(self.config, name)
            self.clusters[name] = ClusterThroughput(name=name, cores_per_pilot=cores, cores_from_config=from_cfg)
        return self.clusters[name]

    def day(self, d: str, cluster: str) -> DayThroughput:
        key = (d, cluster)
        if key not in self.days:
            self.days[key] = DayThroughput(day=d, cluster=cluster)
        return self.days[key]

    # ---- 1. pilot records
    def add_pilots(self, pilots: Iterable[Row]) -> None:
        for p in pilots:
            self.add_pilot(p)

    def add_pilot(self, p: Row) -> None:
        """One pilot record: its counts, its queue wait, and its run time clipped to the window."""
        lo, until = self.lo, self.until
        name = str(p.get("cluster") or "?")
        c = self.cluster(name)
        self.by_job[str(p["_id"])] = name
        if (p.get("usage") or {}).get("core_seconds") is not None:
            self.charged.append(p)
        if p.get("fworker"):
            self.by_fworker[str(p["fworker"])] = name
        state = str(p.get("state") or "")
        sub, start, end = _f(p.get("submit_time")), _f(p.get("start_time")), _f(p.get("end_time"))
        if state in RUNNING_STATES:
            c.pilots_running += 1
            if p.get("fworker"):
                self.running_fworkers.add(str(p["fworker"]))
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
            return
        run_end = end if end is not None else (self.end_now if state in RUNNING_STATES else None)
        if run_end is None:
            return  # ended without an end time: nothing certain to count
        cores = _cores(self.config, name, p.get("profile"))[0] if p.get("profile") else c.cores_per_pilot
        self._add_run(c, max(start, lo), min(run_end, until), cores, self._charged(p))

    def _charged(self, p: Row) -> dict[str, int] | None:
        """The pilot's core-seconds per UTC day of the window as the scheduler charged them (its ``usage``,
        :mod:`pilot.manager.accounting`); None when it has none (the CPU hours are then estimated)."""
        u = usage_of(p)
        charged = number(u.get("core_seconds"))
        if charged is None:
            return None
        days = day_split(number(u.get("start")), int(number(u.get("seconds")) or 0), int(charged),
                         fallback=_f(p.get("end_time")) or _f(p.get("submit_time")))
        lo = utc_day(self.since) if self.since is not None else ""
        hi = utc_day(self.until)
        return {d: cs for d, cs in days.items() if lo <= d <= hi}

    def _add_run(self, c: ClusterThroughput, a: float, b: float, cores: int,
                 charged: dict[str, int] | None = None) -> None:
        """A pilot of ``c`` with ``cores`` (its queue profile's) ran from ``a`` to ``b`` (clipped to the window);
        its CPU seconds are what the scheduler ``charged`` per day when known, else run time x cores."""
        if b <= a:
            return
        c.pilot_s += b - a
        if charged is None:
            c.cpu_s += (b - a) * cores
            c.cpu_estimated += 1
        else:
            c.cpu_s += sum(charged.values())
            c.cpu_charged += 1
            for d, cs in charged.items():
                self.day(d, c.name).cpu_s += cs
        self.timeline.pilots.setdefault(c.name, []).append((a, b))
        self.first = a if self.first is None else min(self.first, a)
        for d, secs in split_days(a, b):
            dd = self.day(d, c.name)
            dd.pilot_s += secs
            if charged is None:
                dd.cpu_s += secs * cores

    # ---- 2. launches that ended in the window, in groups
    def add_launch_groups(self, rows: Iterable[Row], res: float) -> None:
        """The launch aggregation's rows (bins of ``res`` seconds); then the timeline's completions."""
        self.timeline.resolution_s = res
        # the config's clusters and every pilot record's: an unknown FWorker CLUSTER-JOBID belongs to one
        self.known = set(self.clusters)
        bins: dict[tuple[str, str], list[int]] = {}
        ps_bins: dict[tuple[str, str], float] = {}
        for row in rows:
            self._add_launch_group(row, bins, ps_bins)
        for (cname, bin_key), (nseg, nfw) in bins.items():
            t_bin = bin_start(bin_key)
            if t_bin is None:
                continue
            self.timeline.completions.setdefault(cname, []).append((t_bin + res, nseg, nfw))
            if self.since is None:
                self.first = t_bin if self.first is None else min(self.first, t_bin)
        for (cname, bin_key), ps in ps_bins.items():
            t_bin = bin_start(bin_key)
            if t_bin is not None and ps > 0:
                self.timeline.trajectory.setdefault(cname, []).append((t_bin + res, ps / 1000.0))
        for series in self.timeline.completions.values():
            series.sort()
        for trajectory in self.timeline.trajectory.values():
            trajectory.sort()

    def _add_launch_group(self, row: Row, bins: dict[tuple[str, str], list[int]],
                          ps_bins: dict[tuple[str, str], float]) -> None:
        key = row.get("_id") or {}
        cname = cluster_of_worker(key.get("w"), self.by_fworker, self.known)
        c = self.cluster(cname)
        bin_key = str(key.get("bin") or "")
        n = int(row.get("n") or 0)
        busy = _f(row.get("busy")) or 0.0
        seg = bool(key.get("seg"))
        dd = self.day(bin_key[:10], cname)
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
                # the trajectory: steps x dt_ps summed by the database (ps); segments without dt_ps counted
                ps, nodt = _f(row.get("ps")) or 0.0, int(_f(row.get("nodt")) or 0)
                c.ns += ps / 1000.0
                dd.ns += ps / 1000.0
                c.ns_unknown += nodt
                dd.ns_unknown += nodt
                ps_bins[(cname, bin_key)] = ps_bins.get((cname, bin_key), 0.0) + ps
                if key.get("fin"):
                    c.runs_finished += n
                    dd.runs_finished += n
        else:
            c.fizzled += n
            dd.fizzled += n

    # ---- 3. Fireworks running now under running pilots: busy up to now
    def wants_running(self) -> bool:
        """Whether pilots run now and "now" is inside the window (else no launch is busy in it now)."""
        return bool(self.running_fworkers) and self.end_now > self.lo

    def add_running(self, docs: Iterable[Row]) -> None:
        for doc in docs:
            start = epoch_seconds(doc.get("time_start"))
            if start is None:
                continue
            a, b = max(start, self.lo), self.end_now
            if b > a:
                cname = cluster_of_worker((doc.get("fworker") or {}).get("name"), self.by_fworker, self.known)
                self.cluster(cname).busy_s += b - a
                self.day(utc_day(b), cname).busy_s += b - a

    # ---- 4. reruns
    def unknown_pilots(self, rerun_rows: Iterable[Row]) -> list[str]:
        """Job names of pilots that owned reruns but are not among the pilot records read."""
        return [str(r["_id"]) for r in rerun_rows if str(r.get("_id")) not in self.by_job]

    def add_pilot_clusters(self, rows: Iterable[Row]) -> None:
        for p in rows:
            self.by_job[str(p["_id"])] = str(p.get("cluster") or "?")

    def add_reruns(self, rerun_rows: Iterable[Row]) -> None:
        for r in rerun_rows:
            self.cluster(self.by_job.get(str(r.get("_id")), OTHER)).reruns += int(r.get("n") or 0)

    # ---- the result
    def report(self, now: float, queries: int) -> ThroughputReport:
        """The report, with notes on assumed cores and on launches by FWorkers that are no pilot."""
        assumed = sorted(
            c.name for c in self.clusters.values()
            if not c.cores_from_config and c.name != OTHER and c.pilot_s > 0 and c.cpu_estimated
        )
        if assumed:
            why = "no config dir" if self.config is None else "not in the config dir"
            self.notes.append(f"cores per pilot assumed 1 for {', '.join(assumed)} ({why}): CPU hours = pilot hours")
        if OTHER in self.clusters:
            self.notes.append(
                f"{OTHER}: launches by FWorkers that are no pilot of this manager (rlaunch by hand, "
                "another manager)"
            )
        order = sorted(self.clusters.values(), key=lambda c: (c.name == OTHER, c.name))
        return ThroughputReport(
            generated_at=now,
            since=self.since,
            until=self.until,
            first_activity=self.first,
            config_dir=str(self.config.config_dir) if self.config is not None else None,
            clusters=order,
            days=sorted(self.days.values(), key=lambda d: (d.day, d.cluster == OTHER, d.cluster)),
            timeline=self.timeline,
            notes=self.notes,
            queries=queries,
            core_hours=fold_core_hours(self.charged, self.since, self.until),
        )
