"""Sorting for the embedded server's finds and findAndModify: fast C-level keys for the common types, mongomock's
general comparison otherwise, and sorting by key so that a sorted cursor holds keys, not documents."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from bson import Int64, ObjectId
from mongomock import filtering

from pilot.launchpad.commands import CommandError
from pilot.launchpad.index import UNINDEXED, tag
from pilot.launchpad.store import TrackedCollectionStore

_BOOL_TAG = type(tag(True))


def sort_docs(docs: list[dict[str, Any]], sort: dict[str, Any] | None) -> list[dict[str, Any]]:
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
        docs = sorted(docs, key=partial(filtering.resolve_sort_key, key), reverse=direction < 0)
    return docs


class NoFastKey(Exception):
    """A sort value outside the simple cases: sort with mongomock's general comparison instead."""


_NUMBERS = (int, float, Int64)


def fast_key(doc: dict[str, Any], path: list[str]) -> tuple[Any, ...]:
    """A sort key for ``path`` in BSON comparison order for the common types.

    Order (MongoDB manual, "Comparison/Sort Order"): null (and missing) < numbers < strings < ObjectId <
    booleans < dates. Arrays, sub-documents and other types raise :class:`NoFastKey`.
    """
    v: Any = doc
    for part in path:
        if type(v) is dict:
            if part not in v:
                return (1, 0)
            v = v[part]
        elif isinstance(v, list):
            raise NoFastKey
        else:
            return (1, 0)
    t = type(v)
    if v is None:
        return (1, 0)
    if t is bool:
        return (8, v)
    if t in _NUMBERS:
        if t is float and math.isnan(v):
            raise NoFastKey
        return (2, v)
    if t is str:
        return (3, v)
    if t is ObjectId:
        return (7, v)
    if t is datetime.datetime:
        return (9, v)
    raise NoFastKey


