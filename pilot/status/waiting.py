"""READY work that no pilot will take, as ``pilot status`` lists it: too long for every pilot, too big for
every queue profile, pinned to an FWorker no pilot is named. The filters and the groups that say where to run
them are :mod:`pilot.status.shapes`; here they are run and worded.

``q`` is :class:`pilot.status.gather._Queries` (the database, counting round trips).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pilot.fit import WALLTIME, number
from pilot.manager.records import live_query
from pilot.status.model import OTHER_CATEGORIES, CategoryStatus, ClusterStatus, StatusOptions, TooBig, TooLong
from pilot.status.shapes import (
    BIG_FIELDS,
    Groups,
    longer_than,
    may_hold,
    narrowed,
    pinned_elsewhere,
    pinned_query,
    ready_groups,
    too_big_for,
    too_big_query,
    too_long_query,
)

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["pinned_warnings", "ready_groups_of", "too_big_items", "too_long_items"]


def ready_groups_of(q: Any, categories: list[CategoryStatus]) -> Groups:
    """The READY Fireworks of the served categories grouped by shape (:mod:`pilot.status.shapes`: which of
    the filters below need to run), or None."""
    served = [str(c.name) for c in categories
              if c.name not in (None, OTHER_CATEGORIES) and c.served_by and c.count("READY")]
    if not served:
        return None
    groups = ready_groups(q.db, served)
    q.count += 1 if groups is None else 2   # the list of indexes, and the aggregation
    return groups


def too_long_items(q: Any, categories: list[CategoryStatus], clusters: dict[str, ClusterStatus],
                   opts: StatusOptions, groups: Groups = None) -> list[TooLong]:
    """READY Fireworks of served categories longer than every serving cluster's pilots (of known wall time)."""
    out = []
    for cat in categories:
        if cat.name in (None, OTHER_CATEGORIES) or not cat.count("READY") or not cat.served_by:
            continue
        usables = [clusters[n].usable_walltime for n in cat.served_by if n in clusters]
        known = [u for u in usables if u is not None]
        if not known or len(known) < len(usables):
            continue  # a serving cluster of unknown wall time might take them
        best = max(known)
        test = partial(longer_than, best=best)
        if not may_hold(groups, str(cat.name), test):
            continue
        # a walltime longer than every pilot's, and no fit for the longest pilot by the workers' own rule (not
        # one that sizes itself to a pilot's time: a min_walltime that fits)
        query = narrowed(too_long_query(str(cat.name), best), groups, [str(cat.name)], test, [("walltime", WALLTIME)])
        total = q.count_documents("fireworks", query)
        if not total:
            continue
        docs = q.find("fireworks", query, {"fw_id": 1}, sort=[("fw_id", 1)], limit=opts.limit)
        top = q.find("fireworks", query, {"spec._pilot.walltime": 1}, sort=[("spec._pilot.walltime", -1)], limit=1)
        asks = (top[0].get("spec") or {}).get("_pilot") if top else None
        longest = number(asks.get("walltime")) if isinstance(asks, dict) else None   # _pilot may be no document
        out.append(TooLong(category=str(cat.name), count=total, longest=longest or best, usable=best,
                           clusters=list(cat.served_by), fw_ids=[int(d["fw_id"]) for d in docs]))
    return out


def too_big_items(q: Any, categories: list[CategoryStatus], config: Config, opts: StatusOptions,
                  groups: Groups = None) -> list[TooBig]:
    """READY Fireworks of served categories that no queue profile serving them takes: the worker's own rule (wall
    time and resources together, :mod:`pilot.fit`, as :func:`pilot.manager.profiles.offers_of` gives each
    profile's), negated, less the ones :func:`too_long_items` lists (longer than any pilot). The manager plans no
    pilot for them, and they wait for ever unless someone says so."""
    from pilot.manager.profiles import offers_of, profile_shape

    offers = [(name, o) for name, c in config.clusters.items() for o in offers_of(name, c)]
    out = []
    for cat in categories:
        serving = [(name, o) for name, o in offers if cat.name in o.categories]
        if cat.name in (None, OTHER_CATEGORIES) or not cat.count("READY") or not serving:
            continue
        best = max(o.usable_seconds for _, o in serving)
        offers_here = [o for _, o in serving]
        test = partial(too_big_for, serving=offers_here, best=best)
        if not may_hold(groups, str(cat.name), test):
            continue
        query = narrowed(too_big_query(str(cat.name), offers_here, best), groups, [str(cat.name)], test, BIG_FIELDS)
        total = q.count_documents("fireworks", query)
        if not total:
            continue
        docs = q.find("fireworks", query, {"fw_id": 1}, sort=[("fw_id", 1)], limit=opts.limit)
        shapes = [f"{o.cluster}: {profile_shape(config.clusters[name], o.profile)}" for name, o in serving]
        out.append(TooBig(category=str(cat.name), count=total, fw_ids=[int(d["fw_id"]) for d in docs],
                          profiles=shapes))
    return out


def pinned_warnings(q: Any, categories: list[CategoryStatus], opts: StatusOptions,
                    config: Config | None = None, groups: Groups = None) -> list[str]:
    """READY Fireworks of served categories pinned (``spec._fworker``) to a name no live pilot and no cluster's
    FWorker (``fworker.name``, by default the cluster's name) has.

    FireWorks gives a pinned Firework only to the FWorker of that name; pilots are named ``CLUSTER-JOBID``, a
    name known only once the job exists, so the manager counts work pinned to such a name as demand nowhere
    (:mod:`pilot.manager.demand`) and it waits for ever unless someone says so: here, as one line each. Work
    pinned to a cluster's FWorker name is that cluster's demand, and not listed.
    """
    served = [str(c.name) for c in categories
              if c.name not in (None, OTHER_CATEGORIES) and c.served_by and c.count("READY")]
    if not served:
        return []
    live = sorted({str(d["fworker"]) for d in q.find("pilots", live_query(),
                                                     {"fworker": 1}) if d.get("fworker")}
                  | {str(c.fworker.name or name) for name, c in (config.clusters.items() if config else ())})
    test = partial(pinned_elsewhere, live=live)
    served = [c for c in served if may_hold(groups, c, test)]
    if not served:
        return []
    query = narrowed(pinned_query(served, live), groups, served, test, [("fworker", "spec._fworker")])
    docs = q.find("fireworks", query, {"fw_id": 1, "spec._category": 1, "spec._fworker": 1}, sort=[("fw_id", 1)],
                  limit=max(opts.limit, 1) * 10)
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_cat.setdefault(str((d.get("spec") or {}).get("_category")), []).append(d)
    out = []
    for cat, items in sorted(by_cat.items()):
        names = sorted({str((d.get("spec") or {}).get("_fworker")) for d in items})
        ids = ", ".join(str(d["fw_id"]) for d in items[:opts.limit]) + (" ..." if len(items) > opts.limit else "")
        more = " or more" if len(docs) >= max(opts.limit, 1) * 10 else ""
        out.append(f"category {cat}: {len(items)}{more} READY "
                   f"Firework(s) pinned to FWorker {', '.join(names)} (spec._fworker), which no live pilot is "
                   "named (pilots are CLUSTER-JOBID): no pilot will take them and none is submitted for them. "
                   f"Remove spec._fworker, or run them with that FWorker (fw {ids})")
    return out
