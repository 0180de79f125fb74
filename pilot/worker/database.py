"""The worker's LaunchPad: loading it from the launchpad file, the hooks that record what a child's checkout
did, and retrying the database through connection errors."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pilot.redact import scrub, secrets_of
from pilot.worker.logs import LOG
from pilot.worker.model import StopRequested, WorkerError
from pilot.worker.protocol import EXIT_DB_UNREACHABLE, EXIT_USAGE

if TYPE_CHECKING:
    from pilot.worker.children import ChildState
    from pilot.worker.model import WorkerConfig

T = TypeVar("T")


def install_worker_hooks(lp: Any) -> None:
    """Let the worker's LaunchPad record, for the child it currently serves, which Firework it reserved, which
    launch id it created, and whether a workflow lock could not be taken (FireWorks then skips the refresh);
    and send fewer database commands for the Rocket's calls (:mod:`pilot.worker.roundtrips`, unless
    ``PILOT_WORKER_FIREWORKS_CALLS=1``)."""
    import fireworks.core.launchpad as lpmod

    class RecordingWFLock(lpmod.WFLock):
        def __enter__(self) -> Any:
            try:
                return super().__enter__()
            except lpmod.LockedWorkflowError:
                child = getattr(self.lp, "_pilot_child", None)
                if child is not None:
                    child.lock_failed = True
                raise

    lpmod.WFLock = RecordingWFLock

    base: type = lpmod.LaunchPad
    if os.environ.get("PILOT_WORKER_FIREWORKS_CALLS") != "1":
        from pilot.worker.roundtrips import LeanLaunchPad, lean_calls_fit

        if lean_calls_fit():
            base = LeanLaunchPad

    class RecordingLaunchPad(base):
        _pilot_child: ChildState | None = None

        def _get_a_fw_to_run(self, query: Any = None, fw_id: Any = None, checkout: bool = True) -> Any:
            m_fw = super()._get_a_fw_to_run(query=query, fw_id=fw_id, checkout=checkout)
            if m_fw is not None and checkout and self._pilot_child is not None:
                self._pilot_child.reserved_fw = m_fw.fw_id
            return m_fw

        def get_new_launch_id(self) -> Any:
            launch_id = super().get_new_launch_id()
            if self._pilot_child is not None:
                self._pilot_child.launch_id = launch_id
            return launch_id

    lp.__class__ = RecordingLaunchPad


def file_secrets(path: Any) -> list[str]:
    """The secrets of a launchpad file (its password, its URI's, ...), for scrubbing messages; [] when the file
    cannot be read as a mapping (then nothing of it reached the driver either)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return secrets_of(data) if isinstance(data, dict) else []


def _routed_launchpad(path: Path, local_port: int) -> Any:
    """The LaunchPad of the file at ``path`` with its address replaced by the route's local port: the file is
    read here (not by ``LaunchPad.from_file``, which would first start a client towards the unreachable
    address), credentials and TLS settings stay as written."""
    import json

    import yaml
    from fireworks.core.launchpad import LaunchPad

    from pilot.worker.tunnel import launchpad_via_route

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("the file does not hold a mapping of LaunchPad settings")
    return LaunchPad.from_dict(launchpad_via_route(doc, local_port))


def load_launchpad(cfg: WorkerConfig, local_port: int | None = None) -> Any:
    """The worker's LaunchPad, from ``--launchpad-file`` (through the ssh route's ``local_port`` when there is
    one); a :class:`WorkerError` a person can act on when the file is missing or is no LaunchPad file."""
    from fireworks.core.launchpad import LaunchPad
    from pymongo.errors import ConfigurationError

    path = cfg.launchpad_file
    try:
        lp = LaunchPad.from_file(str(path)) if local_port is None else _routed_launchpad(path, local_port)
    except FileNotFoundError as exc:
        raise WorkerError(f"launchpad file {path}: not found ({exc}); pass --launchpad-file with the path "
                          "of a FireWorks my_launchpad.yaml", EXIT_USAGE) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigurationError) as exc:
        raise WorkerError(
            f"launchpad file {path}: cannot build a LaunchPad from it ({type(exc).__name__}: "
            f"{scrub(str(exc), file_secrets(path))}); it must "
            "be a FireWorks launchpad YAML/JSON with at least 'host' (or a mongodb:// URI with "
            "uri_mode: true) and 'name'", EXIT_USAGE) from exc
    return lp


