"""Tests of queue_adapters.base (state model, names, exit files) and shared fixture helpers.

The helpers at the top (:func:`load_cases`, :func:`check_case`) are imported by the
per-scheduler test modules: every scheduler keeps its real outputs and the hand-written
expected results in ``tests/fixtures/scheduler/<scheduler>.yaml``.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

import queue_adapters
from queue_adapters import (
    CancelResult,
    JobState,
    JobStatus,
    QueueAdapter,
    SchedulerQueryError,
    SubmitOutcome,
    SubmitResult,
    exit_file_name,
    filter_statuses,
    get_adapter,
    job_name,
    parse_exit_file,
    parse_job_name,
)
from queue_adapters.base import MAX_JOB_NAME

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scheduler"
UTC = dt.timezone.utc


# ----------------------------------------------------------------------------- helpers
def load_cases(scheduler: str) -> list[dict[str, Any]]:
    """The fixture cases of one scheduler file, as pytest params with readable ids."""
    data = yaml.safe_load((FIXTURES / f"{scheduler}.yaml").read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["id"]) for case in data["cases"]]


def _expected_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, dt.datetime):  # YAML may already have parsed an ISO time stamp
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return dt.datetime.fromisoformat(str(value))


def check_jobs(result: dict[str, JobStatus], expected: dict[str, dict[str, Any]]) -> None:
    """Exact job-id set; for each job only the listed fields are compared."""
    assert set(result) == set(expected), f"job ids differ: got {sorted(result)}, want {sorted(expected)}"
    for job_id, fields in expected.items():
        status = result[job_id]
        assert isinstance(status, JobStatus)
        assert status.job_id == job_id
        for key, want in fields.items():
            got = getattr(status, key)
            if key == "state":
                assert got is JobState[want], f"{job_id}: state {got} != {want}"
            elif key.endswith("_time"):
                assert got == _expected_time(want), f"{job_id}: {key} {got} != {want}"
                if got is not None:
                    assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)
            else:
                assert got == want, f"{job_id}: {key} {got!r} != {want!r}"


def check_case(adapter: QueueAdapter, case: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Run the parser named by ``case['parser']`` on the recorded output and compare."""
    rc, out, err = case["returncode"], case["stdout"], case["stderr"]
    expect = case["expect"]
    parser = case["parser"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        if parser == "submit":
            res = adapter.parse_submit(rc, out, err)
            assert isinstance(res, SubmitResult)
            assert res.outcome is SubmitOutcome[expect["outcome"]], res
            assert res.job_id == expect["job_id"], res
            assert res.retryable == expect["retryable"], res
            if res.outcome is not SubmitOutcome.SUBMITTED:
                assert res.reason, "a failed/unknown submission must say why"
            return
        if parser == "cancel":
            res = adapter.parse_cancel(rc, out, err, case.get("job_ids", []))
            assert isinstance(res, CancelResult)
            assert res.ok == expect["ok"], res
            assert res.cancelled == expect["cancelled"], res
            assert res.already_gone == expect["already_gone"], res
            assert res.retryable == expect["retryable"], res
            if not res.ok:
                assert res.reason, "a failed cancel must say why"
            return
        options = case.get("options") or {}
        method = getattr(adapter, f"parse_{parser}")
        kwargs = options if parser not in ("status", "history") else {}

        def call() -> Any:
            return method(rc, out, err, **kwargs)
        if "error" in expect:
            with pytest.raises(SchedulerQueryError) as info:
                call()
            assert info.value.retryable == expect["error"]["retryable"]
            assert info.value.output_tail, "the error must carry the command's output"
            return
        result = call()
    check_jobs(result, expect["jobs"])
    warned = [r for r in caplog.records if "unknown native job state" in r.getMessage()]
    if expect.get("warns"):
        assert warned, "an unknown state must be logged as a warning"
    else:
        assert not warned, [r.getMessage() for r in warned]


# ----------------------------------------------------------------------------- state model
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


def test_final_states_are_exactly_the_documented_ones() -> None:
    assert {s.name for s in JobState if s.final} == FINAL
    assert {s.name for s in JobState} == FINAL | {"PENDING", "HELD", "RUNNING", "SUSPENDED",
                                                  "COMPLETING", "UNKNOWN"}


def test_state_order_moves_forward_through_the_life_cycle() -> None:
    o = {s: s.order for s in JobState}
    assert o[JobState.UNKNOWN] < o[JobState.PENDING] == o[JobState.HELD]
    assert o[JobState.HELD] < o[JobState.RUNNING] == o[JobState.SUSPENDED] < o[JobState.COMPLETING]
    assert all(o[s] > o[JobState.COMPLETING] for s in JobState if s.final)
    assert len({o[s] for s in JobState if s.final}) == 1


def test_timeout_is_its_own_final_state_not_a_failure() -> None:
    assert JobState.TIMEOUT is not JobState.FAILED
    assert JobState.TIMEOUT.final


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name,cls_name,env", [
    ("slurm", "SlurmAdapter", "SLURM_JOB_ID"),
    ("pbs", "PbsAdapter", "PBS_JOBID"),
    ("torque", "PbsAdapter", "PBS_JOBID"),
    ("lsf", "LsfAdapter", "LSB_JOBID"),
    ("sge", "SgeAdapter", "JOB_ID"),
])
def test_get_adapter_known_names(name: str, cls_name: str, env: str) -> None:
    adapter = get_adapter(name)
    assert type(adapter).__name__ == cls_name
    assert isinstance(adapter, QueueAdapter)
    assert adapter.job_id_env == env
    assert get_adapter(name.upper()).name == adapter.name


