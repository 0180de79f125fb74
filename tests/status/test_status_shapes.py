"""``pilot status`` reads the demand groups first and runs its waiting-work filters only where a group says they
may find something (:mod:`pilot.status.shapes`). The answer must not change: here the same LaunchPad is read
with and without the demand indexes (without them no groups are read and every filter runs, as the database
answers it), over Fireworks whose ``spec._pilot`` and ``spec._fworker`` hold every kind of value the fit rule
distinguishes (missing, null, numbers, strings, booleans, arrays).
"""

from __future__ import annotations

import time

from fireworks import Firework, ScriptTask, Workflow

from pilot.manager.demand import DEMAND_INDEXES, ensure_demand_indexes
from pilot.status import gather_status
from tests.config import test_config
from tests.status.test_status_profiles import _config

files = test_config.files  # the fixture: a key, a known_hosts and a LaunchPad file

#: (spec._pilot, spec._fworker) of the Fireworks: gpu1's profiles take <= 8 cores for 1.83 h, or <= 4 cores
#: with a GPU for 50 min
ASKS = [({}, None), ({"walltime": 600}, None), ({"walltime": 86400}, None),
        ({"walltime": 86400, "min_walltime": 60}, None), ({"walltime": [86400, 100]}, None),
        ({"walltime": "3600"}, None), ({"walltime": True}, None),
        ({"walltime": None, "cores": 16}, None), ({"cores": [16, 2]}, None), ({"cores": 4, "gpus": 1}, None),
        ({"gpus": 2}, None), ({"gpus": 1, "walltime": 5400}, None), ({"memory": 10 ** 9}, None),
        ({"cores": "16"}, None), ({}, "gpu1"), ({}, "someone-else"), ({"walltime": 600}, ["x", "y"]),
        ({}, []), ({}, ["gpu1"]), ({}, 7)]


def _add(lp, asks: dict, pin) -> int:
    spec = {"_category": "md", "_pilot": asks}
    if pin is not None:
        spec["_fworker"] = pin
    fw = Firework([ScriptTask.from_str("true")], name="w", spec=spec)
    old_id = fw.fw_id   # add_wf gives the Firework its new id
    return int(lp.add_wf(Workflow([fw]))[old_id])


def _answer(report) -> tuple:
    return ([(t.category, t.count, t.fw_ids, t.longest, t.usable) for t in report.too_long],
            [(t.category, t.count, t.fw_ids, t.profiles) for t in report.too_big], report.warnings)


def _indexes(lp) -> set[str]:
    return {spec["key"][0][0] for spec in lp.fireworks.index_information().values()}


def test_the_groups_change_no_answer(launchpad, tmp_path, files):
    cfg = _config(tmp_path, files)
    for asks, pin in ASKS:
        _add(launchpad, asks, pin)
    now = time.time()
    assert not set(DEMAND_INDEXES) & _indexes(launchpad)
    plain = gather_status(launchpad.db, cfg, now=now)
    assert ensure_demand_indexes(launchpad.fireworks) is None
    assert set(DEMAND_INDEXES) <= _indexes(launchpad)
    grouped = gather_status(launchpad.db, cfg, now=now)
    assert _answer(grouped) == _answer(plain)
    too_long, too_big, warnings = _answer(plain)
    # the database found each kind: the groups had something to agree with
    assert too_long and too_big and any("someone-else" in w for w in warnings)


def test_nothing_waiting_costs_no_filter(launchpad, tmp_path, files):
    """Work every profile takes: with the groups, none of the three filters runs."""
    cfg = _config(tmp_path, files)
    for asks in ({}, {"walltime": 600}, {"cores": 4, "gpus": 1}, {"cores": 8}):
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
