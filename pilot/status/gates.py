"""``pilot status`` on drained clusters and coming maintenance (:mod:`pilot.manager.drain`,
:mod:`pilot.manager.maintenance`): what the cluster records hold, the lines under the CLUSTERS table, and the
"needs you" entry when READY work waits because of them.

The manager keeps both in the cluster's ``pilot_clusters`` record (``drain``; ``maintenance``,
``maintenance_checked``, ``maintenance_error``), and says in its heartbeat's ``decisions`` which queue profiles
got no pilot because of them (the reason starts with ``drained`` or ``maintenance``). Pure: no query here;
:mod:`pilot.status.gather` passes the documents it already read.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.configdir import pilot_command
from pilot.isotime import iso_utc
from pilot.manager.accounting import number

if TYPE_CHECKING:
    from pilot.status.model import StatusReport

__all__ = ["ClusterGates", "GateWait", "cluster_gates", "gate_lines", "gate_waits", "gates_json", "wait_lines"]

#: the decision reasons of the drain and maintenance gates
GATE_PREFIXES = ("drained", "maintenance ")
#: no manager's reading of the reservations for this long: the list may be out of date (said so)
STALE_CHECK = 3600.0


def _iso(t: float | None) -> str | None:
    return None if t is None else iso_utc(t)


def _clock(t: float, now: float) -> str:
    """``14:00`` today, ``12-08 14:00`` another day (local time)."""
    when = _dt.datetime.fromtimestamp(t)
    return when.strftime("%H:%M" if when.date() == _dt.datetime.fromtimestamp(now).date() else "%m-%d %H:%M")


@dataclass
class ClusterGates:
    """A cluster's drain and the maintenance reservations the manager last read from it.

    Attributes
    ----------
    drain : dict | None
        {since, until (None: until ``pilot resume``), by}: epoch seconds; None: not drained.
    maintenance : list[dict]
        The MAINT reservations not over yet: {name, start, end (None: no end), partition}, epoch seconds.
    checked : float | None
        When the manager last read them.
    error : str | None
        Why its last reading failed (the reservations above are then the ones read before).
    """

    drain: dict[str, Any] | None = None
    maintenance: list[dict[str, Any]] = field(default_factory=list)
    checked: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return gates_json(self)


def cluster_gates(doc: dict[str, Any], now: float) -> ClusterGates | None:
    """The gates of a ``pilot_clusters`` record (None: not drained, and no maintenance read for it). A drain whose
    ``until`` has passed is over (the manager lifts it on its next cycle)."""
    raw = doc.get("drain")
    drain = None
    if isinstance(raw, dict):
        until = number(raw.get("until"))
        if until is None or until > now:
            drain = {"since": number(raw.get("since")), "until": until, "by": str(raw.get("by") or "?")}
    maint = []
    for r in doc.get("maintenance") or ():
        if not isinstance(r, dict) or number(r.get("start")) is None:
            continue
        end = number(r.get("end"))
        if end is None or end > now:
            maint.append({"name": str(r.get("name")), "start": number(r.get("start")), "end": end,
                          "partition": r.get("partition") if isinstance(r.get("partition"), str) else None})
    checked = number(doc.get("maintenance_checked"))
    error = doc.get("maintenance_error") if isinstance(doc.get("maintenance_error"), str) else None
    if drain is None and not maint and checked is None and error is None:
        return None
    return ClusterGates(drain=drain, maintenance=sorted(maint, key=lambda r: r["start"]), checked=checked,
                        error=error)


def gates_json(g: ClusterGates | None) -> dict[str, Any]:
    """The ``drain`` and ``maintenance`` keys of a cluster in the ``--json`` document (times as ISO UTC)."""
    if g is None:
        return {"drain": None, "maintenance": None}
    drain = None if g.drain is None else {"since": _iso(g.drain["since"]), "until": _iso(g.drain["until"]),
                                          "by": g.drain["by"]}
    maint = {"reservations": [{**r, "start": _iso(r["start"]), "end": _iso(r["end"])} for r in g.maintenance],
             "checked": _iso(g.checked), "error": g.error}
    return {"drain": drain, "maintenance": maint if g.checked is not None or g.error or g.maintenance else None}


@dataclass(frozen=True)
class GateWait:
    """READY work of a category that no pilot serves because its clusters are drained or under maintenance."""

    category: str
    ready: int
    #: ``UNIT: reason`` of each closed queue profile serving it
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "ready": self.ready, "reasons": list(self.reasons)}


def gate_waits(manager: dict[str, Any] | None) -> list[GateWait]:
    """From the manager's last decisions: the categories with READY work whose every serving unit that could act
    (got pilots, or has some) is closed by a drain or a maintenance. A category some open unit serves is not
    waiting: its work goes there."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for d in (manager or {}).get("decisions") or ():
        by_cat.setdefault(str(d.get("category")), []).append(d)
    out = []
    for cat, ds in sorted(by_cat.items()):
        closed = [d for d in ds if str(d.get("reason") or "").startswith(GATE_PREFIXES)]
        ready = max((int(d.get("ready") or 0) for d in ds), default=0)
        serving = [d for d in ds if d not in closed and (d.get("submit") or d.get("pending") or d.get("running"))]
        if closed and ready and not serving:
            reasons = tuple(sorted({f"{d.get('unit') or d.get('cluster')}: {d.get('reason')}" for d in closed}))
            out.append(GateWait(category=cat, ready=ready, reasons=reasons))
    return out


def gate_lines(report: StatusReport, now: float) -> list[str]:
    """The lines under the CLUSTERS table: each drained cluster, each coming maintenance."""
    out = []
    for c in report.clusters:
        g = c.gates
        if g is None:
            continue
        if g.drain is not None:
            until = g.drain["until"]
            since = f" since {_clock(g.drain['since'], now)}" if g.drain["since"] is not None else ""
            resume = pilot_command(report.config_dir, f"resume {c.name}") if report.config_dir else \
                f"pilot resume {c.name}"
            when = f", until {_clock(until, now)}" if until is not None else ""
            out.append(f"  {c.name}: DRAINED{since} by {g.drain['by']}{when}: no new pilots, running ones leave "
                       f"after their current Firework; {'sooner: ' if until is not None else ''}`{resume}`")
        for r in g.maintenance:
            to = f" to {_clock(r['end'], now)}" if r["end"] is not None else " (no end)"
            part = f" (partition {r['partition']})" if r["partition"] else ""
            state = "under way" if r["start"] <= now else "coming"
            out.append(f"  {c.name}: maintenance {r['name']}{part} {state}, from {_clock(r['start'], now)}{to}: "
                       "no pilot whose wall time runs into it")
        if g.error:
            old = f" (the list is from {_clock(g.checked, now)})" if g.checked is not None else ""
            out.append(f"  {c.name}: could not read its maintenance reservations{old}: {g.error.splitlines()[0]}")
        elif g.checked is not None and now - g.checked > STALE_CHECK and g.maintenance:
            out.append(f"  {c.name}: reservations last read at {_clock(g.checked, now)}")
    return out


def wait_lines(report: StatusReport) -> list[str]:
    """The "needs you" entries: READY work that waits because its clusters are drained or under maintenance."""
    out = []
    for w in report.gate_waits:
        out.append(f"* category {w.category}: {w.ready} READY Firework{'' if w.ready == 1 else 's'} wait: every "
                   "cluster serving it is drained or has a maintenance its pilots would run into")
        out += [f"    {r}" for r in w.reasons]
    return out
