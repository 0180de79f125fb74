"""Write commands: insert, update, delete, findAndModify.

A write that changes many documents lets waiting clients in between two documents (:meth:`yield_write`), as
MongoDB yields during multi-document writes: each document's change stays atomic, and the effects so far are
journaled before the lock is let go, so the journal order stays the execution order.

Each write resolves its target documents itself (through the stores' hash indexes, and for a sorted
findAndModify through a fast sort of the candidates), announces them as touched, and applies each change
by ``_id`` through mongomock's own update/replace code, so the journal holds exact post-images and the
indexes stay exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import mongomock
import pymongo.errors
from bson import ObjectId
from mongomock import filtering

from pilot.launchpad.commands import Command, CommandBase, CommandError, Reply, Sequences
from pilot.launchpad.sorting import entry_first, entry_sorted_keys, sorted_keys
from pilot.launchpad.store import TrackedCollectionStore, doc_key, matcher


def _is_operator_update(u: Any) -> bool:
    return isinstance(u, dict) and bool(u) and all(isinstance(k, str) and k.startswith("$") for k in u)


class WriteCommands(CommandBase):
    """The commands that change documents."""

    # -------------------------------------------------------------------------------- writes
    def _targets(self, coll: mongomock.Collection, q: dict[str, Any], sort: dict[str, Any] | None,
                 limit: int) -> list[dict[str, Any]]:
        """The documents a write applies to (decoded; the write pins each before changing it), in sort/natural
        order."""
        cs = coll._store
        if not isinstance(cs, TrackedCollectionStore):
            raise CommandError("internal: not a tracked collection", 1)
        if not cs:
            filtering.filter_applies(q, {})  # validate the filter like mongomock does
            return []
        match = matcher(q)
        if sort:
            # Sort the candidates by their index entries first, then test the filter in that order only until
            # `limit` match: FireWorks' reservation (findAndModify, sort by priority and creation) then decodes
            # a handful of documents instead of every READY one.
            if limit == 1:
                first = entry_first(cs, q, sort, match)
                if first is not None:
                    return first
            order = entry_sorted_keys(cs, q, sort)
            if order is None:
                order = sorted_keys(cs, cs.scan(q, match), sort)
            out = []
            for key in order:
                doc = cs.doc_at(key)
                if doc is not None and match(doc):
                    out.append(doc)
                    if limit and len(out) >= limit:
                        break
            return out
        it: Iterator[dict[str, Any]] = (doc for _k, doc in cs.scan(q, match))
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
                      doc: dict[str, Any], u: Any, array_filters: Any) -> tuple[int, int]:
        """Apply ``u`` to one stored document if it still matches ``q``; returns (matched, modified).

        The filter is tested again (narrowed to the document's ``_id``): a multi-document update lets other
        writers in between two documents, and one of them may have changed this one since it was chosen, as
        MongoDB re-checks a document after a yield."""
        _id = doc["_id"]
        key = doc_key(_id)
        cs.touch(key)
        spec = self._by_id(q, _id)
        try:
            if isinstance(u, list) or _is_operator_update(u):
                kw = {"array_filters": array_filters} if array_filters else {}
                res = coll.update_one(spec, u, **kw)
            else:
                res = coll.replace_one(spec, u)
            return res.matched_count, res.modified_count
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

    def _insert(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        coll = self.coll(db, cmd[name])
        docs = list(cmd.get("documents") or []) + list(seqs.get("documents", []))
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        for i, d in enumerate(docs):
            self.yield_write()
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

    def _update(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
                    self.yield_write()
                    matched, modified = self._apply_update(coll, cs, q, doc, u, s.get("arrayFilters"))
                    n += matched
                    nmod += modified
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

    def _delete(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
                q = s.get("q") or {}
                match = matcher(q)
                others_ran = False
                for doc in self._targets(coll, q, None, 1 if limit == 1 else 0):
                    key = doc_key(doc["_id"])
                    # once others ran (a yield), any target chosen before may be gone or match no more
                    others_ran = self.yield_write() or others_ran
                    if others_ran:
                        now = cs.get_doc(key)
                        if now is None or not match(now):
                            continue
                    del cs[key]
                    n += 1
            except self._WRITE_ERRORS as exc:
                errors.append(self._write_error(i, exc))
                if ordered:
                    break
        out: dict[str, Any] = {"n": n, "ok": 1.0}
        if errors:
            out["writeErrors"] = errors
        return out

    def _findandmodify(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
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
