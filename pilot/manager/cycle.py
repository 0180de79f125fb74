"""The manager daemon: gather -> decide -> act -> record, once per cycle.

This is the only room that combines the others: the LaunchPad (demand, lost work), the transports
(one pooled connection per cluster), the pure queue adapters and the pure policy.

One cycle:

1. one status query per cluster for this manager's own pilots (matched to its records by job id, and by
   job name for submissions whose outcome was unknown); jobs that left the queue are resolved from the
   scheduler's history, then from the exit-code file the pilot script writes;
2. reconcile: Fireworks still RUNNING under a pilot that ended are put back to READY (at most
   ``max_reruns`` times each, then FIZZLED with the reason, for a person);
3. demand from the LaunchPad, once: READY and RUNNING counts of each served ``_category`` (indexed counts),
   and of the READY ones what a fresh pilot of each cluster could take (:mod:`pilot.manager.demand`: wall
   time that fits, not pinned to another FWorker), with their mean expected duration (sampled);
4. the pure policy (:func:`pilot.manager.policy.plan`) decides how many pilots each cluster submits;
5. submit: render, upload, submit, with the record written *before* the scheduler sees the job.

A cluster that fails (SSH down, scheduler error) is backed off with growing delays and reported; the
others carry on, and it recovers by itself. Steps 1 and 5 talk to the clusters all at once, each cluster in a
thread of its own, and the cycle waits for them at most one poll interval per step
(:mod:`pilot.manager.concurrency`): a cluster that hangs is reported unreachable and never stalls the others.

Steps 1 and 2 live in :mod:`pilot.manager.tracking`, the talking to each cluster and its backoff in
:mod:`pilot.manager.runtime`; this module gathers the demand, decides and submits, once per cycle.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from pilot.manager.accounting import AccountingRefresher
from pilot.manager.budget import BudgetGate
from pilot.manager.concurrency import ClusterPhases, Job, clock_time
from pilot.manager.demand import Demand, PilotOffer, ensure_demand_indexes, gather_demand
from pilot.manager.drain import DrainGate
from pilot.manager.gates import Gates
from pilot.manager.holds import Holds
from pilot.manager.maintenance import MaintenanceGate
from pilot.manager.policy import CategoryDemand, ClusterView, Decision, PilotCounts, plan
from pilot.manager.profiles import offers_of, profile_shape, unit_of_record, views_of
from pilot.manager.records import PENDING_STATES, SUBMIT_FAILED, Records
from pilot.manager.routes import RouteKeepers
from pilot.manager.runtime import (
    ClusterRuntime,
    CycleReport,
    ManagerSettings,
    TransportFactory,
    fworker_name,
    walltime_seconds,
)
from pilot.manager.share import recent_cores
from pilot.manager.tracking import Tracker

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, Config
    from pilot.notify.notifier import Notifier

log = logging.getLogger("pilot.manager")


class Manager:
    """Runs manager cycles for one config directory.

    The work is shared with two helpers: each :class:`~pilot.manager.runtime.ClusterRuntime` talks to its
    cluster and keeps its backoff, and the :class:`~pilot.manager.tracking.Tracker` keeps the pilot records
    in step with the queues and reruns lost work. The manager gathers demand, decides (:func:`plan`) and
    submits.

    Parameters
    ----------
    config : pilot.config.Config
        The loaded configuration (pilot.yaml and every cluster file).
    launchpad : fireworks.LaunchPad
        The LaunchPad the pilots serve; the manager's records live in its database.
    dry_run : bool
        Query and decide, but submit, record and rerun nothing.
    transport_factory : callable, optional
        ``f(name, cluster_config) -> Transport``; defaults to :func:`pilot.transport.clusters.transport_for`.
    clock : callable
        Time source (epoch seconds).

    :attr:`clock` and :attr:`dry_run` live in one :class:`~pilot.manager.runtime.ManagerSettings` that the
    tracker and every cluster runtime share: setting them on the manager later governs all of them.
    """

    def __init__(self, config: Config, launchpad: Any, dry_run: bool = False,
                 transport_factory: TransportFactory | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if transport_factory is None:
            from pilot.transport.clusters import transport_for
            transport_factory = transport_for
        self.config = config
        self.lp = launchpad
        self.settings = ManagerSettings(clock=clock, dry_run=dry_run)
        self.records = Records(launchpad.db)
        if not dry_run:
            self.records.ensure_indexes()
        self._index_demand = not dry_run
        self._transport_factory = transport_factory
        self.clusters: dict[str, ClusterRuntime] = {
            name: self._runtime(name, ccfg) for name, ccfg in sorted(config.clusters.items())}
        self.tracking = Tracker(self.records, launchpad, config.pilot, self.settings)
        self.stop_event = threading.Event()
        #: each cluster's remote work runs in a thread of its own (:mod:`pilot.manager.concurrency`)
        self.phases = ClusterPhases(self.clusters, lambda: self.clock())
        #: seconds a cycle waits for the clusters in each of its remote phases (status query, submissions):
        #: one poll interval, so that a hanging cluster delays the others by at most that much
        self.phase_deadline = float(config.pilot.poll_interval)
        #: the forwards of the clusters with ``launchpad_route: ssh`` (started by the first cycle)
        self.routes = RouteKeepers(config.clusters, launchpad)
        self.holds = Holds.for_manager(config, self.records, self.settings, launchpad)  # issue 16 item 13
        #: why units get no new pilot whatever their demand: drained, maintenance, budget (issue 20)
        self.drain = DrainGate(self.records, self.settings)
        self.gates = Gates([self.drain, MaintenanceGate(self.records, self.settings)])
        self.budget = BudgetGate(config, self.records)
        self.gates.gates += [AccountingRefresher(self.records, self.settings), self.budget]
        #: messages to a person (pilot.yaml notify:, docs/notifications.md); None: not configured
        self.notifier: Notifier | None = None
        if config.pilot.notify is not None and not dry_run:
            from pilot.notify.notifier import Notifier
            self.notifier = Notifier(config, launchpad.db)

    @property
    def clock(self) -> Callable[[], float]:
        """Time source (epoch seconds) of the manager, its tracker and its cluster runtimes."""
        return self.settings.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.settings.clock = value

    @property
    def dry_run(self) -> bool:
        """Query and decide, but submit, record and rerun nothing (the tracker and runtimes follow it too)."""
        return self.settings.dry_run

    @dry_run.setter
    def dry_run(self, value: bool) -> None:
        self.settings.dry_run = value

    def _runtime(self, name: str, ccfg: ClusterConfig) -> ClusterRuntime:
        """One cluster's runtime, still backed off if its record says so (the manager was restarted)."""
        from pilot.transport.clusters import adapter_for

        rt = ClusterRuntime(name=name, config=ccfg, adapter=adapter_for(ccfg),
                            transport_factory=self._transport_factory, backoff=self.config.pilot.backoff,
                            records=self.records, settings=self.settings)
        rt.restore(self.records.cluster_state(name))
        return rt

    # ================================================================== gather
    def pilot_offers(self) -> list[PilotOffer]:
        """What a fresh pilot of each cluster (and queue profile) would take: its categories, its usable wall
        time, its resources and the cluster file's FWorker (:mod:`pilot.manager.profiles`)."""
        return [o for name, rt in self.clusters.items() for o in offers_of(name, rt.config)]

    def gather_demand(self) -> Demand:
        """The READY work of each category, and of it what a fresh pilot of each cluster could take.

        One aggregation per cycle, whatever the number of clusters (:mod:`pilot.manager.demand`). Only work a
        pilot could take counts: a Firework longer than any pilot, or pinned to another FWorker, costs no pilot.
        The two indexes it needs are made sure of every cycle (two cheap commands): ``lpad reset`` drops them
        with the collection while the manager runs. A database user without the right to create them is told
        once; the demand is still right, only slower to count.
        """
        if self._index_demand:
            why = ensure_demand_indexes(self.lp.fireworks)
            if why:
                log.warning("%s", why)
                self._index_demand = False
        return gather_demand(self.lp.fireworks, self.pilot_offers())

    # ================================================================== track (see pilot.manager.tracking)
    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> bool | None:
        """One status query for the cluster; update our pilots' records (True: it answered, False: it failed,
        None: not asked, nothing of ours is there)."""
        return self.tracking.refresh_cluster(rt, report)

    def reconcile_lost_work(self, report: CycleReport) -> None:
        """Rerun the Fireworks still RUNNING under pilots that ended (at most max_reruns times each)."""
        self.tracking.reconcile_lost_work(report)

    # ================================================================== decide
    def pilot_counts(self, demand: dict[tuple[str, str], CategoryDemand]) -> dict[tuple[str, str], PilotCounts]:
        """Our live pilots per (cluster, category): pending, running, and running with time for more work.

        ``demand`` is the work a pilot of each cluster could take (:attr:`Demand.by_cluster`): a running pilot
        counts as serving it while its time left, less the margin, fits that work's mean expected duration.
        """
        now = self.clock()
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for rec in self.records.live():
            rt = self.clusters.get(rec["cluster"])
            if rt is None:
                continue
            unit = unit_of_record(rec, rt.config)
            c = counts.setdefault((unit, rec["category"]), {"p": 0, "r": 0, "rt": 0})
            drained = rec["cluster"] in self.drain.drains   # as the gates see it this cycle (not the marks)
            if rec["state"] in PENDING_STATES:
                # a backed-off cluster's queued pilots may never start, a drained one's leave when they start:
                # don't let them hold demand
                if rt.available(now) and not drained:
                    c["p"] += 1
            else:
                c["r"] += 1
                d = demand.get((unit, rec["category"]))
                need = max(60.0, d.mean_duration or 0.0) if d else 60.0
                start = rec.get("start_time") or now
                left = start + float(rec["walltime"]) - now - float(rec["margin"])
                if left > need and not drained:   # a drained pilot takes no more work
                    c["rt"] += 1
        return {k: PilotCounts(pending=v["p"], running=v["r"], running_with_time=v["rt"])
                for k, v in counts.items()}

    def cluster_views(self) -> list[ClusterView]:
        """The policy's view of each cluster, one per queue profile (:mod:`pilot.manager.profiles`)."""
        now = self.clock()
        return [v for name, rt in self.clusters.items()
                for v in views_of(name, rt.config, self.records,
                                  rt.usable(now) and self.phases.busy(name) is None,
                                  closed=lambda ask: self.gates.closed(ask, now))]

    # ================================================================== act
    def submit(self, rt: ClusterRuntime, category: str, report: CycleReport, profile: str | None = None) -> bool:
        """Render, upload and submit one pilot (of queue ``profile``; None: the cluster's first). False when the
        cluster failed (stop submitting to it)."""
        from pilot.render import render_pilot_script
        from pilot.transport import ConnectError, TransportError
        from queue_adapters.base import SubmitOutcome, job_name

        c = rt.config
        if self.records.is_drained(rt.name, self.clock()):
            # drained while this cycle's submissions were under way: the drain's word holds from now on
            log.info("%s/%s: drained meanwhile: no more pilots submitted", rt.name, category)
            return False
        name = job_name(category, secrets.token_hex(3), prefix=self.config.pilot.job_name_prefix)
        profile = profile or (c.profiles_for(category) or list(c.pilot_profiles))[0]
        script = render_pilot_script(c, rt.name, category, name, profile=profile)
        path = f"{c.work_dir}/scripts/{name}.sh"
        now = self.clock()
        self.records.add_intent(name, rt.name, category, float(c.profile(profile).walltime_seconds),
                                float(c.walltime_margin), path, now, profile=profile)
        try:
            rt.connect().put(script.encode(), path, mode=0o700)
        except TransportError as e:
            # the script did not arrive (an SFTP deadline, a full or hung work_dir): nothing reached the scheduler
            self.records.update(name, state=SUBMIT_FAILED, last_error=str(e), end_time=now, reconciled=True)
            rt.fail(e, report)
            return False
        try:
            ad = rt.adapter
            stdin = script if getattr(ad, "submit_stdin_from_script", False) else None
            res = rt.run(ad.submit_command(path), stdin=stdin)
        except ConnectError as e:
            # nothing reached the scheduler
            self.records.update(name, state=SUBMIT_FAILED, last_error=str(e), end_time=now, reconciled=True)
            rt.fail(e, report)
            return False
        except TransportError as e:
            # the command may have run: keep the intent, reconcile by job name next cycle
            self.records.update(name, last_error=f"submission outcome unknown: {e}")
            rt.fail(e, report)
            return False
        if os.environ.get("PILOT_FAULT") == "kill-after-submit":
            # fault injection for the tests: die like `kill -9` between the scheduler's answer and the record
            os.kill(os.getpid(), signal.SIGKILL)
        result = rt.adapter.parse_submit(res.returncode, res.stdout, res.stderr)
        if result.outcome == SubmitOutcome.SUBMITTED:
            # SUBMITTED always carries the job id (str() only says so to the type checker)
            self.records.update(name, job_id=result.job_id, state="PENDING",
                                fworker=fworker_name(rt.name, str(result.job_id)))
            self.records.submission_accepted(rt.name)
            report.submitted.append({"cluster": rt.name, "category": category, "job_id": result.job_id,
                                     "job_name": name, "profile": profile})
            shown = rt.name if len(c.pilot_profiles) == 1 else f"{rt.name}[{profile}]"
            log.info("%s/%s: submitted %s as job %s", shown, category, name, result.job_id)
            return True
        if result.outcome == SubmitOutcome.UNKNOWN:
            self.records.update(name, last_error=f"submission outcome unknown: {result.reason}")
            log.warning("%s/%s: submission of %s: outcome unknown (%s); reconciling by name next cycle",
                        rt.name, category, name, result.reason)
            return False
        self.records.update(name, state=SUBMIT_FAILED, last_error=result.reason, end_time=now, reconciled=True)
        self.records.submission_refused(rt.name, result.reason or "refused (no reason given)", now)
        msg = f"submission refused: {result.reason}"
        if result.retryable:
            rt.fail(msg, report)
        else:
            # a config problem (bad partition, account...): report it, back off too so it is not hammered
            rt.fail(msg + " (fix the cluster config; retrying will not help)", report)
        return False

    # ================================================================== cycle
    def start_routes(self) -> None:
        """Start keeping the ssh-routed clusters' forwards (once). Not in a dry run: it submits nothing, and a
        running manager holds those ports."""
        if not self.dry_run:
            self.routes.start()

    def run_cycle(self) -> CycleReport:
        """One manager cycle. Never raises for a single cluster's failure, and never waits for one cluster longer
        than :attr:`phase_deadline` per phase (:mod:`pilot.manager.concurrency`).

        The phases, in order: (1) track: one status query per cluster, all clusters at once; (2) reconcile
        lost work (database only); (3) demand and (4) decide, for all clusters together; (5) act: each cluster's
        submissions, all clusters at once. A cluster that does not finish a phase in time is reported
        unreachable and left out of the rest of the cycle; its pilots count as they were last seen.
        """
        self.start_routes()
        t0 = self.clock()
        report = CycleReport(started=t0)
        self.phases.collect_late(report)
        self.phases.run("status query", self._refresh_jobs(), report, self.phase_deadline)
        self.reconcile_lost_work(report)
        self.phases.run("pilot review", self.holds.jobs(self.clusters), report, self.phase_deadline)  # holds
        # counted once, after the pilots and their lost work: work put back to READY, and Fireworks that ended
        # meanwhile (making others READY), are in it
        demand = self.gather_demand()
        report.demand = demand.by_category
        report.db_queries += demand.queries
        self.gates.refresh(self.clock())   # before the counts: a drained cluster's pilots serve no demand
        counts = self.pilot_counts(demand.by_cluster)
        report.decisions = plan(report.demand, self.cluster_views(), counts, fits=demand.by_cluster,
                                share=self.config.pilot.share, recent=recent_cores(  # fair share: pilots ended lately
                                    self.records.recently_ended(self.clock() - self.config.pilot.share_window),
                                    self.config.clusters))
        report.decisions = self.holds.gate(report.decisions, self.clock())  # holds (issue 16 item 13)
        report.decisions = self.budget.cut(report.decisions)  # several pilots in one cycle: within the budget
        for d in report.decisions:
            (log.info if d.submit or d.ready else log.debug)(d.log_line())
        if not self.dry_run:
            self.phases.run("submission", self._submit_jobs(report.decisions), report, self.phase_deadline)
        report.duration = self.clock() - t0
        if not self.dry_run:
            routes = {n: s.to_dict() for n, s in self.routes.states().items()}
            self.records.heartbeat({"last_cycle": t0, "last_cycle_duration": report.duration,
                                    "errors": report.errors, **({"routes": routes} if routes else {}),
                                    "decisions": self._choices(report.decisions)},
                                   drop=() if routes else ("routes",))
            if self.notifier is not None:   # never raises: a failed notification is logged, the cycle goes on
                self.notifier.cycle(self.clock(), self.budget.states)
        return report

    def _choices(self, decisions: list[Decision]) -> list[dict[str, Any]]:
        """The cycle's decisions as ``pilot status`` shows them: each with the shape of its queue profile
        (:func:`pilot.manager.profiles.shape`), which says what fits it."""
        out = []
        for d in decisions:
            rt = self.clusters.get(d.cluster)
            shape = profile_shape(rt.config, d.profile) if rt is not None else ""
            out.append({**d.to_record(), "shape": shape})
        return out

    def _refresh_jobs(self) -> dict[str, Job]:
        """Phase 1: the status query of each cluster that is not backed off, as a job of its own thread."""
        now = self.clock()
        jobs: dict[str, Job] = {}
        for rt in self.clusters.values():
            if not rt.available(now):
                log.info("%s: backed off until %s (%s)", rt.name, clock_time(rt.backoff_until), rt.last_error)
                continue
            jobs[rt.name] = partial(self._refresh_one, rt)
        return jobs

    def _refresh_one(self, rt: ClusterRuntime, report: CycleReport) -> bool | None:
        answered = self.refresh_cluster(rt, report)
        self.gates.refresh_cluster(rt, report)  # what the gates learn from the cluster (maintenance, usage)
        # only an answer resets the back-off: a cluster that was not asked has not recovered
        if answered and rt.name not in report.errors:
            rt.ok()
        return answered

    def _submit_jobs(self, decisions: list[Decision]) -> dict[str, Job]:
        """Phase 5: each cluster's submissions (all its categories, one after another) as one job."""
        wanted: dict[str, list[Decision]] = {}
        for d in decisions:
            if d.submit > 0:
                wanted.setdefault(d.cluster, []).append(d)
        return {name: partial(self._submit_many, self.clusters[name], ds) for name, ds in wanted.items()}

    def _submit_many(self, rt: ClusterRuntime, decisions: list[Decision], report: CycleReport) -> int:
        """Submit what the decisions ask of one cluster; stops at its first failure or at :attr:`stop_event`."""
        done = 0
        for d in decisions:
            for _ in range(d.submit):
                if self.stop_event.is_set() or not self.submit(rt, d.category, report, d.profile):
                    return done
                done += 1
        rt.ok()
        return done

    def run_forever(self, on_cycle: Callable[[CycleReport], None] | None = None) -> None:
        """Cycle every ``poll_interval`` seconds until :attr:`stop_event` is set (SIGTERM)."""
        interval = float(self.config.pilot.poll_interval)
        while not self.stop_event.is_set():
            start = self.clock()
            try:
                report = self.run_cycle()
            except Exception:  # the LaunchPad itself failed: log it, keep the daemon alive, try again
                log.exception("manager cycle failed; retrying in %.0f s", interval)
            else:
                if on_cycle:
                    on_cycle(report)
            self.stop_event.wait(max(0.0, interval - (self.clock() - start)))

    def close(self) -> None:
        """Stop the route keepers (forwards cancelled) and close every cluster's connection.

        A cluster thread still busy (a submission under way) gets up to :attr:`phase_deadline` to end first:
        closing its connection under it would turn a submission that worked into one of unknown outcome.
        """
        self.routes.stop()
        self.phases.wait_idle(self.phase_deadline)
        for rt in self.clusters.values():
            rt.close()


__all__ = ["Manager", "CycleReport", "ClusterRuntime", "fworker_name", "walltime_seconds"]
