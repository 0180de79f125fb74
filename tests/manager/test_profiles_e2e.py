"""Two queue profiles on one cluster, end to end: the emulated PBS Pro cluster with a GPU queue beside its
default one (tests/infra/services.sh gives the emulator the queues ``workq`` and ``gpu``).

Fireworks asking for a GPU must run in pilots of the GPU profile (queue ``gpu``, ``ngpus=1`` in the select
statement, as PBS Pro's qsub takes a GPU request), Fireworks asking for 4 cores in pilots of the CPU profile;
a profile none of whose READY work fits gets no pilot, and ``pilot status`` says which profile was chosen and why.
Which pilot ran a Firework is read from FireWorks' own launch records (``fworker.name`` = CLUSTER-JOBID) and the
scheduler's job ids, never from the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import pytest
from fireworks import Firework, ScriptTask, Workflow

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.helpers import wait_for
from tests.manager.helpers import fw_states, job_prefix, readable_lp_file, run_cycles_until, ssh_cluster, write_config

pytestmark = [pytest.mark.emulated]

PROFILES = {"gpu": {"walltime": "00:05:00", "cores": 1, "gpus": 1, "partition": "gpu"},
            "cpu": {"walltime": "00:05:00", "cores": 4, "partition": "workq"}}


@pytest.fixture
def world(launchpad, remote_tmp, pbs_cluster, cluster_venv, tmp_path):
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = job_prefix("q")
    c = ssh_cluster(pbs_cluster, str(remote_tmp / "emupbs"), str(lp_file), ["md"], cluster_venv, idle_timeout=2)
    c.pop("pilot")
    c["profiles"] = PROFILES
    cdir = write_config(tmp_path / "cfg", lp_file, {"emupbs": c}, job_name_prefix=prefix)
    mgr = Manager(load_config(cdir), launchpad)
    yield mgr, cdir
    for rt in mgr.clusters.values():
        ids = [r["job_id"] for r in mgr.records.live(rt.name) if r.get("job_id")]
        if ids:
            rt.run(rt.adapter.cancel_command(ids))
    mgr.close()


def _add(lp, name: str, asks: dict, n: int) -> None:
    for i in range(n):
        lp.add_wf(Workflow([Firework([ScriptTask.from_str("sleep 0.2")], name=f"{name}-{i}",
                                     spec={"_category": "md", "_pilot": asks})]))


def _status(cdir) -> str:
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cdir), "status"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode in (0, 1), res.stderr
    return res.stdout


def test_gpu_and_cpu_work_land_on_their_profiles(world, launchpad):
    mgr, cdir = world
    _add(launchpad, "gpu", {"gpus": 1}, 2)
    _add(launchpad, "cpu", {"cores": 4}, 2)
    _add(launchpad, "huge", {"cores": 64}, 1)   # fits no profile: no pilot for it
    first = mgr.run_cycle()
    by_profile = {(d.profile, d.submit, d.fits) for d in first.decisions}
    # 5 READY: 2 fit the GPU profile, 2 the CPU one (fireworks_per_pilot 5: one pilot each), the 64-core one none
    assert by_profile == {("gpu", 1, 2), ("cpu", 1, 2)}, [d.log_line() for d in first.decisions]
    records = {r["job_id"]: r for r in launchpad.db["pilots"].find({"job_id": {"$ne": None}})}
    assert sorted(r["profile"] for r in records.values()) == ["cpu", "gpu"]
    for r in records.values():   # what the scheduler was asked for: the job script of each profile
        script = open(r["script_path"]).read()
        if r["profile"] == "gpu":
            assert "#PBS -q gpu" in script and "ngpus=1" in script
        else:
            assert "#PBS -q workq" in script and "ngpus" not in script and "ncpus=4" in script
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 4, "READY": 1}, timeout=180)
    for launch in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
        fw = launchpad.fireworks.find_one({"fw_id": launch["fw_id"]})
        job_id = launch["fworker"]["name"].removeprefix("emupbs-")
        want = "gpu" if fw["spec"]["_pilot"].get("gpus") else "cpu"
        assert records[job_id]["profile"] == want, (fw["name"], records[job_id])
    assert launchpad.fireworks.find_one({"name": "huge-0"})["state"] == "READY"
    text = _status(cdir)
    assert "QUEUE PROFILES" in text and "emupbs[gpu]" in text and "emupbs[cpu]" in text
    huge = launchpad.fireworks.find_one({"name": "huge-0"})["fw_id"]
    assert (f"* category md: 1 READY Firework asks for more cores, GPUs or memory (spec._pilot) than any queue "
            f"profile has, or more time than the profiles that have them: no pilot will take it. Lower the asks, or "
            f"add a profile that has them (fw {huge})") in text
    assert "    emupbs[cpu]: <= 4 cores, no GPU, <= 4.5 min" in text


def test_no_pilot_of_a_profile_whose_resources_no_ready_firework_uses(world, launchpad):
    mgr, cdir = world
    _add(launchpad, "cpu", {"cores": 2}, 3)
    report = mgr.run_cycle()
    gpu = [d for d in report.decisions if d.profile == "gpu"]
    cpu = [d for d in report.decisions if d.profile == "cpu"]
    assert [(d.submit, d.reason, d.fits) for d in gpu] == [(0, "none fit", 0)]
    # the CPU profile takes them; a 4-core pilot without packing runs one at a time
    assert [(d.submit, d.reason, d.fits) for d in cpu] == [(1, "demand", 3)]
    assert [s["profile"] for s in report.submitted] == ["cpu"]
    line = next(x for x in _status(cdir).splitlines() if "emupbs[gpu]" in x)
    assert "none (none fit: it takes <= 1 cores, a GPU asked" in line, line


def _sacct(conf: str, job_id: str) -> tuple[str, str] | None:
    """SLURM's own record of a job: (Partition, AllocTRES), once accounting has it."""
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Partition,AllocTRES"], capture_output=True,
                         text=True, env=dict(os.environ, SLURM_CONF=conf), timeout=30, check=True)
    row = res.stdout.strip().split("|")
    return (row[0], row[1]) if len(row) == 2 and row[0] else None


