"""The scaling policy: a pure function, tested against the rule the manager issue states.

Expected numbers are worked out by hand from the rule
``need = ceil(ready / fireworks_per_pilot) - pending - running with time left``, clamped by
``max_queued`` (pending on the cluster), ``max_running`` (all live pilots on the cluster) and
``min_pilots``, shared between clusters in order of observed queue wait; for chain heads
(``spec._pilot.continues``) from ``need = heads - pending``, a pilot each (docs/manager.md, "One cycle").
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.manager.policy import CategoryDemand, ClusterLimits, ClusterView, PilotCounts, fireworks_per_pilot, plan


def cluster(name="a", cats=("md",), usable=3600.0, fpp=4, q=10, r=20, mn=0, available=True, wait=None):
    return ClusterView(name=name, categories=tuple(cats), usable_seconds=usable, fireworks_per_pilot=fpp,
                       limits=ClusterLimits(max_queued=q, max_running=r, min_pilots=mn),
                       available=available, queue_wait=wait)


def by_key(decisions):
    return {(d.cluster, d.category): d for d in decisions}


def test_zero_demand_submits_nothing():
    out = plan({"md": CategoryDemand(ready=0)}, [cluster()], {})
    assert [(d.submit, d.reason) for d in out] == [(0, "no demand")]


def test_missing_category_in_demand_is_zero_demand():
    out = plan({}, [cluster(cats=("md", "local"))], {})
    assert {d.category: d.submit for d in out} == {"local": 0, "md": 0}


def test_ceil_of_ready_over_fireworks_per_pilot():
    # 10 READY, 4 per pilot -> ceil(10/4) = 3
    d = plan({"md": CategoryDemand(ready=10)}, [cluster(fpp=4)], {})[0]
    assert (d.submit, d.reason, d.fireworks_per_pilot) == (3, "demand", 4)
    assert d.log_line() == "a/md: ready=10 pending=0 running=0 -> submit 3 (demand)"


def test_existing_pending_and_running_with_time_are_subtracted():
    # ceil(40/4)=10, minus 2 pending, minus 3 running with time left -> 5
    pilots = {("a", "md"): PilotCounts(pending=2, running=4, running_with_time=3)}
    d = plan({"md": CategoryDemand(ready=40)}, [cluster(fpp=4, q=100, r=100)], pilots)[0]
    assert (d.submit, d.pending, d.running) == (5, 2, 4)


def test_running_without_time_left_does_not_count():
    pilots = {("a", "md"): PilotCounts(pending=0, running=5, running_with_time=0)}
    d = plan({"md": CategoryDemand(ready=8)}, [cluster(fpp=4, q=100, r=100)], pilots)[0]
    assert d.submit == 2


def test_covered_when_pilots_already_take_the_work():
    pilots = {("a", "md"): PilotCounts(pending=3)}
    d = plan({"md": CategoryDemand(ready=10)}, [cluster(fpp=4)], pilots)[0]
    assert (d.submit, d.reason) == (0, "covered")


def test_max_queued_clamps_and_is_named():
    # ceil(40/1)=40 wanted; 2 already pending, max_queued 10 -> 8
    pilots = {("a", "md"): PilotCounts(pending=2, running=3, running_with_time=0)}
    d = plan({"md": CategoryDemand(ready=40)}, [cluster(fpp=1, q=10, r=100)], pilots)[0]
    assert (d.submit, d.reason) == (8, "max_queued")
    assert d.log_line() == "a/md: ready=40 pending=2 running=3 -> submit 8 (max_queued)"


def test_max_running_caps_all_live_pilots():
    # 3 running + 1 pending = 4 live; max_running 6 -> at most 2 more although max_queued allows 10
    pilots = {("a", "md"): PilotCounts(pending=1, running=3, running_with_time=3)}
    d = plan({"md": CategoryDemand(ready=100)}, [cluster(fpp=1, q=10, r=6)], pilots)[0]
    assert (d.submit, d.reason) == (2, "max_running")


def test_limits_are_shared_by_the_categories_of_one_cluster():
    c = cluster(cats=("md", "prep"), fpp=1, q=5, r=50)
    out = by_key(plan({"md": CategoryDemand(ready=4), "prep": CategoryDemand(ready=4)}, [c], {}))
    # fair share, equal weights (docs/campaign.md): one pilot at a time to the fewest live cores, ties by name:
    # md, prep, md, prep, md -> 3 and 2 of the 5 queue slots; both say the room went to the other by share
    assert (out[("a", "md")].submit, out[("a", "md")].reason) == (3, "max_queued (share md 1 : prep 1)")
    assert (out[("a", "prep")].submit, out[("a", "prep")].reason) == (2, "max_queued (share md 1 : prep 1)")


def test_min_pilots_floor_without_demand():
    d = plan({"md": CategoryDemand(ready=0)}, [cluster(mn=2)], {})[0]
    assert (d.submit, d.reason) == (2, "min_pilots")
    d = plan({"md": CategoryDemand(ready=0)}, [cluster(mn=2)], {("a", "md"): PilotCounts(running=2)})[0]
    assert (d.submit, d.reason) == (0, "no demand")


def test_backed_off_cluster_gets_nothing_and_demand_flows_to_the_other():
    a = cluster("a", fpp=2, available=False, wait=1.0)
    b = cluster("b", fpp=2, wait=100.0)
    out = by_key(plan({"md": CategoryDemand(ready=6)}, [a, b], {}))
    assert (out[("a", "md")].submit, out[("a", "md")].reason) == (0, "backed off")
    assert out[("b", "md")].submit == 3


def test_demand_is_shared_never_counted_twice_preferring_short_queue_waits():
    # 12 READY at 2 per pilot = 6 pilots; a (wait 10 s) has room for 4 queued, b takes the rest
    a = cluster("a", fpp=2, q=4, wait=10.0)
    b = cluster("b", fpp=2, q=10, wait=300.0)
    out = by_key(plan({"md": CategoryDemand(ready=12)}, [b, a], {}))
    assert (out[("a", "md")].submit, out[("a", "md")].reason) == (4, "max_queued")
    assert (out[("b", "md")].submit, out[("b", "md")].reason) == (2, "demand")


def test_pilots_on_another_cluster_absorb_demand():
    a = cluster("a", fpp=2)
    b = cluster("b", fpp=2)
    pilots = {("b", "md"): PilotCounts(pending=2)}   # b's 2 pending pilots take 4 of the 6
    out = by_key(plan({"md": CategoryDemand(ready=6)}, [a, b], pilots))
    assert out[("a", "md")].submit == 1
    assert out[("b", "md")].submit == 0


def test_unknown_queue_wait_is_tried_last_and_names_break_ties():
    a = cluster("a", fpp=1, q=1)
    b = cluster("b", fpp=1, q=1, wait=50.0)
    c = cluster("c", fpp=1, q=1)
    out = plan({"md": CategoryDemand(ready=2)}, [c, a, b], {})
    assert [(d.cluster, d.submit) for d in out] == [("b", 1), ("a", 1), ("c", 0)]


def test_fireworks_per_pilot_from_durations():
    k = cluster(usable=3600.0, fpp=7)
    # all READY Fireworks give 900 s -> 4 fit in 3600 s
    assert fireworks_per_pilot(k, CategoryDemand(ready=3, with_duration=3, mean_duration=900.0)) == 4
    # longer than a pilot: still one pilot each
    assert fireworks_per_pilot(k, CategoryDemand(ready=2, with_duration=2, mean_duration=7200.0)) == 1
    # none given: the configured number
    assert fireworks_per_pilot(k, CategoryDemand(ready=5)) == 7
    # 4 known at 1800 s (2 per pilot -> 2 pilots) + 7 unknown at 7 per pilot (1 pilot) = 3 pilots for 11
    assert fireworks_per_pilot(k, CategoryDemand(ready=11, with_duration=4, mean_duration=1800.0)) == round(11 / 3)


def test_durations_drive_the_pilot_count():
    # 8 Fireworks of 1 h each on a 4 h (usable) pilot: 4 per pilot -> 2 pilots, whatever fpp says
    k = cluster(usable=4 * 3600.0, fpp=1)
    d = plan({"md": CategoryDemand(ready=8, with_duration=8, mean_duration=3600.0)}, [k], {})[0]
    assert (d.submit, d.fireworks_per_pilot) == (2, 4)


# --------------------------------------------------------------------------- chains (issue 18)
# A chain head (spec._pilot.continues: true) adds its successor when it completes, which the same pilot takes:
# one pilot per READY head, pending pilots take one head each, running pilots none (module docstring).
SEGMENT = 4 * 3600 + 300          # a 4-hour MD segment's spec._pilot.walltime (docs/md-segments.md)
PILOT48 = 48 * 3600 - 600         # a 48-hour pilot's usable time (walltime_margin 600 s)


def test_chain_heads_get_a_pilot_each_up_to_the_limits_not_usable_over_duration():
    # counted as a bag: 172200 // 14700 = 11 segments per pilot -> ceil(400/11) = 37 pilots (issue 18)
    bag = CategoryDemand(ready=400, with_duration=400, mean_duration=float(SEGMENT))
    d = plan({"md": bag}, [cluster(usable=PILOT48, q=1000, r=1000)], {})[0]
    assert (d.submit, d.fireworks_per_pilot) == (37, 11)
    # 400 chain heads over four clusters with 220 slots: every slot gets a pilot, in order of queue wait
    heads = CategoryDemand(ready=400, chains=400)
    ks = [cluster("a", usable=PILOT48, q=100, r=80, wait=1.0), cluster("b", usable=PILOT48, q=60, r=60, wait=2.0),
          cluster("c", usable=PILOT48, q=50, r=50, wait=3.0), cluster("d", usable=PILOT48, q=30, r=30, wait=4.0)]
    out = plan({"md": heads}, ks, {})
    assert [(x.cluster, x.submit, x.reason) for x in out] == [
        ("a", 80, "max_running"), ("b", 60, "max_queued"), ("c", 50, "max_queued"), ("d", 30, "max_queued")]
    assert out[0].log_line() == "a/md: ready=400 (400 chains) pending=0 running=0 -> submit 80 (max_running)"


def test_running_pilots_with_time_do_not_cover_chain_heads():
    pilots = {("a", "md"): PilotCounts(running=10, running_with_time=10)}
    k = cluster(fpp=4, q=100, r=100)
    # a bag of 40 at 4 per pilot: the 10 running pilots take them all
    d = plan({"md": CategoryDemand(ready=40)}, [k], pilots)[0]
    assert (d.submit, d.reason) == (0, "covered")
    # 40 chain heads: the 10 running pilots go on with their own chains; 40 more (room: 100 - 10 live)
    d = plan({"md": CategoryDemand(ready=40, chains=40)}, [k], pilots)[0]
    assert (d.submit, d.reason) == (40, "demand")


def test_pending_pilots_take_one_chain_head_each():
    k = cluster(fpp=4, q=100, r=100)
    heads = {"md": CategoryDemand(ready=40, chains=40)}
    assert plan(heads, [k], {("a", "md"): PilotCounts(pending=15)})[0].submit == 40 - 15
    d = plan(heads, [k], {("a", "md"): PilotCounts(pending=40)})[0]
    assert (d.submit, d.reason) == (0, "covered")
    # pending pilots on another cluster count too (never twice)
    b = cluster("b", fpp=4, q=100, r=100)
    out = by_key(plan(heads, [k, b], {("b", "md"): PilotCounts(pending=15)}))
    assert (out[("a", "md")].submit, out[("b", "md")].submit) == (25, 0)


def test_a_mix_of_chain_heads_and_a_bag_of_tasks():
    # 20 heads and 30 others of 900 s on 3600 s pilots: the bag runs 3600 // 900 = 4 to a pilot
    mix = {"md": CategoryDemand(ready=50, chains=20, with_duration=30, mean_duration=900.0)}
    k = cluster(usable=3600.0, fpp=1, q=100, r=100)
    # 5 pending take 5 heads (15 left); 2 running with time take 2 * 4 = 8 of the bag (22 left: 6 pilots)
    d = plan(mix, [k], {("a", "md"): PilotCounts(pending=5, running=2, running_with_time=2)})[0]
    assert (d.submit, d.reason, d.fireworks_per_pilot) == (15 + 6, "demand", 4)
    assert d.log_line() == "a/md: ready=50 (20 chains) pending=5 running=2 -> submit 21 (demand)"
    # 25 pending: 20 take the heads, the other 5 and 3 running take (5 + 3) * 4 = 32 >= 30 of the bag
    d = plan(mix, [k], {("a", "md"): PilotCounts(pending=25, running=3, running_with_time=3)})[0]
    assert (d.submit, d.reason) == (0, "covered")
    # a (shorter wait) has room for 10 queued: heads first; b gets the 10 heads left and ceil(30 / 4) = 8
    a = cluster("a", usable=3600.0, q=10, r=100, wait=10.0)
    b = cluster("b", usable=3600.0, q=100, r=100, wait=300.0)
    out = by_key(plan(mix, [b, a], {}))
    assert (out[("a", "md")].submit, out[("a", "md")].reason) == (10, "max_queued")
    assert (out[("b", "md")].submit, out[("b", "md")].reason) == (10 + 8, "demand")


def test_chain_heads_go_only_where_a_pilot_can_take_them():
    # "short" (preferred) takes 2 bag Fireworks and no head; "long" takes all 6 (4 heads)
    short = cluster("short", usable=70.0, fpp=1, wait=1.0)
    long = cluster("long", usable=PILOT48, fpp=1, wait=100.0)
    fits = {("short", "md"): CategoryDemand(ready=2), ("long", "md"): CategoryDemand(ready=6, chains=4)}
    out = by_key(plan({"md": CategoryDemand(ready=6, chains=4, takeable=6)}, [short, long], {}, fits=fits))
    assert (out[("short", "md")].submit, out[("long", "md")].submit) == (2, 4)
    # 5 heads no pilot can take (takeable 5: the bag), 5 bag Fireworks: pilots for the bag only
    fits = {("long", "md"): CategoryDemand(ready=5)}
    d = by_key(plan({"md": CategoryDemand(ready=10, chains=5, takeable=5)}, [long], {}, fits=fits))[("long", "md")]
    assert (d.submit, d.reason) == (5, "demand")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 200), st.integers(1, 10), st.integers(0, 60), st.integers(0, 60))
def test_unlimited_single_cluster_with_chains_is_exactly_the_rule(heads, others, fpp, pending, with_time):
    pilots = {("a", "md"): PilotCounts(pending=pending, running=with_time, running_with_time=with_time)}
    d = plan({"md": CategoryDemand(ready=heads + others, chains=heads)},
             [cluster(fpp=fpp, q=10**6, r=10**6)], pilots)[0]
    # docs/manager.md: heads - pending; the bag less (pending left over + running with time) * fpp
    bag_left = max(0, others - (max(0, pending - heads) + with_time) * fpp)
    assert d.submit == max(0, heads - pending) + math.ceil(bag_left / fpp)


# --------------------------------------------------------------------------- properties
names = st.sampled_from(["a", "b", "c"])


@st.composite
def scenarios(draw):
    cats = ["md", "local", "prep"]
    clusters = []
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        served = tuple(draw(st.lists(st.sampled_from(cats), min_size=1, max_size=3, unique=True)))
        clusters.append(cluster(name, served, usable=draw(st.floats(60, 86400)), fpp=draw(st.integers(1, 10)),
                                q=draw(st.integers(0, 12)), r=draw(st.integers(0, 30)), mn=draw(st.integers(0, 3)),
                                available=draw(st.booleans()),
                                wait=draw(st.one_of(st.none(), st.floats(0, 10000)))))
    demand = {}
    for c in cats:
        ready = draw(st.integers(0, 300))
        n_known = draw(st.integers(0, ready))
        demand[c] = CategoryDemand(ready=ready, with_duration=n_known,
                                   mean_duration=draw(st.floats(1, 100000)) if n_known else None)
    pilots = {}
    for k in clusters:
        for c in k.categories:
            pend, run = draw(st.integers(0, 8)), draw(st.integers(0, 8))
            pilots[(k.name, c)] = PilotCounts(pending=pend, running=run, running_with_time=draw(st.integers(0, run)))
    return demand, clusters, pilots


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_properties_hold_for_any_input(sc):
    demand, clusters, pilots = sc
    out = plan(demand, clusters, pilots)
    assert len(out) == sum(len(k.categories) for k in clusters)
    for k in clusters:
        mine = [d for d in out if d.cluster == k.name]
        new = sum(d.submit for d in mine)
        pend = sum(p.pending for (cn, _), p in pilots.items() if cn == k.name)
        live = sum(p.pending + p.running for (cn, _), p in pilots.items() if cn == k.name)
        assert all(d.submit >= 0 for d in mine)
        if not k.available:
            assert new == 0
        # never beyond the limits (when already beyond, nothing is added)
        assert new <= max(0, k.limits.max_queued - pend)
        assert new <= max(0, k.limits.max_running - live)
    for cat, dem in demand.items():
        mine = [d for d in out if d.category == cat]
        if not mine:
            continue
        fpp = {d.cluster: d.fireworks_per_pilot for d in mine}
        floors = sum(max(0, k.limits.min_pilots - pilots[(k.name, cat)].pending - pilots[(k.name, cat)].running)
                     for k in clusters if cat in k.categories and k.available)
        # no double counting: beyond the min_pilots floors, new capacity exceeds the unserved work by less
        # than one pilot per cluster that got some
        existing = sum((pilots[(k.name, cat)].pending + pilots[(k.name, cat)].running_with_time) * fpp[k.name]
                       for k in clusters if cat in k.categories)
        unserved = max(0, dem.ready - existing)
        got = [d for d in mine if d.submit > 0]
        surplus_pilots = sum(d.submit for d in mine) - floors
        if surplus_pilots > 0:
            assert sum(d.submit * d.fireworks_per_pilot for d in got) < unserved + sum(
                d.fireworks_per_pilot for d in got) + floors * max(fpp.values())
        if dem.ready == 0 and floors == 0:
            assert all(d.submit == 0 for d in mine)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(1, 10))
def test_unlimited_single_cluster_is_exactly_the_formula(ready, fpp):
    d = plan({"md": CategoryDemand(ready=ready)}, [cluster(fpp=fpp, q=10**6, r=10**6)], {})[0]
    assert d.submit == math.ceil(ready / fpp)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_with_chain_heads_limits_hold_and_no_more_pilots_than_ready_work(sc, data):
    demand, clusters, pilots = sc
    demand = {c: replace(d, chains=data.draw(st.integers(0, d.ready))) for c, d in demand.items()}
    out = plan(demand, clusters, pilots)
    for k in clusters:
        new = sum(d.submit for d in out if d.cluster == k.name)
        pend = sum(p.pending for (cn, _), p in pilots.items() if cn == k.name)
        live = sum(p.pending + p.running for (cn, _), p in pilots.items() if cn == k.name)
        assert new <= (max(0, min(k.limits.max_queued - pend, k.limits.max_running - live)) if k.available else 0)
    for cat, dem in demand.items():
        floors = sum(max(0, k.limits.min_pilots - pilots[(k.name, cat)].pending - pilots[(k.name, cat)].running)
                     for k in clusters if cat in k.categories and k.available)
        # a chain head needs a pilot, a bag Firework at most one: beyond the floors never more pilots than READY
        assert sum(d.submit for d in out if d.category == cat) <= dem.ready + floors


def test_a_pilot_takes_no_more_of_the_bag_than_fits_it():
    # "short" (preferred) could take 2 of the 4 READY Fireworks, "long" all 4; fireworks_per_pilot 5: one pilot
    # of "short" serves its 2, and the 2 only "long" can take still need a pilot there
    short = cluster("short", usable=70.0, fpp=5, wait=1.0)
    long = cluster("long", usable=PILOT48, fpp=5, wait=100.0)
    fits = {("short", "md"): CategoryDemand(ready=2), ("long", "md"): CategoryDemand(ready=4)}
    out = by_key(plan({"md": CategoryDemand(ready=4, takeable=4)}, [short, long], {}, fits=fits))
    assert (out[("short", "md")].submit, out[("long", "md")].submit) == (1, 1)


def test_a_packing_pilot_counts_as_its_slots():
    # 4 slots a pilot: 8 one-core Fireworks, one after another in each slot (fireworks_per_pilot 1) -> 2 pilots;
    # 8 chain heads -> 2 pilots; a pending packing pilot takes 4 heads when it starts
    k = cluster(fpp=1, q=100, r=100)
    fits = {("a", "md"): CategoryDemand(ready=8, slots=4)}
    assert plan({"md": CategoryDemand(ready=8)}, [k], {}, fits=fits)[0].submit == 2
    heads = {("a", "md"): CategoryDemand(ready=8, chains=8, slots=4)}
    d = plan({"md": CategoryDemand(ready=8, chains=8)}, [k], {}, fits=heads)[0]
    assert (d.submit, d.slots) == (2, 4) and "4 per pilot" in d.log_line()
    pending = {("a", "md"): PilotCounts(pending=1)}
    assert plan({"md": CategoryDemand(ready=8, chains=8)}, [k], pending, fits=heads)[0].submit == 1


def test_queue_profiles_of_one_cluster_share_its_limits():
    # two profiles of cluster "g" (units g[gpu], g[cpu]) with max_queued 3: 5 pilots wanted, 3 submitted in all
    gpu = replace(cluster("g[gpu]", fpp=1, q=3, r=20, wait=1.0), cluster="g", profile="gpu")
    cpu = replace(cluster("g[cpu]", fpp=1, q=3, r=20, wait=2.0), cluster="g", profile="cpu")
    fits = {("g[gpu]", "md"): CategoryDemand(ready=2), ("g[cpu]", "md"): CategoryDemand(ready=3)}
    out = plan({"md": CategoryDemand(ready=5, takeable=5)}, [gpu, cpu], {}, fits=fits)
    assert [(d.cluster, d.profile, d.submit, d.reason) for d in out] == [
        ("g", "gpu", 2, "demand"), ("g", "cpu", 1, "max_queued")]
    assert out[0].log_line().startswith("g[gpu]/md: ready=5 (2 fit)")


def _profiles(q=10, r=20, mn=0):
    gpu = replace(cluster("g[gpu]", fpp=1, q=q, r=r, mn=mn, wait=1.0), cluster="g", profile="gpu")
    cpu = replace(cluster("g[cpu]", fpp=1, q=q, r=r, mn=mn, wait=2.0), cluster="g", profile="cpu")
    return gpu, cpu


def test_pending_pilots_of_a_profile_are_not_credited_with_work_they_cannot_take():
    # 5 GPU pilots wait in the queue; the 10 READY Fireworks are CPU work none of them takes: 10 CPU pilots
    gpu, cpu = _profiles(q=20, r=20)
    fits = {("g[gpu]", "md"): CategoryDemand(ready=0), ("g[cpu]", "md"): CategoryDemand(ready=10)}
    pilots = {("g[gpu]", "md"): PilotCounts(pending=5)}
    out = plan({"md": CategoryDemand(ready=10, takeable=10)}, [gpu, cpu], pilots, fits=fits)
    assert [(d.profile, d.submit, d.reason) for d in out] == [("gpu", 0, "none fit"), ("cpu", 10, "demand")]


def test_min_pilots_is_the_clusters_and_goes_to_one_profile():
    # min_pilots 1, no READY work: one pilot for the cluster, not one per profile
    gpu, cpu = _profiles(mn=1)
    out = plan({"md": CategoryDemand(ready=0)}, [gpu, cpu], {})
    assert [(d.profile, d.submit) for d in out] == [("gpu", 1), ("cpu", 0)]
    # with READY CPU work only, the floor goes to the profile that can take some of it
    fits = {("g[gpu]", "md"): CategoryDemand(ready=0), ("g[cpu]", "md"): CategoryDemand(ready=1)}
    out = plan({"md": CategoryDemand(ready=1, takeable=1)}, [gpu, cpu], {}, fits=fits)
    assert [(d.profile, d.submit) for d in out] == [("gpu", 0), ("cpu", 1)]
    # a live pilot of either profile counts toward the cluster's floor
    out = plan({"md": CategoryDemand(ready=0)}, [gpu, cpu], {("g[cpu]", "md"): PilotCounts(running=1)})
    assert [d.submit for d in out] == [0, 0]


# --------------------------------------------------------------------------- fair share (docs/campaign.md)
weights = st.dictionaries(st.sampled_from(["md", "local", "prep"]), st.floats(0.01, 100), max_size=3)


@settings(max_examples=300, deadline=None)
@given(scenarios(), weights)
def test_with_room_for_everybody_each_category_gets_what_it_would_alone(sc, share):
    # nothing contested: the weights change nothing, each category plans as if it were alone
    demand, clusters, pilots = sc
    roomy = [replace(k, limits=replace(k.limits, max_queued=10**6, max_running=10**6)) for k in clusters]
    out = plan(demand, roomy, pilots, share=share, recent={"md": 1000.0})
    for cat in demand:
        alone = [replace(k, categories=(cat,)) for k in roomy if cat in k.categories]
        expected = [(d.cluster, d.submit, d.reason) for d in plan(demand, alone, pilots)]
        assert [(d.cluster, d.submit, d.reason) for d in out if d.category == cat] == expected


@settings(max_examples=300, deadline=None)
@given(scenarios(), weights)
def test_weights_never_break_the_limits(sc, share):
    # the share only says who gets the room, never more of it
    demand, clusters, pilots = sc
    out = plan(demand, clusters, pilots, share=share)
    for k in clusters:
        new = sum(d.submit for d in out if d.cluster == k.name)
        pend = sum(p.pending for (cn, _), p in pilots.items() if cn == k.name)
        live = sum(p.pending + p.running for (cn, _), p in pilots.items() if cn == k.name)
        assert new <= (max(0, min(k.limits.max_queued - pend, k.limits.max_running - live)) if k.available else 0)


def test_the_next_pilot_goes_to_the_fewest_cores_per_weight():
    # room for 4 pilots; md has 2 live 16-core pilots (32 cores, weight 3: 10.7 a unit), prep none (weight 1):
    # prep 0 -> prep (16); md 10.7 < 16 -> md (48/3 = 16); tie 16 = 16 -> md by name (64/3 = 21.3);
    # prep 16 < 21.3 -> prep: 2 and 2
    k = replace(cluster(cats=("md", "prep"), fpp=1, q=4, r=50), cores=16)
    pilots = {("a", "md"): PilotCounts(running=2, running_with_time=2)}
    out = by_key(plan({"md": CategoryDemand(ready=10), "prep": CategoryDemand(ready=10)}, [k], pilots,
                      share={"md": 3}))
    assert (out[("a", "md")].submit, out[("a", "prep")].submit) == (2, 2)
    # pilots of prep that ended lately count too: 64 cores of them, and md gets all 4 (prep's 64 stays above md)
    out = by_key(plan({"md": CategoryDemand(ready=10), "prep": CategoryDemand(ready=10)}, [k], pilots,
                      share={"md": 3}, recent={"prep": 64.0}))
    assert (out[("a", "md")].submit, out[("a", "prep")].submit) == (4, 0)
