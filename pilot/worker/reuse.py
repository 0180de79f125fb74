"""When a Firework child runs the next Firework too, instead of exiting: a *warm* child.

A process per Firework costs about 12 ms of CPU (the fork, some 1,300 copy-on-write faults, the exit;
docs/performance.md), nothing next to an MD segment but more than the database round trips of a no-op
Firework, and on a busy node it competes with the worker and the database for the same cores. So a child that
ran a *short* Firework *cleanly* takes the next one, the way ``rlaunch rapidfire`` runs every Rocket in one
process, and the way Celery's and gunicorn's worker processes serve many tasks with a bound
(``max_tasks_per_child``, ``max_requests``). A process is never reused after anything that could have left it
unlike a fresh one:

* the worker's side (:func:`worker_keeps`): the Firework COMPLETED (a failure, a stop or a kill always gets a
  fresh process), ran under :data:`REUSE_BELOW_S` (for longer ones the fork is noise, and a fresh process is
  the cleaner start), and the process ran fewer than :data:`MAX_FIREWORKS_PER_CHILD`;
* the child's side (:class:`CleanSlate`): no thread of the Firework still runs, no process it started still
  lives (the child is a subreaper, so even a daemonised grandchild counts), its memory grew by less than
  :data:`RSS_GROWTH_LIMIT_BYTES`; its environment, umask, signal dispositions, signal mask and interval timers
  are put back (a task that ignored SIGCHLD would make every later ``subprocess`` return 0; a pending alarm
  would kill the next Firework). Imports and module globals carry over, as under ``rlaunch``.

Either side can say no: the worker with its answer to the completion, the child by exiting with
:data:`~pilot.worker.protocol.CHILD_DECLINED`; the worker then starts the next Firework in the stand-by child
forked ahead of time. ``pilot worker --fresh-process`` turns reuse off.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

#: a process runs at most this many Fireworks (leaks stay bounded)
MAX_FIREWORKS_PER_CHILD = 100
#: seconds: a Firework that ran at least this long leaves the next one a fresh process
REUSE_BELOW_S = 10.0
#: bytes of resident memory a process may have gained since its start and still take another Firework
RSS_GROWTH_LIMIT_BYTES = 256 * 1024 * 1024
#: seconds the child waits, in all, for FireWorks' own threads of a finished Firework to end (its ping thread
#: and background-task threads end right after the Rocket stops them); any other live thread: no reuse
THREAD_WAIT_S = 0.5
#: the interval timers a task may have left running (a pending alarm would kill the next Firework)
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
_PR_SET_CHILD_SUBREAPER = 36


def worker_keeps(completed: bool, ran_s: float, fireworks_run: int) -> bool:
    """The worker's side: may the process that ran ``fireworks_run`` Fireworks, the last one ``completed`` in
    ``ran_s`` seconds, take the next?"""
    return completed and ran_s < REUSE_BELOW_S and fireworks_run < MAX_FIREWORKS_PER_CHILD


def _become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux' PR_SET_CHILD_SUBREAPER), so that
    :meth:`CleanSlate.check` sees every process a Firework left; False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fireworks_thread(thread: threading.Thread) -> bool:
    """One of FireWorks' own threads of a Rocket (the ping thread, a background task), which end on their own
    right after the Rocket stops them."""
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", "") == "fireworks.core.rocket"


def _live_children() -> list[int] | None:
    """The pids of this process's children that have not exited, from /proc (without reaping any: a task's
    ``Popen`` objects must keep their exit statuses); None when /proc cannot tell."""
    pids: list[int] = []
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as fh:  # the main thread's
            pids += [int(x) for x in fh.read().split()]
        for task in os.listdir("/proc/self/task"):
            if task != str(os.getpid()):
                try:
                    with open(f"/proc/self/task/{task}/children") as fh:
                        pids += [int(x) for x in fh.read().split()]
                except (FileNotFoundError, ProcessLookupError):
                    continue  # a thread that ended meanwhile (its children, if any, went to another thread)
    except OSError:
        return None
    live = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state != "Z":
            live.append(pid)
    return live


class CleanSlate:
    """The child's state before its first Firework, to check and put back after each one."""

    def __init__(self) -> None:
        self.subreaper = _become_subreaper()
        self.environ = dict(os.environ)
        self.umask = os.umask(0o077)
        os.umask(self.umask)
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.handlers = {sig: signal.getsignal(sig) for sig in signal.valid_signals()
                         if sig not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(sig) is not None}
        try:
            self.rss: int | None = _rss_bytes()
        except (OSError, ValueError, IndexError):
            self.rss = None

    def restore(self) -> str | None:
        """Put back what a Firework may have changed in this process (environment, umask, every signal's
        disposition, the signal mask, interval timers); None when it may take the next Firework, else why not.
        Whatever goes wrong here is a no, never a failure."""
        try:
            if dict(os.environ) != self.environ:
                os.environ.clear()
                os.environ.update(self.environ)
            os.umask(self.umask)
            for timer in _TIMERS:
                signal.setitimer(timer, 0)
            for sig, handler in self.handlers.items():
                if signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            return self._why_not()
        except Exception as exc:  # noqa: BLE001 - a process that cannot be checked is not reused
            return f"it could not be checked ({type(exc).__name__}: {exc})"

    def _why_not(self) -> str | None:
        if not self.subreaper or self.rss is None:
            return "this system cannot tell which processes a Firework left (no PR_SET_CHILD_SUBREAPER)"
        limit = time.monotonic() + THREAD_WAIT_S
        for thread in threading.enumerate():
            if thread is threading.main_thread() or not thread.is_alive():
                continue
            if _fireworks_thread(thread):
                thread.join(max(limit - time.monotonic(), 0.0))
            if thread.is_alive():
                return f"a thread of the Firework still runs ({thread.name})"
        live = _live_children()
        if live is None:
            return "this system cannot tell which processes a Firework left (no /proc/self/task/*/children)"
        if live:
            return "a process the Firework started still runs"
        grown = _rss_bytes() - self.rss
        if grown > RSS_GROWTH_LIMIT_BYTES:
            return f"its memory grew by {grown / 2**20:.0f} MiB"
        return None
