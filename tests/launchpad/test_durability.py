"""Durability of the embedded server: restarts, kill -9, torn tails vs damage, ``repair``, a full disk.

Every test starts its own server (tests.helpers.EmbeddedServer through the ``own_server`` fixture) and stops
it by its pid. Journal files are read here with this file's own frame parser (length, CRC-32, BSON), not with
the server's code, so that what the tests expect does not come from the code under test.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import bson
import pymongo
import pymongo.errors
import pytest
from pymongo import ReturnDocument

from tests.helpers import wait_for
from tests.launchpad.conftest import client_for, run_serve

PILOT = [sys.executable, "-m", "pilot"]


def run_pilot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PILOT, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _frames(path: Path) -> list[tuple[int, int, dict]]:
    """(start, end, document) of every record of a journal, read with this test's own parser; all must be intact."""
    data = path.read_bytes()
    assert data[:8] == b"PILOTJ01"
    pos, out = 8, []
    while pos < len(data):
        length, crc = struct.unpack_from("<II", data, pos)
        payload = data[pos + 8:pos + 8 + length]
        assert len(payload) == length and zlib.crc32(payload) == crc, f"record at {pos} of {path} is not intact"
        out.append((pos, pos + 8 + length, bson.decode(payload)))
        pos += 8 + length
    return out


def _digests(data: Path) -> dict[str, str]:
    """SHA-256 of every file under ``data`` (relative path -> digest)."""
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


def _database_files(digests: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digests.items() if k.startswith(("journal-", "snapshot"))}


def test_clean_restart_restores_documents_and_indexes(own_server, tmp_path):
    srv = own_server()
    port = srv.port
    with client_for(srv) as c:
        t = c.keep.things
        t.create_index("a", unique=True)
        t.create_index([("b", 1), ("c", -1)], name="b_c")
        t.create_index("s", sparse=True)
        t.create_index("p", name="partial_p", partialFilterExpression={"b": {"$gt": 2}})
        t.insert_many([{"a": i, "b": i % 7, "c": str(i), "when": datetime.datetime(2024, 5, 1, 12, 0, i % 60)}
                       for i in range(500)])
        t.update_many({"b": 3}, {"$set": {"flag": True}})
        t.delete_many({"b": 6})
        c.keep.empty_but_created.insert_one({"x": 1})
        c.keep.empty_but_created.delete_many({})
        c.gone.x.insert_one({"y": 1})
        c.drop_database("gone")
        before_docs = sorted(t.find({}, {"_id": 0}), key=lambda d: d["a"])
        before_idx = t.index_information()
    assert srv.stop() == 0
    data = tmp_path / "data"
    assert not (data / "server.json").exists() and not (data / "server.pid").exists()
    assert (data / "snapshot.bson").exists()
    srv2 = own_server(port=port)
    assert srv2.port == port
    with client_for(srv2) as c:
        t = c.keep.things
        assert sorted(t.find({}, {"_id": 0}), key=lambda d: d["a"]) == before_docs
        assert t.index_information() == before_idx
        with pytest.raises(pymongo.errors.DuplicateKeyError):
            t.insert_one({"a": 5})
        assert t.count_documents({"flag": True}) == sum(1 for d in before_docs if d.get("flag"))
        assert "gone" not in c.list_database_names()
        assert "empty_but_created" in c.keep.list_collection_names()


