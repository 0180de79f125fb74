"""What the manager keeps of each cluster between cycles, and what one cycle reports.

:class:`ClusterRuntime` is one cluster as the manager sees it: its queue adapter, its transport (opened
lazily, one pooled connection kept across cycles), a count of the commands run through it, and its health:
a cluster that fails (SSH down, scheduler error) is backed off with growing delays, in memory and in its
``pilot_clusters`` record (so a restarted manager and ``pilot status`` see the backoff too), and recovers by
itself when a later command succeeds.

:class:`CycleReport` is what one cycle saw and did; the decisions in it are :class:`pilot.manager.policy.Decision`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.manager.policy import CategoryDemand, Decision

if TYPE_CHECKING:
    from pilot.config import BackoffConfig, ClusterConfig
    from pilot.manager.records import Records
    from pilot.transport import CompletedCommand, Transport
    from queue_adapters.base import QueueAdapter

log = logging.getLogger("pilot.manager")

#: ``f(cluster_name, cluster_config) -> Transport``: how a cluster's transport is opened
#: (:func:`pilot.transport.clusters.transport_for` unless a test or benchmark passes its own)
TransportFactory = Callable[[str, "ClusterConfig"], "Transport"]


def walltime_seconds(cluster_cfg: ClusterConfig) -> float:
    """The pilot wall time of a cluster config, in seconds."""
    return float(cluster_cfg.walltime_seconds)


def fworker_name(cluster: str, job_id: str) -> str:
    """The FWorker name a pilot uses in every launch: cluster name + job id (as the job sees it: a federated
    SLURM id ``123;other`` is ``123`` in ``$SLURM_JOB_ID``)."""
    return f"{cluster}-{job_id.split(';', 1)[0]}"


@dataclass
class ManagerSettings:
    """The manager's clock and dry-run switch, read at each use by the manager and by its helpers.

    One object shared by reference (the :class:`~pilot.manager.cycle.Manager`'s ``clock`` and ``dry_run`` are
    views of it, and each :class:`ClusterRuntime` and the tracker hold it), so that setting ``mgr.clock`` or
    ``mgr.dry_run`` after the manager was built governs every backoff, record time and write from then on.
    """

    clock: Callable[[], float] = time.time
    dry_run: bool = False


@dataclass
class CycleReport:
    """What one cycle saw and did (printed by ``pilot manager run``, returned for tests)."""

    started: float
    demand: dict[str, CategoryDemand] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    reruns: list[int] = field(default_factory=list)
    fizzled: list[int] = field(default_factory=list)
    duration: float = 0.0
    db_queries: int = 0

    def merge(self, other: CycleReport) -> None:
        """Take in what one cluster's job saw and did (:mod:`pilot.manager.concurrency`: each job writes a report
        of its own, merged by the main thread)."""
        self.submitted.extend(other.submitted)
        self.errors.update(other.errors)
        self.reruns.extend(other.reruns)
        self.fizzled.extend(other.fizzled)
        self.db_queries += other.db_queries

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started, "duration": self.duration,
            "demand": {c: vars(d) for c, d in self.demand.items()},
            "decisions": [vars(d) for d in self.decisions],
            "submitted": self.submitted, "errors": self.errors,
            "reruns": self.reruns, "fizzled": self.fizzled,
        }


@dataclass
class ClusterRuntime:
    """What the manager keeps of one cluster between cycles, and the one way it talks to the cluster.

    The keyword-only fields are shared with the manager: how to open the transport, the backoff settings
    (``pilot.yaml``), where failures and recoveries are recorded (None: nowhere), and the manager's
    :class:`ManagerSettings` (its clock, and its dry-run switch: in a dry run nothing is recorded), read at
    each use so that a clock set on the manager later still governs the backoff.
    """

    name: str
    config: ClusterConfig
    adapter: QueueAdapter
    transport: Transport | None = None   # opened lazily by connect()
    failures: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None
    needs_login: bool = False            # its one-time-password login lapsed (pilot connect): no new pilots
    calls: int = 0                       # scheduler/SSH commands run (for benchmarks and status)
    transport_factory: TransportFactory | None = field(default=None, kw_only=True, repr=False)
    backoff: BackoffConfig = field(kw_only=True, repr=False)
    records: Records | None = field(default=None, kw_only=True, repr=False)
    settings: ManagerSettings = field(default_factory=ManagerSettings, kw_only=True, repr=False)
    # fail() and ok() run in the cluster's own thread (pilot.manager.concurrency), one job at a time; the lock
    # keeps failures, backoff_until and last_error consistent for the main thread that reads them meanwhile
    _health: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def available(self, now: float) -> bool:
        """Not backed off: the manager may talk to it (a cluster that needs login is asked every cycle)."""
        return now >= self.backoff_until

    def usable(self, now: float) -> bool:
        """It may get new pilots: not backed off, and not waiting for a person's login."""
        return self.available(now) and not self.needs_login

    def restore(self, state: dict[str, Any]) -> None:
        """Take over a backoff from the cluster's record (a failing cluster stays backed off across restarts), and
        a lapsed login (it stays "needs login" until the login is back)."""
        self.needs_login = state.get("needs_login") is True and state.get("reachable") is False
        if state.get("backoff_until"):
            self.backoff_until = float(state["backoff_until"])
            self.failures = int(state.get("failures") or 0)
            self.last_error = state.get("last_error")

    # ------------------------------------------------------------------ talking to the cluster
    def connect(self) -> Transport:
        """The cluster's transport, opened on first use and kept for the next cycles."""
        if self.transport is None:
            if self.transport_factory is None:
                from pilot.transport.clusters import transport_for

                self.transport_factory = transport_for
            self.transport = self.transport_factory(self.name, self.config)
        return self.transport

    def run(self, argv: list[str], stdin: str | None = None) -> CompletedCommand:
        """Run one command on the cluster, with the cluster's ``command_timeout`` (counted in :attr:`calls`)."""
        self.calls += 1
        return self.connect().run(argv, timeout=float(self.config.command_timeout), stdin=stdin)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # ------------------------------------------------------------------ health
    def _recorder(self) -> Records | None:
        """Where failures and recoveries are written: nowhere without records or in a dry run."""
        return None if self.settings.dry_run else self.records

    def fail(self, error: str | BaseException, report: CycleReport, *, needs_login: bool | None = None) -> None:
        """The cluster failed: back off (``initial * factor ** (failures - 1)``, at most ``max``), report, record.

        A lapsed one-time-password login (:class:`~pilot.transport.LoginRequired`) is recorded as "needs login" and
        not backed off: asking costs nothing there (no network, no failed login at the centre), and the cluster
        should be back in the cycle right after someone runs ``pilot connect``. ``needs_login`` None: judged from
        the error's type.
        """
        from pilot.transport.errors import LoginRequired

        if needs_login is None:
            needs_login = isinstance(error, LoginRequired)
        error = str(error)
        now = self.settings.clock()
        b = self.backoff
        with self._health:
            self.failures += 1
            # the exponent is capped: a weekend of failures would overflow a float
            grown = float(b.initial) * float(b.factor) ** min(self.failures - 1, 60)
            delay = 0.0 if needs_login else min(float(b.max), grown)
            self.backoff_until = now + delay
            self.last_error = error
            self.needs_login = needs_login
        report.errors[self.name] = error
        if needs_login:
            log.warning("%s: needs login: run `pilot connect %s` (failure %d in a row)", self.name, self.name,
                        self.failures)
        else:
            log.warning("%s: %s; backing off for %.0f s (failure %d in a row)", self.name, error, delay,
                        self.failures)
        records = self._recorder()
        if records is not None:
            records.cluster_failed(self.name, error, self.failures, self.backoff_until, now, needs_login=needs_login)

    def ok(self) -> None:
        """The cluster answered: forget its failures and record it reachable."""
        with self._health:
            failures, self.failures = self.failures, 0
            self.backoff_until = 0.0
            self.last_error = None
            self.needs_login = False
        if failures:
            log.info("%s: reachable again after %d failure(s)", self.name, failures)
        records = self._recorder()
        if records is not None:
            records.cluster_ok(self.name, self.settings.clock())


__all__ = ["ClusterRuntime", "CycleReport", "ManagerSettings", "TransportFactory", "fworker_name",
           "walltime_seconds"]
