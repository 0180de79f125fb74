"""Build the segmented MD workflow of one simulation, and each next segment.

One segment is a chain of Fireworks::

    without staging:   md (md category)  [-> postrun workflow]
    with staging:      stage (local) -> md (md) -> pull (local) -> continue (local)
                                                        \\-> [postrun workflow]

``md`` runs the engine in the run directory (:mod:`tasks.gromacs`, :mod:`tasks.openmm`) and decides from
the checkpoint. Without staging it adds the next segment itself; with staging the decision travels to
``continue`` (after the pull) in ``update_spec`` and ``continue`` adds the next chain. When the run is
finished the ``final_wf`` (if any) is added instead. The ``postrun_wf`` (if any) runs after every
segment, in parallel with the next one.

Every md Firework carries ``_category`` (``md_category``), ``_launch_dir`` (the run/work directory) and
``_pilot: {"walltime": seconds}`` (segment length + start-up slack) so a pilot worker only takes a segment
that fits in its remaining time. Stage, pull and continue Fireworks carry ``local_category``.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

from fireworks import Firework, Workflow
from fireworks.utilities.fw_serializers import recursive_dict

from tasks.segment import (
    DEFAULT_DEADLINE_MARGIN_S,
    DEFAULT_MIN_SEGMENT_S,
    DEFAULT_SEGMENT_HOURS,
    RESULT_SPEC_KEY,
    STOP_AT_MARGIN_S,
    ContinueTask,
    MDSegmentTask,
    Outcome,
)
from tasks.staging import PullTask, StageTask

#: engine name -> "module:class" of its segment FireTask.
ENGINES: dict[str, str] = {
    "gromacs": "tasks.gromacs:GromacsSegmentTask",
    "openmm": "tasks.openmm:OpenMMSegmentTask",
}
#: Seconds added to the segment length in the md Firework's ``_pilot.walltime`` (start-up, checkpoint, DB).
DEFAULT_STARTUP_SLACK_S = 300.0
#: Keys allowed in the ``stage`` argument.
STAGE_KEYS = ("work_dir", "remote", "files", "optional_files", "pull_files", "max_retry", "retry_delay_s")


def engine_class(engine: str) -> type[MDSegmentTask]:
    """The segment FireTask class of an engine (``"gromacs"`` or ``"openmm"``)."""
    try:
        module_name, attr = ENGINES[engine].split(":")
    except KeyError:
        raise ValueError(f"unknown MD engine {engine!r}; known: {', '.join(sorted(ENGINES))}") from None
    cls = getattr(importlib.import_module(module_name), attr)
    return cls  # type: ignore[no-any-return]


def fresh_workflow(wf: Workflow | Firework | dict[str, Any]) -> Workflow:
    """A copy of ``wf`` with new (negative) Firework ids and WAITING states, ready to be added again."""
    data = recursive_dict(wf)  # also turns FireTask objects nested in a stored dict back into dicts
    return Workflow.from_wflow(Workflow.from_dict(data))


def _as_dict(wf: Workflow | Firework | dict[str, Any] | None) -> dict[str, Any] | None:
    if wf is None:
        return None
    data = recursive_dict(wf)
    if not isinstance(data, dict) or not ("fws" in data or "spec" in data):
        raise TypeError(f"expected a Workflow, a Firework or its dict, got {type(wf).__name__}")
    Workflow.from_dict(data)  # fail now, not at the end of a week-long run
    return data


def _spec(category: str, launch_dir: str, priority: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"_category": category, "_launch_dir": launch_dir}
    if priority is not None:
        spec["_priority"] = priority
    return spec


def segment_chain(md_task: MDSegmentTask) -> Workflow:
    """The Fireworks of one segment (see the module docstring) for ``md_task`` (its ``chain`` parameter)."""
    chain = md_task.get("chain") or {}
    k = md_task.segment_number
    wf_name = str(chain.get("workflow_name") or md_task["name"])
    md_category = str(chain.get("md_category", "md"))
    local_category = str(chain.get("local_category", "local"))
    priority = chain.get("priority")
    local_dir = str(chain.get("local_dir") or md_task["run_dir"])
    walltime = math.ceil(float(md_task.get("segment_hours", DEFAULT_SEGMENT_HOURS)) * 3600.0
                         + float(chain.get("startup_slack_s", DEFAULT_STARTUP_SLACK_S)))
    md_spec = _spec(md_category, str(md_task["run_dir"]), priority)
    md_spec["_pilot"] = {"walltime": walltime}
    fw_md = Firework([md_task], spec=md_spec, name=f"{wf_name}-md-{k}")
    fws = [fw_md]
    links: dict[int, list[int]] = {fw_md.fw_id: []}
    after = fw_md
    stage = chain.get("stage")
    if stage:
        work_dir = str(md_task["run_dir"])
        copy_kw = {key: stage[key] for key in ("remote", "max_retry", "retry_delay_s") if stage.get(key) is not None}
        required, optional = type(md_task).stage_files(dict(md_task), resume=md_task.get("expect_step") is not None)
        fw_stage = Firework([StageTask(src_dir=local_dir, dest_dir=work_dir,
                                       files=required + list(stage.get("files") or []),
                                       optional_files=optional + list(stage.get("optional_files") or []),
                                       **copy_kw)],
                            spec=_spec(local_category, local_dir, priority), name=f"{wf_name}-stage-{k}")
        cpt, others = type(md_task).result_files(dict(md_task))
        fw_pull = Firework([PullTask(src_dir=work_dir, dest_dir=local_dir, checkpoint_files=cpt,
                                     optional_files=others + list(stage.get("pull_files") or []), **copy_kw)],
                           spec=_spec(local_category, local_dir, priority), name=f"{wf_name}-pull-{k}")
        fw_cont = Firework([ContinueTask(md_task=md_task)], spec=_spec(local_category, local_dir, priority),
                           name=f"{wf_name}-continue-{k}")
        fws = [fw_stage, fw_md, fw_pull, fw_cont]
        links = {fw_stage.fw_id: [fw_md.fw_id], fw_md.fw_id: [fw_pull.fw_id, fw_cont.fw_id],
                 fw_pull.fw_id: [fw_cont.fw_id], fw_cont.fw_id: []}
        after = fw_pull
    if chain.get("postrun_wf"):
        post = fresh_workflow(chain["postrun_wf"])
        for fw in post.fws:
            fws.append(fw)
            links[fw.fw_id] = list(post.links.get(fw.fw_id, []))
        links[after.fw_id] = links[after.fw_id] + list(post.root_fw_ids)
    metadata = {"md_run": {"engine": md_task.engine, "name": wf_name, "run_dir": local_dir}}
    return Workflow(fws, links_dict=links, name=wf_name, metadata=metadata)


def next_additions(md_task: MDSegmentTask, result: dict[str, Any]) -> list[Workflow]:
    """What to add after a segment: the next chain (CONTINUE) or the final workflow (FINISHED, if any)."""
    chain = md_task.get("chain") or {}
    if result.get("outcome") == Outcome.FINISHED.value:
        if not chain.get("final_wf"):
            return []
        final = fresh_workflow(chain["final_wf"])
        for fw_id in final.root_fw_ids:
            final.id_fw[fw_id].spec[RESULT_SPEC_KEY] = dict(result)
        return [final]
    if result.get("outcome") != Outcome.CONTINUE.value:
        raise ValueError(f"cannot continue from a segment with outcome {result.get('outcome')!r}")
    params = dict(md_task)
    params["segment"] = md_task.segment_number + 1
    params["expect_step"] = result.get("checkpoint_step")
    return [segment_chain(type(md_task)(params))]


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
    stage_cfg: dict[str, Any] | None = None
    if stage:
        unknown = sorted(set(stage) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"stage: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(STAGE_KEYS)}")
        if not stage.get("work_dir"):
            raise ValueError("stage: 'work_dir' (the directory on the cluster where md runs) is required")
        stage_cfg = {k: v for k, v in stage.items() if v is not None}
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
    params: dict[str, Any] = dict(engine_params or {})
    clash = sorted(set(params) & {"run_dir", "name", "segment", "expect_step", "chain"})
    if clash:
        raise ValueError(f"engine_params must not set {', '.join(clash)} (set by make_md_workflow)")
    params.update(run_dir=str(stage_cfg["work_dir"]) if stage_cfg else str(run_path), name=deffnm, segment=1,
                  expect_step=None, segment_hours=float(segment_hours), deadline_margin_s=float(deadline_margin_s),
                  min_segment_s=float(min_segment_s), stop_margin_s=float(stop_margin_s), chain=chain)
    if env:
        params["env"] = {str(k): str(v) for k, v in env.items()}
    return segment_chain(cls(params))
