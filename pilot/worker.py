"""``pilot worker``: the process inside a batch job that pulls FireWorks work until its wall time.

The worker is a small supervisor around FireWorks' own :func:`fireworks.core.rocket_launcher.launch_rocket`:

* it pulls Fireworks of its categories one after another, but only those whose expected duration
  (``spec._pilot.walltime``, seconds; absent means "fits anything") fits the time left before the job's
  deadline minus a safety margin;
* every Firework runs in a forked child process that is the leader of its own session / process group, with
  its own LaunchPad connection, in its own ``launcher_*`` directory;
* on the batch system's pre-walltime signal (SIGUSR1), on SIGTERM/SIGINT, or when the deadline comes close
  (``deadline - margin/2``) it takes no new work, sends SIGTERM to the running Firework's process group,
  waits a grace period, SIGKILLs the group if needed, and makes sure the Firework is not left RUNNING: a
  result the task reported stands; a launch that is still RUNNING is archived (marked FIZZLED with a message)
  and the Firework goes back to READY;
* it leaves when no matching work has come for ``--idle-timeout`` seconds, so the allocation is released.

FireTasks learn the deadline from the environment (``PILOT_DEADLINE``, epoch seconds; ``PILOT_STOP_AT``, when
the worker will send SIGTERM; ``PILOT_NAME``), so ``tasks/`` never imports this module.

See ``docs/worker.md`` for the user-facing description.
"""

from __future__ import annotations

import datetime
import enum
import importlib
import json
import logging
import math
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

LOG = logging.getLogger("pilot.worker")

#: Exit codes of ``pilot worker``.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DB_UNREACHABLE = 3

#: Exit codes of a Firework child process (internal protocol between child and worker).
CHILD_RAN = 0
CHILD_ERROR = 1
CHILD_NO_WORK = 3
#: a pre-forked child that was never given work
CHILD_UNUSED = 4

#: Firework / launch states in which a Firework still "belongs" to a running launch.
ACTIVE_STATES = ("RUNNING", "RESERVED")
FINAL_LAUNCH_STATES = ("COMPLETED", "FIZZLED")

T = TypeVar("T")


class Outcome(enum.Enum):
    """What became of one pull attempt."""

    COMPLETED = "COMPLETED"
    FIZZLED = "FIZZLED"
    #: the launch was still RUNNING when the child ended: the Firework went back to READY.
    REQUEUED = "REQUEUED"
    #: the child found no matching READY Firework.
    NO_WORK = "NO_WORK"
    #: the child failed before it took a Firework (database error, broken environment).
    CHILD_FAILED = "CHILD_FAILED"
    #: the Firework vanished from the database while it ran (deleted by someone else).
    LOST = "LOST"


class StopReason(enum.Enum):
    """Why the worker stopped pulling work."""

    IDLE = "no matching work for the idle timeout"
    DEADLINE = "deadline reached (time left minus margin <= 0)"
    SIGNAL = "stop signal"


class WorkerError(RuntimeError):
    """A failure that ends the worker with a message a person can act on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``pilot worker`` was told on its command line."""

    launchpad_file: Path
    categories: tuple[str, ...]
    name: str
    deadline: float | None
    margin: float = 60.0
    idle_timeout: float = 60.0
    grace: float = 30.0
    term_grace: float = 1.0
    launch_dir: Path = field(default_factory=Path.cwd)
    log_file: Path | None = None
    db_retry_time: float = 300.0
    fw_log_level: str = "INFO"

    @property
    def stop_at(self) -> float | None:
        """Epoch seconds at which a still-running Firework is asked to stop (``deadline - margin/2``)."""
        return None if self.deadline is None else self.deadline - self.margin / 2.0


@dataclass
class LaunchRecord:
    """One pull attempt as the worker saw it."""

    outcome: Outcome
    fw_id: int | None = None
    launch_id: int | None = None
    name: str = ""
    duration: float = 0.0
    detail: str = ""


@dataclass
class Summary:
    """Counters for the summary line printed at exit."""

    started_mono: float = field(default_factory=time.monotonic)
    run: int = 0
    completed: int = 0
    fizzled: int = 0
    requeued: int = 0
    lost: int = 0
    busy: float = 0.0

    def add(self, rec: LaunchRecord) -> None:
        if rec.fw_id is None:
            return
        self.run += 1
        self.busy += rec.duration
        if rec.outcome is Outcome.COMPLETED:
            self.completed += 1
        elif rec.outcome is Outcome.FIZZLED:
            self.fizzled += 1
        elif rec.outcome is Outcome.REQUEUED:
            self.requeued += 1
        elif rec.outcome is Outcome.LOST:
            self.lost += 1

    def line(self, name: str, reason: str) -> str:
        elapsed = max(time.monotonic() - self.started_mono, 1e-9)
        util = 100.0 * self.busy / elapsed
        lost = f", {self.lost} lost" if self.lost else ""
        return (f"summary {name}: {self.run} Fireworks run ({self.completed} completed, {self.fizzled} fizzled, "
                f"{self.requeued} requeued{lost}); busy {self.busy:.1f} s of {elapsed:.1f} s elapsed "
                f"({util:.0f}% utilisation); stopped: {reason}")


