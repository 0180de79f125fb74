"""``pilot status``: the CORE-HOURS section (issue 20, budgets), and the "needs you" entries of budgets.

What the schedulers charged this manager's pilots (their ``usage``, read by :mod:`pilot.manager.accounting`), per
cluster and account: in all, by category and today (UTC), to the second (the text shows core-time as
``h:mm:ss`` and hours, the ``--json`` document integer ``core_seconds``); each budget of the config with what is
used, committed by live pilots and left (:mod:`pilot.manager.budget`, the very numbers the manager's gate uses);
and, under "needs you", each unit the manager's last cycle refused a pilot because of a budget, with its reason.

Pure but for :func:`gather_usage`, which reads the records once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.manager.accounting import CoreHours, fold_core_hours, utc_day
from pilot.manager.budget import RECORD_FIELDS, BudgetState, budget_states, hms, hours

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["UsageSection", "budget_needs", "gather_usage", "usage_lines"]

#: the start of a reason the budget gate gives (pilot.manager.budget.BudgetState.reason)
BUDGET_REASON = "budget spent"


@dataclass
class UsageSection:
    """The CORE-HOURS section: rows per cluster/account, budgets, the units a budget stopped, query errors."""

    today: str
    rows: list[CoreHours] = field(default_factory=list)
    budgets: list[BudgetState] = field(default_factory=list)
    stopped: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"today": self.today,
                "rows": [{**r.to_dict(), "today_core_seconds": r.day_total(self.today)} for r in self.rows],
                "total_core_seconds": sum(r.core_seconds for r in self.rows),
                "budgets": [b.to_dict() for b in self.budgets],
                "stopped": list(self.stopped), "errors": dict(self.errors)}


def gather_usage(q: Any, config: Config | None, now: float | None = None,
                 decisions: Any = None) -> UsageSection | None:
    """Read the pilots with core-hours (and the live ones, for the budgets' committed part) once, and the
    clusters' accounting errors once; None when there is nothing to show (no usage, no budget)."""
    now = time.time() if now is None else now
    fields = {**RECORD_FIELDS, "cluster": 1, "category": 1}
    recs = q.find("pilots", {"usage.core_seconds": {"$ne": None}}, fields)
    budgets: list[BudgetState] = []
    clusters = {n: c for n, c in (config.clusters if config is not None else {}).items() if c.budget}
    if clusters:   # the very records the budget gate reads (pilot.manager.budget.BudgetGate.refresh)
        judged = q.find("pilots", {"cluster": {"$in": sorted(clusters)}}, fields)
        for name, c in sorted(clusters.items()):
            budgets += budget_states(name, c, [r for r in judged if r.get("cluster") == name], now)
    rows = fold_core_hours(recs)
    if not rows and not budgets:
        return None
    errors = {str(d["_id"]): str((d.get("accounting") or {}).get("error"))
              for d in q.find("pilot_clusters", {"accounting.ok": False}, {"accounting": 1})}
    stopped = [{"cluster": d.get("cluster"), "unit": d.get("unit") or d.get("cluster"), "category": d.get("category"),
                "reason": d.get("reason")} for d in decisions or () if str(d.get("reason")).startswith(BUDGET_REASON)]
    return UsageSection(today=utc_day(now), rows=rows, budgets=budgets, stopped=stopped, errors=errors)


def _categories(by: dict[str, int]) -> str:
    return ", ".join(f"{c or '(none)'} {hms(v)}" for c, v in sorted(by.items())) or "-"


def usage_lines(u: UsageSection | None, table: Callable[..., list[str]]) -> list[str]:
    """The section as text lines (empty without one); ``table(headers, rows)`` lays out the table
    (:func:`pilot.status.format.format_table`, passed in: format imports this module)."""
    if u is None:
        return []
    out = ["", "CORE-HOURS (as the schedulers charged them; core-time h:mm:ss, today is UTC)"]
    if u.rows:
        rows = [[r.cluster, r.account or "(default)", r.pilots + 0, f"{hms(r.core_seconds)} = {r.core_seconds} s",
                 f"{hours(r.core_seconds)} h", hms(r.day_total(u.today)), _categories(r.by_category)]
                for r in u.rows]
        out += table(["cluster", "account", "pilots", "used", "core-h", "today", "by category"], rows)
        growing = sum(r.unsettled for r in u.rows)
        if growing:
            out.append(f"  ({growing} pilot{'s' if growing != 1 else ''} still running or not settled: "
                       "their numbers grow until the scheduler's final ones)")
    else:
        out.append("  (no pilot has core-hours from a scheduler yet)")
    for b in u.budgets:
        who = b.budget.account or "all accounts"
        since = f" since {b.budget.since.isoformat()}" if b.budget.since else ""
        need = f"a pilot needs {hms(b.smallest)}" if b.smallest is not None else "no profile of this account"
        state = f"spent: no new pilot, {need}" if b.spent else f"room left, {need}"
        out.append(f"  budget {b.cluster} ({who}{since}): {hours(b.limit)} core-h; used {hms(b.used)}, committed "
                   f"{hms(b.committed)} by {b.live} live pilot{'s' if b.live != 1 else ''}, left "
                   f"{hms(max(0, b.left))} ({state})")
    for cluster, err in sorted(u.errors.items()):
        out.append(f"  {cluster}: {err} (the last numbers are shown)")
    return out


def budget_needs(u: UsageSection | None) -> list[str]:
    """The "needs you" lines: each unit and category a budget stopped in the manager's last cycle."""
    if u is None or not u.stopped:
        return []
    out = []
    units = sorted({(str(s["unit"]), str(s["reason"])) for s in u.stopped})
    for unit, reason in units:
        cats = sorted({str(s["category"]) for s in u.stopped if str(s["unit"]) == unit})
        out.append(f"* {unit}: no new pilot for {', '.join(cats)}: {reason}. Raise `budget:` in the cluster file, "
                   "or let the work go to other clusters")
    return out
