"""Hash indexes of the embedded server, and the equality semantics they share with the fast matcher.

A field index maps each value a document holds at a dotted path (the value itself, or each element of an
array there) to the documents holding it. Only values whose Python equality agrees with MongoDB's are
indexed (:data:`SAFE_TYPES`); one Python trap is closed explicitly: ``True == 1 == 1.0`` in Python, but in
MongoDB a boolean never equals a number, so booleans are indexed under their own tags (:func:`tag`) and
``{"a": 1}`` finds ``1``, ``1.0`` and ``Int64(1)`` but not ``true``. Numbers of different types do equal each
other, as in MongoDB.

Per document the index keeps one compact *entry* per indexed field (:func:`entry_of`): the single value, a
frozenset when the path goes through an array (even an empty one), or :data:`UNINDEXED` when a value cannot
be indexed safely (nested arrays, numeric path parts, unsafe types): such documents are candidates for every lookup and
the matcher decides. The entries serve four purposes: removing a document's old index keys without decoding
its old bytes, checking a candidate against the index without decoding it, sort keys, and grouped counts
(:mod:`pilot.launchpad.grouping`): a single-value entry is the value itself, and ``None`` means the field is
missing or null, never an array.

Lookups are *exact* for non-null safe values (the index alone answers ``count``), and a superset for ``null``
(which also matches missing fields and arrays holding null): those are re-checked with the matcher.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from bson import Int64, ObjectId
from mongomock import helpers

#: Types whose Python equality/hash agree with MongoDB equality (booleans after :func:`tag`).
SAFE_TYPES = frozenset({str, int, bool, float, Int64, ObjectId, datetime.datetime, uuid.UUID, type(None)})


def doc_key(_id: Any) -> Any:
    """The key mongomock stores a document under (dict ``_id`` values become hashable)."""
    return helpers.hashdict(_id) if isinstance(_id, dict) else _id


class _Tag:
    """A hashable stand-in for a boolean inside index buckets (so True never meets 1)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_TRUE = _Tag("<true>")
_FALSE = _Tag("<false>")
#: Entry of a document whose value at the path cannot be indexed: a candidate for every lookup.
UNINDEXED = _Tag("<unindexed>")
#: Put in a collected set when the path went through an array (taken out again by :func:`entry_of`).
_ARRAY = _Tag("<array>")
#: The entry of an empty array (FireWorks' ``launches: []`` of every Firework not run yet): one shared object
_EMPTY_ARRAY = frozenset({None})


def tag(v: Any) -> Any:
    """The bucket key of value ``v`` (booleans get their own tags)."""
    if v is True:
        return _TRUE
    if v is False:
        return _FALSE
    return v


def untag(t: Any) -> Any:
    """The value of bucket key ``t`` (the inverse of :func:`tag`)."""
    if t is _TRUE:
        return True
    if t is _FALSE:
        return False
    return t


def eligible(value: Any) -> bool:
    """True if an equality on ``value`` can be answered from a hash bucket (a superset for None)."""
    t = type(value)
    if t is float:
        return not math.isnan(value)  # NaN never hashes to its matches
    return t in SAFE_TYPES


def _add(value: Any, out: set[Any]) -> bool:
    if type(value) not in SAFE_TYPES or (type(value) is float and math.isnan(value)):
        return False
    out.add(tag(value))
    return True


def _collect_leaf(value: Any, out: set[Any]) -> bool:
    if isinstance(value, list):
        out.add(_ARRAY)
        out.add(None)  # superset: whatever an empty array or a null element matches
        for elem in value:
            if isinstance(elem, list):
                return False
            if isinstance(elem, dict):
                continue  # a scalar never equals a sub-document
            if not _add(elem, out):
                return False
        return True
    if isinstance(value, dict):
        return True
    return _add(value, out)


def collect(value: Any, parts: tuple[str, ...], i: int, out: set[Any]) -> bool:
    """Add the tag of every scalar a query on ``parts`` could match to ``out``; False if that cannot be known."""
    if i == len(parts):
        return _collect_leaf(value, out)
    if isinstance(value, dict):
        part = parts[i]
        if part in value:
            return collect(value[part], parts, i + 1, out)
        out.add(None)
        return True
    if isinstance(value, list):
        if parts[i].isdigit():
            return False  # "a.0.b" means both an array position and a field named "0"
        out.add(_ARRAY)
        out.add(None)
        for elem in value:
            if isinstance(elem, list):
                return False
            if isinstance(elem, dict) and not collect(elem, parts, i, out):
                return False
        return True
    out.add(None)
    return True


