"""The embedded server's storage engine: index-answered counts, readers that share the lock while long scans
yield to writers, cursors that stream, idle cursors that expire.

Expected values are MongoDB's (manual, "Comparison/Sort Order" and "Query on embedded/array fields"): numbers
of different types are equal when their values are (``1 == 1.0 == NumberLong(1)``), a boolean is its own BSON
type and never equals a number (Python's ``True == 1`` must not leak in), an equality on an array field
matches an element. The tests that only need "a MongoDB" use the ``db`` fixture, so they also run against a
real MongoDB (MONGODB_URI).
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import bson
import pymongo
import pymongo.errors
import pytest
from bson import Int64, ObjectId

from tests.helpers import EmbeddedServer
from tests.launchpad.conftest import client_for

_VALUES: list[Any] = [True, False, 1, 1.0, Int64(1), 0, 0.0, "1", None, [1, 2], [True],
                      datetime.datetime(2024, 1, 2), ObjectId("0123456789ab0123456789ab"), 2.5]
#: query -> how many of the documents above (plus one without the field) MongoDB matches
_EXPECTED = [
    ({"v": 1}, 4),                      # 1, 1.0, Int64(1), [1, 2]  -- not True
    ({"v": 1.0}, 4),
    ({"v": Int64(1)}, 4),
    ({"v": True}, 2),                   # True, [True]  -- not 1
    ({"v": False}, 1),                  # not 0 / 0.0
    ({"v": 0}, 2),                      # 0, 0.0
    ({"v": "1"}, 1),
    ({"v": 2}, 1),                      # [1, 2]
    ({"v": 2.5}, 1),
    ({"v": {"$in": [1, True]}}, 6),
    ({"v": {"$in": [0, "1"]}}, 3),
    ({"v": {"$eq": False}}, 1),
    ({"v": {"$ne": 1}}, 11),            # 15 documents, 4 equal 1
    ({"v": datetime.datetime(2024, 1, 2)}, 1),
    ({"v": ObjectId("0123456789ab0123456789ab")}, 1),
    ({"v": 1, "w": "x"}, 4),
    ({"v": True, "w": "x"}, 2),
]


def test_counts_from_the_index_equal_counts_by_scan_for_every_value_type(db):
    """True == 1 == 1.0 in Python, not in MongoDB: an index count, an indexed find and a full scan agree on
    MongoDB's answer for numbers, booleans, strings, dates, ids and arrays."""
    docs = [{"_id": i, "v": v, "w": "x"} for i, v in enumerate(_VALUES)] + [{"_id": 99, "w": "x"}]
    db.plain.insert_many([dict(d) for d in docs])
    db.indexed.insert_many([dict(d) for d in docs])
    db.indexed.create_index("v")
    db.indexed.create_index("w")
    for q, n in _EXPECTED:
        for coll in (db.indexed, db.plain):
            assert coll.count_documents(q) == n, (coll.name, q)
            assert db.command("count", coll.name, query=q)["n"] == n, (coll.name, q)
            assert len(list(coll.find(q))) == n, (coll.name, q)
        assert [d["_id"] for d in db.indexed.find(q)] == [d["_id"] for d in db.plain.find(q)], q
    # the index follows writes: turn the 1.0 into True, the True into 1
    for coll in (db.indexed, db.plain):
        coll.update_one({"_id": 3}, {"$set": {"v": True}})
        coll.update_one({"_id": 0}, {"$set": {"v": 1}})
        assert coll.count_documents({"v": 1}) == 4 and coll.count_documents({"v": True}) == 2, coll.name
        assert sorted(d["_id"] for d in coll.find({"v": True})) == [3, 10], coll.name


def test_count_documents_is_answered_for_a_large_indexed_collection(db):
    """pymongo's count_documents (an aggregation) and the count command on an indexed field, with $skip/$limit."""
    db.big.create_index("state")
    db.big.insert_many([{"state": ("READY", "READY", "COMPLETED")[i % 3], "i": i} for i in range(3000)])
    assert db.big.count_documents({"state": "READY"}) == 2000
    assert db.big.count_documents({"state": "READY"}, skip=1500) == 500
    assert db.big.count_documents({"state": "READY"}, limit=7) == 7
    assert db.big.count_documents({"state": "NOPE"}) == 0
    assert db.big.count_documents({"state": {"$in": ["READY", "COMPLETED"]}}) == 3000
    rows = {r["_id"]: r["n"] for r in db.big.aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}])}
    assert rows == {"READY": 2000, "COMPLETED": 1000}


