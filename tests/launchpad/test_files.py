"""The one LaunchPad-file reader (``pilot.launchpad.files``), met as a new user meets it: through ``pilot``.

Issue 14, "What a new user met because of the five readers": ``pilot --config-dir D init`` wrote
``launchpad_file: ~/.pilot/my_launchpad.yaml``, so after ``pilot --config-dir D launchpad init`` the commands of D
talked to ``~/.pilot``'s server; ``pilot status`` with the server stopped waited 11 s and printed a pymongo topology
dump while ``pilot report`` said in 6 s what to do; hints dropped the ``--config-dir`` the user typed; ``pilot
--config-dir D md add`` ignored the ``launchpad_file:`` of ``D/pilot.yaml``. Each test below is one of those
scenarios, run with the real CLI, the real embedded server and a HOME of its own (so ``~/.pilot`` is a decoy).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
import yaml

from pilot.launchpad.control import is_our_server
from pilot.launchpad.files import (
    TIMEOUT_S,
    LaunchPadUnavailable,
    find_launchpad_file,
    open_launchpad,
    pilot_command,
    ping,
)

#: The one timeout (5 s, the issue: "`pilot report` says in 6 s what to do") plus the start-up of a `pilot`
#: process (imports of FireWorks and pymongo); the old `pilot status` took 11 s.
PROMPT_BOUND_S = TIMEOUT_S + 3.5


class User:
    """A shell of a new user: HOME of their own, no PILOT_CONFIG_DIR, `pilot` run as a command."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k != "PILOT_CONFIG_DIR"}
        self.env["HOME"] = str(home)

    def pilot(self, *args: str, config_dir: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
        argv = [sys.executable, "-m", "pilot", *(["--config-dir", str(config_dir)] if config_dir else []), *args]
        t0 = time.monotonic()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                             env={**self.env, **(env or {})}, cwd=self.home)
        return res, time.monotonic() - t0


