"""Authentication and authorization of the embedded LaunchPad server, with real clients.

Expected values come from the specifications and from MongoDB, never from the code under test:

- the SCRAM-SHA-256 exchange of RFC 7677 section 3 (user "user", password "pencil", its nonces, salt and 4096
  iterations) and RFC 5802's key formulas (``SaltedPassword``, ``ClientKey``, ``StoredKey``, ``ServerKey``);
- MongoDB's error codes and names (``src/mongo/base/error_codes.yml``: 13 Unauthorized, 18 AuthenticationFailed,
  43 CursorNotFound, 334 MechanismUnavailable) and messages ("command find requires authentication",
  "Authentication failed.", "not authorized on DB to execute command { ... }");
- real pymongo (keyword arguments, a URI, speculative authentication), real FireWorks (``LaunchPad``, the
  ``lpad`` and ``rlaunch`` programs) against a real ``python -m pilot launchpad serve`` process
  (tests.helpers.EmbeddedServer, stopped by its pid).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pymongo
import pymongo.errors
import pytest
import yaml
from bson import Int64

from pilot.launchpad.scram import ScramError, ScramServer, derive_keys
from tests.helpers import EmbeddedServer
from tests.launchpad.scram_client import WireConn, client_final, client_first

UNAUTHORIZED, AUTH_FAILED, CURSOR_NOT_FOUND, MECH_UNAVAILABLE = 13, 18, 43, 334

# RFC 7677 section 3
RFC_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


# ----------------------------------------------------------------------------------- pure SCRAM
def _rfc_keys() -> Any:
    return derive_keys("pencil", base64.b64decode(RFC_SALT), 4096)


def test_scram_sha_256_follows_rfc_7677_exactly() -> None:
    server = ScramServer(lambda user: _rfc_keys() if user == "user" else None, server_nonce=RFC_SERVER_NONCE)
    assert server.first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.username == "user" and server.finished


def test_stored_keys_are_rfc_5802_s_and_mongodb_s_shape() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(RFC_SALT), 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    doc = _rfc_keys().to_doc()
    assert doc == {"iterationCount": 4096, "salt": RFC_SALT,
                   "storedKey": base64.b64encode(hashlib.sha256(client_key).digest()).decode(),
                   "serverKey": base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()}
    assert "pencil" not in json.dumps(doc)


def test_a_wrong_password_and_an_unknown_user_fail_alike() -> None:
    keys = _rfc_keys()
    for user, password in (("user", "pencil2"), ("nobody-such", "pencil")):
        server = ScramServer(lambda u: keys if u == "user" else None)
        nonce, first = client_first(user)
        server_first = server.first(first)
        assert server_first.startswith(f"r={nonce}".encode())   # an unknown user gets a normal challenge
        final, _sig = client_final(password, first[3:], server_first)
        with pytest.raises(ScramError) as info:
            server.final(final)
        assert info.value.code == AUTH_FAILED and str(info.value) == "Authentication failed."
    # the same made-up salt each time an unknown name is asked (no way to tell it from a real user)
    salts = {ScramServer(lambda u: None).first(client_first("ghost")[1]).split(b",")[1] for _ in range(3)}
    assert len(salts) == 1


def test_a_tampered_nonce_or_channel_binding_is_a_protocol_error() -> None:
    for bad in (RFC_CLIENT_FINAL.replace(b"r=rOpr", b"r=XOpr"), RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws")):
        server = ScramServer(lambda u: _rfc_keys(), server_nonce=RFC_SERVER_NONCE)
        server.first(RFC_CLIENT_FIRST)
        with pytest.raises(ScramError) as info:
            server.final(bad)
        assert info.value.code == 17   # ProtocolError: the exchange itself is broken, not the password
        assert not server.finished


# ----------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def srv() -> Iterator[EmbeddedServer]:
    """A server whose data dir lies in a world-traversable directory: only the data dir's own mode (0700)
    keeps other accounts out (pytest's tmp dirs are 0700 themselves, which would hide that)."""
    tmp = Path(tempfile.mkdtemp(prefix="pilot-auth-"))
    os.chmod(tmp, 0o755)
    s = EmbeddedServer(tmp / "data").start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _client(uri: str, **kw: Any) -> pymongo.MongoClient[dict[str, Any]]:
    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000, **kw)


@pytest.fixture(scope="module")
def admin(srv: EmbeddedServer) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    c = _client(srv.uri)
    try:
        yield c
    finally:
        c.close()


