"""The manager on the two real SLURM clusters, over the real sshd (issue: the manager daemon).

The pilots are real SLURM jobs of the test user running ``pilot worker`` from the cluster venv against
the test LaunchPad.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.helpers import OwnSshd, wait_for
from tests.manager.helpers import (
    add_interrupted,
    add_sleepers,
    completed_launches_per_fw,
    fw_states,
    launches_per_fw,
    run_cycles_until,
    ssh_cluster,
    write_config,
)

pytestmark = [pytest.mark.slurm]


def squeue(conf: str, user: str) -> list[tuple[str, str, str]]:
    """(job id, name, state) of the user's jobs, as root asks SLURM directly (not through our code)."""
    res = subprocess.run(["squeue", "-h", "-u", user, "-t", "all", "-o", "%i|%j|%T"], capture_output=True,
                         text=True, env=dict(os.environ, SLURM_CONF=conf), timeout=30, check=True)
    return [tuple(line.split("|")) for line in res.stdout.splitlines() if line]  # type: ignore[misc]


def our_jobs(conf: str, user: str, prefix: str) -> list[tuple[str, str, str]]:
    return [j for j in squeue(conf, user) if j[1].startswith(prefix)]


def scancel_all(conf: str, user: str, prefix: str) -> None:
    ids = [j[0] for j in our_jobs(conf, user, prefix) if j[2] in ("PENDING", "RUNNING", "COMPLETING")]
    if ids:
        subprocess.run(["scancel", *ids], env=dict(os.environ, SLURM_CONF=conf), timeout=30)


@pytest.fixture
def world(launchpad, remote_tmp, slurm_cluster, slurm_cluster2, cluster_venv, tmp_path):
    """Config dir + a LaunchPad file the test user can read; cancels our jobs afterwards."""
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "t" + os.urandom(4).hex()[:6]   # a job-name prefix of this test's own

    def config(clusters: dict, **pilot):
        return load_config(write_config(tmp_path / "cfg", lp_file, clusters, job_name_prefix=prefix, **pilot))

    def cluster(info, categories, **over):
        work = remote_tmp / info.name
        return ssh_cluster(info, str(work), str(lp_file), categories, cluster_venv, **over)

    yield config, cluster, prefix
    for info in (slurm_cluster, slurm_cluster2):
        scancel_all(info.slurm_conf, info.user, prefix)


def test_two_categories_two_clusters(world, launchpad, slurm_cluster, slurm_cluster2):
    config, cluster, prefix = world
    # idle_timeout 2 s, not 5: the test waits for every pilot to drain once the work is done
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], idle_timeout=2),
                  "pilotci2": cluster(slurm_cluster2, ["post"], idle_timeout=2)})
    add_sleepers(launchpad, "md", 15, 0.5)
    add_sleepers(launchpad, "post", 15, 0.5)
    mgr = Manager(cfg, launchpad)
    try:
        first = mgr.run_cycle()
        # ceil(15 / 5) = 3 pilots per category, each on the cluster serving it
        assert sorted((s["cluster"], s["category"]) for s in first.submitted) == \
            [("pilotci", "md")] * 3 + [("pilotci2", "post")] * 3
        assert len(our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)) == 3
        assert len(our_jobs(slurm_cluster2.slurm_conf, slurm_cluster2.user, prefix)) == 3
        run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 30}, timeout=240)
        assert set(completed_launches_per_fw(launchpad).values()) == {1}
        # md Fireworks ran on pilotci pilots, post ones on pilotci2
        for d in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
            cat = launchpad.fireworks.find_one({"fw_id": d["fw_id"]})["spec"]["_category"]
            assert d["fworker"]["name"].startswith({"md": "pilotci-", "post": "pilotci2-"}[cat])
        # every pilot drains (idle timeout) and exits 0
        run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents(
            {"state": {"$nin": ["COMPLETED"]}}) == 0, timeout=120, interval=3)
        assert {(p["state"], p["exit_code"]) for p in launchpad.db["pilots"].find()} == {("COMPLETED", 0)}
    finally:
        mgr.close()


