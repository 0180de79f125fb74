"""What goes wrong while sending, with real servers (aiosmtpd, the local HTTP(S) server, a plain socket server that
never finishes its greeting) and the real LaunchPad: a secret in a webhook URL, a message a server refuses, a
server that never answers, a cycle that fails between reading FIZZLED Fireworks and recording them, a proxy in the
environment, and https with a certificate trusted through ca_file (and one that is not trusted)."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time

import pytest
import yaml
from pymongo.errors import AutoReconnect

from pilot.config import ConfigError, load_pilot_config
from pilot.config.models_notify import WebhookSettings
from pilot.notify.email import SendError
from pilot.notify.events import BODY_MAX, LINE_MAX, message
from pilot.notify.webhook import send_webhook
from pilot.status import format_status, gather_status
from tests.notify.conftest import private
from tests.notify.helpers import config_for, make_fizzled, notifier_for
from tests.notify.servers import TricklingSmtp, WebhookServer, make_cert

SECRET = "S3cretPW-" + "q7Zr"


def _outbox_text(launchpad) -> str:
    return json.dumps(list(launchpad.db["pilot_notifications"].find()), default=str)


def _down(launchpad, name: str, t: float) -> None:
    """A cluster record as the manager writes it after a second failure in a row (pilot.manager.records)."""
    from pilot.manager.records import Records

    rec = Records(launchpad.db)
    rec.cluster_failed(name, "ssh: connect to host: Connection timed out", 1, t + 5, now=t)
    rec.cluster_failed(name, "ssh: connect to host: Connection timed out", 2, t + 10, now=t + 1)


def test_a_webhook_url_with_a_password_is_a_config_error(tmp_path):
    path = tmp_path / "pilot.yaml"
    path.write_text(yaml.safe_dump({"notify": {"webhook": {"url": f"https://bot:{SECRET}@chat.example.org/hooks/abc"}}}))
    with pytest.raises(ConfigError) as e:
        load_pilot_config(path)
    (p,) = e.value.problems
    assert p.file == str(path) and p.field == "notify.webhook.url"
    assert "token_file" in p.message and SECRET not in p.message and SECRET not in str(e.value)


def test_an_unexpected_error_never_shows_its_text(launchpad, tmp_path, notify_section, caplog):
    """A url_file rewritten after the manager started with a password in it (http.client: InvalidURL quoting it),
    and a sender failing with a text that holds a secret: neither text reaches the log, the outbox or status."""
    caplog.set_level(logging.DEBUG, logger="pilot")
    n = notifier_for(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0, "unreachable_after": 0,
                                           "events": ["unreachable"]})
    private(n.cfg.webhook.url_file, f"https://bot:{SECRET}@127.0.0.1/hooks/abc")
    t = time.time()
    _down(launchpad, "alpha", t)
    n.cycle(t + 2)
    doc = launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})
    assert doc["pending"] == ["webhook"] and doc["attempts"]["webhook"] == 1
    assert doc["errors"]["webhook"].startswith("webhook https://127.0.0.1: InvalidURL: "), doc["errors"]

    def boom(msg):
        raise RuntimeError(f"the server said: token {SECRET} is wrong")

    n.senders = {"webhook": boom}
    n.cycle(t + 3)
    doc = launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})
    assert doc["attempts"]["webhook"] == 2 and doc["errors"]["webhook"].startswith("unexpected RuntimeError")
    status = format_status(gather_status(launchpad.db, None))
    assert "FAILING" in status and "unexpected RuntimeError" in status
    for name, text in (("log", caplog.text), ("outbox", _outbox_text(launchpad)), ("status", status)):
        assert SECRET not in text, name
    # a long error (a server's whole error page) is stored cut, and shown cut further: one table row
    n.outbox.failed("webhook", [], t + 4, "E" * 5000)
    status = format_status(gather_status(launchpad.db, None))
    assert "E" * 297 + "..." in status and "E" * 298 not in status


def test_a_name_with_a_line_break_makes_one_clean_mail(launchpad, tmp_path, smtp, notify_section):
    n = notifier_for(launchpad, tmp_path, {"email": notify_section["email"], "batch": 0, "events": ["fizzled"]})
    t = time.time()
    n.cycle(t)
    (fw_id,) = make_fizzled(launchpad, 1, "alpha-3", tmp_path / "launches", name="a\r\nBcc: x@y")
    n.cycle(t + 1)
    n.cycle(t + 2)
    (mail,) = smtp.received()
    assert mail.rcpts == ["me@example.org"] and mail.message["Bcc"] is None
    assert mail.subject == f"[pilot] FIZZLED: fw {fw_id} (a Bcc: x@y) on alpha"
    assert f"Firework {fw_id} (a Bcc: x@y) FIZZLED on alpha (pilot alpha-3)." in mail.body.splitlines()


def test_a_message_refused_for_good_does_not_block_the_next(launchpad, tmp_path, hook, notify_section, caplog):
    """The webhook answers 400 to the FIZZLED message (as Mattermost does to a post too long): it is given up at
    once (one ERROR), and the held message recorded with it goes out in the same cycle. The held message's huge
    stderr line is cut: every line and the whole within the limits."""
    caplog.set_level(logging.INFO, logger="pilot")
    hook.answer = lambda p: (400, b"message too long") if "FIZZLED" in p["text"] else (200, b"ok")
    n = notifier_for(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0,
                                           "events": ["fizzled", "held"]})
    t = time.time()
    n.cycle(t)
    make_fizzled(launchpad, 1, "alpha-3", tmp_path / "launches")
    launchpad.db["pilot_clusters"].insert_one({"_id": "beta", "reachable": True, "hold": {
        "since": t, "failures": 3, "pilot": {"job_id": "8", "why": "exit 1"},
        "stderr_tail": "\n".join(["E" * 100_000] * 5)}})
    n.cycle(t + 1)
    n.cycle(t + 2)
    texts = [c.payload["text"] for c in hook.received()]
    assert len(texts) == 2 and "FIZZLED" in texts[0] and texts[1].startswith("[pilot] beta held"), texts
    assert max(len(ln) for ln in texts[1].splitlines()) <= LINE_MAX and len(texts[1]) <= BODY_MAX + 201
    fizzled = launchpad.db["pilot_notifications"].find_one({"kind": "fizzled"})
    assert fizzled["pending"] == [] and fizzled["gave_up"] == ["webhook"] and "HTTP 400" in fizzled["errors"]["webhook"]
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "refused for good" in errors[0]


def test_a_server_that_never_answers_costs_the_cycle_at_most_the_deadline(launchpad, tmp_path, hook, notify_section,
                                                                          caplog):
    """An SMTP-like server that accepts and then trickles its greeting forever (each line within the socket
    timeout): the cycle waits twice the channel's timeout, records a timeout, and the webhook still goes out."""
    caplog.set_level(logging.INFO, logger="pilot")
    server = TricklingSmtp(pause=0.1)
    n = None
    try:
        email = {"host": "127.0.0.1", "port": server.port, "tls": "none", "from": "pilot@example.org",
                 "to": ["me@example.org"], "timeout": 0.5}
        n = notifier_for(launchpad, tmp_path, {"email": email, "webhook": notify_section["webhook"], "batch": 0,
                                               "unreachable_after": 0, "events": ["unreachable"]})
        t = time.time()
        _down(launchpad, "alpha", t)
        worker = threading.Thread(target=n.cycle, args=(t + 2,), daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(8)
        took = time.monotonic() - started
        assert not worker.is_alive(), "the cycle waited for the server past any deadline"
        assert took < 2.5, took
        assert server.accepted == 1 and len(hook.received()) == 1
        doc = launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})
        assert doc["pending"] == ["email"] and "timed out after 1 s" in doc["errors"]["email"]
        n.cycle(t + 3)   # its send still hangs: the channel is skipped, not tried again meanwhile
        assert server.accepted == 1 and "its last send has not returned yet" in caplog.text
    finally:
        server.stop()
        if n is not None and "email" in n._busy:
            n._busy["email"].join(5)


