"""The worker's loop: pull a Firework that fits the time left, run it in a child, supervise it (signals, the
deadline, the grace period), settle it, repeat; stop when idle, when READY work no longer fits the time left, at
the deadline, on a stop signal, or when its cluster is drained (``pilot drain``: its record says ``drain: true``,
read before each pull; the Firework that runs is never interrupted).

With a deadline, the batch system's pre-walltime signal (SIGUSR1) is only logged: SLURM sends it up to 60 s
earlier than asked (sbatch(1), ``--signal``), LSF rounds ``-wt`` up to whole minutes, and the worker knows the
deadline itself; stopping on the signal gave that time away (issue 18: 7 pilots instead of 5 in the wall-time
campaign). Without a deadline (``--no-deadline``) SIGUSR1 is the only warning there is, and stops the work.

A packed pilot (``--pack``) runs several Fireworks at once: :class:`pilot.worker.packing.Packer` runs its loop
instead of :meth:`Worker._loop`, with this worker's pull query, time, signals and stop rules, per Firework."""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import math
import os
import select
import signal
import socket
import time
from typing import Any

from pilot.fit import fits_clause, number, resources_clause
from pilot.worker.calls import CallServer
from pilot.worker.children import ChildPool, ChildState, killpg
from pilot.worker.database import DbRetry, install_worker_hooks, load_launchpad
from pilot.worker.forkserver import ForkServerGone
from pilot.worker.heartbeat import Heartbeat
from pilot.worker.logs import LOG
from pilot.worker.model import LaunchRecord, Outcome, StopReason, StopRequested, Summary, WorkerConfig, WorkerError
from pilot.worker.packing import Packer
from pilot.worker.protocol import EXIT_DB_UNREACHABLE, EXIT_INTERNAL, EXIT_OK
from pilot.worker.reuse import worker_keeps
from pilot.worker.settle import Settler, firework_final
from pilot.worker.tunnel import Tunnel, TunnelError


def _setup_env(cfg: WorkerConfig) -> None:
    """What FireTasks learn from the environment: ``PILOT_NAME``, ``PILOT_DEADLINE``, ``PILOT_STOP_AT``."""
    os.environ["PILOT_NAME"] = cfg.name
    if cfg.deadline is None:
        for var in ("PILOT_DEADLINE", "PILOT_STOP_AT"):
            os.environ.pop(var, None)
    else:
        os.environ["PILOT_DEADLINE"] = str(math.floor(cfg.deadline))
        os.environ["PILOT_STOP_AT"] = str(math.floor(cfg.stop_at or cfg.deadline))


def _prewarm() -> None:
    """Load, once in the worker, what every Firework child needs, so that forked children start warm."""
    for module in ("fireworks.core.rocket", "fireworks.core.rocket_launcher"):
        importlib.import_module(module)
    from fireworks.utilities.fw_utilities import get_my_host, get_my_ip

    get_my_host()
    get_my_ip()


def _log_start(cfg: WorkerConfig, time_left: float) -> None:
    if cfg.deadline is None:
        dl = "no deadline"
    else:
        when = datetime.datetime.fromtimestamp(cfg.deadline).strftime("%Y-%m-%d %H:%M:%S")
        dl = f"deadline {when} (in {time_left:.0f} s), margin {cfg.margin:g} s"
        if cfg.grace > cfg.margin / 2.0:
            LOG.warning("--grace %g s is longer than half the margin (%g s): a task stopped at the deadline "
                        "trigger (deadline - margin/2) is SIGKILLed at the deadline - 1 s at the latest",
                        cfg.grace, cfg.margin / 2.0)
    LOG.info("pilot worker %s (pid %d on %s): categories %s, %s, idle timeout %g s, grace %g s, "
             "launch dirs under %s", cfg.name, os.getpid(), socket.gethostname(), ",".join(cfg.categories),
             dl, cfg.idle_timeout, cfg.grace, cfg.launch_dir)


