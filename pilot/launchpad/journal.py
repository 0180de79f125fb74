"""Durability for the embedded server: an append-only journal of effects and compacted snapshots.

Files in the data dir::

    snapshot.bson           the state as of the start of journal generation G (atomically replaced)
    journal-<G>.log         effects of every write since that snapshot, one record per command
    journal-<G+1>.log ...   (a newer generation exists only while a snapshot is being written)

Every file is mode 0600 (the data dir 0700: it is the database). Every file is a magic header followed by
records framed as ``<u32 length><u32 crc32><BSON payload>``.
A journal record is ``{"ops": [...]}``; the ops are *effects*, never commands (replaying a findAndModify,
an upsert or ``$currentDate`` would not be deterministic):

    {"op": "put", "db", "c", "doc"}          full post-image of a document (insert or replace by _id)
    {"op": "del", "db", "c", "id"}           deletion by _id
    {"op": "create"|"drop", "db", "c"}        collection created / dropped
    {"op": "dropdb", "db"}                   database dropped
    {"op": "index", "db", "c", "name", "spec"}   index created (spec as mongomock stores it)
    {"op": "dropindex", "db", "c", "name"}   index dropped ("*": all)
    {"op": "rename", "db", "c", "to"}        collection renamed within its database
    {"op": "puts", "db", "c", "docs"}        many post-images (snapshots only)

A write is acknowledged only after its record is on disk (``fdatasync``): :meth:`Journal.wait_durable`
implements group commit, so concurrent writers share one fsync. A torn last record (crash during the
write) fails its length or checksum test and is dropped on restore: it was never acknowledged.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from pilot.configdir import write_private
from pilot.launchpad.wire import CODEC

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"PILOTJ01"
SNAPSHOT_MAGIC = b"PILOTS01"
SNAPSHOT_NAME = "snapshot.bson"
_FRAME = struct.Struct("<II")
_JOURNAL_RE = re.compile(r"^journal-(\d{8})\.log$")
#: Documents per "puts" record in a snapshot (bounded by bytes too).
_SNAPSHOT_CHUNK_BYTES = 8 * 1024 * 1024


class CorruptDataError(Exception):
    """A snapshot, or a journal record that is not the last one, fails its checks: refuse to guess."""


def frame(payload: bytes) -> bytes:
    """Frame one record: length and CRC-32 of the payload, then the payload."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class ReadResult:
    """Records read from one file, and where (if anywhere) a bad record stopped the read."""

    records: list[dict[str, Any]]
    good_end: int
    size: int
    problem: str | None = None


def read_records(path: Path, magic: bytes) -> ReadResult:
    """Read every intact record of ``path``; stop at the first record that fails its checks.

    A record is intact when its frame fits in the file, its CRC-32 matches and its payload decodes as BSON.
    """
    data = path.read_bytes()
    size = len(data)
    if size < len(magic):
        return ReadResult([], 0, size, f"file shorter than its {len(magic)}-byte header" if size else None)
    if data[:len(magic)] != magic:
        return ReadResult([], 0, size, f"bad header {data[:len(magic)]!r} (expected {magic!r})")
    pos = len(magic)
    out: list[dict[str, Any]] = []
    while pos < size:
        if size - pos < _FRAME.size:
            return ReadResult(out, pos, size, f"{size - pos} trailing bytes, shorter than a record header")
        length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if length < 5 or end > size:
            return ReadResult(out, pos, size, f"record length {length} runs past the end of the file")
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return ReadResult(out, pos, size, "record checksum mismatch")
        try:
            out.append(bson.decode(payload, CODEC))
        except bson.errors.BSONError as exc:
            return ReadResult(out, pos, size, f"record does not decode: {exc}")
        pos = end
    return ReadResult(out, pos, size, None)


def journal_files(data_dir: Path) -> list[tuple[int, Path]]:
    """``(generation, path)`` of every journal file, oldest first."""
    out = []
    for p in data_dir.iterdir():
        m = _JOURNAL_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def journal_path(data_dir: Path, gen: int) -> Path:
    return data_dir / f"journal-{gen:08d}.log"