def test_a_failure_between_reading_and_recording_loses_no_fizzle(launchpad, tmp_path, hook, notify_section,
                                                               monkeypatch):
    """The database fails while a cycle records the FIZZLED Fireworks it read, an hour and a half after the last
    cycle: the next cycle reads them again (the cursor moved only once they were recorded)."""
    n = notifier_for(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0, "events": ["fizzled"]})
    t = time.time()
    n.cycle(t)
    (fw_id,) = make_fizzled(launchpad, 1, "alpha-3", tmp_path / "launches")
    real = n.outbox.record

    def gone(*args, **kwargs):
        raise AutoReconnect("the database went away")

    monkeypatch.setattr(n.outbox, "record", gone)
    n.cycle(t + 5400)
    assert not hook.received()
    monkeypatch.setattr(n.outbox, "record", real)
    n.cycle(t + 5401)
    (call,) = hook.received()
    assert call.payload["text"].startswith(f"[pilot] FIZZLED: fw {fw_id} (bad-0) on alpha")


def test_a_loopback_webhook_never_goes_through_a_proxy(tmp_path, hook, notify_secrets, monkeypatch):
    proxy = WebhookServer()
    try:
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        cfg = WebhookSettings.model_validate({"url_file": str(notify_secrets.url_file),
                                              "token_file": str(notify_secrets.token_file), "timeout": 5})
        send_webhook(cfg, message([_event()]))
    finally:
        proxy.stop()
    assert len(hook.received()) == 1 and proxy.received() == []


def _event():
    from pilot.notify.events import Event

    return Event(kind="held", key="held:alpha:1.0", where="alpha", subject="alpha held", body="held", summary="s",
                 ref="alpha", more="pilot status", time=1.0)


