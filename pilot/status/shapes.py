"""Which served categories may hold READY work that no pilot takes, from one grouped read.

Why: ``pilot status`` lists READY Fireworks too long for every pilot, too big for every queue profile, and pinned
to an FWorker no pilot is named. Their filters (``$nor`` of wall-time and resource clauses, ``$nin`` of names) are
served by no index: each is a scan of a category's READY Fireworks through the general matcher, 0.1-0.4 s per
category on the embedded server at 100,000 Fireworks, over 1 s for one status of a four-category campaign, and
the dashboard asks for a status every few seconds. The manager's demand aggregation
(:func:`pilot.manager.demand.demand_pipeline`) groups the same Fireworks by exactly the fields those filters
test and is answered from the indexes the manager creates (about 10 ms). Judged with :mod:`pilot.fit`'s
predicates, which tests/test_fit.py holds to the database's own answers, the groups say which categories need a
filter at all; only those run it (their ids and counts still come from the filter itself).

Without those indexes (no manager has run against this LaunchPad yet) the aggregation would scan every READY
and RUNNING Firework and, on the embedded server, hold its lock for seconds: then no groups are read, every
category is a suspect, and the filters run as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pilot.fit import fits, fits_resources, number

if TYPE_CHECKING:
    from pilot.manager.demand import Group, PilotOffer

__all__ = ["Groups", "longer_than", "may_hold", "pinned_elsewhere", "ready_groups", "too_big_for"]

#: READY groups per category, or None: not read (every category may hold any kind of waiting work)
Groups = dict[str, list["Group"]] | None


def _indexed(fireworks: Any) -> bool:
    """Does the fireworks collection have the demand indexes (an index led by each field)?"""
    from pilot.manager.demand import DEMAND_INDEXES

    leads = {spec["key"][0][0] for spec in fireworks.index_information().values() if spec.get("key")}
    return all(field in leads for field in DEMAND_INDEXES)


def ready_groups(db: Any, categories: Iterable[str]) -> Groups:
    """The READY groups of ``categories`` (:func:`pilot.manager.demand.demand_pipeline`), or None without the
    demand indexes (see the module docstring)."""
    from pilot.manager.demand import demand_pipeline, groups_of

    wanted = set(categories)
    if not wanted or not _indexed(db["fireworks"]):
        return None
    groups = groups_of(db["fireworks"].aggregate(demand_pipeline(wanted)), wanted)
    return {cat: [g for g in gs if g.state == "READY"] for cat, gs in groups.items()}


def may_hold(groups: Groups, category: str, test: Any) -> bool:
    """Might ``category`` hold READY Fireworks that pass ``test`` (a predicate of a group)? Unknown: yes."""
    return groups is None or any(test(g) for g in groups.get(category, ()))


def _elements(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def longer_than(g: Group, best: float) -> bool:
    """``{WALLTIME: {"$gt": best}}`` and no fit for a pilot of ``best`` seconds: :func:`pilot.status.gather`'s
    too-long filter, for one group."""
    longer = any((n := number(v)) is not None and n > best for v in _elements(g.walltime))
    return longer and not fits(g.walltime, g.min_walltime, best)


def too_big_for(g: Group, serving: Sequence[PilotOffer], best: float) -> bool:
    """Taken by no serving offer, by time and resources together (pins aside), and not longer than every pilot:
    the too-big filter for one group."""
    taken = any(fits(g.walltime, g.min_walltime, o.usable_seconds)
                and fits_resources((g.cores, g.gpus, g.memory), o.cores, o.gpus, o.memory, o.gpu_work_only)
                for o in serving)
    return not taken and not longer_than(g, best)


def pinned_elsewhere(g: Group, live: Sequence[str]) -> bool:
    """``{"spec._fworker": {"$nin": [None, *live]}}`` for one group: pinned, and to no name in ``live`` (an
    array pin matches when none of its elements is null or such a name)."""
    return all(v is not None and v not in live for v in _elements(g.fworker))
