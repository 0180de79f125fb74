"""Limits of the embedded LaunchPad server against hostile or broken clients (issue 17, item 3).

Each test starts its own server (``own_server``), speaks to it over real TCP (pymongo, or raw OP_MSG built
from MongoDB's OP_MSG specification where a driver would refuse to send the bytes), and measures the server
process from /proc/PID/status. Expected replies are MongoDB's own:

* depth: ``src/mongo/bson/bson_validate.cpp`` (any BSON object of a message: at most maxBSONDepth = 200 levels,
  code 15 Overflow, "BSONObj exceeded maximum nested object depth: 200"), ``src/mongo/db/ops/insert.cpp``
  ("cannot insert document because it exceeds 180 levels of nesting", code 15: getMaxDepthForUserStorage() is
  200 - 20, ``bson_depth.h``) and ``src/mongo/db/update/storage_validation.cpp`` ("Document exceeds maximum
  nesting depth of 180", code 15);
* size: a BSON object over BSONObjMaxInternalSize (16 MiB + 16 KiB) is code 10334 BSONObjectTooLarge, "BSONObj
  size: 16793601 (0x1004001) is invalid. Size must be between 0 and 16793600(16MB)", and an inserted document
  over 16 MiB is the write error "object to insert too large" (code 2, BadValue) -- as a capture against a real
  mongod shows (a public OP_MSG limits script: payload 0 with 16793601 bytes is refused with that message,
  a payload 1 document of 16777217 bytes gives ok 1, n 0 and that write error);
* error codes and names: ``src/mongo/base/error_codes.yml`` (15 Overflow, 2 BadValue, 10334
  BSONObjectTooLarge, 43 CursorNotFound).
"""

from __future__ import annotations

import os
import random
import resource
import socket
import ssl
import statistics
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import bson
import pymongo
import pymongo.errors
import pytest
from bson import Int64

from tests.helpers import EmbeddedServer, wait_for
from tests.launchpad.conftest import client_for
from tests.launchpad.scram_client import WireConn

OVERFLOW, BAD_VALUE, TOO_LARGE, CURSOR_NOT_FOUND = 15, 2, 10334, 43
MIB = 2**20


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _rss_kib(srv: EmbeddedServer) -> int:
    assert srv.proc is not None
    return int(_status(srv.proc.pid)["VmRSS"].split()[0])


def _threads(srv: EmbeddedServer) -> int:
    assert srv.proc is not None
    return int(_status(srv.proc.pid)["Threads"])


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _op_msg(doc: dict[str, Any], seq: tuple[str, list[bytes]] | None = None, request_id: int = 1) -> bytes:
    """An OP_MSG (MongoDB's OP_MSG specification): flags 0, a kind-0 body, optionally one kind-1 sequence."""
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
    if seq is not None:
        ident, docs = seq
        inner = ident.encode() + b"\x00" + b"".join(docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(inner)) + inner
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _nested(depth: int) -> dict[str, Any]:
    """A document ``depth`` levels deep (1: flat), built without recursion."""
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"s": doc}
    return doc


def _raw_nested(depth: int) -> bytes:
    """The BSON of :func:`_nested`, built by hand: deeper than any Python encoder will go."""
    raw = bson.encode({"leaf": 1})
    for _ in range(depth - 1):
        body = b"\x03s\x00" + raw
        raw = struct.pack("<i", len(body) + 5) + body + b"\x00"
    return raw


class _Raw(WireConn):
    """A logged-in raw connection that can send any bytes."""

    def __init__(self, srv: EmbeddedServer) -> None:
        super().__init__("127.0.0.1", srv.port)
        assert self.login(srv.admin["username"], srv.admin["password"])["done"]

    def send(self, msg: bytes) -> dict[str, Any]:
        self.sock.sendall(msg)
        length, _rid, _to, opcode = struct.unpack("<iiii", self._recv(16))
        body = self._recv(length - 16)
        assert opcode == 2013
        return bson.decode(body[5:])


