"""``pilot status`` as text: a header, the clusters and categories tables and the "needs you" list (pure).

The JSON document is :meth:`pilot.status.model.StatusReport.to_dict`; this module makes what people read:
aligned tables, "3 min ago", "in 9 min (12:10:03)".
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from typing import Any

from pilot.configdir import pilot_command
from pilot.status.gates import gate_lines, wait_lines
from pilot.status.model import (
    OTHER_CATEGORIES,
    SHOWN_FW_STATES,
    CategoryStatus,
    ClusterStatus,
    RouteCondition,
    RouteStatus,
    StatusReport,
    first_line,
)
from pilot.status.notify import notification_lines
from pilot.status.share import share_lines
from pilot.status.usage import budget_needs, usage_lines

#: The least the clusters table gives the last error, however wide the other columns are.
MIN_ERROR_WIDTH = 12

__all__ = ["format_status", "format_table", "human_ago", "human_clock", "human_duration", "human_until", "needs_lines",
           "short_duration"]


def human_duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h`` (rounded down)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 600:
        m, sec = divmod(s, 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def short_duration(seconds: float) -> str:
    """A duration in its largest unit, for a table cell: ``45s``, ``3m``, ``2h``, ``3d`` (rounded down)."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def human_ago(t: float | None, now: float) -> str:
    """``just now``, ``40 s ago``, ``3 min ago``, ``2 h 5 min ago``; ``never`` for ``None``."""
    if t is None:
        return "never"
    delta = now - float(t)
    if delta < 0:
        return f"in {human_duration(-delta)}"
    if delta < 5:
        return "just now"
    return f"{human_duration(delta)} ago"


def human_until(t: float | None, now: float) -> str:
    """``in 9 min (12:10:03)`` for a future time, ``-`` for ``None`` or the past."""
    if t is None or float(t) <= now:
        return "-"
    clock = _dt.datetime.fromtimestamp(float(t)).strftime("%H:%M:%S")
    return f"in {human_duration(float(t) - now)} ({clock})"


def human_clock(t: float, now: float) -> str:
    """Local clock time ``06:21:03``; with the date (``2026-11-20 06:21:03``) when ``t`` is a day or more away."""
    fmt = "%H:%M:%S" if abs(now - t) < 86400 else "%Y-%m-%d %H:%M:%S"
    return _dt.datetime.fromtimestamp(t).strftime(fmt)


def _try_line(text: str | None) -> str | None:
    """The ``try: ...`` line of a transport error message, if any."""
    for ln in (text or "").splitlines():
        if ln.strip().startswith("try:"):
            return ln.strip()
    return None


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns (two spaces apart); the header underlined with dashes."""
    body = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(cells: Sequence[str]) -> str:
        return (indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells))).rstrip()

    return [line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in body)]



def _served(cat: CategoryStatus, by_name: dict[str, ClusterStatus]) -> str:
    if cat.name is None:
        return "- (no category: no pilot takes these)"
    if cat.name == OTHER_CATEGORIES:
        return "- (categories no cluster serves any more)"
    if not cat.served_by:
        return "- (no cluster)"
    parts = []
    for n in cat.served_by:
        c = by_name.get(n)
        parts.append(f"{n} (backed off)" if c is not None and c.backed_off else n)
    return ", ".join(parts)


def _reach(c: ClusterStatus) -> str:
    if c.needs_login:
        return "NEEDS LOGIN"
    if c.reachable is None:
        return "not yet"
    return "yes" if c.reachable else "NO"


def _route_cell(r: RouteStatus | None, now: float) -> str | None:
    """The ``route`` column: ``ssh up``, ``ssh DOWN 3m`` (down for 3 min), ``ssh unknown``...; ``-``: direct."""
    if r is None:
        return None
    if r.condition is RouteCondition.DOWN:
        return f"{r.via} DOWN" + (f" {short_duration(now - r.since)}" if r.since is not None else "")
    word = {RouteCondition.UP: "up", RouteCondition.STARTING: "starting", RouteCondition.UNKNOWN: "unknown",
            RouteCondition.NOT_KEPT: "NOT KEPT"}[r.condition]
    return f"{r.via} {word}"


def _clusters_lines(report: StatusReport, now: float, width: int) -> list[str]:
    """The CLUSTERS table; its ``route`` column only when a cluster has a route (``launchpad_route: ssh``)."""
    if not report.clusters:
        return ["  (no clusters: no config dir given and no pilot records yet)"]
    routes = [_route_cell(c.route, now) for c in report.clusters]
    shown = any(r is not None for r in routes)
    headers = ["cluster", "scheduler", "reachable", *(["route"] if shown else []), "last contact", "pending",
               "running", f"ended ({human_duration(report.options.recent)})", "backed off", "last error"]
    rows: list[list[Any]] = []
    for c, route in zip(report.clusters, routes, strict=True):
        p = c.pilots
        rows.append([c.name + ("" if c.in_config or not report.config_dir else " (not in config)"),
                     c.scheduler or "-", _reach(c), *([route] if shown else []), human_ago(c.last_contact, now),
                     p.pending, f"{p.running} (+{p.uncertain} unsure)" if p.uncertain else p.running,
                     p.ended_recently,
                     _hold_cell(c, now) or (_backoff_cell(c.backoff_until, now) if c.backed_off else "-")])
    # the last error gets what the other columns leave of the width (its whole first line is under NEEDS YOU)
    used = 2 + sum(max(len(h), *(len("-" if row[i] is None else str(row[i])) for row in rows)) + 2
                   for i, h in enumerate(headers[:-1]))
    for c, row in zip(report.clusters, rows, strict=True):
        row.append(first_line(c.last_error, max(MIN_ERROR_WIDTH, width - used)) or "-")
    return format_table(headers, rows)


def _hold_cell(c: ClusterStatus, now: float) -> str | None:
    """``HELD, probe in 4 min`` / ``HELD, probing``: a cluster whose pilots cannot start (None: not held)."""
    if c.hold is None:
        return None
    until = c.hold.until
    return "HELD, " + (f"probe in {human_duration(until - now)}" if until is not None and until > now else "probing")


def _backoff_cell(until: float | None, now: float) -> str:
    """``in 9 min``: the table's short form (the "needs you" entry adds the clock time)."""
    if until is None or until <= now:
        return "-"
    return f"in {human_duration(until - now)}"


