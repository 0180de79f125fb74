"""Drained clusters: no new pilot, and the running ones leave after their current Firework (``pilot drain``).

Why: before a cluster's maintenance, an allocation running out, or a move of the campaign, a person wants the
cluster emptied *gently*: cancelling the pilots (``pilot cancel --all``) throws away the Fireworks they run, and
waiting for the pilots' wall time keeps them pulling new work for hours. A drain stops both: the manager submits
no pilot to the cluster (its demand flows to the other clusters, as from a backed-off one), and each running
pilot finishes the Firework it runs and exits (exit record ``DRAINED``); a pilot still queued exits as soon as
it starts. ``pilot resume CLUSTER`` undoes it; a drain given ``--until`` is lifted by the manager at that time.

Where it lives: in the LaunchPad database, like everything ``pilot status`` reads, so that ``pilot drain`` works
from any machine with the launchpad file and a restarted manager keeps it:

* the cluster's ``pilot_clusters`` record: ``drain: {since, until (epoch or null), by (user@host)}``;
* each live pilot record of the cluster: ``drain: true``. The worker reads its own record (one ``find_one`` by
  ``_id``) before it pulls each Firework; the mark is per pilot so that the check is one indexed read, and so
  that ``resume`` can take it off the pilots that are still there. The manager marks again every cycle, so a
  pilot whose record was written while the drain was given (a submission already under way) is marked too.

:class:`DrainGate` is the manager's side (a gate of :mod:`pilot.manager.gates`); :func:`drain_cluster`,
:func:`resume_cluster` and :func:`parse_until` are the command's (``pilot/cli/drain.py``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pilot.manager.records import PENDING_STATES

if TYPE_CHECKING:
    from pilot.manager.gates import UnitAsk
    from pilot.manager.records import Records
    from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings

log = logging.getLogger("pilot.manager")

__all__ = ["DrainGate", "DrainResult", "drain_cluster", "drained_reason", "parse_until", "resume_cluster",
           "short_clock"]

#: a duration for ``--until``: ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` (units as in ``sleep`` and SLURM)
_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?"
                          r"\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$", re.IGNORECASE)


def parse_until(text: str, now: float) -> float:
    """The epoch seconds of ``--until TIME``: an ISO 8601 time (``2026-12-08T14:00``, ``14:00`` today; a time
    without a zone is this machine's local time) or a duration from now (``2h``, ``30m``, ``1h30m``, ``1d``).

    Raises
    ------
    ValueError
        Neither form, or a time that is not in the future; the message says which forms are accepted.
    """
    forms = "give an ISO 8601 time (2026-12-08T14:00, or 14:00 for today) or a duration from now (30m, 2h, 1d)"
    raw = text.strip()
    m = _DURATION_RE.match(raw)
    if raw and m and any(m.groups()):
        d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
        if seconds <= 0:
            raise ValueError(f"--until {text!r}: a duration of zero; {forms}")
        return now + seconds
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", raw):
            today = dt.datetime.fromtimestamp(now).date().isoformat()
            when = dt.datetime.fromisoformat(f"{today}T{raw}")
        else:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--until {text!r}: not a time; {forms}") from None
    t = when.timestamp()   # naive: this machine's local time
    if t <= now:
        shown = dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
        raise ValueError(f"--until {text!r}: {shown} (local time) is not in the future; {forms}")
    return t


def short_clock(t: float, now: float) -> str:
    """``14:00`` today (this machine's local time), ``12-08 14:00`` another day: the short form of the reasons."""
    when = dt.datetime.fromtimestamp(t)
    same_day = when.date() == dt.datetime.fromtimestamp(now).date()
    return when.strftime("%H:%M" if same_day else "%m-%d %H:%M")


def drained_reason(cluster: str, drain: dict[str, Any], now: float) -> str:
    """Why a drained cluster gets no pilot, for the decision and ``pilot status``."""
    until = drain.get("until")
    when = f" until {short_clock(float(until), now)}" if isinstance(until, int | float) else ""
    return f"drained{when} (pilot resume {cluster})"


def who() -> str:
    """``user@host`` of whoever gives the command (kept in the drain, shown by ``pilot status``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class DrainResult:
    """What ``pilot drain`` / ``pilot resume`` did: the drain now in force (None: none), and the cluster's live
    pilots it marked or unmarked, queued and running."""

    cluster: str
    drain: dict[str, Any] | None
    pending: int
    running: int
    changed: bool


def _live_split(records: Records, cluster: str) -> tuple[int, int]:
    """The cluster's live pilots: (queued, running). One whose worker wrote a heartbeat has started, whatever
    state the manager last saw (it polls the queue once per cycle)."""
    live = records.live(cluster)
    pending = sum(1 for r in live if r.get("state") in PENDING_STATES and not r.get("heartbeat"))
    return pending, len(live) - pending


def drain_cluster(records: Records, cluster: str, until: float | None, now: float,
                  by: str | None = None) -> DrainResult:
    """Drain ``cluster`` (again: a new ``until`` replaces the old one) and mark its live pilots."""
    old = records.drained().get(cluster)
    drain = {"since": float(old["since"]) if old and old.get("since") else now, "until": until, "by": by or who()}
    records.set_drain(cluster, drain)
    pending, running = _live_split(records, cluster)
    return DrainResult(cluster, drain, pending, running, changed=old != drain)


def resume_cluster(records: Records, cluster: str) -> DrainResult:
    """Lift the drain of ``cluster`` and take the mark off its live pilots (those still queued or running go on
    pulling work)."""
    old = records.drained().get(cluster)
    records.set_drain(cluster, None)
    pending, running = _live_split(records, cluster)
    return DrainResult(cluster, None, pending, running, changed=old is not None)


class DrainGate:
    """The drained clusters, read once per cycle; a drain whose ``until`` has passed is lifted here.

    Parameters
    ----------
    records : Records
        The manager's records (the ``pilot_clusters`` and ``pilots`` collections).
    settings : ManagerSettings
        The manager's dry-run switch: a dry run lifts and marks nothing (it still answers as if it had).
    """

    def __init__(self, records: Records, settings: ManagerSettings) -> None:
        self.records = records
        self.settings = settings
        self.drains: dict[str, dict[str, Any]] = {}

    def refresh(self, now: float) -> None:
        """Read the drains, lift those whose time has come, and put the pilots' marks in step with them."""
        drains = self.records.drained()
        for name, drain in sorted(drains.items()):
            until = drain.get("until")
            if isinstance(until, int | float) and until <= now:
                del drains[name]
                if not self.settings.dry_run:
                    self.records.set_drain(name, None, only_since=drain.get("since"))
                log.info("%s: drain lifted: its time (%s) has come; new pilots may be submitted again", name,
                         short_clock(float(until), now))
                continue
            if name not in self.drains:
                log.info("%s: %s, given by %s: no new pilots; running ones leave after their current Firework",
                         name, drained_reason(name, drain, now), drain.get("by") or "?")
        for name in sorted(set(self.drains) - set(drains)):
            if self.drains[name].get("until") is None or self.drains[name]["until"] > now:
                log.info("%s: resumed: new pilots may be submitted again", name)
        if not self.settings.dry_run:
            self._sync_marks(set(drains))
        self.drains = drains

    def _sync_marks(self, drained: set[str]) -> None:
        """Mark the live pilots of the drained clusters (those whose records came after the drain was given),
        then read the drains again and take the mark off every live pilot of a cluster no longer drained. In
        that order a ``pilot resume`` given meanwhile never leaves a mark behind: if it lifted the drain before
        the second read, the marks come off here; if after, its own unmarking comes after the marks were set."""
        for name in sorted(drained):
            self.records.mark_drain(name, True)
        self.records.unmark_drain_except(set(self.records.drained()))

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        """Nothing to learn from the cluster: a drain lives in the database."""

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        drain = self.drains.get(ask.cluster)
        if drain is None:
            return None
        until = drain.get("until")
        if isinstance(until, int | float) and until <= now:
            return None
        return drained_reason(ask.cluster, drain, now)
