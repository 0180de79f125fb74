"""Watching the demo: each simulation's state from the LaunchPad, our pilots from the records, and the live
display (a table redrawn in place on a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.manager.records import Records

__all__ = ["Pilots", "Progress", "Sim", "count_pilots", "refresh_sims"]


@dataclass
class Sim:
    """One simulation of the demo and what the LaunchPad says about it."""

    name: str
    run_dir: Path
    nsteps: int
    root_fw_id: int = 0
    segments_done: int = 0
    step: int = 0
    state: str = "waiting"  # waiting | running | finished | failed
    where: str = ""  # the FWorker running it
    error: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")


@dataclass
class Pilots:
    """Our pilots by phase, from the manager's records."""

    pending: int = 0
    running: int = 0
    ended: int = 0
    ended_states: dict[str, int] = field(default_factory=dict)



def refresh_sims(lp: Any, sims: list[Sim]) -> None:
    """Update every simulation from the LaunchPad: two queries for all of them."""
    by_root = {s.root_fw_id: s for s in sims}
    node_sim: dict[int, Sim] = {}
    states: dict[int, str] = {}
    for wf in lp.workflows.find({"nodes": {"$in": list(by_root)}}, {"nodes": 1, "fw_states": 1}):
        sim = next((by_root[n] for n in wf.get("nodes", []) if n in by_root), None)
        if sim is None:
            continue
        for n in wf.get("nodes", []):
            node_sim[int(n)] = sim
        for k, v in (wf.get("fw_states") or {}).items():
            states[int(k)] = str(v)
    per: dict[str, dict[str, Any]] = {
        s.name: {"done": 0, "step": 0, "finished": False, "where": "", "failed": "", "running": False}
        for s in sims
    }
    for fw_id, st in states.items():
        sim = node_sim[fw_id]
        if st == "RUNNING":
            per[sim.name]["running"] = True
    proj = {
        "fw_id": 1,
        "state": 1,
        "fworker.name": 1,
        "action.stored_data.checkpoint_step": 1,
        "action.stored_data.outcome": 1,
        "action.stored_data._exception._stacktrace": 1,
        "_id": 0,
    }
    ids = sorted(node_sim)
    for doc in lp.launches.find(
        {"fw_id": {"$in": ids}, "state": {"$in": ["COMPLETED", "RUNNING", "FIZZLED"]}}, proj
    ):
        sim = node_sim.get(int(doc["fw_id"]))
        if sim is None:
            continue
        p = per[sim.name]
        sd = (doc.get("action") or {}).get("stored_data") or {}
        if doc["state"] == "COMPLETED":
            p["done"] += 1
            p["step"] = max(p["step"], int(sd.get("checkpoint_step") or 0))
            if sd.get("outcome") == "finished":
                p["finished"] = True
        elif doc["state"] == "RUNNING":
            p["where"] = (doc.get("fworker") or {}).get("name") or ""
        elif states.get(int(doc["fw_id"])) == "FIZZLED":
            trace = ((sd.get("_exception") or {}).get("_stacktrace") or "").strip()
            p["failed"] = trace.splitlines()[0] if trace else "FIZZLED"
    for s in sims:
        p = per[s.name]
        s.segments_done, s.step = p["done"], p["step"]
        if p["finished"]:
            s.state, s.where = "finished", ""
        elif p["failed"]:
            s.state, s.error, s.where = "failed", p["failed"], ""
        elif p["running"]:
            s.state, s.where = "running", p["where"]
        else:
            s.state, s.where = "waiting", ""


def count_pilots(records: Records, job_names: set[str]) -> Pilots:
    from pilot.manager.records import PENDING_STATES, RUNNING_STATES

    out = Pilots()
    for p in records.pilots.find({"_id": {"$in": sorted(job_names)}}, {"state": 1}):
        st = str(p.get("state"))
        if st in PENDING_STATES:
            out.pending += 1
        elif st in RUNNING_STATES:
            out.running += 1
        else:
            out.ended += 1
            out.ended_states[st] = out.ended_states.get(st, 0) + 1
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class Progress:
    """The live display: a small table redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, sims: list[Sim], engine: str, tty: bool, echo: Callable[[str], None]) -> None:
        self.sims = sims
        self.engine = engine
        self.tty = tty
        self.echo = echo
        self.drawn = 0
        self.last: dict[str, tuple[Any, ...]] = {}
        self.last_pilots: tuple[int, int, int] | None = None

    def table(self, pilots: Pilots, elapsed: float) -> list[str]:
        w = max(len(s.name) for s in self.sims)
        lines = [f"  {'simulation'.ljust(w)}  segments  {'steps'.rjust(15)}  state"]
        for s in self.sims:
            steps = f"{s.step:,}/{s.nsteps:,}"
            state = s.state + (f" on {s.where}" if s.where else "")
            bar_n = int(10 * min(1.0, s.step / s.nsteps)) if s.nsteps else 0
            lines.append(
                f"  {s.name.ljust(w)}  {s.segments_done:>8}  {steps:>15}  "
                f"[{'#' * bar_n}{'.' * (10 - bar_n)}] "
                f"{state}"
            )
        lines.append(
            f"  pilots: {pilots.running} running, {pilots.pending} queued, {pilots.ended} ended"
            f"    elapsed {_clock(elapsed)}"
        )
        return lines

    def update(self, pilots: Pilots, elapsed: float) -> None:
        if self.tty:
            lines = self.table(pilots, elapsed)
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stdout.write(up + "\x1b[J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
            self.drawn = len(lines)
            return
        stamp = f"[{_clock(elapsed):>5}]"
        for s in self.sims:
            key = (s.segments_done, s.state, s.where)
            if self.last.get(s.name) == key:
                continue
            self.last[s.name] = key
            if s.state == "finished":
                what = f"finished at step {s.step:,} after {s.segments_done} segments"
            elif s.state == "failed":
                what = f"FAILED: {s.error}"
            elif s.state == "running":
                what = f"segment {s.segments_done + 1} running on {s.where} (step {s.step:,}/{s.nsteps:,})"
            else:
                what = (
                    f"waiting for a pilot ({s.segments_done} "
                    f"segment{'' if s.segments_done == 1 else 's'} done, "
                    f"step {s.step:,}/{s.nsteps:,})"
                )
            self.echo(f"{stamp} {s.name}: {what}")
        pk = (pilots.running, pilots.pending, pilots.ended)
        if pk != self.last_pilots:
            self.last_pilots = pk
            self.echo(
                f"{stamp} pilots: {pilots.running} running, {pilots.pending} queued, {pilots.ended} ended"
            )
