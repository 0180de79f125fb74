"""The worker's Firework children: their state as the worker sees it, asking the fork server for them ahead of
time, the warm one kept for the next Firework (:mod:`pilot.worker.reuse`), the worker's ends of their pipes,
and the ones still exiting after their Firework is final."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.worker.forkserver import ForkServer
from pilot.worker.logs import LOG
from pilot.worker.protocol import CHILD_DECLINED

if TYPE_CHECKING:
    from pilot.worker.model import WorkerConfig


@dataclass
class ChildState:
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
    #: the Rocket's pings not written yet, (launch id, ptime, checkpoint) in order, and the monotonic time by
    #: which they are written (see :meth:`pilot.worker.calls.CallServer.serve`)
    held_pings: list[tuple[Any, Any, Any]] = field(default_factory=list)
    pings_due: float | None = None
    #: Fireworks this process ran before this one (0: a fresh process)
    runs: int = 0
    #: the worker told the process, with the completion, that it takes the next Firework
    keep: bool = False
    #: the cores and GPUs its Firework holds in a packed pilot (a :class:`pilot.worker.slots.Hold`; None: none)
    hold: Any = None
    #: how many of the worker's stop signals this child has been given (a packed pilot passes each to every child)
    signals_handled: int = 0

    def declined(self) -> bool:
        """A warm child that exited instead of taking this Firework (:data:`CHILD_DECLINED`): not a failure, the
        worker starts the Firework in another child."""
        return (self.runs > 0 and self.fw_id is None and self.reserved_fw is None and self.status is not None
                and os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == CHILD_DECLINED)


def killpg(pid: int, sig: int, reaped: bool = False) -> None:
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


class ChildPool:
    """The fork server and the children it forked for the worker.

    A child is asked for ahead of time, while the previous Firework runs, so the next one starts at once.
    """

    def __init__(self, cfg: WorkerConfig, fworker: Callable[[float], Any], close_in_server: list[int]) -> None:
        self.cfg = cfg
        #: the worker's FWorker for a given time available (a standby child is forked with the open one)
        self._fworker = fworker
        #: forks the Firework children; a child is asked for ahead of time, while the previous Firework runs
        self.forkserver = ForkServer(close_in_server)
        #: the LaunchPad a child uses for a task's own calls (set once the worker has loaded it)
        self.lp_dict: dict[str, Any] = {}
        #: the worker's ends of the Firework children's pipes
        self.fds: set[int] = set()
        #: children whose Firework is final and which are still exiting
        self.exiting: list[ChildState] = []
        #: the child that ran the last Firework and is kept for the next one (None: the next one is forked)
        self.warm: ChildState | None = None
        #: modules of the task classes met so far (the fork server imports them, so children start warm)
        self.task_modules: set[str] = set()

    @property
    def pending(self) -> bool:
        """A child is asked for or forked and not taken yet."""
        return bool(self.forkserver.requested or self.forkserver.forked)

    @staticmethod
    def _flush_before_fork() -> None:
        for handler in logging.getLogger().handlers + LOG.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()

    def request(self) -> None:
        """Ask the fork server for a child now (it is forked while the current Firework runs)."""
        from fireworks.utilities import fw_serializers

        self.forkserver.request((self.lp_dict, self._child_fworker(), self.cfg.launch_dir,
                                 self.cfg.fw_log_level, dict(fw_serializers.SAVED_FW_MODULES),
                                 sorted(self.task_modules), not self.cfg.fresh_process))

    def _child_fworker(self) -> dict[str, Any]:
        """The FWorker the child's Rocket holds, as a dict. Its checkout goes through the worker, which puts in
        the pilot's own FWorker (its launches record ``CLUSTER-JOBID``), so the Rocket's own one only gives the
        env (``_fw_env``) and the name ``_preserve_fworker`` pins a Firework's children to: the configured FWorker
        name (the cluster's, which any of its pilots takes), not this pilot's, which may be gone by then."""
        d = dict(self._fworker(math.inf).to_dict())
        if self.cfg.fworker_name:
            d["name"] = self.cfg.fworker_name
        return d

    def keep_warm(self, done: ChildState) -> None:
        """Keep the process of ``done`` (its Firework is final) for the next Firework; :meth:`fork` gives it."""
        self.warm = ChildState(pid=done.pid, call_fd=done.call_fd, reply_fd=done.reply_fd, buffer=done.buffer,
                               eof=done.eof, runs=done.runs + 1)

    def fork(self) -> ChildState:
        """The child for the next Firework: the warm one, else the one forked ahead of time, else a new one
        (own session and process group, waiting for its go)."""
        if self.warm is not None:
            child, self.warm = self.warm, None
            return child
        self._flush_before_fork()
        if not self.pending:
            self.request()
        pid, call_fd, reply_fd = self.forkserver.take()
        os.set_blocking(call_fd, False)
        self.fds.update((call_fd, reply_fd))
        return ChildState(pid=pid, call_fd=call_fd, reply_fd=reply_fd)

    def take_status(self, child: ChildState) -> None:
        if child.status is None and child.pid in self.forkserver.statuses:
            child.status = self.forkserver.statuses.pop(child.pid)

    def close_fds(self, child: ChildState) -> None:
        for fd in (child.call_fd, child.reply_fd):
            if fd in self.fds:
                os.close(fd)
                self.fds.discard(fd)

    def discard_standby(self) -> None:
        """Stop the warm and the pre-forked children: their checkout was never served, so they hold no
        Firework."""
        if self.warm is not None:
            self.close_fds(self.warm)  # it reads EOF and exits
            self.exiting.append(self.warm)
            self.warm = None
        while not self.forkserver.gone and self.pending:
            child = self.fork()
            self.close_fds(child)  # it reads EOF and exits
            self.exiting.append(child)

    def reap_exiting(self, block: bool = False, timeout: float = 5.0) -> None:
        """Collect the exit of children that no longer hold a Firework (the fork server reaps them and clears
        their process groups); with ``block``, wait up to ``timeout`` s, then SIGKILL what is left."""
        limit = time.monotonic() + timeout
        while self.exiting:
            self.forkserver.poll()
            for child in list(self.exiting):
                self.take_status(child)
                if child.status is not None:
                    self.exiting.remove(child)
            if not block or not self.exiting or self.forkserver.gone:
                return
            left = limit - time.monotonic()
            if left <= 0:
                for child in self.exiting:
                    LOG.warning("fw child %d (fw %s, %s) does not exit: SIGKILL", child.pid, child.fw_id,
                                child.end_state or "no Firework")
                    killpg(child.pid, signal.SIGKILL)
                limit = time.monotonic() + 5.0
                block = False  # one more look after the SIGKILL, then give up
                self.forkserver.poll(1.0)
                continue
            self.forkserver.poll(min(left, 0.5))

    def close(self) -> None:
        """At the worker's end: stop the standby child, wait for the exiting ones, end the fork server."""
        self.discard_standby()
        self.reap_exiting(block=True)
        self.forkserver.close()
