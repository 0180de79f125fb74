"""The replay benchmark's campaign: simulated pilots on simulated SLURM clusters, a virtual clock, and the real
manager cycling in its own process (:mod:`benchmarks.replay_child`), all against one real LaunchPad.

A pilot here does, against the database, what ``pilot worker`` does (:class:`pilot.worker.supervisor.Worker`),
with the worker's own code where it can be called without starting a worker:

* the pull query is the worker's: :meth:`Worker.fworker` for the time left minus the margin (only segments
  whose ``spec._pilot.walltime`` fits), :meth:`Worker._nothing_fits` to leave when READY work exists but none
  fits, FireWorks' ``LaunchPad.run_exists`` / ``checkout_fw`` / ``complete_launch`` as the Rocket calls them;
* the loop is the worker's ``_loop``: after a Firework it pulls again at once, with no work it polls with the
  worker's back-off (1 s, x1.5, at most 10 s) until ``--idle-timeout``, and it leaves at deadline - margin;
* its heartbeat is :class:`pilot.worker.heartbeat.Heartbeat` (first beat and exit record written by that
  class, with its module's ``time`` pointed at the virtual clock); the beats in between are written for all
  live pilots at once before each manager cycle (one ``update_many``: the manager reads them only then);
* the segments are the real MD workflow (:func:`tasks.workflow.make_md_workflow`, GROMACS segment tasks with
  their ``_pilot`` wall times) and each segment does what :class:`tasks.segment.MDSegmentTask` decides: it
  runs for its time limit (:func:`tasks.segment.time_limit_s`: the segment length, or less when the pilot's
  deadline and stop time come first; not at all below ``min_segment_s``) or until its run reaches its target,
  then returns its :class:`~tasks.segment.SegmentResult` in ``stored_data`` and ``update_spec`` and the next
  segment from :func:`tasks.chain.next_additions`.

What is simulated: the engine (a run progresses one second of work per second, one MD step per second, with a
checkpoint every ``checkpoint_s`` as GROMACS' ``-cpt``), the queue waits and slots of each cluster, node
failures, and the end of a job at its time limit. A segment still running when its job ends (node failure,
time limit, scancel) is *killed*: nothing after its last checkpoint is kept (redone work), and its Firework
stays RUNNING with its launch until the manager's real liveness rule and rerun put it back to READY; the next
attempt resumes from the checkpoint. (A segment sizes itself to end before its pilot's stop time, so the time
limit kills nothing unless the engine overruns; node failures do.)
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from benchmarks.replay_slurm import Job, SimSlurm

#: event kinds, in the order they are handled at the same virtual time
PRIORITY = {"seg_end": 0, "kill": 1, "start": 2, "step": 3, "cycle": 4}


@dataclass(frozen=True)
class Workload:
    """The campaign: ``runs`` MD runs of ``segments`` x ``segment_s`` seconds of work each (``target_s``).

    A segment runs ``segment_hours`` (GROMACS ``-maxh``) or less when its pilot's deadline comes first
    (:func:`tasks.segment.time_limit_s`), so a run takes ``segments`` Fireworks or more; the work is the same.
    """

    runs: int
    segments: int
    segment_s: float
    slack_s: float = 300.0
    checkpoint_s: float = 900.0     # GROMACS -cpt 15 (minutes): what a killed segment keeps
    seed: int = 18

    @property
    def target_s(self) -> float:
        return self.segments * self.segment_s


@dataclass
class Attempt:
    """One segment running in a pilot."""

    run: int
    seg: int
    fw_id: int
    launch_id: int
    task: Any
    start: float
    p0: float          # the run's progress (s of work) restored from its checkpoint
    need: float        # seconds this attempt runs (its time limit, or the rest of the run)
    limit: float       # the segment's time limit (tasks.segment.time_limit_s)
    no_time: bool      # less than min_segment_s left: the engine is not started


@dataclass
class Pilot:
    """A started pilot job: the worker's state between two of its steps."""

    cluster: str
    job: Job
    worker: Any
    heartbeat: Any
    deadline: float
    kill_at: float
    kill_cause: str
    last_work: float
    backoff: float = 1.0
    work_hint: bool = False
    alive: bool = True
    attempt: Attempt | None = None
    fireworks: int = 0
    busy: float = 0.0


