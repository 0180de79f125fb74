"""Budgets and core-hour sums, the pure parts (issue 20): day splits, the fold per cluster/account, used and
committed, and the gate's answer. Expected numbers are worked out by hand in the comments."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pilot.config import ClusterConfig
from pilot.manager.accounting import day_split, fold_core_hours
from pilot.manager.budget import BudgetGate, budget_states, hours
from pilot.manager.gates import UnitAsk

MIDNIGHT = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc).timestamp()


def cluster(budget, profiles=None) -> ClusterConfig:
    c = {"scheduler": "slurm", "host": "login.example.org", "strict_host_key_checking": False,
         "categories": ["md", "post"], "launchpad_file": "/x/lp.yaml", "work_dir": "/tmp/w", "budget": budget}
    if profiles:
        c["profiles"] = profiles
    else:
        c["pilot"] = {"walltime": "1:00:00", "cores": 4, "account": "chem123"}
    return ClusterConfig.model_validate(c, context={"base_dir": Path("/tmp")})


def rec(state="COMPLETED", cs=None, account="chem123", start=None, seconds=0, cpus=4, final=True, profile="default",
        category="md", walltime=3600.0, end=None):
    r = {"cluster": "c", "state": state, "profile": profile, "category": category, "walltime": walltime,
         "start_time": start, "end_time": end, "submit_time": MIDNIGHT - 7200}
    if cs is not None:
        r["usage"] = {"cpus": cpus, "seconds": seconds, "core_seconds": cs, "account": account, "start": start,
                      "end": None, "final": final}
    return r


def test_day_split_is_exact_across_midnight():
    # 4 cores from 23:59:00 for 150 s: 60 s before midnight, 90 after -> 240 + 360 core-s
    got = day_split(MIDNIGHT - 60, 150, 600)
    assert got == {"2026-12-06": 240, "2026-12-07": 360}
    # an odd total that does not divide: the last day takes the rounding, the sum stays exact
    got = day_split(MIDNIGHT - 1, 3, 7)
    assert sum(got.values()) == 7 and got["2026-12-06"] == 2
    assert day_split(None, 0, 0, fallback=MIDNIGHT) == {}
    assert day_split(None, 0, 5, fallback=MIDNIGHT + 10) == {"2026-12-07": 5}


def test_fold_per_cluster_account_category_day():
    recs = [rec(cs=600, start=MIDNIGHT - 60, seconds=150), rec(cs=100, start=MIDNIGHT + 10, seconds=25,
                                                                category="post", final=False),
            rec(cs=40, account=None, start=MIDNIGHT + 5, seconds=10), rec(state="PENDING")]
    a, b = fold_core_hours(recs)
    assert (a.account, b.account) == (None, "chem123")       # "" sorts first
    assert (b.core_seconds, b.pilots, b.unsettled) == (700, 2, 1)
    assert b.by_category == {"md": 600, "post": 100}
    assert b.by_day == {"2026-12-06": {"md": 240}, "2026-12-07": {"md": 360, "post": 100}}
    (only,) = [r for r in fold_core_hours(recs, since=MIDNIGHT) if r.account == "chem123"]
    assert only.core_seconds == 460                           # 360 + 100: the day before is outside


def test_used_and_committed():
    c = cluster({"core_hours": 1, "account": "chem123"})    # 3600 core-s; a pilot asks 4 x 3600 = 14400
    now = MIDNIGHT + 1000
    recs = [rec(cs=1000, start=MIDNIGHT, seconds=250),                                 # ended: used 1000
            rec(state="RUNNING", cs=400, start=now - 100, seconds=100, final=False),  # used 400, committed 14000
            rec(state="PENDING"),                                                     # committed 14400
            rec(cs=999, account="phys77", start=MIDNIGHT, seconds=10)]                # another account
    (s,) = budget_states("c", c, recs, now)
    assert (s.used, s.committed, s.pilots, s.live) == (1400, 28400, 2, 2)
    assert s.smallest == 14400 and s.spent and s.left == 3600 - 1400 - 28400
    why = s.reason(14400)
    assert why is not None and why.startswith("budget spent: 8.3 of 1 core-h on chem123 (used 0.389, committed 7.9")


def test_since_counts_pilots_started_from_that_day():
    c = cluster({"core_hours": 10, "since": "2026-12-07"})
    recs = [rec(cs=500, start=MIDNIGHT - 10, seconds=5), rec(cs=70, start=MIDNIGHT + 10, seconds=5)]
    (s,) = budget_states("c", c, recs, MIDNIGHT + 100)
    assert (s.used, s.pilots) == (70, 1)


def test_gate_closes_only_the_spent_account():
    profiles = {"a": {"walltime": 1, "cores": 8, "account": "chem123", "categories": ["md"]},
                "b": {"walltime": 1, "cores": 1, "account": "phys77", "categories": ["post"]}}
    c = cluster({"core_hours": 500 / 3600, "account": "chem123"}, profiles)

    class Cfg:
        clusters = {"c": c}

    class Recs:   # the pilots collection, as much of it as the gate reads
        def __init__(self, docs):
            self.pilots = self
            self.docs = docs

        def find(self, query, fields=None):
            return [d for d in self.docs if d["cluster"] == query["cluster"]]

    def ask(profile, account, cores):
        return UnitAsk(cluster="c", profile=profile, walltime=60.0, cores=cores, account=account)

    gate = BudgetGate(Cfg(), Recs([]))  # type: ignore[arg-type]
    gate.refresh(MIDNIGHT)
    assert gate.closed(ask("a", "chem123", 8), MIDNIGHT) is None                 # 0 + 480 <= 500
    gate = BudgetGate(Cfg(), Recs([rec(cs=21, start=MIDNIGHT, seconds=3, cpus=8, profile="a")]))  # type: ignore[arg-type]
    gate.refresh(MIDNIGHT)
    why = gate.closed(ask("a", "chem123", 8), MIDNIGHT)                          # 21 + 480 > 500
    assert why is not None and "on chem123" in why and "a pilot needs 0.133" in why
    assert gate.closed(ask("b", "phys77", 1), MIDNIGHT) is None                  # another account
    # SLURM allocated 16 CPUs to an 8-core pilot (two hardware threads a core): a new one needs 16 x 60 s
    gate = BudgetGate(Cfg(), Recs([rec(cs=0, start=MIDNIGHT, seconds=0, cpus=16, profile="a",  # type: ignore[arg-type]
                                       final=False, state="RUNNING", walltime=0.0)]))
    gate.refresh(MIDNIGHT)
    why = gate.closed(ask("a", "chem123", 8), MIDNIGHT)                          # 0 + 960 > 500
    assert why is not None and "a pilot needs 0.267" in why


def test_an_ended_pilot_without_final_numbers_counts_its_run_time():
    """Accounting down, or a scheduler without it: an ended pilot counts at least cores x (end - start), from its
    own times; the scheduler's number when it is final (even a smaller one: it is what the site bills)."""
    c = cluster({"core_hours": 1.0})
    ended = rec(state="COMPLETED", start=MIDNIGHT, end=MIDNIGHT + 100)          # no usage at all: 4 x 100
    ended["start_time"] = MIDNIGHT
    (st,) = budget_states("c", c, [ended], MIDNIGHT + 200)
    assert (st.used, st.committed, st.pilots) == (400, 0, 1)
    partial = rec(state="COMPLETED", cs=40, start=MIDNIGHT, seconds=10, final=False, end=MIDNIGHT + 100)
    (st,) = budget_states("c", c, [partial], MIDNIGHT + 200)                    # read at 10 s, ran 100 s
    assert st.used == 400
    final = rec(state="COMPLETED", cs=396, start=MIDNIGHT, seconds=99, final=True, end=MIDNIGHT + 100)
    (st,) = budget_states("c", c, [final], MIDNIGHT + 200)
    assert st.used == 396
    odd = rec(state="COMPLETED", end=MIDNIGHT + 100)
    odd["usage"] = ["not", "a", "mapping"]
    (st,) = budget_states("c", c, [odd], MIDNIGHT + 200)                        # no start: nothing to count
    assert st.used == 0


