"""Building config directories and workloads for the manager tests."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from fireworks import Firework, LaunchPad, ScriptTask, Workflow


def readable_lp_file(lp: LaunchPad, remote_tmp: Path) -> Path:
    """The LaunchPad file in ``remote_tmp``, readable by the test user whose jobs run the pilots."""
    lp_file = remote_tmp / "my_launchpad.yaml"
    lp.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    return lp_file


def job_prefix(letter: str) -> str:
    """A job-name prefix of the test's own (a letter and 6 random hex digits): its jobs, and only those, are
    cancelled afterwards."""
    return letter + os.urandom(4).hex()[:6]


def write_config(config_dir: Path, lp_file: Path, clusters: dict[str, dict[str, Any]], poll_interval: float = 2,
                 **pilot: Any) -> Path:
    """A config dir: pilot.yaml pointing at ``lp_file`` and one clusters/NAME.yaml per entry."""
    (config_dir / "clusters").mkdir(parents=True, exist_ok=True)
    doc = {"launchpad_file": str(lp_file), "poll_interval": poll_interval, "log_dir": str(config_dir / "logs"),
           "backoff": {"initial": 1, "max": 4}}
    doc.update(pilot)
    (config_dir / "pilot.yaml").write_text(yaml.safe_dump(doc))
    for name, c in clusters.items():
        (config_dir / "clusters" / f"{name}.yaml").write_text(yaml.safe_dump(c))
    return config_dir


def local_cluster(work_dir: Path, lp_file: Path, categories: list[str], **over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "scheduler": "local", "categories": categories, "launchpad_file": str(lp_file), "work_dir": str(work_dir),
        "python": sys.executable, "pilot": {"walltime": 300}, "walltime_margin": 20, "idle_timeout": 4,
        "grace": 5, "fireworks_per_pilot": 5, "limits": {"max_queued": 10, "max_running": 10},
        "heartbeat_interval": 2,
    }
    c.update(over)
    return c


def ssh_cluster(info: Any, work_dir: str, lp_file: str, categories: list[str], venv: str, **over: Any) -> dict:
    """A cluster file for one of the test clusters (tests.helpers.ClusterInfo) reached over the loopback sshd."""
    sched = info.scheduler
    walltime = {"slurm": "5", "pbs": "00:05:00", "lsf": "5", "torque": "00:05:00", "sge": "00:05:00"}[sched]
    c: dict[str, Any] = {
        "scheduler": sched, "host": info.host, "port": info.port, "user": info.user, "identity_file": info.key,
        "known_hosts": info.known_hosts, "use_ssh_config": False, "categories": categories,
        "launchpad_file": lp_file, "work_dir": work_dir, "setup": f"source {venv}/bin/activate\n",
        "pilot": {"walltime": walltime, "cores": 1}, "walltime_margin": 30, "idle_timeout": 5, "grace": 5,
        "fireworks_per_pilot": 5, "limits": {"max_queued": 10, "max_running": 10},
        # a pilot killed under its work is taken for dead 3 beats after its last: seconds, not minutes
        "heartbeat_interval": 2,
    }
    if sched == "slurm":
        c["pilot"]["partition"] = "debug"
    c.update(over)
    return c


def add_sleepers(lp: LaunchPad, category: str, n: int, seconds: float = 0.5, name: str = "fw") -> list[int]:
    """``n`` independent one-Firework workflows of ``category`` that sleep ``seconds``."""
    ids = []
    for i in range(n):
        fw = Firework([ScriptTask.from_str(f"sleep {seconds}")], spec={"_category": category},
                      name=f"{name}-{category}-{i}")
        lp.add_wf(Workflow([fw]))
        ids.append(fw.fw_id)
    return list(lp.get_fw_ids({"spec._category": category}))


def add_interrupted(lp: LaunchPad, category: str, marker: Path, first: float = 300, again: float = 0.5,
                    name: str = "victim") -> int:
    """One Firework for a test that interrupts it (scancel, kill -9): its first run sleeps ``first`` seconds,
    every later run ``again`` seconds. ``marker`` (a path the Firework's user may create; ``mkdir`` is
    atomic) records the first start. So the first run cannot end before the fault however slow the machine
    is, and the rerun that proves the recovery costs no time. Returns its fw_id."""
    script = f"if mkdir {shlex.quote(str(marker))} 2>/dev/null; then sleep {first}; else sleep {again}; fi"
    fw = Firework([ScriptTask.from_str(script)], spec={"_category": category}, name=f"{name}-{category}")
    old_id = fw.fw_id
    return int(lp.add_wf(Workflow([fw]))[old_id])   # add_wf: {the Firework's id: the id the LaunchPad gave it}


def add_held(lp: LaunchPad, category: str, release: Path, n: int = 1, name: str = "held") -> list[int]:
    """``n`` one-Firework workflows that run until ``release`` exists (the test creates it when its fault is
    over; five minutes at most): RUNNING for exactly as long as the test needs them to be, however slow the
    machine is, and not a second longer. Returns their fw_ids."""
    wait = f"for i in $(seq 1500); do [ -e {shlex.quote(str(release))} ] && break; sleep 0.2; done"
    ids = []
    for i in range(n):
        fw = Firework([ScriptTask.from_str(wait)], spec={"_category": category}, name=f"{name}-{category}-{i}")
        old_id = fw.fw_id
        ids.append(int(lp.add_wf(Workflow([fw]))[old_id]))
    return ids


def fw_states(lp: LaunchPad) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in lp.fireworks.find({}, {"state": 1}):
        out[d["state"]] = out.get(d["state"], 0) + 1
    return out


def launches_per_fw(lp: LaunchPad) -> dict[int, int]:
    """How many launches (current and archived) each Firework had."""
    out: dict[int, int] = {}
    for d in lp.fireworks.find({}, {"fw_id": 1, "launches": 1, "archived_launches": 1}):
        out[d["fw_id"]] = len(d.get("launches") or []) + len(d.get("archived_launches") or [])
    return out


def completed_launches_per_fw(lp: LaunchPad) -> dict[int, int]:
    out: dict[int, int] = {}
    for d in lp.launches.find({"state": "COMPLETED"}, {"fw_id": 1}):
        out[d["fw_id"]] = out.get(d["fw_id"], 0) + 1
    return out


def run_cycles_until(mgr: Any, predicate: Any, timeout: float, interval: float = 2.0) -> list[Any]:
    """Run manager cycles until ``predicate()`` is true; returns the cycle reports."""
    reports = []
    deadline = time.monotonic() + timeout
    while True:
        reports.append(mgr.run_cycle())
        if predicate():
            return reports
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s; last decisions: "
                               f"{[d.log_line() for d in reports[-1].decisions]}; errors: {reports[-1].errors}")
        time.sleep(interval)


def cancel_local_pilots() -> None:
    """Stop every pilot of the local scheduler still pending or running, and wait until each has ended: no
    local pilot outlives the test that started it."""
    from pilot import localsched
    from tests.helpers import wait_for

    for line in localsched.status([]):
        jid, state = line.split("|")[:2]
        if state in ("PENDING", "RUNNING"):
            localsched.cancel([jid])
    for line in localsched.status([]):
        jid = line.split("|")[0]
        wait_for(lambda j=jid: localsched.status([j])[0].split("|")[1] not in ("PENDING", "RUNNING"), 30, 0.2)