def test_zero_demand_submits_nothing(world, launchpad, slurm_cluster):
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"])})
    mgr = Manager(cfg, launchpad)
    try:
        for _ in range(3):
            assert mgr.run_cycle().submitted == []
    finally:
        mgr.close()
    assert our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix) == []


def hard_kill_pilot(fworker: str) -> int:
    """SIGKILL a pilot's worker and every process under it at once, as a node crash would (root, same machine)."""
    import psutil

    victims = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "worker" in cmd and "--name" in cmd and fworker in cmd:
            victims.append(p)
            victims.extend(p.children(recursive=True))
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(victims)


def test_cancelled_pilot_work_runs_again_exactly_once(world, launchpad, slurm_cluster, remote_tmp):
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"])})
    fw_id = add_interrupted(launchpad, "md", remote_tmp / "started")   # the first run outlasts the scancel
    mgr = Manager(cfg, launchpad)
    try:
        (sub,) = mgr.run_cycle().submitted
        wait_for(lambda: launchpad.get_fw_by_id(fw_id).state == "RUNNING", 90, 1, "the pilot to start the fw")
        subprocess.run(["scancel", sub["job_id"]], check=True, timeout=30,
                       env=dict(os.environ, SLURM_CONF=slurm_cluster.slurm_conf))
        run_cycles_until(mgr, lambda: launchpad.get_fw_by_id(fw_id).state == "COMPLETED", timeout=180, interval=2)
    finally:
        mgr.close()
    assert completed_launches_per_fw(launchpad) == {fw_id: 1}
    assert launches_per_fw(launchpad) == {fw_id: 2}   # the cancelled run's launch, then the one that completed
    first = launchpad.db["pilots"].find_one({"_id": sub["job_name"]})
    assert first["state"] == "CANCELLED"


def test_hard_killed_pilot_work_is_rerun_by_the_manager(world, launchpad, slurm_cluster, remote_tmp):
    config, cluster, prefix = world
    # dead = job over and 3 beats missed: 3 s of silence with 1 s beats (the rule is the same at any interval)
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], heartbeat_interval=1)})
    fw_id = add_interrupted(launchpad, "md", remote_tmp / "started")   # the first run outlasts the kill
    mgr = Manager(cfg, launchpad)
    try:
        (sub,) = mgr.run_cycle().submitted
        wait_for(lambda: launchpad.get_fw_by_id(fw_id).state == "RUNNING", 90, 1, "the pilot to start the fw")
        assert hard_kill_pilot(f"pilotci-{sub['job_id']}") >= 2   # the worker and its rocket at least
        reports = run_cycles_until(mgr, lambda: launchpad.get_fw_by_id(fw_id).state == "COMPLETED",
                                   timeout=180, interval=2)
        assert fw_id in [f for r in reports for f in r.reruns]
    finally:
        mgr.close()
    assert completed_launches_per_fw(launchpad) == {fw_id: 1}
    assert launches_per_fw(launchpad) == {fw_id: 2}   # the killed run's launch, then the one that completed
    rec = launchpad.db["pilot_reruns"].find_one({"_id": fw_id})
    assert rec["count"] == 1 and rec["history"][0]["pilot"] == sub["job_name"]


def test_max_reruns_then_fizzled_with_the_reason(world, launchpad, slurm_cluster):
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"])}, max_reruns=0)
    (fw_id,) = add_sleepers(launchpad, "md", 1, 60)
    mgr = Manager(cfg, launchpad)
    try:
        (sub,) = mgr.run_cycle().submitted
        wait_for(lambda: launchpad.get_fw_by_id(fw_id).state == "RUNNING", 90, 1, "the pilot to start the fw")
        assert hard_kill_pilot(f"pilotci-{sub['job_id']}") >= 2
        run_cycles_until(mgr, lambda: launchpad.get_fw_by_id(fw_id).state == "FIZZLED", timeout=120)
    finally:
        mgr.close()
    launch = launchpad.launches.find_one({"fw_id": fw_id, "state": "FIZZLED"})
    msg = launch["action"]["stored_data"]["_message"]
    assert sub["job_name"] in msg and "max_reruns=0" in msg


