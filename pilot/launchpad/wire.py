"""MongoDB wire protocol framing: OP_MSG requests and replies, plus the legacy OP_QUERY handshake.

Only the framing lives here (bytes in, :class:`Request` out; reply document in, bytes out): no socket
policy (that is :mod:`pilot.launchpad.connections`), no command semantics. Every document of a message is
checked against MongoDB's size and depth limits on its raw bytes before it is decoded
(:func:`pilot.launchpad.limits.check_document`). References:

* OP_MSG: https://github.com/mongodb/specifications/blob/master/source/message/OP_MSG.md
* standard message header and OP_QUERY/OP_REPLY (legacy opcodes):
  https://www.mongodb.com/docs/manual/legacy-opcodes/
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

from pilot.launchpad import limits

#: Opcodes (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/#opcodes).
OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

#: OP_MSG flag bits.
FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
_KNOWN_FLAGS = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | (1 << 16)  # exhaustAllowed

#: The largest message we accept and advertise (``maxMessageSizeBytes`` in the hello reply).
MAX_MESSAGE_SIZE = limits.DEFAULT_MAX_MESSAGE_BYTES
#: The largest document we advertise (``maxBsonObjectSize``), MongoDB's 16 MiB.
MAX_BSON_SIZE = 16 * 1024 * 1024
#: What the hello reply advertises as ``maxMessageSizeBytes``: the server's ``--max-message-mb`` (set when it
#: starts serving; drivers split their batches to fit, so the advertised and the enforced size must agree).
message_size_limit = MAX_MESSAGE_SIZE

_HEADER = struct.Struct("<iiii")

#: Naive UTC datetimes like mongomock stores them; out-of-range dates decode to DatetimeMS instead of failing.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class ProtocolError(Exception):
    """The peer sent bytes that are not a message we can parse; the connection should be closed."""


class Refused(Exception):
    """A well-framed message whose documents break MongoDB's limits (:func:`pilot.launchpad.limits.check_document`):
    it is answered with ``reply`` (unless ``moreToCome``), without being decoded, and the connection stays."""

    def __init__(self, request: Request, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("errmsg", ""))
        self.request = request
        self.reply = reply


@dataclass
class Request:
    """One decoded request.

    Attributes
    ----------
    request_id:
        The client's requestID, echoed as responseTo in the reply.
    opcode:
        OP_MSG or OP_QUERY.
    db:
        The database the command runs against (``$db`` for OP_MSG, the namespace prefix for OP_QUERY).
    command:
        The command document (first key = command name).
    sequences:
        OP_MSG document sequences (kind-1 sections), e.g. ``{"documents": [...]}`` for bulk inserts.
    more_to_come:
        The client expects no reply (unacknowledged write).
    deep:
        Some document of the message nests deeper than MongoDB stores documents
        (:data:`pilot.launchpad.limits.MAX_STORAGE_DEPTH`): its writes must be screened.
    size:
        The message's body length in bytes.
    """

    request_id: int
    opcode: int
    db: str
    command: dict[str, Any]
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    more_to_come: bool = False
    deep: bool = False
    size: int = 0


def parse_header(header: bytes, max_size: int = MAX_MESSAGE_SIZE) -> tuple[int, int, int]:
    """``(length, request_id, opcode)`` of a 16-byte message header.

    Raises
    ------
    ProtocolError
        The length is below 16 or above ``max_size``: the body is never read (nor memory reserved for it).
    """
    length, request_id, _response_to, opcode = _HEADER.unpack(header)
    if length < 16 or length > max_size:
        raise ProtocolError(f"message length {length} outside 16..{max_size}")
    return length, request_id, opcode


def _cstring(data: bytes | bytearray, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8"), end + 1


def parse_request(request_id: int, opcode: int, body: bytes | bytearray) -> Request:
    """Decode an OP_MSG or OP_QUERY body into a :class:`Request`.

    Raises
    ------
    ProtocolError
        For other opcodes (e.g. OP_COMPRESSED: we never advertise compression) or malformed bodies.
    Refused
        A document of the message is too deep or too large (checked on the raw bytes, before decoding).
    """
    try:
        if opcode == OP_MSG:
            return _parse_msg(request_id, body)
        if opcode == OP_QUERY:
            return _parse_query(request_id, body)
    except (ValueError, IndexError, struct.error, bson.errors.BSONError) as exc:
        raise ProtocolError(f"malformed opcode {opcode} message: {exc}") from exc
    raise ProtocolError(f"unsupported opcode {opcode} (this server speaks OP_MSG and the OP_QUERY handshake)")


def _parse_msg(request_id: int, body: bytes | bytearray) -> Request:
    (flags,) = struct.unpack_from("<I", body, 0)
    if flags & ~_KNOWN_FLAGS & 0xFFFF:
        raise ProtocolError(f"OP_MSG with unknown required flag bits {flags:#x}")
    end = len(body) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
    req = Request(request_id, OP_MSG, "admin", {}, more_to_come=bool(flags & FLAG_MORE_TO_COME), size=len(body))
    req.deep = _check_sections(req, body, end)
    pos = 4
    command: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind = body[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", body, pos)
        if size < 5 or pos + size > end:
            raise ProtocolError(f"OP_MSG section size {size} out of bounds")
        if kind == 0:
            if command is not None:
                raise ProtocolError("OP_MSG with two body sections")
            command = bson.decode(body[pos:pos + size], CODEC)
        elif kind == 1:
            ident, p = _cstring(body, pos + 4)
            sequences.setdefault(ident, []).extend(bson.decode_all(body[p:pos + size], CODEC))
        else:
            raise ProtocolError(f"OP_MSG section kind {kind} unknown")
        pos += size
    if not command:
        raise ProtocolError("OP_MSG without a command document")
    req.db, req.command, req.sequences = str(command.get("$db", "admin")), command, sequences
    return req


def _check_sections(req: Request, body: bytes | bytearray, end: int) -> bool:
    """Check every document of an OP_MSG on its raw bytes before any is decoded; True when one may nest deeper
    than stored documents may. Malformed framing is left to the decoder.

    Raises
    ------
    Refused
        A document breaks MongoDB's size or depth limit."""
    deep = False
    pos = 4
    try:
        while pos < end:
            kind = body[pos]
            (size,) = struct.unpack_from("<i", body, pos + 1)
            if size < 5 or pos + 1 + size > end:
                return deep
            if kind == 0:
                deep |= limits.check_document(body, pos + 1, pos + 1 + size)
            elif kind == 1:
                p = body.index(b"\x00", pos + 5) + 1
                while p < pos + 1 + size:
                    (n,) = struct.unpack_from("<i", body, p)
                    if n < 5:
                        return deep
                    deep |= limits.check_document(body, p, p + n)
                    p += n
            pos += 1 + size
    except limits.LimitError as exc:
        raise Refused(req, exc.reply()) from None
    except (ValueError, IndexError, struct.error):
        pass  # the decoder refuses it with its own words
    return deep


