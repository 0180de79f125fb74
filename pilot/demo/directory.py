"""The demo's config directory: refuse a foreign one, write the demo's files, start its LaunchPad server."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilot.configdir import open_private, private_dir, write_private
from pilot.demo.options import (
    CLUSTER_NAME,
    DB_NAME,
    DEMO_MARK,
    IDLE_TIMEOUT_S,
    PILOT_WALLTIME_S,
    POLL_INTERVAL_S,
    WALLTIME_MARGIN_S,
    DemoError,
)

__all__ = ["check_config_dir", "start_launchpad", "write_config"]


def _is_demo_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == DEMO_MARK
    except OSError:
        return False


def check_config_dir(config_dir: Path) -> None:
    """Refuse a config directory with a configuration the demo did not write.

    Raises
    ------
    DemoError
        Naming the files, and suggesting a directory of its own for the demo.
    """
    import yaml

    from pilot.launchpad.control import LAUNCHPAD_FILE, SERVER_DIR

    if config_dir.exists() and not config_dir.is_dir():
        raise DemoError(f"{config_dir} is a file, not a directory: choose another --config-dir")
    foreign: list[str] = []
    pilot_yaml = config_dir / "pilot.yaml"
    if pilot_yaml.exists() and not _is_demo_file(pilot_yaml):
        foreign.append(str(pilot_yaml))
    cdir = config_dir / "clusters"
    if cdir.is_dir():
        for p in sorted([*cdir.glob("*.yaml"), *cdir.glob("*.yml")]):
            if not _is_demo_file(p):
                foreign.append(str(p))
    lp_file = config_dir / LAUNCHPAD_FILE
    if lp_file.exists():
        try:
            data = yaml.safe_load(lp_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DemoError(
                f"{lp_file} cannot be read ({e}): move it away, or run the demo in another --config-dir"
            ) from None
        embedded = (
            isinstance(data, dict)
            and not data.get("uri_mode")
            and str(data.get("host")) in ("127.0.0.1", "localhost", "::1")
            and (config_dir / SERVER_DIR).is_dir()
        )
        if not embedded:
            foreign.append(f"{lp_file} (a LaunchPad that is not this directory's embedded server)")
    if foreign:
        listed = "\n  ".join(foreign)
        raise DemoError(
            f"{config_dir} already holds a configuration that `pilot demo` did not write:\n  {listed}\n"
            "The demo never overwrites your files nor adds its simulations to your LaunchPad. Run it in a "
            f"directory of its own, e.g. `pilot --config-dir {config_dir.parent / 'pilot-demo'} demo`."
        )


def _yaml_text(doc: dict[str, Any], comment: str) -> str:
    import yaml

    return f"{DEMO_MARK}\n# {comment}\n" + yaml.safe_dump(doc, sort_keys=False)


def write_config(config_dir: Path, max_pilots: int) -> list[Path]:
    """Write ``pilot.yaml`` and ``clusters/local.yaml`` where they do not exist yet; return those written.

    Like everything pilot writes in a config dir: directories 0700, files 0600 (an older, looser config dir
    is tightened).
    """
    from pilot.launchpad.control import LAUNCHPAD_FILE

    written = []
    private_dir(config_dir)
    pilot_yaml = config_dir / "pilot.yaml"
    if not pilot_yaml.exists():
        write_private(
            pilot_yaml,
            _yaml_text(
                {
                    "launchpad_file": LAUNCHPAD_FILE,
                    "poll_interval": POLL_INTERVAL_S,
                    "log_dir": "logs",
                    "backoff": {"initial": 5, "max": 60},
                    "max_reruns": 3,
                },
                "the manager: LaunchPad file and log dir relative to this folder; a cycle every 2 s",
            )
        )
        written.append(pilot_yaml)
    cdir = config_dir / "clusters"
    private_dir(cdir)
    cluster = cdir / f"{CLUSTER_NAME}.yaml"
    if not cluster.exists():
        write_private(
            cluster,
            _yaml_text(
                {
                    "scheduler": "local",
                    "categories": ["md", "local"],
                    "launchpad_file": str(config_dir / LAUNCHPAD_FILE),
                    "work_dir": str(config_dir / "work"),
                    "python": sys.executable,
                    "pilot": {"walltime": PILOT_WALLTIME_S, "cores": 1},
                    "walltime_margin": WALLTIME_MARGIN_S,
                    "grace": 5,
                    "idle_timeout": IDLE_TIMEOUT_S,
                    "limits": {"max_queued": max_pilots, "max_running": max_pilots},
                },
                f"this machine: pilots are local processes with a {PILOT_WALLTIME_S} s wall time",
            )
        )
        written.append(cluster)
    # the manager's log (log_dir above): made 0600 here, in a 0700 dir, so that the handler that appends to it
    # later keeps it private
    private_dir(config_dir / "logs")
    open_private(config_dir / "logs" / "manager.log", "a").close()
    return written


def start_launchpad(config_dir: Path, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Start (or reuse) the embedded server of ``config_dir`` and write its LaunchPad file, as
    ``pilot launchpad init`` does. Returns the running server and the LaunchPad dict."""
    import yaml

    from pilot.launchpad.control import (
        LAUNCHPAD_FILE,
        SERVER_DIR,
        ControlError,
        admin_launchpad,
        check_launchpad,
        find_running,
        start_background,
        write_private_yaml,
    )

    data_dir = config_dir / SERVER_DIR
    lp_file = config_dir / LAUNCHPAD_FILE
    name = DB_NAME
    if lp_file.exists():
        old = yaml.safe_load(lp_file.read_text()) or {}
        name = str(old.get("name") or DB_NAME)
    try:
        try:
            private_dir(config_dir)  # 0700 before the server's data dir goes in it
        except OSError as e:
            raise ControlError(f"cannot create {config_dir}: {e.strerror or e}") from None
        server = find_running(data_dir)
        if server is None:
            server = start_background(data_dir, None)
            say(
                f"started the embedded LaunchPad server: pid {server.pid}, {server.host}:{server.port}, "
                f"data {data_dir}"
            )
        else:
            say(f"using the running embedded LaunchPad server: pid {server.pid}, {server.host}:{server.port}")
        lpd = admin_launchpad(server, name)  # the server's admin: credentials (and TLS settings, if any)
        check_launchpad(lpd)
    except ControlError as e:
        raise DemoError(f"the embedded LaunchPad server: {e}") from None
    write_private_yaml(lp_file, lpd)
    return server, lpd
