"""Fair share between categories: who gets the next pilot when categories compete for a cluster's room.

Pure, like :mod:`pilot.manager.policy`, which calls :func:`allocate`. Each category walks the queue profiles that
serve it in order of preference and knows, for the one it is at, how many pilots it still wants there
(:class:`Claimant`); this module hands out the room of the clusters (``max_queued``, ``max_running``, shared by
all categories and profiles of a cluster) one pilot at a time:

    the next pilot goes to the category with the smallest (live cores + cores planned this cycle) / weight
    among the categories that can still place a pilot (want left, room on their profile's cluster);
    ties by category name.

What a category *had* is the cores of its pending and running pilots on every cluster plus those of its pilots
that ended within the share window (``pilot.yaml`` ``share_window``, :func:`recent_cores`). Live pilots alone
would not do: with room for 10 pilots and weights 3:1 the ideal is 7.5 : 2.5, and the live counts settle at
7 : 3 for good (the room a pilot frees goes back to whoever is below its share *now*), 2.3:1 instead of 3:1.
Counting what ended lately remembers the half pilot: the category that was over its share gets the next
room less often, and over the window pilots (and core-hours, for pilots that run alike) follow the weights.
Cores, not pilots, because pilots of different clusters differ in size.

A category with weight > 0 and demand is never starved. While it gets no pilot, every room that opens goes to
categories whose live cores and recent cores grow with it, while its own recent cores only leave the window:
at the latest one window after its last pilot ended it has nothing, the lowest there is, and the next room on
a cluster serving it is its (a tie goes by name, and the category that wins it is above 0 afterwards). In
practice much sooner: a small category's few pilots weigh little against the big ones' many.

When only one category can place pilots it takes what it wants (up to the room) at once, exactly as before fair
share: one category, or room for everybody, plan the same pilots as the alphabetical order did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pilot.config.models_cluster import ClusterConfig

__all__ = ["Claimant", "Rooms", "allocate", "pilot_cores", "recent_cores", "share_note", "weight_of"]


class Claimant(Protocol):
    """One category as the allocation sees it (:class:`pilot.manager.policy` keeps the rest)."""

    category: str

    def current(self, rooms: Rooms) -> tuple[str, int] | None:
        """The cluster and the cores of one pilot of the profile the next pilot would go to; None when the
        category can place no more pilot this cycle (every profile it is served by is finished)."""
        ...

    def left(self, rooms: Rooms) -> int:
        """How many more pilots the current profile takes (want left, bounded by the room)."""
        ...

    def place(self, rooms: Rooms, n: int) -> None:
        """Plan ``n`` more pilots on the current profile (taking the room)."""
        ...


@dataclass
class Rooms:
    """Room left on each cluster under ``max_queued`` and ``max_running``, and which categories took some of it
    this cycle (to say so in a decision that got less than it wanted)."""

    queued: dict[str, int]
    live: dict[str, int]
    takers: dict[str, set[str]] = field(default_factory=dict)

    def free(self, cluster: str) -> int:
        """Pilots ``cluster`` still takes this cycle."""
        return max(0, min(self.queued.get(cluster, 0), self.live.get(cluster, 0)))

    def take(self, cluster: str, category: str, n: int) -> None:
        """``n`` pilots of ``category`` are planned on ``cluster``."""
        self.queued[cluster] = self.queued.get(cluster, 0) - n
        self.live[cluster] = self.live.get(cluster, 0) - n
        if n > 0:
            self.takers.setdefault(cluster, set()).add(category)


def weight_of(share: dict[str, float] | None, category: str) -> float:
    """A category's weight: as configured, 1 when not listed."""
    return float((share or {}).get(category, 1.0))


def share_note(rooms: Rooms, cluster: str, category: str, share: dict[str, float] | None) -> str:
    """`` (share md 3 : analysis 1)`` when other categories took some of ``cluster``'s room this cycle (the
    reason ``category`` got less than it wanted there is the share), else empty. Heaviest weight first."""
    others = rooms.takers.get(cluster, set()) - {category}
    if not others:
        return ""
    cats = sorted(others | {category}, key=lambda c: (-weight_of(share, c), c))
    return " (share " + " : ".join(f"{c} {weight_of(share, c):g}" for c in cats) + ")"


def allocate(claimants: Iterable[Claimant], rooms: Rooms, live_cores: dict[str, float],
             share: dict[str, float] | None) -> dict[str, float]:
    """Hand out the clusters' room to the categories by weighted deficit (see the module docstring).

    Parameters
    ----------
    claimants : Iterable[Claimant]
        One per category.
    rooms : Rooms
        The clusters' room, taken as pilots are planned.
    live_cores : dict[str, float]
        Cores of each category's pending and running pilots (all clusters); missing: none.
    share : dict[str, float] | None
        Weights per category (positive); missing or None: 1.

    Returns
    -------
    dict[str, float]
        The cores planned per category this cycle.
    """
    todo = list(claimants)
    planned = {c.category: 0.0 for c in todo}
    while True:
        at = [(c, where) for c in todo if (where := c.current(rooms)) is not None]
        if not at:
            return planned
        if len(at) == 1:       # nobody to share with: everything it wants, as without fair share
            c, (_, cores) = at[0]
            n = c.left(rooms)
        else:
            c, (_, cores) = min(at, key=lambda cw: ((live_cores.get(cw[0].category, 0.0) + planned[cw[0].category])
                                                    / max(weight_of(share, cw[0].category), 1e-12),
                                                    cw[0].category))
            n = 1
        c.place(rooms, n)
        planned[c.category] += n * cores


def pilot_cores(rec: dict[str, Any], clusters: dict[str, ClusterConfig]) -> int:
    """Cores of one pilot record: its queue profile's nodes times cores (a profile no longer configured: the
    cluster's first; a cluster no longer configured: 1)."""
    cfg = clusters.get(str(rec.get("cluster")))
    return cfg.pilot_cores(rec.get("profile")) if cfg is not None else 1


def recent_cores(ended: Iterable[dict[str, Any]], clusters: dict[str, ClusterConfig]) -> dict[str, float]:
    """Cores of each category's pilots in ``ended`` (the records of the pilots that ran and ended within the share
    window: :meth:`pilot.manager.records.Records.recently_ended`), :func:`pilot_cores` each."""
    out: dict[str, float] = {}
    for rec in ended:
        cat = str(rec.get("category"))
        out[cat] = out.get(cat, 0.0) + pilot_cores(rec, clusters)
    return out
