"""MongoDB commands executed over mongomock, one at a time, with their effects journaled.

:meth:`Backend.execute` runs one command under the backend's single lock (so every command, including
FireWorks' findAndModify reservation, is atomic for all connected processes), collects the command's
effects from :mod:`pilot.launchpad.store` and appends them to the journal before the lock is released.
The caller then waits for that journal record to be durable before it sends the reply.

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
import threading
import time
from collections.abc import Callable
from typing import Any

import bson
import mongomock
import pymongo.errors

from pilot.launchpad.admin import MAX_WIRE_VERSION, SERVER_VERSION, AdminCommands
from pilot.launchpad.commands import (
    BATCH_BYTES,
    CODE_NAMES,
    CURSOR_TIMEOUT_S,
    CommandError,
    CommandStats,
    Handler,
    error_reply,
    session_key,
)
from pilot.launchpad.reads import ReadCommands
from pilot.launchpad.schema import SchemaCommands
from pilot.launchpad.store import doc_key
from pilot.launchpad.users import authorize
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


#: Commands that read no data and change nothing: answered without taking the lock.
_LOCK_FREE = frozenset({"hello", "ismaster", "ping", "buildinfo", "getparameter", "getcmdlineopts", "hostinfo",
                        "whatsmyuri", "getlog", "connectionstatus", "serverstatus", "getfreemonitoringstatus",
                        "logout", "endsessions", "getlasterror", "saslstart", "authenticate", "saslcontinue"})


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
        self.lock = threading.RLock()
        self.journal_append: Callable[[list[dict[str, Any]]], int] | None = None
        self.journal_seq: Callable[[], int] = lambda: 0
        self.closing = False
        self.failure: str | None = None
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
        with self.lock:
            if self.failure:
                return error_reply(self.failure, 1), 0
            if self.closing:
                return error_reply("the embedded LaunchPad server is shutting down", 91), 0
            denied = authorize(self.principal(conn_id), lname, name, db, cmd)
            if denied is not None:
                self.stats.add(name, time.perf_counter() - t0)
                self.stats.errors += 1
                return denied, 0
            try:
                if handler is None:
                    raise CommandError(
                        f"no such command: '{name}' (the embedded LaunchPad server implements the commands "
                        "FireWorks and pymongo use; for anything else use MongoDB)", 59)
                me = self.principal(conn_id)
                self._current_conn, self._current_session = conn_id, session
                self._current_user = me.key if me is not None else None
                reply = handler(db, name, cmd, seqs, conn_id)
            except CommandError as exc:
                reply = error_reply(str(exc), exc.code)
            except pymongo.errors.DuplicateKeyError as exc:
                reply = error_reply(str(exc), 11000)
            except pymongo.errors.OperationFailure as exc:
                reply = error_reply(str(exc), exc.code or 2)
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
            seq = self._journal_effects()
            self.stats.add(name, time.perf_counter() - t0)
            if reply.get("ok") != 1.0:
                self.stats.errors += 1
        return reply, seq

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
        with self.lock:
            n = self.drop_connection_cursors(conn_id)
        self.forget_connection(conn_id)
        if n:
            log.debug("connection %d closed: discarded its %d open cursor(s)", conn_id, n)

    # --------------------------------------------------------------------------- snapshot/restore
    def export(self) -> list[dict[str, Any]]:
        """Everything as ``{"db", "c", "indexes", "docs": [raw bytes]}`` (call with the lock held)."""
        out = []
        for dstore in self.store.database_stores():
            for cs in dstore.collection_stores():
                out.append({"db": dstore.name, "c": cs.name, "indexes": dict(cs.indexes),
                            "docs": [bson.encode(d, codec_options=CODEC) for d in cs.raw_documents()]})
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
            doc = op["doc"]
            cs[doc_key(doc["_id"])] = doc
        elif kind == "puts":
            for doc in op["docs"]:
                cs[doc_key(doc["_id"])] = doc
        elif kind == "del":
            key = doc_key(op["id"])
            if key in cs._documents:
                del cs[key]
        elif kind == "create":
            if not cs.is_created:
                cs.create()
        elif kind == "drop":
            cs.drop()
        elif kind == "index":
            spec = dict(op["spec"])
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
