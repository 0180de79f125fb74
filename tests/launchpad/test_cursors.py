"""Cursors of the embedded LaunchPad server: random ids, and only their owner may continue or kill them.

The expected replies are MongoDB's own, not this server's:

- an unknown cursor in ``getMore`` is code 43 ``CursorNotFound`` with the message ``cursor id <id> not found``
  (mongo ``src/mongo/db/cursor_manager.cpp``, ``CursorManager::pinCursor``; code and name from
  ``src/mongo/base/error_codes.yml``);
- ``killCursors`` answers ``{cursorsKilled, cursorsNotFound, cursorsAlive, cursorsUnknown}`` and lists an
  id it did not find under ``cursorsNotFound`` (MongoDB manual, "killCursors"; ``killcursors_common.h``);
- cursor ids are random, positive and non-zero (``allocate_cursor_id.cpp``: 0 means "no cursor").

Someone else's cursor (another connection's, or another logical session's) must look exactly like an unknown
one. Every test starts its own embedded server (tests.helpers.EmbeddedServer), stopped by its pid.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest
from bson import Int64

from tests.helpers import EmbeddedServer, wait_for
from tests.launchpad.scram_client import WireConn

CURSOR_NOT_FOUND = 43
NDOCS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer(Path(tmp_path_factory.mktemp("cursors")) / "data").start()
    try:
        c: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(s.uri, serverSelectionTimeoutMS=10000)
        c.cur.docs.insert_many([{"_id": i} for i in range(NDOCS)])
        c.close()
        yield s
    finally:
        s.stop()


@pytest.fixture
def clients(server: EmbeddedServer) -> Iterator[tuple[pymongo.MongoClient, pymongo.MongoClient]]:
    a: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10000)
    b: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10000)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _open_cursors(server: EmbeddedServer) -> int:
    with pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10000) as c:
        return int(c.admin.command("pilotStats")["openCursors"])


# ------------------------------------------------------------------------------ raw OP_MSG, no driver
class RawConn(WireConn):
    """One TCP connection speaking bare OP_MSG (tests/launchpad/scram_client.py): commands carry a session only
    when given ``lsid``, and go to database ``cur`` unless told.

    It logs in as the server's admin first (SCRAM-SHA-256): authentication belongs to the connection, and every
    command but the handshake needs it."""

    def __init__(self, server: EmbeddedServer) -> None:
        super().__init__(server.host, server.port)
        done = self.login(server.admin["username"], server.admin["password"])
        assert done["ok"] == 1.0 and done["done"], done

    def command(self, doc: dict[str, Any], db: str = "cur", lsid: Any = None) -> dict[str, Any]:
        return super().command(doc, db, lsid)

    def find(self, lsid: uuid.UUID | None = None) -> int:
        reply = self.command({"find": "docs", "batchSize": 2}, lsid=lsid)
        assert reply["ok"] == 1.0 and len(reply["cursor"]["firstBatch"]) == 2
        return int(reply["cursor"]["id"])

    def getmore(self, cid: int, lsid: uuid.UUID | None = None) -> dict[str, Any]:
        return self.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 2}, lsid=lsid)


def _assert_cursor_not_found(reply: dict[str, Any], cid: int) -> None:
    assert reply["ok"] == 0.0
    assert reply["code"] == CURSOR_NOT_FOUND and reply["codeName"] == "CursorNotFound"
    assert reply["errmsg"] == f"cursor id {cid} not found"


# ------------------------------------------------------------------------------------- tests
def test_another_client_cannot_continue_or_kill_a_cursor(clients):
    a, b = clients
    cursor = a.cur.docs.find({}, sort=[("_id", 1)], batch_size=3)
    first = [next(cursor)["_id"] for _ in range(3)]
    cid = cursor.cursor_id
    assert cid and first == [0, 1, 2]

    with pytest.raises(pymongo.errors.OperationFailure) as info:
        b.cur.command({"getMore": Int64(cid), "collection": "docs", "batchSize": 5})
    assert info.value.code == CURSOR_NOT_FOUND
    assert info.value.details is not None and info.value.details["codeName"] == "CursorNotFound"
    assert info.value.details["errmsg"] == f"cursor id {cid} not found"
    # exactly what a cursor that never existed gets: the reply tells nothing about A's cursor
    with pytest.raises(pymongo.errors.OperationFailure) as unknown:
        b.cur.command({"getMore": Int64(cid ^ 1), "collection": "docs"})
    assert unknown.value.code == CURSOR_NOT_FOUND
    assert unknown.value.details is not None and unknown.value.details["errmsg"] == f"cursor id {cid ^ 1} not found"

    killed = b.cur.command({"killCursors": "docs", "cursors": [Int64(cid)]})
    assert killed["ok"] == 1.0
    assert list(killed["cursorsNotFound"]) == [cid]
    assert list(killed["cursorsKilled"]) == [] and list(killed["cursorsAlive"]) == []
    assert list(killed["cursorsUnknown"]) == []

    # A's cursor lost nothing: every remaining document, in order
    assert first + [d["_id"] for d in cursor] == list(range(NDOCS))


def test_owner_kills_its_own_cursor(clients):
    a, _b = clients
    reply = a.cur.command({"find": "docs", "batchSize": 1})
    cid = int(reply["cursor"]["id"])
    killed = a.cur.command({"killCursors": "docs", "cursors": [Int64(cid)]})
    assert list(killed["cursorsKilled"]) == [cid] and list(killed["cursorsNotFound"]) == []
    with pytest.raises(pymongo.errors.OperationFailure) as info:
        a.cur.command({"getMore": Int64(cid), "collection": "docs"})
    assert info.value.code == CURSOR_NOT_FOUND


def test_cursor_ids_are_random_positive_63_bit(clients):
    a, _b = clients
    ids = [int(a.cur.command({"find": "docs", "batchSize": 1})["cursor"]["id"]) for _ in range(1000)]
    try:
        assert len(set(ids)) == 1000
        assert all(0 < i < 2**63 for i in ids)
        ordered = sorted(ids)
        # not a counter: no two ids anywhere near each other (a random start plus one would be 1 apart)
        assert min(y - x for x, y in zip(ordered, ordered[1:], strict=False)) > 2**20
        assert all(y - x != 1 for x, y in zip(ids, ids[1:], strict=False))
        assert max(ids).bit_length() >= 60  # the high bits are used, not a small range
    finally:
        for i in range(0, 1000, 100):
            a.cur.command({"killCursors": "docs", "cursors": [Int64(c) for c in ids[i:i + 100]]})


def test_closed_connection_drops_its_cursors(server):
    owner, other = RawConn(server), RawConn(server)
    try:
        cid = owner.find()
        assert owner.getmore(cid)["ok"] == 1.0  # its own connection continues it
        _assert_cursor_not_found(other.getmore(cid), cid)
        assert list(other.command({"killCursors": "docs", "cursors": [Int64(cid)]})["cursorsNotFound"]) == [cid]
        before = _open_cursors(server)
        owner.close()
        wait_for(lambda: _open_cursors(server) == before - 1, timeout=10, interval=0.05,
                 what="the closed connection's cursor to be discarded")
        _assert_cursor_not_found(other.getmore(cid), cid)
    finally:
        owner.close()
        other.close()


def test_a_session_cursor_follows_its_session_across_connections(server):
    """Drivers send a cursor's getMores with its session over any pooled connection (as MongoDB allows)."""
    c1, c2 = RawConn(server), RawConn(server)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    try:
        cid = c1.find(lsid=mine)
        _assert_cursor_not_found(c2.getmore(cid, lsid=theirs), cid)
        _assert_cursor_not_found(c2.getmore(cid), cid)  # no session is not its session either
        c1.close()  # the connection that opened it is gone; the session is not
        reply = c2.getmore(cid, lsid=mine)
        assert reply["ok"] == 1.0 and [d["_id"] for d in reply["cursor"]["nextBatch"]] == [2, 3]
        killed = c2.command({"killCursors": "docs", "cursors": [Int64(cid)]}, lsid=mine)
        assert list(killed["cursorsKilled"]) == [cid]
    finally:
        c1.close()
        c2.close()


def test_threads_sharing_one_client_iterate_their_cursors(clients):
    """pymongo runs a getMore on whichever pooled connection is free: that must not lose the cursor."""
    a, _b = clients
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                seen = []
                for d in a.cur.docs.find({}, sort=[("_id", 1)], batch_size=3):
                    seen.append(d["_id"])
                    time.sleep(0.002)  # the threads overlap, so the pool holds several connections
                assert seen == list(range(NDOCS))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
