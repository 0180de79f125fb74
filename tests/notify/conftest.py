"""Fixtures of the notification tests: the real SMTP and HTTP servers (tests/notify/servers.py), the secret files
a person would write (mode 0600), and a config directory whose pilot.yaml has ``notify:`` for both."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.notify.servers import SmtpServer, WebhookServer, hook, make_cert  # noqa: F401  (hook: a fixture)


@dataclass
class Secrets:
    password: str
    token: str
    hook_path: str      # the secret part of the webhook URL (as in Slack's)
    password_file: Path
    token_file: Path
    url_file: Path
    ca_file: Path

    def all(self) -> list[str]:
        return [self.password, self.token, self.hook_path.strip("/")]


def private(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def smtp(tmp_path: Path) -> Any:
    cert, key = make_cert(tmp_path)
    server = SmtpServer(cert=cert, key=key, user="pilot-bot", password="pw-" + secrets.token_hex(12)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def notify_secrets(tmp_path: Path, smtp: SmtpServer, hook: WebhookServer) -> Secrets:  # noqa: F811
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    hook_path = "/hooks/T0-" + secrets.token_hex(12)
    token = "tok-" + secrets.token_hex(12)
    return Secrets(password=smtp.password, token=token, hook_path=hook_path,
                   password_file=private(d / "smtp-password", smtp.password),
                   token_file=private(d / "hook-token", token),
                   url_file=private(d / "webhook-url", f"http://127.0.0.1:{hook.port}{hook_path}"),
                   ca_file=smtp.cert)


@pytest.fixture
def notify_section(notify_secrets: Secrets, smtp: SmtpServer) -> dict[str, Any]:
    """``notify:`` for pilot.yaml: both channels, short delays (batch 0.3 s)."""
    s = notify_secrets
    return {"email": {"host": "127.0.0.1", "port": smtp.port, "user": smtp.user,
                      "password_file": str(s.password_file), "from": "pilot@example.org",
                      "to": ["me@example.org"], "ca_file": str(s.ca_file), "timeout": 5},
            "webhook": {"url_file": str(s.url_file), "token_file": str(s.token_file), "timeout": 5},
            "batch": 0.3, "unreachable_after": 3}
