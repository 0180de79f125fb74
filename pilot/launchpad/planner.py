"""Query planning over one collection of the embedded server: index candidates, exact counts, resumable scans.

Internally every document is known by its *position*: a small int given when it is first stored, in natural
(insertion) order, kept while it lives. Index buckets, entries and scans use positions, not ``_id`` values:
an ``ObjectId`` hashes in Python code (about 1 µs), an int in C, which makes a pass over 66,000 candidates
tens of milliseconds instead of a second.

:class:`Planner` is a mixin of :class:`pilot.launchpad.store.TrackedCollectionStore`; it reads the store's
``_by_pos`` (position -> key), ``_raw`` (position -> encoded document), ``_entries`` (position -> index entry
tuple), ``_fidx`` (one :class:`~pilot.launchpad.index.FieldIndex` per indexed field, holding positions) and
``_pinned`` (position -> the decoded document a running write modifies in place).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from pilot.launchpad.index import UNINDEXED, FieldIndex, doc_key, entry_matches, eq_values, exact_tags, tag, widen

#: Documents a scan visits between two pauses (each pause lets waiting writers in).
SCAN_CHUNK = 256
#: Candidate sets up to this size (or a quarter of the collection) are visited in sorted position order; larger
#: ones by walking every position.
_SMALL_PLAN = 4096
_BOOL_TAG = type(tag(True))

Checks = list[tuple[int, frozenset[Any]]]


class ScanKilled(Exception):
    """A scan paused across a drop of its collection or a change of its indexes cannot go on (MongoDB answers
    such a cursor's getMore with QueryPlanKilled, code 175)."""


class Planner:
    """Candidates, exact counts and scans by position (see the module docstring)."""

    _pos: dict[Any, int]
    _by_pos: dict[int, Any]
    _raw: dict[int, bytes]
    _entries: dict[int, tuple[Any, ...]]
    _fidx: list[FieldIndex]
    _fields: list[str]
    _pinned: dict[int, dict[str, Any]]
    _next_pos: int
    name: str
    epoch: int
    layout: int
    pause: Callable[[], bool]

    def doc_at(self, pos: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def field_slot(self, field: str) -> int | None:
        try:
            return self._fields.index(field)
        except ValueError:
            return None

    def id_at(self, pos: int) -> Any:
        """The ``_id`` of the document at ``pos`` (the store's key for it), without decoding it."""
        return self._by_pos.get(pos)

    def pinned(self) -> bool:
        return bool(self._pinned)

    def entries(self) -> dict[int, tuple[Any, ...]]:
        """Index entries per position (read-only for callers)."""
        return self._entries

    def entry(self, pos: int, slot: int) -> Any:
        """The index entry of the document at ``pos`` for field ``slot`` (UNINDEXED when unknown or pinned)."""
        if pos in self._pinned:
            return UNINDEXED
        ent = self._entries.get(pos)
        return ent[slot] if ent is not None else UNINDEXED

    def passes(self, pos: int, checks: Checks) -> bool:
        """Does the document at ``pos`` pass the index-entry ``checks`` of a plan (True when it cannot tell)?"""
        if pos in self._pinned:
            return True
        ent = self._entries.get(pos)
        if ent is None:
            return True
        for slot, tags in checks:
            if not entry_matches(ent[slot], tags):
                return False
        return True

    def _conditions(self, flt: dict[str, Any]) -> list[tuple[str, Any]]:
        """Top-level ``field: condition`` pairs of ``flt``, with ``$and`` flattened."""
        out: list[tuple[str, Any]] = []
        for k, cond in flt.items():
            if k == "$and" and isinstance(cond, list):
                for sub in cond:
                    if isinstance(sub, dict):
                        out.extend(self._conditions(sub))
            elif isinstance(k, str) and not k.startswith("$"):
                out.append((k, cond))
        return out

    def _id_positions(self, vals: list[Any]) -> set[int]:
        pos = self._pos
        return {pos[k] for k in (doc_key(v) for v in vals if not isinstance(v, dict)) if k in pos}

    def plan(self, flt: Any, exact: bool = False, build_limit: int | None = None
             ) -> tuple[set[int] | None, Checks]:
        """Positions of a superset of the documents matching ``flt`` (None: walk every position), plus the
        checks ``(slot, tags)`` against index entries that every match passes (cheap filters before decoding).

        The smallest candidate set is built only when it has at most ``build_limit`` positions (default: a
        quarter of the collection, at least 4096) or no check covers it: a walk over every position with live
        checks visits the same documents without a big set to copy or keep (a cursor keeps its plan).
        Unless ``exact`` (the caller uses MongoDB's equality, :func:`pilot.launchpad.index.compile_filter`),
        booleans and the numbers 1/0 are each other's candidates, as mongomock's matcher equates them.
        """
        if not isinstance(flt, dict) or not flt:
            return None, []
        checks: Checks = []
        options: list[tuple[int, Callable[[], set[int]], bool]] = []  # (size, build, covered by a check)
        for k, cond in self._conditions(flt):
            vals = eq_values(cond)
            if vals is None:
                continue
            if k == "_id":
                ids = self._id_positions(vals)
                options.append((len(ids), partial(set, ids), False))
                continue
            slot = self.field_slot(k)
            if slot is None:
                continue
            tags = frozenset(tag(v) for v in vals)
            if not exact:
                tags = widen(tags)
            checked = None not in tags
            if checked:
                checks.append((slot, tags))
            fi = self._fidx[slot]
            size = sum(fi.size(t) for t in tags) + len(fi.unindexed)
            options.append((size, partial(fi.keys, tags), checked))
        if not options:
            return None, checks
        size, build, checked = min(options, key=lambda o: o[0])
        if build_limit is None:
            build_limit = max(_SMALL_PLAN, len(self._pos) // 4)
        if size > build_limit and checked:
            return None, checks
        best = build()
        if self._pinned:
            best = best | self._pinned.keys()
        return best, checks

    def exact(self, flt: Any) -> bool:
        """Does the index alone decide which documents match ``flt`` (see :meth:`count_exact`)?"""
        if not isinstance(flt, dict) or not flt or self._pinned:
            return False
        for k, cond in flt.items():
            slot = self.field_slot(k) if isinstance(k, str) else None
            if exact_tags(cond) is None or slot is None or self._fidx[slot].unindexed:
                return False
        return True

    def count_exact(self, flt: Any) -> int | None:
        """The number of matches of ``flt`` from the indexes alone, or None when they cannot tell exactly.

        Exact when every condition is an equality/``$in`` on non-null safe values of an indexed field (or
        ``_id``) and no document of those fields is UNINDEXED; no document is decoded.
        """
        if not isinstance(flt, dict) or not flt or self._pinned:
            return None
        conds: list[tuple[int | None, Any]] = []
        for k, cond in flt.items():
            tags = exact_tags(cond)
            if tags is None:
                return None
            if k == "_id":
                if any(type(t) is _BOOL_TAG for t in tags):
                    return None  # a boolean _id: let the matcher decide
                conds.append((None, self._id_positions(list(tags))))
                continue
            slot = self.field_slot(k) if isinstance(k, str) else None
            if slot is None or self._fidx[slot].unindexed:
                return None
            conds.append((slot, tags))

        def size(c: tuple[int | None, Any]) -> int:
            slot, tags = c
            return len(tags) if slot is None else sum(self._fidx[slot].size(t) for t in tags)

        conds.sort(key=size)
        slot, tags = conds[0]
        if len(conds) == 1 and (slot is None or len(tags) == 1):
            return size(conds[0])
        first = tags if slot is None else self._fidx[slot].keys(tags, with_unindexed=False)
        n = 0
        for p in first:
            for s, tg in conds[1:]:
                if not (p in tg if s is None else entry_matches(self.entry(p, s), tg)):
                    break
            else:
                n += 1
        return n

    def positions(self, cand: set[int] | None, checks: Checks) -> Iterator[int]:
        """Positions in natural order: of a small candidate set (sorted), else by walking every position; only
        those passing ``checks``. Pauses every SCAN_CHUNK documents; resumable after changes of documents
        meanwhile; raises ScanKilled after a drop of the collection or of an index the checks use."""
        n = 0
        pause = self.pause
        epoch, layout = self.epoch, self.layout
        fields = [self._fields[slot] for slot, _tags in checks]
        if cand is not None:
            for p in sorted(cand):
                n += 1
                if n % SCAN_CHUNK == 0:
                    pause()
                if self.layout != layout or self.epoch != epoch:  # (also between two batches of a cursor)
                    checks, layout = self._after_pause(epoch, layout, checks, fields)
                if p in self._by_pos and (not checks or self.passes(p, checks)):
                    yield p
            return
        p = -1
        while p + 1 < self._next_pos or self.epoch != epoch:
            if self.layout != layout or self.epoch != epoch:  # (also between two batches of a cursor)
                checks, layout = self._after_pause(epoch, layout, checks, fields)
            p += 1
            if p not in self._by_pos:
                continue
            n += 1
            if n % SCAN_CHUNK == 0:
                pause()
                if self.layout != layout or self.epoch != epoch:
                    checks, layout = self._after_pause(epoch, layout, checks, fields)
                if p not in self._by_pos:
                    continue
            if (cand is None or p in cand) and (not checks or self.passes(p, checks)):
                yield p

    def _after_pause(self, epoch: int, layout: int, checks: Checks, fields: list[str]) -> tuple[Checks, int]:
        """The checks to go on with after a pause: the same fields in the new index layout when indexes were
        created meanwhile; ScanKilled when the collection was dropped or an index the checks use was."""
        if self.epoch != epoch:
            raise ScanKilled(f"collection {self.name} was dropped while a scan of it was paused")
        if self.layout == layout:
            return checks, layout
        slots = [self.field_slot(f) for f in fields]
        if any(s is None for s in slots):
            raise ScanKilled(f"an index of {self.name} that a paused scan uses was dropped")
        return [(s, tags) for s, (_old, tags) in zip(slots, checks, strict=True) if s is not None], self.layout

    def scan(self, flt: Any, match: Callable[[dict[str, Any]], bool] | None = None
             ) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(position, decoded document)`` of every document that may match ``flt``, in natural order.

        With ``match`` only the documents it accepts. Holds no list of the collection: it walks positions,
        so it survives other commands changing the collection between chunks (then it sees each document in
        its state when visited; documents inserted meanwhile may or may not be seen).
        """
        cand, checks = self.plan(flt)
        for p in self.positions(cand, checks):
            doc = self.doc_at(p)
            if doc is not None and (match is None or match(doc)):
                yield p, doc
