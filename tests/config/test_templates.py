"""Pilot job scripts: directives per scheduler, valid bash, the worker's command line, signals, exit-code file.

Expected directive spellings come from the schedulers' documentation:
- SLURM sbatch(1) https://slurm.schedmd.com/sbatch.html: --job-name, --output/--error with the %j
  (job id) pattern, --time, --nodes, --ntasks-per-node, --mem (suffix M), --gpus-per-node, --partition,
  --account, --qos, --signal=[{R|B}:]<sig_num>[@sig_time], --no-requeue. Directives must come before the
  first executable command ("sbatch will stop processing further #SBATCH directives once the first
  non-comment non-whitespace line has been reached").
- PBS Pro qsub / pbs_resources: "#PBS -l walltime=hh:mm:ss", "#PBS -l select=N:ncpus=C:mem=Xmb:ngpus=G",
  -N name, -q queue, -A account, -j oe, -o path, -r n.
- LSF bsub(1): -J name, -o/-e with %J, -W [hour:]minute, -n slots, -R "span[ptile=C]", -M limit with a
  unit (LSF 10.1 fix pack 2 and later), -gpu "num=G", -q, -P project, -wa signal, -wt [hour:]minute.
- Torque qsub / "Requesting resources": "#PBS -l nodes=N:ppn=C:gpus=G", "-l mem=Xmb" (the job's memory,
  "ignored on Linux if number of nodes is not 1"), "-l pmem=Xmb" (per process), -l walltime=[[HH:]MM:]SS, -N, -q,
  -A, -j oe, -o, -r n; no pre-walltime signal.
- Grid Engine qsub(1): "#$" directives, -N, -S shell (the queue's shell otherwise, shell_start_mode), -o/-e with the
  pseudo variable $JOB_ID, -l h_rt=h:m:s (sge_types(1)), -pe name slots (slots in total), -l h_vmem (per slot),
  -q, -A account string, -r n, -notify (SIGUSR2 before SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilot.config import ClusterConfig, load_cluster
from pilot.render import (
    RenderError,
    builtin_template_names,
    exit_file_path,
    get_environment,
    render_pilot_script,
)
from tests.helpers import wait_for

SLURM_CONF_ENV = "SLURM_CONF"


@pytest.fixture
def keyfiles(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "id_test"
    key.write_text("k")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    return {"identity_file": str(key), "known_hosts": str(kh)}


def make_cluster(tmp_path: Path, scheduler: str, name: str = "c1", **over: Any) -> ClusterConfig:
    """Write clusters/NAME.yaml and load it like the manager does."""
    ssh = {} if scheduler == "local" else {"host": "login.example.org", "user": "alice", "port": 22}
    data: dict[str, Any] = {"scheduler": scheduler, "categories": ["md"], **ssh,
                            "launchpad_file": "/home/alice/.pilot/my_launchpad.yaml",
                            "work_dir": str(tmp_path / "work"), "pilot": {"walltime": _walltime(scheduler)}}
    pilot_over = over.pop("pilot", {})
    data.update(over)
    data["pilot"].update(pilot_over)
    cdir = tmp_path / "clusters"
    cdir.mkdir(exist_ok=True)
    path = cdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def _walltime(scheduler: str) -> str:
    return {"slurm": "1-00:00:00", "pbs": "24:00:00", "lsf": "24:00", "local": "24:00:00", "torque": "24:00:00",
            "sge": "24:00:00"}[scheduler]


def full(tmp_path: Path, keyfiles: dict[str, str], scheduler: str) -> ClusterConfig:
    """A cluster with every resource field set."""
    extra = {"slurm": ["--constraint=knl", "#SBATCH --exclusive"], "pbs": ["-l place=scatter"],
             "lsf": ["-x", "#BSUB -app md"], "torque": ["-l naccesspolicy=singlejob"],
             "sge": ["-pe mpi", "#$ -l arch=lx-amd64"]}[scheduler]
    return make_cluster(tmp_path, scheduler, **keyfiles, pilot={
        "nodes": 2, "cores": 16, "memory": "64G", "gpus": None if scheduler == "sge" else 1, "partition": "normal",
        "account": "TG-ABC123", "qos": "high" if scheduler == "slurm" else None, "extra_directives": extra},
        walltime_margin=600, grace=60, idle_timeout=300,
        setup="module load gromacs/2022\nsource ~/venvs/pilot/bin/activate", env={"OMP_NUM_THREADS": 1})


def bash_n(script: str) -> None:
    res = subprocess.run(["bash", "-n"], check=False, input=script, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def directives_before_code(script: str, prefix: str) -> None:
    """Every directive line comes before the first command (sbatch/qsub/bsub stop reading there)."""
    seen_code = False
    for line in script.splitlines()[1:]:
        if line.startswith(prefix):
            assert not seen_code, f"directive after the first command: {line}"
        elif line.strip() and not line.startswith("#"):
            seen_code = True


EXPECTED = {
    "slurm": ["#SBATCH --job-name=fwp.md.abc123", "#SBATCH --time=1-00:00:00", "#SBATCH --nodes=2",
              "#SBATCH --ntasks-per-node=16", "#SBATCH --mem=65536M", "#SBATCH --gpus-per-node=1",
              "#SBATCH --partition=normal", "#SBATCH --account=TG-ABC123", "#SBATCH --qos=high",
              "#SBATCH --signal=B:USR1@600", "#SBATCH --no-requeue", "#SBATCH --constraint=knl",
              "#SBATCH --exclusive", "#SBATCH --output={work}/pilot-%j.out", "#SBATCH --error={work}/pilot-%j.err"],
    "pbs": ["#PBS -N fwp.md.abc123", "#PBS -l walltime=24:00:00",
            "#PBS -l select=2:ncpus=16:mem=65536mb:ngpus=1", "#PBS -q normal", "#PBS -A TG-ABC123",
            "#PBS -r n", "#PBS -j oe", "#PBS -o {work}/fwp.md.abc123.pbs.out", "#PBS -l place=scatter"],
    "lsf": ["#BSUB -J fwp.md.abc123", "#BSUB -W 24:00", "#BSUB -n 32", '#BSUB -R "span[ptile=16]"',
            "#BSUB -M 65536MB", '#BSUB -gpu "num=1"', "#BSUB -q normal", "#BSUB -P TG-ABC123",
            "#BSUB -wa USR1", "#BSUB -wt 10", "#BSUB -x", "#BSUB -app md",
            "#BSUB -o {work}/pilot-%J.out", "#BSUB -e {work}/pilot-%J.err"],
    "torque": ["#PBS -N fwp.md.abc123", "#PBS -l walltime=24:00:00", "#PBS -l nodes=2:ppn=16:gpus=1",
               "#PBS -l pmem=4096mb", "#PBS -q normal", "#PBS -A TG-ABC123", "#PBS -r n", "#PBS -j oe",
               "#PBS -o {work}/fwp.md.abc123.pbs.out", "#PBS -l naccesspolicy=singlejob"],
    # h_vmem is per slot: 64G per node over 16 slots per node; -pe NAME gets nodes x cores slots
    "sge": ["#$ -N fwp.md.abc123", "#$ -S /bin/bash", "#$ -o {work}/pilot-$JOB_ID.out",
            "#$ -e {work}/pilot-$JOB_ID.err", "#$ -l h_rt=24:00:00", "#$ -l h_vmem=4096M", "#$ -q normal",
            "#$ -A TG-ABC123", "#$ -r n", "#$ -notify", "#$ -pe mpi 32", "#$ -l arch=lx-amd64"],
}
JOB_ID_VAR = {"slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "lsf": "LSB_JOBID", "local": "PILOT_LOCAL_JOBID",
              "torque": "PBS_JOBID", "sge": "JOB_ID"}


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "lsf", "torque", "sge"])
def test_every_resource_field_becomes_a_directive(tmp_path, keyfiles, scheduler):
    c = full(tmp_path, keyfiles, scheduler)
    script = render_pilot_script(c, "stampede", "md", "fwp.md.abc123")
    bash_n(script)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for want in EXPECTED[scheduler]:
        assert want.format(work=tmp_path / "work") in lines, f"{want!r} missing from\n{script}"
    prefix = c.scheduler.directive_prefix
    directives_before_code(script, prefix)
    # nothing of another scheduler
    for other in {"#SBATCH", "#PBS", "#BSUB", "#LOCAL", "#$"} - {prefix}:
        assert other + " " not in script
    assert f"PILOT_JOB_ID=${{{JOB_ID_VAR[scheduler]}:-$$}}" in lines
    assert "module load gromacs/2022" in lines and "export OMP_NUM_THREADS=1" in lines


def test_pbs_has_no_warning_signal_and_minimal_clusters_leave_optional_directives_out(tmp_path, keyfiles):
    for sched in ("slurm", "pbs", "lsf", "torque", "sge"):
        c = make_cluster(tmp_path, sched, name=sched, **keyfiles)
        script = render_pilot_script(c, sched, "md", "fwp.md.x")
        bash_n(script)
        for absent in ("--mem", "--gpus", "--partition", "--account", "--qos", "mem=", "ngpus", "-q ", "-A ",
                       "-P ", "-M ", "-gpu", "gpus=", "h_vmem", "-pe "):
            assert not any(line.startswith(("#SBATCH", "#PBS", "#BSUB", "#$")) and absent in line
                           for line in script.splitlines()), (sched, absent)
    for sched in ("pbs", "torque"):
        pbs = render_pilot_script(make_cluster(tmp_path, sched, name=f"{sched}2", **keyfiles), "p2", "md", "fwp.md.x")
        assert "USR1" not in "\n".join(x for x in pbs.splitlines() if x.startswith("#PBS"))


def test_margin_zero_asks_for_no_signal(tmp_path, keyfiles):
    c = make_cluster(tmp_path, "slurm", **keyfiles, walltime_margin=0, grace=0)
    assert "--signal" not in render_pilot_script(c, "c1", "md", "fwp.md.x")
    c = make_cluster(tmp_path, "lsf", name="l", **keyfiles, walltime_margin=0, grace=0)
    lines = render_pilot_script(c, "l", "md", "fwp.md.x").splitlines()
    assert not [x for x in lines if x.startswith(("#BSUB -wa", "#BSUB -wt"))]


def test_local_template_speaks_to_the_local_scheduler(tmp_path):
    c = make_cluster(tmp_path, "local", pilot={"walltime": 120}, walltime_margin=30, grace=5)
    script = render_pilot_script(c, "laptop", "md", "fwp.md.l1", job_id_hint="h7")
    bash_n(script)
    # the directives pilot/localsched.py reads: --name, --time (seconds), --signal=SIG@SECONDS, --output
    from pilot.localsched import parse_directives
    d = parse_directives(script)
    assert d == {"name": "fwp.md.l1", "time": "120", "signal": "USR1@30",
                 "output": f"{tmp_path / 'work'}/fwp.md.l1.local.out"}
    assert "PILOT_JOB_ID=${PILOT_LOCAL_JOBID:-h7}" in script


def test_sge_parallel_environment_and_notify(tmp_path, keyfiles):
    """The slot count is added to '-pe NAME' (nodes x cores), a written count stays; -notify (SIGUSR2 before the
    SIGKILL of h_rt or qdel, forwarded to the worker as TERM) only with a margin; SGE h_rt takes HH:MM:SS."""
    def directives(**over: Any) -> list[str]:
        c = make_cluster(tmp_path, "sge", name=f"s{len(over)}{over.get('walltime_margin', '')}", **keyfiles, **over)
        script = render_pilot_script(c, "s", "md", "fwp.md.x")
        bash_n(script)
        directives_before_code(script, "#$")
        return [x for x in script.splitlines() if x.startswith("#$")]

    assert "#$ -pe smp 8" in directives(pilot={"cores": 4, "nodes": 2, "extra_directives": ["-pe smp"]})
    assert "#$ -pe smp 4-8" in directives(pilot={"cores": 4, "extra_directives": ["#$ -pe smp 4-8"]})
    torque = render_pilot_script(make_cluster(tmp_path, "torque", name="t1", **keyfiles,
                                              pilot={"cores": 4, "memory": "8G"}), "t", "md", "fwp.md.x")
    assert "#PBS -l mem=8192mb" in torque.splitlines() and "pmem" not in torque   # one node: the job's mem
    lines = directives(walltime_margin=0, grace=0, pilot={"walltime": "2::"})
    assert "#$ -l h_rt=02:00:00" in lines and not [x for x in lines if "notify" in x or "pe " in x]
    assert "PILOT_JOB_ID=${JOB_ID:-$$}" in render_pilot_script(
        make_cluster(tmp_path, "sge", name="s9", **keyfiles), "s", "md", "fwp.md.x").splitlines()


def test_all_builtin_templates_are_covered():
    assert set(builtin_template_names()) == {"_base.sh.j2", "slurm.sh.j2", "pbs.sh.j2", "lsf.sh.j2", "local.sh.j2",
                                             "torque.sh.j2", "sge.sh.j2"}


# ------------------------------------------------------------------------------ running the script
FAKE_WORKER = r"""#!/bin/bash
# stands in for `pilot worker`: records its arguments and PILOT_* environment, then follows $FAKE_MODE
out="$PILOT_WORK_DIR/fake-$PILOT_JOB_ID"
printf '%s\n' "$@" > "$out.argv"
env | grep -E '^(PILOT_|WEIRD=|OMP_)' | sort > "$out.env"
case "$FAKE_MODE" in
  exit*) exit "${FAKE_MODE#exit}" ;;
  signals)
    trap 'echo USR1 >> "$out.signals"' USR1
    trap 'echo TERM >> "$out.signals"; exit 3' TERM
    echo ready > "$out.ready"
    for i in $(seq 300); do sleep 0.1; done
    exit 9 ;;
