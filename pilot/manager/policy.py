"""How many pilots to submit: a pure function of demand, our own pilots and the cluster limits.

No I/O here: the manager gathers the inputs (a few indexed counts per category, one scheduler query per
cluster), calls :func:`plan`, and acts on the result. Everything in this module is tested
exhaustively in ``tests/manager/test_policy.py``.

The rule, per category ``c`` and cluster ``k`` serving it::

    need(k, c) = ceil(unserved_ready(c) / fireworks_per_pilot(k, c))

where ``unserved_ready(c)`` is the READY count minus what the pilots already pending or running
with time left (on *every* cluster serving ``c``) will take, so demand is never counted twice.
Clusters are filled in order of preference (observed queue wait, shortest first), and ``need`` is
clamped by the cluster's limits:

* ``max_queued``: pending pilots on the cluster (all categories, new ones included);
* ``max_running``: all live pilots on the cluster (pending + running + new) never exceed what may run;
* ``min_pilots``: a floor of live pilots per cluster and category, kept even without demand.

A cluster that is backed off (failing) gets nothing; its demand flows to the next cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CategoryDemand:
    """READY work of one category, from one LaunchPad aggregation.

    Attributes
    ----------
    ready : int
        READY Fireworks of the category.
    running : int
        RUNNING Fireworks of the category (for the log line; the pilots already hold them).
    with_duration : int
        How many of the READY Fireworks give an expected duration (``spec._pilot.walltime``).
    mean_duration : float | None
        The mean of those durations in seconds (None when none gives one).
    takeable : int | None
        How many of the READY Fireworks a fresh pilot of at least one serving cluster could take (wall time
        that fits, not pinned to another FWorker: :mod:`pilot.manager.demand`); None: all of them. No pilot
        is planned for the rest: no pilot would take it.
    """

    ready: int
    running: int = 0
    with_duration: int = 0
    mean_duration: float | None = None
    takeable: int | None = None


@dataclass(frozen=True)
class ClusterLimits:
    """Per-cluster limits from the cluster's config file (``limits:``)."""

    max_queued: int = 10
    max_running: int = 20
    min_pilots: int = 0


@dataclass(frozen=True)
class ClusterView:
    """What the policy knows of one cluster.

    Attributes
    ----------
    name : str
        The cluster's name (its config file's stem).
    categories : tuple[str, ...]
        Categories this cluster serves.
    usable_seconds : float
        Pilot wall time minus the wall-time margin: the time a fresh pilot can spend on work.
    fireworks_per_pilot : int
        Fireworks one pilot is expected to run when the Fireworks give no duration.
    limits : ClusterLimits
        The cluster's limits.
    available : bool
        False while the cluster is backed off after failures: it gets no new pilots.
    queue_wait : float | None
        Observed median queue wait of our pilots (seconds); None when unknown. Shorter is preferred.
    """

    name: str
    categories: tuple[str, ...]
    usable_seconds: float
    fireworks_per_pilot: int = 1
    limits: ClusterLimits = field(default_factory=ClusterLimits)
    available: bool = True
    queue_wait: float | None = None


@dataclass(frozen=True)
class PilotCounts:
    """This manager's own live pilots on one cluster for one category.

    Attributes
    ----------
    pending : int
        Pilots queued (PENDING or HELD), plus submissions whose outcome is not known yet: they may exist.
    running : int
        Pilots running.
    running_with_time : int
        Running pilots whose remaining time still fits more work (remaining > margin).
    """

    pending: int = 0
    running: int = 0
    running_with_time: int = 0


@dataclass(frozen=True)
class Decision:
    """The plan for one cluster and category: how many pilots to submit, and why.

    ``reason`` names what bound the number: ``demand`` (exactly what the work needs), ``covered``
    (existing pilots take all the work), ``no demand``, ``none fit`` (READY work, but none that a pilot of
    this cluster could take), ``max_queued``, ``max_running``, ``min_pilots`` or ``backed off``.
    ``fits`` is how many of the ``ready`` Fireworks a fresh pilot of the cluster could take.
    """

    cluster: str
    category: str
    ready: int
    pending: int
    running: int
    submit: int
    reason: str
    fireworks_per_pilot: int
    fits: int | None = None

    def log_line(self) -> str:
        """One line per decision: ``stampede/md: ready=40 pending=2 running=3 -> submit 3 (max_queued)``.

        When a pilot of the cluster could not take all the READY work, how many it could take follows the
        READY count (``ready=1 (0 fit)``): the line then says why no pilot is submitted for the rest.
        """
        fit = f" ({self.fits} fit)" if self.fits is not None and self.fits < self.ready else ""
        return (f"{self.cluster}/{self.category}: ready={self.ready}{fit} pending={self.pending} "
                f"running={self.running} -> submit {self.submit} ({self.reason})")


