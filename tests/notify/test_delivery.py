"""Notifications end to end with real parts: the real manager (a local cluster), a real LaunchPad, Fireworks made
FIZZLED by FireWorks' own rapidfire, a real SMTP server (aiosmtpd: STARTTLS and AUTH required, its certificate
trusted through ca_file only) and a real local HTTP server as the webhook.

Shown: one FIZZLED Firework is exactly one e-mail and one webhook call, saying what, where and the command that
shows more; fizzles from before notifications were set up are not sent; a burst of 50 is one digest per channel;
a restarted manager sends nothing twice; a channel that is down is retried and delivered once it is back, and does
not hold back the other; no secret in any log, message or process argv.
"""

from __future__ import annotations

import logging
import time

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import local_cluster, readable_lp_file, write_config
from tests.notify.helpers import (
    assert_no_secret,
    cycle_until,
    cycles,
    make_fizzled,
    proc_cmdlines,
    python_error,
)


def _setup(launchpad, tmp_path, notify):
    lp_file = readable_lp_file(launchpad, tmp_path)
    cfg = write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "work", lp_file, ["md"])},
                       notify=notify)
    return cfg, lp_file, Manager(load_config(cfg), launchpad)


def _outbox(launchpad):
    return launchpad.db["pilot_notifications"]


def test_one_fizzle_is_one_mail_and_one_webhook_call(launchpad, tmp_path, smtp, hook, notify_secrets,
                                                     notify_section, caplog):
    caplog.set_level(logging.DEBUG, logger="pilot")
    old = make_fizzled(launchpad, 1, "alpha-100", tmp_path / "launches", first=100)   # before notify was set up
    cfg, lp_file, mgr = _setup(launchpad, tmp_path, notify_section)
    try:
        mgr.run_cycle()    # the first cycle: the cursor starts now, the old fizzle is skipped (and said so)
        assert "first run: 1 FIZZLED Firework(s) from before now are not notified" in caplog.text
        (fw_id,) = make_fizzled(launchpad, 1, "alpha-4242", tmp_path / "launches")
        cycle_until(mgr, lambda: smtp.received() and hook.received())
        cycles(mgr, 4, pause=0.15)   # later cycles (past the batch delay) send nothing more
    finally:
        mgr.close()
    mails, calls = smtp.received(), hook.received()
    assert len(mails) == 1 and len(calls) == 1, ([m.subject for m in mails], [c.payload for c in calls])
    mail = mails[0]
    assert mail.tls and mail.login == smtp.user          # STARTTLS, then the login, as the server required
    assert mail.rcpts == ["me@example.org"] and mail.sender == "pilot@example.org"
    assert mail.subject == f"[pilot] FIZZLED: fw {fw_id} (bad-0) on alpha"
    body = mail.body
    assert f"Firework {fw_id} (bad-0) FIZZLED on alpha (pilot alpha-4242)" in body
    assert f"Error: {python_error(0)}" in body
    assert f"lpad -l {lp_file} get_fws -i {fw_id} -d more" in body
    assert f"pilot --config-dir {cfg} status" in body
    assert str(old[0]) not in mail.subject
    call = calls[0]
    assert call.path == notify_secrets.hook_path
    assert call.headers["Authorization"] == f"Bearer {notify_secrets.token}"
    assert call.headers["Content-Type"] == "application/json"
    assert call.payload["text"].startswith(mail.subject + "\n") and python_error(0) in call.payload["text"]
    doc = _outbox(launchpad).find_one({"_id": f"fizzled:fw {fw_id}:launch {_launch_of(launchpad, fw_id)}"})
    assert doc["pending"] == [] and set(doc["sent"]) == {"email", "webhook"}
    assert_no_secret(notify_secrets.all(), log=caplog.text, mail=[mail.as_string() for mail in
                                                                   (m.message for m in mails)],
                     webhook=[str(c.payload) for c in calls], argv=proc_cmdlines())


def _launch_of(lp, fw_id):
    return lp.fireworks.find_one({"fw_id": fw_id})["launches"][-1]


