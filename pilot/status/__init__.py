"""``pilot status``: what the pilots, the clusters and the work are doing, and what needs a person.

Everything here reads the LaunchPad database only (the FireWorks collections and the manager's own
collections described in :mod:`pilot.manager.records`); nothing is asked over SSH. So ``pilot status`` works from
any machine that has the launchpad file. With a config directory it also knows which clusters serve which
categories and how much wall time their pilots give; without one, it takes both from the pilot records.

The module has two halves:

* :func:`gather_status` runs a small number of index-backed queries and returns a :class:`StatusReport`;
* :func:`format_status` and :meth:`StatusReport.to_dict` are pure: they turn a report into text (aligned
  tables, "3 min ago") or into the JSON document described by ``docs/status.schema.json``.

How it stays fast with 100,000 Fireworks
----------------------------------------
No query reads every Firework. The counts per category and state come from ``count`` commands on the
indexed fields ``state`` and ``spec._category`` (FireWorks' ``LaunchPad.tuneup`` indexes both): on
MongoDB each is an index scan, and on the embedded server (:mod:`pilot.launchpad`, which copies every
document an aggregation reads) a ``count`` reads no document at all, where one ``$group`` over 100,000
Fireworks would hold the server's lock for many seconds and stall every pilot. The pilot records are
aggregated after a selective ``$match`` (live pilots, pilots ended recently). The problem lists are
indexed look-ups with a limit.
"""

from __future__ import annotations

import datetime as _dt
import math
import posixpath
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pilot.checks.doctor import address_of
from pilot.manager.records import LIVE_STATES, PENDING_STATES, RUNNING_STATES

__all__ = [
    "FW_STATES",
    "SCHEMA_VERSION",
    "SHOWN_FW_STATES",
    "CategoryStatus",
    "ClusterStatus",
    "FizzledFirework",
    "LostRun",
    "PendingPilot",
    "StatusOptions",
    "StatusReport",
    "TooLong",
    "describe_launchpad",
    "error_line",
    "first_line",
    "format_status",
    "format_table",
    "gather_status",
    "human_ago",
    "human_duration",
    "human_until",
]

#: Version of the ``--json`` document (``schema_version``); raised when a field changes meaning or goes away.
SCHEMA_VERSION = 1
#: Every Firework state FireWorks knows (fireworks.core.firework.Firework.STATE_RANKS).
FW_STATES = ("ARCHIVED", "FIZZLED", "DEFUSED", "PAUSED", "WAITING", "READY", "RESERVED", "RUNNING", "COMPLETED")
#: The columns of the categories table (the others are summed under "other").
SHOWN_FW_STATES = ("READY", "WAITING", "RUNNING", "COMPLETED", "FIZZLED")
#: At most this many categories that no cluster serves are named; Fireworks of any further ones are summed.
MAX_DISCOVERED = 50
#: The row for the Fireworks of categories beyond MAX_DISCOVERED (or whose _category is not a string).
OTHER_CATEGORIES = "(other categories)"
#: Without a config, the categories a cluster serves come from its pilot records of this many seconds.
RECORDS_WINDOW = 30 * 86400.0


# ============================================================================ options and results
@dataclass(frozen=True)
class StatusOptions:
    """What counts as a problem, and how much of each list to show.

    Attributes
    ----------
    pending_warn : float
        A pilot waiting in the queue longer than this (seconds) is listed under "needs you".
    recent : float
        Pilots that ended within this many seconds count as "ended recently".
    limit : int
        At most this many entries per "needs you" list (totals are always exact).
    stale_after : float | None
        The manager's last cycle is "too old" after this many seconds; ``None``: three poll intervals
        from the config (at least 5 min), or 10 min without a config.
    """

    pending_warn: float = 1800.0
    recent: float = 3600.0
    limit: int = 20
    stale_after: float | None = None


