"""The fork server: a process the worker forks once, right after its imports, that forks every Firework child.

A fork marks every page of the forking process copy-on-write, so a worker forking each child itself would pay a
page fault for every page it touches afterwards, on its critical path, once per Firework; this process barely
touches its memory between forks. It is asked for a child over a SEQPACKET socket, passes back the child's pipe
ends, reaps the children (killing what is left of their process groups) and reports their exit statuses.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pickle
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from pilot.worker.child import child_main
from pilot.worker.protocol import CHILD_ERROR

#: What the worker sends to ask for a child: (LaunchPad dict, FWorker dict, launch base dir, FireWorks log
#: level, FireWorks' SAVED_FW_MODULES, task modules to import first, whether the process may take more than
#: one Firework: pilot.worker.reuse).
ChildRequest = tuple[dict[str, Any], dict[str, Any], Path, str, dict[str, str], list[str], bool]


class ForkServerGone(RuntimeError):
    """The fork server process of the worker died."""


# ============================================================================ in the fork server process
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


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(sock: socket.socket, live: set[int]) -> None:
    """Reap the Firework children that ended and report their exit statuses to the worker."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        live.discard(pid)
        # a Firework's processes do not outlive it (the group id cannot be reused while it exists)
        _kill_group(pid)
        sock.send(pickle.dumps(("exit", pid, status)))


def _become_firework_child(request: ChildRequest, sock: socket.socket, call_w: int, reply_r: int,
                           close: tuple[int, ...]) -> NoReturn:
    """In the newly forked child: own session and process group, default signals, then :func:`child_main`."""
    lp_dict, fworker_dict, base_dir, fw_log_level, _fw_modules, _task_modules, reuse = request
    code = CHILD_ERROR
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        sock.close()
        code = child_main(lp_dict, fworker_dict, base_dir, fw_log_level, call_w, reply_r, reuse)
    except BaseException:  # noqa: BLE001 - the child must always reach os._exit
        traceback.print_exc()
        code = CHILD_ERROR
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _fork_firework_child(request: ChildRequest, sock: socket.socket, imported: set[str], live: set[int],
                         wake: tuple[int, int]) -> None:
    """Fork one Firework child and pass the worker its pipe ends (its calls, and go / replies)."""
    _preload(request[4], request[5], imported)
    call_r, call_w = os.pipe()
    reply_r, reply_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _become_firework_child(request, sock, call_w, reply_r, (call_r, reply_w, *wake))
    live.add(pid)
    socket.send_fds(sock, [pickle.dumps(("forked", pid))], [call_r, reply_w])
    for fd in (call_r, call_w, reply_r, reply_w):
        os.close(fd)


def fork_server_main(sock: socket.socket) -> int:
    """Loop of the fork server: fork a Firework child per request, reap children, report their exit status.

    However the loop ends -- the worker closed its end (killed, OOM), a report to it failed because it is gone,
    or an error here -- the Firework children still alive are killed with their process groups: no Firework may
    run on unsupervised, or the manager's rerun would run it twice at once.
    """
    live: set[int] = set()  # Firework children not reaped yet (each leads its own process group)
    try:
        return _serve(sock, live)
    finally:
        for pid in live:
            _kill_group(pid)


def _serve(sock: socket.socket, live: set[int]) -> int:
    imported: set[str] = set()
    _warm_up_fireworks()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        # the batch system signals every process of the job: the worker decides, this process must not die
        signal.signal(sig, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            _drain(wake_r)
        try:
            _reap(sock, live)
            if sock.fileno() not in ready:
                continue
            msg = sock.recv(1 << 16)
            if not msg:
                return 0  # the worker is gone
            _fork_firework_child(pickle.loads(msg), sock, imported, live, (wake_r, wake_w))
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the worker is gone: a report to it failed


# ============================================================================ in the worker process
class ForkServer:
    """The worker's handle on its fork server process (see :func:`fork_server_main`)."""

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
                code = fork_server_main(theirs)
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

    def request(self, request: ChildRequest) -> None:
        """Ask for a Firework child; collect it with :meth:`take`."""
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
