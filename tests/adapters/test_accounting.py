"""Accounting parsers (core-hours) against real outputs: the real sacct of the test cluster pilotci (Slurm 22.05.8),
the reference captures (tests/fixtures/scheduler/*.yaml, /work/shared/reference), and the emulators' qstat/bjobs.

Expected numbers are read off the outputs by hand (and for SLURM checked against sacct's own CPUTimeRAW, which Slurm
computes as AllocCPUS x ElapsedRaw), never produced by the code under test.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from queue_adapters import LsfAdapter, PbsAdapter, SchedulerQueryError, SlurmAdapter, get_adapter
from queue_adapters.accounting import Usage, accounting_of, batches, duration_seconds
from tests.adapters.test_base import FIXTURES

UTC = dt.timezone.utc


def at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=UTC)


# ----------------------------------------------------------------------------- SLURM
#: `env SLURM_TIME_FORMAT=%s sacct -P -X -n -o JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End,State
#: -j 1,2,3,4` as root on pilotci (Slurm 22.05.8), 2026-12-07: 1 ran 2 cores 3 s under account chem123, 2 ran
#: 3 cores with no account (no association: empty), 3 pending then done, 4 cancelled while pending
SACCT_FINAL = """\
1|chem123|2|3|6|1796616698|1796616699|1796616702|COMPLETED
2||3|20|60|1796616710|1796616710|1796616730|COMPLETED
3|chem123|8|1|8|1796616710|1796616730|1796616731|COMPLETED
4|chem123|8|0|0|1796616710|None|1796616713|CANCELLED by 0
"""
#: the same query earlier: 2 running (its numbers grow), 3 pending (AllocCPUS is what it asks, 0 s)
SACCT_RUNNING = """\
1|chem123|2|3|6|1796616698|1796616699|1796616702|COMPLETED
2||3|4|12|1796616710|1796616710|Unknown|RUNNING
3|chem123|8|0|0|1796616710|Unknown|Unknown|PENDING
"""


def test_slurm_command() -> None:
    a = SlurmAdapter()
    assert a.accounting_command(["1", "2"]) == [
        "env", "SLURM_TIME_FORMAT=%s", "sacct", "-P", "-X", "-n", "-o",
        "JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End,State", "-j", "1,2"]
    assert a.accounting_command([]) is None
    fed = a.accounting_command(["7;east", "8"])
    assert fed is not None and fed[3:5] == ["-M", "east"] and fed[9].startswith("Cluster,JobID,")
    with pytest.raises(ValueError):
        a.accounting_command(["1; rm -rf /"])


def test_slurm_final() -> None:
    got = SlurmAdapter().parse_accounting(0, SACCT_FINAL, "")
    assert got["1"] == Usage("1", cpus=2, seconds=3, core_seconds=6, account="chem123", start=at(1796616699),
                             end=at(1796616702), final=True)
    assert got["2"].account is None and got["2"].core_seconds == 60 and got["2"].final
    assert got["4"] == Usage("4", cpus=8, seconds=0, core_seconds=0, account="chem123", start=None,
                             end=at(1796616713), final=True)
    assert sum(u.core_seconds for u in got.values()) == 6 + 60 + 8 + 0


def test_slurm_running_is_not_final() -> None:
    got = SlurmAdapter().parse_accounting(0, SACCT_RUNNING, "")
    assert (got["2"].core_seconds, got["2"].seconds, got["2"].final, got["2"].end) == (12, 4, False, None)
    assert (got["3"].core_seconds, got["3"].start, got["3"].final) == (0, None, False)


def test_slurm_reused_id_keeps_the_latest_submission() -> None:
    # slurmctld restarted without its state: sacct lists both jobs that had id 1
    out = "1|old|4|100|400|1796000000|1796000001|1796000101|COMPLETED\n" + SACCT_FINAL.splitlines()[0] + "\n"
    assert SlurmAdapter().parse_accounting(0, out, "")["1"].account == "chem123"
    assert SlurmAdapter().parse_accounting(0, "\n".join(reversed(out.splitlines())), "")["1"].account == "chem123"


def test_slurm_federated_and_steps() -> None:
    out = "east|7|a|4|10|40|1|2|12|COMPLETED\neast|7.batch|a|4|10|40|1|2|12|COMPLETED\n"
    assert list(SlurmAdapter().parse_accounting(0, out, "")) == ["7;east"]


def test_slurm_failures() -> None:
    with pytest.raises(SchedulerQueryError) as e:
        SlurmAdapter().parse_accounting(1, "", "sacct: error: Slurm accounting storage is disabled\n")
    assert not e.value.retryable
    with pytest.raises(SchedulerQueryError) as e:
        SlurmAdapter().parse_accounting(
            1, "", "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to "
                   "host:localhost:6819: Connection refused\n")
    assert e.value.retryable


def test_duration_reference_sacct() -> None:
    """slurm-33 (/work/shared/reference/scheduler-outputs.yaml, a Hábrók dump): NCPUS 12, Elapsed 2-23:59:17,
    CPUTime 35-23:51:24: Slurm's own CPUTime is NCPUS x Elapsed, so the day form must be read exactly."""
    assert duration_seconds("35-23:51:24") == 12 * duration_seconds("2-23:59:17")  # type: ignore[operator]
    assert duration_seconds("41:45:13") == 41 * 3600 + 45 * 60 + 13
    assert duration_seconds("754 second(s)") == 754
    assert duration_seconds("00:00:04") == 4
    assert duration_seconds(7) == 7
    for junk in ("-", "", None, "soon", True, -3):
        assert duration_seconds(junk) is None


