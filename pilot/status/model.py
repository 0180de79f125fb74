"""The ``pilot status`` report: its dataclasses, and the ``--json`` document (``docs/status.schema.json``).

Times are epoch seconds in the dataclasses (what the records hold and what the text compares with "now");
the JSON document gives them as ISO 8601 UTC text, the form ``pilot report --json`` uses
(:func:`pilot.isotime.iso_utc`); durations stay seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pilot.isotime import iso_utc
from pilot.status.gates import ClusterGates, GateWait, gates_json
from pilot.status.notify import notifications_json

__all__ = [
    "FW_STATES",
    "OTHER_CATEGORIES",
    "SCHEMA_VERSION",
    "SHOWN_FW_STATES",
    "CategoryStatus",
    "ClusterStatus",
    "FizzledFirework",
    "HoldStatus",
    "LostRun",
    "PendingPilot",
    "PilotCounts",
    "RouteCondition",
    "RouteStatus",
    "StatusOptions",
    "StatusReport",
    "TooBig",
    "TooLong",
    "first_line",
]

#: Version of the ``--json`` document (``schema_version``); raised when a field changes meaning or goes away.
#: 2: times are ISO 8601 UTC text (1: epoch seconds).
SCHEMA_VERSION = 2
#: Every Firework state FireWorks knows (fireworks.core.firework.Firework.STATE_RANKS).
FW_STATES = ("ARCHIVED", "FIZZLED", "DEFUSED", "PAUSED", "WAITING", "READY", "RESERVED", "RUNNING", "COMPLETED")
#: The columns of the categories table (the others are summed under "other").
SHOWN_FW_STATES = ("READY", "WAITING", "RUNNING", "COMPLETED", "FIZZLED")
#: The row for the Fireworks of categories beyond ``gather.MAX_DISCOVERED`` (or whose _category is not a string).
OTHER_CATEGORIES = "(other categories)"


def first_line(text: str | None, width: int | None = None) -> str:
    """The first non-empty line of ``text`` (shortened to ``width`` with ``...``)."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    if width is not None and len(line) > width:
        line = line[: max(0, width - 3)] + "..."
    return line


def _iso(t: float | None) -> str | None:
    return None if t is None else iso_utc(t)


def _with_iso(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``d`` with the epoch seconds under ``keys`` as ISO UTC text."""
    for k in keys:
        d[k] = _iso(d[k])
    return d


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
    #: UNKNOWN or VANISHED: the scheduler's answer could not be trusted; polled every cycle until it resolves,
    #: counted against max_running meanwhile, never taken for dead on its own
    uncertain: int = 0
    ended_recently: int = 0
    ended_recently_by_state: dict[str, int] = field(default_factory=dict)


class RouteCondition(Enum):
    """How ``pilot status`` judges a cluster's LaunchPad route (from the manager's heartbeat)."""

    #: The manager's forward listens on the login node.
    UP = "up"
    #: It dropped or could not be established; the manager keeps trying (a "needs you" entry).
    DOWN = "down"
    #: The manager's first attempt is still under way (no error yet).
    STARTING = "starting"
    #: The heartbeat is too old to tell (the "manager is not cycling" entry says why).
    UNKNOWN = "unknown"
    #: The config says ``launchpad_route: ssh`` but the cycling manager keeps no forward for the cluster:
    #: it started before the cluster file said so, or could not make a target of the LaunchPad's address.
    NOT_KEPT = "not kept"

    @property
    def needs_you(self) -> bool:
        """The pilots cannot reach the LaunchPad by this route now, and the manager's heartbeat is fresh."""
        return self in (RouteCondition.DOWN, RouteCondition.NOT_KEPT)


