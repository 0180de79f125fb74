"""What every command group of the embedded server shares: errors, replies, cursors and the database state.

:class:`CommandBase` holds the mongomock client over the tracked stores (:mod:`pilot.launchpad.store`), the
open cursors and the command counters; the command groups (:mod:`pilot.launchpad.admin`,
:mod:`~pilot.launchpad.reads`, :mod:`~pilot.launchpad.writes`, :mod:`~pilot.launchpad.schema`) are mixins
over it, and :class:`pilot.launchpad.backend.Backend` puts them together and dispatches. A command handler
takes ``(db, name, cmd, seqs, conn)`` (database, the command's own spelling of its name, the command
document, OP_MSG document sequences, connection id) and returns the reply document, or raises
:class:`CommandError`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bson
import mongomock
from bson import Int64
from bson.raw_bson import RawBSONDocument

from pilot.launchpad.store import TrackedCollectionStore, TrackedServerStore, Tracker, install_planner
from pilot.launchpad.wire import CODEC

#: A command document, OP_MSG document sequences (``documents``, ``updates``, ``deletes``), a reply.
Command = dict[str, Any]
Sequences = dict[str, list[Any]]
Reply = dict[str, Any]
#: ``handler(db, name, cmd, seqs, conn_id) -> reply``.
Handler = Callable[[str, str, Command, Sequences, int], Reply]

#: Replies stay well under maxMessageSizeBytes: a cursor batch is cut at this many bytes.
BATCH_BYTES = 16 * 1024 * 1024
#: Cursors idle for longer than this are discarded (MongoDB's default is 10 minutes too).
CURSOR_TIMEOUT_S = 600.0

#: https://github.com/mongodb/mongo/blob/master/src/mongo/base/error_codes.yml
CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 11: "UserNotFound", 13: "Unauthorized",
    14: "TypeMismatch", 18: "AuthenticationFailed", 26: "NamespaceNotFound", 27: "IndexNotFound",
    43: "CursorNotFound", 48: "NamespaceExists", 59: "CommandNotFound", 72: "InvalidOptions",
    73: "InvalidNamespace", 85: "IndexOptionsConflict", 91: "ShutdownInProgress",
    115: "CommandNotSupported", 11000: "DuplicateKey", 40324: "Location40324",
}


class CommandError(Exception):
    """A command failed; becomes ``{"ok": 0, "errmsg", "code", "codeName"}``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def error_reply(message: str, code: int) -> dict[str, Any]:
    return {"ok": 0.0, "errmsg": message, "code": code, "codeName": CODE_NAMES.get(code, f"Location{code}")}


@dataclass
class _Cursor:
    ns: str
    docs: deque[bytes]
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class CommandStats:
    """Counters per command name, for ``pilotStats`` and the shutdown summary."""

    count: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.count[name] = self.count.get(name, 0) + 1
            self.seconds[name] = self.seconds.get(name, 0.0) + dt


def _batch(docs: Iterable[bytes] | deque[bytes], batch_size: int | None) -> tuple[list[RawBSONDocument], bool]:
    """Take up to ``batch_size`` (0/None: any number) raw docs from the left of a deque, cut at BATCH_BYTES."""
    out: list[RawBSONDocument] = []
    size = 0
    assert isinstance(docs, deque)
    while docs and (not batch_size or len(out) < batch_size):
        if out and size + len(docs[0]) > BATCH_BYTES:
            break
        raw = docs.popleft()
        size += len(raw)
        out.append(RawBSONDocument(raw))
    return out, bool(docs)


class CommandBase:
    """The database state the command groups work on, and the cursor plumbing they share."""

    def __init__(self) -> None:
        install_planner()
        self.tracker = Tracker()
        self.store = TrackedServerStore(self.tracker)
        self.client: mongomock.MongoClient = mongomock.MongoClient(_store=self.store)
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        self.stats = CommandStats()
        self.started = time.time()
        self._cursors: dict[int, _Cursor] = {}
        self._cursor_ids = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)
        self._last_cursor_sweep = time.monotonic()
        self._colls: dict[tuple[str, str], mongomock.Collection] = {}

    def coll(self, db: str, name: Any) -> mongomock.Collection:
        if not isinstance(name, str) or not name or "$" in name or "\x00" in name:
            raise CommandError(f"invalid collection name {name!r}", 73)
        key = (db, name)
        c = self._colls.get(key)
        if c is None:
            c = self._colls[key] = self.client[db][name]
        return c

    def cstore(self, db: str, name: str) -> TrackedCollectionStore:
        return self.store[db][name]

    # ------------------------------------------------------------------------------ cursors
    def _cursor_reply(self, ns: str, docs: Iterable[dict[str, Any]], batch_size: int | None = None,
                      single: bool = False) -> dict[str, Any]:
        raw = deque(bson.encode(d, codec_options=CODEC) for d in docs)
        first, more = _batch(raw, batch_size)
        cid = 0
        if more and not single:
            self._sweep_cursors()
            cid = next(self._cursor_ids)
            self._cursors[cid] = _Cursor(ns, raw)
        return {"cursor": {"firstBatch": first, "id": Int64(cid), "ns": ns}, "ok": 1.0}

    def _sweep_cursors(self) -> None:
        now = time.monotonic()
        if now - self._last_cursor_sweep < 60:
            return
        self._last_cursor_sweep = now
        for cid in [c for c, cur in self._cursors.items() if now - cur.last_used > CURSOR_TIMEOUT_S]:
            del self._cursors[cid]

    def _getmore(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cid = int(cmd[name])
        cur = self._cursors.get(cid)
        if cur is None:
            raise CommandError(f"cursor id {cid} not found (it was exhausted, killed or timed out after "
                               f"{CURSOR_TIMEOUT_S:.0f} s idle)", 43)
        batch, more = _batch(cur.docs, int(cmd.get("batchSize") or 0))
        cur.last_used = time.monotonic()
        if not more:
            del self._cursors[cid]
        return {"cursor": {"nextBatch": batch, "id": Int64(cid if more else 0), "ns": cur.ns}, "ok": 1.0}

    def _killcursors(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        killed: list[Any] = []
        missing: list[Any] = []
        for cid in cmd.get("cursors", []):
            (killed if self._cursors.pop(int(cid), None) is not None else missing).append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [],
                "ok": 1.0}