# ----------------------------------------------------------------------------- PBS Pro
def pbs_case(case_id: str) -> dict:
    cases = yaml.safe_load((FIXTURES / "pbs.yaml").read_text(encoding="utf-8"))["cases"]
    return next(c for c in cases if c["id"] == case_id)


#: the emulated PBS Pro (tests/infra/emulators/pbs) `qstat -x -f -F json 1.pbsemu` after `qsub -A chem123 -l
#: select=1:ncpus=2` ran `sleep 4`, trimmed to the attributes the parser reads
PBSEMU_FINISHED = {"timestamp": 1796616790, "pbs_version": "23.06.06", "pbs_server": "pbsemu", "Jobs": {"1.pbsemu": {
    "Job_Name": "acctprobe", "resources_used": {"cpupercent": 0, "cput": "00:00:00", "mem": "14752kb", "ncpus": 2,
                                                "vmem": "0kb", "walltime": "00:00:04"},
    "job_state": "F", "Account_Name": "chem123", "Resource_List": {"ncpus": 2, "walltime": "00:01:00"},
    "stime": "Mon Dec  7 04:13:04 2026", "obittime": "Mon Dec  7 04:13:08 2026", "Exit_status": 0}}}


def test_pbs_command() -> None:
    assert PbsAdapter().accounting_command(["1.s", "2.s"]) == ["qstat", "-x", "-f", "-F", "json", "1.s", "2.s"]
    assert PbsAdapter().accounting_command([]) is None
    assert PbsAdapter(flavor="torque").accounting_command(["1"]) is None   # Torque: no core count
    assert accounting_of(get_adapter("torque")) is None and accounting_of(get_adapter("sge")) is None
    assert accounting_of(get_adapter("pbs")) is not None and accounting_of(get_adapter("lsf")) is not None


def test_pbs_emulator_finished() -> None:
    got = PbsAdapter().parse_accounting(0, json.dumps(PBSEMU_FINISHED), "")["1.pbsemu"]
    assert got == Usage("1.pbsemu", cpus=2, seconds=4, core_seconds=8, account="chem123",
                        start=dt.datetime(2026, 12, 7, 4, 13, 4, tzinfo=UTC),
                        end=dt.datetime(2026, 12, 7, 4, 13, 8, tzinfo=UTC), final=True)


def test_pbs_reference_outputs() -> None:
    case = pbs_case("baw-finished")            # OpenPBS 22.05.11, finished in under a second
    got = PbsAdapter().parse_accounting(0, case["stdout"], "")["0.725ccdf1a5fb"]
    assert (got.cpus, got.seconds, got.core_seconds, got.account, got.final) == (1, 0, 0, None, True)
    case = pbs_case("swrap-running")           # running, no resources_used yet: Resource_List.ncpus, 0 s
    got = PbsAdapter().parse_accounting(0, case["stdout"], "")["12860476.meta-pbs.metacentrum.cz"]
    assert (got.cpus, got.seconds, got.final) == (4, 0, False)
    assert got.start == dt.datetime(2022, 10, 4, 21, 23, 33, tzinfo=UTC)
    case = pbs_case("buildtest-held")
    got = PbsAdapter().parse_accounting(0, case["stdout"], "")["157.pbs"]
    assert (got.cpus, got.seconds, got.core_seconds, got.final) == (1, 0, 0, False)


