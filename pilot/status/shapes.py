"""READY work that no pilot takes: the three filters of ``pilot status``, and which categories need them at all.

``pilot status`` lists READY Fireworks too long for every pilot (:func:`too_long_query`), too big for every queue
profile (:func:`too_big_query`) and pinned to an FWorker no pilot is named (:func:`pinned_query`). No index
serves those filters (``$nor`` of wall-time and resource clauses, ``$nin`` of names): each is a scan of a
category's READY Fireworks through the general matcher, 0.1-0.4 s per category on the embedded server at 100,000
Fireworks, over 1 s for one status of a four-category campaign, and the dashboard asks for a status every few
seconds.

Why the groups: the manager's demand aggregation (:func:`pilot.manager.demand.demand_pipeline`, here with a
``$match`` on READY only) groups the same Fireworks by exactly the fields those filters test, and is answered
from the indexes the manager creates (about 10 ms at 28,000 READY Fireworks). Judged with :mod:`pilot.fit`'s
predicates, which tests/test_fit.py holds to the database's own answers, the groups say which categories may
hold such work; only those run the filter, whose ids and counts stay the database's. A predicate may say "may
match" too often (the filter then finds nothing), never too seldom: a group key it cannot judge one level deep
(a sub-document, an array of arrays or documents) counts as a match.

Without those indexes (no manager has run against this LaunchPad yet), or when the aggregation fails (a value
the embedded server cannot group), no groups are read: every category is a suspect and the filters run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pilot.fit import (
    CORES,
    GPUS,
    MEMORY,
    MIN_WALLTIME,
    WALLTIME,
    elements,
    fits,
    fits_clause,
    fits_resources,
    not_fits_clause,
    number,
)

if TYPE_CHECKING:
    from pilot.manager.demand import Group, PilotOffer

__all__ = ["BIG_FIELDS", "Groups", "longer_than", "may_hold", "narrowed", "pinned_elsewhere", "pinned_query",
           "ready_groups", "too_big_for", "too_big_query", "too_long_query"]

log = logging.getLogger(__name__)

#: the fields a too-big filter can be narrowed by (:func:`narrowed`), most telling first
BIG_FIELDS = (("cores", CORES), ("gpus", GPUS), ("memory", MEMORY), ("walltime", WALLTIME),
              ("min_walltime", MIN_WALLTIME))

#: READY groups per category, or None: not read (every category may hold any kind of waiting work)
Groups = dict[str, list["Group"]] | None


# ------------------------------------------------------------------------------------------------ the filters
def too_long_query(category: str, best: float) -> dict[str, Any]:
    """READY Fireworks of ``category`` with a walltime longer than the longest pilot's usable ``best`` seconds
    that no such pilot takes by the workers' own rule (not one that sizes itself: a min_walltime that fits)."""
    return {"state": "READY", "spec._category": category, WALLTIME: {"$gt": best}, **not_fits_clause(best)}


def too_big_query(category: str, serving: Sequence[PilotOffer], best: float) -> dict[str, Any]:
    """READY Fireworks of ``category`` that no serving offer takes by time and resources together, less the too
    long ones (:func:`too_long_query` lists those)."""
    too_long = {"$and": [{WALLTIME: {"$gt": best}}, not_fits_clause(best)]}
    takers = [{"$and": [fits_clause(o.usable_seconds), o.resources()]} for o in serving]
    return {"state": "READY", "spec._category": category, "$nor": [*takers, too_long]}


def pinned_query(categories: Sequence[str], live: Sequence[str]) -> dict[str, Any]:
    """READY Fireworks of ``categories`` pinned (``spec._fworker``) to no name in ``live``."""
    return {"state": "READY", "spec._category": {"$in": list(categories)}, "spec._fworker": {"$nin": [None, *live]}}


# ------------------------------------------------------------------------------------------------ the groups
def _indexed(fireworks: Any) -> bool:
    """Does the fireworks collection have the demand indexes (an index led by each field)?"""
    from pilot.manager.demand import DEMAND_INDEXES

    leads = {spec["key"][0][0] for spec in fireworks.index_information().values() if spec.get("key")}
    return all(field in leads for field in DEMAND_INDEXES)


