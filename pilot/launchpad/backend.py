"""MongoDB commands executed over mongomock, one at a time, with their effects journaled.

:meth:`Backend.execute` runs one command under the backend's single lock (so every command, including
FireWorks' findAndModify reservation, is atomic for all connected processes), collects the command's
effects from :mod:`pilot.launchpad.store` and appends them to the journal before the lock is released.
The caller then waits for that journal record to be durable before it sends the reply.

Write commands resolve their target documents themselves (through the hash indexes), announce them as
touched, and apply each change by ``_id`` through mongomock's own update/replace code, so the journal
holds exact post-images and the indexes stay exact.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bson
import mongomock
import pymongo.errors
from bson import Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from mongomock import aggregate as mm_aggregate
from mongomock import filtering

from pilot.launchpad.store import TrackedCollectionStore, TrackedServerStore, Tracker, doc_key, install_planner
from pilot.launchpad.wire import CODEC, MAX_BSON_SIZE, MAX_MESSAGE_SIZE

log = logging.getLogger(__name__)

#: The MongoDB version and wire version we present (6.0: OP_MSG, hello, the commands below).
SERVER_VERSION = "6.0.0"
MAX_WIRE_VERSION = 17
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

#: Fields of a command that carry session/transport metadata, not arguments.
_GENERIC_FIELDS = ("$db", "lsid", "$readPreference", "$clusterTime", "txnNumber", "writeConcern", "readConcern",
                   "apiVersion", "apiStrict", "apiDeprecationErrors", "maxTimeMS", "comment", "$audit",
                   "autocommit", "startTransaction", "$client", "bypassDocumentValidation")


#: Commands that read no data and change nothing: answered without taking the lock.
_LOCK_FREE = frozenset({"hello", "ismaster", "ping", "buildinfo", "getparameter", "getcmdlineopts", "hostinfo",
                        "whatsmyuri", "getlog", "connectionstatus", "serverstatus", "getfreemonitoringstatus",
                        "logout", "endsessions", "getlasterror", "saslstart", "authenticate", "saslcontinue"})


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


def _sort_docs(docs: list[dict[str, Any]], sort: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Sort like mongomock's cursor does (stable sorts from the last key to the first)."""
    if not sort:
        return docs
    for key, direction in reversed(list(sort.items())):
        if key == "$natural":
            if direction < 0:
                docs = list(reversed(docs))
            continue
        if key.startswith("$") or isinstance(direction, dict):
            raise CommandError(f"sorting by {key!r} is not supported by the embedded server", 115)
        docs = sorted(docs, key=lambda d, k=key: filtering.resolve_sort_key(k, d), reverse=direction < 0)
    return docs


class _NoFastKey(Exception):
    """A sort value outside the simple cases: sort with mongomock's general comparison instead."""


_NUMBERS = (int, float, Int64)


def _fast_key(doc: dict[str, Any], path: list[str]) -> tuple[Any, ...]:
    """A sort key for ``path`` in BSON comparison order for the common types.

    Order (MongoDB manual, "Comparison/Sort Order"): null (and missing) < numbers < strings < ObjectId <
    booleans < dates. Arrays, sub-documents and other types raise :class:`_NoFastKey`.
    """
    v: Any = doc
    for part in path:
        if type(v) is dict:
            if part not in v:
                return (1, 0)
            v = v[part]
        elif isinstance(v, list):
            raise _NoFastKey
        else:
            return (1, 0)
    t = type(v)
    if v is None:
        return (1, 0)
    if t is bool:
        return (8, v)
    if t in _NUMBERS:
        if t is float and math.isnan(v):
            raise _NoFastKey
        return (2, v)
    if t is str:
        return (3, v)
    if t is ObjectId:
        return (7, v)
    if t is datetime.datetime:
        return (9, v)
    raise _NoFastKey


