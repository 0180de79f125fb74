"""The seed-scale replay benchmark (``benchmarks/replay.py``) at its smoke size: what any correct campaign keeps.

Not a benchmark and no timing assertions. The replay drives the real manager (in its own process) and a real
LaunchPad with simulated pilots on simulated SLURM clusters; these checks hold whatever the policy decides:
every segment of every run completed exactly once and in order, nothing left RUNNING, every attempt either
completed its segment or was killed, every killed segment rerun by the manager, and no number below its
lower bound. The expected values come from FireWorks' own documents (the benchmark's audit reads the
Fireworks and launches) and from the simulation's bookkeeping, never from the manager's reports alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import replay


@pytest.fixture(scope="module")
def res() -> dict[str, Any]:
    return replay.run("smoke", log=lambda _msg: None)


def test_every_segment_completed_once_in_order(res: dict[str, Any]) -> None:
    audit = res["audit"]
    assert audit["problems"] == [], audit["problems"]
    assert res["complete"] is True and res["runs_finished"] == res["runs"] == replay.SIZES["smoke"]["runs"]
    # every md Firework COMPLETED by exactly one launch, none RUNNING, RESERVED, READY or FIZZLED
    assert audit["states"] == {"COMPLETED": res["segments_done"]}
    # a killed segment keeps its last checkpoint and its rerun runs a whole segment from there, so each kill can
    # save a run at most one segment's completion (it keeps less than a segment of work)
    assert audit["completed_launches"] == res["segments_done"] >= res["runs"] * res["segments"] - res["killed"]
    assert res["out_of_order"] == 0


def test_kills_and_reruns_add_up(res: dict[str, Any]) -> None:
    audit = res["audit"]
    # an attempt either completed its segment or was killed under it (FireWorks counts the launches)
    assert audit["attempts"] == res["attempts"] == res["segments_done"] + res["killed"]
    # smoke's nodes fail every 4 hours on average: the path where the manager reruns lost work must have run
    assert res["killed"] >= 1, res["killed_by"]
    # each killed segment's Firework was put back to READY by the manager once, and counted once
    assert res["manager_reruns"] == res["killed"] == audit["reruns_counted"]
    assert res["manager_fizzled"] == 0
    # a killed segment loses at most what it ran since its last checkpoint
    assert 0 <= res["redone_s"] <= res["killed"] * 900


def test_no_number_below_its_bound(res: dict[str, Any]) -> None:
    assert res["pilots_submitted"] >= res["pilots_started"] >= res["min_pilots"] >= 1
    assert res["makespan_s"] >= res["makespan_lower_bound_s"] > 0
    assert 0 <= res["busy_s"] <= res["pilot_s"] and res["idle_s"] >= 0
    # the pilots' busy time is the campaign's work plus what killed segments lost, to the second
    assert res["busy_s"] == pytest.approx(res["useful_s"] + res["redone_s"], abs=1e-3)


def test_the_manager_ran_its_real_cycle(res: dict[str, Any]) -> None:
    # every scheduler command was one the simulated SLURM knows (else it answers "command not found")
    for name, c in res["clusters"].items():
        assert c["unknown_commands"] == [], (name, c["unknown_commands"])
    assert res["manager_cycle_errors"] == 0
    assert res["manager_cycles"] >= 2 and res["manager_db_commands"] > 0
    assert sum(c["commands"].get("sbatch", 0) for c in res["clusters"].values()) == res["pilots_submitted"]
    assert res["manager"]["peak_rss_mib"] > 0 and res["manager"]["cpu_s"] > 0
