"""What every bootstrap step shares: the options, the cluster's Python as found, the context of one run
(cluster, transport, reporter, what was decided so far), and the error a failed step raises.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.checks.probes import tail, with_setup
from pilot.checks.progress import Reporter

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, Config
    from pilot.transport import CompletedCommand, Transport

__all__ = [
    "INSTALL_TIMEOUT",
    "STAMP_NAME",
    "BootstrapContext",
    "BootstrapError",
    "BootstrapOptions",
    "RemotePython",
    "WheelMode",
    "command_failed",
]

#: What the venv remembers about its install (version, digest of the build, when).
STAMP_NAME = ".pilot-bootstrap.json"
#: Seconds a ``pip`` run (here or on the cluster) may take.
INSTALL_TIMEOUT = 1800.0


class BootstrapError(Exception):
    """A bootstrap step failed; the message says which, why, and what to try."""


class WheelMode(str, Enum):
    """Where the cluster's venv gets its packages from."""

    UPLOAD = "upload"   # every wheel built here and uploaded: no package index needed on the cluster
    INDEX = "index"     # only this project's wheel uploaded; dependencies from the cluster's package index
    AUTO = "auto"       # INDEX if `pip index versions pip` answers on the cluster, else UPLOAD


@dataclass(frozen=True)
class BootstrapOptions:
    """What ``pilot bootstrap`` was asked to do (the command-line options)."""

    wheels: WheelMode = WheelMode.UPLOAD
    venv: str | None = None              # default <work_dir>/venv
    python: str = "python3"
    db_host: str | None = None
    launchpad_path: str | None = None    # default: the cluster's launchpad_file
    force: bool = False
    wheelhouse: Path | None = None       # default <config_dir>/wheelhouse
    run_doctor: bool = True
    source: Path | None = None           # default: the source tree this pilot runs from (if any)


@dataclass(frozen=True)
class RemotePython:
    """The cluster's Python (after the setup lines)."""

    version: str
    major: int
    minor: int
    implementation: str
    system: str
    machine: str
    glibc: str | None
    executable: str
    venv: bool
    ensurepip: bool

    @property
    def tag(self) -> str:
        """The wheelhouse folder name: ``cpython311-linux-x86_64-glibc2.36``."""
        return f"{self.implementation}{self.major}{self.minor}-{self.system}-{self.machine}" + (
            f"-glibc{self.glibc}" if self.glibc else "")


@dataclass
class BootstrapContext:
    """One bootstrap run: what it works on, and what the steps found and decided so far.

    ``base_setup`` is the cluster's setup lines without the one an earlier bootstrap added (the venv may
    not exist yet); ``remote`` is filled by the first step; ``skip_install`` and ``reinstall_same_version``
    by the look at the venv; ``summary`` is what :func:`pilot.checks.bootstrap.bootstrap` returns.
    """

    name: str
    cluster: ClusterConfig
    config: Config
    opts: BootstrapOptions
    rep: Reporter
    transport: Transport
    base_setup: str = ""
    venv: str = ""
    source: Path | None = None
    remote: RemotePython | None = None
    version: str = ""
    digest: str = ""
    skip_install: bool = False
    reinstall_same_version: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return float(self.cluster.command_timeout)

    def run(self, argv: list[str], timeout: float | None = None, setup: bool = True,
            env: dict[str, str] | None = None) -> CompletedCommand:
        """``argv`` on the cluster (after ``base_setup`` unless ``setup`` is false), with its ``env:``."""
        cmd = with_setup(self.base_setup, argv) if setup else argv
        full = {**dict(self.cluster.env), **(env or {})}
        return self.transport.run(cmd, timeout=timeout or self.timeout, env=full or None)


def _shown(argv: list[str]) -> str:
    """An argument list for a message (display only, never run): the setup wrapper is summarised."""
    prefix = ""
    if argv[:2] == ["bash", "-c"] and len(argv) > 3 and argv[3] == "pilot-setup":
        prefix, argv = "(after the setup lines) ", argv[4:]
    words = [a if a and not any(ch in a for ch in " \t\n'\"") else repr(a) for a in argv]
    text = prefix + " ".join(words)
    return text if len(text) <= 300 else text[:297] + "..."


def command_failed(what: str, res: CompletedCommand, fix: str) -> BootstrapError:
    """The error for a failed command: what failed, the command, its exit code and stderr, what to try."""
    return BootstrapError(f"{what}\n    command: {_shown(res.argv)}\n    exit code: {res.returncode}\n"
                          f"    stderr (last lines):\n{textwrap.indent(tail(res.stderr, 8), ' ' * 8)}\n    try: {fix}")