esac
exit 99
"""


@pytest.fixture
def fake_worker(tmp_path: Path) -> Path:
    p = tmp_path / "bin" / "fake-pilot"
    p.parent.mkdir()
    p.write_text(FAKE_WORKER)
    p.chmod(0o755)
    return p


def run_script(script: str, tmp_path: Path, env: dict[str, str], signals: list[tuple[float, int]] = (),
               ready: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "pilot.sh"
    path.write_text(script)
    proc = subprocess.Popen(["bash", str(path)], env={"PATH": os.environ["PATH"], **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if ready is not None:
            wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=15, interval=0.05,
                     what=f"{ready}")
        for delay, sig in signals:
            time.sleep(delay)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_exit(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split("=", 1) for line in path.read_text().splitlines())}


def test_the_worker_gets_the_contracted_command_line(tmp_path, keyfiles, fake_worker):
    """pilot worker --launchpad-file LP --category CAT --name CLUSTER-JOBID --record JOB_NAME --heartbeat S
    --deadline EPOCH --margin M --idle-timeout I --cores C --fworker-name CLUSTER --grace G, with PILOT_DEADLINE
    exported; '~' in launchpad_file is the job user's home."""
    home = tmp_path / "home"
    c = make_cluster(tmp_path, "slurm", **keyfiles, launchpad_file="~/.pilot/my lp.yaml",
                     worker_command=f"{fake_worker} worker", walltime_margin=120, grace=30, idle_timeout=45,
                     pilot={"walltime": "90"})
    script = render_pilot_script(c, "stampede", "md", "fwp.md.abc")
    t0 = int(time.time())
    res = run_script(script, tmp_path, {"SLURM_JOB_ID": "4242", "HOME": str(home), "FAKE_MODE": "exit0"})
    t1 = int(time.time())
    assert res.returncode == 0, res.stderr
    work = tmp_path / "work"
    argv = (work / "fake-4242.argv").read_text().splitlines()
    assert argv[:11] == ["worker", "--launchpad-file", f"{home}/.pilot/my lp.yaml", "--category", "md",
                         "--name", "stampede-4242", "--record", "fwp.md.abc", "--heartbeat", "60"]
    assert argv[11] == "--deadline" and t0 + 5400 <= int(argv[12]) <= t1 + 5400
    assert argv[13:] == ["--margin", "120", "--idle-timeout", "45", "--cores", "1", "--fworker-name", "stampede",
                         "--grace", "30"]
    env = dict(line.split("=", 1) for line in (work / "fake-4242.env").read_text().splitlines())
    assert env["PILOT_DEADLINE"] == argv[12] and env["PILOT_JOB_ID"] == "4242" and env["PILOT_CORES"] == "1"
    assert env["PILOT_CLUSTER"] == "stampede" and env["PILOT_CATEGORY"] == "md"
    ex = read_exit(work / "pilot-4242.exit")
    assert ex["exit_code"] == 0 and t0 <= ex["end_time"] <= int(time.time())
    assert str(work / "pilot-4242.exit") == exit_file_path(c, "4242")