def test_cluster_down_backs_off_other_finishes_then_recovers(world, launchpad, slurm_cluster, slurm_cluster2,
                                                             tmp_path):
    config, cluster, prefix = world
    # an sshd of our own on pilotci2's login node (same host key), so that its outage touches no other test
    sshd = OwnSshd(slurm_cluster2, tmp_path / "sshd").start()
    try:
        # one Firework per pilot, at most 2 queued each: 4 READY Fireworks need both clusters
        cfg = config({"pilotci": cluster(slurm_cluster, ["md"], fireworks_per_pilot=1,
                                         limits={"max_queued": 2, "max_running": 4}),
                      "pilotci2": cluster(slurm_cluster2, ["md"], port=sshd.port, known_hosts=str(sshd.known_hosts),
                                          fireworks_per_pilot=1, limits={"max_queued": 2, "max_running": 4})})
        mgr = Manager(cfg, launchpad)
        add_sleepers(launchpad, "md", 4, 0.5)
        first = mgr.run_cycle()
        assert {s_["cluster"] for s_ in first.submitted} == {"pilotci", "pilotci2"}
        sshd.stop()   # the listener and its sessions: established connections drop too
        # more work while pilotci2 is unreachable
        add_sleepers(launchpad, "md", 16, 0.5, name="late")
        reports = run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 20}, timeout=240)
        errs = [r.errors.get("pilotci2") for r in reports if r.errors.get("pilotci2")]
        assert errs, "pilotci2 never reported its failure"
        assert f"{slurm_cluster2.host} port {sshd.port}" in errs[0]
        st = launchpad.db["pilot_clusters"].find_one({"_id": "pilotci2"})
        assert st["reachable"] is False and st["backoff_until"] > 0
        # every late Firework ran on pilotci (pilotci2's own pilots may have taken some before: fine)
        assert fw_states(launchpad) == {"COMPLETED": 20}
        # sshd returns: after the backoff the cluster is contacted again and marked reachable
        sshd.start()
        add_sleepers(launchpad, "md", 1, 0.1, name="after")
        run_cycles_until(mgr, lambda: launchpad.db["pilot_clusters"].find_one({"_id": "pilotci2"})["reachable"],
                         timeout=60, interval=1)
        mgr.close()
    finally:
        sshd.stop()


def test_kill9_between_submit_and_record_no_duplicates(world, launchpad, slurm_cluster, tmp_path):
    config, cluster, prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], pilot={"walltime": "5", "cores": 1,
                                                                  "partition": "debug"})})
    cfg_dir = tmp_path / "cfg"
    add_sleepers(launchpad, "md", 10, 30)   # ceil(10/5) = 2 pilots
    env = dict(os.environ, PILOT_FAULT="kill-after-submit")
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager", "run", "--once"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL
    # the job exists in SLURM, our record says SUBMITTING with no job id
    jobs = our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)
    assert len(jobs) == 1
    (rec,) = list(launchpad.db["pilots"].find())
    assert rec["state"] == "SUBMITTING" and rec["job_id"] is None and rec["_id"] == jobs[0][1]
    # restart without the fault: the job is adopted by name, and only the one missing pilot is added
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager", "run", "--once"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    jobs = our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)
    assert len(jobs) == 2
    adopted = launchpad.db["pilots"].find_one({"_id": rec["_id"]})
    assert adopted["job_id"] == next(j[0] for j in jobs if j[1] == rec["_id"])
    assert adopted["state"] in ("PENDING", "RUNNING")
    # and a third run adds nothing
    subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager", "run", "--once"],
                   capture_output=True, text=True, timeout=120, check=True)
    assert len(our_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)) == 2
    assert cfg is not None
