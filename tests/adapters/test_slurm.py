"""SLURM adapter: parsers against real outputs (tests/fixtures/scheduler/slurm.yaml) and argv builders."""

from __future__ import annotations

import logging

import pytest

from queue_adapters import JobState, SchedulerQueryError, SlurmAdapter, SubmitOutcome, get_adapter
from queue_adapters.slurm import SLURM_SHORT_STATES, SLURM_STATES
from tests.adapters.test_base import check_case, load_cases

FINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL}


@pytest.fixture
def adapter() -> SlurmAdapter:
    return SlurmAdapter()


@pytest.mark.parametrize("case", load_cases("slurm"))
def test_fixture(adapter: SlurmAdapter, case: dict, caplog: pytest.LogCaptureFixture) -> None:
    check_case(adapter, case, caplog)


# ----------------------------------------------------------------------------- argv builders
def test_submit_command(adapter: SlurmAdapter) -> None:
    assert adapter.submit_command("/home/u/pilots/fwp.md.ab12.sh") == [
        "sbatch", "--parsable", "/home/u/pilots/fwp.md.ab12.sh"]
    assert adapter.submit_command("dir with space/x.sh") == ["sbatch", "--parsable", "dir with space/x.sh"]
    with pytest.raises(ValueError):
        adapter.submit_command("")


def test_status_command(adapter: SlurmAdapter) -> None:
    base = ["env", "SLURM_TIME_FORMAT=%s", "squeue", "--noheader", "--array", "--states=all",
            "--format=%i|%T|%r|%u|%V|%S|%e|%j"]
    assert adapter.status_command() == base
    assert adapter.status_command(user="pilot") == base + ["-u", "pilot"]
    assert adapter.status_command(["17", "19_1"], user="pilot", name_prefix="fwp.") == base + [
        "-j", "17,19_1", "-u", "pilot"]
    assert adapter.status_command([]) == base
    with pytest.raises(ValueError):
        adapter.status_command(["17", "-u root"])


def test_history_command(adapter: SlurmAdapter) -> None:
    assert adapter.history_command(["17", "18"]) == [
        "env", "SLURM_TIME_FORMAT=%s", "sacct", "-P", "-X", "-n", "-o",
        "JobID,State,ExitCode,Submit,Start,End,Reason,User,JobName", "-j", "17,18"]
    assert adapter.history_command([]) is None


def test_cancel_command(adapter: SlurmAdapter) -> None:
    assert adapter.cancel_command(["17", "18"]) == ["scancel", "-v", "17", "18"]
    with pytest.raises(ValueError):
        adapter.cancel_command([])
    with pytest.raises(ValueError):
        adapter.cancel_command(["--signal=KILL"])


def test_adapter_attributes(adapter: SlurmAdapter) -> None:
    assert adapter.name == "slurm"
    assert adapter.job_id_env == "SLURM_JOB_ID"
    assert adapter.submit_stdin_from_script is False
    assert "name_prefix" not in adapter.filters_server_side
    assert isinstance(get_adapter("slurm"), SlurmAdapter)