def test_an_https_webhook_trusted_through_ca_file_and_one_not_trusted(tmp_path):
    cert, key = make_cert(tmp_path)
    server = WebhookServer(tls=(cert, key))
    try:
        # the certificate passes the strict X.509 checks (Python 3.13's default): a handshake with them on
        strict = ssl.create_default_context(cafile=str(cert))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                strict.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        url = {"url": f"https://127.0.0.1:{server.port}/hooks/T1-abc", "timeout": 5}
        send_webhook(WebhookSettings.model_validate({**url, "ca_file": str(cert)}), message([_event()]))
        assert len(server.received()) == 1 and server.received()[0].path == "/hooks/T1-abc"
        with pytest.raises(SendError) as e:
            send_webhook(WebhookSettings.model_validate(url), message([_event()]))
    finally:
        server.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value) and "notify.webhook.ca_file" in str(e.value)
    assert "T1-abc" not in str(e.value) and len(server.received()) == 1


def test_a_database_that_refuses_indexes_does_not_stop_the_start(launchpad, mongo_uri, tmp_path, notify_section,
                                                                 caplog):
    """The manager's database user may read and write but not create indexes (here: only read, the embedded
    server's MongoDB roles): the notifier starts with a warning, and creates them once it may."""
    import uuid
    from urllib.parse import quote, urlsplit, urlunsplit

    import pymongo

    from pilot.config import load_config
    from pilot.notify.notifier import Notifier

    caplog.set_level(logging.INFO, logger="pilot")
    name, password = f"reader{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    db_name = launchpad.db.name
    launchpad.connection.admin.command("createUser", name, pwd=password, roles=[{"role": "read", "db": db_name}])
    parts = urlsplit(mongo_uri)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(q for q in parts.query.split("&") if q and not q.lower().startswith("authsource"))
    uri = urlunsplit((parts.scheme, f"{quote(name)}:{quote(password)}@{host}", "/",
                      "&".join(x for x in (query, "authSource=admin") if x), ""))
    client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        cfg = config_for(launchpad, tmp_path, {"webhook": notify_section["webhook"]})
        n = Notifier(load_config(cfg), client[db_name])
        assert "notify: cannot create the indexes of pilot_notifications (OperationFailure" in caplog.text
        assert not n._indexed and "pilot_notifications" not in launchpad.db.list_collection_names()
        launchpad.connection.admin.command("updateUser", name, roles=[{"role": "readWrite", "db": db_name}])
        n.cycle()
        assert n._indexed
        keys = [list(ix["key"]) for ix in launchpad.db["pilot_notifications"].list_indexes()]
        assert ["pending", "queued"] in keys, keys
    finally:
        client.close()
        launchpad.connection.admin.command("dropUser", name)


def test_an_smtp_5xx_to_one_message_gives_it_up_and_the_next_goes(launchpad, tmp_path, caplog):
    """A local relay (tls: none on loopback) that answers 554 to the FIZZLED message's data: given up at once,
    and the held message recorded with it is delivered in the same cycle. A message the email package cannot
    write (a subject with a line break, built by hand past the cleaning) is a permanent SendError too."""
    from aiosmtpd.controller import Controller

    from pilot.config.models_notify import EmailSettings
    from pilot.notify.email import send_email
    from pilot.notify.events import Message
    from tests.notify.servers import free_port

    got: list[bytes] = []

    class Relay:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            if b"FIZZLED" in envelope.content:
                return "554 5.6.0 Message content rejected"
            got.append(envelope.content)
            return "250 OK"

    caplog.set_level(logging.INFO, logger="pilot")
    port = free_port()
    relay = Controller(Relay(), hostname="127.0.0.1", port=port)
    relay.start()
    try:
        email = {"host": "127.0.0.1", "port": port, "tls": "none", "from": "pilot@example.org",
                 "to": ["me@example.org"], "timeout": 5}
        n = notifier_for(launchpad, tmp_path, {"email": email, "batch": 0, "events": ["fizzled", "held"]})
        t = time.time()
        n.cycle(t)
        make_fizzled(launchpad, 1, "alpha-3", tmp_path / "launches")
        launchpad.db["pilot_clusters"].insert_one({"_id": "beta", "reachable": True, "hold": {
            "since": t, "failures": 3, "pilot": {"job_id": "8", "why": "exit 1"}}})
        n.cycle(t + 1)
        n.cycle(t + 2)
        with pytest.raises(SendError) as e:
            send_email(EmailSettings.model_validate(email), Message("a\r\nBcc: x@y", "body\n", ("k",)))
    finally:
        relay.stop()
    assert len(got) == 1 and b"Subject: [pilot] beta held" in got[0]
    fizzled = launchpad.db["pilot_notifications"].find_one({"kind": "fizzled"})
    assert fizzled["gave_up"] == ["email"] and "554" in fizzled["errors"]["email"]
    assert fizzled["attempts"]["email"] == 1
    assert e.value.permanent and "cannot be written" in str(e.value)
