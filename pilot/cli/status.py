"""``pilot status``: what runs where, what is stuck, and why (the work is in :mod:`pilot.status`).

See ``docs/status-and-doctor.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click


def _status_sources(app: Any, launchpad_file: Path | None) -> tuple[Any | None, Path, list[str]]:
    """(config or None, the launchpad file, warnings): the config dir is optional for status."""
    from pilot.config import PILOT_FILE, ConfigError, load_config, load_pilot_config

    warnings: list[str] = []
    config = None
    lp_from_config: Path | None = None
    cdir = Path(app.config_dir)
    if cdir.is_dir():
        try:
            config = load_config(cdir)
            lp_from_config = Path(os.path.expanduser(str(config.pilot.launchpad_file)))
        except ConfigError as e:
            warnings.append(f"the config in {cdir} has problems ({len(e.problems)}; see `pilot config check`): "
                            "clusters and categories come from the records")
            try:
                lp_from_config = Path(os.path.expanduser(str(load_pilot_config(cdir / PILOT_FILE).launchpad_file)))
            except ConfigError:
                lp_from_config = None
    lp = Path(os.path.expanduser(str(launchpad_file))) if launchpad_file else lp_from_config
    if lp is None:
        raise click.ClickException(
            f"no launchpad file: {cdir} is not a config directory; pass --launchpad-file my_launchpad.yaml "
            "(status needs only that file), or --config-dir")
    if not lp.is_file():
        where = "--launchpad-file" if launchpad_file else f"{cdir / PILOT_FILE}: launchpad_file"
        raise click.ClickException(f"{where}: {lp} does not exist; pass the my_launchpad.yaml of your LaunchPad")
    return config, lp, warnings


def _open_launchpad(lp_file: Path) -> Any:
    import yaml
    from fireworks import LaunchPad

    try:
        lp = LaunchPad.from_file(str(lp_file))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        # FireWorks passes on whatever its YAML/JSON reader raises; a file without "host" is a KeyError
        raise click.ClickException(f"cannot read the launchpad file {lp_file}: {type(e).__name__}: {e}") from None
    d = lp.to_dict()
    kw = dict(d.get("mongoclient_kwargs") or {})
    kw.setdefault("serverSelectionTimeoutMS", 10000)
    d["mongoclient_kwargs"] = kw
    d["strm_lvl"] = "ERROR"
    return LaunchPad.from_dict(d)


@click.command("status")
@click.option("--launchpad-file", "-l", type=click.Path(dir_okay=False, path_type=Path),
              help="The LaunchPad file (default: launchpad_file of the config dir's pilot.yaml). With it, no "
                   "config dir is needed.")
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
def status(app: Any, launchpad_file: Path | None, as_json: bool, watch: float | None, pending_warn: float,
           recent: float, limit: int) -> None:
    """Clusters, categories and what needs you, from the LaunchPad database (no SSH)."""
    from pymongo.errors import PyMongoError

    from pilot.status import StatusOptions, describe_launchpad, format_status, gather_status

    config, lp_file, warnings = _status_sources(app, launchpad_file)
    lp = _open_launchpad(lp_file)
    opts = StatusOptions(pending_warn=pending_warn * 60, recent=recent * 60, limit=limit)
    info = describe_launchpad(lp)

    def once() -> str:
        try:
            report = gather_status(lp.db, config, options=opts, launchpad_info=info, warnings=warnings)
        except PyMongoError as e:
            msg = (f"cannot read the LaunchPad database {info.get('host')} ({info.get('name')}): "
                   f"{type(e).__name__}: {str(e).splitlines()[0][:300]}; is the database running and reachable "
                   f"from here? (launchpad file: {lp_file})")
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
