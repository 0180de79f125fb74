"""The emulated PBS Pro and LSF schedulers, driven through the real sshd as the cluster user would.

Every command runs over SSH (paramiko) on 127.0.0.3 (PBS) / 127.0.0.4 (LSF), where sshd puts
``/opt/pilot-emu/<kind>/bin`` first on PATH.  Most tests point ``PILOT_EMU_STATE`` at a private
directory so that they see only their own jobs while other suites use the shared emulated
clusters; ``test_*_default_state`` checks the wiring that sshd itself sets up.

Expected texts come from real captures or the schedulers' sources/documentation, cited next to
each constant (ids refer to /work/shared/reference/scheduler-outputs.yaml, copied here verbatim).
Install the current emulator files first: ``bash tests/infra/services.sh emulators``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, ClusterInfo, wait_for

pytestmark = pytest.mark.emulated

EMU = REPO / "tests" / "infra" / "emulators"
INSTALLED = Path("/opt/pilot-emu")

# --------------------------------------------------------------------------- reference texts
# pbspro-11 (NCAR Derecho, PBS Pro 2022.1.5) and OpenPBS src/cmds/qstat.c display_statjob()
PBS_DEFAULT_HEADER = ("Job id            Name             User              Time Use S Queue\n"
                      "----------------  ---------------- ----------------  -------- - -----\n")
# pbspro-11 data rows: id, name, user, time use ('0' before the job ran), state, queue
PBS_ROW_RE = re.compile(r"^(?P<id>\S+)\s+(?P<name>\S+)\s+(?P<user>\S+)\s+(?P<time>0|\d\d:\d\d:\d\d)\s+"
                        r"(?P<state>[QHRETF])\s+(?P<queue>\S+)\s*$")
# pbspro-07 (OpenPBS 23.06.06, `qstat -u $USER`): the alternate header after the 'server: ' line
PBS_ALT_HEADER = ("                                                            Req'd  Req'd   Elap\n"
                  "Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n"
                  "--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n")
# pbspro-01: qsub prints '<seq>.<server>' and a newline
QSUB_OUT_RE = re.compile(r"^(\d+)\.[A-Za-z][\w.-]*\n$")
# pbspro-07: OpenPBS 23.06.06 prints -F json with cJSON (tab indentation, tab after ':')
PBS_JSON_HEAD_RE = re.compile(r'^\{\n\t"timestamp":\t\d+,\n\t"pbs_version":\t"[^"]+",\n\t"pbs_server":\t"[^"]+"')
# pbspro-15 / torque-04: 'qstat: Unknown Job Id <id>' on stderr, exit 153 (PBSE_UNKJOBID 15001 % 256)
PBS_UNKNOWN_RC = 153
# pbspro-20 + equinor/ert openpbs_driver.py QDEL_JOB_HAS_FINISHED = 35 (PBSE_HISTJOBID 15139 % 256)
PBS_HISTJOB_RC = 35
# OpenPBS src/include/pbs_error.h PBSE_UNKQUE 15018 -> exit 170; text 'qsub: Unknown queue' as in
# the stderr quoted by smartsim's pbsParser tests and idaholab/moose's TestHarness tests
PBS_UNKQUE_RC = 170
# Exit_status of a job killed for its walltime: JOB_EXEC_KILL_WALLTIME (MetaCentrum PBS documentation)
PBS_WALLTIME_EXIT = -29
# PBS Pro MoM's message in the job's stderr
# (e.g. ESMF test logs: '=>> PBS: job killed: walltime 3611 exceeded limit 3600')
PBS_WALLTIME_MSG_RE = re.compile(r"^=>> PBS: job killed: walltime (\d+) exceeded limit (\d+)$", re.MULTILINE)

# lsf-15 / lsf-16 (Whitehead Institute LSF via nextflow's tests) and openlava bjobs.c
LSF_HEADER = "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME\n"
# lsf-03 ('Job <3386667> is submitted to queue <batch>.') and lsf-25 ('... to default queue <normal>.')
BSUB_QUEUE_RE = re.compile(r"^Job <(\d+)> is submitted to queue <(\w+)>\.\n$")
BSUB_DEFAULT_RE = re.compile(r"^Job <(\d+)> is submitted to default queue <(\w+)>\.\n$")
# lsf-14 (CERN LSF): exit_reason of a job that reached its run limit
LSF_RUNLIMIT_REASON = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
# LSF 10.1 'Termination reasons displayed by bacct, bhist, and bjobs': TERM_OWNER, 'Job killed by owner'
LSF_OWNER_REASON = "TERM_OWNER: job killed by owner"
LSF_FAIL_RC = 255  # lsf-05..09, lsf-11..13: every failing LSF command exits 255


REFERENCE = Path("/work/shared/reference/scheduler-outputs.yaml")


def test_reference_texts_are_copied_verbatim():
    """The constants above are transcriptions: check them against the shared reference captures."""
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not on this machine")
    import yaml

    ref = {e["id"]: e for e in yaml.safe_load(REFERENCE.read_text())}
    assert ref["pbspro-11"]["stdout"].startswith(PBS_DEFAULT_HEADER)
    assert PBS_ALT_HEADER in ref["pbspro-07"]["stdout"]
    assert PBS_JSON_HEAD_RE.search(ref["pbspro-07"]["stdout"][ref["pbspro-07"]["stdout"].index("{"):])
    assert QSUB_OUT_RE.match(ref["pbspro-01"]["stdout"])
    assert all(PBS_ROW_RE.match(ln) for ln in ref["pbspro-14"]["stdout"].splitlines()[2:])
    assert ref["pbspro-15"]["stderr"].startswith("qstat: Unknown Job Id ")
    assert ref["torque-04"]["exit_code"] == PBS_UNKNOWN_RC
    assert ref["lsf-15"]["stdout"].startswith(LSF_HEADER) and ref["lsf-16"]["stdout"].count(LSF_HEADER) == 1
    assert BSUB_QUEUE_RE.match(ref["lsf-03"]["stdout"])
    assert BSUB_DEFAULT_RE.match(ref["lsf-25"]["stdout"].splitlines()[0].rstrip() + "\n")
    assert LSF_RUNLIMIT_REASON in ref["lsf-14"]["stdout"]
    assert ref["lsf-20"]["stdout"].startswith('{\n  "COMMAND":"bjobs",\n  "JOBS":1,\n  "RECORDS":[\n    {\n      "')
    assert ref["lsf-05"]["stderr"] == "Too many processors requested. Job not submitted.\n"
    assert ref["lsf-13"]["stderr"] == "Job <943186> is not found\n"
    assert {ref[i]["exit_code"] for i in ("lsf-05", "lsf-11", "lsf-12", "lsf-13")} == {LSF_FAIL_RC}


# --------------------------------------------------------------------------- remote commands
@dataclass
class Result:
    rc: int
    out: str
    err: str


class Remote:
    """Commands on an emulated cluster over the real sshd, as the cluster user."""

    def __init__(self, cluster: ClusterInfo, env: dict[str, str] | None = None) -> None:

        self.cluster = cluster
        self.env = dict(env or {})
        self.client = self._connect()

    def _connect(self):
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(self.cluster.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.cluster.host, port=self.cluster.port, username=self.cluster.user,
                       key_filename=self.cluster.key, look_for_keys=False, allow_agent=False, timeout=10)
        return client

    def reconnect(self) -> None:
        self.client.close()
        self.client = self._connect()

    def close(self) -> None:
        self.client.close()

    def run(self, argv: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None,
            cwd: str | Path | None = None, timeout: float = 30.0) -> Result:
        variables = {**self.env, **(env or {})}
        words = (["env"] + [f"{k}={v}" for k, v in variables.items()] if variables else []) + argv
        command = " ".join(shlex.quote(w) for w in words)
        if cwd:
            command = f"cd {shlex.quote(str(cwd))} && {command}"
        chan = self.client.get_transport().open_session(timeout=10)
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                chan.close()
                raise TimeoutError(f"{command!r} did not finish in {timeout}s")
            time.sleep(0.01)
        rc = chan.recv_exit_status()
        chan.close()
        return Result(rc, out.decode(), err.decode())


def _kill_leftovers(state_dir: Path) -> None:
    """Stop, by PID, every supervisor and job process group a test left behind in ``state_dir``."""
    path = state_dir / "state.json"
    if not path.exists():
        return
    for job in json.loads(path.read_text())["jobs"].values():
        if job["state"] == "finished":
            continue
        for pid, group in ((job.get("sup_pid"), False), (job.get("pgid"), True)):
            if not pid:
                continue
            try:
                os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextlib.contextmanager
def emulated(cluster: ClusterInfo, remote_tmp: Path) -> Iterator[Remote]:
    """An SSH session on an emulated cluster's login node with a private job table (``PILOT_EMU_STATE``) under
    ``remote_tmp``, whose jobs are killed when the test ends."""
    state = remote_tmp / "state"
    r = Remote(cluster, {"PILOT_EMU_STATE": str(state), "PILOT_EMU_START_DELAY": "0"})
    r.state_dir, r.work = state, remote_tmp
    try:
        yield r
    finally:
        r.close()
        _kill_leftovers(state)


@pytest.fixture
def pbs(pbs_cluster, remote_tmp):
    with emulated(pbs_cluster, remote_tmp) as r:
        yield r


@pytest.fixture
def lsf(lsf_cluster, remote_tmp):
    with emulated(lsf_cluster, remote_tmp) as r:
        yield r


def write_script(r: Remote, name: str, text: str) -> Path:
    path = r.work / name
    res = r.run(["tee", str(path)], stdin=text)
    assert res.rc == 0, res
    return path


# --------------------------------------------------------------------------- PBS helpers
def qsub(r: Remote, args: list[str], **kw) -> str:
    res = r.run(["qsub", *args], cwd=r.work, **kw)
    assert res.rc == 0, res
    m = QSUB_OUT_RE.match(res.out)
    assert m, res.out
    return res.out.strip()


def pbs_job(r: Remote, jobid: str) -> dict:
    res = r.run(["qstat", "-fx", "-F", "json", jobid])
    assert res.rc == 0, res
    return json.loads(res.out)["Jobs"][jobid]


def pbs_wait_state(r: Remote, jobid: str, states: str, timeout: float = 20) -> dict:
    def reached() -> dict | None:
        job = pbs_job(r, jobid)
        return job if job["job_state"] in states else None

    return wait_for(reached, timeout, 0.2, f"{jobid} in state {states}")


# --------------------------------------------------------------------------- installed files
def test_installed_files_match_the_repository():
    """services.sh copies the emulators; a stale copy would test old code."""
    for kind in ("pbs", "lsf"):
        for src in (EMU / kind).rglob("*"):
            if src.is_file() and "__pycache__" not in src.parts:
                dst = INSTALLED / kind / src.relative_to(EMU / kind)
                assert dst.exists() and dst.read_bytes() == src.read_bytes(), \
                    f"{dst} is stale: run `bash tests/infra/services.sh emulators`"
        # the shared core is installed into each kind's lib/
        core = INSTALLED / kind / "lib" / "emucore.py"
        assert core.read_bytes() == (EMU / "common" / "emucore.py").read_bytes(), \
            f"{core} is stale: run `bash tests/infra/services.sh emulators`"


# --------------------------------------------------------------------------- PBS
def test_pbs_default_state(pbs_cluster, remote_tmp):
    """sshd on 127.0.0.3 puts the emulator first on PATH and sets PILOT_EMU_STATE."""
    r = Remote(pbs_cluster)
    r.work = remote_tmp
    try:
        res = r.run(["sh", "-c", "command -v qsub; echo $PILOT_EMU_STATE"])
        assert res.out.split() == ["/opt/pilot-emu/pbs/bin/qsub", "/var/tmp/pilot-emu-pbs"]
        jobid = qsub(r, ["-N", "wiring", "--", "/bin/true"])
        done = pbs_wait_state(r, jobid, "F", timeout=30)
        assert done["Exit_status"] == 0
    finally:
        r.close()


def test_pbs_lifecycle_in_every_format(pbs):
    script = write_script(pbs, "life.sh", "#!/bin/bash\n#PBS -N lifejob\n#PBS -l walltime=00:10:00\n"
                                          "#PBS -l select=1:ncpus=2\n# a comment\n"
                                          'echo "job $PBS_JOBID name $PBS_JOBNAME queue $PBS_QUEUE"\n'
                                          'echo "pwd $(pwd) workdir $PBS_O_WORKDIR ncpus $NCPUS"\n'
                                          'echo "nodefile $(wc -l < $PBS_NODEFILE) tmpdir $TMPDIR"\n'
                                          'echo "self $(qstat $PBS_JOBID | tail -1 | cut -c 63)"\n'
                                          "#PBS -N ignored_after_the_first_command\n"
                                          "sleep 2\n")
    jobid = qsub(pbs, [str(script)], env={"PILOT_EMU_START_DELAY": "1.5"})
    seq = jobid.split(".")[0]

    # queued: default table (header as pbspro-11, Time Use '0' for a job that never ran)
    res = pbs.run(["qstat"])
    assert res.rc == 0 and res.out.startswith(PBS_DEFAULT_HEADER)
    row = PBS_ROW_RE.match(res.out.splitlines()[2])
    assert row and row["id"] == jobid and row["name"] == "lifejob" and row["user"] == "pilot"
    assert (row["time"], row["state"], row["queue"]) == ("0", "Q", "workq")

    running = pbs_wait_state(pbs, jobid, "R")
    assert running["Resource_List"] == {"ncpus": 2, "nodect": 1, "place": "pack", "select": "1:ncpus=2",
                                        "walltime": "00:10:00"}
    assert running["Job_Owner"].startswith("pilot@") and running["queue"] == "workq"
    assert running["exec_host"].endswith("/0*2") and isinstance(running["session_id"], int)
    assert running["comment"].startswith("Job run at ")

    # -f text: 'Job Id:' then '    name = value' lines, resources as name.resource
    res = pbs.run(["qstat", "-f", jobid])
    lines = res.out.splitlines()
    assert lines[0] == f"Job Id: {jobid}" and res.out.endswith("\n\n")
    assert "    job_state = R" in lines and "    Resource_List.ncpus = 2" in lines
    assert all(ln.startswith(("    ", "\t")) for ln in lines[1:] if ln)

    # -F json, cJSON layout of OpenPBS 23.06 (pbspro-07)
    res = pbs.run(["qstat", "-f", "-F", "json", jobid])
    assert PBS_JSON_HEAD_RE.match(res.out), res.out[:200]
    doc = json.loads(res.out)
    assert set(doc) == {"timestamp", "pbs_version", "pbs_server", "Jobs"}
    assert list(doc["Jobs"]) == [jobid]
    assert abs(doc["timestamp"] - time.time()) < 60

    # alternate table (-u): header of pbspro-07
    res = pbs.run(["qstat", "-u", "pilot"])
    assert res.out.startswith(f"\n{doc['pbs_server']}: \n" + PBS_ALT_HEADER)
    assert res.out.splitlines()[5].split()[:3] == [jobid, "pilot", "workq"]

    done = pbs_wait_state(pbs, jobid, "F")
    assert done["Exit_status"] == 0 and done["comment"].endswith(" and finished")
    assert done["resources_used"]["walltime"] >= "00:00:02"

    # finished jobs leave the plain listing; asking for one names the history option
    res = pbs.run(["qstat", jobid])
    assert (res.rc, res.out) == (PBS_HISTJOB_RC, "")
    assert res.err == (f"qstat: {jobid} Job has finished, use -x or -H to obtain historical job information\n")
    res = pbs.run(["qstat", "-x", jobid])
    assert PBS_ROW_RE.match(res.out.splitlines()[2])["state"] == "F"

    # output file: '<name>.o<seq>' in the submission directory; the job ran in $HOME
    out = (pbs.work / f"lifejob.o{seq}").read_text().splitlines()
    assert out[0] == f"job {jobid} name lifejob queue workq"
    assert out[1] == f"pwd /home/pilot workdir {pbs.work} ncpus 2"
    assert out[2].startswith("nodefile 1 tmpdir ")
    assert out[3] == "self R"   # PBS commands inside the job reach the same server
    assert (pbs.work / f"lifejob.e{seq}").read_text() == ""


def test_pbs_failing_job_records_its_exit_status(pbs):
    jobid = qsub(pbs, ["-N", "fails", "-j", "oe"], stdin="echo before\nexit 3\n")
    done = pbs_wait_state(pbs, jobid, "F")
    assert done["Exit_status"] == 3 and done["substate"] == 93 and done["comment"].endswith(" and failed")
    assert done["Join_Path"] == "oe"
    seq = jobid.split(".")[0]
    assert (pbs.work / f"fails.o{seq}").read_text() == "before\n"
    assert not (pbs.work / f"fails.e{seq}").exists()


def test_pbs_walltime_is_enforced_with_time_scaling(pbs):
    """walltime 00:01:00 at PILOT_EMU_TIME_SCALE=60 lasts one real second."""
    script = write_script(pbs, "long.sh", "#!/bin/bash\ntrap 'echo got TERM; exit 143' TERM\n"
                                          "echo started\nwhile true; do sleep 0.1; done\n")
    stubborn = write_script(pbs, "stubborn.sh", "#!/bin/bash\ntrap '' TERM\nwhile true; do sleep 0.1; done\n")
    t0 = time.monotonic()
    polite = qsub(pbs, ["-l", "walltime=00:01:00", "-N", "polite", str(script)], env={"PILOT_EMU_TIME_SCALE": "60"})
    deaf = qsub(pbs, ["-l", "walltime=60", "-N", "deaf", str(stubborn)], env={"PILOT_EMU_TIME_SCALE": "60"})
    a = pbs_wait_state(pbs, polite, "F", timeout=15)
    b = pbs_wait_state(pbs, deaf, "F", timeout=15)
    assert time.monotonic() - t0 < 10
    assert a["Exit_status"] == PBS_WALLTIME_EXIT and b["Exit_status"] == PBS_WALLTIME_EXIT
    seq = polite.split(".")[0]
    assert (pbs.work / f"polite.o{seq}").read_text() == "started\ngot TERM\n"
    m = PBS_WALLTIME_MSG_RE.search((pbs.work / f"polite.e{seq}").read_text())
    assert m and int(m.group(2)) == 60 and int(m.group(1)) >= 60
    # the job that ignores SIGTERM is killed kill_delay (10 emulated seconds) later
    assert b["resources_used"]["walltime"] >= "00:01:10"


def test_pbs_hold_and_release(pbs):
    held = qsub(pbs, ["-h", "-N", "held", "--", "/bin/sleep", "1"])
    assert pbs_job(pbs, held)["job_state"] == "H"
    time.sleep(1.0)
    j = pbs_job(pbs, held)
    assert (j["job_state"], j["Hold_Types"]) == ("H", "u")
    res = pbs.run(["qstat"])
    assert PBS_ROW_RE.match(res.out.splitlines()[2])["state"] == "H"
    assert pbs.run(["qrls", held]).rc == 0
    assert pbs_wait_state(pbs, held, "F")["Exit_status"] == 0

    # qhold a queued job (cluster full: one slot), release it later
    (pbs.state_dir / "config.json").write_text(json.dumps({"slots": 1}))
    blocker = qsub(pbs, ["-N", "blocker", "--", "/bin/sleep", "3"])
    pbs_wait_state(pbs, blocker, "R")
    waiting = qsub(pbs, ["-N", "waiting", "--", "/bin/true"])
    res = pbs.run(["qhold", waiting])
    assert (res.rc, res.err) == (0, "")
    assert pbs_job(pbs, waiting)["job_state"] == "H"
    assert pbs.run(["qrls", waiting]).rc == 0
    j = wait_for(lambda: "comment" in pbs_job(pbs, waiting) and pbs_job(pbs, waiting), 10, 0.2, "a comment")
    assert j["job_state"] == "Q"
    assert j["comment"] == "Not Running: Insufficient amount of resource: ncpus (R: 1 A: 0 T: 1)"
    assert pbs_wait_state(pbs, waiting, "F", timeout=20)["Exit_status"] == 0


def test_pbs_qdel(pbs):
    running = qsub(pbs, ["-N", "victim", "--", "/bin/sleep", "60"])
    pbs_wait_state(pbs, running, "R")
    res = pbs.run(["qdel", running])
    assert (res.rc, res.out, res.err) == (0, "", "")   # qdel is silent on success
    done = pbs_wait_state(pbs, running, "F")
    assert done["Exit_status"] == 256 + signal.SIGTERM   # 271: killed by signal 15 (torque-01 notes)
    res = pbs.run(["qdel", running])
    assert (res.rc, res.err) == (PBS_HISTJOB_RC, f"qdel: Job has finished {running}\n")   # pbspro-20

    queued = qsub(pbs, ["-h", "-N", "never", "--", "/bin/true"])
    assert pbs.run(["qdel", queued]).rc == 0
    gone = pbs_job(pbs, queued)
    assert gone["job_state"] == "F" and "Exit_status" not in gone and "stime" not in gone

    res = pbs.run(["qdel", "999999"])
    assert (res.rc, res.err) == (PBS_UNKNOWN_RC, "qdel: Unknown Job Id 999999\n")     # pbspro-19
    res = pbs.run(["qdel", "a"])
    assert (res.rc, res.err) == (1, "qdel: illegally formed job identifier: a\n")     # pbspro-22


def test_pbs_errors(pbs):
    res = pbs.run(["qstat", "999999"])
    assert (res.rc, res.out) == (PBS_UNKNOWN_RC, "")
    assert re.fullmatch(r"qstat: Unknown Job Id 999999\.\S+\n", res.err)                # pbspro-15
    res = pbs.run(["qstat", "-f", "-x", "-F", "json", "999999"])
    assert res.rc == PBS_UNKNOWN_RC and set(json.loads(res.out)) == {"timestamp", "pbs_version", "pbs_server"}
    script = write_script(pbs, "x.sh", "true\n")
    res = pbs.run(["qsub", "-q", "nosuchqueue", str(script)])
    assert (res.rc, res.out, res.err) == (PBS_UNKQUE_RC, "", "qsub: Unknown queue\n")
    res = pbs.run(["qsub", "-l", "walltime=ten", str(script)])
    assert res.rc != 0 and res.err == "qsub: Illegal attribute or resource value Resource_List.walltime\n"
    res = pbs.run(["qsub", "-l", "select=two:ncpus=1", str(script)])
    assert res.rc != 0 and res.err == "qsub: Illegal attribute or resource value Resource_List.select\n"
    assert not (pbs.state_dir / "state.json").exists() or json.loads(
        (pbs.state_dir / "state.json").read_text())["jobs"] == {}


def test_pbs_command_line_wins_over_directives(pbs):
    script = write_script(pbs, "d.sh", "#PBS -N fromscript\n#PBS -l walltime=01:00:00,ncpus=1\n"
                                       "#PBS -o script.out\ntrue\n")
    jobid = qsub(pbs, ["-N", "fromcli", "-l", "walltime=2:00:00", str(script)])
    j = pbs_job(pbs, jobid)
    assert j["Job_Name"] == "fromcli"
    assert j["Resource_List"]["walltime"] == "02:00:00" and j["Resource_List"]["ncpus"] == 1
    assert j["Output_Path"].endswith(f":{pbs.work}/script.out")
    assert j["Submit_arguments"] == f"-N fromcli -l walltime=2:00:00 {script}"


@pytest.mark.parametrize(("select", "expected"), [
    # Clemson Palmetto capture (PBS Pro, 2016): Resource_List of select=4:ncpus=2:mem=1gb:...:mpiprocs=2
    ("4:ncpus=2:mem=1gb:interconnect=1g:mpiprocs=2", {"mem": "4gb", "mpiprocs": 8, "ncpus": 8, "nodect": 4}),
    # Imperial College CX3 capture (PBS Pro, 2023)
    ("1:ncpus=4:mem=8gb:ngpus=1:gpu_type=RTX6000:mpiprocs=4:ompthreads=1",
     {"mem": "8gb", "mpiprocs": 4, "ncpus": 4, "ngpus": 1, "nodect": 1}),
])
def test_pbs_resource_list_is_summed_like_the_server(pbs, select, expected):
    jobid = qsub(pbs, ["-h", "-l", f"select={select}", "--", "/bin/true"])
    res = pbs_job(pbs, jobid)["Resource_List"]
    assert {k: res[k] for k in expected} == expected and res["select"] == select
    assert pbs.run(["qdel", jobid]).rc == 0


def test_pbs_job_outlives_the_ssh_session(pbs):
    t0 = time.monotonic()
    jobid = qsub(pbs, ["-N", "survivor", "-j", "oe"], stdin="sleep 3\necho survived\n")
    assert time.monotonic() - t0 < 3, "qsub must not wait for the job (detached supervisor)"
    pbs.reconnect()   # the submitting session is gone
    assert pbs_wait_state(pbs, jobid, "F", timeout=20)["Exit_status"] == 0
    assert (pbs.work / f"survivor.o{jobid.split('.')[0]}").read_text() == "survived\n"


# --------------------------------------------------------------------------- PBS -f folding
sys.path[:0] = [str(EMU / "pbs" / "lib"), str(EMU / "common")]

# Real `qstat -f` lines.  Clemson Palmetto, PBS Pro 13/14, Dec 2016: clemsonciti palmetto user guide
# as quoted in the code corpus (user 'atrikut', job 7600424.pbs02); Griffith University, PBS Pro, 2020
# ('simple_failing_test', job 49223); Imperial College CX3, 2023 (job 7013474, select line).
FOLDED = [
    ("    Variable_List = PBS_O_SYSTEM=Linux,PBS_O_SHELL=/bin/bash,\n\tPBS_O_HOME=/home/atrikut,"
     "PBS_O_LOGNAME=atrikut,\n\tPBS_O_WORKDIR=/home/atrikut/MPI,PBS_O_LANG=en_US.UTF-8,\n\t"
     "PBS_O_PATH=/software/examples/:/home/atrikut/local/bin:/usr/lib64/qt-3\n\t.3/bin:/opt/pbs/default/bin:"
     "/opt/gold/bin:/usr/local/bin:/bin:/usr/bin:\n\t/usr/local/sbin:/usr/sbin:/sbin:/opt/mx/bin:"
     "/home/atrikut/bin,\n\tPBS_O_MAIL=/var/spool/mail/atrikut,PBS_O_QUEUE=c1_workq,\n\t"
     "PBS_O_HOST=login001.palmetto.clemson.edu"),
    ("    comment = Job run at Tue Dec 13 at 14:09 on (node0088:ncpus=2:mem=1048576kb\n\t:ngpus=0:nphis=0)+"
     "(node0094:ncpus=2:mem=1048576kb:ngpus=0:nphis=0)+(nod\n\te0094:ncpus=2:mem=1048576kb:ngpus=0:nphis=0)+"
     "(node0085:ncpus=2:mem=1048\n\t576kb:ngpus=0:nphis=0) and finished"),
    ("    exec_vnode = (node0088:ncpus=2:mem=1048576kb:ngpus=0:nphis=0)+(node0094:ncp\n\tus=2:mem=1048576kb:"
     "ngpus=0:nphis=0)+(node0094:ncpus=2:mem=1048576kb:ngp\n\tus=0:nphis=0)+(node0085:ncpus=2:mem=1048576kb:"
     "ngpus=0:nphis=0)"),
    ("    Variable_List = PBS_O_SYSTEM=Linux,PBS_O_SHELL=/bin/bash,\n\tPBS_O_HOME=/export/home/s1234567,"
     "PBS_O_LOGNAME=s1234567,\n\tPBS_O_WORKDIR=/export/home/s1234567,PBS_O_LANG=en_US.UTF-8,\n\t"
     "PBS_O_PATH=/opt/clmgr/sbin:/opt/clmgr/bin:/opt/sgi/sbin:/opt/sgi/bin:/\n\tusr/local/bin:/usr/bin:"
     "/usr/local/sbin:/usr/sbin:/opt/c3/bin:/opt/pbs/b\n\tin:/sbin:/bin:/export/home/s1234567/bin,\n\t"
     "PBS_O_MAIL=/var/spool/mail/s1234567,PBS_O_QUEUE=workq,\n\tPBS_O_HOST=gc-prd-hpclogin1.ib0.cm.rcs.griffith.edu.au"),
    "    comment = Job run at Wed Jun 24 at 15:33 on (gc-prd-hpcn001:ncpus=1) and fa\n\tiled",
    "    Resource_List.select = 1:ncpus=4:mem=8gb:ngpus=1:gpu_type=RTX6000:mpiprocs=\n\t4:ompthreads=1",
]


@pytest.mark.parametrize("captured", FOLDED, ids=lambda s: s.split(" = ")[0].strip())
def test_pbs_full_format_folds_like_real_qstat(captured):
    import pbsformat

    name, value = captured[4:].split(" = ", 1)
    assert pbsformat.fold_attr(name, value.replace("\n\t", "")) == captured


def test_pbs_long_values_are_folded_over_ssh(pbs):
    """A long Variable_List comes out folded at 78 columns with tab continuations."""
    long_value = "x" * 150
    jobid = qsub(pbs, ["-h", "-v", f"LONGVAR={long_value}", "--", "/bin/true"])
    text = pbs.run(["qstat", "-f", jobid]).out
    assert "\n\t" in text and all(len(ln.expandtabs(8)) <= 80 for ln in text.splitlines())
    j = pbs_job(pbs, jobid)
    assert j["Variable_List"]["LONGVAR"] == long_value
    pbs.run(["qdel", jobid])


# --------------------------------------------------------------------------- LSF helpers
LSF_FIELDS = "jobid stat user queue job_name exit_code exit_reason submit_time start_time finish_time"


def bsub(r: Remote, args: list[str], **kw) -> str:
    res = r.run(["bsub", *args], cwd=r.work, **kw)
    assert res.rc == 0, res
    m = BSUB_QUEUE_RE.match(res.out) or BSUB_DEFAULT_RE.match(res.out)
    assert m, res.out
    return m.group(1)


def lsf_records(r: Remote, ids: list[str], fields: str = LSF_FIELDS, extra: list[str] | None = None) -> dict:
    res = r.run(["bjobs", "-o", fields, "-json", *(extra or []), *ids])
    return json.loads(res.out)


def lsf_job(r: Remote, jobid: str, fields: str = LSF_FIELDS) -> dict:
    doc = lsf_records(r, [jobid], fields)
    (rec,) = doc["RECORDS"]
    return rec


def lsf_wait(r: Remote, jobid: str, stats: set[str], timeout: float = 20, fields: str = LSF_FIELDS) -> dict:
    def reached() -> dict | None:
        job = lsf_job(r, jobid, fields)
        return job if job["STAT"] in stats else None

    return wait_for(reached, timeout, 0.2, f"job {jobid} in {stats}")


# --------------------------------------------------------------------------- LSF
def test_lsf_default_state(lsf_cluster, remote_tmp):
    r = Remote(lsf_cluster)
    r.work = remote_tmp
    try:
        res = r.run(["sh", "-c", "command -v bsub; echo $PILOT_EMU_STATE"])
        assert res.out.split() == ["/opt/pilot-emu/lsf/bin/bsub", "/var/tmp/pilot-emu-lsf"]
        jobid = bsub(r, ["-J", "wiring", "/bin/true"])
        assert lsf_wait(r, jobid, {"DONE"}, timeout=30)["EXIT_CODE"] == ""
    finally:
        r.close()


def test_lsf_lifecycle_in_every_format(lsf):
    script = ("#!/bin/bash\n#BSUB -J lifejob   # trailing comments are allowed\n#BSUB -o life.%J.out\n"
              "#BSUB -W 10\n#BSUB -n 2\n"
              'echo "job $LSB_JOBID name $LSB_JOBNAME queue $LSB_QUEUE pwd $(pwd) cwd $LSB_SUBCWD"\n'
              'echo "hosts $LSB_MCPU_HOSTS procs $LSB_DJOB_NUMPROC"\n'
              "echo to-stderr >&2\necho self $(bjobs -noheader -o stat $LSB_JOBID)\nsleep 2\n")
    res = lsf.run(["bsub"], stdin=script, cwd=lsf.work, env={"PILOT_EMU_START_DELAY": "1.5"})
    m = BSUB_DEFAULT_RE.match(res.out)
    assert res.rc == 0 and m and m.group(2) == "normal", res
    jobid = m.group(1)

    res = lsf.run(["bjobs"])
    assert res.rc == 0 and res.out.startswith(LSF_HEADER)
    cols = res.out.splitlines()[1].split()   # a pending job has an empty EXEC_HOST column (lsf-24)
    assert cols[:4] == [jobid, "pilot", "PEND", "normal"] and cols[5] == "lifejob"

    running = lsf_wait(lsf, jobid, {"RUN"})
    assert running["FINISH_TIME"].endswith(" L") and running["EXIT_CODE"] == ""
    res = lsf.run(["bjobs", "-o", "jobid stat exec_host slots", "-noheader", jobid])
    assert res.out.split() == [jobid, "RUN", res.out.split()[2], "2"] and res.out.split()[2].startswith("2*")

    # JSON layout of lsf-20: two-space indentation, no space after ':', every value a string
    res = lsf.run(["bjobs", "-o", "jobid stat", "-json", jobid])
    assert res.out == ('{\n  "COMMAND":"bjobs",\n  "JOBS":1,\n  "RECORDS":[\n    {\n'
                       f'      "JOBID":"{jobid}",\n      "STAT":"RUN"\n    }}\n  ]\n}}\n')

    done = lsf_wait(lsf, jobid, {"DONE"})
    assert done["EXIT_CODE"] == "" and done["EXIT_REASON"] == "" and done["FINISH_TIME"]
    res = lsf.run(["bjobs"])
    assert (res.rc, res.out, res.err) == (LSF_FAIL_RC, "", "No unfinished job found\n")
    assert lsf.run(["bjobs", "-a"]).out.splitlines()[1].split()[2] == "DONE"
    assert lsf.run(["bjobs", jobid]).out.splitlines()[1].split()[2] == "DONE"

    out = (lsf.work / f"life.{jobid}.out").read_text()
    first, second, third = out.splitlines()[:3]
    assert first == f"job {jobid} name lifejob queue normal pwd {lsf.work} cwd {lsf.work}"
    assert second.startswith("hosts ") and second.endswith(" 2 procs 2")
    assert third == "to-stderr"            # -o without -e: stderr goes to the output file
    assert out.splitlines()[3] == "self RUN"
    assert f"Subject: Job {jobid}: <lifejob> in cluster <" in out and "\nSuccessfully completed.\n" in out


def test_lsf_failing_command_job(lsf):
    jobid = bsub(lsf, ["-q", "normal", "-o", "fail.out", "sh", "-c", "echo failing; exit 3"])
    done = lsf_wait(lsf, jobid, {"EXIT", "DONE"})
    assert (done["STAT"], done["EXIT_CODE"], done["EXIT_REASON"]) == ("EXIT", "3", "")
    assert done["JOB_NAME"] == "sh -c \"echo failing; exit 3\""
    text = (lsf.work / "fail.out").read_text()
    assert text.startswith("failing\n") and "\nExited with exit code 3.\n" in text


def test_lsf_run_limit_warning_and_kill(lsf):
    """-W 2 -wa USR1 -wt 1 at PILOT_EMU_TIME_SCALE=60: warning after 1 s, SIGUSR2 at 2 s, kill after the grace."""
    script = ("#BSUB -o limit.out\n#BSUB -W 2\n#BSUB -wa USR1\n#BSUB -wt 1\n"
              "trap 'echo warned' USR1\ntrap 'echo usr2' USR2\necho started\n"
              "while true; do sleep 0.1; done\n")
    t0 = time.monotonic()
    jobid = bsub(lsf, [], stdin=script, env={"PILOT_EMU_TIME_SCALE": "60", "PILOT_EMU_GRACE": "60"})
    done = lsf_wait(lsf, jobid, {"EXIT", "DONE"}, timeout=20)
    assert time.monotonic() - t0 < 12
    assert done["STAT"] == "EXIT" and done["EXIT_REASON"] == LSF_RUNLIMIT_REASON
    assert done["EXIT_CODE"] == str(128 + signal.SIGINT)   # the first signal of the kill sequence
    lines = (lsf.work / "limit.out").read_text().splitlines()   # the shell also reports its killed `sleep`
    assert [ln for ln in lines if ln in ("started", "warned", "usr2")] == ["started", "warned", "usr2"]


def test_lsf_hold_and_resume(lsf):
    jobid = bsub(lsf, ["-H", "-J", "held", "/bin/sleep", "1"])
    time.sleep(1.0)
    assert lsf_job(lsf, jobid)["STAT"] == "PSUSP"
    res = lsf.run(["bresume", jobid])
    assert (res.rc, res.out) == (0, f"Job <{jobid}> is being resumed\n")
    assert lsf_wait(lsf, jobid, {"DONE"})["STAT"] == "DONE"
    res = lsf.run(["bresume", jobid])
    assert (res.rc, res.err) == (LSF_FAIL_RC, f"Job <{jobid}>: Job has already finished\n")


def test_lsf_bkill(lsf):
    running = bsub(lsf, ["-J", "victim", "/bin/sleep", "60"])
    lsf_wait(lsf, running, {"RUN"})
    res = lsf.run(["bkill", running])
    assert (res.rc, res.out, res.err) == (0, f"Job <{running}> is being terminated\n", "")   # lsf-10
    done = lsf_wait(lsf, running, {"EXIT"})
    assert done["EXIT_REASON"] == LSF_OWNER_REASON and done["EXIT_CODE"] == str(128 + signal.SIGINT)
    pending = bsub(lsf, ["-H", "/bin/true"])
    # lsf-12: one call, several jobs, per-job lines on stdout or stderr, overall exit 255
    res = lsf.run(["bkill", pending, running, "999999"])
    assert res.rc == LSF_FAIL_RC
    assert res.out == f"Job <{pending}> is being signaled\n"
    assert res.err == (f"Job <{running}>: Job has already finished\nJob <999999>: No matching job found\n")
    assert lsf_job(lsf, pending)["STAT"] == "EXIT"


def test_lsf_errors(lsf):
    res = lsf.run(["bsub", "-q", "nosuchqueue", "/bin/true"])
    assert (res.rc, res.out, res.err) == (LSF_FAIL_RC, "", "nosuchqueue: No such queue. Job not submitted.\n")
    res = lsf.run(["bsub", "-W", "ten", "/bin/true"])
    assert (res.rc, res.err) == (LSF_FAIL_RC, "ten: Bad RUNLIMIT specification. Job not submitted.\n")
    res = lsf.run(["bsub", "-n", "4096", "/bin/true"])
    assert (res.rc, res.err) == (LSF_FAIL_RC, "Too many processors requested. Job not submitted.\n")  # lsf-05
    res = lsf.run(["bjobs", "943186"])
    assert (res.rc, res.out, res.err) == (LSF_FAIL_RC, "", "Job <943186> is not found\n")            # lsf-13
    doc = lsf_records(lsf, ["943186"], "jobid stat")
    assert doc == {"COMMAND": "bjobs", "JOBS": 1, "RECORDS": [{"ERROR": "Job <943186> is not found"}]}
    res = lsf.run(["bjobs"])
    assert (res.rc, res.out, res.err) == (LSF_FAIL_RC, "", "No unfinished job found\n")


def test_lsf_job_outlives_the_ssh_session(lsf):
    t0 = time.monotonic()
    jobid = bsub(lsf, ["-o", "survivor.out", "sh", "-c", "sleep 3; echo survived"])
    assert time.monotonic() - t0 < 3
    lsf.reconnect()
    assert lsf_wait(lsf, jobid, {"DONE"})["STAT"] == "DONE"
    assert (lsf.work / "survivor.out").read_text().startswith("survived\n")


# --------------------------------------------------------------------------- robustness
def _job_record(r: Remote, seq: str) -> dict:
    return json.loads((r.state_dir / "state.json").read_text())["jobs"][seq]


def test_lost_supervisors_are_replaced_or_settled(pbs):
    """Every command repairs the table: a queued job gets a new supervisor, a running one is settled."""
    held = qsub(pbs, ["-h", "--", "/bin/true"]).split(".")[0]
    old = wait_for(lambda: _job_record(pbs, held).get("sup_pid"), 10, 0.1, "a supervisor")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{old}").exists(), 10, 0.1, "the supervisor to die")
    pbs.run(["qstat"])
    new = wait_for(lambda: _job_record(pbs, held).get("sup_pid"), 10, 0.1, "a new supervisor")
    assert new != old and Path(f"/proc/{new}").exists()
    assert pbs.run(["qrls", held]).rc == 0
    assert pbs_wait_state(pbs, f"{held}.pbsemu", "F")["Exit_status"] == 0

    running = qsub(pbs, ["--", "/bin/sleep", "60"])
    pbs_wait_state(pbs, running, "R")
    rec = _job_record(pbs, running.split(".")[0])
    os.kill(rec["sup_pid"], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{rec['sup_pid']}").exists(), 10, 0.1, "the supervisor to die")
    settled = pbs_job(pbs, running)
    assert settled["job_state"] == "F" and settled["Exit_status"] == -1
    wait_for(lambda: not Path(f"/proc/{rec['pgid']}").exists(), 10, 0.1, "the orphaned job to be killed")
