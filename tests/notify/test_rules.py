"""The rules of what is told when (docs/notifications.md), on the notifier with a real LaunchPad and real senders:
a lapsed login at once and once per outage, a hold once per hold, a budget once when it reaches budget_warn, an
outage over before its message went out is not told at all, a send failing for a day is given up with an ERROR,
and the digest's text."""

from __future__ import annotations

import logging
import time

from pilot.config.models_budget import Budget
from pilot.manager.budget import BudgetState
from pilot.notify.events import Event, message
from tests.notify.helpers import notifier_for
from tests.notify.servers import free_port


def _notifier(launchpad, tmp_path, notify):
    return notifier_for(launchpad, tmp_path, notify)


def _sent(launchpad, kind):
    return sorted(d["_id"] for d in launchpad.db["pilot_notifications"].find({"kind": kind, "sent.webhook": {
        "$exists": True}}))


def test_login_hold_budget_and_an_outage_over_before_it_was_told(launchpad, tmp_path, hook, notify_section):
    n = _notifier(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0, "unreachable_after": 600})
    clusters = launchpad.db["pilot_clusters"]
    t = time.time()
    clusters.insert_one({"_id": "alpha", "reachable": False, "down_since": t, "needs_login": True,
                         "last_error": "control socket gone", "failures": 1})
    clusters.insert_one({"_id": "beta", "reachable": True, "down_since": None,
                         "hold": {"since": t - 50, "failures": 3, "pilot": {"job_id": "77", "why": "exit 1"},
                                  "stderr_tail": "module: command not found", "see_more": "ssh beta tail x"}})
    budget = Budget(core_hours=100, account="chem1")
    states = {"beta": [BudgetState(cluster="beta", budget=budget, used=int(85 * 3600), committed=int(4 * 3600))]}
    n.cycle(t + 1, states)              # 89 %: under budget_warn (0.9)
    states["beta"][0].committed = int(6 * 3600)
    for k in range(4):                  # 91 %: once; login at once (not after unreachable_after); hold once
        n.cycle(t + 2 + k, states)
    texts = [c.payload["text"] for c in hook.received()]
    assert len(texts) == 3, texts
    login, held, spent = (next(x for x in texts if x.startswith(f"[pilot] {s}")) for s in (
        "alpha: login needed", "beta held: pilots fail to start", "beta: budget 91% spent (100 core-h on chem1)"))
    assert f"pilot --config-dir {n.config_dir} connect alpha" in login
    assert "3 pilots in a row ended before running any Firework (last: job 77: exit 1)" in held
    assert "module: command not found" in held and "See more: ssh beta tail x" in held
    assert "used 85.0 core-h, committed to live pilots 6.0 core-h, of 100.0" in spent

    # a person logged in again: alpha answers, and since they were told of it, they hear that it is back
    clusters.update_one({"_id": "alpha"}, {"$set": {"reachable": True, "down_since": None, "needs_login": False}})
    n.cycle(t + 10)
    n.cycle(t + 11)
    assert len(hook.received()) == 4 and hook.received()[3].payload["text"].startswith(
        "[pilot] alpha reachable again\nCluster alpha answers again after 10 s")
    # a new outage passes unreachable_after, and ends while its message waits for its digest (batch 60 s): the
    # message is dropped, and nobody hears of the recovery of an outage they never heard of
    n.cfg = n.cfg.model_copy(update={"batch": 60.0})
    clusters.update_one({"_id": "alpha"}, {"$set": {"reachable": False, "down_since": t + 100, "failures": 2}})
    n.cycle(t + 700)
    assert launchpad.db["pilot_notifications"].count_documents({"kind": "unreachable", "pending": "webhook"}) == 1
    clusters.update_one({"_id": "alpha"}, {"$set": {"reachable": True, "down_since": None}})
    n.cycle(t + 710)
    n.cycle(t + 800)
    assert len(hook.received()) == 4 and _sent(launchpad, "unreachable") == []
    assert _sent(launchpad, "recovered") == [f"recovered:alpha:{t}"]