def test_python_setting_starts_the_worker_as_a_module(tmp_path, keyfiles):
    c = make_cluster(tmp_path, "slurm", **keyfiles, python="/opt/py env/bin/python3")
    script = render_pilot_script(c, "c1", "md", "fwp.md.a")
    assert "'/opt/py env/bin/python3' -m pilot worker \\\n" in script


@pytest.mark.parametrize("code", [0, 1, 7, 42])
def test_exit_code_file_holds_the_workers_status(tmp_path, fake_worker, code):
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), walltime_margin=60, grace=10)
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="77")
    res = run_script(script, tmp_path, {"FAKE_MODE": f"exit{code}", "HOME": str(tmp_path)})
    assert res.returncode == code
    work = tmp_path / "work"
    assert read_exit(work / "pilot-77.exit")["exit_code"] == code
    assert f"worker exited with status {code}" in (work / "pilot-77.err").read_text()
    assert not list(work.glob("*.tmp.*"))


def test_usr1_and_term_are_forwarded_and_the_script_waits_for_the_worker(tmp_path, fake_worker):
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), walltime_margin=60, grace=10)
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a")
    work = tmp_path / "work"
    res = run_script(script, tmp_path, {"FAKE_MODE": "signals", "HOME": str(tmp_path), "PILOT_LOCAL_JOBID": "5"},
                     ready=work / "fake-5.ready",
                     signals=[(0.2, signal.SIGUSR1), (0.5, signal.SIGUSR1), (0.5, signal.SIGTERM)])
    # the worker saw each signal once, survived USR1, and its exit status (3 on TERM) is the job's
    assert (work / "fake-5.signals").read_text().splitlines() == ["USR1", "USR1", "TERM"]
    assert res.returncode == 3
    assert read_exit(work / "pilot-5.exit")["exit_code"] == 3


