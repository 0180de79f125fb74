"""Pilots that cannot start: counted per cluster, and after a few in a row the cluster is held back.

Why: on two real SLURM clusters whose batch jobs could not run the pilot's Python (a wrong interpreter path, a
failing ``setup:`` line), every pilot ended ``FAILED`` within seconds and the manager submitted 241 pilots in
7 minutes, the only trace one INFO line per pilot (issue 16, item 13). The cluster's backoff
(:mod:`pilot.manager.runtime`) does not see this: SSH and the scheduler answer fine. HyperQueue pauses an
allocation queue after 3 failed starts, Parsl holds a provider back after failed blocks; so does this module.

The rule, applied once to each pilot record that reached a final scheduler state (:func:`classify`):

* **started** (resets the count): the pilot ran a Firework (a launch names its FWorker ``CLUSTER-JOBID``, or its
  exit record counts one), or its worker stopped normally (exit record ``IDLE``, ``NOTHING_FITS``, ``DEADLINE``,
  ``SIGNAL``, ``DRAINED``), or, without an exit record, the job COMPLETED after the worker wrote a heartbeat;
* **failed start**: no Firework, and the worker's exit record says it failed (``ERROR``, ``INTERNAL``), or there
  is no exit record and the job exited non-zero or its worker never wrote a heartbeat (the interpreter is
  missing, ``setup:`` failed, the node cannot reach the LaunchPad);
* **ignored**: CANCELLED (``pilot cancel``, ``scancel``, an administrator, preemption: not the cluster's start
  failing), a job that ended otherwise after its worker started, and pilots submitted before the cluster file
  last changed.

After ``failed_starts_before_hold`` (``pilot.yaml``, default 3) failed starts in a row the cluster is *held*: no
pilot for ``2 * poll_interval`` seconds, then one probe pilot (half-open); each probe that fails doubles the
wait, at most ``failed_start_hold_max``. While failed starts accumulate, a cluster never has more pilots
without a heartbeat in flight than failed starts it has left, so it gets at most that many pilots before the
hold (plus what one cycle submitted before the first failure was seen). The hold, the last failed pilot, the
last lines of its stderr file (read over the cluster's transport, with its ``command_timeout``, secrets
scrubbed) and the command to read the rest are kept in the cluster's ``pilot_clusters`` record for
``pilot status``. The hold ends when a pilot of the cluster starts, or when the cluster's settings change
(a digest of the loaded cluster file; the running manager reads a changed file through
:class:`pilot.manager.daemon.ClusterFileWatcher`).

Wiring (:class:`pilot.manager.cycle.Manager`): :meth:`Holds.jobs` after the lost work is reconciled, run as a
phase of the cycle (each cluster's review in its own thread: reading the stderr tail is a remote command), and
:meth:`Holds.gate` on the policy's decisions.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import threading
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from pilot.manager.records import FINAL_STATES, Records
from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, Config
    from pilot.manager.concurrency import Job
    from pilot.manager.daemon import ClusterFileWatcher
    from pilot.manager.policy import Decision

log = logging.getLogger("pilot.manager")

FAILED, STARTED, IGNORED = "failed", "started", "ignored"
#: the worker's exit-record ``stop`` values of a normal end (:mod:`pilot.worker.heartbeat`)
NORMAL_STOPS = ("IDLE", "NOTHING_FITS", "DEADLINE", "SIGNAL", "DRAINED")
#: lines of the last failed pilot's stderr kept in the hold, and lines the "see the rest" command shows
TAIL_LINES = 20
MORE_LINES = 100
#: at most this many characters of the stderr tail are kept (a line can be very long)
TAIL_CHARS = 4000


def classify(rec: dict[str, Any], ran_firework: bool) -> tuple[str, str]:
    """Judge one pilot record: (:data:`STARTED` | :data:`FAILED` | :data:`IGNORED`, why). Pure; the rule is
    in the module docstring."""
    state = rec.get("state")
    if state not in FINAL_STATES:
        return IGNORED, f"not ended ({state})"
    ex = rec.get("exit") if isinstance(rec.get("exit"), dict) else None
    if ran_firework or (ex is not None and int(ex.get("fireworks") or 0) > 0):
        return STARTED, "it ran a Firework"
    if state == "CANCELLED":
        return IGNORED, "cancelled (by a user, an administrator or preemption)"
    if ex is not None:
        stop, code = ex.get("stop"), ex.get("code")
        if stop in NORMAL_STOPS or (stop is None and not code):
            return STARTED, f"its worker stopped normally ({ex.get('reason') or stop})"
        return FAILED, (f"its worker failed before running any Firework: {ex.get('reason') or stop} "
                        f"(exit code {code})")
    code = rec.get("exit_code")
    if code not in (None, 0):
        return FAILED, f"job ended {state} with exit code {code} before running any Firework"
    if rec.get("heartbeat") is None:
        return FAILED, f"job ended {state} and its worker never wrote a heartbeat (it did not start)"
    if state == "COMPLETED":
        return STARTED, "its worker started (heartbeat) and the job completed"
    return IGNORED, f"job ended {state} after its worker started"


def config_digest(cfg: ClusterConfig) -> str:
    """A digest of a cluster's settings as loaded: the hold ends when it changes."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def stderr_path(work_dir: str, job_id: str) -> str:
    """The pilot job's stderr file, ``WORK_DIR/pilot-JOBID.err`` (templates/*.sh.j2; named like the exit-code
    file, :func:`queue_adapters.base.exit_file_name`)."""
    from queue_adapters.base import exit_file_name

    return f"{work_dir}/{exit_file_name(job_id).removesuffix('.exit')}.err"


