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

import secrets
import threading
import time
import uuid
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
    14: "TypeMismatch", 17: "ProtocolError", 18: "AuthenticationFailed", 26: "NamespaceNotFound",
    27: "IndexNotFound", 31: "RoleNotFound", 43: "CursorNotFound", 48: "NamespaceExists", 59: "CommandNotFound",
    72: "InvalidOptions", 73: "InvalidNamespace", 85: "IndexOptionsConflict", 91: "ShutdownInProgress",
    115: "CommandNotSupported", 334: "MechanismUnavailable", 11000: "DuplicateKey", 40324: "Location40324",
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
    ns: str
    docs: deque[bytes]
    owner: CursorOwner
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
        #: The connection and logical session of the command being executed (the backend sets them under its
        #: lock before each handler): whoever opens, continues or kills a cursor.
        self._current_conn = 0
        self._current_session: bytes | None = None
        #: ... and its authenticated user (``DB.USER``): cursors are bound to it.
        self._current_user: str | None = None
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
                      single: bool = False, conn: int | None = None) -> dict[str, Any]:
        """The first batch; the rest stays behind a new cursor of the current command's owner (see CursorOwner)."""
        raw = deque(bson.encode(d, codec_options=CODEC) for d in docs)
        first, more = _batch(raw, batch_size)
        cid = 0
        if more and not single:
            self._sweep_cursors()
            cid = self._new_cursor_id()
            self._cursors[cid] = _Cursor(ns, raw, self._owner(self._current_conn if conn is None else conn))
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
        return CursorOwner(conn, self._current_session, self._current_user)

    def _owned_cursor(self, cid: int, conn: int) -> _Cursor | None:
        """The open cursor ``cid`` if the current command's sender may use it; None if unknown or foreign."""
        cur = self._cursors.get(cid)
        if cur is None or not cur.owner.admits(self._owner(conn)):
            return None
        return cur

    def drop_connection_cursors(self, conn: int) -> int:
        """Discard the cursors that belonged to a closed connection (call with the lock held); how many.

        Those are the ones it opened outside a session; a session's cursors outlive the connection that
        opened them (the driver continues them over another one), as in MongoDB, until killed or idle.
        """
        gone = [cid for cid, cur in self._cursors.items() if cur.owner.session is None and cur.owner.conn == conn]
        for cid in gone:
            del self._cursors[cid]
        return len(gone)

    def _sweep_cursors(self) -> None:
        now = time.monotonic()
        if now - self._last_cursor_sweep < 60:
            return
        self._last_cursor_sweep = now
        for cid in [c for c, cur in self._cursors.items() if now - cur.last_used > CURSOR_TIMEOUT_S]:
            del self._cursors[cid]

    def _getmore(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cid = int(cmd[name])
        cur = self._owned_cursor(cid, conn)
        if cur is None:
            # MongoDB's own words for an unknown cursor (CursorManager::pinCursor): exhausted, killed, timed
            # out, never existed and someone else's all look the same.
            raise CommandError(f"cursor id {cid} not found", 43)
        batch, more = _batch(cur.docs, int(cmd.get("batchSize") or 0))
        cur.last_used = time.monotonic()
        if not more:
            del self._cursors[cid]
        return {"cursor": {"nextBatch": batch, "id": Int64(cid if more else 0), "ns": cur.ns}, "ok": 1.0}

    def _killcursors(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """MongoDB's reply shape; someone else's cursor is reported not found and stays open."""
        killed: list[Any] = []
        missing: list[Any] = []
        for cid in cmd.get("cursors", []):
            if self._owned_cursor(int(cid), conn) is not None:
                del self._cursors[int(cid)]
                killed.append(cid)
            else:
                missing.append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [],
                "ok": 1.0}