def test_a_burst_of_50_fizzles_is_one_digest_and_a_restart_sends_nothing_twice(launchpad, tmp_path, smtp, hook,
                                                                               notify_secrets, notify_section,
                                                                               caplog):
    caplog.set_level(logging.INFO, logger="pilot")
    cfg, lp_file, mgr = _setup(launchpad, tmp_path, notify_section)
    try:
        mgr.run_cycle()
        ids = make_fizzled(launchpad, 50, "alpha-77", tmp_path / "launches")
        cycle_until(mgr, lambda: smtp.received() and hook.received())
        cycles(mgr, 3, pause=0.15)
    finally:
        mgr.close()
    mails, calls = smtp.received(), hook.received()
    assert len(mails) == 1 and len(calls) == 1, [m.subject for m in mails]
    assert mails[0].subject == "[pilot] 50 Fireworks FIZZLED on alpha"
    body = mails[0].body
    listed = [ln for ln in body.splitlines() if ln.startswith("- fw ")]
    assert len(listed) == 10 and f"- fw {ids[0]} (bad-0) on alpha: {python_error(0)}" in listed
    assert "and 40 more: " + ", ".join(f"fw {i}" for i in ids[10:]) in body
    lines = body.splitlines()
    assert lines[2:4] == ["Errors:", f"  1 x {python_error(0)}"] and "  and 45 other errors" in lines
    assert calls[0].payload["text"].startswith(mails[0].subject)
    assert _outbox(launchpad).count_documents({"kind": "fizzled", "sent.email": {"$exists": True}}) == 50

    # a restarted manager (same LaunchPad): the same fizzles are seen again, and nothing is sent twice
    again = Manager(load_config(cfg), launchpad)
    try:
        cycles(again, 4, pause=0.15)
    finally:
        again.close()
    assert len(smtp.received()) == 1 and len(hook.received()) == 1
    assert_no_secret(notify_secrets.all(), log=caplog.text, mail=[m.message.as_string() for m in mails],
                     webhook=[str(c.payload) for c in calls])


def test_a_channel_down_is_retried_and_the_other_goes_on(launchpad, tmp_path, smtp, hook, notify_secrets,
                                                        notify_section, caplog):
    caplog.set_level(logging.INFO, logger="pilot")
    cfg, lp_file, mgr = _setup(launchpad, tmp_path, notify_section)
    try:
        mgr.run_cycle()
        smtp.stop()                       # the mail server is down
        (fw_id,) = make_fizzled(launchpad, 1, "alpha-5", tmp_path / "launches")
        cycle_until(mgr, lambda: bool(hook.received()))    # the webhook does not wait for the mail
        cycles(mgr, 2, pause=0.15)
        assert "notify: email (127.0.0.1:" in caplog.text and "stay pending, tried again next cycle" in caplog.text
        doc = _outbox(launchpad).find_one({"kind": "fizzled"})
        assert doc["pending"] == ["email"] and doc["attempts"]["email"] >= 2 and "ConnectionRefused" in \
            doc["errors"]["email"]
        t_back = time.time()
        smtp.start()                      # back on the same port
        cycle_until(mgr, lambda: bool(smtp.received()))
        cycles(mgr, 3, pause=0.15)
    finally:
        mgr.close()
    assert len(smtp.received()) == 1 and len(hook.received()) == 1
    assert smtp.received()[0].subject == f"[pilot] FIZZLED: fw {fw_id} (bad-0) on alpha"
    doc = _outbox(launchpad).find_one({"kind": "fizzled"})
    assert doc["pending"] == [] and doc["sent"]["email"] >= t_back - 1
    assert_no_secret(notify_secrets.all(), log=caplog.text)


def test_the_manager_daemon_sends_and_keeps_secrets_out_of_its_log_and_argv(launchpad, tmp_path, smtp, hook,
                                                                           notify_secrets, notify_section):
    """`pilot manager run` as a person starts it: its log file says what it sent (server and recipients, no secret),
    and no process's argv holds a secret while it runs."""
    import signal

    from tests.helpers import wait_for
    from tests.manager.test_lease import _start, _stop

    lp_file = readable_lp_file(launchpad, tmp_path)
    cfg = write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "work", lp_file, ["md"])},
                       poll_interval=1, notify=notify_section)
    proc = _start(cfg)
    argv: list[str] = []
    try:
        log = cfg / "logs" / "manager.log"
        wait_for(lambda: "notify: first run: 0 FIZZLED" in log.read_text(), 30, 0.1, "the first notify cycle")
        (fw_id,) = make_fizzled(launchpad, 1, "alpha-9", tmp_path / "launches")

        def arrived() -> bool:
            argv.extend(proc_cmdlines())
            return bool(smtp.received() and hook.received())

        wait_for(arrived, 30, 0.1, "the mail and the webhook call")
    finally:
        assert _stop(proc, signal.SIGTERM) == 0
    text = (cfg / "logs" / "manager.log").read_text()
    assert f"notify: email (127.0.0.1:{smtp.port} to me@example.org): sent '[pilot] FIZZLED: fw {fw_id}" in text
    assert f"notify: webhook (http://127.0.0.1:{hook.port}): sent '[pilot] FIZZLED: fw {fw_id}" in text
    assert len(smtp.received()) == 1 and len(hook.received()) == 1
    assert_no_secret(notify_secrets.all(), log=text, argv=argv)
