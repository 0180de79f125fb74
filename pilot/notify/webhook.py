"""A chat webhook: one POST of ``{"text": ...}`` (what Slack's and Mattermost's incoming webhooks take) with
:mod:`urllib`, https verified, ``Authorization: Bearer`` from a token file when set.

The URL is a secret (Slack's holds its token in the path): only its scheme and host (:meth:`WebhookSettings.where`)
are logged or shown, and error texts are scrubbed of the URL, its path and the token.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from pilot.config.models_notify import WebhookSettings, read_secret_file
from pilot.notify.email import SendError, tls_context
from pilot.notify.events import Message

__all__ = ["send_webhook", "webhook_payload"]


def _hide(text: str, secrets: list[str]) -> str:
    """``text`` with every whole secret (URL, its path and query, the token) replaced: a server's error page may
    echo the path. (Whole ones: :func:`pilot.redact.scrub`'s pieces would eat common words of a short answer.)"""
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def webhook_payload(msg: Message) -> bytes:
    """The JSON body: the subject as the first line, then the body."""
    return json.dumps({"text": f"{msg.subject}\n{msg.body}".rstrip("\n")}).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured: following it could send the token elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def send_webhook(cfg: WebhookSettings, msg: Message) -> None:
    """POST ``msg`` to the webhook.

    Raises
    ------
    SendError
        Connection, TLS, or an answer other than 2xx, with the scheme and host only.
    """
    try:
        url = cfg.secret_url()
        token = read_secret_file(cfg.token_file) if cfg.token_file is not None else None
    except OSError as e:
        raise SendError(f"webhook: cannot read {e.filename}: {e.strerror}") from None
    parts = urlsplit(url)
    secrets = [s for s in (url, parts.path, parts.query, parts.netloc.rpartition("@")[0], parts.password, token)
               if s and len(s) > 1]
    where = cfg.where()
    headers = {"Content-Type": "application/json", "User-Agent": "fireworks-pilot"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=webhook_payload(msg), headers=headers, method="POST")
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if parts.scheme == "http":   # loopback only (url_problem): no proxy from http_proxy ever sees the token
        handlers.append(urllib.request.ProxyHandler({}))
    if parts.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=tls_context(str(cfg.ca_file) if cfg.ca_file else None)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=cfg.timeout) as resp:
            resp.read(4096)
    except urllib.error.HTTPError as e:
        detail = _hide(e.read(300).decode("utf-8", "replace").strip(), secrets) if e.fp else ""
        raise SendError(f"webhook {where}: HTTP {e.code} {e.reason}"
                        + (f": {detail}" if detail else "")
                        + (" (check the URL and the token)" if e.code in (401, 403, 404) else ""),
                        permanent=_refused_for_good(e.code)) from None
    except urllib.error.URLError as e:
        reason = e.reason
        hint = " (a certificate the system does not trust? set notify.webhook.ca_file)" \
            if isinstance(reason, ssl.SSLError) else " (retried next cycle)"
        raise SendError(f"webhook {where}: {_hide(str(reason), secrets)}{hint}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise SendError(f"webhook {where}: {type(e).__name__}: {_hide(str(e), secrets)} (retried next cycle)") \
            from None
    except Exception as e:   # noqa: BLE001 - anything else: its type, not its text (it might quote the URL)
        raise SendError(f"webhook {where}: unexpected {type(e).__name__} (retried next cycle)") from None


def _refused_for_good(code: int) -> bool:
    """An HTTP answer that refuses this message whatever the retries: a 4xx (a post too long, 400; too large,
    413), except 408 (timeout) and 429 (too many requests), which ask to come back later. 401, 403 and 404 are
    about the URL or the token, not the message: every message would get them, so they stop the channel."""
    return 400 <= code < 500 and code not in (401, 403, 404, 408, 429)
