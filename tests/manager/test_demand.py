"""Demand counts only what a pilot of the cluster can take (issue 16, items 10-12).

Wall time that fits (``spec._pilot.walltime`` <= the pilot's wall time minus ``walltime_margin``), and no
``_fworker`` pin (pilots are named CLUSTER-JOBID, known only once the job exists). A READY Firework no pilot
can take costs no pilot, and ``pilot status`` says why. The demand is counted once per cycle.

The expected numbers come from the cluster files written here (wall time 90 s, margin 20 s: 70 s usable),
not from the code under test.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fireworks import Firework, ScriptTask, Workflow

from pilot.config import load_config
from pilot.manager.cycle import Manager
from pilot.manager.demand import PilotOffer, gather_demand, takeable_query
from pilot.manager.policy import CategoryDemand, ClusterView, PilotCounts, plan
from pilot.status.format import format_status
from pilot.status.gather import gather_status
from tests.manager.helpers import (
    cancel_local_pilots,
    completed_launches_per_fw,
    fw_states,
    local_cluster,
    run_cycles_until,
    write_config,
)

SHORT_WALLTIME, SHORT_MARGIN = 90, 20          # a pilot of "short" can take Fireworks of up to 70 s
SEGMENT = 14400                                 # a 4-hour MD segment's spec._pilot.walltime


def add_fw(lp: Any, category: str = "md", walltime: float | None = None, fworker: str | None = None,
           name: str = "fw", min_walltime: float | None = None, **extra: Any) -> int:
    spec: dict[str, Any] = {"_category": category, **extra}
    if walltime is not None:
        spec["_pilot"] = {"walltime": walltime}
    if min_walltime is not None:
        spec.setdefault("_pilot", {})["min_walltime"] = min_walltime
    if fworker is not None:
        spec["_fworker"] = fworker
    fw = Firework([ScriptTask.from_str("true")], spec=spec, name=name)
    lp.add_wf(Workflow([fw]))
    return int(fw.fw_id)


def state(lp: Any, fw_id: int) -> str:
    return str(lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1})["state"])


@pytest.fixture
def env(tmp_path: Path, launchpad: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    monkeypatch.setenv("PILOT_LOCAL_STATE", str(tmp_path / "work" / "localsched"))
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    yield tmp_path, lp_file
    cancel_local_pilots()


def short_cluster(tmp: Path, lp_file: Path, **over: Any) -> dict[str, Any]:
    return local_cluster(tmp / "work", lp_file, ["md"], pilot={"walltime": SHORT_WALLTIME},
                         walltime_margin=SHORT_MARGIN, **over)


class CountingFireworks:
    """The ``fireworks`` collection, counting each query by its filter (to see how often demand is asked)."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self.counts: list[dict[str, Any]] = []

    def count_documents(self, query: dict[str, Any], *a: Any, **kw: Any) -> int:
        self.counts.append(query)
        return int(self.coll.count_documents(query, *a, **kw))

    def aggregate(self, pipeline: list[dict[str, Any]], *a: Any, **kw: Any) -> Any:
        self.counts.append({"aggregate": pipeline})
        return self.coll.aggregate(pipeline, *a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.coll, name)


# ---------------------------------------------------------------------------------------------- the counts
def test_demand_counts_only_what_a_pilot_of_each_cluster_can_take(launchpad):
    lp = launchpad
    add_fw(lp, walltime=SEGMENT)
    add_fw(lp, walltime=SEGMENT)
    add_fw(lp, walltime=30)                       # fits 70 s
    add_fw(lp, walltime=70)                       # fits exactly
    add_fw(lp)                                    # no duration: fits anything (the worker's rule)
    add_fw(lp, fworker="short-123")               # pinned: demand nowhere
    add_fw(lp, walltime=30, fworker="elsewhere")  # pinned
    add_fw(lp, category="post")
    offers = [PilotOffer("short", ("md",), 70.0), PilotOffer("long", ("md", "post"), 20000.0 - 600.0)]
    d = gather_demand(lp.fireworks, offers)
    assert d.by_category["md"].ready == 7
    assert d.by_category["md"].takeable == 5      # the long cluster's pilots take every unpinned one
    assert d.by_cluster[("short", "md")].ready == 3
    assert d.by_cluster[("short", "md")].with_duration == 2
    assert d.by_cluster[("short", "md")].mean_duration == pytest.approx(50.0)
    assert d.by_cluster[("long", "md")].ready == 5
    assert d.by_cluster[("long", "md")].mean_duration == pytest.approx((SEGMENT * 2 + 30 + 70) / 4)
    assert d.by_cluster[("long", "post")].ready == 1
    assert ("short", "post") not in d.by_cluster
    assert d.queries == 1   # one aggregation, whatever the number of clusters and categories


