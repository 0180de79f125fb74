"""``pilot status``: what runs where, what is stuck, and why (the work is in :mod:`pilot.status`).

See ``docs/status-and-doctor.md``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pilot.cli.common import optional_config

if TYPE_CHECKING:
    from pilot.cli import AppContext
    from pilot.config import Config
    from pilot.launchpad.files import LaunchPadFile


def _status_sources(app: AppContext, launchpad_file: Path | None
                    ) -> tuple[Config | None, Any, LaunchPadFile, list[str]]:
    """(config or None, the LaunchPad, its file, warnings), by the one reader of LaunchPad files.

    Raises
    ------
    click.ClickException
        No usable LaunchPad file (the message says which file and the command that writes one).
    """
    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad

    cdir = Path(app.config_dir)
    config, warnings = optional_config(cdir)
    try:
        lpf = find_launchpad_file(cdir, launchpad_file, pilot=config.pilot if config else None)
        return config, open_launchpad(lpf, quiet=True), lpf, warnings
    except LaunchPadUnavailable as e:
        raise click.ClickException(str(e)) from None


@click.command("status")
@click.option("--launchpad-file", "-l", type=click.Path(dir_okay=False, path_type=Path),
              help="The LaunchPad file (default: launchpad_file of the config dir's pilot.yaml, else "
                   "CONFIG_DIR/my_launchpad.yaml). With it, no config dir is needed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (docs/status.schema.json).")
@click.option("--watch", type=float, is_flag=False, flag_value=10.0, default=None, metavar="[SECONDS]",
              help="Redraw every SECONDS (default 10) until Ctrl-C. With --json: one JSON document per line.")
@click.option("--pending-warn", type=float, default=30.0, show_default=True,
              help="Minutes in the queue after which a pilot is listed under 'needs you'.")
@click.option("--recent", type=float, default=60.0, show_default=True,
              help="Minutes: pilots that ended within this time count as 'ended recently'.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="Entries per 'needs you' list (the totals are always complete).")
@click.pass_obj
def status(app: AppContext, launchpad_file: Path | None, as_json: bool, watch: float | None, pending_warn: float,
           recent: float, limit: int) -> None:
    """Clusters, categories and what needs you, from the LaunchPad database (no SSH)."""
    from pymongo.errors import PyMongoError

    from pilot.launchpad.files import database_error
    from pilot.status import StatusOptions, describe_launchpad, format_status, gather_status

    config, lp, lpf, warnings = _status_sources(app, launchpad_file)
    opts = StatusOptions(pending_warn=pending_warn * 60, recent=recent * 60, limit=limit)
    info = describe_launchpad(lp)

    def once() -> str:
        try:
            report = gather_status(lp.db, config, options=opts, launchpad_info=info, warnings=warnings)
        except PyMongoError as e:
            msg = str(database_error(e, lp, lpf))
            if watch is None:
                raise click.ClickException(msg) from None
            return json.dumps({"error": msg}) if as_json else f"error: {msg}\n"
        if as_json:
            return json.dumps(report.to_dict(), default=str, indent=None if watch is not None else 2)
        width = shutil.get_terminal_size((120, 40)).columns
        return format_status(report, width=width)

    if watch is None:
        click.echo(once().rstrip("\n"))
        return
    if watch <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--watch")
    tty = sys.stdout.isatty() and not as_json
    try:
        while True:
            text = once().rstrip("\n")
            if tty:
                # home + clear, then the new text in one write: no blank flash between frames
                sys.stdout.write("\033[H\033[2J" + text + f"\n\n(refreshing every {watch:g} s; Ctrl-C to quit)\n")
                sys.stdout.flush()
            else:
                click.echo(text)
            time.sleep(watch)
    except KeyboardInterrupt:
        if tty:
            click.echo("")
