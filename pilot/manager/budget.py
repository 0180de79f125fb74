"""Budgets: a cluster's ``budget:`` stops new pilots once the core-hours they could use would go over it.

For each budget of a cluster file (:mod:`pilot.config.models_budget`: core-hours, optional account and since), the
gate adds up, once per cycle from the pilot records (:meth:`BudgetGate.refresh`):

``used``
    the core-seconds the scheduler charged this manager's pilots on the cluster (their ``usage``, written by
    :mod:`pilot.manager.accounting`), of the budget's account, started on or after ``since``;
``committed``
    what the live pilots (queued or running) may still use: each one's cores x wall time, less what it has used
    already. A queued pilot will be charged when it starts, and a running one until it ends (at most its wall
    time): counting them is what keeps the budget from being overrun by pilots submitted while the first ones
    still run. It is an upper bound (a pilot that drains early uses less), so submission stops a little early
    rather than late, and the room comes back as pilots end.

A new pilot of a unit (:class:`~pilot.manager.gates.UnitAsk`) is refused when ``used + committed`` plus its own
cores x wall time would exceed the budget; :meth:`BudgetGate.closed` then says so, in words ``pilot status``
shows: ``budget spent: 4,980 of 5,000 core-h on chem123 (used 4,700, committed 280; a pilot needs 16; pilot
config: budget)``.

Accounts: a pilot is charged to the account the scheduler names in its usage; before it has any, to its
profile's ``account``. A budget with ``account`` needs every profile of its file to name one (a config error
otherwise: a pilot charged to the user's default account is known only once it runs). A budget without
``account`` covers all. A pilot that ended without final numbers counts at least its cores x its run time
(:func:`pilot_charge`); a pilot's cores are the most of its profile's and of what the scheduler allocated.

A unit closed by a budget gets no pilot, and its demand flows to the other clusters. When one cycle plans several
pilots of units a budget judges, :meth:`BudgetGate.cut` commits them one after another and cuts the plan where
the next would go over: a cycle never plans past a budget either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pilot.config.models_budget import Budget
from pilot.manager.accounting import number, usage_of
from pilot.manager.gates import UnitAsk
from pilot.manager.profiles import unit_ask
from pilot.manager.records import LIVE_STATES, Records

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, Config
    from pilot.manager.policy import Decision
    from pilot.manager.runtime import ClusterRuntime, CycleReport

#: what the budget sums read of each pilot record
RECORD_FIELDS = {"usage": 1, "profile": 1, "state": 1, "end_time": 1, "start_time": 1, "walltime": 1,
                 "submit_time": 1}

__all__ = ["BudgetGate", "BudgetState", "budget_states", "hms", "hours", "pilot_charge"]


def hours(core_seconds: float) -> str:
    """Core-seconds as core-hours for a person: ``4,980`` (``12.5`` under 100, ``0.083`` under 1)."""
    h = core_seconds / 3600.0
    if h >= 100:
        return f"{h:,.0f}"
    if h >= 1:
        return f"{h:.1f}".rstrip("0").rstrip(".")
    return f"{h:.3g}"


def hms(core_seconds: int) -> str:
    """Core-seconds as ``h:mm:ss`` core-time (hours may exceed 24): exact, unlike hours with decimals."""
    s = int(core_seconds)
    sign, s = ("-", -s) if s < 0 else ("", s)
    return f"{sign}{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class BudgetState:
    """One budget of one cluster as this cycle sees it (all in core-seconds)."""

    cluster: str
    budget: Budget
    used: int = 0
    committed: int = 0
    pilots: int = 0           # pilots with usage counted in ``used``
    live: int = 0             # live pilots counted in ``committed``
    smallest: int | None = None   # core-seconds of the smallest new pilot it judges (None: none of its profiles)

    @property
    def limit(self) -> int:
        return self.budget.core_seconds

    @property
    def spent(self) -> bool:
        """No new pilot fits any more (its smallest pilot does not fit in what is left)."""
        return self.left < (self.smallest if self.smallest is not None else 1)

    @property
    def left(self) -> int:
        """What a new pilot may still take: the budget less used and committed (negative: over)."""
        return self.limit - self.used - self.committed

    def reason(self, need: int) -> str | None:
        """Why a new pilot that needs ``need`` core-seconds may not start (None: it fits)."""
        if self.used + self.committed + need <= self.limit:
            return None
        who = f"on {self.budget.account}" if self.budget.account else "on all accounts"
        since = f" since {self.budget.since.isoformat()}" if self.budget.since else ""
        return (f"budget spent: {hours(self.used + self.committed)} of {hours(self.limit)} core-h {who}{since} "
                f"(used {hours(self.used)}, committed {hours(self.committed)}; a pilot needs {hours(need)}; "
                f"pilot config: budget)")

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "account": self.budget.account,
                "since": self.budget.since.isoformat() if self.budget.since else None,
                "core_hours": self.budget.core_hours, "limit_core_seconds": self.limit,
                "used_core_seconds": self.used, "committed_core_seconds": self.committed,
                "left_core_seconds": self.left, "pilots": self.pilots, "live": self.live,
                "smallest_pilot_core_seconds": self.smallest, "spent": self.spent}


def _configured_account(c: ClusterConfig, profile: str | None) -> str | None:
    try:
        return c.profile(profile).account
    except (KeyError, ValueError):
        return None


def allocated_cpus(recs: list[dict[str, Any]]) -> dict[str | None, int]:
    """Per profile: the most CPUs the scheduler allocated one of its pilots (SLURM bills AllocCPUS: whole cores
    with their hardware threads, whole nodes on an exclusive partition, more than the job script asks for)."""
    out: dict[str | None, int] = {}
    for r in recs:
        cpus = number(usage_of(r).get("cpus"))
        if cpus is not None:
            out[r.get("profile")] = max(out.get(r.get("profile"), 0), int(cpus))
    return out


def record_account(rec: dict[str, Any], c: ClusterConfig) -> str | None:
    """The account a pilot is charged to: the scheduler's, else its profile's (a budget of an account needs the
    profiles to name theirs: :class:`pilot.config.ClusterConfig`)."""
    return usage_of(rec).get("account") or _configured_account(c, rec.get("profile"))


def pilot_charge(r: dict[str, Any], c: ClusterConfig) -> tuple[float | None, int, int, bool]:
    """(start, used, committed, live) of one pilot record, in core-seconds. ``used`` is what the scheduler charged;
    for a pilot that ended without final numbers (accounting down or absent, Torque and SGE, a job the scheduler
    forgot), at least its cores x its run time from its own start and end times: an ended pilot never counts
    less than it ran. ``committed``: for a live pilot, its cores x wall time less what it used. Its cores are the
    most of its profile's and of what the scheduler allocated it."""
    u = usage_of(r)
    cores = max(c.pilot_cores(r.get("profile")), int(number(u.get("cpus")) or 0))
    used = int(number(u.get("core_seconds")) or 0)
    start = number(u.get("start")) or number(r.get("start_time"))
    live = r.get("state") in LIVE_STATES and r.get("end_time") is None
    end = number(r.get("end_time"))
    if not live and u.get("final") is not True and start is not None and end is not None and end > start:
        used = max(used, int(cores * (end - start)))
    committed = max(0, int(cores * (number(r.get("walltime")) or 0.0)) - used) if live else 0
    return start, used, committed, live


