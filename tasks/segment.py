"""Engine-neutral logic of one MD segment: time limit, SIGTERM, decide from the checkpoint, continue.

A long MD run is cut into segments of a few hours. Each segment is one Firework that runs the engine
(``gmx mdrun -cpi -maxh``, or an OpenMM integration loop) in the run directory until its time limit, the
pilot's deadline or a SIGTERM, and then decides **from the checkpoint** (never from the return code):

- ``FINISHED``: the checkpoint's step reached the target (``init-step + nsteps`` of the .tpr actually used,
  or OpenMM's ``nsteps``): add the final workflow, if any;
- ``CONTINUE``: the step advanced (or the segment was stopped by SIGTERM / had no time to run): add the
  next segment, the same chain of Fireworks;
- ``FAILED``: the engine reported a fatal error, or the step did not advance: raise
  :class:`SegmentError`, so the Firework FIZZLES with the engine's own error text and a broken input never
  loops.

The engine modules (:mod:`tasks.gromacs`, :mod:`tasks.openmm`) implement only :meth:`MDSegmentTask.prepare`
(read the checkpoint step and the target) and :meth:`MDSegmentTask.run_engine` (run until the limit).
This module never imports the pilot manager: it learns the pilot's deadline from ``PILOT_DEADLINE``
(epoch seconds) in the environment. What comes after a segment (the next segment's Fireworks, or the
final workflow) is built by :mod:`tasks.chain`; the names shared with the worker and with stored workflows
(spec keys, environment variables, outcomes) live in :mod:`tasks.contract` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fireworks import FiretaskBase, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize

from tasks.chain import next_additions
from tasks.contract import (
    COMMON_PARAMS,
    DEADLINE_ENV,
    DEFAULT_DEADLINE_MARGIN_S,
    DEFAULT_MIN_SEGMENT_S,
    DEFAULT_SEGMENT_HOURS,
    RESULT_SPEC_KEY,
    STOP_AT_ENV,
    STOP_AT_MARGIN_S,
    Outcome,
    StopReason,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What an engine knows before it runs: where the run stands and where it must end.

    Attributes
    ----------
    checkpoint_step
        Step stored in the checkpoint now, ``None`` when there is no checkpoint (fresh start).
    initial_step
        Step a fresh start begins at (GROMACS ``init-step``, OpenMM 0).
    target_step
        Step at which the run is complete, ``None`` for an open-ended run (GROMACS ``nsteps = -1``).
    dt_ps
        Time step in ps (for ns/day), when known.
    """

    checkpoint_step: int | None
    initial_step: int
    target_step: int | None
    dt_ps: float | None = None


@dataclass
class EngineRun:
    """What one engine invocation reported.

    Attributes
    ----------
    checkpoint_step
        Step in the checkpoint after the run (``None``: no checkpoint on disk).
    returncode
        Exit status of the engine process (``None`` for an in-process engine).
    fatal_error
        The engine's own error text (GROMACS "Fatal error" block, OpenMM exception), or ``None``.
    stop_hint
        The engine's view of why it stopped (time limit, SIGTERM, completed), if it said.
    ns_per_day
        Performance reported by the engine (or measured), if known.
    command
        The command line that was run (for error messages).
    output_tail, log_tail
        Last lines of the engine's output and log (for error messages).
    """

    checkpoint_step: int | None
    returncode: int | None = None
    fatal_error: str | None = None
    stop_hint: StopReason | None = None
    ns_per_day: float | None = None
    command: list[str] | None = None
    output_tail: str = ""
    log_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The pure decision of :func:`decide`."""

    outcome: Outcome
    reason: StopReason
    why: str


@dataclass
class SegmentResult:
    """What a segment records in its Firework's ``stored_data`` and passes on in ``update_spec``.

    ``steps_done`` (checkpoint step after minus before, or minus the initial step on a fresh start) and
    ``dt_ps`` (the engine's time step: the .tpr's ``dt`` for GROMACS, the integrator's ``stepSize`` for
    OpenMM) give the trajectory the segment added, exactly: ``steps_done * dt_ps / 1000`` ns; ``pilot report``
    sums it per cluster and day (:mod:`pilot.report.trajectory`). ``dt_ps`` is ``None`` when the engine's
    input did not say; records written before it existed have no ``dt_ps`` at all (unknown, not zero).
    """

    engine: str
    name: str
    run_dir: str
    segment: int
    outcome: str
    stop_reason: str
    start_step: int | None
    checkpoint_step: int | None
    target_step: int | None
    steps_done: int
    wall_time_s: float
    ns_per_day: float | None
    time_limit_s: float | None
    returncode: int | None
    sigterm: bool
    host: str
    dt_ps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SegmentError(RuntimeError):
    """A segment failed: the Firework FIZZLES with this message (and :meth:`to_dict` as details).

    The message says what failed, where, the command, the engine's own error text and the tail of its
    log, and what to try.
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """Structured details; FireWorks stores them under ``_exception._details`` of the launch."""
        return {"message": str(self), **self.details}


