"""``pilot drain`` and ``pilot resume``: empty a cluster gently, and let it take pilots again.

The drain lives in the LaunchPad database (:mod:`pilot.manager.drain`), so these commands work from any machine
with the config dir's launchpad file, and the running manager (and every pilot of the cluster) sees it on its
next look: no SSH here. See ``docs/campaign.md``, "Drain and maintenance".
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pathlib import Path

    from pilot.cli import AppContext
    from pilot.config import Config
    from pilot.manager.drain import DrainResult
    from pilot.manager.records import Records


def _records(app: AppContext, cluster: str) -> Records:
    """The manager's records in the config dir's LaunchPad; click.ClickException when ``cluster`` is not one of
    the config dir's clusters (with the close matches), the config has problems or the LaunchPad is missing."""
    from pilot.cli.manager import load_manager_inputs
    from pilot.manager.records import Records

    config, lp, _ = load_manager_inputs(app)
    if cluster not in config.clusters:
        known = sorted(config.clusters)
        close = difflib.get_close_matches(cluster, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise click.ClickException(f"no cluster named {cluster!r} in {app.config_dir / 'clusters'} (its clusters: "
                                   f"{', '.join(known) or 'none'}){hint}")
    return Records(lp.db)


def _when(t: float, now: float) -> str:
    """``2026-12-07 14:00 (in 2 h)``: an end time for people, this machine's local time."""
    from pilot.status.format import human_duration

    return f"{dt.datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M')} (in {human_duration(t - now)})"


def _pilots(n: int, what: str) -> str:
    return f"{n} {what} pilot{'' if n == 1 else 's'}"


def drain_lines(res: DrainResult, now: float, resume: str) -> list[str]:
    """What ``pilot drain`` says: until when, what happens to the pilots, how to undo it."""
    until = (res.drain or {}).get("until")
    head = f"{res.cluster} is drained" + (f" until {_when(float(until), now)}" if until is not None else "")
    lines = [head + ": the manager submits no new pilot to it" + ("" if res.changed else " (it was already)") + "."]
    if res.running:
        lines.append(f"  {_pilots(res.running, 'running')} "
                     + ("leaves after its" if res.running == 1 else "leave after their") + " current Firework.")
    if res.pending:
        lines.append(f"  {_pilots(res.pending, 'queued')} "
                     + ("leaves as soon as it starts." if res.pending == 1 else "leave as soon as they start."))
    if not res.running and not res.pending:
        lines.append("  No pilot of this manager is on it now.")
    lines.append("  Its READY work goes to the other clusters that serve its categories, or waits.")
    lines.append(f"  Undo: {resume}" + (" (the manager also lifts it at that time)" if until is not None else ""))
    return lines


def resume_lines(res: DrainResult) -> list[str]:
    """What ``pilot resume`` says."""
    if not res.changed:
        return [f"{res.cluster} was not drained: nothing to undo."]
    live = res.pending + res.running
    lines = [f"{res.cluster} is resumed: the manager may submit pilots to it again (from its next cycle)."]
    if live:
        lines.append(f"  Its {live} live pilot{' goes' if live == 1 else 's go'} on taking work.")
    return lines


def _echo(res: DrainResult, lines: list[str], as_json: bool) -> None:
    """The lines, or with ``--json`` the result: times as ISO 8601 UTC text, as in ``pilot status --json``."""
    from pilot.isotime import iso_utc

    if not as_json:
        click.echo("\n".join(lines))
        return
    d = res.drain or {}
    click.echo(json.dumps({"cluster": res.cluster, "drained": res.drain is not None,
                           "since": iso_utc(d["since"]) if d.get("since") is not None else None,
                           "until": iso_utc(d["until"]) if d.get("until") is not None else None,
                           "by": d.get("by"), "pending_pilots": res.pending, "running_pilots": res.running,
                           "changed": res.changed}))


@click.command("drain")
@click.argument("cluster")
@click.option("--until", "until_text", metavar="TIME", default=None,
              help="Lift the drain at TIME: ISO 8601 (2026-12-08T14:00, 14:00 today; local time unless it has a "
                   "zone) or a duration from now (30m, 2h, 1d). Default: until `pilot resume`.")
@click.option("--json", "as_json", is_flag=True, help="Print the drain as JSON.")
@click.pass_obj
def drain_cmd(app: AppContext, cluster: str, until_text: str | None, as_json: bool) -> None:
    """No new pilots on CLUSTER; its running pilots leave after their current Firework.

    Queued pilots leave as soon as they start. Undo it with `pilot resume CLUSTER`. Giving it again replaces
    --until.
    """
    from pilot.configdir import pilot_command
    from pilot.manager.drain import drain_cluster, parse_until

    now = time.time()
    until = None
    if until_text is not None:
        try:
            until = parse_until(until_text, now)
        except ValueError as e:
            raise click.BadParameter(str(e).removeprefix(f"--until {until_text!r}: "), param_hint="--until") from None
    res = drain_cluster(_records(app, cluster), cluster, until, now)
    resume = pilot_command(app.config_dir, f"resume {cluster}")
    _echo(res, drain_lines(res, now, resume), as_json)


@click.command("resume")
@click.argument("cluster")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def resume_cmd(app: AppContext, cluster: str, as_json: bool) -> None:
    """Undo `pilot drain CLUSTER`: the manager may submit pilots to it again."""
    from pilot.manager.drain import resume_cluster

    res = resume_cluster(_records(app, cluster), cluster)
    _echo(res, resume_lines(res), as_json)


def drained_clusters(config_dir: Path, cfg: Config, timeout: float = 3.0) -> dict[str, dict[str, Any]]:
    """The config's clusters that are drained now ({name: drain {since, until, by}}), for ``pilot config check``:
    read from the LaunchPad when it answers within ``timeout`` seconds; {} quietly when it does not (no file, the
    server down: the check is about the files, and says nothing it cannot know)."""
    import pymongo
    from pymongo.errors import PyMongoError

    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad
    from pilot.manager.records import Records

    try:
        lp = open_launchpad(find_launchpad_file(config_dir, pilot=cfg.pilot, option=None), quiet=True)
        with pymongo.timeout(timeout):
            drains = Records(lp.db).drained()
    except (LaunchPadUnavailable, PyMongoError, OSError):
        return {}
    now = time.time()
    return {n: d for n, d in sorted(drains.items()) if n in cfg.clusters
            and not (isinstance(d.get("until"), int | float) and d["until"] <= now)}


def drained_lines(config_dir: Path, cfg: Config) -> list[str]:
    """``drained: pilotci until 12-08 14:00 (pilot resume pilotci)``, one line per drained cluster of the config
    (see :func:`drained_clusters`): what ``pilot config check`` prints after its summary of the files."""
    from pilot.configdir import pilot_command
    from pilot.manager.drain import short_clock

    now = time.time()
    out = []
    for name, d in drained_clusters(config_dir, cfg).items():
        until = d.get("until")
        when = f" until {short_clock(float(until), now)}" if isinstance(until, int | float) else ""
        out.append(f"drained: {name}{when}, by {d.get('by') or '?'}: no new pilots "
                   f"(`{pilot_command(config_dir, f'resume {name}')}`)")
    return out
