"""``pilot report`` and ``pilot demo``: the click commands (the work is in pilot.report and pilot.demo)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click


def open_launchpad(config_dir: Path, launchpad_file: Path | None = None) -> tuple[Any, Any | None, list[str]]:
    """The LaunchPad of a config dir, its config (or None), and notes on what could not be used.

    The LaunchPad file is ``--launchpad-file``, else ``launchpad_file`` of ``pilot.yaml``, else
    ``CONFIG_DIR/my_launchpad.yaml``. The config is optional: without it the report has no cores per pilot.

    Raises
    ------
    click.ClickException
        No LaunchPad file, or it cannot be read.
    """
    from fireworks import LaunchPad

    from pilot.config import PILOT_FILE, ConfigError, load_config, load_pilot_config

    notes: list[str] = []
    config = None
    lp_file: Path | None = launchpad_file
    if config_dir.is_dir() and ((config_dir / PILOT_FILE).exists() or (config_dir / "clusters").is_dir()):
        try:
            config = load_config(config_dir)
        except ConfigError as e:
            first = e.problems[0] if e.problems else None
            notes.append(
                f"the config in {config_dir} is not usable ({first}"
                f"{f' and {len(e.problems) - 1} more' if len(e.problems) > 1 else ''}); "
                "run `pilot config check`"
            )
    else:
        notes.append(f"no config in {config_dir}")
    if lp_file is None:
        if config is not None:
            lp_file = Path(config.pilot.launchpad_file)
        elif (config_dir / PILOT_FILE).exists():
            try:
                lp_file = Path(load_pilot_config(config_dir / PILOT_FILE).launchpad_file)
            except ConfigError:
                lp_file = None
        if lp_file is None:
            lp_file = config_dir / "my_launchpad.yaml"
    lp_file = Path(os.path.expanduser(str(lp_file)))
    if not lp_file.is_file():
        raise click.ClickException(
            f"no LaunchPad file at {lp_file}: pass --launchpad-file, point launchpad_file in "
            f"{config_dir / PILOT_FILE} at your my_launchpad.yaml, or create one with `pilot launchpad init`"
        )
    try:
        import yaml

        data = yaml.safe_load(lp_file.read_text()) or {}
        if not isinstance(data, dict):
            raise click.ClickException(
                f"the LaunchPad file {lp_file} is not a YAML mapping of LaunchPad "
                "settings (host, port, name, ...); write it with `pilot launchpad init`"
            )
        data.update(strm_lvl="ERROR", logdir=None)
        kw = dict(data.get("mongoclient_kwargs") or {})
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        data["mongoclient_kwargs"] = kw
        lp = LaunchPad.from_dict(data)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        raise click.ClickException(f"cannot read the LaunchPad file {lp_file}: {e}") from None
    return lp, config, notes


def _db_error(lp_file_hint: str, exc: Exception) -> click.ClickException:
    return click.ClickException(
        f"cannot read the LaunchPad database ({lp_file_hint}): {type(exc).__name__}: "
        f"{str(exc).split(' (configured timeouts')[0][:300]}. "
        "Is the database running? For the embedded server: `pilot launchpad status`, "
        "`pilot launchpad init` starts it."
    )


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
    help="Also write the throughput figure: cumulative segments (or Fireworks) per cluster, and pilots "
    "running over time.",
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
    obj: Any,
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

    from pilot.report import format_report, gather_report, parse_when, plot_report

    now = time.time()
    try:
        t_since = parse_when(since, now) if since else None
        t_until = parse_when(until, now) if until else None
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if plot is not None and not plot.parent.is_dir():
        raise click.BadParameter(f"folder {plot.parent} does not exist", param_hint="--plot")
    lp, config, notes = open_launchpad(Path(obj.config_dir), launchpad_file)
    try:
        rep = gather_report(lp.db, config, since=t_since, until=t_until, now=now, notes=notes)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since/--until") from None
    except pymongo.errors.PyMongoError as e:
        raise _db_error(f"{lp.host}:{lp.port}/{lp.name}", e) from None
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
