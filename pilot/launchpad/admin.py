"""Handshake, statistics and listings: the commands drivers send about the server.

Most of these are answered without the backend's lock (see ``_LOCK_FREE`` in :mod:`pilot.launchpad.backend`):
a driver whose heartbeat waits for a long command declares the server down. The handshake carries the start of
the login (``saslSupportedMechs``, ``speculativeAuthenticate``); the login itself, the users and who may run
what are :mod:`pilot.launchpad.users`.
"""

from __future__ import annotations

import datetime
import os
import time

from bson import Int64
from mongomock import filtering

from pilot.launchpad import wire
from pilot.launchpad.commands import Command, CommandError, Reply, Sequences
from pilot.launchpad.scram import MECHANISM
from pilot.launchpad.users import AuthCommands
from pilot.launchpad.wire import MAX_BSON_SIZE

#: The MongoDB version and wire version we present (6.0: OP_MSG, hello, the commands below).
SERVER_VERSION = "6.0.0"
MAX_WIRE_VERSION = 17


class AdminCommands(AuthCommands):
    """hello/isMaster, ping, buildInfo, serverStatus, pilotStats, listDatabases/listCollections, dbStats, ..."""

    # ------------------------------------------------------------------------- handshake, admin
    def _ok(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"ok": 1.0}

    def _hello(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """MongoDB's handshake, with the start of the login when the driver offers it.

        ``saslSupportedMechs: "DB.USER"`` is answered ``["SCRAM-SHA-256"]`` whether or not that user exists (the
        only mechanism there is; the handshake tells nobody which users exist), so drivers pick SCRAM-SHA-256.
        ``speculativeAuthenticate`` (a saslStart inside the hello) is answered, which saves the driver one round
        trip per connection; a failure there is left out and the driver's own saslStart then gets the error.
        """
        reply = self._hello_reply(conn)
        if "saslSupportedMechs" in cmd:
            reply["saslSupportedMechs"] = [MECHANISM]
        if "speculativeAuthenticate" in cmd:
            spec = self.speculative(db, cmd["speculativeAuthenticate"], conn)
            if spec is not None:
                reply["speculativeAuthenticate"] = spec
        return reply

    def _hello_reply(self, conn: int) -> Reply:
        return {"helloOk": True, "ismaster": True, "isWritablePrimary": True, "maxBsonObjectSize": MAX_BSON_SIZE,
                "maxMessageSizeBytes": wire.message_size_limit, "maxWriteBatchSize": 100000,
                "localTime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
                "logicalSessionTimeoutMinutes": 30, "connectionId": conn, "minWireVersion": 0,
                "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False, "ok": 1.0}

    def _buildinfo(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"version": SERVER_VERSION, "versionArray": [6, 0, 0, 0], "gitVersion": "pilot-embedded",
                "bits": 64, "maxBsonObjectSize": MAX_BSON_SIZE, "storageEngines": ["pilot-journal"],
                "pilotEmbedded": True, "ok": 1.0}

    def _cmdline(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"argv": ["pilot", "launchpad", "serve"], "parsed": {}, "ok": 1.0}

    def _hostinfo(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"system": {"hostname": os.uname().nodename, "numCores": os.cpu_count()}, "os": {}, "extra": {},
                "ok": 1.0}

    def _getlog(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"names": [], "log": [], "totalLinesWritten": 0, "ok": 1.0}

    def _connstatus(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """Who this connection is authenticated as, in MongoDB's shape (nobody: empty lists)."""
        me = self.principal(conn)
        users = [{"user": me.user, "db": me.db}] if me is not None else []
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": me.role_docs() if me else []},
                "ok": 1.0}

    def _serverstatus(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"host": os.uname().nodename, "version": SERVER_VERSION, "process": "pilot-launchpad-server",
                "pid": Int64(os.getpid()), "uptime": time.time() - self.started,
                "localTime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), "ok": 1.0}

    def _getlasterror(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return {"err": None, "n": 0, "ok": 1.0}

    def _pilotstats(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        ndocs = sum(len(c._documents) for d in self.store.database_stores() for c in d.collection_stores())
        return {"uptime": time.time() - self.started, "commands": dict(self.stats.count),
                "commandSeconds": dict(self.stats.seconds), "errors": self.stats.errors,
                "openCursors": self.open_cursors(), "documents": ndocs, **self.extra_stats(), "ok": 1.0}

    def _listdatabases(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        dbs = []
        for dstore in self.store.database_stores():
            colls = dstore.collection_stores()
            if colls:
                dbs.append({"name": dstore.name, "sizeOnDisk": 0, "empty": False})
        me = self.principal(conn)
        if me is not None and not me.is_root:  # MongoDB's authorizedDatabases: what the user may read
            dbs = [d for d in dbs if me.can_read(str(d["name"]))]
        flt = cmd.get("filter")
        if flt:
            dbs = [d for d in dbs if filtering.filter_applies(flt, d)]
        if cmd.get("nameOnly"):
            dbs = [{"name": d["name"]} for d in dbs]
        return {"databases": dbs, "totalSize": 0, "ok": 1.0}

    def _listcollections(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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

    def _dbstats(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        colls = self.store[db].collection_stores()
        return {"db": db, "collections": len(colls), "views": 0,
                "objects": sum(len(c._documents) for c in colls), "dataSize": 0.0, "storageSize": 0.0,
                "indexes": sum(len(c.indexes) + 1 for c in colls), "indexSize": 0.0, "ok": 1.0}

    def _collstats(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cs = self.cstore(db, cmd[name])
        if not cs.is_created:
            raise CommandError(f"Collection [{db}.{cmd[name]}] not found.", 26)
        return {"ns": f"{db}.{cmd[name]}", "count": len(cs._documents), "size": 0, "storageSize": 0,
                "nindexes": len(cs.indexes) + 1, "ok": 1.0}
