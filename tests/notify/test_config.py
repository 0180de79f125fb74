"""``notify:`` in pilot.yaml: wrong settings are errors naming the file, the field and the fix (and never the
secret); ``pilot config check`` shows the settings without secrets; ``pilot notify test`` sends through each channel
and says per channel ok or why not; ``pilot status`` has a NOTIFICATIONS section."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pilot.config import ConfigError, load_config, load_pilot_config
from pilot.notify.notifier import Notifier
from pilot.status import format_status, gather_status
from tests.manager.helpers import local_cluster, readable_lp_file, write_config
from tests.notify.conftest import private
from tests.notify.helpers import assert_no_secret, proc_cmdlines
from tests.notify.schema import validate_status


def _problems(tmp_path: Path, notify: dict) -> tuple[Path, list]:
    path = tmp_path / "pilot.yaml"
    path.write_text(yaml.safe_dump({"notify": notify}))
    with pytest.raises(ConfigError) as e:
        load_pilot_config(path)
    return path, e.value.problems


def _email(**over):
    return {"host": "smtp.example.org", "from": "pilot@example.org", "to": ["me@example.org"], **over}


def test_a_password_file_others_may_read_is_an_error(tmp_path):
    pw = tmp_path / "smtp-password"
    pw.write_text("s3cret-Pa55word\n")
    pw.chmod(0o644)
    path, problems = _problems(tmp_path, {"email": _email(user="bot", password_file=str(pw))})
    (p,) = problems
    assert p.file == str(path) and p.field == "notify.email.password_file"
    assert f"chmod 600 {pw}" in p.message and "0644" in p.message and "s3cret" not in p.message
    pw.chmod(0o600)
    assert load_pilot_config(path).notify.email.password_file == pw


def test_missing_and_unknown_fields(tmp_path):
    _, problems = _problems(tmp_path, {"email": {"host": "smtp.example.org", "form": "a@b.org"}})
    by_field = {p.field: p.message for p in problems}
    assert "did you mean 'from'" in by_field["notify.email.form"]
    assert by_field["notify.email.to"].startswith("required field is missing")
    _, problems = _problems(tmp_path, {"email": _email(user="bot")})
    assert [(p.field, "password_file: ~/.pilot/smtp-password" in p.message) for p in problems] == [
        ("notify.email.password_file", True)]
    _, problems = _problems(tmp_path, {"batch": 5})
    assert [p.field for p in problems] == ["notify.email"] and "no channel" in problems[0].message
    _, problems = _problems(tmp_path, {"webhook": {"url": "https://chat.example.org/x"}, "events": ["fizzle"]})
    assert [p.field for p in problems] == ["notify.events"] and "did you mean 'fizzled'" in problems[0].message


def test_plain_connections_only_to_this_machine(tmp_path):
    secret = "/hooks/T123/B456/XyZsecretpath"
    _, problems = _problems(tmp_path, {"webhook": {"url": f"http://chat.example.org{secret}"}})
    (p,) = problems
    assert p.field == "notify.webhook.url" and "write https://" in p.message and secret not in p.message
    url_file = private(tmp_path / "hook-url", f"http://chat.example.org{secret}")
    _, problems = _problems(tmp_path, {"webhook": {"url_file": str(url_file)}})
    assert [p.field for p in problems] == ["notify.webhook.url_file"] and secret not in problems[0].message
    _, problems = _problems(tmp_path, {"email": _email(tls="none")})
    assert [p.field for p in problems] == ["notify.email.tls"] and "tls: starttls" in problems[0].message
    path = tmp_path / "pilot.yaml"
    path.write_text(yaml.safe_dump({"notify": {"webhook": {"url": f"http://127.0.0.1:9{secret}"},
                                               "email": _email(host="127.0.0.1", port=25, tls="none"),
                                               "unreachable_after": "00:20:00"}}))
    n = load_pilot_config(path).notify
    assert n.unreachable_after == 1200 and n.webhook.where() == "http://127.0.0.1:9"


def _cli(cfg: Path, *args: str, watch: list[str] | None = None) -> subprocess.CompletedProcess:
    """``pilot --config-dir CFG ARGS`` as a process of its own; ``watch`` collects every process's argv while it
    runs."""
    proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if watch is not None:
                watch.extend(proc_cmdlines())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        done.set()
        t.join(5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_config_check_notify_test_and_status(launchpad, tmp_path, smtp, hook, notify_secrets, notify_section):
    lp_file = readable_lp_file(launchpad, tmp_path)
    cfg = write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "work", lp_file, ["md"])},
                       notify=notify_section)
    res = _cli(cfg, "config", "check", "--no-render")
    assert res.returncode == 0, res.stderr
    assert (f"notify: email via 127.0.0.1:{smtp.port} (starttls, login pilot-bot (password from "
            f"{notify_secrets.password_file})) from pilot@example.org to me@example.org") in res.stdout
    assert f"notify: webhook http://127.0.0.1:{hook.port} (URL from {notify_secrets.url_file}" in res.stdout
    checked = json.loads(_cli(cfg, "config", "check", "--no-render", "--json").stdout)["notify"]
    assert checked["webhook"]["where"] == f"http://127.0.0.1:{hook.port}"
    shown = _cli(cfg, "config", "show", "--json").stdout

    argv: list[str] = []
    res = _cli(cfg, "notify", "test", "--json", watch=argv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout) == {"ok": True, "channels": {
        "email": {"ok": True, "where": f"127.0.0.1:{smtp.port} to me@example.org", "error": None},
        "webhook": {"ok": True, "where": f"http://127.0.0.1:{hook.port}", "error": None}}}
    assert [m.subject for m in smtp.received()] == ["[pilot] test message"] and len(hook.received()) == 1

    smtp.stop()
    hook.status = 404
    res = _cli(cfg, "notify", "test", watch=argv)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"email (127.0.0.1:{smtp.port} to me@example.org): FAILED: SMTP 127.0.0.1:")
    assert "ConnectionRefusedError" in lines[0]
    assert lines[1] == (f"webhook (http://127.0.0.1:{hook.port}): FAILED: webhook http://127.0.0.1:{hook.port}: "
                        "HTTP 404 Not Found: no such hook (check the URL and the token)")

    # pilot status: the channels, the last send, what failed since
    config = load_config(cfg)
    notifier = Notifier(config, launchpad.db)
    notifier.cycle(time.time())
    notifier.outbox.sent("webhook", [], time.time() - 120, "[pilot] FIZZLED: fw 1 on alpha")
    notifier.outbox.failed("email", [], time.time() - 60, "SMTP 127.0.0.1:1: ConnectionRefusedError")
    report = gather_status(launchpad.db, config)
    text = format_status(report)
    section = text.split("NOTIFICATIONS", 1)[1]
    assert section.startswith(" (0 pending)")
    assert "webhook" in section and "2 min ago: [pilot] FIZZLED: fw 1 on alpha" in section
    assert "FAILING since 1 min ago: SMTP 127.0.0.1:1: ConnectionRefusedError" in section
    validate_status(report.to_dict())
    doc = report.to_dict()["notifications"]
    assert [c["name"] for c in doc["channels"]] == ["email", "webhook"] and doc["channels"][0]["failing"]
    assert_no_secret(notify_secrets.all(), check=res.stdout + res.stderr, show=shown, status=text,
                     status_json=json.dumps(report.to_dict(), default=str), argv=argv)



DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"


def test_the_documented_example_loads_and_every_field_has_a_row(tmp_path, monkeypatch):
    import re

    from pilot.config.models_notify import EmailSettings, NotifyConfig, WebhookSettings

    text = DOC.read_text()
    for model, pre in ((NotifyConfig, "notify."), (EmailSettings, "notify.email."),
                       (WebhookSettings, "notify.webhook.")):
        for name, f in model.model_fields.items():
            assert f"| `{pre}{f.alias or name}` |" in text, f"{pre}{name} has no row in {DOC.name}"
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
                if b.startswith("# pilot.yaml (notify)")]
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".pilot").mkdir()
    private(tmp_path / ".pilot" / "smtp-password", "pw")
    private(tmp_path / ".pilot" / "webhook-url", "https://hooks.example.org/services/T0/B0/x")
    (tmp_path / "pilot.yaml").write_text(block)
    n = load_pilot_config(tmp_path / "pilot.yaml").notify
    assert n.email.to == ["me@example.org", "lab-admin@example.org"] and n.unreachable_after == 900
    assert n.webhook.where() == "https://hooks.example.org"
