"""The tail of a pilot (issue 18): the time between its last Firework and its end is not given away.

* SLURM's pre-walltime signal (``--signal=B:USR1@walltime_margin``), which comes up to 60 s earlier than asked
  (sbatch(1)), stops nothing in a worker that knows its deadline: proved with SLURM's own signal, the job
  script rendered by the project's own path and the real worker, in one batch job.
* A worker whose time left fits none of the READY work that a fresh pilot would take leaves at once instead of
  holding its allocation for ``--idle-timeout`` seconds.

Expected states come from FireWorks' state model and from SLURM's documented job states, never from the
worker's code.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import pytest
import yaml
from fireworks import ScriptTask

from tests.helpers import wait_for
from tests.manager.helpers import ssh_cluster
from tests.worker import test_worker
from tests.worker.test_worker import _slurm, add, assert_nothing_running, fw_doc, launches_of

#: the ``workers`` fixture of test_worker.py (real ``pilot worker`` subprocesses, stopped after the test)
workers = test_worker.workers


# --------------------------------------------------------------------------- nothing fits the time left
def test_pilot_leaves_at_once_when_ready_work_no_longer_fits(launchpad, tmp_path, workers):
    """Deadline in 16 s, margin 4 s: about 12 s usable at the start, so a Firework of walltime 6 s fits a
    fresh pilot. The first Firework (higher priority) runs until less than 6 s are usable; then the other one
    no longer fits this pilot. With a 300 s idle timeout the worker would otherwise stay until its deadline
    (stopped: deadline reached); it must leave at once, and the Firework stays READY, untouched."""
    deadline = time.time() + 16
    margin, walltime = 4, 6
    # the first Firework sleeps until the usable time left (deadline - margin - now) is below the walltime
    first = add(launchpad, ScriptTask.from_str(
        f't=$(( PILOT_DEADLINE - {margin} - {walltime} + 1 - $(date +%s) )); [ "$t" -gt 0 ] && sleep "$t"; true'),
        "uses-the-time", "tail", priority=10)
    waiting = add(launchpad, ScriptTask.from_str("true"), "needs-6-s", "tail", priority=1, walltime=walltime)
    w = workers(launchpad, tmp_path, ["tail"], "--deadline", str(deadline), "--margin", str(margin),
                "--idle-timeout", "300", "--grace", "2")
    assert w.wait(60) == 0, w.log()
    log = w.log()
    assert fw_doc(launchpad, first)["state"] == "COMPLETED", log
    assert "stopped: READY work, but none fits the time left" in log, log
    assert re.search(r"READY work needs at least 6 s \(smallest spec._pilot.walltime or min_walltime\), \d+ s "
                     r"usable left", log)
    doc = fw_doc(launchpad, waiting)
    assert doc["state"] == "READY" and launches_of(launchpad, waiting) == [] and not doc.get("archived_launches")
    assert launchpad.db["pilot_reruns"].find_one({"_id": waiting}) is None   # not a rerun, not counted
    assert "1 Fireworks run (1 completed, 0 fizzled, 0 requeued)" in log
    assert_nothing_running(launchpad)


def test_the_tail_takes_work_that_sizes_itself_to_the_time_left(launchpad, tmp_path, workers):
    """``spec._pilot.min_walltime``: a Firework that sizes itself to the time it gets (an MD segment with
    ``-maxh``) is taken while its minimum fits, although its walltime does not. Deadline in 20 s, margin 4 s:
    the first Firework (highest priority) runs until less than 8 s are usable; the segment (walltime 600 s,
    minimum 3 s) is taken next and ends itself 6 s before ``PILOT_STOP_AT``; then a segment whose minimum (10 s)
    fits a fresh pilot (16 s usable) but not the time left makes the worker leave at once, untouched."""
    deadline = time.time() + 20
    margin = 4
    first = add(launchpad, ScriptTask.from_str(
        f't=$(( PILOT_DEADLINE - {margin} - 8 + 1 - $(date +%s) )); [ "$t" -gt 0 ] && sleep "$t"; true'),
        "uses-the-time", "tailmin", priority=10)
    sized = add(launchpad, ScriptTask.from_str(
        't=$(( PILOT_STOP_AT - 6 - $(date +%s) )); [ "$t" -gt 0 ] && sleep "$t"; true'),
        "sized-segment", "tailmin", priority=5, walltime=600)
    launchpad.fireworks.update_one({"fw_id": sized}, {"$set": {"spec._pilot.min_walltime": 3}})
    big = add(launchpad, ScriptTask.from_str("true"), "big-minimum", "tailmin", priority=1, walltime=600)
    launchpad.fireworks.update_one({"fw_id": big}, {"$set": {"spec._pilot.min_walltime": 10}})
    w = workers(launchpad, tmp_path, ["tailmin"], "--deadline", str(deadline), "--margin", str(margin),
                "--idle-timeout", "300", "--grace", "2")
    assert w.wait(60) == 0, w.log()
    log = w.log()
    assert fw_doc(launchpad, first)["state"] == "COMPLETED", log
    assert fw_doc(launchpad, sized)["state"] == "COMPLETED", log   # ended by itself: no SIGTERM, not requeued
    assert "stopped: READY work, but none fits the time left" in log, log
    assert re.search(r"READY work needs at least 10 s \(smallest spec._pilot.walltime or min_walltime\)", log), log
    assert fw_doc(launchpad, big)["state"] == "READY" and launches_of(launchpad, big) == []
    assert "2 Fireworks run (2 completed, 0 fizzled, 0 requeued)" in log
    assert_nothing_running(launchpad)


# --------------------------------------------------------------------------- SLURM's USR1, for real
def _sbatch(cluster, script_path, cwd) -> str:
    res = subprocess.run(["runuser", "-u", cluster.user, "--", "env", f"SLURM_CONF={cluster.slurm_conf}",
                          "sbatch", "--parsable", str(script_path)], capture_output=True, text=True, timeout=60,
                         cwd=cwd, check=False)
    assert res.returncode == 0, f"sbatch failed: {res.stderr}"
    return res.stdout.strip().split(";")[0]


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_usr1_is_logged_and_the_pilot_goes_by_its_deadline(launchpad, slurm_cluster, cluster_venv,
                                                                  remote_tmp, tmp_path):
    """The job script rendered from the cluster file (walltime 1 minute, walltime_margin 20 s) asks SLURM for
    ``--signal=B:USR1@20``. slurmctld sends it at its first time-limit pass (every 30 s) that is within
    20 + 30 s of the end (send_job_warn_signal, src/slurmctld/job_mgr.c): 10 to 40 s into the job, while the
    one Firework runs (it runs until the worker has logged the signal, then 2 s more). The worker logs the
    signal and stops nothing: the Firework completes, and the worker leaves by its deadline (deadline -
    margin), before SLURM's time limit, so the job ends COMPLETED with exit code 0 (not TIMEOUT)."""
    from pilot.config.loading import load_cluster
    from pilot.render import render_pilot_script
    from queue_adapters.base import job_name

    category = "usr1tail"
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    saw = remote_tmp / "fw-saw-usr1"
    note = "SIGUSR1 (pre-walltime signal)"
    # the worker's log is the job's stderr file, WORK_DIR/pilot-JOBID.err (templates/slurm.sh.j2)
    fw_id = add(launchpad, ScriptTask.from_str(
        f'e="$PILOT_WORK_DIR/pilot-$PILOT_JOB_ID.err"; for i in $(seq 300); do grep -q "{note}" "$e" && break; '
        f'sleep 0.2; done; grep -q "{note}" "$e" && echo "$(date +%s)" > {saw}; sleep 2'), "through-usr1", category)
    cdir = tmp_path / "clusters"
    cdir.mkdir()
    (cdir / f"{slurm_cluster.name}.yaml").write_text(yaml.safe_dump(ssh_cluster(
        slurm_cluster, str(remote_tmp), str(lp_file), [category], cluster_venv,
        pilot={"walltime": "1", "cores": 1, "partition": "debug"}, walltime_margin=20, idle_timeout=300, grace=5)))
    cluster = load_cluster(cdir / f"{slurm_cluster.name}.yaml")
    script = render_pilot_script(cluster, slurm_cluster.name, category,
                                 job_name(category, uuid.uuid4().hex[:8], prefix="tusr"))
    assert "#SBATCH --signal=B:USR1@20\n" in script and "#SBATCH --time=00:01:00\n" in script   # sbatch(1) forms
    path = remote_tmp / "pilot.sh"
    path.write_text(script)
    os.chmod(path, 0o644)
    job_id = _sbatch(slurm_cluster, path, remote_tmp)
    try:
        wait_for(lambda: _slurm(slurm_cluster, "squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip()
                 in ("", "COMPLETED", "TIMEOUT", "FAILED", "CANCELLED"), 240, 0.3, f"SLURM job {job_id} to end")
    finally:
        _slurm(slurm_cluster, "scancel", job_id)
    state = wait_for(lambda: _slurm(slurm_cluster, "sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State").stdout
                     .strip(), 60, 0.3, "sacct to know the job")
    log = (remote_tmp / f"pilot-{job_id}.err").read_text()
    # the worker left by itself, before SLURM's time limit: COMPLETED, not TIMEOUT (sacct(1) job states)
    assert state == "COMPLETED", (state, log)
    assert (remote_tmp / f"pilot-{job_id}.exit").read_text().startswith("exit_code=0\n"), log
    # the Firework ran through SLURM's USR1 and completed: it saw the worker's note while it ran
    assert saw.exists(), log
    (launch,) = launches_of(launchpad, fw_id)
    assert launch["state"] == "COMPLETED" and fw_doc(launchpad, fw_id)["state"] == "COMPLETED", log
    assert launch["fworker"]["name"] == f"{slurm_cluster.name}-{job_id}"
    notes = re.findall(r"SIGUSR1 \(pre-walltime signal\) (-?\d+) s before the deadline \(margin 20 s\): nothing is "
                       r"stopped", log)
    assert len(notes) == 1, log                    # SLURM signals once; the job script forwards it once
    assert "-> SIGTERM to process group" not in log, log
    # in this order: the Firework started, SLURM's USR1 came, the Firework completed, the deadline ended the pilot
    marks = [log.index(f"fw {fw_id} 'through-usr1' started"), log.index(note), log.index(f"fw {fw_id} COMPLETED"),
             log.index("stopped: deadline reached")]
    assert marks == sorted(marks), log
    print(f"SLURM's USR1 (asked for 20 s before the end) came {notes[0]} s before the worker's deadline")
    assert_nothing_running(launchpad)
