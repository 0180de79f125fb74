"""Limits of the embedded LaunchPad server: the settings, and MongoDB's refusals of too deep or too large documents.

The server is reachable from every compute node of a campaign, so one misbehaving client (or a hostile one on a
shared network) must not be able to take it down for everybody. The connection layer
(:mod:`pilot.launchpad.connections`) enforces the :class:`Limits` settings; this module holds them and the checks
that need no socket:

* :func:`check_document` runs on the raw bytes of every document of a message *before* it is decoded:
  ``bson.decode`` recurses once per nesting level (in C and, in the engine, in Python), so a document nested
  900 levels deep must be refused before anything walks it. The scan is iterative and skips any embedded
  document too small to reach the limit (each level costs at least 7 bytes), so FireWorks-sized documents cost
  a few microseconds.
* :func:`screen_writes` refuses, per statement as MongoDB does, documents that an insert or an update would
  store deeper than MongoDB's storage limit or larger than 16 MiB; the engine never sees them.

MongoDB's rules and words (``src/mongo/bson/bson_depth.h``, ``bson_validate.cpp``, ``db/ops/insert.cpp``,
``db/update/storage_validation.cpp``; codes from ``src/mongo/base/error_codes.yml``):

* any BSON object in a message may nest at most ``maxBSONDepth`` = 200 levels, else code 15 ``Overflow``,
  "BSONObj exceeded maximum nested object depth: 200";
* any BSON object in a message may be at most 16 MiB + 16 KiB (``BSONObjMaxInternalSize``), else code 10334
  ``BSONObjectTooLarge``, "BSONObj size: N (0xN) is invalid. Size must be between 0 and 16793600(16MB)";
* a stored document may nest at most 200 - 20 = 180 levels (``getMaxDepthForUserStorage``: the manual's
  "Limits and Thresholds" page says 100, the server enforces 180), else code 15 "cannot insert document
  because it exceeds 180 levels of nesting" (insert) or "Document exceeds maximum nesting depth of 180"
  (update), as a write error of that statement;
* an inserted document may be at most 16 MiB (``BSONObjMaxUserSize``), else code 2 ``BadValue``, "object to
  insert too large. size in bytes: N, max size: 16777216", as a write error.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: MongoDB's maxBSONDepth: the deepest any BSON object in a message may nest.
MAX_BSON_DEPTH = 200
#: MongoDB's getMaxDepthForUserStorage(): maxBSONDepth minus 20 levels the server keeps for itself.
MAX_STORAGE_DEPTH = MAX_BSON_DEPTH - 20
#: BSONObjMaxUserSize: the largest document a client may store (``maxBsonObjectSize`` in the hello reply).
MAX_USER_BSON_SIZE = 16 * 1024 * 1024
#: BSONObjMaxInternalSize: the largest BSON object in a message (a command may exceed a document by 16 KiB).
MAX_INTERNAL_BSON_SIZE = MAX_USER_BSON_SIZE + 16 * 1024

OVERFLOW = 15
BAD_VALUE = 2
BSON_OBJECT_TOO_LARGE = 10334
_CODE_NAMES = {OVERFLOW: "Overflow", BAD_VALUE: "BadValue", BSON_OBJECT_TOO_LARGE: "BSONObjectTooLarge"}

#: Defaults of the settings (docs/launchpad-server.md, "Limits", says why each).
DEFAULT_MAX_CONNECTIONS = 5000
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 48_000_000  # MongoDB's maxMessageSizeBytes
DEFAULT_RECEIVE_BUDGET_BYTES = 256 * 1024 * 1024
#: A message in progress gets this much more time for every byte that arrives (Apache's mod_reqtimeout
#: "MinRate"): a trickle of a few bytes now and then cannot hold a connection open for ever.
MIN_RATE_BYTES_PER_S = 16 * 1024
#: Stack of each connection thread. Only touched pages count in RSS, so this costs address space, not memory;
#: 1 MiB is what mongod gives its connection threads and leaves room for the engine's recursion on
#: documents up to MAX_BSON_DEPTH.
CONNECTION_STACK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The connection limits of one server (``pilot launchpad serve`` options; defaults above).

    Attributes
    ----------
    max_connections:
        Open client connections at most; a connection beyond it is closed at once (one log line, at most
        every few seconds however many arrive).
    idle_timeout:
        Seconds a client may stay silent in the middle of a message (after its first byte) before the server
        closes the connection; a connection idle *between* messages stays open (drivers keep pools).
    max_message_bytes:
        The largest message one connection may send (advertised as ``maxMessageSizeBytes``); a longer header
        closes the connection before its body is read.
    receive_budget_bytes:
        Bytes of partly received messages across all connections; the connection whose bytes do not fit is
        closed.
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    receive_budget_bytes: int = DEFAULT_RECEIVE_BUDGET_BYTES

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.idle_timeout <= 0 or self.receive_budget_bytes < 1:
            raise ValueError(f"limits must be positive: {self}")
        if not 1024 <= self.max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be within 1024..{DEFAULT_MAX_MESSAGE_BYTES}")


class LimitError(Exception):
    """A document breaks one of MongoDB's limits: the command gets an error reply (the connection stays)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def reply(self) -> dict[str, Any]:
        return refusal(str(self), self.code)


