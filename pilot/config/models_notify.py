"""``notify:`` in ``pilot.yaml``: who hears of what needs a person (docs/notifications.md).

::

    notify:
      email: {host: smtp.example.org, user: pilot-bot, password_file: ~/.pilot/smtp-password,
              from: pilot@example.org, to: [me@example.org]}
      webhook: {url_file: ~/.pilot/webhook-url}
      unreachable_after: 900

Secrets never sit in this file's values as the manager keeps them: the SMTP password and the webhook token are
read from files (mode 0600 or stricter, checked here) when a message is sent; a webhook URL written inline
(``url:``) is kept as a secret value (``pilot config show`` prints stars), because Slack's URLs hold the token.
Plain (unencrypted) connections are allowed to the loopback interface only: a password or a token never crosses a
network in the clear.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import stat
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from pilot.config.errors import describe, field_error, field_errors
from pilot.config.units import base_dir_of, existing_file, expand_path, parse_walltime

__all__ = ["EVENT_KINDS", "EmailSettings", "NotifyConfig", "SmtpTls", "WebhookSettings", "is_loopback",
           "read_secret_file"]

#: What can be notified (pilot.notify.events): a Firework FIZZLED, a cluster unreachable (or refusing commands)
#: for ``unreachable_after``, the same cluster answering again (or accepting submissions again), a cluster held
#: because its pilots fail to start, a budget nearly spent, a one-time-password login that lapsed, a cluster whose
#: scheduler has refused every submission for ``unreachable_after``.
EVENT_KINDS = ("fizzled", "unreachable", "recovered", "held", "budget", "login", "refusing")


class SmtpTls(str, Enum):
    """How the SMTP connection is encrypted."""

    STARTTLS = "starttls"   # plain connect, then STARTTLS (port 587, RFC 3207): required, never skipped
    SSL = "ssl"             # TLS from the first byte (port 465, "SMTPS", RFC 8314)
    NONE = "none"           # no encryption: to a loopback server only (a local relay)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _private_file(v: Path | None, info: ValidationInfo, what: str, example: str) -> Path | None:
    """``v`` expanded (relative to the config dir), an existing regular file that only its owner may read."""
    if v is None:
        return None
    p = expand_path(v, base_dir_of(info))
    if not p.exists():
        raise field_error(f"file not found: {p}; write {what} into it (one line) and `chmod 600 {p}`, e.g. "
                          f"{example}")
    if not p.is_file():
        raise field_error(f"{p} is not a file; name the file that holds {what}")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise field_error(f"{p} may be read by others (mode {mode:04o}); it holds {what}: run `chmod 600 {p}`")
    if not os.access(p, os.R_OK):
        raise field_error(f"{p} is not readable by this user; it must be this user's file (chmod 600)")
    if not read_secret_file(p):
        raise field_error(f"{p} is empty; write {what} into it (one line)")
    return p


def _ca(v: Path | None, info: ValidationInfo) -> Path | None:
    if v is None:
        return None
    return existing_file(v, base_dir_of(info), "name the PEM file of the CA that signed the server's certificate, "
                                               "or leave ca_file out to use the system's CAs")


def read_secret_file(path: Path) -> str:
    """The first line of a secret file, stripped (a trailing newline is how editors save it)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text.splitlines()[0].strip() if text.strip() else ""


_REQUIRED = (("host", "host: smtp.example.org"), ("from", "from: pilot@example.org"), ("to", "to: [me@example.org]"))