def test_a_send_failing_for_a_day_is_given_up_with_an_error(launchpad, tmp_path, notify_section, caplog):
    caplog.set_level(logging.INFO, logger="pilot")
    email = {**notify_section["email"], "port": free_port()}    # nothing listens there
    n = _notifier(launchpad, tmp_path, {"email": email, "batch": 0, "unreachable_after": 0,
                                        "events": ["unreachable"]})
    t = time.time()
    launchpad.db["pilot_clusters"].insert_one({"_id": "alpha", "reachable": False, "down_since": t - 5,
                                               "last_error": "ssh: connection refused", "failures": 2})
    n.cycle(t)
    n.cycle(t + 3600)
    doc = launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})
    assert doc["pending"] == ["email"] and doc["attempts"]["email"] == 2 and "ERROR" not in caplog.text
    n.cycle(t + 86401)
    doc = launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})
    assert doc["pending"] == [] and doc["gave_up"] == ["email"]
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        f"notify: email: gave up on 1 event(s) after a day of failures: unreachable:alpha:{t - 5}"]
    n.cycle(t + 86500)   # given up: not tried again
    assert launchpad.db["pilot_notifications"].find_one({"kind": "unreachable"})["attempts"]["email"] == 3


def _fizzle(i: int, where: str = "alpha") -> Event:
    return Event(kind="fizzled", key=f"fizzled:fw {i}:launch {i}", where=where, subject=f"FIZZLED: fw {i}",
                 body=f"Firework {i} FIZZLED", summary=f"fw {i} on {where}: boom", ref=f"fw {i}",
                 more="pilot status", time=1000.0 + i, detail="boom" if i % 4 else "bang")


def test_the_message_one_event_or_a_digest():
    one = message([_fizzle(1)])
    assert one.subject == "[pilot] FIZZLED: fw 1" and one.body.startswith("Firework 1 FIZZLED\n\n(at 1970-01-01 ")
    many = message([_fizzle(i, "alpha" if i % 2 else "beta") for i in range(12, 0, -1)])
    assert many.subject == "[pilot] 12 Fireworks FIZZLED on alpha, beta"
    lines = many.body.splitlines()
    assert lines[2:5] == ["Errors:", "  9 x boom", "  3 x bang"]
    assert lines[6:16] == [f"- fw {i} on {'alpha' if i % 2 else 'beta'}: boom" for i in range(1, 11)]
    assert "and 2 more: fw 11, fw 12" in lines and lines[-1] == "More: pilot status"
    assert len(many.keys) == 12


def test_more_fizzles_than_a_cycle_reads_are_paged_and_still_one_digest(launchpad, tmp_path, hook, notify_section,
                                                                       monkeypatch):
    import pilot.notify.notifier as notifier_module
    from tests.notify.helpers import make_fizzled

    monkeypatch.setattr(notifier_module, "MAX_FIZZLES", 10)
    n = _notifier(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 1000})
    t = time.time()
    n.cycle(t)                                   # first run: the cursor starts here
    ids = make_fizzled(launchpad, 25, "alpha-1", tmp_path / "launches")
    recorded = []
    for k in range(1, 5):
        n.cycle(t + k)
        recorded.append(launchpad.db["pilot_notifications"].count_documents({"kind": "fizzled"}))
    # a page starts at the last Firework read (inclusive: fizzles of the same instant are never skipped)
    assert recorded == [10, 19, 25, 25] and not hook.received()
    n.cycle(t + 1001)
    (call,) = hook.received()
    assert call.payload["text"].startswith("[pilot] 25 Fireworks FIZZLED on alpha")
    assert "and 15 more: " + ", ".join(f"fw {i}" for i in ids[10:]) in call.payload["text"]