def test_a_cursor_streams_documents_as_they_are_when_their_batch_is_sent(db):
    """Later batches are produced when asked for: a document deleted meanwhile is not returned, one updated
    meanwhile comes in its new state, and nothing comes twice (MongoDB's default read concern, no snapshot)."""
    db.s.insert_many([{"_id": i, "x": 0} for i in range(300)])
    cur = db.s.find({}, batch_size=50)
    first = [next(cur)["_id"] for _ in range(50)]
    assert first == list(range(50))
    db.s.delete_many({"_id": {"$gte": 100, "$lt": 150}})
    db.s.update_many({"_id": {"$gte": 200}}, {"$set": {"x": 1}})
    rest = list(cur)
    ids = [d["_id"] for d in rest]
    assert len(ids) == len(set(ids)) and not set(ids) & set(first)
    assert not [i for i in ids if 100 <= i < 150]
    assert set(range(50, 100)) | set(range(150, 300)) <= set(ids)
    assert all(d["x"] == 1 for d in rest if d["_id"] >= 200)


def _backend_with(n: int) -> Any:
    from pilot.launchpad.backend import Backend

    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    b.apply({"op": "index", "db": "t", "c": "c", "name": "state_1", "spec": {"key": [("state", 1)]}})
    for i in range(n):
        b.apply({"op": "put", "db": "t", "c": "c",
                 "doc": {"_id": i, "state": "READY" if i % 3 else "DONE", "name": f"fw-{i}", "pad": "x" * 200}})
    b.tracker.collect()
    return b


