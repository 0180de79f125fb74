"""Several Fireworks at once in one pilot (``pilot worker --pack``): each on the cores and GPUs it asks for.

A pilot of C cores (and G GPUs) keeps starting Fireworks while a core is free and READY work fits what is free:
every pull's FWorker query asks for a Firework whose ``spec._pilot.cores``/``gpus`` fit the free cores/GPUs
(:func:`pilot.fit.resources_clause`) and whose walltime fits the time left *then* (:func:`pilot.fit.fits_clause`).
One child at a time is in its checkout (what it takes is not known before the answer), so the free count the
query was built with still holds when the checkout is answered; that answer carries the cores and GPUs the
Firework now holds (:mod:`pilot.worker.slots`), which the child applies before the Rocket runs the tasks
(:func:`pilot.worker.child.apply_binding`).

Every running child is supervised in one ``select`` loop, with the single-slot rules applied per slot: a
Firework still running at ``deadline - margin/2`` gets SIGTERM and, after the grace, SIGKILL; a stop signal to
the worker is passed to every slot; a child that dies is settled (:class:`pilot.worker.settle.Settler`) alone,
its cores go back to the pool and the other slots go on. The idle timeout counts only while no slot runs a
Firework. Warm processes (:mod:`pilot.worker.reuse`) are off here: each Firework gets a fresh process, whose
environment and CPU affinity are its own.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from pilot.worker.children import ChildPool, ChildState, killpg
from pilot.worker.forkserver import ForkServerGone
from pilot.worker.logs import LOG
from pilot.worker.model import LaunchRecord, Outcome, StopReason, StopRequested, WorkerError
from pilot.worker.protocol import EXIT_DB_UNREACHABLE
from pilot.worker.settle import Settler, firework_final
from pilot.worker.slots import Slots, binding, cpu_ids, firework_asks, gpu_ids

if TYPE_CHECKING:
    from pilot.worker.calls import CallServer
    from pilot.worker.database import DbRetry
    from pilot.worker.model import Summary, WorkerConfig

#: longest wait of the loop, in seconds (every event wakes it sooner; this only bounds a missed one)
MAX_WAIT_S = 2.0
#: seconds a look for work may take while Fireworks run (their supervision waits meanwhile)
LOOK_TIMEOUT_S = 2.0


class PackHost(Protocol):
    """What the packed loop uses of the worker (:class:`pilot.worker.supervisor.Worker`): its time, its pull
    query, its signals and the way it stops a child, which stay the single-slot worker's own."""

    cfg: WorkerConfig
    lp: Any
    db: DbRetry
    summary: Summary
    _wake_r: int

    def available(self) -> float: ...
    def fworker(self, available: float, free: tuple[int, int] | None = None) -> Any: ...
    def _stop_requested(self) -> bool: ...
    def _drain_wakeups(self) -> None: ...
    def _log_warnings(self) -> None: ...
    def _nothing_fits(self, avail: float) -> bool: ...
    def _drained(self, quick: bool = False) -> bool: ...
    def _handle_signals(self, child: ChildState, handled: int) -> int: ...
    def _next_stop_trigger(self) -> float | None: ...
    def _begin_stop(self, child: ChildState, grace: float, why: str) -> None: ...
    def _child_without_fork_server(self, forkserver_pid: int, child: ChildState) -> None: ...


