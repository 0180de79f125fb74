"""The demand the manager plans with: READY work that a *fresh pilot of each cluster* could take.

A pilot takes a Firework only when the worker's FWorker query matches it (``pilot/worker/supervisor.py``,
``Worker.fworker``, and FireWorks' ``FWorker.query``):

* its category (``spec._category``) is one the pilot pulls;
* its expected duration fits: ``spec._pilot.walltime`` missing or null ("fits anything"), or at most the time
  the pilot has left minus its margin, or ``spec._pilot.min_walltime`` (a Firework that sizes itself to the
  time it gets, such as an MD segment with ``-maxh``) at most that. A fresh pilot has its whole usable time:
  the cluster's wall time minus ``walltime_margin``;
* its resource asks (``spec._pilot.cores``, ``gpus``, ``memory``) fit the pilot's queue profile
  (:func:`pilot.fit.resources_clause`; :mod:`pilot.manager.profiles`);
* it is not pinned to another FWorker: FireWorks lets a Firework with ``spec._fworker`` go only to the FWorker
  of that name. A cluster's pilots answer to its FWorker name (``fworker.name``, by default the cluster's name):
  work pinned to it is that cluster's demand. Each pilot is also named ``CLUSTER-JOBID`` (the job templates),
  and a job id is known only once the job exists, so a Firework pinned to such a name can be taken at most by
  the live pilot of that name, never by a pilot submitted for it: it is demand nowhere;
* the cluster file's FWorker query (``fworker.query`` or ``fworker_query``) matches it: the worker ANDs that
  query into its own (``pilot worker --query``), and so does the demand.

Counting all READY Fireworks instead made the manager submit pilots that idled out, cycle after cycle, for
work none of them could take (issue 16: 4-hour segments on a cluster whose pilots last 90 s). The queries
here are the worker's: both take the wall-time rule from :mod:`pilot.fit`, so demand and what pilots take cannot
drift apart.

Each cycle asks the database **one aggregation** (:func:`demand_pipeline`): the READY and RUNNING Fireworks of
the served categories, counted per category, state, expected duration, pinned FWorker and whether it is a chain
head (``spec._pilot.continues``: it adds its successor when it completes, so it needs a pilot of its own,
:mod:`pilot.manager.policy`). Every cluster's
counts follow from those groups in Python (:meth:`Group.fits`), so the cycle's database work does not grow
with clusters, and the groups are as many as the distinct durations, not the Fireworks (a campaign's segments
share a few). The embedded server answers it from its indexes (:mod:`pilot.launchpad.grouping`; the manager
creates the ones it needs, :func:`ensure_demand_indexes`); MongoDB with them too. Only a cluster with its own
``fworker_query`` (which Python cannot evaluate like the database) is counted with its own queries. The
database commands are counted, for ``CycleReport.db_queries``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pilot.fit import CORES, GPUS, MEMORY, asked, fits, fits_clause, fits_resources, number, resources_clause
from pilot.manager.policy import CategoryDemand

#: the fields the demand groups by that FireWorks does not index (:func:`ensure_demand_indexes`)
DEMAND_INDEXES = ("spec._pilot.walltime", "spec._pilot.min_walltime", "spec._fworker", "spec._pilot.continues",
                  CORES, GPUS, MEMORY)
#: READY Fireworks read to estimate the mean expected duration (a sample bounds the cost)
DURATION_SAMPLE = 1000

#: FireWorks' own test for "not pinned" (``FWorker.query``, less the clause that names the FWorker)
_NOT_PINNED: list[dict[str, Any]] = [{"spec._fworker": {"$exists": False}}, {"spec._fworker": None}]
#: a chain head: ``continues`` exactly true (the groups' test, :attr:`Group.chain`)
_CHAIN: dict[str, Any] = {"spec._pilot.continues": True}


@dataclass(frozen=True)
class PilotOffer:
    """What a fresh pilot of one cluster's queue profile offers, as far as the FWorker query is concerned.

    Attributes
    ----------
    cluster : str
        The policy's name of the offer: the cluster's name, with ``[PROFILE]`` when the cluster has several
        queue profiles (:func:`pilot.manager.policy.unit_name`).
    categories : tuple[str, ...]
        The categories its pilots pull.
    usable_seconds : float
        Wall time minus ``walltime_margin``: the longest ``spec._pilot.walltime`` a fresh pilot takes.
    query : Mapping[str, Any] | None
        The cluster file's FWorker query, which its pilots add to their own (None: none).
    cores, gpus, memory : float, float, float | None
        The pilot's cores and GPUs (per node) and memory in MiB (None: not stated): a Firework asking for more
        is not taken (:func:`pilot.fit.resources_clause`).
    gpu_work_only : bool
        A GPU profile beside others: its pilots take only Fireworks asking for a GPU.
    pack : bool
        Its pilots run several Fireworks at once, as many as their cores and GPUs hold (slots).
    pin : str | None
        The cluster's FWorker name: Fireworks pinned to it (``spec._fworker``) are this offer's demand too.
    profile : str
        The name of the queue profile (``default`` for a cluster file's ``pilot:``).
    """

    cluster: str
    categories: tuple[str, ...]
    usable_seconds: float
    query: Mapping[str, Any] | None = None
    cores: float = math.inf
    gpus: float = math.inf
    memory: float | None = None
    gpu_work_only: bool = False
    pack: bool = False
    pin: str | None = None
    profile: str = "default"

    def resources(self) -> dict[str, Any]:
        """The resource clause of its pilots' pull (:func:`pilot.fit.resources_clause`)."""
        return resources_clause(self.cores, self.gpus, self.memory, self.gpu_work_only)

    def slots(self, cores: Any, gpus: Any) -> int:
        """How many Fireworks asking ``cores``/``gpus`` (the ``spec._pilot`` values) one pilot runs at once: one
        without packing; with it, as many as its cores and GPUs hold (the worker's rule, :func:`pilot.fit.asked`)."""
        if not self.pack:
            return 1
        want_c, want_g = max(1, asked(cores, 1)), asked(gpus, 0)
        n = self.cores // want_c if math.isfinite(self.cores) else 1
        if want_g and math.isfinite(self.gpus):
            n = min(n, self.gpus // want_g)
        return max(1, int(n))


def takeable_query(category: str, usable_seconds: float, extra: Mapping[str, Any] | None = None,
                   offer: PilotOffer | None = None) -> dict[str, Any]:
    """The READY Fireworks of ``category`` that a fresh pilot with ``usable_seconds`` would take.

    The same clauses as the worker's pull (wall time, resources, category, the cluster's FWorker query as
    ``extra``) and FireWorks' ``_fworker`` check: not pinned, or pinned to the cluster's FWorker name (a pin to
    one pilot's own name is demand nowhere, see the module docstring).
    """
    pinned = [*_NOT_PINNED, *([{"spec._fworker": offer.pin}] if offer is not None and offer.pin else [])]
    clauses: list[dict[str, Any]] = [fits_clause(usable_seconds), {"$or": pinned}]
    if offer is not None:
        clauses.append(offer.resources())
    if extra:
        clauses.append(dict(extra))
    return {"state": "READY", "spec._category": category, "$and": clauses}


class CountingCollection:
    """A thin wrapper over a pymongo-like collection that counts the queries sent through it."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self.queries = 0

    def count(self, query: Mapping[str, Any]) -> int:
        self.queries += 1
        return int(self.coll.count_documents(dict(query)))

    def durations(self, query: Mapping[str, Any], limit: int, cap: float = math.inf) -> list[float]:
        """The positive ``spec._pilot.walltime`` values of at most ``limit`` matching Fireworks, cut to ``cap``
        (a Firework taken by its ``min_walltime`` runs the pilot's time, not its walltime)."""
        self.queries += 1
        docs = self.coll.find(dict(query), {"spec._pilot.walltime": 1, "_id": 0}).limit(limit)
        values = [((d.get("spec") or {}).get("_pilot") or {}).get("walltime") for d in docs]
        return [min(secs, cap) for v in values if (secs := number(v)) is not None and secs > 0]


def _durations(coll: CountingCollection, query: dict[str, Any], ready: int,
               cap: float = math.inf) -> tuple[int, float | None]:
    """How many of the matching READY Fireworks give a duration, and the mean of a sample of them (each cut to
    ``cap``, the pilot's usable time)."""
    if not ready:
        return 0, None
    timed = {**query, "spec._pilot.walltime": {"$gt": 0}}
    known = coll.count(timed)
    if not known:
        return 0, None
    values = coll.durations(timed, DURATION_SAMPLE, cap)
    return known, (sum(values) / len(values) if values else None)


def _key(query: dict[str, Any]) -> str:
    return json.dumps(query, sort_keys=True, default=str)


@dataclass
class Demand:
    """One cycle's demand: per category (all READY, for the log and the report) and per cluster and category
    (what a fresh pilot of that cluster could take, which the policy plans with).

    ``by_category[c].takeable`` is how many READY Fireworks of ``c`` at least one serving cluster could take:
    the work the pilots of all clusters together can do, so no pilot is planned for the rest.
    """

    by_category: dict[str, CategoryDemand]
    by_cluster: dict[tuple[str, str], CategoryDemand]
    queries: int = 0


def demand_pipeline(categories: Iterable[str]) -> list[dict[str, Any]]:
    """The cycle's one aggregation: READY and RUNNING Fireworks of ``categories`` per category, state, expected
    and minimum duration, pinned FWorker, chain flag and resource asks (``$ifNull``: missing and null are the
    same here, "none")."""
    key: dict[str, Any] = {"c": "$spec._category", "s": "$state"}
    for name, path in _GROUP_FIELDS.items():
        key[name] = {"$ifNull": [f"${path}", None]}
    return [{"$match": {"state": {"$in": ["READY", "RUNNING"]}, "spec._category": {"$in": sorted(categories)}}},
            {"$group": {"_id": key, "n": {"$sum": 1}}}]


#: the group key's fields beside category and state: name in the key -> the Firework's field
_GROUP_FIELDS = {"w": "spec._pilot.walltime", "m": "spec._pilot.min_walltime", "f": "spec._fworker",
                 "k": "spec._pilot.continues", "cr": CORES, "g": GPUS, "mem": MEMORY}


def ensure_demand_indexes(fireworks: Any) -> str | None:
    """Index the fields the demand groups by that FireWorks does not index (``state`` and ``spec._category``
    it does): the embedded server then answers the aggregation from its indexes.

    Returns why it could not (a database user without the right to create indexes), or None: the demand is
    then still right, only slower to count, so the manager warns and goes on.
    """
    from pymongo.errors import OperationFailure

    try:
        for field in DEMAND_INDEXES:
            fireworks.create_index(field)
    except OperationFailure as exc:
        return (f"could not index {', '.join(DEMAND_INDEXES)} of the LaunchPad's fireworks "
                f"({exc.details.get('errmsg') if exc.details else exc}): counting demand will be slower")
    return None


@dataclass(frozen=True)
class Group:
    """Fireworks of one category and state with the same expected and minimum duration, pin, chain flag and
    resource asks."""

    state: str
    walltime: Any
    fworker: Any
    n: int
    min_walltime: Any = None
    continues: Any = None
    cores: Any = None
    gpus: Any = None
    memory: Any = None

    @property
    def chain(self) -> bool:
        """Chain heads? (``spec._pilot.continues`` exactly true: any other value is no promise of a successor)"""
        return self.continues is True

    @property
    def seconds(self) -> float | None:
        """The expected duration as a number (None: none given, or not a number)."""
        return number(self.walltime)

    def fits(self, usable_seconds: float) -> bool:
        """Would a fresh pilot with ``usable_seconds`` take these, by their time? (the worker's query: no duration,
        or a number at most the time it has, or a minimum duration at most that, :func:`pilot.fit.fits`; not
        pinned)"""
        return self.fworker is None and fits(self.walltime, self.min_walltime, usable_seconds)

    def fits_offer(self, offer: PilotOffer) -> bool:
        """Would a fresh pilot of ``offer`` take these? Their time fits, their resource asks fit its cores, GPUs
        and memory (:func:`pilot.fit.fits_resources`), and they are not pinned or pinned to its FWorker name."""
        if self.fworker is not None and (offer.pin is None or self.fworker != offer.pin):
            return False
        return (fits(self.walltime, self.min_walltime, offer.usable_seconds)
                and fits_resources((self.cores, self.gpus, self.memory), offer.cores, offer.gpus, offer.memory,
                                   offer.gpu_work_only))

    def seconds_in(self, usable_seconds: float) -> float | None:
        """How long one of these runs in a fresh pilot with ``usable_seconds``: its expected duration, cut to the
        pilot's time when it sizes itself to that (it fits by its ``min_walltime`` only)."""
        secs = self.seconds
        return None if secs is None else min(secs, usable_seconds)


def read_groups(coll: CountingCollection, categories: Iterable[str]) -> dict[str, list[Group]]:
    """Run :func:`demand_pipeline` once: its groups per category."""
    coll.queries += 1
    wanted = set(categories)
    return groups_of(coll.coll.aggregate(demand_pipeline(wanted)), wanted)


def groups_of(rows: Iterable[Mapping[str, Any]], wanted: set[str]) -> dict[str, list[Group]]:
    """The rows of :func:`demand_pipeline` as :class:`Group` objects per category of ``wanted`` (``pilot status``
    reads the same aggregation: :mod:`pilot.status.shapes`)."""
    out: dict[str, list[Group]] = {}
    for row in rows:
        key = row["_id"]
        group = Group(key["s"], key.get("w"), key.get("f"), int(row["n"]), key.get("m"), key.get("k"),
                      key.get("cr"), key.get("g"), key.get("mem"))
        cats = key["c"] if isinstance(key["c"], list) else [key["c"]]  # an array category matches each element
        for cat in {c for c in cats if isinstance(c, str) and c in wanted}:
            out.setdefault(cat, []).append(group)
    return out


def _tally(groups: Iterable[Group], running: int, takeable: int | None = None,
           offer: PilotOffer | None = None) -> CategoryDemand:
    """READY count, chain heads, and the duration count and exact mean of the others (the ones that size
    ``fireworks_per_pilot``) of ``groups`` (already filtered to what is counted), with durations cut to the
    offer's usable time when given (what they run in that cluster's fresh pilot), and how many run at once in one
    of its pilots (``slots``: the harmonic mean over the groups, so that pilots = sum of n / slots)."""
    ready = known = chains = 0
    total = 0.0
    pilots_worth = 0.0
    for g in groups:
        ready += g.n
        pilots_worth += g.n / (offer.slots(g.cores, g.gpus) if offer is not None else 1)
        if g.chain:
            chains += g.n
            continue
        secs = g.seconds if offer is None else g.seconds_in(offer.usable_seconds)
        if secs is not None and secs > 0:
            known += g.n
            total += secs * g.n
    slots = max(1, int(ready / pilots_worth)) if pilots_worth else 1
    return CategoryDemand(ready=ready, running=running, with_duration=known,
                          mean_duration=total / known if known else None, takeable=takeable, chains=chains,
                          slots=slots)


def gather_demand(fireworks: Any, offers: Iterable[PilotOffer]) -> Demand:
    """The demand of one cycle from one aggregation (plus counts for clusters with an FWorker query).

    Parameters
    ----------
    fireworks : pymongo.collection.Collection
        The LaunchPad's ``fireworks`` collection.
    offers : iterable of PilotOffer
        What a fresh pilot of each cluster (and queue profile) offers.

    Returns
    -------
    Demand
        With ``queries``, the number of database commands it ran.
    """
    coll = CountingCollection(fireworks)
    offers = list(offers)
    cats = sorted({c for o in offers for c in o.categories})
    groups = read_groups(coll, cats) if cats else {}
    by_cluster: dict[tuple[str, str], CategoryDemand] = {}
    by_category: dict[str, CategoryDemand] = {}
    for cat in cats:
        ready = [g for g in groups.get(cat, ()) if g.state == "READY"]
        running = sum(g.n for g in groups.get(cat, ()) if g.state == "RUNNING")
        serving = [o for o in offers if cat in o.categories]
        for o in serving:
            fitting = [g for g in ready if g.fits_offer(o)]
            if o.query:
                by_cluster[(o.cluster, cat)] = _counted(coll, cat, o, running, fitting)
            else:
                by_cluster[(o.cluster, cat)] = _tally(fitting, running, offer=o)
        takeable = _takeable(coll, cat, serving, ready, by_cluster)
        by_category[cat] = _tally(ready, running, takeable)
    return Demand(by_category=by_category, by_cluster=by_cluster, queries=coll.queries)


def _counted(coll: CountingCollection, cat: str, offer: PilotOffer, running: int,
             fitting: list[Group]) -> CategoryDemand:
    """What a pilot of a cluster with its own FWorker query could take, counted by the database (the chain
    heads with one more count; the durations are those of the others, as in :func:`_tally`). How many run at once
    in one pilot is taken from the groups that fit it apart from the query (``fitting``)."""
    q = takeable_query(cat, offer.usable_seconds, offer.query, offer)
    n = coll.count(q)
    chains = coll.count({**q, **_CHAIN}) if n else 0
    bag = {**q, "spec._pilot.continues": {"$ne": True}}
    known, mean = _durations(coll, bag, n - chains, offer.usable_seconds)
    slots = _tally(fitting, running, offer=offer).slots
    return CategoryDemand(ready=n, running=running, with_duration=known, mean_duration=mean, chains=chains,
                          slots=slots)


def _takeable(coll: CountingCollection, cat: str, serving: list[PilotOffer], ready: list[Group],
              by_cluster: dict[tuple[str, str], CategoryDemand]) -> int:
    """READY Fireworks of ``cat`` that at least one serving cluster's fresh pilot could take."""
    if any(o.query for o in serving):
        queries = [takeable_query(cat, o.usable_seconds, o.query, o) for o in serving]
        unique = {_key(q): q for q in queries}
        if len(unique) == 1:
            return by_cluster[(serving[0].cluster, cat)].ready
        return coll.count({"$or": list(unique.values())}) if ready else 0
    return sum(g.n for g in ready if any(g.fits_offer(o) for o in serving))


__all__ = ["DEMAND_INDEXES", "DURATION_SAMPLE", "Demand", "PilotOffer", "demand_pipeline", "ensure_demand_indexes",
           "gather_demand", "groups_of", "takeable_query"]
