"""mongomock storage that records every effect and keeps hash indexes for equality lookups.

mongomock keeps each collection as an ordered dict ``_id -> document`` and answers every query with a full
scan. These subclasses of its store classes add two things, both driven by the same bookkeeping:

* **effect tracking**: every document that is inserted, replaced, deleted or (announced by the backend via
  :meth:`TrackedCollectionStore.touch`) modified in place is remembered; at the end of a command the
  :class:`Tracker` turns them into journal ops (post-image by ``_id``, or deletion by ``_id``), in order with
  meta ops (collection/index creation and drops) that the stores report themselves;
* **hash indexes** on every field named in the collection's indexes, so that queries with an equality (or
  ``$in``) on an indexed field or on ``_id`` scan only the candidate documents. Candidates are always
  re-checked with mongomock's own matcher, so an index only has to return a *superset* of the matches; a
  document whose indexed value cannot be hashed safely is a candidate for every lookup on that field.

:func:`install_planner` points mongomock's ``Collection._iter_documents`` (the one place every find, count,
update and delete goes through) at :meth:`TrackedCollectionStore.candidates`.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Iterator
from typing import Any

from bson import Int64, ObjectId
from mongomock import helpers
from mongomock.collection import Collection
from mongomock.filtering import filter_applies
from mongomock.store import CollectionStore, DatabaseStore, ServerStore

#: Types whose Python equality/hash agree with MongoDB equality closely enough for a superset lookup.
_SAFE_TYPES = frozenset({str, int, bool, float, Int64, ObjectId, datetime.datetime, uuid.UUID, type(None)})
#: Index key types that are not plain value orderings (their fields are not hash-indexed).
_SPECIAL_INDEX_TYPES = frozenset({"text", "2d", "2dsphere", "geoHaystack"})


def doc_key(_id: Any) -> Any:
    """The key mongomock stores a document under (dict ``_id`` values become hashable)."""
    return helpers.hashdict(_id) if isinstance(_id, dict) else _id


def _eligible(value: Any) -> bool:
    """True if an equality on ``value`` can be answered from a hash bucket."""
    t = type(value)
    if t is float:
        return not math.isnan(value)  # NaN never hashes to its matches
    return t in _SAFE_TYPES


def _eq_values(cond: Any) -> list[Any] | None:
    """The values a field condition requires equality with, or None if it is not such a condition."""
    if _eligible(cond):
        return [cond]
    if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        if "$eq" in cond and _eligible(cond["$eq"]):
            return [cond["$eq"]]
        values = cond.get("$in")
        if isinstance(values, list) and all(_eligible(v) for v in values):
            return values
    return None


def _add_value(value: Any, out: set[Any]) -> bool:
    if type(value) not in _SAFE_TYPES:
        return False
    out.add(value)
    return True


def _collect(value: Any, parts: tuple[str, ...], i: int, out: set[Any]) -> bool:
    """Add every scalar a query on ``parts`` could match to ``out``; False if that cannot be known."""
    if i == len(parts):
        if isinstance(value, list):
            out.add(None)  # superset: whatever an empty array or a null element matches
            for elem in value:
                if isinstance(elem, list):
                    return False
                if isinstance(elem, dict):
                    continue  # a scalar never equals a sub-document
                if not _add_value(elem, out):
                    return False
            return True
        if isinstance(value, dict):
            return True
        return _add_value(value, out)
    if isinstance(value, dict):
        part = parts[i]
        if part in value:
            return _collect(value[part], parts, i + 1, out)
        out.add(None)
        return True
    if isinstance(value, list):
        if parts[i].isdigit():
            return False  # "a.0.b" means both an array position and a field named "0"
        out.add(None)
        for elem in value:
            if isinstance(elem, list):
                return False
            if isinstance(elem, dict) and not _collect(elem, parts, i, out):
                return False
        return True
    out.add(None)
    return True


def index_values(doc: dict[str, Any], parts: tuple[str, ...]) -> frozenset[Any] | None:
    """Hash-index entries of ``doc`` for the dotted path ``parts``; None = candidate for every lookup."""
    out: set[Any] = set()
    return frozenset(out) if _collect(doc, parts, 0, out) else None


class Tracker:
    """Collects the effects of the running command, in order, across all collections."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self._dirty: dict[int, TrackedCollectionStore] = {}

    def mark(self, store: TrackedCollectionStore) -> None:
        self._dirty[id(store)] = store

    def meta(self, store: TrackedCollectionStore, op: dict[str, Any]) -> None:
        """Record a meta op after the store's pending document effects (so replay keeps the order)."""
        self.flush_store(store)
        self.ops.append(op)

    def flush_store(self, store: TrackedCollectionStore) -> None:
        if self._dirty.pop(id(store), None) is not None:
            self.ops.extend(store.take_touched())

    def collect(self) -> list[dict[str, Any]]:
        """All effects since the last call; re-indexes every touched document."""
        for store in list(self._dirty.values()):
            self.flush_store(store)
        ops, self.ops = self.ops, []
        return ops