def test_a_long_scan_lets_readers_and_writers_through(monkeypatch):
    """While a long unindexed count runs (held at its pause points until the others are done), another reader
    and a findAndModify are both answered; the writer is atomic and the count's answer is right."""
    b = _backend_with(3000)
    started, others_done = threading.Event(), threading.Event()
    real_pause = b.tracker.pause
    results: dict[str, Any] = {}

    def held_pause() -> None:
        if threading.current_thread() is not t:
            real_pause()
            return
        started.set()
        deadline = time.monotonic() + 30
        while not others_done.is_set() and time.monotonic() < deadline:
            real_pause()  # lets a waiting writer in
            time.sleep(0.005)
        real_pause()

    monkeypatch.setattr(b.tracker, "pause", held_pause)

    def scan() -> None:
        with b.lock.shared():
            results["count"] = b._count("t", "count", {"count": "c", "query": {"name": {"$regex": "^fw-"}}}, {}, 0)
        results["count_done_after_others"] = others_done.is_set()

    t = threading.Thread(target=scan)
    t.start()
    assert started.wait(30)
    with b.lock.shared():  # another reader: shares the lock with the scan
        results["find"] = b._find("t", "find", {"find": "c", "filter": {"_id": 7}}, {}, 0)
    with b.lock:  # a writer: gets in at the scan's next pause
        results["fam"] = b._findandmodify("t", "findAndModify", {"findAndModify": "c", "query": {"state": "READY"},
                                                                 "update": {"$set": {"state": "RUNNING"}},
                                                                 "sort": {"_id": 1}, "new": True}, {}, 0)
        ops = b.tracker.collect()
    others_done.set()
    t.join(60)
    assert results["count_done_after_others"] is True
    assert results["count"]["n"] == 3000
    assert [bson.decode(d.raw)["_id"] for d in results["find"]["cursor"]["firstBatch"]] == [7]
    assert results["fam"]["value"]["_id"] == 1 and results["fam"]["value"]["state"] == "RUNNING"
    assert [(op["op"], op["doc"]["_id"]) for op in ops] == [("put", 1)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_cursors_expire_and_open_cursors_hold_no_copies(own_server, monkeypatch):
    """With PILOT_LAUNCHPAD_CURSOR_TIMEOUT_S=2 an idle cursor is gone (CursorNotFound); 200 open cursors over
    2 MB of documents do not hold 200 copies of them (that would be 400 MB)."""
    monkeypatch.setenv("PILOT_LAUNCHPAD_CURSOR_TIMEOUT_S", "2")
    server: EmbeddedServer = own_server()
    assert server.proc is not None
    c = client_for(server)
    try:
        coll = c.t.docs
        coll.insert_many([{"_id": i, "pad": os.urandom(500).hex()} for i in range(2000)])
        before = _rss_kib(server.proc.pid)
        cursors = [coll.find({}, batch_size=1) for _ in range(200)]
        for cur in cursors:
            next(cur)
        grown_mib = (_rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 60, f"200 cursors grew the server by {grown_mib:.0f} MiB"
        assert c.admin.command("pilotStats")["openCursors"] >= 200
        time.sleep(3)
        with pytest.raises(pymongo.errors.OperationFailure) as exc:
            next(cursors[0])
        assert exc.value.code == 43
        for cur in cursors[1:]:
            cur.close()
    finally:
        c.close()
    server.stop(signal.SIGTERM)


def test_sort_over_mixed_types_follows_bson_order(db):
    """Numbers < strings < objects (MongoDB manual, "Comparison/Sort Order"), also when the values that need the
    general comparison come after ones that do not."""
    db.m.insert_many([{"_id": 0, "v": 3}, {"_id": 1, "v": 1}, {"_id": 2, "v": {"a": 1}}, {"_id": 3, "v": 2},
                      {"_id": 4, "v": "x"}, {"_id": 5, "v": 1.5}])
    assert [d["_id"] for d in db.m.find().sort("v", 1)] == [1, 5, 3, 0, 4, 2]
    assert [d["_id"] for d in db.m.find().sort("v", -1)] == [2, 4, 0, 3, 5, 1]


def test_sorted_find_on_indexed_fields_follows_bson_order(db):
    """A filter the index decides, sorted by indexed fields (the embedded server answers it from the index
    entries, decoding only what it sends): null and missing first, then numbers of any type by value, strings,
    ObjectIds, booleans, dates (MongoDB manual, "Comparison/Sort Order"); ``_id`` breaks ties; equality is
    MongoDB's (``state: 1`` is not ``state: true``); skip and limit count in that order."""
    db.s.create_index("state")
    db.s.create_index("v")
    oid = ObjectId("0123456789ab0123456789ab")
    when = datetime.datetime(2024, 1, 2)
    values = {0: 3, 1: None, 2: 2.5, 3: Int64(2), 4: "x", 5: oid, 6: True, 7: when, 8: 2, 10: 3.0}
    db.s.insert_many([{"_id": i, "state": 1, "v": v} for i, v in values.items()] +
                     [{"_id": 9, "state": 1}, {"_id": 11, "state": True, "v": 0}, {"_id": 12, "state": 2, "v": 0}])
    up = [1, 9, 3, 8, 2, 0, 10, 4, 5, 6, 7]
    assert [d["_id"] for d in db.s.find({"state": 1}).sort([("v", 1), ("_id", 1)])] == up
    # descending, ties (3 == 3.0, 2 == Int64(2), null and missing) still by _id ascending
    assert [d["_id"] for d in db.s.find({"state": 1}).sort([("v", -1), ("_id", 1)])] == \
        [7, 6, 5, 4, 0, 10, 2, 3, 8, 1, 9]
    # 12, 10 skipped
    assert [d["_id"] for d in db.s.find({"state": {"$in": [1, 2]}}, {"v": 1}).sort("_id", -1).skip(2).limit(3)] == \
        [9, 8, 7]
    assert [d["_id"] for d in db.s.find({"state": True}).sort("v", 1)] == [11]


def test_a_long_write_lets_a_reader_in_and_journals_in_execution_order(monkeypatch):
    """An update_many over 3,000 documents yields between documents to a waiting reader: the reader is answered
    before the write ends and sees whole documents (some updated, some not), and the journal holds every
    effect once, in the order the write made them."""
    b = _backend_with(3000)
    records: list[list[dict[str, Any]]] = []
    b.journal_append = lambda ops: records.append(ops) or len(records)
    real_yield = b.yield_write
    calls = {"n": 0}
    reached, reader_done = threading.Event(), threading.Event()

    def held_yield() -> None:
        calls["n"] += 1
        if calls["n"] == 100:
            reached.set()
            deadline = time.monotonic() + 30
            while not reader_done.is_set() and time.monotonic() < deadline:
                real_yield()
                time.sleep(0.001)
        real_yield()

    monkeypatch.setattr(b, "yield_write", held_yield)
    out: dict[str, Any] = {}

    def write() -> None:
        with b.lock:
            out["update"] = b._update("t", "update", {"update": "c", "updates": [
                {"q": {}, "u": {"$set": {"seen": True}}, "multi": True}]}, {}, 0)
            b._journal_effects()
        out["reader_done_first"] = reader_done.is_set()

    w = threading.Thread(target=write)
    w.start()
    assert reached.wait(30)
    with b.lock.shared():
        out["count"] = b._count("t", "count", {"count": "c", "query": {"seen": True}}, {}, 0)["n"]
    reader_done.set()
    w.join(60)
    assert out["reader_done_first"] is True and out["update"]["n"] == 3000
    assert 99 <= out["count"] < 3000
    ids = [op["doc"]["_id"] for ops in records for op in ops]
    assert len(records) >= 2 and ids == list(range(3000))


def _yield_once_to(b: Any, monkeypatch: Any, at: int, other: Any) -> None:
    """Make the ``at``-th yield of a long write really let ``other`` (another writer) run, as a waiting client
    would when the lock is contended."""
    real_yield = b.yield_write
    calls = {"n": 0}

    def yielding() -> bool:
        calls["n"] += 1
        if calls["n"] != at:
            return bool(real_yield())
        b.lock.release()
        try:
            t = threading.Thread(target=other)
            t.start()
            t.join(30)
        finally:
            b.lock.acquire()
        return True

    monkeypatch.setattr(b, "yield_write", yielding)


def _write(b: Any, cmd: str, body: dict[str, Any]) -> dict[str, Any]:
    with b.lock:
        reply = getattr(b, f"_{cmd}")("t", cmd, {cmd: "c", **body}, {}, 0)
        b._journal_effects()
    return reply


def test_a_long_delete_rechecks_each_document_after_letting_others_write(monkeypatch):
    """delete_many({state: DONE}) yields between documents; a writer that sets a not-yet-deleted target back to
    READY meanwhile (FireWorks' rerun) keeps it: MongoDB re-checks a document after a yield, and a delete never
    removes a document that no longer matches. A target deleted by the other writer is skipped, not an error."""
    b = _backend_with(300)  # _id % 3 == 0: DONE (100 documents)

    def other() -> None:
        _write(b, "update", {"updates": [{"q": {"_id": 297}, "u": {"$set": {"state": "READY"}}}]})
        _write(b, "delete", {"deletes": [{"q": {"_id": 294}, "limit": 1}]})

    _yield_once_to(b, monkeypatch, 10, other)
    reply = _write(b, "delete", {"deletes": [{"q": {"state": "DONE"}, "limit": 0}]})
    assert "writeErrors" not in reply
    assert reply["n"] == 98  # 100 DONE, less the one made READY and the one the other writer deleted
    cs = b.cstore("t", "c")
    assert cs.get_doc(297)["state"] == "READY"
    assert cs.get_doc(294) is None
    assert b._count("t", "count", {"count": "c", "query": {"state": "DONE"}}, {}, 0)["n"] == 0


def test_a_long_update_counts_only_the_documents_that_still_match(monkeypatch):
    """update_many({state: DONE}) yields; a document another writer moved out of the filter meanwhile is
    neither changed nor counted in n (MongoDB's matched count)."""
    b = _backend_with(300)

    def other() -> None:
        _write(b, "update", {"updates": [{"q": {"_id": 297}, "u": {"$set": {"state": "READY"}}}]})

    _yield_once_to(b, monkeypatch, 10, other)
    reply = _write(b, "update", {"updates": [{"q": {"state": "DONE"}, "u": {"$set": {"seen": 1}}, "multi": True}]})
    assert (reply["n"], reply["nModified"]) == (99, 99)
    assert "seen" not in b.cstore("t", "c").get_doc(297)


def test_a_cursor_survives_a_new_index_and_dies_with_its_collection(db):
    """A cursor goes on across a createIndexes (the new index changes how the server keeps its entries); a cursor
    whose collection is dropped is killed, as in MongoDB (QueryPlanKilled 175; MongoDB 6 may say 43), instead of
    returning documents of the new collection of that name."""
    coll = db.k_index
    coll.insert_many([{"_id": i, "s": i % 2} for i in range(2000)])
    coll.create_index("s")
    cur = coll.find({"s": 1}, batch_size=10)
    first = next(cur)["_id"]
    coll.create_index("other")
    assert [first] + [d["_id"] for d in cur] == list(range(1, 2000, 2))
    coll = db.k_drop
    coll.insert_many([{"_id": i} for i in range(2000)])
    cur = coll.find({}, batch_size=10)
    next(cur)
    coll.drop()
    coll.insert_many([{"_id": i, "other": True} for i in range(2000)])
    with pytest.raises(pymongo.errors.OperationFailure) as exc:
        list(cur)
    assert exc.value.code in (175, 43)


def test_index_entries_share_one_object_per_repeated_value():
    """Each document's entries are decoded from its own bytes; a value many documents hold (a state) is kept
    once, a value one document holds is not kept twice, and a value no document holds any more is let go."""
    b = _backend_with(30)
    cs = b.cstore("t", "c")
    (slot,) = [i for i, p in enumerate(cs._parts) if p == ("state",)]
    states = {id(e[slot]) for e in cs._entries.values()}
    assert len(states) == 4  # 30 entries: per value the first document's own object and the one shared after
    assert set(cs._fidx[slot].canon) == {"READY", "DONE"}
    _write(b, "delete", {"deletes": [{"q": {"state": "DONE"}, "limit": 0}]})
    assert set(cs._fidx[slot].canon) == {"READY"}


# ------------------------------------------------------------------------------- grouped counts (aggregate)
#: FireWorks-like documents for $group: MongoDB groups equal numbers of any type together (60, 60.0 and
#: NumberLong(60)), keeps true apart from 1 and "60" apart from 60, and in an object key omits a missing field
#: but keeps a null one ($ifNull turns missing into null); a whole-_id key is null for both.
_GROUP_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "s": "R", "w": 60}, {"_id": 2, "s": "R", "w": 60.0}, {"_id": 3, "s": "R", "w": Int64(60)},
    {"_id": 4, "s": "R", "w": None}, {"_id": 5, "s": "R"}, {"_id": 6, "s": "R", "w": True},
    {"_id": 7, "s": "R", "w": 1}, {"_id": 8, "s": "R", "w": "60"}, {"_id": 9, "s": "D", "w": 60},
    {"_id": 10, "s": "R", "w": 30, "f": "pilot-1"},
]


