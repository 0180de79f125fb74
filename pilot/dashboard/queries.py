"""What the cluster and Firework pages read: one page of a list at a time, indexed queries with projections.

Why here and not in :mod:`pilot.status`: ``pilot status`` answers "what now" with counts; these pages answer
"what happened to this one" with records, a page (:data:`PAGE_SIZE`) at a time, so that a campaign of 100,000
Fireworks costs the same as one of ten. Every query names the fields it needs and filters on an indexed field:
``pilots`` by ``cluster`` (the manager's index ``cluster, state``), ``launches`` by ``fworker.name`` and
``launch_id``, ``fireworks`` by ``fw_id`` and ``state`` (FireWorks' own indexes, ``lpad admin tuneup``).
The overview needs no query of its own: it is :func:`pilot.status.gather_status`, the report that
``pilot status --json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pilot.fit import number
from pilot.status import error_line

__all__ = ["PAGE_SIZE", "Page", "cluster_pilots", "firework_detail", "fireworks_page", "pilot_fireworks"]

#: Entries per page of every list.
PAGE_SIZE = 50

_PILOT_FIELDS = {"_id": 0, "job_name": 1, "job_id": 1, "state": 1, "category": 1, "profile": 1, "submit_time": 1,
                 "start_time": 1, "end_time": 1, "exit_code": 1, "fworker": 1, "reason": 1, "last_error": 1}


@dataclass
class Page:
    """One page of a list: its items, its number (from 1), and whether another follows."""

    items: list[dict[str, Any]]
    number: int
    more: bool
    size: int = PAGE_SIZE
    total: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _page(cursor: Any, number_: int, size: int) -> Page:
    """Read one page from a sorted cursor: ``size + 1`` documents tell whether another page follows, without
    counting the collection."""
    docs = list(cursor.skip((number_ - 1) * size).limit(size + 1))
    return Page(docs[:size], number_, len(docs) > size, size)


def cluster_pilots(db: Any, cluster: str, page: int = 1, size: int = PAGE_SIZE) -> Page:
    """The cluster's pilot records, newest submission first, with the number of Fireworks each pilot ran."""
    cur = db["pilots"].find({"cluster": cluster}, _PILOT_FIELDS).sort([("submit_time", -1), ("_id", -1)])
    out = _page(cur, page, size)
    out.items = [{k: p.get(k) for k in _PILOT_FIELDS if k != "_id"} for p in out.items]
    names = [str(p["fworker"]) for p in out.items if p.get("fworker")]
    counts: dict[str, int] = {}
    if names:
        for row in db["launches"].aggregate([{"$match": {"fworker.name": {"$in": names}}},
                                             {"$group": {"_id": "$fworker.name", "n": {"$sum": 1}}}]):
            counts[str(row["_id"])] = int(row["n"])
    for p in out.items:
        p["fireworks_run"] = counts.get(str(p.get("fworker")), 0) if p.get("fworker") else 0
    return out


def pilot_fireworks(db: Any, job_name: str, page: int = 1, size: int = PAGE_SIZE) -> tuple[dict[str, Any] | None,
                                                                                               Page]:
    """A pilot's record and one page of the launches it ran (by its fworker name), newest first."""
    rec = db["pilots"].find_one({"_id": job_name}, {**_PILOT_FIELDS, "cluster": 1})
    if rec is not None:
        rec = {k: rec.get(k) for k in [*_PILOT_FIELDS, "cluster"] if k != "_id"}
    if rec is None or not rec.get("fworker"):
        return rec, Page([], page, False, size)
    cur = db["launches"].find({"fworker.name": str(rec["fworker"])},
                              {"_id": 0, "launch_id": 1, "fw_id": 1, "state": 1, "time_start": 1, "time_end": 1,
                               "host": 1}).sort([("launch_id", -1)])
    return rec, _page(cur, page, size)


def fireworks_page(db: Any, state: str | None, page: int = 1, size: int = PAGE_SIZE) -> Page:
    """Fireworks (of one state, or all), newest first: fw_id, name, state, category, updated_on.

    Newest by ``_id`` (insertion order, as FireWorks gives ids): FireWorks' own index ``(state, _id)``, made for
    its web GUI's lists, then serves the filter and the order at once.
    """
    query = {"state": state} if state else {}
    cur = db["fireworks"].find(query, {"_id": 0, "fw_id": 1, "name": 1, "state": 1, "spec._category": 1,
                                       "updated_on": 1}).sort([("_id", -1)])
    return _page(cur, page, size)


