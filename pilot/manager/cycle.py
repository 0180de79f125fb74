"""The manager daemon: gather -> decide -> act -> record, once per cycle.

This is the only room that combines the others: the LaunchPad (demand, lost work), the transports
(one pooled connection per cluster), the pure queue adapters and the pure policy.

One cycle:

1. demand from the LaunchPad: READY and RUNNING counts of each served ``_category`` (indexed counts) with
   the mean expected duration of the READY Fireworks that give one (``spec._pilot.walltime``, sampled);
2. one status query per cluster for this manager's own pilots (matched to its records by job id, and by
   job name for submissions whose outcome was unknown); jobs that left the queue are resolved from the
   scheduler's history, then from the exit-code file the pilot script writes;
3. reconcile: Fireworks still RUNNING under a pilot that ended are put back to READY (at most
   ``max_reruns`` times each, then FIZZLED with the reason, for a person);
4. the pure policy (:func:`pilot.manager.policy.plan`) decides how many pilots each cluster submits;
5. submit: render, upload, submit, with the record written *before* the scheduler sees the job.

A cluster that fails (SSH down, scheduler error) is backed off with growing delays and reported; the
others carry on, and it recovers by itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pilot.manager import policy
from pilot.manager.records import (ENDED_STATES, LIVE_STATES, PENDING_STATES, SUBMIT_FAILED, SUBMITTING, VANISHED,
                           Records)

log = logging.getLogger("pilot.manager")


@dataclass
class ClusterRuntime:
    """What the manager keeps of one cluster between cycles."""

    name: str
    config: Any                      # pilot.config.ClusterConfig
    adapter: Any                     # queue_adapters.base.QueueAdapter
    transport: Any | None = None     # pilot.transport.Transport, opened lazily
    failures: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None
    calls: int = 0                   # scheduler/SSH commands run (for benchmarks and status)

    def available(self, now: float) -> bool:
        return now >= self.backoff_until


@dataclass
class CycleReport:
    """What one cycle saw and did (printed by ``pilot manager run``, returned for tests)."""

    started: float
    demand: dict[str, policy.CategoryDemand] = field(default_factory=dict)
    decisions: list[policy.Decision] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    reruns: list[int] = field(default_factory=list)
    fizzled: list[int] = field(default_factory=list)
    duration: float = 0.0
    db_queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started, "duration": self.duration,
            "demand": {c: vars(d) for c, d in self.demand.items()},
            "decisions": [vars(d) for d in self.decisions],
            "submitted": self.submitted, "errors": self.errors,
            "reruns": self.reruns, "fizzled": self.fizzled,
        }


def walltime_seconds(cluster_cfg: Any) -> float:
    """The pilot wall time of a cluster config, in seconds."""
    return float(cluster_cfg.walltime_seconds)


def fworker_name(cluster: str, job_id: str) -> str:
    """The FWorker name a pilot uses in every launch: cluster name + job id."""
    return f"{cluster}-{job_id}"


class Manager:
    """Runs manager cycles for one config directory.

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
    """

    def __init__(self, config: Any, launchpad: Any, dry_run: bool = False,
                 transport_factory: Callable[[str, Any], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from pilot.transport.clusters import adapter_for

        self.config = config
        self.lp = launchpad
        self.dry_run = dry_run
        self.clock = clock
        self.records = Records(launchpad.db)
        if not dry_run:
            self.records.ensure_indexes()
        if transport_factory is None:
            from pilot.transport.clusters import transport_for
            transport_factory = transport_for
        self._transport_factory = transport_factory
        self.clusters: dict[str, ClusterRuntime] = {}
        for name, ccfg in sorted(config.clusters.items()):
            rt = ClusterRuntime(name=name, config=ccfg, adapter=adapter_for(ccfg))
            st = self.records.cluster_state(name)
            if st.get("backoff_until"):
                rt.backoff_until = float(st["backoff_until"])
                rt.failures = int(st.get("failures") or 0)
                rt.last_error = st.get("last_error")
            self.clusters[name] = rt
        self.stop_event = threading.Event()

    # ================================================================== gather
    #: READY Fireworks read to estimate the mean expected duration of a category (a sample bounds the cost)
    DURATION_SAMPLE = 1000

    def gather_demand(self) -> dict[str, policy.CategoryDemand]:
        """READY/RUNNING counts of each category the clusters serve, with the READY Fireworks' expected durations.

        Indexed counts (``state`` and ``spec._category`` are indexed by FireWorks) rather than one ``$group``
        over the collection: on the embedded server a group over 100,000 Fireworks takes minutes, counts take
        well under a second. The mean duration comes from at most :attr:`DURATION_SAMPLE` READY Fireworks.
        """
        fws = self.lp.fireworks
        out: dict[str, policy.CategoryDemand] = {}
        for cat in sorted({c for rt in self.clusters.values() for c in rt.config.categories}):
            ready_q = {"state": "READY", "spec._category": cat}
            ready = fws.count_documents(ready_q)
            running = fws.count_documents({"state": "RUNNING", "spec._category": cat})
            known, mean = 0, None
            if ready:
                timed_q = {**ready_q, "spec._pilot.walltime": {"$gt": 0}}
                known = fws.count_documents(timed_q)
                if known:
                    sample = [d.get("spec", {}).get("_pilot", {}).get("walltime") for d in
                              fws.find(timed_q, {"spec._pilot.walltime": 1, "_id": 0}).limit(self.DURATION_SAMPLE)]
                    values = [float(v) for v in sample if isinstance(v, (int, float)) and v > 0]
                    mean = sum(values) / len(values) if values else None
            out[cat] = policy.CategoryDemand(ready=ready, running=running, with_duration=known, mean_duration=mean)
        return out

    def _transport(self, rt: ClusterRuntime) -> Any:
        if rt.transport is None:
            rt.transport = self._transport_factory(rt.name, rt.config)
        return rt.transport

    def _run(self, rt: ClusterRuntime, argv: list[str], stdin: str | None = None) -> Any:
        rt.calls += 1
        return self._transport(rt).run(argv, timeout=float(rt.config.command_timeout), stdin=stdin)

    def _fail(self, rt: ClusterRuntime, error: str, report: CycleReport) -> None:
        now = self.clock()
        rt.failures += 1
        b = self.config.pilot.backoff
        delay = min(float(b.max), float(b.initial) * float(b.factor) ** (rt.failures - 1))
        rt.backoff_until = now + delay
        rt.last_error = error
        report.errors[rt.name] = error
        log.warning("%s: %s; backing off for %.0f s (failure %d in a row)", rt.name, error, delay, rt.failures)
        if not self.dry_run:
            self.records.cluster_failed(rt.name, error, rt.failures, rt.backoff_until, now)

    def _ok(self, rt: ClusterRuntime) -> None:
        if rt.failures:
            log.info("%s: reachable again after %d failure(s)", rt.name, rt.failures)
        rt.failures = 0
        rt.backoff_until = 0.0
        rt.last_error = None
        if not self.dry_run:
            self.records.cluster_ok(rt.name, self.clock())

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> bool:
        """One status query for the cluster; update our pilots' records. False if the cluster failed."""
        from pilot.transport import TransportError
        from queue_adapters.base import SchedulerQueryError

        live = self.records.live(rt.name)
        if not live:
            # nothing of ours to look at: still check the cluster is reachable only when we may submit
            return True
        ad = rt.adapter
        try:
            res = self._run(rt, ad.status_command(user=rt.config.user))
            statuses = ad.parse_status(res.returncode, res.stdout, res.stderr)
        except (TransportError, SchedulerQueryError) as e:
            self._fail(rt, str(e), report)
            return False
        by_name = {s.name: s for s in statuses.values() if s.name}
        now = self.clock()
        missing: list[dict[str, Any]] = []
        for rec in live:
            st = statuses.get(rec["job_id"]) if rec.get("job_id") else None
            if st is None and rec["state"] == SUBMITTING:
                st = by_name.get(rec["job_name"])
            if st is not None:
                self._apply_status(rec, st, now)
            elif rec["state"] == SUBMITTING:
                self._unseen_submission(rec, now)
            else:
                missing.append(rec)
        if missing:
            self._resolve_missing(rt, missing, report)
        self._fill_exit_codes(rt)
        return True

    def _fill_exit_codes(self, rt: ClusterRuntime) -> None:
        """Pilots that ended without an exit code (squeue shows none): read their exit-code files once."""
        from pilot.transport import TransportError
        from queue_adapters.base import exit_file_name, parse_exit_file

        if self.dry_run:
            return
        for rec in self.records.pilots.find({"cluster": rt.name, "state": {"$in": list(ENDED_STATES)},
                                             "exit_code": None, "job_id": {"$ne": None},
                                             "exit_file_read": {"$ne": True}}):
            path = f"{rt.config.work_dir}/{exit_file_name(rec['job_id'])}"
            try:
                res = self._run(rt, ["cat", path])
            except TransportError as e:
                log.info("%s: cannot read %s: %s", rt.name, path, e)
                return
            st = parse_exit_file(res.stdout, rec["job_id"]) if res.returncode == 0 else None
            self.records.update(rec["_id"], exit_file_read=True,
                                **({"exit_code": st.exit_code} if st is not None else {}))

    def _apply_status(self, rec: dict[str, Any], st: Any, now: float) -> None:
        fields: dict[str, Any] = {"state": st.state.name, "native_state": st.native_state, "reason": st.reason,
                                  "unseen_cycles": 0}
        if rec.get("job_id") is None:
            fields["job_id"] = st.job_id
            fields["fworker"] = fworker_name(rec["cluster"], st.job_id)
            log.info("%s: submission %s reconciled by name: job %s", rec["cluster"], rec["job_name"], st.job_id)
        if st.state.name in ("RUNNING", "COMPLETING") and not rec.get("start_time"):
            fields["start_time"] = st.start_time.timestamp() if st.start_time else now
        if st.state.final:
            fields["end_time"] = st.end_time.timestamp() if st.end_time else now
            fields["exit_code"] = st.exit_code
            if not rec.get("start_time") and st.start_time:
                fields["start_time"] = st.start_time.timestamp()
        changed = {k: v for k, v in fields.items() if rec.get(k) != v}
        if changed and not self.dry_run:
            self.records.update(rec["_id"], **changed)
        if "state" in changed:
            log.info("%s: pilot %s (job %s) %s -> %s%s", rec["cluster"], rec["job_name"],
                     fields.get("job_id", rec.get("job_id")), rec["state"], st.state.name,
                     f" ({st.reason})" if st.reason else "")

    def _unseen_submission(self, rec: dict[str, Any], now: float) -> None:
        """A submission whose outcome is unknown and that no listing shows (yet)."""
        grace = max(3 * float(self.config.pilot.poll_interval), 120.0)
        if now - float(rec["submit_time"]) > grace:
            msg = (f"submission outcome unknown and no job named {rec['job_name']} appeared within "
                   f"{grace:.0f} s: treated as not submitted")
            log.warning("%s: %s", rec["cluster"], msg)
            if not self.dry_run:
                self.records.update(rec["_id"], state=VANISHED, last_error=msg, end_time=now)
        elif not self.dry_run:
            self.records.update(rec["_id"], unseen_cycles=int(rec.get("unseen_cycles") or 0) + 1)

    def _resolve_missing(self, rt: ClusterRuntime, missing: list[dict[str, Any]], report: CycleReport) -> None:
        """Jobs of ours that left the queue listing: scheduler history, then the exit-code file."""
        from pilot.transport import TransportError
        from queue_adapters.base import SchedulerQueryError, exit_file_name, parse_exit_file

        ad = rt.adapter
        now = self.clock()
        ids = [r["job_id"] for r in missing]
        hist: dict[str, Any] = {}
        cmd = ad.history_command(ids)
        if cmd:
            try:
                res = self._run(rt, cmd)
                hist = ad.parse_history(res.returncode, res.stdout, res.stderr)
            except (TransportError, SchedulerQueryError) as e:
                log.info("%s: history query failed (%s); using exit-code files", rt.name, e)
        for rec in missing:
            st = hist.get(rec["job_id"])
            if st is None or not st.state.final:
                path = f"{rt.config.work_dir}/{exit_file_name(rec['job_id'])}"
                try:
                    res = self._run(rt, ["cat", path])
                    st = parse_exit_file(res.stdout, rec["job_id"]) if res.returncode == 0 else None
                except TransportError as e:
                    log.info("%s: cannot read %s: %s", rt.name, path, e)
                    st = None
            if st is not None and st.state.final:
                self._apply_status(rec, st, now)
            else:
                unseen = int(rec.get("unseen_cycles") or 0) + 1
                if unseen >= 2:
                    msg = f"job {rec['job_id']} left the queue with no record in the scheduler or {rt.config.work_dir}"
                    log.warning("%s: pilot %s: %s", rt.name, rec["job_name"], msg)
                    if not self.dry_run:
                        self.records.update(rec["_id"], state=VANISHED, last_error=msg, end_time=now)
                elif not self.dry_run:
                    self.records.update(rec["_id"], unseen_cycles=unseen)

    # ================================================================== reconcile
    def reconcile_lost_work(self, report: CycleReport) -> None:
        """Rerun the Fireworks still RUNNING under pilots that ended (at most max_reruns times each)."""
        from fireworks.core.firework import FWAction

        max_reruns = int(self.config.pilot.max_reruns)
        for rec in self.records.ended_unreconciled():
            fworker = rec.get("fworker")
            if fworker:
                launches = list(self.lp.launches.find({"fworker.name": fworker, "state": "RUNNING"},
                                                      {"launch_id": 1, "fw_id": 1}))
            else:
                launches = []
            for launch in launches:
                fw = self.lp.fireworks.find_one({"fw_id": launch["fw_id"]}, {"state": 1, "launches": 1, "name": 1})
                if not fw or fw.get("state") != "RUNNING" or launch["launch_id"] not in (fw.get("launches") or []):
                    continue
                fw_id = int(launch["fw_id"])
                why = (f"pilot {rec['job_name']} (job {rec.get('job_id')}) on {rec['cluster']} ended "
                       f"{rec['state']} while running it")
                if self.dry_run:
                    log.info("dry run: would rerun fw %d: %s", fw_id, why)
                    continue
                done = self.records.rerun_count(fw_id)
                if done < max_reruns:
                    self.records.add_rerun(fw_id, rec["job_name"], why, self.clock())
                    self.lp.rerun_fw(fw_id)
                    report.reruns.append(fw_id)
                    log.warning("fw %d '%s': %s; rerun %d/%d", fw_id, fw.get("name"), why, done + 1, max_reruns)
                else:
                    msg = f"{why}; not rerun: it was already rerun {done} times (max_reruns={max_reruns})"
                    action = FWAction(stored_data={"_message": msg,
                                                   "_exception": {"_stacktrace": msg, "_details": None}})
                    self.lp.complete_launch(launch["launch_id"], action, "FIZZLED")
                    report.fizzled.append(fw_id)
                    log.error("fw %d '%s': FIZZLED: %s", fw_id, fw.get("name"), msg)
            if not self.dry_run:
                self.records.update(rec["_id"], reconciled=True)

    # ================================================================== decide
    def pilot_counts(self, demand: dict[str, policy.CategoryDemand]) -> dict[tuple[str, str], policy.PilotCounts]:
        now = self.clock()
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for rec in self.records.live():
            rt = self.clusters.get(rec["cluster"])
            if rt is None:
                continue
            c = counts.setdefault((rec["cluster"], rec["category"]), {"p": 0, "r": 0, "rt": 0})
            if rec["state"] in PENDING_STATES:
                # a backed-off cluster's queued pilots may never start: don't let them hold demand
                if rt.available(now):
                    c["p"] += 1
            else:
                c["r"] += 1
                d = demand.get(rec["category"])
                need = max(60.0, d.mean_duration or 0.0) if d else 60.0
                start = rec.get("start_time") or now
                left = start + float(rec["walltime"]) - now - float(rec["margin"])
                if left > need:
                    c["rt"] += 1
        return {k: policy.PilotCounts(pending=v["p"], running=v["r"], running_with_time=v["rt"])
                for k, v in counts.items()}

    def cluster_views(self) -> list[policy.ClusterView]:
        now = self.clock()
        views = []
        for name, rt in self.clusters.items():
            c = rt.config
            waits = self.records.recent_queue_waits(name)
            wt = walltime_seconds(c)
            views.append(policy.ClusterView(
                name=name, categories=tuple(c.categories), usable_seconds=max(0.0, wt - float(c.walltime_margin)),
                fireworks_per_pilot=int(c.fireworks_per_pilot),
                limits=policy.ClusterLimits(max_queued=c.limits.max_queued, max_running=c.limits.max_running,
                                            min_pilots=c.limits.min_pilots),
                available=rt.available(now), queue_wait=statistics.median(waits) if waits else None))
        return views

    # ================================================================== act
    def submit(self, rt: ClusterRuntime, category: str, report: CycleReport) -> bool:
        """Render, upload and submit one pilot. False when the cluster failed (stop submitting to it)."""
        from pilot.render import render_pilot_script
        from pilot.transport import ConnectError, TransportError
        from queue_adapters.base import SubmitOutcome, job_name

        c = rt.config
        name = job_name(category, secrets.token_hex(3), prefix=self.config.pilot.job_name_prefix)
        script = render_pilot_script(c, rt.name, category, name)
        path = f"{c.work_dir}/scripts/{name}.sh"
        now = self.clock()
        self.records.add_intent(name, rt.name, category, walltime_seconds(c), float(c.walltime_margin), path, now)
        try:
            tr = self._transport(rt)
            tr.put(script.encode(), path, mode=0o700)
            ad = rt.adapter
            stdin = script if getattr(ad, "submit_stdin_from_script", False) else None
            res = self._run(rt, ad.submit_command(path), stdin=stdin)
        except ConnectError as e:
            # nothing reached the scheduler
            self.records.update(name, state=SUBMIT_FAILED, last_error=str(e), end_time=now, reconciled=True)
            self._fail(rt, str(e), report)
            return False
        except TransportError as e:
            # the command may have run: keep the intent, reconcile by job name next cycle
            self.records.update(name, last_error=f"submission outcome unknown: {e}")
            self._fail(rt, str(e), report)
            return False
        if os.environ.get("PILOT_FAULT") == "kill-after-submit":
            # fault injection for the tests: die like `kill -9` between the scheduler's answer and the record
            os.kill(os.getpid(), signal.SIGKILL)
        result = rt.adapter.parse_submit(res.returncode, res.stdout, res.stderr)
        if result.outcome == SubmitOutcome.SUBMITTED:
            self.records.update(name, job_id=result.job_id, state="PENDING",
                                fworker=fworker_name(rt.name, result.job_id))
            report.submitted.append({"cluster": rt.name, "category": category, "job_id": result.job_id,
                                     "job_name": name})
            log.info("%s/%s: submitted %s as job %s", rt.name, category, name, result.job_id)
            return True
        if result.outcome == SubmitOutcome.UNKNOWN:
            self.records.update(name, last_error=f"submission outcome unknown: {result.reason}")
            log.warning("%s/%s: submission of %s: outcome unknown (%s); reconciling by name next cycle",
                        rt.name, category, name, result.reason)
            return False
        self.records.update(name, state=SUBMIT_FAILED, last_error=result.reason, end_time=now, reconciled=True)
        msg = f"submission refused: {result.reason}"
        if result.retryable:
            self._fail(rt, msg, report)
        else:
            # a config problem (bad partition, account...): report it, back off too so it is not hammered
            self._fail(rt, msg + " (fix the cluster config; retrying will not help)", report)
        return False

    # ================================================================== cycle
    def run_cycle(self) -> CycleReport:
        """One manager cycle. Never raises for a single cluster's failure."""
        t0 = self.clock()
        report = CycleReport(started=t0)
        report.demand = self.gather_demand()
        now = self.clock()
        for rt in self.clusters.values():
            if not rt.available(now):
                log.info("%s: backed off until %s (%s)", rt.name,
                         time.strftime("%H:%M:%S", time.localtime(rt.backoff_until)), rt.last_error)
                continue
            if self.refresh_cluster(rt, report) and rt.name not in report.errors:
                if rt.failures or self.records.live(rt.name):
                    self._ok(rt)
        self.reconcile_lost_work(report)
        # FWs that ended while we looked may have made others READY: demand as of now
        report.demand = self.gather_demand()
        counts = self.pilot_counts(report.demand)
        report.decisions = policy.plan(report.demand, self.cluster_views(), counts)
        for d in report.decisions:
            (log.info if d.submit or d.ready else log.debug)(d.log_line())
            if d.submit <= 0 or self.dry_run:
                continue
            rt = self.clusters[d.cluster]
            for _ in range(d.submit):
                if self.stop_event.is_set() or not self.submit(rt, d.category, report):
                    break
            else:
                self._ok(rt)
        report.duration = self.clock() - t0
        if not self.dry_run:
            self.records.heartbeat({"last_cycle": t0, "last_cycle_duration": report.duration,
                                    "errors": report.errors})
        return report

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
        for rt in self.clusters.values():
            if rt.transport is not None:
                rt.transport.close()
                rt.transport = None


def backoff_delays(initial: float, maximum: float, n: int) -> list[float]:
    """The first ``n`` backoff delays (for docs and status): doubling from ``initial`` up to ``maximum``."""
    return [min(maximum, initial * 2 ** i) for i in range(n)]


__all__ = ["Manager", "CycleReport", "ClusterRuntime", "fworker_name", "walltime_seconds", "backoff_delays",
           "ENDED_STATES", "LIVE_STATES"]
