"""``gather_status``: the LaunchPad/records queries of ``pilot status`` and the :class:`StatusReport` they make.

How it stays fast with 100,000 Fireworks
----------------------------------------
No query reads every Firework. The counts per category and state come from ``count`` commands on the
indexed fields ``state`` and ``spec._category`` (FireWorks' ``LaunchPad.tuneup`` indexes both): on
MongoDB each is an index scan, and on the embedded server (:mod:`pilot.launchpad`, which copies every
document an aggregation reads) a ``count`` reads no document at all, where one ``$group`` over 100,000
Fireworks would hold the server's lock for many seconds and stall every pilot. The pilot records are
aggregated after a selective ``$match`` (live pilots, pilots ended recently). The problem lists are
indexed look-ups with a limit; the lists of READY work no pilot takes (:mod:`pilot.status.waiting`) run their
filters only where the manager's demand groups say they may find something, narrowed to the values those
groups hold (:mod:`pilot.status.shapes`).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pilot.checks.probes import address_of
from pilot.isotime import epoch_seconds
from pilot.launchpad.files import uri_hosts
from pilot.manager.accounting import number
from pilot.manager.records import PENDING_STATES, RUNNING_STATES, ended_query, live_query
from pilot.status.gates import cluster_gates, gate_waits
from pilot.status.model import (
    FW_STATES,
    OTHER_CATEGORIES,
    CategoryStatus,
    ClusterStatus,
    FizzledFirework,
    HoldStatus,
    LostRun,
    PendingPilot,
    RouteCondition,
    RouteStatus,
    StatusOptions,
    StatusReport,
    first_line,
)
from pilot.status.notify import gather_notifications
from pilot.status.share import gather_share
from pilot.status.usage import gather_usage
from pilot.status.waiting import pinned_warnings, ready_groups_of, too_big_items, too_long_items

if TYPE_CHECKING:
    from pymongo.database import Database

    from pilot.config import Config

__all__ = ["MAX_DISCOVERED", "RECORDS_WINDOW", "describe_launchpad", "error_line", "gather_status", "pilot_files"]

#: At most this many categories that no cluster serves are named; Fireworks of any further ones are summed.
MAX_DISCOVERED = 50
#: Without a config, the categories a cluster serves come from its pilot records of this many seconds.
RECORDS_WINDOW = 30 * 86400.0


def error_line(stored_data: Any) -> str:
    """The line that says why a launch fizzled.

    The last non-empty line of ``_exception._stacktrace`` (for a Python exception: ``Type: message``),
    else the first line of ``_message``; FireWorks' Rocket stores both (fireworks/core/rocket.py).
    """
    if not isinstance(stored_data, dict):
        return "no error recorded (the launch has no stored_data)"
    exc = stored_data.get("_exception")
    trace = exc.get("_stacktrace") if isinstance(exc, dict) else None
    if isinstance(trace, str):
        lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    msg = stored_data.get("_message")
    if isinstance(msg, str) and msg.strip():
        return first_line(msg)
    return "no error recorded (stored_data has neither _exception._stacktrace nor _message)"



def describe_launchpad(lp: Any) -> dict[str, Any]:
    """Where the LaunchPad lives, without credentials: ``{"host": ..., "name": ...}``."""
    host = str(getattr(lp, "host", "") or "")
    if "://" in host:
        host = uri_hosts(host)
    elif getattr(lp, "port", None):
        host = f"{host}:{lp.port}"
    return {"host": host, "name": getattr(lp, "name", None) or getattr(getattr(lp, "db", None), "name", None)}


def _cat_key(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def pilot_files(work_dir: str | None, job_id: str | None) -> tuple[str | None, str | None]:
    """The pilot job's output and error files: ``work_dir/pilot-<jobid>.out`` / ``.err``.

    The name rule is the job templates' (templates/*.sh.j2: ``/`` in a job id becomes ``_``).
    """
    if not work_dir or not job_id:
        return None, None
    fid = str(job_id).replace("/", "_")
    return f"{work_dir}/pilot-{fid}.out", f"{work_dir}/pilot-{fid}.err"


def gather_status(db: Database[Any], config: Config | None = None, now: float | None = None,
                  options: StatusOptions | None = None, launchpad_info: dict[str, Any] | None = None,
                  warnings: Sequence[str] = ()) -> StatusReport:
    """Read the LaunchPad database once and build a :class:`StatusReport`.

    Parameters
    ----------
    db : pymongo.database.Database
        The LaunchPad's database (``LaunchPad.db``).
    config : pilot.config.Config | None
        The loaded config directory; without it the clusters and their categories come from the records.
    now : float | None
        Epoch seconds (default: now).
    options : StatusOptions | None
        Thresholds and list lengths.
    launchpad_info : dict | None
        ``{"host", "name"}`` to show (see :func:`describe_launchpad`).
    warnings : sequence of str
        Notes to carry into the report (a config that could not be loaded, ...).

    Returns
    -------
    StatusReport
    """
    opts = options or StatusOptions()
    now = time.time() if now is None else float(now)
    q = _Queries(db)

    manager = q.find_one("pilot_manager", {"_id": "manager"})
    manager_info = None
    if manager:
        manager_info = {"last_cycle": number(manager.get("last_cycle")),
                        "last_cycle_duration": number(manager.get("last_cycle_duration")),
                        "errors": {str(k): str(v) for k, v in (manager.get("errors") or {}).items()},
                        "decisions": _decisions(manager.get("decisions"))}
    stale = _manager_stale(manager_info, config, now, opts)
    clusters = _clusters(q, config, now, opts, manager, stale is not None)
    categories = _categories(q, config, clusters)
    by_cluster = {c.name: c for c in clusters}
    fizzled_total = sum(c.count("FIZZLED") for c in categories)
    fizzled = _fizzled(q, config, opts) if fizzled_total else []
    unserved = [{"category": c.name, "ready": c.count("READY")} for c in categories
                if c.count("READY") and not c.served_by]
    pending_total, pending = _pending_long(q, now, opts)
    lost = _lost_runs(q, opts)
    groups = ready_groups_of(q, categories)   # READY work no pilot takes (pilot/status/waiting.py)
    too_long = too_long_items(q, categories, by_cluster, opts, groups)
    too_big = too_big_items(q, categories, config, opts, groups) if config is not None else []
    warnings = [*warnings, *pinned_warnings(q, categories, opts, config, groups)]
    return StatusReport(
        generated_at=now, launchpad=launchpad_info or {"host": None, "name": getattr(db, "name", None)},
        config_dir=str(config.config_dir) if config is not None else None, options=opts,
        manager=manager_info, manager_stale=stale, clusters=clusters, categories=categories,
        fizzled_total=fizzled_total, fizzled=fizzled, unserved=unserved, pending_total=pending_total,
        pending_long=pending, lost_runs=lost, too_long=too_long, warnings=list(warnings), queries=q.count,
        gate_waits=gate_waits(manager_info), too_big=too_big, share=gather_share(q, config, manager_info, now),
        usage=gather_usage(q, config, now, (manager_info or {}).get("decisions")),  # CORE-HOURS
        notifications=gather_notifications(q, config))  # NOTIFICATIONS


def _decisions(raw: Any) -> list[dict[str, Any]]:
    """The last cycle's decisions from the manager's heartbeat (an older manager wrote none: empty)."""
    keys = {"cluster": str, "unit": str, "profile": str, "category": str, "reason": str, "shape": str}
    counts = ("ready", "fits", "slots", "pending", "running", "submit")
    out = []
    for d in raw if isinstance(raw, list) else []:
        if not isinstance(d, dict):
            continue
        row: dict[str, Any] = {k: str(d.get(k) or "") for k in keys}
        row.update({k: int(d.get(k) or 0) for k in counts})
        row["queue_wait"] = number(d.get("queue_wait"))
        out.append(row)
    return out


class _Queries:
    """The database handle, counting the round trips (``StatusReport.queries``)."""

    def __init__(self, db: Database[Any]) -> None:
        self.db = db
        self.count = 0

    def aggregate(self, coll: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.count += 1
        return list(self.db[coll].aggregate(pipeline))

    def find(self, coll: str, query: dict[str, Any], projection: dict[str, Any] | None = None,
             sort: list[tuple[str, int]] | None = None, limit: int = 0) -> list[dict[str, Any]]:
        self.count += 1
        cur = self.db[coll].find(query, projection)
        if sort:
            cur = cur.sort(sort)
        if limit:
            cur = cur.limit(limit)
        return list(cur)

    def find_one(self, coll: str, query: dict[str, Any],
                 projection: dict[str, Any] | None = None) -> dict[str, Any] | None:
        self.count += 1
        doc = self.db[coll].find_one(query, projection)
        return dict(doc) if doc else None

    def count_documents(self, coll: str, query: dict[str, Any]) -> int:
        """The ``count`` command: index-backed on MongoDB and on the embedded server, where it reads no
        document (``count_documents`` would run an aggregation that copies every matching document)."""
        from pymongo.errors import OperationFailure

        self.count += 1
        try:
            return int(self.db.command("count", coll, query=query)["n"])
        except OperationFailure:  # e.g. a server in Stable API strict mode, which has no "count"
            return int(self.db[coll].count_documents(query))



def _clusters(q: _Queries, config: Config | None, now: float, opts: StatusOptions,
              manager: dict[str, Any] | None = None, stale: bool = False) -> list[ClusterStatus]:
    """Every cluster: the config's, and any the pilot records, the manager's cluster records or the routes of
    its heartbeat (``manager``, too old to tell when ``stale``) name."""
    out: dict[str, ClusterStatus] = {}
    if config is not None:
        for cname, c in config.clusters.items():
            out[cname] = ClusterStatus(
                name=cname, in_config=True, scheduler=c.scheduler.value, address=address_of(c),
                categories=list(c.categories),
                usable_walltime=float(max(0, c.walltime_seconds - c.walltime_margin)))
    _add_pilot_counts(q, out, now - opts.recent)
    if config is None:
        _add_served_categories(q, out, now)
    _add_cluster_records(q, out, now)
    _add_routes(out, config, manager, stale)
    return [out[k] for k in sorted(out)]


def _add_pilot_counts(q: _Queries, out: dict[str, ClusterStatus], since: float) -> None:
    """The live pilots and those that ended since ``since``, per cluster and state."""
    # each aggregation starts with a selective $match, so the database reads only those records, however
    # long the history is
    live = q.aggregate("pilots", [
        {"$match": live_query()},
        {"$group": {"_id": {"cluster": "$cluster", "state": "$state"}, "n": {"$sum": 1}}},
    ])
    ended = q.aggregate("pilots", [
        {"$match": {"end_time": {"$gte": since}, **ended_query()}},
        {"$group": {"_id": {"cluster": "$cluster", "state": "$state"}, "n": {"$sum": 1}}},
    ])
    for rows, kind in ((live, "live"), (ended, "ended")):
        for row in rows:
            key = row.get("_id") or {}
            name = key.get("cluster")
            if not isinstance(name, str):
                continue
            cs = out.setdefault(name, ClusterStatus(name=name))
            state, n = str(key.get("state")), int(row.get("n") or 0)
            p = cs.pilots
            if kind == "ended":
                p.ended_recently += n
                p.ended_recently_by_state[state] = p.ended_recently_by_state.get(state, 0) + n
            elif state in PENDING_STATES:
                p.pending += n
            elif state in RUNNING_STATES:
                p.running += n
            else:
                p.uncertain += n


def _add_served_categories(q: _Queries, out: dict[str, ClusterStatus], now: float) -> None:
    """Without a config: which categories each cluster served, and the wall time its pilots had, from the
    records of the last RECORDS_WINDOW seconds."""
    for row in q.aggregate("pilots", [
        {"$match": {"submit_time": {"$gte": now - RECORDS_WINDOW}}},
        {"$group": {"_id": {"cluster": "$cluster", "category": "$category"},
                    "usable": {"$max": {"$subtract": [{"$ifNull": ["$walltime", 0]},
                                                      {"$ifNull": ["$margin", 0]}]}}}},
    ]):
        key = row.get("_id") or {}
        name, cat = key.get("cluster"), key.get("category")
        if not isinstance(name, str):
            continue
        cs = out.setdefault(name, ClusterStatus(name=name))
        if isinstance(cat, str) and cat not in cs.categories:
            cs.categories.append(cat)
            cs.categories.sort()
        u = number(row.get("usable"))
        if u is not None and u > 0:
            cs.usable_walltime = max(cs.usable_walltime or 0.0, u)


def _add_cluster_records(q: _Queries, out: dict[str, ClusterStatus], now: float) -> None:
    """The manager's verdict on each cluster (``pilot_clusters``): reachable, errors, back-off."""
    for doc in q.find("pilot_clusters", {}):
        name = doc.get("_id")
        if not isinstance(name, str):
            continue
        cs = out.setdefault(name, ClusterStatus(name=name))
        reach = doc.get("reachable")
        cs.reachable = reach if isinstance(reach, bool) else None
        cs.last_contact = number(doc.get("last_contact"))
        cs.last_error = doc.get("last_error") if isinstance(doc.get("last_error"), str) else None
        cs.last_error_time = number(doc.get("last_error_time"))
        cs.failures = int(doc.get("failures") or 0)
        cs.backoff_until = number(doc.get("backoff_until"))
        cs.backed_off = bool(cs.backoff_until and cs.backoff_until > now)
        cs.needs_login = cs.reachable is False and doc.get("needs_login") is True
        cs.down_since = number(doc.get("down_since")) if cs.reachable is False else None
        if cs.reachable and (cs.last_error_time or 0) <= (cs.last_contact or 0):
            cs.last_error = None  # an error from before the last good contact is history
        cs.failed_starts = int(doc.get("failed_starts") or 0)
        # held back because its pilots cannot start (pilot.manager.holds)
        cs.hold = HoldStatus.from_doc(doc["hold"]) if isinstance(doc.get("hold"), dict) else None
        cs.gates = cluster_gates(doc, now)   # drained, maintenance coming (pilot.status.gates)