@dataclass
class Tally:
    """What the campaign counts itself (the benchmark's own records, not the code under test)."""

    completions: list[tuple[int, int, float]] = field(default_factory=list)
    runs_done: int = 0
    cut_by_deadline: int = 0
    no_time: int = 0
    attempts: int = 0
    killed: int = 0
    killed_by: dict[str, int] = field(default_factory=dict)
    redone_s: float = 0.0
    busy_s: float = 0.0
    #: useful work done per cluster, seconds (completed segments, and what a killed one had checkpointed)
    useful_by_cluster: dict[str, float] = field(default_factory=dict)
    out_of_order: int = 0
    pilot_rows: list[dict[str, Any]] = field(default_factory=list)
    exits: dict[str, int] = field(default_factory=dict)
    db_s: float = 0.0


class _VirtualTime:
    """Stands in for the ``time`` module inside one module: ``time()`` is the virtual clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextmanager
def virtual_time(module: Any, clock: Callable[[], float]) -> Iterator[None]:
    """Point ``module.time`` at the virtual clock for the duration (this process only; restored after)."""
    real = module.time
    module.time = _VirtualTime(clock)
    try:
        yield
    finally:
        module.time = real


def _direct(_what: str, fn: Callable[..., Any], *args: Any, stoppable: bool = False, **kwargs: Any) -> Any:
    """The worker's ``DbRetry`` without retries (the database here does not go away)."""
    del stoppable
    return fn(*args, **kwargs)