class TrackedCollectionStore(CollectionStore):
    """A mongomock collection store that tracks effects and maintains hash indexes."""

    def __init__(self, name: str, db_name: str, tracker: Tracker) -> None:
        self._ready = False
        self._tracker = tracker
        self.db_name = db_name
        self._indexes: dict[str, dict[str, Any]] = {}
        self._touched: dict[Any, None] = {}  # changed in this command: journal their post-image/deletion
        self._stale: dict[Any, None] = {}  # being modified in place: index entries may be out of date
        self._pos: dict[Any, int] = {}
        self._next_pos = 0
        self._hidx: dict[str, dict[Any, set[Any]]] = {}
        self._unidx: dict[str, set[Any]] = {}
        self._parts: dict[str, tuple[str, ...]] = {}
        self._entries: dict[Any, dict[str, frozenset[Any] | None]] = {}
        super().__init__(name)
        self._ready = True

    # -- mongomock's mutation points -------------------------------------------------------------
    @property
    def indexes(self) -> dict[str, dict[str, Any]]:
        return self._indexes

    @indexes.setter
    def indexes(self, value: dict[str, dict[str, Any]]) -> None:
        # mongomock assigns {} to drop all indexes (drop_indexes, drop)
        if self._ready and self._indexes:
            self._tracker.meta(self, {"op": "dropindex", "db": self.db_name, "c": self.name, "name": "*"})
        self._indexes = value
        if self._ready:
            self._sync_fields()

    def __setitem__(self, key: Any, val: Any) -> None:
        super().__setitem__(key, val)
        # MongoDB keeps an implicitly created collection after its last document is deleted
        self._is_force_created = True
        if key not in self._pos:
            self._pos[key] = self._next_pos
            self._next_pos += 1
        self._reindex(key, val)  # mongomock stores a document once it is final (insert, upsert, rollback)
        self._stale.pop(key, None)
        self._mark(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._pos.pop(key, None)
        self._reindex(key, None)
        self._stale.pop(key, None)
        self._mark(key)

    def create(self) -> None:
        super().create()
        self._tracker.meta(self, {"op": "create", "db": self.db_name, "c": self.name})

    def drop(self) -> None:
        self._tracker.meta(self, {"op": "drop", "db": self.db_name, "c": self.name})
        self._ready = False
        try:
            super().drop()
        finally:
            self._ready = True
        self._touched = {}
        self._stale = {}
        self._pos = {}
        self._entries = {}
        self._sync_fields()

    def create_index(self, index_name: str, index_dict: dict[str, Any]) -> None:
        super().create_index(index_name, index_dict)
        self._tracker.meta(self, {"op": "index", "db": self.db_name, "c": self.name, "name": index_name,
                                  "spec": index_dict})
        self._sync_fields()

    def drop_index(self, index_name: str) -> None:
        super().drop_index(index_name)
        self._tracker.meta(self, {"op": "dropindex", "db": self.db_name, "c": self.name, "name": index_name})
        self._sync_fields()

    # -- effects -----------------------------------------------------------------------------------
    def _mark(self, key: Any) -> None:
        self._touched[key] = None
        self._tracker.mark(self)

    def touch(self, key: Any) -> None:
        """Announce that the stored document under ``key`` is about to be modified in place.

        Until :meth:`refresh` (or the end of the command) its index entries may be stale, so it is a candidate
        for every lookup; its post-image is journaled at the end of the command.
        """
        self._stale[key] = None
        self._mark(key)

    def refresh(self, key: Any) -> None:
        """The in-place modification of ``key`` is done: bring its index entries up to date."""
        if key in self._stale:
            del self._stale[key]
            self._reindex(key, self._documents.get(key))

    def take_touched(self) -> list[dict[str, Any]]:
        """Journal ops for every touched document (post-image or deletion); re-index stale ones."""
        out: list[dict[str, Any]] = []
        docs = self._documents
        for key in self._stale:
            self._reindex(key, docs.get(key))
        self._stale = {}
        for key in self._touched:
            doc = docs.get(key)
            if doc is None:
                out.append({"op": "del", "db": self.db_name, "c": self.name, "id": key})
            else:
                out.append({"op": "put", "db": self.db_name, "c": self.name, "doc": doc})
        self._touched = {}
        return out

    def raw_documents(self) -> Iterator[dict[str, Any]]:
        """The stored documents in natural order (no TTL expiry pass, no copies)."""
        return iter(self._documents.values())

    # -- hash indexes ------------------------------------------------------------------------------
    def _sync_fields(self) -> None:
        wanted: dict[str, tuple[str, ...]] = {}
        for spec in self._indexes.values():
            for field, kind in spec.get("key", ()):
                if field != "_id" and kind not in _SPECIAL_INDEX_TYPES:
                    wanted[field] = tuple(field.split("."))
        for field in list(self._hidx):
            if field not in wanted:
                del self._hidx[field], self._unidx[field], self._parts[field]
                for ent in self._entries.values():
                    ent.pop(field, None)
        for field, parts in wanted.items():
            if field in self._hidx:
                continue
            self._hidx[field], self._unidx[field], self._parts[field] = {}, set(), parts
            for key, doc in self._documents.items():
                self._index_one(key, doc, field)

    def _index_one(self, key: Any, doc: dict[str, Any], field: str) -> None:
        vals = index_values(doc, self._parts[field])
        self._entries.setdefault(key, {})[field] = vals
        if vals is None:
            self._unidx[field].add(key)
        else:
            bucket = self._hidx[field]
            for v in vals:
                s = bucket.get(v)
                if s is None:
                    bucket[v] = {key}
                else:
                    s.add(key)

    def _reindex(self, key: Any, doc: dict[str, Any] | None) -> None:
        old = self._entries.pop(key, None)
        if old:
            for field, vals in old.items():
                if vals is None:
                    self._unidx[field].discard(key)
                    continue
                bucket = self._hidx[field]
                for v in vals:
                    s = bucket.get(v)
                    if s is not None:
                        s.discard(key)
                        if not s:
                            del bucket[v]
        if doc is not None:
            for field in self._hidx:
                self._index_one(key, doc, field)

    def _plan(self, flt: dict[str, Any]) -> set[Any] | None:
        """Keys of a superset of the documents matching ``flt``, or None for a full scan."""
        best: set[Any] | None = None
        for k, cond in flt.items():
            cand: set[Any] | None
            if k == "$and" and isinstance(cond, list):
                for sub in cond:
                    if isinstance(sub, dict):
                        cand = self._plan(sub)
                        if cand is not None and (best is None or len(cand) < len(best)):
                            best = cand
                continue
            if k == "_id":
                vals = _eq_values(cond)
                if vals is None:
                    continue
                docs = self._documents
                cand = {v for v in vals if v in docs}
            elif k in self._hidx:
                vals = _eq_values(cond)
                if vals is None:
                    continue
                bucket = self._hidx[k]
                cand = set(self._unidx[k])
                for v in vals:
                    s = bucket.get(v)
                    if s:
                        cand |= s
            else:
                continue
            if best is None or len(cand) < len(best):
                best = cand
            if not best:
                break
        return best

    def candidates(self, flt: Any) -> list[dict[str, Any]] | None:
        """Documents (natural order) that may match ``flt``; None when only a full scan can tell."""
        if not isinstance(flt, dict) or not flt:
            return None
        keys = self._plan(flt)
        if keys is None:
            return None
        if self._stale:
            keys = keys | self._stale.keys()
        docs = self._documents
        pos = self._pos
        present = [k for k in keys if k in docs]
        present.sort(key=pos.__getitem__)
        return [docs[k] for k in present]


class TrackedDatabaseStore(DatabaseStore):
    def __init__(self, name: str, tracker: Tracker) -> None:
        super().__init__()
        self.name = name
        self._tracker = tracker

    def __getitem__(self, col_name: str) -> TrackedCollectionStore:
        try:
            return self._collections[col_name]
        except KeyError:
            col = self._collections[col_name] = TrackedCollectionStore(col_name, self.name, self._tracker)
            return col

    def rename(self, name: str, new_name: str) -> None:
        col = self[name]
        self._tracker.meta(col, {"op": "rename", "db": self.name, "c": name, "to": new_name})
        self._collections.pop(name)
        col.name = new_name
        self._collections[new_name] = col

    def collection_stores(self) -> list[TrackedCollectionStore]:
        return [c for c in self._collections.values() if c.is_created]


class TrackedServerStore(ServerStore):
    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __getitem__(self, db_name: str) -> TrackedDatabaseStore:
        try:
            return self._databases[db_name]
        except KeyError:
            db = self._databases[db_name] = TrackedDatabaseStore(db_name, self.tracker)
            return db

    def database_stores(self) -> list[TrackedDatabaseStore]:
        return list(self._databases.values())


_original_iter_documents = Collection._iter_documents


def _planned_iter_documents(self: Collection, filter: Any) -> Iterator[dict[str, Any]]:
    store = self._store
    if isinstance(store, TrackedCollectionStore):
        docs = store.candidates(filter)
        if docs is not None:
            if not docs:
                filter_applies(filter, {})  # still validate the filter, like mongomock does
            return (doc for doc in docs if filter_applies(filter, doc))
    return _original_iter_documents(self, filter)


def install_planner() -> None:
    """Route mongomock's document iteration through the hash indexes (idempotent, process-wide).

    Only collections backed by :class:`TrackedCollectionStore` are affected.
    """
    Collection._iter_documents = _planned_iter_documents  # type: ignore[method-assign]
