"""Login tokens of the dashboard: made at random, shown once, stored only as salted scrypt hashes.

Why tokens and not passwords: a person never chooses one (so it is never reused from elsewhere), and the
command that makes it prints it once, like ``pilot launchpad user add`` never prints a password twice. The file
``CONFIG_DIR/dashboard-tokens.json`` (mode 0600 in a 0700 directory) holds, per name, the salt, the scrypt
parameters and the hash: whoever reads it cannot log in with what it holds.

A token is ``NAME.SECRET``: the name says which hash to check (one scrypt per login, not one per stored token),
and the secret (32 random bytes, URL-safe base64) carries all the strength.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.configdir import private_dir, write_private

__all__ = ["TOKENS_FILE", "TokenError", "TokenInfo", "TokenStore"]

#: The file under the config dir.
TOKENS_FILE = "dashboard-tokens.json"
#: scrypt cost: n=2**14, r=8, p=1 (the parameters RFC 7914 suggests for interactive logins; ~16 MiB, ~50 ms)
_N, _R, _P = 2 ** 14, 8, 1
#: scrypt checks at once: each takes 16 MiB and tens of ms, so a flood of logins (before any login) must queue
#: here instead of taking the machine's memory
_SCRYPT_SLOTS = threading.BoundedSemaphore(2)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class TokenError(ValueError):
    """A token name that cannot be used, or one that is not there; the message says what to do."""


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without anything secret: its name and when it was made."""

    name: str
    created: float


def _hash(secret: str, salt: bytes, n: int = _N, r: int = _R, p: int = _P) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TokenStore:
    """The token file of a config dir.

    Parameters
    ----------
    config_dir : Path
        The config dir (``--config-dir``); the file is ``config_dir / TOKENS_FILE``.
    """

    def __init__(self, config_dir: Path) -> None:
        self.path = Path(config_dir) / TOKENS_FILE

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read {self.path}: {exc}; remove it and add the tokens again") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        return {k: v for k, v in tokens.items() if isinstance(v, dict)} if isinstance(tokens, dict) else {}

    def _save(self, tokens: dict[str, dict[str, Any]]) -> None:
        private_dir(self.path.parent)
        write_private(self.path, json.dumps({"version": 1, "tokens": tokens}, indent=2, sort_keys=True) + "\n",
                      fsync=True)

    def add(self, name: str) -> str:
        """Make a token for ``name`` (replacing an older one of that name) and return it: the only time it is
        seen. Raises :class:`TokenError` for a name other than letters, digits, ``_`` and ``-``."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '_' or '-'")
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        tokens = self._load()
        tokens[name] = {"salt": _b64(salt), "hash": _b64(_hash(secret, salt)), "n": _N, "r": _R, "p": _P,
                        "created": time.time()}
        self._save(tokens)
        return f"{name}.{secret}"

    def remove(self, name: str) -> None:
        """Forget ``name``'s token (sessions it opened end at their next request)."""
        tokens = self._load()
        if name not in tokens:
            known = ", ".join(sorted(tokens)) or "none"
            raise TokenError(f"no dashboard token named {name!r} (tokens: {known})")
        del tokens[name]
        self._save(tokens)

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(n, float(d.get("created") or 0.0)) for n, d in sorted(self._load().items())]

    def names(self) -> set[str]:
        return set(self._load())

    def stamps(self) -> dict[str, str]:
        """Name -> its token's salt: a value that changes whenever a token is made for the name (the salt is not
        secret; it tells one token of a name from the next)."""
        return {n: str(d.get("salt") or "") for n, d in self._load().items()}

    def verify(self, token: str) -> str | None:
        """The name a token belongs to, or None (a wrong, malformed or removed token)."""
        name, dot, secret = token.strip().partition(".")
        if not dot or not secret:
            return None
        try:
            entry = self._load().get(name)
        except TokenError:
            return None
        if entry is None:
            with _SCRYPT_SLOTS:
                _hash(secret, b"\0" * 16)   # the same work as for a known name: the time says nothing about names
            return None
        try:
            salt = base64.b64decode(entry["salt"])
            want = base64.b64decode(entry["hash"])
            with _SCRYPT_SLOTS:
                got = _hash(secret, salt, int(entry["n"]), int(entry["r"]), int(entry["p"]))
        except (KeyError, ValueError, TypeError):
            return None
        return name if hmac.compare_digest(got, want) else None
