"""Users of the embedded LaunchPad server: ``pilot launchpad user add|password|remove|list``, MongoDB's user
commands, and users across restarts.

Every test runs the real command line (``python -m pilot``) and real pymongo/FireWorks against a real
``pilot launchpad serve`` process (tests.helpers.EmbeddedServer, stopped by its pid). Expected codes are
MongoDB's (``error_codes.yml``: 11 UserNotFound, 13 Unauthorized, 18 AuthenticationFailed, 31 RoleNotFound,
51003 "User ... already exists"); the stored document shape is MongoDB's ``admin.system.users``.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest
import yaml

from tests.helpers import EmbeddedServer

UNAUTHORIZED, AUTH_FAILED = 13, 18


def pilot(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "launchpad", "user", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _creds(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _client(port: int, user: str, password: str) -> pymongo.MongoClient[dict[str, Any]]:
    return pymongo.MongoClient("127.0.0.1", port, username=user, password=password, authSource="admin",
                               serverSelectionTimeoutMS=10000)


def _works(port: int, user: str, password: str) -> bool | int:
    """True if ``user``/``password`` log in now (a fresh connection); else the error code."""
    c = _client(port, user, password)
    try:
        c.fireworks.command("count", "fireworks")
        return True
    except pymongo.errors.OperationFailure as exc:
        return int(exc.code or 0)
    finally:
        c.close()


def _config_dir(server: EmbeddedServer, cfg: Path) -> Path:
    """A config dir whose my_launchpad.yaml is the data dir's admin file (what `pilot launchpad init` copies)."""
    cfg.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(server.data_dir / "my_launchpad.yaml", cfg / "my_launchpad.yaml")
    return cfg


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer(tmp_path_factory.mktemp("users") / "data").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def cfg(srv: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _config_dir(srv, tmp_path_factory.mktemp("users-cfg") / "cfg")


def _no_secret_shown(res: subprocess.CompletedProcess[str], *files: Path) -> None:
    for f in files:
        assert _creds(f)["password"] not in res.stdout + res.stderr


def test_add_a_read_only_user_writes_its_private_launchpad_file(srv, cfg) -> None:
    from fireworks import Firework, LaunchPad, ScriptTask

    res = pilot(cfg, "add", "bob", "--role", "read")
    assert res.returncode == 0, res.stderr
    bob = cfg / "launchpad-bob.yaml"
    assert f"added user bob (read on fireworks); its LaunchPad file: {bob} (mode 600" in res.stdout
    assert stat.S_IMODE(bob.stat().st_mode) == 0o600
    _no_secret_shown(res, bob, cfg / "my_launchpad.yaml")
    d = _creds(bob)
    assert (d["username"], d["authsource"], d["name"], d["host"], d["port"]) == (
        "bob", "admin", "fireworks", "127.0.0.1", srv.port)
    lp = LaunchPad.from_file(str(bob))
    try:
        assert lp.get_fw_ids() is not None                       # it reads
        with pytest.raises(pymongo.errors.OperationFailure) as info:
            lp.add_wf(Firework(ScriptTask.from_str("echo no")))   # it cannot write
        assert info.value.code == UNAUTHORIZED
    finally:
        lp.connection.close()


def test_user_list_shows_users_and_roles_never_a_secret(srv, cfg) -> None:
    assert pilot(cfg, "add", "lister", "--role", "readWrite", "--db", "lab").returncode == 0
    res = pilot(cfg, "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {"user": "admin", "db": "admin", "roles": [{"role": "root", "db": "admin"}]} in rows
    assert {"user": "lister", "db": "admin", "roles": [{"role": "readWrite", "db": "lab"}]} in rows
    assert "credentials" not in res.stdout and "storedKey" not in res.stdout
    _no_secret_shown(res, cfg / "launchpad-lister.yaml", cfg / "my_launchpad.yaml")
    plain = pilot(cfg, "list")
    assert plain.returncode == 0 and plain.stdout.splitlines()[0].split() == ["USER", "DB", "ROLES"]
    assert any(line.split() == ["lister", "admin", "readWrite@lab"] for line in plain.stdout.splitlines())


def test_a_new_password_applies_at_once_and_the_old_one_is_refused(srv, cfg) -> None:
    pid = srv.proc.pid if srv.proc else None
    out = cfg / "carol-elsewhere.yaml"
    assert pilot(cfg, "add", "carol", "--file", str(out)).returncode == 0
    old = _creds(out)["password"]
    assert _works(srv.port, "carol", old) is True
    res = pilot(cfg, "password", "carol", "--file", str(out))
    assert res.returncode == 0, res.stderr
    assert f"its LaunchPad file: {out} (mode 600)" in res.stdout
    new = _creds(out)["password"]
    assert new != old and new not in res.stdout + res.stderr
    assert _works(srv.port, "carol", old) == AUTH_FAILED     # at once, no restart
    assert _works(srv.port, "carol", new) is True
    assert srv.proc is not None and srv.proc.pid == pid and srv.proc.poll() is None


def test_a_removed_user_is_refused_and_its_open_connection_loses_access(srv, cfg) -> None:
    assert pilot(cfg, "add", "dave", "--role", "readWrite").returncode == 0
    password = _creds(cfg / "launchpad-dave.yaml")["password"]
    open_conn = _client(srv.port, "dave", password)
    try:
        open_conn.fireworks.daves.insert_one({"x": 1})
        res = pilot(cfg, "remove", "dave")
        assert res.returncode == 0, res.stderr
        assert "removed user dave" in res.stdout and "launchpad-dave.yaml" in res.stdout
        assert _works(srv.port, "dave", password) == AUTH_FAILED
        with pytest.raises(pymongo.errors.OperationFailure) as info:
            open_conn.fireworks.daves.insert_one({"x": 2})
        assert info.value.code == UNAUTHORIZED
    finally:
        open_conn.close()


def test_the_last_root_user_cannot_be_removed_and_non_root_users_cannot_manage_users(srv, cfg) -> None:
    res = pilot(cfg, "remove", "admin")
    assert res.returncode == 1 and "last root user" in res.stderr
    assert _works(srv.port, "admin", _creds(cfg / "my_launchpad.yaml")["password"]) is True
    assert pilot(cfg, "add", "eve", "--role", "readWrite").returncode == 0
    res = pilot(cfg, "add", "mallory", "--role", "root", "-l", str(cfg / "launchpad-eve.yaml"))
    assert res.returncode == 1 and "not authorized on admin" in res.stderr and "root" in res.stderr
    assert not (cfg / "launchpad-mallory.yaml").exists()
    assert pilot(cfg, "add", "bad name").returncode == 2


def test_user_commands_answer_like_mongodb(srv, cfg) -> None:
    a = _creds(cfg / "my_launchpad.yaml")
    c = _client(srv.port, a["username"], a["password"])
    try:
        c.admin.command("createUser", "frank", pwd="frank-pw-1", roles=["readWriteAnyDatabase"])
        cases = [(("createUser", "frank"), {"pwd": "x", "roles": []}, 51003),
                 (("createUser", "gina"), {"pwd": "x", "roles": ["userAdminAnyDatabase"]}, 31),
                 (("createUser", "gina"), {"pwd": "x", "roles": ["dbOwner"]}, 2),  # dbOwner@admin: root's db
                 (("createUser", "gina"), {"pwd": "x", "roles": [{"role": "read", "db": "admin"}]}, 2),
                 (("createUser", "gina"), {"pwd": "x", "roles": [], "mechanisms": ["SCRAM-SHA-1"]}, 2),
                 (("updateUser", "nobody-here"), {"pwd": "x"}, 11), (("dropUser", "nobody-here"), {}, 11)]
        for (cmd, name), kw, code in cases:
            with pytest.raises(pymongo.errors.OperationFailure) as info:
                c.admin.command(cmd, name, **kw)
            assert info.value.code == code, (cmd, kw)
        info_doc = c.admin.command("usersInfo", "frank")["users"][0]
        assert info_doc["roles"] == [{"role": "readWriteAnyDatabase", "db": "admin"}]
        assert info_doc["mechanisms"] == ["SCRAM-SHA-256"] and "credentials" not in info_doc
        assert _works(srv.port, "frank", "frank-pw-1") is True
    finally:
        c.close()


def test_a_db_owner_reads_and_writes_its_database_only_and_manages_no_users(srv, cfg) -> None:
    """MongoDB's built-in dbOwner (FireWorks' own AuthenticationTest creates its user with it): a user of the
    database it owns, logging in there (authSource = that database, FireWorks' default)."""
    a = _creds(cfg / "my_launchpad.yaml")
    root = _client(srv.port, a["username"], a["password"])
    owner = pymongo.MongoClient("127.0.0.1", srv.port, username="olga", password="olga-pw-1", authSource="olgadb",
                                serverSelectionTimeoutMS=10000)
    try:
        root.olgadb.command("createUser", "olga", pwd="olga-pw-1", roles=["dbOwner"])
        owner.olgadb.things.insert_one({"x": 1})
        owner.olgadb.things.create_index("x")
        assert owner.olgadb.things.count_documents({}) == 1
        for forbidden in (lambda: owner.fireworks.things.count_documents({}),
                          lambda: owner.olgadb.command("createUser", "pal", pwd="pal-pw-1", roles=["readWrite"]),
                          lambda: owner.admin["system.users"].find_one()):
            with pytest.raises(pymongo.errors.OperationFailure) as info:
                forbidden()
            assert info.value.code == UNAUTHORIZED
    finally:
        owner.close()
        root.olgadb.command("dropUser", "olga")
        root.drop_database("olgadb")
        root.close()

def test_users_are_stored_as_salted_keys_only(srv, cfg) -> None:
    assert pilot(cfg, "add", "keys", "--role", "read").returncode == 0
    passwords = [_creds(cfg / "launchpad-keys.yaml")["password"], _creds(cfg / "my_launchpad.yaml")["password"]]
    a = _creds(cfg / "my_launchpad.yaml")
    c = _client(srv.port, a["username"], a["password"])
    try:
        docs = list(c.admin["system.users"].find())
    finally:
        c.close()
    assert {d["_id"] for d in docs} >= {"admin.admin", "admin.keys"}
    for d in docs:
        assert set(d) == {"_id", "userId", "user", "db", "credentials", "roles"}
        assert d["_id"] == f"{d['db']}.{d['user']}"
        assert set(d["credentials"]) == {"SCRAM-SHA-256"}
        assert set(d["credentials"]["SCRAM-SHA-256"]) == {"iterationCount", "salt", "storedKey", "serverKey"}
        assert d["credentials"]["SCRAM-SHA-256"]["iterationCount"] >= 4096
    dump = json.dumps(docs, default=str)
    assert not any(p in dump for p in passwords)
    # nor anywhere the server writes, but the admin's own LaunchPad file
    for f in srv.data_dir.rglob("*"):
        if f.is_file() and f.name != "my_launchpad.yaml":
            data = f.read_bytes()
            assert not any(p.encode() in data for p in passwords), f
    assert not any(p in srv.log_path.read_text() for p in passwords)


# --------------------------------------------------------------------------------- own servers
@pytest.fixture
def own(tmp_path: Path) -> Iterator[list[EmbeddedServer]]:
    servers: list[EmbeddedServer] = []
    yield servers
    for s in servers:
        s.stop()


def test_users_survive_sigterm_and_kill_9(own, tmp_path) -> None:
    data = tmp_path / "cfg" / "lpserver"
    s = EmbeddedServer(data).start()
    own.append(s)
    cfg = _config_dir(s, tmp_path / "cfg")
    admin_pw = s.admin["password"]
    assert pilot(cfg, "add", "erin").returncode == 0
    erin = _creds(cfg / "launchpad-erin.yaml")["password"]
    for stop in (signal.SIGTERM, signal.SIGKILL):
        s.stop(stop)
        s.port = 0  # another port: the admin file follows it, keeping its credentials
        s.start()
        assert s.admin["port"] == s.port and s.admin["password"] == admin_pw
        assert _works(s.port, "admin", admin_pw) is True and _works(s.port, "erin", erin) is True
        if stop == signal.SIGTERM:   # changes that only the journal holds when kill -9 comes
            shutil.copy(data / "my_launchpad.yaml", cfg / "my_launchpad.yaml")
            assert pilot(cfg, "add", "frank").returncode == 0
            assert pilot(cfg, "add", "gone").returncode == 0
            assert pilot(cfg, "password", "erin").returncode == 0
            assert pilot(cfg, "remove", "gone").returncode == 0
            old_erin, erin = erin, _creds(cfg / "launchpad-erin.yaml")["password"]
    assert _works(s.port, "frank", _creds(cfg / "launchpad-frank.yaml")["password"]) is True
    assert _works(s.port, "erin", old_erin) == AUTH_FAILED
    assert _works(s.port, "gone", _creds(cfg / "launchpad-gone.yaml")["password"]) == AUTH_FAILED
    assert "no longer" not in s.log_path.read_text()


def test_changing_the_admin_s_own_password_rewrites_its_files(own, tmp_path) -> None:
    data = tmp_path / "cfg" / "lpserver"
    s = EmbeddedServer(data).start()
    own.append(s)
    cfg = _config_dir(s, tmp_path / "cfg")
    old = s.admin["password"]
    res = pilot(cfg, "password", "admin")
    assert res.returncode == 0, res.stderr
    new = _creds(cfg / "my_launchpad.yaml")["password"]
    assert new != old and f"its LaunchPad file: {cfg / 'my_launchpad.yaml'}" in res.stdout
    assert f"also updated {data / 'my_launchpad.yaml'}" in res.stdout and s.admin["password"] == new
    assert _works(s.port, "admin", old) == AUTH_FAILED and _works(s.port, "admin", new) is True
    s.stop()
    s.start()
    assert "no longer" not in s.log_path.read_text()   # the data dir's file still works: no warning


def test_a_data_dir_with_users_but_no_admin_file_says_how_to_recover(own, tmp_path) -> None:
    s = EmbeddedServer(tmp_path / "data").start()
    own.append(s)
    old = s.admin["password"]
    s.stop()
    (tmp_path / "data" / "my_launchpad.yaml").unlink()
    s.start()
    log = s.log_path.read_text()
    assert "has users but no admin LaunchPad file" in log and "pilot launchpad user add NAME --role root" in log
    assert not (tmp_path / "data" / "my_launchpad.yaml").exists()   # no second admin behind the owner's back
    assert _works(s.port, "admin", old) is True