@pytest.fixture
def user(tmp_path) -> Iterator[User]:
    """A user; every embedded server started under tmp_path is stopped by its pid afterwards."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")   # the example cluster file names it
    yield User(home)
    for info in tmp_path.rglob("lpserver/server.json"):
        try:
            pid = json.loads(info.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if is_our_server(pid, info.parent):
            os.kill(pid, signal.SIGKILL)


def _gromacs_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "md.tpr").write_bytes(b"prepared by grompp")   # md add checks that the input exists
    return path


def _error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr   # one message, no traceback, no topology dump over several lines
    assert lines[0].startswith("Error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------ the scenarios
def test_a_config_dir_of_its_own_talks_to_its_own_server(user, tmp_path, launchpad):
    # the decoy: ~/.pilot holds a LaunchPad file of a working database; nothing of D may go there
    (user.home / ".pilot").mkdir()
    launchpad.to_file(str(user.home / ".pilot" / "my_launchpad.yaml"))
    d = tmp_path / "D"

    res, _ = user.pilot("init", config_dir=d)
    assert res.returncode == 0, res.stderr
    named = Path(yaml.safe_load((d / "pilot.yaml").read_text())["launchpad_file"]).expanduser()
    assert (d / named).resolve() == (d / "my_launchpad.yaml").resolve()      # into D, not ~/.pilot
    assert f"`pilot --config-dir {d} launchpad init`" in res.stdout            # the hint keeps --config-dir

    # before the LaunchPad exists, config check says so (it used to say OK, finding ~/.pilot's file)
    res, _ = user.pilot("config", "check", "--no-render", config_dir=d)
    assert res.returncode == 1
    assert f"{d / 'pilot.yaml'}: launchpad_file: file not found: {d / 'my_launchpad.yaml'}" in res.stdout
    assert f"`pilot --config-dir {d} launchpad init`" in res.stdout

    res, _ = user.pilot("launchpad", "init", "--port", "0", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr          # the file just written is the one D's commands read
    port = json.loads((d / "lpserver" / "server.json").read_text())["port"]
    res, _ = user.pilot("config", "check", "--no-render", config_dir=d)
    assert res.returncode == 0 and res.stdout.strip() == "1 cluster, 1 category: OK", res.stdout + res.stderr

    res, _ = user.pilot("md", "add", str(_gromacs_run(tmp_path / "water")), "--engine", "gromacs", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert "added workflow 'water'" in res.stdout
    res, _ = user.pilot("status", "--json", config_dir=d)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["launchpad"]["host"] == f"127.0.0.1:{port}"                  # D's own server
    admin = yaml.safe_load((d / "lpserver" / "my_launchpad.yaml").read_text())   # the data dir's admin
    own = pymongo.MongoClient("127.0.0.1", port, username=admin["username"], password=admin["password"],
                              authSource="admin", serverSelectionTimeoutMS=5000)
    try:
        assert own["fireworks"]["fireworks"].count_documents({"name": "water-md-1", "state": "READY"}) == 1
    finally:
        own.close()
    res, _ = user.pilot("report", "--json", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert launchpad.get_fw_ids() == []         # the decoy database saw nothing


def test_status_report_and_md_fail_alike_within_the_timeout_when_the_server_is_stopped(user, tmp_path):
    d = tmp_path / "D"
    assert user.pilot("launchpad", "init", "--port", "0", config_dir=d)[0].returncode == 0
    port = json.loads((d / "lpserver" / "server.json").read_text())["port"]
    res, _ = user.pilot("launchpad", "stop", config_dir=d)
    assert res.returncode == 0, res.stderr

    from concurrent.futures import ThreadPoolExecutor

    messages = {}
    argvs = (["status"], ["status", "--json"], ["report"], ["report", "--json"],
             ["md", "add", str(_gromacs_run(tmp_path / "run")), "--engine", "gromacs"], ["md", "show", "1"])
    with ThreadPoolExecutor(len(argvs)) as pool:   # each waits out its own timeout: at once, not one by one
        results = list(pool.map(lambda argv: user.pilot(*argv, config_dir=d), argvs))
    for argv, (res, took) in zip(argvs, results, strict=True):
        assert res.returncode == 1, (argv, res.stdout, res.stderr)
        assert took < PROMPT_BOUND_S, (argv, took)       # the old `pilot status` waited 11 s
        messages[" ".join(argv[:1])] = line = _error_line(res)
        # what failed, where, why in one short phrase; the command that fixes it, with the --config-dir typed
        assert f"the LaunchPad database 'fireworks' at 127.0.0.1:{port} does not answer within 5 s" in line
        assert "Connection refused" in line
        assert f"`pilot --config-dir {d} launchpad init` starts it" in line
        assert f"`pilot --config-dir {d} launchpad status`" in line
        assert "Topology" not in line and "configured timeouts" not in line
        assert len(line.replace(str(d), "D")) < 400, line       # short: the driver's dump was cut at 300 chars
    assert messages["status"] == messages["report"] == messages["md"]   # one way to say it


def test_md_add_honours_the_launchpad_file_that_pilot_yaml_names(user, tmp_path, launchpad):
    d = tmp_path / "D"
    (d / "shared").mkdir(parents=True)
    launchpad.to_file(str(d / "shared" / "lp.yaml"))
    (d / "pilot.yaml").write_text("launchpad_file: shared/lp.yaml   # relative to this directory\n")
    assert not (d / "my_launchpad.yaml").exists()
    res, _ = user.pilot("md", "add", str(_gromacs_run(tmp_path / "one")), "--engine", "gromacs", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert len(launchpad.get_fw_ids()) == 1

    launchpad.to_file(str(user.home / "lp.yaml"))
    (d / "pilot.yaml").write_text("launchpad_file: ~/lp.yaml\n")              # `~` is the user's home
    res, _ = user.pilot("md", "add", str(_gromacs_run(tmp_path / "two")), "--engine", "gromacs", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert len(launchpad.get_fw_ids()) == 2
    res, _ = user.pilot("md", "show", str(max(launchpad.get_fw_ids())), config_dir=d)
    assert res.returncode == 0 and res.stdout.startswith("two: 1 segment(s)"), res.stdout + res.stderr

    # --launchpad-file wins over pilot.yaml, and a missing one is named as such
    res, _ = user.pilot("md", "add", str(tmp_path / "two"), "--engine", "gromacs", "-l", str(tmp_path / "no.yaml"),
                        config_dir=d)
    assert res.returncode == 1
    assert f"--launchpad-file {tmp_path / 'no.yaml'}: no such file" in _error_line(res)
    # pilot.yaml names a file that is not there: say which line, and what to do
    (d / "pilot.yaml").write_text("launchpad_file: gone.yaml\n")
    res, _ = user.pilot("md", "show", "1", config_dir=d)
    line = _error_line(res)
    assert f"{d / 'pilot.yaml'}: launchpad_file: {d / 'gone.yaml'} does not exist" in line
    assert f"correct launchpad_file in {d / 'pilot.yaml'}" in line
    assert f"`pilot --config-dir {d} launchpad init`" in line
    assert len(launchpad.get_fw_ids()) == 2


def test_hints_name_the_config_dir_the_user_typed(user, tmp_path):
    d = tmp_path / "D"
    for argv in (["status"], ["report"], ["md", "show", "1"]):
        res, _ = user.pilot(*argv, config_dir=d)
        line = _error_line(res)
        assert f"no LaunchPad file at {d / 'my_launchpad.yaml'}" in line
        assert f"`pilot --config-dir {d} launchpad init`" in line and "--launchpad-file" in line
    # the same directory named by PILOT_CONFIG_DIR, or the default ~/.pilot: a bare `pilot` reaches it
    res, _ = user.pilot("status", env={"PILOT_CONFIG_DIR": str(d)})
    assert f"no LaunchPad file at {d / 'my_launchpad.yaml'}" in res.stderr
    assert "`pilot launchpad init`" in res.stderr and "--config-dir" not in res.stderr
    res, _ = user.pilot("report")
    assert f"no LaunchPad file at {user.home / '.pilot' / 'my_launchpad.yaml'}" in res.stderr
    assert "`pilot launchpad init`" in res.stderr and "--config-dir" not in res.stderr


def test_launchpad_init_warns_when_pilot_yaml_sends_the_commands_elsewhere(user, tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    # what `pilot --config-dir D init` used to write
    (d / "pilot.yaml").write_text("launchpad_file: ~/.pilot/my_launchpad.yaml\n")
    res, _ = user.pilot("launchpad", "init", "--port", "0", config_dir=d)
    assert res.returncode == 0, res.stderr
    assert (f"warning: {d / 'pilot.yaml'}: launchpad_file is {user.home / '.pilot' / 'my_launchpad.yaml'}, so the "
            f"commands of {d} use that file, not {d / 'my_launchpad.yaml'}") in res.stderr


# ------------------------------------------------------------------------------------------ the library
def test_which_file_explicit_then_pilot_yaml_then_the_config_dir_s_own(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    d = tmp_path / "D"
    d.mkdir()
    assert find_launchpad_file(d).path == d / "my_launchpad.yaml"                 # no pilot.yaml
    (d / "pilot.yaml").write_text("poll_interval: 30\n")
    assert find_launchpad_file(d).path == d / "my_launchpad.yaml"                 # pilot.yaml names none
    (d / "pilot.yaml").write_text("launchpad_file: lp/x.yaml\n")
    assert find_launchpad_file(d).path == d / "lp" / "x.yaml"                     # relative to D
    (d / "pilot.yaml").write_text("launchpad_file: ~/x.yaml\n")
    assert find_launchpad_file(d).path == tmp_path / "home" / "x.yaml"            # ~ expanded
    (d / "pilot.yaml").write_text("launchpad_file: ~/x.yaml\npoll_intervall: 30\n")
    assert find_launchpad_file(d).path == tmp_path / "home" / "x.yaml"            # a typo elsewhere: still honoured
    assert find_launchpad_file(d, tmp_path / "y.yaml").path == tmp_path / "y.yaml"   # --launchpad-file wins


def test_pilot_command_keeps_a_config_dir_that_is_not_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PILOT_CONFIG_DIR", raising=False)
    assert pilot_command(tmp_path / ".pilot", "launchpad init") == "pilot launchpad init"
    assert pilot_command(tmp_path / "D", "status") == f"pilot --config-dir {tmp_path / 'D'} status"
    assert pilot_command("/a dir/x", "status") == "pilot --config-dir '/a dir/x' status"
    monkeypatch.setenv("PILOT_CONFIG_DIR", str(tmp_path / "D"))
    assert pilot_command(tmp_path / "D", "status") == "pilot status"
    assert pilot_command(tmp_path / ".pilot", "status") == f"pilot --config-dir {tmp_path / '.pilot'} status"


def test_a_file_that_is_not_a_launchpad_file(tmp_path):
    lp_file = tmp_path / "my_launchpad.yaml"
    for text in ("- a list\n", "port: 27017\n", "host: [unclosed\n"):
        lp_file.write_text(text)
        with pytest.raises(LaunchPadUnavailable) as err:
            open_launchpad(find_launchpad_file(tmp_path))
        assert str(lp_file) in str(err.value) and f"pilot --config-dir {tmp_path} launchpad init" in err.value.fix


def test_ping_turns_no_server_into_the_one_error_within_the_timeout(tmp_path):
    with socket.socket() as closed:             # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        (tmp_path / "my_launchpad.yaml").write_text(f"host: 127.0.0.1\nport: {port}\nname: nothere\n")
        lpf = find_launchpad_file(tmp_path)
        lp = open_launchpad(lpf)
        t0 = time.monotonic()
        with pytest.raises(LaunchPadUnavailable) as err:
            ping(lp, lpf)
        took = time.monotonic() - t0
        lp.connection.close()
    assert TIMEOUT_S - 0.5 < took < TIMEOUT_S + 1.5
    assert err.value.problem.startswith(f"the LaunchPad database 'nothere' at 127.0.0.1:{port} does not answer "
                                        "within 5 s (")
    assert "Topology" not in str(err.value) and len(str(err.value).replace(str(tmp_path), "D")) < 400
