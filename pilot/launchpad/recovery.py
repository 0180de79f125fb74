"""Reading the data dir back: every intact record of a snapshot or journal, and where the damage is.

Why a scanner, not a reader that stops at the first bad record: a bad record at the very end of the newest
journal is a write torn by a crash (never acknowledged, safe to drop), but a bad record with valid records
*after* it is damage to acknowledged data, and dropping everything after it would lose acknowledged writes.
So :func:`scan_file` resynchronises after a bad frame: it looks for the next offset where a complete,
checksummed journal record starts, and goes on from there. The server uses the result to refuse to start on
damage (:func:`plan_restore`); ``pilot launchpad repair`` (:mod:`pilot.launchpad.repair`) uses it to recover
every undamaged record.

What counts as a record (all must hold): the 8-byte frame header ``<u32 length><u32 crc32>`` fits in the file;
the payload's own BSON length (its first 4 bytes) equals the frame's length and its last byte is NUL; the
CRC-32 of the payload matches; it decodes as BSON; and it is one of the documents this server writes
(``{"ops": [...]}``, or a snapshot's header/end record). Resynchronisation only looks at offsets where the
payload starts with ``<len>\\x04ops\\x00`` (an array named ``ops`` as its first field, as
:func:`pilot.launchpad.journal.frame` encodes every record), found with ``bytes.find``.

Why chance cannot fake a record in a torn tail: after a ``kill -9`` the file holds exactly what the writes
put there (a ``write`` is all or a prefix), so a torn tail is a prefix of real records and nothing follows it;
after a power loss, a block may hold stale or zeroed bytes. For such bytes to pass as a record they would
need the 5-byte ``\\x04ops\\x00`` marker at the right place, two equal 32-bit lengths, a CRC-32 over the
payload that matches (2^-32 for random bytes), and a payload that decodes as a BSON document holding an
``ops`` array: far beyond 2^-64 per candidate offset for random bytes. What *can* look like a record is a real
record's bytes stored inside a document (a user who keeps journal frames in the database): a candidate is
therefore only accepted when it is followed by the end of the file or by another valid record, so a frame
embedded in a torn record's payload is not taken for a record unless the tear falls exactly at its end.
Either way the error is on the safe side: the server refuses to start and points at ``repair``; it never
drops a record it has read as valid.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bson
from bson.raw_bson import RawBSONDocument

from pilot.configdir import write_private
from pilot.launchpad.journal import JOURNAL_MAGIC, SNAPSHOT_MAGIC, SNAPSHOT_NAME, journal_files
from pilot.launchpad.wire import CODEC

#: Records are read as RawBSONDocument: the documents of a record keep their stored bytes, which the engine
#: stores as they are (restoring 100,000 documents this way needs 406 MiB instead of 835 MiB decoded).
_RAW = CODEC.with_options(document_class=RawBSONDocument)

if TYPE_CHECKING:
    from pilot.launchpad.backend import Backend

_FRAME = struct.Struct("<II")
_OPS_MARK = b"\x04ops\x00"  # right after the payload's 4-byte length: the first field is the array "ops"
REPAIR_HINT = "`pilot launchpad repair --data {dir}` copies every undamaged record into a new data dir"


class CorruptDataError(Exception):
    """The snapshot or a journal is damaged (not merely torn by a crash): refuse to guess."""


@dataclass
class Record:
    """One valid record: where it is in its file, and (unless the scan was told not to keep it) its document."""

    start: int
    end: int
    doc: dict[str, Any] | None
    #: documents the record's ops put (counted in snapshots only: checked against the end record's count)
    ndocs: int = 0
    #: False for a snapshot's header and end records, True for every record of ops
    has_ops: bool = True


@dataclass
class BadRange:
    """Bytes ``[start, end)`` of a file that hold no valid record."""

    start: int
    end: int
    problem: str
    #: 1 when the bad frame's own length points exactly at the next valid record (one record lost); else None
    records: int | None = None
    #: never a torn tail: a header that is not a prefix of the magic (headers are fsynced before any record)
    fatal: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class FileScan:
    """Every valid record of one file and every range of bytes between them that holds none."""

    path: Path
    size: int
    records: list[Record] = field(default_factory=list)
    bad: list[BadRange] = field(default_factory=list)

    @property
    def first_bad(self) -> BadRange | None:
        return self.bad[0] if self.bad else None

    def records_after(self, offset: int) -> int:
        return sum(1 for r in self.records if r.start >= offset)

    @property
    def torn_tail(self) -> BadRange | None:
        """The one bad range, when it runs to the end of the file with no valid record after it."""
        bad = self.bad[0] if len(self.bad) == 1 else None
        if bad is not None and not bad.fatal and bad.end == self.size and self.records_after(bad.start) == 0:
            return bad
        return None


def _is_ours(doc: dict[str, Any], snapshot: bool) -> bool:
    if isinstance(doc.get("ops"), list):
        return True
    return snapshot and (doc.get("snapshot") == 1 or doc.get("end") is True)


def _frame_at(data: bytes | mmap.mmap, pos: int, snapshot: bool, keep: bool = True) -> tuple[Record | None, str]:
    """The valid record at ``pos``, or None and why not (``keep``: with its document)."""
    size = len(data)
    if size - pos < _FRAME.size:
        return None, f"{size - pos} trailing bytes, shorter than a record header"
    length, crc = _FRAME.unpack_from(data, pos)
    start, end = pos + _FRAME.size, pos + _FRAME.size + length
    if length < 5 or end > size:
        return None, f"record length {length} runs past the end of the file"
    if int.from_bytes(data[start:start + 4], "little") != length or data[end - 1] != 0:
        return None, "record length does not match its contents"
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None, "record checksum mismatch"
    try:
        doc = bson.decode(payload, _RAW)
        ours = _is_ours(doc, snapshot)  # reads the top level: a RawBSONDocument decodes it only now
        ndocs = _count_docs(doc) if snapshot and ours else 0
    except (bson.errors.BSONError, ValueError, OverflowError) as exc:
        return None, f"record does not decode: {exc}"
    if not ours:
        return None, "record is not a journal record"
    return Record(pos, end, doc if keep else None, ndocs, isinstance(doc.get("ops"), list)), ""


def _count_docs(doc: dict[str, Any]) -> int:
    return sum(len(op.get("docs", ())) for op in doc.get("ops", ()))


def _resync(data: bytes | mmap.mmap, pos: int, snapshot: bool) -> Record | None:
    """The first valid record after ``pos`` that is followed by the end of the file or another valid record."""
    at = pos + 1
    while True:
        mark = data.find(_OPS_MARK, at + _FRAME.size + 4)
        if mark < 0:
            return None
        cand = mark - 4 - _FRAME.size
        at = cand + 1
        rec, _why = _frame_at(data, cand, snapshot, keep=False)
        if rec is None:
            continue
        if rec.end == len(data) or _frame_at(data, rec.end, snapshot, keep=False)[0] is not None:
            return rec


def scan_file(path: Path, magic: bytes, keep: bool = True) -> FileScan:
    """Every valid record of ``path`` and the ranges of bytes between them that hold none (see the module doc).

    ``keep=False`` keeps only where each record is (restore reads them again one at a time, :func:`iter_ops`):
    holding every decoded record of a data dir while replaying them would double restore's peak memory and
    leave the heap fragmented at that size for the life of the server."""
    with _mapped(path) as data:
        return _scan(path, data, magic, keep)


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The bytes of ``path``, mapped rather than read (a snapshot's size in page cache, not on the heap)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as data:
            yield data


def _scan(path: Path, data: bytes | mmap.mmap, magic: bytes, keep: bool) -> FileScan:
    scan = FileScan(path, len(data))
    snapshot = magic == SNAPSHOT_MAGIC
    pos = len(magic)
    head = bytes(data[:len(magic)])
    if head != magic:
        if not data:
            return scan
        torn = len(data) < len(magic) and magic.startswith(head)  # a crash while the file was being created
        problem = (f"file shorter than its {len(magic)}-byte header" if torn
                   else f"bad header {head!r} (expected {magic!r})")
        nxt = _resync(data, 0, snapshot)
        end = nxt.start if nxt is not None else len(data)
        scan.bad.append(BadRange(0, end, problem, fatal=not torn))
        pos = end
    while pos < len(data):
        rec, why = _frame_at(data, pos, snapshot, keep)
        if rec is not None:
            scan.records.append(rec)
            pos = rec.end
            continue
        nxt = _resync(data, pos, snapshot)
        end = nxt.start if nxt is not None else len(data)
        claimed = _FRAME.unpack_from(data, pos)[0] + _FRAME.size if len(data) - pos >= _FRAME.size else -1
        scan.bad.append(BadRange(pos, end, why, 1 if nxt is not None and pos + claimed == end else None))
        pos = end
    return scan


# ------------------------------------------------------------------------------------------ restore
@dataclass
class Snapshot:
    """A checked snapshot: its generation, and where its records are (read again when replayed)."""

    gen: int
    path: Path
    records: list[Record]
    ndocs: int


@dataclass
class RestorePlan:
    """What restore will replay, and what it had to drop."""

    snapshot: Snapshot | None
    #: (generation, file, its valid records): where they are, not their documents
    journals: list[tuple[int, Path, list[Record]]]
    warnings: list[str]
    stale: list[Path]
    #: the torn tail of the newest journal: (path, offset) to cut it at
    torn: tuple[Path, int] | None = None


def damage_message(what: str, scan: FileScan, data_dir: Path, newer: int = 0) -> str:
    """One line: which file, at which byte, how many valid records follow, and what to do."""
    bad = scan.first_bad
    assert bad is not None
    after = scan.records_after(bad.start)
    more = f" (and {newer} in newer journals)" if newer else ""
    return (f"{what} {scan.path} is damaged at byte {bad.start} of {scan.size} ({bad.problem}; {bad.size} bad "
            f"bytes); {after} valid records follow it in this file{more}, so this is not a write torn by a crash: "
            "refusing to start rather than lose acknowledged writes. "
            + REPAIR_HINT.format(dir=data_dir) + " and reports what it could not recover")


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
    scan = scan_file(path, SNAPSHOT_MAGIC, keep=False)
    if scan.bad:
        raise CorruptDataError(damage_message("snapshot", scan, data_dir))
    recs = scan.records
    where = f"snapshot {path}"
    hint = REPAIR_HINT.format(dir=data_dir)
    head, end = [doc for _r, doc in read_records(path, [recs[0], recs[-1]])] if len(recs) >= 2 else ({}, {})
    if head.get("snapshot") != 1 or not end.get("end"):
        raise CorruptDataError(f"{where} is incomplete (no header or end record); {hint}")
    body = recs[1:-1]
    ndocs = sum(r.ndocs for r in body)
    if ndocs != end.get("ndocs"):
        raise CorruptDataError(f"{where} holds {ndocs} documents, its end record says {end['ndocs']}; {hint}")
    return Snapshot(int(head["gen"]), path, body, ndocs)


def plan_restore(data_dir: Path, truncate_torn_tail: bool = True) -> RestorePlan:
    """Read the snapshot and every journal generation it does not cover; refuse on damage.

    A bad range at the end of the *newest* journal with no valid record after it is a write torn by a crash:
    it was never acknowledged, so it is dropped; with ``truncate_torn_tail`` its bytes are kept in a
    ``.torn-<time>`` side file and the journal is cut there, but only once every file has been read and found
    clean (a refusal changes nothing in the data dir). Anything else bad is :class:`CorruptDataError`.
    """
    snap = read_snapshot(data_dir)
    base = snap.gen if snap else 0
    files = journal_files(data_dir)
    live = [(g, p) for g, p in files if g >= base]
    stale = [p for g, p in files if g < base]
    scans = [(gen, scan_file(path, JOURNAL_MAGIC, keep=False)) for gen, path in live]
    plan = RestorePlan(snap, [], [], stale)
    for i, (gen, scan) in enumerate(scans):
        newest = i == len(scans) - 1
        if scan.bad and not (newest and scan.torn_tail is not None):
            newer = sum(len(s.records) for _g, s in scans[i + 1:])
            raise CorruptDataError(damage_message("journal", scan, data_dir, newer))
        plan.journals.append((gen, scan.path, scan.records))
        tail = scan.torn_tail
        if tail is not None and tail.size:
            plan.torn = (scan.path, tail.start)
            plan.warnings.append(f"ignored a torn record at the end of {scan.path} (byte {tail.start} of "
                                 f"{scan.size}: {tail.problem}); it was never acknowledged")
    if truncate_torn_tail and plan.torn is not None:
        plan.warnings.extend(cut_torn_tail(*plan.torn))
    return plan


def cut_torn_tail(path: Path, offset: int) -> list[str]:
    """Keep the bytes of ``path`` from ``offset`` in a 0600 side file, then cut the journal there."""
    raw = path.read_bytes()
    out = []
    if len(raw) > offset:
        side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        write_private(side, raw[offset:], fsync=True)
        out.append(f"kept the {len(raw) - offset} dropped bytes in {side}")
    with open(path, "r+b") as fh:
        if offset < len(JOURNAL_MAGIC):
            fh.truncate(0)
            fh.write(JOURNAL_MAGIC)
        else:
            fh.truncate(offset)
        fh.flush()
        os.fsync(fh.fileno())
    return out


def read_records(path: Path, records: Iterable[Record]) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Each record a scan of ``path`` found, with its document, read again one at a time and checked again
    (its checksum: what is applied is what the scan found valid).

    Read with ``pread``, not mapped: a mapping's pages count in the server's RSS until it is closed, so
    replaying a mapped 130 MiB snapshot would add its whole size to restore's peak."""
    with open(path, "rb") as fh:
        for rec in records:
            buf = os.pread(fh.fileno(), rec.end - rec.start, rec.start)
            length, crc = _FRAME.unpack_from(buf) if len(buf) >= _FRAME.size else (-1, -1)
            if len(buf) != rec.end - rec.start or length != len(buf) - _FRAME.size or zlib.crc32(
                    memoryview(buf)[_FRAME.size:]) != crc:
                raise CorruptDataError(f"{path} changed while it was being read (byte {rec.start})")
            doc: dict[str, Any] = bson.decode(buf[_FRAME.size:], _RAW)  # bytes: the documents keep slices of it
            yield rec, doc


def iter_ops(plan: RestorePlan) -> Iterator[dict[str, Any]]:
    """Every op to apply, in order: the snapshot's, then each journal's."""
    files = [(plan.snapshot.path, plan.snapshot.records)] if plan.snapshot else []
    files += [(path, records) for _gen, path, records in plan.journals]
    for path, records in files:
        for _rec, doc in read_records(path, records):
            yield from doc.get("ops", ())


def settle(backend: Backend) -> None:
    """After ops were applied with :meth:`Backend.apply`: let the store rebuild what it derives from them
    (its indexes), without journaling the restored effects again. Call with the backend's lock held."""
    backend.tracker.collect()


def replay(backend: Backend, ops: Iterable[dict[str, Any]]) -> int:
    """Apply ``ops`` to ``backend`` in order and settle it; returns how many were applied."""
    n = 0
    with backend.lock:
        for op in ops:
            backend.apply(op)
            n += 1
        settle(backend)
    return n
