"""The FireTask of the wall-time waste benchmark: one segment of a long run, restartable from a checkpoint.

A *run* is a chain of ``n_segments`` segments of ``length`` seconds of work each. A segment "works" by
sleeping in small steps; it writes the run's checkpoint (``RUN.ckpt.json``: segment index and seconds of work
done in it) every ``checkpoint_every`` seconds of work and when it stops, and on start resumes from it.

* finished: the checkpoint moves to the next segment and the task returns an FWAction that adds it;
* out of time: with ``min_work`` set the segment sizes itself to the pilot's time, as an MD segment does with
  ``-maxh`` (:func:`tasks.segment.time_limit_s`, the same rule: ``PILOT_DEADLINE`` minus ``deadline_margin``,
  ``PILOT_STOP_AT`` minus ``stop_margin``): it stops there, saves, and adds a continuation of the same
  segment, like SIGTERM. Its Firework says so with ``spec._pilot.min_walltime`` (``min_work`` plus the slack);
* every segment's Firework says ``spec._pilot.continues: true``: it adds what follows it, so the manager plans a
  pilot per READY run, not per ``fireworks_per_pilot`` segments;
* SIGTERM: the task saves the checkpoint and returns an FWAction that adds a continuation of the *same*
  segment (its ``spec._pilot.walltime`` is the remaining work plus the slack), which resumes from the
  checkpoint;
* SIGKILL: nothing is saved after the last checkpoint; the Firework stays RUNNING until someone reruns it
  (here, the manager that sees its pilot end), and the work since the checkpoint is done again.

Every attempt keeps a record (``attempts/RUN-SEG-UID.json``, rewritten every step) of where it started,
how far it got, what it had saved and how it ended: the benchmark computes killed segments, redone work and
busy time from these records, not from the code under test.

This module is copied next to the jobs (``PYTHONPATH``) so that ``rlaunch`` and ``pilot worker`` in the
cluster user's venv can import it as ``benchmarks.segtask``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from fireworks import FiretaskBase, Firework, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


#: the SegmentTask parameters that every segment of a run passes on to the next
PASSED_ON = ("step", "checkpoint_every", "slack", "min_work", "deadline_margin", "stop_margin")


def segment_firework(run_dir: str, run: str, segment: int, n_segments: int, length: float, category: str,
                     remaining: float | None = None, step: float = 0.25, checkpoint_every: float = 5.0,
                     slack: float = 5.0, min_work: float | None = None, deadline_margin: float = 3.0,
                     stop_margin: float = 2.0) -> Firework:
    """The Firework of one segment (or of the rest of it, ``remaining`` seconds)."""
    todo = length if remaining is None else remaining
    task = SegmentTask(run_dir=run_dir, run=run, segment=segment, n_segments=n_segments, length=length,
                       category=category, step=step, checkpoint_every=checkpoint_every, slack=slack,
                       min_work=min_work, deadline_margin=deadline_margin, stop_margin=stop_margin)
    pilot: dict[str, Any] = {"walltime": round(todo + slack, 1)}
    if min_work is not None and min_work < todo:
        pilot["min_walltime"] = round(min_work + slack, 1)
    pilot["continues"] = True   # it adds its continuation or the next segment: a chain head (pilot.manager.policy)
    return Firework([task], name=f"{run}-seg{segment}", spec={"_category": category, "_pilot": pilot})


def _time_limit(todo: float, task: dict[str, Any]) -> float:
    """Seconds of work this attempt may do: all of ``todo``, or with ``min_work`` set what the pilot's deadline
    leaves (the MD segments' own rule, :func:`tasks.segment.time_limit_s`)."""
    if task.get("min_work") is None:
        return todo
    from tasks.segment import STOP_AT_ENV, read_deadline, time_limit_s

    return time_limit_s(todo, now=time.time(), deadline=read_deadline(),
                        margin_s=float(task.get("deadline_margin", 3.0)), stop_at=read_deadline(var=STOP_AT_ENV),
                        stop_margin_s=float(task.get("stop_margin", 2.0)))


@explicit_serialize
class SegmentTask(FiretaskBase):
    """Sleep ``length`` seconds of work in steps, checkpointed; continue on SIGTERM (see the module doc)."""

    required_params: ClassVar[list[str]] = ["run_dir", "run", "segment", "n_segments", "length", "category"]
    optional_params: ClassVar[list[str]] = list(PASSED_ON)

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        run_dir = Path(self["run_dir"])
        run, seg, n = str(self["run"]), int(self["segment"]), int(self["n_segments"])
        length = float(self["length"])
        step = float(self.get("step", 0.25))
        every = float(self.get("checkpoint_every", 5.0))
        ckpt_path = run_dir / f"{run}.ckpt.json"
        ckpt = _read_json(ckpt_path) or {"segment": 0, "progress": 0.0}
        rec_path = run_dir / "attempts" / f"{run}-{seg}-{uuid.uuid4().hex[:8]}.json"
        rec: dict[str, Any] = {
            "run": run, "segment": seg, "job_id": os.environ.get("SLURM_JOB_ID"),
            "pilot": os.environ.get("PILOT_NAME"), "pid": os.getpid(), "start": time.time(),
            "p0": 0.0, "progress": 0.0, "saved": 0.0, "t_last": time.time(), "end": None, "reason": None,
        }

        def finish(reason: str) -> None:
            rec["end"] = rec["t_last"] = time.time()
            rec["reason"] = reason
            _write_json(rec_path, rec)

        if int(ckpt["segment"]) > seg:
            # this segment finished, but the launch that finished it was lost: only add what follows
            finish("already_done")
            return self._next(seg + 1)
        if int(ckpt["segment"]) < seg:
            finish("out_of_order")
            raise RuntimeError(f"run {run}: checkpoint is at segment {ckpt['segment']}, this is segment {seg}")
        progress = float(ckpt["progress"])
        rec["p0"] = rec["progress"] = rec["saved"] = progress
        _write_json(rec_path, rec)

        stop = {"flag": False}
        limit = _time_limit(length - progress, self)   # the work this attempt may do
        until = length if limit >= length - progress else progress + max(0.0, limit)

        def on_term(signum: int, _frame: Any) -> None:
            stop["flag"] = True

        old = signal.signal(signal.SIGTERM, on_term)
        try:
            saved_at = progress
            while progress < until and not stop["flag"]:
                t0 = time.monotonic()
                time.sleep(min(step, until - progress))
                progress = min(until, progress + (time.monotonic() - t0))
                rec["progress"], rec["t_last"] = progress, time.time()
                if progress - saved_at >= every and progress < length:
                    _write_json(ckpt_path, {"segment": seg, "progress": progress})
                    saved_at = rec["saved"] = progress
                _write_json(rec_path, rec)
            if progress >= length:
                _write_json(ckpt_path, {"segment": seg + 1, "progress": 0.0})
                rec["saved"] = progress
                finish("done")
                return self._next(seg + 1)
            _write_json(ckpt_path, {"segment": seg, "progress": progress})
            rec["saved"] = progress
            finish("sigterm" if stop["flag"] else "time_limit")
            cont = segment_firework(str(run_dir), run, seg, n, length, self["category"], remaining=length - progress,
                                    **self._passed_on())
            return FWAction(additions=[cont])
        finally:
            signal.signal(signal.SIGTERM, old)

    def _next(self, seg: int) -> FWAction:
        if seg >= int(self["n_segments"]):
            return FWAction()
        fw = segment_firework(self["run_dir"], self["run"], seg, int(self["n_segments"]), float(self["length"]),
                              self["category"], **self._passed_on())
        return FWAction(additions=[fw])

    def _passed_on(self) -> dict[str, Any]:
        return {k: self[k] for k in PASSED_ON if k in self}