def _kind(v: Any) -> tuple[str, Any]:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return (type(v).__name__, v)
    return ("number", float(v))


def _groups(coll: Any, gid: Any) -> dict[Any, int]:
    pipeline = [{"$match": {"s": {"$in": ["R"]}}}, {"$group": {"_id": gid, "n": {"$sum": 1}}}]
    out = {}
    for row in coll.aggregate(pipeline):
        key = row["_id"]
        out[tuple(sorted((k, _kind(v)) for k, v in key.items())) if isinstance(key, dict) else _kind(key)] = row["n"]
    return out


@pytest.mark.parametrize("indexed", [True, False])
def test_grouped_counts_follow_mongodb_with_and_without_indexes(db, indexed):
    """The embedded server answers these from its index entries when the fields are indexed, and by decoding
    the documents when not: both give MongoDB's groups."""
    coll = db["fws"]
    coll.insert_many([dict(d) for d in _GROUP_DOCS])
    if indexed:
        for f in ("s", "w", "f"):
            coll.create_index(f)
    num = ("number", 60.0)
    assert _groups(coll, {"w": "$w"}) == {
        (("w", num),): 3, (("w", ("NoneType", None)),): 1, (): 1, (("w", ("bool", True)),): 1,
        (("w", ("number", 1.0)),): 1, (("w", ("str", "60")),): 1, (("w", ("number", 30.0)),): 1}
    assert _groups(coll, {"w": {"$ifNull": ["$w", None]}, "f": {"$ifNull": ["$f", None]}}) == {
        (("f", ("NoneType", None)), ("w", num)): 3, (("f", ("NoneType", None)), ("w", ("NoneType", None))): 2,
        (("f", ("NoneType", None)), ("w", ("bool", True))): 1, (("f", ("NoneType", None)), ("w", ("number", 1.0))): 1,
        (("f", ("NoneType", None)), ("w", ("str", "60"))): 1, (("f", ("str", "pilot-1")), ("w", ("number", 30.0))): 1}
    assert _groups(coll, "$w") == {num: 3, ("NoneType", None): 2, ("bool", True): 1, ("number", 1.0): 1,
                                   ("str", "60"): 1, ("number", 30.0): 1}