def test_lsf_run_limit_signal_usr2_reaches_the_worker_as_term(tmp_path, keyfiles, fake_worker):
    c = make_cluster(tmp_path, "lsf", **keyfiles, worker_command=str(fake_worker))
    script = render_pilot_script(c, "c1", "md", "fwp.md.a")
    work = tmp_path / "work"
    res = run_script(script, tmp_path, {"FAKE_MODE": "signals", "HOME": str(tmp_path), "LSB_JOBID": "88"},
                     ready=work / "fake-88.ready", signals=[(0.2, signal.SIGUSR2)])
    assert (work / "fake-88.signals").read_text().splitlines() == ["TERM"]
    assert res.returncode == 3 and read_exit(work / "pilot-88.exit")["exit_code"] == 3


def test_a_failing_setup_line_ends_the_pilot_and_is_recorded(tmp_path, fake_worker):
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), setup="true\n( exit 4 )\necho never")
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="9")
    res = run_script(script, tmp_path, {"FAKE_MODE": "exit0", "HOME": str(tmp_path)})
    work = tmp_path / "work"
    assert res.returncode == 4
    assert read_exit(work / "pilot-9.exit")["exit_code"] == 4
    err = (work / "pilot-9.err").read_text()
    assert "pilot: setup failed at line" in err and "(exit code 4)" in err
    assert "never" not in (work / "pilot-9.out").read_text()
    assert not (work / "fake-9.argv").exists()           # the worker never started