class DbRetry:
    """Runs database calls, retrying connection errors with backoff for ``db_retry_time`` seconds."""

    def __init__(self, cfg: WorkerConfig, signals: list[int], sleep: Callable[[float], None]) -> None:
        self.cfg = cfg
        #: the stop signals the worker received (a stoppable call ends when one is there)
        self._signals = signals
        #: a sleep that wakes up at once on a signal
        self._sleep = sleep
        #: the launchpad file's secrets, read when a message needs them
        self._secrets: list[str] | None = None
        #: when a call first found a stop signal: the grace of every later call counts from there too (one
        #: grace per stop, not one per call: the batch system's SIGKILL does not wait for a second one)
        self._stopped: float | None = None

    def _text(self, exc: BaseException, limit: int = 300) -> str:
        """The driver's message without the launchpad file's secrets (scrubbed before it is cut)."""
        if self._secrets is None:
            self._secrets = file_secrets(self.cfg.launchpad_file)
        return scrub(str(exc), self._secrets)[:limit]

    def __call__(self, what: str, fn: Callable[..., T], *args: Any, stoppable: bool = False, **kwargs: Any) -> T:
        """Run ``fn`` against the database, retrying connection errors with backoff for ``db_retry_time``.

        With ``stoppable`` (a read that only looks for work) a stop signal ends the retrying: StopRequested.
        Any other call carries a result (a completion, a requeue) and goes on retrying after a stop signal, but
        its wait wakes up on the signal and it gives up ``grace`` seconds after it (after the first call that
        found it: one grace for all the calls that follow, e.g. a completion and then the requeue): the batch
        system kills the pilot soon after its stop signal, and the manager then reruns what could not be
        recorded.
        """
        from pymongo.errors import ConnectionFailure, OperationFailure

        first: float | None = None
        delay = 1.0
        while True:
            if stoppable and self._signals:
                raise StopRequested(what)
            try:
                return fn(*args, **kwargs)
            except ConnectionFailure as exc:
                now = time.monotonic()
                first = now if first is None else first
                if self._signals and self._stopped is None:
                    self._stopped = now
                give_up = first + self.cfg.db_retry_time
                if self._stopped is not None:
                    give_up = min(give_up, self._stopped + self.cfg.grace)
                if now >= give_up:
                    raise self._unreachable(what, exc, now - first, self._stopped is not None) from exc
                LOG.warning("database unreachable while %s (%s); retrying in %.0f s", what,
                            type(exc).__name__, min(delay, give_up - now))
                self._wait(min(delay, give_up - now))
                delay = min(delay * 2.0, 30.0)
            except OperationFailure as exc:
                raise WorkerError(f"database refused the operation while {what}: {self._text(exc)}; check the "
                                  f"credentials and database name in {self.cfg.launchpad_file}",
                                  EXIT_DB_UNREACHABLE) from exc

    def _wait(self, seconds: float) -> None:
        """Wait between two tries: wake at once on a stop signal; after one, keep the waits short."""
        if self._signals:
            time.sleep(min(seconds, 1.0))
        else:
            self._sleep(seconds)

    def _unreachable(self, what: str, exc: BaseException, tried: float, stopped: bool) -> WorkerError:
        why = (f"given up {self.cfg.grace:g} s (--grace) after the stop signal" if stopped
               else f"retried for {tried:.0f} s (--db-retry-time {self.cfg.db_retry_time:g})")
        return WorkerError(
            f"database unreachable while {what}: {type(exc).__name__}: {self._text(exc)}; {why}. Check that the "
            f"LaunchPad server in {self.cfg.launchpad_file} is running and reachable from "
            f"{socket.gethostname()}", EXIT_DB_UNREACHABLE)
