"""Real servers for the notification tests: an SMTP server (aiosmtpd) that requires STARTTLS and a login, with a
certificate made here and trusted by the client through ``ca_file`` only; and a local HTTP server that records
what webhook calls it gets."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and ``localhost``), CA:TRUE so it can be its own trust anchor,
    with the extensions Python 3.13's strict X.509 checks (``VERIFY_X509_STRICT``, RFC 5280) want of one: key
    usage (certificate signing and digital signature), subject and authority key identifiers; returns
    (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pilot-notify-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = d / "smtp-cert.pem", d / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    """One message the SMTP server accepted: envelope and the parsed message."""

    sender: str
    rcpts: list[str]
    message: Any
    tls: bool
    login: str | None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return str(self.message.get_content())


def _encrypted(server: Any, session: Any) -> bool:
    """Whether the session runs over TLS: upgraded by STARTTLS (``session.ssl``), or TLS from the first byte (the
    transport's SSL object)."""
    transport = getattr(server, "transport", None)
    return session.ssl is not None or (transport is not None and transport.get_extra_info("ssl_object") is not None)


class _Handler:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:   # noqa: N802 (aiosmtpd's name)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.box.lock:
            self.box.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg,
                                       tls=_encrypted(server, session), login=login))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """aiosmtpd on 127.0.0.1: STARTTLS required, AUTH required (``user`` / ``password``); with ``implicit``, TLS from
    the first byte instead (port 465 style)."""

    cert: Path
    key: Path
    user: str
    password: str
    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)   # (login, accepted)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None
    implicit: bool = False

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login.decode() == self.user
              and data.password.decode() == self.password)
        with self.lock:
            self.logins.append((data.login.decode() if isinstance(data, LoginPassword) else "?", ok))
        # handled=False: aiosmtpd answers a refused login itself (535); its default (True) leaves it unanswered
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def start(self) -> SmtpServer:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls: with TLS from the first byte the session is
        # encrypted all along (the handler records session.ssl), so that check is off there
        tls = ({"ssl_context": ctx, "auth_require_tls": False} if self.implicit
               else {"tls_context": ctx, "require_starttls": True, "auth_require_tls": True})
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, auth_required=True,
                                     authenticator=self._auth, server_hostname="localhost", ready_timeout=10, **tls)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def received(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    payload: Any


class WebhookServer:
    """A local HTTP server that records each POST (path, headers, JSON) and answers ``status`` (200), or what
    ``answer(payload)`` returns when set (status, body); with ``tls`` (cert, key), HTTPS."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.calls: list[Call] = []
        self.status = 200
        self.answer: Any = None
        self.lock = threading.Lock()
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                payload = json.loads(raw)
                with box.lock:
                    box.calls.append(Call(self.path, {k: v for k, v in self.headers.items()}, payload))
                    status = box.status
                body = b"ok" if status == 200 else b"no such hook"
                if box.answer is not None:
                    status, body = box.answer(payload)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-server", daemon=True)
        self.thread.start()

    def received(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class TricklingSmtp:
    """An SMTP-like server that accepts connections and then never finishes its greeting: a continuation line
    (``220-``) every ``pause`` seconds, forever. Each line comes within any socket timeout, so only a total
    deadline ends a client's wait. Every thread joined on :meth:`stop`."""

    def __init__(self, pause: float = 0.2) -> None:
        self.pause = pause
        self.port = free_port()
        self.accepted = 0
        self._stop = threading.Event()
        self._lst = socket.create_server(("127.0.0.1", self.port))
        self._lst.settimeout(0.1)
        self._threads = [threading.Thread(target=self._accept, name="trickle", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lst.accept()
            except OSError:
                continue
            self.accepted += 1
            t = threading.Thread(target=self._trickle, args=(conn,), name="trickle-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.wait(self.pause):
                try:
                    conn.sendall(b"220-still saying hello\r\n")
                except OSError:
                    return

    def stop(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(5)
        self._lst.close()


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    """A real local HTTP server in the role of a chat webhook, stopped after the test."""
    server = WebhookServer()
    try:
        yield server
    finally:
        server.stop()
