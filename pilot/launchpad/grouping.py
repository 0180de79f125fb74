"""Grouped counts answered from the index entries: a ``$match`` and a ``$group`` by indexed fields that counts.

Why: the manager asks once per cycle how many READY and RUNNING Fireworks there are per category, state,
expected duration and pinned FWorker (:func:`pilot.manager.demand.gather_demand`): one aggregation instead of a
count per cluster and category. The general path decodes every matching document (about 1 s for 66,000
FireWorks-sized documents); the index entries already hold every value such a group needs, so here it costs one
pass over the entries of the matches, with nothing decoded but documents whose field is missing or null.

The shape answered (anything else takes the general path, which gives the same answer)::

    [{"$match": <equalities/$in on indexed fields>},
     {"$group": {"_id": <key>, <name>: {"$sum": 1}, ...}}]
    <key>: "$path"  |  {<name>: "$path" | {"$ifNull": ["$path", null]}, ...}

with every path indexed. A document whose entry for a path is not one plain value (an array, a sub-document,
a value the index does not hold) is decoded and its value made a key that groups as MongoDB groups (numbers by
value, booleans apart from numbers, arrays and sub-documents element by element): one such Firework must not
send a 28,000-Firework count to the general path (2.6 s), which moreover groups with Python's ``==`` (``True ==
1``; NaN groups with NaN). Values it cannot key exactly (a path through an array, binary data, ...) still send
the command there. An entry ``None`` means missing
or null (:mod:`pilot.launchpad.index`); MongoDB tells those apart in a group key (``{w: "$a"}`` omits ``w`` when
``a`` is missing, keeps ``w: null`` when it is null), so such a document is decoded, unless the path is wrapped
in ``$ifNull: [..., null]``, where both are null.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from bson import Decimal128

from pilot.launchpad.index import UNINDEXED, eligible, entry_matches, exact_tags, tag, untag

if TYPE_CHECKING:
    from pilot.launchpad.store import TrackedCollectionStore


class _Missing:
    """A field that is not there (MongoDB leaves it out of the group key)."""


MISSING = _Missing()


class _NotPlain(Exception):
    """A value the fast path cannot give exactly: take the general path."""


@dataclass(frozen=True)
class GroupKey:
    """One part of the group key: the output name (None: the whole ``_id``), its path, and ``$ifNull`` to null."""

    name: str | None
    path: str
    if_null: bool


def _field_ref(value: Any) -> str | None:
    """``"$a.b"`` -> ``"a.b"``; None for anything else (variables, literals)."""
    if isinstance(value, str) and value.startswith("$") and not value.startswith("$$") and len(value) > 1:
        return value[1:]
    return None


def _key_part(name: str | None, expr: Any) -> GroupKey | None:
    path = _field_ref(expr)
    if path is not None:
        return GroupKey(name, path, False)
    if isinstance(expr, dict) and list(expr) == ["$ifNull"]:
        args = expr["$ifNull"]
        if isinstance(args, list) and len(args) == 2 and args[1] is None and _field_ref(args[0]) is not None:
            return GroupKey(name, str(_field_ref(args[0])), True)
    return None


def parse_group(stage: dict[str, Any]) -> tuple[list[GroupKey], list[str]] | None:
    """The group key parts and the counter names of a ``$group`` stage this module answers, else None."""
    grp = stage.get("$group")
    if not isinstance(grp, dict) or "_id" not in grp:
        return None
    counters = [k for k in grp if k != "_id"]
    for k in counters:
        acc = grp[k]
        if not (isinstance(acc, dict) and list(acc) == ["$sum"] and type(acc["$sum"]) is int and acc["$sum"] == 1):
            return None
    gid = grp["_id"]
    if isinstance(gid, dict):
        if not gid or any(not isinstance(k, str) or k.startswith("$") for k in gid):
            return None
        parts = [_key_part(k, v) for k, v in gid.items()]
    else:
        parts = [_key_part(None, gid)]
    if any(p is None for p in parts):
        return None
    return [p for p in parts if p is not None], counters


def _decoded_value(cs: TrackedCollectionStore, pos: int, path: str) -> Any:
    """The value at ``path`` of the document at ``pos``: MISSING, or None (null); _NotPlain for anything else."""
    value: Any = cs.doc_at(pos)
    for part in path.split("."):
        if not isinstance(value, dict):
            if isinstance(value, list):
                raise _NotPlain(path)
            return MISSING
        if part not in value:
            return MISSING
        value = value[part]
    if value is not None:
        raise _NotPlain(path)  # the entry said missing or null: the document changed under us
    return None


@dataclass(frozen=True)
class _Array:
    """A group key part for an array value: equal when the elements are, in order (MongoDB's equality)."""

    items: tuple[Any, ...]


@dataclass(frozen=True)
class _Doc:
    """A group key part for a sub-document: equal when the fields and values are, in order."""

    fields: tuple[tuple[str, Any], ...]


def _key_of(value: Any) -> Any:
    """``value`` as a key that is equal to another exactly when MongoDB's group equality says so: a plain value
    as the index tags it (so that it meets the plain entries' keys), arrays and sub-documents part by part."""
    if isinstance(value, list):
        return _Array(tuple(_key_of(v) for v in value))
    if isinstance(value, dict):
        return _Doc(tuple((str(k), _key_of(v)) for k, v in value.items()))
    if _is_nan(value):   # MongoDB groups every NaN together, double and Decimal128 alike
        return NAN_KEY
    if isinstance(value, Decimal128):   # equal to the int or float of its value (Python hashes them alike)
        d = value.to_decimal()
        if not d.is_finite():
            raise _NotPlain("a Decimal128 infinity")
        return d
    if not eligible(value):
        raise _NotPlain(f"a value of type {type(value).__name__}")
    return tag(value)


class _NaN:
    """The group key of every NaN (Python's NaN equals nothing, itself included)."""


NAN_KEY = _NaN()


def _is_nan(value: Any) -> bool:
    if type(value) is float:
        return math.isnan(value)
    return isinstance(value, Decimal128) and value.to_decimal().is_nan()


def _value_of(key: Any) -> Any:
    """The BSON value of a key (the inverse of :func:`_key_of`)."""
    if isinstance(key, _Array):
        return [_value_of(v) for v in key.items]
    if isinstance(key, _Doc):
        return {k: _value_of(v) for k, v in key.fields}
    if isinstance(key, Decimal):
        return Decimal128(key)
    if key is NAN_KEY:
        return math.nan
    return untag(key)


def _full_value(cs: TrackedCollectionStore, pos: int, path: str) -> Any:
    """The value at ``path`` of the document at ``pos`` (MISSING when absent); _NotPlain for a path through an
    array (MongoDB then collects the values of every element: the general path does that)."""
    value: Any = cs.doc_at(pos)
    for part in path.split("."):
        if isinstance(value, list):
            raise _NotPlain(path)
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _key_value(cs: TrackedCollectionStore, pos: int, entry: Any, part: GroupKey) -> Any:
    if entry is UNINDEXED or type(entry) is frozenset:   # not one plain value: read it from the document
        value = _full_value(cs, pos, part.path)
        if value is None or value is MISSING:
            return None if part.if_null or part.name is None else value
        return _key_of(value)
    if entry is None:  # a whole-_id key is null for missing too; so is $ifNull
        return None if part.if_null or part.name is None else _decoded_value(cs, pos, part.path)
    return entry  # still a tag: True and 1 must stay apart as keys (untagged for the output)


#: entries counted between two pauses for waiting writers
CHUNK = 8192


def _matches(cs: TrackedCollectionStore, flt: dict[str, Any]) -> tuple[list[int], list[tuple[int, frozenset[Any]]]]:
    """The positions matching ``flt`` (an exact filter: :meth:`Planner.exact`) from the index buckets alone
    (set operations, no per-document Python), and the ``(slot, tags)`` conditions to re-check after a pause."""
    conds = []
    for field, cond in flt.items():
        slot, tags = cs.field_slot(field), exact_tags(cond)
        if slot is None or tags is None:
            raise _NotPlain(field)
        conds.append((slot, tags))
    if not conds:
        return list(cs.entries()), []
    sets = sorted((cs._fidx[slot].keys(tags, with_unindexed=False) for slot, tags in conds), key=len)
    found = sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
    return sorted(found), conds


def _still_matches(entry: tuple[Any, ...], conds: list[tuple[int, frozenset[Any]]]) -> bool:
    if any(entry[slot] is UNINDEXED for slot, _tags in conds):
        raise _NotPlain("a document changed to a value the index does not hold")
    return all(entry_matches(entry[slot], tags) for slot, tags in conds)


def _one(slot: int, entry: tuple[Any, ...]) -> tuple[Any, ...]:
    return (entry[slot],)


def _count_keys(cs: TrackedCollectionStore, flt: dict[str, Any], slots: list[int]) -> Counter[tuple[Any, ...]]:
    """How many matching documents have each tuple of entries at ``slots``: counted by C loops over chunks
    of the entries, pausing between chunks for waiting writers; after a pause that let one run, the rest is
    checked again against the filter (documents may have changed or gone meanwhile)."""
    positions, conds = _matches(cs, flt)
    entries = cs.entries()
    get: Callable[[tuple[Any, ...]], Any] = itemgetter(*slots)
    if len(slots) == 1:  # itemgetter of one item gives the item, not a 1-tuple
        get = partial(_one, slots[0])
    counts: Counter[tuple[Any, ...]] = Counter()
    epoch, layout, changed = cs.epoch, cs.layout, False
    for i in range(0, len(positions), CHUNK):
        if i:
            changed = cs.pause() or changed
        chunk = positions[i:i + CHUNK]
        if changed:
            _unchanged(cs, epoch, layout)
            rows = [e for e in map(entries.get, chunk) if e is not None and _still_matches(e, conds)]
        else:
            rows = [entries[p] for p in chunk]
        counts.update(map(get, rows))
    return counts


def _unchanged(cs: TrackedCollectionStore, epoch: int, layout: int) -> None:
    """Slots and entries read before a pause still mean the same: no drop, no index change, no write under way
    (else the general path answers)."""
    if cs.epoch != epoch or cs.layout != layout or cs.pinned():
        raise _NotPlain("the collection or its indexes changed, or a write is under way")


def group_counts(cs: TrackedCollectionStore, flt: dict[str, Any], pipeline: list[dict[str, Any]]
                 ) -> list[dict[str, Any]] | None:
    """The documents ``pipeline`` (after its ``$match``, ``flt``) outputs, from the index entries; None when
    the command has another shape or a document needs the general path (see the module docstring)."""
    if len(pipeline) != 1:
        return None
    parsed = parse_group(pipeline[0])
    if parsed is None:
        return None
    parts, counters = parsed
    found = [cs.field_slot(p.path) for p in parts]
    slots = [s for s in found if s is not None]
    if len(slots) != len(parts) or cs.pinned() or (flt and not cs.exact(flt)):
        return None
    epoch, layout = cs.epoch, cs.layout
    try:
        counts = _count_keys(cs, flt, slots)
        if any(_needs_document(key, parts) for key in counts):
            counts = _count_by_position(cs, flt, slots, parts, (epoch, layout))
    except _NotPlain:
        return None
    return [_output(parts, counters, key, n) for key, n in counts.items()]


def _needs_document(key: tuple[Any, ...], parts: list[GroupKey]) -> bool:
    """Does a key need the documents? (a value that is not plain, or missing vs null, needs decoding)"""
    return any(v is UNINDEXED or type(v) is frozenset or (v is None and not p.if_null and p.name is not None)
               for v, p in zip(key, parts, strict=True))


def _count_by_position(cs: TrackedCollectionStore, flt: dict[str, Any], slots: list[int], parts: list[GroupKey],
                       seen: tuple[int, int]) -> Counter[tuple[Any, ...]]:
    """The slow count, one document at a time, decoding those whose entry says missing-or-null (``slots`` are
    of the index layout ``seen``: a change of it hands the command to the general path)."""
    _unchanged(cs, *seen)
    cand, checks = cs.plan(flt, exact=True) if flt else (None, [])
    counts: Counter[tuple[Any, ...]] = Counter()
    for pos in cs.positions(cand, checks):
        if (cs.epoch, cs.layout) != seen:
            raise _NotPlain("the collection or its indexes changed during a pause")
        if any(cs.entry(pos, slot) is UNINDEXED for slot, _tags in checks):   # passes the checks unjudged
            raise _NotPlain("a document changed to a value the index does not hold")
        counts[tuple(_key_value(cs, pos, cs.entry(pos, s), p) for s, p in zip(slots, parts, strict=True))] += 1
    return counts


def _output(parts: list[GroupKey], counters: list[str], key: tuple[Any, ...], n: int) -> dict[str, Any]:
    if parts[0].name is None:
        gid: Any = None if key[0] is MISSING else _value_of(key[0])
    else:
        gid = {p.name: _value_of(v) for p, v in zip(parts, key, strict=True) if v is not MISSING}
    out: dict[str, Any] = {"_id": gid}
    out.update((c, n) for c in counters)
    return out
