"""Read commands: find, count, distinct, aggregate, listIndexes (mongomock's query engine over the stores)."""

from __future__ import annotations

from typing import Any

import bson
from mongomock import aggregate as mm_aggregate

from pilot.launchpad.commands import Command, CommandBase, CommandError, Reply, Sequences


class ReadCommands(CommandBase):
    """The commands that read documents; they change nothing (the lock is still held: a consistent view)."""

    # --------------------------------------------------------------------------------- reads
    def _find(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
                                  single=bool(cmd.get("singleBatch")) or limit < 0, conn=conn)

    def _count(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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

    def _distinct(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        coll = self.coll(db, cmd[name])
        return {"values": coll.distinct(cmd["key"], cmd.get("query") or {}), "ok": 1.0}

    def _aggregate(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
        return self._cursor_reply(f"{db}.{target}", out, (cmd.get("cursor") or {}).get("batchSize"), conn=conn)

    def _listindexes(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
        return self._cursor_reply(f"{db}.{cmd[name]}", docs, (cmd.get("cursor") or {}).get("batchSize"),
                                  conn=conn)