class _Writer(threading.Thread):
    """Writes until the server dies; remembers the effect of every acknowledged write."""

    def __init__(self, uri: str, w: int) -> None:
        super().__init__(daemon=True)
        self.client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000, socketTimeoutMS=10000)
        self.w = w
        self.present: dict[str, int] = {}  # _id -> acknowledged v
        self.deleted: set[str] = set()
        self.counter = 0
        self.uncertain: set[str] = set()  # touched by the write that did not come back
        self.acked = 0

    def run(self) -> None:
        coll = self.client.dur.docs
        k = 0
        try:
            while True:
                key = f"{self.w}-{k}"
                self.uncertain = {key}
                coll.insert_one({"_id": key, "w": self.w, "k": k, "v": 0})
                self.present[key] = 0
                coll.update_one({"_id": key}, {"$set": {"v": 1}, "$currentDate": {"t": True}})
                self.present[key] = 1
                self.uncertain = {f"ctr-{self.w}"}
                doc = coll.find_one_and_update({"_id": f"ctr-{self.w}"}, {"$inc": {"n": 1}}, upsert=True,
                                               return_document=ReturnDocument.AFTER)
                self.counter = doc["n"]
                if k % 5 == 4:
                    victim = f"{self.w}-{k - 1}"
                    self.uncertain = {victim}
                    coll.delete_one({"_id": victim})
                    self.present.pop(victim)
                    self.deleted.add(victim)
                self.acked += 3
                k += 1
        except pymongo.errors.PyMongoError:
            return
        finally:
            self.client.close()


def _check_writers(uri: str, writers: list[_Writer]) -> int:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as c:
        stored = {d["_id"]: d for d in c.dur.docs.find()}
    checked = 0
    for wr in writers:
        for key, v in wr.present.items():
            if key in wr.uncertain:
                continue
            assert key in stored, f"acknowledged insert {key} lost"
            assert stored[key]["v"] >= v, f"acknowledged update of {key} lost"
            checked += 1
        for key in wr.deleted - wr.uncertain:
            assert key not in stored, f"acknowledged delete of {key} lost"
        assert stored[f"ctr-{wr.w}"]["n"] >= wr.counter
    return checked


@pytest.mark.parametrize("compact_mb", [None, "0.02"], ids=["journal-only", "with-compactions"])
def test_kill9_loses_no_acknowledged_write(own_server, tmp_path, compact_mb):
    extra = ["--compact-mb", compact_mb] if compact_mb else None
    srv = own_server(extra=extra)
    port = srv.port
    writers = [_Writer(srv.uri, w) for w in range(3)]
    for wr in writers:
        wr.start()
    wait_for(lambda: sum(wr.acked for wr in writers) >= 600, timeout=60, interval=0.05, what="600 acked writes")
    srv.kill9()
    for wr in writers:
        wr.join(30)
        assert not wr.is_alive()
    srv2 = own_server(port=port, extra=extra)
    assert _check_writers(srv2.uri, writers) >= 150
    if compact_mb:
        assert "snapshot generation" in srv.log_path.read_text()


def _last_journal(data: Path) -> Path:
    return max(data.glob("journal-*.log"))


def _frame(doc: dict, crc_delta: int = 0) -> bytes:
    payload = bson.encode(doc)
    return struct.pack("<II", len(payload), (zlib.crc32(payload) + crc_delta) & 0xFFFFFFFF) + payload