def test_grouped_counts_come_from_the_index_unless_a_value_is_not_plain():
    """The index answers a group of plain values; an array or a sub-document in a grouped field hands the
    command to the general path (the index entry cannot tell the value)."""
    from pilot.launchpad.backend import Backend
    from pilot.launchpad.grouping import group_counts

    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    for f in ("s", "w"):
        b.apply({"op": "index", "db": "t", "c": "c", "name": f"{f}_1", "spec": {"key": [(f, 1)]}})
    for d in _GROUP_DOCS:
        b.apply({"op": "put", "db": "t", "c": "c", "doc": d})
    b.tracker.collect()
    cs = b.cstore("t", "c")
    stage = [{"$group": {"_id": {"w": {"$ifNull": ["$w", None]}}, "n": {"$sum": 1}}}]
    with b.lock.shared():
        assert sum(r["n"] for r in group_counts(cs, {"s": {"$in": ["R"]}}, stage) or []) == 9
        assert group_counts(cs, {"s": {"$in": ["R"]}}, [{"$group": {"_id": "$x", "n": {"$sum": 1}}}]) is None
        assert group_counts(cs, {"s": {"$regex": "R"}}, stage) is None   # not an exact match on the index
    # an array or a sub-document is read from its document, and the rest still from the index
    for odd in ([], [60], {"h": 1}):
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": 99, "s": "R", "w": odd}})
        b.tracker.collect()
        with b.lock.shared():
            out = group_counts(cs, {"s": {"$in": ["R"]}}, stage)
        assert out is not None and {"_id": {"w": odd}, "n": 1} in out and sum(r["n"] for r in out) == 10, odd
    # what it cannot key exactly goes to the general path: a path through an array, binary data, infinity
    through = [{"$group": {"_id": {"h": {"$ifNull": ["$w.h", None]}}, "n": {"$sum": 1}}}]
    b.apply({"op": "index", "db": "t", "c": "c", "name": "w.h_1", "spec": {"key": [("w.h", 1)]}})
    for odd, pipeline in (([{"h": 1}], through), (bson.Binary(b"60"), stage), (bson.Decimal128("Infinity"), stage)):
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": 99, "s": "R", "w": odd}})
        b.tracker.collect()
        with b.lock.shared():
            assert group_counts(cs, {"s": {"$in": ["R"]}}, pipeline) is None, odd


