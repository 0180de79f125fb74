"""A packing queue profile end to end on a real SLURM cluster: one 4-core pilot runs 4 one-core Fireworks at once.

The manager counts the pilot as 4 slots (one pilot for 4 READY Fireworks, not 4 pilots), the job asks SLURM for
4 tasks, and the worker runs the 4 Fireworks side by side, each on a core of its own. What each Firework saw
(``PILOT_CORE_LIST``, its CPU affinity) it writes to a file; when it ran comes from FireWorks' own launch records.
"""

from __future__ import annotations

import os

import pytest
from fireworks import Firework, ScriptTask, Workflow

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import fw_states, job_prefix, readable_lp_file, run_cycles_until, ssh_cluster, write_config
from tests.manager.test_slurm import scancel_all

pytestmark = [pytest.mark.slurm]


@pytest.fixture
def world(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = job_prefix("k")
    c = ssh_cluster(slurm_cluster, str(remote_tmp / "pilotci"), str(lp_file), ["md"], cluster_venv, idle_timeout=3,
                    fireworks_per_pilot=1)
    c.pop("pilot")
    c["profiles"] = {"packed": {"walltime": "5", "cores": 4, "partition": "debug", "pack": True}}
    mgr = Manager(load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci": c}, job_name_prefix=prefix)),
                  launchpad)
    yield mgr
    mgr.close()
    scancel_all(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)


def test_one_packed_pilot_runs_four_fireworks_at_once(world, launchpad, remote_tmp):
    mgr = world
    seen = remote_tmp / "seen"
    seen.mkdir(mode=0o777)
    os.chmod(seen, 0o777)
    for i in range(4):
        script = (f'echo "$PILOT_CORE_LIST $(grep Cpus_allowed_list /proc/self/status | cut -f2)" > {seen}/{i}; '
                  "sleep 4")
        launchpad.add_wf(Workflow([Firework([ScriptTask.from_str(script)], name=f"one-core-{i}",
                                            spec={"_category": "md", "_pilot": {"cores": 1}})]))
    first = mgr.run_cycle()
    (d,) = first.decisions
    assert (d.submit, d.slots, d.fits) == (1, 4, 4), d.log_line()   # 4 slots: one pilot, not four
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 4}, timeout=180)
    workers = {launch["fworker"]["name"] for launch in launchpad.launches.find({})}
    assert len(workers) == 1, workers
    spans = []
    for launch in launchpad.launches.find({}, {"state_history": 1}):
        hist = {h["state"]: h["created_on"] for h in launch["state_history"]}
        spans.append((hist["RUNNING"], hist["COMPLETED"]))
    # all four ran at one time: the last to start started before the first to end ended
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    lists = [(seen / str(i)).read_text().split()[0] for i in range(4)]
    assert sorted(lists) == ["0", "1", "2", "3"], lists   # a core of its own each