def _secs(seconds: float) -> str:
    """Durations for the log: 41.2, 0.031."""
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.3f}"


# ============================================================================ the child side
class _Channel:
    """The child's end of the report pipe: one JSON object per line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **event: Any) -> None:
        data = (json.dumps(event, default=str) + "\n").encode()
        while data:
            n = os.write(self.fd, data)
            data = data[n:]


def _install_child_hooks(channel: _Channel) -> type:
    """Make FireWorks report, through ``channel``, what the child takes and which workflow locks it holds.

    Returns the LaunchPad subclass to use in the child. Only ever called in a forked child: the patched
    ``WFLock`` never reaches the worker process itself.
    """
    import fireworks.core.launchpad as lpmod
    from fireworks.utilities import fw_serializers

    base_lock = lpmod.WFLock

    class ReportingWFLock(base_lock):  # type: ignore[misc, valid-type]
        """FireWorks' workflow lock, reporting acquire / release so that the worker can free a lock that a
        killed child left behind."""

        def __enter__(self) -> Any:
            channel.send(ev="lock", fw_id=self.fw_id)
            try:
                result = super().__enter__()
            except lpmod.LockedWorkflowError:
                channel.send(ev="lockfail", fw_id=self.fw_id)
                raise
            channel.send(ev="locked", fw_id=self.fw_id)
            return result

        def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
            result = super().__exit__(exc_type, exc_val, exc_tb)
            channel.send(ev="unlock", fw_id=self.fw_id)
            return result

    lpmod.WFLock = ReportingWFLock

    class ReportingLaunchPad(lpmod.LaunchPad):  # type: ignore[misc, valid-type]
        """A LaunchPad that tells the worker which Firework and launch the Rocket took and how it ended."""

        def _get_a_fw_to_run(self, query: Any = None, fw_id: Any = None, checkout: bool = True) -> Any:
            m_fw = super()._get_a_fw_to_run(query=query, fw_id=fw_id, checkout=checkout)
            if m_fw is not None and checkout:
                channel.send(ev="reserved", fw_id=m_fw.fw_id)
            return m_fw

        def get_new_launch_id(self) -> Any:
            launch_id = super().get_new_launch_id()
            channel.send(ev="launch_id", launch_id=launch_id)
            return launch_id

        def checkout_fw(self, fworker: Any, launch_dir: Any, fw_id: Any = None, host: Any = None,
                        ip: Any = None, state: str = "RUNNING") -> Any:
            m_fw, launch_id = super().checkout_fw(fworker, launch_dir, fw_id=fw_id, host=host, ip=ip,
                                                  state=state)
            if m_fw is not None:
                # the task modules, and where FireWorks found task classes by name, so that the worker
                # imports them once and later children are forked with them loaded
                task_modules = sorted({type(t).__module__ for t in m_fw.tasks})
                channel.send(ev="start", fw_id=m_fw.fw_id, launch_id=launch_id, name=m_fw.name,
                             dir=str(launch_dir), task_modules=task_modules,
                             saved=dict(fw_serializers.SAVED_FW_MODULES))
            return m_fw, launch_id

        def complete_launch(self, launch_id: Any, action: Any = None, state: str = "COMPLETED") -> Any:
            result = super().complete_launch(launch_id, action=action, state=state)
            channel.send(ev="end", launch_id=launch_id, state=state)
            return result

    return ReportingLaunchPad


def _make_launcher_dir(base: Path) -> Path:
    """Create ``base/launcher_<timestamp>`` like ``rlaunch rapidfire`` does (unique, never reused)."""
    while True:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
        path = base / f"launcher_{stamp}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            time.sleep(1e-6)


def _read_go(fd: int) -> bytes:
    """Block until the worker sends the go line (the FWorker to pull with); b"" when it closed the pipe."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            return b""
        data += chunk
    return data


def _child_main(lp_dict: dict[str, Any], base_dir: Path, fw_log_level: str, write_fd: int, go_fd: int) -> int:
    """Body of a Firework child; the return value is the process exit code.

    The child is forked ahead of time (while the previous Firework still runs), connects to the database,
    and waits for the worker's go line with the FWorker to pull with; then it runs one Rocket.
    """
    from fireworks.core.fworker import FWorker
    from fireworks.core.launchpad import LaunchPad
    from fireworks.core.rocket_launcher import launch_rocket
    from pymongo.errors import PyMongoError

    channel = _Channel(write_fd)
    lp_class = _install_child_hooks(channel)
    # LaunchPad.from_dict hard-codes the class; build a plain one (its own MongoClient, created after the
    # fork) and give it the reporting behaviour.
    lp = LaunchPad.from_dict(lp_dict)
    lp.__class__ = lp_class
    try:
        lp.connection.admin.command("hello")  # open the connection now, not when the Firework is due
    except PyMongoError:
        pass  # the Rocket's own first operation reports a database problem
    go = _read_go(go_fd)
    os.close(go_fd)
    if not go:
        return CHILD_UNUSED
    fworker = FWorker.from_dict(json.loads(go))
    launch_dir = _make_launcher_dir(base_dir)
    os.chdir(launch_dir)
    try:
        ran = launch_rocket(lp, fworker, strm_lvl=fw_log_level)
    finally:
        os.chdir(base_dir)
        try:
            launch_dir.rmdir()  # only succeeds when empty (no Firework, or the Firework used _launch_dir)
        except OSError:
            pass
    return CHILD_RAN if ran else CHILD_NO_WORK