def _user(admin: pymongo.MongoClient[dict[str, Any]], name: str, roles: list[Any]) -> str:
    password = f"pw-{uuid.uuid4().hex}"
    admin.admin.command("createUser", name, pwd=password, roles=roles)
    return password


def _uri(srv: EmbeddedServer, user: str, password: str) -> str:
    return f"mongodb://{user}:{password}@127.0.0.1:{srv.port}/?authSource=admin"


def test_the_admin_file_is_a_private_fireworks_launchpad_file(srv: EmbeddedServer) -> None:
    from fireworks import LaunchPad

    path = srv.data_dir / "my_launchpad.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(srv.data_dir.stat().st_mode) == 0o700
    d = yaml.safe_load(path.read_text())
    assert d["host"] == "127.0.0.1" and d["port"] == srv.port and d["name"] == "fireworks"
    assert d["username"] == "admin" and d["authsource"] == "admin" and d["uri_mode"] is False
    assert len(d["password"]) >= 32 and d["mongoclient_kwargs"] == {}
    lp = LaunchPad.from_file(str(path))
    try:
        assert lp.connection.admin.command("connectionStatus")["authInfo"] == {
            "authenticatedUsers": [{"user": "admin", "db": "admin"}],
            "authenticatedUserRoles": [{"role": "root", "db": "admin"}]}
    finally:
        lp.connection.close()
    assert d["password"] not in srv.log_path.read_text()


def test_pymongo_authenticates_with_keywords_and_with_a_uri(srv: EmbeddedServer) -> None:
    a = srv.admin
    by_kw = pymongo.MongoClient("127.0.0.1", srv.port, username=a["username"], password=a["password"],
                                authSource="admin", serverSelectionTimeoutMS=10000)
    by_uri = _client(srv.uri)
    try:
        for c in (by_kw, by_uri):
            c.kwtest.c.insert_one({"x": 1})
            assert c.kwtest.c.count_documents({}) >= 1
    finally:
        by_kw.close()
        by_uri.close()


def _seed(admin: pymongo.MongoClient[dict[str, Any]]) -> int:
    """authprobe.docs with 5 documents and an index; an open cursor of the admin's (its id)."""
    admin.drop_database("authprobe")
    admin.authprobe.docs.insert_many([{"_id": i, "a": i} for i in range(5)])
    admin.authprobe.docs.create_index("a")
    return int(admin.authprobe.command("find", "docs", batchSize=1)["cursor"]["id"])


def _state(admin: pymongo.MongoClient[dict[str, Any]]) -> Any:
    return (list(admin.authprobe.docs.find()), sorted(admin.authprobe.list_collection_names()),
            sorted(i["name"] for i in admin.authprobe.docs.list_indexes()), sorted(admin.list_database_names()),
            admin.admin.command("usersInfo", {"forAllDBs": True})["users"])


def _data_commands(cid: int) -> list[tuple[str, dict[str, Any]]]:
    """Every command that reads or writes something (database, command), as drivers send them."""
    docs = [
        {"find": "docs"}, {"insert": "docs", "documents": [{"_id": 99}]},
        {"update": "docs", "updates": [{"q": {}, "u": {"$set": {"x": 1}}, "multi": True}]},
        {"delete": "docs", "deletes": [{"q": {}, "limit": 0}]},
        {"findAndModify": "docs", "query": {}, "update": {"$set": {"x": 1}}},
        {"aggregate": "docs", "pipeline": [], "cursor": {}}, {"count": "docs"}, {"distinct": "docs", "key": "a"},
        {"listCollections": 1}, {"listIndexes": "docs"}, {"create": "newcoll"}, {"drop": "docs"},
        {"dropDatabase": 1}, {"createIndexes": "docs", "indexes": [{"key": {"b": 1}, "name": "b_1"}]},
        {"dropIndexes": "docs", "index": "*"}, {"getMore": Int64(cid), "collection": "docs"},
        {"killCursors": "docs", "cursors": [Int64(cid)]}, {"dbStats": 1}, {"collStats": "docs"}]
    admin_docs = [
        {"listDatabases": 1}, {"renameCollection": "authprobe.docs", "to": "authprobe.moved"}, {"pilotStats": 1},
        {"serverStatus": 1}, {"createUser": "intruder", "pwd": "x", "roles": ["root"]},
        {"updateUser": "admin", "pwd": "x"}, {"dropUser": "admin"}, {"usersInfo": 1}]
    return [("authprobe", d) for d in docs] + [("admin", d) for d in admin_docs]