def refusal(message: str, code: int) -> dict[str, Any]:
    """An error reply in MongoDB's shape (``codeName`` from error_codes.yml)."""
    return {"ok": 0.0, "errmsg": message, "code": code, "codeName": _CODE_NAMES.get(code, f"Location{code}")}


class ReceiveBudget:
    """Bytes of partly received messages, across all connections (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when they do not fit."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class RateLimitedLog:
    """One warning per ``interval`` seconds at most; the next one says how many were left out meanwhile.

    A flood of refused connections must not flood the log (or fill the disk the journal lives on)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -interval
        self._dropped = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless one was logged less than ``interval`` ago; True when logged."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._dropped += 1
                return False
            dropped, self._dropped, self._last = self._dropped, 0, now
        more = f" ({dropped} more like it since the last such line were not logged)" if dropped else ""
        log.warning(msg + more, *args)
        return True


# ------------------------------------------------------------------------------------------ raw documents
_I32 = struct.Struct("<i")
#: Sizes of the BSON element types with a fixed-size value (bsonspec.org).
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0xFF: 0,
          0x7F: 0}
_LENGTH_PREFIXED = frozenset({0x02, 0x0D, 0x0E})  # string, JavaScript code, symbol: int32 length + bytes
#: The fewest bytes one more nesting level costs: type, empty name's NUL, int32 length, terminating NUL.
_LEVEL_BYTES = 7


def raw_depth(data: bytes | bytearray, start: int, end: int, limit: int) -> int:
    """More than ``limit`` exactly when the BSON document in ``data[start:end]`` nests deeper than ``limit``
    levels (a flat document is 1 level), found without decoding it.

    Stops as soon as the depth exceeds ``limit``; an embedded document too small to reach past ``limit`` is
    skipped whole, so below the limit the result is only a lower bound. A malformed document ends the scan
    (the decoder then refuses it)."""
    if end - start < 5:
        return 1
    deepest = 1
    stack = [(start + 4, start + _I32.unpack_from(data, start)[0] - 1)]  # (next element, the document's NUL)
    while stack:
        pos, stop = stack[-1]
        if pos >= stop or stop > end:
            stack.pop()
            continue
        kind = data[pos]
        name_end = data.find(b"\x00", pos + 1, stop)
        if name_end < 0:
            return deepest  # malformed: the decoder decides
        value = name_end + 1
        if kind in _FIXED:
            nxt = value + _FIXED[kind]
        elif kind in _LENGTH_PREFIXED:
            nxt = value + 4 + _I32.unpack_from(data, value)[0]
        elif kind == 0x05:  # binary: int32 length, subtype, bytes
            nxt = value + 5 + _I32.unpack_from(data, value)[0]
        elif kind == 0x0C:  # DBPointer: string + ObjectId
            nxt = value + 4 + _I32.unpack_from(data, value)[0] + 12
        elif kind == 0x0B:  # regex: two cstrings
            p = data.find(b"\x00", value, stop)
            nxt = data.find(b"\x00", p + 1, stop) + 1
            if p < 0 or nxt <= 0:
                return deepest
        elif kind in (0x03, 0x04, 0x0F):  # document, array, code with scope (its scope is a document)
            sub = value
            if kind == 0x0F:
                sub = value + 8 + _I32.unpack_from(data, value + 4)[0]
                nxt = value + _I32.unpack_from(data, value)[0]
            else:
                nxt = value + _I32.unpack_from(data, value)[0]
            size = _I32.unpack_from(data, sub)[0]
            level = len(stack) + 1
            stack[-1] = (nxt, stop)
            if size < 5 or sub + size > stop + 1:
                return deepest
            if level + (size - 5) // _LEVEL_BYTES <= limit:
                continue  # too small to reach past the limit
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.append((sub + 4, sub + size - 1))
            continue
        else:
            return deepest  # unknown type: malformed, the decoder refuses it
        if nxt <= pos:
            return deepest
        stack[-1] = (nxt, stop)
    return deepest