def _fast_sort(docs: list[dict[str, Any]], sort: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Sort with C-level tuple keys (stable, last key first); None when a value needs the general comparison."""
    fields = list(sort.items())
    if not fields or any(k.startswith("$") or type(d) not in (int, float, Int64) for k, d in fields):
        return None
    try:
        for key, direction in reversed(fields):
            path = key.split(".")
            docs = sorted(docs, key=lambda d, p=path: _fast_key(d, p), reverse=direction < 0)
    except _NoFastKey:
        return None
    return docs


def _is_operator_update(u: Any) -> bool:
    return isinstance(u, dict) and bool(u) and all(isinstance(k, str) and k.startswith("$") for k in u)


class Backend:
    """The database: a mongomock client over tracked stores, and the command implementations.

    Parameters
    ----------
    append:
        Called under the lock with the effect ops of each command that changed something; returns the
        journal sequence number to wait for (None when running without a journal, e.g. during restore).
    """

    def __init__(self) -> None:
        install_planner()
        self.lock = threading.RLock()
        self.tracker = Tracker()
        self.store = TrackedServerStore(self.tracker)
        self.client = mongomock.MongoClient(_store=self.store)
        self.journal_append: Callable[[list[dict[str, Any]]], int] | None = None
        self.journal_seq: Callable[[], int] = lambda: 0
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        self.closing = False
        self.failure: str | None = None
        self.stats = CommandStats()
        self.started = time.time()
        self._cursors: dict[int, _Cursor] = {}
        self._cursor_ids = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)
        self._last_cursor_sweep = time.monotonic()
        self._colls: dict[tuple[str, str], mongomock.Collection] = {}
        self._handlers: dict[str, Callable[[str, str, dict[str, Any], dict[str, list[Any]], int], dict[str, Any]]] = {
            "hello": self._hello, "ismaster": self._hello, "ping": self._ok, "buildinfo": self._buildinfo,
            "getparameter": self._ok, "getcmdlineopts": self._cmdline, "hostinfo": self._hostinfo,
            "whatsmyuri": self._ok, "getlog": self._getlog, "connectionstatus": self._connstatus,
            "serverstatus": self._serverstatus, "getfreemonitoringstatus": self._ok, "logout": self._ok,
            "endsessions": self._ok, "getlasterror": self._getlasterror, "saslstart": self._auth,
            "authenticate": self._auth, "saslcontinue": self._auth, "pilotstats": self._pilotstats,
            "killcursors": self._killcursors, "getmore": self._getmore, "listdatabases": self._listdatabases,
            "listcollections": self._listcollections, "dbstats": self._dbstats, "collstats": self._collstats,
            "find": self._find, "count": self._count, "distinct": self._distinct, "aggregate": self._aggregate,
            "insert": self._insert, "update": self._update, "delete": self._delete,
            "findandmodify": self._findandmodify, "create": self._create, "drop": self._drop,
            "dropdatabase": self._dropdatabase, "createindexes": self._createindexes,
            "dropindexes": self._dropindexes, "deleteindexes": self._dropindexes, "listindexes": self._listindexes,
            "renamecollection": self._renamecollection,
        }

    # ----------------------------------------------------------------------------------- plumbing
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

    def execute(self, db: str, cmd: dict[str, Any], seqs: dict[str, list[Any]], conn_id: int,
                peer: str = "") -> tuple[dict[str, Any], int]:
        """Run one command atomically; returns its reply and the journal sequence to wait for."""
        if not cmd:
            return error_reply("empty command", 9), 0
        name = next(iter(cmd))
        lname = name.lower()
        for k in _GENERIC_FIELDS:
            cmd.pop(k, None)
        handler = self._handlers.get(lname)
        t0 = time.perf_counter()
        if lname in _LOCK_FREE:
            # Handshakes and pings never wait for a long command: a driver whose heartbeat times out
            # declares the server down and cancels its operations.
            assert handler is not None
            try:
                reply = handler(db, name, cmd, seqs, conn_id)
            except CommandError as exc:
                reply = error_reply(str(exc), exc.code)
            self.stats.add(name, time.perf_counter() - t0)
            return reply, 0
        with self.lock:
            if self.failure:
                return error_reply(self.failure, 1), 0
            if self.closing:
                return error_reply("the embedded LaunchPad server is shutting down", 91), 0
            try:
                if handler is None:
                    raise CommandError(
                        f"no such command: '{name}' (the embedded LaunchPad server implements the commands "
                        "FireWorks and pymongo use; for anything else use MongoDB)", 59)
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
                                    f"{mongomock.__version__}): {exc}. Use MongoDB for this.", 115)
            except (ValueError, TypeError, KeyError) as exc:
                reply = error_reply(f"{name}: {type(exc).__name__}: {exc}", 2)
            except Exception as exc:  # an error reply, never a dropped socket
                log.exception("command %r from %s failed inside the embedded server", name, peer)
                reply = error_reply(f"internal error of the embedded LaunchPad server in {name}: "
                                    f"{type(exc).__name__}: {exc}", 1)
            ops = self.tracker.collect()
            if ops and self.journal_append is not None:
                seq = self.journal_append(ops)
            else:
                seq = self.journal_seq()
            self.stats.add(name, time.perf_counter() - t0)
            if reply.get("ok") != 1.0:
                self.stats.errors += 1
        return reply, seq

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

    def _getmore(self, db, name, cmd, seqs, conn):
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

    def _killcursors(self, db, name, cmd, seqs, conn):
        killed, missing = [], []
        for cid in cmd.get("cursors", []):
            (killed if self._cursors.pop(int(cid), None) is not None else missing).append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [],
                "ok": 1.0}

    # ------------------------------------------------------------------------- handshake, admin
    def _ok(self, db, name, cmd, seqs, conn):
        return {"ok": 1.0}

    def _hello(self, db, name, cmd, seqs, conn):
        return {"helloOk": True, "ismaster": True, "isWritablePrimary": True, "maxBsonObjectSize": MAX_BSON_SIZE,
                "maxMessageSizeBytes": MAX_MESSAGE_SIZE, "maxWriteBatchSize": 100000,
                "localTime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
                "logicalSessionTimeoutMinutes": 30, "connectionId": conn, "minWireVersion": 0,
                "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False, "ok": 1.0}

    def _buildinfo(self, db, name, cmd, seqs, conn):
        return {"version": SERVER_VERSION, "versionArray": [6, 0, 0, 0], "gitVersion": "pilot-embedded",
                "bits": 64, "maxBsonObjectSize": MAX_BSON_SIZE, "storageEngines": ["pilot-journal"],
                "pilotEmbedded": True, "ok": 1.0}

    def _cmdline(self, db, name, cmd, seqs, conn):
        return {"argv": ["pilot", "launchpad", "serve"], "parsed": {}, "ok": 1.0}

    def _hostinfo(self, db, name, cmd, seqs, conn):
        return {"system": {"hostname": os.uname().nodename, "numCores": os.cpu_count()}, "os": {}, "extra": {},
                "ok": 1.0}

    def _getlog(self, db, name, cmd, seqs, conn):
        return {"names": [], "log": [], "totalLinesWritten": 0, "ok": 1.0}

    def _connstatus(self, db, name, cmd, seqs, conn):
        return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}

    def _serverstatus(self, db, name, cmd, seqs, conn):
        return {"host": os.uname().nodename, "version": SERVER_VERSION, "process": "pilot-launchpad-server",
                "pid": Int64(os.getpid()), "uptime": time.time() - self.started,
                "localTime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), "ok": 1.0}

    def _getlasterror(self, db, name, cmd, seqs, conn):
        return {"err": None, "n": 0, "ok": 1.0}

    def _auth(self, db, name, cmd, seqs, conn):
        raise CommandError("the embedded LaunchPad server has no users and no authentication: remove username/"
                           "password from the LaunchPad file (it only listens on loopback)", 18)

    def _pilotstats(self, db, name, cmd, seqs, conn):
        ndocs = sum(len(c._documents) for d in self.store.database_stores() for c in d.collection_stores())
        return {"uptime": time.time() - self.started, "commands": dict(self.stats.count),
                "commandSeconds": dict(self.stats.seconds), "errors": self.stats.errors,
                "openCursors": len(self._cursors), "documents": ndocs, **self.extra_stats(), "ok": 1.0}

    def _listdatabases(self, db, name, cmd, seqs, conn):
        dbs = []
        for dstore in self.store.database_stores():
            colls = dstore.collection_stores()
            if colls:
                dbs.append({"name": dstore.name, "sizeOnDisk": 0, "empty": False})
        flt = cmd.get("filter")
        if flt:
            dbs = [d for d in dbs if filtering.filter_applies(flt, d)]
        if cmd.get("nameOnly"):
            dbs = [{"name": d["name"]} for d in dbs]
        return {"databases": dbs, "totalSize": 0, "ok": 1.0}

    def _listcollections(self, db, name, cmd, seqs, conn):
        docs = []
        for cs in self.store[db].collection_stores():
            docs.append({"name": cs.name, "type": "collection", "options": {}, "info": {"readOnly": False},
                         "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}})
        flt = cmd.get("filter")
        if flt:
            docs = [d for d in docs if filtering.filter_applies(flt, d)]
        if cmd.get("nameOnly"):
            docs = [{"name": d["name"], "type": d["type"]} for d in docs]
        return self._cursor_reply(f"{db}.$cmd.listCollections", docs, (cmd.get("cursor") or {}).get("batchSize"))

    def _dbstats(self, db, name, cmd, seqs, conn):
        colls = self.store[db].collection_stores()
        return {"db": db, "collections": len(colls), "views": 0,
                "objects": sum(len(c._documents) for c in colls), "dataSize": 0.0, "storageSize": 0.0,
                "indexes": sum(len(c.indexes) + 1 for c in colls), "indexSize": 0.0, "ok": 1.0}

    def _collstats(self, db, name, cmd, seqs, conn):
        cs = self.cstore(db, cmd[name])
        if not cs.is_created:
            raise CommandError(f"Collection [{db}.{cmd[name]}] not found.", 26)
        return {"ns": f"{db}.{cmd[name]}", "count": len(cs._documents), "size": 0, "storageSize": 0,
                "nindexes": len(cs.indexes) + 1, "ok": 1.0}

    # --------------------------------------------------------------------------------- reads
    def _find(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        kw: dict[str, Any] = {}
        if cmd.get("sort"):
            kw["sort"] = list(cmd["sort"].items())
        if cmd.get("skip"):
            kw["skip"] = int(cmd["skip"])
        limit = int(cmd.get("limit") or 0)
        if limit:
            kw["limit"] = abs(limit)
        for unsupported in ("collation", "min", "max", "tailable", "awaitData"):
            if cmd.get(unsupported):
                raise CommandError(f"find with {unsupported!r} is not supported by the embedded server", 115)
        projection = cmd.get("projection") or None
        docs = coll.find(cmd.get("filter") or {}, projection, **kw)
        return self._cursor_reply(f"{db}.{cmd[name]}", docs, int(cmd.get("batchSize") or 0),
                                  single=bool(cmd.get("singleBatch")) or limit < 0)

    def _count(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        q = cmd.get("query") or {}
        if q:
            n = sum(1 for _ in coll._iter_documents(q))
        else:
            n = len(self.cstore(db, cmd[name])._documents)
        n = max(0, n - int(cmd.get("skip") or 0))
        if cmd.get("limit"):
            n = min(n, abs(int(cmd["limit"])))
        return {"n": n, "ok": 1.0}

    def _distinct(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        return {"values": coll.distinct(cmd["key"], cmd.get("query") or {}), "ok": 1.0}

    def _aggregate(self, db, name, cmd, seqs, conn):
        target = cmd[name]
        if not isinstance(target, str):
            raise CommandError("database-level aggregation (aggregate: 1) is not supported by the embedded "
                               "server", 115)
        pipeline = list(cmd.get("pipeline") or [])
        for stage in pipeline:
            if not isinstance(stage, dict) or len(stage) != 1:
                raise CommandError("each pipeline stage must be a document with exactly one field", 40323)
            op = next(iter(stage))
            if op in ("$out", "$merge"):
                raise CommandError(f"{op} is not supported by the embedded LaunchPad server", 115)
            if op not in mm_aggregate._PIPELINE_HANDLERS:
                raise CommandError(f"Unrecognized pipeline stage name: '{op}'", 40324)
        if cmd.get("explain"):
            raise CommandError("aggregate with explain is not supported by the embedded server", 115)
        coll = self.coll(db, target)
        # Push a leading $match into the (indexed) find instead of copying the whole collection.
        if pipeline and "$match" in pipeline[0]:
            docs = list(coll.find(pipeline[0]["$match"]))
            pipeline = pipeline[1:]
        else:
            docs = list(coll.find())
        out = list(mm_aggregate.process_pipeline(docs, coll.database, pipeline, None)) if pipeline else docs
        return self._cursor_reply(f"{db}.{target}", out, (cmd.get("cursor") or {}).get("batchSize"))

    def _listindexes(self, db, name, cmd, seqs, conn):
        cs = self.cstore(db, cmd[name])
        if not cs.is_created:
            raise CommandError(f"ns does not exist: {db}.{cmd[name]}", 26)
        docs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        for iname, spec in cs.indexes.items():
            d: dict[str, Any] = {"v": 2, "key": bson.SON([(k, v) for k, v in spec["key"]]), "name": iname}
            for opt in ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression"):
                if opt in spec:
                    d[opt] = spec[opt]
            docs.append(d)
        return self._cursor_reply(f"{db}.{cmd[name]}", docs, (cmd.get("cursor") or {}).get("batchSize"))

    # -------------------------------------------------------------------------------- writes
    def _targets(self, coll: mongomock.Collection, q: dict[str, Any], sort: dict[str, Any] | None,
                 limit: int) -> list[dict[str, Any]]:
        """The stored documents a write applies to (live references), in sort/natural order."""
        if sort:
            # Sort the candidates first, then test the filter in that order only until `limit` match:
            # FireWorks' reservation (findAndModify, sort by priority and creation) then checks a handful of
            # documents instead of every READY one.
            cs = coll._store
            cands = cs.candidates(q) if isinstance(cs, TrackedCollectionStore) else None
            if cands is None:
                cands = list(cs.raw_documents()) if isinstance(cs, TrackedCollectionStore) else None
            ordered = _fast_sort(cands, sort) if cands is not None else None
            if ordered is not None:
                if not ordered:
                    filtering.filter_applies(q, {})  # validate the filter like mongomock does
                out = []
                for d in ordered:
                    if filtering.filter_applies(q, d):
                        out.append(d)
                        if limit and len(out) >= limit:
                            break
                return out
            docs = _sort_docs(list(coll._iter_documents(q)), sort)
            return docs[:limit] if limit else docs
        it = coll._iter_documents(q)
        if limit:
            return list(itertools.islice(it, limit))
        return list(it)

    @staticmethod
    def _by_id(q: dict[str, Any], _id: Any) -> dict[str, Any]:
        """``q`` narrowed to one document, keeping q's fields for the positional ``$`` operator."""
        if "_id" in q:
            return {"$and": [{"_id": _id}, q]}
        spec = dict(q)
        spec["_id"] = _id
        return spec

    def _apply_update(self, coll: mongomock.Collection, cs: TrackedCollectionStore, q: dict[str, Any],
                      doc: dict[str, Any], u: Any, array_filters: Any) -> int:
        """Apply ``u`` to one stored document; returns modified count."""
        _id = doc["_id"]
        key = doc_key(_id)
        cs.touch(key)
        spec = self._by_id(q, _id)
        try:
            if isinstance(u, list) or _is_operator_update(u):
                kw = {"array_filters": array_filters} if array_filters else {}
                return coll.update_one(spec, u, **kw).modified_count
            return coll.replace_one(spec, u).modified_count
        finally:
            cs.refresh(key)

    def _upsert(self, coll: mongomock.Collection, q: dict[str, Any], u: Any, array_filters: Any) -> Any:
        if isinstance(u, list) or _is_operator_update(u):
            kw = {"array_filters": array_filters} if array_filters else {}
            return coll.update_one(q, u, upsert=True, **kw).upserted_id
        return coll.replace_one(q, u, upsert=True).upserted_id

    @staticmethod
    def _write_error(index: int, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, pymongo.errors.DuplicateKeyError):
            code = 11000
        elif isinstance(exc, pymongo.errors.OperationFailure):
            code = exc.code or 2
        elif isinstance(exc, CommandError):
            code = exc.code
        else:
            code = 2
        return {"index": index, "code": code, "errmsg": str(exc) or type(exc).__name__}

    _WRITE_ERRORS = (pymongo.errors.OperationFailure, CommandError, ValueError, TypeError, KeyError)

    def _insert(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        docs = list(cmd.get("documents") or []) + list(seqs.get("documents", []))
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        for i, d in enumerate(docs):
            if "_id" not in d:
                d = {"_id": ObjectId(), **d}
            try:
                coll.insert_one(d)
                n += 1
            except self._WRITE_ERRORS as exc:
                errors.append(self._write_error(i, exc))
                if ordered:
                    break
        out: dict[str, Any] = {"n": n, "ok": 1.0}
        if errors:
            out["writeErrors"] = errors
        return out

    def _update(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        cs = self.cstore(db, cmd[name])
        specs = list(cmd.get("updates") or []) + list(seqs.get("updates", []))
        ordered = cmd.get("ordered", True)
        n = nmod = 0
        upserted, errors = [], []
        for i, s in enumerate(specs):
            try:
                if s.get("collation"):
                    raise CommandError("update with collation is not supported by the embedded server", 115)
                q, u = s.get("q") or {}, s.get("u")
                if u is None:
                    raise CommandError("update spec without 'u'", 9)
                targets = self._targets(coll, q, None, 0 if s.get("multi") else 1)
                if s.get("multi") and not (isinstance(u, list) or _is_operator_update(u)):
                    raise CommandError("multi update is not supported for replacement-style update", 9)
                if not targets:
                    if s.get("upsert"):
                        upserted.append({"index": i, "_id": self._upsert(coll, q, u, s.get("arrayFilters"))})
                        n += 1
                    continue
                for doc in targets:
                    nmod += self._apply_update(coll, cs, q, doc, u, s.get("arrayFilters"))
                    n += 1
            except self._WRITE_ERRORS as exc:
                errors.append(self._write_error(i, exc))
                if ordered:
                    break
        out: dict[str, Any] = {"n": n, "nModified": nmod, "ok": 1.0}
        if upserted:
            out["upserted"] = upserted
        if errors:
            out["writeErrors"] = errors
        return out

    def _delete(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        cs = self.cstore(db, cmd[name])
        specs = list(cmd.get("deletes") or []) + list(seqs.get("deletes", []))
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        for i, s in enumerate(specs):
            try:
                if s.get("collation"):
                    raise CommandError("delete with collation is not supported by the embedded server", 115)
                limit = int(s.get("limit") or 0)
                for doc in self._targets(coll, s.get("q") or {}, None, 1 if limit == 1 else 0):
                    del cs[doc_key(doc["_id"])]
                    n += 1
            except self._WRITE_ERRORS as exc:
                errors.append(self._write_error(i, exc))
                if ordered:
                    break
        out: dict[str, Any] = {"n": n, "ok": 1.0}
        if errors:
            out["writeErrors"] = errors
        return out

    def _findandmodify(self, db, name, cmd, seqs, conn):
        coll = self.coll(db, cmd[name])
        cs = self.cstore(db, cmd[name])
        q = cmd.get("query") or {}
        fields = cmd.get("fields") or None
        remove, u, new, upsert = bool(cmd.get("remove")), cmd.get("update"), bool(cmd.get("new")), \
            bool(cmd.get("upsert"))
        if cmd.get("collation"):
            raise CommandError("findAndModify with collation is not supported by the embedded server", 115)
        if remove and (u is not None or new or upsert):
            raise CommandError("remove cannot be combined with update, new or upsert", 9)
        if not remove and u is None:
            raise CommandError("Either an update or remove=true must be specified", 9)
        targets = self._targets(coll, q, cmd.get("sort"), 1)
        if targets:
            doc = targets[0]
            _id = doc["_id"]
            before = coll.find_one({"_id": _id}, fields) if not new else None
            if remove:
                del cs[doc_key(_id)]
                return {"lastErrorObject": {"n": 1}, "value": before, "ok": 1.0}
            self._apply_update(coll, cs, q, doc, u, cmd.get("arrayFilters"))
            value = coll.find_one({"_id": _id}, fields) if new else before
            return {"lastErrorObject": {"n": 1, "updatedExisting": True}, "value": value, "ok": 1.0}
        if remove or not upsert:
            return {"lastErrorObject": {"n": 0, "updatedExisting": False} if not remove else {"n": 0},
                    "value": None, "ok": 1.0}
        up_id = self._upsert(coll, q, u, cmd.get("arrayFilters"))
        value = coll.find_one({"_id": up_id}, fields) if new else None
        return {"lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": up_id}, "value": value,
                "ok": 1.0}

    # ---------------------------------------------------------------------- collections, indexes
    def _create(self, db, name, cmd, seqs, conn):
        cname = cmd[name]
        self.coll(db, cname)
        extra = {k for k, v in cmd.items() if k != name and v}
        if extra:
            raise CommandError(f"create with options {sorted(extra)} is not supported by the embedded server",
                               115)
        if self.cstore(db, cname).is_created:
            raise CommandError(f"Collection {db}.{cname} already exists.", 48)
        self.client[db].create_collection(cname)
        return {"ok": 1.0}

    def _drop(self, db, name, cmd, seqs, conn):
        cname = cmd[name]
        cs = self.cstore(db, cname)
        if not cs.is_created:
            raise CommandError("ns not found", 26)
        nidx = len(cs.indexes) + 1
        cs.drop()
        self._colls.pop((db, cname), None)
        return {"ns": f"{db}.{cname}", "nIndexesWas": nidx, "ok": 1.0}

    def _dropdatabase(self, db, name, cmd, seqs, conn):
        for cs in self.store[db].collection_stores():
            cs.drop()
        return {"dropped": db, "ok": 1.0}

    def _createindexes(self, db, name, cmd, seqs, conn):
        cname = cmd[name]
        coll = self.coll(db, cname)
        cs = self.cstore(db, cname)
        created_coll = not cs.is_created
        before = len(cs.indexes) + 1
        for spec in cmd.get("indexes") or []:
            key = spec.get("key")
            if not isinstance(key, dict) or not key:
                raise CommandError(f"index spec without a key: {spec}", 67)
            unknown = set(spec) - {"key", "name", "unique", "sparse", "background", "expireAfterSeconds",
                                   "partialFilterExpression", "v"}
            if unknown:
                raise CommandError(f"index options {sorted(unknown)} are not supported by the embedded server",
                                   115)
            kw = {k: spec[k] for k in ("name", "unique", "sparse", "expireAfterSeconds", "partialFilterExpression")
                  if k in spec}
            existing = cs.indexes.get(spec.get("name", ""))
            if existing is not None and [tuple(x) for x in existing["key"]] == list(key.items()):
                continue  # same name and key: MongoDB treats this as a no-op
            coll.create_index(list(key.items()), **kw)
        if created_coll and not cs.is_created:
            cs.create()
        return {"numIndexesBefore": before, "numIndexesAfter": len(cs.indexes) + 1,
                "createdCollectionAutomatically": created_coll, "ok": 1.0}

    def _dropindexes(self, db, name, cmd, seqs, conn):
        cname = cmd[name]
        cs = self.cstore(db, cname)
        if not cs.is_created:
            raise CommandError(f"ns not found {db}.{cname}", 26)
        before = len(cs.indexes) + 1
        idx = cmd.get("index")
        names = idx if isinstance(idx, list) else [idx]
        for one in names:
            if one == "*":
                cs.indexes = {}
                continue
            if isinstance(one, dict):
                match = [n for n, s in cs.indexes.items() if [tuple(x) for x in s["key"]] == list(one.items())]
                if not match:
                    raise CommandError(f"can't find index with key: {one}", 27)
                one = match[0]
            if one == "_id_":
                raise CommandError("cannot drop _id index", 72)
            if one not in cs.indexes:
                raise CommandError(f"index not found with name [{one}]", 27)
            cs.drop_index(one)
        return {"nIndexesWas": before, "ok": 1.0}

    def _renamecollection(self, db, name, cmd, seqs, conn):
        src, dst = str(cmd[name]), str(cmd.get("to") or "")
        sdb, _, sc = src.partition(".")
        ddb, _, dc = dst.partition(".")
        if sdb != ddb:
            raise CommandError("renaming a collection across databases is not supported by the embedded server",
                               115)
        self.coll(sdb, sc)
        self.coll(ddb, dc)
        self.client[sdb].rename_collection(sc, dc, dropTarget=bool(cmd.get("dropTarget")))
        self._colls.pop((sdb, sc), None)
        self._colls.pop((ddb, dc), None)
        return {"ok": 1.0}

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
