"""SCRAM-SHA-256, the server's side (RFC 5802 with RFC 7677's hash), as MongoDB speaks it.

Pure protocol: bytes in, bytes out, no sockets and no database. :mod:`pilot.launchpad.users` wraps it in
MongoDB's ``saslStart``/``saslContinue`` commands and looks the keys up in ``admin.system.users``.

Why SCRAM and only SHA-256: it is what every official driver (pymongo, hence FireWorks' ``LaunchPad``,
``lpad`` and ``rlaunch``; mongosh) does by default against MongoDB >= 4.0, so clients authenticate unchanged
with ``username``/``password``/``authsource``; the server keeps only salted keys (a stolen data dir does not
give the password, and the password never crosses the wire); SHA-1 would need MongoDB's MD5 pre-hash of the
password and adds nothing.

The exchange (RFC 5802 section 3)::

    client-first  n,,n=USER,r=CNONCE
    server-first  r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
    client-final  c=biws,r=CNONCE+SNONCE,p=PROOF
    server-final  v=SERVER-SIGNATURE

A user that does not exist gets a server-first message like any other (a salt derived from the name and a
per-process secret, so asking twice gives the same answer) and fails at the proof, exactly as a wrong
password does: the server does not tell which user names exist (RFC 5802 section 5.1, "mock").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.saslprep import saslprep

__all__ = ["DEFAULT_ITERATIONS", "MECHANISM", "ScramError", "ScramKeys", "ScramServer", "derive_keys"]

MECHANISM = "SCRAM-SHA-256"
#: MongoDB's default ``scramSHA256IterationCount``; drivers refuse fewer than 4096.
DEFAULT_ITERATIONS = 15000
_SALT_BYTES = 28  # MongoDB's salt length for SCRAM-SHA-256
_NONCE_BYTES = 24
#: Mock salts for unknown users are derived from this (per process: stable while the server runs).
_MOCK_SECRET = secrets.token_bytes(32)


class ScramError(Exception):
    """The exchange failed; ``code`` is MongoDB's (18 AuthenticationFailed, 17 ProtocolError, 2 BadValue)."""

    def __init__(self, message: str, code: int = 18) -> None:
        super().__init__(message)
        self.code = code


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class ScramKeys:
    """What the server stores for one user instead of the password (RFC 5802 section 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_doc(self) -> dict[str, Any]:
        """MongoDB's own shape: ``credentials["SCRAM-SHA-256"]`` of an ``admin.system.users`` document."""
        return {"iterationCount": self.iterations, "salt": _b64(self.salt), "storedKey": _b64(self.stored_key),
                "serverKey": _b64(self.server_key)}

    @classmethod
    def from_doc(cls, doc: Any) -> ScramKeys | None:
        """The keys of a ``credentials["SCRAM-SHA-256"]`` document; None when it is not one (a hand-edited user)."""
        if not isinstance(doc, dict):
            return None
        try:
            keys = cls(base64.b64decode(doc["salt"], validate=True), int(doc["iterationCount"]),
                       base64.b64decode(doc["storedKey"], validate=True),
                       base64.b64decode(doc["serverKey"], validate=True))
        except (KeyError, TypeError, ValueError):
            return None
        return keys if keys.iterations >= 4096 and len(keys.stored_key) == 32 == len(keys.server_key) else None

    def matches(self, password: str) -> bool:
        """True if ``password`` gives these keys (a check made on the server side, e.g. of a LaunchPad file)."""
        other = derive_keys(password, self.salt, self.iterations)
        return hmac.compare_digest(other.stored_key, self.stored_key)


