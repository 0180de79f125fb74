"""The one rule for "this pilot is dead" (issue 16): a final scheduler state **and** the pilot's own silence.

The rule itself (:func:`pilot.manager.liveness.verdict`) on records, then the manager on the real SLURM
clusters: a slurmctld stopped for three cycles, a listing that answers an unknown state code or garbage, a
federated id, a pilot killed mid-Firework. Expected outcomes are the promise of the issue: no Firework runs
twice, lost work comes back, every Firework ends COMPLETED with exactly one launch.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time

import psutil
import pytest

from pilot.manager.cycle import Manager
from pilot.manager.liveness import MISSED_BEATS, verdict
from pilot.transport.clusters import transport_for
from tests.helpers import wait_for
from tests.manager.helpers import (
    add_held,
    add_interrupted,
    add_sleepers,
    completed_launches_per_fw,
    launches_per_fw,
    run_cycles_until,
)
from tests.manager.test_slurm import hard_kill_pilot
from tests.manager.test_slurm import world as world  # noqa: PLC0414 - the fixture, used by name

NOW = 1_800_000_000.0


# --------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(("rec", "dead"), [
    ({"state": "RUNNING", "heartbeat": NOW - 9999}, False),              # the scheduler says it runs
    ({"state": "UNKNOWN"}, False),                                       # an unmapped state is no end
    ({"state": "PENDING"}, False),
    ({"state": "FAILED"}, True),                                         # never beat: it never took work
    ({"state": "FAILED", "heartbeat": NOW - 5, "heartbeat_interval": 60}, False),   # it still beats
    ({"state": "CANCELLED", "heartbeat": NOW - 181, "heartbeat_interval": 60}, True),
    ({"state": "TIMEOUT", "heartbeat": NOW - 2, "exit": {"reason": "deadline reached"}}, True),
    ({"state": "VANISHED", "end_time": NOW - 10}, False),                # absent, maybe in another listing
    ({"state": "VANISHED", "end_time": NOW - 400}, True),                # absent and never beat since
    ({"state": "VANISHED", "heartbeat": NOW - 4, "heartbeat_interval": 2}, False),
    ({"state": "VANISHED", "heartbeat": NOW - 7, "heartbeat_interval": 2}, True),
])
def test_dead_only_when_the_job_is_over_and_the_pilot_is_quiet(rec, dead):
    v = verdict(rec, NOW)
    assert v.dead is dead, v.why


def test_the_bound_is_three_of_the_pilots_own_intervals():
    assert MISSED_BEATS == 3
    rec = {"state": "COMPLETED", "heartbeat": NOW - 30, "heartbeat_interval": 10}
    assert not verdict(rec, NOW).dead
    assert verdict(rec, NOW + 0.5).dead


# --------------------------------------------------------------------------- on the real SLURM
def fws_in(lp, state: str) -> int:
    return lp.fireworks.count_documents({"state": state})


def _slurmctld(info, start: bool) -> None:
    """Stop (SIGTERM, by the PID of its pid file, and wait) or start the cluster's slurmctld, as
    tests/infra/services.sh does."""
    conf = info.slurm_conf
    env = dict(os.environ, SLURM_CONF=conf)
    pid_file = os.path.join(os.path.dirname(conf), "slurmctld.pid")
    if not start:
        pid = int(open(pid_file).read().strip())
        assert psutil.Process(pid).name() == "slurmctld"
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not psutil.pid_exists(pid), 30, 0.2, "slurmctld to stop")
        return
    subprocess.run(info.on_login(["/usr/sbin/slurmctld", "-f", conf]), check=True, timeout=30, env=env)
    wait_for(lambda: "UP" in subprocess.run(info.on_login(["scontrol", "ping"]), capture_output=True, text=True,
                                            env=env, timeout=30).stdout, 60, 0.3, "slurmctld to answer")


def test_slurmctld_down_for_three_cycles_reruns_nothing(world, launchpad, slurm_cluster2, remote_tmp):
    config, cluster, _ = world
    cfg = config({"pilotci2": cluster(slurm_cluster2, ["md"], heartbeat_interval=1, fireworks_per_pilot=2,
                                      limits={"max_queued": 2, "max_running": 2})}, poll_interval=3)
    # two run (two more wait behind them) until slurmctld is back and the manager has seen it once
    release = remote_tmp / "release"
    ids = add_held(launchpad, "md", release, 4)
    mgr = Manager(cfg, launchpad)
    try:
        run_cycles_until(mgr, lambda: fws_in(launchpad, "RUNNING") >= 2, timeout=120)
        mgr.run_cycle()   # the records say RUNNING
        _slurmctld(slurm_cluster2, start=False)
        try:
            down = []
            for _ in range(3):
                down.append(mgr.run_cycle())
                time.sleep(1.5)   # longer than the pilots' heartbeat interval (1 s): they beat through it
        finally:
            _slurmctld(slurm_cluster2, start=True)
        assert all("pilotci2" in r.errors for r in down), [r.errors for r in down]
        assert fws_in(launchpad, "RUNNING") == 2   # the pilots ran on through the outage
        mgr.clusters["pilotci2"].backoff_until = 0.0   # not wait out the back-off of those failures
        after = [mgr.run_cycle()]   # the first cycle that sees the queue again, with the work still running
        release.touch()
        after += run_cycles_until(mgr, lambda: fws_in(launchpad, "COMPLETED") == 4, timeout=180, interval=1)
    finally:
        mgr.close()
    assert [f for r in down + after for f in r.reruns] == []
    assert completed_launches_per_fw(launchpad) == dict.fromkeys(ids, 1)
    assert launches_per_fw(launchpad) == dict.fromkeys(ids, 1)
    assert launchpad.db["pilot_reruns"].count_documents({}) == 0


class _RewritingTransport:
    """The cluster's real transport; the output of its real ``squeue`` is rewritten while :attr:`rewrite` is
    set (a listing with an unknown state code, or garbage, as a broken or newer SLURM would print)."""

    def __init__(self, inner):
        self._inner = inner
        self.rewrite = None

    def run(self, argv, *args, **kwargs):
        res = self._inner.run(argv, *args, **kwargs)
        if self.rewrite is not None and "squeue" in argv:
            res = dataclasses.replace(res, stdout=self.rewrite(res.stdout))
        return res

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.mark.parametrize("fault", ["unknown-state", "garbage"])
def test_one_bad_listing_reruns_nothing_and_submits_no_extra_pilot(world, launchpad, slurm_cluster, remote_tmp,
                                                                   fault):
    config, cluster, _ = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], heartbeat_interval=1, fireworks_per_pilot=5,
                                     limits={"max_queued": 1, "max_running": 1})}, poll_interval=2)
    # the first runs (the second waits READY behind it) until the bad listing is over
    release = remote_tmp / "release"
    ids = add_held(launchpad, "md", release, 2)
    wrapped: list[_RewritingTransport] = []

    def factory(name, ccfg):
        wrapped.append(_RewritingTransport(transport_for(name, ccfg)))
        return wrapped[-1]

    mgr = Manager(cfg, launchpad, transport_factory=factory)
    try:
        reports = run_cycles_until(mgr, lambda: fws_in(launchpad, "RUNNING") == 1, timeout=120)
        reports += run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents({"state": "RUNNING"}) == 1,
                                    timeout=30)
        # one cycle: the pilot's line says UPDATE_DB (a SLURM state flag no table of ours maps), or the
        # listing is garbage
        wrapped[-1].rewrite = ((lambda out: out.replace("|RUNNING|", "|UPDATE_DB|")) if fault == "unknown-state"
                               else (lambda out: "\x1b[2J%%% slurm_load_jobs: ?? \x00\n-- garbage --\n"))
        bad = mgr.run_cycle()
        wrapped[-1].rewrite = None
        if fault == "unknown-state":
            assert launchpad.db["pilots"].count_documents({"state": "UNKNOWN"}) == 1
        assert (fws_in(launchpad, "RUNNING"), fws_in(launchpad, "READY")) == (1, 1)   # still, after the bad cycle
        reports += [bad, mgr.run_cycle()]   # and a good listing again, with the work still running
        release.touch()
        reports += run_cycles_until(mgr, lambda: fws_in(launchpad, "COMPLETED") == 2, timeout=120)
    finally:
        mgr.close()
    assert [f for r in reports for f in r.reruns] == []
    assert len([s for r in reports for s in r.submitted]) == 1, "an extra pilot was submitted"
    assert completed_launches_per_fw(launchpad) == dict.fromkeys(ids, 1)
    assert launches_per_fw(launchpad) == dict.fromkeys(ids, 1)


def test_federated_id_is_tracked_to_the_end_without_a_rerun(world, launchpad, slurm_cluster):
    """``#SBATCH -M pilotci``: sbatch prints ``id;pilotci``; the manager keeps it whole, lists and accounts for
    the job with ``-M`` and finds it COMPLETED at the end, with its Firework run once."""
    config, cluster, _ = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], heartbeat_interval=1, idle_timeout=2,
                                     pilot={"walltime": "5", "cores": 1, "partition": "debug",
                                            "extra_directives": [f"--clusters={slurm_cluster.name}"]},
                                     limits={"max_queued": 1, "max_running": 1})}, poll_interval=2)
    (fw_id,) = add_sleepers(launchpad, "md", 1, 3)
    mgr = Manager(cfg, launchpad)
    try:
        (sub,) = mgr.run_cycle().submitted
        assert sub["job_id"] == f"{sub['job_id'].split(';')[0]};{slurm_cluster.name}", sub
        reports = run_cycles_until(mgr, lambda: (launchpad.db["pilots"].find_one({"_id": sub["job_name"]}) or {})
                                   .get("state") == "COMPLETED", timeout=120)
    finally:
        mgr.close()
    rec = launchpad.db["pilots"].find_one({"_id": sub["job_name"]})
    assert rec["fworker"] == f"pilotci-{sub['job_id'].split(';')[0]}" and rec["heartbeat"]
    assert rec["exit"]["stop"] == "IDLE"
    assert [f for r in reports for f in r.reruns] == []
    assert completed_launches_per_fw(launchpad) == {fw_id: 1}


@pytest.mark.parametrize("kill", ["scancel", "kill -9"])
def test_pilot_killed_mid_firework_is_rerun_within_two_cycles(world, launchpad, slurm_cluster, remote_tmp, kill):
    """``scancel``: the worker gets SIGTERM, requeues its Firework itself and writes its exit record.
    ``kill -9`` of the worker and its Firework: no requeue, no exit record; the job ends, the heartbeat goes
    quiet and the manager reruns the Firework. Either way it leaves RUNNING within two cycles after the one
    that ran at the kill, and completes once in the end."""
    config, cluster, _ = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], heartbeat_interval=1,
                                     limits={"max_queued": 1, "max_running": 1})}, poll_interval=4)
    fw_id = add_interrupted(launchpad, "md", remote_tmp / "started")   # the first run outlasts the kill
    mgr = Manager(cfg, launchpad)
    env = dict(os.environ, SLURM_CONF=slurm_cluster.slurm_conf)
    try:
        (sub,) = mgr.run_cycle().submitted
        wait_for(lambda: launchpad.get_fw_by_id(fw_id).state == "RUNNING", 90, 0.5, "the pilot to start the fw")
        mgr.run_cycle()
        if kill == "scancel":
            subprocess.run(slurm_cluster.on_login(["scancel", sub["job_id"]]), check=True, timeout=30, env=env)
        else:
            assert hard_kill_pilot(f"pilotci-{sub['job_id']}") >= 2   # the worker and its rocket at least
        reports = run_cycles_until(mgr, lambda: launchpad.get_fw_by_id(fw_id).state != "RUNNING", timeout=40,
                                   interval=4)
        assert len(reports) <= 3, f"still RUNNING {len(reports) - 1} cycles after the kill"
        run_cycles_until(mgr, lambda: launchpad.get_fw_by_id(fw_id).state == "COMPLETED", timeout=150, interval=3)
    finally:
        mgr.close()
    assert completed_launches_per_fw(launchpad) == {fw_id: 1}
    assert launches_per_fw(launchpad) == {fw_id: 2}   # the killed run's launch, then the one that completed
    [entry] = launchpad.db["pilot_reruns"].find_one({"_id": fw_id})["history"]
    assert entry["pilot"] == sub["job_name"]
    if kill == "scancel":
        assert entry["by"] == f"pilotci-{sub['job_id']}" and "SIGTERM" in entry["reason"], entry
    else:
        assert entry["by"] == "manager" and "heartbeat" in entry["reason"], entry
        assert fw_id in [f for r in reports for f in r.reruns]
