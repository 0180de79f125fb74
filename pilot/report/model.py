"""The ``pilot report`` result: per cluster, per UTC day, the timeline the plot draws, and the ``--json``
document (:meth:`ThroughputReport.to_dict`, ``schema_version`` 1; its ``trajectory`` section is
:func:`pilot.report.trajectory.trajectory_section`'s).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from pilot.manager.accounting import CoreHours
from pilot.report.times import iso_utc
from pilot.report.trajectory import trajectory_section

__all__ = ["OTHER", "SCHEMA_VERSION", "ClusterThroughput", "DayThroughput", "ThroughputReport", "Timeline"]

#: Version of the ``--json`` document; raised when a field changes meaning or goes away.
SCHEMA_VERSION = 1
#: The "cluster" of launches whose FWorker is no pilot of this manager (rlaunch by hand, another manager).
OTHER = "(not a pilot)"


class _PilotTime:
    """Derived numbers shared by the per-cluster and per-day rows (busy_s, pilot_s, cpu_s in seconds)."""

    busy_s: float
    pilot_s: float
    cpu_s: float

    @property
    def pilot_hours(self) -> float:
        return self.pilot_s / 3600.0

    @property
    def cpu_hours(self) -> float:
        return self.cpu_s / 3600.0

    @property
    def utilisation(self) -> float | None:
        """Busy time / pilot time, or None without pilot time."""
        return self.busy_s / self.pilot_s if self.pilot_s > 0 else None


@dataclass
class ClusterThroughput(_PilotTime):
    """What one cluster (or :data:`OTHER`) delivered in the window.

    Attributes
    ----------
    name : str
    cores_per_pilot : int
        ``pilot.cores * pilot.nodes`` from the config, else 1.
    cores_from_config : bool
        False when ``cores_per_pilot`` is the assumed 1 (no config dir, or the cluster is not in it).
    segments, runs_finished, fireworks, fizzled, steps : int
        COMPLETED launches with MD segment data; of those, the ones that finished their run; all COMPLETED
        launches; FIZZLED launches; MD steps done by the segments.
    ns, ns_unknown : float, int
        Nanoseconds of trajectory the segments added (``steps_done x dt_ps / 1000`` of each segment record), and
        the segments that advanced without a ``dt_ps`` in their record (older records: not in ``ns``).
    busy_s : float
        Seconds pilots spent running Fireworks (ended launches' ``runtime_secs``; running ones up to now).
    pilot_s : float
        Seconds pilots ran (clipped to the window).
    cpu_s : float
        ``pilot_s`` times the cores of each pilot.
    pilots_submitted, pilots_started : int
        Pilots submitted / started in the window.
    pilots_ended : dict[str, int]
        Pilots that ended in the window, by final state.
    pilots_running, pilots_pending : int
        Pilots running / waiting now (from the records, whatever the window).
    queue_waits : list[float]
        ``start - submit`` of the pilots that started in the window (seconds).
    reruns : int
        Fireworks the manager put back to READY in the window after a pilot of this cluster died.
    """

    name: str
    cores_per_pilot: int = 1
    cores_from_config: bool = False
    segments: int = 0
    runs_finished: int = 0
    fireworks: int = 0
    fizzled: int = 0
    steps: int = 0
    ns: float = 0.0
    ns_unknown: int = 0
    busy_s: float = 0.0
    pilot_s: float = 0.0
    cpu_s: float = 0.0
    pilots_submitted: int = 0
    pilots_started: int = 0
    pilots_ended: dict[str, int] = field(default_factory=dict)
    pilots_running: int = 0
    pilots_pending: int = 0
    queue_waits: list[float] = field(default_factory=list)
    reruns: int = 0
    #: pilots whose CPU seconds are what the scheduler charged (their ``usage``) / estimated (run time x cores)
    cpu_charged: int = 0
    cpu_estimated: int = 0

    @property
    def cpu_source(self) -> str | None:
        """Where ``cpu_s`` comes from: ``scheduler``, ``estimate`` (run time x cores), ``mixed``; None: no pilot."""
        if self.cpu_charged and self.cpu_estimated:
            return "mixed"
        return "scheduler" if self.cpu_charged else "estimate" if self.cpu_estimated else None

    @property
    def queue_wait_median(self) -> float | None:
        return statistics.median(self.queue_waits) if self.queue_waits else None

    @property
    def queue_wait_max(self) -> float | None:
        return max(self.queue_waits) if self.queue_waits else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cores_per_pilot": self.cores_per_pilot,
            "cores_from_config": self.cores_from_config,
            "segments": self.segments,
            "runs_finished": self.runs_finished,
            "fireworks": self.fireworks,
            "fizzled": self.fizzled,
            "md_steps": self.steps,
            "busy_hours": _r(self.busy_s / 3600.0),
            "pilot_hours": _r(self.pilot_hours),
            "cpu_hours": _r(self.cpu_hours),
            "cpu_hours_source": self.cpu_source,
            "utilisation": _r(self.utilisation),
            "pilots": {
                "submitted": self.pilots_submitted,
                "started": self.pilots_started,
                "ended": dict(sorted(self.pilots_ended.items())),
                "running": self.pilots_running,
                "pending": self.pilots_pending,
            },
            "queue_wait_s": {
                "n": len(self.queue_waits),
                "median": _r(self.queue_wait_median),
                "max": _r(self.queue_wait_max),
            },
            "reruns": self.reruns,
        }


@dataclass
class DayThroughput(_PilotTime):
    """One cluster on one UTC day (``ns``, ``ns_unknown``: as :class:`ClusterThroughput`'s)."""

    day: str
    cluster: str
    segments: int = 0
    runs_finished: int = 0
    fireworks: int = 0
    fizzled: int = 0
    ns: float = 0.0
    ns_unknown: int = 0
    busy_s: float = 0.0
    pilot_s: float = 0.0
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "cluster": self.cluster,
            "segments": self.segments,
            "runs_finished": self.runs_finished,
            "fireworks": self.fireworks,
            "fizzled": self.fizzled,
            "busy_hours": _r(self.busy_s / 3600.0),
            "pilot_hours": _r(self.pilot_s / 3600.0),
            "cpu_hours": _r(self.cpu_hours),
            "utilisation": _r(self.utilisation),
        }


@dataclass
class Timeline:
    """What the plot shows.

    Attributes
    ----------
    resolution_s : float
        Length of one completion bin (1 s, 1 min or 1 h, chosen from the window's span).
    completions : dict[str, list[tuple[float, int, int]]]
        Per cluster, sorted ``(bin end, segments, fireworks)`` completed in that bin.
    pilots : dict[str, list[tuple[float, float]]]
        Per cluster, the ``(start, end)`` of each pilot's run, clipped to the window.
    trajectory : dict[str, list[tuple[float, float]]]
        Per cluster, sorted ``(bin end, ns)``: the trajectory the segments completed in that bin added.
    """

    resolution_s: float = 1.0
    completions: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    pilots: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    trajectory: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass
class ThroughputReport:
    """The result of :func:`gather_report`."""

    generated_at: float
    since: float | None
    until: float
    first_activity: float | None
    config_dir: str | None
    clusters: list[ClusterThroughput]
    days: list[DayThroughput]
    timeline: Timeline
    notes: list[str] = field(default_factory=list)
    queries: int = 0
    #: core-seconds the schedulers charged, per cluster and account, by category and UTC day (exact)
    core_hours: list[CoreHours] = field(default_factory=list)

    def total(self) -> ClusterThroughput:
        """All clusters summed (``cores_per_pilot`` is meaningless there: CPU seconds are summed)."""
        t = ClusterThroughput(name="total")
        for c in self.clusters:
            for attr in (
                "segments",
                "runs_finished",
                "fireworks",
                "fizzled",
                "steps",
                "ns",
                "ns_unknown",
                "busy_s",
                "pilot_s",
                "cpu_s",
                "pilots_submitted",
                "pilots_started",
                "pilots_running",
                "pilots_pending",
                "reruns",
                "cpu_charged",
                "cpu_estimated",
            ):
                setattr(t, attr, getattr(t, attr) + getattr(c, attr))
            for k, v in c.pilots_ended.items():
                t.pilots_ended[k] = t.pilots_ended.get(k, 0) + v
            t.queue_waits.extend(c.queue_waits)
        return t

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (``schema_version`` 1)."""
        tot = self.total()
        totals = tot.to_dict()
        totals.pop("name")
        totals.pop("cores_per_pilot")
        totals.pop("cores_from_config")
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": iso_utc(self.generated_at),
            "window": {
                "since": iso_utc(self.since) if self.since is not None else None,
                "until": iso_utc(self.until),
                "first_activity": iso_utc(self.first_activity) if self.first_activity else None,
            },
            "days_are": "UTC",
            "config_dir": self.config_dir,
            "clusters": [c.to_dict() for c in self.clusters],
            "totals": totals,
            "days": [d.to_dict() for d in self.days],
            "core_hours": [c.to_dict() for c in self.core_hours],
            "trajectory": trajectory_section(self),
            "notes": list(self.notes),
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)
