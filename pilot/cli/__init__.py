"""The ``pilot`` command line: a thin click group.

Subcommands live in the modules that own them and are imported lazily, so that
``pilot worker`` inside a batch job does not pay for paramiko or the manager.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import click

from pilot import __version__
from pilot.configdir import CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR

#: command name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "launchpad": "pilot.cli.launchpad:launchpad",
    "manager": "pilot.cli.manager:manager",
    "submit": "pilot.cli.pilots:submit_cmd",
    "cancel": "pilot.cli.pilots:cancel_cmd",
    "worker": "pilot.cli.worker:worker_command",
    "init": "pilot.cli.config:init", "config": "pilot.cli.config:config", "render": "pilot.cli.config:render",
    "md": "pilot.cli.md:md",
    "report": "pilot.cli.report:report_cmd", "demo": "pilot.cli.demo:demo_cmd",
    "drain": "pilot.cli.drain:drain_cmd", "resume": "pilot.cli.drain:resume_cmd",
    "notify": "pilot.cli.notify:notify", "dashboard": "pilot.cli.dashboard:dashboard",
    "connect": "pilot.cli.connect:connect_cmd", "disconnect": "pilot.cli.connect:disconnect_cmd",
    "status": "pilot.cli.status:status", "doctor": "pilot.cli.checks:doctor", "bootstrap": "pilot.cli.checks:bootstrap",
}


@dataclass
class AppContext:
    """What every subcommand receives as ``ctx.obj``."""

    config_dir: Path
    verbose: int


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module_name, attr = COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    if verbose < 3:
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    # FireWorks' "launchpad" logger has its own stream handler: don't print its lines a second time
    logging.getLogger("launchpad").propagate = False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fireworks-pilot")
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR, show_default=DEFAULT_CONFIG_DIR,
              help="Configuration directory (pilot.yaml, clusters/*.yaml, my_launchpad.yaml). "
                   "Environment: PILOT_CONFIG_DIR.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, config_dir: Path, verbose: int) -> None:
    """fireworks-pilot: run FireWorks on HPC clusters with demand-driven pilot jobs."""
    setup_logging(verbose)
    ctx.obj = AppContext(config_dir=Path(os.path.expanduser(str(config_dir))), verbose=verbose)
