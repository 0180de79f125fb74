"""The manager on the emulated Grid Engine and Torque clusters (emusge, emutorque), over the real sshd.

The same flow as on SLURM, PBS Pro and LSF (tests/manager/test_emulated.py): demand -> the right number of pilots
(`scheduler: sge` with a parallel environment, `scheduler: torque` with `-l nodes=1:ppn=C`) -> real `pilot worker`
processes on the compute nodes run the work -> pilots drain and exit, resolved from the emulators' own output
(`qstat -xml` and `qacct -j` for Grid Engine, Torque's `qstat -f` with state C).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import add_sleepers, completed_launches_per_fw, fw_states, run_cycles_until, write_config

pytestmark = [pytest.mark.emulated]


def cluster_file(info: Any, work_dir: str, lp_file: str, category: str, venv: str, **over: Any) -> dict[str, Any]:
    """A cluster file for one of the emulated test clusters (the shape of tests.manager.helpers.ssh_cluster)."""
    c: dict[str, Any] = {
        "scheduler": info.scheduler, "host": info.host, "port": info.port, "user": info.user,
        "identity_file": info.key, "known_hosts": info.known_hosts, "categories": [category],
        "launchpad_file": lp_file, "work_dir": work_dir, "setup": f"source {venv}/bin/activate\n",
        "pilot": {"walltime": "00:05:00", "cores": 2}, "walltime_margin": 30, "grace": 5,
        "idle_timeout": 2, "fireworks_per_pilot": 3, "limits": {"max_queued": 10, "max_running": 10},
        "heartbeat_interval": 2,
    }
    c.update(over)
    return c


@pytest.fixture
def world(launchpad, remote_tmp, sge_cluster, torque_cluster, cluster_venv, tmp_path):
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "g" + os.urandom(4).hex()[:6]
    sge = cluster_file(sge_cluster, str(remote_tmp / "emusge"), str(lp_file), "md", cluster_venv)
    sge["pilot"]["extra_directives"] = ["-pe smp"]      # two slots: the template adds the count
    torque = cluster_file(torque_cluster, str(remote_tmp / "emutorque"), str(lp_file), "post", cluster_venv)
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, {"emusge": sge, "emutorque": torque},
                                   job_name_prefix=prefix))
    mgr = Manager(cfg, launchpad)
    yield mgr
    for rt in mgr.clusters.values():    # whatever of ours is still alive, through the schedulers' own commands
        ids = [r["job_id"] for r in mgr.records.live(rt.name) if r.get("job_id")]
        if ids:
            rt.run(rt.adapter.cancel_command(ids))
    mgr.close()


def test_sge_and_torque_pilots_do_the_work_and_drain(world, launchpad, remote_tmp):
    mgr = world
    add_sleepers(launchpad, "md", 6, 0.3)
    add_sleepers(launchpad, "post", 6, 0.3)
    first = mgr.run_cycle()
    # ceil(6 / 3) = 2 pilots on each cluster, for the category it serves
    assert sorted((s["cluster"], s["category"]) for s in first.submitted) == \
        [("emusge", "md")] * 2 + [("emutorque", "post")] * 2
    ids = {s["cluster"]: [] for s in first.submitted}
    for s in first.submitted:
        ids[s["cluster"]].append(s["job_id"])
    assert all(j.isdigit() for j in ids["emusge"])                  # qsub -terse prints the number
    assert all(j.endswith(".torqueemu") for j in ids["emutorque"])  # Torque: "<seq>.<server>"
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 12}, timeout=180)
    assert set(completed_launches_per_fw(launchpad).values()) == {1}
    for d in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
        cat = launchpad.fireworks.find_one({"fw_id": d["fw_id"]})["spec"]["_category"]
        assert d["fworker"]["name"].startswith({"md": "emusge-", "post": "emutorque-"}[cat])
    run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents({"state": {"$ne": "COMPLETED"}}) == 0,
                     timeout=120, interval=3)
    assert {(p["cluster"], p["state"], p["exit_code"]) for p in launchpad.db["pilots"].find()} == {
        ("emusge", "COMPLETED", 0), ("emutorque", "COMPLETED", 0)}
    # Grid Engine wrote the pilots' output itself (-o WORK/pilot-$JOB_ID.out), with the slots of the PE
    for jid in ids["emusge"]:
        assert "worker exited with status 0" in (remote_tmp / "emusge" / f"pilot-{jid}.err").read_text()
