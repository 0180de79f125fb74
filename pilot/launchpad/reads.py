"""Read commands: find, count, distinct, aggregate, listIndexes.

Reads run under the shared side of the backend's lock, concurrently with each other, and stream: a find
returns its first batch and leaves a cursor that continues the same scan (:meth:`TrackedCollectionStore.scan`)
when the client asks for more, encoding one batch at a time. A count on indexed equalities is answered from the
index without decoding a document (:meth:`TrackedCollectionStore.count_exact`), and so is pymongo's
``count_documents`` (an aggregation ``$match`` + ``$group: {_id: 1, n: {$sum: 1}}``).

Read concern: like MongoDB's default ("local"), a multi-document read is not a point-in-time snapshot. Long
scans pause between chunks to let writers in, and a cursor's later batches are produced when asked for: each
document is returned as it is when its batch is produced, a document changed or deleted meanwhile is returned
in its new state or not at all, and documents inserted meanwhile may or may not be returned. Each document is
itself always whole (writes are atomic per document).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import bson
from mongomock import aggregate as mm_aggregate
from mongomock import filtering, helpers
from mongomock.filtering import filter_applies

from pilot.launchpad.commands import Command, CommandBase, CommandError, Reply, Sequences
from pilot.launchpad.grouping import group_counts
from pilot.launchpad.sorting import entry_sorted_keys, sorted_keys
from pilot.launchpad.store import TrackedCollectionStore, encode, matcher


def _validate(flt: Any) -> dict[str, Any]:
    if not isinstance(flt, dict):
        raise CommandError("the match filter must be an expression in an object", 2)
    filter_applies(flt, {})  # mongomock's checks of operators (OperationFailure), as a scan would raise them
    return flt


#: Stages that name fields without "$" or look at whole documents: their pipelines get whole documents.
_WHOLE_DOCUMENT_STAGES = frozenset({"$lookup", "$graphLookup", "$redact", "$unionWith", "$documents"})


def _referenced_fields(obj: Any, out: set[str]) -> bool:
    """Top-level fields a pipeline may read (a superset); False when it needs whole documents ($$ROOT)."""
    if isinstance(obj, dict):
        if _WHOLE_DOCUMENT_STAGES.intersection(obj):
            return False
        for k, v in obj.items():
            if isinstance(k, str) and not k.startswith("$"):
                out.add(k.split(".")[0])
            if not _referenced_fields(v, out):
                return False
    elif isinstance(obj, list):
        return all(_referenced_fields(v, out) for v in obj)
    elif isinstance(obj, str) and obj.startswith("$"):
        if obj.startswith("$$"):
            return not (obj.startswith("$$ROOT") or obj.startswith("$$CURRENT"))
        out.add(obj[1:].split(".")[0])
    return True


def _count_group(stage: dict[str, Any]) -> bool:
    """``{$group: {_id: <constant>, n: {$sum: 1}, ...}}``: what pymongo's count_documents sends."""
    grp = stage.get("$group")
    if not isinstance(grp, dict) or "_id" not in grp:
        return False
    gid = grp["_id"]
    if isinstance(gid, (dict, list)) or (isinstance(gid, str) and gid.startswith("$")):
        return False
    return all(v == {"$sum": 1} for k, v in grp.items() if k != "_id")


