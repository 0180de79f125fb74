"""Helpers shared by the commands that read the LaunchPad with or without a configuration (``status``, ``report``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pilot.configdir import pilot_command

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["optional_config"]


def optional_config(config_dir: Path) -> tuple[Config | None, list[str]]:
    """The configuration of ``config_dir`` if it has one that loads, else None; and notes on why not.

    A folder with neither ``pilot.yaml`` nor ``clusters/`` (or no folder) has no configuration: note
    ``no config in DIR``. One that does not load: the first problem, how many more, and the command that lists
    them all. Commands that can do without a configuration (``pilot status``, ``pilot report``) show the notes.
    """
    from pilot.config import CLUSTERS_DIR, PILOT_FILE, ConfigError, load_config

    if not (config_dir.is_dir() and ((config_dir / PILOT_FILE).exists() or (config_dir / CLUSTERS_DIR).is_dir())):
        return None, [f"no config in {config_dir}"]
    try:
        return load_config(config_dir), []
    except ConfigError as e:
        first = e.problems[0] if e.problems else None
        more = f" and {len(e.problems) - 1} more" if len(e.problems) > 1 else ""
        return None, [f"the config in {config_dir} is not usable ({first}{more}); "
                      f"run `{pilot_command(config_dir, 'config check')}`"]
