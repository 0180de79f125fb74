"""The manager lease: one manager per LaunchPad, across config dirs (embedded server, no test clusters).

The lease is the document ``_id: "lease"`` in ``pilot_manager``; it lasts ``3 * poll_interval`` seconds, so the
managers here (``poll_interval: 1``) hold a 3 s lease that a killed manager leaves behind for at most 3 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pilot.manager.lease import COLLECTION, LEASE_ID, Lease, LeaseHeldError, read_holder
from tests.helpers import pid_alive, wait_for
from tests.manager.helpers import local_cluster, write_config


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_lease_is_taken_once_renewed_expires_and_released(launchpad, tmp_path):
    clock = Clock()
    a = Lease(launchpad.db, tmp_path / "a", 30, clock=clock)
    b = Lease(launchpad.db, tmp_path / "b", 30, clock=clock)
    held = a.acquire()
    assert (held.pid, held.config_dir, held.expires) == (os.getpid(), str(tmp_path / "a"), clock.t + 30)
    assert a.acquire().since == clock.t          # ours: taking it again is fine
    with pytest.raises(LeaseHeldError) as e:
        b.acquire()
    assert e.value.holder.config_dir == str(tmp_path / "a")
    assert f"config dir {tmp_path / 'a'}" in str(e.value)
    assert f"`pilot --config-dir {tmp_path / 'a'} manager stop`" in str(e.value)
    assert "expires by itself in 30 s" in str(e.value)
    clock.t += 20
    assert a.renew()                              # renewed: 30 s from now again
    clock.t += 29
    with pytest.raises(LeaseHeldError):
        b.acquire()
    clock.t += 2                                  # a stopped renewing: expired
    assert b.acquire().config_dir == str(tmp_path / "b")
    assert not a.renew()                          # a finds it lost
    a.release()                                   # and its release leaves b's lease alone
    holder = read_holder(launchpad.db)
    assert holder is not None and holder.config_dir == str(tmp_path / "b")
    b.release()
    assert read_holder(launchpad.db) is None
    assert a.acquire().config_dir == str(tmp_path / "a")


def test_racing_managers_one_wins(launchpad, tmp_path):
    """Eight managers take a free lease at the same moment, five times over: exactly one wins each time."""
    import threading

    for round_ in range(5):
        leases = [Lease(launchpad.db, tmp_path / f"m{i}", 30) for i in range(8)]
        won: list[Lease] = []
        start = threading.Barrier(len(leases))

        def take(lease: Lease, start: threading.Barrier = start, won: list[Lease] = won) -> None:
            start.wait()
            try:
                lease.acquire()
                won.append(lease)
            except LeaseHeldError:
                pass

        threads = [threading.Thread(target=take, args=(le,)) for le in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1, f"round {round_}: {len(won)} winners"
        holder = read_holder(launchpad.db)
        assert holder is not None and holder.config_dir == won[0].owner["config_dir"]
        won[0].release()


def test_renewal_reports_a_lost_lease(launchpad, tmp_path):
    a = Lease(launchpad.db, tmp_path / "a", 30)
    a.acquire()
    lost: list[str] = []
    a.start_renewing(0.05, lost.append)
    launchpad.db[COLLECTION].update_one({"_id": LEASE_ID}, {"$set": {"token": "another", "config_dir": "/x"}})
    wait_for(lambda: lost, 10, 0.05, "the renewer to notice")
    assert lost == [lost[0]] and "lost to pid" in lost[0] and "config dir /x" in lost[0]
    a.release()
    assert read_holder(launchpad.db) is not None   # not ours any more: left alone


@pytest.fixture
def two_dirs(tmp_path, launchpad, monkeypatch):
    """Two config dirs on one LaunchPad, each with a local cluster and no work (their managers submit nothing)."""
    monkeypatch.setenv("PILOT_LOCAL_STATE", str(tmp_path / "localsched"))
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    dirs = [write_config(tmp_path / n, lp_file, {"box": local_cluster(tmp_path / f"work-{n}", lp_file, ["md"])},
                         poll_interval=1) for n in ("one", "two")]
    return dirs


def _pilot(cfg, *args):
    return [sys.executable, "-m", "pilot", "--config-dir", str(cfg), "manager", *args]


def _run_once(cfg):
    return subprocess.run(_pilot(cfg, "run", "--once"), capture_output=True, text=True, timeout=60)


def _start(cfg):
    proc = subprocess.Popen(_pilot(cfg, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = cfg / "logs" / "manager.log"

    def started() -> bool:   # the log line comes after the signal handlers are set: SIGTERM is a clean stop then
        return proc.poll() is not None or (log.exists() and f"manager started (pid {proc.pid}" in log.read_text())

    wait_for(started, 30, 0.1, "the manager to start")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    assert (cfg / "manager.pid").read_text().strip() == str(proc.pid)
    return proc


def _stop(proc, sig):
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(30)


def test_second_manager_on_the_launchpad_is_refused_until_the_first_stops(two_dirs, launchpad):
    one, two = two_dirs
    first = _start(one)
    try:
        res = _run_once(two)
        assert res.returncode == 1, res.stderr
        assert "another manager already runs on this LaunchPad" in res.stderr
        assert f"pid {first.pid} on " in res.stderr and f"config dir {one}" in res.stderr
        assert f"`pilot --config-dir {one} manager stop`" in res.stderr
        assert not (two / "manager.pid").exists()
        st = subprocess.run(_pilot(two, "status"), capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        assert "manager: not running" in st.stdout
        assert f"LaunchPad lease: held by pid {first.pid} on " in st.stdout and f"config dir {one}" in st.stdout
        js = subprocess.run(_pilot(two, "status", "--json"), capture_output=True, text=True, timeout=60)
        assert f'"pid": {first.pid}' in js.stdout
        bg = subprocess.run(_pilot(two, "start"), capture_output=True, text=True, timeout=60)
        assert bg.returncode == 1 and "another manager already runs on this LaunchPad" in bg.stderr, bg.stderr
    finally:
        rc = _stop(first, signal.SIGTERM)
    assert rc == 0
    assert read_holder(launchpad.db) is None      # a clean stop frees the LaunchPad at once
    res = _run_once(two)
    assert res.returncode == 0, res.stderr
    assert read_holder(launchpad.db) is None


def test_a_killed_managers_lease_is_taken_over_here_and_waited_out_from_elsewhere(two_dirs, launchpad):
    """A manager killed with SIGKILL leaves its lease. On its own machine the next manager sees that the holder's
    process is gone and takes over at once; a holder on another machine cannot be judged from here, so its lease
    is waited out."""
    one, two = two_dirs
    first = _start(one)
    try:
        time.sleep(1.5)                           # renewed at least once
    finally:
        first.kill()
        first.wait(30)
    assert not pid_alive(first.pid)
    holder = read_holder(launchpad.db)
    assert holder is not None and holder.pid == first.pid and not holder.expired()
    res = _run_once(two)                          # same machine, holder gone: no wait
    assert res.returncode == 0, res.stderr
    said = res.stderr + (two / "logs" / "manager.log").read_text()
    assert f"took over the manager lease of pid {first.pid}" in said, said
    # the same dead holder, as if it had run on another machine: refused until its lease expires
    now = time.time()
    launchpad.db["pilot_manager"].replace_one({"_id": "lease"}, {
        "_id": "lease", "host": "elsewhere.example.org", "pid": first.pid, "config_dir": str(one), "token": "x",
        "since": now, "renewed": now, "expires": now + 3}, upsert=True)
    res = _run_once(two)
    assert res.returncode == 1 and "its lease expires by itself in" in res.stderr, res.stderr
    assert "elsewhere.example.org" in res.stderr
    wait_for(lambda: read_holder(launchpad.db).expired(), 10, 0.1, "that lease to expire")
    second = _start(two)
    try:
        got = read_holder(launchpad.db)
        assert got is not None and got.pid == second.pid and got.config_dir == str(two)
    finally:
        assert _stop(second, signal.SIGTERM) == 0
    assert read_holder(launchpad.db) is None


def test_a_manager_that_loses_its_lease_stops(two_dirs, launchpad):
    """Another manager took the lease (this one was cut off longer than the lease): it stops, exit code 1."""
    one, _ = two_dirs
    first = _start(one)
    try:
        launchpad.db[COLLECTION].update_one({"_id": LEASE_ID}, {"$set": {"token": "x", "pid": 1, "host": "fs2"}})
        rc = first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert rc == 1
    assert "the manager lease was lost to pid 1 on fs2" in (one / "logs" / "manager.log").read_text()
    holder = read_holder(launchpad.db)
    assert holder is not None and holder.host == "fs2"   # the new holder's lease is left alone
