"""Queue profiles as the policy sees them: one offer and one view per profile of each cluster.

A cluster file may declare several pilot shapes (``profiles:``: a GPU partition beside a CPU one, a short queue
beside a long one). The policy (:mod:`pilot.manager.policy`) plans for *units*: a cluster with one profile is one
unit named as the cluster (so a file written before profiles existed plans, logs and records exactly as before);
a cluster with several is one unit per profile, named ``CLUSTER[PROFILE]``. Each unit has what its pilots offer
(:class:`~pilot.manager.demand.PilotOffer`: wall time, cores, GPUs, memory, the FWorker's query and name), so
the demand counts per unit only the READY work whose asks fit it, and a unit none of whose READY work fits gets
no pilot. The limits stay the cluster's, shared by its units; the units are filled in order of their own
observed queue wait (the least loaded queue first).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.manager.demand import PilotOffer
from pilot.manager.gates import UnitAsk
from pilot.manager.policy import DEFAULT_PROFILE, ClusterLimits, ClusterView, unit_name

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.manager.records import Records

__all__ = ["offers_of", "profile_shape", "unit_ask", "unit_of_record", "views_of"]


def offers_of(name: str, c: ClusterConfig) -> list[PilotOffer]:
    """What a fresh pilot of each queue profile of cluster ``name`` would take."""
    profiles = c.pilot_profiles
    several = len(profiles) > 1
    out = []
    for pname, res in profiles.items():
        usable = max(0.0, float(res.walltime_seconds) - float(c.walltime_margin))
        out.append(PilotOffer(cluster=unit_name(name, pname, several), categories=c.profile_categories(pname),
                              usable_seconds=usable, query=c.query or None, cores=float(res.cores),
                              gpus=float(res.gpus or 0), memory=None if res.memory_mb is None else float(res.memory_mb),
                              gpu_work_only=c.gpu_work_only(pname), pack=res.pack, pin=c.fworker.name or name,
                              profile=pname))
    return out


def views_of(name: str, c: ClusterConfig, records: Records, available: bool,
             closed: Callable[[UnitAsk], str | None] | None = None) -> list[ClusterView]:
    """The policy's view of each queue profile of cluster ``name`` (its limits are the cluster's, shared);
    ``closed`` says why a profile gets no new pilot (:mod:`pilot.manager.gates`), None when it may."""
    profiles = c.pilot_profiles
    several = len(profiles) > 1
    limits = ClusterLimits(max_queued=c.limits.max_queued, max_running=c.limits.max_running,
                           min_pilots=c.limits.min_pilots)
    views = []
    for pname, res in profiles.items():
        waits = records.recent_queue_waits(name, profile=pname if several else None)
        views.append(ClusterView(
            name=unit_name(name, pname, several), categories=c.profile_categories(pname),
            usable_seconds=max(0.0, float(res.walltime_seconds) - float(c.walltime_margin)),
            fireworks_per_pilot=int(c.fireworks_per_pilot), limits=limits, available=available,
            queue_wait=statistics.median(waits) if waits else None,
            cluster=name if several else None, profile=pname,
            blocked=closed(unit_ask(name, c, pname)) if closed is not None else None,
            cores=res.total_cores))
    return views


def unit_ask(name: str, c: ClusterConfig, profile: str) -> UnitAsk:
    """What a new pilot of ``profile`` on cluster ``name`` would be, as the gates judge it."""
    res = c.profile(profile)
    return UnitAsk(cluster=name, profile=profile, walltime=float(res.walltime_seconds),
                   cores=res.total_cores, account=res.account, partition=res.partition)


def unit_of_record(rec: dict[str, Any], c: ClusterConfig) -> str:
    """The unit a pilot record counts for: its cluster, with its profile when the cluster has several. A record
    whose profile is gone from the cluster file (one written before the file moved from ``pilot:`` to several
    profiles) counts as the bare cluster: against its limits, for no profile's demand."""
    profiles = c.pilot_profiles
    profile = rec.get("profile") or DEFAULT_PROFILE
    if len(profiles) == 1 or profile not in profiles:
        return str(rec["cluster"])
    return unit_name(str(rec["cluster"]), profile, True)


def profile_shape(c: ClusterConfig, profile: str) -> str:
    """What a queue profile's pilots take, in words: ``<= 8 cores, 1 GPU only, <= 11.8 h, md``; the reason
    ``pilot status`` gives when no READY Firework fits it."""
    if profile not in c.pilot_profiles:
        return ""
    res = c.profile(profile)
    parts = [f"<= {res.cores} cores"]
    if c.gpu_work_only(profile):   # a GPU profile beside CPU ones takes only work that asks for a GPU
        parts.append("a GPU asked" if res.gpus == 1 else f"1-{res.gpus} GPUs asked")
    elif res.gpus:
        parts.append(f"<= {res.gpus} GPU{'s' if res.gpus > 1 else ''}")
    else:
        parts.append("no GPU")
    if res.memory_mb is not None:
        parts.append(f"<= {res.memory_mb} MiB")
    usable = max(0.0, res.walltime_seconds - c.walltime_margin)
    parts.append(f"<= {usable / 3600:.3g} h" if usable >= 3600 else f"<= {usable / 60:.3g} min")
    if res.pack:
        parts.append("packed")
    return ", ".join(parts)
