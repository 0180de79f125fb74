"""The one rule for "this pilot is dead", after which the work it held is rerun.

A pilot is dead when **both** witnesses agree:

1. the scheduler says the job is over: a final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL) from the
   queue listing, the accounting (``sacct``, ``qstat -x``, ``bhist``; with ``-M CLUSTER`` for a federated
   SLURM id) or the exit-code file the job script writes; or the job has been missing from all three for two
   cycles in a row (VANISHED);
2. the pilot itself has gone quiet: it wrote its exit record (:mod:`pilot.worker.heartbeat`), or it never
   wrote a heartbeat at all (it never started, so it never took work), or its last heartbeat is older than
   three of its heartbeat intervals (``heartbeat_interval`` of the cluster file, written into the record by
   the pilot itself).

Nothing else makes a pilot dead. An UNKNOWN state (a state code no table maps, or garbage), a job missing from
one listing, a cluster that does not answer, a slurmctld that is down: all leave the record as it is and it
is polled again next cycle until it resolves. The heartbeat is needed because each of those has been seen to
show a running pilot as gone, and a rerun of its Firework then ran one MD segment twice on one checkpoint.

Pure: the manager passes the record and the time; no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: scheduler states after which a job never runs again
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
#: heartbeat intervals of silence after which a pilot whose job ended is taken for dead
MISSED_BEATS = 3
#: the interval assumed for a record whose pilot wrote none (a pilot of an older version)
DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class Verdict:
    """Whether a pilot record is dead, and why (for the log and ``pilot status``)."""

    dead: bool
    why: str


def verdict(rec: dict[str, Any], now: float, vanished: str = "VANISHED") -> Verdict:
    """Apply the rule to one pilot record (see the module docstring)."""
    state = rec.get("state")
    if state not in FINAL_STATES and state != vanished:
        return Verdict(False, f"the scheduler says {state}")
    ended = "left every listing and the accounting" if state == vanished else f"ended {state}"
    exit_rec = rec.get("exit")
    if exit_rec:
        return Verdict(True, f"job {ended} and its worker stopped ({exit_rec.get('reason', 'exit record')})")
    beat = rec.get("heartbeat")
    if beat is None:
        if state == vanished:
            # nothing says it ever ran: wait as long as a started pilot would have needed to beat once
            since = float(rec.get("end_time") or rec.get("submit_time") or now)
            if now - since <= MISSED_BEATS * DEFAULT_INTERVAL:
                return Verdict(False, f"job {ended}; waiting for a heartbeat that would show it alive")
        return Verdict(True, f"job {ended} and its pilot never wrote a heartbeat")
    interval = float(rec.get("heartbeat_interval") or DEFAULT_INTERVAL)
    silence = now - float(beat)
    if silence > MISSED_BEATS * interval:
        return Verdict(True, f"job {ended} and its last heartbeat is {silence:.0f} s old")
    return Verdict(False, f"job {ended} but its pilot beat {silence:.0f} s ago: waiting until "
                          f"{MISSED_BEATS * interval:.0f} s of silence")


__all__ = ["DEFAULT_INTERVAL", "FINAL_STATES", "MISSED_BEATS", "Verdict", "verdict"]
