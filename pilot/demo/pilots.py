"""Ending the demo's pilots: let them leave when idle, cancel the rest, and wait until their processes are gone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.manager.cycle import Manager

__all__ = ["refresh_only", "stop_pilots"]


def _live_records(mgr: Manager, job_names: set[str]) -> list[dict[str, Any]]:
    return [r for r in mgr.records.live() if r["_id"] in job_names]


def refresh_only(mgr: Manager) -> None:
    """Update our pilots' records from the scheduler without submitting anything."""
    from pilot.manager.cycle import CycleReport

    rep = CycleReport(started=time.time())
    for rt in mgr.clusters.values():
        mgr.refresh_cluster(rt, rep)
    mgr.reconcile_lost_work(rep)


def _local_job_pids(job_ids: list[str]) -> list[int]:
    """Supervisor and job pids that :mod:`pilot.localsched` recorded for these jobs (its JSON job files)."""
    from pilot.localsched import state_dir

    pids: list[int] = []
    for jid in job_ids:
        try:
            job = json.loads((state_dir() / "jobs" / f"{jid}.json").read_text())
        except (OSError, ValueError):
            continue
        pids.extend(int(p) for p in (job.get("supervisor"), job.get("pid")) if p)
    return pids


def stop_pilots(mgr: Manager, job_names: set[str], drain_s: float, say: Callable[[str], None]) -> None:
    """Let our pilots leave by themselves for ``drain_s`` seconds, then cancel the rest; wait until every
    pilot process (the localsched supervisor and the job's process group) is gone."""
    import psutil

    deadline = time.monotonic() + drain_s
    while _live_records(mgr, job_names) and time.monotonic() < deadline:
        time.sleep(1.0)
        refresh_only(mgr)
    live = _live_records(mgr, job_names)
    if live:
        ids = [str(r["job_id"]) for r in live if r.get("job_id")]
        say(f"cancelling {len(live)} pilot{'s' if len(live) != 1 else ''} still alive: {', '.join(ids)}")
        from pilot.transport.clusters import transport_for

        for rt in mgr.clusters.values():
            mine = [str(r["job_id"]) for r in live if r.get("job_id") and r["cluster"] == rt.name]
            if mine:
                tr = transport_for(rt.name, rt.config)
                try:
                    res = tr.run(rt.adapter.cancel_command(mine), timeout=60.0)
                finally:
                    tr.close()
                out = rt.adapter.parse_cancel(res.returncode, res.stdout, res.stderr, mine)
                if not out.ok:
                    say(f"warning: cancelling {', '.join(mine)} failed: {out.reason}")
        end = time.monotonic() + 30.0
        while _live_records(mgr, job_names) and time.monotonic() < end:
            time.sleep(0.5)
            refresh_only(mgr)
    # the records say ended: make sure the processes are gone too
    all_ids = [
        str(r["job_id"])
        for r in mgr.records.pilots.find({"_id": {"$in": sorted(job_names)}}, {"job_id": 1})
        if r.get("job_id")
    ]
    end = time.monotonic() + 20.0
    left = [p for p in _local_job_pids(all_ids) if psutil.pid_exists(p)]
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    if left:
        say(f"warning: pilot processes still alive after cancelling: pids {', '.join(map(str, left))}")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