def _parse_query(request_id: int, body: bytes | bytearray) -> Request:
    # int32 flags, cstring fullCollectionName, int32 numberToSkip, int32 numberToReturn, document query
    ns, p = _cstring(body, 4)
    (size,) = struct.unpack_from("<i", body, p + 8)
    try:
        limits.check_document(body, p + 8, p + 8 + size)
    except limits.LimitError as exc:
        raise Refused(Request(request_id, OP_QUERY, ns.partition(".")[0], {}), exc.reply()) from None
    query = bson.decode(body[p + 8:p + 8 + size], CODEC)
    if "$query" in query:
        query = dict(query["$query"])
    db, _, coll = ns.partition(".")
    if coll != "$cmd":
        # Legacy find on a collection: answer with an error document instead of guessing.
        query = {"$legacyQuery": ns}
    return Request(request_id, OP_QUERY, db, query)


_REQUEST_IDS = itertools.count(1)  # next() on a count is atomic under the GIL


def _request_id() -> int:
    return next(_REQUEST_IDS) & 0x7FFFFFFF


def encode_reply(request: Request, reply: dict[str, Any]) -> bytes:
    """Encode ``reply`` as the answer to ``request`` (OP_MSG for OP_MSG, OP_REPLY for OP_QUERY)."""
    doc = bson.encode(reply, codec_options=CODEC)
    if request.opcode == OP_MSG:
        payload = b"\x00\x00\x00\x00\x00" + doc  # flagBits=0, section kind 0
        return _HEADER.pack(16 + len(payload), _request_id(), request.request_id, OP_MSG) + payload
    # OP_REPLY: int32 responseFlags, int64 cursorID, int32 startingFrom, int32 numberReturned, documents
    payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
    return _HEADER.pack(16 + len(payload), _request_id(), request.request_id, OP_REPLY) + payload
