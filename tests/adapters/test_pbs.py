"""PBS Pro/OpenPBS and Torque adapter: parsers against real outputs (fixtures/scheduler/pbs.yaml), argv builders."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from queue_adapters import JobState, PbsAdapter, SchedulerQueryError, SubmitOutcome, get_adapter
from queue_adapters.pbs import PBS_STATES, TORQUE_STATES, lenient_pbs_json, parse_qstat_text, repair_pbs_json
from tests.adapters.test_base import check_case, load_cases


@pytest.mark.parametrize("case", load_cases("pbs"))
def test_fixture(case: dict, caplog: pytest.LogCaptureFixture) -> None:
    check_case(PbsAdapter(flavor=case.get("flavor", "pbspro")), case, caplog)


# ----------------------------------------------------------------------------- argv builders
def test_commands_pbspro() -> None:
    a = PbsAdapter()
    assert a.submit_command("/home/u/p.sh") == ["qsub", "/home/u/p.sh"]
    assert a.status_command() == ["qstat", "-f", "-F", "json"]
    assert a.status_command(["1.pbs", "2.pbs"], user="u", name_prefix="fwp.") == [
        "qstat", "-f", "-F", "json", "1.pbs", "2.pbs"]
    assert a.history_command(["1.pbs"]) == ["qstat", "-f", "-F", "json", "-x", "1.pbs"]
    assert a.history_command([]) is None
    assert a.cancel_command(["1.pbs", "3[].srv"]) == ["qdel", "1.pbs", "3[].srv"]
    with pytest.raises(ValueError):
        a.cancel_command([])
    with pytest.raises(ValueError):
        a.status_command(["-u root"])


def test_commands_torque() -> None:
    a = get_adapter("torque")
    assert isinstance(a, PbsAdapter) and a.flavor == "torque" and a.name == "torque"
    assert a.status_command(["123"]) == ["qstat", "-f", "123"]
    assert a.history_command(["123", "124.srv"]) == ["qstat", "-f", "123", "124.srv"]
    assert a.submit_command("x.sh") == ["qsub", "x.sh"]


def test_attributes() -> None:
    a = get_adapter("pbs")
    assert a.job_id_env == "PBS_JOBID" and a.submit_stdin_from_script is False
    assert "user" not in a.filters_server_side
    with pytest.raises(ValueError):
        PbsAdapter(flavor="lsf")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- state tables
@pytest.mark.parametrize("flavor,table", [("pbspro", PBS_STATES), ("torque", TORQUE_STATES)])
def test_every_listed_state_letter_is_known(flavor: str, table: dict, caplog: pytest.LogCaptureFixture) -> None:
    a = PbsAdapter(flavor=flavor)  # type: ignore[arg-type]
    for letter in table:
        doc = {"Jobs": {"1.s": {"job_state": letter, "Exit_status": 0}}}
        with caplog.at_level(logging.WARNING, logger="queue_adapters"):
            st = a.parse_status(0, json.dumps(doc), "")["1.s"]
        assert st.state is not JobState.UNKNOWN, letter
    assert not caplog.records


def test_final_letters_are_exactly_f_x_and_torque_c() -> None:
    final = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL}
    assert {k for k, v in PBS_STATES.items() if v in final} == {"F", "X"}
    assert {k for k, v in TORQUE_STATES.items() if v in final} == {"C"}


def _finished(exit_status: object, substate: int | None = None, flavor: str = "pbspro") -> object:
    job: dict = {"job_state": "F" if flavor == "pbspro" else "C"}
    if exit_status is not None:
        job["Exit_status"] = exit_status
    if substate is not None:
        job["substate"] = substate
    return PbsAdapter(flavor=flavor).parse_history(0, json.dumps({"Jobs": {"9.s": job}}), "")["9.s"]  # type: ignore[arg-type]


@pytest.mark.parametrize("exit_status,substate,state,code", [
    (0, 92, JobState.COMPLETED, 0),
    (1, 93, JobState.FAILED, 1),
    (-29, 93, JobState.TIMEOUT, -29),        # JOB_EXEC_KILL_WALLTIME (src/include/job.h)
    (271, 91, JobState.CANCELLED, 143),      # qdel: SIGTERM, substate TERMINATED
    (265, None, JobState.CANCELLED, 137),    # SIGKILL after kill_delay
    (267, None, JobState.FAILED, 139),       # killed by SIGSEGV (256 + 11)
    (None, 91, JobState.CANCELLED, None),    # deleted before it ran: no Exit_status
    (-1, None, JobState.FAILED, -1),         # JOB_EXEC_FAIL1
    ("0", None, JobState.COMPLETED, 0),      # text output gives strings
])
def test_pbspro_exit_status(exit_status: object, substate: int | None, state: JobState, code: int | None) -> None:
    st = _finished(exit_status, substate)
    assert st.state is state  # type: ignore[attr-defined]
    assert st.exit_code == code  # type: ignore[attr-defined]


def test_torque_walltime_code_is_timeout_but_pbspro_minus_11_is_not() -> None:
    assert _finished(-11, flavor="torque").state is JobState.TIMEOUT  # type: ignore[attr-defined]
    assert _finished(-11).state is JobState.FAILED  # type: ignore[attr-defined]  (JOB_EXEC_RERUN in PBS Pro)


# ----------------------------------------------------------------------------- JSON quirks
def test_repair_drops_invalid_escapes_and_quotes_leading_zero_numbers() -> None:
    bad = '{"a":"x\\\'y","b":"c\\,d","c":"ok\\\\\\\'","d":005,"e":"keep\\"q\\n"}'
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    fixed = json.loads(repair_pbs_json(bad))
    assert fixed == {"a": "x'y", "b": "c,d", "c": "ok\\'", "d": "005", "e": 'keep"q\n'}


def test_lenient_reader_rejects_other_layouts() -> None:
    assert lenient_pbs_json('{"Jobs": {"1": {"job_state": "R"}}}') is None
    assert lenient_pbs_json("garbage") is None
    assert lenient_pbs_json('{\n  "a": 1,\n  "b": {\n    "c": "x"\n  }\n}') == {"a": 1, "b": {"c": "x"}}


def test_unreadable_json_is_an_error_not_no_jobs() -> None:
    with pytest.raises(SchedulerQueryError) as info:
        PbsAdapter().parse_status(0, '{"Jobs": {"1.s": {"job_state": ', "")
    assert not info.value.retryable


def test_header_only_json_means_no_jobs() -> None:
    out = '{\n\t"timestamp":\t1749572608,\n\t"pbs_version":\t"23.06.06",\n\t"pbs_server":\t"VMa"\n}\n'
    assert PbsAdapter().parse_status(0, out, "") == {}


def test_unknown_state_letter_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="queue_adapters"):
        st = PbsAdapter().parse_status(0, json.dumps({"Jobs": {"5.s": {"job_state": "Z"}}}), "")["5.s"]
    assert st.state is JobState.UNKNOWN and st.native_state == "Z"
    assert any("'Z'" in r.getMessage() for r in caplog.records)


def test_text_continuation_lines_are_joined_without_separator() -> None:
    text = ("Job Id: 7.srv\n    Job_Name = a_very_long_na\n\tme_folded\n    job_state = R\n"
            "    Output_Path = h:/x\n\n    exit_status = 0\n")
    assert parse_qstat_text(text) == {"7.srv": {"Job_Name": "a_very_long_name_folded", "job_state": "R",
                                                "Output_Path": "h:/x", "exit_status": "0"}}


def test_time_zone_is_applied() -> None:
    tz = dt.timezone(dt.timedelta(hours=10))
    when = "Tue Oct 11 08:13:45 2022"
    doc = {"Jobs": {"1.s": {"job_state": "R", "ctime": when, "stime": when}}}
    st = PbsAdapter(tz=tz).parse_status(0, json.dumps(doc), "")["1.s"]
    assert st.submit_time == dt.datetime(2022, 10, 10, 22, 13, 45, tzinfo=dt.timezone.utc)


# ----------------------------------------------------------------------------- qsub
@pytest.mark.parametrize("rc,out,err,outcome,retryable", [
    (0, "1234.server.example.org\n", "", SubmitOutcome.SUBMITTED, False),
    (0, "", "", SubmitOutcome.UNKNOWN, False),
    (15010, "", "qsub: cannot connect to server aqua (errno=15010)\n", SubmitOutcome.FAILED, True),
    (15007, "", "qsub: Unknown queue\n", SubmitOutcome.FAILED, False),
    (-9, "", "", SubmitOutcome.UNKNOWN, False),
])
def test_qsub_outcomes(rc: int, out: str, err: str, outcome: SubmitOutcome, retryable: bool) -> None:
    res = PbsAdapter().parse_submit(rc, out, err)
    assert res.outcome is outcome and res.retryable is retryable