def _canon(v: Any) -> Any:
    """A value with MongoDB's group equality as Python equality (True is not 1; 1 is 1.0; order counts)."""
    if isinstance(v, float) and v != v:
        return ("NaN",)   # NaN equals nothing in Python; MongoDB groups every NaN together
    if isinstance(v, bson.Decimal128):
        return ("number", float(v.to_decimal()))
    if isinstance(v, list):
        return ("array", tuple(_canon(x) for x in v))
    if isinstance(v, dict):
        return ("doc", tuple((k, _canon(x)) for k, x in v.items()))
    return _kind(v)


def test_grouped_counts_of_arrays_and_sub_documents_follow_mongodb(db):
    """Arrays group by their elements in order, sub-documents by their fields in order, numbers of every type
    (Decimal128 too) by value, and booleans apart from numbers, also inside arrays and beside them (MongoDB
    manual, "Comparison/Sort Order": arrays and embedded documents compare element by element, field by field)."""
    coll = db["fws"]
    for f in ("s", "w"):
        coll.create_index(f)
    values = [0, False, [600, 700], [600.0, Int64(700)], [700, 600], [], {"a": 1, "b": True}, {"a": 1.0, "b": True},
              {"b": True, "a": 1}, [True], [1], 1, True, None, bson.Decimal128("1"), [bson.Decimal128("600"), 700],
              float("nan"), float("nan")]
    coll.insert_many([{"_id": i, "s": "R", "w": v} for i, v in enumerate(values)] + [{"_id": 99, "s": "R"}])
    pipeline = [{"$match": {"s": "R"}}, {"$group": {"_id": {"w": {"$ifNull": ["$w", None]}}, "n": {"$sum": 1}}}]
    got = {_canon(r["_id"]["w"]): r["n"] for r in coll.aggregate(pipeline)}
    assert got == {_canon(0): 1, _canon(False): 1, _canon([600, 700]): 3, _canon([700, 600]): 1, _canon([]): 1,
                   _canon({"a": 1, "b": True}): 2, _canon({"b": True, "a": 1}): 1, _canon([True]): 1,
                   _canon([1]): 1, _canon(1): 2, _canon(True): 1, _canon(None): 2, _canon(float("nan")): 2}


