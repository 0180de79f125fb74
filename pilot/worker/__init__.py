"""``pilot worker``: the process inside a batch job that pulls FireWorks work until its wall time.

The worker is a small supervisor around FireWorks' own :func:`fireworks.core.rocket_launcher.launch_rocket`:

* it pulls Fireworks of its categories one after another, but only those whose expected duration
  (``spec._pilot.walltime``, seconds; absent means "fits anything") fits the time left before the job's
  deadline minus a safety margin;
* every Firework runs in a forked child process that is the leader of its own session / process group, in its
  own ``launcher_*`` directory, where FireWorks' ``launch_rocket`` runs it; the Rocket's own LaunchPad calls
  (checkout, ping, complete) are executed by the worker on its warm connection (a killed child can never
  leave them half written), anything else a task does with the LaunchPad uses the child's own connection;
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
import logging
import math
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


class StopRequested(Exception):
    """A stop signal arrived while the worker was waiting for the database to look for work."""


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
#: LaunchPad methods that FireWorks' Rocket calls on its LaunchPad during a launch. In a Firework child they
#: run in the worker process (over the child's pipe), on the worker's warm connection: a child killed at any
#: moment can never leave one of these database writes half done, and a child needs no connection of its own.
ROCKET_CALLS = frozenset({"checkout_fw", "ping_launch", "complete_launch", "change_launch_dir",
                          "restore_backup_data"})

_FRAME = struct.Struct(">I")


def _write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(_FRAME.pack(len(payload)) + payload)
    while data:
        n = os.write(fd, data)
        data = data[n:]


class WorkerGone(RuntimeError):
    """The worker process closed its end of a Firework child's pipe (it exited or was killed)."""


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise WorkerGone("the pilot worker closed the connection to this Firework process")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes:
    (size,) = _FRAME.unpack(_read_exact(fd, _FRAME.size))
    return _read_exact(fd, size)


class _WorkerLink:
    """The child's side of the pipes to the worker: a blocking call/reply channel (thread-safe: FireWorks'
    ping thread calls the LaunchPad too)."""

    def __init__(self, call_fd: int, reply_fd: int) -> None:
        self.call_fd = call_fd
        self.reply_fd = reply_fd
        self.lock = threading.Lock()
        self.served = False

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """A call without reply (the worker runs it before any later call of this child)."""
        with self.lock:
            _write_frame(self.call_fd, pickle.dumps((method, args, kwargs, False),
                                                    protocol=pickle.HIGHEST_PROTOCOL))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from fireworks.utilities import fw_serializers

        with self.lock:
            _write_frame(self.call_fd, pickle.dumps((method, args, kwargs, True),
                                                    protocol=pickle.HIGHEST_PROTOCOL))
            kind, fw_modules, payload = pickle.loads(_read_frame(self.reply_fd))
            self.served = True
        if fw_modules:
            # where the worker found the task classes by name: spares this process FireWorks' package walk
            fw_serializers.SAVED_FW_MODULES.update(fw_modules)
        result = pickle.loads(payload)
        if kind == "ok":
            return result
        raise result