@pytest.mark.slurm
def test_gpu_and_cpu_partitions_of_a_real_slurm_cluster(launchpad, remote_tmp, slurm_cluster2, cluster_venv,
                                                        tmp_path):
    """pilotci2's node has four GPUs (device files only) and a ``gpu`` partition: GPU work runs in pilots SLURM
    placed in that partition with a GPU allocated (sacct's own Partition and AllocTRES, and the
    CUDA_VISIBLE_DEVICES SLURM gives the task), CPU work in pilots of ``debug`` without one."""
    from tests.manager.test_slurm import scancel_all

    info = slurm_cluster2
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = job_prefix("g")
    c = ssh_cluster(info, str(remote_tmp / "pilotci2"), str(lp_file), ["md"], cluster_venv, idle_timeout=2)
    c.pop("pilot")
    c["profiles"] = {"gpu": {"walltime": "5", "cores": 1, "gpus": 1, "partition": "gpu"},
                     "cpu": {"walltime": "5", "cores": 2, "partition": "debug"}}
    mgr = Manager(load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci2": c}, job_name_prefix=prefix)),
                  launchpad)
    seen = remote_tmp / "seen"
    seen.mkdir(mode=0o777)
    os.chmod(seen, 0o777)
    try:
        for name, asks in (("gpu", {"gpus": 1}), ("cpu", {"cores": 2})):
            script = f'echo "CVD=${{CUDA_VISIBLE_DEVICES-unset}}" > {seen}/{name}'
            launchpad.add_wf(Workflow([Firework([ScriptTask.from_str(script)], name=name,
                                                spec={"_category": "md", "_pilot": asks})]))
        first = mgr.run_cycle()
        assert sorted((d.profile, d.submit) for d in first.decisions) == [("cpu", 1), ("gpu", 1)], \
            [d.log_line() for d in first.decisions]
        run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 2}, timeout=180)
        records = {r["job_id"]: r for r in launchpad.db["pilots"].find({"job_id": {"$ne": None}})}
        for launch in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
            fw = launchpad.fireworks.find_one({"fw_id": launch["fw_id"]})
            job_id = launch["fworker"]["name"].removeprefix("pilotci2-")
            assert records[job_id]["profile"] == fw["name"]
            partition, tres = wait_for(partial(_sacct, info.slurm_conf, job_id), 60, 1.0, f"sacct to know {job_id}")
            assert partition == {"gpu": "gpu", "cpu": "debug"}[fw["name"]]
            assert ("gres/gpu=1" in tres) == (fw["name"] == "gpu"), tres
        assert (seen / "gpu").read_text().strip() == "CVD=0"
        assert (seen / "cpu").read_text().strip() in ("CVD=unset", "CVD=")
    finally:
        mgr.close()
        scancel_all(info.slurm_conf, info.user, prefix)
