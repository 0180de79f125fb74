"""A segmented GROMACS run through real pilots on the real SLURM, driven by the manager.

The 216-water box runs in >= 3 segments inside pilot jobs of the test user; it must end at exactly nsteps
with as many trajectory and energy frames as one uninterrupted `gmx mdrun`, judged by GROMACS itself.
"""

from __future__ import annotations

import os
import shutil

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import run_cycles_until, ssh_cluster, write_config
from tests.manager.test_slurm import scancel_all
from tests.md.test_gromacs import ENGINE, ENV, NSTEPS, cpt_step, edr_frames, water, xtc_frames  # noqa: F401

pytestmark = [
    pytest.mark.slurm, pytest.mark.gromacs,
    pytest.mark.skipif(shutil.which("gmx") is None, reason="GROMACS `gmx` not on PATH (CI installs it)"),
]


def test_gromacs_segments_through_real_pilots(launchpad, water, remote_tmp, slurm_cluster, cluster_venv, tmp_path):  # noqa: F811
    from tasks.workflow import make_md_workflow

    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    run_dir = remote_tmp / "water"
    run_dir.mkdir()
    shutil.copy(water["tpr"], run_dir / "md.tpr")
    shutil.chown(run_dir, slurm_cluster.user, slurm_cluster.user)
    shutil.chown(run_dir / "md.tpr", slurm_cluster.user, slurm_cluster.user)

    prefix = "g" + os.urandom(4).hex()[:6]
    c = ssh_cluster(slurm_cluster, str(remote_tmp / "work"), str(lp_file), ["md"], cluster_venv,
                    fireworks_per_pilot=10, walltime_margin=20)
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci": c}, job_name_prefix=prefix))
    # segments of ~1.4 s of mdrun; short startup slack and deadline margin so they fit 5-minute pilots
    wf = make_md_workflow(run_dir, "gromacs", "water", segment_hours=0.0004, engine_params=ENGINE, env=ENV,
                          startup_slack_s=30, deadline_margin_s=20)
    launchpad.add_wf(wf)
    mgr = Manager(cfg, launchpad)
    try:
        def done() -> bool:
            states = {d["state"] for d in launchpad.fireworks.find({}, {"state": 1})}
            return states == {"COMPLETED"}

        run_cycles_until(mgr, done, timeout=300, interval=2)
    finally:
        mgr.close()
        scancel_all(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)

    md = list(launchpad.fireworks.find({"name": {"$regex": "^water-md-"}}, {"fw_id": 1, "launches": 1}))
    assert len(md) >= 3, f"expected >= 3 segments, got {len(md)}"
    fworkers = {launchpad.launches.find_one({"launch_id": fw["launches"][-1]})["fworker"]["name"] for fw in md}
    assert all(name.startswith("pilotci-") for name in fworkers)   # every segment ran in a SLURM pilot
    # the same result as the uninterrupted run, judged by GROMACS itself
    assert cpt_step(run_dir / "md.cpt") == water["step"] == NSTEPS
    assert xtc_frames(run_dir / "md.xtc") == water["xtc"]
    assert edr_frames(run_dir / "md.edr") == water["edr"]
