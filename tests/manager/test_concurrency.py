"""One cluster that hangs never stalls the others (issue 16, item 9, must-show).

Three clusters in one manager, all real:

- ``good``: the pilotci SLURM cluster over its sshd. Its pilots are submitted held (``--hold``), so they stay
  PENDING and the demand each cycle is exact;
- ``silent``: a host that accepts TCP and never answers (a listening socket on loopback in this process);
- ``stuck``: the pilotci2 SLURM cluster behind a private sshd whose SFTP server hangs on its ``work_dir`` (the
  real sftp-server behind a relay that stops passing requests on, as a hung file system does).

Expected, from the issue: the good cluster's cycle time stays within one poll interval of what it is alone for
each phase in which another cluster hangs (here two: the silent host in the status query, the stuck one in the
submission),
the two others are reported unreachable with the reason, and in the next cycles the good cluster still gets
its pilots (counted with squeue, as root, not through our code).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.helpers import wait_for
from tests.manager.helpers import add_sleepers, ssh_cluster, write_config
from tests.transport.hang_helpers import SilentServer, hung_sftp_sshd

POLL = 3.0          # poll interval: what a hanging cluster may cost the others per cycle
NOISE = 0.5         # timing noise of the shared test clusters (squeue, the database) between two cycles
HANG_LIMIT = 7.0    # connect_timeout and command_timeout (the SFTP deadline) of the two hanging clusters


def held_jobs(conf: str, user: str, prefix: str) -> list[str]:
    """Ids of the user's jobs named with ``prefix``, as root asks SLURM directly (not through our code)."""
    res = subprocess.run(["squeue", "-h", "-u", user, "-t", "all", "-o", "%i|%j"], capture_output=True, text=True,
                         env=dict(os.environ, SLURM_CONF=conf), timeout=30, check=True)
    return [line.split("|")[0] for line in res.stdout.splitlines() if line.split("|")[1].startswith(prefix)]


@pytest.fixture
def three_clusters(launchpad, slurm_cluster, slurm_cluster2, remote_tmp, tmp_path):
    """The manager of the three clusters (see the module's docstring); stops the servers and cancels the good
    cluster's held pilots afterwards."""
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    prefix = "t" + os.urandom(3).hex()
    stuck_dir = remote_tmp / "stuck"
    silent = SilentServer("127.0.0.1")
    sshd = hung_sftp_sshd(slurm_cluster2, tmp_path / "sshd", remote_tmp, str(stuck_dir)).start()
    mgr = None
    try:
        def cluster(info, category, work, **over):
            return ssh_cluster(info, str(work), str(lp_file), [category], info.venv, fireworks_per_pilot=1, **over)

        hang = {"connect_timeout": HANG_LIMIT, "command_timeout": HANG_LIMIT}
        good = cluster(slurm_cluster, "md", remote_tmp / "good")
        good["pilot"]["extra_directives"] = ["--hold"]
        clusters = {
            "good": good,
            "silent": cluster(slurm_cluster, "hang1", remote_tmp / "silent", host=silent.host, port=silent.port,
                              **hang),
            "stuck": cluster(slurm_cluster2, "hang2", stuck_dir, host=sshd.host, port=sshd.port,
                             known_hosts=str(sshd.known_hosts), **hang),
        }
        # a long back-off: once failed, the two are not tried again during the test
        cfg = load_config(write_config(tmp_path / "cfg", lp_file, clusters, poll_interval=POLL,
                                       job_name_prefix=prefix, backoff={"initial": 60, "max": 120}))
        mgr = Manager(cfg, launchpad)
        yield mgr, prefix, stuck_dir
    finally:
        if mgr is not None:
            wait_for(lambda: not any(mgr.phases.busy(n) for n in mgr.clusters), timeout=HANG_LIMIT + 5,
                     interval=0.2, what="the clusters' threads to end")
            mgr.close()
        sshd.stop()
        silent.close()
        for info in (slurm_cluster, slurm_cluster2):
            ids = held_jobs(info.slurm_conf, info.user, prefix)
            if ids:
                subprocess.run(["scancel", *ids], env=dict(os.environ, SLURM_CONF=info.slurm_conf), timeout=30)