def test_a_firework_taken_by_its_minimum_counts_the_pilots_time_with_and_without_fworker_query(launchpad):
    """docs/manager.md: a Firework that fits only by ``min_walltime`` lasts the pilot's usable time in the plan,
    whether the cluster's counts come from the groups or, with an ``fworker_query``, from its own queries."""
    lp = launchpad
    for _ in range(10):
        add_fw(lp, walltime=600, site="x")
    add_fw(lp, walltime=14700, min_walltime=660, site="x")
    usable = 7200.0
    d = gather_demand(lp.fireworks, [PilotOffer("plain", ("md",), usable),
                                     PilotOffer("query", ("md",), usable, query={"spec.site": "x"})])
    expected = (10 * 600 + usable) / 11
    for cluster in ("plain", "query"):
        got = d.by_cluster[(cluster, "md")]
        assert (got.ready, got.with_duration) == (11, 11), cluster
        assert got.mean_duration == pytest.approx(expected), cluster


@pytest.mark.parametrize("indexed", [True, False])
def test_chain_heads_are_counted_apart_and_leave_the_durations_to_the_others(launchpad, tmp_path, indexed):
    """docs/manager.md: a chain head (``spec._pilot.continues`` exactly true: every md segment, docs/md-segments.md)
    needs a pilot of its own; ``fireworks_per_pilot`` is sized by the durations of the other READY Fireworks.
    The same from the one aggregation (with the manager's indexes and without) and, for a cluster with an
    ``fworker_query``, from its own counts."""
    from pilot.manager.demand import ensure_demand_indexes
    from tasks.workflow import make_md_workflow

    lp = launchpad
    if indexed:
        assert ensure_demand_indexes(lp.fireworks) is None
    for i in range(3):
        wf = make_md_workflow(tmp_path / f"run{i}", "gromacs", f"run{i}", segment_hours=4)
        for fw in wf.fws:
            fw.spec["site"] = "x"
        lp.add_wf(wf)
    for flag in (False, "yes"):                    # not exactly true: no promise of a successor
        fw_id = add_fw(lp, walltime=600, site="x")
        lp.fireworks.update_one({"fw_id": fw_id}, {"$set": {"spec._pilot.continues": flag}})
    add_fw(lp, walltime=600, site="x")
    add_fw(lp, walltime=1200, site="x")
    usable = 7200.0
    d = gather_demand(lp.fireworks, [PilotOffer("plain", ("md",), usable),
                                     PilotOffer("query", ("md",), usable, query={"spec.site": "x"})])
    heads = lp.fireworks.count_documents({"state": "READY", "spec._pilot.continues": True})
    assert heads == 3
    assert (d.by_category["md"].ready, d.by_category["md"].chains) == (7, 3)
    for cluster in ("plain", "query"):
        got = d.by_cluster[(cluster, "md")]
        assert (got.ready, got.chains, got.with_duration) == (7, 3, 4), cluster
        assert got.mean_duration == pytest.approx((3 * 600 + 1200) / 4), cluster


