"""The dashboard's actions, each through the code the command line uses (no second implementation).

* rerun / defuse / reignite a Firework: FireWorks' own ``LaunchPad.rerun_fw``, ``defuse_fw``, ``reignite_fw``
  (what ``lpad rerun_fws``, ``lpad defuse_fws`` and ``lpad reignite_fws`` call);
* drain / resume a cluster: :func:`pilot.manager.drain.drain_cluster` / :func:`resume_cluster`
  (``pilot drain``, ``pilot resume``);
* cancel a pilot: :func:`pilot.manager.cancel.cancel_pilots` (``pilot cancel``), through the manager's runtime
  of the cluster (its transport and queue adapter).

Every action runs with the read-write LaunchPad (:class:`pilot.dashboard.app.Dashboard` ``.write_lp``) and
checks what it acts on first, so that a page left open for an hour cannot, say, rerun a Firework that has
completed meanwhile or cancel a job that is not one of this manager's pilots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIONS", "ActionError", "ActionResult", "run_action"]


class ActionError(Exception):
    """An action that cannot be done (the message says why, for the page)."""


@dataclass(frozen=True)
class ActionResult:
    message: str
    ok: bool = True


def _fw_state(lp: Any, fw_id: int) -> str:
    doc = lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1})
    if doc is None:
        raise ActionError(f"no Firework {fw_id}")
    return str(doc.get("state"))


def rerun(lp: Any, fw_id: int) -> ActionResult:
    state = _fw_state(lp, fw_id)
    if state != "FIZZLED":
        raise ActionError(f"Firework {fw_id} is {state}, not FIZZLED: not rerun")
    lp.rerun_fw(fw_id)
    return ActionResult(f"Firework {fw_id} rerun: now {_fw_state(lp, fw_id)}")


def defuse(lp: Any, fw_id: int) -> ActionResult:
    state = _fw_state(lp, fw_id)
    if state in ("COMPLETED", "DEFUSED"):
        raise ActionError(f"Firework {fw_id} is {state}: nothing to defuse")
    lp.defuse_fw(fw_id)
    return ActionResult(f"Firework {fw_id} defused: now {_fw_state(lp, fw_id)}")


def reignite(lp: Any, fw_id: int) -> ActionResult:
    state = _fw_state(lp, fw_id)
    if state != "DEFUSED":
        raise ActionError(f"Firework {fw_id} is {state}, not DEFUSED: nothing to reignite")
    lp.reignite_fw(fw_id)
    return ActionResult(f"Firework {fw_id} reignited: now {_fw_state(lp, fw_id)}")


def _known_cluster(config: Any, lp: Any, cluster: str) -> None:
    known = set(config.clusters) if config is not None else set(lp.db["pilot_clusters"].distinct("_id"))
    if cluster not in known:
        raise ActionError(f"no cluster named {cluster!r} (known: {', '.join(sorted(known)) or 'none'})")


def drain(config: Any, lp: Any, cluster: str, by: str) -> ActionResult:
    from pilot.manager.drain import drain_cluster
    from pilot.manager.records import Records

    _known_cluster(config, lp, cluster)
    res = drain_cluster(Records(lp.db), cluster, None, _now(), by=by)
    return ActionResult(f"{cluster} drained: no new pilots; {res.running} running and {res.pending} queued pilots "
                        "leave after their current Firework")


def resume(config: Any, lp: Any, cluster: str, by: str) -> ActionResult:
    from pilot.manager.drain import resume_cluster
    from pilot.manager.records import Records

    _known_cluster(config, lp, cluster)
    res = resume_cluster(Records(lp.db), cluster)
    return ActionResult(f"{cluster} resumed" if res.changed else f"{cluster} was not drained: nothing to undo")


def cancel(config: Any, lp: Any, cluster: str, job_name: str) -> ActionResult:
    """Cancel one live pilot, named by its record (never a job id typed into a form)."""
    from pilot.manager.cancel import cancel_pilots
    from pilot.manager.cycle import Manager
    from pilot.manager.records import Records
    from pilot.transport import TransportError

    if config is None or cluster not in config.clusters:
        raise ActionError(f"cannot cancel on {cluster!r}: the dashboard's config dir does not define it")
    rec = next((r for r in Records(lp.db).live(cluster) if r.get("job_name") == job_name), None)
    if rec is None or not rec.get("job_id"):
        raise ActionError(f"{job_name} is not a live pilot with a job id on {cluster}: nothing to cancel")
    mgr = Manager(config, lp)
    try:
        outcome = cancel_pilots(mgr.records, mgr.clusters[cluster], [str(rec["job_id"])])
    except TransportError as e:
        raise ActionError(f"cancel on {cluster} failed: {e}") from None
    finally:
        mgr.close()
    res = outcome.result
    if res is None or not res.ok:
        raise ActionError(f"cancel on {cluster} failed: {res.reason if res else 'nothing sent'}")
    gone = "already gone" if rec["job_id"] in res.already_gone else "cancelled"
    return ActionResult(f"pilot {job_name} (job {rec['job_id']}) on {cluster}: {gone}")


def _now() -> float:
    import time

    return time.time()


#: action name -> (what it acts on: "fw" or "cluster" or "pilot", the question of its confirm step)
ACTIONS: dict[str, tuple[str, str]] = {
    "rerun": ("fw", "Rerun Firework {target}? It becomes READY and a pilot runs it again."),
    "defuse": ("fw", "Defuse Firework {target}? It will not run until reignited."),
    "reignite": ("fw", "Reignite Firework {target}? It may run again."),
    "drain": ("cluster", "Drain cluster {target}? No new pilots; running ones leave after their current Firework."),
    "resume": ("cluster", "Resume cluster {target}? The manager may submit pilots to it again."),
    "cancel": ("pilot", "Cancel pilot {target}? The Fireworks it runs are rerun by the manager."),
}


def run_action(name: str, target: str, config: Any, lp: Any, who: str, cluster: str | None = None) -> ActionResult:
    """Do action ``name`` on ``target`` (a fw_id, a cluster name, or a pilot's job name on ``cluster``).

    Raises
    ------
    ActionError
        An unknown action, a target that is not what the action needs, or an action the state forbids.
    """
    if name not in ACTIONS:
        raise ActionError(f"no action {name!r}")
    kind = ACTIONS[name][0]
    if kind == "fw":
        try:
            fw_id = int(target)
        except ValueError:
            raise ActionError(f"{target!r} is not a Firework id") from None
        return {"rerun": rerun, "defuse": defuse, "reignite": reignite}[name](lp, fw_id)
    if kind == "cluster":
        return (drain if name == "drain" else resume)(config, lp, target, who)
    return cancel(config, lp, cluster or "", target)
