"""``pilot launchpad repair``: copy every undamaged record of a data dir into a new data dir, and say what is lost.

Why a new dir: the damaged one is the evidence (and maybe someone can do better by hand), so it is never
changed; the new one holds a single snapshot of the recovered state, the admin's LaunchPad file and the TLS
files, and a server starts on it like on any data dir. The records are replayed in order, skipping only the
damaged byte ranges (:func:`pilot.launchpad.recovery.scan_file` resynchronises after each), so the records
after a damaged one are recovered too. A record's effects are post-images by ``_id``, so a later record of
a document restores it whole even when an earlier one of it was lost.

While a server runs on the dir (it holds ``server.lock``), repair refuses; while repair runs it holds that
lock itself, so no server starts on the dir meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pilot.configdir import private_dir, write_private
from pilot.launchpad.backend import Backend
from pilot.launchpad.journal import (
    JOURNAL_MAGIC,
    SNAPSHOT_MAGIC,
    SNAPSHOT_NAME,
    fsync_dir,
    journal_files,
    write_snapshot,
)
from pilot.launchpad.recovery import FileScan, read_records, scan_file, settle

#: Files of a data dir that are not the database but belong with it (the admin's LaunchPad file, init options).
_SIDE_FILES = ("my_launchpad.yaml", "init-options.json")
_SIDE_DIRS = ("tls",)
_LOCK_FILE = "server.lock"  # pilot.launchpad.server.LOCK_FILE (the server imports this module's neighbours)


class RepairError(Exception):
    """Repair cannot run (no such dir, a server runs on it, the output exists); the message says what to do."""


@dataclass
class Lost:
    """A byte range that holds no valid record."""

    file: str
    start: int
    end: int
    bytes: int
    problem: str
    #: records lost: 1 when the damaged frame's own length leads to the next valid record, else None (>= 1)
    records: int | None
    #: "damage", or "torn tail" (the end of the newest journal: a write that was never acknowledged)
    kind: str


@dataclass
class FileRead:
    file: str
    generation: int | None
    records: int
    used: bool = True  # False: a journal the snapshot already covers (ignored, as the server does)


@dataclass
class RepairReport:
    source: str
    out: str
    files: list[FileRead] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    #: records that were read but could not be applied: (file, offset, error)
    unapplied: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    documents: int = 0
    collections: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Nothing but (at most) a torn tail was lost."""
        return all(x.kind == "torn tail" for x in self.lost) and not self.unapplied

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}

    def lines(self) -> list[str]:
        out = [f"repaired {self.source} into {self.out} ({self.source} is unchanged)"]
        for f in self.files:
            gen = f" (generation {f.generation})" if f.generation is not None else ""
            use = "" if f.used else ", ignored: the snapshot covers it"
            out.append(f"  read {f.file}{gen}: {f.records} valid records{use}")
        out.append(f"recovered {self.records} records: {self.documents} documents in {self.collections} collections "
                   f"(written as {Path(self.out) / SNAPSHOT_NAME})")
        out += [f"note: {n}" for n in self.notes]
        if not self.lost and not self.unapplied:
            out.append("nothing was lost")
        for x in self.lost:
            recs = "1 record" if x.records == 1 else "at least 1 record"
            what = "torn tail, never acknowledged" if x.kind == "torn tail" else f"{recs} skipped"
            out.append(f"could not recover {x.file} bytes {x.start}-{x.end} ({x.bytes} bytes): {x.problem}; {what}")
        for u in self.unapplied:
            out.append(f"could not apply the record at byte {u['offset']} of {u['file']}: {u['error']}")
        out.append(f"to use it: make sure no server runs on {self.source}, then "
                   f"`mv {self.source} {self.source}.damaged && mv {self.out} {self.source}`")
        return out


@contextmanager
def _server_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's ``server.lock`` (without creating or changing anything); refuse if a server holds it."""
    path = data_dir / _LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield  # no server ever ran here
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            pid = "?"
            try:
                pid = (data_dir / "server.pid").read_text().strip() or pid
            except OSError:
                pass
            raise RepairError(f"an embedded LaunchPad server (pid {pid}) runs on {data_dir}: stop it first "
                              f"(`pilot launchpad stop --data {data_dir}`)") from exc
        yield
    finally:
        os.close(fd)


def _losses(scan: FileScan, newest_journal: bool) -> list[Lost]:
    tail = scan.torn_tail if newest_journal else None
    return [Lost(str(scan.path), b.start, b.end, b.size, b.problem, b.records,
                 "torn tail" if b is tail else "damage") for b in scan.bad]