class Worker:
    """The pilot worker: pull, run in a child, supervise, settle, repeat."""

    def __init__(self, config: WorkerConfig) -> None:
        if config.pack and not config.fresh_process:
            # a packed pilot gives each Firework a fresh process: its environment and CPU affinity are its own
            config = dataclasses.replace(config, fresh_process=True)
        self.cfg = config
        self.summary = Summary()
        self._signals: list[int] = []
        #: epoch seconds at which SIGUSR1 came while the worker has a deadline (noted, not a stop); logged by
        #: :meth:`_log_warnings` from the loops, not from the handler (the logging module is not reentrant)
        self._warnings: list[float] = []
        self._warnings_logged = 0
        #: the time a new Firework could take when the worker began (:meth:`available` then): about what a
        #: fresh pilot of this cluster gets; READY work longer than this would not fit a fresh pilot either
        self._usable_at_start = math.inf
        #: the smallest READY walltime last reported as too long for this pilot (logged once per value)
        self._too_long_logged: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.lp: Any = None
        #: runs database calls, retrying connection errors
        self.db = DbRetry(config, self._signals, self._sleep)
        #: the fork server and the Firework children (made in :meth:`run`)
        self.children: ChildPool | None = None
        #: Fireworks whose process died here without a stop request: not pulled again by this worker
        self._crashed: set[int] = set()
        #: the ssh route to the LaunchPad (``--route-ssh``), opened in :meth:`run`
        self.tunnel: Tunnel | None = None
        #: the pilot's heartbeat into its record (``--record``), started once the LaunchPad is open
        self.heartbeat: Heartbeat | None = None

    # ------------------------------------------------------------------ setup
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGCHLD:
            return
        if signum == signal.SIGUSR1 and self.cfg.deadline is not None:
            self._warnings.append(time.time())  # the deadline rules: noted, not a stop (module docstring)
            return
        self._signals.append(signum)

    def _log_warnings(self) -> None:
        """Log the SIGUSR1s that came since the last call (with a deadline they stop nothing)."""
        while self._warnings_logged < len(self._warnings):
            at = self._warnings[self._warnings_logged]
            self._warnings_logged += 1
            ahead = (self.cfg.deadline or at) - at
            LOG.info("SIGUSR1 (pre-walltime signal) %.0f s before the deadline (margin %g s): nothing is stopped, "
                     "the worker goes by its deadline (work that fits until deadline - margin, a running "
                     "Firework until deadline - margin/2)", ahead, self.cfg.margin)

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

    def fworker(self, available: float, free: tuple[int, int] | None = None) -> Any:
        """The FWorker for one pull: our name, categories, the wall-time filter for ``available`` s, and the
        resources: ``free`` (cores, GPUs) a packed pilot has free now, None for the whole pilot (one slot)."""
        from pilot.worker.fworker import PilotFWorker

        clauses: list[dict[str, Any]] = []
        if self.cfg.query:
            # the cluster file's fworker_query (--query), ANDed with ours. No top-level "$or" beside a "$and":
            # FireWorks' FWorker.query would then extend that "$and" list in place, at every read
            clauses.append(dict(self.cfg.query))
        if math.isfinite(available):
            # no duration, a walltime that fits, or a min_walltime that does (a Firework that sizes itself to the
            # deadline, an MD segment with -maxh: the tail): the rule the manager's demand counts with (pilot.fit)
            clauses.append(fits_clause(available))
        cores, gpus = free if free is not None else (self.cfg.cores, self.cfg.gpus)
        clauses.append(resources_clause(cores, gpus, self.cfg.memory_mb, self.cfg.gpu_work_only))
        query: dict[str, Any] = {"$and": clauses}
        if self._crashed:
            # a Firework whose process died in this pilot is left to other pilots (no crash loop here)
            query["fw_id"] = {"$nin": sorted(self._crashed)}
        cats = list(self.cfg.categories)
        return PilotFWorker(name=self.cfg.name, category=cats[0] if len(cats) == 1 else cats, query=query,
                            env=dict(self.cfg.fworker_env or {}), alias=self.cfg.fworker_name)

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

    # ------------------------------------------------------------------ the route
    def _open_route(self) -> int | None:
        """Open the ssh route when there is one: its local port, or None (no route, or a stop signal came
        while it was being opened). It is given the database's retry time, so a login node whose sshd is being
        restarted is waited for as long as the database would be."""
        if self.cfg.route is None:
            return None
        self.tunnel = Tunnel(self.cfg.route, start_timeout=max(self.cfg.db_retry_time, 30.0))
        try:
            return self.tunnel.start(abort=self._stop_requested)
        except TunnelError as exc:
            if self._stop_requested():
                return None
            raise WorkerError(str(exc), EXIT_DB_UNREACHABLE) from exc

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Pull and run Fireworks until idle, deadline or signal; return the exit code."""
        self._install_signals()
        reason = StopReason.SIGNAL
        code, text = EXIT_OK, ""
        try:
            _setup_env(self.cfg)
            self.cfg.launch_dir.mkdir(parents=True, exist_ok=True)
            _prewarm()
            # before the worker's MongoClient exists (no threads, no connection in the fork server)
            self.children = ChildPool(self.cfg, self.fworker, close_in_server=[self._wake_r, self._wake_w])
            # the route's threads start after the fork server exists (it must be forked without threads)
            local_port = self._open_route()
            if local_port is None and self.cfg.route is not None:
                raise StopRequested("opening the route")
            self.lp = load_launchpad(self.cfg, local_port)
            self.children.lp_dict = self.lp.to_dict()
            install_worker_hooks(self.lp)
            _log_start(self.cfg, self.time_left())
            self._usable_at_start = self.available()
            self._start_heartbeat()
            settler = Settler(self.cfg, self.lp, self.db, self._crashed)
            if self.cfg.pack:
                packer = Packer(self, self.children, settler)
                reason = packer.run(CallServer(self.lp, self.children, self._stop_requested, self.db,
                                               bind=packer.bind))
            else:
                calls = CallServer(self.lp, self.children, self._stop_requested, self.db, self._keep_warm)
                reason = self._loop(self.children, calls, settler)
        except WorkerError as exc:
            LOG.error("%s", exc)
            code, text = exc.exit_code, f"error (exit {exc.exit_code})"
        except ForkServerGone as exc:
            LOG.error("%s; the worker stops (the Firework it ran is requeued by the manager's reconcile)", exc)
            code, text = EXIT_INTERNAL, f"{exc}"
        except StopRequested:
            reason = StopReason.SIGNAL
        finally:
            if self.children is not None:
                self.children.close()
        self._log_warnings()
        if code == EXIT_OK:
            text = reason.value
            if reason is StopReason.SIGNAL:
                text += f" ({', '.join(sorted({signal.Signals(s).name for s in self._signals}))})"
        LOG.info("%s", self.summary.line(self.cfg.name, text))
        if self.heartbeat is not None:
            stop = reason.name if code == EXIT_OK else ("INTERNAL" if code == EXIT_INTERNAL else "ERROR")
            self.heartbeat.stop(stop, text, code, self.summary.run)
        if self.tunnel is not None:
            self.tunnel.stop()  # last: closing the children and the exit record may still go through it
        return code

    def _start_heartbeat(self) -> None:
        """Start beating into the pilot's record (``--record``), before any work is taken."""
        if self.cfg.record:
            self.heartbeat = Heartbeat(self.lp.db["pilots"], self.cfg.record, self.cfg.name, self.cfg.heartbeat)
            self.heartbeat.start()

    def _loop(self, children: ChildPool, calls: CallServer, settler: Settler) -> StopReason:
        last_work = time.monotonic()
        backoff = 1.0
        work_hint = False
        failing_since: float | None = None
        while True:
            if children.forkserver.gone:
                raise ForkServerGone(f"the fork server (pid {children.forkserver.pid}) of the worker died")
            if children.exiting:
                children.reap_exiting()
            self._log_warnings()
            if self._stop_requested():
                return StopReason.SIGNAL
            avail = self.available()
            if avail <= 0:
                return StopReason.DEADLINE
            try:
                if self._drained():   # before each pull: the Firework that ran is never interrupted
                    return StopReason.DRAINED
            except StopRequested:
                return StopReason.SIGNAL
            fworker = self.fworker(avail)
            if not work_hint:
                try:
                    has_work = self.db("checking for READY work", self.lp.run_exists, fworker, stoppable=True)
                    if not has_work and self._nothing_fits(avail):
                        return StopReason.NOTHING_FITS
                except StopRequested:
                    return StopReason.SIGNAL
                if not has_work:
                    idle_left = self.cfg.idle_timeout - (time.monotonic() - last_work)
                    if idle_left <= 0:
                        return StopReason.IDLE
                    self._sleep(min(backoff, idle_left, avail))
                    backoff = min(backoff * 1.5, 10.0)
                    continue
            rec = self._run_one(children, calls, settler, fworker)
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

    def _drained(self, quick: bool = False) -> bool:
        """Is the pilot's cluster drained (``pilot drain``: its record says ``drain: true``)? Asked before each
        pull: one read of the record by ``_id``. A worker without a record (``--record``) is never drained.

        ``quick`` (a packed pilot with Fireworks running): one short try, an outage answers "not drained" (the
        next look asks again), as the packed loop's look for work does; otherwise retried through an outage
        (``--db-retry-time``) like every read that looks for work, and a stop signal ends it (StopRequested)."""
        if not self.cfg.record or self.lp is None:
            return False
        pilots = self.lp.db["pilots"]
        query, fields = {"_id": self.cfg.record}, {"drain": 1, "_id": 0}
        if quick:
            import pymongo
            from pymongo.errors import PyMongoError

            try:
                with pymongo.timeout(2.0):
                    doc = pilots.find_one(query, fields)
            except PyMongoError:
                return False
        else:
            doc = self.db("checking whether the cluster is drained", pilots.find_one, query, fields, stoppable=True)
        if doc is not None and doc.get("drain") is True:
            LOG.info("the cluster is drained (pilot drain; record %s): no new Firework, the worker leaves",
                     self.cfg.record)
            return True
        return False

    def _nothing_fits(self, avail: float) -> bool:
        """True when READY work of this worker is there but none fits the ``avail`` seconds left, and a fresh
        pilot would take it: the worker should leave at once, the manager submits a fresh pilot for that work
        (waiting ``--idle-timeout`` would only hold the allocation). Asked when the pull query found nothing:
        one more query, the same without its wall-time clause, for the smallest READY walltime.

        READY work longer than the usable time this pilot had at its start would not fit a fresh pilot either
        (nor is it the manager's demand): then the worker waits for work as before (the idle timeout), and
        says once why that work is not taken."""
        if not math.isfinite(avail):
            return False
        smallest = self._smallest_need()
        if smallest is None:
            return False  # none, work that fits came in between, or a walltime no pilot can match
        if smallest <= avail:
            return False  # work that fits became READY after the pull: take it on the next round
        if smallest <= self._usable_at_start:
            LOG.info("READY work needs at least %g s (smallest spec._pilot.walltime or min_walltime), %.0f s usable "
                     "left (time left - margin %g s): leaving now for a fresh pilot", smallest, avail, self.cfg.margin)
            return True
        if smallest != self._too_long_logged:
            self._too_long_logged = smallest
            LOG.info("READY work needs at least %g s (smallest spec._pilot.walltime or min_walltime), more than "
                     "this pilot had at its start (%.0f s usable): a fresh pilot would not take it either; waiting "
                     "for work that fits (a longer pilot walltime would take it)", smallest, self._usable_at_start)
        return False

    def _smallest_need(self) -> float | None:
        """The fewest seconds any READY Firework of this worker needs: the smallest ``spec._pilot.walltime``,
        or ``min_walltime`` where a Firework gives one (it sizes itself to the time it gets); None when there
        is none or no number (a walltime no pilot can match). One query per field, sorted on it."""
        query = {**self.fworker(math.inf).query, "state": "READY"}
        needs = []
        for field in ("walltime", "min_walltime"):
            key = f"spec._pilot.{field}"
            doc = self.db("looking for READY work too long for the time left", self.lp.fireworks.find_one,
                          {**query, key: {"$gte": 0}}, {key: 1, "_id": 0}, sort=[(key, 1)], stoppable=True)
            pilot = ((doc or {}).get("spec") or {}).get("_pilot")
            value = pilot.get(field) if isinstance(pilot, dict) else None
            if (secs := number(value)) is not None:  # a number as the pull query compares it (pilot.fit)
                needs.append(secs)
        return min(needs) if needs else None

    # ------------------------------------------------------------------ one Firework
    def _run_one(self, children: ChildPool, calls: CallServer, settler: Settler, fworker: Any) -> LaunchRecord:
        """Run (at most) one Firework in a child process and settle its outcome."""
        while True:
            child = children.fork()  # the warm one, or the one forked while the previous Firework ran
            child.fworker = fworker
            try:
                self._supervise(children, calls, child)
                calls.flush(child)  # pings the child sent last (a completion takes them along: then none)
            finally:
                self.lp._pilot_child = None
            if not child.declined():
                break
            children.close_fds(child)  # a warm child that would not take another Firework: the next child does
        if child.keep and child.status is None and not child.eof and not self._stop_requested():
            children.keep_warm(child)  # told so with its completion (else it exits after its Rocket)
        else:
            children.close_fds(child)
            if child.status is None:  # the Firework is final, the process is still exiting
                children.exiting.append(child)
        children.reap_exiting()
        record = settler.settle(child)
        # FireWorks keeps a backup of every launch it checks out (for restore_backup_data); a worker runs many
        if child.launch_id is not None:
            self.lp.backup_launch_data.pop(child.launch_id, None)
        return record

    def _keep_warm(self, child: ChildState) -> bool:
        """Does the process of ``child``, whose launch was just completed, take the next Firework? Asked when the
        completion is answered, which tells the child (:mod:`pilot.worker.reuse`)."""
        if (self.cfg.fresh_process or child.status is not None or child.eof or child.stop_sent_at is not None
                or child.killed or not firework_final(child) or self._stop_requested()):
            return False
        ran = time.monotonic() - child.started_mono if child.started_mono is not None else math.inf
        return worker_keeps(child.end_state == "COMPLETED", ran, child.runs + 1)

    def _next_stop_trigger(self) -> float | None:
        """Seconds until the deadline trigger (``deadline - margin/2``), or None without a deadline."""
        stop_at = self.cfg.stop_at
        return None if stop_at is None else stop_at - time.time()

    def _begin_stop(self, child: ChildState, grace: float, why: str) -> None:
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
            killpg(child.pid, signal.SIGTERM)
            child.kill_at = kill_at
        elif child.kill_at is None or kill_at < child.kill_at:
            child.kill_at = kill_at
            LOG.info("%s: grace shortened to %.1f s", why, grace)

    def _handle_signals(self, child: ChildState, handled: int) -> int:
        """React to the stop signals from ``handled`` on; returns how many are handled now."""
        while handled < len(self._signals):
            sig = self._signals[handled]
            handled += 1
            if sig == signal.SIGUSR1:  # only without a deadline (:meth:`_on_signal`)
                self._begin_stop(child, self.cfg.grace, "SIGUSR1 (pre-walltime signal)")
            else:
                name = signal.Signals(sig).name
                if child.stop_sent_at is not None and child.stop_why.startswith(name):
                    self._begin_stop(child, 0.0, f"second {name}")
                else:
                    self._begin_stop(child, min(self.cfg.grace, self.cfg.term_grace), name)
        return handled

    def _supervise(self, children: ChildPool, calls: CallServer, child: ChildState) -> None:
        """Serve the child's LaunchPad calls and wait for it, reacting to signals and the deadline."""
        forkserver = children.forkserver
        handled = 0
        while True:
            children.take_status(child)
            if child.status is None and forkserver.gone:
                self._child_without_fork_server(forkserver.pid, child)
            if child.status is not None or child.status_lost:
                # The child is gone; a process it left may still hold the pipe: take what is there and stop.
                if not child.eof and select.select([child.call_fd], [], [], 0)[0]:
                    calls.read_calls(child)
                    continue
                return
            if firework_final(child):
                # FireWorks has completed the launch and refreshed the workflow; the child only has to exit,
                # which the worker reaps in the background while the next Firework starts.
                return
            handled = self._handle_signals(child, handled)  # stop requests
            self._log_warnings()
            trigger = self._next_stop_trigger()
            if trigger is not None and trigger <= 0 and child.stop_sent_at is None:
                self._begin_stop(child, self.cfg.grace, "deadline - margin/2 reached")
            now = time.monotonic()
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                LOG.warning("fw %s: still running after the grace period -> SIGKILL to process group %d",
                            child.fw_id, child.pid)
                killpg(child.pid, signal.SIGKILL)
                child.killed = True
            timeouts = [t for t in (trigger if child.stop_sent_at is None else None,
                                    None if child.kill_at is None or child.killed else child.kill_at - now,
                                    calls.flush_due(child))
                        if t is not None]
            timeout = max(min(timeouts), 0.0) if timeouts else None
            fds: list[int | socket.socket] = [self._wake_r, forkserver.sock]
            if not child.eof:
                fds.append(child.call_fd)
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in ready:
                self._drain_wakeups()
            if child.call_fd in ready:
                calls.read_calls(child)
            if forkserver.sock in ready:
                forkserver.poll()

    @staticmethod
    def _child_without_fork_server(forkserver_pid: int, child: ChildState) -> None:
        """The fork server died (it reaps the children): end the child, so that its Firework can be settled."""
        LOG.error("the fork server (pid %d) died while fw child %d ran: killing the child", forkserver_pid,
                  child.pid)
        killpg(child.pid, signal.SIGKILL)
        limit = time.monotonic() + 5.0
        while time.monotonic() < limit:
            try:
                os.kill(child.pid, 0)  # an orphaned zombie is reaped by init soon
            except ProcessLookupError:
                break
            time.sleep(0.05)
        child.status_lost = True
        child.killed = True