@pytest.mark.parametrize("indexed", [True, False])
def test_demand_of_twenty_clusters_is_one_command_and_equals_the_databases_counts(launchpad, indexed):
    """However many clusters and durations: one aggregation, and per cluster exactly what the database counts
    for that cluster's pilot query (:func:`takeable_query`, the worker's clauses), odd durations included; with
    the manager's indexes (the embedded server answers from them) and without."""
    lp = launchpad
    from pilot.manager.demand import ensure_demand_indexes, takeable_query

    if indexed:
        assert ensure_demand_indexes(lp.fireworks) is None

    for wt in (None, 0, 10, 30.5, 60, 70, 70.0000001, 3600, SEGMENT, "3600", True):
        add_fw(lp, walltime=wt)
    for wt, least in ((SEGMENT, 60), (SEGMENT, 600), (3600, 3600), (None, 30), (SEGMENT, "60")):
        add_fw(lp, walltime=wt, min_walltime=least)   # sizes itself to the pilot's time (an MD segment)
    add_fw(lp, walltime=30, fworker="pinned-1")
    lp.fireworks.update_one({"name": "fw", "spec._pilot.walltime": 0}, {"$set": {"spec._pilot.walltime": None}})
    offers = [PilotOffer(f"c{k:02d}", ("md",), 10.0 * 2 ** (k % 12)) for k in range(20)]
    d = gather_demand(lp.fireworks, offers)
    assert d.queries == 1
    for o in offers:
        expected = lp.fireworks.count_documents(takeable_query("md", o.usable_seconds))
        assert d.by_cluster[(o.cluster, "md")].ready == expected, o
    widest = max(o.usable_seconds for o in offers)
    assert d.by_category["md"].takeable == lp.fireworks.count_documents(takeable_query("md", widest))
    assert d.by_category["md"].ready == lp.fireworks.count_documents({"state": "READY", "spec._category": "md"})


def test_a_firework_of_several_categories_is_demand_in_each_and_odd_durations_fit_nothing(launchpad):
    """``_category: [a, b]``: FireWorks' FWorker query of a pilot of ``a`` takes it (``$in``), so it is demand of
    ``a`` and of ``b``; a NaN duration is never ``$lte`` a pilot's time (MongoDB), even a signalling one."""
    from bson.decimal128 import Decimal128

    from pilot.manager.demand import Group

    lp = launchpad
    add_fw(lp, category="md", walltime=30)
    fw = add_fw(lp, category="md", walltime=30, name="both")
    lp.fireworks.update_one({"fw_id": fw}, {"$set": {"spec._category": ["md", "post"]}})
    d = gather_demand(lp.fireworks, [PilotOffer("a", ("md",), 70.0), PilotOffer("b", ("post",), 70.0)])
    assert (d.by_cluster[("a", "md")].ready, d.by_cluster[("b", "post")].ready) == (2, 1)
    assert d.by_cluster[("a", "md")].ready == lp.fireworks.count_documents(
        {"state": "READY", "spec._category": {"$in": ["md"]}})
    for nan in (Decimal128("sNaN"), Decimal128("NaN"), float("nan")):
        assert Group("READY", nan, None, 1).seconds is None or not Group("READY", nan, None, 1).fits(1e9)
        assert not Group("READY", nan, None, 1).fits(1e9)


@pytest.mark.parametrize("fworker_query", [None, {"spec.kind": "x"}])
def test_demand_matches_what_the_worker_pulls(launchpad, tmp_path, fworker_query):
    """The manager's demand for a fresh pilot with 70 s counts what FireWorks hands that pilot's worker: the
    query is the worker's own (``Worker.fworker``, read through FireWorks' ``FWorker.query``, with the state
    FireWorks' checkout adds), and the database counts it; with a cluster ``fworker_query`` too."""
    from pilot.worker.model import WorkerConfig
    from pilot.worker.supervisor import Worker

    lp = launchpad
    for wt in (None, 10, 69.5, 70, 70.5, SEGMENT):
        add_fw(lp, walltime=wt, kind="x")
    add_fw(lp, walltime=SEGMENT, min_walltime=60, kind="x")   # an MD segment that sizes itself: fits by its minimum
    add_fw(lp, walltime=SEGMENT, min_walltime=600, kind="x")  # its minimum does not fit 70 s
    add_fw(lp, walltime=10, fworker="other-7", kind="x")       # pinned to another FWorker: neither takes it
    add_fw(lp, walltime=10, kind="y")                           # the cluster's fworker_query (when given) leaves it
    cfg = WorkerConfig(launchpad_file=tmp_path / "unread.yaml", categories=("md",), name="short-1",
                       deadline=None, margin=20.0, query=fworker_query)
    worker = Worker(cfg)  # makes a pipe, connects to nothing
    try:
        fworker = worker.fworker(70.0)
    finally:
        os.close(worker._wake_r)
        os.close(worker._wake_w)
    # what FireWorks' checkout looks for (LaunchPad._get_a_fw_to_run: the FWorker's query, state READY)
    pulled = lp.fireworks.count_documents({**fworker.query, "state": "READY"})
    assert pulled == (5 if fworker_query else 6)  # None, 10, 69.5, 70 and the segment by its minimum; (+ "y")
    d = gather_demand(lp.fireworks, [PilotOffer("short", ("md",), 70.0, fworker_query)])
    assert d.by_cluster[("short", "md")].ready == pulled
    assert d.by_category["md"].takeable == pulled
    # the one taken by its minimum runs the pilot's 70 s there, not its 4 hours: the plan sizes pilots by that
    durations = (10, 69.5, 70, 70) if fworker_query else (10, 69.5, 70, 70, 10)
    assert d.by_cluster[("short", "md")].mean_duration == pytest.approx(sum(durations) / len(durations))


