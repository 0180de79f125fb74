"""The manager on the emulated PBS Pro and LSF clusters, over the real sshd (127.0.0.3 and 127.0.0.4).

The same flow as on SLURM: demand -> the right number of pilots -> real `pilot worker` processes run the
work -> pilots drain and exit, resolved from the emulators' own qstat/bjobs output.
"""

from __future__ import annotations

import os

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import (
    add_sleepers,
    completed_launches_per_fw,
    fw_states,
    run_cycles_until,
    ssh_cluster,
    write_config,
)

pytestmark = [pytest.mark.emulated]


@pytest.fixture
def world(launchpad, remote_tmp, pbs_cluster, lsf_cluster, cluster_venv, tmp_path):
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "e" + os.urandom(4).hex()[:6]
    # idle_timeout 2 s, not 5: the test waits for every pilot to drain once the work is done
    clusters = {info.name: ssh_cluster(info, str(remote_tmp / info.name), str(lp_file), [cat], cluster_venv,
                                       fireworks_per_pilot=3, idle_timeout=2)
                for info, cat in ((pbs_cluster, "md"), (lsf_cluster, "post"))}
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, clusters, job_name_prefix=prefix))
    mgr = Manager(cfg, launchpad)
    yield mgr
    # cancel whatever of ours is still alive, through the schedulers' own commands
    for rt in mgr.clusters.values():
        ids = [r["job_id"] for r in mgr.records.live(rt.name) if r.get("job_id")]
        if ids:
            rt.run(rt.adapter.cancel_command(ids))
    mgr.close()


def test_pbs_and_lsf_pilots_do_the_work_and_drain(world, launchpad):
    mgr = world
    add_sleepers(launchpad, "md", 6, 0.3)
    add_sleepers(launchpad, "post", 6, 0.3)
    first = mgr.run_cycle()
    # ceil(6 / 3) = 2 pilots on each cluster, for the category it serves
    assert sorted((s["cluster"], s["category"]) for s in first.submitted) == \
        [("emulsf", "post")] * 2 + [("emupbs", "md")] * 2
    pbs_ids = [s["job_id"] for s in first.submitted if s["cluster"] == "emupbs"]
    assert all(j.endswith(".pbsemu") for j in pbs_ids)          # qsub prints "<seq>.<server>"
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 12}, timeout=180)
    assert set(completed_launches_per_fw(launchpad).values()) == {1}
    for d in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
        cat = launchpad.fireworks.find_one({"fw_id": d["fw_id"]})["spec"]["_category"]
        assert d["fworker"]["name"].startswith({"md": "emupbs-", "post": "emulsf-"}[cat])
    run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents({"state": {"$ne": "COMPLETED"}}) == 0,
                     timeout=120, interval=3)
    assert {(p["cluster"], p["state"], p["exit_code"]) for p in launchpad.db["pilots"].find()} == {
        ("emupbs", "COMPLETED", 0), ("emulsf", "COMPLETED", 0)}
