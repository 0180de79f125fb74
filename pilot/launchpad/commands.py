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

import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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
#: Documents in a first batch when the client names no batchSize (MongoDB's default: 101).
FIRST_BATCH_DOCS = 101
#: Cursors idle for longer than this are discarded (MongoDB's default is 10 minutes too); the environment
#: variable PILOT_LAUNCHPAD_CURSOR_TIMEOUT_S of the server process sets another value (seconds).
CURSOR_TIMEOUT_S = float(os.environ.get("PILOT_LAUNCHPAD_CURSOR_TIMEOUT_S") or 600.0)

#: https://github.com/mongodb/mongo/blob/master/src/mongo/base/error_codes.yml
CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 11: "UserNotFound", 13: "Unauthorized",
    14: "TypeMismatch", 17: "ProtocolError", 18: "AuthenticationFailed", 26: "NamespaceNotFound",
    27: "IndexNotFound", 31: "RoleNotFound", 43: "CursorNotFound", 48: "NamespaceExists", 59: "CommandNotFound",
    72: "InvalidOptions", 73: "InvalidNamespace", 85: "IndexOptionsConflict", 91: "ShutdownInProgress",
    115: "CommandNotSupported", 175: "QueryPlanKilled", 334: "MechanismUnavailable", 11000: "DuplicateKey",
    14031: "OutOfDiskSpace", 40324: "Location40324",
}