# --------------------------------------------------------------------------------------------- pure parts
def decide(*, before: int | None, after: int | None, initial_step: int, target: int | None,
           fatal_error: str | None, sigterm: bool, stop_hint: StopReason | None = None) -> Decision:
    """Decide a segment's outcome from its checkpoint steps (pure function).

    Parameters
    ----------
    before, after
        Checkpoint step before and after the engine ran (``None``: no checkpoint).
    initial_step
        Step of a fresh start (progress is measured from it when there was no checkpoint before).
    target
        Step at which the run is complete (``None``: open-ended, never finished).
    fatal_error
        The engine's own error text, if it reported one.
    sigterm
        Whether a SIGTERM reached the task while the engine ran.
    stop_hint
        The engine's stated reason for stopping, recorded when the run continues.

    Returns
    -------
    Decision
        ``FAILED`` on a fatal error, a missing or regressed checkpoint, or no progress (unless stopped by
        SIGTERM, which is not the input's fault); ``FINISHED`` when ``after >= target``; else ``CONTINUE``.
    """
    if fatal_error:
        return Decision(Outcome.FAILED, StopReason.FATAL_ERROR, "the engine reported a fatal error")
    if after is None:
        if sigterm:
            return Decision(Outcome.CONTINUE, StopReason.SIGTERM,
                            "stopped by SIGTERM before the first checkpoint; the next segment starts again")
        return Decision(Outcome.FAILED, StopReason.NO_PROGRESS, "the engine wrote no checkpoint")
    if before is not None and after < before:
        return Decision(Outcome.FAILED, StopReason.NO_PROGRESS,
                        f"the checkpoint went back from step {before} to {after}")
    if target is not None and after >= target:
        return Decision(Outcome.FINISHED, StopReason.COMPLETED, f"checkpoint step {after} >= target {target}")
    baseline = before if before is not None else initial_step
    if after > baseline:
        reason = StopReason.SIGTERM if sigterm else (stop_hint or StopReason.TIME_LIMIT)
        if reason is StopReason.COMPLETED:  # the engine thought so, the checkpoint says otherwise
            reason = StopReason.ENGINE_EXIT
        return Decision(Outcome.CONTINUE, reason, f"step advanced {baseline} -> {after}")
    if sigterm:
        return Decision(Outcome.CONTINUE, StopReason.SIGTERM, f"stopped by SIGTERM at step {after} (no progress)")
    return Decision(Outcome.FAILED, StopReason.NO_PROGRESS, f"the step did not advance (still {after})")


