"""``pilot notify test``: send one test message through each channel of ``notify:`` (pilot.yaml) and say, per
channel, whether it went out and, if not, why. See docs/notifications.md.

It needs only the config directory (no LaunchPad): a person setting notifications up tries them first.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pilot.cli import AppContext


@click.group("notify")
def notify() -> None:
    """Notifications to a person (e-mail, chat webhook): docs/notifications.md."""


@notify.command("test")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def test_cmd(app: AppContext, as_json: bool) -> None:
    """Send one test message through each configured channel; exit 1 if any failed."""
    from pilot.config import ConfigError, load_pilot_config
    from pilot.configdir import PILOT_FILE, pilot_command
    from pilot.notify.notifier import send_test

    path = app.config_dir / PILOT_FILE
    try:
        pilot_cfg = load_pilot_config(path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        sys.exit(1)
    cfg = pilot_cfg.notify
    if cfg is None:
        raise click.ClickException(f"{path} has no notify: section; add one (docs/notifications.md), then run "
                                   f"`{pilot_command(app.config_dir, 'config check')}`")
    results = send_test(cfg, str(app.config_dir))
    where = {"email": cfg.email.where() + " to " + ", ".join(cfg.email.to) if cfg.email else "",
             "webhook": cfg.webhook.where() if cfg.webhook else ""}
    ok = all(err is None for err in results.values())
    if as_json:
        click.echo(json.dumps({"ok": ok, "channels": {
            ch: {"ok": err is None, "where": where.get(ch, ""), "error": err} for ch, err in results.items()}},
            indent=2))
    else:
        for ch, err in results.items():
            click.echo(f"{ch} ({where.get(ch, '')}): " + ("ok, test message sent" if err is None else f"FAILED: {err}"))
    sys.exit(0 if ok else 1)