def test_usr1_during_setup_does_not_kill_the_worker(tmp_path, fake_worker):
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), setup="sleep 1")
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="10")
    res = run_script(script, tmp_path, {"FAKE_MODE": "exit0", "HOME": str(tmp_path)},
                     signals=[(0.4, signal.SIGUSR1)])
    assert res.returncode == 0
    work = tmp_path / "work"
    assert read_exit(work / "pilot-10.exit")["exit_code"] == 0
    assert "USR1 (wall time nearly over) before the worker started" in (work / "pilot-10.err").read_text()


def test_term_before_the_worker_starts_ends_the_script_with_143(tmp_path, fake_worker):
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), setup="sleep 1")
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="11")
    res = run_script(script, tmp_path, {"FAKE_MODE": "exit0", "HOME": str(tmp_path)},
                     signals=[(0.4, signal.SIGTERM)])
    assert res.returncode == 143
    assert read_exit(tmp_path / "work" / "pilot-11.exit")["exit_code"] == 143


def test_values_are_quoted_not_executed(tmp_path, fake_worker):
    evil = "a b $(touch pwned1) `touch pwned2` 'q' \"d\" ; touch pwned3"
    c = make_cluster(tmp_path, "local", worker_command=str(fake_worker), env={"WEIRD": evil},
                     launchpad_file=str(tmp_path / "lp $(touch pwned4).yaml"))
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="12")
    res = run_script(script, tmp_path, {"FAKE_MODE": "exit0", "HOME": str(tmp_path)})
    assert res.returncode == 0
    work = tmp_path / "work"
    env = dict(line.split("=", 1) for line in (work / "fake-12.env").read_text().splitlines())
    assert env["WEIRD"] == evil
    assert (work / "fake-12.argv").read_text().splitlines()[1] == str(tmp_path / "lp $(touch pwned4).yaml")
    assert not list(tmp_path.rglob("pwned*"))


# ------------------------------------------------------------------------------ custom templates, errors
def test_user_template_extends_a_builtin_and_overrides_blocks(tmp_path, keyfiles):
    (tmp_path / "clusters").mkdir()
    # named like the built-in on purpose: extending "slurm.sh.j2" must reach the built-in, not itself
    (tmp_path / "clusters" / "slurm.sh.j2").write_text(
        '{% extends "slurm.sh.j2" %}\n'
        '{% block extra_directives %}#SBATCH --comment=from-my-template\n{% endblock %}\n'
        '{% block worker_command %}\n  echo hello {{ category | quote }}\n{% endblock %}\n')
    c = make_cluster(tmp_path, "slurm", **keyfiles, template="slurm.sh.j2")
    script = render_pilot_script(c, "c1", "md", "fwp.md.a")
    bash_n(script)
    assert "#SBATCH --comment=from-my-template\n" in script
    assert "\necho hello md &\nPILOT_WORKER_PID=$!\n" in script
    assert "#SBATCH --time=1-00:00:00" in script          # the rest of the built-in is kept


def test_undefined_variable_is_an_error_naming_the_cluster_file(tmp_path, keyfiles):
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "t.sh.j2").write_text('{% extends "pbs.sh.j2" %}{% block setup %}{{ modules }}'
                                                   '{% endblock %}')
    c = make_cluster(tmp_path, "pbs", **keyfiles, template="t.sh.j2")
    with pytest.raises(RenderError) as info:
        render_pilot_script(c, "c1", "md", "fwp.md.a")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'clusters' / 'c1.yaml'}: template {tmp_path / 'clusters' / 't.sh.j2'}: "
                          "'modules' is undefined")
    assert "a pilot template can use:" in msg and "walltime_seconds" in msg


def test_strict_undefined_in_the_environment():
    import jinja2
    env = get_environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nope }}").render()


def test_missing_user_template_names_the_cluster_file(tmp_path, keyfiles):
    (tmp_path / "clusters").mkdir()
    tpl = tmp_path / "clusters" / "gone.sh.j2"
    tpl.write_text('{% extends "slurm.sh.j2" %}')
    c = make_cluster(tmp_path, "slurm", **keyfiles, template="gone.sh.j2")
    tpl.unlink()                                          # removed after the config was loaded
    with pytest.raises(RenderError, match=rf"^{tmp_path / 'clusters' / 'c1.yaml'}: template: file not found: "
                                          rf"{tpl}; write the path of an existing Jinja2 template"):
        render_pilot_script(c, "c1", "md", "fwp.md.a")