def _pilots_by_fworker(db: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    return {str(p["fworker"]): p for p in db["pilots"].find({"fworker": {"$in": names}},
                                                             {"fworker": 1, "job_name": 1, "job_id": 1,
                                                              "cluster": 1})}


def firework_detail(db: Any, fw_id: int) -> dict[str, Any] | None:
    """Everything the Firework page shows, or None when there is no such Firework.

    Keys: ``fw`` (fw_id, name, state, category, created_on, updated_on), ``launches`` (newest first: launch_id,
    state, host, fworker, pilot, cluster, job_id, time_start, time_end, state_history, archived), ``reruns``
    (``pilot_reruns`` history, oldest first), ``error`` (the line that says why it fizzled, FIZZLED only) and
    ``workflow`` (name, state, its Fireworks by state; None without one).
    """
    fw = db["fireworks"].find_one({"fw_id": fw_id}, {"_id": 0, "fw_id": 1, "name": 1, "state": 1,
                                                      "spec._category": 1, "created_on": 1, "updated_on": 1,
                                                      "launches": 1, "archived_launches": 1})
    if fw is None:
        return None
    current = [int(x) for x in fw.get("launches") or [] if isinstance(x, int)]
    archived = [int(x) for x in fw.get("archived_launches") or [] if isinstance(x, int)]
    docs = list(db["launches"].find({"launch_id": {"$in": current + archived}},
                                    {"_id": 0, "launch_id": 1, "state": 1, "host": 1, "fworker.name": 1,
                                     "time_start": 1, "time_end": 1, "state_history": 1,
                                     "action.stored_data._message": 1,
                                     "action.stored_data._exception._stacktrace": 1}).sort([("launch_id", -1)]))
    pilots = _pilots_by_fworker(db, sorted({str((d.get("fworker") or {}).get("name")) for d in docs
                                            if (d.get("fworker") or {}).get("name")}))
    launches = []
    for d in docs:
        name = (d.get("fworker") or {}).get("name")
        rec = pilots.get(str(name), {})
        launches.append({"launch_id": d.get("launch_id"), "state": d.get("state"), "host": d.get("host"),
                         "fworker": name, "pilot": rec.get("job_name"), "cluster": rec.get("cluster"),
                         "job_id": rec.get("job_id"), "time_start": d.get("time_start"),
                         "time_end": d.get("time_end"), "archived": d.get("launch_id") in archived,
                         "state_history": [{"state": h.get("state"), "created_on": h.get("created_on")}
                                           for h in d.get("state_history") or [] if isinstance(h, dict)],
                         "stored_data": (d.get("action") or {}).get("stored_data")})
    rerun_doc = db["pilot_reruns"].find_one({"_id": fw_id}, {"history": 1, "count": 1}) or {}
    error = None
    if fw.get("state") == "FIZZLED":
        last = next((x for x in launches if x["launch_id"] == (current[-1] if current else None)), None)
        error = "no launch recorded" if last is None else error_line(last["stored_data"])
    for x in launches:   # the error line is what a page shows; whole stack traces stay in the LaunchPad
        x.pop("stored_data", None)
    info = {"fw_id": fw["fw_id"], "name": fw.get("name"), "state": fw.get("state"),
            "category": (fw.get("spec") or {}).get("_category"), "created_on": fw.get("created_on"),
            "updated_on": fw.get("updated_on")}
    return {"fw": info, "launches": launches, "reruns": list(rerun_doc.get("history") or []),
            "rerun_count": number(rerun_doc.get("count")) or 0, "error": error, "workflow": _workflow(db, fw_id)}


def _workflow(db: Any, fw_id: int) -> dict[str, Any] | None:
    """The Firework's workflow: name, state, and its Fireworks counted by state (FireWorks keeps ``fw_states``
    in the workflow's document; ``nodes`` is indexed)."""
    wf = db["workflows"].find_one({"nodes": fw_id}, {"_id": 0, "name": 1, "state": 1, "fw_states": 1})
    if wf is None:
        return None
    counts: dict[str, int] = {}
    for state in (wf.get("fw_states") or {}).values():
        counts[str(state)] = counts.get(str(state), 0) + 1
    return {"name": wf.get("name"), "state": wf.get("state"), "counts": dict(sorted(counts.items()))}
