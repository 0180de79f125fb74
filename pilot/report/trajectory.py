"""Nanoseconds of MD trajectory per cluster and UTC day, and cumulative: the campaign panel ("13.2 µs in 15 days
on 4 clusters") of ``pilot report``, its ``--json`` and its figure.

Where the numbers come from. Every MD segment records in its launch's ``action.stored_data``
(:class:`tasks.segment.SegmentResult`) the steps it advanced, ``steps_done`` (its checkpoint step after minus
before), and its engine's time step, ``dt_ps`` (the .tpr's ``dt`` for GROMACS, the integrator's ``stepSize`` for
OpenMM). The trajectory a segment added is then exactly ``steps_done x dt_ps / 1000`` ns, whatever the machine's
speed. The report's one launch aggregation (:meth:`pilot.report.queries.ReportQueries.launch_groups`) sums that
product in the database, per FWorker, time bin and kind, and counts the segments that advanced without a ``dt_ps``
(records written before it was recorded): their trajectory is **unknown**, never counted as zero, and the rows
say how many there are. :mod:`pilot.report.fold` adds the sums to the clusters, the UTC days and the timeline.
So the trajectory costs no query of its own: 20,000 segments are still one aggregation.

This module is pure: it turns a :class:`~pilot.report.model.ThroughputReport` into the rows
(:func:`day_rows`, :func:`cluster_rows`), the ``--json`` section (:func:`trajectory_section`), the text lines
(:func:`trajectory_lines`), the figure's headline and cumulative series (:func:`headline`,
:func:`cumulative_ns`). The model imports it (for ``to_dict``), so it imports nothing of the report room at run
time. The database entry point the dashboard calls, ``trajectory_rows(db, since, until)``, is
:func:`pilot.report.gather.trajectory_rows` (exported as ``pilot.report.trajectory_rows``): :func:`day_rows` of
the report :func:`~pilot.report.gather.gather_report` builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.report.model import ThroughputReport

__all__ = [
    "cluster_rows",
    "cumulative_ns",
    "day_rows",
    "display_unit",
    "headline",
    "is_cluster",
    "ns_text",
    "running_sums",
    "span_text",
    "trajectory_lines",
    "trajectory_section",
]

#: Decimals of the ns numbers in ``--json`` (1e-6 ns = 1 fs: exact for any time step given in fs).
NS_DECIMALS = 6


def _known(ns: float, unknown: int) -> float | None:
    """``ns`` rounded; None when nothing is known (only segments without ``dt_ps`` advanced)."""
    return None if unknown and ns == 0 else round(ns, NS_DECIMALS)


def is_cluster(name: str) -> bool:
    """Whether a report row is a cluster: ``(not a pilot)`` (launches by other FWorkers) is none (a config's
    cluster names have no parentheses)."""
    return not (name.startswith("(") and name.endswith(")"))


def day_rows(report: ThroughputReport) -> list[dict[str, Any]]:
    """One row per (UTC day, cluster) of the report, in day order.

    Returns
    -------
    list of dict
        ``{"day": "2026-12-07", "cluster", "segments", "core_hours", "ns", "ns_unknown_segments",
        "cumulative_ns"}``: the MD segments completed that day, the CPU hours of the cluster's pilots that day
        (charged by the scheduler where known, else run time x cores, as the report's ``CPU-h``), the ns of
        trajectory those segments added, how many of them have no time step in their record (not in ``ns``),
        and the cluster's ns from the start of the window through that day. ``ns``/``cumulative_ns`` are None
        when only segments of unknown length count there.
    """
    rows: list[dict[str, Any]] = []
    cum: dict[str, float] = {}
    cum_unknown: dict[str, int] = {}
    for d in report.days:
        cum[d.cluster] = cum.get(d.cluster, 0.0) + d.ns
        cum_unknown[d.cluster] = cum_unknown.get(d.cluster, 0) + d.ns_unknown
        rows.append({
            "day": d.day,
            "cluster": d.cluster,
            "segments": d.segments,
            "core_hours": round(d.cpu_hours, 4),
            "ns": _known(d.ns, d.ns_unknown),
            "ns_unknown_segments": d.ns_unknown,
            "cumulative_ns": _known(cum[d.cluster], cum_unknown[d.cluster]),
        })
    return rows


def cluster_rows(report: ThroughputReport) -> list[dict[str, Any]]:
    """Per cluster of the report: ``{"cluster", "segments", "core_hours", "ns", "ns_unknown_segments"}`` over
    the whole window (``ns`` is the cluster's cumulative trajectory at the window's end)."""
    return [{"cluster": c.name, "segments": c.segments, "core_hours": round(c.cpu_hours, 4),
             "ns": _known(c.ns, c.ns_unknown), "ns_unknown_segments": c.ns_unknown} for c in report.clusters]


def _span(report: ThroughputReport) -> float | None:
    """Seconds from the window's start (or the first activity) to the last trajectory completed."""
    ends = [t for series in report.timeline.trajectory.values() for (t, _ns) in series]
    if not ends:
        return None
    start = report.since if report.since is not None else report.first_activity
    end = min(max(ends), report.until)
    if start is None:
        start = min(ends) - report.timeline.resolution_s
    return max(0.0, end - start)


def headline(report: ThroughputReport) -> str | None:
    """``"13.2 µs in 15 days on 4 clusters"`` (plus the segments of unknown length), or None without
    trajectory."""
    total = sum(c.ns for c in report.clusters)
    unknown = sum(c.ns_unknown for c in report.clusters)
    if total <= 0 and not unknown:
        return None
    n = sum(1 for c in report.clusters if c.ns > 0 and is_cluster(c.name))
    span = _span(report)
    text = ns_text(total) if total > 0 else "? ns"
    if span is not None:
        text += f" in {span_text(span)}"
    text += f" on {n} cluster{'s' if n != 1 else ''}"
    if unknown:
        text += f" (+{unknown} segment{'s' if unknown != 1 else ''} of unknown length)"
    return text


def trajectory_section(report: ThroughputReport) -> dict[str, Any]:
    """The ``trajectory`` section of ``pilot report --json``: totals, per cluster, per day (ns throughout)."""
    total = sum(c.ns for c in report.clusters)
    unknown = sum(c.ns_unknown for c in report.clusters)
    return {
        "unit": "ns",
        "total_ns": _known(total, unknown),
        "ns_unknown_segments": unknown,
        "headline": headline(report),
        "clusters": cluster_rows(report),
        "days": day_rows(report),
    }


def display_unit(total_ns: float) -> tuple[str, float]:
    """(unit, ns per unit) for tables and the figure: µs from 1000 ns on, else ns."""
    return ("µs", 1000.0) if total_ns >= 1000.0 else ("ns", 1.0)


def ns_text(ns: float) -> str:
    """A trajectory length with three significant digits in the unit that fits: ``8 ps``, ``850 ns``,
    ``13.2 µs``, ``1.5 ms``."""
    for unit, per in (("ms", 1e6), ("µs", 1e3), ("ns", 1.0)):
        if ns >= per:
            return f"{ns / per:.3g} {unit}"
    return f"{ns * 1000.0:.3g} ps"


def span_text(secs: float) -> str:
    """A window's length: ``90 s``, ``45 min``, ``12 h``, ``15 days``."""
    span_h = secs / 3600.0
    if secs < 120:
        return f"{secs:.0f} s"
    if span_h < 2:
        return f"{secs / 60:.0f} min"
    return f"{span_h:.0f} h" if span_h < 72 else f"{span_h / 24:.0f} days"


def _num(x: float | None, unknown: int = 0) -> str:
    """A table cell: ``?`` unknown, ``0.008+?`` known in part (some segments without a time step)."""
    if x is None:
        return "?"
    ax = abs(x)
    text = (f"{x:.0f}" if ax >= 100 else f"{x:.1f}" if ax >= 10 else f"{x:.2f}" if ax >= 0.1 or ax == 0
            else f"{x:.4f}" if ax >= 0.001 else f"{x:.2e}")
    return text + ("+?" if unknown else "")


def trajectory_lines(report: ThroughputReport) -> list[str]:
    """The text section (empty when no MD segment completed): per UTC day and cluster the segments, CPU hours,
    trajectory and cumulative trajectory, then each cluster's total."""
    tot_ns = sum(c.ns for c in report.clusters)
    unknown = sum(c.ns_unknown for c in report.clusters)
    if not any(d.segments for d in report.days) and tot_ns <= 0:
        return []
    unit, per = display_unit(tot_ns)
    rows = [[r["day"], r["cluster"], str(r["segments"]), _num(r["core_hours"]),
             _num(None if r["ns"] is None else r["ns"] / per, r["ns_unknown_segments"]),
             _num(None if r["cumulative_ns"] is None else r["cumulative_ns"] / per)]
            for r in day_rows(report) if r["segments"] or r["ns"]]
    out = ["", f"Trajectory (MD segments: steps x time step): {headline(report)}"]
    out += _table(["day", "cluster", "segments", "CPU-h", unit, f"cumulative {unit}"], rows, right={2, 3, 4, 5})
    per_cluster = [f"{c['cluster']} {'?' if c['ns'] is None else ns_text(c['ns'])}"
                   + (f" (+{c['ns_unknown_segments']} unknown)" if c["ns_unknown_segments"] else "")
                   for c in cluster_rows(report) if c["segments"]]
    out.append("  per cluster: " + ", ".join(per_cluster))
    if unknown:
        out.append(f"  {unknown} segment{'s' if unknown != 1 else ''} recorded no time step (dt_ps; records older "
                   "than it): their trajectory is unknown and not in these sums ('+?')")
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return ["  " + "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                             for i, c in enumerate(cells)).rstrip() for cells in (headers, *rows)]


def cumulative_ns(report: ThroughputReport, names: Sequence[str], times: Sequence[float]) -> list[list[float]]:
    """Per cluster of ``names``, its trajectory (ns) completed up to each of ``times`` (sorted): the figure's
    stacked areas."""
    return [running_sums(report.timeline.trajectory.get(n, []), times) for n in names]


def running_sums(series: Sequence[Sequence[Any]], times: Sequence[float], idx: int = 1) -> list[float]:
    """The sum of field ``idx`` of ``series``' entries (``(time, ...)``, sorted by time) up to each of ``times``
    (sorted): a cumulative curve sampled where the figure draws it."""
    j, acc = 0, 0.0
    out: list[float] = []
    for t in times:
        while j < len(series) and series[j][0] <= t:
            acc += series[j][idx]
            j += 1
        out.append(acc)
    return out