def test_hours_text():
    assert (hours(18_000_000), hours(45_000), hours(3600), hours(300)) == ("5,000", "12.5", "1", "0.0833")


def test_a_cycle_that_plans_several_pilots_is_cut_at_the_budget():
    """closed() judges one pilot; a plan of six 2-core 1-minute pilots (120 core-s each) under a budget of
    500 core-s with 0 used keeps 4 (480 <= 500), and a second unit of the same account gets none of it."""
    from pilot.manager.policy import Decision

    profiles = {"a": {"walltime": 1, "cores": 2, "account": "chem123", "categories": ["md"]},
                "b": {"walltime": 1, "cores": 2, "account": "chem123", "categories": ["post"]},
                "c": {"walltime": 1, "cores": 2, "account": "phys77", "categories": ["post"]}}
    c = cluster({"core_hours": 500 / 3600, "account": "chem123"}, profiles)

    class Cfg:
        clusters = {"c": c}

    class Recs:   # an empty pilots collection, as much of it as the gate reads
        pilots = None

        def __init__(self):
            self.pilots = self

        def find(self, query, fields=None):
            return []

    gate = BudgetGate(Cfg(), Recs())  # type: ignore[arg-type]
    gate.refresh(MIDNIGHT)

    def plan(profile, category, n):
        return Decision(cluster="c", category=category, ready=10, pending=0, running=0, submit=n, reason="demand",
                        fireworks_per_pilot=1, profile=profile)

    out = gate.cut([plan("a", "md", 6), plan("b", "post", 2), plan("c", "post", 3)])
    assert [d.submit for d in out] == [4, 0, 3]
    assert out[0].reason == "demand; budget: room for 4 more pilot(s)"
    assert out[1].reason == "demand; budget: what is left goes to pilots planned before"
    assert out[2].reason == "demand"                     # another account: its budget is not this one