class ReadCommands(CommandBase):
    """The commands that read documents; they change nothing and run concurrently under the shared lock."""

    def _stream(self, cs: TrackedCollectionStore, flt: dict[str, Any], sort: dict[str, Any] | None,
                projection: Any) -> Iterator[bytes]:
        """The encoded matches of ``flt`` in sort/natural order, produced as they are consumed."""
        coll = self.coll(cs.db_name, cs.name)
        if sort:
            # a filter the index alone decides, sorted by indexed fields: the index entries give the matches in
            # order, and only the page a cursor sends is read (a list page of 70,000 Fireworks: no decoding)
            keys = entry_sorted_keys(cs, flt, sort, exact=True) if cs.exact(flt) else None
            if keys is None:
                keys = sorted_keys(cs, cs.scan(flt, matcher(flt)), sort)  # keys and sort values only, no documents
            pairs: Iterator[tuple[Any, dict[str, Any] | None]] = ((k, None) for k in keys)
        elif projection is None and cs.exact(flt):
            pairs = ((k, None) for k in cs.positions(*cs.plan(flt, exact=True)))  # the index alone decides: no decoding
        else:
            pairs = iter(cs.scan(flt, matcher(flt)))
        for key, doc in pairs:
            if projection is None:
                raw = cs.raw_at(key)
                if raw is not None:
                    yield raw
                continue
            if doc is None:
                doc = cs.doc_at(key)
                if doc is None:
                    continue
            yield encode(coll._copy_only_fields(doc, dict(projection), dict))

    def _find(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cname = cmd[name]
        self.coll(db, cname)
        cs = self.cstore(db, cname)
        for unsupported in ("collation", "min", "max", "tailable", "awaitData"):
            if cmd.get(unsupported):
                raise CommandError(f"find with {unsupported!r} is not supported by the embedded server", 115)
        flt = _validate(cmd.get("filter") or {})
        skip = int(cmd.get("skip") or 0)
        limit = int(cmd.get("limit") or 0)
        projection = cmd.get("projection") or None
        if projection is not None and not isinstance(projection, dict):
            raise CommandError("projection must be a document", 2)
        docs: Iterator[bytes] = self._stream(cs, flt, dict(cmd["sort"]) if cmd.get("sort") else None, projection)
        if skip or limit:
            docs = itertools.islice(docs, skip, skip + abs(limit) if limit else None)
        return self._cursor_reply(f"{db}.{cname}", docs, int(cmd.get("batchSize") or 0),
                                  single=bool(cmd.get("singleBatch")) or limit < 0, conn=conn)

    def _count_matches(self, cs: TrackedCollectionStore, q: dict[str, Any]) -> int:
        if not q:
            return len(cs)
        n = cs.count_exact(q)
        if n is None:
            n = sum(1 for _ in cs.scan(q, matcher(q)))
        return n

    def _count(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        self.coll(db, cmd[name])
        q = _validate(cmd.get("query") or {})
        n = self._count_matches(self.cstore(db, cmd[name]), q)
        n = max(0, n - int(cmd.get("skip") or 0))
        if cmd.get("limit"):
            n = min(n, abs(int(cmd["limit"])))
        return {"n": n, "ok": 1.0}

    def _distinct(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """mongomock's distinct (``Cursor.distinct``), streaming over the matches instead of copying them."""
        self.coll(db, cmd[name])
        key = cmd.get("key")
        if not isinstance(key, str):
            raise CommandError("distinct key must be a string", 14)
        q = _validate(cmd.get("query") or {})
        unique: set[Any] = set()
        for _k, doc in self.cstore(db, cmd[name]).scan(q, matcher(q)):
            for values in filtering.iter_key_candidates(key, doc):
                if values is filtering.NOTHING:
                    continue
                for value in values if isinstance(values, (tuple, list)) else [values]:
                    unique.add(helpers.hashdict(value) if isinstance(value, dict) else value)
        return {"values": [dict(v) if isinstance(v, helpers.hashdict) else v for v in unique], "ok": 1.0}

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
        cs = self.cstore(db, target)
        flt: dict[str, Any] = {}
        if pipeline and "$match" in pipeline[0]:  # the leading $match goes through the indexes
            flt = _validate(pipeline[0]["$match"])
            pipeline = pipeline[1:]
        counted = self._aggregate_count(cs, flt, pipeline)
        if counted is None:
            counted = group_counts(cs, flt, pipeline)
        if counted is not None:
            out = counted
        else:
            fields: set[str] = {"_id"}
            if _referenced_fields(pipeline, fields):  # hand the pipeline only the fields it reads
                docs = [{k: d[k] for k in fields if k in d} for _k, d in cs.scan(flt, matcher(flt))]
            else:
                docs = [d for _k, d in cs.scan(flt, matcher(flt))]
            out = list(mm_aggregate.process_pipeline(docs, coll.database, pipeline, None)) if pipeline else docs
        return self._cursor_reply(f"{db}.{target}", out, (cmd.get("cursor") or {}).get("batchSize"), conn=conn)

    def _aggregate_count(self, cs: TrackedCollectionStore, flt: dict[str, Any], pipeline: list[dict[str, Any]]
                         ) -> list[dict[str, Any]] | None:
        """``[$skip], [$limit], $group {_id: const, n: {$sum: 1}}`` after the $match: counted, not materialised."""
        rest = list(pipeline)
        skip = limit = 0
        if rest and "$skip" in rest[0] and isinstance(rest[0]["$skip"], int):
            skip = rest.pop(0)["$skip"]
        if rest and "$limit" in rest[0] and isinstance(rest[0]["$limit"], int):
            limit = rest.pop(0)["$limit"]
        if len(rest) != 1 or not _count_group(rest[0]):
            return None
        n = max(0, self._count_matches(cs, flt) - skip)
        if limit:
            n = min(n, limit)
        if not n:
            return []
        grp = rest[0]["$group"]
        return [{k: (v if k == "_id" else n) for k, v in grp.items()}]

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
