"""Pure: a :class:`~pilot.status.StatusReport` into what the overview shows, and the live numbers.

The live numbers are one flat mapping ``key -> value`` (``cluster-pilotci-running``: 3): the page renders
each in an element with ``data-live=KEY`` (and ``data-testid=KEY``, for the browser tests), and the JSON
endpoint sends the same mapping, so the page script replaces the text of each element without knowing what it
means. The values are the report's own: nothing is counted twice.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pilot.status import SHOWN_FW_STATES, StatusReport, human_ago, human_until

__all__ = ["cluster_rows", "live_numbers", "needs_you", "usage_text", "when"]

_FIZZLED_HEAD = re.compile(r"^\* \d+ FIZZLED Firework")


def when(t: Any, now: float | None = None) -> str:
    """``2026-12-07 14:03 UTC`` for epoch seconds or a datetime (FireWorks stores naive UTC datetimes and ISO
    text); ``-`` for nothing."""
    if t is None or t == "":
        return "-"
    if isinstance(t, str):
        try:
            t = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            return t
    if isinstance(t, dt.datetime):
        d = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    elif isinstance(t, int | float) and not isinstance(t, bool):
        d = dt.datetime.fromtimestamp(float(t), dt.timezone.utc)
    else:
        return str(t)
    return d.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _cat(name: str | None) -> str:
    return name if name is not None else "(none)"


def _state(c: Any, now: float) -> str:
    """A cluster's condition in a few words: what the overview's "state" column says."""
    parts = []
    if c.needs_login:
        parts.append("NEEDS LOGIN")
    if c.backed_off:
        parts.append(f"backed off {human_until(c.backoff_until, now)}")
    drain = c.gates.drain if c.gates is not None else None
    if drain is not None:
        until = drain.get("until")
        parts.append("drained" + (f" {human_until(until, now)}" if isinstance(until, int | float) else ""))
    if c.hold is not None:
        parts.append(f"held {human_until(c.hold.until, now)}")
    return ", ".join(parts) or "ok"


def _reachable(c: Any) -> str:
    return "unknown" if c.reachable is None else "yes" if c.reachable else "no"


def cluster_rows(report: StatusReport) -> list[dict[str, Any]]:
    """One row per cluster: name, reachable, state text, drained (bool), pilots by phase, categories."""
    now = report.generated_at
    return [{"name": c.name, "reachable": _reachable(c), "state": _state(c, now),
             "drained": c.gates is not None and c.gates.drain is not None, "in_config": c.in_config,
             "pending": c.pilots.pending, "running": c.pilots.running, "uncertain": c.pilots.uncertain,
             "ended": c.pilots.ended_recently, "categories": list(c.categories),
             "last_contact": human_ago(c.last_contact, now) if c.last_contact else "never",
             "last_error": c.last_error} for c in report.clusters]


def live_numbers(report: StatusReport) -> dict[str, Any]:
    """The overview's changing values by key (see the module's docstring)."""
    out: dict[str, Any] = {"needs-you-count": report.problem_count, "generated-at": when(report.generated_at)}
    if report.fizzled_total:   # the page shows it only then: a key the page lacks means "reload for the list"
        out["fizzled-total"] = report.fizzled_total
    for row in cluster_rows(report):
        n = row["name"]
        for k in ("reachable", "state", "pending", "running", "ended"):
            out[f"cluster-{n}-{k}"] = row[k]
    for cat in report.categories:
        for s in SHOWN_FW_STATES:
            out[f"category-{_cat(cat.name)}-{s}"] = cat.count(s)
        out[f"category-{_cat(cat.name)}-total"] = cat.total
    return out


def needs_you(report: StatusReport) -> list[dict[str, Any]]:
    """The "needs you" entries as ``pilot status`` words them: ``{"head": str, "details": [str]}``, the FIZZLED
    Fireworks left out (the page lists them with links and a rerun button)."""
    from pilot.status.format import needs_lines  # the text of `pilot status`: one wording, not two

    entries: list[dict[str, Any]] = []
    skipping = False
    for line in needs_lines(report, report.generated_at):
        if line.startswith("* "):
            skipping = _FIZZLED_HEAD.match(line) is not None
            if not skipping:
                entries.append({"head": line[2:], "details": []})
        elif entries and not skipping:
            entries[-1]["details"].append(line.strip())
    return entries


def usage_text(report: StatusReport) -> str | None:
    """The CORE-HOURS section of ``pilot status`` (core-hours per cluster and account, budgets), as its text;
    None when the report has none (no cluster with accounting)."""
    from pilot.status import format_table
    from pilot.status.usage import usage_lines

    lines = usage_lines(report.usage, format_table)
    text = "\n".join(line for line in lines[2:]) if len(lines) > 2 else ""
    return text if report.usage is not None else None