def test_the_managers_demand_aggregation_is_answered_from_the_index():
    """The manager's one aggregation per cycle (:func:`demand_pipeline`), with FireWorks' indexes on ``state``
    and ``spec._category`` and the manager's own (:data:`DEMAND_INDEXES`), takes the index path (the general
    one costs seconds at campaign size, docs/performance.md), and counts what the documents say."""
    from pilot.launchpad.backend import Backend
    from pilot.launchpad.grouping import group_counts
    from pilot.manager.demand import DEMAND_INDEXES, demand_pipeline

    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    for f in ("state", "spec._category", *DEMAND_INDEXES):
        b.apply({"op": "index", "db": "t", "c": "c", "name": f"{f}_1", "spec": {"key": [(f, 1)]}})
    pilots = [{"walltime": 7500, "min_walltime": 660}, {"walltime": 7500}, {}, None]
    for i in range(40):
        spec: dict[str, Any] = {"_category": "md" if i % 4 else "local"}
        if pilots[i % 4] is not None:
            spec["_pilot"] = pilots[i % 4]
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": i, "state": "READY", "spec": spec}})
    # chain heads (docs/md-segments.md: an md segment's _pilot), and flags that are not exactly true
    chained: list[Any] = [True] * 5 + [False, 1]
    for i, flag in enumerate(chained, start=40):
        spec = {"_category": "md", "_pilot": {"walltime": 7500, "min_walltime": 660, "continues": flag}}
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": i, "state": "READY", "spec": spec}})
    b.tracker.collect()
    match, group = demand_pipeline(["md", "local"])
    with b.lock.shared():
        out = group_counts(b.cstore("t", "c"), match["$match"], [group])
    assert out is not None
    # repr: True and 1 are one dict key in Python, two group keys in MongoDB
    counts = {(r["_id"]["c"], r["_id"]["w"], r["_id"]["m"], repr(r["_id"]["k"])): r["n"] for r in out}
    assert counts == {("local", 7500, 660, "None"): 10, ("md", 7500, None, "None"): 10,
                      ("md", None, None, "None"): 20, ("md", 7500, 660, "True"): 5, ("md", 7500, 660, "False"): 1,
                      ("md", 7500, 660, "1"): 1}


