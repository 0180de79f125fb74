"""The adapters' argument lists run against the real SLURM and the PBS/LSF emulators.

The fixture tests check the parsers on recorded outputs; these check that the commands the
adapters build are accepted by the real programs and that their live answers parse into the
expected states.  SLURM: cluster ``pilotci``, on its login node (its network namespace), as the
test user ``pilot`` (needs root and the services of tests/infra/services.sh).  PBS/LSF: the emulators of
tests/infra/emulators run locally with a private state directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queue_adapters import JobState, JobStatus, QueueAdapter, SubmitOutcome, get_adapter, job_name

REPO = Path(__file__).resolve().parents[2]
USER = "pilot"


def wait_until(fetch: Callable[[], JobStatus | None], done: Callable[[JobStatus | None], bool],
               timeout: float, what: str) -> JobStatus | None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last status: {last}")


# ----------------------------------------------------------------------------- SLURM
@pytest.fixture
def slurm_run(slurm_cluster) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run a SLURM command on pilotci's login node as the test user; cancels what it submitted."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    # pytest's tmp_path lives under a root-only directory: the test user needs its own
    tmp_path = Path(tempfile.mkdtemp(prefix="fwp-adapter-slurm-"))
    os.chmod(tmp_path, 0o777)
    submitted: list[str] = []
    env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(slurm_cluster.slurm_conf), "LANG": "C.UTF-8"}

    def run(argv: list[str]) -> tuple[int, str, str]:
        p = subprocess.run(slurm_cluster.on_login([runuser, "-u", USER, "--", *argv]), check=False,
                           capture_output=True, cwd=tmp_path, env=env, timeout=60)
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if argv[0] == "sbatch" and p.returncode == 0:
            submitted.append(out.strip().split(";")[0])
        return p.returncode, out, err

    run.tmp = tmp_path  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        for jid in submitted:  # never leave a job behind, whatever the test did
            subprocess.run(slurm_cluster.on_login([runuser, "-u", USER, "--", "scancel", jid]), check=False,
                           capture_output=True, timeout=30, env=env)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slurm
def test_slurm_round_trip(slurm_run: Callable[..., tuple[int, str, str]]) -> None:
    a = get_adapter("slurm")
    tmp: Path = slurm_run.tmp  # type: ignore[attr-defined]
    name = job_name("md|live test", "a1b2c3")
    script = tmp / "pilot.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --hold\n#SBATCH -o /dev/null\nsleep 120\n")
    script.chmod(0o755)

    sub = a.parse_submit(*slurm_run(a.submit_command(str(script))))
    assert sub.outcome is SubmitOutcome.SUBMITTED and sub.job_id and sub.job_id.isdigit(), sub
    jid = sub.job_id

    mine = a.parse_status(*slurm_run(a.status_command(user=USER)))
    assert mine[jid].state is JobState.HELD and mine[jid].reason == "JobHeldUser"
    assert mine[jid].name == name and mine[jid].user == USER
    one = a.parse_status(*slurm_run(a.status_command([jid])))
    assert set(one) == {jid}
    assert a.parse_status(*slurm_run(a.status_command(["999999"]))) == {}

    cancel = a.parse_cancel(*slurm_run(a.cancel_command([jid, "999999"])), [jid, "999999"])
    assert cancel.ok and cancel.cancelled == [jid] and cancel.already_gone == ["999999"], cancel

    hist_cmd = a.history_command([jid])
    assert hist_cmd is not None
    final = wait_until(lambda: a.parse_history(*slurm_run(hist_cmd)).get(jid),
                       lambda st: st is not None and st.state.final, 30, "sacct to record the cancel")
    assert final is not None and final.state is JobState.CANCELLED
    assert final.native_state == "CANCELLED by 1001" or final.native_state.startswith("CANCELLED by ")
    # No name check: for a few seconds after a pending job is cancelled, Slurm 22.05's sacct
    # reports it as JobName 'allocation' of user root (fixture cap-sacct-just-cancelled).

    again = a.parse_cancel(*slurm_run(a.cancel_command([jid])), [jid])
    assert again.ok and again.already_gone == [jid] and again.cancelled == []


@pytest.mark.slurm
def test_slurm_federated_id_round_trip(slurm_run: Callable[..., tuple[int, str, str]],
                                       slurm_cluster) -> None:
    """``#SBATCH -M CLUSTER`` makes sbatch print ``id;cluster`` (multi-cluster SLURM through slurmdbd): the id is
    kept whole, and squeue, sacct and scancel built for it name the cluster and answer for that very job."""
    a = get_adapter("slurm")
    tmp: Path = slurm_run.tmp  # type: ignore[attr-defined]
    script = tmp / "fed.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH -M {slurm_cluster.name}\n#SBATCH --hold\n#SBATCH -o /dev/null\n"
                      "sleep 120\n")
    sub = a.parse_submit(*slurm_run(a.submit_command(str(script))))
    assert sub.outcome is SubmitOutcome.SUBMITTED and sub.job_id, sub
    number, _, cluster = sub.job_id.partition(";")
    assert number.isdigit() and cluster == slurm_cluster.name, sub.job_id
    cmd = a.status_command([sub.job_id], user=USER)
    assert "-M" in cmd
    listed = a.parse_status(*slurm_run(cmd))
    assert listed[sub.job_id].state is JobState.HELD, listed
    cancel = a.parse_cancel(*slurm_run(a.cancel_command([sub.job_id])), [sub.job_id])
    assert cancel.ok and cancel.cancelled == [sub.job_id], cancel
    hist = a.history_command([sub.job_id])
    assert hist is not None and "-M" in hist
    final = wait_until(lambda: a.parse_history(*slurm_run(hist)).get(sub.job_id or ""),
                       lambda st: st is not None and st.state.final, 30, "sacct -M to record the cancel")
    assert final is not None and final.state is JobState.CANCELLED


@pytest.mark.slurm
def test_slurm_exit_code_and_timeout_states(slurm_run: Callable[..., tuple[int, str, str]]) -> None:
    a = get_adapter("slurm")
    tmp: Path = slurm_run.tmp  # type: ignore[attr-defined]
    script = tmp / "fail.sh"
    script.write_text("#!/bin/bash\n#SBATCH -o /dev/null\nexit 7\n")
    script.chmod(0o755)
    sub = a.parse_submit(*slurm_run(a.submit_command(str(script))))
    assert sub.outcome is SubmitOutcome.SUBMITTED
    cmd = a.history_command([sub.job_id or ""])
    assert cmd is not None
    st = wait_until(lambda: a.parse_history(*slurm_run(cmd)).get(sub.job_id or ""),
                    lambda s: s is not None and s.state.final, 60, "the failing job to finish")
    assert st is not None and st.state is JobState.FAILED and st.exit_code == 7
    assert st.start_time is not None and st.end_time is not None and st.end_time >= st.start_time


@pytest.mark.slurm
def test_slurm_invalid_partition_is_not_retryable(slurm_run: Callable[..., tuple[int, str, str]]) -> None:
    a = get_adapter("slurm")
    tmp: Path = slurm_run.tmp  # type: ignore[attr-defined]
    script = tmp / "bad.sh"
    script.write_text("#!/bin/bash\n#SBATCH -p nosuchpartition\ntrue\n")
    res = a.parse_submit(*slurm_run(a.submit_command(str(script))))
    assert res.outcome is SubmitOutcome.FAILED and not res.retryable
    assert "partition" in (res.reason or "")


# ----------------------------------------------------------------------------- emulators
@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[tuple[QueueAdapter, Callable[..., tuple[int, str, str]]]]:
    kind = request.param
    bindir = REPO / "tests" / "infra" / "emulators" / kind / "bin"
    if not bindir.is_dir():
        pytest.skip(f"no {kind} emulator in {bindir}")
    state = Path(tempfile.mkdtemp(prefix=f"fwp-adapter-{kind}-"))
    adapter = get_adapter(kind)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin", "PILOT_EMU_STATE": str(state)}
    ids: list[str] = []

    def run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        p = subprocess.run(argv, check=False, capture_output=True, text=True, input=stdin, env=env, cwd=state,
                           timeout=60)
        if argv[0] in ("qsub", "bsub") and p.returncode == 0:
            res = adapter.parse_submit(p.returncode, p.stdout, p.stderr)
            if res.job_id:
                ids.append(res.job_id)
        return p.returncode, p.stdout, p.stderr

    run.state = state  # type: ignore[attr-defined]
    try:
        yield adapter, run
    finally:
        if ids:
            run(adapter.cancel_command(ids))
            time.sleep(0.5)
        shutil.rmtree(state, ignore_errors=True)


def _submit(adapter: QueueAdapter, run: Callable[..., tuple[int, str, str]], body: str, name: str) -> str:
    state: Path = run.state  # type: ignore[attr-defined]
    script = state / f"{name}.sh"
    script.write_text("#!/bin/bash\n"
                      f"#PBS -N {name}\n#PBS -l walltime=00:05:00\n"
                      f"#BSUB -J {name}\n#BSUB -W 5\n" + body)
    script.chmod(0o755)
    stdin = script.read_text() if adapter.submit_stdin_from_script else None
    res = adapter.parse_submit(*run(adapter.submit_command(str(script)), stdin=stdin))
    assert res.outcome is SubmitOutcome.SUBMITTED and res.job_id, res
    return res.job_id


@pytest.mark.emulated
@pytest.mark.parametrize("emulator", ["pbs", "lsf"], indirect=True)
def test_emulator_exit_code_and_history(emulator: tuple[QueueAdapter, Callable[..., tuple[int, str, str]]]) -> None:
    adapter, run = emulator
    name = job_name("md", "e1e1")
    jid = _submit(adapter, run, "sleep 1\nexit 3\n", name)
    listing = adapter.parse_status(*run(adapter.status_command()))
    assert listing[jid].name == name and listing[jid].state in (JobState.PENDING, JobState.RUNNING)
    cmd = adapter.history_command([jid])
    assert cmd is not None
    st = wait_until(lambda: adapter.parse_history(*run(cmd)).get(jid),
                    lambda s: s is not None and s.state.final, 30, "the job to finish")
    assert st is not None and st.state is JobState.FAILED and st.exit_code == 3
    gone = adapter.parse_cancel(*run(adapter.cancel_command([jid])), [jid])
    assert gone.ok and gone.already_gone == [jid]


@pytest.mark.emulated
@pytest.mark.parametrize("emulator", ["pbs", "lsf"], indirect=True)
def test_emulator_cancel_running_job(emulator: tuple[QueueAdapter, Callable[..., tuple[int, str, str]]]) -> None:
    adapter, run = emulator
    jid = _submit(adapter, run, "sleep 120\n", job_name("md", "c2c2"))
    wait_until(lambda: adapter.parse_status(*run(adapter.status_command([jid]))).get(jid),
               lambda s: s is not None and s.state is JobState.RUNNING, 30, "the job to start")
    res = adapter.parse_cancel(*run(adapter.cancel_command([jid])), [jid])
    assert res.ok and res.cancelled == [jid], res
    cmd = adapter.history_command([jid])
    assert cmd is not None
    st = wait_until(lambda: adapter.parse_history(*run(cmd)).get(jid),
                    lambda s: s is not None and s.state.final, 30, "the cancel to be recorded")
    assert st is not None and st.state is JobState.CANCELLED, st
