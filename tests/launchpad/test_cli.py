"""``pilot launchpad init|status|stop``: the LaunchPad file and the background server, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pymongo
import pytest
import yaml

from pilot.launchpad.control import is_our_server

PILOT = [sys.executable, "-m", "pilot"]


def pilot(config_dir: Path, *args: str, timeout: float = 120, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PILOT, "--config-dir", str(config_dir), "launchpad", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, input=stdin)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def config_dir(tmp_path):
    """A config dir; any background server left in it is stopped by its pid afterwards."""
    cfg = tmp_path / "cfg"
    yield cfg
    data = cfg / "lpserver"
    try:
        pid = json.loads((data / "server.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if is_our_server(pid, data):
        os.kill(pid, signal.SIGKILL)


def test_init_starts_the_embedded_server_reuses_it_and_stop_stops_it(config_dir, tmp_path):
    from fireworks import Firework, LaunchPad, ScriptTask

    res = pilot(config_dir, "init", "--port", "0")
    assert res.returncode == 0, res.stderr
    assert "started the embedded LaunchPad server in the background" in res.stdout
    assert "note: the server listens on 127.0.0.1 (this machine only)" in res.stdout  # and how to share it
    assert "launchpad init --host ADDRESS" in res.stdout
    assert "initialized the empty database 'fireworks'" in res.stdout
    lp_file = config_dir / "my_launchpad.yaml"
    assert stat.S_IMODE(lp_file.stat().st_mode) == 0o600
    info = json.loads((config_dir / "lpserver" / "server.json").read_text())
    pid = info["pid"]
    assert is_our_server(pid, config_dir / "lpserver")
    conf = yaml.safe_load(lp_file.read_text())
    assert (conf["host"], conf["port"], conf["name"], conf["uri_mode"]) == ("127.0.0.1", info["port"], "fireworks",
                                                                            False)
    assert str(info["port"]) in res.stdout and str(pid) in res.stdout

    # the file works for FireWorks: add a Firework and run it with the real rlaunch
    lp = LaunchPad.from_file(str(lp_file))
    lp.add_wf(Firework(ScriptTask.from_str("echo hello"), name="hello"))
    run = subprocess.run(["rlaunch", "-l", str(lp_file), "-s", "singleshot"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert lp.fireworks.find_one({"name": "hello"})["state"] == "COMPLETED"
    lp.connection.close()

    again = pilot(config_dir, "init")
    assert again.returncode == 0, again.stderr
    assert f"reusing the running embedded LaunchPad server: pid {pid}" in again.stdout
    assert "1 Fireworks" in again.stdout
    assert not (config_dir / "my_launchpad.yaml.bak").exists()  # same content: nothing to back up

    st = pilot(config_dir, "status")
    assert st.returncode == 0 and f"pid {pid}" in st.stdout and "documents" in st.stdout

    stopped = pilot(config_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {pid}" in stopped.stdout
    assert _gone(pid)
    assert not (config_dir / "lpserver" / "server.json").exists()
    assert pilot(config_dir, "status").returncode == 3
    assert pilot(config_dir, "stop").returncode == 3

    # the data survives: a new init restarts the server on the same data
    back = pilot(config_dir, "init", "--port", "0")
    assert back.returncode == 0, back.stderr
    assert "1 Fireworks" in back.stdout
    assert pilot(config_dir, "stop").returncode == 0


def test_init_with_uri(mongo_uri, tmp_path):
    cfg = tmp_path / "cfg"
    db = f"pilot_init_{uuid.uuid4().hex[:8]}"
    base, q, options = mongo_uri.partition("?")   # the session server's URI carries credentials and options
    uri = base.rstrip("/") + f"/{db}" + q + options
    try:
        res = pilot(cfg, "init", "--uri", "-", stdin=uri + "\n")   # the password in no process's argv
        assert res.returncode == 0, res.stderr
        assert f"initialized the empty database '{db}'" in res.stdout and "0 Fireworks" in res.stdout
        assert "warning" not in res.stderr
        lp_file = cfg / "my_launchpad.yaml"
        assert stat.S_IMODE(lp_file.stat().st_mode) == 0o600
        conf = yaml.safe_load(lp_file.read_text())
        assert (conf["host"], conf["name"], conf["uri_mode"]) == (uri, db, True)
        from fireworks import LaunchPad

        lp = LaunchPad.from_file(str(lp_file))
        assert lp.get_fw_ids() == [] and lp.fw_id_assigner.count_documents({}) == 1
        lp.connection.close()
    finally:
        with pymongo.MongoClient(mongo_uri) as c:
            c.drop_database(db)


def test_init_with_unreachable_uri_fails_clearly_and_hides_the_password(tmp_path):
    with socket_port() as port:
        cfg = tmp_path / "cfg"
        res = pilot(cfg, "init", "--uri", f"mongodb://alice:s3cret@127.0.0.1:{port}/fw", "--check-timeout", "1")
    assert res.returncode == 1
    assert "the password in --uri is visible to other users in `ps`" in res.stderr   # and how to avoid that
    assert "cannot use the LaunchPad database 'fw'" in res.stderr and "alice:***@" in res.stderr
    assert "s3cret" not in res.stdout + res.stderr
    assert not (cfg / "my_launchpad.yaml").exists()
    bad = pilot(cfg, "init", "--uri", "http://not-mongo")
    assert bad.returncode == 1 and "not a valid MongoDB URI" in bad.stderr


class socket_port:
    """A loopback port with nothing listening on it (bound, not listening, for the duration)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_stop_refuses_a_pid_that_is_not_our_server(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (data / "server.json").write_text(json.dumps({"pid": other.pid, "host": "127.0.0.1", "port": 1}))
        res = subprocess.run([*PILOT, "launchpad", "stop", "--data", str(data)], capture_output=True, text=True,
                             timeout=60, check=False)
        assert res.returncode == 1
        assert f"pid {other.pid}" in res.stderr and "not sending it any signal" in res.stderr
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait(5)
    res = subprocess.run([*PILOT, "launchpad", "stop", "--data", str(data)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 3 and "is gone" in res.stderr
