"""The manager with the ``local`` scheduler: demand -> pilots (real local processes) -> work done."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.helpers import pid_alive, wait_for
from tests.manager.helpers import (
    add_sleepers,
    cancel_local_pilots,
    completed_launches_per_fw,
    fw_states,
    local_cluster,
    run_cycles_until,
    write_config,
)


@pytest.fixture
def env(tmp_path, launchpad, monkeypatch):
    monkeypatch.setenv("PILOT_LOCAL_STATE", str(tmp_path / "work" / "localsched"))   # where the adapter puts it
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    yield tmp_path, lp_file
    cancel_local_pilots()


def test_zero_demand_submits_nothing_cycle_after_cycle(env, launchpad):
    tmp, lp_file = env
    cfg = load_config(write_config(tmp / "cfg", lp_file, {"box": local_cluster(tmp / "work", lp_file, ["md"])}))
    mgr = Manager(cfg, launchpad)
    for _ in range(3):
        rep = mgr.run_cycle()
        assert rep.submitted == []
        assert [(d.cluster, d.category, d.submit, d.reason) for d in rep.decisions] == [("box", "md", 0, "no demand")]
    assert launchpad.db["pilots"].count_documents({}) == 0


def test_demand_gives_exactly_the_pilots_needed_and_all_work_completes(env, launchpad):
    tmp, lp_file = env
    # 12 READY "md" Fireworks at 5 per pilot -> ceil(12/5) = 3 pilots; "post" has no demand
    # idle_timeout 2 s, not 4: the test waits for every pilot to drain once the work is done
    cfg = load_config(write_config(tmp / "cfg", lp_file, {
        "box": local_cluster(tmp / "work", lp_file, ["md", "post"], idle_timeout=2)}))
    add_sleepers(launchpad, "md", 12, 0.2)
    mgr = Manager(cfg, launchpad)
    first = mgr.run_cycle()
    assert len(first.submitted) == 3
    assert {s["category"] for s in first.submitted} == {"md"}
    line = next(d.log_line() for d in first.decisions if d.category == "md")
    assert line == "box/md: ready=12 pending=0 running=0 -> submit 3 (demand)"
    # a second cycle right away counts those 3 as pending: nothing more
    assert mgr.run_cycle().submitted == []
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 12}, timeout=120)
    # every Firework ran exactly once; every pilot drains (idle timeout) and ends COMPLETED with exit code 0
    assert set(completed_launches_per_fw(launchpad).values()) == {1}
    run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents(
        {"state": {"$in": ["SUBMITTING", "PENDING", "RUNNING"]}}) == 0, timeout=60)
    pilots = list(launchpad.db["pilots"].find())
    assert len(pilots) == 3
    assert {(p["state"], p["exit_code"]) for p in pilots} == {("COMPLETED", 0)}
    assert all(p["start_time"] and p["end_time"] for p in pilots)


def test_dry_run_decides_but_does_nothing(env, launchpad):
    tmp, lp_file = env
    cfg_dir = write_config(tmp / "cfg", lp_file, {"box": local_cluster(tmp / "work", lp_file, ["md"])})
    add_sleepers(launchpad, "md", 7, 0.1)
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager", "run", "--once",
                          "--dry-run"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[dry run] box/md: ready=7 pending=0 running=0 -> submit 2 (demand)"
    assert launchpad.db["pilots"].count_documents({}) == 0
    assert fw_states(launchpad) == {"READY": 7}


def test_daemon_start_status_stop_and_single_instance(env, launchpad):
    tmp, lp_file = env
    cfg_dir = write_config(tmp / "cfg", lp_file, {"box": local_cluster(tmp / "work", lp_file, ["md"])},
                           poll_interval=1)
    pilot = [sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager"]
    res = subprocess.run([*pilot, "start"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    pid = int((cfg_dir / "manager.pid").read_text())
    try:
        # a second manager on the same config dir is refused
        res2 = subprocess.run([*pilot, "run", "--once"], capture_output=True, text=True, timeout=60)
        assert res2.returncode == 1
        assert f"another manager is already running for {cfg_dir} (pid {pid})" in res2.stderr
        assert f"stop it with `pilot --config-dir {cfg_dir} manager stop`" in res2.stderr   # the dir typed
        add_sleepers(launchpad, "md", 3, 0.1)
        wait_for(lambda: fw_states(launchpad) == {"COMPLETED": 3}, 90, 1, "the daemon's pilots to do the work")
        st = subprocess.run([*pilot, "status"], capture_output=True, text=True, timeout=60)
        assert st.stdout.startswith(f"manager: running (pid {pid})")
        log = (tmp / "cfg" / "logs" / "manager.log").read_text()
        # (the 1 s cycle may see the 3 Fireworks while they are being added: ready=1..3, one pilot either way)
        assert re.search(r"box/md: ready=[123] pending=0 running=0 -> submit 1 \(demand\)", log), log
    finally:
        res = subprocess.run([*pilot, "stop"], capture_output=True, text=True, timeout=150)
    assert res.stdout.strip() == f"manager stopped (pid {pid})"
    assert not os.path.exists(cfg_dir / "manager.pid")
    assert not pid_alive(pid)


def test_sigterm_finishes_the_cycle_and_exits(env, launchpad):
    tmp, lp_file = env
    cfg_dir = write_config(tmp / "cfg", lp_file, {"box": local_cluster(tmp / "work", lp_file, ["md"])},
                           poll_interval=30)
    proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "manager", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (cfg_dir / "manager.pid").exists(), 30, 0.1)
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    assert time.monotonic() - t0 < 10   # did not sleep out the 30 s poll interval
