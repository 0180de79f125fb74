"""MongoDB wire protocol framing: OP_MSG requests and replies, plus the legacy OP_QUERY handshake.

Only the framing lives here (bytes in, :class:`Request` out; reply document in, bytes out): no socket
policy, no command semantics. References:

* OP_MSG: https://github.com/mongodb/specifications/blob/master/source/message/OP_MSG.md
* standard message header and OP_QUERY/OP_REPLY (legacy opcodes):
  https://www.mongodb.com/docs/manual/legacy-opcodes/
"""

from __future__ import annotations

import itertools
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

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
MAX_MESSAGE_SIZE = 48_000_000
#: The largest document we advertise (``maxBsonObjectSize``), MongoDB's 16 MiB.
MAX_BSON_SIZE = 16 * 1024 * 1024

_HEADER = struct.Struct("<iiii")

#: Naive UTC datetimes like mongomock stores them; out-of-range dates decode to DatetimeMS instead of failing.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class ProtocolError(Exception):
    """The peer sent bytes that are not a message we can parse; the connection should be closed."""


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
    """

    request_id: int
    opcode: int
    db: str
    command: dict[str, Any]
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    more_to_come: bool = False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; raise ConnectionError on EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def read_message(sock: socket.socket) -> tuple[int, int, bytes]:
    """Read one message from ``sock``.

    Returns
    -------
    tuple
        ``(request_id, opcode, body)`` where body excludes the 16-byte header.
    """
    length, request_id, _response_to, opcode = _HEADER.unpack(_recv_exact(sock, 16))
    if length < 16 or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} outside 16..{MAX_MESSAGE_SIZE}")
    return request_id, opcode, _recv_exact(sock, length - 16)


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8"), end + 1


def parse_request(request_id: int, opcode: int, body: bytes) -> Request:
    """Decode an OP_MSG or OP_QUERY body into a :class:`Request`.

    Raises
    ------
    ProtocolError
        For other opcodes (e.g. OP_COMPRESSED: we never advertise compression) or malformed bodies.
    """
    try:
        if opcode == OP_MSG:
            return _parse_msg(request_id, body)
        if opcode == OP_QUERY:
            return _parse_query(request_id, body)
    except (ValueError, IndexError, struct.error, bson.errors.BSONError) as exc:
        raise ProtocolError(f"malformed opcode {opcode} message: {exc}") from exc
    raise ProtocolError(f"unsupported opcode {opcode} (this server speaks OP_MSG and the OP_QUERY handshake)")


def _parse_msg(request_id: int, body: bytes) -> Request:
    (flags,) = struct.unpack_from("<I", body, 0)
    if flags & ~_KNOWN_FLAGS & 0xFFFF:
        raise ProtocolError(f"OP_MSG with unknown required flag bits {flags:#x}")
    end = len(body) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
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
    db = command.get("$db", "admin")
    return Request(request_id, OP_MSG, str(db), command, sequences, bool(flags & FLAG_MORE_TO_COME))


def _parse_query(request_id: int, body: bytes) -> Request:
    # int32 flags, cstring fullCollectionName, int32 numberToSkip, int32 numberToReturn, document query
    ns, p = _cstring(body, 4)
    (size,) = struct.unpack_from("<i", body, p + 8)
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