@dataclass
class PilotCounts:
    """A cluster's pilots by phase."""

    pending: int = 0
    running: int = 0
    ended_recently: int = 0
    ended_recently_by_state: dict[str, int] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    """One cluster as the manager last saw it.

    Attributes
    ----------
    name : str
    in_config : bool
        Whether the config directory defines it (False: known from the records only).
    scheduler, address : str | None
        From the config: ``slurm``, ``user@host:port`` (``local`` for this machine).
    categories : list[str]
        The categories it serves (config; else the categories of its pilot records).
    usable_walltime : float | None
        Seconds a pilot gives to work: wall time minus ``walltime_margin``.
    reachable : bool | None
        The manager's last verdict; ``None`` when it never needed to contact the cluster.
    last_contact, last_error_time, backoff_until : float | None
        Epoch seconds.
    last_error : str | None
        The manager's last error for this cluster (what failed, the command, what to try).
    failures : int
        Failures in a row.
    backed_off : bool
        The manager leaves the cluster alone until ``backoff_until``.
    pilots : PilotCounts
    """

    name: str
    in_config: bool = False
    scheduler: str | None = None
    address: str | None = None
    categories: list[str] = field(default_factory=list)
    usable_walltime: float | None = None
    reachable: bool | None = None
    last_contact: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    failures: int = 0
    backoff_until: float | None = None
    backed_off: bool = False
    pilots: PilotCounts = field(default_factory=PilotCounts)


@dataclass
class CategoryStatus:
    """The Fireworks of one ``spec._category`` (``name`` ``None``: Fireworks without one)."""

    name: str | None
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    served_by: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return int(self.counts.get(state, 0))


@dataclass
class FizzledFirework:
    """A FIZZLED Firework, with where to look.

    Attributes
    ----------
    error : str
        The last line of the stored stack trace (``_exception._stacktrace``), else ``_message``.
    launch_dir : str | None
        The launch's directory (on the cluster's file system).
    pilot_output, pilot_error : str | None
        The output/error files of the pilot job that ran it (``work_dir/pilot-<jobid>.out``/``.err``).
    """

    fw_id: int
    name: str | None
    category: str | None
    error: str
    launch_id: int | None = None
    launch_dir: str | None = None
    host: str | None = None
    fworker: str | None = None
    pilot: str | None = None
    cluster: str | None = None
    pilot_output: str | None = None
    pilot_error: str | None = None
    time: float | None = None


@dataclass
class PendingPilot:
    """A pilot waiting in the queue for long, with the scheduler's reason."""

    job_name: str
    cluster: str
    category: str | None
    job_id: str | None
    state: str
    reason: str | None
    submit_time: float | None
    waiting: float


@dataclass
class LostRun:
    """A Firework still RUNNING under a pilot that has ended."""

    fw_id: int
    name: str | None
    launch_id: int
    fworker: str
    pilot: str
    cluster: str
    pilot_state: str
    pilot_end_time: float | None


@dataclass
class TooLong:
    """READY Fireworks of a category that need more wall time than any cluster serving it gives."""

    category: str
    count: int
    longest: float
    usable: float | None
    clusters: list[str]
    fw_ids: list[int]


@dataclass
class StatusReport:
    """Everything ``pilot status`` shows (see ``docs/status-and-doctor.md``)."""

    generated_at: float
    launchpad: dict[str, Any]
    config_dir: str | None
    options: StatusOptions
    manager: dict[str, Any] | None
    manager_stale: dict[str, Any] | None
    clusters: list[ClusterStatus]
    categories: list[CategoryStatus]
    fizzled_total: int
    fizzled: list[FizzledFirework]
    unserved: list[dict[str, Any]]
    pending_total: int
    pending_long: list[PendingPilot]
    lost_runs: list[LostRun]
    too_long: list[TooLong]
    warnings: list[str] = field(default_factory=list)
    queries: int = 0

    @property
    def backed_off(self) -> list[ClusterStatus]:
        return [c for c in self.clusters if c.backed_off]

    @property
    def problem_count(self) -> int:
        """How many entries the "needs you" section has (0: nothing to do)."""
        return (self.fizzled_total + len(self.unserved) + self.pending_total + len(self.backed_off)
                + len(self.lost_runs) + len(self.too_long) + (1 if self.manager_stale else 0))

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema: ``docs/status.schema.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": self.generated_at,
            "launchpad": dict(self.launchpad),
            "config_dir": self.config_dir,
            "options": asdict(self.options),
            "manager": self.manager,
            "clusters": [asdict(c) for c in self.clusters],
            "categories": [asdict(c) for c in self.categories],
            "needs_you": {
                "count": self.problem_count,
                "fizzled": {"total": self.fizzled_total, "items": [asdict(f) for f in self.fizzled]},
                "unserved_categories": list(self.unserved),
                "pending_long": {"total": self.pending_total, "items": [asdict(p) for p in self.pending_long]},
                "backed_off": [{"cluster": c.name, "until": c.backoff_until, "failures": c.failures,
                                "error": c.last_error} for c in self.backed_off],
                "running_under_ended_pilots": [asdict(x) for x in self.lost_runs],
                "too_long": [asdict(t) for t in self.too_long],
                "manager_stale": self.manager_stale,
            },
            "warnings": list(self.warnings),
        }