def test_email_over_implicit_tls_and_what_a_wrong_password_or_an_untrusted_server_says(tmp_path, smtp):
    """tls: ssl (port 465 style) against aiosmtpd with TLS from the first byte; a refused login names the password
    file (not the password); a server whose certificate is not trusted fails (certificates are verified)."""
    from pilot.config.models_notify import EmailSettings
    from pilot.notify.email import SendError, send_email
    from tests.notify.conftest import private
    from tests.notify.servers import SmtpServer

    ssl_server = SmtpServer(cert=smtp.cert, key=smtp.key, user="bot", password="right-horse-9", implicit=True).start()
    try:
        pw = private(tmp_path / "pw", "right-horse-9")
        base = {"host": "127.0.0.1", "port": ssl_server.port, "tls": "ssl", "user": "bot", "password_file": str(pw),
                "from": "pilot@example.org", "to": ["me@example.org"], "ca_file": str(smtp.cert), "timeout": 5}
        msg = message([_fizzle(1)])
        send_email(EmailSettings.model_validate(base), msg)
        (mail,) = ssl_server.received()
        assert mail.tls and mail.login == "bot" and mail.subject == "[pilot] FIZZLED: fw 1"
        private(pw, "wrong-horse-9")
        try:
            send_email(EmailSettings.model_validate(base), msg)
            raise AssertionError("a wrong password was accepted")
        except SendError as e:
            assert str(e) == f"SMTP 127.0.0.1:{ssl_server.port}: login as bot refused (535): check the password in {pw}"
        untrusted = {k: v for k, v in base.items() if k != "ca_file"}
        try:
            send_email(EmailSettings.model_validate(untrusted), msg)
            raise AssertionError("an untrusted certificate was accepted")
        except SendError as e:
            assert "CERTIFICATE_VERIFY_FAILED" in str(e) and "ca_file" in str(e)
    finally:
        ssl_server.stop()
    assert len(ssl_server.received()) == 1


def test_a_server_without_starttls_gets_no_login(tmp_path, smtp):
    """With tls: starttls (the default) a server that does not offer STARTTLS is an error: the password is never
    sent in the clear."""
    from aiosmtpd.controller import Controller

    from pilot.config.models_notify import EmailSettings
    from pilot.notify.email import SendError, send_email
    from tests.notify.conftest import private
    from tests.notify.servers import free_port

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            return "250 OK"

    port = free_port()
    plain = Controller(Sink(), hostname="127.0.0.1", port=port)   # no TLS: offers no STARTTLS
    plain.start()
    try:
        cfg = EmailSettings.model_validate({
            "host": "127.0.0.1", "port": port, "user": "bot", "password_file": str(private(tmp_path / "pw", "pw-9z")),
            "from": "pilot@example.org", "to": ["me@example.org"], "timeout": 5})
        try:
            send_email(cfg, message([_fizzle(1)]))
            raise AssertionError("sent without STARTTLS")
        except SendError as e:
            assert str(e) == (f"SMTP 127.0.0.1:{port}: STARTTLS not offered: the server does not offer it; check tls: "
                              "and port: in notify.email")
    finally:
        plain.stop()


def test_a_fizzle_is_placed_by_its_pilot_record_else_by_its_fworker(launchpad, tmp_path, hook, notify_section):
    """The cluster of a FIZZLED launch: the pilot record of its FWorker when there is one (any FWorker name),
    else a FWorker named CLUSTER-JOBID, else the FWorker itself."""
    from tests.notify.helpers import make_fizzled

    n = _notifier(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0})
    t = time.time()
    n.cycle(t)
    launchpad.db["pilots"].insert_one({"_id": "fwp.md.abc", "fworker": "node-7", "cluster": "beta"})
    a = make_fizzled(launchpad, 1, "node-7", tmp_path / "l1", first=0)[0]
    b = make_fizzled(launchpad, 1, "alpha-12", tmp_path / "l2", first=1)[0]
    c = make_fizzled(launchpad, 1, "laptop", tmp_path / "l3", first=2)[0]
    n.cfg = n.cfg.model_copy(update={"batch": 1000.0})   # all three in one digest
    n.cycle(t + 1)
    n.cycle(t + 1001)
    (call,) = hook.received()
    text = call.payload["text"]
    assert f"- fw {a} (bad-0) on beta: " in text and f"- fw {b} (bad-1) on alpha: " in text
    assert f"- fw {c} (bad-2) on FWorker laptop: " in text
    assert call.payload["text"].startswith("[pilot] 3 Fireworks FIZZLED on FWorker laptop, alpha, beta")
