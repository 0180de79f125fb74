"""MongoDB commands executed over mongomock, one at a time, with their effects journaled.

:meth:`Backend.execute` runs each command under the backend's readers-writer lock
(:mod:`pilot.launchpad.rwlock`): reads (find, count, distinct, aggregate, getMore, listings) share it and run
concurrently, pausing between chunks of a long scan so that waiting writers get in; every other command has it
alone, so each write, including FireWorks' findAndModify reservation, is atomic for all connected processes.
A write's effects are collected from :mod:`pilot.launchpad.store` and appended to the journal before the lock
is released, so the journal order is the execution order. The caller then waits for that journal record (a
read: for every record appended before it) to be durable before it sends the reply.

Write commands resolve their target documents themselves (through the hash indexes), announce them as
touched, and apply each change by ``_id`` through mongomock's own update/replace code, so the journal
holds exact post-images and the indexes stay exact.

The commands themselves live in groups, one module each, mixed into :class:`Backend`:
:mod:`pilot.launchpad.admin` (handshake, statistics, listings), :mod:`pilot.launchpad.reads`,
:mod:`pilot.launchpad.writes`, :mod:`pilot.launchpad.schema` (collections, indexes), all over
:class:`pilot.launchpad.commands.CommandBase` (state, cursors, errors). This module dispatches, takes the
lock and journals; it also snapshots and restores the stores.

Every command is authorized before it is dispatched, the lock-free ones included
(:func:`pilot.launchpad.users.authorize`): before a connection authenticates only the handshake and the login
answer, and a refused command reads and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

import bson
import mongomock
import pymongo.errors
from bson.raw_bson import RawBSONDocument

from pilot.launchpad.admin import MAX_WIRE_VERSION, SERVER_VERSION, AdminCommands
from pilot.launchpad.commands import (
    BATCH_BYTES,
    CODE_NAMES,
    CURSOR_TIMEOUT_S,
    CommandContext,
    CommandError,
    CommandStats,
    Handler,
    error_reply,
    session_key,
)
from pilot.launchpad.planner import ScanKilled
from pilot.launchpad.reads import ReadCommands
from pilot.launchpad.rwlock import RWLock
from pilot.launchpad.schema import SchemaCommands
from pilot.launchpad.store import TrackedCollectionStore, doc_key
from pilot.launchpad.users import WRITES, Principal, authorize
from pilot.launchpad.wire import CODEC
from pilot.launchpad.writes import WriteCommands

__all__ = ["BATCH_BYTES", "CODE_NAMES", "CURSOR_TIMEOUT_S", "MAX_WIRE_VERSION", "SERVER_VERSION", "Backend",
           "CommandError", "CommandStats", "error_reply"]

log = logging.getLogger(__name__)

#: For the "not supported by mongomock X" replies.
_MONGOMOCK_VERSION: str = getattr(mongomock, "__version__", "?")

#: Fields of a command that carry session/transport metadata, not arguments.
_GENERIC_FIELDS = ("$db", "lsid", "$readPreference", "$clusterTime", "txnNumber", "writeConcern", "readConcern",
                   "apiVersion", "apiStrict", "apiDeprecationErrors", "maxTimeMS", "comment", "$audit",
                   "autocommit", "startTransaction", "$client", "bypassDocumentValidation")


#: A multi-document write lets waiting clients in after this many documents (when someone waits).
YIELD_EVERY = 32

#: Commands that only read: they share the lock (run concurrently with each other, never with a write).
_SHARED = frozenset({"find", "count", "distinct", "aggregate", "getmore", "killcursors", "listcollections",
                     "listindexes", "listdatabases", "dbstats", "collstats", "pilotstats"})

#: Commands that read no data and change nothing: answered without taking the lock.
_LOCK_FREE = frozenset({"hello", "ismaster", "ping", "buildinfo", "getparameter", "getcmdlineopts", "hostinfo",
                        "whatsmyuri", "getlog", "connectionstatus", "serverstatus", "getfreemonitoringstatus",
                        "logout", "endsessions", "getlasterror", "saslstart", "authenticate", "saslcontinue"})


#: What is refused while :attr:`Backend.failure` is set: every command that can change data.
REFUSED_WHILE_FAILED = WRITES | {"createuser", "updateuser", "dropuser"}


def _plain(value: Any) -> Any:
    """A sub-document of a record read as RawBSONDocument, as a dict (what mongomock's code expects)."""
    return bson.decode(value.raw, codec_options=CODEC) if isinstance(value, RawBSONDocument) else value


def _restore_doc(cs: TrackedCollectionStore, doc: Any) -> None:
    """Store one restored document as encoded bytes (a RawBSONDocument's own bytes when it is one: records
    read that way restore without ever decoding a document into Python objects but for its index entries)."""
    raw = cast(bytes, doc.raw) if isinstance(doc, RawBSONDocument) else bson.encode(doc, codec_options=CODEC)
    cs.put_raw(doc_key(_plain(doc["_id"])), raw)


class Backend(AdminCommands, ReadCommands, WriteCommands, SchemaCommands):
    """The database: a mongomock client over tracked stores, and the command implementations.

    Parameters
    ----------
    append:
        Called under the lock with the effect ops of each command that changed something; returns the
        journal sequence number to wait for (None when running without a journal, e.g. during restore).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = RWLock()
        self.tracker.pause = self.lock.pause
        self.tracker.is_writing = self.lock.held_exclusive
        self.journal_append: Callable[[list[dict[str, Any]]], int] | None = None
        self.journal_seq: Callable[[], int] = lambda: 0
        self.closing = False
        #: set by the server when it cannot keep writes (disk full, journal failed): writes are refused with this
        #: message and MongoDB's ``failure_code`` (14031 OutOfDiskSpace, else 1), reads go on; cleared on resume
        self.failure: str | None = None
        self.failure_code = 1
        self._handlers: dict[str, Handler] = {
            "hello": self._hello, "ismaster": self._hello, "ping": self._ok, "buildinfo": self._buildinfo,
            "getparameter": self._ok, "getcmdlineopts": self._cmdline, "hostinfo": self._hostinfo,
            "whatsmyuri": self._ok, "getlog": self._getlog, "connectionstatus": self._connstatus,
            "serverstatus": self._serverstatus, "getfreemonitoringstatus": self._ok,
            "endsessions": self._ok, "getlasterror": self._getlasterror, "saslstart": self._saslstart,
            "authenticate": self._authenticate, "saslcontinue": self._saslcontinue, "logout": self._logout,
            "createuser": self._createuser, "updateuser": self._updateuser, "dropuser": self._dropuser,
            "usersinfo": self._usersinfo, "pilotstats": self._pilotstats,
            "killcursors": self._killcursors, "getmore": self._getmore, "listdatabases": self._listdatabases,
            "listcollections": self._listcollections, "dbstats": self._dbstats, "collstats": self._collstats,
            "find": self._find, "count": self._count, "distinct": self._distinct, "aggregate": self._aggregate,
            "insert": self._insert, "update": self._update, "delete": self._delete,
            "findandmodify": self._findandmodify, "create": self._create, "drop": self._drop,
            "dropdatabase": self._dropdatabase, "createindexes": self._createindexes,
            "dropindexes": self._dropindexes, "deleteindexes": self._dropindexes, "listindexes": self._listindexes,
            "renamecollection": self._renamecollection,
        }

    def execute(self, db: str, cmd: dict[str, Any], seqs: dict[str, list[Any]], conn_id: int,
                peer: str = "") -> tuple[dict[str, Any], int]:
        """Run one command atomically; returns its reply and the journal sequence to wait for."""
        if not cmd:
            return error_reply("empty command", 9), 0
        name = next(iter(cmd))
        lname = name.lower()
        session = session_key(cmd.get("lsid"))
        for k in _GENERIC_FIELDS:
            cmd.pop(k, None)
        handler = self._handlers.get(lname)
        t0 = time.perf_counter()
        self.conn_auth(conn_id, peer)
        if lname in _LOCK_FREE:
            # Handshakes and pings never wait for a long command: a driver whose heartbeat times out
            # declares the server down and cancels its operations.
            assert handler is not None
            try:
                reply = authorize(self.principal(conn_id), lname, name, db, cmd) or handler(db, name, cmd, seqs,
                                                                                            conn_id)
            except CommandError as exc:
                reply = error_reply(str(exc), exc.code)
            self.stats.add(name, time.perf_counter() - t0)
            return reply, 0
        shared = lname in _SHARED
        me = self.principal(conn_id)  # before the lock: it may take the exclusive side to reload a changed user
        if shared:
            self.lock.acquire_shared()
        else:
            self.lock.acquire()
        try:
            return self._run(handler, db, name, cmd, seqs, conn_id, peer, session, me, t0)
        finally:
            if shared:
                self.lock.release_shared()
            else:
                self.lock.release()

    def _run(self, handler: Handler | None, db: str, name: str, cmd: dict[str, Any], seqs: dict[str, list[Any]],
             conn_id: int, peer: str, session: bytes | None, me: Principal | None, t0: float
             ) -> tuple[dict[str, Any], int]:
        """The part of :meth:`execute` under the lock (shared for reads, exclusive for everything else)."""
        lname = name.lower()
        if self.failure and lname in REFUSED_WHILE_FAILED:
            return error_reply(self.failure, self.failure_code), 0
        if self.closing:
            return error_reply("the embedded LaunchPad server is shutting down", 91), 0
        denied = authorize(me, lname, name, db, cmd)
        if denied is not None:
            self.stats.add(name, time.perf_counter() - t0)
            self.stats.errors += 1
            return denied, 0
        try:
            if handler is None:
                raise CommandError(
                    f"no such command: '{name}' (the embedded LaunchPad server implements the commands "
                    "FireWorks and pymongo use; for anything else use MongoDB)", 59)
            self.set_context(CommandContext(conn_id, session, me.key if me is not None else None))
            reply = handler(db, name, cmd, seqs, conn_id)
        except CommandError as exc:
            reply = error_reply(str(exc), exc.code)
        except pymongo.errors.DuplicateKeyError as exc:
            reply = error_reply(str(exc), 11000)
        except pymongo.errors.OperationFailure as exc:
            reply = error_reply(str(exc), exc.code or 2)
        except ScanKilled as exc:
            reply = error_reply(f"query plan killed: {exc}", 175)
        except pymongo.errors.CollectionInvalid as exc:
            reply = error_reply(str(exc), 48)
        except pymongo.errors.InvalidName as exc:
            reply = error_reply(str(exc), 73)
        except NotImplementedError as exc:
            reply = error_reply(f"{name}: not supported by the embedded LaunchPad server (mongomock "
                                f"{_MONGOMOCK_VERSION}): {exc}. Use MongoDB for this.", 115)
        except (ValueError, TypeError, KeyError) as exc:
            reply = error_reply(f"{name}: {type(exc).__name__}: {exc}", 2)
        except Exception as exc:  # an error reply, never a dropped socket
            log.exception("command %r from %s failed inside the embedded server", name, peer)
            reply = error_reply(f"internal error of the embedded LaunchPad server in {name}: "
                                f"{type(exc).__name__}: {exc}", 1)
        # a read changes nothing; its reply still waits for the writes it may have seen to be durable
        seq = self.journal_seq() if lname in _SHARED else self._journal_effects()
        self.stats.add(name, time.perf_counter() - t0)
        if reply.get("ok") != 1.0:
            self.stats.errors += 1
        return reply, seq

    def yield_write(self) -> bool:
        """Between two documents of a long write, when others wait: journal this command's effects so far (so
        the journal order stays the execution order; the reply waits for the last record, which makes these
        durable too) and let the waiting readers and writers run. Every YIELD_EVERY documents at most."""
        n = getattr(self._ctx, "since_yield", 0) + 1
        self._ctx.since_yield = n
        if n < YIELD_EVERY or not self.lock.contended() or not self.lock.held_exclusive():
            return False
        self._ctx.since_yield = 0
        self._journal_effects()
        self.lock.yield_exclusive()
        return True

    def _journal_effects(self) -> int:
        """Journal what the command just run changed (call with the lock held); the sequence to wait for."""
        ops = self.tracker.collect()
        if not ops:
            return self.journal_seq()
        self.note_ops(ops)
        return self.journal_append(ops) if self.journal_append is not None else self.journal_seq()

    def write_internal(self, change: Callable[[], None]) -> int:
        """Make a change of the server's own (the first admin user) under the lock, journaled like a command's
        effects; returns the journal sequence to wait for."""
        with self.lock:
            try:
                change()
            finally:
                seq = self._journal_effects()
        return seq

    def connection_closed(self, conn_id: int) -> None:
        """The server's hook for a connection that ended: the cursors it owned and its login go with it."""
        n = self.drop_connection_cursors(conn_id)
        self.forget_connection(conn_id)
        if n:
            log.debug("connection %d closed: discarded its %d open cursor(s)", conn_id, n)

    # --------------------------------------------------------------------------- snapshot/restore
    def export(self) -> list[dict[str, Any]]:
        """Everything as ``{"db", "c", "indexes", "docs": [raw bytes]}`` (call with the lock held).

        The documents are the stored bytes themselves (immutable: a write replaces a document's bytes, never
        changes them), so the lists are a point-in-time view that a snapshot can write after the lock is
        released, without a second encoded copy of the database.
        """
        out = []
        for dstore in self.store.database_stores():
            for cs in dstore.collection_stores():
                out.append({"db": dstore.name, "c": cs.name, "indexes": dict(cs.indexes),
                            "docs": cs.raw_documents()})
        return out

    def apply(self, op: dict[str, Any]) -> None:
        """Apply one journal/snapshot op directly to the stores (restore)."""
        kind = op["op"]
        if kind == "dropdb":
            for cs in self.store[op["db"]].collection_stores():
                cs.drop()
            return
        cs = self.store[op["db"]][op["c"]]
        if kind == "put":
            _restore_doc(cs, op["doc"])
        elif kind == "puts":
            for doc in op["docs"]:
                _restore_doc(cs, doc)
        elif kind == "del":
            key = doc_key(_plain(op["id"]))
            if key in cs._documents:
                del cs[key]
        elif kind == "create":
            if not cs.is_created:
                cs.create()
        elif kind == "drop":
            cs.drop()
        elif kind == "index":
            spec = dict(_plain(op["spec"]))
            spec["key"] = [tuple(k) for k in spec["key"]]
            cs.create_index(op["name"], spec)
        elif kind == "dropindex":
            if op["name"] == "*":
                cs.indexes = {}
            elif op["name"] in cs.indexes:
                cs.drop_index(op["name"])
        elif kind == "rename":
            self.store[op["db"]].rename(op["c"], op["to"])
            self._colls.clear()
        else:
            raise ValueError(f"unknown journal op {kind!r}")
