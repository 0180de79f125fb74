"""Which configuration directory a command uses, and how a hint names it.

A leaf module (standard library only) because every room needs it cheaply: the command line's
``--config-dir`` default, the name of its ``pilot.yaml``, the LaunchPad-file reader, and the configuration
loader's hints. A hint that drops
the ``--config-dir`` the user typed sends them to another configuration and another database;
:func:`pilot_command` keeps it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

__all__ = ["CONFIG_DIR_ENV", "DEFAULT_CONFIG_DIR", "PILOT_FILE", "default_config_dir", "pilot_command", "same_path"]

#: The config dir when neither ``--config-dir`` nor :data:`CONFIG_DIR_ENV` names one.
DEFAULT_CONFIG_DIR = "~/.pilot"
#: Environment variable that names the config dir (``--config-dir`` overrides it).
CONFIG_DIR_ENV = "PILOT_CONFIG_DIR"
#: The config dir's main file (pilot settings, ``launchpad_file``); here so that the LaunchPad reader can name
#: it without importing the configuration loader (pydantic).
PILOT_FILE = "pilot.yaml"


def default_config_dir() -> Path:
    """The config dir a bare ``pilot`` uses: ``$PILOT_CONFIG_DIR``, else ``~/.pilot``."""
    return Path(os.path.expanduser(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR))


def same_path(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name the same place (``~`` expanded, links resolved)."""
    try:
        return Path(os.path.expanduser(str(a))).resolve() == Path(os.path.expanduser(str(b))).resolve()
    except OSError:
        return False


def pilot_command(config_dir: Path | str, args: str) -> str:
    """The command line to suggest: ``pilot ARGS``, with ``--config-dir D`` when D is not the default.

    Examples
    --------
    >>> pilot_command("/srv/lab", "launchpad init")
    'pilot --config-dir /srv/lab launchpad init'
    """
    if same_path(Path(config_dir), default_config_dir()):
        return f"pilot {args}"
    return f"pilot --config-dir {shlex.quote(str(config_dir))} {args}"
