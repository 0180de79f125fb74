"""The dashboard's state: the config, the two LaunchPads (read and write), the tokens, the sessions, the
templates; and the page data it builds from them.

Two LaunchPads, because the dashboard reads all day and acts seldom: pages and JSON read through
``read_lp`` (the ``read`` role's file when one is given: ``pilot launchpad user add viewer --role read``
writes ``CONFIG_DIR/launchpad-viewer.yaml``), actions write through ``write_lp`` (the config dir's LaunchPad
file, as ``pilot drain`` and ``pilot cancel`` use). With one file only, both are the same; ``single_role``
says so on every page.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pilot.dashboard import queries, throughput, views
from pilot.dashboard.sessions import LoginThrottle, Sessions
from pilot.dashboard.tokens import TokenStore

__all__ = ["Dashboard", "TEMPLATES", "STATIC"]

log = logging.getLogger("pilot.dashboard")

#: Seconds the throughput page's rows are reused (see :meth:`Dashboard.throughput`): a campaign completes a
#: segment a minute or two, the page plots days, and each refresh reads every launch of the campaign (seconds of
#: database time at 70,000 launches, which the other pages would wait behind).
THROUGHPUT_TTL_S = 300.0
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def make_env() -> jinja2.Environment:
    """Jinja2 with autoescape on (every value in a page is escaped) and StrictUndefined (a missing value is an
    error, never a silent gap)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = views.when
    return env


@dataclass
class Dashboard:
    """Everything a request needs (shared by the server's threads: the LaunchPads' clients are thread safe).

    Attributes
    ----------
    config_dir : Path
    config : pilot.config.Config | None
        None when the config dir has none that loads (pages from the records; actions on clusters refused).
    read_lp, write_lp : fireworks.LaunchPad
        Reads, and actions (the same object when there is only one LaunchPad file).
    single_role : bool
        Only one LaunchPad file: pages read with the credential that acts.
    tls : bool
        Meant to be served over TLS (for messages; the cookie's ``Secure`` follows the server itself).
    warnings : list[str]
        Notes for every page (the config did not load, ...).
    """

    config_dir: Path
    config: Any
    read_lp: Any
    write_lp: Any
    single_role: bool
    tls: bool = False
    warnings: list[str] = field(default_factory=list)
    launchpad_info: dict[str, Any] = field(default_factory=dict)
    action_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.tokens = TokenStore(self.config_dir)
        self.sessions = Sessions(self.tokens.stamps)
        self.logins = LoginThrottle()
        self.env = make_env()
        self._throughput_lock = threading.Lock()
        self._throughput_refresh = threading.Lock()   # held by the one computation under way
        self._throughput_cache: tuple[float, list[dict[str, Any]] | None] = (0.0, None)

    # ------------------------------------------------------------------ data of the pages
    def status(self) -> Any:
        """The report ``pilot status --json`` prints (:func:`pilot.status.gather_status`), read now."""
        from pilot.status import StatusOptions, gather_status

        return gather_status(self.read_lp.db, self.config, options=StatusOptions(),
                             launchpad_info=self.launchpad_info, warnings=self.warnings)

    def overview(self) -> dict[str, Any]:
        report = self.status()
        return {"report": report, "clusters": views.cluster_rows(report), "needs": views.needs_you(report),
                "live": views.live_numbers(report), "states": _shown_states(), "usage": views.usage_text(report)}

    def cluster(self, name: str, page: int) -> dict[str, Any]:
        pilots = queries.cluster_pilots(self.read_lp.db, name, page)
        record = self.read_lp.db["pilot_clusters"].find_one({"_id": name}, {"drain": 1}) or {}
        known = (self.config is not None and name in self.config.clusters) or bool(record) or bool(pilots.items)
        from pilot.manager.records import LIVE_STATES

        return {"name": name, "known": known, "pilots": pilots, "drain": record.get("drain"),
                "live_states": set(LIVE_STATES),
                "live": {f"pilot-{p['job_name']}-state": p.get("state") for p in pilots.items}}

    def pilot(self, job_name: str, page: int) -> dict[str, Any]:
        rec, launches = queries.pilot_fireworks(self.read_lp.db, job_name, page)
        return {"job_name": job_name, "record": rec, "launches": launches, "live": {}}

    def pilot_log(self, job_name: str) -> dict[str, Any]:
        """The tail of the pilot's output files, read over SSH now (:mod:`pilot.dashboard.logs`)."""
        from pilot.dashboard.logs import TAIL_LINES, pilot_log_tail
        from pilot.redact import secrets_of

        secrets = secrets_of(self.read_lp) + secrets_of(self.write_lp)
        return {"job_name": job_name, "tail": pilot_log_tail(self.config, self.read_lp.db, job_name, secrets),
                "lines": TAIL_LINES}

    def firework(self, fw_id: int) -> dict[str, Any]:
        detail = queries.firework_detail(self.read_lp.db, fw_id)
        live = {"fw-state": detail["fw"]["state"]} if detail else {}
        return {"fw_id": fw_id, "detail": detail, "live": live}

    def fireworks(self, state: str | None, page: int) -> dict[str, Any]:
        return {"state": state, "page": queries.fireworks_page(self.read_lp.db, state, page), "live": {},
                "states": _shown_states()}

    def throughput(self) -> dict[str, Any]:
        """The trajectory rows, computed at most once per :data:`THROUGHPUT_TTL_S`: they change by the segment
        (minutes), cost one report's aggregation (seconds on a long campaign), and the page polls every 5 s.
        Stale rows are answered at once while one background thread computes new ones; only the very first
        request waits (:meth:`warm_up` starts that computation when the server starts)."""
        with self._throughput_lock:
            at, rows = self._throughput_cache
            stale = rows is None or time.monotonic() - at > THROUGHPUT_TTL_S
        if rows is None:
            rows = self._compute_throughput()
        elif stale:
            self.warm_up()
        return self._throughput_page(rows)

    def warm_up(self) -> None:
        """Compute the throughput rows in a background thread (unless one is at it already)."""
        if self._throughput_refresh.acquire(blocking=False):
            def run() -> None:
                try:
                    self._compute_throughput(held=True)
                except Exception:   # a background refresh must not die silently; the next request retries
                    log.exception("computing the throughput rows failed")
            threading.Thread(target=run, name="dashboard-throughput", daemon=True).start()

    def _compute_throughput(self, held: bool = False) -> list[dict[str, Any]] | None:
        """Compute the rows (one computation at a time) and keep them."""
        if not held:
            self._throughput_refresh.acquire()
        try:
            at, rows = self._throughput_cache
            if rows is not None and time.monotonic() - at <= THROUGHPUT_TTL_S:
                return rows   # another thread just computed them
            rows = throughput.load_rows(self.read_lp.db, self.config)
            with self._throughput_lock:
                self._throughput_cache = (time.monotonic(), rows)
            return rows
        finally:
            self._throughput_refresh.release()

    def _throughput_page(self, rows: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {"available": rows is not None, "rows": rows or [], "series": throughput.series(rows or []),
                "live": {}}


def _shown_states() -> list[str]:
    from pilot.status import SHOWN_FW_STATES

    return list(SHOWN_FW_STATES)
