"""What every doctor check stands on: the cluster, its transport, the results so far, and the two ways of
running a command there (as it is, or after the ``setup`` lines, like the job script).

:class:`DoctorBase` is the common base of the check groups (:mod:`pilot.checks.doctor_connection`,
:mod:`pilot.checks.doctor_environment`, :mod:`pilot.checks.doctor_launchpad`); :class:`~pilot.checks.doctor.
ClusterDoctor` combines them and runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.checks.probes import with_setup
from pilot.checks.results import CheckResult, CheckStatus
from pilot.configdir import default_config_dir, pilot_command

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.transport import CompletedCommand, Transport

__all__ = ["DoctorBase"]


class DoctorBase:
    """The cluster being checked, its transport, and the results so far.

    Parameters
    ----------
    name : str
        The cluster's name.
    cluster : pilot.config.ClusterConfig
    job_name_prefix : str
        For the rendered test script.
    transport : Transport | None
        Default: :func:`pilot.transport.clusters.transport_for` (SSH, or local for ``scheduler: local``).
    local_version : str | None
        This machine's fireworks-pilot version, compared with the cluster's (default: ``pilot.__version__``).
    config_dir : Path | str | None
        The config dir the cluster comes from, named in the fixes (``pilot --config-dir D bootstrap ...``);
        default: the default config dir (:func:`pilot.configdir.default_config_dir`).
    """

    def __init__(self, name: str, cluster: ClusterConfig, job_name_prefix: str = "fwp",
                 transport: Transport | None = None, local_version: str | None = None,
                 config_dir: Path | str | None = None) -> None:
        from pilot import __version__

        self.name = name
        self.c = cluster
        self.config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
        self.prefix = job_name_prefix
        self._transport = transport
        self.local_version = local_version or __version__
        self.timeout = float(cluster.command_timeout)
        self.state: dict[str, CheckStatus] = {}
        self.python_info: dict[str, Any] | None = None

    @property
    def transport(self) -> Transport:
        """The cluster's transport, opened on first use."""
        if self._transport is None:
            from pilot.transport.clusters import transport_for

            self._transport = transport_for(self.name, self.c)
        return self._transport

    def close(self) -> None:
        """Close the transport (a later check would open it again)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def command(self, args: str) -> str:
        """``pilot ARGS`` as a fix names it: with the ``--config-dir`` of this cluster's config dir."""
        return pilot_command(self.config_dir, args)

    @property
    def file(self) -> str:
        """The cluster's config file, for messages."""
        return str(self.c.source_file) if self.c.source_file else f"clusters/{self.name}.yaml"

    @property
    def interpreter(self) -> str:
        """The Python the checks use after setup: ``python:`` if set, else ``python3``."""
        return self.c.python or "python3"

    def _safely(self, cid: str, title: str, fn: Callable[[], CheckResult]) -> CheckResult:
        """``fn()``, with a transport failure turned into a failed check (its message and hint)."""
        from pilot.transport import TransportError

        try:
            return fn()
        except TransportError as e:
            return CheckResult(cid, title, CheckStatus.FAIL, detail=str(e).split("\n  try:")[0],
                               fix=e.hint or "see the error above")

    def _run(self, argv: list[str], stdin: str | None = None, cwd: str | None = None,
             env: dict[str, str] | None = None, timeout: float | None = None) -> CompletedCommand:
        return self.transport.run(argv, timeout=timeout or self.timeout, stdin=stdin, cwd=cwd, env=env)

    def _after_setup(self, argv: list[str], timeout: float | None = None) -> CompletedCommand:
        """``argv`` after the setup lines (in work_dir once it passed), with the cluster's ``env:``."""
        cwd = self.c.work_dir if self.state.get("work_dir") is CheckStatus.PASS else None
        return self._run(with_setup(self.c.setup, argv), cwd=cwd, env=dict(self.c.env) or None, timeout=timeout)

