"""``pilot report --plot``: the throughput figure (PNG, matplotlib, imported only when a figure is asked for).

Panels sharing a local-time axis: cumulative completions per cluster (stacked); when MD segments recorded their
trajectory, the cumulative trajectory per cluster (stacked, ns or µs, titled "13.2 µs in 15 days on 4 clusters";
:mod:`pilot.report.trajectory`); and pilots running. 1000 x 650 pixels, 1000 x 900 with the trajectory panel.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pilot.report.corehours import plot_core_hours_file
from pilot.report.format import short_num
from pilot.report.model import ThroughputReport
from pilot.report.trajectory import cumulative_ns, display_unit, headline, running_sums, span_text

#: A matplotlib ``Axes``: typed ``Any`` because its stubs refuse the datetimes it plots (and converts) fine.
Axes = Any

__all__ = ["plot_report"]


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
    """Write the throughput figure (PNG): cumulative completions per cluster (stacked), the cumulative
    trajectory per cluster (stacked; only when segments recorded it), and pilots running.

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
    import matplotlib.pyplot as plt

    path = Path(path)
    tot = r.total()
    if what == "auto":
        what = "segments" if tot.segments > 0 else "fireworks"
    if what not in ("segments", "fireworks"):
        raise ValueError(f"what={what!r}: use segments, fireworks or auto")
    names = [
        c.name for c in r.clusters if r.timeline.completions.get(c.name) or r.timeline.pilots.get(c.name)
    ]
    start, end = _axis_span(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if r.timeline.trajectory:
        fig, (ax1, ax3, ax2) = plt.subplots(3, 1, figsize=(10, 9), sharex=True, height_ratios=[2.2, 2.2, 1])
        _trajectory_panel(ax3, r, names, start, end, colors)
    else:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=[2.2, 1])
    _completions_panel(ax1, r, names, what, start, end, colors)
    _pilots_panel(ax2, r, names, start, end, colors)
    total = sum(c.segments if what == "segments" else c.fireworks for c in r.clusters)
    fig.suptitle(
        title
        or f"{total} {what} on {len(names)} cluster{'s' if len(names) != 1 else ''} in {span_text(end - start)} "
        f"({short_num(tot.cpu_hours)} CPU hours)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    if r.core_hours:   # stacked bars per UTC day and category, per cluster/account (pilot.report.corehours)
        extra = plot_core_hours_file(r.core_hours, path.with_name(f"{path.stem}-core-hours{path.suffix}"))
        r.notes.append(f"core-hour plot: {extra}")
    return path


def _to_dt(ts: Iterable[float]) -> list[_dt.datetime]:
    return [_dt.datetime.fromtimestamp(t) for t in ts]  # local time on the axis


def _axis_span(r: ThroughputReport) -> tuple[float, float]:
    """Start and end of the time axis: the window, or shortly after the last activity when it has no end."""
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
    return start, end


def _cumulative(r: ThroughputReport, names: list[str], all_t: list[float], idx: int) -> list[list[int]]:
    """Per cluster, the completions (field ``idx`` of the timeline's entries) summed up to each time."""
    return [[int(v) for v in running_sums(r.timeline.completions.get(n, []), all_t, idx)] for n in names]


def _completions_panel(
    ax: Axes, r: ThroughputReport, names: list[str], what: str, start: float, end: float, colors: list[str]
) -> None:
    """The upper panel: cumulative completions per cluster, stacked."""
    idx = 1 if what == "segments" else 2
    all_t = sorted({t for n in names for (t, *_x) in r.timeline.completions.get(n, [])} | {start, end})
    cum_rows = _cumulative(r, names, all_t, idx)
    if cum_rows:
        ax.stackplot(
            _to_dt(all_t),
            cum_rows,
            labels=names,
            step="post",
            colors=[colors[i % len(colors)] for i in range(len(names))],
        )
        ax.legend(loc="upper left", frameon=False)
    ax.set_ylabel(f"{what} completed (cumulative)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _trajectory_panel(
    ax: Axes, r: ThroughputReport, names: list[str], start: float, end: float, colors: list[str]
) -> None:
    """The middle panel: cumulative trajectory per cluster (stacked), in ns or µs as fits the total, titled with
    the headline ("13.2 µs in 15 days on 4 clusters")."""
    all_t = sorted({t for n in names for (t, _ns) in r.timeline.trajectory.get(n, [])} | {start, end})
    unit, per = display_unit(sum(c.ns for c in r.clusters))
    cum = [[y / per for y in ys] for ys in cumulative_ns(r, names, all_t)]
    # the clusters' colours as in the panel above; only those with trajectory in the legend
    labels = [n if r.timeline.trajectory.get(n) else f"_{n}" for n in names]
    ax.stackplot(_to_dt(all_t), cum, labels=labels, step="post",
                 colors=[colors[i % len(colors)] for i in range(len(names))])
    ax.legend(loc="upper left", frameon=False)
    ax.set_title(headline(r) or "", fontsize="medium")
    ax.set_ylabel(f"trajectory, {unit} (cumulative)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _pilots_panel(
    ax: Axes, r: ThroughputReport, names: list[str], start: float, end: float, colors: list[str]
) -> None:
    """The lower panel: pilots running per cluster (a step line each), and the shared time axis."""
    import matplotlib.dates as mdates

    for i, n in enumerate(names):
        ts, ns = _step_running(r.timeline.pilots.get(n, []))
        if not ts:
            continue
        ts = [start, *ts, end]
        ns = [0, *ns, ns[-1]]
        ax.step(_to_dt(ts), ns, where="post", label=n, color=colors[i % len(colors)])
    ax.set_ylabel("pilots running")
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_xlim(_to_dt([start])[0], _to_dt([end])[0])
    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