class CommandError(Exception):
    """A command failed; becomes ``{"ok": 0, "errmsg", "code", "codeName"}``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def error_reply(message: str, code: int) -> dict[str, Any]:
    return {"ok": 0.0, "errmsg": message, "code": code, "codeName": CODE_NAMES.get(code, f"Location{code}")}


def session_key(lsid: Any) -> bytes | None:
    """The logical session id a command carries (``lsid: {id: UUID}``) as bytes; None without one."""
    sid = lsid.get("id") if isinstance(lsid, dict) else None
    if isinstance(sid, uuid.UUID):
        return sid.bytes
    if isinstance(sid, bytes):  # bson.Binary (subtype 4) is a bytes subclass
        return bytes(sid)
    return None


@dataclass(frozen=True)
class CursorOwner:
    """Who opened a cursor, and so who may continue or kill it: the authenticated user, and its session or
    connection.

    A cursor belongs to the user that opened it (``DB.USER``; None before authentication, which opens none):
    another user never continues it, not even in a session with the same id. Within the user, a cursor opened
    in a logical session belongs to that session, as in MongoDB: drivers send every ``getMore`` of a cursor
    with the session of its ``find`` but over whichever pooled connection is free (pymongo does), so binding
    such a cursor to one connection would break every multi-threaded client. A cursor opened without a
    session belongs to its connection. Anyone else gets exactly MongoDB's answer
    for an unknown cursor (``CursorNotFound``), so a guessed or leaked id tells nothing.
    """

    conn: int
    session: bytes | None = None
    user: str | None = None

    def admits(self, other: CursorOwner) -> bool:
        """May ``other`` (the sender of a getMore/killCursors) use a cursor of this owner?"""
        if other.user != self.user:
            return False
        if self.session is not None:
            return other.session == self.session
        return other.conn == self.conn


@dataclass
class _Cursor:
    """An open cursor: the rest of a result as an iterator of encoded documents, produced batch by batch.

    It holds no copy of the result: ``source`` continues the scan (or the sorted key list) where the last
    batch stopped, and ``pending`` is the one document read ahead to tell whether more follow.
    """

    ns: str
    source: Iterator[bytes]
    owner: CursorOwner
    pending: bytes | None = None
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


def _encoded(docs: Iterable[Any]) -> Iterator[bytes]:
    for d in docs:
        yield d if isinstance(d, bytes) else bson.encode(d, codec_options=CODEC)


def _batch(source: Iterator[bytes], pending: bytes | None, batch_size: int
           ) -> tuple[list[RawBSONDocument], bytes | None]:
    """Up to ``batch_size`` (0: any number) documents from ``pending`` and ``source``, cut at BATCH_BYTES;
    returns the batch and the next document (read ahead; None when the source is exhausted)."""
    out: list[RawBSONDocument] = []
    size = 0
    while not batch_size or len(out) < batch_size:
        raw = pending if pending is not None else next(source, None)
        pending = None
        if raw is None:
            return out, None
        if out and size + len(raw) > BATCH_BYTES:
            return out, raw
        out.append(RawBSONDocument(raw))
        size += len(raw)
    return out, next(source, None)


@dataclass(frozen=True)
class CommandContext:
    """Who sends the command a thread executes: whoever opens, continues or kills a cursor.

    ``conn`` is the connection, ``session`` the logical session id, ``user`` the authenticated ``DB.USER``.
    """

    conn: int = 0
    session: bytes | None = None
    user: str | None = None


NO_CONTEXT = CommandContext()


class CommandBase:
    """The database state the command groups work on, and the cursor plumbing they share.

    Commands run concurrently (readers share the backend's lock), so what identifies the running command's
    sender (connection, session, user) is per thread, and the cursor table has its own small lock.
    """

    def __init__(self) -> None:
        install_planner()
        self.tracker = Tracker()
        self.store = TrackedServerStore(self.tracker)
        self.client: mongomock.MongoClient = mongomock.MongoClient(_store=self.store)
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        self.stats = CommandStats()
        self.started = time.time()
        self.cursor_timeout = CURSOR_TIMEOUT_S
        self._cursors: dict[int, _Cursor] = {}
        self._cursor_lock = threading.Lock()
        self._ctx = threading.local()
        self._last_cursor_sweep = time.monotonic()
        self._colls: dict[tuple[str, str], mongomock.Collection] = {}

    def yield_write(self) -> bool:
        """Between two documents of a multi-document write: let waiting clients run (the backend implements it:
        journal the effects so far, yield the lock). True if others may have run: re-check the next document."""
        return False

    def _context(self) -> CommandContext:
        """Who sent the command this thread executes (the backend sets it before each handler)."""
        ctx: CommandContext = getattr(self._ctx, "current", NO_CONTEXT)
        return ctx

    def set_context(self, ctx: CommandContext) -> None:
        self._ctx.current = ctx

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
    def _cursor_reply(self, ns: str, docs: Iterable[Any], batch_size: int | None = None,
                      single: bool = False, conn: int | None = None) -> dict[str, Any]:
        """The first batch of ``docs`` (dicts or encoded documents, best a lazy iterator); the rest stays behind
        a new cursor of the current command's owner (see CursorOwner), which continues the iterator."""
        source = _encoded(docs)
        size = int(batch_size or 0)
        first, pending = _batch(source, None, size if size else (0 if single else FIRST_BATCH_DOCS))
        cid = 0
        if pending is not None and not single:
            owner = self._owner(self._context().conn if conn is None else conn)
            with self._cursor_lock:
                self._sweep_cursors()
                cid = self._new_cursor_id()
                self._cursors[cid] = _Cursor(ns, source, owner, pending)
        return {"cursor": {"firstBatch": first, "id": Int64(cid), "ns": ns}, "ok": 1.0}

    def _new_cursor_id(self) -> int:
        """A random positive 63-bit id, never 0 (MongoDB's "no cursor"), never one that is open.

        Unpredictable as MongoDB's own (random, positive, non-zero): an id seen or guessed is not a key to the
        documents behind it, and the owner check below answers a foreign id as an unknown one anyway.
        """
        while True:
            cid = secrets.randbits(63)
            if cid and cid not in self._cursors:
                return cid

    def _owner(self, conn: int) -> CursorOwner:
        ctx = self._context()
        return CursorOwner(conn, ctx.session, ctx.user)

    def _owned_cursor(self, cid: int, conn: int) -> _Cursor | None:
        """The open cursor ``cid`` if the current command's sender may use it; None if unknown or foreign
        (call with the cursor lock held)."""
        cur = self._cursors.get(cid)
        if cur is None or not cur.owner.admits(self._owner(conn)):
            return None
        return cur

    def open_cursors(self) -> int:
        return len(self._cursors)

    def drop_connection_cursors(self, conn: int) -> int:
        """Discard the cursors that belonged to a closed connection; how many.

        Those are the ones it opened outside a session; a session's cursors outlive the connection that
        opened them (the driver continues them over another one), as in MongoDB, until killed or idle.
        """
        with self._cursor_lock:
            gone = [cid for cid, cur in self._cursors.items()
                    if cur.owner.session is None and cur.owner.conn == conn]
            for cid in gone:
                del self._cursors[cid]
        return len(gone)

    def _sweep_cursors(self) -> None:
        """Discard cursors idle for longer than the cursor timeout (call with the cursor lock held)."""
        now = time.monotonic()
        if now - self._last_cursor_sweep < min(60.0, self.cursor_timeout / 4):
            return
        self._last_cursor_sweep = now
        for cid in [c for c, cur in self._cursors.items() if now - cur.last_used > self.cursor_timeout]:
            del self._cursors[cid]

    def _getmore(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cid = int(cmd[name])
        with self._cursor_lock:
            self._sweep_cursors()
            cur = self._owned_cursor(cid, conn)
            if cur is not None:
                del self._cursors[cid]  # in use: a concurrent getMore of the same id finds nothing
        if cur is None:
            # MongoDB's own words for an unknown cursor (CursorManager::pinCursor): exhausted, killed, timed
            # out, never existed and someone else's all look the same.
            raise CommandError(f"cursor id {cid} not found", 43)
        try:
            batch, cur.pending = _batch(cur.source, cur.pending, int(cmd.get("batchSize") or 0))
        except BaseException:
            cur.pending = None
            raise
        more = cur.pending is not None
        if more:
            cur.last_used = time.monotonic()
            with self._cursor_lock:
                self._cursors[cid] = cur
        return {"cursor": {"nextBatch": batch, "id": Int64(cid if more else 0), "ns": cur.ns}, "ok": 1.0}

    def _killcursors(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """MongoDB's reply shape; someone else's cursor is reported not found and stays open."""
        killed: list[Any] = []
        missing: list[Any] = []
        with self._cursor_lock:
            for cid in cmd.get("cursors", []):
                if self._owned_cursor(int(cid), conn) is not None:
                    del self._cursors[int(cid)]
                    killed.append(cid)
                else:
                    missing.append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [],
                "ok": 1.0}
