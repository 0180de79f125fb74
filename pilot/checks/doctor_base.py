"""What every doctor check stands on: the cluster, its transport, the results so far, and the two ways of
running a command there (as it is, or after the ``setup`` lines, like the job script).

:class:`DoctorBase` is the common base of the check groups (:mod:`pilot.checks.doctor_connection`,
:mod:`pilot.checks.doctor_environment`, :mod:`pilot.checks.doctor_launchpad`); :class:`~pilot.checks.doctor.
ClusterDoctor` combines them and runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pilot.checks.probes import with_setup
from pilot.checks.results import CheckResult, CheckStatus
from pilot.configdir import default_config_dir, pilot_command

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.transport import CompletedCommand, Transport

__all__ = ["DoctorBase", "ForwardKeeper", "KeeperFactory"]


class ForwardState(Protocol):
    """What the doctor reads of a route keeper's state (:class:`pilot.manager.routes.RouteState`)."""

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class ForwardKeeper(Protocol):
    """The part of :class:`pilot.manager.routes.RouteKeeper` the doctor uses: the manager's own forward, opened
    for the length of one check. The checks room may not import the manager's, so the caller (the command line)
    hands a :data:`KeeperFactory` in."""

    def start(self) -> None: ...

    def wait_up(self, timeout: float) -> bool: ...

    def state(self) -> ForwardState: ...

    def stop(self, timeout: float = ...) -> None: ...


#: ``factory(cluster_name, cluster, launchpad_settings)``: a keeper of the cluster's ssh route leading to the
#: LaunchPad that ``launchpad_settings`` (this config dir's LaunchPad file) names; ValueError when it cannot.
KeeperFactory = Callable[[str, "ClusterConfig", Mapping[str, Any]], ForwardKeeper]


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
    route_keeper : KeeperFactory | None
        Opens the ssh route's forward on the login node while a check needs it (the command line passes
        :class:`pilot.manager.routes.RouteKeeper`); None: the checks rely on a running manager's forward.
    route_timeout : float
        Seconds the ``route`` check waits for its probe job to start.
    progress : callable | None
        ``progress(text)``: how a long check tells where it is (a job pending, running).
    """

    def __init__(self, name: str, cluster: ClusterConfig, job_name_prefix: str = "fwp",
                 transport: Transport | None = None, local_version: str | None = None,
                 config_dir: Path | str | None = None, route_keeper: KeeperFactory | None = None,
                 route_timeout: float = 180.0, progress: Callable[[str], None] | None = None) -> None:
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
        self.route_keeper = route_keeper
        self.route_timeout = float(route_timeout)
        self._progress = progress

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


    def progress(self, text: str) -> None:
        """Tell the caller where a long check is (nothing when nobody listens)."""
        if self._progress is not None:
            self._progress(text)

    # ------------------------------------------------------------------ this machine's LaunchPad
    def local_launchpad(self) -> dict[str, Any]:
        """The settings of this config dir's LaunchPad file (the one the manager uses).

        Raises
        ------
        pilot.launchpad.files.LaunchPadUnavailable
        """
        from pilot.launchpad.files import find_launchpad_file, read_settings

        return read_settings(find_launchpad_file(self.config_dir))

    def _known_secrets(self) -> list[str]:
        """The passwords of the LaunchPad files on this machine (the config dir's, and the cluster's path when it
        is here too): the cluster's file is normally a copy, and the probe's error may quote its URI."""
        from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, read_settings, secrets_of

        out: list[str] = []
        for explicit in (None, self.c.launchpad_file):
            try:
                out += secrets_of(read_settings(find_launchpad_file(self.config_dir, explicit)))
            except (LaunchPadUnavailable, OSError):
                pass
        return out

    # ------------------------------------------------------------------ the ssh route's forward
    @contextmanager
    def route_forward(self, cluster: ClusterConfig) -> Iterator[str | None]:
        """The forward of ``cluster``'s ssh route on its login node, for the length of the ``with`` block.

        Yields None when the doctor's own forward is up, else why not (the block goes on: when the login
        node's sshd refuses the port, the manager's own forward most likely holds it, and whatever is run
        through the port tells whether it leads to the LaunchPad). The forward is closed afterwards.
        """
        from pilot.launchpad.files import LaunchPadUnavailable

        route = cluster.ssh_route
        if route is None or self.route_keeper is None:
            yield "the doctor opens no forward of its own here (it relies on the manager's)"
            return
        try:
            keeper = self.route_keeper(self.name, cluster, self.local_launchpad())
        except (LaunchPadUnavailable, ValueError) as e:
            yield f"the doctor could not open a forward: {e}"
            return
        keeper.start()
        try:
            if self._first_attempt(keeper, float(cluster.connect_timeout) + 15.0):
                yield None
                return
            error = keeper.state().last_error or "it did not come up in time"
            keeper.stop()    # no retries meanwhile: one answer is enough here
            if "refused to listen" in error:
                yield (f"the login node's sshd would not open 127.0.0.1:{route.port} for the doctor: most likely the "
                       "manager's own forward holds it")
            else:
                yield f"the doctor's forward did not come up: {error.split(chr(10))[0][:300]}"
        finally:
            keeper.stop()

    @staticmethod
    def _first_attempt(keeper: ForwardKeeper, timeout: float) -> bool:
        """Whether the keeper's first attempt brought the forward up; returns as soon as that attempt ended
        (the keeper would go on retrying with growing waits: one answer is what a check needs)."""
        import time

        deadline = time.monotonic() + timeout
        while not keeper.wait_up(0.25):
            if keeper.state().last_error is not None or time.monotonic() >= deadline:
                return keeper.state().up
        return True