def test_get_adapter_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        get_adapter("condor")
    message = str(info.value)
    for known in ("slurm", "pbs", "lsf", "sge", "local"):
        assert known in message


def test_get_adapter_time_zone_is_passed_on() -> None:
    tz = dt.timezone(dt.timedelta(hours=2))
    assert get_adapter("pbs", tz=tz).tz is tz
    assert get_adapter("slurm").tz is UTC


def test_only_lsf_reads_the_script_on_stdin() -> None:
    assert get_adapter("lsf").submit_stdin_from_script is True
    for name in ("slurm", "pbs", "torque", "sge"):
        assert get_adapter(name).submit_stdin_from_script is False


# ----------------------------------------------------------------------------- job names
def test_job_name_round_trip() -> None:
    name = job_name("md", "a1b2c3d4")
    assert name == "fwp.md.a1b2c3d4"
    assert parse_job_name(name) == ("md", "a1b2c3d4")


@pytest.mark.parametrize("category", [
    "md", "md.long", "gromacs-2022", "GPU/A100 queue", "é-unicode", "x" * 200, "a.b.c", "_"])
def test_job_name_is_valid_for_every_scheduler(category: str) -> None:
    name = job_name(category, "0123456789abcdef", prefix="pilot")
    assert len(name) <= MAX_JOB_NAME
    assert name[0].isalpha()
    assert all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in name), name
    parsed = parse_job_name(name, prefix="pilot")
    assert parsed is not None
    cat, uid = parsed
    assert uid == "0123456789abcdef"
    assert cat == "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.-") else "_"
                          for ch in category)[: len(cat)]


@pytest.mark.parametrize("category,uid,prefix", [
    ("", "abc", "fwp"), ("md", "", "fwp"), ("md", "a.b", "fwp"), ("md", "x" * 17, "fwp"),
    ("md", "abc", "1fwp"), ("md", "abc", "f-p"), ("md", "abc", ""), ("md", "abc", "toolongprefix")])