# ============================================================================ small pure helpers
def human_duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h`` (rounded down)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 600:
        m, sec = divmod(s, 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def human_ago(t: float | None, now: float) -> str:
    """``just now``, ``40 s ago``, ``3 min ago``, ``2 h 5 min ago``; ``never`` for ``None``."""
    if t is None:
        return "never"
    delta = now - float(t)
    if delta < 0:
        return f"in {human_duration(-delta)}"
    if delta < 5:
        return "just now"
    return f"{human_duration(delta)} ago"


def human_until(t: float | None, now: float) -> str:
    """``in 9 min (12:10:03)`` for a future time, ``-`` for ``None`` or the past."""
    if t is None or float(t) <= now:
        return "-"
    clock = _dt.datetime.fromtimestamp(float(t)).strftime("%H:%M:%S")
    return f"in {human_duration(float(t) - now)} ({clock})"


def first_line(text: str | None, width: int | None = None) -> str:
    """The first non-empty line of ``text`` (shortened to ``width`` with ``...``)."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    if width is not None and len(line) > width:
        line = line[: max(0, width - 3)] + "..."
    return line


def _try_line(text: str | None) -> str | None:
    """The ``try: ...`` line of a transport error message, if any."""
    for ln in (text or "").splitlines():
        if ln.strip().startswith("try:"):
            return ln.strip()
    return None


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


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns (two spaces apart); the header underlined with dashes."""
    body = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(cells: Sequence[str]) -> str:
        return (indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells))).rstrip()

    return [line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in body)]


def describe_launchpad(lp: Any) -> dict[str, Any]:
    """Where the LaunchPad lives, without credentials: ``{"host": ..., "name": ...}``."""
    host = str(getattr(lp, "host", "") or "")
    if "://" in host:
        parts = urlsplit(host)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        host = f"{parts.scheme}://{netloc}/"
    elif getattr(lp, "port", None):
        host = f"{host}:{lp.port}"
    return {"host": host, "name": getattr(lp, "name", None) or getattr(getattr(lp, "db", None), "name", None)}