def _asks(lp: Any, fworker: str | None = None, **pilot: Any) -> None:
    spec: dict[str, Any] = {"_category": "md", "_pilot": pilot}
    if fworker is not None:
        spec["_fworker"] = fworker
    lp.add_wf(Workflow([Firework([ScriptTask.from_str("true")], spec=spec, name="asks")]))


@pytest.mark.parametrize("cores, gpus, memory, gpu_only, pack", [
    (4, 0, None, False, False), (8, 2, 16000, False, True), (8, 2, None, True, True), (1, 0, 2000, False, False)])
def test_demand_with_resources_and_pins_matches_what_the_worker_pulls(launchpad, tmp_path, cores, gpus, memory,
                                                                      gpu_only, pack):
    """A queue profile's offer counts what its pilots' worker pulls (``Worker.fworker`` with the same cores,
    GPUs, memory and FWorker name, through FireWorks' ``FWorker.query``), and a packing pilot's slots are its
    cores and GPUs over the asks."""
    from pilot.worker.model import WorkerConfig
    from pilot.worker.supervisor import Worker

    lp = launchpad
    for asks in ({}, {"cores": 1}, {"cores": 2}, {"cores": 4}, {"cores": 8}, {"cores": 16}, {"gpus": 1},
                 {"gpus": 2, "cores": 2}, {"gpus": 4}, {"memory": 1000}, {"memory": 8000}, {"memory": 32000},
                 {"cores": None, "gpus": None}, {"cores": "2"}):
        _asks(lp, **asks)
    _asks(lp, fworker="gpu1", cores=1)         # pinned to the cluster's FWorker name: its pilots take it
    _asks(lp, fworker="gpu1-77", cores=1)      # pinned to one pilot's own name: demand nowhere
    cfg = WorkerConfig(launchpad_file=tmp_path / "unread.yaml", categories=("md",), name="gpu1-5", deadline=None,
                       cores=cores, gpus=gpus, memory_mb=memory, gpu_work_only=gpu_only, fworker_name="gpu1")
    worker = Worker(cfg)
    try:
        fworker = worker.fworker(math.inf)
    finally:
        os.close(worker._wake_r)
        os.close(worker._wake_w)
    pulled = lp.fireworks.count_documents({**fworker.query, "state": "READY"})
    assert 0 < pulled < 16
    offer = PilotOffer("gpu1", ("md",), 3600.0, cores=cores, gpus=gpus, memory=memory, gpu_work_only=gpu_only,
                       pack=pack, pin="gpu1")
    d = gather_demand(lp.fireworks, [offer])
    assert d.by_cluster[("gpu1", "md")].ready == d.by_category["md"].takeable == pulled
    assert lp.fireworks.count_documents(takeable_query("md", 3600.0, None, offer)) == pulled
    if not pack:
        assert d.by_cluster[("gpu1", "md")].slots == 1