# ----------------------------------------------------------------------------- state tables
@pytest.mark.parametrize("code", sorted(SLURM_STATES) + sorted(SLURM_SHORT_STATES))
def test_every_listed_state_code_is_known(adapter: SlurmAdapter, code: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    out = f"1|{code}|None|u|N/A|N/A|N/A|fwp.md.a1\n"
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        status = adapter.parse_status(0, out, "")["1"]
    assert status.state is not JobState.UNKNOWN
    assert not caplog.records


def test_short_and_long_codes_agree() -> None:
    pairs = {"BF": "BOOT_FAIL", "CA": "CANCELLED", "CD": "COMPLETED", "CF": "CONFIGURING",
             "CG": "COMPLETING", "DL": "DEADLINE", "F": "FAILED", "NF": "NODE_FAIL",
             "OOM": "OUT_OF_MEMORY", "PD": "PENDING", "PR": "PREEMPTED", "R": "RUNNING",
             "RD": "RESV_DEL_HOLD", "RF": "REQUEUE_FED", "RH": "REQUEUE_HOLD", "RQ": "REQUEUED",
             "RS": "RESIZING", "RV": "REVOKED", "SI": "SIGNALING", "SE": "SPECIAL_EXIT",
             "SO": "STAGE_OUT", "ST": "STOPPED", "S": "SUSPENDED", "TO": "TIMEOUT"}
    assert set(pairs) == set(SLURM_SHORT_STATES)
    assert set(pairs.values()) == set(SLURM_STATES)
    for short, long in pairs.items():
        assert SLURM_SHORT_STATES[short] is SLURM_STATES[long], short


def test_final_states_are_the_documented_terminal_ones() -> None:
    # squeue(1)/sacct(1): these codes describe jobs that have terminated.
    terminal = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"}
    assert {code for code, state in SLURM_STATES.items() if state in FINAL} == terminal


def test_timeout_is_not_a_failure() -> None:
    assert SLURM_STATES["TIMEOUT"] is JobState.TIMEOUT
    assert SLURM_STATES["DEADLINE"] is JobState.TIMEOUT


@pytest.mark.parametrize("reason,state", [("JobHeldUser", JobState.HELD), ("JobHeldAdmin", JobState.HELD),
                                          ("Priority", JobState.PENDING), ("BeginTime", JobState.PENDING)])
def test_pending_reason_decides_held(adapter: SlurmAdapter, reason: str, state: JobState) -> None:
    out = f"5|PENDING|{reason}|pilot|1795239147|N/A|N/A|fwp.md.bbbb2222\n"
    assert adapter.parse_status(0, out, "")["5"].state is state


def test_unknown_state_gives_unknown_and_a_warning(adapter: SlurmAdapter,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    out = "7|LAUNCH_FAILED|None|pilot|1795239147|N/A|N/A|fwp.md.a1\n8|RUNNING|None|pilot|1|2|NONE|x\n"
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        result = adapter.parse_status(0, out, "")
    assert result["7"].state is JobState.UNKNOWN
    assert result["7"].native_state == "LAUNCH_FAILED"
    assert result["8"].state is JobState.RUNNING
    assert any("LAUNCH_FAILED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ----------------------------------------------------------------------------- edge cases
def test_name_with_delimiters_is_kept_whole(adapter: SlurmAdapter) -> None:
    out = "20|PENDING|BeginTime|pilot|1795239147|1795242747|NONE|a|b||c|\n"
    assert adapter.parse_status(0, out, "")["20"].name == "a|b||c|"


def test_non_job_lines_are_skipped(adapter: SlurmAdapter) -> None:
    out = ("CLUSTER: pilotci\nWelcome to the cluster | motd | x\n"
           "17|RUNNING|None|pilot|1795239147|1795239147|NONE|fwp.md.aaaa1111\n\n")
    # below a CLUSTER: line a job is filed under id;cluster too (the key of a federated pilot)
    assert sorted(adapter.parse_status(0, out, "")) == ["17", "17;pilotci"]


def test_cluster_header_with_socket_timeout_is_an_error(adapter: SlurmAdapter) -> None:
    with pytest.raises(SchedulerQueryError) as info:
        adapter.parse_status(0, "CLUSTER: saturn\n", "slurm_load_jobs error: Socket timed out on send/recv operation\n")
    assert info.value.retryable


def test_failed_query_without_message_is_an_error(adapter: SlurmAdapter) -> None:
    with pytest.raises(SchedulerQueryError):
        adapter.parse_status(1, "", "")
    with pytest.raises(SchedulerQueryError) as info:
        adapter.parse_history(-9, "", "")
    assert info.value.retryable


def test_requeued_job_last_sacct_record_wins(adapter: SlurmAdapter) -> None:
    out = ("30|REQUEUED|0:0|1795239147|1795239150|1795239160|None|pilot|fwp.md.x1\n"
           "30|RUNNING|0:0|1795239147|1795239170|Unknown|None|pilot|fwp.md.x1\n")
    assert adapter.parse_history(0, out, "")["30"].state is JobState.RUNNING


def test_reused_job_id_latest_submission_wins(adapter: SlurmAdapter) -> None:
    # sacct lists every job that ever had the id once slurmctld restarted without its state
    out = ("40|COMPLETED|0:0|1795239999|1795240000|1795240010|None|pilot|fwp.md.new1\n"
           "40|FAILED|1:0|1700000000|1700000001|1700000002|None|other|old_job\n")
    st = adapter.parse_history(0, out, "")["40"]
    assert (st.state, st.name) == (JobState.COMPLETED, "fwp.md.new1")


@pytest.mark.parametrize("exit_code,expected", [("0:0", 0), ("3:0", 3), ("0:15", 143), ("0:9", 137),
                                                ("1:0", 1), ("0:125", 0), ("garbage", None)])
def test_sacct_exit_codes(adapter: SlurmAdapter, exit_code: str, expected: int | None) -> None:
    out = f"31|FAILED|{exit_code}|1795239147|1795239150|1795239160|None|pilot|n\n"
    assert adapter.parse_history(0, out, "")["31"].exit_code == expected


def test_submit_unknown_when_exit_zero_but_no_id(adapter: SlurmAdapter) -> None:
    res = adapter.parse_submit(0, "sbatch: some site banner\n", "")
    assert res.outcome is SubmitOutcome.UNKNOWN and res.job_id is None


def test_submit_interrupted_is_unknown(adapter: SlurmAdapter) -> None:
    assert adapter.parse_submit(-15, "", "").outcome is SubmitOutcome.UNKNOWN


def test_submit_unrecognised_error_is_not_retryable(adapter: SlurmAdapter) -> None:
    res = adapter.parse_submit(1, "", "sbatch: error: Batch job submission failed: Something new\n")
    assert res.outcome is SubmitOutcome.FAILED and not res.retryable
    assert "Something new" in (res.reason or "")


def test_times_are_utc_aware(adapter: SlurmAdapter) -> None:
    status = adapter.parse_status(0, "17|RUNNING|None|pilot|1795239147|1795239148|NONE|n\n", "")["17"]
    assert status.start_time is not None and status.start_time.timestamp() == 1795239148
    assert status.submit_time is not None and status.submit_time.utcoffset().total_seconds() == 0
    assert status.end_time is None
