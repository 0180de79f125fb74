"""A SCRAM-SHA-256 client written from RFC 5802 / RFC 7677, for tests that speak to the server without a driver.

Independent of ``pilot.launchpad.scram`` (the code under test): every step is the RFC's formula, and the
server's signature is checked, so a server that merely says "ok" does not pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

import bson

Command = Callable[[dict[str, Any]], dict[str, Any]]


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def client_first(user: str, nonce: str | None = None) -> tuple[str, bytes]:
    """``(nonce, client-first message)``; the user name escaped as RFC 5802 says (``=2C``, ``=3D``)."""
    nonce = nonce or base64.b64encode(os.urandom(24)).decode()
    name = user.replace("=", "=3D").replace(",", "=2C")
    return nonce, f"n,,n={name},r={nonce}".encode()


def client_final(password: str, first_bare: bytes, server_first: bytes) -> tuple[bytes, bytes]:
    """``(client-final message, the server signature the server must answer with)`` (RFC 5802 section 3)."""
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}".encode()
    auth_message = first_bare + b"," + server_first + b"," + without_proof
    proof = bytes(a ^ b for a, b in zip(client_key, _hmac(stored_key, auth_message), strict=True))
    server_sig = base64.b64encode(_hmac(_hmac(salted, b"Server Key"), auth_message))
    return without_proof + b",p=" + base64.b64encode(proof), b"v=" + server_sig


def login(command: Command, user: str, password: str, skip_empty: bool = True) -> dict[str, Any]:
    """Authenticate a connection with saslStart/saslContinue sent through ``command`` (a ``$db: admin`` command
    runner); returns the last reply. AssertionError when the server's signature is wrong."""
    _nonce, first = client_first(user)
    start: dict[str, Any] = {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bson.Binary(first)}
    if skip_empty:
        start["options"] = {"skipEmptyExchange": True}
    reply = command(start)
    if reply.get("ok") != 1.0:
        return reply
    final, expected = client_final(password, first[3:], bytes(reply["payload"]))
    reply = command({"saslContinue": 1, "conversationId": reply["conversationId"], "payload": bson.Binary(final)})
    if reply.get("ok") != 1.0:
        return reply
    assert bytes(reply["payload"]) == expected, "the server's signature does not prove it knows the keys"
    if not reply["done"]:
        reply = command({"saslContinue": 1, "conversationId": reply["conversationId"], "payload": bson.Binary(b"")})
    return reply


class WireConn:
    """One TCP connection speaking bare OP_MSG (layout: MongoDB's OP_MSG spec), no driver: the tests decide
    exactly what each command carries (a session id or none) and on which connection it goes."""

    def __init__(self, host: str, port: int) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=10)
        self._rid = 0

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def command(self, doc: dict[str, Any], db: str = "admin", lsid: Any = None) -> dict[str, Any]:
        import struct

        doc = {**doc, "$db": db}
        if lsid is not None:
            doc["lsid"] = {"id": bson.Binary(lsid.bytes, 4)}
        self._rid += 1
        payload = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
        self.sock.sendall(struct.pack("<iiii", 16 + len(payload), self._rid, 0, 2013) + payload)
        length, _rid, _to, opcode = struct.unpack("<iiii", self._recv(16))
        body = self._recv(length - 16)
        assert opcode == 2013 and body[4] == 0
        return bson.decode(body[5:])

    def login(self, user: str, password: str, skip_empty: bool = True) -> dict[str, Any]:
        return login(lambda d: self.command(d, "admin"), user, password, skip_empty)

    def close(self) -> None:
        self.sock.close()
