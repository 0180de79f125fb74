"""``pilot doctor`` against the real clusters: the real sshd, the real SLURM commands, the cluster venv,
the embedded LaunchPad server reached from the cluster side.

Each failure is produced for real (a port where nothing listens, an empty known_hosts, a launchpad file
with mode 644, a setup line that fails, a PBS cluster file pointed at a SLURM host, a database address
where nothing listens) and the test checks the failed check and its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.manager.helpers import local_cluster, ssh_cluster, write_config

ALL_CHECKS = ["ssh", "scheduler", "work_dir", "setup", "python", "worker", "database", "route", "launchpad_file",
              "render"]


def doctor(cfg: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "doctor", *args],
                          capture_output=True, text=True, check=False, timeout=timeout)


def doctor_json(cfg: Path, *args: str) -> tuple[int, dict]:
    res = doctor(cfg, *args, "--json")
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def checks(doc: dict, cluster: str) -> dict[str, dict]:
    (c,) = [c for c in doc["clusters"] if c["name"] == cluster]
    return {x["id"]: x for x in c["checks"]}


@pytest.fixture
def env(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    """A launchpad file owned by the cluster user with mode 600 and a config dir builder."""
    user = slurm_cluster.user
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    shutil.chown(lp_file, user, user)
    os.chmod(lp_file, 0o600)

    def config(**clusters: dict) -> Path:
        cfg = tmp_path / "cfg"
        shutil.rmtree(cfg, ignore_errors=True)
        return write_config(cfg, lp_file, clusters)

    def cluster(**over) -> dict:
        over.setdefault("command_timeout", 60)
        return ssh_cluster(slurm_cluster, str(remote_tmp / "work"), str(lp_file), ["md"], cluster_venv, **over)

    return config, cluster, lp_file


def assert_healthy_text(res: subprocess.CompletedProcess[str]) -> None:
    """The text report of a healthy cluster. Not a terminal: ASCII marks, one line per check, printed in order."""
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("[")]
    assert len(lines) == 1 + len(ALL_CHECKS)
    assert all(ln.strip().startswith("[ok]") for ln in lines), res.stdout
    assert "all 11 checks passed" in res.stdout


@pytest.mark.slurm
def test_healthy_cluster_passes_every_check(env):
    """The JSON report here; the text report of a healthy cluster is checked in the test below, after its fix
    (each doctor run takes seconds: every check runs on the cluster)."""
    config, cluster, lp_file = env
    cfg = config(pilotci=cluster())
    rc, doc = doctor_json(cfg, "pilotci")
    assert rc == 0 and doc["ok"] is True
    got = checks(doc, "pilotci")
    assert list(got) == ALL_CHECKS
    assert {c["status"] for c in got.values()} == {"pass"}
    assert "sbatch" in got["scheduler"]["detail"] and "sacct" in got["scheduler"]["detail"]
    assert "/opt/pilot-venv" in got["python"]["detail"]          # the setup line activated the cluster venv
    assert launchpad_db(lp_file) in got["database"]["detail"]
    assert "mode 600" in got["launchpad_file"]["detail"]


def launchpad_db(lp_file: Path) -> str:
    return yaml.safe_load(lp_file.read_text())["name"]


@pytest.mark.slurm
def test_world_readable_launchpad_file_fails_with_the_chmod_fix(env, slurm_cluster):
    config, cluster, lp_file = env
    os.chmod(lp_file, 0o644)
    cfg = config(pilotci=cluster())
    rc, doc = doctor_json(cfg, "pilotci")
    assert rc == 1 and doc["ok"] is False
    got = checks(doc, "pilotci")
    assert got["launchpad_file"]["status"] == "fail"
    assert "644" in got["launchpad_file"]["detail"]
    assert got["launchpad_file"]["fix"].endswith(f"chmod 600 {lp_file}")
    assert f"pilot@{slurm_cluster.host} chmod 600" in got["launchpad_file"]["fix"]   # run over ssh, as the user
    assert [k for k, v in got.items() if v["status"] != "pass"] == ["launchpad_file"]
    # the fix works: apply it as the file's owner, and the doctor passes
    subprocess.run(["su", "-s", "/bin/sh", "pilot", "-c", f"chmod 600 {lp_file}"], check=True, timeout=30)
    assert_healthy_text(doctor(cfg, "pilotci"))


@pytest.mark.slurm
def test_unreachable_sshd_fails_the_ssh_check_with_the_fix(env):
    config, cluster, _lp_file = env
    cfg = config(pilotci=cluster(), pilotdown=cluster(host="127.0.0.2", port=2299, connect_timeout=5))
    res = doctor(cfg, "pilotdown")
    assert res.returncode == 1
    assert "[FAIL] SSH connection and host key" in res.stdout
    rc, doc = doctor_json(cfg, "pilotdown")
    got = checks(doc, "pilotdown")
    assert got["ssh"]["status"] == "fail"
    assert "127.0.0.2" in got["ssh"]["detail"] and "2299" in got["ssh"]["detail"]
    assert "sshd runs on 127.0.0.2 port 2299" in got["ssh"]["fix"]
    # what needs SSH is skipped, not failed a second time; the script still renders
    assert {k for k, v in got.items() if v["status"] == "skip"} == set(ALL_CHECKS) - {"ssh", "render"}
    assert got["render"]["status"] == "pass"
    # without a name every cluster is checked: the healthy one passes, the exit code is still 1
    rc, doc = doctor_json(cfg)
    assert rc == 1
    assert {c["name"]: c["ok"] for c in doc["clusters"]} == {"pilotci": True, "pilotdown": False}


@pytest.mark.slurm
def test_unknown_host_key_fails_with_the_keyscan_fix(env, slurm_cluster, tmp_path):
    config, cluster, _lp_file = env
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cfg = config(pilotci=cluster(known_hosts=str(empty)))
    rc, doc = doctor_json(cfg, "pilotci")
    assert rc == 1
    ssh = checks(doc, "pilotci")["ssh"]
    assert ssh["status"] == "fail" and "not in known_hosts" in ssh["detail"]
    host = slurm_cluster.host
    assert f"ssh-keyscan -p 22 {host} >> {empty}" in ssh["fix"]
    # the fix works (the test cluster's login node is the one we trust)
    scan = subprocess.run(["ssh-keyscan", "-p", "22", "-t", "ed25519", host], capture_output=True,
                          text=True, timeout=30, check=True)
    empty.write_text(scan.stdout)
    rc, doc = doctor_json(cfg, "pilotci")
    assert checks(doc, "pilotci")["ssh"]["status"] == "pass"


@pytest.mark.slurm
def test_wrong_scheduler_and_failing_setup(env):
    config, cluster, _lp_file = env
    # a PBS cluster file pointed at the SLURM host: qsub/qstat/qdel are not there
    pbs = cluster(scheduler="pbs", pilot={"walltime": "00:05:00", "cores": 1})
    bad_setup = cluster(setup="echo loading\nsource /nonexistent/venv/bin/activate\necho never\n")
    failing = cluster(setup="# a comment first\ntrue\ntest -d /nonexistent\necho never\n")
    cfg = config(pbsonslurm=pbs, badsetup=bad_setup, failing=failing)
    rc, doc = doctor_json(cfg)
    assert rc == 1
    sched = checks(doc, "pbsonslurm")["scheduler"]
    assert sched["status"] == "fail"
    assert "qsub" in sched["detail"] and "qstat" in sched["detail"]
    assert "scheduler:" in sched["fix"]
    got = checks(doc, "badsetup")
    assert got["setup"]["status"] == "fail"
    # bash's own message, numbered like the setup lines
    assert "line 2: /nonexistent/venv/bin/activate: No such file or directory" in got["setup"]["detail"]
    assert checks(doc, "failing")["setup"]["status"] == "fail"
    assert "setup failed at line 3 (exit code 1)" in checks(doc, "failing")["setup"]["detail"]
    assert {got[k]["status"] for k in ("python", "worker", "database")} == {"skip"}
    assert got["scheduler"]["status"] == "pass"


@pytest.mark.slurm
def test_python_without_pilot_and_unreachable_database(env, remote_tmp):
    config, cluster, _lp_file = env
    # the system Python has neither fireworks nor pilot: the setup does nothing
    nopilot = cluster(setup="true\n")
    # a launchpad file whose database address has nothing listening; with a server selection timeout of 2 s,
    # as a LaunchPad file may set: the doctor's probes wait that, not their own 7-10 s, for no answer
    dead = remote_tmp / "dead_launchpad.yaml"
    dead.write_text(yaml.safe_dump({"host": "mongodb://127.0.0.1:1/", "name": "x", "uri_mode": True,
                                    "mongoclient_kwargs": {"serverSelectionTimeoutMS": 2000}}))
    shutil.chown(dead, "pilot", "pilot")
    os.chmod(dead, 0o600)
    deaddb = cluster(launchpad_file=str(dead), command_timeout=20)
    cfg = config(nopilot=nopilot, deaddb=deaddb)
    rc, doc = doctor_json(cfg)
    assert rc == 1
    got = checks(doc, "nopilot")
    assert got["python"]["status"] == "fail" and "cannot import fireworks" in got["python"]["detail"]
    assert f"`pilot --config-dir {cfg} bootstrap nopilot`" in got["python"]["fix"]   # the config dir typed
    assert got["worker"]["status"] == "fail" and "command not found" in got["worker"]["detail"]
    got = checks(doc, "deaddb")
    assert got["database"]["status"] == "fail"
    assert "127.0.0.1:1" in got["database"]["detail"] and "Connection refused" in got["database"]["detail"]
    assert "--db-host" in got["database"]["fix"]
    # the fix names commands that exist: the server is started on an address (init --host), bootstrap writes it
    assert f"`pilot --config-dir {cfg} launchpad init --host ADDRESS`" in got["database"]["fix"]
    assert f"`pilot --config-dir {cfg} bootstrap deaddb`" in got["database"]["fix"]
    # from the compute node too, nothing listens there
    assert got["route"]["status"] == "fail"
    assert "direct: connection refused (127.0.0.1:1)" in got["route"]["detail"]


def test_local_cluster_is_checked_on_this_machine(launchpad, tmp_path):
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o600)
    cfg = write_config(tmp_path / "cfg", lp_file, {"box": local_cluster(tmp_path / "work", lp_file, ["md"])})
    rc, doc = doctor_json(cfg)
    assert rc == 0, json.dumps(doc, indent=1)
    got = checks(doc, "box")
    assert list(got) == ALL_CHECKS and {c["status"] for c in got.values()} == {"pass"}
    assert "no SSH" in got["ssh"]["detail"]
    assert sys.executable in got["scheduler"]["detail"]


def test_config_problems_are_reported_and_the_valid_clusters_still_checked(launchpad, tmp_path):
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o600)
    cfg = write_config(tmp_path / "cfg", lp_file, {"box": local_cluster(tmp_path / "work", lp_file, ["md"])})
    (cfg / "clusters" / "broken.yaml").write_text("scheduler: slurm\nwallclock: 5\n")
    rc, doc = doctor_json(cfg)
    assert rc == 1
    assert doc["config"]["status"] == "fail"
    assert "broken.yaml" in doc["config"]["detail"] and "wallclock" in doc["config"]["detail"]
    assert f"`pilot --config-dir {cfg} config check` repeats this list" in doc["config"]["fix"]
    assert [c["name"] for c in doc["clusters"]] == ["box"] and doc["clusters"][0]["ok"]
    res = doctor(cfg, "boxx")
    assert res.returncode == 1 and "did you mean 'box'" in res.stderr