class EmailSettings(BaseModel):
    """``notify.email``: one SMTP server and the recipients."""

    # dumped as written (``from``, not the attribute's name): `pilot config show` prints what pilot.yaml takes
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    host: str = Field(description="The SMTP server (submission service).", examples=["smtp.example.org"])
    port: int = Field(587, ge=1, le=65535, description="Its port: 587 for STARTTLS (the default), 465 for "
                      "tls: ssl.", examples=[587])
    tls: SmtpTls = Field(SmtpTls.STARTTLS, description="starttls (default: STARTTLS is required, a server that "
                         "does not offer it is an error), ssl (TLS from the start, port 465), or none (plain: only "
                         "to a server on this machine's loopback interface). Certificates are verified.",
                         examples=["starttls"])
    user: str | None = Field(None, description="The login name; null: the server takes mail without a login "
                             "(then password_file must be null too).", examples=["pilot-bot"])
    password_file: Path | None = Field(None, description="File holding the SMTP password (one line; mode 0600 "
                                       "or stricter). Read when a message is sent; never logged.",
                                       examples=["~/.pilot/smtp-password"])
    sender: str = Field(alias="from", description="The From: address.", examples=["pilot@example.org"])
    to: list[str] = Field(min_length=1, description="The recipients (one or more addresses).",
                          examples=[["me@example.org"]])
    ca_file: Path | None = Field(None, description="PEM file of the CA that signed the server's certificate (a site "
                                 "CA); null: the system's CAs.", examples=["/etc/ssl/site-ca.pem"])
    timeout: float = Field(15.0, gt=0, le=120, description="Seconds a connection or reply may take.",
                           examples=[15])

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """Unknown keys told by the names people write (``from``, not the attribute ``sender``)."""
        if not isinstance(data, dict):
            return data
        names = [f.alias or n for n, f in cls.model_fields.items()]
        bad, meant = [], set()
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
                meant.update(close)
                hint = f"did you mean '{close[0]}'?" if close else f"the fields are {', '.join(names)}"
                bad.append((str(key), f"unknown field '{key}' of notify.email; {hint}"))
        if bad:   # told with the missing ones at once (not those a misspelled key stands for)
            bad += [(k, f"required field is missing; add it, e.g. {ex}") for k, ex in _REQUIRED
                    if k not in data and k not in meant]
            raise field_errors(bad)
        return data

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _private_file(v, info, "the SMTP password", "password_file: ~/.pilot/smtp-password")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _ca(v, info)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        return _address(v, "from")

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        return [_address(a, "to") for a in v]

    @model_validator(mode="after")
    def _pairs(self) -> EmailSettings:
        if (self.user is None) != (self.password_file is None):
            missing = "password_file" if self.password_file is None else "user"
            example = "password_file: ~/.pilot/smtp-password" if missing == "password_file" else "user: pilot-bot"
            raise field_error(f"user and password_file go together: add {missing} (e.g. {example}), or remove both "
                              "for a server that takes mail without a login", subfield=missing)
        if self.tls is SmtpTls.NONE and not is_loopback(self.host):
            raise field_error(f"tls: none sends {'the password and ' if self.user else ''}every message in the clear "
                              f"to {self.host}, which is not this machine: write tls: starttls (port 587) or tls: ssl "
                              "(port 465)", subfield="tls")
        return self

    def where(self) -> str:
        """``smtp.example.org:587`` (what logs and messages name of the server)."""
        return f"{self.host}:{self.port}"


def _address(v: str, name: str) -> str:
    v = v.strip()
    if "@" not in v or any(c in v for c in "\r\n,; ") or v.startswith("@") or v.endswith("@"):
        raise field_error(f"{v!r} is not one mail address; write e.g. {name}: "
                          f"{'[me@example.org]' if name == 'to' else 'pilot@example.org'} (a list for several)")
    return v


class WebhookSettings(BaseModel):
    """``notify.webhook``: a Slack- or Mattermost-compatible incoming webhook (POST ``{"text": ...}``)."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = Field(None, description="The webhook URL (https; http only to this machine). Slack's "
                                  "URLs hold their token: prefer url_file.",
                                  examples=["https://chat.example.org/hooks/xyz"])
    url_file: Path | None = Field(None, description="File holding the webhook URL (one line; mode 0600 or "
                                  "stricter).", examples=["~/.pilot/webhook-url"])
    token_file: Path | None = Field(None, description="File holding a token sent as 'Authorization: Bearer ...' "
                                    "(one line; mode 0600 or stricter); null: none.", examples=["~/.pilot/hook-token"])
    ca_file: Path | None = Field(None, description="PEM file of the CA that signed the server's certificate; null: "
                                 "the system's CAs.", examples=["/etc/ssl/site-ca.pem"])
    timeout: float = Field(10.0, gt=0, le=120, description="Seconds a call may take.", examples=[10])

    @field_validator("url_file")
    @classmethod
    def _url_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _private_file(v, info, "the webhook URL", "url_file: ~/.pilot/webhook-url")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _private_file(v, info, "the webhook token", "token_file: ~/.pilot/hook-token")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _ca(v, info)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSettings:
        if (self.url is None) == (self.url_file is None):
            which = "both are set: keep one" if self.url is not None else "neither is set: add one"
            raise field_error(f"url or url_file: {which} (url_file: ~/.pilot/webhook-url keeps the token out of "
                              "pilot.yaml)", subfield="url_file")
        field_name = "url" if self.url is not None else "url_file"
        problem = url_problem(self.secret_url())
        if problem:
            raise field_error(problem, subfield=field_name)
        return self

    def secret_url(self) -> str:
        """The URL (a secret: never log it; :meth:`where` is what may be shown)."""
        if self.url is not None:
            return self.url.get_secret_value().strip()
        if self.url_file is None:   # the validator requires one of them
            raise ValueError("notify.webhook has neither url nor url_file")
        return read_secret_file(self.url_file)

    def where(self) -> str:
        """``https://chat.example.org`` (scheme and host: the path and query may hold the token)."""
        try:
            parts = urlsplit(self.secret_url())
        except OSError:
            return f"(cannot read {self.url_file})"
        return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if _port(parts) else "")


