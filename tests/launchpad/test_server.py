"""The embedded LaunchPad server as a MongoDB: commands through real pymongo, startup refusals.

Tests that only need "a MongoDB" use the ``mongo_uri`` fixture (MONGODB_URI when set, so they also run
against a real MongoDB); tests about the embedded server itself (loopback, data dir) always start their own
server with tests.helpers.EmbeddedServer and stop it by its pid. Durability (restarts, kill -9, torn tails,
damage and ``repair``, a full disk) is in test_durability.py.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import bson
import gridfs
import pymongo
import pymongo.errors
import pytest
from pymongo import ReturnDocument

from tests.helpers import wait_for
from tests.launchpad.conftest import client_for, run_serve


# -------------------------------------------------------------------------------- commands
def test_crud_and_cursor_batches(db):
    coll = db.things
    res = coll.insert_many([{"i": i, "even": i % 2 == 0, "tags": ["a", "b"] if i % 3 == 0 else []}
                            for i in range(1000)])
    assert len(res.inserted_ids) == 1000
    assert coll.count_documents({}) == 1000
    assert coll.estimated_document_count() == 1000
    assert coll.count_documents({"even": True}) == 500
    # many batches through getMore (batch size 7), natural order preserved
    got = [d["i"] for d in coll.find({}, {"i": 1, "_id": 0}).batch_size(7)]
    assert got == list(range(1000))
    assert [d["i"] for d in coll.find({"i": {"$gte": 990}}).sort("i", -1).limit(3)] == [999, 998, 997]
    assert [d["i"] for d in coll.find().sort("i", 1).skip(10).limit(2)] == [10, 11]
    assert sorted(coll.distinct("even")) == [False, True]
    assert coll.update_many({"i": {"$lt": 10}}, {"$inc": {"i": 1000}}).modified_count == 10
    assert coll.count_documents({"i": {"$gte": 1000}}) == 10
    r = coll.update_one({"i": -1}, {"$set": {"new": True}}, upsert=True)
    assert r.upserted_id is not None and coll.find_one({"_id": r.upserted_id})["new"] is True
    assert coll.replace_one({"i": 500}, {"i": 500, "replaced": True}).modified_count == 1
    assert "even" not in coll.find_one({"i": 500})
    assert coll.delete_many({"even": False}).deleted_count == 500
    assert coll.delete_one({"i": 500}).deleted_count == 1
    cur = coll.find().batch_size(2)
    next(cur)
    cur.close()  # killCursors
    assert coll.find_one({"i": 12345}) is None


def test_find_and_modify_variants(db):
    c = db.fam
    c.insert_many([{"k": i, "state": "READY", "prio": i % 3} for i in range(10)])
    # highest priority, then lowest k: like FireWorks' reservation query with a sort
    doc = c.find_one_and_update({"state": "READY"}, {"$set": {"state": "RESERVED"}},
                                sort=[("prio", -1), ("k", 1)], return_document=ReturnDocument.AFTER)
    assert (doc["k"], doc["state"]) == (2, "RESERVED")
    before = c.find_one_and_update({"k": 3}, {"$inc": {"prio": 10}}, projection={"prio": 1, "_id": 0})
    assert before == {"prio": 0}
    assert c.find_one_and_update({"k": 99}, {"$set": {"x": 1}}) is None
    up = c.find_one_and_update({"k": 99}, {"$set": {"x": 1}, "$currentDate": {"t": True}}, upsert=True,
                               return_document=ReturnDocument.AFTER)
    assert up["k"] == 99 and up["x"] == 1 and isinstance(up["t"], datetime.datetime)
    rep = c.find_one_and_replace({"k": 4}, {"k": 4, "replaced": 1}, return_document=ReturnDocument.AFTER)
    assert rep["replaced"] == 1 and "state" not in rep
    gone = c.find_one_and_delete({"k": 5})
    assert gone["k"] == 5 and c.count_documents({"k": 5}) == 0


def test_indexes_unique_and_listing(db):
    c = db.idx
    c.create_index("a", unique=True)
    c.create_index([("b", pymongo.ASCENDING), ("c", pymongo.DESCENDING)], name="b_c")
    c.insert_one({"a": 1, "b": 1})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        c.insert_one({"a": 1, "b": 2})
    c.insert_one({"a": 2})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        c.update_one({"a": 2}, {"$set": {"a": 1}})
    assert c.find_one({"a": 2}) is not None  # the failed update left the document alone
    with pytest.raises(pymongo.errors.BulkWriteError) as exc:
        c.insert_many([{"a": 3}, {"a": 3}, {"a": 4}], ordered=True)
    assert exc.value.details["nInserted"] == 1
    info = c.index_information()
    assert info["a_1"]["unique"] is True and info["a_1"]["key"] == [("a", 1)]
    assert info["b_c"]["key"] == [("b", 1), ("c", -1)]
    c.drop_index("b_c")
    assert "b_c" not in c.index_information()
    assert "idx" in db.list_collection_names()
    assert db.missing.index_information() == {}  # listIndexes on a missing collection: NamespaceNotFound, handled


def test_aggregations_used_by_lpad_report_and_the_manager(db):
    states = ["READY", "RUNNING", "COMPLETED", "COMPLETED", "WAITING"]
    docs = [{"fw_id": i, "state": states[i % 5], "spec": {"_category": f"cat{i % 2}"},
             "updated_on": f"2024-01-{1 + i % 3:02d}T10:00:00", "nodes": [i, i + 100]} for i in range(50)]
    db.fireworks.insert_many(docs)
    db.launches.insert_many([{"launch_id": i, "fw_id": i, "state": "COMPLETED"} for i in range(0, 50, 10)])
    # expected values from plain Python over the same documents
    exp_group: dict[tuple[str, str], int] = {}
    for d in docs:
        key = (d["spec"]["_category"], d["state"])
        exp_group[key] = exp_group.get(key, 0) + 1
    got = {(r["_id"]["cat"], r["_id"]["state"]): r["n"] for r in db.fireworks.aggregate([
        {"$match": {"state": {"$in": ["READY", "RUNNING", "COMPLETED", "WAITING"]}}},
        {"$group": {"_id": {"cat": "$spec._category", "state": "$state"}, "n": {"$sum": 1}}}])}
    assert got == exp_group
    assert list(db.fireworks.aggregate([{"$match": {"state": "READY"}}, {"$count": "count"}])) == \
        [{"count": sum(1 for d in docs if d["state"] == "READY")}]
    top = list(db.fireworks.aggregate([{"$sort": {"fw_id": -1}}, {"$limit": 3},
                                       {"$project": {"fw_id": True, "_id": False}}]))
    assert top == [{"fw_id": 49}, {"fw_id": 48}, {"fw_id": 47}]
    unwound = list(db.fireworks.aggregate([{"$match": {"fw_id": {"$lt": 2}}}, {"$unwind": "$nodes"},
                                           {"$project": {"nodes": 1, "_id": 0}}]))
    assert unwound == [{"nodes": 0}, {"nodes": 100}, {"nodes": 1}, {"nodes": 101}]
    facet = list(db.fireworks.aggregate([{"$facet": {
        "n": [{"$count": "c"}], "ready": [{"$match": {"state": "READY"}}, {"$count": "c"}]}}]))
    assert facet == [{"n": [{"c": 50}], "ready": [{"c": 10}]}]
    # lpad report: $substr on a date string, two $group stages (fireworks/features/fw_report.py)
    rep = list(db.fireworks.aggregate([
        {"$project": {"state": 1, "_id": 0, "date_key": {"$substr": ["$updated_on", 0, 10]}}},
        {"$group": {"_id": {"state": "$state", "date_key": "$date_key"}, "count": {"$sum": 1},
                    "state": {"$first": "$state"}}},
        {"$group": {"_id": {"_id_date_key": "$_id.date_key"}, "date_key": {"$first": "$_id.date_key"},
                    "states": {"$push": {"count": "$count", "state": "$state"}}}},
        {"$sort": {"date_key": -1}}]))
    assert [r["date_key"] for r in rep] == ["2024-01-03", "2024-01-02", "2024-01-01"]
    assert sum(s["count"] for r in rep for s in r["states"]) == 50
    # detect_lostruns: $group + $lookup + $unwind + $match (fireworks/core/launchpad.py)
    joined = list(db.launches.aggregate([
        {"$match": {"state": {"$in": ["FIZZLED", "COMPLETED"]}}}, {"$group": {"_id": "$fw_id"}},
        {"$lookup": {"from": "fireworks", "localField": "_id", "foreignField": "fw_id", "as": "fw"}},
        {"$unwind": "$fw"}, {"$match": {"fw.state": "READY"}}, {"$project": {"fw_id": "$_id"}}]))
    exp = sorted(i for i in range(0, 50, 10) if docs[i]["state"] == "READY")
    assert exp == [0, 10, 20, 30, 40]
    assert sorted(r["fw_id"] for r in joined) == exp


def test_unknown_command_is_code_59_naming_it(db):
    with pytest.raises(pymongo.errors.OperationFailure) as exc:
        db.command("frobnicateCollection", "x")
    assert exc.value.code == 59
    assert "frobnicateCollection" in str(exc.value)
    assert db.command("ping")["ok"] == 1.0  # the connection still serves


def test_bad_query_operator_is_an_error_reply_not_a_dropped_socket(db):
    db.c.insert_one({"a": 1})
    with pytest.raises(pymongo.errors.OperationFailure):
        list(db.c.find({"a": {"$frobnicate": 1}}))
    assert db.c.find_one({"a": 1})["a"] == 1


def test_gridfs_roundtrip_large_file(db):
    fs = gridfs.GridFS(db, "fw_gridfs")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    fid = fs.put(payload, metadata={"launch_id": 7})
    assert fs.get(fid).read() == payload
    assert [f._id for f in fs.find({"metadata.launch_id": 7})] == [fid]
    fs.delete(fid)
    assert db["fw_gridfs.chunks"].count_documents({}) == 0


# ---------------------------------------------------------------- indexed lookups == full scans
def _random_doc(rng: random.Random, i: int) -> dict:
    def scalar():
        return rng.choice(["a", "b", "c", 1, 2, 2.0, True, None, datetime.datetime(2024, 1, 1 + rng.randint(0, 2))])

    d: dict = {"_id": i, "k": i}
    r = rng.random()
    if r < 0.7:
        d["s"] = scalar()
    elif r < 0.85:
        d["s"] = [scalar() for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.8:
        d["d"] = {"x": scalar()}
    if rng.random() < 0.3:
        d["e"] = [{"x": scalar()}, {"y": 1}, "plain"]
    if rng.random() < 0.7:
        d["arr"] = [{"r": scalar()} for _ in range(rng.randint(0, 3))]
    return d


_QUERIES = [
    {"s": "a"}, {"s": 1}, {"s": 2}, {"s": True}, {"s": None}, {"s": {"$in": ["a", 1, None]}}, {"s": {"$eq": "b"}},
    {"s": datetime.datetime(2024, 1, 2)}, {"d.x": "a"}, {"d.x": None}, {"d.x": {"$in": [2, "c"]}},
    {"arr.r": "b"}, {"arr.r": None}, {"e.x": "a"}, {"e.x": None}, {"e.x": {"$in": [1, True]}},
    {"arr.0.r": "b"}, {"arr.1.r": None}, {"_id": 5}, {"_id": {"$in": [1, 2, 3, 999]}},
    {"s": "a", "d.x": "b"}, {"$and": [{"s": {"$in": ["a", "b"]}}, {"k": {"$gt": 50}}]},
    {"s": {"$exists": False}}, {"s": {"$ne": "a"}}, {"d": {"x": "a"}}, {"s": ["a", "b"]},
]


def _snapshot(coll, q, sort=None):
    cur = coll.find(q, {"_id": 1})
    if sort:
        cur = cur.sort(sort)
    return [d["_id"] for d in cur]


def test_indexed_queries_match_unindexed_queries(db):
    """Equality lookups through the hash indexes return what a full scan returns, before and after writes."""
    rng = random.Random(20240607)
    docs = [_random_doc(rng, i) for i in range(200)]
    plain, indexed = db.plain, db.indexed
    for f in ("s", "d.x", "arr.r", "e.x", "arr.0.r", "arr.1.r"):
        indexed.create_index(f)
    indexed.create_index([("k", 1), ("s", -1)])
    plain.insert_many([dict(d) for d in docs])
    indexed.insert_many([dict(d) for d in docs])

    def compare(stage: str) -> None:
        for q in _QUERIES:
            assert _snapshot(indexed, q) == _snapshot(plain, q), f"{stage}: {q}"
            assert _snapshot(indexed, q, [("k", -1)]) == _snapshot(plain, q, [("k", -1)]), f"{stage}: {q} sorted"
            assert indexed.count_documents(q) == plain.count_documents(q), f"{stage}: count {q}"

    compare("after insert")
    for coll in (plain, indexed):
        coll.update_many({"s": "a"}, {"$set": {"s": "z", "d.x": "a"}})
        coll.update_one({"_id": 3}, {"$set": {"s": ["a", "c"]}})
        coll.find_one_and_update({"s": "b"}, {"$set": {"s": None}}, sort=[("k", -1)])
        coll.replace_one({"_id": 7}, {"k": 7, "s": "a", "arr": [{"r": "b"}]})
        coll.delete_many({"d.x": "c"})
        coll.update_many({"arr.r": 1}, {"$push": {"arr": {"r": "b"}}})
        coll.insert_one({"_id": 1000, "k": 1000, "s": "a"})
    compare("after writes")


# ------------------------------------------------------------------------ startup refusals
def _lan_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            addr = s.getsockname()[0]
        except OSError:
            addr = "127.0.0.1"
    return addr if not addr.startswith("127.") else "192.0.2.10"  # TEST-NET-1: documentation only


def _off_loopback_hostname() -> str | None:
    for name in ("ip6-allnodes", "ip6-allrouters", "example.com"):
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        if infos and not all(i[4][0].startswith(("127.", "::1")) for i in infos):
            return name
    return None


@pytest.fixture
def off_loopback_name():
    """A host name that resolves off loopback: one of the machine's, or (as root) a temporary /etc/hosts entry
    to 192.0.2.10 (TEST-NET-1, documentation only: nothing connects to it, the server refuses it first)."""
    name = _off_loopback_hostname()
    if name is not None:
        yield name
        return
    if os.geteuid() != 0:
        pytest.skip("no host name here resolves to a non-loopback address, and adding one to /etc/hosts needs root")
    hosts = Path("/etc/hosts")
    before = hosts.read_text()
    name = "pilot-offloopback-test.invalid"
    hosts.write_text(before + ("" if before.endswith("\n") else "\n") + f"192.0.2.10 {name}\n")
    try:
        yield name
    finally:
        hosts.write_text(before)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "lan", "hostname"])
def test_no_tls_off_loopback_is_refused(tmp_path, host, request):
    """Off loopback TLS is always on: --no-tls there is refused before anything is touched (the server then
    listens off loopback only with TLS: tests/launchpad/test_tls.py)."""
    if host == "lan":
        host = _lan_address()
    elif host == "hostname":
        host = request.getfixturevalue("off_loopback_name")
    data = tmp_path / "data"
    res = run_serve(["--host", host, "--no-tls", "--port", "0", "--data", str(data)])
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing --no-tls" in lines[0] and host in lines[0]
    assert "always uses TLS" in lines[0]
    assert not data.exists()  # refused before touching anything


def test_the_test_network_switch_is_gone(tmp_path):
    """PILOT_LAUNCHPAD_TEST_NETWORK used to let the test address through without TLS; it opens nothing now."""
    data = tmp_path / "data"
    res = run_serve(["--host", "198.51.100.1", "--no-tls", "--port", "0", "--data", str(data)],
                    env={"PILOT_LAUNCHPAD_TEST_NETWORK": "198.51.100.1"})
    assert res.returncode == 2 and "refusing --no-tls" in res.stderr
    assert not data.exists()


def test_unresolvable_host_and_bad_tls_names_are_refused(tmp_path):
    data = tmp_path / "data"
    res = run_serve(["--host", "no-such-host.invalid", "--port", "0", "--data", str(data)])
    assert res.returncode == 2 and "cannot resolve --host 'no-such-host.invalid'" in res.stderr
    res = run_serve(["--tls-name", "bad name!", "--tls", "--port", "0", "--data", str(data)])
    assert res.returncode == 2 and "--tls-name 'bad name!'" in res.stderr
    # a name for a certificate that loopback without --tls does not have
    res = run_serve(["--tls-name", "db.example.org", "--port", "0", "--data", str(data)])
    assert res.returncode == 2 and "add --tls" in res.stderr
    assert not data.exists()


def test_an_address_of_another_machine_is_a_clear_error(tmp_path):
    addr = "192.0.2.10"  # TEST-NET-1 (RFC 5737): documentation only
    with socket.socket() as s:
        try:
            s.bind((addr, 0))
            pytest.skip(f"{addr} is an address of this machine")
        except OSError:
            pass
    res = run_serve(["--host", addr, "--port", "0", "--data", str(tmp_path / "data")])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{addr} is not an address of this machine" in lines[0]


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = run_serve(["--port", str(port), "--data", str(tmp_path / "data")])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0]
    assert not (tmp_path / "data" / "server.pid").exists()


def _ro_mount(path: Path) -> bool:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True,
                         check=False)
    return res.returncode == 0


@pytest.mark.parametrize("kind", ["file-in-place", "under-a-file", "read-only-fs"])
def test_unwritable_data_dir_is_a_clear_error(tmp_path, kind):
    if kind == "file-in-place":
        data = tmp_path / "data"
        data.write_text("not a dir")
    elif kind == "under-a-file":
        (tmp_path / "afile").write_text("x")
        data = tmp_path / "afile" / "data"
    else:
        mnt = tmp_path / "ro"
        if not _ro_mount(mnt):
            pytest.skip("cannot mount a read-only tmpfs here (needs root / CAP_SYS_ADMIN)")
        data = mnt / "data"
    try:
        res = run_serve(["--port", "0", "--data", str(data)])
    finally:
        if kind == "read-only-fs":
            subprocess.run(["umount", str(tmp_path / "ro")], check=True)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0] and "--data" in lines[0], res.stderr


def test_second_server_on_same_data_dir_refuses(own_server, tmp_path):
    srv = own_server()
    res = run_serve(["--port", "0", "--data", str(tmp_path / "data")])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and str(srv.proc.pid) in lines[0]
    # the hint names this data dir (a bare `pilot launchpad stop` stops the default config dir's server)
    stop = f"pilot launchpad stop --data {tmp_path / 'data'}"
    assert f"stop it with `{stop}`" in lines[0]
    with client_for(srv) as c:  # the first one is unaffected
        assert c.admin.command("ping")["ok"] == 1.0
    info = json.loads((tmp_path / "data" / "server.json").read_text())
    assert info["pid"] == srv.proc.pid and info["port"] == srv.port and info["host"] == "127.0.0.1"
    # and the hinted command stops it
    res = subprocess.run([sys.executable, "-m", *stop.split()], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: srv.proc.poll() is not None, timeout=15)


def test_unknown_credentials_get_mongodb_s_authentication_error(own_server):
    """A user the server does not have fails like a wrong password (code 18, MongoDB's words; more in
    tests/launchpad/test_auth.py)."""
    srv = own_server()
    uri = f"mongodb://alice:secret@127.0.0.1:{srv.port}/x?authSource=admin"
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as c, \
            pytest.raises(pymongo.errors.OperationFailure) as exc:
        c.x.c.find_one()
    assert exc.value.code == 18 and exc.value.details is not None
    assert exc.value.details["errmsg"] == "Authentication failed."


def test_sigint_is_a_clean_shutdown_with_banner(own_server, tmp_path):
    srv = own_server()
    with client_for(srv) as c:
        c.t.c.insert_one({"x": 1})
    assert srv.stop(signal.SIGINT) == 0
    log = srv.log_path.read_text()
    assert f"listening on 127.0.0.1:{srv.port} (loopback: this machine only)" in log
    assert log.count("TLS off (loopback; --tls turns it on)") == 1
    assert f"admin LaunchPad file: {tmp_path / 'data' / 'my_launchpad.yaml'}" in log
    assert "stopped (final snapshot" in log
    assert sorted(p.name for p in (tmp_path / "data").glob("journal-*.log")) == ["journal-00000002.log"]


# ------------------------------------------------------------------------------- raw wire
def _raw_op_query_ismaster(port: int) -> dict:
    """A legacy OP_QUERY handshake built by hand (layout: MongoDB legacy opcodes documentation)."""
    q = bson.encode({"isMaster": 1, "helloOk": True})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + q
    msg = struct.pack("<iiii", 16 + len(body), 42, 0, 2004) + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(msg)
        header = s.recv(16, socket.MSG_WAITALL)
        length, _rid, response_to, opcode = struct.unpack("<iiii", header)
        rest = s.recv(length - 16, socket.MSG_WAITALL)
    assert (response_to, opcode) == (42, 1)  # OP_REPLY to our request
    _flags, _cursor, _start, nret = struct.unpack_from("<iqii", rest, 0)
    assert nret == 1
    return bson.decode(rest[20:])


def test_legacy_handshake_and_garbage_connections(own_server):
    srv = own_server()
    reply = _raw_op_query_ismaster(srv.port)
    assert reply["ismaster"] is True and reply["maxWireVersion"] >= 8 and reply["ok"] == 1.0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(struct.pack("<iiii", 16 + 4, 1, 0, 9999) + b"junk")  # unknown opcode: connection closed
        assert s.recv(100) == b""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(struct.pack("<iiii", 2**30, 1, 0, 2013))  # absurd length
        assert s.recv(100) == b""
    with client_for(srv) as c:
        assert c.admin.command("ping")["ok"] == 1.0
        with pytest.raises(pymongo.errors.OperationFailure) as exc:
            list(c.t.c.aggregate([{"$merge": {"into": "other"}}]))
        assert exc.value.code == 115 and "$merge" in str(exc.value)
        st = c.admin.command("pilotStats")
        assert st["journal"]["fsyncs"] >= 0 and st["commands"]["ping"] >= 1


def test_find_and_modify_sort_follows_bson_order(db):
    """Reservation-style findAndModify picks by sort order across types.

    Expected order from the MongoDB manual, "Comparison/Sort Order": null (and missing) < numbers < strings <
    ObjectId < booleans < dates; descending here, ties broken by ``k`` ascending.
    """
    oid = bson.ObjectId("65a000000000000000000000")
    values = [("missing", None), ("null", None), ("int", 3), ("float", 2.5), ("str", "b"), ("str2", "a"),
              ("oid", oid), ("bool", True), ("date", datetime.datetime(2024, 1, 1)), ("neg", -1)]
    for k, (name, v) in enumerate(values):
        doc = {"k": k, "name": name, "state": "READY"}
        if name != "missing":
            doc["p"] = v
        db.sortme.insert_one(doc)
    db.sortme.create_index("state")
    picks = []
    while True:
        d = db.sortme.find_one_and_update({"state": "READY"}, {"$set": {"state": "RESERVED"}},
                                          sort=[("p", -1), ("k", 1)])
        if d is None:
            break
        picks.append(d["name"])
    assert picks == ["date", "bool", "oid", "str", "str2", "int", "float", "neg", "missing", "null"]
