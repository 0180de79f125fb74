"""The manager's own records in the LaunchPad's database.

Three collections, so that ``pilot status`` works from any machine that has the launchpad file:

``pilots``
    One document per pilot job, ``_id`` = the job name (unique, known before submission, so a record
    is written *before* the job is submitted and a crash between submit and record is reconciled by
    name). Fields: cluster, category, job_name, job_id, state, native_state, reason, submit_time,
    start_time, end_time, exit_code, last_error, walltime, margin, fworker, reconciled.
``pilot_clusters``
    One document per cluster: reachable, last_contact, last_error, failures, backoff_until.
``pilot_reruns``
    One document per Firework put back to READY after its pilot died under it (``_id`` = fw_id), by the manager
    or by the worker's requeue: count, history [{time, by, reason, pilot}]. One bound (``max_reruns``) for
    both; see :mod:`pilot.manager.reruns` for why it is a collection and not a field of the Firework.

Times are epoch seconds (floats).
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

#: states of a pilot record that are not scheduler states
SUBMITTING = "SUBMITTING"        # intent written, submission under way or its outcome unknown
SUBMIT_FAILED = "SUBMIT_FAILED"  # the scheduler refused it (final)
VANISHED = "VANISHED"            # left every listing with no exit-code file (final)

PENDING_STATES = ("SUBMITTING", "PENDING", "HELD")
RUNNING_STATES = ("RUNNING", "COMPLETING", "SUSPENDED")
LIVE_STATES = PENDING_STATES + RUNNING_STATES
#: a pilot in one of these ended; the Fireworks it still holds RUNNING are lost work
ENDED_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "UNKNOWN", VANISHED)


class Records:
    """Access to the manager's collections in a LaunchPad database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pilots: Collection = db["pilots"]
        self.clusters: Collection = db["pilot_clusters"]
        self.reruns: Collection = db["pilot_reruns"]
        self.manager: Collection = db["pilot_manager"]

    def ensure_indexes(self) -> None:
        self.pilots.create_index([("cluster", ASCENDING), ("state", ASCENDING)])
        self.pilots.create_index([("state", ASCENDING), ("reconciled", ASCENDING)])

    # ------------------------------------------------------------------ pilots
    def add_intent(self, job_name: str, cluster: str, category: str, walltime: float, margin: float,
                   script_path: str, now: float | None = None) -> None:
        """Write the record of a pilot about to be submitted (before the scheduler sees it)."""
        self.pilots.insert_one({
            "_id": job_name, "job_name": job_name, "cluster": cluster, "category": category,
            "job_id": None, "state": SUBMITTING, "native_state": None, "reason": None,
            "submit_time": now if now is not None else time.time(), "start_time": None, "end_time": None,
            "exit_code": None, "last_error": None, "walltime": walltime, "margin": margin,
            "fworker": None, "reconciled": False, "script_path": script_path, "unseen_cycles": 0,
        })

    def update(self, job_name: str, **fields: Any) -> None:
        self.pilots.update_one({"_id": job_name}, {"$set": fields})

    def live(self, cluster: str | None = None) -> list[dict[str, Any]]:
        q: dict[str, Any] = {"state": {"$in": list(LIVE_STATES)}}
        if cluster is not None:
            q["cluster"] = cluster
        return list(self.pilots.find(q))

    def ended_unreconciled(self) -> list[dict[str, Any]]:
        return list(self.pilots.find({"state": {"$in": list(ENDED_STATES)}, "reconciled": False}))

    def recent_queue_waits(self, cluster: str, limit: int = 20) -> list[float]:
        docs = self.pilots.find({"cluster": cluster, "start_time": {"$ne": None}},
                                {"submit_time": 1, "start_time": 1}).sort("start_time", -1).limit(limit)
        return [d["start_time"] - d["submit_time"] for d in docs
                if d.get("start_time") is not None and d.get("submit_time") is not None]

    # ------------------------------------------------------------------ clusters
    def cluster_ok(self, cluster: str, now: float) -> None:
        self.clusters.update_one({"_id": cluster}, {"$set": {
            "reachable": True, "last_contact": now, "failures": 0, "backoff_until": None}}, upsert=True)

    def cluster_failed(self, cluster: str, error: str, failures: int, backoff_until: float, now: float) -> None:
        self.clusters.update_one({"_id": cluster}, {"$set": {
            "reachable": False, "last_error": error, "last_error_time": now, "failures": failures,
            "backoff_until": backoff_until}}, upsert=True)

    def cluster_state(self, cluster: str) -> dict[str, Any]:
        return self.clusters.find_one({"_id": cluster}) or {}

    # ------------------------------------------------------------------ reruns
    def rerun_count(self, fw_id: int) -> int:
        doc = self.reruns.find_one({"_id": fw_id})
        return int(doc["count"]) if doc else 0

    def rerun_history(self, fw_id: int) -> list[dict[str, Any]]:
        """The Firework's reruns, oldest first: {time, by (manager or the worker's name), reason, pilot}.

        Written only by :func:`pilot.manager.reruns.conditional_rerun` and the worker's requeue, after the
        rerun won, so the history never holds a rerun that did not happen."""
        doc = self.reruns.find_one({"_id": fw_id}, {"history": 1})
        return list(doc.get("history") or []) if doc else []

    # ------------------------------------------------------------------ manager heartbeat
    def heartbeat(self, info: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        """Write the manager's heartbeat fields; ``drop`` names fields that no longer apply (an older manager's
        ``routes`` when no cluster has an ssh route any more), so that nobody reads them as current."""
        update: dict[str, Any] = {"$set": info}
        if drop:
            update["$unset"] = {k: "" for k in drop}
        self.manager.update_one({"_id": "manager"}, update, upsert=True)