def pilot_slots(cores: int, gpus: int) -> tuple[Slots, bool]:
    """The pilot's cores and GPUs, from the batch job's CPU set and ``CUDA_VISIBLE_DEVICES``, and whether the
    Fireworks are bound to the cores (enough CPUs to give each core id a CPU of its own). Says so in the log."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cpus, real = cpu_ids(cores, allowed)
    devices = gpu_ids(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not real:
        LOG.info("--cores %d, but this job may run on %d CPUs: core ids %s are logical only (no CPU affinity is "
                 "set; PILOT_CORE_LIST and OMP_NUM_THREADS still keep the Fireworks' counts apart)", cores,
                 len(allowed), ",".join(map(str, cpus)))
    if len(devices) < gpus:
        LOG.warning("--gpus %d, but CUDA_VISIBLE_DEVICES lists %d devices (%s): the pilot uses those", gpus,
                    len(devices), os.environ.get("CUDA_VISIBLE_DEVICES"))
    LOG.info("packing Fireworks on %d cores (%s%s) and %d GPUs (%s)", len(cpus), ",".join(map(str, cpus)),
             ", CPU affinity" if real else ", logical", len(devices), ",".join(devices) or "none")
    return Slots(cpus, devices), real


class Packer:
    """The loop of a packed pilot: start Fireworks while cores are free, supervise them all, settle each."""

    def __init__(self, host: PackHost, children: ChildPool, settler: Settler) -> None:
        self.host = host
        self.cfg = host.cfg
        self.children = children
        self.settler = settler
        self.slots, self.bind_cpus = pilot_slots(self.cfg.cores, self.cfg.gpus)
        host.summary.cores = len(self.slots.cores)
        self.calls: CallServer | None = None
        #: children given a pull: a checkout on its way (``fw_id`` None) or a Firework running
        self.running: list[ChildState] = []
        self.last_busy = time.monotonic()
        #: monotonic time of the next look for work (after an empty one, with a backoff)
        self.next_look = 0.0
        self.backoff = 1.0
        #: the last pull found work: the next child checks out at once, without asking first
        self.work_hint = False
        self.failing_since: float | None = None
        #: an error that ends the worker once the running slots are stopped
        self.error: WorkerError | None = None
        #: the cluster is drained (``pilot drain``): no new Firework; the worker leaves when the running ones end
        self.drained = False

    # ------------------------------------------------------------------ binding (asked by the CallServer)
    def bind(self, child: ChildState, m_fw: Any) -> dict[str, Any]:
        """The cores and GPUs ``child``'s Firework, just checked out, holds: taken from the free ones (the
        checkout's query asked for what is free, and no other checkout was on its way)."""
        cores, gpus = firework_asks(getattr(m_fw, "spec", None))
        hold = self.slots.take(cores, gpus)
        if hold is None:  # only when the database answered a query it should not have
            LOG.error("fw %s asks for %d cores and %d GPUs, %d and %d are free: it runs on what is free",
                      child.fw_id, cores, gpus, self.slots.free_cores, self.slots.free_gpus)
            hold = self.slots.take(min(cores, self.slots.free_cores), min(gpus, self.slots.free_gpus))
            assert hold is not None  # no more than is free
        child.hold = hold
        self.work_hint = True
        LOG.info("fw %s holds cores %s and GPUs %s (%d cores, %d GPUs free)", child.fw_id,
                 ",".join(map(str, hold.cores)), ",".join(hold.gpus) or "none", self.slots.free_cores,
                 self.slots.free_gpus)
        return binding(hold, self.bind_cpus)

    # ------------------------------------------------------------------ the loop
    def run(self, calls: CallServer) -> StopReason:
        """Run Fireworks side by side until idle, the deadline, nothing fits or a stop signal."""
        self.calls = calls
        while True:
            self._check_fork_server()
            if self.children.exiting:
                self.children.reap_exiting()
            self.host._log_warnings()
            self._stop_slots()
            self._collect()
            reason = self._start_or_stop()
            if reason is not None:
                return reason
            self._wait()

    def _start_or_stop(self) -> StopReason | None:
        """Start a Firework when one may start; the reason to stop when the worker is done."""
        now = time.monotonic()
        if any(child.fw_id is not None for child in self.running):
            self.last_busy = now
        if self.error is not None:
            if not self.running:
                raise self.error
            return None
        stopping = self.host._stop_requested()
        avail = self.host.available()
        if stopping or avail <= 0 or self.drained:
            if not self.running:
                return (StopReason.SIGNAL if stopping else StopReason.DRAINED if self.drained
                        else StopReason.DEADLINE)
            return None
        if not self._may_start(now):
            return None
        try:
            # before each pull (the running Fireworks are never interrupted): one read of the pilot's record
            if self.host._drained(quick=bool(self.running)):
                self.drained = True
                return None if self.running else StopReason.DRAINED
            return self._start(avail)
        except StopRequested:
            return None  # the next round passes the signal to the slots

    def _slot_open(self) -> bool:
        """A core free (a GPU too for a GPU-work-only pilot) and no checkout on its way (what it takes is not
        known before its answer)."""
        return self.slots.can_start(self.cfg.gpu_work_only) and all(c.fw_id is not None for c in self.running)

    def _may_start(self, now: float) -> bool:
        """A slot open, and time for a look."""
        return self._slot_open() and now >= self.next_look

    def _start(self, avail: float) -> StopReason | None:
        """Give a child the pull of this moment (what is free, the time left); ask first unless work was just
        found. Nothing there: look again after a backoff, or stop when no slot runs (idle, nothing fits)."""
        fworker = self.host.fworker(avail, (self.slots.free_cores, self.slots.free_gpus))
        if not self.work_hint:
            if not self._ready_work(fworker):
                wait = min(self.backoff, avail)
                if not self.running:
                    if self.host._nothing_fits(avail):
                        return StopReason.NOTHING_FITS
                    idle_left = self.cfg.idle_timeout - (time.monotonic() - self.last_busy)
                    if idle_left <= 0:
                        return StopReason.IDLE
                    wait = min(wait, idle_left)
                self.next_look = time.monotonic() + wait
                self.backoff = min(self.backoff * 1.5, 10.0)
                return None
        child = self.children.fork()
        child.fworker = fworker
        self.running.append(child)
        return None

    def _ready_work(self, fworker: Any) -> bool:
        """Is READY work there for ``fworker``? With no slot running, asked as the single-slot worker asks
        (retried through an outage for ``--db-retry-time``, then exit 3). With slots running, one short try: an
        outage must not hold their supervision (their deadline triggers, their calls); the next look tries
        again."""
        if not self.running:
            return bool(self.host.db("checking for READY work", self.host.lp.run_exists, fworker, stoppable=True))
        import pymongo
        from pymongo.errors import PyMongoError

        try:
            with pymongo.timeout(LOOK_TIMEOUT_S):
                return bool(self.host.lp.run_exists(fworker))
        except PyMongoError as exc:
            LOG.warning("could not look for READY work while %d Fireworks run (%s: %s); looking again in %.0f s",
                        len(self.running), type(exc).__name__, self.host.db._text(exc, 200), self.backoff)
            return False

    # ------------------------------------------------------------------ per slot: stop, collect
    def _stop_slots(self) -> None:
        """The single-slot stop rules, for every slot: the worker's stop signals, the deadline trigger, SIGKILL
        after the grace."""
        for child in self.running:
            child.signals_handled = self.host._handle_signals(child, child.signals_handled)
            if self.error is not None and child.stop_sent_at is None:
                self.host._begin_stop(child, min(self.cfg.grace, self.cfg.term_grace),
                                      f"the worker stops ({self.error})")
        trigger = self.host._next_stop_trigger()
        if trigger is not None and trigger <= 0:
            for child in self.running:
                if child.stop_sent_at is None:
                    self.host._begin_stop(child, self.cfg.grace, "deadline - margin/2 reached")
        now = time.monotonic()
        for child in self.running:
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                LOG.warning("fw %s: still running after the grace period -> SIGKILL to process group %d",
                            child.fw_id, child.pid)
                killpg(child.pid, signal.SIGKILL)
                child.killed = True

    def _done(self, child: ChildState) -> bool:
        """Is the child's Firework over: the process gone (its last calls read), or the launch final?"""
        assert self.calls is not None
        self.children.take_status(child)
        if child.status is not None or child.status_lost:
            if not child.eof and select.select([child.call_fd], [], [], 0)[0]:
                self.calls.read_calls(child)  # what a process it left still sent
                return False
            return True
        return firework_final(child)

    def _collect(self) -> None:
        """Settle each child whose Firework is over; its cores and GPUs are free again."""
        assert self.calls is not None
        for child in list(self.running):
            if not self._done(child):
                continue
            self.running.remove(child)
            self.calls.flush(child)  # pings the child sent last
            self.host.lp._pilot_child = None
            self.children.close_fds(child)
            if child.status is None:  # the Firework is final, the process is still exiting
                self.children.exiting.append(child)
            cores = len(child.hold.cores) if child.hold is not None else 1
            try:
                record = self.settler.settle(child)
            finally:
                if child.hold is not None:
                    self.slots.give_back(child.hold)
                    child.hold = None
            if child.launch_id is not None:
                self.host.lp.backup_launch_data.pop(child.launch_id, None)
            self._note(record, cores)

    def _note(self, rec: LaunchRecord, cores: int) -> None:
        """Count a settled pull (its Firework held ``cores``) and choose when to look for work next (as the
        single-slot loop does)."""
        now = time.monotonic()
        if rec.fw_id is not None:
            self.host.summary.add(rec, cores)
            self.work_hint, self.failing_since, self.backoff = True, None, 1.0
            self.next_look = self.last_busy = now
        elif rec.outcome is Outcome.CHILD_FAILED:
            self.work_hint = False
            self.failing_since = now if self.failing_since is None else self.failing_since
            if now - self.failing_since >= self.cfg.db_retry_time and self.error is None:
                self.error = WorkerError(f"Firework children keep failing before taking a Firework for "
                                         f"{now - self.failing_since:.0f} s; last: {rec.detail}", EXIT_DB_UNREACHABLE)
            self.next_look = now + self.backoff
            self.backoff = min(self.backoff * 2.0, 10.0)
        else:  # NO_WORK: another pilot was faster, or the work no longer fits what is free
            self.work_hint = False
            self.next_look = now

    def _check_fork_server(self) -> None:
        """The fork server died (it reaps the children): end and settle every slot, then stop the worker."""
        forkserver = self.children.forkserver
        if not forkserver.gone:
            return
        for child in self.running:
            self.children.take_status(child)
            if child.status is None:
                self.host._child_without_fork_server(forkserver.pid, child)
        self._collect()
        raise ForkServerGone(f"the fork server (pid {forkserver.pid}) of the worker died")

    # ------------------------------------------------------------------ waiting
    def _wait(self) -> None:
        """Wait for a child's call, an exit status, a signal, or the next timer of any slot."""
        assert self.calls is not None
        now = time.monotonic()
        timeouts = [MAX_WAIT_S]
        trigger = self.host._next_stop_trigger()
        if trigger is not None and any(child.stop_sent_at is None for child in self.running):
            timeouts.append(trigger)
        for child in self.running:
            if child.kill_at is not None and not child.killed:
                timeouts.append(child.kill_at - now)
            due = self.calls.flush_due(child)
            if due is not None:
                timeouts.append(due)
        avail = self.host.available()
        if not self.host._stop_requested() and avail > 0 and self.error is None:
            if self._slot_open():
                timeouts.append(self.next_look - now)
            if math.isfinite(avail):
                timeouts.append(avail)  # deadline - margin: no more work from then on
        forkserver = self.children.forkserver
        fds: list[int | socket.socket] = [self.host._wake_r, forkserver.sock]
        fds += [child.call_fd for child in self.running if not child.eof]
        ready, _, _ = select.select(fds, [], [], max(min(timeouts), 0.0))
        if self.host._wake_r in ready:
            self.host._drain_wakeups()
        for child in list(self.running):
            if not child.eof and child.call_fd in ready:
                self.calls.read_calls(child)
        if forkserver.sock in ready:
            forkserver.poll()
