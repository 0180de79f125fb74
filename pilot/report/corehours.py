"""``pilot report``: core-hours as the schedulers charged them, by category and UTC day, per cluster and account.

The numbers are the pilots' ``usage`` (:mod:`pilot.manager.accounting`: sacct CPUTimeRAW, PBS
``resources_used.walltime`` x ``ncpus``, LSF ``run_time`` x slots), added up exactly in core-seconds by
:func:`pilot.manager.accounting.fold_core_hours`; this module only shows them: a text table, and a figure of
stacked bars (one bar per UTC day, one colour per category, one panel per cluster and account).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pilot.manager.accounting import CoreHours
from pilot.manager.budget import hms

__all__ = ["core_hours_lines", "hms", "plot_core_hours"]


def core_hours_lines(rows: list[CoreHours]) -> list[str]:
    """The text section (empty without core-hours): per cluster/account and UTC day, each category's core-time,
    then the cluster/account total, exact to the second."""
    if not rows:
        return []
    cats = sorted({c for r in rows for c in r.by_category})
    table = []
    for r in rows:
        who = r.account or "(default)"
        for day in sorted(r.by_day):
            per = r.by_day[day]
            table.append([r.cluster, who, day, *(hms(per.get(c, 0)) for c in cats), hms(sum(per.values()))])
        table.append([r.cluster, who, "all", *(hms(r.by_category.get(c, 0)) for c in cats),
                      f"{hms(r.core_seconds)} = {r.core_seconds} s"])
    headers = ["cluster", "account", "day", *(c or "(none)" for c in cats), "total"]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=True)]
    out = ["", "Core-hours as the schedulers charged them (core-time h:mm:ss, UTC days)"]
    out.append("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in table:
        out.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    unsettled = sum(r.unsettled for r in rows)
    if unsettled:
        out.append(f"  ({unsettled} pilot(s) still running or not final: their numbers grow)")
    return out


def plot_core_hours(axes: list[Any], rows: list[CoreHours], colors: list[str]) -> None:
    """Draw one stacked-bar panel per cluster/account on ``axes`` (as many as ``rows``): core-hours per UTC day,
    one colour per category (the same colour for a category in every panel)."""
    cats = sorted({c for r in rows for c in r.by_category})
    for ax, r in zip(axes, rows, strict=False):
        days = sorted(r.by_day)
        bottom = [0.0] * len(days)
        for i, cat in enumerate(cats):
            vals = [r.by_day[d].get(cat, 0) / 3600.0 for d in days]
            if any(vals):
                ax.bar(days, vals, bottom=bottom, label=cat or "(none)", color=colors[i % len(colors)])
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel("core-hours")
        ax.set_title(f"{r.cluster} / {r.account or '(default account)'}: {r.core_seconds / 3600.0:.4g} core-h "
                     f"({hms(r.core_seconds)})", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)


def plot_core_hours_file(rows: list[CoreHours], path: str | Path) -> Path:
    """A figure of its own with the core-hour panels (see :func:`plot_core_hours`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.6 * len(rows) + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plot_core_hours([a[0] for a in axes], rows, colors)
    fig.suptitle("Core-hours per UTC day and category, as the schedulers charged them")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
