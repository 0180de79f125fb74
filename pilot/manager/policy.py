"""How many pilots to submit: a pure function of demand, our own pilots and the cluster limits.

No I/O here: the manager gathers the inputs (a few indexed counts per category, one scheduler query per
cluster), calls :func:`plan`, and acts on the result. Everything in this module is tested
exhaustively in ``tests/manager/test_policy.py``.

READY work comes in two kinds, and a pilot serves them differently:

* a **bag of tasks**: independent Fireworks. A pilot runs them one after another, so it serves
  ``fireworks_per_pilot`` of them (its usable time over their mean expected duration);
* **chain heads**: Fireworks with ``spec._pilot.continues: true`` (an MD segment, :mod:`tasks.chain`): when one
  completes it adds its successor, which the same pilot takes at once. A pilot that takes a chain head stays
  on that chain, so each READY head is a stream of its own that needs a pilot of its own, and READY does
  not fall while pilots work (counted as a bag, 400 heads of 4-hour segments asked for 37 48-hour pilots
  and the campaign took six times its bound: issue 18, ``benchmarks/replay.py``).

The rule, per category ``c`` and cluster ``k`` serving it::

    need(k, c) = unserved_heads(c) + ceil(unserved_bag(c) / fireworks_per_pilot(k, c))

with each term also bounded by what a fresh pilot of ``k`` could take. ``unserved_heads(c)`` is the READY chain
heads minus one per pending pilot (a pilot takes one when it starts); a running pilot is credited with none
(its own chain goes on in it). ``unserved_bag(c)`` is the other READY Fireworks minus what the pilots still
pending (those not counted for a chain head) or running with time left will take, ``fireworks_per_pilot``
(from the durations of the bag alone) each, on *every* cluster serving ``c``, so demand is never counted
twice. Without chain heads this is the bag rule alone, unchanged.

A pilot whose chain ends (the run is finished, or its successor does not fit the time the pilot has left)
takes any other READY Firework it fits, a chain head or not: no special case is needed. The plan may then
have asked for a pilot too many for a cycle; that pilot finds less work and ends when idle, and the next
cycle counts fewer heads.

Clusters are filled in order of preference (observed queue wait, shortest first), and ``need`` is
clamped by the cluster's limits:

* ``max_queued``: pending pilots on the cluster (all categories, new ones included);
* ``max_running``: all live pilots on the cluster (pending + running + new) never exceed what may run;
* ``min_pilots``: a floor of live pilots per cluster and category, kept even without demand.

A cluster that is backed off (failing) gets nothing; its demand flows to the next cluster.

Categories share a cluster's room by **fair share** (``pilot.yaml`` ``share``, weights; 1 when not listed):
each category walks the clusters serving it in order of preference as above, but the pilots are handed out
one at a time, the next to the category with the fewest cores per unit of weight, counting its live pilots,
those planned this cycle and those that ended within ``share_window`` (:mod:`pilot.manager.share`, which
says why). A category that gets less than it wants because the room went to others says so in its reason
(``max_queued (share md 3 : analysis 1)``). With one category, or room for all, nothing changes: each gets
what it wants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pilot.manager.share import Rooms, allocate, share_note

#: the profile a cluster file's ``pilot:`` makes (as :mod:`pilot.config` names it)
DEFAULT_PROFILE = "default"


def unit_name(cluster: str, profile: str, several: bool) -> str:
    """The policy's name of one queue profile: the cluster's name, ``CLUSTER[PROFILE]`` when it has several."""
    return f"{cluster}[{profile}]" if several else cluster


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
        How many of the READY Fireworks that are not chain heads give an expected duration
        (``spec._pilot.walltime``): what sizes ``fireworks_per_pilot``, which chain heads do not use.
    mean_duration : float | None
        The mean of those durations in seconds (None when none gives one).
    takeable : int | None
        How many of the READY Fireworks a fresh pilot of at least one serving cluster could take (wall time
        that fits, not pinned to another FWorker: :mod:`pilot.manager.demand`); None: all of them. No pilot
        is planned for the rest: no pilot would take it.
    chains : int
        How many of the READY Fireworks are chain heads (``spec._pilot.continues`` exactly ``true``): each needs
        a slot of its own (see the module docstring).
    slots : int
        How many of them one pilot runs at once (a packing profile: its cores and GPUs over what each asks
        for; 1 otherwise): a pilot serves that many chain heads, and ``slots`` times ``fireworks_per_pilot`` of
        the bag.
    """

    ready: int
    running: int = 0
    with_duration: int = 0
    mean_duration: float | None = None
    takeable: int | None = None
    chains: int = 0
    slots: int = 1


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
    cluster : str | None
        The cluster a queue profile belongs to, when ``name`` is that of one of several profiles
        (:func:`unit_name`); its limits are shared by all its profiles. None: ``name`` is the cluster.
    profile : str
        The queue profile's name (``default`` for a cluster file's ``pilot:``).
    blocked : str | None
        Why this unit gets no new pilot this cycle whatever its demand (drained, a maintenance coming, its
        budget spent: :mod:`pilot.manager.gates`), in words; None: it may get pilots. Its demand flows to the
        other clusters, as from a backed-off one.
    cores : int
        Cores of one pilot (nodes times cores per node): what fair share counts (:mod:`pilot.manager.share`).
    """

    name: str
    categories: tuple[str, ...]
    usable_seconds: float
    fireworks_per_pilot: int = 1
    limits: ClusterLimits = field(default_factory=ClusterLimits)
    available: bool = True
    queue_wait: float | None = None
    cluster: str | None = None
    profile: str = DEFAULT_PROFILE
    blocked: str | None = None
    cores: int = 1

    @property
    def cluster_name(self) -> str:
        """The cluster this view is (of)."""
        return self.cluster or self.name


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
    this cluster could take), ``max_queued``, ``max_running``, ``min_pilots`` or ``backed off``, or why the unit
    is blocked (:attr:`ClusterView.blocked`). ``max_queued`` and ``max_running`` are followed by the weights,
    ``max_queued (share md 3 : analysis 1)``, when other categories took some of the cluster's room this cycle
    (fair share, :mod:`pilot.manager.share`).
    ``fits`` is how many of the ``ready`` Fireworks a fresh pilot of the cluster could take, ``chains`` how many
    of them are chain heads (a pilot each); ``fireworks_per_pilot`` is that of the other READY Fireworks.
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
    chains: int = 0
    profile: str = DEFAULT_PROFILE
    slots: int = 1
    unit: str | None = None
    queue_wait: float | None = None

    def to_record(self) -> dict[str, Any]:
        """The decision as the manager's heartbeat keeps it, for ``pilot status`` (the last cycle's choice)."""
        return {"cluster": self.cluster, "unit": self.where, "profile": self.profile, "category": self.category,
                "ready": self.ready,
                "fits": self.ready if self.fits is None else self.fits, "slots": self.slots,
                "pending": self.pending, "running": self.running, "submit": self.submit, "reason": self.reason,
                "queue_wait": self.queue_wait}

    @property
    def where(self) -> str:
        """The cluster, with its queue profile when it has several: ``gpu1[gpu]``."""
        return self.unit or self.cluster

    def log_line(self) -> str:
        """One line per decision: ``stampede/md: ready=40 pending=2 running=3 -> submit 3 (max_queued)``.

        When a pilot of the cluster could not take all the READY work, how many it could take follows the
        READY count (``ready=1 (0 fit)``): the line then says why no pilot is submitted for the rest. When
        some READY Fireworks are chain heads, how many follows too (``ready=40 (40 chains)``): they explain a
        pilot count that the bag rule would not give.
        """
        notes = []
        if self.fits is not None and self.fits < self.ready:
            notes.append(f"{self.fits} fit")
        if self.chains:
            notes.append(f"{self.chains} chains")
        if self.slots > 1:
            notes.append(f"{self.slots} per pilot")
        fit = f" ({', '.join(notes)})" if notes else ""
        return (f"{self.where}/{self.category}: ready={self.ready}{fit} pending={self.pending} "
                f"running={self.running} -> submit {self.submit} ({self.reason})")


def fireworks_per_pilot(cluster: ClusterView, demand: CategoryDemand) -> int:
    """How many of this category's READY Fireworks that are not chain heads (the bag of tasks) one fresh pilot on
    ``cluster`` is expected to run.

    When every one of them gives an expected duration, a pilot runs as many as fit in its usable
    time (at least one: a Firework longer than a pilot still needs a pilot, and the worker will not
    take it if it cannot fit, which ``pilot status`` reports). When none or only some do, the cluster's
    configured ``fireworks_per_pilot`` stands for the ones without, weighted by their share. Chain heads
    are left out: a pilot runs one chain, not one head after another.
    """
    configured = max(1, cluster.fireworks_per_pilot)
    bag = max(0, demand.ready - demand.chains)
    known = min(demand.with_duration, bag)
    mean = demand.mean_duration
    if known <= 0 or mean is None or mean <= 0:
        return configured
    by_duration = max(1, int(cluster.usable_seconds // mean))
    unknown = bag - known
    if unknown == 0:
        return by_duration
    # blend by share: pilots needed = known/by_duration + unknown/configured
    pilots = known / by_duration + unknown / configured
    return max(1, int(round(bag / pilots)))


def _preference(cluster: ClusterView) -> tuple[float, str]:
    wait = cluster.queue_wait if cluster.queue_wait is not None else math.inf
    return (wait, cluster.name)


def _rooms(clusters: list[ClusterView], pilots: dict[tuple[str, str], PilotCounts]) -> tuple[dict[str, int],
                                                                                              dict[str, int]]:
    """Room left on each cluster under ``max_queued`` and ``max_running``, shared by all its categories and
    queue profiles (keyed by the cluster's name)."""
    cluster_of = {k.name: k.cluster_name for k in clusters}
    queued_room: dict[str, int] = {}
    live_room: dict[str, int] = {}
    for k in clusters:
        mine = [p for (unit, _), p in pilots.items() if cluster_of.get(unit, unit) == k.cluster_name]
        queued_room[k.cluster_name] = max(0, k.limits.max_queued - sum(p.pending for p in mine))
        live_room[k.cluster_name] = max(0, k.limits.max_running - sum(p.pending + p.running for p in mine))
    return queued_room, live_room


def plan(demand: dict[str, CategoryDemand], clusters: list[ClusterView],
         pilots: dict[tuple[str, str], PilotCounts],
         fits: dict[tuple[str, str], CategoryDemand] | None = None,
         share: dict[str, float] | None = None, recent: dict[str, float] | None = None) -> list[Decision]:
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
    share : dict[str, float] | None
        Fair-share weight per category (``pilot.yaml`` ``share``); a category not listed (or None) weighs 1.
        Where categories compete for a cluster's room, it goes by weighted deficit (:mod:`pilot.manager.share`).
    recent : dict[str, float] | None
        Cores of each category's pilots that ended within the share window (``pilot.yaml`` ``share_window``):
        with the live ones, what the category had lately. None: none.

    Returns
    -------
    list[Decision]
        One decision per (cluster, category served), in a stable order (category, then preference).
    """
    rooms = Rooms(*_rooms(clusters, pilots))
    cats = [_Category.of(cat, demand.get(cat, CategoryDemand(ready=0)), clusters, pilots, fits, share)
            for cat in sorted({c for k in clusters for c in k.categories})]
    had = _live_cores(clusters, pilots)
    for cat, cores in (recent or {}).items():
        had[cat] = had.get(cat, 0.0) + cores
    allocate(cats, rooms, had, share)
    return [d for c in cats for d in c.decisions]


def _live_cores(clusters: list[ClusterView], pilots: dict[tuple[str, str], PilotCounts]) -> dict[str, float]:
    """Cores of each category's pending and running pilots on every cluster (a unit no view names: 1 a pilot)."""
    cores = {k.name: k.cores for k in clusters}
    out: dict[str, float] = {}
    for (unit, cat), p in pilots.items():
        out[cat] = out.get(cat, 0.0) + (p.pending + p.running) * cores.get(unit, 1)
    return out


@dataclass
class _Category:
    """One category's walk over the units serving it, in order of preference, one unit at a time: a unit's
    ``need``, ``floor`` and ``want`` are worked out when the walk reaches it (after the units before it are
    final, so that their new pilots are credited), and the unit is final when it has what it wants or its
    cluster has no room left. :func:`pilot.manager.share.allocate` decides whose walk gets the next pilot."""

    category: str
    d: CategoryDemand
    serving: list[ClusterView]
    here: dict[str, CategoryDemand]
    fpp: dict[str, int]
    counts: dict[str, PilotCounts]
    unserved: _Unserved
    floors: _Floors
    share: dict[str, float] | None
    decisions: list[Decision] = field(default_factory=list)
    at: int = 0
    unit: _Unit | None = None

    @classmethod
    def of(cls, cat: str, d: CategoryDemand, clusters: list[ClusterView], pilots: dict[tuple[str, str], PilotCounts],
           fits: dict[tuple[str, str], CategoryDemand] | None, share: dict[str, float] | None) -> _Category:
        serving = sorted((k for k in clusters if cat in k.categories), key=_preference)
        here = {k.name: (fits or {}).get((k.name, cat), d) for k in serving}
        fpp = {k.name: fireworks_per_pilot(k, here[k.name]) for k in serving}
        counts = {k.name: pilots.get((k.name, cat), PilotCounts()) for k in serving}
        # what existing pilots (every cluster) will take: demand is never counted twice
        return cls(cat, d, serving, here, fpp, counts, _Unserved.of(d, serving, here, fpp, counts),
                   _Floors.of(serving, here, counts), share)

    def current(self, rooms: Rooms) -> tuple[str, int] | None:
        """The cluster (and a pilot's cores) of the unit the next pilot of this category would go to; units that
        want no more or whose cluster is full are made final on the way. None: this category is done."""
        while self.at < len(self.serving):
            k = self.serving[self.at]
            u = self.unit = self.unit or self._open(k)
            if u is not None and u.n < u.want and rooms.free(k.cluster_name) > 0:
                return k.cluster_name, k.cores
            self._close(k, u, rooms)
        return None

    def left(self, rooms: Rooms) -> int:
        k, u = self.serving[self.at], self.unit
        assert u is not None
        return min(u.want - u.n, rooms.free(k.cluster_name))

    def place(self, rooms: Rooms, n: int) -> None:
        k, u = self.serving[self.at], self.unit
        assert u is not None
        u.n += n
        rooms.take(k.cluster_name, self.category, n)

    def _base(self, k: ClusterView) -> dict[str, Any]:
        p, h = self.counts[k.name], self.here[k.name]
        return dict(cluster=k.cluster_name, category=self.category, ready=self.d.ready, pending=p.pending,
                    running=p.running, fireworks_per_pilot=self.fpp[k.name], fits=h.ready, chains=self.d.chains,
                    profile=k.profile, slots=h.slots, unit=k.name if k.cluster else None, queue_wait=k.queue_wait)

    def _open(self, k: ClusterView) -> _Unit | None:
        """What this category wants of unit ``k`` (None: a backed-off or blocked unit, which gets nothing)."""
        if not k.available or k.blocked:
            return None
        p, h, fpp = self.counts[k.name], self.here[k.name], self.fpp[k.name]
        # of the unserved work, only what a pilot here could take (less what our pilots here will take), in
        # slots: a chain head each, fireworks_per_pilot of the bag each; a pilot holds h.slots of them
        heads, bag = self.unserved.caps(k.name, h, p, fpp)
        need = math.ceil((heads + (math.ceil(bag / fpp) if bag > 0 else 0)) / h.slots)
        floor = self.floors.floor(k)
        return _Unit(need=need, floor=floor, want=max(need, floor), heads=heads, bag=bag)

    def _close(self, k: ClusterView, u: _Unit | None, rooms: Rooms) -> None:
        """Unit ``k`` is final: record its decision, credit its new pilots, move on to the next unit."""
        self.at, self.unit = self.at + 1, None
        if u is None:
            self.decisions.append(Decision(submit=0, reason=k.blocked or "backed off", **self._base(k)))
            return
        h, c = self.here[k.name], k.cluster_name
        # the room there was for this unit: what is left now and what it got
        reason = _reason(self.d, h, u.want, u.n, u.need, u.floor, rooms.queued.get(c, 0) + u.n,
                         rooms.live.get(c, 0) + u.n)
        if u.n < u.want:
            reason += share_note(rooms, c, self.category, self.share)
        self.unserved.take(u.n * h.slots, u.heads, self.fpp[k.name], u.bag)
        self.floors.planned(k, u.n)
        self.decisions.append(Decision(submit=u.n, reason=reason, **self._base(k)))


@dataclass
class _Unit:
    """What one category wants of the unit its walk is at, and the pilots planned there so far."""

    need: int
    floor: int
    want: int
    heads: int
    bag: int
    n: int = 0


@dataclass
class _Floors:
    """``min_pilots`` of one category, per cluster: live pilots of all its queue profiles count toward it, and the
    pilots it still lacks go to one profile only, the first (in order of preference) whose pilots could take some
    READY work, else the first that is available (a warm pool without work: the profiles' order decides)."""

    live: dict[str, int]
    unit: dict[str, str]

    @classmethod
    def of(cls, serving: list[ClusterView], here: dict[str, CategoryDemand],
           counts: dict[str, PilotCounts]) -> _Floors:
        live: dict[str, int] = {}
        unit: dict[str, str] = {}
        for k in serving:
            c = k.cluster_name
            live[c] = live.get(c, 0) + counts[k.name].pending + counts[k.name].running
        for k in serving:
            if k.available and not k.blocked and here[k.name].ready > 0:
                unit.setdefault(k.cluster_name, k.name)
        for k in serving:
            if k.available and not k.blocked:
                unit.setdefault(k.cluster_name, k.name)
        return cls(live, unit)

    def floor(self, k: ClusterView) -> int:
        """The pilots ``k`` submits for its cluster's ``min_pilots`` (0 unless it is the profile chosen for it)."""
        if self.unit.get(k.cluster_name) != k.name:
            return 0
        return max(0, k.limits.min_pilots - self.live.get(k.cluster_name, 0))

    def planned(self, k: ClusterView, n: int) -> None:
        """``n`` pilots are planned for ``k``: they count toward its cluster's floor too."""
        self.live[k.cluster_name] = self.live.get(k.cluster_name, 0) + n


@dataclass
class _Unserved:
    """The READY work of one category that no pilot (existing, or planned so far this cycle) will take yet.

    Attributes
    ----------
    heads : int
        Chain heads: each needs a pilot of its own.
    bag : int
        The other READY Fireworks, ``fireworks_per_pilot`` to a pilot.
    total : int
        Both together, bounded by what at least one serving cluster's pilot could take
        (``CategoryDemand.takeable``): no pilot is planned for work none would take.
    for_heads : dict[str, int]
        Per cluster, how many slots of its pending pilots are counted for a chain head each (the rest serve the
        bag). A pilot without packing is one slot.
    """

    heads: int
    bag: int
    total: int
    for_heads: dict[str, int]

    @classmethod
    def of(cls, d: CategoryDemand, serving: list[ClusterView], here: dict[str, CategoryDemand],
           fpp: dict[str, int], counts: dict[str, PilotCounts]) -> _Unserved:
        """Credit the existing pilots of every serving cluster (in order of preference), slot by slot: a
        pending pilot's slot takes one chain head (that a pilot of its cluster could take) when it starts, the
        pending slots left and the running ones with time left take ``fireworks_per_pilot`` of the bag each; a
        running pilot takes no chain head: it goes on with its own chains."""
        heads, bag = d.chains, max(0, d.ready - d.chains)
        total = d.ready if d.takeable is None else min(d.ready, d.takeable)
        for_heads: dict[str, int] = {}
        for k in serving:
            p, slots = counts[k.name], here[k.name].slots
            used = for_heads[k.name] = max(0, min(p.pending * slots, heads, here[k.name].chains))
            heads -= used
            free = (p.pending + p.running_with_time) * slots - used  # slots left for the bag
            # none beyond the bag, nor beyond what pilots there could take (a GPU profile's pilots take no CPU work)
            credit = min(max(0, bag), free * fpp[k.name], max(0, here[k.name].ready - here[k.name].chains))
            bag -= credit
            total -= used + credit
        return cls(max(0, heads), max(0, bag), max(0, total), for_heads)

    def caps(self, cluster: str, here: CategoryDemand, p: PilotCounts, fpp: int) -> tuple[int, int]:
        """The chain heads and the bag Fireworks still unserved that a fresh pilot of ``cluster`` could take,
        less what our pilots there will take (heads first: the total bound then leaves the bag less)."""
        used = self.for_heads.get(cluster, 0)
        heads = min(self.heads, self.total, max(0, here.chains - used))
        own = ((p.pending + p.running_with_time) * here.slots - used) * fpp
        bag = min(self.bag, self.total - heads, max(0, here.ready - here.chains - own))
        return heads, bag

    def take(self, n: int, heads: int, fpp: int, fits: int) -> None:
        """``n`` new slots are planned (pilots times their slots): the first take a chain head each (up to
        ``heads``), the rest ``fpp`` of the bag each, but no more of it than ``fits`` them (the unserved bag
        Fireworks their pilots could take: the rest is left for clusters or profiles that fit it)."""
        got = min(n, heads)
        bag = min(self.bag, (n - got) * fpp, fits)
        self.heads = max(0, self.heads - got)
        self.bag = max(0, self.bag - bag)
        self.total = max(0, self.total - got - bag)


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
