"""The emulated Grid Engine (emusge) and Torque (emutorque) clusters, driven over the real sshd as the cluster
user would, and read by the project's own queue adapters.

Expected texts are transcriptions of real outputs (ids of /work/shared/reference/scheduler-outputs.yaml) or of the
Grid Engine / Torque manual pages, cited next to each constant; ``test_reference_texts_are_copied_verbatim`` checks
them against the reference file. Each test uses a private ``PILOT_EMU_STATE`` (only its own jobs). Install the
current emulator files first: ``bash tests/infra/services.sh host emusge`` / ``host emutorque``.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from queue_adapters import JobState, SubmitOutcome, get_adapter
from tests.helpers import REPO, wait_for
from tests.infra.test_emulators import REFERENCE, Remote, emulated, write_script

pytestmark = pytest.mark.emulated

EMU = REPO / "tests" / "infra" / "emulators"
INSTALLED = Path("/opt/pilot-emu")

# sge-03: `qsub -terse` prints the job id only (the reference keeps a leading space; SoGE prints "N\n")
TERSE_RE = re.compile(r"^(\d+)\n$")
# sge-01: the default qsub message
SUBMITTED_RE = re.compile(r'^Your job (\d+) \("([^"]+)"\) has been submitted\n$')
# sge-04: a job name starting with a digit, exit 1
BAD_NAME_ERR = ('Unable to run job: denied: "123DemoSGEApp" is not a valid object name (cannot start with a digit).\n'
                "Exiting.\n")
# sge-08 (SoGE schema URL) / sge-05: the XML head; running jobs in <queue_info>, pending ones in the inner <job_info>
XML_HEAD = ("<?xml version='1.0'?>\n<job_info  xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/"
            "resources/schemas/qstat/qstat.xsd\">\n  <queue_info>\n")
# sge-12: qacct -j record: a ruler of '=' signs, then 'key' padded to 13 columns and the value
QACCT_KEYS = ["qname", "hostname", "group", "owner", "project", "department", "jobname", "jobnumber", "taskid",
              "account", "priority", "qsub_time", "start_time", "end_time", "granted_pe", "slots", "failed",
              "exit_status", "ru_wallclock"]
# sge-13: not (yet) in the accounting file
QACCT_NOT_FOUND = "error: job id {id} not found\n"
# sge-15 (running job, stdout) and sge-14 (unknown job, stderr, exit 1); "has deleted job N" for a pending one:
# the message the qmaster sends (MSG_JOB_DELETEJOB_SU "%s has deleted job %s"), quoted by aiida-core's SGE
# scheduler (_SGE_QDEL_OUTPUT_PATTERN_2, "returned when qdel run on a pending job")
QDEL_RUNNING = "{user} has registered the job {id} for deletion\n"
QDEL_PENDING = "{user} has deleted job {id}\n"
QDEL_UNKNOWN = 'denied: job "{id}" does not exist\n'
# queue_conf(5) RESOURCE LIMITS: exceeding h_rt aborts the job with SIGKILL -> exit_status 137 (128 + 9) in qacct;
# a job ended by a signal is "failed 100 : assumedly after job" (CC-IN2P3 accounting documentation, SoGE docs)
KILLED_EXIT, KILLED_FAILED = 137, "100 : assumedly after job"
# torque-13: a completed Torque job is listed in state C (keep_completed); torque-01: exit_status 271 = 256 + SIGTERM
TORQUE_QDEL_EXIT = 256 + signal.SIGTERM
# Torque 6.1 Administrator Guide, "Job exit status": JOB_EXEC_OVERLIMIT_WT -11, job exceeded a walltime limit
TORQUE_WALLTIME_EXIT = -11


def test_reference_texts_are_copied_verbatim():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not on this machine")
    import yaml

    ref = {e["id"]: e for e in yaml.safe_load(REFERENCE.read_text())}
    assert TERSE_RE.match(ref["sge-03"]["stdout"].strip() + "\n")
    assert SUBMITTED_RE.match(ref["sge-01"]["stdout"].splitlines()[0] + "\n")
    assert ref["sge-04"]["stderr"].replace("\n\n", "\n") == BAD_NAME_ERR and ref["sge-04"]["exit_code"] == 1
    assert ref["sge-08"]["stdout"].startswith(XML_HEAD)
    record = [ln for ln in ref["sge-12"]["stdout"].splitlines() if ln.strip()]
    assert re.fullmatch(r"=+", record[0]) and [ln[:13].rstrip() for ln in record[1:20]] == QACCT_KEYS
    assert all(ln[12] == " " for ln in record[1:])
    assert ref["sge-13"]["stderr"] == QACCT_NOT_FOUND.format(id=123) and ref["sge-13"]["exit_code"] == 1
    assert ref["sge-15"]["stdout"] + "\n" == QDEL_RUNNING.format(user="antonio", id=123)   # fixture: no newline
    assert ref["sge-14"]["stderr"] + "\n" == QDEL_UNKNOWN.format(id=123) and ref["sge-14"]["exit_code"] == 1
    assert "job_state = C" in ref["torque-13"]["stdout"] or " C default" in ref["torque-13"]["stdout"]


def test_installed_files_match_the_repository():
    """`services.sh host emusge|emutorque` (or `emulators`) copies the emulators; a stale copy tests old code."""
    for kind, src_kind in (("sge", "sge"), ("torque", "pbs")):
        for src in (EMU / src_kind).rglob("*"):
            if src.is_file() and "__pycache__" not in src.parts:
                dst = INSTALLED / kind / src.relative_to(EMU / src_kind)
                assert dst.exists() and dst.read_bytes() == src.read_bytes(), \
                    f"{dst} is stale: run `bash tests/infra/services.sh host emu{kind}`"
        core = INSTALLED / kind / "lib" / "emucore.py"
        assert core.read_bytes() == (EMU / "common" / "emucore.py").read_bytes(), f"{core} is stale"


@pytest.fixture
def sge(sge_cluster, remote_tmp):
    with emulated(sge_cluster, remote_tmp) as r:
        yield r


@pytest.fixture
def torque(torque_cluster, remote_tmp):
    with emulated(torque_cluster, remote_tmp) as r:
        yield r


@pytest.mark.parametrize("kind, submit", [
    ("sge", ["qsub", "-b", "y", "-j", "y", "-o", "{out}", "/sbin/ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
    ("torque", ["qsub", "-j", "oe", "-o", "{out}", "--", "/sbin/ip", "-4", "-o", "addr", "show", "dev", "eth0"])])
def test_jobs_run_on_the_compute_node(request, kind, submit):
    """qsub runs on the login node; the execution daemon starts the job on the compute node (its own address)."""
    r = request.getfixturevalue(kind)
    out = r.work / f"{kind}.out"
    res = r.run([w.format(out=out) for w in submit], cwd=r.work)
    assert res.rc == 0, res
    wait_for(lambda: out.exists() and f"inet {r.cluster.node}/28" in out.read_text(), 30, 0.2,
             f"the {kind} job to write its node's address")


# --------------------------------------------------------------------------- Grid Engine
SGE = get_adapter("sge")


def sge_submit(r: Remote, script: Path, *args: str, env: dict[str, str] | None = None) -> str:
    res = r.run(SGE.submit_command(str(script))[:-1] + list(args) + [str(script)], cwd=r.work, env=env)
    assert res.rc == 0 and TERSE_RE.match(res.out), res
    sub = SGE.parse_submit(res.rc, res.out, res.err)
    assert sub.outcome is SubmitOutcome.SUBMITTED
    return str(sub.job_id)


def sge_status(r: Remote) -> dict:
    res = r.run(SGE.status_command(user=r.cluster.user))
    assert res.rc == 0 and res.out.startswith(XML_HEAD), res
    return SGE.parse_status(res.rc, res.out, res.err)


def sge_history(r: Remote, job_id: str, timeout: float = 20):
    def accounted():
        res = r.run(SGE.history_command([job_id]))
        return SGE.parse_history(res.rc, res.out, res.err).get(job_id)

    return wait_for(accounted, timeout, 0.2, f"qacct to know job {job_id}")


def test_sge_pilot_like_job_through_the_adapter(sge):
    script = write_script(sge, "job.sh", f"""#!/bin/bash