@pytest.mark.slurm
def test_a_silent_host_and_a_hung_work_dir_do_not_stall_the_other_cluster(
        three_clusters, launchpad, slurm_cluster, slurm_cluster2):
    mgr, prefix, stuck_dir = three_clusters
    # normal: only the good cluster has work (the others are not contacted at all); the first cycle opens
    # the connection, the second one also asks squeue about the first one's pilots
    durations = []
    for name in ("a0", "a1"):
        add_sleepers(launchpad, "md", 2, name=name)
        rep = mgr.run_cycle()
        assert rep.errors == {}
        assert [s["cluster"] for s in rep.submitted] == ["good", "good"]
        durations.append(rep.duration)
    normal = max(durations)
    assert len(held_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)) == 4

    # now the two others have work too: both hang in their first remote operation
    add_sleepers(launchpad, "hang1", 1, name="b")
    add_sleepers(launchpad, "hang2", 1, name="c")
    add_sleepers(launchpad, "md", 2, name="d")
    t0 = time.monotonic()
    hung = mgr.run_cycle()
    # the silent host hangs in the status phase (before a cluster's first pilot the manager reads its
    # maintenance reservations: pilot/manager/maintenance.py), the stuck work dir in the submission: each phase
    # waited for its hanging cluster exactly one poll interval (one after another, with their own deadlines,
    # it took at least 2 * HANG_LIMIT)
    assert 2 * POLL <= hung.duration <= normal + 2 * POLL + NOISE, (hung.duration, normal)
    assert [s["cluster"] for s in hung.submitted] == ["good", "good"]
    phase = {"silent": "status query", "stuck": "submission"}
    for name in ("silent", "stuck"):
        assert hung.errors[name].startswith(f"unreachable: no answer within {POLL:g} s to the {phase[name]}")
    assert "good" not in hung.errors

    # the next cycle starts at once: both are still busy with their hung operation and are skipped
    add_sleepers(launchpad, "md", 2, name="e")
    busy = mgr.run_cycle()
    assert busy.duration < POLL, (busy.duration, normal)   # no wait for a cluster that is skipped
    assert [s["cluster"] for s in busy.submitted] == ["good", "good"]
    for name in ("silent", "stuck"):
        assert busy.errors[name].startswith(f"still busy with the previous cycle's {phase[name]} since")
    assert len(held_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)) == 8

    # their own deadlines end the hung operations; the cycle that sees them ended reports why
    wait_for(lambda: not (mgr.phases.busy("silent") or mgr.phases.busy("stuck")), timeout=HANG_LIMIT + 5,
             interval=0.2, what="the hung operations to end")
    assert time.monotonic() - t0 < HANG_LIMIT + 5
    add_sleepers(launchpad, "md", 2, name="f")
    after = mgr.run_cycle()
    assert after.duration < POLL, (after.duration, normal)
    assert [s["cluster"] for s in after.submitted] == ["good", "good"]
    print(f"cycle durations: normal {normal:.2f} s, two clusters hanging {hung.duration:.2f} s, skipped while busy "
          f"{busy.duration:.2f} s, after {after.duration:.2f} s (poll interval {POLL:g} s; one after another: "
          f"at least {2 * HANG_LIMIT:g} s)")
    assert f"timed out after {HANG_LIMIT:g} s" in after.errors["silent"]
    assert f"no answer from the SFTP server within {HANG_LIMIT:g} s" in after.errors["stuck"]
    assert str(stuck_dir) in after.errors["stuck"]
    for name in ("silent", "stuck"):
        assert mgr.clusters[name].failures == 1
        assert launchpad.db["pilot_clusters"].find_one({"_id": name})["failures"] == 1
    # nothing of theirs reached a scheduler: the silent host got no submission, the stuck one's is recorded failed
    failed = {p["cluster"]: p["state"] for p in launchpad.db["pilots"].find({"cluster": {"$ne": "good"}})}
    assert failed == {"stuck": "SUBMIT_FAILED"}
    assert held_jobs(slurm_cluster2.slurm_conf, slurm_cluster2.user, prefix) == []
    assert len(held_jobs(slurm_cluster.slurm_conf, slurm_cluster.user, prefix)) == 10


def test_phases_report_a_job_that_raises_skip_a_busy_cluster_and_count_late_results_later():
    """The phase rules on plain jobs (threads of this process): a job that raises is that cluster's error only;
    a job past the deadline is reported and its cluster skipped while it runs; what it did counts later."""
    from pilot.manager.concurrency import ClusterPhases
    from pilot.manager.runtime import CycleReport

    phases = ClusterPhases(["a", "b", "c"], clock=time.time)
    release = threading.Event()

    def fine(rep):
        rep.submitted.append({"cluster": "a"})
        return 1

    def broken(rep):
        raise RuntimeError("database down")

    def slow(rep):
        release.wait(30)
        rep.submitted.append({"cluster": "c"})
        rep.errors["c"] = "sbatch refused"
        return 3

    first = CycleReport(started=time.time())
    t0 = time.monotonic()
    results = phases.run("status query", {"a": fine, "b": broken, "c": slow}, first, deadline=0.5)
    assert 0.5 <= time.monotonic() - t0 < 1.5
    assert results == {"a": 1}
    assert first.submitted == [{"cluster": "a"}]
    assert first.errors["b"] == "status query failed: RuntimeError: database down"
    assert first.errors["c"].startswith("unreachable: no answer within 0.5 s to the status query")
    assert "a" not in first.errors

    second = CycleReport(started=time.time())
    t0 = time.monotonic()
    assert phases.run("submission", {"a": fine, "c": fine}, second, deadline=0.5) == {"a": 1}
    assert time.monotonic() - t0 < 0.4        # the busy cluster is not waited for
    assert second.errors["c"].startswith("still busy with the previous cycle's status query since")

    release.set()
    wait_for(lambda: phases.busy("c") is None, timeout=10, interval=0.05, what="the slow job to end")
    third = CycleReport(started=time.time())
    phases.collect_late(third)
    assert third.submitted == [{"cluster": "c"}]
    assert third.errors == {"c": "sbatch refused"}
    assert phases.run("status query", {"c": fine}, CycleReport(started=0), deadline=5) == {"c": 1}


def test_a_job_that_ends_late_between_two_phases_is_collected_not_a_failed_cycle():
    """Found by the soak test: a status query that missed its deadline and ended just before the same cycle's
    next phase made starting that phase raise ("the previous job was not collected") and cost the whole cycle.
    Now its results are collected then, and the new job starts."""
    from pilot.manager.concurrency import ClusterPhases
    from pilot.manager.runtime import CycleReport

    phases = ClusterPhases(["c"], clock=time.time)
    release = threading.Event()

    def slow(rep):
        release.wait(30)
        rep.submitted.append({"cluster": "c", "late": True})
        return "late"

    report = CycleReport(started=time.time())
    assert phases.run("status query", {"c": slow}, report, deadline=0.2) == {}
    release.set()
    wait_for(lambda: phases.busy("c") is None, timeout=10, interval=0.05, what="the slow job to end")
    assert phases.run("submission", {"c": lambda rep: "now"}, report, deadline=5) == {"c": "now"}
    assert report.submitted == [{"cluster": "c", "late": True}]
