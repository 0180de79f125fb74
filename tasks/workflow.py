"""Build the segmented MD workflow of one simulation (its first segment; each adds the next as it runs).

The Fireworks of one segment and what follows a segment are built by :mod:`tasks.chain` (see its
docstring for the chain: md, or stage -> md -> pull -> continue, and the postrun/final workflows); this
module checks the user's arguments, writes them into the md task's ``chain`` parameter and builds the
first segment.

Every md Firework carries ``_category`` (``md_category``), ``_launch_dir`` (the run/work directory) and
``_pilot: {"walltime": seconds}`` (segment length + start-up slack) so a pilot worker only takes a segment
that fits in its remaining time. Stage, pull and continue Fireworks carry ``local_category``.

It sits at the top of :mod:`tasks` (it loads the engine modules by name, :data:`tasks.contract.ENGINES`);
nothing in :mod:`tasks` imports it. ``segment_chain``, ``next_additions``, ``fresh_workflow``, ``ENGINES``,
``STAGE_KEYS`` and ``DEFAULT_STARTUP_SLACK_S`` are re-exported from their new homes for callers of the
previous layout.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from fireworks import Firework, Workflow
from fireworks.utilities.fw_serializers import recursive_dict

from tasks.chain import fresh_workflow, next_additions, segment_chain
from tasks.contract import (
    DEFAULT_DEADLINE_MARGIN_S,
    DEFAULT_MIN_SEGMENT_S,
    DEFAULT_SEGMENT_HOURS,
    DEFAULT_STARTUP_SLACK_S,
    ENGINES,
    STAGE_KEYS,
    STOP_AT_MARGIN_S,
)
from tasks.segment import MDSegmentTask

__all__ = ["DEFAULT_STARTUP_SLACK_S", "ENGINES", "STAGE_KEYS", "engine_class", "fresh_workflow",
           "make_md_workflow", "next_additions", "segment_chain"]


def engine_class(engine: str) -> type[MDSegmentTask]:
    """The segment FireTask class of an engine (``"gromacs"`` or ``"openmm"``)."""
    try:
        module_name, attr = ENGINES[engine].split(":")
    except KeyError:
        raise ValueError(f"unknown MD engine {engine!r}; known: {', '.join(sorted(ENGINES))}") from None
    cls: type[MDSegmentTask] = getattr(importlib.import_module(module_name), attr)
    return cls


def _as_dict(wf: Workflow | Firework | dict[str, Any] | None) -> dict[str, Any] | None:
    if wf is None:
        return None
    data = recursive_dict(wf)
    if not isinstance(data, dict) or not ("fws" in data or "spec" in data):
        raise TypeError(f"expected a Workflow, a Firework or its dict, got {type(wf).__name__}")
    Workflow.from_dict(data)  # fail now, not at the end of a week-long run
    return data


def _stage_config(stage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``stage`` argument checked (known keys, a work_dir) and without ``None`` values."""
    if not stage:
        return None
    unknown = sorted(set(stage) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"stage: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(STAGE_KEYS)}")
    if not stage.get("work_dir"):
        raise ValueError("stage: 'work_dir' (the directory on the cluster where md runs) is required")
    return {k: v for k, v in stage.items() if v is not None}