def test_job_name_rejects_bad_parts(category: str, uid: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        job_name(category, uid, prefix=prefix)


@pytest.mark.parametrize("name", [
    None, "", "fwp", "fwp.", "fwp.md", "fwp.md.", "other.md.abc", "fwpx.md.abc", "fwp..abc",
    "fwp.md.ab-c", "fwp.md/x.abc", "sleep300.sh", "fwp.md.dddd|pipe"])
def test_parse_job_name_rejects_foreign_names(name: str | None) -> None:
    assert parse_job_name(name) is None


def test_filter_statuses_by_prefix_and_user() -> None:
    def st(jid: str, name: str | None, user: str | None) -> JobStatus:
        return JobStatus(jid, JobState.RUNNING, "R", name=name, user=user)

    statuses = {"1": st("1", "fwp.md.a", "pilot"), "2": st("2", "other", "pilot"),
                "3": st("3", "fwp.md.b", "bob"), "4": st("4", None, "pilot"), "5": st("5", "fwp.x.c", None)}
    assert set(filter_statuses(statuses, name_prefix="fwp.")) == {"1", "3", "5"}
    assert set(filter_statuses(statuses, user="pilot")) == {"1", "2", "4"}
    assert set(filter_statuses(statuses, name_prefix="fwp.", user="pilot")) == {"1"}
    assert filter_statuses(statuses) == statuses


# ----------------------------------------------------------------------------- exit-code file
def test_exit_file_name() -> None:
    assert exit_file_name("123") == "pilot-123.exit"
    assert exit_file_name("1234.pbs-server") == "pilot-1234.pbs-server.exit"
    assert "/" not in exit_file_name("a/b")
    with pytest.raises(ValueError):
        exit_file_name("")


def test_parse_exit_file_success_and_failure() -> None:
    ok = parse_exit_file("exit_code=0\nend_time=1795239149\n", "17")
    assert ok == JobStatus("17", JobState.COMPLETED, "EXITFILE", exit_code=0,
                           end_time=dt.datetime(2026, 11, 21, 5, 32, 29, tzinfo=UTC))
    bad = parse_exit_file("end_time=1795239149.5\nexit_code=3\n", "18")
    assert bad is not None and bad.state is JobState.FAILED and bad.exit_code == 3
    assert bad.end_time is not None and bad.end_time.timestamp() == 1795239149.5
    signal = parse_exit_file("exit_code=143", "19")
    assert signal is not None and signal.state is JobState.FAILED and signal.end_time is None


@pytest.mark.parametrize("text", [
    "", "\n", "garbage", "exit_code=", "exit_code=abc", "exit_code=1.5", "end_time=5\n",
    "exit_code=0 1", "\x00\xff\xfe", "exit_code=99999999999", "EXIT CODE 0"])
def test_parse_exit_file_garbage_gives_none(text: str) -> None:
    assert parse_exit_file(text, "1") is None


def test_parse_exit_file_bad_end_time_is_ignored() -> None:
    status = parse_exit_file("exit_code=0\nend_time=yesterday\n", "1")
    assert status is not None and status.state is JobState.COMPLETED and status.end_time is None


# ----------------------------------------------------------------------------- result types
def test_results_are_frozen() -> None:
    status = JobStatus("1", JobState.PENDING, "PD")
    with pytest.raises(AttributeError):
        status.state = JobState.RUNNING  # type: ignore[misc]
    with pytest.raises(AttributeError):
        SubmitResult(SubmitOutcome.SUBMITTED, "1").job_id = "2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        CancelResult(ok=True).ok = False  # type: ignore[misc]


def test_scheduler_query_error_message_is_actionable() -> None:
    err = SchedulerQueryError("squeue failed", command="squeue", returncode=1,
                              stderr="x\n" * 20 + "slurm_load_jobs error: Socket timed out\n",
                              retryable=True)
    assert err.retryable and err.command == "squeue" and err.returncode == 1
    assert err.output_tail.endswith("Socket timed out")
    assert "Retrying later may help" in str(err) and "squeue" in str(err)


def test_package_exports() -> None:
    for name in ("JobState", "JobStatus", "SubmitOutcome", "SubmitResult", "CancelResult",
                 "SchedulerQueryError", "QueueAdapter", "get_adapter", "job_name",
                 "parse_job_name", "exit_file_name", "parse_exit_file", "filter_statuses",
                 "ADAPTERS"):
        assert hasattr(queue_adapters, name), name