def format_status(report: StatusReport, now: float | None = None, width: int = 120) -> str:
    """The report as text: a header, the clusters and categories tables and the "needs you" list.

    Pure: the same report and ``now`` give the same text.
    """
    now = report.generated_at if now is None else now
    out: list[str] = []
    lp = report.launchpad
    stamp = _dt.datetime.fromtimestamp(report.generated_at).strftime("%Y-%m-%d %H:%M:%S")
    out.append(f"fireworks-pilot status at {stamp}: LaunchPad {lp.get('host') or '?'} database {lp.get('name')}")
    if report.config_dir:
        out.append(f"config: {report.config_dir}")
    else:
        out.append("config: none (clusters and categories come from the manager's records)")
    m = report.manager
    if m and m.get("last_cycle") is not None:
        took = m.get("last_cycle_duration")
        out.append(f"manager: last cycle {human_ago(m['last_cycle'], now)}"
                   + (f" (took {took:.1f} s)" if took is not None else ""))
    else:
        out.append("manager: no cycle recorded in this database")
    for w in report.warnings:
        out.append(f"warning: {w}")

    out += ["", "CLUSTERS", *_clusters_lines(report, now, width), *gate_lines(report, now)]

    out += ["", "CATEGORIES"]
    if report.categories:
        by_name = {c.name: c for c in report.clusters}
        rows = []
        for cat in report.categories:
            other = cat.total - sum(cat.count(s) for s in SHOWN_FW_STATES)
            rows.append([cat.name if cat.name is not None else "(none)", *(cat.count(s) for s in SHOWN_FW_STATES),
                         other, _served(cat, by_name)])
        out += format_table(["category", *SHOWN_FW_STATES, "other", "served by"], rows)
    else:
        out.append("  (no Fireworks)")

    out += _profile_lines(report, now)
    out += share_lines(report.share, format_table)  # FAIR SHARE (pilot.status.share)
    out += usage_lines(report.usage, format_table)  # CORE-HOURS and budgets (pilot.status.usage)
    out += notification_lines(report.notifications, now, human_ago, format_table)  # NOTIFICATIONS
    out += ["", _needs_title(report)]
    out += needs_lines(report, now)
    return "\n".join(out) + "\n"


