"""What comes after a segment: the Fireworks of one segment, and the next segment or the final workflow.

One segment is a chain of Fireworks::

    without staging:   md (md category)  [-> postrun workflow]
    with staging:      stage (local) -> md (md) -> pull (local) -> continue (local)
                                                        \\-> [postrun workflow]

``md`` runs the engine in the run directory (:mod:`tasks.gromacs`, :mod:`tasks.openmm`) and decides from
the checkpoint. Without staging it adds the next segment itself (:func:`next_additions`); with staging
the decision travels to ``continue`` (after the pull) in ``update_spec`` and ``continue`` adds the next
chain. When the run is finished the ``final_wf`` (if any) is added instead. The ``postrun_wf`` (if any)
runs after every segment, in parallel with the next one.

This module sits below :mod:`tasks.segment`, which calls it when a segment ends: it knows the md task
only through :class:`SegmentTask` (what it reads of it), so that it never imports :mod:`tasks.segment`
and the imports of ``tasks`` point one way (workflow -> engines -> segment -> chain -> staging ->
contract).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

from fireworks import FiretaskBase, Firework, Workflow
from fireworks.utilities.fw_serializers import recursive_dict

from tasks.contract import (
    CATEGORY_KEY,
    DEFAULT_DEADLINE_MARGIN_S,
    DEFAULT_MIN_SEGMENT_S,
    DEFAULT_SEGMENT_HOURS,
    DEFAULT_STARTUP_SLACK_S,
    LAUNCH_DIR_KEY,
    PILOT_KEY,
    PRIORITY_KEY,
    RESULT_SPEC_KEY,
    STOP_AT_MARGIN_S,
    Outcome,
)
from tasks.staging import PullTask, StageTask


class SegmentTask(Protocol):
    """What the chain reads of an md segment FireTask (:class:`tasks.segment.MDSegmentTask`).

    The task is a FireTask, i.e. a dict of its parameters (``run_dir``, ``name``, ``segment``,
    ``expect_step``, ``segment_hours``, ``chain``, ...).
    """

    engine: ClassVar[str]

    @property
    def segment_number(self) -> int: ...

    def keys(self) -> Iterable[str]: ...

    def __getitem__(self, key: str) -> Any: ...

    def get(self, key: str, default: Any = None) -> Any: ...

    def stage_files(self, params: dict[str, Any], resume: bool) -> tuple[list[str], list[str]]: ...

    def result_files(self, params: dict[str, Any]) -> tuple[list[str], list[str]]: ...

    def continue_task(self) -> FiretaskBase:
        """The FireTask that adds the next segment after the pull (``ContinueTask(md_task=self)``)."""
        ...

    def next_segment(self, params: dict[str, Any]) -> SegmentTask:
        """A task of the same engine with ``params`` (the next segment's)."""
        ...


def fresh_workflow(wf: Workflow | Firework | dict[str, Any]) -> Workflow:
    """A copy of ``wf`` with new (negative) Firework ids and WAITING states, ready to be added again."""
    data = recursive_dict(wf)  # also turns FireTask objects nested in a stored dict back into dicts
    return Workflow.from_wflow(Workflow.from_dict(data))


def _spec(category: str, launch_dir: str, priority: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {CATEGORY_KEY: category, LAUNCH_DIR_KEY: launch_dir}
    if priority is not None:
        spec[PRIORITY_KEY] = priority
    return spec


def _staged(md_task: SegmentTask, fw_md: Firework, stage: dict[str, Any], wf_name: str, local_dir: str,
            local_category: str, priority: int | None) -> tuple[list[Firework], dict[int, list[int]], Firework]:
    """stage -> md -> pull -> continue: the Fireworks, their links and the one the postrun workflow follows."""
    k = md_task.segment_number
    work_dir = str(md_task["run_dir"])
    copy_kw = {key: stage[key] for key in ("remote", "max_retry", "retry_delay_s") if stage.get(key) is not None}
    required, optional = md_task.stage_files(dict(md_task), resume=md_task.get("expect_step") is not None)
    fw_stage = Firework([StageTask(src_dir=local_dir, dest_dir=work_dir,
                                   files=required + list(stage.get("files") or []),
                                   optional_files=optional + list(stage.get("optional_files") or []),
                                   **copy_kw)],
                        spec=_spec(local_category, local_dir, priority), name=f"{wf_name}-stage-{k}")
    cpt, others = md_task.result_files(dict(md_task))
    fw_pull = Firework([PullTask(src_dir=work_dir, dest_dir=local_dir, checkpoint_files=cpt,
                                 optional_files=others + list(stage.get("pull_files") or []), **copy_kw)],
                       spec=_spec(local_category, local_dir, priority), name=f"{wf_name}-pull-{k}")
    fw_cont = Firework([md_task.continue_task()], spec=_spec(local_category, local_dir, priority),
                       name=f"{wf_name}-continue-{k}")
    links = {fw_stage.fw_id: [fw_md.fw_id], fw_md.fw_id: [fw_pull.fw_id, fw_cont.fw_id],
             fw_pull.fw_id: [fw_cont.fw_id], fw_cont.fw_id: []}
    return [fw_stage, fw_md, fw_pull, fw_cont], links, fw_pull


def pilot_spec(md_task: SegmentTask, startup_slack_s: float) -> dict[str, Any]:
    """The md Firework's ``_pilot``: ``walltime`` (a whole segment plus the start-up slack), when shorter
    ``min_walltime``, the least time a pilot must have left for the segment to be worth starting, and
    ``continues: true``.

    ``continues`` says the segment is a chain link: when it completes it adds its successor, the next segment,
    which a pilot can take at once (with staging once the local pull and continue Fireworks ran). The manager
    then plans a pilot per READY segment instead of counting one pilot as running several READY segments one
    after another, which they are not: each is the head of a run of its own (:mod:`pilot.manager.policy`,
    issue 18).

    A segment sizes itself to the pilot's deadline (``PILOT_DEADLINE - deadline_margin_s``, GROMACS ``-maxh``)
    and runs at least ``min(min_segment_s, segment length)`` or not at all: with ``min_walltime`` = that + the
    deadline margin + the start-up slack, a pilot whose time left no longer fits a whole segment still runs a
    shorter one in its tail instead of leaving it idle (issue 18: the tail of every pilot is otherwise lost).
    """
    segment_s = float(md_task.get("segment_hours", DEFAULT_SEGMENT_HOURS)) * 3600.0
    walltime = math.ceil(segment_s + startup_slack_s)
    shortest = min(float(md_task.get("min_segment_s", DEFAULT_MIN_SEGMENT_S)), segment_s)
    # the segment's own limit is min(deadline - margin, stop_at - stop_margin): keep the larger of the two free
    margin = max(float(md_task.get("deadline_margin_s", DEFAULT_DEADLINE_MARGIN_S)),
                 float(md_task.get("stop_margin_s", STOP_AT_MARGIN_S)))
    least = math.ceil(shortest + margin + startup_slack_s)
    spec: dict[str, Any] = {"walltime": walltime}
    if least < walltime:
        spec["min_walltime"] = least
    spec["continues"] = True
    return spec


def segment_chain(md_task: SegmentTask) -> Workflow:
    """The Fireworks of one segment (see the module docstring) for ``md_task`` (its ``chain`` parameter)."""
    chain = md_task.get("chain") or {}
    k = md_task.segment_number
    wf_name = str(chain.get("workflow_name") or md_task["name"])
    local_category = str(chain.get("local_category", "local"))
    priority = chain.get("priority")
    local_dir = str(chain.get("local_dir") or md_task["run_dir"])
    md_spec = _spec(str(chain.get("md_category", "md")), str(md_task["run_dir"]), priority)
    md_spec[PILOT_KEY] = pilot_spec(md_task, float(chain.get("startup_slack_s", DEFAULT_STARTUP_SLACK_S)))
    fw_md = Firework([md_task], spec=md_spec, name=f"{wf_name}-md-{k}")
    fws = [fw_md]
    links: dict[int, list[int]] = {fw_md.fw_id: []}
    after = fw_md
    stage = chain.get("stage")
    if stage:
        fws, links, after = _staged(md_task, fw_md, stage, wf_name, local_dir, local_category, priority)
    if chain.get("postrun_wf"):
        post = fresh_workflow(chain["postrun_wf"])
        for fw in post.fws:
            fws.append(fw)
            links[fw.fw_id] = list(post.links.get(fw.fw_id, []))
        links[after.fw_id] = links[after.fw_id] + list(post.root_fw_ids)
    metadata = {"md_run": {"engine": md_task.engine, "name": wf_name, "run_dir": local_dir}}
    return Workflow(fws, links_dict=links, name=wf_name, metadata=metadata)


def next_additions(md_task: SegmentTask, result: dict[str, Any]) -> list[Workflow]:
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
    return [segment_chain(md_task.next_segment(params))]
