"""LSF adapter: parsers against real outputs (fixtures/scheduler/lsf.yaml) and argv builders."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from queue_adapters import JobState, LsfAdapter, SchedulerQueryError, get_adapter
from queue_adapters.lsf import BJOBS_FIELDS, LSF_STATES
from tests.adapters.test_base import check_case, load_cases

UTC = dt.timezone.utc


def CLOCK() -> dt.datetime:
    """A fixed clock, passed where the adapter takes one."""
    return dt.datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture
def adapter() -> LsfAdapter:
    return LsfAdapter(now=CLOCK)


@pytest.mark.parametrize("case", load_cases("lsf"))
def test_fixture(adapter: LsfAdapter, case: dict, caplog: pytest.LogCaptureFixture) -> None:
    check_case(adapter, case, caplog)


def test_commands(adapter: LsfAdapter) -> None:
    fields = ("jobid stat job_name user queue submit_time start_time finish_time exit_code "
              "exit_reason pend_reason delimiter='|'")
    assert BJOBS_FIELDS == fields
    assert adapter.submit_command("/home/u/p.sh") == ["bsub"]
    assert adapter.submit_stdin_from_script is True
    assert adapter.status_command() == ["bjobs", "-o", fields, "-json", "-a"]
    assert adapter.status_command(["11", "12[3]"], user="pilot", name_prefix="fwp.") == [
        "bjobs", "-o", fields, "-json", "-a", "-u", "pilot", "11", "12[3]"]
    assert adapter.history_command(["11"]) == ["bjobs", "-o", fields, "-json", "-a", "11"]
    assert adapter.history_command([]) is None
    assert adapter.cancel_command(["11", "22"]) == ["bkill", "11", "22"]
    for bad in (lambda: adapter.cancel_command([]), lambda: adapter.status_command(["1 2"]),
                lambda: adapter.submit_command("")):
        with pytest.raises(ValueError):
            bad()
    assert get_adapter("lsf").job_id_env == "LSB_JOBID"


def _record(**fields: str) -> str:
    return json.dumps({"COMMAND": "bjobs", "JOBS": 1, "RECORDS": [fields]})


@pytest.mark.parametrize("code", sorted(LSF_STATES))
def test_every_listed_state_is_known(adapter: LsfAdapter, code: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        st = adapter.parse_status(0, _record(JOBID="1", STAT=code), "")["1"]
    assert st.state is not JobState.UNKNOWN
    assert not caplog.records


def test_final_states_are_done_and_exit() -> None:
    final = {k for k, v in LSF_STATES.items() if v.final}
    assert final == {"DONE", "EXIT"}


@pytest.mark.parametrize("reason,state", [
    ("TERM_RUNLIMIT: job killed after reaching LSF run time limit", JobState.TIMEOUT),  # text of lsf-14
    ("TERM_OWNER: job killed by owner", JobState.CANCELLED),                          # ridgeback fixture
    ("TERM_MEMLIMIT: job killed after reaching LSF memory usage limit", JobState.FAILED),
    ("", JobState.FAILED),
])
def test_exit_reason_refines_exit(adapter: LsfAdapter, reason: str, state: JobState) -> None:
    out = _record(JOBID="7", STAT="EXIT", EXIT_CODE="130", EXIT_REASON=reason, FINISH_TIME="Feb  2 00:46")
    st = adapter.parse_status(0, out, "")["7"]
    assert st.state is state
    assert st.exit_code == 130
    assert st.end_time == dt.datetime(2024, 2, 2, 0, 46, tzinfo=UTC)


def test_full_record_of_our_field_list(adapter: LsfAdapter) -> None:
    out = _record(JOBID="3386667", STAT="PEND", JOB_NAME="fwp.md.ab12", USER="pilot", QUEUE="batch",
                  SUBMIT_TIME="May 28 12:45", START_TIME="", FINISH_TIME="", EXIT_CODE="", EXIT_REASON="",
                  PEND_REASON="New job is waiting for scheduling;")
    st = adapter.parse_status(0, out, "")["3386667"]
    assert (st.state, st.name, st.user, st.reason) == (
        JobState.PENDING, "fwp.md.ab12", "pilot", "New job is waiting for scheduling;")
    assert st.submit_time == dt.datetime(2024, 5, 28, 12, 45, tzinfo=UTC)
    assert st.start_time is None and st.exit_code is None


@pytest.mark.parametrize("text,expected", [
    ("Dec  31 23:48 L", dt.datetime(2023, 12, 31, 23, 48, tzinfo=UTC)),   # year wraps back (lsf-14 style)
    ("Jun  1 12:30", dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)),        # less than a day ahead: same year
    ("Jun  2 00:30", dt.datetime(2023, 6, 2, 0, 30, tzinfo=UTC)),         # more than a day ahead: last year
    ("May 28 12:45:01", dt.datetime(2024, 5, 28, 12, 45, 1, tzinfo=UTC)),  # -hms
    ("Aug  4 12:28:51 2014", dt.datetime(2014, 8, 4, 12, 28, 51, tzinfo=UTC)),
    ("garbage", None), ("-", None),
])
def test_year_less_times(adapter: LsfAdapter, text: str, expected: dt.datetime | None) -> None:
    st = adapter.parse_status(0, _record(JOBID="1", STAT="RUN", START_TIME=text), "")["1"]
    assert st.start_time == expected


def test_error_record_that_is_not_not_found_raises(adapter: LsfAdapter) -> None:
    with pytest.raises(SchedulerQueryError):
        adapter.parse_status(0, json.dumps({"RECORDS": [{"ERROR": "User permission denied"}]}), "")
    not_found = {"RECORDS": [{"JOBID": "9", "ERROR": "Job <9> is not found"}]}
    assert adapter.parse_status(255, json.dumps(not_found), "") == {}


def test_unknown_state_warns(adapter: LsfAdapter, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        st = adapter.parse_status(0, _record(JOBID="4", STAT="PDONE"), "")["4"]
    assert st.state is JobState.UNKNOWN
    assert any("PDONE" in r.getMessage() for r in caplog.records)


def test_bsub_unknown_and_retryable(adapter: LsfAdapter) -> None:
    assert adapter.parse_submit(0, "", "").outcome.name == "UNKNOWN"
    res = adapter.parse_submit(255, "", "User <pilot>: Pending job threshold reached. Job not submitted.\n")
    assert res.outcome.name == "FAILED" and res.retryable
    res = adapter.parse_submit(255, "Cannot connect to LSF. Please wait ...\n", "LSF is down; try later\n")
    assert res.outcome.name == "FAILED" and res.retryable