def _cat_key(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pilot_files(work_dir: str | None, job_id: str | None) -> tuple[str | None, str | None]:
    """The pilot job's output and error files: ``work_dir/pilot-<jobid>.out`` / ``.err``.

    The name rule is the job templates' (templates/*.sh.j2: ``/`` in a job id becomes ``_``).
    """
    if not work_dir or not job_id:
        return None, None
    fid = str(job_id).replace("/", "_")
    return f"{work_dir}/pilot-{fid}.out", f"{work_dir}/pilot-{fid}.err"


# ============================================================================ gathering
def gather_status(db: Any, config: Any | None = None, now: float | None = None,
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

    clusters = _clusters(q, config, now, opts)
    categories = _categories(q, config, clusters)
    by_cluster = {c.name: c for c in clusters}
    fizzled_total = sum(c.count("FIZZLED") for c in categories)
    fizzled = _fizzled(q, config, opts) if fizzled_total else []
    unserved = [{"category": c.name, "ready": c.count("READY")} for c in categories
                if c.count("READY") and not c.served_by]
    pending_total, pending = _pending_long(q, now, opts)
    lost = _lost_runs(q, opts)
    too_long = _too_long(q, categories, by_cluster, opts)
    manager = q.find_one("pilot_manager", {"_id": "manager"})
    manager_info = None
    if manager:
        manager_info = {"last_cycle": _num(manager.get("last_cycle")),
                        "last_cycle_duration": _num(manager.get("last_cycle_duration")),
                        "errors": {str(k): str(v) for k, v in (manager.get("errors") or {}).items()}}
    stale = _manager_stale(manager_info, config, now, opts)
    return StatusReport(
        generated_at=now, launchpad=launchpad_info or {"host": None, "name": getattr(db, "name", None)},
        config_dir=str(config.config_dir) if config is not None else None, options=opts,
        manager=manager_info, manager_stale=stale, clusters=clusters, categories=categories,
        fizzled_total=fizzled_total, fizzled=fizzled, unserved=unserved, pending_total=pending_total,
        pending_long=pending, lost_runs=lost, too_long=too_long, warnings=list(warnings), queries=q.count)


class _Queries:
    """The database handle, counting the round trips (``StatusReport.queries``)."""

    def __init__(self, db: Any) -> None:
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



def _clusters(q: _Queries, config: Any | None, now: float, opts: StatusOptions) -> list[ClusterStatus]:
    since = now - opts.recent
    out: dict[str, ClusterStatus] = {}
    if config is not None:
        for name, c in config.clusters.items():
            out[name] = ClusterStatus(
                name=name, in_config=True, scheduler=c.scheduler.value, address=address_of(c),
                categories=list(c.categories),
                usable_walltime=float(max(0, c.walltime_seconds - c.walltime_margin)))
    # the live pilots and those that ended recently: each aggregation starts with a selective $match, so
    # the database reads only those records, however long the history is
    live = q.aggregate("pilots", [
        {"$match": {"state": {"$in": list(LIVE_STATES)}}},
        {"$group": {"_id": {"cluster": "$cluster", "state": "$state"}, "n": {"$sum": 1}}},
    ])
    ended = q.aggregate("pilots", [
        {"$match": {"end_time": {"$gte": since}, "state": {"$nin": list(LIVE_STATES)}}},
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
    if config is None:
        # without a config: which categories each cluster served, and the wall time its pilots had,
        # from the records of the last RECORDS_WINDOW seconds
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
            u = _num(row.get("usable"))
            if u is not None and u > 0:
                cs.usable_walltime = max(cs.usable_walltime or 0.0, u)
    for doc in q.find("pilot_clusters", {}):
        name = doc.get("_id")
        if not isinstance(name, str):
            continue
        cs = out.setdefault(name, ClusterStatus(name=name))
        reach = doc.get("reachable")
        cs.reachable = reach if isinstance(reach, bool) else None
        cs.last_contact = _num(doc.get("last_contact"))
        cs.last_error = doc.get("last_error") if isinstance(doc.get("last_error"), str) else None
        cs.last_error_time = _num(doc.get("last_error_time"))
        cs.failures = int(doc.get("failures") or 0)
        cs.backoff_until = _num(doc.get("backoff_until"))
        cs.backed_off = bool(cs.backoff_until and cs.backoff_until > now)
        if cs.reachable and (cs.last_error_time or 0) <= (cs.last_contact or 0):
            cs.last_error = None  # an error from before the last good contact is history
    return [out[k] for k in sorted(out)]


def _categories(q: _Queries, config: Any | None, clusters: list[ClusterStatus]) -> list[CategoryStatus]:
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


def _fizzled(q: _Queries, config: Any | None, opts: StatusOptions) -> list[FizzledFirework]:
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
            item.time = _time(ld.get("time_end")) or _time(fw.get("updated_on"))
            rec = pilots.get(str(item.fworker)) if item.fworker else None
            if rec is not None:
                item.pilot = rec.get("job_name")
                item.cluster = rec.get("cluster")
                item.pilot_output, item.pilot_error = pilot_files(_work_dir(config, rec), rec.get("job_id"))
        out.append(item)
    return out


def _time(value: Any) -> float | None:
    """FireWorks stores times as datetimes (UTC, naive) or ISO strings."""
    if isinstance(value, _dt.datetime):
        v = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        return v.timestamp()
    if isinstance(value, str):
        try:
            v = _dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return (v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp()
    return _num(value)


def _work_dir(config: Any | None, pilot: dict[str, Any]) -> str | None:
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
                        reason=d.get("reason"), submit_time=_num(d.get("submit_time")),
                        waiting=now - (_num(d.get("submit_time")) or now)) for d in docs]
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
                           pilot_end_time=_num(p.get("end_time"))))
        if len(out) >= opts.limit:
            break
    return out


def _too_long(q: _Queries, categories: list[CategoryStatus], clusters: dict[str, ClusterStatus],
              opts: StatusOptions) -> list[TooLong]:
    out = []
    for cat in categories:
        if cat.name in (None, OTHER_CATEGORIES) or not cat.count("READY") or not cat.served_by:
            continue
        usables = [clusters[n].usable_walltime for n in cat.served_by if n in clusters]
        known = [u for u in usables if u is not None]
        if not known or len(known) < len(usables):
            continue  # a serving cluster of unknown wall time might take them
        best = max(known)
        query = {"state": "READY", "spec._category": cat.name, "spec._pilot.walltime": {"$gt": best}}
        total = q.count_documents("fireworks", query)
        if not total:
            continue
        docs = q.find("fireworks", query, {"fw_id": 1}, sort=[("fw_id", 1)], limit=opts.limit)
        top = q.find("fireworks", query, {"spec._pilot.walltime": 1}, sort=[("spec._pilot.walltime", -1)], limit=1)
        longest = _num(((top[0].get("spec") or {}).get("_pilot") or {}).get("walltime")) if top else None
        out.append(TooLong(category=str(cat.name), count=total, longest=longest or best, usable=best,
                           clusters=list(cat.served_by), fw_ids=[int(d["fw_id"]) for d in docs]))
    return out


def _manager_stale(info: dict[str, Any] | None, config: Any | None, now: float,
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


# ============================================================================ text
def _served(cat: CategoryStatus, by_name: dict[str, ClusterStatus]) -> str:
    if cat.name is None:
        return "- (no category: no pilot takes these)"
    if cat.name == OTHER_CATEGORIES:
        return "- (categories no cluster serves any more)"
    if not cat.served_by:
        return "- (no cluster)"
    parts = []
    for n in cat.served_by:
        c = by_name.get(n)
        parts.append(f"{n} (backed off)" if c is not None and c.backed_off else n)
    return ", ".join(parts)


def _reach(c: ClusterStatus) -> str:
    if c.reachable is None:
        return "not yet"
    return "yes" if c.reachable else "NO"


def format_status(report: StatusReport, now: float | None = None, width: int = 120) -> str:
    """The report as text: a header, the clusters and categories tables and the "needs you" list.

    Pure: the same report and ``now`` give the same text.
    """
    now = report.generated_at if now is None else now
    out: list[str] = []
    lp = report.launchpad
    stamp = _dt.datetime.fromtimestamp(report.generated_at).strftime("%Y-%m-%d %H:%M:%S")
    out.append(f"fireworks-pilot status at {stamp}: LaunchPad {lp.get('host') or '?'} database {lp.get('name')}")
    if report.config_dir:
        out.append(f"config: {report.config_dir}")
    else:
        out.append("config: none (clusters and categories come from the manager's records)")
    m = report.manager
    if m and m.get("last_cycle") is not None:
        took = m.get("last_cycle_duration")
        out.append(f"manager: last cycle {human_ago(m['last_cycle'], now)}"
                   + (f" (took {took:.1f} s)" if took is not None else ""))
    else:
        out.append("manager: no cycle recorded in this database")
    for w in report.warnings:
        out.append(f"warning: {w}")

    out += ["", "CLUSTERS"]
    if report.clusters:
        rec = human_duration(report.options.recent)
        rows = []
        err_width = max(20, width - 95)
        for c in report.clusters:
            p = c.pilots
            rows.append([c.name + ("" if c.in_config or not report.config_dir else " (not in config)"),
                         c.scheduler or "-", _reach(c), human_ago(c.last_contact, now), p.pending, p.running,
                         p.ended_recently, human_until(c.backoff_until, now) if c.backed_off else "-",
                         first_line(c.last_error, err_width) or "-"])
        out += format_table(["cluster", "scheduler", "reachable", "last contact", "pending", "running",
                             f"ended ({rec})", "backed off", "last error"], rows)
    else:
        out.append("  (no clusters: no config dir given and no pilot records yet)")

    out += ["", "CATEGORIES"]
    if report.categories:
        by_name = {c.name: c for c in report.clusters}
        rows = []
        for cat in report.categories:
            other = cat.total - sum(cat.count(s) for s in SHOWN_FW_STATES)
            rows.append([cat.name if cat.name is not None else "(none)", *(cat.count(s) for s in SHOWN_FW_STATES),
                         other, _served(cat, by_name)])
        out += format_table(["category", *SHOWN_FW_STATES, "other", "served by"], rows)
    else:
        out.append("  (no Fireworks)")

    out += ["", _needs_title(report)]
    out += _needs_lines(report, now)
    return "\n".join(out) + "\n"


def _needs_title(report: StatusReport) -> str:
    n = report.problem_count
    return "NEEDS YOU: nothing" if n == 0 else f"NEEDS YOU ({n})"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _needs_lines(r: StatusReport, now: float) -> list[str]:
    out: list[str] = []
    if r.manager_stale:
        last = r.manager_stale.get("last_cycle")
        when = f"last cycle {human_ago(last, now)}" if last is not None else "no cycle recorded"
        out.append(f"* the manager is not cycling ({when}, more than {human_duration(r.manager_stale['limit'])} "
                   "without one): see `pilot manager status`, start it with `pilot manager start`")
    if r.fizzled_total:
        shown = f" (the {len(r.fizzled)} latest)" if len(r.fizzled) < r.fizzled_total else ""
        out.append(f"* {_plural(r.fizzled_total, 'FIZZLED Firework')}{shown}: read the error, fix the cause, "
                   "then `lpad rerun_fws -i ID`")
        for f in r.fizzled:
            where = f" ({f.category})" if f.category else ""
            out.append(f"    fw {f.fw_id} {f.name or ''}{where}: {f.error}")
            if f.launch_dir:
                out.append(f"      launch dir:   {f.launch_dir}" + (f" on {f.host}" if f.host else ""))
            if f.pilot_output:
                out.append(f"      pilot output: {f.pilot_output} (pilot {f.pilot} on {f.cluster})")
            elif f.fworker:
                out.append(f"      worker:       {f.fworker}")
    for u in r.unserved:
        name = u["category"]
        if name is None:
            out.append(f"* {_plural(u['ready'], 'READY Firework')} without spec._category: pilots only take "
                       "Fireworks of their categories; give them a _category that a cluster serves")
        else:
            src = "" if r.config_dir else " (no config given: from the records, no pilot has served it)"
            out.append(f"* category {name}: {_plural(u['ready'], 'READY Firework')} but no cluster serves it{src}: "
                       f"add {name} to `categories:` in a cluster file")
    for t in r.too_long:
        ids = ", ".join(str(i) for i in t.fw_ids) + (" ..." if len(t.fw_ids) < t.count else "")
        out.append(f"* category {t.category}: {_plural(t.count, 'READY Firework')} "
                   f"need{'s' if t.count == 1 else ''} more than "
                   f"{human_duration(t.usable or 0)} (spec._pilot.walltime up to {human_duration(t.longest)}), "
                   f"the most a pilot of {', '.join(t.clusters)} gives (wall time minus walltime_margin): "
                   f"no pilot will take them. Raise pilot.walltime, or split the work (fw {ids})")
    for c in r.backed_off:
        out.append(f"* cluster {c.name} is backed off {human_until(c.backoff_until, now)} after "
                   f"{_plural(c.failures, 'failure')} in a row: {first_line(c.last_error)}")
        hint = _try_line(c.last_error)
        if hint:
            out.append(f"    {hint}")
        out.append(f"    check it with: pilot doctor {c.name}")
    if r.pending_total:
        shown = f" (the {len(r.pending_long)} oldest)" if len(r.pending_long) < r.pending_total else ""
        out.append(f"* {_plural(r.pending_total, 'pilot')} waiting in the queue for more than "
                   f"{human_duration(r.options.pending_warn)}{shown}:")
        for p in r.pending_long:
            out.append(f"    {p.cluster}: {p.job_name} (job {p.job_id or '?'}) {p.state} for "
                       f"{human_duration(p.waiting)}, reason: {p.reason or 'none given'}")
    if r.lost_runs:
        out.append(f"* {_plural(len(r.lost_runs), 'Firework')} RUNNING under a pilot that has ended (the manager "
                   "reruns these on its next cycle; if they stay, is the manager running?):")
        for x in r.lost_runs:
            out.append(f"    fw {x.fw_id} {x.name or ''}: pilot {x.pilot} on {x.cluster} ended {x.pilot_state} "
                       f"{human_ago(x.pilot_end_time, now)}")
    return out
