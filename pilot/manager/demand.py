"""The demand the manager plans with: READY work that a *fresh pilot of each cluster* could take.

A pilot takes a Firework only when the worker's FWorker query matches it (``pilot/worker/supervisor.py``,
``Worker.fworker``, and FireWorks' ``FWorker.query``):

* its category (``spec._category``) is one the pilot pulls;
* its expected duration fits: ``spec._pilot.walltime`` missing or null ("fits anything"), or at most the time
  the pilot has left minus its margin. A fresh pilot has its whole usable time: the cluster's wall time minus
  ``walltime_margin``;
* it is not pinned to another FWorker: FireWorks lets a Firework with ``spec._fworker`` go only to the FWorker
  of that name. Pilots are named ``CLUSTER-JOBID`` (the job templates), and a job id is known only once the
  job exists, so a pinned Firework can be taken at most by the live pilot of that name, never by a pilot
  submitted for it: pinned Fireworks are demand nowhere;
* the cluster file's ``fworker_query`` matches it: the worker ANDs that query into its own
  (``pilot worker --query``), and so does the demand.

Counting all READY Fireworks instead made the manager submit pilots that idled out, cycle after cycle, for
work none of them could take (issue 16: 4-hour segments on a cluster whose pilots last 90 s). The queries
here mirror the worker's exactly, so demand and what pilots take cannot drift apart.

Each cycle runs these queries once (:func:`gather_demand`); clusters whose pilots would run the same query
share one set of counts. The queries are counted, for ``CycleReport.db_queries``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pilot.manager.policy import CategoryDemand

#: READY Fireworks read to estimate the mean expected duration (a sample bounds the cost)
DURATION_SAMPLE = 1000

#: the worker's rule for a Firework that gives no duration: ``{"field": None}`` matches missing and null
_NO_DURATION: dict[str, Any] = {"spec._pilot.walltime": None}
#: FireWorks' own test for "not pinned" (``FWorker.query``, less the clause that names the FWorker)
_NOT_PINNED: list[dict[str, Any]] = [{"spec._fworker": {"$exists": False}}, {"spec._fworker": None}]


@dataclass(frozen=True)
class PilotOffer:
    """What a fresh pilot of one cluster offers, as far as the FWorker query is concerned.

    Attributes
    ----------
    cluster : str
        The cluster's name.
    categories : tuple[str, ...]
        The categories its pilots pull.
    usable_seconds : float
        Wall time minus ``walltime_margin``: the longest ``spec._pilot.walltime`` a fresh pilot takes.
    query : Mapping[str, Any] | None
        The cluster file's ``fworker_query``, which its pilots add to their FWorker query (None: none).
    """

    cluster: str
    categories: tuple[str, ...]
    usable_seconds: float
    query: Mapping[str, Any] | None = None


def takeable_query(category: str, usable_seconds: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The READY Fireworks of ``category`` that a fresh pilot with ``usable_seconds`` would take.

    The same clauses as the worker's pull (wall time, category, the cluster's ``fworker_query`` as
    ``extra``) and FireWorks' ``_fworker`` check, with the pinned ones left out (see the module docstring).
    """
    clauses: list[dict[str, Any]] = [{"$or": [_NO_DURATION, {"spec._pilot.walltime": {"$lte": usable_seconds}}]},
                                     {"$or": _NOT_PINNED}]
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

    def durations(self, query: Mapping[str, Any], limit: int) -> list[float]:
        """The positive ``spec._pilot.walltime`` values of at most ``limit`` matching Fireworks."""
        self.queries += 1
        docs = self.coll.find(dict(query), {"spec._pilot.walltime": 1, "_id": 0}).limit(limit)
        values = [((d.get("spec") or {}).get("_pilot") or {}).get("walltime") for d in docs]
        return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]


def _durations(coll: CountingCollection, query: dict[str, Any], ready: int) -> tuple[int, float | None]:
    """How many of the matching READY Fireworks give a duration, and the mean of a sample of them."""
    if not ready:
        return 0, None
    timed = {**query, "spec._pilot.walltime": {"$gt": 0}}
    known = coll.count(timed)
    if not known:
        return 0, None
    values = coll.durations(timed, DURATION_SAMPLE)
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


def gather_demand(fireworks: Any, offers: Iterable[PilotOffer]) -> Demand:
    """Count the demand of one cycle with indexed counts (``state`` and ``spec._category`` lead every query).

    Parameters
    ----------
    fireworks : pymongo.collection.Collection
        The LaunchPad's ``fireworks`` collection.
    offers : iterable of PilotOffer
        What a fresh pilot of each cluster offers.

    Returns
    -------
    Demand
        With ``queries``, the number of database queries it ran.
    """
    coll = CountingCollection(fireworks)
    offers = list(offers)
    by_cluster: dict[tuple[str, str], CategoryDemand] = {}
    by_category: dict[str, CategoryDemand] = {}
    for cat in sorted({c for o in offers for c in o.categories}):
        ready = coll.count({"state": "READY", "spec._category": cat})
        running = coll.count({"state": "RUNNING", "spec._category": cat})
        seen: dict[str, CategoryDemand] = {}
        queries: list[dict[str, Any]] = []
        for o in offers:
            if cat not in o.categories:
                continue
            q = takeable_query(cat, o.usable_seconds, o.query)
            k = _key(q)
            if k not in seen:
                n = coll.count(q) if ready else 0
                known, mean = _durations(coll, q, n)
                seen[k] = CategoryDemand(ready=n, running=running, with_duration=known, mean_duration=mean)
                queries.append(q)
            by_cluster[(o.cluster, cat)] = seen[k]
        takeable = _union_count(coll, queries, seen, ready)
        known, mean = _durations(coll, {"state": "READY", "spec._category": cat}, ready)
        by_category[cat] = CategoryDemand(ready=ready, running=running, with_duration=known,
                                          mean_duration=mean, takeable=takeable)
    return Demand(by_category=by_category, by_cluster=by_cluster, queries=coll.queries)


def _union_count(coll: CountingCollection, queries: list[dict[str, Any]], seen: dict[str, CategoryDemand],
                 ready: int) -> int:
    """READY Fireworks that at least one of ``queries`` matches (one pilot offer is its own count).

    Wall-time limits nest (a longer pilot takes whatever a shorter one takes), so with the same category the
    union is the widest offer's count; it is still counted with ``$or`` so that the rule stays right
    whatever clauses an offer gains.
    """
    if not ready or not queries:
        return 0
    if len(queries) == 1:
        return seen[_key(queries[0])].ready
    return coll.count({"$or": queries})


__all__ = ["DURATION_SAMPLE", "Demand", "PilotOffer", "gather_demand", "takeable_query"]