def entry_of(doc: dict[str, Any], parts: tuple[str, ...]) -> Any:
    """The compact index entry of ``doc`` for ``parts``: one tag, a frozenset of tags, or UNINDEXED."""
    out: set[Any] = set()
    if not collect(doc, parts, 0, out):
        return UNINDEXED
    if _ARRAY in out:
        out.discard(_ARRAY)
        return _EMPTY_ARRAY if out == _EMPTY_ARRAY else frozenset(out)
    if len(out) == 1:
        return next(iter(out))
    return frozenset(out)


def entry_tags(entry: Any) -> Iterable[Any]:
    return entry if type(entry) is frozenset else (entry,)


def entry_matches(entry: Any, tags: frozenset[Any]) -> bool:
    """Could a document with this entry match an equality on any of ``tags``? (exact unless UNINDEXED)"""
    if entry is UNINDEXED:
        return True
    if type(entry) is frozenset:
        return not tags.isdisjoint(entry)
    return entry in tags


def widen(tags: frozenset[Any]) -> frozenset[Any]:
    """``tags`` plus the booleans mongomock's matcher equates with 1 and 0 (and back): candidates for a filter
    that mongomock judges must include what it would match (Python's ``True == 1``)."""
    extra: set[Any] = set()
    for t in tags:
        if t is _TRUE:
            extra.add(1)
        elif t is _FALSE:
            extra.add(0)
        elif type(t) in (int, float, Int64) and t in (0, 1):
            extra.add(_TRUE if t == 1 else _FALSE)
    return tags | extra if extra else tags


def eq_values(cond: Any) -> list[Any] | None:
    """The values a field condition requires equality with, or None if it is not such a condition."""
    if eligible(cond):
        return [cond]
    if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        if len(cond) == 1 and "$eq" in cond and eligible(cond["$eq"]):
            return [cond["$eq"]]
        values = cond.get("$in")
        if len(cond) == 1 and isinstance(values, list) and all(eligible(v) for v in values):
            return values
    return None


def exact_tags(cond: Any) -> frozenset[Any] | None:
    """Tags for a condition the index answers exactly (equality/$in with non-null safe values), else None."""
    vals = eq_values(cond)
    if vals is None or any(v is None for v in vals):
        return None
    return frozenset(tag(v) for v in vals)


class FieldIndex:
    """Buckets ``tag -> key`` (one document) or ``tag -> set of keys``, and the keys that are UNINDEXED."""

    __slots__ = ("buckets", "canon", "unindexed")

    def __init__(self) -> None:
        self.buckets: dict[Any, Any] = {}
        self.unindexed: set[Any] = set()
        self.canon: dict[str, str] = {}  # one object per string value that two or more documents hold

    def canonical(self, entry: Any) -> Any:
        """``entry``, or the equal string object the index already keeps for it.

        Why: decoding gives every document its own ``"READY"``; 100,000 entries of a few values (state,
        category, host, worker) otherwise each keep their own copy (measured: 19 MiB of the 100,000-Firework
        LaunchPad). Only values held twice are kept here (unique names and dates would only cost)."""
        if type(entry) is not str:
            return entry
        same = self.canon.get(entry)
        if same is not None:
            return same
        if entry in self.buckets:
            self.canon[entry] = entry
        return entry

    def add(self, key: Any, entry: Any) -> None:
        if entry is UNINDEXED:
            self.unindexed.add(key)
            return
        buckets = self.buckets
        for t in entry_tags(entry):
            cur = buckets.get(t, _MISSING)
            if cur is _MISSING:
                buckets[t] = key
            elif type(cur) is set:
                cur.add(key)
            else:
                buckets[t] = {cur, key}

    def remove(self, key: Any, entry: Any) -> None:
        if entry is UNINDEXED:
            self.unindexed.discard(key)
            return
        buckets = self.buckets
        for t in entry_tags(entry):
            cur = buckets.get(t, _MISSING)
            if type(cur) is set:
                cur.discard(key)
                if len(cur) == 1:
                    buckets[t] = next(iter(cur))
                elif not cur:
                    del buckets[t]
                    self.canon.pop(t, None)
            elif cur is not _MISSING and cur == key:
                del buckets[t]
                self.canon.pop(t, None)

    def size(self, t: Any) -> int:
        cur = self.buckets.get(t, _MISSING)
        if cur is _MISSING:
            return 0
        return len(cur) if type(cur) is set else 1

    def keys(self, tags: Iterable[Any], with_unindexed: bool = True) -> set[Any]:
        out: set[Any] = set(self.unindexed) if with_unindexed else set()
        for t in tags:
            cur = self.buckets.get(t, _MISSING)
            if type(cur) is set:
                out |= cur
            elif cur is not _MISSING:
                out.add(cur)
        return out