def test_before_authentication_every_data_command_is_unauthorized_and_nothing_changes(srv, admin) -> None:
    cid = _seed(admin)
    before = _state(admin)
    anon = _client(srv.anonymous_uri)
    try:
        for db, cmd in _data_commands(cid):
            with pytest.raises(pymongo.errors.OperationFailure) as info:
                anon[db].command(cmd)
            name = next(iter(cmd))
            assert info.value.code == UNAUTHORIZED, cmd
            assert info.value.details == {"ok": 0.0, "code": 13, "codeName": "Unauthorized",
                                          "errmsg": f"command {name} requires authentication"}
        with pytest.raises(pymongo.errors.OperationFailure) as info:   # the driver's helpers too
            anon.authprobe.docs.insert_one({"_id": 100})
        assert info.value.code == UNAUTHORIZED
        # the handshake still answers
        assert anon.admin.command("ping")["ok"] == 1.0 and anon.admin.command("buildInfo")["ok"] == 1.0
        assert anon.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == []
    finally:
        anon.close()
    assert _state(admin) == before
    more = admin.authprobe.command("getMore", Int64(cid), collection="docs", batchSize=10)  # its cursor lives
    assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [1, 2, 3, 4]


def test_a_wrong_password_or_an_unknown_user_is_refused_with_code_18(srv) -> None:
    for user, password in (("admin", "wrong-password"), ("nosuchuser", srv.admin["password"])):
        c = _client(_uri(srv, user, password))
        try:
            with pytest.raises(pymongo.errors.OperationFailure) as info:
                c.authprobe.docs.find_one()
            assert info.value.code == AUTH_FAILED and info.value.details is not None
            assert info.value.details["codeName"] == "AuthenticationFailed"
            assert info.value.details["errmsg"] == "Authentication failed."
        finally:
            c.close()


def test_other_mechanisms_are_refused_naming_scram_sha_256(srv) -> None:
    c = _client(srv.uri + "&authMechanism=SCRAM-SHA-1")
    try:
        with pytest.raises(pymongo.errors.OperationFailure) as info:
            c.authprobe.docs.find_one()
        assert info.value.code == MECH_UNAVAILABLE and "SCRAM-SHA-256" in str(info.value)
    finally:
        c.close()
    conn = WireConn("127.0.0.1", srv.port)
    try:
        reply = conn.command({"authenticate": 1, "mechanism": "MONGODB-X509", "user": "CN=x"}, "$external")
        assert reply["code"] == MECH_UNAVAILABLE and "SCRAM-SHA-256" in reply["errmsg"]
    finally:
        conn.close()


def test_the_sasl_exchange_by_hand_speculative_and_with_the_empty_last_step(srv) -> None:
    a = srv.admin
    conn = WireConn("127.0.0.1", srv.port)
    try:
        for user in ("admin.admin", "admin.no-such-user"):  # the same answer: it names no users
            assert conn.command({"hello": 1, "saslSupportedMechs": user})["saslSupportedMechs"] == ["SCRAM-SHA-256"]
        nonce, first = client_first(a["username"])
        spec = {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bson.Binary(first), "db": "admin",
                "options": {"skipEmptyExchange": True}}
        hello = conn.command({"hello": 1, "speculativeAuthenticate": spec})
        start = hello["speculativeAuthenticate"]
        assert start["conversationId"] == 1 and start["done"] is False
        assert bytes(start["payload"]).startswith(f"r={nonce}".encode())
        final, signature = client_final(a["password"], first[3:], bytes(start["payload"]))
        done = conn.command({"saslContinue": 1, "conversationId": 1, "payload": bson.Binary(final)})
        assert done["ok"] == 1.0 and done["done"] is True and bytes(done["payload"]) == signature
        assert conn.command({"connectionStatus": 1})["authInfo"]["authenticatedUsers"] == [
            {"user": "admin", "db": "admin"}]
        assert conn.command({"count": "docs"}, "authprobe")["ok"] == 1.0
        assert conn.command({"logout": 1})["ok"] == 1.0   # forgets it
        assert conn.command({"count": "docs"}, "authprobe")["code"] == UNAUTHORIZED
        # without skipEmptyExchange: MongoDB's third, empty step
        assert conn.login(a["username"], a["password"], skip_empty=False)["done"] is True
        assert conn.command({"count": "docs"}, "authprobe")["ok"] == 1.0
    finally:
        conn.close()
    other = WireConn("127.0.0.1", srv.port)   # authentication belongs to the connection
    try:
        assert other.command({"count": "docs"}, "authprobe")["code"] == UNAUTHORIZED
        assert other.login(a["username"], "not-the-password")["code"] == AUTH_FAILED
        assert other.command({"saslContinue": 1, "conversationId": 1, "payload": b""})["code"] == 17
    finally:
        other.close()


