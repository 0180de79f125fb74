"""Each cluster's remote work in a thread of its own, which a cycle waits for at most a deadline.

Why: clusters used to be polled and submitted to one after another, so one cluster that hangs (an sshd that
accepts and never answers, a ``work_dir`` whose file system hangs SFTP) stalled every other cluster for as long
as its timeouts allowed, cycle after cycle (issue 16, item 9).

How: a :class:`ClusterPhases` keeps one :class:`ClusterWorker` per cluster across cycles. A phase of the cycle
(the status query, the submissions) starts one job per cluster, each in a daemon thread of that cluster's
worker, and waits for them together, at most ``deadline`` seconds. A cluster whose job is not done by then is
reported unreachable with the reason ("no answer within 30 s to the status query") and the cycle goes on
without it. Its thread is never joined: it ends by itself, because every remote operation has its own deadline
in the transport, and while it runs the cluster gets no new job ("still busy with the previous cycle's ...").

Each job writes what it saw and did into a :class:`~pilot.manager.runtime.CycleReport` of its own; the main
thread merges it into the cycle's report when it collects the job (in the cycle that started it, or, for a
job that finished late, in the first cycle that sees it finished). So no report is written by two threads,
and a cluster's back-off (:meth:`ClusterRuntime.fail` / :meth:`~ClusterRuntime.ok`) is only ever changed by
that cluster's own job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from pilot.manager.runtime import CycleReport

log = logging.getLogger("pilot.manager")

#: A job of one cluster: called in the cluster's thread with the job's own report; returns the phase's result.
Job = Callable[[CycleReport], Any]


def clock_time(epoch: float) -> str:
    """``HH:MM:SS`` of an epoch time (local time), for messages."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


@dataclass
class ClusterJob:
    """One phase of one cluster, running (or finished) in the cluster's thread."""

    op: str                    # what it does, for messages: "status query", "submission"
    started: float             # epoch seconds (wall clock), for messages
    future: Future[Any]
    report: CycleReport        # what the job saw and did, merged into a cycle's report when collected


class ClusterWorker:
    """One cluster's thread: runs at most one job at a time, and knows what it is busy with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.job: ClusterJob | None = None   # the last job started and not yet collected

    def busy(self) -> ClusterJob | None:
        """The job still running, if any."""
        job = self.job
        return job if job is not None and not job.future.done() else None

    def start(self, op: str, fn: Job, started: float) -> ClusterJob:
        """Run ``fn`` in a new daemon thread (one at a time: the previous job must be collected)."""
        if self.job is not None:
            raise RuntimeError(f"{self.name}: the previous job ({self.job.op}) was not collected")
        future: Future[Any] = Future()
        report = CycleReport(started=started)

        def target() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(report))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which logs and reports it
                future.set_exception(exc)

        self.job = ClusterJob(op=op, started=started, future=future, report=report)
        # a daemon: a thread hung in a remote operation must never keep the manager process from exiting
        threading.Thread(target=target, name=f"pilot-{self.name}-{op.replace(' ', '-')}", daemon=True).start()
        return self.job

    def collect(self, into: CycleReport, late: bool = False) -> tuple[bool, Any]:
        """Merge the finished job's report into ``into`` and forget the job: (True, its result), or (False,
        None) when it raised (logged, and reported as the cluster's error)."""
        job = self.job
        if job is None or not job.future.done():
            raise RuntimeError(f"{self.name}: no finished job to collect")
        self.job = None
        into.merge(job.report)
        exc = job.future.exception()
        if exc is not None:
            msg = f"{job.op} failed: {type(exc).__name__}: {exc}"
            log.error("%s: %s", self.name, msg, exc_info=exc)
            into.errors[self.name] = msg
            return False, None
        if late:
            log.info("%s: the %s started at %s ended late; its results count in this cycle", self.name, job.op,
                     clock_time(job.started))
        return True, job.future.result()


class ClusterPhases:
    """The clusters' workers, kept across cycles (see the module's docstring).

    Parameters
    ----------
    names : iterable of str
        The clusters.
    clock : callable
        Epoch seconds, for the times in messages (the manager's clock).
    """

    def __init__(self, names: Iterable[str], clock: Callable[[], float]) -> None:
        self.workers = {name: ClusterWorker(name) for name in names}
        self.clock = clock

    def worker(self, name: str) -> ClusterWorker:
        """The cluster's worker (made on first use: a cluster added to the config later gets one too)."""
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = ClusterWorker(name)
        return w

    def busy(self, name: str) -> ClusterJob | None:
        """What the cluster is still busy with, if anything."""
        w = self.workers.get(name)
        return w.busy() if w is not None else None

    def wait_idle(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for every running job to end; True when none is left running."""
        running = [j.future for w in self.workers.values() if (j := w.busy()) is not None]
        if running:
            wait(running, timeout=timeout)
        return all(w.busy() is None for w in self.workers.values())

    def collect_late(self, report: CycleReport) -> None:
        """Merge the jobs of earlier cycles that have ended since into ``report``."""
        for w in self.workers.values():
            if w.job is not None and w.job.future.done():
                w.collect(report, late=True)

    def run(self, op: str, jobs: dict[str, Job], report: CycleReport, deadline: float) -> dict[str, Any]:
        """Run one job per cluster concurrently and wait for them at most ``deadline`` seconds.

        Returns the results of the jobs that ended in time. A cluster still busy with an earlier job gets no
        new one; it and every cluster whose job is not done by the deadline are reported in ``report.errors``
        (an earlier error of the cycle for that cluster is kept).
        """
        started: dict[str, ClusterJob] = {}
        for name, fn in jobs.items():
            w = self.worker(name)
            prev = w.busy()
            if prev is not None:
                msg = f"still busy with the previous cycle's {prev.op} since {clock_time(prev.started)}; skipped"
                log.warning("%s: %s", name, msg)
                report.errors.setdefault(name, msg)
                continue
            if w.job is not None:
                # an earlier job that ended after its deadline, since the last look (found by the soak test:
                # starting beside it raised and cost the whole cycle): its results count now
                w.collect(report, late=True)
            started[name] = w.start(op, fn, self.clock())
        if started:
            wait([j.future for j in started.values()], timeout=deadline)
        results: dict[str, Any] = {}
        for name, job in started.items():
            w = self.worker(name)
            if job.future.done():
                ok, result = w.collect(report)
                if ok:
                    results[name] = result
                continue
            msg = (f"unreachable: no answer within {deadline:g} s to the {op} (started {clock_time(job.started)}); "
                   "the cycle goes on without it, and it gets no new work until that ends")
            log.warning("%s: %s", name, msg)
            report.errors.setdefault(name, msg)
        return results


__all__ = ["ClusterJob", "ClusterPhases", "ClusterWorker", "Job", "clock_time"]