def read_deadline(environ: dict[str, str] | None = None, var: str = DEADLINE_ENV) -> float | None:
    """The pilot's deadline from ``PILOT_DEADLINE`` (epoch seconds; or another ``var`` such as
    ``PILOT_STOP_AT``), or ``None`` outside a pilot.

    An unparsable value is logged and ignored (the segment then uses its own length).
    """
    env = os.environ if environ is None else environ
    raw = env.get(var, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of epoch seconds (the pilot worker should set it)", var, raw)
        return None
    if not math.isfinite(value):
        log.warning("ignoring %s=%r: not finite", var, raw)
        return None
    return value


def time_limit_s(segment_s: float, *, now: float, deadline: float | None, margin_s: float,
                 stop_at: float | None = None, stop_margin_s: float = STOP_AT_MARGIN_S) -> float:
    """Seconds this segment may run (may be <= 0)::

        min(segment length, deadline - now - margin, stop_at - now - stop_margin)

    ``deadline`` is the pilot job's end (``PILOT_DEADLINE``), ``stop_at`` the moment the pilot worker will
    send SIGTERM (``PILOT_STOP_AT``); either may be ``None``.
    """
    limit = float(segment_s)
    if deadline is not None:
        limit = min(limit, deadline - now - margin_s)
    if stop_at is not None:
        limit = min(limit, stop_at - now - stop_margin_s)
    return limit


def tail_lines(text: str, n: int = 30) -> str:
    """The last ``n`` lines of ``text``."""
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def tail_file(path: Path, n: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last ``n`` lines of a text file (reads at most ``max_bytes`` from its end); '' if missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return tail_lines(data.decode("utf-8", "replace").replace("\r", "\n"), n)


# --------------------------------------------------------------------------------------------- SIGTERM
class StopFlag:
    """Set by the SIGTERM handler while a segment runs."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.received_at: float | None = None

    def set(self) -> None:
        if self.received_at is None:
            self.received_at = time.time()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def sigterm_flag() -> Iterator[StopFlag]:
    """Catch SIGTERM while the engine runs: set a flag instead of dying, restore the old handler after.

    The pilot worker sends one SIGTERM to the whole process group of the Firework, so the engine
    process (same group) gets it directly: GROMACS checkpoints and stops within ``nstlist`` steps. The
    handler does **not** forward it (two make mdrun stop sooner, three abort it). An in-process engine
    (OpenMM) checks the flag between chunks. Outside the main thread no handler can be installed; the
    flag then simply never gets set (a warning is logged).
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        log.warning("not in the main thread: cannot catch SIGTERM; a SIGTERM will end this process")
        yield flag
        return

    def _handler(signum: int, frame: object) -> None:
        flag.set()

    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------------------------- the task
class MDSegmentTask(FiretaskBase):
    """Base FireTask for one MD segment. Subclasses implement :meth:`prepare` and :meth:`run_engine`.

    Parameters (common to all engines)
    ----------------------------------
    run_dir : str
        Directory the engine runs in; every segment of one run uses the same one. ``~`` and ``$VARS``
        are expanded.
    name : str
        File name stem of the run (GROMACS ``-deffnm``; OpenMM file prefix).
    segment : int
        1-based segment number (default 1).
    expect_step : int | None
        Checkpoint step the previous segment ended at. When set, a missing checkpoint or one at an
        earlier step is an error (never restart from zero or from an older state).
    segment_hours : float
        Segment length (default 4).
    deadline_margin_s : float
        Seconds kept free before ``PILOT_DEADLINE`` (default 300).
    min_segment_s : float
        With less time than ``min(min_segment_s, segment length)`` the engine is not started and the
        segment continues without progress (default 60).
    stop_margin_s : float
        The segment aims to end this many seconds before ``PILOT_STOP_AT`` (when the pilot worker would
        send SIGTERM), by its own time limit (default 30).
    env : dict
        Extra environment variables for the engine.
    chain : dict
        How the next segment is built (categories, staging, post-processing; read by :mod:`tasks.chain`);
        written by :func:`tasks.workflow.make_md_workflow`.
    """

    engine: ClassVar[str] = "abstract"
    required_params = ["run_dir", "name"]
    optional_params = list(COMMON_PARAMS)

    # ---- to implement per engine ---------------------------------------------------------------
    def prepare(self, run_dir: Path) -> Prepared:
        """Read the checkpoint step and the target; create the engine's input if configured."""
        raise NotImplementedError

    def run_engine(self, run_dir: Path, prepared: Prepared, limit_s: float, stop: StopFlag) -> EngineRun:
        """Run the engine from the checkpoint until the target, ``limit_s`` seconds or SIGTERM."""
        raise NotImplementedError

    @classmethod
    def stage_files(cls, params: dict[str, Any], resume: bool) -> tuple[list[str], list[str]]:
        """(required, optional) file names a segment needs in its run directory (for staging).

        ``resume``: the segment continues from a checkpoint (which is then required)."""
        raise NotImplementedError

    @classmethod
    def result_files(cls, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(checkpoint files, other outputs) a segment leaves in its run directory (for the pull)."""
        raise NotImplementedError

    # ---- common ---------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(str(self["run_dir"])))).absolute()

    @property
    def segment_number(self) -> int:
        return int(self.get("segment") or 1)

    @property
    def segment_seconds(self) -> float:
        return float(self.get("segment_hours", DEFAULT_SEGMENT_HOURS)) * 3600.0

    def engine_env(self) -> dict[str, str]:
        """The environment for an engine subprocess: ours plus the task's ``env``."""
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.get("env") or {}).items()})
        return env

    def describe(self) -> str:
        return f"{self.engine} segment {self.segment_number} of {self['name']!r} in {self.run_dir}"

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        result = self.run_segment()
        return self.make_action(result)

    def run_segment(self) -> SegmentResult:
        """Run one segment and decide; raise :class:`SegmentError` when it failed."""
        run_dir = self.run_dir
        if not run_dir.is_dir():
            raise SegmentError(f"{self.describe()}: run directory {run_dir} does not exist "
                               "(was the staging Firework run? is the path right on this host?)",
                               {"run_dir": str(run_dir)})
        t0 = time.monotonic()
        with self.run_lock(run_dir), sigterm_flag() as stop:
            prepared = self.prepare(run_dir)
            self._check_expected_step(prepared)
            before = prepared.checkpoint_step
            target = prepared.target_step
            limit: float | None = None
            run: EngineRun | None = None
            if target is not None and before is not None and before >= target:
                decision = Decision(Outcome.FINISHED, StopReason.ALREADY_DONE,
                                    f"checkpoint step {before} already >= target {target}")
            else:
                limit = time_limit_s(self.segment_seconds, now=time.time(), deadline=read_deadline(),
                                     margin_s=float(self.get("deadline_margin_s", DEFAULT_DEADLINE_MARGIN_S)),
                                     stop_at=read_deadline(var=STOP_AT_ENV),
                                     stop_margin_s=float(self.get("stop_margin_s", STOP_AT_MARGIN_S)))
                floor = min(float(self.get("min_segment_s", DEFAULT_MIN_SEGMENT_S)), self.segment_seconds)
                if limit < floor:
                    decision = Decision(Outcome.CONTINUE, StopReason.NO_TIME,
                                        f"only {limit:.0f} s left before {DEADLINE_ENV} (need {floor:.0f} s)")
                elif stop.is_set():
                    decision = Decision(Outcome.CONTINUE, StopReason.SIGTERM, "SIGTERM before the engine started")
                else:
                    run = self.run_engine(run_dir, prepared, limit, stop)
                    decision = decide(before=before, after=run.checkpoint_step, initial_step=prepared.initial_step,
                                      target=target, fatal_error=run.fatal_error, sigterm=stop.is_set(),
                                      stop_hint=run.stop_hint)
        wall = time.monotonic() - t0
        after = run.checkpoint_step if run is not None else before
        baseline = before if before is not None else prepared.initial_step
        steps_done = max(0, (after if after is not None else baseline) - baseline) if run is not None else 0
        ns_per_day = run.ns_per_day if run is not None else None
        if ns_per_day is None and run is not None and steps_done and prepared.dt_ps and wall > 0:
            ns_per_day = steps_done * prepared.dt_ps / 1000.0 / (wall / 86400.0)
        result = SegmentResult(
            engine=self.engine, name=str(self["name"]), run_dir=str(run_dir), segment=self.segment_number,
            outcome=decision.outcome.value, stop_reason=decision.reason.value, start_step=before,
            checkpoint_step=after, target_step=target, steps_done=steps_done, wall_time_s=round(wall, 3),
            ns_per_day=None if ns_per_day is None else round(ns_per_day, 3),
            time_limit_s=None if limit is None else round(limit, 3),
            returncode=run.returncode if run is not None else None, sigterm=stop.is_set(),
            host=os.uname().nodename, dt_ps=prepared.dt_ps)
        log.info("%s: %s (%s): %s; steps %s -> %s of %s in %.1f s", self.describe(), decision.outcome.value,
                 decision.reason.value, decision.why, before, after, target, wall)
        if decision.outcome is Outcome.FAILED:
            raise self.failure(decision, run, result)
        return result

    @contextlib.contextmanager
    def run_lock(self, run_dir: Path) -> Iterator[None]:
        """Hold ``.NAME.segment.lock`` in the run directory (``flock``; released when the process dies).

        Two segments of one run must never run at once (e.g. a rerun of an old segment while the next one
        runs): mdrun would start a second trajectory over the first.
        """
        path = run_dir / f".{self['name']}.segment.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise SegmentError(
                    f"{self.describe()}: another segment of this run is running ({holder}; lock {path}). Two "
                    "segments of one run must not run at once: let it finish, or stop it, then rerun this "
                    "Firework.", {"run_dir": str(run_dir), "lock_holder": holder}) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}, segment {self.segment_number}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _check_expected_step(self, prepared: Prepared) -> None:
        expect = self.get("expect_step")
        if expect is None:
            return
        have = prepared.checkpoint_step
        if have is None or have < int(expect):
            what = "is missing" if have is None else f"is at step {have}"
            raise SegmentError(
                f"{self.describe()}: the previous segment ended with a checkpoint at step {expect}, but the "
                f"checkpoint in {self.run_dir} {what}. Refusing to start from zero or from an older state "
                "(that would overwrite the trajectory). Restore the checkpoint (and its output files) into the "
                "run directory, e.g. from the archive copy made by the pull step, then rerun this Firework.",
                {"run_dir": str(self.run_dir), "expect_step": int(expect), "checkpoint_step": have})

    def failure(self, decision: Decision, run: EngineRun | None, result: SegmentResult) -> SegmentError:
        """The :class:`SegmentError` for a FAILED decision: what, where, command, engine error, log tail."""
        def fmt(step: int | None) -> str:
            return "none" if step is None else str(step)

        parts = [f"{self.describe()} FAILED: {decision.why} (checkpoint step {fmt(result.start_step)} -> "
                 f"{fmt(result.checkpoint_step)}, target {fmt(result.target_step)})."]
        if run is not None:
            if run.command:
                parts.append("Command: " + " ".join(run.command))
            if run.returncode is not None:
                parts.append(f"Exit status: {run.returncode}")
            if run.fatal_error:
                parts.append("Engine error:\n" + run.fatal_error)
            if run.log_tail:
                parts.append("Last lines of the log:\n" + run.log_tail)
            elif run.output_tail:
                parts.append("Last lines of the output:\n" + run.output_tail)
        parts.append("What to try: fix the input the error names (structure, topology, parameters), or restore "
                     "the checkpoint, then rerun this Firework (lpad rerun_fws -i <fw_id>); it resumes from "
                     "the checkpoint.")
        details: dict[str, Any] = {"result": result.to_dict()}
        if run is not None:
            details.update(command=run.command, returncode=run.returncode, fatal_error=run.fatal_error,
                           log_tail=run.log_tail, output_tail=run.output_tail)
        return SegmentError("\n".join(parts), details)

    def continue_task(self) -> ContinueTask:
        """The FireTask that adds the next segment after the pull (staged runs; see :mod:`tasks.chain`)."""
        return ContinueTask(md_task=self)

    def next_segment(self, params: dict[str, Any]) -> MDSegmentTask:
        """A task of this engine with ``params`` (the next segment's, built by :mod:`tasks.chain`)."""
        return type(self)(params)

    def make_action(self, result: SegmentResult) -> FWAction:
        """FWAction: record the result, pass it to children, add the next segment or the final workflow.

        With staging, the decision travels in ``update_spec`` to the continue Firework (after the pull),
        which adds the next segment; without staging this task adds it itself.
        """
        stored = result.to_dict()
        chain = self.get("chain") or {}
        if chain.get("stage"):
            return FWAction(stored_data=stored, update_spec={RESULT_SPEC_KEY: stored})
        additions = next_additions(self, stored)
        return FWAction(stored_data=stored, update_spec={RESULT_SPEC_KEY: stored}, additions=additions)