def test_slots_of_a_packing_pilot_are_its_cores_over_the_asks(launchpad):
    lp = launchpad
    for _ in range(4):
        _asks(lp, cores=2)       # 4 one-at-a-time Fireworks of 2 cores: 4 to a 8-core pilot
    d = gather_demand(lp.fireworks, [PilotOffer("c", ("md",), 3600.0, cores=8, gpus=0, pack=True)])
    assert d.by_cluster[("c", "md")].slots == 4
    for _ in range(4):
        _asks(lp, cores=8)       # and 4 of 8 cores, one to a pilot: 8 Fireworks need 4/4 + 4/1 = 5 pilots, 8/5 -> 1
    d = gather_demand(lp.fireworks, [PilotOffer("c", ("md",), 3600.0, cores=8, gpus=0, pack=True)])
    assert d.by_cluster[("c", "md")].slots == 1
    for _ in range(24):
        _asks(lp, cores=1)       # and 24 of 1 core, 8 to a pilot: 32 Fireworks in 1 + 4 + 3 = 8 pilots -> 4
    d = gather_demand(lp.fireworks, [PilotOffer("c", ("md",), 3600.0, cores=8, gpus=0, pack=True)])
    assert d.by_cluster[("c", "md")].slots == 4


# ---------------------------------------------------------------------------------------------- the policy
def test_plan_gives_no_pilot_for_work_no_pilot_can_take():
    k = ClusterView(name="short", categories=("md",), usable_seconds=70.0, fireworks_per_pilot=1)
    d = plan({"md": CategoryDemand(ready=3, takeable=0)}, [k], {},
             fits={("short", "md"): CategoryDemand(ready=0)})[0]
    assert (d.submit, d.reason, d.fits) == (0, "none fit", 0)
    assert d.log_line() == "short/md: ready=3 (0 fit) pending=0 running=0 -> submit 0 (none fit)"


def test_plan_sends_long_work_to_the_cluster_that_can_take_it():
    # "short" is preferred (shorter queue wait) but takes only 2 of the 6; "long" takes all 6
    short = ClusterView(name="short", categories=("md",), usable_seconds=70.0, queue_wait=1.0)
    long = ClusterView(name="long", categories=("md",), usable_seconds=19400.0, queue_wait=100.0)
    fits = {("short", "md"): CategoryDemand(ready=2), ("long", "md"): CategoryDemand(ready=6)}
    out = {x.cluster: x for x in plan({"md": CategoryDemand(ready=6, takeable=6)}, [short, long], {}, fits=fits)}
    assert (out["short"].submit, out["short"].reason) == (2, "demand")
    assert (out["long"].submit, out["long"].reason) == (4, "demand")
    # a pending pilot on "short" already serves both short ones: "long" gets only the 4 long ones
    pilots = {("short", "md"): PilotCounts(pending=2)}
    out = {x.cluster: x for x in plan({"md": CategoryDemand(ready=6, takeable=6)}, [short, long], pilots,
                                      fits=fits)}
    assert (out["short"].submit, out["short"].reason) == (0, "covered")
    assert (out["long"].submit, out["long"].reason) == (4, "demand")


def test_plan_keeps_min_pilots_even_when_nothing_fits():
    from pilot.manager.policy import ClusterLimits

    k = ClusterView(name="short", categories=("md",), usable_seconds=70.0, limits=ClusterLimits(min_pilots=1))
    d = plan({"md": CategoryDemand(ready=3, takeable=0)}, [k], {}, fits={("short", "md"): CategoryDemand(ready=0)})[0]
    assert (d.submit, d.reason) == (1, "min_pilots")