def _engine_params(engine_params: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of the user's engine parameters, refusing those the workflow sets itself."""
    params: dict[str, Any] = dict(engine_params or {})
    clash = sorted(set(params) & {"run_dir", "name", "segment", "expect_step", "chain"})
    if clash:
        raise ValueError(f"engine_params must not set {', '.join(clash)} (set by make_md_workflow)")
    return params


def make_md_workflow(run_dir: str | os.PathLike[str], engine: str, name: str | None = None,
                     md_category: str = "md", local_category: str = "local",
                     segment_hours: float = DEFAULT_SEGMENT_HOURS, stage: dict[str, Any] | None = None,
                     postrun_wf: Workflow | Firework | dict[str, Any] | None = None,
                     final_wf: Workflow | Firework | dict[str, Any] | None = None, *,
                     deffnm: str = "md", engine_params: dict[str, Any] | None = None,
                     startup_slack_s: float = DEFAULT_STARTUP_SLACK_S,
                     deadline_margin_s: float = DEFAULT_DEADLINE_MARGIN_S,
                     min_segment_s: float = DEFAULT_MIN_SEGMENT_S, stop_margin_s: float = STOP_AT_MARGIN_S,
                     env: dict[str, str] | None = None,
                     priority: int | None = None) -> Workflow:
    """The segmented workflow of one simulation: its first segment, which adds the others as it runs.

    Parameters
    ----------
    run_dir
        The simulation's directory on this machine (the archive). Without ``stage`` the md Fireworks run
        in it (this machine, or a cluster sharing the file system at the same path).
    engine
        ``"gromacs"`` or ``"openmm"``.
    name
        Workflow name and Firework name prefix (default: the run directory's name).
    md_category, local_category
        FireWorks categories of the md Fireworks (cluster) and of stage/pull/continue (fileserver).
    segment_hours
        Length of one segment; the pilot's deadline (``PILOT_DEADLINE``) may shorten it.
    stage
        ``None`` (no copies) or ``{"work_dir": DIR, "remote": {host, user, port, identity_file,
        known_hosts} or None, "files": [...], "optional_files": [...], "pull_files": [...],
        "max_retry": 3, "retry_delay_s": 2}``: stage -> md (in ``work_dir``) -> pull -> continue.
        ``files``/``optional_files`` are extra inputs (the engine's own are added), ``pull_files`` extra
        results. Without ``remote`` ``work_dir`` is on a shared file system.
    postrun_wf
        Workflow run after every segment (after the pull), in parallel with the next segment.
    final_wf
        Workflow added when the run is finished (its root Fireworks get the last ``md_segment`` result).
    deffnm
        File name stem (GROMACS ``-deffnm``; OpenMM file prefix).
    engine_params
        Parameters of the engine's FireTask (e.g. GROMACS ``ntomp``, ``gmx``, ``checkpoint_minutes``,
        ``grompp``; OpenMM ``nsteps``, ``platform``, ``traj_interval``). See docs/md-segments.md.
    startup_slack_s
        Added to the segment length in ``_pilot.walltime``.
    deadline_margin_s, min_segment_s, stop_margin_s, env
        Passed to the md FireTask (see :class:`tasks.segment.MDSegmentTask`).
    priority
        FireWorks ``_priority`` of every Firework of the run.

    Returns
    -------
    Workflow
        Add it with ``launchpad.add_wf(wf)``.
    """
    run_path = Path(os.path.expanduser(str(run_dir))).absolute()
    cls = engine_class(engine)
    if segment_hours <= 0:
        raise ValueError(f"segment_hours must be > 0, got {segment_hours}")
    wf_name = name or run_path.name
    stage_cfg = _stage_config(stage)
    chain = {
        "workflow_name": wf_name,
        "md_category": md_category,
        "local_category": local_category,
        "local_dir": str(run_path),
        "startup_slack_s": float(startup_slack_s),
        "stage": stage_cfg,
        "postrun_wf": _as_dict(postrun_wf),
        "final_wf": _as_dict(final_wf),
        "priority": priority,
    }
    params = _engine_params(engine_params)
    params.update(run_dir=str(stage_cfg["work_dir"]) if stage_cfg else str(run_path), name=deffnm, segment=1,
                  expect_step=None, segment_hours=float(segment_hours), deadline_margin_s=float(deadline_margin_s),
                  min_segment_s=float(min_segment_s), stop_margin_s=float(stop_margin_s), chain=chain)
    if env:
        params["env"] = {str(k): str(v) for k, v in env.items()}
    return segment_chain(cls(params))