#$ -N fwp.md.sge1
#$ -S /bin/bash
#$ -o {sge.work}/pilot-$JOB_ID.out
#$ -e {sge.work}/pilot-$JOB_ID.err
#$ -l h_rt=0:10:0
#$ -pe smp 2
#$ -notify
echo "id=$JOB_ID slots=$NSLOTS pe=$PE"
sleep 2
""")
    jid = sge_submit(sge, script)
    running = wait_for(lambda: (s := sge_status(sge).get(jid)) and s.state is JobState.RUNNING and s, 10, 0.2,
                       f"job {jid} running")
    assert (running.name, running.user, running.native_state) == ("fwp.md.sge1", sge.cluster.user, "r")
    res = sge.run(["qacct", "-j", jid])
    assert (res.rc, res.err) == (1, QACCT_NOT_FOUND.format(id=jid))   # still running: not accounted yet
    assert SGE.parse_history(res.rc, res.out, res.err) == {}
    done = sge_history(sge, jid)
    assert (done.state, done.exit_code, done.name) == (JobState.COMPLETED, 0, "fwp.md.sge1")
    assert jid not in sge_status(sge)
    assert (sge.work / f"pilot-{jid}.out").read_text() == f"id={jid} slots=2 pe=smp\n"
    record = [ln for ln in sge.run(["qacct", "-j", jid]).out.splitlines() if ln.strip()]
    assert [ln[:13].rstrip() for ln in record[1:20]] == QACCT_KEYS


def test_sge_h_rt_with_notify_warns_with_usr2_then_kills(sge):
    """h_rt 0:1:0 at time scale 60 (one real second), notify 60 emulated seconds: SIGUSR2 at the limit, SIGKILL
    the notify time later. A job that exits on USR2 ends by itself; one that ignores it is killed."""
    polite = write_script(sge, "polite.sh", "#!/bin/bash\ntrap 'echo got USR2; exit 0' USR2\n"
                                            "while true; do sleep 0.1; done\n")
    deaf = write_script(sge, "deaf.sh", "#!/bin/bash\ntrap '' USR2\nwhile true; do sleep 0.1; done\n")
    scaled = {"PILOT_EMU_TIME_SCALE": "60"}
    a = sge_submit(sge, polite, "-S", "/bin/bash", "-notify", "-l", "h_rt=0:1:0", "-o", f"{sge.work}/a.out",
                   env=scaled)
    b = sge_submit(sge, deaf, "-S", "/bin/bash", "-notify", "-l", "h_rt=60", env=scaled)
    first, second = sge_history(sge, a), sge_history(sge, b)
    assert (first.state, first.exit_code) == (JobState.COMPLETED, 0)
    assert (sge.work / "a.out").read_text() == "got USR2\n"
    assert (second.state, second.exit_code, second.reason) == (JobState.FAILED, KILLED_EXIT, KILLED_FAILED)


def test_sge_qdel_prints_what_grid_engine_prints(sge):
    user = sge.cluster.user
    sleeper = write_script(sge, "sleep.sh", "#!/bin/sh\nsleep 60\n")
    running = sge_submit(sge, sleeper)
    wait_for(lambda: (s := sge_status(sge).get(running)) and s.state is JobState.RUNNING, 10, 0.2, "running")
    res = sge.run(SGE.cancel_command([running]))
    assert (res.rc, res.out, res.err) == (0, QDEL_RUNNING.format(user=user, id=running), "")
    assert SGE.parse_cancel(res.rc, res.out, res.err, [running]).cancelled == [running]
    killed = sge_history(sge, running)
    assert (killed.state, killed.exit_code, killed.reason) == (JobState.FAILED, KILLED_EXIT, KILLED_FAILED)
    res = sge.run(SGE.cancel_command([running]))
    assert (res.rc, res.out, res.err) == (1, "", QDEL_UNKNOWN.format(id=running))
    cancel = SGE.parse_cancel(res.rc, res.out, res.err, [running])
    assert cancel.ok and cancel.already_gone == [running]
    held = sge_submit(sge, sleeper, "-h")
    assert sge_status(sge)[held].state is JobState.HELD      # "hqw"
    res = sge.run(SGE.cancel_command([held]))
    assert (res.rc, res.out, res.err) == (0, QDEL_PENDING.format(user=user, id=held), "")
    res_gone = sge.run(["qacct", "-j", held])                 # never ran: no accounting record
    assert (res_gone.rc, res_gone.err) == (1, QACCT_NOT_FOUND.format(id=held))


def test_sge_adapter_reads_qdel_of_a_pending_job(sge):
    held = sge_submit(sge, write_script(sge, "sleep.sh", "#!/bin/sh\nsleep 60\n"), "-h")
    res = sge.run(SGE.cancel_command([held]))
    assert SGE.parse_cancel(res.rc, res.out, res.err, [held]).cancelled == [held]


def test_sge_refuses_what_grid_engine_refuses(sge):
    job = write_script(sge, "j.sh", "#!/bin/sh\ntrue\n")
    res = sge.run(["qsub", "-N", "123DemoSGEApp", str(job)], cwd=sge.work)
    assert (res.rc, res.out, res.err) == (1, "", BAD_NAME_ERR)
    for args in (["-q", "nosuch.q"], ["-pe", "nosuchpe", "2"], ["-l", "h_rt=1:2"]):
        res = sge.run(["qsub", "-terse", *args, str(job)], cwd=sge.work)
        assert res.rc == 1 and res.err.startswith("Unable to run job: ") and res.err.endswith("\nExiting.\n"), res
        assert SGE.parse_submit(res.rc, res.out, res.err).outcome is SubmitOutcome.FAILED
    res = sge.run(["qsub", "job.sh"], cwd=sge.work)          # the default message (sge-01) without -terse
    assert SUBMITTED_RE.match(res.out) is None and res.rc == 1  # no such file: nothing submitted
    res = sge.run(["qsub", str(job)], cwd=sge.work)
    m = SUBMITTED_RE.match(res.out)
    assert res.rc == 0 and m and m.group(2) == "j.sh"


# --------------------------------------------------------------------------- Torque
TORQUE = get_adapter("torque")


def torque_submit(r: Remote, text: str, env: dict[str, str] | None = None) -> str:
    script = write_script(r, f"t{time.monotonic_ns()}.sh", text)
    res = r.run(TORQUE.submit_command(str(script)), cwd=r.work, env=env)
    sub = TORQUE.parse_submit(res.rc, res.out, res.err)
    assert sub.outcome is SubmitOutcome.SUBMITTED, res
    return str(sub.job_id)


def torque_status(r: Remote, job_id: str):
    res = r.run(TORQUE.status_command([job_id]))
    assert res.rc == 0 and res.out.startswith(f"Job Id: {job_id}\n"), res
    return TORQUE.parse_status(res.rc, res.out, res.err)[job_id]


def torque_final(r: Remote, job_id: str):
    return wait_for(lambda: (s := torque_status(r, job_id)).state.final and s, 20, 0.2, f"{job_id} to complete")


def test_torque_jobs_are_listed_as_c_and_read_by_the_torque_adapter(torque):
    ok = torque_submit(torque, "#!/bin/bash\n#PBS -N fwp.md.tq1\n#PBS -l nodes=1:ppn=2\n#PBS -j oe\nsleep 1\n")
    assert torque_status(torque, ok).state in (JobState.PENDING, JobState.RUNNING)
    done = torque_final(torque, ok)
    assert (done.state, done.native_state, done.exit_code, done.name) == (JobState.COMPLETED, "C", 0, "fwp.md.tq1")
    text = torque.run(["qstat", "-f", ok]).out
    assert "    job_state = C\n" in text and "    exit_status = 0\n" in text and "comp_time = " in text
    assert "Exit_status" not in text and "obittime" not in text       # PBS Pro's names, not Torque's


def test_torque_walltime_and_qdel_end_states(torque):
    scaled = {"PILOT_EMU_TIME_SCALE": "60", "PILOT_EMU_KILL_DELAY": "1"}
    over = torque_submit(torque, "#!/bin/bash\n#PBS -l walltime=00:01:00\nsleep 30\n", env=scaled)
    victim = torque_submit(torque, "#!/bin/bash\nsleep 30\n")
    wait_for(lambda: torque_status(torque, victim).state is JobState.RUNNING, 10, 0.2, "running")
    res = torque.run(TORQUE.cancel_command([victim]))
    assert TORQUE.parse_cancel(res.rc, res.out, res.err, [victim]).cancelled == [victim]
    timed_out, cancelled = torque_final(torque, over), torque_final(torque, victim)
    assert (timed_out.state, timed_out.exit_code) == (JobState.TIMEOUT, TORQUE_WALLTIME_EXIT)
    assert cancelled.state is JobState.CANCELLED
    assert f"    exit_status = {TORQUE_QDEL_EXIT}\n" in torque.run(["qstat", "-f", victim]).out
