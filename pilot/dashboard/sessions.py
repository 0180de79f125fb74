"""Sessions of the dashboard: a login exchanges a token for a session cookie; each session has its CSRF token.

Why in memory: one process serves the dashboard, a restart asking everyone to log in again is cheap, and
nothing secret is ever written to disk. A session id and a CSRF token are 32 random bytes each; the id travels
only in the ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under TLS), the CSRF token only in the pages'
hidden form fields, and both are compared in constant time (:func:`hmac.compare_digest`).

A session lives :data:`IDLE_S` after its last request and :data:`MAX_S` at most; it ends at once when the token
that opened it is removed (``pilot dashboard token remove``): each request checks the token name is still
there.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "IDLE_S", "MAX_S", "LoginThrottle", "Session", "Sessions"]

#: The cookie's name.
COOKIE = "pilot_dashboard"
#: A session not used for this long ends (seconds).
IDLE_S = 8 * 3600.0
#: No session lives longer than this (seconds).
MAX_S = 7 * 86400.0


@dataclass
class Session:
    """A logged-in browser: which token name it used, its CSRF token, and its times."""

    sid: str
    name: str
    csrf: str
    created: float
    seen: float
    stamp: str = ""   # which token of that name opened it (a token added again for the name ends this session)


class Sessions:
    """The live sessions (thread safe: the server answers each request in its own thread).

    Parameters
    ----------
    token_stamps : callable
        Name -> a stamp of each token stored now (:meth:`pilot.dashboard.tokens.TokenStore.stamps`): a token
        removed, or replaced after a leak (``token add`` again), ends the sessions it opened.
    """

    def __init__(self, token_stamps: Callable[[], dict[str, str]]) -> None:
        self._token_stamps = token_stamps
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def open(self, name: str) -> Session:
        now = time.time()
        s = Session(secrets.token_urlsafe(32), name, secrets.token_urlsafe(32), now, now,
                    self._token_stamps().get(name, ""))
        with self._lock:
            self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The session of a cookie value, or None (unknown, expired, or its token removed)."""
        if not sid:
            return None
        now = time.time()
        with self._lock:
            found = None
            for known, s in list(self._by_id.items()):
                if now - s.seen > IDLE_S or now - s.created > MAX_S:
                    del self._by_id[known]
                elif hmac.compare_digest(known.encode(), sid.encode()):
                    found = s
        if found is None or self._token_stamps().get(found.name) != found.stamp:
            return None
        found.seen = now
        return found

    def close(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_id.pop(sid, None)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


class LoginThrottle:
    """Wrong logins per client address: after :attr:`limit` within :attr:`window` seconds, that address waits (HTTP
    429) until the oldest of them is out of the window. Tokens are 256-bit, so this guards the machine (scrypt's
    cost), not the tokens."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait(self, addr: str, now: float | None = None) -> float:
        """Seconds ``addr`` must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.get(addr, []) if now - t < self.window]
            if recent:
                self._failures[addr] = recent
            else:
                self._failures.pop(addr, None)
            return 0.0 if len(recent) < self.limit else self.window - (now - recent[0])

    def failed(self, addr: str, now: float | None = None) -> None:
        with self._lock:
            self._failures.setdefault(addr, []).append(time.monotonic() if now is None else now)
            if len(self._failures) > 10_000:   # a flood from many addresses: forget the oldest entries
                for key in list(self._failures)[:5_000]:
                    del self._failures[key]
