"""``pilot report``: the click command (the work is in :mod:`pilot.report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pilot.cli.common import optional_config

if TYPE_CHECKING:
    from pilot.cli import AppContext
    from pilot.config import Config
    from pilot.launchpad.files import LaunchPadFile


def _report_sources(config_dir: Path, launchpad_file: Path | None = None
                    ) -> tuple[Any, LaunchPadFile, Config | None, list[str]]:
    """The LaunchPad of a config dir (pinged), its file, its config (or None), and notes on what could not be used.

    The LaunchPad file is found by :func:`pilot.launchpad.files.find_launchpad_file` (``--launchpad-file``, else
    ``launchpad_file`` of ``pilot.yaml``, else ``CONFIG_DIR/my_launchpad.yaml``). The config is optional:
    without it the report has no cores per pilot.

    Raises
    ------
    click.ClickException
        No LaunchPad file, it cannot be read, or the database does not answer within the timeout.
    """
    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad, ping

    config, notes = optional_config(config_dir)
    try:
        lpf = find_launchpad_file(config_dir, launchpad_file, pilot=config.pilot if config else None)
        lp = open_launchpad(lpf, quiet=True)
        try:
            ping(lp, lpf)
        except LaunchPadUnavailable:
            lp.connection.close()
            raise
    except LaunchPadUnavailable as e:
        raise click.ClickException(str(e)) from None
    return lp, lpf, config, notes


@click.command("report")
@click.option(
    "--since",
    "since",
    metavar="DATE",
    default=None,
    help="Start of the window: 2024-05-01, 2024-05-01T12:00 (UTC unless an offset is given), today, "
    "or an age: 12h, 3d, 2w. Default: all history.",
)
@click.option(
    "--until", "until", metavar="DATE", default=None, help="End of the window (same forms). Default: now."
)
@click.option(
    "--plot",
    "plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE.png",
    help="Also write the throughput figure: cumulative segments (or Fireworks) per cluster, the cumulative "
    "trajectory per cluster (when segments recorded it), and pilots running over time.",
)
@click.option(
    "--plot-what",
    type=click.Choice(["auto", "segments", "fireworks"]),
    default="auto",
    show_default=True,
    help="What the figure counts (auto: segments when there are any).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as one JSON document (schema_version 1)."
)
@click.option(
    "-l",
    "--launchpad-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="LaunchPad file (default: launchpad_file of pilot.yaml, else CONFIG_DIR/my_launchpad.yaml).",
)
@click.pass_obj
def report_cmd(
    obj: AppContext,
    since: str | None,
    until: str | None,
    plot: Path | None,
    plot_what: str,
    as_json: bool,
    launchpad_file: Path | None,
) -> None:
    """Throughput per cluster and per day: MD segments and Fireworks completed, pilot CPU hours, utilisation,
    queue waits and reruns. Reads only the LaunchPad (and the config dir, for cores per pilot)."""
    import time

    import pymongo.errors

    from pilot.launchpad.files import database_error
    from pilot.report import format_report, gather_report, parse_when, plot_report

    now = time.time()
    try:
        t_since = parse_when(since, now) if since else None
        t_until = parse_when(until, now) if until else None
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if plot is not None and not plot.parent.is_dir():
        raise click.BadParameter(f"folder {plot.parent} does not exist", param_hint="--plot")
    lp, lpf, config, notes = _report_sources(Path(obj.config_dir), launchpad_file)
    try:
        rep = gather_report(lp.db, config, since=t_since, until=t_until, now=now, notes=notes)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since/--until") from None
    except pymongo.errors.PyMongoError as e:
        raise click.ClickException(str(database_error(e, lp, lpf))) from None
    finally:
        lp.connection.close()
    if plot is not None:
        plot_report(rep, plot, what=plot_what)
    if as_json:
        doc = rep.to_dict()
        if plot is not None:
            doc["plot"] = str(plot)
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(format_report(rep))
    if plot is not None:
        click.echo(f"wrote {plot}")
