"""Passwords out of everything shown: connection strings redacted, secrets scrubbed from driver messages.

A leaf module (standard library only), so that the pilot worker, which imports nothing heavy of ``pilot`` to start
quickly inside every batch job, and the LaunchPad-file reader share one implementation. Held to a table of
hand-written expectations from the connection-string spec in ``tests/launchpad/test_secrets.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["HIDDEN", "error_text", "redact_uri", "scrub", "secrets_of", "uri_hosts", "uri_password"]

#: What stands in for a password (or a piece of one) in anything shown.
HIDDEN = "***"
#: A run of this many characters of a password is removed wherever it appears in a driver's message: a password
#: with unescaped delimiters reaches pymongo's URI parser cut into pieces (a "database name", a "port", an option),
#: and its messages quote those pieces.
MIN_PIECE = 4
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: Option values that are secrets themselves: ``tlsCertificateKeyFilePassword=...``,
#: ``authMechanismProperties=AWS_SESSION_TOKEN:...``.
_SECRET_OPTION = re.compile(r"([A-Za-z_]*(?:password|secret|token)[A-Za-z_]*)([=:])([^&;,\s]*)", re.IGNORECASE)
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)
_URI_IN_TEXT = re.compile(r"mongodb(?:\+srv)?://[^\s'\"<>]+", re.IGNORECASE)


def _split_userinfo(uri: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, the rest)``.

    The MongoDB connection string is ``mongodb[+srv]://[username:password@]host1[:port1][,...][/[db][?options]]``;
    the userinfo ends at the LAST ``@`` before the host list (pymongo: ``host_part.rpartition("@")``), and
    reserved characters in it should be percent-encoded (``%40`` for ``@``, ``%2F`` for ``/``). People paste
    passwords as they are, so the last ``@`` of the whole string is taken: a password with a raw ``/``, ``?``,
    ``#``, ``:`` or ``@`` is then hidden whole. The cost, an ``@`` in an option value (``appName=a@b``), is that
    more is hidden than needed, never less.
    """
    m = _SCHEME.match(uri)
    if not m:
        return "", None, uri
    rest = uri[m.end():]
    at = rest.rfind("@")
    if at < 0:
        return uri[:m.end()], None, rest
    return uri[:m.end()], rest[:at], rest[at + 1:]


def _hide_options(after_userinfo: str) -> str:
    """The host list as is; in the options (after the first ``?``) the values of secret options hidden."""
    hosts, q, options = after_userinfo.partition("?")
    return hosts + q + _SECRET_OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN}", options)


def redact_uri(uri: str) -> str:
    """``uri`` with its password replaced by ``***`` (and the values of secret options such as
    ``tlsCertificateKeyFilePassword``); a URI without a password is returned as is.

    ``mongodb://alice:p%2Fa@h1:27017,h2/db?replicaSet=rs`` -> ``mongodb://alice:***@h1:27017,h2/db?replicaSet=rs``;
    see :func:`_split_userinfo` for where the password ends.
    """
    head, userinfo, rest = _split_userinfo(uri)
    if not head:
        return uri
    if userinfo is None:
        return head + _hide_options(rest)
    user, colon, _ = userinfo.partition(":")
    return f"{head}{user}{':' + HIDDEN if colon else ''}@{_hide_options(rest)}"


def uri_hosts(uri: str) -> str:
    """``scheme://hosts/`` of a connection string: no user, password, database or options (what status shows)."""
    head, _, rest = _split_userinfo(uri)
    if not head:
        return uri
    return f"{head}{re.split(r'[/?]', rest, maxsplit=1)[0]}/"


def uri_password(uri: str) -> str | None:
    """The password of a connection string as written (still percent-encoded), None when it has none."""
    _, userinfo, _ = _split_userinfo(uri)
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2]


def secrets_of(settings: Mapping[str, Any] | Any) -> list[str]:
    """The secrets a LaunchPad (or the settings of its file) holds: its password, the password of its URI and
    the values of secret options (in the URI and in ``mongoclient_kwargs``)."""
    def get(key: str) -> Any:
        return settings.get(key) if isinstance(settings, Mapping) else getattr(settings, key, None)

    out = [str(get("password") or "")]
    host = str(get("host") or "")
    if "://" in host:
        out.append(uri_password(host) or "")
        out += [m.group(3) for m in _SECRET_OPTION.finditer(host.partition("?")[2])]
    kwargs = get("mongoclient_kwargs")
    if isinstance(kwargs, Mapping):
        out += [str(v) for k, v in kwargs.items() if _SECRET_KEY.search(str(k)) and v]
    return [s for s in out if s]


def _forms(secret: str) -> set[str]:
    """``secret`` as written, decoded (``%xx``, ``+``) and percent-encoded (upper and lower case hex)."""
    from urllib.parse import quote, quote_plus, unquote, unquote_plus

    plain = {secret, unquote(secret), unquote_plus(secret)}
    encoded = {f(p, safe="") for p in plain for f in (quote, quote_plus)}
    encoded |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), e) for e in encoded}
    return {f for f in plain | encoded if f}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` (a driver's message) without the secrets: each one verbatim, decoded or percent-encoded, every
    run of :data:`MIN_PIECE` or more of its characters, and the password of any connection string in it.

    A secret shorter than :data:`MIN_PIECE` is removed only where it stands alone (not inside a word).
    """
    forms = sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True)
    for form in forms:
        if len(form) >= MIN_PIECE:
            text = text.replace(form, HIDDEN)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", HIDDEN, text)
    for form in forms:
        for size in range(len(form) - 1, MIN_PIECE - 1, -1):
            for i in range(len(form) - size + 1):
                piece = form[i:i + size]
                if piece in text:
                    text = text.replace(piece, HIDDEN)
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def error_text(exc: BaseException, lp: Any) -> str:
    """``Type: message`` of an exception raised while using ``lp`` (a LaunchPad or its settings), scrubbed of
    ``lp``'s secrets: pymongo's messages can hold the URI, or pieces of it."""
    return f"{type(exc).__name__}: {scrub(str(exc), secrets_of(lp))}"