def see_more_command(cfg: ClusterConfig, path: str) -> str:
    """What a person types to read the rest of ``path`` on the cluster (``ssh ... tail -n 100 PATH``)."""
    remote = shlex.join(["tail", "-n", str(MORE_LINES), path])
    if cfg.is_local or not cfg.host:
        return remote
    words = ["ssh"]
    if cfg.port != 22:
        words += ["-p", str(cfg.port)]
    if cfg.identity_file:
        words += ["-i", str(cfg.identity_file)]
    if cfg.proxy_jump:
        words += ["-J", cfg.proxy_jump]
    words.append(f"{cfg.user}@{cfg.host}" if cfg.user else cfg.host)
    return f"{shlex.join(words)} {shlex.quote(remote)}"


@dataclass
class HoldState:
    """One cluster's failed starts in a row and its hold, as the manager keeps them between cycles."""

    failures: int = 0
    hold: dict[str, Any] | None = None
    digest: str | None = None      # of the cluster's settings the count belongs to
    since: float = 0.0             # pilots submitted before this (the settings changed since) are ignored


class Holds:
    """Failed starts per cluster, the holds they cause, and the gate they put on the policy's decisions.

    Parameters
    ----------
    records : Records
        The manager's records (pilots judged once each; holds kept in ``pilot_clusters``).
    config : pilot.config.Config
        The loaded configuration: ``failed_starts_before_hold``, ``failed_start_hold_max``, ``poll_interval``.
    settings : ManagerSettings
        The manager's clock and dry-run switch (a dry run judges nothing and records nothing).
    secrets : list of str
        Scrubbed from the stderr tail (:func:`pilot.redact.scrub`; the LaunchPad's password and the like).
    watcher : ClusterFileWatcher, optional
        Reads changed cluster files at each :meth:`jobs` (None: the settings never change while running).
    """

    def __init__(self, records: Records, config: Config, settings: ManagerSettings,
                 secrets: list[str] | None = None, watcher: ClusterFileWatcher | None = None) -> None:
        self.records = records
        self.config = config
        self.settings = settings
        self.secrets = list(secrets or [])
        self.watcher = watcher
        self._lock = threading.Lock()
        self.state: dict[str, HoldState] = {}
        hb = records.manager.find_one({"_id": "manager"}) or {}
        # judge the pilots that ended since the last manager's last cycle (a restart misses none of them), not
        # the history of before this rule existed
        now = settings.clock()
        self.lookback = min(float(hb.get("last_cycle") or now), now) - 10 * float(config.pilot.poll_interval)
        for name, ccfg in config.clusters.items():
            doc = records.cluster_state(name)
            hold = doc.get("hold") if isinstance(doc.get("hold"), dict) else None
            digest = (hold or {}).get("config_digest") or config_digest(ccfg)
            self.state[name] = HoldState(failures=int(doc.get("failed_starts") or 0), hold=hold, digest=digest)

    @classmethod
    def for_manager(cls, config: Config, records: Records, settings: ManagerSettings, launchpad: Any) -> Holds:
        """The holds of a manager: its LaunchPad's secrets scrubbed, its cluster files watched."""
        from pilot.manager.daemon import ClusterFileWatcher
        from pilot.redact import secrets_of

        return cls(records, config, settings, secrets=secrets_of(launchpad),
                   watcher=ClusterFileWatcher(config.config_dir, config.clusters))

    @property
    def threshold(self) -> int:
        return int(self.config.pilot.failed_starts_before_hold)

    def delay(self, failures: int) -> float:
        """The wait before the next probe pilot after ``failures`` failed starts in a row (>= the threshold)."""
        base = 2.0 * float(self.config.pilot.poll_interval)
        k = max(0, failures - self.threshold)
        return min(float(self.config.pilot.failed_start_hold_max), base * 2.0 ** min(k, 40))

    # ================================================================== review
    def jobs(self, clusters: dict[str, ClusterRuntime]) -> dict[str, Job]:
        """Take in changed cluster files, end the holds of clusters whose settings changed, and return one
        review job per cluster with newly ended pilots (run them with
        :meth:`pilot.manager.concurrency.ClusterPhases.run`: a hold reads the stderr tail on the cluster)."""
        if self.settings.dry_run:
            return {}
        if self.watcher is not None:
            for name, ccfg in self.watcher.changed().items():
                rt = clusters.get(name)
                if rt is not None:
                    self._apply(rt, ccfg)
        out: dict[str, Job] = {}
        for name, rt in clusters.items():
            self._check_settings(rt)
            recs = self.records.unchecked_ended(name, self.lookback)
            if recs:
                out[name] = partial(self.review_cluster, rt, recs)
        return out

    def review(self, clusters: dict[str, ClusterRuntime], report: CycleReport) -> None:
        """:meth:`jobs`, run one after another in this thread (for callers without cluster threads)."""
        for job in self.jobs(clusters).values():
            job(report)

    def _apply(self, rt: ClusterRuntime, ccfg: ClusterConfig) -> None:
        """New settings for a running cluster: its adapter and (next use) its connection follow them."""
        from pilot.transport.clusters import adapter_for

        rt.config = ccfg
        rt.adapter = adapter_for(ccfg)
        rt.close()
        self.config.clusters[rt.name] = ccfg

    def _check_settings(self, rt: ClusterRuntime) -> None:
        """A cluster whose settings changed starts afresh: no hold, no failed starts; older pilots ignored."""
        digest = config_digest(rt.config)
        with self._lock:
            st = self.state.setdefault(rt.name, HoldState(digest=digest))
            if st.digest == digest:
                return
            was, st.digest, st.since = st.hold is not None, digest, self.settings.clock()
            failures, st.failures, st.hold = st.failures, 0, None
        if was or failures:
            log.info("%s: its settings changed: %s; failed starts counted afresh", rt.name,
                     "hold ended" if was else f"{failures} failed start(s) forgotten")
        self.records.set_failed_starts(rt.name, 0, None)

    def review_cluster(self, rt: ClusterRuntime, recs: list[dict[str, Any]], report: CycleReport) -> int:
        """Judge the cluster's newly ended pilots (oldest first) and update its count and hold; returns the
        failed starts in a row. Runs in the cluster's thread."""
        st = self.state.setdefault(rt.name, HoldState(digest=config_digest(rt.config)))
        last: tuple[dict[str, Any], str] | None = None
        changed = False
        for rec in recs:
            if float(rec.get("submit_time") or 0.0) < st.since:
                outcome, why = IGNORED, "submitted before the cluster's settings changed"
            else:
                fworker = rec.get("fworker")
                outcome, why = classify(rec, bool(fworker) and self.records.ran_firework(str(fworker)))
            self.records.mark_start_checked(rec["_id"], outcome)
            if outcome == STARTED:
                changed = changed or st.failures > 0 or st.hold is not None
                if st.hold is not None:
                    log.info("%s: pilot %s started (%s): hold ended", rt.name, rec.get("job_name"), why)
                with self._lock:
                    st.failures, st.hold, last = 0, None, None
            elif outcome == FAILED:
                changed = True
                with self._lock:
                    st.failures += 1
                last = (rec, why)
                log.warning("%s: pilot %s (job %s) is failed start %d in a row: %s", rt.name, rec.get("job_name"),
                            rec.get("job_id"), st.failures, why)
        if changed:
            hold = self._hold(rt, st, *last) if last is not None and st.failures >= self.threshold else st.hold
            with self._lock:
                st.hold = hold
            self.records.set_failed_starts(rt.name, st.failures, hold)
        return st.failures

    def _hold(self, rt: ClusterRuntime, st: HoldState, rec: dict[str, Any], why: str) -> dict[str, Any]:
        """The hold after the failed start ``rec``: until when, the pilot, its stderr tail and how to see more."""
        now = self.settings.clock()
        delay = self.delay(st.failures)
        job_id = str(rec.get("job_id") or "")
        path = stderr_path(str(rt.config.work_dir), job_id) if job_id else None
        hold = {
            "since": (st.hold or {}).get("since") or now, "until": now + delay, "delay": delay,
            "failures": st.failures, "config_digest": st.digest,
            "pilot": {"job_name": rec.get("job_name"), "job_id": rec.get("job_id"), "category": rec.get("category"),
                      "state": rec.get("state"), "exit_code": rec.get("exit_code"), "reason": rec.get("reason"),
                      "end_time": rec.get("end_time"), "why": why},
            "stderr_path": path, "stderr_tail": self._stderr_tail(rt, path) if path else None,
            "see_more": see_more_command(rt.config, path) if path else None,
        }
        log.warning("%s: %d pilots in a row ended before running any Firework (last: %s); holding the cluster: "
                    "next probe pilot in %.0f s. Its stderr: %s. Fix the cluster file: the hold ends when it changes",
                    rt.name, st.failures, why, delay, hold["see_more"] or "none")
        return hold

    def _stderr_tail(self, rt: ClusterRuntime, path: str) -> str:
        """The last :data:`TAIL_LINES` lines of ``path`` on the cluster, secrets scrubbed (or why not)."""
        from pilot.redact import scrub
        from pilot.transport import TransportError

        try:
            res = rt.run(["tail", "-n", str(TAIL_LINES), path])
        except TransportError as e:
            return f"(could not read {path}: {e})"
        if res.returncode != 0:
            return f"(could not read {path}: {(res.stderr or '').strip() or f'tail exited {res.returncode}'})"
        text = scrub(res.stdout, self.secrets)
        return text[-TAIL_CHARS:]

    # ================================================================== gate
    def room(self, cluster: str, now: float) -> int | None:
        """How many pilots the cluster may get now (None: no limit): 0 while held, 1 probe when the hold's wait
        is over and no earlier pilot is still in flight, and while failed starts accumulate, the failed starts
        left before the hold less the pilots in flight without a heartbeat."""
        with self._lock:
            st = self.state.get(cluster)
            failures = st.failures if st is not None else 0
            hold = dict(st.hold) if st is not None and st.hold is not None else None
        if hold is None and failures == 0:
            return None
        if hold is not None and now < float(hold.get("until") or 0.0):
            return 0
        unproven = self.records.unproven_live(cluster)
        if hold is not None:
            return 1 if unproven == 0 else 0
        return max(0, self.threshold - failures - unproven)

    def allows(self, cluster: str, now: float) -> bool:
        """False while the cluster may get no pilot (held, or no failed starts left in flight)."""
        room = self.room(cluster, now)
        return room is None or room > 0

    def held(self, cluster: str) -> bool:
        with self._lock:
            st = self.state.get(cluster)
            return st is not None and st.hold is not None

    def gate(self, decisions: list[Decision], now: float) -> list[Decision]:
        """The decisions with each cluster's submissions cut to its :meth:`room` (its categories in order)."""
        left: dict[str, int | None] = {}
        out: list[Decision] = []
        for d in decisions:
            if d.submit <= 0:
                out.append(d)
                continue
            if d.cluster not in left:
                left[d.cluster] = self.room(d.cluster, now)
            room = left[d.cluster]
            if room is None:
                out.append(d)
                continue
            n = min(d.submit, room)
            left[d.cluster] = room - n
            if self.held(d.cluster):
                why = "held: its pilots cannot start" + ("; one probe pilot" if n else "")
            else:
                why = f"{d.reason}; failed starts: at most {room} more pilot(s) in flight"
            out.append(replace(d, submit=n, reason=why))
        return out


__all__ = ["FAILED", "IGNORED", "STARTED", "HoldState", "Holds", "classify", "config_digest", "see_more_command",
           "stderr_path"]
