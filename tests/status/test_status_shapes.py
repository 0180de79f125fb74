"""``pilot status`` reads the demand groups first and runs its waiting-work filters only where a group may match
(:mod:`pilot.status.shapes`). The answer must not change. Two views: each Firework alone (the database's answer
to each filter narrowed to its ``fw_id`` against the predicate for its group: a predicate may say "may match" too
often, never too seldom), and the whole report read with and without the demand indexes (without them no groups
are read and every filter runs). The Fireworks hold every kind of value the fit rule and the grouping tell apart:
missing, null, numbers of each type, strings, booleans beside equal numbers, arrays, sub-documents, Decimal128.
"""

from __future__ import annotations

import time

from bson import Decimal128, Int64
from fireworks import Firework, ScriptTask, Workflow

from pilot.fit import WALLTIME
from pilot.manager.demand import DEMAND_INDEXES, demand_pipeline, ensure_demand_indexes, groups_of
from pilot.manager.profiles import offers_of
from pilot.status import gather_status
from pilot.status.shapes import (
    BIG_FIELDS,
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
from tests.config import test_config
from tests.status.test_status_profiles import _config

files = test_config.files  # the fixture: a key, a known_hosts and a LaunchPad file
FWORKER = "spec._fworker"

#: (spec._pilot, spec._fworker) of the Fireworks: gpu1's profiles take <= 8 cores for 1.83 h, or <= 4 cores
#: with a GPU for 50 min
ASKS = [
    ({}, None), ({"walltime": 600}, None), ({"walltime": 86400}, None),
    ({"walltime": 86400, "min_walltime": 60}, None), ({"walltime": [86400, 100]}, None),
    ({"walltime": "3600"}, None), ({"walltime": True}, None), ({"walltime": 1}, None),
    ({"walltime": Int64(86400)}, None),
    ({"walltime": None, "cores": 16}, None), ({"cores": [16, 2]}, None), ({"cores": 4, "gpus": 1}, None),
    ({"gpus": 0}, None), ({"gpus": False}, None), ({"gpus": 1}, None), ({"gpus": True}, None), ({"gpus": 2}, None),
    ({"gpus": 1, "walltime": 5400}, None), ({"memory": 10 ** 9}, None), ({"cores": "16"}, None),
    ({"walltime": {"s": 86400}}, None), ({"walltime": [[86400]]}, None), ({"walltime": [{"s": 1}]}, None),
    ({}, "gpu1"), ({}, "someone-else"), ({"walltime": 600}, ["x", "y"]), ({}, []), ({}, ["gpu1"]), ({}, [None]),
    ({}, ["gpu1", "x"]), ({}, 7), ({}, 0), ({}, False),
]


def _add(lp, asks, pin) -> int:
    spec = {"_category": "md", "_pilot": asks}
    if pin is not None:
        spec["_fworker"] = pin
    fw = Firework([ScriptTask.from_str("true")], name="w", spec=spec)
    old_id = fw.fw_id   # add_wf gives the Firework its new id
    return int(lp.add_wf(Workflow([fw]))[old_id])


def _campaign(lp) -> list[int]:
    ids = [_add(lp, asks, pin) for asks, pin in ASKS]
    # a _pilot that is an array of documents, and a RUNNING Firework with a Decimal128 (the groups read RUNNING
    # ones never; the manager's aggregation does)
    ids.append(_add(lp, {}, None))
    lp.fireworks.update_one({"fw_id": ids[-1]}, {"$set": {"spec._pilot": [{"walltime": [100000, 200000]}]}})
    running = _add(lp, {}, None)
    lp.fireworks.update_one({"fw_id": running}, {"$set": {"state": "RUNNING",
                                                          "spec._pilot.walltime": Decimal128("600")}})
    return ids


def _answer(report) -> tuple:
    return ([(t.category, t.count, t.fw_ids, t.longest, t.usable) for t in report.too_long],
            [(t.category, t.count, t.fw_ids, t.profiles) for t in report.too_big], report.warnings)


def _indexes(lp) -> set[str]:
    return {spec["key"][0][0] for spec in lp.fireworks.index_information().values()}


def _kinds(cfg) -> dict:
    """Each filter with its group predicate and the fields it may be narrowed by."""
    offers = offers_of("gpu1", cfg.clusters["gpu1"])
    best = max(o.usable_seconds for o in offers)
    live = ["gpu1"]
    return {"too long": (too_long_query("md", best), lambda g: longer_than(g, best), [("walltime", WALLTIME)]),
            "too big": (too_big_query("md", offers, best), lambda g: too_big_for(g, offers, best), BIG_FIELDS),
            "pinned": (pinned_query(["md"], live), lambda g: pinned_elsewhere(g, live), [("fworker", FWORKER)])}


def test_each_firework_the_database_finds_is_a_suspect(launchpad, tmp_path, files):
    cfg = _config(tmp_path, files)
    ids = _campaign(launchpad)
    ensure_demand_indexes(launchpad.fireworks)
    kinds = {k: (query, test) for k, (query, test, _fields) in _kinds(cfg).items()}
    _match, group = demand_pipeline(["md"])
    found = {k: 0 for k in kinds}
    for fw_id in ids:
        rows = list(launchpad.fireworks.aggregate([{"$match": {"fw_id": fw_id, "state": "READY"}}, group]))
        groups = groups_of(rows, {"md"})
        assert sum(g.n for g in groups["md"]) == 1, fw_id
        for kind, (query, test) in kinds.items():
            if launchpad.fireworks.count_documents({**query, "fw_id": fw_id}):
                found[kind] += 1
                assert may_hold(groups, "md", test), (kind, launchpad.fireworks.find_one({"fw_id": fw_id})["spec"])
    assert all(found.values()), found   # the database found each kind: the predicates had something to agree with


def _ids(lp, query) -> list[int]:
    return sorted(d["fw_id"] for d in lp.fireworks.find(query, {"fw_id": 1}))


def test_narrowed_filters_find_what_the_filters_find(launchpad, tmp_path, files):
    """Each filter narrowed by the values of the groups it may find (the index then hands over a few
    candidates) finds the same Fireworks: narrowed on plain values, and right on the odd ones."""
    cfg = _config(tmp_path, files)
    for asks, pin in ([{"cores": 16}, None], [{"walltime": 86400}, None], [{}, "someone-else"], [{}, None]):
        _add(launchpad, asks, pin)
    ensure_demand_indexes(launchpad.fireworks)
    groups = ready_groups(launchpad.db, ["md"])
    for kind, (query, test, fields) in _kinds(cfg).items():
        narrow = narrowed(query, groups, ["md"], test, fields)
        assert "$and" in narrow and len(_ids(launchpad, narrow)) == 1 and _ids(launchpad, narrow) == \
            _ids(launchpad, query), kind
    # a group's one value stands for values of several types, or for values that equal nothing (NaN): the
    # narrowed filter still finds every one (or is not narrowed); set after add_wf, which stores them as text
    for asks, pin in ([{"walltime": 86400.0}, None], [{"walltime": Int64(86400)}, None], [{"cores": True}, None],
                      [{"cores": 1}, None], [{"gpus": False}, None], [{"gpus": 0}, None], [{}, True], [{}, 1]):
        _add(launchpad, asks, pin)
    for field, value in (("spec._pilot.walltime", float("nan")), ("spec._fworker", Decimal128("1")),
                         ("spec._pilot.cores", float("nan"))):
        launchpad.fireworks.update_one({"fw_id": _add(launchpad, {}, None)}, {"$set": {field: value}})
    groups = ready_groups(launchpad.db, ["md"])
    for kind, (query, test, fields) in _kinds(cfg).items():
        found = _ids(launchpad, query)
        assert _ids(launchpad, narrowed(query, groups, ["md"], test, fields)) == found, kind
        assert len(found) > 1, kind


def test_the_groups_change_no_answer(launchpad, tmp_path, files):
    cfg = _config(tmp_path, files)
    _campaign(launchpad)
    now = time.time()
    assert not set(DEMAND_INDEXES) & _indexes(launchpad)
    plain = gather_status(launchpad.db, cfg, now=now)
    assert ensure_demand_indexes(launchpad.fireworks) is None
    assert set(DEMAND_INDEXES) <= _indexes(launchpad)
    grouped = gather_status(launchpad.db, cfg, now=now)
    assert _answer(grouped) == _answer(plain)
    too_long, too_big, warnings = _answer(plain)
    assert too_long and too_big and any("someone-else" in w for w in warnings)


def test_nothing_waiting_costs_no_filter(launchpad, tmp_path, files):
    """Work every profile takes: with the groups, none of the three filters runs."""
    cfg = _config(tmp_path, files)
    for asks in ({}, {"walltime": 600}, {"cores": 4, "gpus": 1}, {"cores": 8}, {"walltime": [600, 86400]}):
        _add(launchpad, asks, None)
    _add(launchpad, {}, "gpu1")    # pinned to the cluster's FWorker name: its demand, not listed
    now = time.time()
    plain = gather_status(launchpad.db, cfg, now=now)
    ensure_demand_indexes(launchpad.fireworks)
    grouped = gather_status(launchpad.db, cfg, now=now)
    assert _answer(grouped) == _answer(plain) == ([], [], [])
    # without groups: the index list plus too-long's, too-big's and the pin filter's queries (and the live
    # pilots' names); with them: the index list and the aggregation instead
    assert plain.queries - grouped.queries >= 2
