"""What pilot writes on this machine in the config dir and the server's data dir is private (issue 15).

Run as a user runs the commands (``python -m pilot`` of this tree, a real embedded server started and stopped
by the test), then walk the directories: every directory 0700, every file 0600, including in a config dir
that an older pilot left 0755.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilot.configdir import PrivateFileHandler, open_private, private_dir, tighten_tree, write_private
from pilot.launchpad.control import is_our_server
from pilot.launchpad.journal import JOURNAL_MAGIC, frame, journal_path
from pilot.launchpad.recovery import plan_restore
from tests.helpers import REPO

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def pilot(config_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(config_dir), *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def loose(*roots: Path) -> list[str]:
    """Every directory not 0700 and every file not 0600 under ``roots`` (themselves included)."""
    bad = []
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            mode = stat.S_IMODE(os.lstat(dirpath).st_mode)
            if mode != 0o700:
                bad.append(f"dir {dirpath} {mode:04o}")
            for name in filenames:
                st = os.lstat(Path(dirpath, name))
                if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                    bad.append(f"file {dirpath}/{name} {stat.S_IMODE(st.st_mode):04o}")
    return bad


def _server_pid(data: Path) -> int | None:
    try:
        return int(json.loads((data / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def config_dir(tmp_path):
    """A config dir; a server left running in its data dir is killed by its pid afterwards."""
    cfg = tmp_path / "cfg"
    yield cfg
    data = cfg / "lpserver"
    pid = _server_pid(data)
    if pid and is_our_server(pid, data):
        os.kill(pid, signal.SIGKILL)


LOCAL_CLUSTER = """\
scheduler: local
categories: [md]
launchpad_file: {lp}
work_dir: {work}
python: {python}
pilot: {{walltime: "00:10:00", cores: 1}}
"""


@pytest.mark.parametrize("older", [False, True], ids=["new", "older-0755"])
def test_init_launchpad_init_and_the_manager_write_only_private_files(config_dir, tmp_path, older):
    data = config_dir / "lpserver"
    if older:  # as an older pilot left it: everything 0755/0644, a data dir with a log and a torn side file
        data.mkdir(parents=True)
        (data / "server.log").write_text("old log\n")
        (data / "journal-00000001.log.torn-20250101T000000").write_bytes(b"xx")
        for p in (config_dir, data):
            p.chmod(0o755)
        for p in data.iterdir():
            p.chmod(0o644)

    res = pilot(config_dir, "init")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in config_dir.rglob("*.yaml")) == ["example.yaml", "pilot.yaml"]
    assert loose(config_dir / "clusters") == [] and stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((config_dir / "pilot.yaml").stat().st_mode) == 0o600
    if older:  # one line says that the old directory was tightened
        assert f"made {config_dir} private (mode 0755 -> 0700)" in res.stderr

    # the manager's cycle needs a cluster it can query without SSH: the user's own file (0600, as they keep it)
    (config_dir / "clusters" / "example.yaml").unlink()
    write_private(config_dir / "clusters" / "here.yaml", LOCAL_CLUSTER.format(
        lp=config_dir / "my_launchpad.yaml", work=tmp_path / "work", python=sys.executable))

    res = pilot(config_dir, "launchpad", "init", "--port", "0")
    assert res.returncode == 0, res.stderr
    pid = _server_pid(data)
    assert pid and is_our_server(pid, data)
    try:
        res = pilot(config_dir, "manager", "run", "--once", "--dry-run")
        assert res.returncode == 0, res.stderr
        assert "manager started" in (config_dir / "logs" / "manager.log").read_text()
        # while it runs: server.json, server.pid, server.lock, the journal, the log
        assert {"server.json", "server.pid", "server.lock", "server.log", "journal-00000001.log"} <= \
            {p.name for p in data.iterdir()}
        assert loose(config_dir) == []
    finally:
        res = pilot(config_dir, "launchpad", "stop")
    assert res.returncode == 0, res.stderr
    assert (data / "snapshot.bson").exists()
    assert loose(config_dir) == []
    if older:
        assert "made 1 of the files and directories in" in (data / "server.log").read_text()


def test_a_first_serve_makes_the_config_dir_private(tmp_path):
    """``pilot launchpad serve`` without ``launchpad init``: the config dir it creates for its data is 0700."""
    cfg = tmp_path / "fresh" / "cfg"
    data = cfg / "lpserver"
    proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "launchpad", "serve",
                             "--port", "0"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while _server_pid(data) != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        assert loose(cfg) == []
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert loose(cfg) == []
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700  # made by pilot, only to hold it


def test_a_torn_record_is_kept_in_a_private_side_file(tmp_path):
    data = private_dir(tmp_path / "data")
    path = journal_path(data, 1)
    path.write_bytes(JOURNAL_MAGIC + frame(b"\x05\x00\x00\x00\x00") + b"\x10\x00\x00\x00torn")
    path.chmod(0o600)
    plan = plan_restore(data)
    assert any("kept the" in w for w in plan.warnings)
    assert [p.name for p in data.iterdir() if ".torn-" in p.name]
    assert loose(data) == []


def test_helpers_tighten_what_an_older_pilot_left(tmp_path, caplog):
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    log_file = old / "manager.log"
    log_file.write_text("older lines\n")
    log_file.chmod(0o644)
    with caplog.at_level(logging.DEBUG, logger="pilot.configdir"):
        private_dir(old)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "0755 -> 0700" in caplog.text

    h = PrivateFileHandler(log_file)  # an existing 0644 log is made 0600 when the handler opens it
    h.close()
    with open_private(old / "manager.out", "ab") as fh:
        fh.write(b"x")
    write_private(old / "x.yaml", "a: 1\n")
    assert loose(old) == [] and log_file.read_text() == "older lines\n"

    # a directory pilot only just created: tightened without alarming anyone (it was empty)
    caplog.clear()
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o755)
    fresh.chmod(0o755)
    with caplog.at_level(logging.INFO, logger="pilot.configdir"):
        private_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700 and not caplog.records

    # a log dir the user named outside the config dir may be shared on purpose: created 0700, never tightened
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    private_dir(shared, tighten=False)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("")
    for p in (tree, tree / "sub", tree / "sub" / "f"):
        p.chmod(0o755)
    assert tighten_tree(tree) == 3 and loose(tree) == []


def test_the_manager_log_dir_is_private(tmp_path):
    from pilot.cli.manager import private_log_dir

    cfg = tmp_path / "cfg"
    inside = private_log_dir(cfg / "logs", cfg)
    assert loose(cfg) == [] and inside == cfg / "logs"
    outside = tmp_path / "elsewhere" / "logs"
    outside.parent.mkdir()
    outside.parent.chmod(0o755)
    private_log_dir(outside, cfg)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert stat.S_IMODE(outside.parent.stat().st_mode) == 0o755  # existing parents are never changed


def test_the_demo_writes_a_private_config_dir(tmp_path):
    from pilot.demo.directory import write_config

    cfg = tmp_path / "demo"
    cfg.mkdir()
    cfg.chmod(0o755)  # as `pilot demo` creates it before writing its files
    written = write_config(cfg, 2)
    assert {p.name for p in written} == {"pilot.yaml", "local.yaml"}
    assert (cfg / "logs" / "manager.log").exists()
    assert loose(cfg) == []
