"""Grid Engine adapter: parsers against real outputs (fixtures/scheduler/sge.yaml) and argv builders."""

from __future__ import annotations

import logging

import pytest

from queue_adapters import JobState, SgeAdapter, get_adapter
from queue_adapters.sge import SGE_STATE_LETTERS, sge_state
from tests.adapters.test_base import check_case, load_cases


@pytest.mark.parametrize("case", load_cases("sge"))
def test_fixture(case: dict, caplog: pytest.LogCaptureFixture) -> None:
    check_case(SgeAdapter(), case, caplog)


def test_commands() -> None:
    a = get_adapter("sge")
    assert a.submit_command("/h/p.sh") == ["qsub", "-terse", "/h/p.sh"]
    assert a.status_command() == ["qstat", "-xml", "-u", "*"]
    assert a.status_command(["12"], user="pilot") == ["qstat", "-xml", "-u", "pilot"]
    assert a.history_command(["12"]) == ["qacct", "-j", "12"]
    assert a.history_command(["12", "13"]) == ["qacct", "-j", "12"]
    assert a.history_max_ids == 1
    assert a.history_command([]) is None
    assert a.cancel_command(["12", "13"]) == ["qdel", "12", "13"]
    assert a.job_id_env == "JOB_ID"
    with pytest.raises(ValueError):
        a.cancel_command(["-u"])


@pytest.mark.parametrize("code,state", [
    # states printed in the reference outputs sge-05/08/09/10 and their qstat(1) meaning
    ("r", JobState.RUNNING), ("qw", JobState.PENDING), ("hqw", JobState.HELD), ("Eqw", JobState.HELD),
    ("hr", JobState.RUNNING), ("t", JobState.RUNNING), ("Rr", JobState.RUNNING), ("Tr", JobState.SUSPENDED),
    ("T", JobState.SUSPENDED), ("S", JobState.SUSPENDED), ("s", JobState.SUSPENDED), ("N", JobState.SUSPENDED),
    ("P", JobState.SUSPENDED), ("h", JobState.HELD), ("E", JobState.HELD), ("w", JobState.PENDING),
    ("dr", JobState.COMPLETING), ("dt", JobState.COMPLETING)])
def test_state_combinations(code: str, state: JobState) -> None:
    assert sge_state(code) is state


def test_every_letter_is_known_and_unknown_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        for letter in SGE_STATE_LETTERS:
            assert sge_state(letter) is not JobState.UNKNOWN
        assert not caplog.records
        assert sge_state("qwX") is JobState.UNKNOWN
        assert sge_state("") is JobState.UNKNOWN
    assert len([r for r in caplog.records if "unknown native job state" in r.getMessage()]) == 2