def _profile_lines(report: StatusReport, now: float) -> list[str]:
    """The manager's last choice between the queue profiles of the clusters that have several: per profile and
    category, how much READY work fits it, how many run at once in one of its pilots, its pilots, what the
    manager submitted and why (and, when nothing fits, what the profile takes). Empty without such clusters."""
    m = report.manager or {}
    rows = [d for d in m.get("decisions") or () if d.get("unit") and d["unit"] != d.get("cluster")]
    if not rows:
        return []
    when = human_ago(m.get("last_cycle"), now) if m.get("last_cycle") is not None else "?"
    table = []
    for d in rows:
        wait = short_duration(d["queue_wait"]) if d.get("queue_wait") is not None else "-"
        choice = f"submit {d['submit']}" if d["submit"] else "none"
        why = d["reason"]
        if why == "none fit" and d.get("shape"):
            why = f"none fit: it takes {d['shape']}"
        table.append([d["unit"], d["category"], d["ready"], d["fits"], d["slots"],
                      f"{d['pending']}/{d['running']}", wait, f"{choice} ({why})"])
    return ["", f"QUEUE PROFILES (the manager's choice {when})",
            *format_table(["profile", "category", "ready", "fit", "per pilot", "pending/running", "queue wait",
                           "choice"], table)]


def _needs_title(report: StatusReport) -> str:
    n = report.problem_count
    return "NEEDS YOU: nothing" if n == 0 else f"NEEDS YOU ({n})"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _pilot(r: StatusReport, args: str) -> str:
    """``pilot ARGS`` for a hint, keeping the report's config dir (``--config-dir D`` when D is not the default)."""
    return pilot_command(r.config_dir, args) if r.config_dir else f"pilot {args}"


def needs_lines(r: StatusReport, now: float) -> list[str]:
    out: list[str] = []
    if r.manager_stale:
        last = r.manager_stale.get("last_cycle")
        when = f"last cycle {human_ago(last, now)}" if last is not None else "no cycle recorded"
        out.append(f"* the manager is not cycling ({when}, more than {human_duration(r.manager_stale['limit'])} "
                   f"without one): see `{_pilot(r, 'manager status')}`, start it with `{_pilot(r, 'manager start')}`")
    if r.fizzled_total:
        shown = f" (the {len(r.fizzled)} latest)" if len(r.fizzled) < r.fizzled_total else ""
        out.append(f"* {_plural(r.fizzled_total, 'FIZZLED Firework')}{shown}: read the error, fix the cause, "
                   "then `lpad rerun_fws -i ID`")
        for f in r.fizzled:
            where = f" ({f.category})" if f.category else ""
            out.append(f"    fw {f.fw_id} {f.name or ''}{where}: {f.error}")
            if f.launch_dir:
                out.append(f"      launch dir:   {f.launch_dir}" + (f" on {f.host}" if f.host else ""))
            if f.pilot_output:
                out.append(f"      pilot output: {f.pilot_output} (pilot {f.pilot} on {f.cluster})")
            elif f.fworker:
                out.append(f"      worker:       {f.fworker}")
    for u in r.unserved:
        name = u["category"]
        if name is None:
            out.append(f"* {_plural(u['ready'], 'READY Firework')} without spec._category: pilots only take "
                       "Fireworks of their categories; give them a _category that a cluster serves")
        else:
            src = "" if r.config_dir else " (no config given: from the records, no pilot has served it)"
            out.append(f"* category {name}: {_plural(u['ready'], 'READY Firework')} but no cluster serves it{src}: "
                       f"add {name} to `categories:` in a cluster file")
    for t in r.too_long:
        ids = ", ".join(str(i) for i in t.fw_ids) + (" ..." if len(t.fw_ids) < t.count else "")
        out.append(f"* category {t.category}: {_plural(t.count, 'READY Firework')} "
                   f"need{'s' if t.count == 1 else ''} more than "
                   f"{human_duration(t.usable or 0)} (spec._pilot.walltime up to {human_duration(t.longest)}), "
                   f"the most a pilot of {', '.join(t.clusters)} gives (wall time minus walltime_margin): "
                   f"no pilot will take them. Raise pilot.walltime, or split the work (fw {ids})")
    for b in r.too_big:
        ids = ", ".join(str(i) for i in b.fw_ids) + (" ..." if len(b.fw_ids) < b.count else "")
        out.append(f"* category {b.category}: {_plural(b.count, 'READY Firework')} "
                   f"ask{'s' if b.count == 1 else ''} for more cores, GPUs or memory (spec._pilot) than any queue "
                   f"profile has, or more time than the profiles that have them: no pilot will take "
                   f"{'it' if b.count == 1 else 'them'}. Lower the asks, or add a profile that has them (fw {ids})")
        for shape in b.profiles:
            out.append(f"    {shape}")
    for c in r.backed_off:
        out.append(f"* cluster {c.name} is backed off {human_until(c.backoff_until, now)} after "
                   f"{_plural(c.failures, 'failure')} in a row: {first_line(c.last_error)}")
        hint = _try_line(c.last_error)
        if hint:
            out.append(f"    {hint}")
        out.append(f"    check it with: {_pilot(r, f'doctor {c.name}')}")
    for c in r.needs_login:
        out.append(f"* cluster {c.name} needs login: its one-time-password login ended"
                   + (f" {human_ago(c.down_since, now)}" if c.down_since else "")
                   + f"; run {_pilot(r, f'connect {c.name}')} (the manager takes it up on its next cycle)")
    out += _hold_lines(r, now)
    out += wait_lines(r)   # READY work waiting on drained clusters or a maintenance
    out += budget_needs(r.usage)   # units a budget stopped (pilot.status.usage)
    out += _route_lines(r, now)
    if r.pending_total:
        shown = f" (the {len(r.pending_long)} oldest)" if len(r.pending_long) < r.pending_total else ""
        out.append(f"* {_plural(r.pending_total, 'pilot')} waiting in the queue for more than "
                   f"{human_duration(r.options.pending_warn)}{shown}:")
        for p in r.pending_long:
            out.append(f"    {p.cluster}: {p.job_name} (job {p.job_id or '?'}) {p.state} for "
                       f"{human_duration(p.waiting)}, reason: {p.reason or 'none given'}")
    if r.lost_runs:
        out.append(f"* {_plural(len(r.lost_runs), 'Firework')} RUNNING under a pilot that has ended (the manager "
                   "reruns these on its next cycle; if they stay, is the manager running?):")
        for x in r.lost_runs:
            out.append(f"    fw {x.fw_id} {x.name or ''}: pilot {x.pilot} on {x.cluster} ended {x.pilot_state} "
                       f"{human_ago(x.pilot_end_time, now)}")
    return out