def test_a_read_only_user_reads_but_cannot_write_or_see_other_databases(srv, admin) -> None:
    _seed(admin)
    admin.secret.things.insert_one({"x": 1})
    password = _user(admin, "reader", [{"role": "read", "db": "authprobe"}])
    r = _client(_uri(srv, "reader", password))
    try:
        assert r.authprobe.docs.count_documents({}) == 5 and r.authprobe.docs.find_one({"_id": 3}) == {"_id": 3, "a": 3}
        assert sorted(r.list_database_names()) == ["authprobe"]   # only what it may read
        for call in (lambda: r.authprobe.docs.insert_one({"_id": 50}),
                     lambda: r.authprobe.docs.update_one({"_id": 1}, {"$set": {"a": 0}}),
                     lambda: r.authprobe.docs.delete_many({}), lambda: r.authprobe.docs.drop(),
                     lambda: r.authprobe.docs.find_one_and_update({}, {"$set": {"a": 0}}),
                     lambda: r.secret.things.find_one(), lambda: r.admin["system.users"].find_one(),
                     lambda: r.admin.command("createUser", "x", pwd="y", roles=["root"]),
                     lambda: r.admin.command("pilotStats")):
            with pytest.raises(pymongo.errors.OperationFailure) as info:
                call()
            assert info.value.code == UNAUTHORIZED and "not authorized on" in str(info.value)
        with pytest.raises(pymongo.errors.OperationFailure) as info:
            r.authprobe.docs.insert_one({"_id": 51})
        assert info.value.details is not None and info.value.details["errmsg"] == (
            'not authorized on authprobe to execute command { insert: "docs", $db: "authprobe" }')
        assert [u["user"] for u in r.admin.command("usersInfo", {"forAllDBs": True})["users"]] == ["reader"]
    finally:
        r.close()
    assert admin.authprobe.docs.count_documents({}) == 5 and admin.authprobe.docs.find_one({"_id": 1})["a"] == 1
    admin.admin.command("dropUser", "reader")


def test_a_read_write_user_writes_its_database_only(srv, admin) -> None:
    password = _user(admin, "writer", [{"role": "readWrite", "db": "rw"}])
    w = _client(_uri(srv, "writer", password))
    try:
        w.rw.c.insert_one({"_id": 1})
        w.rw.c.create_index("k")
        assert w.rw.c.find_one_and_update({"_id": 1}, {"$set": {"k": 2}}, return_document=True) == {"_id": 1, "k": 2}
        for call in (lambda: w.other.c.insert_one({"_id": 1}), lambda: w.admin.command("usersInfo", "admin"),
                     lambda: w.admin.command("renameCollection", "rw.c", to="admin.c")):
            try:
                result = call()
            except pymongo.errors.OperationFailure as exc:
                assert exc.code == UNAUTHORIZED
            else:   # usersInfo of someone else: an empty answer, never their document
                assert result["users"] == []
    finally:
        w.close()
    assert admin.other.c.count_documents({}) == 0 and admin.rw.c.count_documents({}) == 1
    admin.admin.command("dropUser", "writer")


def test_changed_roles_apply_to_open_connections_at_their_next_command(srv, admin) -> None:
    password = _user(admin, "demoted", [{"role": "readWrite", "db": "rw2"}])
    c = _client(_uri(srv, "demoted", password), maxPoolSize=1)
    try:
        c.rw2.c.insert_one({"_id": 1})
        admin.admin.command("updateUser", "demoted", roles=[{"role": "read", "db": "rw2"}])
        with pytest.raises(pymongo.errors.OperationFailure) as info:
            c.rw2.c.insert_one({"_id": 2})
        assert info.value.code == UNAUTHORIZED
        assert c.rw2.c.count_documents({}) == 1
    finally:
        c.close()
    admin.admin.command("dropUser", "demoted")