def fsync_dir(path: Path) -> None:
    """Make a create/rename/unlink in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalFailure(Exception):
    """Writing or syncing the journal failed: acknowledged durability can no longer be promised."""


class Journal:
    """The append-only journal of the current generation, with group commit.

    :meth:`append` is called with the server's command lock held (so records are in execution order);
    :meth:`wait_durable` is called after that lock is released, and returns once the record (and every
    earlier one) is on disk. Whoever finds the flush lock free writes and syncs everything pending.
    """

    def __init__(self, data_dir: Path, gen: int) -> None:
        self.data_dir = data_dir
        self.gen = gen
        self._buf_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._seq = 0
        self._durable = 0
        self.failure: JournalFailure | None = None
        self.bytes_written = 0
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.records = 0
        self._fd = self._open(gen)

    def _open(self, gen: int) -> int:
        path = journal_path(self.data_dir, gen)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(fd).st_size == 0:
            os.write(fd, JOURNAL_MAGIC)
            os.fsync(fd)
            fsync_dir(self.data_dir)
        self.size = os.fstat(fd).st_size
        return fd

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, ops: list[dict[str, Any]]) -> int:
        """Encode one record (under the caller's command lock) and queue it; returns its sequence number."""
        record = frame(bson.encode({"ops": ops}, codec_options=CODEC))
        with self._buf_lock:
            self._pending.append(record)
            self._seq += 1
            self.size += len(record)
            self.records += 1
            return self._seq

    def wait_durable(self, seq: int) -> None:
        """Return once record ``seq`` is on disk; raise :class:`JournalFailure` if it cannot be."""
        if self._durable >= seq:
            return
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            if self._durable >= seq:
                return
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._buf_lock:
            chunks, self._pending = self._pending, []
            upto = self._seq
        if chunks:
            data = b"".join(chunks)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                t0 = time.perf_counter()
                os.fdatasync(self._fd)
                self.fsync_seconds += time.perf_counter() - t0
                self.fsyncs += 1
                self.bytes_written += len(data)
            except OSError as exc:
                self.failure = JournalFailure(
                    f"writing the journal {journal_path(self.data_dir, self.gen)} failed: {exc.strerror or exc}; "
                    "the server refuses further commands (restart it once the disk problem is fixed: "
                    "every acknowledged write is on disk)")
                raise self.failure from exc
        self._durable = upto

    def flush(self) -> None:
        """Write and sync everything pending."""
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            self._flush_locked()

    def rotate(self, new_gen: int) -> None:
        """Sync the current file and continue in generation ``new_gen`` (command lock held by the caller)."""
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            self._flush_locked()
            os.close(self._fd)
            self.gen = new_gen
            self._fd = self._open(new_gen)

    def close(self) -> None:
        with self._flush_lock:
            if self.failure is None:
                self._flush_locked()
            os.close(self._fd)
            self._fd = -1


def write_snapshot(data_dir: Path, gen: int, collections: list[dict[str, Any]]) -> Path:
    """Write ``snapshot.bson`` for generation ``gen`` atomically (temp file, fsync, rename, fsync dir).

    Parameters
    ----------
    collections:
        ``{"db", "c", "indexes": {name: spec}, "docs": [raw BSON bytes, ...]}`` for every collection.
    """
    tmp = data_dir / (SNAPSHOT_NAME + ".tmp")
    ndocs = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
            fh.write(SNAPSHOT_MAGIC)
            fh.write(frame(bson.encode({"snapshot": 1, "gen": gen, "created": time.time()})))
            for coll in collections:
                db, c = coll["db"], coll["c"]
                fh.write(frame(bson.encode({"ops": [{"op": "create", "db": db, "c": c}]})))
                for name, spec in coll["indexes"].items():
                    fh.write(frame(bson.encode({"ops": [{"op": "index", "db": db, "c": c, "name": name,
                                                          "spec": spec}]}, codec_options=CODEC)))
                chunk: list[RawBSONDocument] = []
                size = 0
                for raw in coll["docs"]:
                    chunk.append(RawBSONDocument(raw))
                    size += len(raw)
                    if size >= _SNAPSHOT_CHUNK_BYTES:
                        fh.write(frame(bson.encode({"ops": [{"op": "puts", "db": db, "c": c, "docs": chunk}]})))
                        ndocs += len(chunk)
                        chunk, size = [], 0
                if chunk:
                    fh.write(frame(bson.encode({"ops": [{"op": "puts", "db": db, "c": c, "docs": chunk}]})))
                    ndocs += len(chunk)
            fh.write(frame(bson.encode({"end": True, "ndocs": ndocs})))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    final = data_dir / SNAPSHOT_NAME
    os.replace(tmp, final)
    fsync_dir(data_dir)
    return final


@dataclass
class Snapshot:
    gen: int
    records: list[dict[str, Any]]
    ndocs: int


def read_snapshot(data_dir: Path) -> Snapshot | None:
    """Read ``snapshot.bson``; None if there is none.

    Raises
    ------
    CorruptDataError
        When the snapshot fails any check (it is replaced atomically, so this means damage, not a crash).
    """
    path = data_dir / SNAPSHOT_NAME
    if not path.exists():
        return None
    res = read_records(path, SNAPSHOT_MAGIC)
    where = f"snapshot {path}"
    if res.problem:
        raise CorruptDataError(f"{where} is damaged at byte {res.good_end}: {res.problem}")
    if len(res.records) < 2 or res.records[0].get("snapshot") != 1 or not res.records[-1].get("end"):
        raise CorruptDataError(f"{where} is incomplete (no header or end record)")
    body = res.records[1:-1]
    ndocs = sum(len(op.get("docs", ())) for r in body for op in r.get("ops", ()))
    if ndocs != res.records[-1].get("ndocs"):
        raise CorruptDataError(f"{where} holds {ndocs} documents, its end record says {res.records[-1]['ndocs']}")
    return Snapshot(int(res.records[0]["gen"]), body, ndocs)


@dataclass
class RestorePlan:
    """What restore will replay, and what it had to drop."""

    snapshot: Snapshot | None
    journals: list[tuple[int, Path, list[dict[str, Any]]]]
    warnings: list[str]
    stale: list[Path]


def plan_restore(data_dir: Path, truncate_torn_tail: bool = True) -> RestorePlan:
    """Read the snapshot and every journal generation it does not cover.

    A bad record at the end of the *last* journal is a write torn by a crash: it was never acknowledged,
    so it is dropped (and truncated away when ``truncate_torn_tail``). A bad record anywhere else means
    damage to acknowledged data: :class:`CorruptDataError`.
    """
    snap = read_snapshot(data_dir)
    base = snap.gen if snap else 0
    warnings: list[str] = []
    stale: list[Path] = []
    journals: list[tuple[int, Path, list[dict[str, Any]]]] = []
    files = journal_files(data_dir)
    live = [(g, p) for g, p in files if g >= base]
    stale = [p for g, p in files if g < base]
    for i, (gen, path) in enumerate(live):
        res = read_records(path, JOURNAL_MAGIC)
        if res.problem:
            if i != len(live) - 1:
                raise CorruptDataError(
                    f"journal {path} is damaged at byte {res.good_end} ({res.problem}) and a newer journal "
                    "follows it, so this is not a write torn by a crash; refusing to start rather than "
                    "lose acknowledged writes. Keep a copy of the data dir and inspect it.")
            warnings.append(f"ignored a torn record at the end of {path} (byte {res.good_end} of {res.size}: "
                            f"{res.problem}); it was never acknowledged")
            if truncate_torn_tail:
                raw = path.read_bytes()
                if len(raw) > res.good_end:
                    side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
                    write_private(side, raw[res.good_end:])  # 0600, as every file here
                    warnings.append(f"kept the {len(raw) - res.good_end} dropped bytes in {side}")
                with open(path, "r+b") as fh:
                    if res.good_end < len(JOURNAL_MAGIC):
                        fh.truncate(0)
                        fh.write(JOURNAL_MAGIC)
                    else:
                        fh.truncate(res.good_end)
                    fh.flush()
                    os.fsync(fh.fileno())
        journals.append((gen, path, res.records))
    return RestorePlan(snap, journals, warnings, stale)


def iter_ops(plan: RestorePlan) -> Iterator[dict[str, Any]]:
    """Every op to apply, in order: the snapshot's, then each journal's."""
    if plan.snapshot:
        for rec in plan.snapshot.records:
            yield from rec.get("ops", ())
    for _gen, _path, records in plan.journals:
        for rec in records:
            yield from rec.get("ops", ())
