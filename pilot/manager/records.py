"""The manager's own records in the LaunchPad's database.

Three collections, so that ``pilot status`` works from any machine that has the launchpad file:

``pilots``
    One document per pilot job, ``_id`` = the job name (unique, known before submission, so a record
    is written *before* the job is submitted and a crash between submit and record is reconciled by
    name). Fields: cluster, category, job_name, job_id, state, native_state, reason, submit_time,
    start_time, end_time, exit_code, last_error, walltime, margin, fworker, reconciled; and, written by the
    pilot itself (:mod:`pilot.worker.heartbeat`): heartbeat, heartbeat_interval, host, exit {time, stop,
    reason, code, fireworks}; ``drain: true`` while the pilot's cluster is drained (the worker then stops before
    its next Firework).
``pilot_clusters``
    One document per cluster: reachable, last_contact, last_error, failures, backoff_until; and, for pilots that
    cannot start (:mod:`pilot.manager.holds`): failed_starts (in a row) and hold {since, until, delay, failures,
    pilot {job_name, job_id, category, state, exit_code, reason, why}, stderr_path, stderr_tail, see_more,
    config_digest} (null when the cluster is not held); drain {since, until, by} (null: not drained,
    :mod:`pilot.manager.drain`), maintenance [{name, start, end, partition}] and maintenance_checked (SLURM maintenance
    reservations, :mod:`pilot.manager.maintenance`).
``pilot_reruns``
    One document per Firework put back to READY after its pilot died under it (``_id`` = fw_id), by the manager
    or by the worker's requeue: count, history [{time, by, reason, pilot}]. One bound (``max_reruns``) for
    both; see :mod:`pilot.manager.reruns` for why it is a collection and not a field of the Firework.

Times are epoch seconds (floats).
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

#: states of a pilot record that are not scheduler states
SUBMITTING = "SUBMITTING"        # intent written, submission under way or its outcome unknown
SUBMIT_FAILED = "SUBMIT_FAILED"  # the scheduler refused it (final)
VANISHED = "VANISHED"            # left every listing with no exit-code file (final)

UNKNOWN = "UNKNOWN"                # a state code no table maps, or garbage: polled until it resolves

PENDING_STATES = ("SUBMITTING", "PENDING", "HELD")
RUNNING_STATES = ("RUNNING", "COMPLETING", "SUSPENDED")
#: states the manager cannot vouch for: polled every cycle until they resolve, counted as running meanwhile
#: (a slot of max_running), never dead by themselves (:mod:`pilot.manager.liveness`)
UNCERTAIN_STATES = (UNKNOWN, VANISHED)
LIVE_STATES = PENDING_STATES + RUNNING_STATES + UNCERTAIN_STATES
#: the scheduler says the job is over (listing, accounting or exit-code file)
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
#: a pilot in one of these may be dead: the liveness rule decides, with its heartbeat, whether the Fireworks
#: it still holds are lost work
ENDED_STATES = (*FINAL_STATES, VANISHED)


def live_query() -> dict[str, Any]:
    """The filter of the records polled each cycle (and shown as live by ``pilot status``): pending, running,
    and uncertain ones whose lost work is not yet reconciled."""
    return {"$or": [{"state": {"$in": [s for s in LIVE_STATES if s != VANISHED]}},
                    {"state": VANISHED, "reconciled": False}]}


def ran_and_ended_since(since: float) -> dict[str, Any]:
    """Pilots that started and ended at ``since`` or later: what fair share remembers of the recent past
    (:mod:`pilot.manager.share`). One that never started (a refused submission, one cancelled while queued) used
    no room on a cluster and does not count. Served by the ``end_time`` index."""
    return {"end_time": {"$gte": since}, "start_time": {"$ne": None}, **ended_query()}


def ended_query() -> dict[str, Any]:
    """The filter of the records that are over: the complement of :func:`live_query`."""
    return {"$or": [{"state": {"$nin": list(LIVE_STATES)}}, {"state": VANISHED, "reconciled": True}]}


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
        # the pilots that ended lately (fair share's window, pilot.manager.share.recent_cores)
        self.pilots.create_index([("end_time", ASCENDING)])
        # a cluster's pilots newest first (the dashboard's cluster page, pilot.dashboard.queries)
        self.pilots.create_index([("cluster", ASCENDING), ("submit_time", ASCENDING), ("_id", ASCENDING)])

    # ------------------------------------------------------------------ pilots
    def add_intent(self, job_name: str, cluster: str, category: str, walltime: float, margin: float,
                   script_path: str, now: float | None = None, profile: str = "default") -> None:
        """Write the record of a pilot about to be submitted (before the scheduler sees it), with its queue
        profile (a record without one, written before profiles existed, is of ``default``)."""
        self.pilots.insert_one({
            "_id": job_name, "job_name": job_name, "cluster": cluster, "category": category, "profile": profile,
            "job_id": None, "state": SUBMITTING, "native_state": None, "reason": None,
            "submit_time": now if now is not None else time.time(), "start_time": None, "end_time": None,
            "exit_code": None, "last_error": None, "walltime": walltime, "margin": margin,
            "fworker": None, "reconciled": False, "script_path": script_path, "unseen_cycles": 0,
        })

    def update(self, job_name: str, **fields: Any) -> None:
        self.pilots.update_one({"_id": job_name}, {"$set": fields})

    def live(self, cluster: str | None = None) -> list[dict[str, Any]]:
        """The records polled each cycle: pending, running, and uncertain ones not yet found dead (a VANISHED
        record leaves the polling once its lost work was reconciled)."""
        q = live_query()
        if cluster is not None:
            q["cluster"] = cluster
        return list(self.pilots.find(q))

    def ended_unreconciled(self) -> list[dict[str, Any]]:
        """Records whose job may be over and whose lost work is not yet dealt with (the liveness rule decides)."""
        return list(self.pilots.find({"state": {"$in": list(ENDED_STATES)}, "reconciled": False}))

    def recent_queue_waits(self, cluster: str, limit: int = 20, profile: str | None = None) -> list[float]:
        """How long the last ``limit`` pilots of ``cluster`` that started waited in its queue (seconds); of one
        queue profile only when ``profile`` is given (``default`` also matches records written before profiles
        existed)."""
        query: dict[str, Any] = {"cluster": cluster, "start_time": {"$ne": None}}
        if profile is not None:
            query["profile"] = {"$in": [profile, None]} if profile == "default" else profile
        docs = self.pilots.find(query,
                                {"submit_time": 1, "start_time": 1}).sort("start_time", -1).limit(limit)
        return [d["start_time"] - d["submit_time"] for d in docs
                if d.get("start_time") is not None and d.get("submit_time") is not None]

    # ------------------------------------------------------------------ clusters
    def cluster_ok(self, cluster: str, now: float) -> None:
        """Reachable: the outage (``down_since``) and a lapsed login (``needs_login``) are over."""
        self.clusters.update_one({"_id": cluster}, {"$set": {
            "reachable": True, "last_contact": now, "failures": 0, "backoff_until": None, "down_since": None,
            "needs_login": False}}, upsert=True)

    def cluster_failed(self, cluster: str, error: str, failures: int, backoff_until: float, now: float,
                       needs_login: bool = False) -> None:
        """Unreachable since ``down_since`` (the first failure of this outage, kept across failures: how long a
        cluster has been down decides when a person hears of it); ``needs_login``: its one-time-password login
        lapsed (``pilot connect`` opens a new one)."""
        self.clusters.update_one({"_id": cluster}, {"$set": {
            "reachable": False, "last_error": error, "last_error_time": now, "failures": failures,
            "backoff_until": backoff_until, "needs_login": needs_login}}, upsert=True)
        # a separate update: $min on a field that is null would keep the null (null sorts before numbers)
        self.clusters.update_one({"_id": cluster, "down_since": {"$in": [None]}}, {"$set": {"down_since": now}})

    def submission_refused(self, cluster: str, reason: str, now: float) -> None:
        """The scheduler refused a submission: ``refusing_since`` (kept across refusals in a row) and the reason. A
        cluster that answers its status query but refuses every ``sbatch`` (an account or QOS gone) is not
        unreachable, yet needs a person just the same (:mod:`pilot.notify`)."""
        self.clusters.update_one({"_id": cluster}, {"$set": {"last_refusal": reason}}, upsert=True)
        self.clusters.update_one({"_id": cluster, "refusing_since": {"$in": [None]}},
                                 {"$set": {"refusing_since": now}})

    def submission_accepted(self, cluster: str) -> None:
        """A submission went through: the refusals in a row are over."""
        self.clusters.update_one({"_id": cluster, "refusing_since": {"$ne": None}}, {"$set": {"refusing_since": None}})

    def cluster_state(self, cluster: str) -> dict[str, Any]:
        return self.clusters.find_one({"_id": cluster}) or {}

    # ------------------------------------------------------------------ failed starts and holds
    def unchecked_ended(self, cluster: str, since: float) -> list[dict[str, Any]]:
        """The cluster's pilots whose job reached a final scheduler state (ended after ``since``) and whose start
        was not yet judged by :mod:`pilot.manager.holds`, oldest end first."""
        return list(self.pilots.find({"cluster": cluster, "state": {"$in": list(FINAL_STATES)},
                                      "start_checked": {"$ne": True}, "end_time": {"$gte": since}})
                    .sort("end_time", ASCENDING))

    def mark_start_checked(self, job_name: str, outcome: str) -> None:
        """Judged once: ``outcome`` is ``failed``, ``started`` or ``ignored`` (see :mod:`pilot.manager.holds`)."""
        self.update(job_name, start_checked=True, start_outcome=outcome)

    def unproven_live(self, cluster: str) -> int:
        """The cluster's live pilots whose worker has not written a heartbeat (queued, or not started yet)."""
        return int(self.pilots.count_documents({**live_query(), "cluster": cluster, "heartbeat": None}))

    def ran_firework(self, fworker: str) -> bool:
        """Whether any launch (FireWorks' ``launches`` collection) names ``fworker``: the pilot took work."""
        return self.db["launches"].find_one({"fworker.name": fworker}, {"_id": 1}) is not None

    def set_failed_starts(self, cluster: str, count: int, hold: dict[str, Any] | None) -> None:
        """The cluster's failed starts in a row and its hold (None: not held)."""
        self.clusters.update_one({"_id": cluster}, {"$set": {"failed_starts": count, "hold": hold}}, upsert=True)

    # ------------------------------------------------------------------ drain and maintenance (issue 20)
    def drained(self) -> dict[str, dict[str, Any]]:
        """The drained clusters: name -> ``drain`` {since, until (epoch or None), by} (:mod:`pilot.manager.drain`)."""
        docs = self.clusters.find({"drain": {"$ne": None}}, {"drain": 1})
        return {str(d["_id"]): d["drain"] for d in docs if isinstance(d.get("drain"), dict)}

    def set_drain(self, cluster: str, drain: dict[str, Any] | None, only_since: float | None = None) -> bool:
        """Drain ``cluster`` (``drain`` {since, until, by}) or lift its drain (None); mark its live pilots so
        (:meth:`mark_drain`). ``only_since``: lift only the drain that began then (a drain given again meanwhile
        stays). True when the record changed."""
        query: dict[str, Any] = {"_id": cluster}
        if only_since is not None:
            query["drain.since"] = only_since
        if drain is None:
            res = self.clusters.update_one(query, {"$set": {"drain": None}})
        else:
            res = self.clusters.update_one(query, {"$set": {"drain": drain}}, upsert=True)
        changed = bool(res.modified_count or res.upserted_id is not None)
        if changed or only_since is None:
            self.mark_drain(cluster, drain is not None)
        return changed

    def mark_drain(self, cluster: str, on: bool) -> int:
        """Mark the cluster's live pilots ``drain: true`` (the worker stops before its next Firework), or take
        the mark off; how many records changed."""
        if on:
            res = self.pilots.update_many({**live_query(), "cluster": cluster, "drain": {"$ne": True}},
                                          {"$set": {"drain": True}})
        else:
            res = self.pilots.update_many({**live_query(), "cluster": cluster, "drain": True},
                                          {"$unset": {"drain": ""}})
        return int(res.modified_count)

    def recently_ended(self, since: float) -> list[dict[str, Any]]:
        """The category, cluster and profile of the pilots that ran and ended at ``since`` or later."""
        return list(self.pilots.find(ran_and_ended_since(since), {"category": 1, "cluster": 1, "profile": 1}))

    def unmark_drain_except(self, drained: set[str]) -> int:
        """Take the drain mark off the live pilots of every cluster not in ``drained``; how many changed."""
        res = self.pilots.update_many({**live_query(), "cluster": {"$nin": sorted(drained)}, "drain": True},
                                      {"$unset": {"drain": ""}})
        return int(res.modified_count)

    def is_drained(self, cluster: str, now: float) -> bool:
        """Whether ``cluster`` is drained now (one read by ``_id``): the last word before a submission."""
        doc = self.clusters.find_one({"_id": cluster}, {"drain": 1}) or {}
        drain = doc.get("drain")
        if not isinstance(drain, dict):
            return False
        until = drain.get("until")
        return not (isinstance(until, int | float) and until <= now)

    def set_maintenance(self, cluster: str, reservations: list[dict[str, Any]], checked: float) -> None:
        """The maintenance reservations the manager last read from the cluster ({name, start, end, partition},
        epoch seconds), and when (:mod:`pilot.manager.maintenance`): what ``pilot status`` shows."""
        self.clusters.update_one({"_id": cluster}, {"$set": {
            "maintenance": reservations, "maintenance_checked": checked, "maintenance_error": None}}, upsert=True)

    def set_maintenance_error(self, cluster: str, error: str, when: float) -> None:
        """Why the manager could not read the cluster's reservations (the last ones read stay)."""
        self.clusters.update_one({"_id": cluster}, {"$set": {"maintenance_error": error,
                                                             "maintenance_error_time": when}}, upsert=True)

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

    # ------------------------------------------------------------------ core-hours (issue 20, budgets)
    def unsettled_usage(self, cluster: str, ended_since: float) -> list[dict[str, Any]]:
        """The cluster's pilots whose core-hours are not final yet (:mod:`pilot.manager.accounting`): with a job
        id, started or over (never-started queued ones use nothing), and not ended before ``ended_since``; the
        ones answered longest ago first (a scheduler that answers only part of a batch, as OpenPBS >= 23.06
        answers ``qstat -f ID1 ID2`` for ID1 only, reaches every pilot in turn), then those asked longest ago."""
        query = {"cluster": cluster, "job_id": {"$ne": None}, "usage.final": {"$ne": True},
                 "state": {"$nin": [*PENDING_STATES, SUBMIT_FAILED]},
                 "$or": [{"end_time": None}, {"end_time": {"$gte": ended_since}}]}
        docs = list(self.pilots.find(query, {"job_id": 1, "usage": 1, "end_time": 1}))

        def order(d: dict[str, Any]) -> tuple[float, float]:
            u = d.get("usage")
            if not isinstance(u, dict):
                return 0.0, 0.0
            return float(u.get("answered") or 0.0), float(u.get("checked") or 0.0)
        return sorted(docs, key=order)

    def set_usages(self, usages: dict[str, dict[str, Any] | None], checked: float) -> None:
        """Each pilot's ``usage`` {cpus, seconds, core_seconds, account, start, end, final} as the scheduler gave
        it, with when it was asked (``checked``) and answered (``answered``); None: asked, not answered (the last
        numbers stay). One bulk write."""
        ops = [UpdateOne({"_id": name}, {"$set": {"usage.checked": checked}} if u is None else
                         {"$set": {"usage": {**u, "checked": checked, "answered": checked}}})
               for name, u in usages.items()]
        if ops:
            self.pilots.bulk_write(ops, ordered=False)

    def set_accounting_state(self, cluster: str, error: str | None, when: float) -> None:
        """How the cluster's last accounting query went (``accounting`` {ok, error, time}), for ``pilot status``."""
        self.clusters.update_one({"_id": cluster}, {"$set": {"accounting": {"ok": error is None, "error": error,
                                                                            "time": when}}}, upsert=True)

    def with_usage(self, cluster: str | None = None) -> list[dict[str, Any]]:
        """The pilots that have core-hours from the scheduler (of one cluster, or all): what budgets and
        ``pilot status``/``pilot report`` add up."""
        query: dict[str, Any] = {"usage.core_seconds": {"$ne": None}}
        if cluster is not None:
            query["cluster"] = cluster
        return list(self.pilots.find(query))

    # ------------------------------------------------------------------ manager heartbeat
    def heartbeat(self, info: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        """Write the manager's heartbeat fields; ``drop`` names fields that no longer apply (an older manager's
        ``routes`` when no cluster has an ssh route any more), so that nobody reads them as current."""
        update: dict[str, Any] = {"$set": info}
        if drop:
            update["$unset"] = {k: "" for k in drop}
        self.manager.update_one({"_id": "manager"}, update, upsert=True)