def _default_out(data_dir: Path) -> Path:
    return data_dir.with_name(f"{data_dir.name}.repaired-{time.strftime('%Y%m%dT%H%M%S')}")


def _check_out(data_dir: Path, out: Path) -> None:
    if out == data_dir or out.is_relative_to(data_dir):
        raise RepairError(f"--out {out} is inside {data_dir}, which repair never changes: choose another place")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RepairError(f"--out {out} exists and is not an empty directory: choose a new one")


def repair(data_dir: Path, out: Path | None = None) -> RepairReport:
    """Recover every undamaged record of ``data_dir`` into the new data dir ``out`` (see the module doc)."""
    data_dir = Path(data_dir).expanduser().absolute()
    if not data_dir.is_dir():
        raise RepairError(f"{data_dir} is not a data dir (no such directory)")
    out = Path(out).expanduser().absolute() if out is not None else _default_out(data_dir)
    _check_out(data_dir, out)
    report = RepairReport(str(data_dir), str(out))
    backend = Backend()
    with _server_lock(data_dir):
        sources = _read_sources(data_dir, report)
        with backend.lock:
            for scan in sources:
                for rec, doc in read_records(scan.path, scan.records):
                    ops = doc.get("ops")
                    if not isinstance(ops, list):
                        continue  # a snapshot's header or end record
                    try:
                        for op in ops:
                            backend.apply(op)
                        report.records += 1
                    except Exception as exc:  # a record that reads fine but does not apply: report it, go on
                        report.unapplied.append({"file": str(scan.path), "offset": rec.start,
                                                 "error": f"{type(exc).__name__}: {exc}"})
            settle(backend)
            colls = backend.export()
    report.collections = len(colls)
    report.documents = sum(len(c["docs"]) for c in colls)
    private_dir(out)
    write_snapshot(out, 1, colls)
    _copy_side_files(data_dir, out)
    fsync_dir(out)
    return report


def _read_sources(data_dir: Path, report: RepairReport) -> list[FileScan]:
    """Scan the snapshot and the journals it does not cover; fill in what was read and what is lost."""
    sources: list[FileScan] = []
    snap_path = data_dir / SNAPSHOT_NAME
    files = journal_files(data_dir)
    base = 0
    if snap_path.exists():
        scan = scan_file(snap_path, SNAPSHOT_MAGIC, keep=False)
        first = scan.records[:1] if scan.records and scan.records[0].start == len(SNAPSHOT_MAGIC) else []
        head = next((doc for _r, doc in read_records(snap_path, first)), {})
        if head.get("snapshot") == 1 and isinstance(head.get("gen"), int):
            base = int(head["gen"])
        else:
            base = files[0][0] if files else 0
            report.notes.append(f"the snapshot's header is unreadable: its generation is taken to be the oldest "
                                f"journal's ({base}), as the server deletes older journals after each snapshot")
        report.files.append(FileRead(str(snap_path), base, sum(1 for r in scan.records if r.has_ops)))
        report.lost += _losses(scan, newest_journal=False)
        sources.append(scan)
    live = [(g, p) for g, p in files if g >= base]
    for gen, path in files:
        if gen < base:
            report.files.append(FileRead(str(path), gen, 0, used=False))
    for i, (gen, path) in enumerate(live):
        scan = scan_file(path, JOURNAL_MAGIC, keep=False)
        report.files.append(FileRead(str(path), gen, len(scan.records)))
        report.lost += _losses(scan, newest_journal=i == len(live) - 1)
        sources.append(scan)
    if not sources:
        raise RepairError(f"{data_dir} holds no snapshot and no journal: nothing to repair")
    return sources


def _copy_side_files(data_dir: Path, out: Path) -> None:
    """The admin's LaunchPad file, the init options and the TLS files (so clients keep trusting the same CA),
    each written 0600 (directories 0700) from the start: they hold a password and the CA's key."""
    for name in _SIDE_FILES:
        if (data_dir / name).is_file():
            write_private(out / name, (data_dir / name).read_bytes(), fsync=True)
    for name in _SIDE_DIRS:
        for src in sorted((data_dir / name).rglob("*")) if (data_dir / name).is_dir() else ():
            dst = out / src.relative_to(data_dir)
            if src.is_dir() and not src.is_symlink():
                private_dir(dst)
            elif src.is_file() and not src.is_symlink():
                private_dir(dst.parent)
                write_private(dst, src.read_bytes(), fsync=True)
