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
write) fails its length or checksum test and is dropped on restore: it was never acknowledged. Reading the
files back, and telling a torn tail from damage, is :mod:`pilot.launchpad.recovery`; ``pilot launchpad
repair`` is :mod:`pilot.launchpad.repair`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from pilot.launchpad.wire import CODEC

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"PILOTJ01"
SNAPSHOT_MAGIC = b"PILOTS01"
SNAPSHOT_NAME = "snapshot.bson"
_FRAME = struct.Struct("<II")
_JOURNAL_RE = re.compile(r"^journal-(\d{8})\.log$")
#: Documents per "puts" record in a snapshot (bounded by bytes too).
_SNAPSHOT_CHUNK_BYTES = 8 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """Frame one record: length and CRC-32 of the payload, then the payload."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


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


#: MongoDB's error codes (src/mongo/base/error_codes.yml) for a write the server cannot keep.
OUT_OF_DISK_SPACE = 14031
INTERNAL_ERROR = 1


def failure_code(exc: BaseException | None) -> int:
    """14031 (OutOfDiskSpace) when the disk or the quota is full, else 1 (InternalError)."""
    return OUT_OF_DISK_SPACE if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else INTERNAL_ERROR


class JournalFailure(Exception):
    """Writing or syncing the journal failed: acknowledged durability can no longer be promised in this file."""

    def __init__(self, message: str, code: int = INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.reason = message
        self.code = code


class Journal:
    """The append-only journal of the current generation, with group commit.

    :meth:`append` is called with the server's command lock held (so records are in execution order);
    :meth:`wait_durable` is called after that lock is released, and returns once the record (and every
    earlier one) is on disk. Whoever finds the flush lock free writes and syncs everything pending.

    A failed write or ``fdatasync`` poisons the file for good (:attr:`failure`, reported to :attr:`on_failure`):
    after a failed fsync the kernel may have dropped the dirty pages and marked them clean, so a second fsync
    can "succeed" without the data ever reaching the disk (PostgreSQL's "fsyncgate", 2018), and a failed
    write may have left half a record. Nothing is ever written to that file again; the server resumes by
    writing a snapshot of its memory (which holds every acknowledged write) and then :meth:`reopen`-ing a new
    generation.
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
        #: called (flush lock held) with the failure when a write or sync fails
        self.on_failure: Callable[[JournalFailure], None] | None = None
        self.bytes_written = 0
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.records = 0
        self._fd, self.size = self._open(gen)

    def _open(self, gen: int) -> tuple[int, int]:
        """Open (or create, with its header made durable) generation ``gen``; returns the fd and the size.

        A file this call could not initialise is removed again, so that no half-written header is left
        for a later open to append behind.
        """
        path = journal_path(self.data_dir, gen)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = 0
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                if os.write(fd, JOURNAL_MAGIC) != len(JOURNAL_MAGIC):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
                fsync_dir(self.data_dir)
                size = len(JOURNAL_MAGIC)
        except OSError:
            os.close(fd)
            if size == 0:
                path.unlink(missing_ok=True)
            raise
        return fd, size

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._durable

    @property
    def empty(self) -> bool:
        """No record was appended to the current file (call with the command lock held)."""
        return self.size <= len(JOURNAL_MAGIC)

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
            if self._durable >= seq:
                return
            if self.failure is not None:
                raise self.failure
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
                    f"writing the journal {journal_path(self.data_dir, self.gen)} failed: {exc.strerror or exc}",
                    failure_code(exc))
                if self.on_failure is not None:
                    self.on_failure(self.failure)
                raise self.failure from exc
        self._durable = upto

    def flush(self) -> None:
        """Write and sync everything pending."""
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            self._flush_locked()

    def rotate(self, new_gen: int) -> None:
        """Sync the current file and continue in generation ``new_gen`` (command lock held by the caller).

        The new file is opened before the old one is closed: when it cannot be (disk full, permissions) the
        OSError propagates and the journal goes on in the old file, which still holds every record.
        """
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            self._flush_locked()
            fd, size = self._open(new_gen)
            old, self._fd = self._fd, fd
            self.gen, self.size = new_gen, size
            os.close(old)

    def reopen(self, new_gen: int) -> None:
        """After a failure: continue in a new generation ``new_gen`` (command lock held by the caller).

        Only call this once a snapshot of generation ``new_gen`` holding every record appended so far is on
        disk: the records that were pending in the poisoned file are then durable through it, so they count
        as durable here too, and the poisoned file is never touched again.
        """
        with self._flush_lock:
            fd, size = self._open(new_gen)
            with self._buf_lock:
                self._pending = []
                self._durable = self._seq
            old, self._fd = self._fd, fd
            self.gen, self.size, self.failure = new_gen, size, None
            try:
                os.close(old)
            except OSError:
                pass

    def close(self) -> None:
        with self._flush_lock:
            if self.failure is None:
                self._flush_locked()
            if self._fd >= 0:
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
