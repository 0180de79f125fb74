"""The database reads of ``pilot report``: one method per query, each counted (``ThroughputReport.queries``).

Five kinds of command, whatever the size of the LaunchPad: one projected ``find`` of the pilot records that
may overlap the window, one aggregation of the launches (grouped by FWorker, time bin, state and kind), one
``find`` of the launches running now under running pilots, one aggregation of the manager's rerun history,
and, only for reruns of pilots outside the first query, one ``find`` of those pilots' clusters; plus one
one-document look-up of the first launch when no pilot gives the span of an unbounded window. Nothing
here does arithmetic: :mod:`pilot.report.fold` turns the rows into the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilot.report.times import iso_utc

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["CLOCK_SLACK_S", "ReportQueries", "launch_match"]

#: A pilot that ended up to this long before ``since`` may still own launches that ended after it
#: (clocks of the scheduler and of the compute node differ a little).
CLOCK_SLACK_S = 3600.0

Row = dict[str, Any]


def launch_match(since: float | None, until: float) -> dict[str, Any]:
    """The ``$match`` of the launches that ended in the window (``time_end`` is ISO UTC text)."""
    match: dict[str, Any] = {"state": {"$in": ["COMPLETED", "FIZZLED"]}}
    tq: dict[str, Any] = {"$lt": iso_utc(until)}
    if since is not None:
        tq["$gte"] = iso_utc(since)
    match["time_end"] = tq
    return match


class ReportQueries:
    """The LaunchPad's database (``LaunchPad.db``) and the number of commands sent so far."""

    def __init__(self, db: Database[Any]) -> None:
        self.db = db
        self.count = 0

    def pilots(self, since: float | None, until: float) -> list[Row]:
        """The pilot records submitted before ``until`` and not ended before ``since`` (one projected query)."""
        pq: dict[str, Any] = {"submit_time": {"$lte": until}}
        if since is not None:
            pq["$or"] = [{"end_time": None}, {"end_time": {"$gte": since - CLOCK_SLACK_S}}]
        proj = {"cluster": 1, "state": 1, "submit_time": 1, "start_time": 1, "end_time": 1, "fworker": 1,
                "profile": 1, "category": 1, "usage": 1}
        rows = list(self.db["pilots"].find(pq, proj))
        self.count += 1
        return rows

    def earliest_launch_end(self, match: dict[str, Any]) -> Any:
        """``time_end`` of the first launch matching ``match`` (None when there is none)."""
        earliest = list(self.db["launches"].find(match, {"time_end": 1, "_id": 0}).sort("time_end", 1).limit(1))
        self.count += 1
        return earliest[0].get("time_end") if earliest else None

    def launch_groups(self, match: dict[str, Any], prefix: int) -> list[Row]:
        """The launches of ``match`` in one aggregation, grouped by FWorker, time bin (the first ``prefix``
        characters of ``time_end``), state, segment or not, and finished run or not.

        Each group also sums the trajectory its segments added, ``steps_done x dt_ps`` in ps (``ps``; a record
        without ``dt_ps`` adds nothing there: ``$multiply`` of a missing field is null, which ``$sum`` skips),
        and counts the segments that advanced without a ``dt_ps`` (``nodt``: older records, trajectory unknown).
        """
        missing = None
        steps, dt = "$action.stored_data.steps_done", "$action.stored_data.dt_ps"
        is_seg = {"$cond": [{"$eq": [{"$ifNull": [steps, missing]}, missing]}, 0, 1]}
        no_dt = {"$cond": [{"$and": [{"$eq": [{"$ifNull": [dt, missing]}, missing]},
                                     {"$gt": [{"$ifNull": [steps, 0]}, 0]}]}, 1, 0]}
        pipeline = [
            {"$match": match},
            {
                "$group": {
                    "_id": {
                        "w": "$fworker.name",
                        "bin": {"$substr": ["$time_end", 0, prefix]},
                        "state": "$state",
                        "seg": is_seg,
                        "fin": {"$cond": [{"$eq": ["$action.stored_data.outcome", "finished"]}, 1, 0]},
                    },
                    "n": {"$sum": 1},
                    "busy": {"$sum": "$runtime_secs"},
                    "steps": {"$sum": steps},
                    "ps": {"$sum": {"$multiply": [steps, dt]}},
                    "nodt": {"$sum": no_dt},
                }
            },
        ]
        rows = list(self.db["launches"].aggregate(pipeline))
        self.count += 1
        return rows

    def running_launches(self, fworkers: list[str]) -> list[Row]:
        """The RUNNING launches of these FWorkers: their FWorker name and start time."""
        rows = list(
            self.db["launches"].find(
                {"state": "RUNNING", "fworker.name": {"$in": fworkers}},
                {"fworker.name": 1, "time_start": 1, "_id": 0},
            )
        )
        self.count += 1
        return rows

    def reruns(self, since: float | None, until: float) -> list[Row]:
        """Reruns in the window per pilot job name (one aggregation over the ``pilot_reruns`` history)."""
        rq: dict[str, Any] = {"$lt": until}
        if since is not None:
            rq["$gte"] = since
        rows = list(
            self.db["pilot_reruns"].aggregate(
                [
                    {"$unwind": "$history"},
                    {"$match": {"history.time": rq}},
                    {"$group": {"_id": "$history.pilot", "n": {"$sum": 1}}},
                ]
            )
        )
        self.count += 1
        return rows

    def pilot_clusters(self, job_names: list[str]) -> list[Row]:
        """The cluster of each of these pilot records (pilots outside the window that owned reruns)."""
        rows = list(self.db["pilots"].find({"_id": {"$in": job_names}}, {"cluster": 1}))
        self.count += 1
        return rows