def fast_sort(docs: list[dict[str, Any]], sort: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Sort with C-level tuple keys (stable, last key first); None when a value needs the general comparison."""
    fields = list(sort.items())
    if not fields or any(k.startswith("$") or type(d) not in (int, float, Int64) for k, d in fields):
        return None
    try:
        for key, direction in reversed(fields):
            path = key.split(".")
            docs = sorted(docs, key=partial(fast_key, path=path), reverse=direction < 0)
    except NoFastKey:
        return None
    return docs


def _column(row: tuple[Any, list[Any]], i: int) -> Any:
    return row[1][i]


def _check_sort(sort: dict[str, Any]) -> None:
    for key, direction in sort.items():
        if key != "$natural" and (key.startswith("$") or isinstance(direction, dict)):
            raise CommandError(f"sorting by {key!r} is not supported by the embedded server", 115)


def sorted_keys(cs: TrackedCollectionStore, matches: Iterable[tuple[Any, dict[str, Any]]],
                sort: dict[str, Any]) -> list[Any]:
    """The keys of ``matches`` in ``sort`` order (stable: natural order breaks ties), keeping only keys and sort
    values, not documents: a sorted cursor then decodes each document again when its batch is sent."""
    _check_sort(sort)
    fields = [(k, d) for k, d in sort.items() if k != "$natural"]
    natural_desc = any(k == "$natural" and d < 0 for k, d in sort.items())
    fast = all(type(d) in (int, float, Int64) for _k, d in fields)
    rows: list[tuple[Any, list[Any]]] = []
    paths = [k.split(".") for k, _d in fields]
    for key, doc in matches:
        vals: list[Any] = []
        if fast:
            try:
                vals = [fast_key(doc, path=p) for p in paths]
            except NoFastKey:
                fast = False
        if not fast:
            vals = [filtering.resolve_sort_key(k, doc) for k, _d in fields]
        rows.append((key, vals))
    if not fast:  # rows made before the switch hold fast keys: recompute them all the general way
        redo = []
        for key, _vals in rows:
            again = cs.doc_at(key)
            if again is not None:
                redo.append((key, [filtering.resolve_sort_key(k, again) for k, _d in fields]))
        rows = redo
    if natural_desc:
        rows.reverse()
    for i in range(len(fields) - 1, -1, -1):
        rows.sort(key=partial(_column, i=i), reverse=fields[i][1] < 0)
    return [key for key, _vals in rows]


def _entry_key(entry: Any) -> tuple[Any, ...]:
    """A sort key from an index entry (see :func:`fast_key` for the order); NoFastKey for arrays and the like."""
    if entry is UNINDEXED or type(entry) is frozenset:
        raise NoFastKey
    if entry is None:
        return (1, 0)
    if type(entry) is _BOOL_TAG:
        return (8, entry is tag(True))
    return fast_key({"v": entry}, path=["v"])


#: a sort slot that stands for ``_id`` (not among the index's fields: the store keys documents by it)
ID_SLOT = -1


def entry_sorted_keys(cs: TrackedCollectionStore, q: dict[str, Any], sort: dict[str, Any],
                      exact: bool = False) -> list[Any] | None:
    """Keys of the candidates for ``q`` sorted by ``sort`` from the index entries alone (no document decoded),
    or None when a sort field is not indexed or a candidate's entry is not a plain value. ``exact``: the
    candidates by MongoDB's equality (see :meth:`~pilot.launchpad.planner.Planner.plan`), for a filter the index
    alone decides: then they are the matches."""
    _check_sort(sort)
    fields = list(sort.items())
    slots = [ID_SLOT if k == "_id" else cs.field_slot(k) for k, _d in fields]   # _id: the store's own key
    if not fields or any(s is None for s in slots) or any(type(d) not in (int, float, Int64) for _k, d in fields):
        return None
    keys, checks = cs.plan(q, exact=exact)
    seen = (cs.epoch, cs.layout)
    rows: list[tuple[Any, list[Any]]] = []
    try:
        for key in cs.positions(keys, checks):
            if (cs.epoch, cs.layout) != seen:   # an index changed during a pause: the slots name other fields
                return None
            if exact and any(cs.entry(key, slot) is UNINDEXED for slot, _tags in checks):
                return None   # written during a pause with a value the index cannot judge: it passed unjudged
            rows.append((key, [fast_key({"v": cs.id_at(key)}, ["v"]) if s == ID_SLOT else _entry_key(cs.entry(key, s))
                               for s in slots if s is not None]))
    except NoFastKey:
        return None
    if exact and not cs.exact(q):   # a value the index cannot judge was written during a pause: match it
        return None
    for i in range(len(fields) - 1, -1, -1):
        rows.sort(key=partial(_column, i=i), reverse=fields[i][1] < 0)
    return [key for key, _vals in rows]


_NUMBER_TYPES = frozenset({int, float, Int64})


def _best(col: list[Any], descending: bool) -> tuple[bool, Any]:
    """The first value of ``col`` in sort order, if the column holds plain values of one comparable kind (and
    nulls, which sort first); (False, None) when it does not."""
    kinds = {type(v) for v in col}
    kinds.discard(type(None))
    if not kinds:
        return True, None
    if kinds <= _NUMBER_TYPES:
        pass
    elif len(kinds) != 1 or not kinds <= {str, datetime.datetime, ObjectId}:
        return False, None
    if not descending and len(kinds) < len({type(v) for v in col}):
        return True, None  # null/missing sort before everything else
    values = [v for v in col if v is not None]
    return True, max(values) if descending else min(values)


def entry_first(cs: TrackedCollectionStore, q: dict[str, Any], sort: dict[str, Any],
                match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]] | None:
    """The first match of ``q`` in ``sort`` order from the index entries, in a few passes over the candidates
    (no sorting, no decoding but the winner's): what findAndModify with a sort needs. None when the index
    entries cannot tell (unindexed sort field, arrays, mixed types, or the winners fail the full filter)."""
    _check_sort(sort)
    fields = list(sort.items())
    slots = [cs.field_slot(k) for k, _d in fields]
    if not fields or cs.pinned() or any(s is None for s in slots) or \
            any(type(d) not in (int, float, Int64) for _k, d in fields):
        return None
    keys, checks = cs.plan(q, build_limit=1 << 62)
    entries = cs.entries()
    rows = list(keys) if keys is not None else list(entries)
    if len(checks) > 1 or keys is None:
        rows = [k for k in rows if cs.passes(k, checks)]
    for slot, (_k, direction) in zip(slots, fields, strict=True):
        if len(rows) <= 1 or slot is None:
            break
        col = [entries[k][slot] if k in entries else UNINDEXED for k in rows]
        ok, best = _best(col, direction < 0)
        if not ok:
            return None
        rows = [k for k, v in zip(rows, col, strict=True) if v == best and (v is None) == (best is None)]
    rows.sort()
    for key in rows:
        doc = cs.doc_at(key)
        if doc is not None and match(doc):
            return [doc]
    return None if rows else []