def _child_launchpad(link: _WorkerLink, lp_dict: dict[str, Any]) -> Any:
    """The LaunchPad given to the Rocket in a Firework child.

    The Rocket's own calls (:data:`ROCKET_CALLS`) go to the worker; anything else (a task that receives the
    LaunchPad through ``_add_launchpad_and_fw_id`` and uses it) runs here, on a MongoClient of the child's own,
    created on first use after the fork.
    """
    from fireworks.core.launchpad import LaunchPad

    class ChildLaunchPad(LaunchPad):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no connection: see __getattr__
            self._pilot_local: Any = None
            self.host = lp_dict.get("host")
            self.name = lp_dict.get("name")
            self.logdir = lp_dict.get("logdir")
            self.strm_lvl = lp_dict.get("strm_lvl")

        def __getattr__(self, attr: str) -> Any:
            if attr.startswith("__") or attr == "_pilot_local":
                raise AttributeError(attr)
            if self._pilot_local is None:
                self._pilot_local = LaunchPad.from_dict(lp_dict)
            return getattr(self._pilot_local, attr)

        def to_dict(self) -> dict[str, Any]:
            return dict(lp_dict)

        def get_logdir(self) -> Any:
            return self.logdir

        def checkout_fw(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("checkout_fw", *args, **kwargs)

        def ping_launch(self, *args: Any, **kwargs: Any) -> Any:
            # A ping (heartbeat, or the checkpoint before each task) returns nothing: the Rocket goes on while
            # the worker writes it; the worker runs it before the child's next call, so the order holds.
            try:
                link.send("ping_launch", *args, **kwargs)
            except BrokenPipeError:
                # FireWorks' ping thread pings once more after the launch is complete; the worker has moved on
                # by then, and a ping only ever updates a RUNNING launch: nothing is lost
                pass

        def complete_launch(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("complete_launch", *args, **kwargs)

        def change_launch_dir(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("change_launch_dir", *args, **kwargs)

        def restore_backup_data(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("restore_backup_data", *args, **kwargs)

    return ChildLaunchPad()


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


def _child_main(lp_dict: dict[str, Any], fworker_dict: dict[str, Any], base_dir: Path, fw_log_level: str,
                call_fd: int, reply_fd: int) -> int:
    """Body of a Firework child; the return value is the process exit code.

    The child is forked ahead of time, while the previous Firework still runs; it prepares its launcher dir and
    calls FireWorks' ``launch_rocket`` at once. The Rocket's first call, ``checkout_fw``, waits in the pipe until
    the worker serves it: right when the previous Firework is done, with the FWorker query of that moment.
    """
    from fireworks.core.fworker import FWorker
    from fireworks.core.rocket_launcher import launch_rocket

    link = _WorkerLink(call_fd, reply_fd)
    fworker = FWorker.from_dict(fworker_dict)  # name, categories, env; the worker puts in the query
    lp = _child_launchpad(link, lp_dict)
    launch_dir = _make_launcher_dir(base_dir)
    os.chdir(launch_dir)
    try:
        ran = launch_rocket(lp, fworker, strm_lvl=fw_log_level)
    except WorkerGone:
        if link.served:
            raise
        return CHILD_UNUSED  # the worker stopped before this child's turn
    finally:
        os.chdir(base_dir)
        try:
            launch_dir.rmdir()  # only succeeds when empty (no Firework, or the Firework used _launch_dir)
        except OSError:
            pass
    return CHILD_RAN if ran else CHILD_NO_WORK


# ============================================================================ the fork server
class ForkServerGone(RuntimeError):
    """The fork server process of the worker died."""


def _preload(fw_modules: dict[str, str], task_modules: list[str], imported: set[str]) -> None:
    """Import, once in the fork server, the task modules the worker has met, and record where FireWorks finds
    task classes by name, so that every Firework child starts with them loaded."""
    from fireworks.utilities import fw_serializers

    fw_serializers.SAVED_FW_MODULES.update(fw_modules)
    for module in sorted(set(task_modules) | set(fw_modules.values())):
        if module in imported or module in sys.modules:
            continue
        imported.add(module)
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - the child will meet (and report) the same error itself
            print(f"pilot worker fork server: could not preload task module {module} ({type(exc).__name__}: "
                  f"{exc}); each Firework child imports it itself", file=sys.stderr, flush=True)


def _warm_up_fireworks() -> None:
    """Run once, in the fork server, what every Firework child would otherwise do for the first time: the
    (de)serialisation of a Firework, a Launch and an FWAction (FireWorks parses dates with strptime, whose
    regular expressions are compiled on first use)."""
    from fireworks.core.firework import Firework, FWAction, Launch
    from fireworks.user_objects.firetasks.script_task import PyTask

    fw = Firework([PyTask(func="math.floor", args=[1.5])], spec={"_category": "warm-up"}, name="warm-up")
    fw.launches = [Launch("RUNNING", "/", launch_id=1, fw_id=fw.fw_id)]
    fw.launches[0].state = "COMPLETED"
    fw.launches[0].action = FWAction(stored_data={"warm": True})
    pickle.loads(pickle.dumps(fw))
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):  # the formats of fw_serializers.reconstitute_dates
        datetime.datetime.strptime(datetime.datetime(2020, 1, 1, 0, 0, 0, 1).strftime(fmt), fmt)


def _fork_server_main(sock: socket.socket) -> int:
    """Loop of the fork server: fork a Firework child per request, reap children, report their exit status.

    The worker forks this process once, right after its imports; Firework children are forked from here, not
    from the worker. A fork marks every page of the forking process copy-on-write, so a worker forking each
    child itself would pay a page fault for every page it touches afterwards, on its critical path, once per
    Firework; this process barely touches its memory between forks.
    """
    imported: set[str] = set()
    _warm_up_fireworks()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    live: set[int] = set()  # Firework children not reaped yet (each leads its own process group)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        # the batch system signals every process of the job: the worker decides, this process must not die
        signal.signal(sig, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while True:  # reap
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            live.discard(pid)
            try:  # a Firework's processes do not outlive it (the group id cannot be reused while it exists)
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            sock.send(pickle.dumps(("exit", pid, status)))
        if sock.fileno() in ready:
            msg = sock.recv(1 << 16)
            if not msg:
                # the worker is gone (killed, OOM): no Firework of it may run on unsupervised, or the manager's
                # rerun would run it twice at once
                for pid in live:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                return 0
            lp_dict, fworker_dict, base_dir, fw_log_level, fw_modules, task_modules = pickle.loads(msg)
            _preload(fw_modules, task_modules, imported)
            call_r, call_w = os.pipe()
            reply_r, reply_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # ---------------- Firework child
                code = CHILD_ERROR
                try:
                    os.setsid()
                    signal.set_wakeup_fd(-1)
                    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
                        signal.signal(sig, signal.SIG_DFL)
                    for fd in (call_r, reply_w, wake_r, wake_w):
                        os.close(fd)
                    sock.close()
                    code = _child_main(lp_dict, fworker_dict, base_dir, fw_log_level, call_w, reply_r)
                except BaseException:  # noqa: BLE001 - the child must always reach os._exit
                    traceback.print_exc()
                    code = CHILD_ERROR
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code)
            live.add(pid)
            socket.send_fds(sock, [pickle.dumps(("forked", pid))], [call_r, reply_w])
            for fd in (call_r, call_w, reply_r, reply_w):
                os.close(fd)


class _ForkServer:
    """The worker's handle on its fork server process (see :func:`_fork_server_main`)."""

    def __init__(self, close_in_server: list[int]) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.sock.close()
                signal.set_wakeup_fd(-1)
                for fd in close_in_server:
                    os.close(fd)
                code = _fork_server_main(theirs)
            except BaseException:  # noqa: BLE001 - must always reach os._exit
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.statuses: dict[int, int] = {}
        self.requested = 0
        self.forked: list[tuple[int, int, int]] = []
        self.gone = False

    def request(self, request: tuple[Any, ...]) -> None:
        """Ask for a Firework child; collect it with :meth:`take`.

        ``request``: (LaunchPad dict, FWorker dict, launch base dir, FireWorks log level, FireWorks'
        SAVED_FW_MODULES, task modules to import first).
        """
        if self.gone:
            raise ForkServerGone(f"the fork server (pid {self.pid}) is gone")
        self.sock.send(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        self.requested += 1

    def take(self) -> tuple[int, int, int]:
        """The next forked child: (pid, fd to read its calls, fd to write go / replies); waits for it."""
        while not self.forked:
            if self.gone or not self.requested:
                raise ForkServerGone(f"the fork server (pid {self.pid}) is gone")
            self.poll(None)
        return self.forked.pop(0)

    def poll(self, timeout: float | None = 0.0) -> None:
        """Take the reports that arrived (forked children, exit statuses), waiting up to ``timeout`` s (None:
        without limit) for the first."""
        while not self.gone:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return
            timeout = 0.0
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 2)
            if not msg:
                self.gone = True
                return
            kind, pid, *rest = pickle.loads(msg)
            if kind == "exit":
                self.statuses[pid] = rest[0]
            else:
                self.requested -= 1
                self.forked.append((pid, fds[0], fds[1]))

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


# ============================================================================ the worker side
@dataclass
class _ChildState:
    """One Firework child as the worker sees it."""

    pid: int
    call_fd: int  # worker reads the child's calls
    reply_fd: int  # worker writes go / replies
    buffer: bytes = b""
    eof: bool = False
    #: the FWorker (with the query of that moment) the child's checkout is served with
    fworker: Any = None
    reserved_fw: int | None = None
    launch_id: int | None = None
    fw_id: int | None = None
    name: str = ""
    end_state: str | None = None
    lock_failed: bool = False
    started_mono: float | None = None
    status: int | None = None
    #: the exit status is unknown (the fork server that reaps the children died)
    status_lost: bool = False
    stop_sent_at: float | None = None
    kill_at: float | None = None
    killed: bool = False
    stop_why: str = ""


def _install_worker_hooks(lp: Any) -> None:
    """Let the worker's LaunchPad record, for the child it currently serves, which Firework it reserved, which
    launch id it created, and whether a workflow lock could not be taken (FireWorks then skips the refresh)."""
    import fireworks.core.launchpad as lpmod

    class RecordingWFLock(lpmod.WFLock):  # type: ignore[misc, valid-type]
        def __enter__(self) -> Any:
            try:
                return super().__enter__()
            except lpmod.LockedWorkflowError:
                child = getattr(self.lp, "_pilot_child", None)
                if child is not None:
                    child.lock_failed = True
                raise

    lpmod.WFLock = RecordingWFLock

    class RecordingLaunchPad(lpmod.LaunchPad):  # type: ignore[misc, valid-type]
        _pilot_child: _ChildState | None = None

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
        #: the worker's ends of the Firework children's pipes
        self._child_fds: set[int] = set()
        #: forks the Firework children; a child is asked for ahead of time, while the previous Firework runs
        self._forkserver: Any = None
        #: children whose Firework is final and which are still exiting
        self._exiting: list[_ChildState] = []
        #: modules of the task classes met so far (the fork server imports them, so children start warm)
        self._task_modules: set[str] = set()
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
        _install_worker_hooks(self.lp)

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
        for module in ("fireworks.core.rocket", "fireworks.core.rocket_launcher"):
            importlib.import_module(module)
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
    def db(self, what: str, fn: Callable[..., T], *args: Any, stoppable: bool = False, **kwargs: Any) -> T:
        """Run ``fn`` against the database, retrying connection errors with backoff for ``db_retry_time``.

        With ``stoppable`` (a read that only looks for work) a stop signal ends the retrying: StopRequested.
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
                if now - first >= self.cfg.db_retry_time:
                    raise WorkerError(
                        f"database unreachable while {what}: {type(exc).__name__}: {str(exc)[:300]}; retried for "
                        f"{now - first:.0f} s (--db-retry-time {self.cfg.db_retry_time:g}). Check that the "
                        f"LaunchPad server in {self.cfg.launchpad_file} is running and reachable from "
                        f"{socket.gethostname()}", EXIT_DB_UNREACHABLE) from exc
                LOG.warning("database unreachable while %s (%s); retrying in %.0f s", what,
                            type(exc).__name__, delay)
                if stoppable:
                    self._sleep(delay)
                else:
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
            self._setup_env()
            self.cfg.launch_dir.mkdir(parents=True, exist_ok=True)
            self._prewarm()
            # before the worker's MongoClient exists (no threads, no connection in the fork server)
            self._forkserver = _ForkServer(close_in_server=[self._wake_r, self._wake_w])
            self._load_launchpad()
            self._log_start()
            reason = self._loop()
        except WorkerError as exc:
            LOG.error("%s", exc)
            LOG.info("%s", self.summary.line(self.cfg.name, f"error (exit {exc.exit_code})"))
            return exc.exit_code
        except ForkServerGone as exc:
            LOG.error("%s; the worker stops (the Firework it ran is requeued by the manager's reconcile)", exc)
            return EXIT_INTERNAL
        finally:
            if self._forkserver is not None:
                self._discard_standby()
                self._reap_exiting(block=True)
                self._forkserver.close()
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
            if self._forkserver.gone:
                raise ForkServerGone(f"the fork server (pid {self._forkserver.pid}) of the worker died")
            if self._exiting:
                self._reap_exiting()
            if self._stop_requested():
                return StopReason.SIGNAL
            avail = self.available()
            if avail <= 0:
                return StopReason.DEADLINE
            fworker = self.fworker(avail)
            if not work_hint:
                try:
                    has_work = self.db("checking for READY work", self.lp.run_exists, fworker, stoppable=True)
                except StopRequested:
                    return StopReason.SIGNAL
                if not has_work:
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

    def _request_child(self) -> None:
        """Ask the fork server for a child now (it is forked while the current Firework runs)."""
        from fireworks.utilities import fw_serializers

        self._forkserver.request((self._lp_dict, self.fworker(math.inf).to_dict(), self.cfg.launch_dir,
                                  self.cfg.fw_log_level, dict(fw_serializers.SAVED_FW_MODULES),
                                  sorted(self._task_modules)))

    def _fork_child(self) -> _ChildState:
        """Have the fork server fork a Firework child: own session and process group, waiting for its go."""
        self._flush_before_fork()
        if not self._forkserver.requested and not self._forkserver.forked:
            self._request_child()
        pid, call_fd, reply_fd = self._forkserver.take()
        os.set_blocking(call_fd, False)
        self._child_fds.update((call_fd, reply_fd))
        return _ChildState(pid=pid, call_fd=call_fd, reply_fd=reply_fd)

    def _take_status(self, child: _ChildState) -> None:
        if child.status is None and child.pid in self._forkserver.statuses:
            child.status = self._forkserver.statuses.pop(child.pid)

    def _close_child_fds(self, child: _ChildState) -> None:
        for fd in (child.call_fd, child.reply_fd):
            if fd in self._child_fds:
                os.close(fd)
                self._child_fds.discard(fd)

    def _discard_standby(self) -> None:
        """Stop pre-forked children: their checkout was never served, so they hold no Firework."""
        while not self._forkserver.gone and (self._forkserver.requested or self._forkserver.forked):
            child = self._fork_child()
            self._close_child_fds(child)  # it reads EOF and exits
            self._exiting.append(child)

    def _reply(self, child: _ChildState, kind: str, payload: Any, fw_modules: dict[str, str] | None = None,
               ) -> bool:
        """Send a reply to ``child``; False when the child is gone."""
        try:
            body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception is reported as text
            kind = "err"
            body = pickle.dumps(RuntimeError(f"pilot worker could not pass back {payload!r}: "
                                             f"{type(exc).__name__}: {exc}"))
        data = pickle.dumps((kind, fw_modules, body), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_frame(child.reply_fd, data)
            return True
        except (BrokenPipeError, OSError):
            return False

    def _run_one(self, fworker: Any) -> LaunchRecord:
        """Run (at most) one Firework in a child process and settle its outcome."""
        child = self._fork_child()  # usually the one forked while the previous Firework ran
        child.fworker = fworker
        try:
            self._supervise(child)
        finally:
            self.lp._pilot_child = None
        self._close_child_fds(child)
        if child.status is None:  # the Firework is final, the process is still exiting
            self._exiting.append(child)
        self._reap_exiting()
        record = self._settle(child)
        # FireWorks keeps a backup of every launch it checks out (for restore_backup_data); a worker runs many
        if child.launch_id is not None:
            self.lp.backup_launch_data.pop(child.launch_id, None)
        return record

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

    def _read_calls(self, child: _ChildState) -> None:
        """Read what the child sent; serve every complete call."""
        try:
            data = os.read(child.call_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            child.eof = True
            return
        child.buffer += data
        while len(child.buffer) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(child.buffer)
            if len(child.buffer) < _FRAME.size + size:
                break
            frame = child.buffer[_FRAME.size:_FRAME.size + size]
            child.buffer = child.buffer[_FRAME.size + size:]
            self._serve(child, frame)

    def _serve(self, child: _ChildState, frame: bytes) -> None:
        """Run one of the Rocket's LaunchPad calls for ``child`` on the worker's LaunchPad and reply."""
        try:
            method, args, kwargs, want_reply = pickle.loads(frame)
        except Exception as exc:  # noqa: BLE001 - a garbled message must not end the worker
            LOG.error("fw child %d: unreadable call (%s: %s): killing it, the conversation is lost", child.pid,
                      type(exc).__name__, exc)
            self._killpg(child.pid, signal.SIGKILL)
            child.killed = True
            return
        if method not in ROCKET_CALLS:
            if want_reply:
                self._reply(child, "err", RuntimeError(f"pilot worker does not serve LaunchPad.{method}"))
            return
        if method == "checkout_fw":
            if child.fworker is None or self._signals or child.stop_sent_at is not None:
                self._reply(child, "ok", (None, None))  # stopping: the Rocket finds no work and ends
                return
            # the query of this moment (time left), not the one the child was forked with
            if args:
                args = (child.fworker, *args[1:])
            else:
                kwargs["fworker"] = child.fworker
        self.lp._pilot_child = child
        try:
            result = getattr(self.lp, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - FireWorks' Rocket handles it in the child, as with its own LP
            LOG.warning("fw child %d: LaunchPad.%s failed: %s: %s", child.pid, method, type(exc).__name__, exc)
            if want_reply:
                self._reply(child, "err", exc)
            return
        if not want_reply:
            return
        fw_modules = None
        if method == "checkout_fw":
            m_fw, launch_id = result
            if m_fw is not None:
                from fireworks.utilities import fw_serializers

                fw_modules = dict(fw_serializers.SAVED_FW_MODULES)
                self._task_modules.update(type(t).__module__ for t in m_fw.tasks)
                child.fw_id, child.launch_id, child.name = m_fw.fw_id, launch_id, m_fw.name
                child.started_mono = time.monotonic()
                LOG.info("fw %d '%s' started (launch %d, pid %d, dir %s)", m_fw.fw_id, m_fw.name, launch_id,
                         child.pid, args[1] if len(args) > 1 else kwargs.get("launch_dir"))
        elif method == "complete_launch":
            child.end_state = str(kwargs.get("state", args[2] if len(args) > 2 else "COMPLETED"))
        self._reply(child, "ok", result, fw_modules)
        if (method == "checkout_fw" and child.fw_id is not None and not self._forkserver.requested
                and not self._forkserver.forked and child.stop_sent_at is None and not self._signals):
            # the next child is forked while this Firework runs
            self._request_child()

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
        """Serve the child's LaunchPad calls and wait for it, reacting to signals and the deadline."""
        handled = 0
        while True:
            self._take_status(child)
            if child.status is None and self._forkserver.gone:
                self._child_without_fork_server(child)
            if child.status is not None or child.status_lost:
                # The child is gone; a process it left may still hold the pipe: take what is there and stop.
                if not child.eof and select.select([child.call_fd], [], [], 0)[0]:
                    self._read_calls(child)
                    continue
                return
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
            fds = [self._wake_r, self._forkserver.sock] + ([] if child.eof else [child.call_fd])
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in ready:
                self._drain_wakeups()
            if child.call_fd in ready:
                self._read_calls(child)
            if self._forkserver.sock in ready:
                self._forkserver.poll()

    def _child_without_fork_server(self, child: _ChildState) -> None:
        """The fork server died (it reaps the children): end the child, so that its Firework can be settled."""
        LOG.error("the fork server (pid %d) died while fw child %d ran: killing the child", self._forkserver.pid,
                  child.pid)
        self._killpg(child.pid, signal.SIGKILL)
        limit = time.monotonic() + 5.0
        while time.monotonic() < limit:
            try:
                os.kill(child.pid, 0)  # an orphaned zombie is reaped by init soon
            except ProcessLookupError:
                break
            time.sleep(0.05)
        child.status_lost = True
        child.killed = True

    @staticmethod
    def _firework_final(child: _ChildState) -> bool:
        """True when the worker completed the child's launch and the workflow refresh took its lock."""
        return child.fw_id is not None and child.end_state in FINAL_LAUNCH_STATES and not child.lock_failed

    def _reap_exiting(self, block: bool = False, timeout: float = 5.0) -> None:
        """Collect the exit of children that no longer hold a Firework (the fork server reaps them and clears
        their process groups); with ``block``, wait up to ``timeout`` s, then SIGKILL what is left."""
        limit = time.monotonic() + timeout
        while self._exiting:
            self._forkserver.poll()
            for child in list(self._exiting):
                self._take_status(child)
                if child.status is not None:
                    self._exiting.remove(child)
            if not block or not self._exiting or self._forkserver.gone:
                return
            left = limit - time.monotonic()
            if left <= 0:
                for child in self._exiting:
                    LOG.warning("fw child %d (fw %s, %s) does not exit: SIGKILL", child.pid, child.fw_id,
                                child.end_state or "no Firework")
                    self._killpg(child.pid, signal.SIGKILL)
                limit = time.monotonic() + 5.0
                block = False  # one more look after the SIGKILL, then give up
                self._forkserver.poll(1.0)
                continue
            self._forkserver.poll(min(left, 0.5))

    # ------------------------------------------------------------------ settle
    def _describe_status(self, child: _ChildState) -> str:
        status = child.status
        if status is None:
            return "killed by the worker, exit status unknown" if child.status_lost else "unknown status"
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
            # The task's own result stands; only the workflow refresh may be missing (its lock was taken).
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


# ============================================================================ logging
def setup_worker_logging(log_file: Path | None) -> None:
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