def test_template_syntax_error_has_file_and_line(tmp_path, keyfiles):
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "bad.sh.j2").write_text('{% extends "slurm.sh.j2" %}\n{% block setup %}\n{% if %}\n')
    c = make_cluster(tmp_path, "slurm", **keyfiles, template="bad.sh.j2")
    with pytest.raises(RenderError, match=r"template: syntax error in .*bad.sh.j2, line 3"):
        render_pilot_script(c, "c1", "md", "fwp.md.a")


def test_unknown_category_and_unsafe_job_name(tmp_path, keyfiles):
    c = make_cluster(tmp_path, "slurm", **keyfiles, categories=["md", "analysis"])
    with pytest.raises(RenderError, match="does not serve category 'qm'; its categories are: md, analysis"):
        render_pilot_script(c, "c1", "qm", "fwp.qm.a")
    with pytest.raises(RenderError, match="job name 'x; rm -rf /' is not allowed"):
        render_pilot_script(c, "c1", "md", "x; rm -rf /")


def test_job_names_from_the_queue_adapters_are_accepted(tmp_path, keyfiles):
    from queue_adapters.base import job_name
    c = make_cluster(tmp_path, "slurm", **keyfiles, categories=["md.gpu-v2"])
    name = job_name("md.gpu-v2", "a1b2c3", prefix="fwp")
    assert f"#SBATCH --job-name={name}\n" in render_pilot_script(c, "c1", "md.gpu-v2", name)


# ------------------------------------------------------------------------------ the real SLURM
SIGNAL_WORKER = r"""{% extends "slurm.sh.j2" %}
{% block worker_command %}
bash -c 'out="$PILOT_WORK_DIR/w-$PILOT_JOB_ID"; trap "date +%s >> \"\$out.usr1\"" USR1; env | grep ^PILOT_ | sort > "$out.env"; echo ready > "$out.ready"; n=0; while [ ! -s "$out.usr1" ] && [ $n -lt {{ loops }} ]; do sleep 0.1; n=$((n+1)); done; [ -s "$out.usr1" ] && { sleep 1; exit 5; }; exit 9'
{% endblock %}
"""  # noqa: E501  (one bash -c line: breaking it would change the script)