# ---------------------------------------------------------------------------------------------- must show
def test_four_hour_segments_on_90_s_pilots_cost_no_pilot_and_status_says_why(env, launchpad):
    tmp, lp_file = env
    cfg = load_config(write_config(tmp / "cfg", lp_file, {"short": short_cluster(tmp, lp_file)}))
    ids = [add_fw(launchpad, walltime=SEGMENT, name=f"seg-{i}") for i in range(3)]
    mgr = Manager(cfg, launchpad)
    counting = CountingFireworks(launchpad.fireworks)
    mgr.lp = type("LP", (), {"fireworks": counting, "db": launchpad.db})()
    for _ in range(10):
        n_before = len(counting.counts)
        rep = mgr.run_cycle()
        assert rep.submitted == []
        assert [(d.cluster, d.category, d.ready, d.fits, d.submit, d.reason) for d in rep.decisions] == \
            [("short", "md", 3, 0, 0, "none fit")]
        assert rep.decisions[0].log_line() == "short/md: ready=3 (0 fit) pending=0 running=0 -> submit 0 (none fit)"
        # the demand is counted once per cycle (issue 16 item 12) by one aggregation (issue 18), and the cycle
        # says how many queries it ran
        asked = counting.counts[n_before:]
        assert [q["aggregate"][0]["$match"] for q in asked if "aggregate" in q] == \
            [{"state": {"$in": ["READY", "RUNNING"]}, "spec._category": {"$in": ["md"]}}]
        assert rep.db_queries >= len(asked) > 0
    assert launchpad.db["pilots"].count_documents({}) == 0
    assert fw_states(launchpad) == {"READY": 3}

    report = gather_status(launchpad.db, cfg)
    [t] = report.too_long
    assert (t.category, t.count, t.longest, t.usable, t.clusters) == \
        ("md", 3, float(SEGMENT), float(SHORT_WALLTIME - SHORT_MARGIN), ["short"])
    assert t.fw_ids == sorted(ids)
    text = format_status(report)
    assert "no pilot will take them" in text
    assert "more than 1 min 10 s (spec._pilot.walltime up to 4 h)" in text

    # a segment that sizes itself to a pilot's time (min_walltime 60 s fits the 70 s) is not "too long"
    launchpad.fireworks.update_one({"fw_id": ids[0]}, {"$set": {"spec._pilot.min_walltime": 60}})
    [t] = gather_status(launchpad.db, cfg).too_long
    assert (t.count, t.fw_ids) == (2, sorted(set(ids) - {ids[0]}))


def test_pinned_fireworks_cost_no_pilot(env, launchpad):
    tmp, lp_file = env
    cfg = load_config(write_config(tmp / "cfg", lp_file, {"short": short_cluster(tmp, lp_file)}))
    # pins no pilot can carry: another machine's FWorker, and a name of the pilots' own form (CLUSTER-JOBID)
    add_fw(launchpad, walltime=30, fworker="my-laptop")
    add_fw(launchpad, walltime=30, fworker="short-4242")
    mgr = Manager(cfg, launchpad)
    for _ in range(3):
        rep = mgr.run_cycle()
        assert rep.submitted == []
        assert [(d.ready, d.fits, d.submit, d.reason) for d in rep.decisions] == [(2, 0, 0, "none fit")]
    assert launchpad.db["pilots"].count_documents({}) == 0
    # pilot status says why they wait
    report = gather_status(launchpad.db, cfg)
    [w] = report.warnings
    assert w.startswith("category md: 2 READY Firework(s) pinned to FWorker my-laptop, short-4242 (spec._fworker)")
    assert "no pilot will take them" in w
    assert f"warning: {w}" in format_status(report)
    # an unpinned Firework beside them is demand: one pilot for it, not three (a dry run: decide only)
    add_fw(launchpad, walltime=30)
    mgr.dry_run = True
    [d] = mgr.run_cycle().decisions
    assert (d.ready, d.fits, d.submit, d.reason) == (3, 1, 1, "demand")


def test_two_clusters_long_work_goes_only_where_it_fits(env, launchpad):
    tmp, lp_file = env
    cfg = load_config(write_config(tmp / "cfg", lp_file, {
        "short": short_cluster(tmp, lp_file),
        "long": local_cluster(tmp / "work2", lp_file, ["md"], pilot={"walltime": 20000}, walltime_margin=600,
                              fireworks_per_pilot=1)}))
    for i in range(2):
        add_fw(launchpad, walltime=SEGMENT, name=f"seg-{i}")
    mgr = Manager(cfg, launchpad, dry_run=True)
    out = {d.cluster: d for d in mgr.run_cycle().decisions}
    # each 4-hour segment fills a 20000 s pilot (19400 s usable): one pilot per segment, all on "long"
    assert (out["long"].fits, out["long"].submit, out["long"].reason) == (2, 2, "demand")
    assert (out["short"].fits, out["short"].submit, out["short"].reason) == (0, 0, "none fit")