def _hold_lines(r: StatusReport, now: float) -> list[str]:
    """The "needs you" entries of the clusters held because their pilots cannot start."""
    out: list[str] = []
    for c in r.held:
        h = c.hold
        if h is None:
            continue
        p = h.pilot
        code = f", exit code {p.get('exit_code')}" if p.get("exit_code") is not None else ""
        nxt = (f"next probe pilot {human_until(h.until, now)}" if h.until is not None and h.until > now
               else "a probe pilot is due or in the queue")
        out.append(f"* cluster {c.name} is held: {_plural(h.failures, 'pilot')} in a row ended before running any "
                   f"Firework ({nxt}). Last: {p.get('job_name')} (job {p.get('job_id')}) {p.get('state')}{code}: "
                   f"{p.get('why')}")
        if h.stderr_tail:
            out.append(f"    last lines of {h.stderr_path}:")
            out += [f"      {line}" for line in h.stderr_tail.rstrip("\n").splitlines()]
        if h.see_more:
            out.append(f"    see the rest: {h.see_more}")
        out.append(f"    fix the cluster file (clusters/{c.name}.yaml: python, setup, ...): the hold ends when it "
                   f"changes, or when a pilot starts; check with: {_pilot(r, f'doctor {c.name}')}")
    return out


def _route_lines(r: StatusReport, now: float) -> list[str]:
    """The "needs you" entries of the LaunchPad routes that are down, or that the manager does not keep."""
    out: list[str] = []
    for c in r.routes_down:
        route = c.route
        if route is None:   # routes_down lists clusters with a route only
            continue
        where = f"the login node's 127.0.0.1:{route.port}" if route.port is not None else "the login node"
        if route.condition is RouteCondition.NOT_KEPT:
            out.append(f"* cluster {c.name}: its launchpad_route is ssh, but the manager keeps no LaunchPad route "
                       f"for it (no forward on {where}), so its pilots cannot reach the LaunchPad. The manager "
                       f"reads the cluster files when it starts: restart it (`{_pilot(r, 'manager stop')}`, then "
                       f"`{_pilot(r, 'manager start')}`); if the route is still missing, its log says why")
        else:
            since = (f" since {human_clock(route.since, now)} ({human_ago(route.since, now)})"
                     if route.since is not None else "")
            error = f": {first_line(route.last_error)}" if route.last_error else ""
            out.append(f"* cluster {c.name}: the LaunchPad route (the manager's forward on {where}) is down"
                       f"{since}{error}")
            hint = _try_line(route.last_error)
            if hint:
                out.append(f"    {hint}")
        out.append(f"    check it with: {_pilot(r, f'doctor {c.name}')}")
    return out
