"""``pilot demo``: the whole loop on this machine in minutes (the work is in :mod:`pilot.demo`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pilot.cli import AppContext


@click.command("demo")
@click.option(
    "--engine",
    type=click.Choice(["openmm", "gromacs", "auto"]),
    default="openmm",
    show_default=True,
    help="MD engine: OpenMM (pip, the [md] extra), GROMACS (`gmx` on the PATH), or auto (GROMACS when "
    "`gmx` is there, else OpenMM).",
)
@click.option("--sims", type=click.IntRange(1, 20), default=3, show_default=True, help="Simulations to run.")
@click.option(
    "--segments",
    type=click.IntRange(2, 20),
    default=3,
    show_default=True,
    help="About how many segments each simulation takes (its length is set from a quick speed test).",
)
@click.option(
    "--segment-seconds",
    type=click.FloatRange(2, 60),
    default=6.0,
    show_default=True,
    help="Length of one segment.",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Do not stop at the first failed segment: run the other simulations to the end, then report "
    "(the exit code is still 1).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(30),
    default=900.0,
    show_default=True,
    help="Give up (and cancel the pilots) after this many seconds.",
)
@click.pass_obj
def demo_cmd(
    obj: AppContext, engine: str, sims: int, segments: int, segment_seconds: float, keep_going: bool, timeout: float
) -> None:
    """Run a small real MD campaign on this machine: LaunchPad, manager and pilots, nothing to configure.

    Starts the embedded LaunchPad server in CONFIG_DIR, writes pilot.yaml and clusters/local.yaml there
    (pilots are local processes with a short wall time), adds SIMS segmented water-box simulations, runs
    the manager until they finish, then prints `pilot status` and writes CONFIG_DIR/report.png. Everything
    stays in CONFIG_DIR, and the LaunchPad server keeps running so that `pilot status` and `pilot report`
    work afterwards (`pilot launchpad stop` stops it).
    """
    from pilot.demo import DemoError, DemoOptions, run_demo

    opts = DemoOptions(
        engine=engine,
        sims=sims,
        segments=segments,
        segment_seconds=segment_seconds,
        keep_going=keep_going,
        timeout=timeout,
    )
    ctx = click.get_current_context()
    try:
        ok = run_demo(
            Path(obj.config_dir),
            opts,
            show_status=_status_shower(ctx),
            echo=click.echo,
            verbose=obj.verbose,
        )
    except DemoError as e:
        raise click.ClickException(str(e)) from None
    if not ok:
        ctx.exit(1)


def _status_shower(ctx: click.Context) -> Callable[[], None] | None:
    """What the demo calls to show ``pilot status`` at the end: the ``status`` command itself, run in this
    context; None when this CLI has no such command (the demo then prints a short summary of its own)."""
    from pilot.cli import COMMANDS

    if "status" not in COMMANDS:
        return None
    cmd = ctx.command.get_command(ctx, "status") if isinstance(ctx.command, click.Group) else None
    if cmd is None and ctx.parent is not None and isinstance(ctx.parent.command, click.Group):
        cmd = ctx.parent.command.get_command(ctx.parent, "status")
    if cmd is None:
        return None
    status_cmd = cmd

    def show() -> None:
        try:
            ctx.invoke(status_cmd)
        except click.exceptions.Exit:
            pass  # status exits 1 when something needs a person: it said what
        except click.ClickException as e:
            click.echo(f"pilot status failed: {e.format_message()}")

    return show