def budget_states(name: str, c: ClusterConfig, recs: list[dict[str, Any]], now: float) -> list[BudgetState]:
    """Each budget of cluster ``name`` with what its pilots ``recs`` (all the cluster's records) used and have
    committed at ``now`` (see the module docstring)."""
    states = [BudgetState(cluster=name, budget=b) for b in c.budget]
    if not states:
        return []
    cpus = allocated_cpus(recs)
    for st in states:   # the pilots it judges: of its account's profiles (all profiles for a budget without one)
        asks = [max(r.total_cores, cpus.get(p, 0)) * int(r.walltime_seconds)
                for p, r in c.pilot_profiles.items()
                if st.budget.account is None or (r.account is not None and st.budget.covers(r.account))]
        st.smallest = min(asks) if asks else None
    for r in recs:
        account = record_account(r, c)
        start, spent, committed, live = pilot_charge(r, c)
        for s in states:
            if account is not None and not s.budget.covers(account):
                continue
            since = s.budget.since_epoch
            if spent and (since is None or start is None or start >= since):
                s.used += spent
                s.pilots += 1
            if live and (since is None or start is None or start >= since):
                s.committed += committed
                s.live += 1
    return states


@dataclass
class BudgetGate:
    """The manager's budget gate (see the module docstring): refreshed from the records once per cycle."""

    config: Config
    records: Records
    clock: Any = time.time
    states: dict[str, list[BudgetState]] = field(default_factory=dict)
    cpus: dict[str, dict[str | None, int]] = field(default_factory=dict)

    def refresh(self, now: float) -> None:
        """Add up used and committed core-seconds of every budget (one query per cluster that has one, of the
        fields the sums need)."""
        states: dict[str, list[BudgetState]] = {}
        cpus: dict[str, dict[str | None, int]] = {}
        for name, c in self.config.clusters.items():
            if not c.budget:
                continue
            recs = list(self.records.pilots.find({"cluster": name}, RECORD_FIELDS))
            states[name] = budget_states(name, c, recs, now)
            cpus[name] = allocated_cpus(recs)
        self.states, self.cpus = states, cpus

    def _need(self, ask: UnitAsk) -> int:
        """Core-seconds a new pilot of ``ask`` may be charged: its cores (or the most the scheduler allocated a
        pilot of its profile) times its wall time."""
        cores = max(int(ask.cores), self.cpus.get(ask.cluster, {}).get(ask.profile, 0))
        return max(1, int(cores * ask.walltime))

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> None:
        """Nothing from the cluster: :class:`pilot.manager.accounting.AccountingRefresher` reads the usage."""

    def closed(self, ask: UnitAsk, now: float) -> str | None:
        """Why a new pilot of ``ask`` would go over a budget of its cluster, or None."""
        need = self._need(ask)
        for s in self._judging(ask):
            why = s.reason(need)
            if why:
                return why
        return None

    def _judging(self, ask: UnitAsk) -> list[BudgetState]:
        """The budgets that judge a new pilot of ``ask``: those of its account and those of all accounts. (A
        profile without ``account:`` beside a budget of an account is a config error, so its account is known.)"""
        return [s for s in self.states.get(ask.cluster, [])
                if s.budget.account is None or (ask.account is not None and s.budget.covers(ask.account))]

    def cut(self, decisions: list[Decision]) -> list[Decision]:
        """The decisions with each unit's submissions cut to what its budgets still take. :meth:`closed` judges
        one pilot, and a cycle may plan several of a unit (or of units sharing a budget): each planned pilot is
        committed in turn, its cores x wall time, so a cycle never plans past a budget either."""
        left = {id(s): s.left for states in self.states.values() for s in states}
        out: list[Decision] = []
        for d in decisions:
            c = self.config.clusters.get(d.cluster)
            if d.submit <= 0 or c is None or not self.states.get(d.cluster):
                out.append(d)
                continue
            ask = unit_ask(d.cluster, c, d.profile)
            need = self._need(ask)
            judging = self._judging(ask)
            n = min([d.submit, *(max(0, left[id(s)] // need) for s in judging)])
            for s in judging:
                left[id(s)] -= n * need
            if n < d.submit:
                more = f"room for {n} more pilot(s)" if n else "what is left goes to pilots planned before"
                d = replace(d, submit=n, reason=f"{d.reason}; budget: {more}")
            out.append(d)
        return out