@explicit_serialize
class ContinueTask(FiretaskBase):
    """After the pull: add the next segment's chain (or the final workflow) from the md Firework's result.

    Parameters
    ----------
    md_task : MDSegmentTask
        The md FireTask of this segment (its parameters build the next one).

    The md Firework's result arrives in the spec (``md_segment``) through its ``update_spec``.
    """

    required_params = ["md_task"]
    optional_params: list[str] = []

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        result = fw_spec.get(RESULT_SPEC_KEY)
        md_task = self["md_task"]
        if not isinstance(result, dict) or "outcome" not in result:
            raise SegmentError(
                f"continue Firework: no '{RESULT_SPEC_KEY}' result in the spec; it comes from the md Firework "
                "of the same segment (a parent of this one) when it COMPLETES. Was the md Firework rerun or "
                "its result lost? Rerun the md Firework of this segment.")
        if not isinstance(md_task, MDSegmentTask):
            raise SegmentError(f"continue Firework: md_task is a {type(md_task).__name__}, not an MD segment "
                               "task (the workflow was not built by tasks.workflow.make_md_workflow?)")
        additions = next_additions(md_task, result)
        added = sum(len(wf.fws) for wf in additions)
        return FWAction(stored_data={"continued_from_segment": result.get("segment"),
                                     "outcome": result.get("outcome"), "added_fireworks": added},
                        additions=additions)