def _submit(info: Any, script_path: Path, cwd: Path) -> str:
    res = subprocess.run(["runuser", "-u", info.user, "--", "env", f"{SLURM_CONF_ENV}={info.slurm_conf}",
                          "sbatch", "--parsable", str(script_path)],
                         check=False, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert res.returncode == 0, f"sbatch failed: {res.stderr}"
    return res.stdout.strip().split(";")[0]


def _scancel(info: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scancel", *args], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, SLURM_CONF_ENV: info.slurm_conf})


def _slurm_pilot(tmp_path: Path, info: Any, work: Path, walltime: str, margin: int, loops: int) -> ClusterConfig:
    cdir = tmp_path / "clusters"
    cdir.mkdir()
    (cdir / "fake.sh.j2").write_text(SIGNAL_WORKER.replace("{{ loops }}", str(loops)))
    (cdir / "pilotci.yaml").write_text(yaml.safe_dump({
        "scheduler": "slurm", "host": info.host, "port": info.port, "user": info.user,
        "identity_file": info.key, "known_hosts": info.known_hosts, "categories": ["md"],
        "launchpad_file": "/nonexistent/lp.yaml", "work_dir": str(work), "template": "fake.sh.j2",
        "pilot": {"walltime": walltime, "cores": 1, "memory": "100M", "partition": "debug"},
        "walltime_margin": margin, "grace": 10}))
    return load_cluster(cdir / "pilotci.yaml")


def _write_for(info: Any, work: Path, script: str) -> Path:
    path = work / "pilot.sh"
    path.write_text(script)
    os.chmod(path, 0o644)
    return path


@pytest.mark.slurm
def test_real_slurm_runs_the_script_and_the_trap_forwards_usr1(tmp_path, slurm_cluster, remote_tmp):
    """sbatch the rendered script as the test user; USR1 sent to the batch shell only (scancel --batch,
    as SLURM's --signal=B: does) must reach the worker through the trap; the exit-code file appears."""
    info = slurm_cluster
    c = _slurm_pilot(tmp_path, info, remote_tmp, walltime="5", margin=60, loops=600)
    script = render_pilot_script(c, info.name, "md", "fwp.md.t1")
    assert "#SBATCH --signal=B:USR1@60" in script and "#SBATCH --mem=100M" in script
    jid = _submit(info, _write_for(info, remote_tmp, script), remote_tmp)
    try:
        out = remote_tmp / f"w-{jid}"
        wait_for(lambda: (out.with_suffix(".ready")).exists(), timeout=90, what=f"job {jid} to start")
        t_sig = time.time()
        res = _scancel(info, "--batch", "--signal=USR1", jid)
        assert res.returncode == 0, res.stderr
        exit_file = remote_tmp / f"pilot-{jid}.exit"
        wait_for(exit_file.exists, timeout=60, what=f"{exit_file}")
        ex = read_exit(exit_file)
        # the worker got exactly one USR1 (from the trap: --batch signals only the batch shell) and exited 5
        assert len((out.with_suffix(".usr1")).read_text().split()) == 1
        assert ex["exit_code"] == 5
        assert int(t_sig) - 1 <= ex["end_time"] <= time.time() + 1
        env = dict(line.split("=", 1) for line in out.with_suffix(".env").read_text().splitlines())
        assert env["PILOT_JOB_ID"] == jid and env["PILOT_CLUSTER"] == info.name
        assert int(env["PILOT_DEADLINE"]) - int(env["PILOT_START"]) == 300
        # SLURM wrote the output files named by the %j pattern
        err = (remote_tmp / f"pilot-{jid}.err").read_text()
        assert f"pilot: job {jid}: worker exited with status 5" in err
        assert (remote_tmp / f"pilot-{jid}.out").exists()
        assert exit_file.stat().st_uid == (remote_tmp.stat().st_uid)
    finally:
        _scancel(info, jid)


# SLURM's own USR1 through the rendered script's trap to the real worker: tests/worker/test_worker_tail.py,
# test_slurm_usr1_is_logged_and_the_pilot_goes_by_its_deadline (it replaced a test here that showed the same
# with a stand-in worker).


# ------------------------------------------------------------------------------ the emulated PBS and LSF
EMU_WORKER = """{% extends "SCHED.sh.j2" %}
{% block worker_command %}
bash -c 'env | grep ^PILOT_ | sort > "$PILOT_WORK_DIR/w-$PILOT_JOB_ID.env"; exit 6'
{% endblock %}
"""


def _run_on_emulator(tmp_path, remote_tmp, info, sched: str, pilot: dict, submit: list[str],
                     env: list[str]) -> tuple[str, Path, dict[str, str]]:
    """Render a pilot script of cluster ``info`` whose worker writes its PILOT_ variables and exits 6, submit it
    with the emulator's ``submit`` argv (as the cluster's user, a private state dir) and wait for its exit-code
    file: (the job id the scheduler printed, the work dir, the variables the worker saw)."""
    state, work = remote_tmp / "emu-state", remote_tmp / "work"
    for d in (state, work):
        d.mkdir()
        os.chown(d, remote_tmp.stat().st_uid, remote_tmp.stat().st_gid)
    cdir = tmp_path / "clusters"
    cdir.mkdir()
    (cdir / "t.sh.j2").write_text(EMU_WORKER.replace("SCHED", sched))
    (cdir / "c.yaml").write_text(yaml.safe_dump({
        "scheduler": sched, "host": info.host, "port": info.port, "user": info.user, "identity_file": info.key,
        "known_hosts": info.known_hosts, "categories": ["md"], "launchpad_file": "/nonexistent/lp.yaml",
        "work_dir": str(work), "template": "t.sh.j2", "walltime_margin": 120, "grace": 10, "pilot": pilot}))
    script = render_pilot_script(load_cluster(cdir / "c.yaml"), info.name, "md", f"fwp.md.{sched}1")
    path = remote_tmp / "pilot.sh"
    path.write_text(script)
    path.chmod(0o644)
    argv = [a.replace("SCRIPT", str(path)) for a in submit]
    res = subprocess.run(["runuser", "-u", info.user, "--", "env", f"PATH=/opt/pilot-emu/{sched}/bin:/usr/bin:/bin",
                          f"PILOT_EMU_STATE={state}", *env, *argv], check=False, capture_output=True, text=True,
                         timeout=60, cwd=remote_tmp)
    assert res.returncode == 0, res.stderr
    # qsub prints the job id ("1.pbsemu"; "1" with -terse); bsub "Job <1> is submitted to default queue <normal>."
    jid = res.stdout.split("<", 1)[1].split(">", 1)[0] if sched == "lsf" else res.stdout.strip()
    exit_file = work / f"pilot-{jid}.exit"
    wait_for(exit_file.exists, timeout=60, what=str(exit_file))
    assert read_exit(exit_file)["exit_code"] == 6
    assert "worker exited with status 6" in (work / f"pilot-{jid}.err").read_text()
    return jid, work, dict(line.split("=", 1) for line in (work / f"w-{jid}.env").read_text().splitlines())


def _emulator_or_skip(sched: str, command: str, how: str) -> None:
    if not (Path(f"/opt/pilot-emu/{sched}/bin") / command).exists():
        pytest.skip(f"the {sched} emulator is not installed in /opt/pilot-emu/{sched}/bin ({how})")


@pytest.mark.emulated
@pytest.mark.parametrize("sched", ["pbs", "lsf"])
def test_emulated_scheduler_accepts_the_script(tmp_path, sched, clusters, remote_tmp):
    """qsub / bsub (tests/infra/emulators, with a private state dir) take the rendered directives and run the
    script; the exit-code file is named by the scheduler's job id ($PBS_JOBID is "N.server")."""
    info = clusters["emupbs" if sched == "pbs" else "emulsf"]
    _emulator_or_skip(sched, "qsub" if sched == "pbs" else "bsub", "bash tests/infra/services.sh emulators")
    submit = ["sh", "-c", "qsub SCRIPT" if sched == "pbs" else "bsub < SCRIPT"]
    pilot = {"walltime": "00:10:00" if sched == "pbs" else "0:10", "cores": 2, "memory": "100M"}
    jid, _, env_seen = _run_on_emulator(tmp_path, remote_tmp, info, sched, pilot, submit, [])
    assert env_seen["PILOT_JOB_ID"] == jid and env_seen["PILOT_CLUSTER"] == info.name
    assert int(env_seen["PILOT_DEADLINE"]) - int(env_seen["PILOT_START"]) == 600


@pytest.mark.emulated
@pytest.mark.parametrize("sched", ["sge", "torque"])
def test_emulated_sge_and_torque_accept_the_script(tmp_path, sched, request, remote_tmp):
    """qsub -terse (Grid Engine) / qsub (the PBS emulator as Torque), with a private state dir, take the rendered
    directives and run the script; the exit-code file is named by $JOB_ID ("N") / $PBS_JOBID ("N.server")."""
    info = request.getfixturevalue(f"{sched}_cluster")
    _emulator_or_skip(sched, "qsub", f"tests/infra/services.sh host emu{sched}")
    pilot = {"walltime": "00:10:00", "cores": 2, "memory": "100M",
             "extra_directives": ["-pe smp"] if sched == "sge" else []}
    env = ["PILOT_EMU_START_DELAY=0", *(["PILOT_EMU_FLAVOR=torque"] if sched == "torque" else [])]
    submit = ["qsub", "-terse", "SCRIPT"] if sched == "sge" else ["qsub", "SCRIPT"]
    jid, _, env_seen = _run_on_emulator(tmp_path, remote_tmp, info, sched, pilot, submit, env)
    assert env_seen["PILOT_JOB_ID"] == jid and env_seen["PILOT_CORES"] == "2"
    assert int(env_seen["PILOT_DEADLINE"]) - int(env_seen["PILOT_START"]) == 600


def test_usr1_right_after_the_start_does_not_kill_the_real_worker(tmp_path, launchpad):
    """SIGUSR1's default action ends a process: the job script starts pilot's own worker with USR1 ignored until
    the worker has its handler. USR1 every 40 ms from the start (as a scheduler's early warning could come) to
    the script, which forwards each: the real worker still runs its Firework and exits 0."""
    from fireworks import Firework
    from fireworks.user_objects.firetasks.script_task import PyTask

    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    launchpad.add_wf(Firework([PyTask(func="time.sleep", args=[4])], spec={"_category": "md"}, name="nap"))
    c = make_cluster(tmp_path, "local", python=sys.executable, launchpad_file=str(lp_file), idle_timeout=1,
                     walltime_margin=60)
    script = render_pilot_script(c, "laptop", "md", "fwp.md.a", job_id_hint="13")
    assert "trap '' USR1\n" in script
    # from the start over 4 s: the first ones before the worker has its handler, the last ones while it runs
    res = run_script(script, tmp_path, {"HOME": str(tmp_path)}, signals=[(0.04, signal.SIGUSR1)] * 100,
                     timeout=60)
    err = (tmp_path / "work" / "pilot-13.err").read_text()
    assert res.returncode == 0, err[-3000:]
    assert read_exit(tmp_path / "work" / "pilot-13.exit")["exit_code"] == 0
    assert launchpad.fireworks.find_one({"name": "nap"})["state"] == "COMPLETED", err[-3000:]
    # the USR1s that came once its handler was in place were only logged: it goes by its deadline
    assert "SIGUSR1 (pre-walltime signal)" in err or "SIGUSR1 (pre-walltime signal)" in res.stderr


@pytest.mark.parametrize(("over", "own"), [
    ({"python": "/opt/py/bin/python3"}, True),
    ({"worker_command": "pilot worker"}, True),
    ({"worker_command": "/opt/venv/bin/pilot worker --fresh-process"}, True),
    ({"worker_command": "/usr/bin/python3 -m pilot worker"}, True),
    ({"worker_command": "srun pilot worker"}, False),
    ({"worker_command": "/home/alice/bin/my-wrapper.sh"}, False),
])
def test_only_pilots_own_worker_starts_with_usr1_ignored(tmp_path, over, own):
    """A wrapper of the user's (a shell script, srun) must be able to trap USR1 itself: only pilot's own worker
    command gets it ignored until its handler is set."""
    script = render_pilot_script(make_cluster(tmp_path, "local", **over), "laptop", "md", "fwp.md.a")
    assert ("trap '' USR1\n" in script) is own