def test_another_user_s_cursor_is_cursor_not_found_even_in_the_same_session(srv, admin) -> None:
    _seed(admin)
    password = _user(admin, "peer", [{"role": "read", "db": "authprobe"}])
    mine, theirs = WireConn("127.0.0.1", srv.port), WireConn("127.0.0.1", srv.port)
    session = uuid.uuid4()
    try:
        assert mine.login(srv.admin["username"], srv.admin["password"])["done"]
        assert theirs.login("peer", password)["done"]
        cid = int(mine.command({"find": "docs", "batchSize": 1}, "authprobe", lsid=session)["cursor"]["id"])
        for lsid in (session, None):
            reply = theirs.command({"getMore": Int64(cid), "collection": "docs"}, "authprobe", lsid=lsid)
            assert reply["code"] == CURSOR_NOT_FOUND and reply["errmsg"] == f"cursor id {cid} not found"
            killed = theirs.command({"killCursors": "docs", "cursors": [Int64(cid)]}, "authprobe", lsid=lsid)
            assert list(killed["cursorsNotFound"]) == [cid] and list(killed["cursorsKilled"]) == []
        reply = mine.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 10}, "authprobe", lsid=session)
        assert [d["_id"] for d in reply["cursor"]["nextBatch"]] == [1, 2, 3, 4]
    finally:
        mine.close()
        theirs.close()
    admin.admin.command("dropUser", "peer")


def test_fireworks_launchpad_lpad_and_rlaunch_work_with_the_admin_file(srv, tmp_path) -> None:
    from fireworks import Firework, LaunchPad, ScriptTask, Workflow

    lp_file = str(srv.data_dir / "my_launchpad.yaml")
    lp = LaunchPad.from_file(lp_file)
    try:
        lp.reset("", require_password=False, max_reset_wo_password=1000)
        lp.add_wf(Workflow([Firework(ScriptTask.from_str("echo authenticated"), name="authfw")], name="authwf"))
    finally:
        lp.connection.close()
    res = subprocess.run(["lpad", "-l", lp_file, "get_wflows", "-d", "more"], capture_output=True, text=True,
                         timeout=120, check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "authwf" in res.stdout and srv.admin["password"] not in res.stdout + res.stderr
    res = subprocess.run(["rlaunch", "-l", lp_file, "singleshot"], capture_output=True, text=True, timeout=120,
                         check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lp = LaunchPad.from_file(lp_file)
    try:
        assert lp.get_fw_dict_by_id(lp.get_fw_ids({"name": "authfw"})[0])["state"] == "COMPLETED"
    finally:
        lp.connection.close()


# ----------------------------------------------------------------------------------- another account
def _as_nobody(srv: EmbeddedServer) -> dict[str, Any]:
    """Fork; in the child become uid ``nobody`` (no groups) and try what another local account could."""
    from fireworks import Firework, LaunchPad, ScriptTask

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: everything it needs is imported already (/root is not readable as nobody)
        out: dict[str, Any] = {}
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out["uid"] = os.getuid()
            for what, path in (("data dir", srv.data_dir), ("admin file", srv.data_dir / "my_launchpad.yaml")):
                try:
                    (os.listdir if what == "data dir" else lambda p: open(p).read())(path)
                    out[what] = "read"
                except OSError as exc:
                    out[what] = type(exc).__name__
            c = pymongo.MongoClient("127.0.0.1", srv.port, serverSelectionTimeoutMS=5000)
            for what, call in (("find", lambda: c.fireworks.fireworks.find_one()),
                               ("insert", lambda: c.fireworks.fireworks.insert_one({"evil": 1})),
                               ("drop", lambda: c.drop_database("fireworks"))):
                try:
                    call()
                    out[what] = "ok"
                except pymongo.errors.OperationFailure as exc:
                    out[what] = exc.code
            lp = LaunchPad(host="127.0.0.1", port=srv.port, name="fireworks", strm_lvl="ERROR")
            try:
                lp.add_wf(Firework(ScriptTask.from_str("touch /tmp/pwned-by-nobody")))
                out["add_wf"] = "ok"
            except pymongo.errors.OperationFailure as exc:
                out["add_wf"] = exc.code
        except BaseException as exc:   # reported to the parent, which fails the test
            out["error"] = repr(exc)
        finally:
            os.write(write, json.dumps(out).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another account (uid nobody)")
def test_another_local_account_cannot_read_the_data_or_use_the_server(srv, admin) -> None:
    before = admin.fireworks.fireworks.count_documents({})
    out = _as_nobody(srv)
    assert "error" not in out, out
    assert out["uid"] == pwd.getpwnam("nobody").pw_uid
    assert out["data dir"] == "PermissionError" and out["admin file"] == "PermissionError"
    assert out["find"] == out["insert"] == out["drop"] == out["add_wf"] == UNAUTHORIZED
    assert admin.fireworks.fireworks.count_documents({}) == before
    assert "fireworks" in admin.list_database_names()