def fireworks_per_pilot(cluster: ClusterView, demand: CategoryDemand) -> int:
    """How many of this category's READY Fireworks one fresh pilot on ``cluster`` is expected to run.

    When every READY Firework gives an expected duration, a pilot runs as many as fit in its usable
    time (at least one: a Firework longer than a pilot still needs a pilot, and the worker will not
    take it if it cannot fit, which ``pilot status`` reports). When none or only some do, the cluster's
    configured ``fireworks_per_pilot`` stands for the ones without, weighted by their share.
    """
    configured = max(1, cluster.fireworks_per_pilot)
    known = min(demand.with_duration, demand.ready)
    mean = demand.mean_duration
    if known <= 0 or mean is None or mean <= 0:
        return configured
    by_duration = max(1, int(cluster.usable_seconds // mean))
    unknown = demand.ready - known
    if unknown == 0:
        return by_duration
    # blend by share: pilots needed = known/by_duration + unknown/configured
    pilots = known / by_duration + unknown / configured
    return max(1, int(round(demand.ready / pilots)))


def _preference(cluster: ClusterView) -> tuple[float, str]:
    wait = cluster.queue_wait if cluster.queue_wait is not None else math.inf
    return (wait, cluster.name)


def _rooms(clusters: list[ClusterView], pilots: dict[tuple[str, str], PilotCounts]) -> tuple[dict[str, int],
                                                                                              dict[str, int]]:
    """Room left on each cluster under ``max_queued`` and ``max_running``, shared by all its categories."""
    queued_room: dict[str, int] = {}
    live_room: dict[str, int] = {}
    for k in clusters:
        pend = sum(p.pending for (cn, _), p in pilots.items() if cn == k.name)
        live = sum(p.pending + p.running for (cn, _), p in pilots.items() if cn == k.name)
        queued_room[k.name] = max(0, k.limits.max_queued - pend)
        live_room[k.name] = max(0, k.limits.max_running - live)
    return queued_room, live_room


def plan(demand: dict[str, CategoryDemand], clusters: list[ClusterView],
         pilots: dict[tuple[str, str], PilotCounts],
         fits: dict[tuple[str, str], CategoryDemand] | None = None) -> list[Decision]:
    """Decide how many pilots each cluster submits for each category.

    Parameters
    ----------
    demand : dict[str, CategoryDemand]
        READY work per category.
    clusters : list[ClusterView]
        Every configured cluster.
    pilots : dict[tuple[str, str], PilotCounts]
        Our live pilots per (cluster, category); missing keys mean none.
    fits : dict[tuple[str, str], CategoryDemand] | None
        Per (cluster, category), the READY work a fresh pilot of that cluster could take
        (:func:`pilot.manager.demand.gather_demand`); a missing key (or None) means all of ``demand``. A
        cluster is planned only for what its pilots could take, and ``demand[c].takeable`` bounds what all
        clusters together plan for, so that no pilot is submitted for work none would take.

    Returns
    -------
    list[Decision]
        One decision per (cluster, category served), in a stable order (category, then preference).
    """
    queued_room, live_room = _rooms(clusters, pilots)
    decisions: list[Decision] = []
    for cat in sorted({c for k in clusters for c in k.categories}):
        d = demand.get(cat, CategoryDemand(ready=0))
        serving = sorted((k for k in clusters if cat in k.categories), key=_preference)
        here = {k.name: (fits or {}).get((k.name, cat), d) for k in serving}
        fpp = {k.name: fireworks_per_pilot(k, here[k.name]) for k in serving}
        # what existing pilots (every cluster) will take: demand is never counted twice
        unserved = d.ready if d.takeable is None else min(d.ready, d.takeable)
        for k in serving:
            p = pilots.get((k.name, cat), PilotCounts())
            unserved -= (p.pending + p.running_with_time) * fpp[k.name]
        unserved = max(0, unserved)

        for k in serving:
            p = pilots.get((k.name, cat), PilotCounts())
            base: dict[str, Any] = dict(cluster=k.name, category=cat, ready=d.ready, pending=p.pending,
                                        running=p.running, fireworks_per_pilot=fpp[k.name],
                                        fits=here[k.name].ready)
            if not k.available:
                decisions.append(Decision(submit=0, reason="backed off", **base))
                continue
            # of the unserved work, only what a pilot here could take (less what our pilots here will take)
            cap = min(unserved, max(0, here[k.name].ready - (p.pending + p.running_with_time) * fpp[k.name]))
            need = math.ceil(cap / fpp[k.name]) if cap > 0 else 0
            floor = max(0, k.limits.min_pilots - (p.pending + p.running))
            want = max(need, floor)
            room_q, room_l = queued_room[k.name], live_room[k.name]
            n = min(want, room_q, room_l)
            reason = _reason(d, here[k.name], want, n, need, floor, room_q, room_l)
            queued_room[k.name] -= n
            live_room[k.name] -= n
            unserved = max(0, unserved - n * fpp[k.name])
            decisions.append(Decision(submit=n, reason=reason, **base))
    return decisions


def _reason(d: CategoryDemand, here: CategoryDemand, want: int, n: int, need: int, floor: int, room_q: int,
            room_l: int) -> str:
    """What bound the number of pilots of one decision (see :class:`Decision`)."""
    if want == 0:
        # nothing to add: no READY work, none a pilot here could take, or the pilots already there (here or
        # on preferred clusters, including the ones just planned) will take all of it
        if d.ready == 0:
            return "no demand"
        return "none fit" if here.ready == 0 else "covered"
    if n < want:
        return "max_queued" if room_q <= room_l else "max_running"
    if floor > need:
        return "min_pilots"
    return "demand"