def _port(parts: Any) -> int | None:
    try:
        return int(parts.port) if parts.port else None
    except ValueError:
        return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (its text never appears in the answer: it may hold a token), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return "the webhook URL is not a URL; write the whole https://... address your chat service gave you"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # http.client cannot parse it (InvalidURL quoting the password), and it would be the secret's second home
        return ("the webhook URL holds a user name or password (USER:PASSWORD@HOST); write the URL without it and "
                "put the token into token_file (sent as 'Authorization: Bearer TOKEN', e.g. token_file: "
                "~/.pilot/hook-token)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return (f"the webhook URL must start with https:// and name a host (it starts with "
                f"{(parts.scheme or '(no scheme)')!r}); write the whole address your chat service gave you")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (f"the webhook URL is plain http to {parts.hostname}, which is not this machine: the token would cross "
                "the network in the clear; write https://")
    return None


class NotifyConfig(BaseModel):
    """``notify:`` in ``pilot.yaml``: messages to a person when something needs one (docs/notifications.md)."""

    model_config = ConfigDict(extra="forbid")

    email: EmailSettings | None = Field(None, description="Send by e-mail (SMTP); null: no e-mail.")
    webhook: WebhookSettings | None = Field(None, description="Send to a chat webhook; null: none.")
    unreachable_after: float = Field(900.0, description="How long a cluster may be unreachable (or refuse "
                                     "commands) before a person hears of it: seconds, or \"HH:MM:SS\" / \"MM:SS\".",
                                     examples=[900, "00:15:00"])
    batch: float = Field(60.0, ge=0, le=86400, description="Seconds an event waits for more of its kind: all that "
                         "came meanwhile go out as one digest.", examples=[60])
    budget_warn: float = Field(0.9, gt=0, le=1, description="Warn when a budget's used + committed core-hours reach "
                               "this fraction of it.", examples=[0.9])
    events: list[str] = Field(default_factory=lambda: list(EVENT_KINDS), description="Which kinds are sent: "
                              f"{', '.join(EVENT_KINDS)} (default: all).", examples=[["fizzled", "unreachable"]])

    @field_validator("unreachable_after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise field_error(f"expected a duration, got {describe(v)}; write seconds (900) or \"00:15:00\"")
        try:
            seconds = float(v) if isinstance(v, (int, float)) else float(parse_walltime(v.strip(), "local"))
        except ValueError:
            raise field_error(f"{v!r} is not a duration; write seconds (900) or \"HH:MM:SS\" (\"00:15:00\")") from None
        if seconds < 0:
            raise field_error(f"{v!r} is negative; write seconds (900) or \"00:15:00\"")
        return seconds

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        for kind in v:
            if kind not in EVENT_KINDS:
                close = difflib.get_close_matches(str(kind), EVENT_KINDS, n=1, cutoff=0.5)
                did = f" (did you mean '{close[0]}'?)" if close else ""
                raise field_error(f"unknown event {kind!r}{did}; write some of: {', '.join(EVENT_KINDS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _a_channel(self) -> NotifyConfig:
        if self.email is None and self.webhook is None:
            raise field_error("no channel: add email: {host: ..., from: ..., to: [...]} or webhook: {url_file: ...} "
                              "(docs/notifications.md), or remove notify:", subfield="email")
        return self

    def channels(self) -> list[str]:
        """The configured channels' names: ``email``, ``webhook``."""
        return [n for n, c in (("email", self.email), ("webhook", self.webhook)) if c is not None]

    def summary(self) -> list[str]:
        """The settings in words, without secrets (``pilot config check``)."""
        out = []
        if self.email is not None:
            e = self.email
            login = f", login {e.user} (password from {e.password_file})" if e.user else ", no login"
            out.append(f"notify: email via {e.where()} ({e.tls.value}{login}) from {e.sender} to {', '.join(e.to)}")
        if self.webhook is not None:
            w = self.webhook
            src = f"URL from {w.url_file}" if w.url_file else "URL in pilot.yaml"
            tok = f", token from {w.token_file}" if w.token_file else ""
            out.append(f"notify: webhook {w.where()} ({src}{tok})")
        out.append(f"notify: events {', '.join(self.events)}; unreachable after {self.unreachable_after:g} s, "
                   f"digest after {self.batch:g} s, budget warning at {self.budget_warn:.0%}")
        return out

    def to_public(self) -> dict[str, Any]:
        """JSON-ready settings without secrets (``pilot config check --json``)."""
        d = self.model_dump(mode="json", by_alias=True)
        if self.webhook is not None:
            d["webhook"]["url"] = "(hidden)" if self.webhook.url is not None else None
            d["webhook"]["where"] = self.webhook.where()
        return d