@pytest.fixture
def many_files():
    """Room for 2,000+ sockets in this process (the server raises its own limit, see connections.py)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2300
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard open-files limit is {hard}, below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------------ connections
def test_2000_idle_connections_cost_little_and_a_client_is_still_served(own_server, many_files):
    """The issue's scene: 2,000 idle connections, a slow-loris client, a 40 MB message announced and then
    silent, 200 open cursors; a normal client's commands are answered meanwhile (how fast is printed, not
    asserted: speed belongs to the benchmarks; a command held for seconds would mean the client is starved)."""
    srv = own_server()
    with client_for(srv) as c:
        c.t.c.insert_many([{"_id": i, "state": "READY"} for i in range(100)])
        before = _rss_kib(srv)
        idle = []
        try:
            base = _threads(srv)
            for i in range(2000):
                idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=30))
                if i % 32 == 31:
                    # at most 64 connections ahead of the server's accept loop: its listen backlog (128) never
                    # overflows, where each SYN dropped from a full queue costs the client a 1 s retransmit
                    # (most of this loop's time, unpaced); the 2,000 connections are the same either way
                    wait_for(lambda: _threads(srv) - base >= len(idle) - 64, timeout=60, interval=0.002,
                             what="the server to accept the connections")
            wait_for(lambda: _threads(srv) >= 2000, timeout=60, interval=0.2, what="2000 connection threads")
            assert srv.proc is not None  # the server raised its own open-files limit for --max-connections 5000
            limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
            soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
            assert soft == hard or int(soft) >= 5000 + 128  # up to its hard limit: 5,000 connections and spares
            assert len(os.listdir(f"/proc/{srv.proc.pid}/fd")) > 2000
            grown_mib = (_rss_kib(srv) - before) / 1024
            # and, at the same time, a slow-loris client, a 40 MB message announced then silent, 200 open cursors
            loris = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            loris.sendall(_op_msg({"ping": 1, "$db": "admin"})[:9])
            silent = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            silent.sendall(struct.pack("<iiii", 40_000_000, 1, 0, 2013) + b"\x00" * 65536)
            idle += [loris, silent]
            cursors = [c.t.c.find(batch_size=1) for _ in range(200)]
            assert all(next(cur)["_id"] == 0 for cur in cursors)
            lat = []
            for i in range(200):
                t0 = time.perf_counter()
                assert c.t.c.find_one({"_id": i % 100})["state"] == "READY"
                c.t.c.update_one({"_id": i % 100}, {"$set": {"n": i}})
                lat.append((time.perf_counter() - t0) / 2)
            assert _rss_kib(srv) < 400 * 1024  # the bound for the whole server
            assert all(cur.next()["_id"] == 1 for cur in cursors)
            assert not any(_closed_by_server(s, 0.001) for s in idle[:2000:100]), "idle connections must stay open"
        finally:
            for s in idle:
                s.close()
    median, worst = statistics.median(lat), max(lat)
    print(f"2000 idle connections: RSS +{grown_mib:.1f} MiB; a client's command: median {median * 1000:.1f} ms, "
          f"max {worst * 1000:.1f} ms")
    assert grown_mib < 80, f"2000 idle connections grew the server by {grown_mib:.0f} MiB"
    assert worst < 5.0, f"a command waited {worst:.1f} s: the client is starved by the idle connections"


def test_one_connection_over_the_limit_is_closed_with_one_log_line(own_server):
    srv = own_server(extra=["--max-connections", "5"])
    conns = [WireConn("127.0.0.1", srv.port) for _ in range(5)]
    try:
        for w in conns:
            assert w.command({"hello": 1})["ok"] == 1.0  # each one is served
        extra = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(30)]
        assert all(_closed_by_server(s, 10) for s in extra)
        for s in extra:
            s.close()
        text = srv.log_path.read_text()
        lines = [ln for ln in text.splitlines() if "refusing a connection" in ln]
        assert len(lines) == 1, lines  # 30 refusals within 10 s: one line
        assert "5 connections are open, the limit (--max-connections 5)" in lines[0]
        conns.pop().close()
        admin = wait_for(lambda: _logged_in(srv), timeout=10, interval=0.2, what="a free slot after one closed")
        assert all(w.command({"ping": 1})["ok"] == 1.0 for w in conns)
        try:  # what `pilot launchpad status` shows
            st = admin.command({"pilotStats": 1})["connections"]
        finally:
            admin.close()
        assert (st["current"], st["limit"]) == (5, 5) and st["refused"] >= 30
    finally:
        for w in conns:
            w.close()


def _logged_in(srv: EmbeddedServer) -> _Raw | None:
    """A logged-in raw connection, or None while the server is full (it closes the connection at once)."""
    try:
        return _Raw(srv)
    except (ConnectionError, OSError):
        return None


# ------------------------------------------------------------------------------------ slow clients
def test_slow_loris_is_closed_after_the_idle_timeout_but_idle_connections_stay(own_server):
    srv = own_server(extra=["--idle-timeout", "1"])
    idle = WireConn("127.0.0.1", srv.port)
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    trickle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        hello = _op_msg({"hello": 1, "$db": "admin"})
        silent.sendall(hello[:10])  # a header begun, then nothing
        t0 = time.monotonic()
        assert _closed_by_server(silent, 10)
        assert 0.9 <= time.monotonic() - t0 < 8
        closed = False
        for b in hello[:15]:  # a byte every 0.4 s: never silent for 1 s, but far too slow
            try:
                trickle.sendall(bytes([b]))
            except OSError:
                closed = True
                break
            if _closed_by_server(trickle, 0.4):
                closed = True
                break
        assert closed, "a trickling client must be closed"
        assert idle.command({"ping": 1})["ok"] == 1.0  # idle between messages for seconds: still served
        text = srv.log_path.read_text()
        assert "sent too little for 1 s (--idle-timeout 1)" in text
        assert "Traceback" not in text
    finally:
        for s in (silent, trickle):
            s.close()
        idle.close()


def test_over_tls_too_a_stalled_message_is_closed_and_an_idle_connection_stays(own_server):
    srv = own_server(extra=["--tls", "--idle-timeout", "1"])
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    stalled = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                              server_hostname="127.0.0.1")
    idle = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                           server_hostname="127.0.0.1")
    try:
        stalled.sendall(struct.pack("<iiii", 40_000_000, 1, 0, 2013) + b"\x00" * 1000)
        assert _closed_by_server(stalled, 15)
        time.sleep(1.5)  # longer than the idle timeout, between messages
        idle.settimeout(10)
        idle.sendall(_op_msg({"ping": 1, "$db": "admin"}))
        length = struct.unpack("<i", _recv_all(idle, 4))[0]
        assert bson.decode(_recv_all(idle, length - 4)[12 + 5:])["ok"] == 1.0
    finally:
        stalled.close()
        idle.close()
    assert "1016 of 40000000 bytes so far" in srv.log_path.read_text()


def _recv_all(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "closed"
        buf += chunk
    return buf


def test_the_open_files_limit_caps_the_connections_with_a_warning(caplog):
    """The server raises its soft open-files limit for --max-connections, up to the hard limit; beyond that it
    takes fewer connections and says so (here in this process: the function the server calls at start)."""
    from pilot.launchpad.connections import _raise_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-files limit here")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert _raise_open_files(300) == 300 and resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 428
        with caplog.at_level("WARNING"):
            assert _raise_open_files(hard) == hard - 128
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert f"at most {hard - 128} connections, not --max-connections {hard}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_40mb_header_followed_by_silence_holds_no_40mb(own_server):
    # closed --idle-timeout after its last byte, extended by the 65,552 bytes it sent (4 s at 16 KiB/s:
    # pilot.launchpad.limits.MIN_RATE_BYTES_PER_S): some 5 s, well after the look at the RSS 1 s in
    srv = own_server(extra=["--idle-timeout", "1"])
    with client_for(srv) as c:
        assert c.admin.command("ping")["ok"] == 1.0
    before = _rss_kib(srv)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        s.sendall(struct.pack("<iiii", 40_000_000, 1, 0, 2013) + b"\x00" * 65536)
        time.sleep(1)
        grown_mib = (_rss_kib(srv) - before) / 1024
        assert grown_mib < 8, f"a 40 MB announcement grew the server by {grown_mib:.0f} MiB"
        assert _closed_by_server(s, 15)
    finally:
        s.close()
    assert "65552 of 40000000 bytes so far" in srv.log_path.read_text()


def test_partly_received_messages_share_one_budget(own_server):
    srv = own_server(extra=["--receive-budget-mb", "4", "--idle-timeout", "20"])
    first = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    second = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        first.sendall(struct.pack("<iiii", 10_000_000, 1, 0, 2013) + b"\x00" * (3 * MIB))
        watch = _Raw(srv)
        wait_for(lambda: watch.command({"pilotStats": 1})["connections"]["receiveBudgetUsed"] >= 3 * MIB,
                 timeout=30, interval=0.1, what="the first message's 3 MiB held")
        watch.close()
        second.sendall(struct.pack("<iiii", 10_000_000, 2, 0, 2013) + b"\x00" * (2 * MIB))
        assert _closed_by_server(second, 15)  # its bytes do not fit next to the first one's 3 MiB
        assert not _closed_by_server(first, 0.5)
        with client_for(srv) as c:  # small messages still fit
            assert c.admin.command("ping")["ok"] == 1.0
        assert "does not fit in the receive budget (--receive-budget-mb 4)" in srv.log_path.read_text()
    finally:
        first.close()
        second.close()


def test_a_header_over_the_max_message_size_closes_before_the_body(own_server):
    srv = own_server(extra=["--max-message-mb", "1"])
    with client_for(srv) as c:
        assert c.admin.command("hello")["maxMessageSizeBytes"] == MIB  # what drivers split their batches by
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(struct.pack("<iiii", MIB + 1, 1, 0, 2013))
        assert _closed_by_server(s, 10)
    assert f"message length {MIB + 1} outside 16..{MIB}" in srv.log_path.read_text()


# ------------------------------------------------------------------------------------ depth and size
def test_depth_limits_are_mongodb_s(own_server):
    srv = own_server()
    with client_for(srv) as c:
        coll = c.t.deep
        with pytest.raises(pymongo.errors.OperationFailure) as exc:
            coll.insert_one({"_id": 900, "x": _nested(899)})
        assert exc.value.code == OVERFLOW and exc.value.details is not None
        assert exc.value.details["errmsg"] == "BSONObj exceeded maximum nested object depth: 200"
        assert exc.value.details["codeName"] == "Overflow"
        with pytest.raises(pymongo.errors.WriteError) as werr:
            coll.insert_one({"_id": 181, "x": _nested(180)})  # 181 levels with the top document
        assert werr.value.code == OVERFLOW
        assert werr.value.details["errmsg"] == "cannot insert document because it exceeds 180 levels of nesting"
        coll.insert_one({"_id": 180, "x": _nested(179)})  # exactly MongoDB's limit: stored, and usable
        coll.update_one({"_id": 180}, {"$set": {"y": 1}})
        assert coll.find_one({"_id": 180}, {"y": 1}) == {"_id": 180, "y": 1}
        with pytest.raises(pymongo.errors.WriteError) as werr:
            coll.update_one({"_id": 180}, {"$set": {".".join(["a"] * 181): 1}})  # a shallow message, a deep result
        assert werr.value.code == OVERFLOW
        assert werr.value.details["errmsg"] == "Document exceeds maximum nesting depth of 180"
        with pytest.raises(pymongo.errors.OperationFailure) as exc:
            coll.find_one_and_update({"_id": 180}, {"$set": {"z": _nested(181)}})
        assert exc.value.code == OVERFLOW
        with pytest.raises(pymongo.errors.BulkWriteError) as bulk:
            coll.insert_many([{"_id": 1}, {"_id": 2, "x": _nested(190)}, {"_id": 3}])  # ordered: stops there
        assert bulk.value.details["nInserted"] == 1
        assert [(e["index"], e["code"]) for e in bulk.value.details["writeErrors"]] == [(1, OVERFLOW)]
        with pytest.raises(pymongo.errors.BulkWriteError) as bulk:
            coll.insert_many([{"_id": 4, "x": _nested(190)}, {"_id": 5}, {"_id": 6, "x": _nested(185)}],
                             ordered=False)
        assert bulk.value.details["nInserted"] == 1
        assert [e["index"] for e in bulk.value.details["writeErrors"]] == [0, 2]
        assert sorted(d["_id"] for d in coll.find({}, {"_id": 1})) == [1, 5, 180]
        assert c.admin.command("ping")["ok"] == 1.0
    w = _Raw(srv)
    try:  # far deeper than any encoder goes: refused on its raw bytes, before anything recurses
        reply = w.send(_op_msg({"insert": "deep", "$db": "t"}, ("documents", [_raw_nested(10_000)])))
        assert (reply["ok"], reply["code"]) == (0.0, OVERFLOW)
        assert w.command({"ping": 1})["ok"] == 1.0  # the connection stays
    finally:
        w.close()
    text = srv.log_path.read_text()
    assert "BSONObj exceeded maximum nested object depth: 200" in text
    assert "Traceback" not in text and "RecursionError" not in text
    assert max(len(line) for line in text.splitlines()) < 400


def test_size_limits_are_mongodb_s(own_server):
    srv = own_server()
    w = _Raw(srv)
    try:
        big = bson.encode({"_id": 0, "x": "a" * (16 * MIB + 1 - 22)})
        assert len(big) == 16 * MIB + 1
        reply = w.send(_op_msg({"insert": "big", "$db": "t"}, ("documents", [big])))
        assert reply["ok"] == 1.0 and reply["n"] == 0
        err = reply["writeErrors"][0]
        assert (err["index"], err["code"]) == (0, BAD_VALUE)
        assert err["errmsg"] == f"object to insert too large. size in bytes: {16 * MIB + 1}, max size: {16 * MIB}"
        huge = bson.encode({"_id": 1, "x": "a" * (16 * MIB + 16 * 1024 + 1 - 22)})
        reply = w.send(_op_msg({"insert": "big", "$db": "t"}, ("documents", [huge])))
        assert (reply["ok"], reply["code"], reply["codeName"]) == (0.0, TOO_LARGE, "BSONObjectTooLarge")
        assert reply["errmsg"] == ("BSONObj size: 16793601 (0x1004001) is invalid. Size must be between 0 and "
                                   "16793600(16MB)")
        fits = bson.encode({"_id": 2, "x": "a" * (16 * MIB - 22)})
        reply = w.send(_op_msg({"insert": "big", "$db": "t"}, ("documents", [fits])))
        assert reply["ok"] == 1.0 and reply["n"] == 1 and "writeErrors" not in reply
        assert w.command({"count": "big"}, "t")["n"] == 1
    finally:
        w.close()


# ------------------------------------------------------------------------------------ cursors
def test_guessing_another_user_s_cursor_ids_finds_nothing(own_server):
    """Cursor ids are random 63-bit numbers bound to their user: another authenticated user guessing ids
    (neighbours of a real one, random ones, the real one itself) only ever gets CursorNotFound."""
    srv = own_server()
    with client_for(srv) as admin:
        admin.g.docs.insert_many([{"_id": i} for i in range(10)])
        password = f"pw-{uuid.uuid4().hex}"
        admin.admin.command("createUser", "guesser", pwd=password, roles=[{"role": "read", "db": "g"}])
    owner, guesser = _Raw(srv), WireConn("127.0.0.1", srv.port)
    try:
        assert guesser.login("guesser", password)["done"]
        cids = [int(owner.command({"find": "docs", "batchSize": 1}, "g")["cursor"]["id"]) for _ in range(3)]
        rng = random.Random(17)
        guesses = cids + [c + d for c in cids for d in (-2, -1, 1, 2)] + [rng.getrandbits(63) for _ in range(200)]
        for guess in guesses:
            reply = guesser.command({"getMore": Int64(guess), "collection": "docs"}, "g")
            assert (reply["ok"], reply["code"]) == (0.0, CURSOR_NOT_FOUND), reply
        killed = guesser.command({"killCursors": "docs", "cursors": [Int64(c) for c in cids]}, "g")
        assert sorted(killed["cursorsNotFound"]) == sorted(cids) and list(killed["cursorsKilled"]) == []
        for cid in cids:  # the owner's cursors lost nothing
            more = owner.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 100}, "g")
            assert [d["_id"] for d in more["cursor"]["nextBatch"]] == list(range(1, 10))
    finally:
        owner.close()
        guesser.close()


def test_limits_are_serve_options():
    """Each limit is a documented ``serve`` option (docs/launchpad-server.md, "Limits")."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pilot", "launchpad", "serve", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    docs = (Path(__file__).parents[2] / "docs" / "launchpad-server.md").read_text()
    for opt in ("--max-connections", "--idle-timeout", "--max-message-mb", "--receive-budget-mb"):
        assert opt in out and f"`{opt}" in docs, opt