def test_a_grouped_count_lets_writers_in_and_counts_what_still_matches(monkeypatch):
    """Counted in chunks with a pause for waiting writers between them: a document that a writer moved out of
    the $match or deleted meanwhile is not counted (each document as it is when its chunk is counted)."""
    from pilot.launchpad import grouping

    b = _backend_with(300)  # state READY for _id % 3 != 0 (200 documents), DONE for the rest
    cs = b.cstore("t", "c")
    monkeypatch.setattr(grouping, "CHUNK", 50)
    calls = {"n": 0}

    def pause() -> bool:
        calls["n"] += 1
        if calls["n"] != 1:
            return False
        b.lock.release_shared()
        try:
            _write(b, "update", {"updates": [{"q": {"_id": 298}, "u": {"$set": {"state": "DONE"}}}]})
            _write(b, "delete", {"deletes": [{"q": {"_id": 299}, "limit": 1}]})
        finally:
            b.lock.acquire_shared()
        return True

    monkeypatch.setattr(cs, "pause", pause)
    stage = [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
    with b.lock.shared():
        out = grouping.group_counts(cs, {"state": {"$in": ["READY"]}}, stage)
    assert out == [{"_id": "READY", "n": 198}] and calls["n"] >= 2


@pytest.mark.parametrize("moved_to", [[["R"]], "D"])
def test_a_grouped_count_that_decodes_recounts_what_still_matches(monkeypatch, moved_to):
    """The count that decodes documents (here for an array in the grouped field) pauses for writers too; a
    Firework moved out of the $match meanwhile is not counted: to a plain value, the index's check drops it; to
    one the index cannot judge (``s: [["R"]]``, which ``s: "R"`` does not match), the general path answers."""
    from pilot.launchpad import grouping, planner
    from pilot.launchpad.backend import Backend

    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    for f in ("s", "w"):
        b.apply({"op": "index", "db": "t", "c": "c", "name": f"{f}_1", "spec": {"key": [(f, 1)]}})
    for i in range(6):
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": i, "s": "R", "w": [1] if i == 0 else 5}})
    b.tracker.collect()
    cs = b.cstore("t", "c")
    monkeypatch.setattr(planner, "SCAN_CHUNK", 2)
    done = []

    def pause() -> bool:
        if done:
            return False
        done.append(moved_to)
        b.lock.release_shared()
        try:
            _write(b, "update", {"updates": [{"q": {"_id": 5}, "u": {"$set": {"s": moved_to}}}]})
        finally:
            b.lock.acquire_shared()
        return True

    monkeypatch.setattr(cs, "pause", pause)
    with b.lock.shared():
        out = grouping.group_counts(cs, {"s": {"$in": ["R"]}}, [{"$group": {"_id": "$w", "n": {"$sum": 1}}}])
    assert done
    if moved_to == "D":
        assert sorted((repr(r["_id"]), r["n"]) for r in out or []) == [("5", 4), ("[1]", 1)]
    else:
        assert out is None


@pytest.mark.parametrize("write", ["drop an index", "write a value the index cannot judge"])
def test_a_sorted_find_changed_during_a_pause_is_answered_by_the_general_path(monkeypatch, write):
    """A sorted find on a filter the index decides is answered from the index entries (no document decoded)
    only while they mean what they meant: after a pause in which a writer dropped an index (the slots then
    name other fields: v's order would come out as w's) or set ``b: [[1]]`` on a document not yet visited
    (which ``{"b": 1}`` does not match, and which the index cannot judge), the general path answers."""
    from pilot.launchpad import planner
    from pilot.launchpad.backend import Backend
    from pilot.launchpad.sorting import entry_sorted_keys

    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    for f in ("a", "b", "v", "w"):
        b.apply({"op": "index", "db": "t", "c": "c", "name": f"{f}_1", "spec": {"key": [(f, 1)]}})
    for i in range(6):
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": i, "a": 1, "b": 1, "v": i, "w": -i}})
    b.tracker.collect()
    cs = b.cstore("t", "c")
    with b.lock.shared():
        assert entry_sorted_keys(cs, {"b": 1}, {"v": 1}, exact=True) == [cs._pos[i] for i in range(6)]
    monkeypatch.setattr(planner, "SCAN_CHUNK", 2)
    done = []

    def pause() -> bool:
        if done:
            return False
        done.append(write)
        b.lock.release_shared()
        try:
            if write == "drop an index":
                _write(b, "dropindexes", {"index": "a_1"})
            else:   # a Firework the scan has not reached yet
                _write(b, "update", {"updates": [{"q": {"_id": 4}, "u": {"$set": {"b": [[1]]}}}]})
        finally:
            b.lock.acquire_shared()
        return True

    monkeypatch.setattr(cs, "pause", pause)
    with b.lock.shared():
        assert entry_sorted_keys(cs, {"b": 1}, {"v": 1}, exact=True) is None
    assert done


@pytest.mark.parametrize("drop_at", [1, 3])   # while counting entries; while reading the documents
def test_a_grouped_count_whose_index_goes_during_a_pause_is_answered_by_the_general_path(monkeypatch, drop_at):
    """A pause may let a writer drop an index: the slots read before it then name other fields; the command
    is answered the general way instead (here: the null state needs the document, the slow path)."""
    from pilot.launchpad import grouping, planner
    from pilot.launchpad.backend import Backend
    from pilot.launchpad.index import entry_of

    assert entry_of({"a": []}, ("a",)) is entry_of({"a": []}, ("a",))  # one shared entry for every []
    b = Backend()
    b.apply({"op": "create", "db": "t", "c": "c"})
    for f in ("x", "s", "w"):
        b.apply({"op": "index", "db": "t", "c": "c", "name": f"{f}_1", "spec": {"key": [(f, 1)]}})
    for i in range(6):
        b.apply({"op": "put", "db": "t", "c": "c", "doc": {"_id": i, "x": 1, "s": None if i == 0 else "R", "w": i}})
    b.tracker.collect()
    cs = b.cstore("t", "c")
    monkeypatch.setattr(grouping, "CHUNK", 2)
    monkeypatch.setattr(planner, "SCAN_CHUNK", 2)
    dropped = {"done": False, "calls": 0}

    def pause() -> bool:
        dropped["calls"] += 1
        if dropped["done"] or dropped["calls"] != drop_at:
            return False
        dropped["done"] = True
        b.lock.release_shared()
        try:
            _write(b, "dropindexes", {"index": "x_1"})
        finally:
            b.lock.acquire_shared()
        return True

    monkeypatch.setattr(cs, "pause", pause)
    stage = [{"$group": {"_id": {"s": "$s"}, "n": {"$sum": 1}}}]
    with b.lock.shared():
        assert grouping.group_counts(cs, {}, stage) is None
    assert dropped["done"]