# ============================================================================ the worker side
@dataclass
class _ChildState:
    """What the worker learnt from one child through its pipe."""

    pid: int
    read_fd: int
    go_fd: int | None = None
    buffer: bytes = b""
    eof: bool = False
    reserved_fw: int | None = None
    launch_id: int | None = None
    fw_id: int | None = None
    name: str = ""
    launch_dir: str = ""
    end_state: str | None = None
    #: workflow locks by fw_id: "pending" (asked for), "held" (acquired)
    locks: dict[int, str] = field(default_factory=dict)
    lock_failed: bool = False
    saved_modules: dict[str, str] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    started_mono: float | None = None
    status: int | None = None
    stop_sent_at: float | None = None
    kill_at: float | None = None
    killed: bool = False
    stop_why: str = ""


class Worker:
    """The pilot worker: pull, run in a child, supervise, settle, repeat."""

    def __init__(self, config: WorkerConfig) -> None:
        self.cfg = config
        self.summary = Summary()
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.lp: Any = None
        self._lp_dict: dict[str, Any] = {}
        self._imported_for_children: set[str] = set()
        #: the worker's ends of all child pipes (closed in every new child)
        self._child_fds: set[int] = set()
        #: a child forked ahead of time, connected and waiting for its go line
        self._standby: _ChildState | None = None
        #: children whose Firework is final and which are still exiting
        self._exiting: list[_ChildState] = []
        #: Fireworks whose process died here without a stop request: not pulled again by this worker
        self._crashed: set[int] = set()

    # ------------------------------------------------------------------ setup
    def _load_launchpad(self) -> None:
        from fireworks.core.launchpad import LaunchPad
        from pymongo.errors import ConfigurationError

        path = self.cfg.launchpad_file
        try:
            self.lp = LaunchPad.from_file(str(path))
        except FileNotFoundError as exc:
            raise WorkerError(f"launchpad file {path}: not found ({exc}); pass --launchpad-file with the path "
                              "of a FireWorks my_launchpad.yaml", EXIT_USAGE) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigurationError) as exc:
            raise WorkerError(
                f"launchpad file {path}: cannot build a LaunchPad from it ({type(exc).__name__}: {exc}); it must "
                "be a FireWorks launchpad YAML/JSON with at least 'host' (or a mongodb:// URI with "
                "uri_mode: true) and 'name'", EXIT_USAGE) from exc
        self._lp_dict = self.lp.to_dict()

    def _setup_env(self) -> None:
        os.environ["PILOT_NAME"] = self.cfg.name
        if self.cfg.deadline is None:
            for var in ("PILOT_DEADLINE", "PILOT_STOP_AT"):
                os.environ.pop(var, None)
        else:
            os.environ["PILOT_DEADLINE"] = str(math.floor(self.cfg.deadline))
            os.environ["PILOT_STOP_AT"] = str(math.floor(self.cfg.stop_at or self.cfg.deadline))

    @staticmethod
    def _prewarm() -> None:
        """Load, once in the worker, what every Firework child needs, so that forked children start warm."""
        import fireworks.core.rocket  # noqa: F401
        import fireworks.core.rocket_launcher  # noqa: F401
        from fireworks.utilities.fw_utilities import get_my_host, get_my_ip

        get_my_host()
        get_my_ip()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------------ time
    def time_left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return math.inf if self.cfg.deadline is None else self.cfg.deadline - time.time()

    def available(self) -> float:
        """Seconds a new Firework may take: time left minus the margin."""
        return self.time_left() - self.cfg.margin

    def fworker(self, available: float) -> Any:
        """The FWorker for one pull: our name, categories, and the wall-time filter for ``available`` s."""
        from fireworks.core.fworker import FWorker

        query: dict[str, Any] = {}
        if math.isfinite(available):
            # {"field": None} matches a missing field and an explicit null ("fits anything").
            query = {"$or": [{"spec._pilot.walltime": None},
                             {"spec._pilot.walltime": {"$lte": available}}]}
        if self._crashed:
            # a Firework whose process died in this pilot is left to other pilots (no crash loop here)
            query["fw_id"] = {"$nin": sorted(self._crashed)}
        cats = list(self.cfg.categories)
        return FWorker(name=self.cfg.name, category=cats[0] if len(cats) == 1 else cats, query=query)

    # ------------------------------------------------------------------ database with retries
    def db(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` against the database, retrying connection errors with backoff for ``db_retry_time``."""
        from pymongo.errors import ConnectionFailure, OperationFailure

        first: float | None = None
        delay = 1.0
        while True:
            try:
                return fn(*args, **kwargs)
            except ConnectionFailure as exc:
                now = time.monotonic()
                first = now if first is None else first
                if now - first >= self.cfg.db_retry_time:
                    raise WorkerError(
                        f"database unreachable while {what}: {type(exc).__name__}: {str(exc)[:300]}; retried for "
                        f"{now - first:.0f} s (--db-retry-time {self.cfg.db_retry_time:g}). Check that the "
                        f"LaunchPad server in {self.cfg.launchpad_file} is running and reachable from "
                        f"{socket.gethostname()}", EXIT_DB_UNREACHABLE) from exc
                LOG.warning("database unreachable while %s (%s); retrying in %.0f s", what,
                            type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2.0, 30.0)
            except OperationFailure as exc:
                raise WorkerError(f"database refused the operation while {what}: {exc}; check the credentials "
                                  f"and database name in {self.cfg.launchpad_file}", EXIT_DB_UNREACHABLE) from exc

    # ------------------------------------------------------------------ waiting
    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on a signal."""
        if seconds > 0 and not self._signals:
            select.select([self._wake_r], [], [], seconds)
        self._drain_wakeups()

    def _stop_requested(self) -> bool:
        return bool(self._signals)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Pull and run Fireworks until idle, deadline or signal; return the exit code."""
        self._install_signals()
        reason = StopReason.SIGNAL
        try:
            self._load_launchpad()
            self._setup_env()
            self.cfg.launch_dir.mkdir(parents=True, exist_ok=True)
            self._prewarm()
            self._log_start()
            reason = self._loop()
        except WorkerError as exc:
            LOG.error("%s", exc)
            LOG.info("%s", self.summary.line(self.cfg.name, f"error (exit {exc.exit_code})"))
            return exc.exit_code
        finally:
            self._discard_standby()
            self._reap_exiting(block=True)
        if reason is StopReason.SIGNAL:
            names = ", ".join(sorted({signal.Signals(s).name for s in self._signals}))
            text = f"{reason.value} ({names})"
        else:
            text = reason.value
        LOG.info("%s", self.summary.line(self.cfg.name, text))
        return EXIT_OK

    def _log_start(self) -> None:
        cfg = self.cfg
        if cfg.deadline is None:
            dl = "no deadline"
        else:
            when = datetime.datetime.fromtimestamp(cfg.deadline).strftime("%Y-%m-%d %H:%M:%S")
            dl = f"deadline {when} (in {self.time_left():.0f} s), margin {cfg.margin:g} s"
            if cfg.grace > cfg.margin / 2.0:
                LOG.warning("--grace %g s is longer than half the margin (%g s): a task stopped at the deadline "
                            "trigger (deadline - margin/2) is SIGKILLed at the deadline - 1 s at the latest",
                            cfg.grace, cfg.margin / 2.0)
        LOG.info("pilot worker %s (pid %d on %s): categories %s, %s, idle timeout %g s, grace %g s, "
                 "launch dirs under %s", cfg.name, os.getpid(), socket.gethostname(), ",".join(cfg.categories),
                 dl, cfg.idle_timeout, cfg.grace, cfg.launch_dir)

    def _loop(self) -> StopReason:
        last_work = time.monotonic()
        backoff = 1.0
        work_hint = False
        failing_since: float | None = None
        while True:
            if self._exiting:
                self._reap_exiting()
            if self._stop_requested():
                return StopReason.SIGNAL
            avail = self.available()
            if avail <= 0:
                return StopReason.DEADLINE
            fworker = self.fworker(avail)
            if not work_hint:
                if not self.db("checking for READY work", self.lp.run_exists, fworker):
                    idle_left = self.cfg.idle_timeout - (time.monotonic() - last_work)
                    if idle_left <= 0:
                        return StopReason.IDLE
                    self._sleep(min(backoff, idle_left, avail))
                    backoff = min(backoff * 1.5, 10.0)
                    continue
            rec = self._run_one(fworker)
            if rec.fw_id is not None:
                self.summary.add(rec)
                work_hint = True
                failing_since = None
                backoff = 1.0
                last_work = time.monotonic()
            elif rec.outcome is Outcome.CHILD_FAILED:
                work_hint = False
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.cfg.db_retry_time:
                    raise WorkerError(f"Firework children keep failing before taking a Firework for "
                                      f"{now - failing_since:.0f} s; last: {rec.detail}", EXIT_DB_UNREACHABLE)
                self._sleep(backoff)
                backoff = min(backoff * 2.0, 10.0)
            else:  # NO_WORK: another pilot was faster, or the work no longer fits
                work_hint = False

    # ------------------------------------------------------------------ one Firework
    def _flush_before_fork(self) -> None:
        for handler in logging.getLogger().handlers + LOG.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()

    def _fork_child(self) -> _ChildState:
        """Fork a Firework child: its own session, its own database connection, waiting for a go line."""
        read_fd, write_fd = os.pipe()
        go_r, go_w = os.pipe()
        self._flush_before_fork()
        pid = os.fork()
        if pid == 0:  # ---------------- child
            code = CHILD_ERROR
            try:
                os.setsid()
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in (read_fd, go_w, self._wake_r, self._wake_w, *self._child_fds):
                    os.close(fd)
                code = _child_main(self._lp_dict, self.cfg.launch_dir, self.cfg.fw_log_level, write_fd, go_r)
            except BaseException:  # noqa: BLE001 - the child must always reach os._exit
                traceback.print_exc()
                code = CHILD_ERROR
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        # -------------------------------- worker
        os.close(write_fd)
        os.close(go_r)
        os.set_blocking(read_fd, False)
        self._child_fds.update((read_fd, go_w))
        return _ChildState(pid=pid, read_fd=read_fd, go_fd=go_w)

    def _close_child_fds(self, child: _ChildState) -> None:
        for fd in (child.read_fd, child.go_fd):
            if fd is not None and fd in self._child_fds:
                os.close(fd)
                self._child_fds.discard(fd)
        child.go_fd = None

    def _discard_standby(self) -> None:
        """Stop the pre-forked child: it never got a go line, so it holds no Firework."""
        child, self._standby = self._standby, None
        if child is None:
            return
        self._killpg(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
        self._killpg(child.pid, signal.SIGKILL, reaped=True)
        self._close_child_fds(child)

    def _send_go(self, child: _ChildState, fworker: Any) -> bool:
        """Give ``child`` its FWorker; False when the child is already gone."""
        assert child.go_fd is not None
        try:
            os.write(child.go_fd, (json.dumps(fworker.to_dict()) + "\n").encode())
            return True
        except BrokenPipeError:
            return False
        finally:
            self._child_fds.discard(child.go_fd)
            os.close(child.go_fd)
            child.go_fd = None

    def _run_one(self, fworker: Any) -> LaunchRecord:
        """Run (at most) one Firework in a child process and settle its outcome."""
        child, self._standby = self._standby, None
        if child is not None and not self._send_go(child, fworker):
            # the pre-forked child died while waiting (e.g. signalled by the batch system): use a fresh one
            LOG.warning("pre-forked Firework child %d died while waiting; forking another", child.pid)
            os.waitpid(child.pid, 0)
            self._close_child_fds(child)
            child = None
        if child is None:
            child = self._fork_child()
            self._send_go(child, fworker)  # if it died already, supervising it tells why
        self._supervise(child)
        if child.status is None:  # the Firework is final, the process is still exiting
            self._exiting.append(child)
        else:
            self._close_child_fds(child)
            # A Firework's processes do not outlive it: clear what is left of its process group.
            self._killpg(child.pid, signal.SIGKILL, reaped=True)
        self._reap_exiting()
        return self._settle(child)

    def _killpg(self, pid: int, sig: int, reaped: bool = False) -> None:
        """Signal the process group of child ``pid`` (the child is its leader after ``setsid()``)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            # No such group: either the child has not reached setsid() yet (signal the child itself), or it
            # is reaped and nothing of its group is left (a PID is not reused while its group exists).
            if not reaped:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        except PermissionError as exc:
            LOG.warning("cannot send %s to process group %d: %s", signal.Signals(sig).name, pid, exc)

    def _read_events(self, child: _ChildState) -> None:
        try:
            data = os.read(child.read_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            child.eof = True
            return
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._on_event(child, line)

    def _on_event(self, child: _ChildState, line: bytes) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            LOG.warning("fw child %d: unreadable report %r", child.pid, line[:200])
            return
        kind = ev.get("ev")
        if kind == "reserved":
            child.reserved_fw = int(ev["fw_id"])
        elif kind == "launch_id":
            child.launch_id = int(ev["launch_id"])
        elif kind == "start":
            child.fw_id = int(ev["fw_id"])
            child.launch_id = int(ev["launch_id"])
            child.name = str(ev.get("name", ""))
            child.launch_dir = str(ev.get("dir", ""))
            child.modules = [str(m) for m in ev.get("task_modules", [])]
            child.saved_modules = {str(k): str(v) for k, v in ev.get("saved", {}).items()}
            if child.stop_sent_at is None and not self._signals:
                self._learn_modules(child)
                if self._standby is None:
                    # overlap the next child's fork and connection with this Firework
                    self._standby = self._fork_child()
            child.started_mono = time.monotonic()
            LOG.info("fw %d '%s' started (launch %d, pid %d, dir %s)", child.fw_id, child.name, child.launch_id,
                     child.pid, child.launch_dir)
        elif kind == "end":
            child.end_state = str(ev["state"])
        elif kind == "lock":
            child.locks[int(ev["fw_id"])] = "pending"
        elif kind == "locked":
            child.locks[int(ev["fw_id"])] = "held"
        elif kind == "lockfail":
            child.lock_failed = True
        elif kind == "unlock":
            child.locks.pop(int(ev["fw_id"]), None)

    def _next_stop_trigger(self) -> float | None:
        """Seconds until the deadline trigger (``deadline - margin/2``), or None without a deadline."""
        stop_at = self.cfg.stop_at
        return None if stop_at is None else stop_at - time.time()

    def _begin_stop(self, child: _ChildState, grace: float, why: str) -> None:
        now = time.monotonic()
        if self.cfg.deadline is not None:
            # never wait past the deadline itself: the batch system kills everything there
            grace = min(grace, max(self.cfg.deadline - 1.0 - time.time(), 0.0))
        kill_at = now + grace
        if child.stop_sent_at is None:
            child.stop_sent_at = now
            child.stop_why = why
            what = f"fw {child.fw_id}" if child.fw_id is not None else f"child {child.pid}"
            LOG.info("%s: %s -> SIGTERM to process group %d, grace %.1f s", what, why, child.pid, grace)
            self._killpg(child.pid, signal.SIGTERM)
            child.kill_at = kill_at
        elif child.kill_at is None or kill_at < child.kill_at:
            child.kill_at = kill_at
            LOG.info("%s: grace shortened to %.1f s", why, grace)

    def _supervise(self, child: _ChildState) -> None:
        """Wait for the child while reading its reports and reacting to signals and the deadline."""
        handled = 0
        while True:
            if child.status is None:
                done, status = os.waitpid(child.pid, os.WNOHANG)
                if done:
                    child.status = status
            if child.status is not None and child.eof:
                break
            if child.status is not None:
                # The child is gone; a grandchild may still hold the pipe: take what is there and stop.
                ready, _, _ = select.select([child.read_fd], [], [], 0)
                if not ready:
                    break
                self._read_events(child)
                continue
            if self._firework_final(child):
                # FireWorks has completed the launch and refreshed the workflow; the child only has to exit,
                # which the worker reaps in the background while the next Firework starts.
                return
            # stop requests
            while handled < len(self._signals):
                sig = self._signals[handled]
                handled += 1
                if sig == signal.SIGUSR1:
                    self._begin_stop(child, self.cfg.grace, "SIGUSR1 (pre-walltime signal)")
                else:
                    name = signal.Signals(sig).name
                    if child.stop_sent_at is not None and child.stop_why.startswith(name):
                        self._begin_stop(child, 0.0, f"second {name}")
                    else:
                        self._begin_stop(child, min(self.cfg.grace, self.cfg.term_grace), name)
            trigger = self._next_stop_trigger()
            if trigger is not None and trigger <= 0 and child.stop_sent_at is None:
                self._begin_stop(child, self.cfg.grace, "deadline - margin/2 reached")
            now = time.monotonic()
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                LOG.warning("fw %s: still running after the grace period -> SIGKILL to process group %d",
                            child.fw_id, child.pid)
                self._killpg(child.pid, signal.SIGKILL)
                child.killed = True
            timeouts = [t for t in (trigger if child.stop_sent_at is None else None,
                                    None if child.kill_at is None or child.killed else child.kill_at - now)
                        if t is not None]
            timeout = max(min(timeouts), 0.0) if timeouts else None
            fds = [self._wake_r] + ([] if child.eof else [child.read_fd])
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in ready:
                self._drain_wakeups()
            if child.read_fd in ready:
                self._read_events(child)

    @staticmethod
    def _firework_final(child: _ChildState) -> bool:
        """True when the child reported a completed launch and holds no workflow lock."""
        return (child.fw_id is not None and child.end_state in FINAL_LAUNCH_STATES and not child.locks
                and not child.lock_failed)

    def _reap_exiting(self, block: bool = False, timeout: float = 5.0) -> None:
        """Reap children whose Firework is final but which were still exiting; clear their process groups."""
        limit = time.monotonic() + timeout
        for child in list(self._exiting):
            while True:
                done, status = os.waitpid(child.pid, os.WNOHANG)
                if done or not block:
                    break
                if time.monotonic() >= limit:
                    LOG.warning("fw child %d (fw %s, already %s) does not exit: SIGKILL", child.pid, child.fw_id,
                                child.end_state)
                    self._killpg(child.pid, signal.SIGKILL)
                    done, status = os.waitpid(child.pid, 0)
                    break
                time.sleep(0.01)
            if done:
                child.status = status
                self._exiting.remove(child)
                self._killpg(child.pid, signal.SIGKILL, reaped=True)
                self._close_child_fds(child)

    def _learn_modules(self, child: _ChildState) -> None:
        """Import in the worker the task modules a child needed, so later children start with them."""
        from fireworks.utilities import fw_serializers

        for fw_name, module in child.saved_modules.items():
            fw_serializers.SAVED_FW_MODULES.setdefault(fw_name, module)
        for module in child.modules + sorted(set(child.saved_modules.values())):
            if module in sys.modules or module in self._imported_for_children:
                continue
            self._imported_for_children.add(module)
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - a task module that fails here fails in the child too
                LOG.warning("could not pre-import task module %s in the worker (%s: %s); each Firework child "
                            "will import it itself", module, type(exc).__name__, exc)

    # ------------------------------------------------------------------ settle
    def _describe_status(self, child: _ChildState) -> str:
        status = child.status
        if status is None:
            return "unknown status"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                return f"killed by {signal.Signals(sig).name}"
            except ValueError:
                return f"killed by signal {sig}"
        return f"exit code {os.WEXITSTATUS(status)}"

    def _settle(self, child: _ChildState) -> LaunchRecord:
        """Make sure the child's Firework is not left RUNNING and say what became of it."""
        exit_ok = child.status is not None and os.WIFEXITED(child.status)
        code = os.WEXITSTATUS(child.status) if exit_ok and child.status is not None else None
        status_text = self._describe_status(child)
        fw_id = child.fw_id if child.fw_id is not None else child.reserved_fw

        if fw_id is None:
            if code == CHILD_NO_WORK:
                return LaunchRecord(Outcome.NO_WORK)
            detail = f"Firework child {child.pid} failed before taking a Firework ({status_text})"
            LOG.warning("%s; see its traceback above", detail)
            return LaunchRecord(Outcome.CHILD_FAILED, detail=detail)

        duration = time.monotonic() - child.started_mono if child.started_mono is not None else 0.0
        if self._firework_final(child):
            # FireWorks completed the launch and refreshed the workflow: nothing to check or repair.
            outcome = Outcome(child.end_state)
            LOG.info("fw %d %s in %s s", fw_id, outcome.value, _secs(duration))
            return LaunchRecord(outcome, fw_id, child.launch_id, child.name, duration)

        self._release_locks(child)
        fw_doc = self.db(f"reading fw {fw_id}", self.lp.fireworks.find_one, {"fw_id": fw_id},
                         {"state": 1, "launches": 1, "name": 1})
        if fw_doc is None:
            LOG.error("fw %d: vanished from the database while it ran (%s)", fw_id, status_text)
            return LaunchRecord(Outcome.LOST, fw_id, child.launch_id, child.name, duration)
        name = child.name or str(fw_doc.get("name", ""))

        launch_state = None
        if child.launch_id is not None:
            launch_doc = self.db(f"reading launch {child.launch_id}", self.lp.launches.find_one,
                                 {"launch_id": child.launch_id}, {"state": 1})
            launch_state = launch_doc.get("state") if launch_doc else None

        if launch_state in FINAL_LAUNCH_STATES:
            # The task's own result stands; only the workflow refresh may be missing (child killed mid-write).
            if fw_doc.get("state") in ACTIVE_STATES:
                self.db(f"refreshing the workflow of fw {fw_id}", self.lp._refresh_wf, fw_id)
            outcome = Outcome(launch_state)
            LOG.info("fw %d %s in %s s (child %s)", fw_id, outcome.value, _secs(duration), status_text)
            return LaunchRecord(outcome, fw_id, child.launch_id, name, duration)

        # The launch is still RUNNING (or was never fully created): back to READY, keeping the history.
        why = child.stop_why or "the Firework process died"
        if fw_doc.get("state") in ACTIVE_STATES:
            if child.launch_id is not None and child.launch_id in (fw_doc.get("launches") or []):
                self.db(f"requeueing fw {fw_id}", self.lp.rerun_fw, fw_id)
            else:  # reserved, but the launch never reached the Firework document
                self.db(f"refreshing the workflow of fw {fw_id}", self.lp._refresh_wf, fw_id)
        if child.launch_id is not None and launch_state in ACTIVE_STATES:
            self.db(f"archiving launch {child.launch_id}", self._fizzle_launch, child.launch_id,
                    f"pilot {self.cfg.name}: {why}; Firework process {status_text}; Firework requeued to READY")
        note = ""
        if child.stop_sent_at is None:
            self._crashed.add(fw_id)
            note = "; this worker will not pull it again"
        else:
            note = f"; {time.monotonic() - child.stop_sent_at:.2f} s after the stop request"
        new_state = self.db(f"reading fw {fw_id}", self.lp.fireworks.find_one, {"fw_id": fw_id}, {"state": 1})
        LOG.warning("fw %d requeued (now %s) after %s s: %s, Firework process %s%s", fw_id,
                    (new_state or {}).get("state"), _secs(duration), why, status_text, note)
        return LaunchRecord(Outcome.REQUEUED, fw_id, child.launch_id, name, duration, detail=why)

    def _release_locks(self, child: _ChildState) -> None:
        for fw_id, state in sorted(child.locks.items()):
            if state == "held":
                LOG.warning("fw child %d died holding the workflow lock of fw %d: releasing it", child.pid, fw_id)
                self.db(f"releasing the workflow lock of fw {fw_id}", self.lp.workflows.find_one_and_update,
                        {"nodes": fw_id}, {"$unset": {"locked": True}})
            else:
                LOG.warning("fw child %d died while acquiring the workflow lock of fw %d; it is not released "
                            "(it may belong to another process). If the workflow stays locked: "
                            "lpad admin unlock -i %d", child.pid, fw_id, fw_id)

    def _fizzle_launch(self, launch_id: int, message: str) -> None:
        """Mark a launch FIZZLED with ``message`` (history kept), without touching its Firework."""
        from fireworks.core.firework import FWAction

        launch = self.lp.get_launch_by_id(launch_id)
        if launch.state not in ACTIVE_STATES:
            return
        prev = launch.state
        launch.state = "FIZZLED"
        launch.action = FWAction(stored_data={"_message": message, "_pilot": {"name": self.cfg.name,
                                                                               "requeued": True}})
        self.lp.launches.find_one_and_replace({"launch_id": launch_id, "state": prev}, launch.to_db_dict())


# ============================================================================ command line
def _setup_worker_logging(log_file: Path | None) -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        # FireWorks' loggers carry their own stream handler and level DEBUG, and also propagate to the root:
        # keep the root handlers at the root's level (-v) so that their records are not printed twice.
        handler.setLevel(max(handler.level, root.getEffectiveLevel()))
    fmt = logging.Formatter("%(asctime)s pilot-worker %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        LOG.addHandler(fh)


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise click.UsageError(f"environment variable {name}={raw!r} is not a number of epoch seconds") from None


@click.command("worker")
@click.option("--launchpad-file", "-l", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="FireWorks LaunchPad file (my_launchpad.yaml) of the database to pull from.")
@click.option("--category", "-c", "categories", multiple=True, required=True,
              help="Firework category (spec._category) to pull; repeat for several.")
@click.option("--name", "-n", default=lambda: os.environ.get("PILOT_NAME"),
              help="FWorker name recorded in every launch (cluster name + job id, e.g. pilotci-1234). "
                   "Environment: PILOT_NAME.")
@click.option("--deadline", type=float, default=None,
              help="End of the job's wall time, epoch seconds. Default: environment PILOT_DEADLINE.")
@click.option("--no-deadline", is_flag=True, help="Run without a deadline (until idle or a signal).")
@click.option("--margin", type=float, default=60.0, show_default=True,
              help="Seconds kept free before the deadline: a Firework is pulled only if spec._pilot.walltime "
                   "<= time left - margin; pulling stops when time left <= margin; a running Firework is "
                   "stopped at deadline - margin/2.")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True,
              help="Exit after this many seconds without matching READY work.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds a Firework gets after SIGTERM (on SIGUSR1 or the deadline) before SIGKILL.")
@click.option("--term-grace", type=float, default=1.0, show_default=True,
              help="Grace when the worker itself gets SIGTERM/SIGINT (the batch system SIGKILLs soon after: "
                   "SLURM KillWait).")
@click.option("--launch-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory in which each Firework gets its own launcher_<timestamp> dir. Default: cwd.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the worker's log lines to this file.")
@click.option("--db-retry-time", type=float, default=300.0, show_default=True,
              help="Keep retrying an unreachable database this many seconds before giving up (exit 3).")
@click.option("--fw-log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
              default="INFO", show_default=True, help="Stream log level of FireWorks' own rocket logger.")
def worker_command(launchpad_file: Path, categories: tuple[str, ...], name: str | None, deadline: float | None,
                   no_deadline: bool, margin: float, idle_timeout: float, grace: float, term_grace: float,
                   launch_dir: Path | None, log_file: Path | None, db_retry_time: float,
                   fw_log_level: str) -> None:
    """Run inside a batch job: pull Fireworks of CATEGORY that fit the time left, until idle or the deadline.

    Exit codes: 0 drained normally (idle, deadline, stop signal handled), 2 usage or launchpad-file error,
    3 database unreachable after retries, 1 internal error.
    """
    if not name:
        raise click.UsageError("no worker name: pass --name NAME (cluster name + job id, e.g. pilotci-1234) "
                               "or set PILOT_NAME")
    if no_deadline:
        if deadline is not None:
            raise click.UsageError("--deadline and --no-deadline exclude each other")
    else:
        deadline = deadline if deadline is not None else _env_float("PILOT_DEADLINE")
        if deadline is None:
            raise click.UsageError("no deadline: pass --deadline EPOCH_SECONDS (the job's end time) or set "
                                   "PILOT_DEADLINE, or pass --no-deadline to run until idle")
    for opt, value in (("--margin", margin), ("--idle-timeout", idle_timeout), ("--grace", grace),
                       ("--term-grace", term_grace), ("--db-retry-time", db_retry_time)):
        if value < 0 or not math.isfinite(value):
            raise click.UsageError(f"{opt} must be a finite number >= 0, got {value:g}")
    _setup_worker_logging(log_file)
    cfg = WorkerConfig(launchpad_file=launchpad_file, categories=tuple(categories), name=name,
                       deadline=deadline, margin=margin, idle_timeout=idle_timeout, grace=grace,
                       term_grace=term_grace,
                       launch_dir=(launch_dir or Path.cwd()).absolute(), log_file=log_file,
                       db_retry_time=db_retry_time, fw_log_level=fw_log_level)
    try:
        code = Worker(cfg).run()
    except Exception:
        LOG.error("internal error in pilot worker %s:\n%s", name, traceback.format_exc())
        code = EXIT_INTERNAL
    sys.exit(code)
