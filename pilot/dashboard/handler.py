"""The HTTP side: routes, the login, the CSRF check, and the headers every answer carries.

Rules (docs/dashboard.md, "Security"):

* every page and every JSON endpoint needs a session: without one, ``GET /api/...`` answers **401** (JSON),
  a page answers **401** with the login form as its body (a browser shows the form in place of the page, and
  the login leads back to it), and any ``POST`` but the login answers **401**;
* every ``POST`` with a session needs the session's CSRF token in the form field ``csrf``: without it, or with
  another, **403**;
* actions are ``POST /action`` only, after a confirm page (``GET /confirm``) that changes nothing;
* answers carry ``Cache-Control: no-store``, a Content-Security-Policy that allows only this server's own
  scripts and styles (no inline script), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``;
* the log line of a request names the method, the path (without its query) and the status, never a cookie,
  a token or a form field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import re
import socket
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pymongo.errors import PyMongoError

from pilot.dashboard.actions import ACTIONS, ActionError, run_action
from pilot.dashboard.app import STATIC, Dashboard
from pilot.dashboard.sessions import COOKIE, Session
from pilot.launchpad.files import short_reason
from pilot.redact import error_text

log = logging.getLogger("pilot.dashboard")

__all__ = ["Handler"]

#: At most this many bytes of a form are read.
MAX_FORM = 16 * 1024
#: Seconds a client has for a request's first line and headers.
HEADER_DEADLINE_S = 10.0
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(js|css)$")


def _local(path: str | None) -> str:
    """``path`` when it is a path on this server (``/...``, not ``//host`` nor ``/\\host``), else ``/``: where a
    login, a confirm page or an action may send the browser back to, never another site."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or any(
            ord(ch) < 32 for ch in path):
        return "/"
    # percent-encoded: a header carries Latin-1 only, and a path of other letters must not end the request
    return quote(path, safe="/?&=%:@!$'()*+,;~-._")


#: The last page number a list accepts (a huge one would overflow the database's 64-bit skip).
MAX_PAGE = 100_000


def _int(text: str | None, default: int = 1) -> int:
    try:
        return min(MAX_PAGE, max(1, int(text or default)))
    except ValueError:
        return default


