"""`pilot submit` and `pilot cancel` by hand, on the real SLURM cluster over sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.manager.helpers import ssh_cluster, write_config
from tests.manager.test_slurm import our_jobs, scancel_all

pytestmark = [pytest.mark.slurm]


@pytest.fixture
def cfg_dir(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "c" + os.urandom(4).hex()[:6]
    # held pilots (sbatch --hold): they must not start and take the node while we look at them
    c = ssh_cluster(slurm_cluster, str(remote_tmp / "work"), str(lp_file), ["md", "post"], cluster_venv)
    c["pilot"]["extra_directives"] = ["--hold"]
    d = write_config(tmp_path / "cfg", lp_file, {"pilotci": c}, job_name_prefix=prefix)
    yield d, prefix
    scancel_all(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)


def pilot(cfg: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", cfg, *args], capture_output=True,
                          text=True, timeout=120)


def test_submit_then_cancel_all(cfg_dir, launchpad, slurm_cluster):
    d, prefix = cfg_dir
    res = pilot(str(d), "submit", "pilotci", "-n", "2", "--category", "post")
    assert res.returncode == 0, res.stderr
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(lines) == 2
    jobs = {j[0]: j for j in our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)}
    for job_id, name in lines:
        assert jobs[job_id][1] == name and name.startswith(f"{prefix}.post.")
        assert jobs[job_id][2] == "PENDING"
    # recorded like the manager's own pilots
    recs = {r["job_id"]: r for r in launchpad.db["pilots"].find()}
    assert set(recs) == set(jobs) and {r["category"] for r in recs.values()} == {"post"}
    res = pilot(str(d), "cancel", "pilotci", "--all")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == sorted([*jobs, "cancelled", "cancelled"])
    states = {j[0]: j[2] for j in our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)}
    assert set(states.values()) == {"CANCELLED"}


def test_submit_json_and_cancel_by_id(cfg_dir, slurm_cluster):
    d, prefix = cfg_dir
    res = pilot(str(d), "submit", "pilotci", "--json")
    assert res.returncode == 0, res.stderr
    (sub,) = json.loads(res.stdout)["submitted"]
    assert sub["category"] == "md"          # the cluster's first category
    res = pilot(str(d), "cancel", "pilotci", sub["job_id"])
    assert res.stdout.strip() == f"{sub['job_id']}\tcancelled"


def test_bad_requests_are_clear(cfg_dir):
    d, _ = cfg_dir
    res = pilot(str(d), "submit", "nosuch")
    assert res.returncode == 1 and "no cluster named 'nosuch'" in res.stderr and "known: pilotci" in res.stderr
    res = pilot(str(d), "submit", "pilotci", "--category", "gpu")
    assert res.returncode == 1 and "does not serve category 'gpu' (its categories: md, post)" in res.stderr
    res = pilot(str(d), "cancel", "pilotci")
    assert res.returncode == 2 and "give JOB_IDS or --all" in res.stderr


def test_refused_submission_names_the_reason(cfg_dir, tmp_path):
    d, _ = cfg_dir
    text = (d / "clusters" / "pilotci.yaml").read_text().replace("partition: debug", "partition: nosuchpart")
    (d / "clusters" / "pilotci.yaml").write_text(text)
    res = pilot(str(d), "submit", "pilotci")
    assert res.returncode == 1
    # sbatch's own words (SLURM 22.05): "invalid partition specified: nosuchpart"
    assert "submitted 0 of 1 pilots to pilotci" in res.stderr
    assert "invalid partition specified: nosuchpart" in res.stderr.lower()