@pytest.mark.parametrize("damage", ["cut-record", "bad-checksum", "short-header"])
def test_torn_journal_tail_is_ignored(own_server, tmp_path, damage):
    data = tmp_path / "data"
    srv = own_server()
    port = srv.port
    with client_for(srv) as c:
        c.t.c.insert_many([{"_id": i} for i in range(50)])
        c.t.c.update_one({"_id": 7}, {"$set": {"seven": True}})
    ghost = {"ops": [{"op": "put", "db": "t", "c": "c", "doc": {"_id": "ghost"}}]}
    if damage == "short-header":
        srv.stop()  # clean stop: everything in the snapshot, a fresh journal file with just its header
        journal = _last_journal(data)
        with open(journal, "r+b") as fh:
            fh.truncate(3)
    else:
        srv.kill9()  # everything only in the journal
        journal = _last_journal(data)
        with open(journal, "ab") as fh:
            rec = _frame(ghost, crc_delta=1 if damage == "bad-checksum" else 0)
            fh.write(rec if damage == "bad-checksum" else rec[:len(rec) // 2])
    srv2 = own_server(port=port)
    with client_for(srv2) as c:
        assert sorted(d["_id"] for d in c.t.c.find({"_id": {"$type": "int"}})) == list(range(50))
        assert c.t.c.find_one({"_id": 7})["seven"] is True
        assert c.t.c.find_one({"_id": "ghost"}) is None
        c.t.c.insert_one({"_id": "after"})
    if damage != "short-header":
        assert "torn record" in srv2.log_path.read_text()
        assert list(data.glob("journal-*.log.torn-*")), "the dropped bytes are kept for inspection"
    srv2.stop()
    srv3 = own_server(port=port)
    with client_for(srv3) as c:
        assert c.t.c.count_documents({}) == 51


def test_damaged_snapshot_refuses_to_start(own_server, tmp_path):
    data = tmp_path / "data"
    srv = own_server()
    with client_for(srv) as c:
        c.t.c.insert_many([{"_id": i, "pad": "x" * 100} for i in range(100)])
    srv.stop()
    snap = data / "snapshot.bson"
    raw = bytearray(snap.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snap.write_bytes(bytes(raw))
    res = run_serve(["--port", "0", "--data", str(data)])
    assert res.returncode == 1
    assert "damaged" in res.stderr and str(snap) in res.stderr and "pilot launchpad repair" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # the 100 documents are one record of the snapshot: repair says that record's bytes are lost
    rep = run_pilot("launchpad", "repair", "--data", str(data), "--out", str(tmp_path / "new"), "--json")
    assert rep.returncode == 0, rep.stderr
    lost = json.loads(rep.stdout)["lost"]
    assert [(x["file"], x["kind"]) for x in lost] == [(str(snap), "damage")]
    assert lost[0]["start"] <= len(raw) // 2 < lost[0]["end"]




# ----------------------------------------------------------------------- damage vs torn tail, repair
def test_flipped_byte_in_a_middle_record_refuses_start_and_repair_recovers_the_rest(own_server, tmp_path):
    """The issue's case: 2,000 acknowledged inserts, kill -9, one byte flipped inside record 1,000 of the newest
    journal. Start refuses and says where; repair recovers every other insert; the old dir is never changed."""
    data = tmp_path / "data"
    srv = own_server()
    acked: set[int] = set()
    with client_for(srv) as c:
        for i in range(2000):
            c.dur.docs.insert_one({"_id": i, "pad": f"{i:06d}" * 8})
            acked.add(i)
    srv.kill9()
    journal = _last_journal(data)
    frames = _frames(journal)
    start, end, doc = frames[999]  # record 1,000
    (victim,) = [op["doc"]["_id"] for op in doc["ops"] if op.get("op") == "put" and op.get("c") == "docs"]
    raw = bytearray(journal.read_bytes())
    raw[(start + 8 + end) // 2] ^= 0x20
    journal.write_bytes(bytes(raw))
    after = len(frames) - 1000
    before = _database_files(_digests(data))

    res = run_serve(["--port", "0", "--data", str(data)])
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert str(journal) in err and f"damaged at byte {start} " in err and f"{after} valid records follow" in err
    assert f"pilot launchpad repair --data {data}" in err
    assert _database_files(_digests(data)) == before, "a refused start must not touch the journal or snapshot"
    assert not list(data.glob("*.torn-*"))

    untouched = _digests(data)
    out = tmp_path / "repaired"
    rep = run_pilot("launchpad", "repair", "--data", str(data), "--out", str(out), "--json")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert _digests(data) == untouched, "repair must not change the damaged data dir"
    assert [(x["file"], x["start"], x["end"], x["records"], x["kind"]) for x in report["lost"]] == \
        [(str(journal), start, end, 1, "damage")]
    assert report["unapplied"] == [] and report["complete"] is False
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.rglob("*") if p.is_file())

    text = run_pilot("launchpad", "repair", "--data", str(data), "--out", str(tmp_path / "again"))
    assert text.returncode == 0
    assert f"could not recover {journal} bytes {start}-{end} ({end - start} bytes)" in text.stdout

    srv2 = own_server(data=out)
    with client_for(srv2) as c:
        ids = {d["_id"] for d in c.dur.docs.find({}, {"_id": 1})}
    assert ids == acked - {victim}
    assert len(ids) == 1999


def test_damage_in_an_older_journal_refuses_even_at_its_end(own_server, tmp_path):
    """A bad last record is a torn tail only in the newest journal: in an older one it is damage."""
    data = tmp_path / "data"
    srv = own_server()
    with client_for(srv) as c:
        c.t.c.insert_many([{"_id": i} for i in range(20)])
        c.t.c.insert_one({"_id": "last"})
    rep = run_pilot("launchpad", "repair", "--data", str(data), "--out", str(tmp_path / "x"))
    assert rep.returncode == 1 and "runs on" in rep.stderr, "repair refuses while a server runs on the dir"
    assert not (tmp_path / "x").exists()
    srv.kill9()
    older = _last_journal(data)
    gen = int(older.name[8:16])
    newer = data / f"journal-{gen + 1:08d}.log"
    newer.write_bytes(b"PILOTJ01" + _frame({"ops": [{"op": "put", "db": "t", "c": "c", "doc": {"_id": "newer"}}]}))
    start, end, _doc = _frames(older)[-1]
    raw = bytearray(older.read_bytes())
    raw[end - 3] ^= 0x01
    older.write_bytes(bytes(raw))
    res = run_serve(["--port", "0", "--data", str(data)])
    assert res.returncode == 1
    assert str(older) in res.stderr and f"damaged at byte {start} " in res.stderr
    assert "0 valid records follow it in this file (and 1 in newer journals)" in res.stderr
    out = tmp_path / "repaired"
    assert run_pilot("launchpad", "repair", "--data", str(data), "--out", str(out)).returncode == 0
    srv2 = own_server(data=out)
    with client_for(srv2) as c:
        assert sorted(map(str, c.t.c.distinct("_id"))) == sorted([str(i) for i in range(20)] + ["newer"])


def _put(i: object, **extra: object) -> bytes:
    return _frame({"ops": [{"op": "put", "db": "t", "c": "c", "doc": {"_id": i, **extra}}]})


def _journal(tmp_path: Path, body: bytes) -> Path:
    data = tmp_path / "dd"
    data.mkdir(mode=0o700)
    (data / "journal-00000001.log").write_bytes(b"PILOTJ01" + body)
    return data


@pytest.mark.parametrize("tail", ["zeros", "random", "cut-header"])
def test_a_tail_of_garbage_is_a_torn_tail_not_damage(tmp_path, tail):
    """What a crash or power loss leaves at the end (zeroed or stale blocks, half a header) is dropped, and
    never mistaken for a record after a bad one."""
    from pilot.launchpad.recovery import plan_restore

    good = b"".join(_put(i) for i in range(5))
    garbage = {"zeros": b"\0" * 20000, "random": random.Random(7).randbytes(50000), "cut-header": b"\x30\x00\x00"}[tail]
    data = _journal(tmp_path, good + garbage)
    plan = plan_restore(data, truncate_torn_tail=False)
    assert [len(recs) for _g, _p, recs in plan.journals] == [5]
    assert plan.torn == (data / "journal-00000001.log", 8 + len(good))


def test_a_journal_whose_header_is_not_ours_is_damage(tmp_path):
    """Headers are fsynced before any record is written: only a prefix of one is a crash, anything else damage."""
    from pilot.launchpad.recovery import CorruptDataError, plan_restore

    data = _journal(tmp_path, b"")
    (data / "journal-00000001.log").write_bytes(b"\0" * 4096)
    with pytest.raises(CorruptDataError, match="bad header"):
        plan_restore(data)
    (data / "journal-00000001.log").write_bytes(b"PILO")
    assert plan_restore(data).journals[0][2] == []


def test_a_record_inside_a_torn_record_is_not_taken_for_a_record(tmp_path):
    """A document may hold a record's bytes; when the record holding it is torn, those bytes are not a record
    (a candidate counts only when another record or the end of the file follows it)."""
    from pilot.launchpad.recovery import plan_restore

    inner = _put("inner")
    holder = _put("holder", blob=inner + b"and more bytes after it")
    cut = holder.index(inner) + len(inner) + 5  # torn a few bytes after the embedded record
    data = _journal(tmp_path, _put(1) + holder[:cut])
    plan = plan_restore(data, truncate_torn_tail=False)
    assert [len(recs) for _g, _p, recs in plan.journals] == [1] and plan.torn is not None


def test_a_damaged_length_is_damage_and_the_records_after_it_are_found(tmp_path):
    from pilot.launchpad.recovery import CorruptDataError, plan_restore, scan_file

    recs = [_put(i, pad="z" * 40) for i in range(10)]
    bad = bytearray(recs[4])
    bad[1] ^= 0x40  # the length field: the frame now claims to run far past its end
    data = _journal(tmp_path, b"".join(recs[:4]) + bytes(bad) + b"".join(recs[5:]))
    with pytest.raises(CorruptDataError, match=r"damaged at byte \d+ .*5 valid records follow it"):
        plan_restore(data)
    scan = scan_file(data / "journal-00000001.log", b"PILOTJ01")
    assert [r.doc["ops"][0]["doc"]["_id"] for r in scan.records] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    (lost,) = scan.bad
    assert (lost.start, lost.size) == (8 + sum(map(len, recs[:4])), len(recs[4]))
    assert not list(data.glob("*.torn-*")), "a refused plan changes nothing"


def test_a_rotation_that_cannot_open_its_new_file_goes_on_in_the_old_one(tmp_path):
    """Journal.rotate opens the new file before it closes the old one: when the new one cannot be made, the
    OSError says so and later records still reach the old file (before, they went to a closed descriptor)."""
    from pilot.launchpad.journal import Journal

    data = tmp_path / "dd"
    data.mkdir(mode=0o700)
    j = Journal(data, 1)
    j.wait_durable(j.append([{"op": "create", "db": "t", "c": "c"}]))
    (data / "journal-00000002.log").mkdir()  # in the way of generation 2
    with pytest.raises(OSError):
        j.rotate(2)
    assert j.gen == 1
    j.wait_durable(j.append([{"op": "put", "db": "t", "c": "c", "doc": {"_id": "after"}}]))
    j.close()
    docs = [d["ops"][0] for _s, _e, d in _frames(data / "journal-00000001.log")]
    assert docs[-1]["doc"] == {"_id": "after"}
    assert (data / "journal-00000002.log").is_dir(), "nothing was written in its place"


# ------------------------------------------------------------------------------------ a full disk
@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs of this test only (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path.stat().st_size


class _Acked:
    """Inserts numbered documents one by one; remembers which were acknowledged and which got an error."""

    def __init__(self, coll: pymongo.collection.Collection, pad: int = 200) -> None:
        self.coll, self.pad, self.next = coll, pad, 0
        self.acked: set[int] = set()
        self.errors: list[pymongo.errors.OperationFailure] = []

    def insert(self) -> bool:
        i, self.next = self.next, self.next + 1
        try:
            self.coll.insert_one({"_id": i, "pad": "p" * self.pad})
        except pymongo.errors.OperationFailure as exc:
            self.errors.append(exc)
            return False
        self.acked.add(i)
        return True


@pytest.mark.parametrize("fails", ["snapshot", "journal-append"])
def test_full_disk_refuses_writes_keeps_reads_and_resumes_by_itself(own_server, small_fs, tmp_path, fails):
    """Rotation/snapshot (tiny --compact-mb, a database bigger than the free space) or a journal append (no
    compaction) on a full file system: writes get OutOfDiskSpace and none is acknowledged and then lost; reads go
    on; status says why; once space is back writes succeed without a restart, and a restart after kill -9 shows
    every acknowledged write."""
    data = small_fs  # the server's log goes next to its data dir, i.e. off the full file system
    ballast = small_fs / "ballast"
    extra = ["--compact-mb", "0.05"] if fails == "snapshot" else []
    srv = own_server(data=data, extra=extra)
    try:
        with client_for(srv) as c:
            docs = _Acked(c.dur.docs)
            if fails == "snapshot":  # ~1.2 MiB of data: a snapshot needs that much free space
                c.dur.big.insert_many([{"_id": i, "blob": os.urandom(10_000)} for i in range(120)])
            for _ in range(20):
                assert docs.insert()
            reserve = small_fs / "reserve"
            if fails == "snapshot":  # 256 KiB left: room for the journal, not for a snapshot
                reserve.write_bytes(b"\0" * 256 * 1024)
            _fill(ballast)
            reserve.unlink(missing_ok=True)
            for _ in range(2000):
                if not docs.insert():
                    break
            assert docs.errors, "writes on a full disk must fail"
            for _ in range(3):  # refused, not retried into the journal
                docs.insert()
            err = docs.errors[-1]
            assert err.code == 14031 and err.details["codeName"] == "OutOfDiskSpace"
            assert "refuses writes" in str(err) and str(data) in str(err) and "No space left" in str(err)
            assert "snapshot" in str(err) if fails == "snapshot" else "journal" in str(docs.errors[0])
            assert {d["_id"] for d in c.dur.docs.find({}, {"_id": 1})} >= docs.acked, "reads go on"
            st = run_pilot("launchpad", "status", "--data", str(data))
            assert st.returncode == 0, st.stderr
            assert "WRITES REFUSED" in st.stdout and "code 14031" in st.stdout and "No space left" in st.stdout

            ballast.unlink()
            wait_for(docs.insert, timeout=30, interval=0.3, what="writes to resume after space came back")
            for _ in range(20):
                assert docs.insert()
            assert c.admin.command("pilotStats").get("writesRefused") is None
        port = srv.port
        srv.kill9()
        srv2 = own_server(data=data, port=port, extra=extra)
        with client_for(srv2) as c:
            stored = {d["_id"] for d in c.dur.docs.find({}, {"_id": 1})}
            assert stored >= docs.acked, f"acknowledged writes lost: {sorted(docs.acked - stored)[:10]}"
            if fails == "snapshot":
                assert c.dur.big.count_documents({}) == 120
        srv2.stop()
    finally:
        srv.stop(signal.SIGKILL)


# ------------------------------------------------------------------------------ kill -9 at random
_BATCH = 8  # documents per insert_many: one command, so all of them or none


class _AtomicWriter(threading.Thread):
    """Writes commands whose effects must be all-or-nothing until the server dies: ``insert_many`` of a batch
    (one command) and an update setting two fields to the same value. Remembers what was acknowledged and
    what was in flight when the connection broke."""

    def __init__(self, uri: str, w: int, cycle: int, pair_acked: int) -> None:
        super().__init__(daemon=True)
        self.client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000, socketTimeoutMS=10000)
        self.w, self.cycle = w, cycle
        self.batches: set[str] = set()
        self.in_flight: str | None = None
        self.pair_acked = pair_acked  # the last acknowledged value of this writer's pair
        self.pair_sent = pair_acked

    def run(self) -> None:
        db = self.client.atomic
        k = 0
        try:
            while True:
                batch = f"{self.w}-{self.cycle}-{k}"
                self.in_flight = batch
                db.docs.insert_many([{"_id": f"{batch}-{i}", "batch": batch, "pad": "x" * 64} for i in range(_BATCH)])
                self.batches.add(batch)
                self.in_flight = None
                self.pair_sent += 1
                db.pairs.update_one({"_id": self.w}, {"$set": {"a": self.pair_sent, "b": self.pair_sent}},
                                    upsert=True)
                self.pair_acked = self.pair_sent
                k += 1
        except pymongo.errors.PyMongoError:
            return
        finally:
            self.client.close()


def _check_atomic(uri: str, acked: set[str], in_flight: set[str], pairs: dict[int, tuple[int, int]]) -> int:
    """Every acknowledged batch whole, the batches in flight whole or absent, no other batch; pairs equal and
    at least their acknowledged value. Returns the number of documents."""
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as c:
        counts: dict[str, int] = {}
        for d in c.atomic.docs.find({}, {"batch": 1}):
            counts[d["batch"]] = counts.get(d["batch"], 0) + 1
        stored_pairs = {d["_id"]: d for d in c.atomic.pairs.find()}
    lost = acked - set(counts)
    assert not lost, f"acknowledged batches lost: {sorted(lost)[:5]}"
    half = {b: n for b, n in counts.items() if n != _BATCH}
    assert not half, f"batches half applied: {half}"
    unknown = set(counts) - acked - in_flight
    assert not unknown, f"batches that were never sent: {sorted(unknown)[:5]}"
    for w, (ack, sent) in pairs.items():
        if sent == 0:
            continue
        d = stored_pairs.get(w)
        assert d is not None and d["a"] == d["b"], f"pair {w} half applied: {d}"
        assert ack <= d["a"] <= sent, f"pair {w}: stored {d['a']}, acknowledged {ack}, sent {sent}"
    return sum(counts.values())


@pytest.mark.slow
def test_kill9_at_random_points_keeps_every_acknowledged_write_whole(own_server, tmp_path):
    """20 kill -9s at random moments of a write-heavy run (with compactions every 50 KB): after each restart every
    acknowledged write is there and no command is half applied."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    extra = ["--compact-mb", "0.05"]
    srv = own_server(extra=extra)
    port = srv.port
    acked: set[str] = set()
    in_flight: set[str] = set()
    pairs = {w: (0, 0) for w in range(2)}
    total = 0
    for cycle in range(20):
        writers = [_AtomicWriter(srv.uri, w, cycle, pairs[w][0]) for w in range(2)]
        for wr in writers:
            wr.pair_sent = pairs[wr.w][1]
            wr.start()
        time.sleep(rng.uniform(0.05, 0.5))
        srv.kill9()
        for wr in writers:
            wr.join(30)
            assert not wr.is_alive()
            acked |= wr.batches
            if wr.in_flight:
                in_flight.add(wr.in_flight)
            pairs[wr.w] = (wr.pair_acked, wr.pair_sent)
        srv = own_server(port=port, extra=extra)
        total = _check_atomic(srv.uri, acked, in_flight, pairs)
    print(f"seed {seed}: {len(acked)} acknowledged batches, {len(in_flight)} in flight at a kill, {total} documents")
    assert len(acked) >= 40, f"too few acknowledged batches to prove anything (seed {seed})"
    assert total >= len(acked) * _BATCH


def test_restore_replays_exactly_the_bytes_it_checked(tmp_path):
    """Restore scans first and reads each record again when it replays it (the decoded records of a whole data
    dir are never held at once): a record whose bytes changed in between is refused, not applied."""
    from pilot.launchpad.backend import Backend
    from pilot.launchpad.recovery import CorruptDataError, iter_ops, plan_restore, replay

    data = _journal(tmp_path, b"".join(_put(i, pad="p" * 30) for i in range(3)))
    backend = Backend()
    assert replay(backend, iter_ops(plan_restore(data))) == 3
    assert sorted(bson.decode(d)["_id"] for d in backend.export()[0]["docs"]) == [0, 1, 2]
    plan = plan_restore(data)
    path = data / "journal-00000001.log"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # inside the padding of the last record: after the scan, before the replay
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match="changed while it was being read"):
        replay(Backend(), iter_ops(plan))
