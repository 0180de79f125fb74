"""Reasons a queue profile gets no new pilot this cycle, whatever its demand: gates.

A campaign stops new pilots on a cluster for reasons that are not the cluster failing: a person drains it
(``pilot drain``), a maintenance reservation is coming that a pilot's wall time would run into, or its budget
of core-hours is spent. Each is a *gate*: it learns what it needs once per cycle (from the database in
:meth:`Gate.refresh`, from the cluster in :meth:`Gate.refresh_cluster`, run in the cluster's own thread of the
status phase) and then answers, for each unit the policy plans for, why it is closed (:meth:`Gate.closed`), or
None.

A closed unit is given to the policy as blocked (:attr:`pilot.manager.policy.ClusterView.blocked`): it gets no
pilot, its demand flows to the other clusters, and the reason is the decision's (``pilot status`` shows it).
The gates are pure in what they answer; their I/O is in the two refresh methods, which the manager calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pilot.manager.runtime import ClusterRuntime, CycleReport

__all__ = ["Gate", "Gates", "UnitAsk"]


@dataclass(frozen=True)
class UnitAsk:
    """What a new pilot of one unit (a cluster's queue profile) would be: what a gate judges.

    Attributes
    ----------
    cluster : str
        The cluster's name.
    profile : str
        The queue profile's name.
    walltime : float
        The pilot's wall time in seconds.
    cores : int
        Cores the pilot asks for (nodes times cores per node).
    account : str | None
        The account it is charged to, as the cluster file says (None: the user's default).
    partition : str | None
        Its partition (queue), as the cluster file says.
    """

    cluster: str
    profile: str
    walltime: float
    cores: int
    account: str | None = None
    partition: str | None = None


class Gate(Protocol):
    """One reason units may get no new pilot (see the module docstring)."""

    def refresh(self, now: float) -> None:
        """Learn, from the database, what this cycle's answers need (once per cycle, before the plan)."""

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        """Learn, from the cluster, what this cycle's answers need (in the cluster's thread of the status phase;
        a failure is reported in ``report``, never raised)."""

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        """Why a new pilot of ``ask`` may not be submitted now, in words for ``pilot status``; None: it may."""


class Gates:
    """The manager's gates, asked in order: the first that is closed gives the reason."""

    def __init__(self, gates: list[Gate]) -> None:
        self.gates = gates

    def refresh(self, now: float) -> None:
        for g in self.gates:
            g.refresh(now)

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        for g in self.gates:
            g.refresh_cluster(rt, report)

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        for g in self.gates:
            why = g.closed(ask, now)
            if why:
                return why
        return None