class Handler(BaseHTTPRequestHandler):
    """One request (the server runs each in its own thread). ``server.dashboard`` is the :class:`Dashboard`."""

    server_version = "pilot-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    _header_timer: threading.Timer | None = None

    # ------------------------------------------------------------------ a deadline for the request line and headers
    def handle_one_request(self) -> None:
        """One request of the connection, whose request line and headers must arrive within
        :data:`HEADER_DEADLINE_S` (a socket timeout bounds each read only: a client sending a byte now and then
        would hold its thread for ever). An idle kept-alive connection ends by the same rule."""
        timer = threading.Timer(HEADER_DEADLINE_S, self._too_slow)
        timer.daemon = True
        self._header_timer = timer
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self._header_timer is not None:
            self._header_timer.cancel()   # the request line and the headers are in
        return ok

    def _too_slow(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)   # the blocked read returns; the request ends
        except OSError:
            pass

    # ------------------------------------------------------------------ plumbing
    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No query strings, no headers: only what a person needs to follow the traffic."""

    def _log(self, status: int) -> None:
        log.info("%s %s %s %d", self.client_address[0], self.command, urlsplit(self.path).path, status)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        if self._tls():
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(status)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, default=str).encode(), "application/json; charset=utf-8")

    def _html(self, template: str, status: int = 200, **ctx: Any) -> None:
        session = ctx.pop("session", None)
        ctx.setdefault("warnings", self.dash.warnings)
        ctx.setdefault("live", {})
        body = self.dash.env.get_template(template).render(
            csrf=session.csrf if session else "", user=session.name if session else None,
            single_role=self.dash.single_role, api=ctx.pop("api", ""), **ctx)
        self._send(status, body.encode(), "text/html; charset=utf-8")

    def _redirect(self, where: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": where, **(headers or {})})

    def _cookie(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            c = SimpleCookie(raw)
        except CookieError:
            return None
        return c[COOKIE].value if COOKIE in c else None

    def _session(self) -> Session | None:
        return self.dash.sessions.get(self._cookie())

    def _form(self) -> dict[str, str]:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if n > MAX_FORM:
            self.close_connection = True   # the rest of the body is never read: this connection cannot go on
        raw = self.rfile.read(min(max(n, 0), MAX_FORM)).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _tls(self) -> bool:
        return getattr(self.server, "ssl_context", None) is not None

    def _set_cookie(self, value: str, max_age: int | None = None) -> str:
        """The session cookie: Secure whenever this server speaks TLS (the server knows; a flag elsewhere could
        disagree); without ``max_age`` it lasts while the browser runs, and the server ends an idle session."""
        secure = "; Secure" if self._tls() else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{age}{secure}"

    # ------------------------------------------------------------------ GET
    def do_HEAD(self) -> None:  # noqa: N802 - the base class's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/login":
            return self._html("login.html", error=None, next=_local(query.get("next")))
        session = self._session()
        if session is None:
            if path.startswith("/api/"):
                return self._json(HTTPStatus.UNAUTHORIZED, {"error": "log in first: POST /login with a token"})
            # refused (401), with the login form as the body: a browser shows it in place, and the login leads
            # back to this page, query and all
            return self._html("login.html", status=HTTPStatus.UNAUTHORIZED, error=None, next=_local(self.path))
        try:
            self._route_get(path, query, session)
        except PyMongoError as e:   # the database is down or refuses: say so, without its URI or password
            why = f"the LaunchPad database did not answer: {short_reason(error_text(e, self.dash.read_lp))}"
            log.warning("%s %s: %s", self.command, path, why)
            if path.startswith("/api/"):
                return self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": why})
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, why.encode(), "text/plain; charset=utf-8")
        except Exception:  # a bug must not end the request silently: log it (traceback), answer 500
            log.exception("%s %s failed", self.command, path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error: see the dashboard's log", "text/plain")

    def _route_get(self, path: str, query: dict[str, str], session: Session) -> None:
        d = self.dash
        api = path.startswith("/api/")
        page = path.removeprefix("/api") if api else path
        m = re.fullmatch(r"/(cluster|pilot|fw)/([^/]+)", page)
        name = unquote(m.group(2)) if m else ""
        if page == "/" or page == "/overview":
            ctx, tpl, api_path = d.overview(), "overview.html", "/api/overview"
        elif page == "/fireworks":
            ctx, tpl = d.fireworks(query.get("state") or None, _int(query.get("page"))), "fireworks.html"
            api_path = ""
        elif page == "/throughput":
            ctx, tpl, api_path = d.throughput(), "throughput.html", "/api/throughput"
        elif m and m.group(1) == "cluster":
            ctx, tpl = d.cluster(name, _int(query.get("page"))), "cluster.html"
            api_path = f"/api/cluster/{quote(name)}?page={_int(query.get('page'))}"
        elif m and m.group(1) == "pilot":
            ctx, tpl, api_path = d.pilot(name, _int(query.get("page"))), "pilot.html", ""
        elif m and m.group(1) == "fw" and m.group(2).isdigit():
            ctx, tpl, api_path = d.firework(int(m.group(2))), "firework.html", f"/api/fw/{m.group(2)}"
        elif (lm := re.fullmatch(r"/pilot/([^/]+)/log", page)) and not api:
            ctx, tpl, api_path = d.pilot_log(unquote(lm.group(1))), "pilot_log.html", ""
        elif page == "/confirm" and not api:
            return self._confirm(query, session)
        else:
            return self._not_found(api)
        if api:
            return self._json(HTTPStatus.OK, _api_doc(page, ctx))
        self._html(tpl, session=session, api=api_path, **ctx)

    def _not_found(self, api: bool) -> None:
        if api:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
        self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain; charset=utf-8")

    def _static(self, name: str) -> None:
        path = STATIC / name
        if not _STATIC_NAME.fullmatch(name) or not path.is_file():
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(HTTPStatus.OK, path.read_bytes(), f"{ctype}; charset=utf-8")

    def _confirm(self, query: dict[str, str], session: Session) -> None:
        name, target = query.get("action", ""), query.get("target", "")
        if name not in ACTIONS or not target:
            return self._send(HTTPStatus.BAD_REQUEST, b"unknown action or no target", "text/plain; charset=utf-8")
        question = ACTIONS[name][1].format(target=target)
        self._html("confirm.html", session=session, action=name, target=target, question=question,
                   cluster=query.get("cluster", ""), back=_local(query.get("back")))

    # ------------------------------------------------------------------ POST
    def _body_refused(self) -> bool:
        """Answer a body this server does not read (chunked, no length, over :data:`MAX_FORM`) and close: a form cut
        short must never be acted on, and unread bytes must not be taken for the next request."""
        if self.headers.get("Transfer-Encoding"):
            status, why = HTTPStatus.NOT_IMPLEMENTED, "chunked bodies are not accepted: send Content-Length"
        else:
            try:
                n = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                n = -1
            if 0 <= n <= MAX_FORM:
                return False
            status = HTTPStatus.LENGTH_REQUIRED if n < 0 else HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            why = "a form needs a Content-Length" if n < 0 else f"a form may have at most {MAX_FORM} bytes"
        self.close_connection = True
        self._json(status, {"error": why})
        return True

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        path = urlsplit(self.path).path
        if self._body_refused():
            return
        form = self._form()
        if path == "/login":
            return self._login(form)
        session = self._session()
        if session is None:
            return self._json(HTTPStatus.UNAUTHORIZED, {"error": "log in first"})
        if not self.dash.sessions.csrf_ok(session, form.get("csrf")):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong CSRF token: reload the page"})
        if path == "/logout":
            self.dash.sessions.close(session.sid)
            return self._redirect("/login", {"Set-Cookie": self._set_cookie("", 0)})
        if path != "/action":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
        try:
            # LaunchPad changes one at a time; a cancel (an SSH command to its cluster, up to its timeouts) takes
            # no lock: an unreachable cluster must not hold up every rerun and drain
            with self.dash.action_lock if form.get("action") != "cancel" else contextlib.nullcontext():
                res = run_action(form.get("action", ""), form.get("target", ""), self.dash.config,
                                 self.dash.write_lp, f"dashboard:{session.name}", cluster=form.get("cluster"))
            ok, message, status = True, res.message, HTTPStatus.OK
        except ActionError as e:
            ok, message, status = False, str(e), HTTPStatus.CONFLICT
        except PyMongoError as e:
            ok, status = False, HTTPStatus.SERVICE_UNAVAILABLE
            why = short_reason(error_text(e, self.dash.write_lp))
            message = f"not done: the LaunchPad database did not answer: {why}"
        except Exception:  # a bug must not drop the request: log it (traceback), say so
            log.exception("action %s on %s failed", form.get("action"), form.get("target"))
            ok, status = False, HTTPStatus.INTERNAL_SERVER_ERROR
            message = "not done: the action failed unexpectedly (the dashboard's log has the details)"
        log.info("action %s on %s by %s: %s", form.get("action"), form.get("target"), session.name, message)
        self._html("done.html", status=status, session=session, ok=ok, message=message, back=_local(form.get("back")))

    def _login(self, form: dict[str, str]) -> None:
        addr = str(self.client_address[0])
        wait = self.dash.logins.wait(addr)
        if wait > 0:
            log.warning("login from %s refused: too many wrong tokens lately", addr)
            self.close_connection = True
            return self._send(HTTPStatus.TOO_MANY_REQUESTS, b"too many wrong tokens: wait a minute",
                              "text/plain; charset=utf-8", {"Retry-After": str(int(wait) + 1)})
        name = self.dash.tokens.verify(form.get("token", ""))
        if name is None:
            self.dash.logins.failed(addr)
            log.warning("failed login from %s", addr)
            return self._html("login.html", status=HTTPStatus.UNAUTHORIZED, error="that token is not valid",
                              next=_local(form.get("next")))
        old = self._cookie()
        if old:
            self.dash.sessions.close(old)   # a new login never keeps the session id the browser came with
        session = self.dash.sessions.open(name)
        log.info("login by %s from %s", name, self.client_address[0])
        self._redirect(_local(form.get("next")), {"Set-Cookie": self._set_cookie(session.sid)})


def _api_doc(page: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a page: its live numbers, and for the overview the whole ``pilot status --json`` document."""
    doc: dict[str, Any] = {"live": ctx.get("live", {})}
    if "report" in ctx:
        doc["status"] = ctx["report"].to_dict()
    if "series" in ctx:
        doc.update(available=ctx["available"], rows=ctx["rows"], series=ctx["series"])
    if "detail" in ctx:
        doc["firework"] = ctx["detail"]
    if "pilots" in ctx:
        p = ctx["pilots"]
        doc.update(pilots=p.items, page=p.number, more=p.more, drain=ctx["drain"])
    return doc