def _add_routes(out: dict[str, ClusterStatus], config: Config | None, manager: dict[str, Any] | None,
                stale: bool) -> None:
    """The LaunchPad route of each ssh-routed cluster: the state the manager's heartbeat holds (field ``routes``,
    written by :meth:`pilot.manager.cycle.Manager.run_cycle` while it keeps any route).

    With a config, only the clusters it routes ``ssh`` have a route (a state the heartbeat still holds for another
    cluster was left there by a manager that ran an older config: nothing says it is kept now), and one of them
    that the heartbeat lacks is "not kept" (or unknown when the heartbeat is ``stale``). Without a config, the
    heartbeat alone says which clusters have a route.
    """
    states = _heartbeat_routes(manager)
    if config is None:
        for name, state in sorted(states.items()):
            out.setdefault(name, ClusterStatus(name=name)).route = _route_status(state, None, stale)
        return
    for name, c in config.clusters.items():
        route = c.ssh_route
        if route is not None and name in out:
            out[name].route = _route_status(states.get(name), route.port, stale)


def _heartbeat_routes(manager: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Cluster name -> its route state, from the heartbeat (entries that are not mappings are left out)."""
    routes = (manager or {}).get("routes")
    if not isinstance(routes, dict):
        return {}
    return {str(k): dict(v) for k, v in routes.items() if isinstance(v, dict)}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _route_status(state: dict[str, Any] | None, config_port: int | None, stale: bool) -> RouteStatus:
    """One route's :class:`RouteStatus`. A stale heartbeat's ``up`` is no news: it becomes unknown (``None``)."""
    if state is None:
        if stale:
            return RouteStatus(via="ssh", condition=RouteCondition.UNKNOWN, up=None, port=config_port)
        return RouteStatus(via="ssh", condition=RouteCondition.NOT_KEPT, up=False, port=config_port)
    up = state.get("up")
    error = state.get("last_error")
    route = RouteStatus(via="ssh", condition=RouteCondition.UNKNOWN, up=None, since=number(state.get("since")),
                        last_error=error if isinstance(error, str) and error.strip() else None,
                        port=_int(state.get("port")) or config_port, connects=_int(state.get("connects")))
    if stale or not isinstance(up, bool):
        return route
    route.up = up
    if up:
        route.condition = RouteCondition.UP
    elif route.since is None and route.last_error is None:
        route.condition = RouteCondition.STARTING     # the keeper's first attempt has not ended yet
    else:
        route.condition = RouteCondition.DOWN
    return route


def _categories(q: _Queries, config: Config | None, clusters: list[ClusterStatus]) -> list[CategoryStatus]:
    """Fireworks per category and state, from index-backed ``count`` commands (see the module notes).

    Per state: one count, one per known category (those the clusters serve) until the total is explained,
    one for Fireworks without a category; a category nobody knows is found with a one-document look-up
    (``find_one`` of a Firework whose category is not among the known ones) and counted, up to
    ``MAX_DISCOVERED`` of them; anything beyond that is summed in the row ``OTHER_CATEGORIES``.
    """
    serving: dict[str, list[str]] = {}
    for c in clusters:
        if config is not None and not c.in_config:
            continue  # a cluster removed from the config serves nothing any more
        for cat in c.categories:
            serving.setdefault(cat, []).append(c.name)
    known: list[str] = sorted(serving)
    counts: dict[str | None, dict[str, int]] = {cat: {} for cat in known}
    rest: dict[str, int] = {}
    discovered = 0
    for state in FW_STATES:
        total = q.count_documents("fireworks", {"state": state})
        if not total:
            continue
        left = total
        for cat in list(known):
            if left <= 0:
                break
            n = q.count_documents("fireworks", {"state": state, "spec._category": cat})
            if n:
                counts[cat][state] = n
                left -= n
        if left > 0:  # a missing or null _category
            n = q.count_documents("fireworks", {"state": state, "spec._category": None})
            if n:
                counts.setdefault(None, {})[state] = n
                left -= n
        while left > 0 and discovered < MAX_DISCOVERED:
            doc = q.find_one("fireworks", {"state": state, "spec._category": {"$nin": [*known, None]}},
                             {"spec._category": 1})
            cat = (doc or {}).get("spec", {}).get("_category")
            if not isinstance(cat, str):
                break  # none left, or a category that is not a string (an array): counted as "other"
            n = q.count_documents("fireworks", {"state": state, "spec._category": cat})
            known.append(cat)
            counts[cat] = {state: n}
            discovered += 1
            left -= n
            if n == 0:
                break
        if left > 0:
            rest[state] = left
    cats = []
    for name, by_state in counts.items():
        cs = CategoryStatus(name=name, counts={st: by_state.get(st, 0) for st in FW_STATES},
                            total=sum(by_state.values()))
        cs.served_by = sorted(serving.get(name, [])) if name is not None else []
        cats.append(cs)
    if rest:
        cats.append(CategoryStatus(name=OTHER_CATEGORIES, counts={st: rest.get(st, 0) for st in FW_STATES},
                                   total=sum(rest.values())))
    return sorted(cats, key=lambda c: (c.name is None, c.name == OTHER_CATEGORIES, c.name or ""))


def _fizzled(q: _Queries, config: Config | None, opts: StatusOptions) -> list[FizzledFirework]:
    fws = q.find("fireworks", {"state": "FIZZLED"}, {"fw_id": 1, "name": 1, "spec._category": 1, "launches": 1,
                                                      "updated_on": 1},
                 sort=[("updated_on", -1), ("fw_id", -1)], limit=opts.limit)
    last = {int(fw["fw_id"]): (fw.get("launches") or [None])[-1] for fw in fws}
    ids = [lid for lid in last.values() if isinstance(lid, int)]
    launches: dict[int, dict[str, Any]] = {}
    if ids:
        for d in q.find("launches", {"launch_id": {"$in": ids}},
                        {"launch_id": 1, "launch_dir": 1, "host": 1, "fworker.name": 1, "time_end": 1,
                         "action.stored_data._message": 1, "action.stored_data._exception._stacktrace": 1}):
            launches[int(d["launch_id"])] = d
    names = sorted({str((d.get("fworker") or {}).get("name")) for d in launches.values()
                    if (d.get("fworker") or {}).get("name")})
    pilots: dict[str, dict[str, Any]] = {}
    if names:
        for p in q.find("pilots", {"fworker": {"$in": names}},
                        {"fworker": 1, "cluster": 1, "job_id": 1, "script_path": 1, "job_name": 1}):
            pilots[str(p["fworker"])] = p
    out = []
    for fw in fws:
        fw_id = int(fw["fw_id"])
        lid = last.get(fw_id)
        ld = launches.get(lid) if isinstance(lid, int) else None
        item = FizzledFirework(fw_id=fw_id, name=fw.get("name"), category=_cat_key((fw.get("spec") or {}).get(
            "_category")), error="no launch recorded" if ld is None else error_line(
            (ld.get("action") or {}).get("stored_data")), launch_id=lid if isinstance(lid, int) else None)
        if ld is not None:
            item.launch_dir = ld.get("launch_dir")
            item.host = ld.get("host")
            item.fworker = (ld.get("fworker") or {}).get("name")
            item.time = epoch_seconds(ld.get("time_end")) or epoch_seconds(fw.get("updated_on"))
            rec = pilots.get(str(item.fworker)) if item.fworker else None
            if rec is not None:
                item.pilot = rec.get("job_name")
                item.cluster = rec.get("cluster")
                item.pilot_output, item.pilot_error = pilot_files(_work_dir(config, rec), rec.get("job_id"))
        out.append(item)
    return out


def _work_dir(config: Config | None, pilot: dict[str, Any]) -> str | None:
    """The pilot's work_dir: the cluster's config, else the folder above its job script (work_dir/scripts/)."""
    name = pilot.get("cluster")
    if config is not None and name in config.clusters:
        return str(config.clusters[name].work_dir)
    script = pilot.get("script_path")
    if isinstance(script, str) and "/" in script:
        return posixpath.dirname(posixpath.dirname(script)) or None
    return None


def _pending_long(q: _Queries, now: float, opts: StatusOptions) -> tuple[int, list[PendingPilot]]:
    query = {"state": {"$in": list(PENDING_STATES)}, "submit_time": {"$lt": now - opts.pending_warn}}
    docs = q.find("pilots", query, {"job_name": 1, "cluster": 1, "category": 1, "job_id": 1, "state": 1,
                                    "reason": 1, "submit_time": 1}, sort=[("submit_time", 1)], limit=opts.limit)
    total = len(docs) if len(docs) < opts.limit else q.count_documents("pilots", query)
    out = [PendingPilot(job_name=str(d.get("job_name") or d.get("_id")), cluster=str(d.get("cluster")),
                        category=d.get("category"), job_id=d.get("job_id"), state=str(d.get("state")),
                        reason=d.get("reason"), submit_time=number(d.get("submit_time")),
                        waiting=now - (number(d.get("submit_time")) or now)) for d in docs]
    return total, out


def _lost_runs(q: _Queries, opts: StatusOptions) -> list[LostRun]:
    from pilot.manager.records import ENDED_STATES

    running = q.find("launches", {"state": "RUNNING"}, {"launch_id": 1, "fw_id": 1, "fworker.name": 1})
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for d in running:
        name = (d.get("fworker") or {}).get("name")
        if isinstance(name, str):
            by_worker.setdefault(name, []).append(d)
    if not by_worker:
        return []
    ended = {str(p["fworker"]): p for p in q.find(
        "pilots", {"fworker": {"$in": sorted(by_worker)}, "state": {"$in": [*ENDED_STATES, "SUBMIT_FAILED"]}},
        {"fworker": 1, "job_name": 1, "cluster": 1, "state": 1, "end_time": 1})}
    if not ended:
        return []
    cands = [d for name in ended for d in by_worker[name]]
    fws = {int(f["fw_id"]): f for f in q.find("fireworks", {"fw_id": {"$in": [int(d["fw_id"]) for d in cands]},
                                                          "state": "RUNNING"}, {"fw_id": 1, "launches": 1, "name": 1})}
    out = []
    for d in sorted(cands, key=lambda d: int(d["fw_id"])):
        fw = fws.get(int(d["fw_id"]))
        if fw is None or d["launch_id"] not in (fw.get("launches") or []):
            continue  # the Firework moved on (rerun, completed): the launch is history
        p = ended[str(d["fworker"]["name"])]
        out.append(LostRun(fw_id=int(d["fw_id"]), name=fw.get("name"), launch_id=int(d["launch_id"]),
                           fworker=str(d["fworker"]["name"]), pilot=str(p.get("job_name") or p.get("_id")),
                           cluster=str(p.get("cluster")), pilot_state=str(p.get("state")),
                           pilot_end_time=number(p.get("end_time"))))
        if len(out) >= opts.limit:
            break
    return out


def _manager_stale(info: dict[str, Any] | None, config: Config | None, now: float,
                   opts: StatusOptions) -> dict[str, Any] | None:
    if opts.stale_after is not None:
        limit = opts.stale_after
    elif config is not None:
        limit = max(300.0, 3 * float(config.pilot.poll_interval))
    else:
        limit = 600.0
    last = info.get("last_cycle") if info else None
    if last is not None and now - last <= limit:
        return None
    if info is None and config is None:
        return None  # no config and no heartbeat: nothing says a manager should run here
    return {"last_cycle": last, "limit": limit}