def derive_keys(password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> ScramKeys:
    """Salted keys of ``password`` (SASLprep'd, as drivers do for SCRAM-SHA-256; a random salt unless given)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramKeys(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))


def _mock_keys(username: str) -> ScramKeys:
    """Keys for a user that does not exist: the same salt every time, and no password matches them."""
    salt = _hmac(_MOCK_SECRET, b"salt:" + username.encode("utf-8"))[:_SALT_BYTES]
    return ScramKeys(salt, DEFAULT_ITERATIONS, _hmac(_MOCK_SECRET, b"stored"), _hmac(_MOCK_SECRET, b"server"))


def _attributes(message: bytes) -> list[tuple[str, str]]:
    """``a=1,b=2`` as ``[("a", "1"), ("b", "2")]`` (values may contain ``=``)."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramError("SCRAM message is not UTF-8", 17) from exc
    out = []
    for part in text.split(","):
        name, eq, value = part.partition("=")
        if not eq or len(name) != 1:
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}", 17)
        out.append((name, value))
    return out


def _decode_name(value: str) -> str:
    """RFC 5802 ``saslname``: ``=2C`` is a comma, ``=3D`` an equals sign; any other ``=`` is an error."""
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise ScramError("malformed SCRAM user name", 17)
    return value.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One authentication conversation (a ``saslStart`` and its ``saslContinue``).

    Parameters
    ----------
    lookup:
        ``lookup(username) -> ScramKeys | None``: the stored keys of that user in the database the client
        authenticates against (None: no such user).
    server_nonce:
        Only for tests with fixed values (RFC 7677's example); random otherwise.
    """

    def __init__(self, lookup: Callable[[str], ScramKeys | None], server_nonce: str | None = None) -> None:
        self._lookup = lookup
        self._snonce = server_nonce or _b64(secrets.token_bytes(_NONCE_BYTES))
        self.username = ""
        self._keys: ScramKeys | None = None
        self._known = False
        self._gs2 = b""
        self._client_first_bare = b""
        self._server_first = b""
        self.finished = False

    def first(self, client_first: bytes) -> bytes:
        """Answer the client-first message with the server-first message."""
        gs2, sep, bare = client_first.partition(b",")
        authzid, sep2, bare = bare.partition(b",")
        if not sep or not sep2 or gs2 not in (b"n", b"y"):
            # "p=...": the client wants channel binding, which MongoDB does not offer either
            raise ScramError("SCRAM channel binding is not supported; use the gs2 header 'n,,'", 2)
        if authzid and authzid[2:] != bare.partition(b",")[0][2:]:
            raise ScramError("SCRAM authorization identity must be empty or the user itself", 2)
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramError("malformed SCRAM client-first message", 17)
        self.username = _decode_name(attrs[0][1])
        if not self.username:
            raise ScramError("SCRAM user name is empty", 2)
        keys = self._lookup(self.username)
        self._known = keys is not None
        self._keys = keys or _mock_keys(self.username)
        self._gs2 = gs2 + b"," + authzid + b","
        self._client_first_bare = bare
        nonce = attrs[1][1] + self._snonce
        self._server_first = f"r={nonce},s={_b64(self._keys.salt)},i={self._keys.iterations}".encode()
        return self._server_first

    def final(self, client_final: bytes) -> bytes:
        """Check the client's proof; answer with the server signature. ScramError(18) for a wrong password."""
        if self._keys is None or self.finished:
            raise ScramError("SCRAM client-final message out of order", 17)
        without_proof, sep, proof_part = client_final.rpartition(b",p=")
        attrs = _attributes(without_proof)
        if not sep or len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramError("malformed SCRAM client-final message", 17)
        if attrs[0][1] != _b64(self._gs2):
            raise ScramError("SCRAM channel binding data does not match the gs2 header", 17)
        if attrs[1][1].encode() != self._server_first[2:].partition(b",")[0]:
            raise ScramError("SCRAM nonce does not match", 17)
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError as exc:
            raise ScramError("malformed SCRAM proof", 17) from exc
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        signature = _hmac(self._keys.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("Authentication failed.", 18)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._keys.stored_key)
        if not (ok and self._known):
            raise ScramError("Authentication failed.", 18)
        self.finished = True
        return b"v=" + _b64(_hmac(self._keys.server_key, auth_message)).encode()