def check_document(data: bytes | bytearray, start: int, end: int) -> bool:
    """MongoDB's checks of one BSON object of a message, on its raw bytes (before any decoding); True when it
    may nest deeper than a stored document may (its writes are then screened by :func:`screen_writes`).

    Raises
    ------
    LimitError
        Code 10334 for an object over 16 MiB + 16 KiB, code 15 for one nested deeper than 200 levels.
    """
    size = end - start
    if size > MAX_INTERNAL_BSON_SIZE:
        raise LimitError(f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
                         f"{MAX_INTERNAL_BSON_SIZE}(16MB)", BSON_OBJECT_TOO_LARGE)
    if size < 5 + _LEVEL_BYTES * MAX_STORAGE_DEPTH or raw_depth(data, start, end, MAX_STORAGE_DEPTH) <= \
            MAX_STORAGE_DEPTH:
        return False
    if raw_depth(data, start, end, MAX_BSON_DEPTH) > MAX_BSON_DEPTH:
        raise LimitError(f"BSONObj exceeded maximum nested object depth: {MAX_BSON_DEPTH}", OVERFLOW)
    return True


# ---------------------------------------------------------------------------------- decoded statements
def value_depth(value: Any, limit: int = MAX_STORAGE_DEPTH) -> int:
    """Nesting levels of documents and arrays in ``value`` (0 for a scalar, 1 for a flat document); stops once
    past ``limit``. Iterative: the values here passed :func:`check_document`, but nothing recurses anyway."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        for v in node.values() if isinstance(node, dict) else node:
            if isinstance(v, (dict, list)):
                stack.append((v, level + 1))
    return deepest


#: Update operators whose value lands one level further down (inside an array).
_INTO_ARRAY = frozenset({"$push", "$addToSet"})


def _update_depth(update: Any, selector: Any, upsert: bool) -> int:
    """How deep the document an update leaves at least is: for each path it sets, the path's length plus the
    depth of the value (``a.b: {c: 1}`` -> 3); a replacement document is its own depth."""
    if isinstance(update, list):
        return 0  # an aggregation pipeline: bounded by the message check
    if not isinstance(update, dict):
        return 0
    deepest = 0
    if update and all(str(k).startswith("$") for k in update):
        for op, fields in update.items():
            if isinstance(fields, dict):
                extra = 1 if op in _INTO_ARRAY else 0
                for path, v in fields.items():
                    deepest = max(deepest, str(path).count(".") + 1 + extra + value_depth(v))
    else:
        deepest = value_depth(update)
    if upsert and isinstance(selector, dict):  # the query's equality fields become fields of the new document
        for path, v in selector.items():
            if not str(path).startswith("$"):
                deepest = max(deepest, str(path).count(".") + 1 + value_depth(v))
    return deepest


@dataclass
class Screening:
    """What :func:`screen_writes` found: statements refused before the engine runs (MongoDB's write errors),
    or a refusal of the whole command (findAndModify)."""

    key: str = ""
    in_sequence: bool = False
    errors: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)  # index -> (code, message)
    command_error: dict[str, Any] | None = None


def screen_writes(name: str, command: dict[str, Any], sequences: dict[str, list[Any]], body_bytes: int,
                  deep: bool = True) -> Screening | None:
    """Refuse the documents an insert/update/findAndModify would store too deep or too large; None when all
    is well. ``deep``: some document of the message may nest past the storage limit (else inserted documents
    are not walked: :func:`check_document` told already); update paths are always counted (``a.a.a...: 1``
    nests deep in a shallow message)."""
    lname = name.lower()
    if lname == "findandmodify":
        depth = _update_depth(command.get("update"), command.get("query"), bool(command.get("upsert")))
        if depth > MAX_STORAGE_DEPTH:
            return Screening(command_error=refusal(
                f"Document exceeds maximum nesting depth of {MAX_STORAGE_DEPTH}", OVERFLOW))
        return None
    key = {"insert": "documents", "update": "updates"}.get(lname)
    if key is None or (key == "documents" and not deep and body_bytes <= MAX_USER_BSON_SIZE):
        return None
    in_seq = key in sequences
    items = sequences.get(key) if in_seq else command.get(key)
    if not isinstance(items, list):
        return None
    found = Screening(key=key, in_sequence=in_seq)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if key == "documents":
            if deep and value_depth(item) > MAX_STORAGE_DEPTH:
                found.errors[i] = (OVERFLOW, f"cannot insert document because it exceeds {MAX_STORAGE_DEPTH} "
                                             "levels of nesting")
            elif body_bytes > MAX_USER_BSON_SIZE:  # only then can one document be too large
                import bson

                size = len(bson.encode(item))
                if size > MAX_USER_BSON_SIZE:
                    found.errors[i] = (BAD_VALUE, f"object to insert too large. size in bytes: {size}, max size: "
                                                  f"{MAX_USER_BSON_SIZE}")
        elif _update_depth(item.get("u"), item.get("q"), bool(item.get("upsert"))) > MAX_STORAGE_DEPTH:
            found.errors[i] = (OVERFLOW, f"Document exceeds maximum nesting depth of {MAX_STORAGE_DEPTH}")
    return found if found.errors else None


def without_refused(command: dict[str, Any], sequences: dict[str, list[Any]], found: Screening
                    ) -> tuple[dict[str, Any], dict[str, list[Any]], list[int]] | None:
    """The command with the refused statements left out (an ordered one stops before the first refused one, as
    MongoDB stops at its first error), and the original index of each statement kept; None when none is."""
    items = list(sequences[found.key] if found.in_sequence else command[found.key])
    first = min(found.errors)
    if command.get("ordered", True):
        keep = list(range(first))
    else:
        keep = [i for i in range(len(items)) if i not in found.errors]
    if not keep:
        return None
    kept = [items[i] for i in keep]
    if found.in_sequence:
        return command, {**sequences, found.key: kept}, keep
    return {**command, found.key: kept}, sequences, keep


def merge_refused(reply: dict[str, Any] | None, command: dict[str, Any], found: Screening,
                  kept: list[int]) -> dict[str, Any]:
    """The reply MongoDB gives: the engine's reply for the kept statements (its write error indexes mapped back
    to the original ones) plus a write error for each refused statement it would have reached."""
    if reply is None:
        reply = {"n": 0, "ok": 1.0}
        if found.key == "updates":
            reply["nModified"] = 0
    if reply.get("ok") != 1.0:
        return reply
    errors = [{**e, "index": kept[e["index"]]} for e in reply.get("writeErrors", [])
              if isinstance(e.get("index"), int) and e["index"] < len(kept)]
    ordered = command.get("ordered", True)
    if not (ordered and errors):  # an ordered command that failed earlier never reached ours
        refused = sorted(found.errors.items())[:1] if ordered else sorted(found.errors.items())
        errors += [{"index": i, "code": code, "codeName": _CODE_NAMES[code], "errmsg": msg}
                   for i, (code, msg) in refused]
    if "upserted" in reply:
        reply["upserted"] = [{**u, "index": kept[u["index"]]} for u in reply["upserted"]
                             if isinstance(u.get("index"), int) and u["index"] < len(kept)]
    reply["writeErrors"] = sorted(errors, key=lambda e: e["index"])
    return reply