# ---------------------------------------------------------------------------------------------- fworker_query
def test_fworker_query_bounds_demand_and_what_the_pilots_take(env, launchpad, monkeypatch):
    """The cluster file's fworker_query is ANDed into the demand and reaches the worker (``--query``): the
    one pilot takes the matching Firework and leaves the other READY."""
    tmp, lp_file = env
    # render with this checkout's templates (an installed copy elsewhere may be older than the code under test)
    monkeypatch.setitem(sys.modules, "pilot.templates", importlib.import_module("templates"))
    cfg = load_config(write_config(tmp / "cfg", lp_file, {"short": short_cluster(
        tmp, lp_file, fworker_query={"spec.site": {"$in": ["short", "any"]}}, fireworks_per_pilot=1)}))
    mine = add_fw(launchpad, walltime=5, site="short", name="mine")
    other = add_fw(launchpad, walltime=5, site="elsewhere", name="other")
    add_fw(launchpad, walltime=5, name="untagged")     # no spec.site: the query does not match it either
    mgr = Manager(cfg, launchpad)
    first = mgr.run_cycle()
    [d] = first.decisions
    assert (d.ready, d.fits, d.submit, d.reason) == (3, 1, 1, "demand")
    [sub] = first.submitted
    text = (tmp / "work" / "scripts" / f"{sub['job_name']}.sh").read_text()
    assert """--query '{"spec.site":{"$in":["short","any"]}}'""" in text
    run_cycles_until(mgr, lambda: state(launchpad, mine) == "COMPLETED", timeout=90)
    run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents(
        {"state": {"$in": ["SUBMITTING", "PENDING", "RUNNING"]}}) == 0, timeout=60)
    assert completed_launches_per_fw(launchpad).get(other, 0) == 0
    assert state(launchpad, other) == "READY"
    assert launchpad.db["pilots"].count_documents({}) == 1


def test_fworker_query_must_be_plain_json(env):
    from pilot.config import ConfigError

    tmp, lp_file = env
    cdir = write_config(tmp / "cfg", lp_file, {"short": short_cluster(
        tmp, lp_file, fworker_query={"$where": "this.x == 1"})})
    with pytest.raises(ConfigError) as e:
        load_config(cdir)
    assert "fworker_query" in str(e.value) and "$where" in str(e.value)


def test_worker_query_ands_the_cluster_query_and_stays_the_same_on_every_read(launchpad, tmp_path):
    """``pilot worker --query``: ANDed with the wall-time filter; FireWorks' ``FWorker.query`` extends a top-level
    ``$and`` in place when it also sees ``$or``, so the worker must not hand it both (the query would grow)."""
    from pilot.worker import Worker, WorkerConfig

    lp = launchpad
    fits = add_fw(lp, walltime=30, site="beta")
    add_fw(lp, walltime=30, site="alpha")                # the cluster query says no
    add_fw(lp, walltime=SEGMENT, site="beta")            # too long for 70 s
    add_fw(lp, site="beta", fworker="beta-1")            # pinned to another worker
    mine = add_fw(lp, site="beta", fworker="beta-2")     # pinned to this worker: FireWorks gives it to us
    w = Worker(WorkerConfig(launchpad_file=tmp_path / "lp.yaml", categories=("md",), name="beta-2", deadline=None,
                            query={"spec.site": "beta"}))
    fworker = w.fworker(70.0)
    first = fworker.query
    assert fworker.query == first                        # reading it twice changes nothing
    got = {d["fw_id"] for d in lp.fireworks.find({"state": "READY", **first}, {"fw_id": 1})}
    assert got == {fits, mine}
    # the demand for a fresh pilot of that cluster: the same, less the pinned one
    d = gather_demand(lp.fireworks, [PilotOffer("beta", ("md",), 70.0, query={"spec.site": "beta"})])
    assert d.by_cluster[("beta", "md")].ready == 1
