"""A drained pilot (``drain: true`` in its record, as ``pilot drain`` writes it) finishes the Fireworks it runs
and takes no other: the single-slot loop and the packed loop, real worker processes on the real LaunchPad."""

from __future__ import annotations

import os

import pytest
from fireworks import ScriptTask

from tests.helpers import wait_for
from tests.worker.test_worker import add, assert_nothing_running
from tests.worker.test_worker import workers as workers  # noqa: PLC0414 - the fixture, used by name


def states(lp, category: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in lp.fireworks.find({"spec._category": category}, {"state": 1}):
        out[d["state"]] = out.get(d["state"], 0) + 1
    return out


@pytest.mark.parametrize("pack", [False, True], ids=["one-slot", "packed"])
def test_a_drained_pilot_finishes_what_it_runs_and_takes_nothing_more(launchpad, tmp_path, workers, pack):
    cat = "drain" + ("p" if pack else "s")
    rec = f"fwp.{cat}." + os.urandom(3).hex()
    launchpad.db["pilots"].insert_one({"_id": rec, "job_name": rec, "fworker": None, "state": "RUNNING"})
    for i in range(4):
        add(launchpad, ScriptTask.from_str("sleep 3"), f"{cat}-{i}", cat)
    slots = ["--cores", "2", "--pack"] if pack else []
    w = workers(launchpad, tmp_path, [cat], "--no-deadline", "--idle-timeout", "30", "--record", rec, *slots)
    running = 2 if pack else 1
    wait_for(lambda: states(launchpad, cat).get("RUNNING") == running, 60, 0.1, f"{running} Firework(s) running")
    launchpad.db["pilots"].update_one({"_id": rec}, {"$set": {"drain": True}})   # what `pilot drain` does
    assert w.wait(60) == 0, w.log()
    assert states(launchpad, cat) == {"COMPLETED": running, "READY": 4 - running}
    doc = launchpad.db["pilots"].find_one({"_id": rec})
    assert doc["exit"]["stop"] == "DRAINED" and doc["exit"]["fireworks"] == running, doc["exit"]
    assert "the cluster is drained" in doc["exit"]["reason"]
    assert f"{running} Fireworks run ({running} completed" in w.log()
    assert_nothing_running(launchpad)
