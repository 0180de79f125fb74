"""``pilot report`` as text: aligned tables per cluster, then per UTC day, then the trajectory per day and
cluster (:mod:`pilot.report.trajectory`) and the charged core-hours (:mod:`pilot.report.corehours`) (pure)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from pilot.report.corehours import core_hours_lines
from pilot.report.model import ThroughputReport
from pilot.report.trajectory import trajectory_lines

__all__ = ["format_report"]


def short_num(x: float | None) -> str:
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


#: the last line of the text report: what the columns mean
LEGEND = ("pilots = pilots started; busy = time running Fireworks / pilot time; CPU-h = pilot-h x cores per pilot "
          "(x1? = assumed), an estimate; 'charged' = what the scheduler charged (sacct CPUTimeRAW, PBS resources_used, "
          "LSF run_time x slots), 'mixed' = charged where known, else the estimate")


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
        if c.cpu_source in ("scheduler", "mixed"):
            cores = " charged" if c.cpu_source == "scheduler" else " mixed"   # pilot.manager.accounting
        rows.append(
            [
                c.name,
                str(c.pilots_started),
                str(c.segments),
                str(c.runs_finished),
                str(c.fireworks),
                str(c.fizzled),
                short_num(c.pilot_hours),
                short_num(cpu) + cores,
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
                short_num(d.pilot_s / 3600.0),
                short_num(d.cpu_hours),
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
    lines.extend(trajectory_lines(r))
    lines.extend(core_hours_lines(r.core_hours))
    lines += ["", LEGEND]
    lines.extend(f"note: {n}" for n in r.notes)
    return "\n".join(lines)