def test_pbs_unreachable_raises() -> None:
    with pytest.raises(SchedulerQueryError):
        PbsAdapter().parse_accounting(255, "", "Connection refused\nqstat: cannot connect to server pbs01 "
                                                "(errno=15010)\n")


# ----------------------------------------------------------------------------- LSF
#: the emulated LSF (tests/infra/emulators/lsf) `bjobs -o "jobid stat run_time nalloc_slot slots proj_name start_time
#: finish_time delimiter='|'" -json -a 1 2` after `bsub -n 3 -P chem123` ran `sleep 4`; job 2 never existed
BJOBS_DONE = """{
  "COMMAND":"bjobs",
  "JOBS":2,
  "RECORDS":[
    {
      "JOBID":"1",
      "STAT":"DONE",
      "RUN_TIME":"4 second(s)",
      "NALLOC_SLOT":"3",
      "SLOTS":"3",
      "PROJ_NAME":"chem123",
      "START_TIME":"Dec  7 04:13",
      "FINISH_TIME":"Dec  7 04:13"
    },
    {
      "ERROR":"Job <2> is not found"
    }
  ]
}
"""
BJOBS_RUNNING = BJOBS_DONE.replace('"DONE"', '"RUN"').replace('"4 second(s)"', '"2 second(s)"').replace(
    '"FINISH_TIME":"Dec  7 04:13"', '"FINISH_TIME":"Dec  7 04:14 L"')


def test_lsf_command() -> None:
    argv = LsfAdapter().accounting_command(["1", "2[3]"])
    assert argv is not None and argv[:2] == ["bjobs", "-o"] and argv[-4:] == ["-json", "-a", "1", "2[3]"]
    assert argv[2].split()[:6] == ["jobid", "stat", "run_time", "nalloc_slot", "slots", "proj_name"]


def test_lsf_done_and_running() -> None:
    now = lambda: dt.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)  # noqa: E731  (LSF prints no year)
    got = LsfAdapter(now=now).parse_accounting(0, BJOBS_DONE, "Job <2> is not found\n")
    assert list(got) == ["1"]
    assert got["1"] == Usage("1", cpus=3, seconds=4, core_seconds=12, account="chem123",
                             start=dt.datetime(2026, 12, 7, 4, 13, tzinfo=UTC),
                             end=dt.datetime(2026, 12, 7, 4, 13, tzinfo=UTC), final=True)
    run = LsfAdapter(now=now).parse_accounting(0, BJOBS_RUNNING, "")["1"]
    assert (run.core_seconds, run.final, run.end) == (6, False, None)


def test_lsf_hms_and_missing_slots() -> None:
    rec = {"JOBID": "5", "STAT": "EXIT", "RUN_TIME": "01:00:05", "NALLOC_SLOT": "", "SLOTS": "16", "PROJ_NAME": ""}
    got = LsfAdapter().parse_accounting(0, json.dumps({"COMMAND": "bjobs", "JOBS": 1, "RECORDS": [rec]}), "")["5"]
    assert (got.cpus, got.seconds, got.core_seconds, got.account, got.final) == (16, 3605, 16 * 3605, None, True)


def test_lsf_down_raises() -> None:
    with pytest.raises(SchedulerQueryError) as e:
        LsfAdapter().parse_accounting(255, "", "LSF is down. Please wait ...\nlsb_openjobinfo: LSF is down\n")
    assert e.value.retryable


def test_batches_and_record() -> None:
    assert list(batches([str(i) for i in range(5)], 2)) == [["0", "1"], ["2", "3"], ["4"]]
    rec = Usage("1", 2, 3, 6, "a", at(10), None, False).to_record()
    assert rec == {"cpus": 2, "seconds": 3, "core_seconds": 6, "account": "a", "start": 10.0, "end": None,
                   "final": False}