def ready_groups(db: Any, categories: Iterable[str]) -> Groups:
    """The READY groups of ``categories``, or None (see the module docstring)."""
    from pymongo.errors import PyMongoError

    from pilot.manager.demand import demand_pipeline, groups_of

    wanted = set(categories)
    if not wanted:
        return None
    try:
        if not _indexed(db["fireworks"]):
            return None
        match, group = demand_pipeline(wanted)
        ready = {"$match": {**match["$match"], "state": "READY"}}
        rows = list(db["fireworks"].aggregate([ready, group]))
    except PyMongoError as exc:   # the filters still answer; only slower
        log.info("the READY Fireworks could not be grouped (%s): every category's filters run", exc)
        return None
    return groups_of(rows, wanted)


def may_hold(groups: Groups, category: str, test: Callable[[Group], bool]) -> bool:
    """Might ``category`` hold READY Fireworks that pass ``test`` (a predicate of a group)? Unknown: yes."""
    return groups is None or any(_unjudged(g) or test(g) for g in groups.get(category, ()))


def _unjudged(g: Group) -> bool:
    """A group the predicates cannot judge: a field holds a sub-document, or an array of arrays or documents (the
    filters look one level into arrays)."""
    for v in (g.walltime, g.min_walltime, g.fworker, g.cores, g.gpus, g.memory):
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, list | dict) for x in v)):
            return True
    return False


def longer_than(g: Group, best: float) -> bool:
    """:func:`too_long_query` for one group."""
    longer = any((n := number(v)) is not None and n > best for v in elements(g.walltime))
    return longer and not fits(g.walltime, g.min_walltime, best)


def too_big_for(g: Group, serving: Sequence[PilotOffer], best: float) -> bool:
    """:func:`too_big_query` for one group."""
    taken = any(fits(g.walltime, g.min_walltime, o.usable_seconds)
                and fits_resources((g.cores, g.gpus, g.memory), o.cores, o.gpus, o.memory, o.gpu_work_only)
                for o in serving)
    return not taken and not longer_than(g, best)


def pinned_elsewhere(g: Group, live: Sequence[str]) -> bool:
    """:func:`pinned_query` for one group (an array pin matches when none of its elements is null or live)."""
    return all(v is not None and v not in live for v in elements(g.fworker))


def narrowed(query: dict[str, Any], groups: Groups, categories: Sequence[str], test: Callable[[Group], bool],
             fields: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``query`` with ``PATH: {"$in": values}`` added, the values of the groups of ``categories`` that pass
    ``test``, for the first ``(attribute, PATH)`` of ``fields`` where each such group holds one plain value.

    Why: the filter alone makes the database test every READY Firework of the category; with the values the
    index hands over only the few that may match (a day-long segment among 7,000 that fit). It drops none the
    filter matches: each of those is in a group that passes ``test`` (the predicates never say "no" where the
    filter says "yes", and a group they cannot judge leaves ``query`` as it is), and holds its group's value.
    Missing or null (no equality the index answers exactly), arrays, sub-documents and the values of
    :func:`_exactly_found` leave ``query`` as it is.
    """
    if groups is None:
        return query
    flagged = []
    for cat in categories:
        for g in groups.get(cat, ()):
            if _unjudged(g):
                return query
            if test(g):
                flagged.append(g)
    for attr, path in fields:
        values = [getattr(g, attr) for g in flagged]
        if values and all(_exactly_found(v, strings_only=attr == "fworker") for v in values):
            return {**query, "$and": [*query.get("$and", []), {path: {"$in": values}}]}
    return query


def _exactly_found(value: Any, strings_only: bool) -> bool:
    """Does ``$in: [value]`` find every Firework of the group ``value`` stands for, on MongoDB and on the embedded
    server? Strings, booleans and finite numbers of Python's own types do; NaN never equals itself there, and a
    group's one value stands for all the numbers equal to it, of every type (``1`` for ``Decimal128("1")``, which
    the embedded server's ``$in: [1]`` does not find). A pin's group stands for numbers too: strings only there."""
    if type(value) is str:
        return True
    if strings_only:
        return False
    return type(value) in (bool, int) or (type(value) is float and math.isfinite(value))