@dataclass
class RouteStatus:
    """A cluster's LaunchPad route (``launchpad_route: ssh``) as the manager's heartbeat last described it.

    The manager writes its route keepers' states (:class:`pilot.manager.routes.RouteState`) into its heartbeat
    (``pilot_manager`` ``_id: "manager"``, field ``routes``); ``direct`` clusters have none.

    Attributes
    ----------
    via : str
        ``ssh``: the manager's remote forward on the login node's loopback.
    condition : RouteCondition
        The verdict shown in the text (not in ``--json``: ``up`` with ``since`` and ``connects`` say it there).
    up : bool | None
        ``None`` when the heartbeat is too old to tell.
    since : float | None
        Epoch seconds of the last change (up or down); ``None`` before the first attempt ended, or when
        the heartbeat has no state for the route.
    last_error : str | None
        Why the route dropped or the last attempt failed.
    port : int | None
        The login node's loopback port of the forward (the heartbeat's, else the cluster file's).
    connects : int | None
        How often the manager established the route; ``None`` when the heartbeat has no state for it.
    """

    via: str
    condition: RouteCondition
    up: bool | None
    since: float | None = None
    last_error: str | None = None
    port: int | None = None
    connects: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``route`` of a cluster in the ``--json`` document."""
        return {"via": self.via, "up": self.up, "since": _iso(self.since), "last_error": self.last_error,
                "port": self.port, "connects": self.connects}


@dataclass
class HoldStatus:
    """A cluster held back because its pilots end before running any Firework (:mod:`pilot.manager.holds`).

    Attributes
    ----------
    since, until : float | None
        Epoch seconds: held since; no pilot before ``until``, then one probe pilot.
    delay : float | None
        Seconds of the current wait (doubles after each failed probe).
    failures : int
        Failed starts in a row.
    pilot : dict
        The last failed pilot: job_name, job_id, category, state, exit_code, reason, end_time, why.
    stderr_path, stderr_tail, see_more : str | None
        Its stderr file on the cluster, the last lines of it (secrets scrubbed), the command that shows more.
    """

    since: float | None = None
    until: float | None = None
    delay: float | None = None
    failures: int = 0
    pilot: dict[str, Any] = field(default_factory=dict)
    stderr_path: str | None = None
    stderr_tail: str | None = None
    see_more: str | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> HoldStatus:
        """From the ``hold`` of a ``pilot_clusters`` record (fields of the wrong type are left out)."""
        def num(key: str) -> float | None:
            v = doc.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        def text(key: str) -> str | None:
            v = doc.get(key)
            return v if isinstance(v, str) else None

        raw = doc.get("pilot")
        pilot: dict[str, Any] = raw if isinstance(raw, dict) else {}
        keep = ("job_name", "job_id", "category", "state", "exit_code", "reason", "end_time", "why")
        failures = doc.get("failures")
        return cls(since=num("since"), until=num("until"), delay=num("delay"),
                   failures=failures if isinstance(failures, int) else 0,
                   pilot={k: pilot.get(k) for k in keep}, stderr_path=text("stderr_path"),
                   stderr_tail=text("stderr_tail"), see_more=text("see_more"))

    def to_dict(self) -> dict[str, Any]:
        """The ``hold`` of a cluster in the ``--json`` document."""
        d = _with_iso(asdict(self), "since", "until")
        d["pilot"] = _with_iso(dict(self.pilot), "end_time") if "end_time" in self.pilot else dict(self.pilot)
        return d


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
    needs_login : bool
        Its one-time-password login (``control_path``) has ended: a person must run ``pilot connect``.
    down_since : float | None
        Epoch seconds: the first failure of the outage it is in (None: reachable).
    pilots : PilotCounts
    route : RouteStatus | None
        Its LaunchPad route, for ``launchpad_route: ssh`` (``None``: direct).
    failed_starts : int
        Its pilots in a row that ended before running any Firework.
    hold : HoldStatus | None
        Held back because its pilots cannot start (``None``: not held).
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
    needs_login: bool = False
    down_since: float | None = None
    pilots: PilotCounts = field(default_factory=PilotCounts)
    route: RouteStatus | None = None
    failed_starts: int = 0
    hold: HoldStatus | None = None
    #: drained, maintenance coming (:mod:`pilot.status.gates`); None: neither
    gates: ClusterGates | None = None

    def to_dict(self) -> dict[str, Any]:
        """The cluster in the ``--json`` document."""
        d = _with_iso(asdict(self), "last_contact", "last_error_time", "backoff_until", "down_since")
        del d["gates"]
        d.update(gates_json(self.gates))   # keys drain, maintenance
        d["route"] = self.route.to_dict() if self.route is not None else None
        d["hold"] = self.hold.to_dict() if self.hold is not None else None
        return d


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
class TooBig:
    """READY Fireworks of a category whose resource asks (``spec._pilot`` cores, GPUs, memory) no queue profile
    of a cluster serving it has: no pilot will ever take them."""

    category: str
    count: int
    fw_ids: list[int]
    #: what each serving profile takes, ``CLUSTER[PROFILE]: <= 8 cores, a GPU asked, ...``
    profiles: list[str]


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
    too_big: list[TooBig] = field(default_factory=list)
    queries: int = 0
    usage: Any = None  # CORE-HOURS and budgets (pilot.status.usage.UsageSection), None: not shown
    #: READY work waiting because its clusters are drained or under maintenance (:mod:`pilot.status.gates`)
    gate_waits: list[GateWait] = field(default_factory=list)
    share: dict[str, Any] | None = None  # FAIR SHARE (pilot.status.share), None: not shown
    notifications: dict[str, Any] | None = None  # NOTIFICATIONS (pilot.status.notify), None: not shown

    @property
    def backed_off(self) -> list[ClusterStatus]:
        return [c for c in self.clusters if c.backed_off]

    @property
    def needs_login(self) -> list[ClusterStatus]:
        """The clusters whose one-time-password login has ended (``pilot connect`` is the fix)."""
        return [c for c in self.clusters if c.needs_login]

    @property
    def held(self) -> list[ClusterStatus]:
        """The clusters held back because their pilots cannot start."""
        return [c for c in self.clusters if c.hold is not None]

    @property
    def routes_down(self) -> list[ClusterStatus]:
        """The clusters whose LaunchPad route is down or not kept (by a manager that is cycling)."""
        return [c for c in self.clusters if c.route is not None and c.route.condition.needs_you]

    @property
    def problem_count(self) -> int:
        """How many entries the "needs you" section has (0: nothing to do)."""
        return (self.fizzled_total + len(self.unserved) + self.pending_total + len(self.backed_off)
                + len(self.lost_runs) + len(self.too_long) + len(self.too_big) + (1 if self.manager_stale else 0)
                + len(self.routes_down) + len(self.held) + len(self.needs_login)
                + len(self.usage.stopped if self.usage is not None else ()) + len(self.gate_waits))

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema: ``docs/status.schema.json``); times as ISO 8601 UTC text."""
        manager = _with_iso(dict(self.manager), "last_cycle") if self.manager is not None else None
        stale = _with_iso(dict(self.manager_stale), "last_cycle") if self.manager_stale is not None else None
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": iso_utc(self.generated_at),
            "launchpad": dict(self.launchpad),
            "config_dir": self.config_dir,
            "options": asdict(self.options),
            "manager": manager,
            "clusters": [c.to_dict() for c in self.clusters],
            "categories": [asdict(c) for c in self.categories],
            "needs_you": {
                "count": self.problem_count,
                "fizzled": {"total": self.fizzled_total,
                            "items": [_with_iso(asdict(f), "time") for f in self.fizzled]},
                "unserved_categories": list(self.unserved),
                "pending_long": {"total": self.pending_total,
                                 "items": [_with_iso(asdict(p), "submit_time") for p in self.pending_long]},
                "backed_off": [{"cluster": c.name, "until": _iso(c.backoff_until), "failures": c.failures,
                                "error": c.last_error} for c in self.backed_off],
                "needs_login": [{"cluster": c.name, "since": _iso(c.down_since)} for c in self.needs_login],
                "held": [{"cluster": c.name, "until": _iso(c.hold.until), "failures": c.hold.failures,
                          "stderr_tail": c.hold.stderr_tail, "see_more": c.hold.see_more}
                         for c in self.clusters if c.hold is not None],
                "running_under_ended_pilots": [_with_iso(asdict(x), "pilot_end_time") for x in self.lost_runs],
                "too_long": [asdict(t) for t in self.too_long],
                "too_big": [asdict(t) for t in self.too_big],
                "manager_stale": stale,
                "budget_stopped": list(self.usage.stopped) if self.usage is not None else [],
                "waiting_on_gates": [w.to_dict() for w in self.gate_waits],
            },
            "warnings": list(self.warnings),
            "core_hours": self.usage.to_dict() if self.usage is not None else None,
            "share": self.share,
            # NOTIFICATIONS (pilot.status.notify): only when shown (docs/status.schema.json)
            **({"notifications": notifications_json(self.notifications)} if self.notifications is not None else {}),
        }