class _Missing:
    pass


_MISSING = _Missing()


# ------------------------------------------------------------------------------------ fast matcher
def _field_test(parts: tuple[str, ...], cond: Any) -> Callable[[dict[str, Any]], bool | None] | None:
    """A test of one top-level field condition with MongoDB's equality (None: the doc needs mongomock)."""
    tags = exact_tags(cond)
    negate = False
    if tags is None and isinstance(cond, dict) and len(cond) == 1:
        op, arg = next(iter(cond.items()))
        if op == "$ne" and eligible(arg) and arg is not None:
            tags, negate = frozenset({tag(arg)}), True
        elif op == "$nin" and isinstance(arg, list) and all(eligible(v) and v is not None for v in arg):
            tags, negate = frozenset(tag(v) for v in arg), True
    if tags is None:
        return None
    frozen = tags

    def test(doc: dict[str, Any]) -> bool | None:
        out: set[Any] = set()
        if not collect(doc, parts, 0, out):
            return None
        hit = not frozen.isdisjoint(out)
        return not hit if negate else hit

    return test


def _conjuncts(flt: dict[str, Any]) -> tuple[list[tuple[str, Any]], bool]:
    """The ``field: condition`` pairs a document must all pass (``$and`` of documents flattened), and whether
    they are the whole filter (False: it has other operators, such as ``$or``, that they leave out)."""
    pairs: list[tuple[str, Any]] = []
    whole = True
    for k, cond in flt.items():
        if k == "$and" and isinstance(cond, list) and cond and all(isinstance(c, dict) and c for c in cond):
            for sub in cond:
                more, all_of = _conjuncts(sub)
                pairs.extend(more)
                whole = whole and all_of
        elif isinstance(k, str) and not k.startswith("$"):
            pairs.append((k, cond))
        else:
            whole = False
    return pairs, whole


def _tests(pairs: list[tuple[str, Any]]) -> list[Callable[[dict[str, Any]], bool | None] | None]:
    """Each pair's test (None where MongoDB's equality cannot be judged here)."""
    return [_field_test(tuple(k.split(".")), cond) for k, cond in pairs]


def _all_of(tests: list[Callable[[dict[str, Any]], bool | None]]) -> Callable[[dict[str, Any]], bool | None]:
    def match(doc: dict[str, Any]) -> bool | None:
        for t in tests:
            r = t(doc)
            if r is None:
                return None
            if not r:
                return False
        return True

    return match


def compile_conjuncts(flt: Any) -> Callable[[dict[str, Any]], bool | None] | None:
    """MongoDB's equality for the part of ``flt`` it can judge (its equality/``$in``/``$ne``/``$nin``
    conjuncts), or None when there is no such part. False means no match; True only that this part passes.

    Why: mongomock's matcher, which judges the rest (``$or``, ranges), equates ``true`` with ``1`` and
    ``false`` with ``0`` (Python's ``True == 1``); MongoDB never does. A document must pass both.
    """
    if not isinstance(flt, dict) or not flt:
        return None
    tests = [t for t in _tests(_conjuncts(flt)[0]) if t is not None]
    return _all_of(tests) if tests else None


def compile_filter(flt: Any) -> Callable[[dict[str, Any]], bool | None] | None:
    """A fast matcher for filters made only of equality/$in/$ne/$nin on non-null safe values (``$and`` of
    such filters too), or None.

    It returns True/False, or None when a document holds a value it cannot judge (then use mongomock's matcher).
    Matching this way gives the same answer as the index (MongoDB's: booleans never equal numbers).
    """
    if not isinstance(flt, dict) or not flt:
        return None
    pairs, whole = _conjuncts(flt)
    tests = _tests(pairs)
    if not whole or not tests or None in tests:
        return None
    return _all_of([t for t in tests if t is not None])
