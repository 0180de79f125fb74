"""The cluster file's ``fworker:`` (name, query, env) end to end on a real SLURM cluster: manager, job script,
``pilot worker`` on the compute node, FireWorks' Rocket.

What FireWorks documents for ``rlaunch -w my_fworker.yaml`` is the expectation: a Firework pinned with
``spec._fworker`` to the FWorker's name is taken by it (and here counts as the cluster's demand), one pinned to
another name is not; the FWorker's ``query`` filters what it takes; its ``env`` reaches each Firework as
``spec._fw_env`` (what ``env_chk`` reads ``>>scratch_dir<<`` from). The Firework shows what it got with
FireWorks' own ``PyTask``: ``json.dumps`` of its ``_fw_env``, kept in the launch's ``stored_data``.
"""

from __future__ import annotations

import json

import pytest
from fireworks import Firework, Workflow
from fireworks.user_objects.firetasks.script_task import PyTask

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import job_prefix, readable_lp_file, run_cycles_until, ssh_cluster, write_config
from tests.manager.test_slurm import scancel_all

pytestmark = [pytest.mark.slurm]

ENV = {"scratch_dir": "/scratch/alice b", "nodes_per_job": 2}


@pytest.fixture
def world(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = job_prefix("w")
    c = ssh_cluster(slurm_cluster, str(remote_tmp / "pilotci"), str(lp_file), ["md"], cluster_venv, idle_timeout=3)
    c["fworker"] = {"name": "pilotci-fw", "query": {"spec.site": {"$in": ["pilotci", "any"]}}, "env": ENV}
    mgr = Manager(load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci": c}, job_name_prefix=prefix)),
                  launchpad)
    yield mgr
    mgr.close()
    scancel_all(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)


def _fw(lp, name: str, **spec) -> int:
    task = PyTask(func="json.dumps", inputs=["_fw_env"], stored_data_varname="env")
    fw = Firework([task], name=name, spec={"_category": "md", **spec})
    old_id = fw.fw_id
    return int(lp.add_wf(Workflow([fw]))[old_id])   # add_wf: {the Firework's id: the id the LaunchPad gave it}


def test_pins_query_and_env_from_the_cluster_file(world, launchpad):
    mgr = world
    mine = _fw(launchpad, "pinned-here", _fworker="pilotci-fw", site="pilotci")
    anywhere = _fw(launchpad, "unpinned", site="any")
    other = _fw(launchpad, "pinned-elsewhere", _fworker="another-fw", site="pilotci")
    unmatched = _fw(launchpad, "other-site", site="hopper")
    first = mgr.run_cycle()
    # the two the FWorker takes are demand (the one pinned to its name too); the others are no one's here
    (d,) = first.decisions
    assert (d.fits, d.submit) == (2, 1), d.log_line()
    run_cycles_until(mgr, lambda: {launchpad.get_fw_by_id(i).state for i in (mine, anywhere)} == {"COMPLETED"},
                     timeout=180)
    for fw_id in (mine, anywhere):
        launch = launchpad.launches.find_one({"fw_id": fw_id, "state": "COMPLETED"})
        assert json.loads(launch["action"]["stored_data"]["env"]) == ENV
        assert launch["fworker"]["name"].startswith("pilotci-")   # the pilot's own name: CLUSTER-JOBID
    assert launchpad.get_fw_by_id(other).state == "READY" and launchpad.get_fw_by_id(unmatched).state == "READY"
