"""Fair share between categories over a long run: the real :func:`pilot.manager.policy.plan`, cycle after cycle,
against a simulated scheduler that starts pilots slowly.

The rule (docs/campaign.md, "Fair share between categories"): where categories compete for a cluster's room, the
next pilot goes to the category with the fewest live cores per unit of weight. What follows from it, and what is
checked here, comes from the weights alone: with weights 3:1 and both categories always in demand, 3/4 of the
pilots and of the core-hours go to the first, 1/4 to the second (within 10% over a long run); equal weights give
equal shares; a category with demand gets a pilot as soon as room opens on a cluster serving it (never
starved); a category without demand leaves all the room to the others (work-conserving).

The scheduler: each cluster starts at most ``starts`` pending pilots per cycle (oldest first), a pilot then runs
``runs`` cycles and ends. The manager's limits (``max_queued``, ``max_running``) are smaller than the demand, so
the room is contested every cycle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pilot.manager.policy import CategoryDemand, ClusterLimits, ClusterView, PilotCounts, plan

BIG = CategoryDemand(ready=10_000)   # always more READY work than the clusters' room


@dataclass
class Job:
    category: str
    cluster: str
    cores: int
    submitted: int
    started: int | None = None
    ran: int = 0
    ended: int | None = None


@dataclass
class Scheduler:
    """A slow scheduler: ``starts`` pilots start per cluster and cycle, each runs ``runs`` cycles."""

    starts: int = 1
    runs: int = 12
    jobs: list[Job] = field(default_factory=list)
    #: after each cycle's submissions: live pilots per (cluster, category)
    history: list[Counter[tuple[str, str]]] = field(default_factory=list)

    def live(self) -> list[Job]:
        return [j for j in self.jobs if j.ran < self.runs]

    def counts(self) -> dict[tuple[str, str], PilotCounts]:
        out: dict[tuple[str, str], PilotCounts] = {}
        for j in self.live():
            p = out.get((j.cluster, j.category), PilotCounts())
            running = j.started is not None
            out[(j.cluster, j.category)] = PilotCounts(pending=p.pending + (not running),
                                                       running=p.running + running,
                                                       running_with_time=p.running_with_time + running)
        return out

    def recent(self, since: int) -> dict[str, float]:
        """Cores of the pilots that ended at ``since`` or later, per category (what the manager's records give)."""
        out: Counter[str] = Counter()
        for j in self.jobs:
            if j.ended is not None and j.ended >= since:
                out[j.category] += j.cores
        return dict(out)

    def tick(self, now: int) -> None:
        """One cycle: running pilots run (and end after ``runs``), then the oldest pending ones start."""
        for j in self.live():
            if j.started is not None:
                j.ran += 1
                if j.ran == self.runs:
                    j.ended = now
        for cluster in {j.cluster for j in self.jobs}:
            pending = [j for j in self.live() if j.cluster == cluster and j.started is None]
            for j in sorted(pending, key=lambda j: j.submitted)[:self.starts]:
                j.started = now


def view(name: str, cats: tuple[str, ...], cores: int, q: int = 3, r: int = 6) -> ClusterView:
    return ClusterView(name=name, categories=cats, usable_seconds=3600.0, fireworks_per_pilot=1,
                       limits=ClusterLimits(max_queued=q, max_running=r), cores=cores)


def run(cycles: int, clusters: list[ClusterView], demand_at, share, sched: Scheduler | None = None,
        window: int = 100) -> Scheduler:
    """``cycles`` manager cycles; ``demand_at(cycle)`` is the READY work per category then; pilots that ended
    within the last ``window`` cycles count for fair share (``share_window``)."""
    sched = sched or Scheduler()
    cores = {k.name: k.cores for k in clusters}
    for now in range(cycles):
        for d in plan(demand_at(now), clusters, sched.counts(), share=share, recent=sched.recent(now - window)):
            sched.jobs += [Job(d.category, d.cluster, cores[d.cluster], now) for _ in range(d.submit)]
        sched.history.append(Counter((j.cluster, j.category) for j in sched.live()))
        sched.tick(now)
    return sched


def pilots_and_core_cycles(sched: Scheduler) -> tuple[Counter[str], Counter[str]]:
    pilots: Counter[str] = Counter(j.category for j in sched.jobs)
    core_cycles: Counter[str] = Counter()
    for j in sched.jobs:
        core_cycles[j.category] += j.cores * j.ran
    return pilots, core_cycles


def within(ratio: float, expected: float, tolerance: float = 0.10) -> bool:
    return abs(ratio - expected) <= tolerance * expected


TWO = [view("a", ("analysis", "md"), cores=16), view("b", ("analysis", "md"), cores=16, q=2, r=4)]


def test_weights_3_to_1_give_3_to_1_pilots_and_core_hours():
    sched = run(600, TWO, lambda now: {"md": BIG, "analysis": BIG}, {"md": 3, "analysis": 1})
    pilots, core_cycles = pilots_and_core_cycles(sched)
    assert pilots["md"] + pilots["analysis"] > 300          # a long run: hundreds of pilots
    assert within(pilots["md"] / pilots["analysis"], 3.0), pilots
    assert within(core_cycles["md"] / core_cycles["analysis"], 3.0), core_cycles
    # every cycle after the first few, the room is full (max_running 6 + 4) and split 7 or 8 : 3 or 2
    for live in sched.history[20:]:
        md = live[("a", "md")] + live[("b", "md")]
        assert sum(live.values()) == 10 and md in (7, 8), live


def test_core_hours_follow_the_weights_when_pilot_sizes_differ():
    # cluster "big" runs 64-core pilots, "small" 8-core ones; both serve both categories
    clusters = [view("big", ("analysis", "md"), cores=64, q=2, r=4), view("small", ("analysis", "md"), cores=8)]
    sched = run(800, clusters, lambda now: {"md": BIG, "analysis": BIG}, {"md": 1, "analysis": 3})
    _, core_cycles = pilots_and_core_cycles(sched)
    assert within(core_cycles["analysis"] / core_cycles["md"], 3.0), core_cycles


def test_equal_weights_give_equal_shares():
    sched = run(600, TWO, lambda now: {"md": BIG, "analysis": BIG}, None)
    pilots, core_cycles = pilots_and_core_cycles(sched)
    assert within(pilots["md"] / pilots["analysis"], 1.0), pilots
    assert within(core_cycles["md"] / core_cycles["analysis"], 1.0), core_cycles


def test_a_small_category_with_occasional_demand_is_never_starved():
    # "qc" (weight 1) has 2 READY Fireworks for 15 cycles out of every 60; md (3) and analysis (1) always have
    # plenty. The clusters are full of md and analysis pilots all the time; a pilot ends at least every `runs`
    # cycles on each cluster (pilots start one per cycle and run `runs` cycles), and the room it frees goes to
    # the category with the fewest live cores per weight: qc, which has none. So qc gets a pilot within
    # runs + 1 cycles of its demand appearing, every time.
    sched = Scheduler(runs=12)
    share = {"md": 3, "analysis": 1, "qc": 1}
    clusters = [view("a", ("analysis", "md", "qc"), cores=16), view("b", ("analysis", "md"), cores=16, q=2, r=4)]

    def demand_at(now: int) -> dict[str, CategoryDemand]:
        qc = CategoryDemand(ready=2 if now % 60 >= 45 else 0)
        return {"md": BIG, "analysis": BIG, "qc": qc}

    run(600, clusters, demand_at, share, sched)
    qc_submits = sorted(j.submitted for j in sched.jobs if j.category == "qc")
    waits = []
    for start in range(45, 600, 60):                      # each time qc's demand appears
        first = next((t for t in qc_submits if t >= start), None)
        assert first is not None and first < start + 15, (start, qc_submits)
        waits.append(first - start)
    assert max(waits) <= sched.runs + 1, waits
    # no pilot for qc while it has no demand (min_pilots is 0)
    assert all(t % 60 >= 45 for t in qc_submits), qc_submits
    # md and analysis still share 3:1 over the run
    pilots, _ = pilots_and_core_cycles(sched)
    assert within(pilots["md"] / pilots["analysis"], 3.0), pilots


def test_a_category_without_demand_leaves_all_the_room_to_the_others():
    sched = run(200, TWO, lambda now: {"md": BIG, "analysis": CategoryDemand(ready=0)}, {"md": 1, "analysis": 3})
    pilots, _ = pilots_and_core_cycles(sched)
    assert pilots["analysis"] == 0
    # every cluster full of md pilots: max_running 6 on a, 4 on b
    assert sched.history[-1] == Counter({("a", "md"): 6, ("b", "md"): 4}), sched.history[-1]


def test_the_room_comes_back_to_a_category_whose_demand_returns():
    # analysis idle for the first 200 cycles (md takes everything), then both in demand: within a few pilot
    # lifetimes analysis holds its 3/4 of the room (weights analysis 3 : md 1)
    def demand_at(now: int) -> dict[str, CategoryDemand]:
        return {"md": BIG, "analysis": BIG if now >= 200 else CategoryDemand(ready=0)}

    sched = run(500, TWO, demand_at, {"md": 1, "analysis": 3})
    later = [j for j in sched.jobs if j.submitted >= 260]
    n = Counter(j.category for j in later)
    assert within(n["analysis"] / n["md"], 3.0), n


def test_decisions_say_when_the_share_held_a_category_back():
    # one cycle, room for 4 on one cluster, both want 10: weights 3:1 give 3 and 1
    out = plan({"md": BIG, "analysis": BIG}, [view("a", ("analysis", "md"), cores=16, q=4, r=10)], {},
               share={"md": 3, "analysis": 1})
    got = {d.category: (d.submit, d.reason) for d in out}
    assert got == {"md": (3, "max_queued (share md 3 : analysis 1)"),
                   "analysis": (1, "max_queued (share md 3 : analysis 1)")}