class Campaign:
    """The event loop: segments, pilots, jobs and manager cycles on one virtual clock (module docstring)."""

    def __init__(self, lp: Any, clusters: dict[str, SimSlurm], work: Workload, cycle: Callable[[float], dict],
                 poll: float, t0: float, log: Callable[[str], None] = print, max_days: float = 3650.0,
                 stall_days: float = 7.0) -> None:
        self.lp, self.clusters, self.work, self.cycle_fn, self.poll = lp, clusters, work, cycle, poll
        self.t0 = self.now = float(t0)
        self.log = log
        self.end_by = t0 + max_days * 86400.0
        #: stop when no segment completed for this long (lost work never rerun, no pilot for READY work)
        self.stall_s = stall_days * 86400.0
        self.stalled = False
        #: run -> [the segment expected next, progress in seconds of work]: the run's checkpoint
        self.ckpt: dict[int, list[float]] = {r: [1, 0.0] for r in range(work.runs)}
        self.heap: list[tuple[float, int, int, str, tuple[Any, ...]]] = []
        self.seq = itertools.count()
        #: the pilots whose job runs, by (cluster, job id)
        self.alive: dict[tuple[str, int], Pilot] = {}
        #: per cluster, the time of the start event already waiting (one per queue wait that ends)
        self.next_start: dict[str, float] = {}
        self.tally = Tally()
        self.cycles: list[dict[str, Any]] = []
        self.done_at: float | None = None
        self._last_progress = self._started = time.monotonic()
        #: one sample per progress line: where the real time went as the database grew
        self.samples: list[dict[str, float]] = []

    # ------------------------------------------------------------------ the loop
    def push(self, t: float, kind: str, *data: Any) -> None:
        heapq.heappush(self.heap, (t, PRIORITY[kind], next(self.seq), kind, data))

    def clock(self) -> float:
        return self.now

    def run(self) -> None:
        """Until every segment is done and every job has ended (then one more manager cycle), or ``max_days``."""
        from pilot.worker import heartbeat

        self.push(self.t0, "cycle")
        with virtual_time(heartbeat, self.clock):
            while self.heap:
                t, _, _, kind, data = heapq.heappop(self.heap)
                if t > self.end_by:
                    self.log(f"replay: stopped at the {self.end_by - self.t0:.0f} s limit of virtual time")
                    break
                self.now = max(self.now, t)
                getattr(self, f"_on_{kind}")(*data)
                if kind == "cycle" and self.finished():
                    break
                last = self.tally.completions[-1][2] if self.tally.completions else self.t0
                if self.done_at is None and self.now - last > self.stall_s:
                    self.stalled = True
                    self.log(f"replay: stalled: no segment completed for {self.stall_s / 86400:g} virtual days")
                    break
                self._progress()

    def finished(self) -> bool:
        return self.done_at is not None and not any(c.live for c in self.clusters.values())

    def _progress(self) -> None:
        if time.monotonic() - self._last_progress < 5.0:
            return
        self._last_progress = time.monotonic()
        live = sum(c.running() for c in self.clusters.values())
        self.samples.append({"wall_s": round(self._last_progress - self._started, 1),
                             "virtual_day": round((self.now - self.t0) / 86400, 2),
                             "segments": len(self.tally.completions), "cycles": len(self.cycles),
                             "pilots_db_s": round(self.tally.db_s, 2),
                             "manager_cycle_wall_s": round(sum(c["wall_s"] for c in self.cycles), 2)})
        self.log(f"replay: virtual day {(self.now - self.t0) / 86400:.1f}: {len(self.tally.completions):,} "
                 f"segments done, {self.tally.runs_done} of {self.work.runs} runs finished, {live} pilots running, "
                 f"{len(self.cycles):,} manager cycles")

    # ------------------------------------------------------------------ the manager
    def _on_cycle(self) -> None:
        live = [p.job.info.name for p in self.alive.values()]
        if live:
            self._db(self.lp.db["pilots"].update_many, {"_id": {"$in": live}}, {"$set": {"heartbeat": self.now}})
        self.cycles.append(self.cycle_fn(self.now))
        for name, c in self.clusters.items():
            while c.cancelled:
                job = c.jobs[c.cancelled.pop()]
                pilot = self.alive.get((name, job.id))
                if pilot is not None and pilot.alive:
                    self._kill(pilot, "CANCELLED")
                elif job.state == "PENDING":
                    c.end(job, int(self.now), "CANCELLED", exit_file=False)
        for name in self.clusters:
            self._start_jobs(name)
        if not self.finished():
            self.push(self.now + self.poll, "cycle")

    def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.tally.db_s += time.perf_counter() - t

    # ------------------------------------------------------------------ the scheduler
    def _start_jobs(self, cluster: str) -> None:
        """Start what may start now; the next queue wait to end gets an event of its own."""
        c = self.clusters[cluster]
        for job in c.startable(self.now):
            if c.running() >= c.spec.capacity:
                break
            self._start_pilot(cluster, job)
        later = [j.eligible for j in c.pending() if j.eligible > self.now]
        if later and self.next_start.get(cluster) != min(later):
            self.next_start[cluster] = min(later)
            self.push(float(min(later)), "start", cluster)

    def _on_start(self, cluster: str) -> None:
        if self.next_start.get(cluster) == self.now:
            del self.next_start[cluster]
        self._start_jobs(cluster)

    def _start_pilot(self, cluster: str, job: Job) -> None:
        from pilot.worker.heartbeat import Heartbeat
        from pilot.worker.model import WorkerConfig
        from pilot.worker.supervisor import Worker

        c = self.clusters[cluster]
        job.state, job.start = "RUNNING", int(self.now)
        deadline = float(job.start + job.info.limit)
        kill_at, cause = deadline, "TIMEOUT"
        if c.spec.node_mtbf_h:
            fails = job.start + c.rng.expovariate(1.0 / (c.spec.node_mtbf_h * 3600.0))
            if fails < deadline:
                kill_at, cause = fails, "NODE_FAIL"
        name = f"{cluster}-{job.id}"
        worker = Worker.__new__(Worker)   # its methods only, not a worker process (no __init__: no pipes)
        worker.cfg = WorkerConfig(launchpad_file=Path("/sim/my_launchpad.yaml"), categories=(job.info.category,),
                                  name=name, deadline=deadline, margin=job.info.margin,
                                  idle_timeout=job.info.idle_timeout, record=job.info.name,
                                  heartbeat=job.info.heartbeat)
        worker.lp, worker.db, worker._crashed, worker._too_long_logged = self.lp, cast(Any, _direct), set(), None
        worker._usable_at_start = deadline - self.now - job.info.margin
        hb = Heartbeat(self.lp.db["pilots"], job.info.name, name, job.info.heartbeat)
        self._db(hb._first)
        pilot = Pilot(cluster=cluster, job=job, worker=worker, heartbeat=hb, deadline=deadline,
                      kill_at=kill_at, kill_cause=cause, last_work=self.now)
        self.alive[(cluster, job.id)] = pilot
        self.push(kill_at, "kill", pilot)
        self._step(pilot)

    def _end_job(self, pilot: Pilot, state: str, exit_file: bool) -> None:
        pilot.alive = False
        self.alive.pop((pilot.cluster, pilot.job.id), None)
        c = self.clusters[pilot.cluster]
        c.end(pilot.job, int(math.ceil(self.now)), state, exit_file=exit_file)
        j = pilot.job
        self.tally.pilot_rows.append({"cluster": pilot.cluster, "job": j.id, "state": state, "submit": j.submit,
                                      "start": j.start, "end": j.end, "busy": pilot.busy,
                                      "fireworks": pilot.fireworks})
        self.push(float(math.ceil(self.now)), "start", pilot.cluster)

    # ------------------------------------------------------------------ the worker
    def _step(self, p: Pilot) -> None:
        """One round of the worker's loop (``Worker._loop``) at the current virtual time."""
        avail = p.deadline - self.now - p.worker.cfg.margin
        if avail <= 0:
            return self._leave(p, "DEADLINE", "deadline reached (time left minus margin <= 0)")
        fworker = p.worker.fworker(avail)
        if not p.work_hint:
            if not self._db(self.lp.run_exists, fworker):
                if self._db(p.worker._nothing_fits, avail):
                    return self._leave(p, "NOTHING_FITS", "READY work, but none fits the time left")
                idle_left = p.worker.cfg.idle_timeout - (self.now - p.last_work)
                if idle_left <= 0:
                    return self._leave(p, "IDLE", "no matching work for the idle timeout")
                self.push(self.now + min(p.backoff, idle_left, avail), "step", p)
                p.backoff = min(p.backoff * 1.5, 10.0)
                return None
        fw, launch_id = self._db(self.lp.checkout_fw, fworker, f"/sim/{p.cluster}/{p.job.id}",
                                 host=f"{p.cluster}-node", ip="203.0.113.200")
        if fw is None:   # nothing after all: look again (with the READY check) at once
            p.work_hint = False
            return self._step(p)
        self._begin(p, fw, int(launch_id))
        return None

    def _begin(self, p: Pilot, fw: Any, launch_id: int) -> None:
        """A segment starts: its time limit as the MD task computes it from the pilot's deadline and stop time
        (``PILOT_DEADLINE``, ``PILOT_STOP_AT``), and from the run's checkpoint what is left to do."""
        from tasks.contract import DEFAULT_DEADLINE_MARGIN_S, DEFAULT_MIN_SEGMENT_S, STOP_AT_MARGIN_S
        from tasks.segment import time_limit_s

        task = fw.tasks[0]
        run, seg = int(str(fw.name).split("-")[0].removeprefix("run")), int(task["segment"])
        at_seg, p0 = self.ckpt[run]
        if seg != at_seg:
            self.tally.out_of_order += 1
        limit = time_limit_s(task.segment_seconds, now=self.now, deadline=p.deadline,
                             margin_s=float(task.get("deadline_margin_s", DEFAULT_DEADLINE_MARGIN_S)),
                             stop_at=p.worker.cfg.stop_at, stop_margin_s=float(task.get("stop_margin_s",
                                                                                        STOP_AT_MARGIN_S)))
        no_time = limit < min(float(task.get("min_segment_s", DEFAULT_MIN_SEGMENT_S)), task.segment_seconds)
        need = 0.0 if no_time else max(0.0, min(limit, self.work.target_s - p0))
        p.attempt = Attempt(run=run, seg=seg, fw_id=fw.fw_id, launch_id=launch_id, task=task, start=self.now,
                            p0=p0, need=need, limit=limit, no_time=no_time)
        self.tally.attempts += 1
        if self.now + need <= p.kill_at:
            self.push(self.now + need, "seg_end", p, p.attempt)

    def _on_step(self, p: Pilot) -> None:
        if p.alive and p.attempt is None:
            self._step(p)

    def _on_seg_end(self, p: Pilot, a: Attempt) -> None:
        if not p.alive or p.attempt is not a:
            return
        from fireworks import FWAction

        from tasks.chain import next_additions
        from tasks.contract import RESULT_SPEC_KEY

        progress = a.p0 + a.need
        finished = progress >= self.work.target_s - 1e-6
        result = _segment_result(a, progress, self.work.target_s, finished, self.now)
        action = FWAction(stored_data=result, update_spec={RESULT_SPEC_KEY: result},
                          additions=next_additions(a.task, result))
        self._db(self.lp.complete_launch, a.launch_id, action, "COMPLETED")
        self.ckpt[a.run] = [a.seg + 1, progress]
        self.tally.completions.append((a.run, a.seg, self.now))
        self.tally.no_time += a.no_time
        self.tally.cut_by_deadline += (not a.no_time and not finished and a.limit < a.task.segment_seconds)
        if finished:
            self.tally.runs_done += 1
            if self.tally.runs_done == self.work.runs:
                self.done_at = self.now
        p.busy += a.need
        self.tally.busy_s += a.need
        self.tally.useful_by_cluster[p.cluster] = self.tally.useful_by_cluster.get(p.cluster, 0.0) + a.need
        p.fireworks += 1
        p.attempt, p.work_hint, p.backoff, p.last_work = None, True, 1.0, self.now
        self._step(p)

    def _leave(self, p: Pilot, stop: str, reason: str) -> None:
        """The worker stops normally: its exit record (Heartbeat), then the batch script exits 0."""
        self._db(p.heartbeat._write_exit, {"stop": stop, "reason": reason, "code": 0, "fireworks": p.fireworks})
        self.tally.exits[stop] = self.tally.exits.get(stop, 0) + 1
        self._end_job(p, "COMPLETED", exit_file=True)

    def _on_kill(self, p: Pilot) -> None:
        if p.alive:
            self._kill(p, p.kill_cause)

    def _kill(self, p: Pilot, cause: str) -> None:
        """The job ends under the worker (time limit, node failure, scancel): the running segment keeps only
        what its last checkpoint saved, its Firework stays RUNNING, and the heartbeat stops."""
        a = p.attempt
        if a is not None:
            ran = self.now - a.start
            kept = math.floor(ran / self.work.checkpoint_s) * self.work.checkpoint_s
            self.ckpt[a.run] = [a.seg, a.p0 + kept]
            self.tally.killed += 1
            self.tally.killed_by[cause] = self.tally.killed_by.get(cause, 0) + 1
            self.tally.redone_s += ran - kept
            self.tally.useful_by_cluster[p.cluster] = self.tally.useful_by_cluster.get(p.cluster, 0.0) + kept
            self.tally.busy_s += ran
            p.busy += ran
            p.attempt = None
        start = float(p.job.start or self.now)
        interval = p.heartbeat.interval
        last_beat = start + math.floor((self.now - start) / interval) * interval
        self._db(self.lp.db["pilots"].update_one, {"_id": p.job.info.name}, {"$set": {"heartbeat": last_beat}})
        self._end_job(p, cause, exit_file=False)


def _segment_result(a: Attempt, progress: float, target: float, finished: bool, now: float) -> dict[str, Any]:
    """What :class:`tasks.segment.MDSegmentTask` stores for a segment (:class:`tasks.segment.SegmentResult`):
    one MD step per second of work."""
    from tasks.contract import Outcome, StopReason
    from tasks.segment import SegmentResult

    reason = (StopReason.COMPLETED if finished else StopReason.NO_TIME if a.no_time else StopReason.TIME_LIMIT)
    return SegmentResult(
        engine="gromacs", name="md", run_dir=str(a.task["run_dir"]), segment=a.seg,
        outcome=(Outcome.FINISHED if finished else Outcome.CONTINUE).value, stop_reason=reason.value,
        start_step=int(a.p0), checkpoint_step=int(progress), target_step=int(target),
        steps_done=int(progress) - int(a.p0), dt_ps=0.002, wall_time_s=now - a.start, ns_per_day=None,
        time_limit_s=round(a.limit, 3), returncode=None if a.no_time else 0, sigterm=False, host="sim").to_dict()
