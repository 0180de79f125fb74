"""Keeping the pilot records in step with the schedulers, and putting lost work back.

Per cluster, one status query for this manager's own pilots, matched to its records by job id, and by job
name for submissions whose outcome was unknown. Jobs that left the queue are resolved from the scheduler's
history (which may also say the job still runs), then from the exit-code file the pilot script writes; a job
found nowhere twice in a row is VANISHED, and is still polled. Then, over all clusters: Fireworks still
RUNNING or RESERVED under a pilot that is dead by the one rule of :mod:`pilot.manager.liveness` (the job is
over **and** the pilot has gone quiet) are put back to READY by a compare-and-set (:mod:`pilot.manager.reruns`:
a pilot that finished first wins), at most ``max_reruns`` times each, then FIZZLED with their history, for a
person.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.manager.liveness import verdict
from pilot.manager.records import ENDED_STATES, VANISHED, Records
from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings, fworker_name

if TYPE_CHECKING:
    from pilot.config import PilotConfig
    from pilot.manager.reruns import LostLaunch, RerunResult
    from queue_adapters.base import JobStatus

log = logging.getLogger("pilot.manager")


class Tracker:
    """Pilot records from queue status, and reruns of the work their ended pilots left RUNNING.

    Parameters
    ----------
    records : Records
        The manager's records.
    launchpad : fireworks.LaunchPad
        The LaunchPad the pilots serve (lost work is rerun or fizzled there).
    pilot_config : pilot.config.PilotConfig
        ``pilot.yaml`` (``poll_interval``, ``max_reruns``).
    settings : ManagerSettings
        The manager's clock (epoch seconds) and dry-run switch (look, but write no record and rerun nothing),
        shared with the manager and read at each use.
    """

    def __init__(self, records: Records, launchpad: Any, pilot_config: PilotConfig,
                 settings: ManagerSettings) -> None:
        self.records = records
        self.lp = launchpad
        self.pilot_config = pilot_config
        self.settings = settings
        #: fw_id -> when (manager clock) a rerun first found its workflow locked, while every try since did too
        self.locked_since: dict[int, float] = {}

    @property
    def dry_run(self) -> bool:
        """The manager's dry-run switch, as it is now."""
        return self.settings.dry_run

    def clock(self) -> float:
        """The manager's clock, as it is now (epoch seconds)."""
        return self.settings.clock()

    # ================================================================== queue status -> records
    def _check_login(self, rt: ClusterRuntime, report: CycleReport) -> bool | None:
        """Whether the cluster's one-time-password login (its ControlMaster) is still open; when not, the cluster
        fails with "needs login"."""
        from pilot.transport import LoginRequired

        try:
            rt.connect().check_login()
        except LoginRequired as e:
            rt.fail(e, report)
            return False
        # an open login is no contact with the cluster: only a login that lapsed and is back counts as recovery
        return True if rt.needs_login else None

    def refresh_cluster(self, rt: ClusterRuntime, report: CycleReport) -> bool | None:
        """One status query for the cluster; update our pilots' records.

        Returns True when the cluster answered, False when it failed, and None when it was not asked (no live
        pilot of ours there): not asking is no evidence that a failing cluster has recovered.
        """
        from pilot.transport import TransportError
        from queue_adapters.base import SchedulerQueryError

        live = self.records.live(rt.name)
        if not live:
            # nothing of ours to look at: the cluster's health shows when we submit to it -- but a lapsed
            # one-time-password login shows at once (a local question to the ssh master), since a person must act
            return self._check_login(rt, report) if rt.config.control_path else None
        ad = rt.adapter
        # a federated SLURM id (``123;clusterB``) is only listed by a query naming its cluster (-M)
        federated = sorted({str(r["job_id"]) for r in live if ";" in str(r.get("job_id") or "")})
        try:
            res = rt.run(ad.status_command(job_ids=federated or None, user=rt.config.user))
            statuses = ad.parse_status(res.returncode, res.stdout, res.stderr)
        except (TransportError, SchedulerQueryError) as e:
            rt.fail(e, report)
            return False
        by_name = {s.name: s for s in statuses.values() if s.name}
        now = self.clock()
        missing: list[dict[str, Any]] = []
        for rec in live:
            st = statuses.get(rec["job_id"]) if rec.get("job_id") else by_name.get(rec["job_name"])
            if st is not None:
                self._apply_status(rec, st, now)
            elif not rec.get("job_id"):
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
                res = rt.run(["cat", path])
            except TransportError as e:
                log.info("%s: cannot read %s: %s", rt.name, path, e)
                return
            st = parse_exit_file(res.stdout, rec["job_id"]) if res.returncode == 0 else None
            self.records.update(rec["_id"], exit_file_read=True,
                                **({"exit_code": st.exit_code} if st is not None else {}))

    def _apply_status(self, rec: dict[str, Any], st: JobStatus, now: float) -> None:
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
        """A submission whose outcome is unknown and that no listing shows (yet).

        After a grace it is VANISHED, and still polled by name: if the job does exist, its pilot writes its
        FWorker and job id into the record with its first heartbeat, and from then on it is tracked as any
        other (issue 16, item 5)."""
        grace = max(3 * float(self.pilot_config.poll_interval), 120.0)
        if rec["state"] == VANISHED:
            return
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
        hist: dict[str, JobStatus] = {}
        cmd = ad.history_command(ids)
        if cmd:
            try:
                res = rt.run(cmd)
                hist = ad.parse_history(res.returncode, res.stdout, res.stderr)
            except (TransportError, SchedulerQueryError) as e:
                log.info("%s: history query failed (%s); using exit-code files", rt.name, e)
        for rec in missing:
            st = hist.get(rec["job_id"])
            if st is not None and not st.state.final and st.state.name != "UNKNOWN":
                # the accounting still knows it pending or running (a listing that missed it): it lives
                self._apply_status(rec, st, now)
                continue
            if st is None or not st.state.final:
                path = f"{rt.config.work_dir}/{exit_file_name(rec['job_id'])}"
                try:
                    res = rt.run(["cat", path])
                    st = parse_exit_file(res.stdout, rec["job_id"]) if res.returncode == 0 else None
                except TransportError as e:
                    log.info("%s: cannot read %s: %s", rt.name, path, e)
                    st = None
            if st is not None and st.state.final:
                self._apply_status(rec, st, now)
            else:
                unseen = int(rec.get("unseen_cycles") or 0) + 1
                if unseen >= 2 and rec["state"] == VANISHED:
                    if not self.dry_run:
                        self.records.update(rec["_id"], unseen_cycles=unseen)
                elif unseen >= 2:
                    msg = f"job {rec['job_id']} left the queue with no record in the scheduler or {rt.config.work_dir}"
                    log.warning("%s: pilot %s: %s", rt.name, rec["job_name"], msg)
                    if not self.dry_run:
                        self.records.update(rec["_id"], state=VANISHED, last_error=msg, end_time=now)
                elif not self.dry_run:
                    self.records.update(rec["_id"], unseen_cycles=unseen)

    # ================================================================== lost work
    #: a test hook, called with each :class:`~pilot.manager.reruns.LostLaunch` after the manager's read and
    #: before its compare-and-set (tests complete the Firework there); None in production
    before_claim: Callable[[LostLaunch], None] | None = None

    def reconcile_lost_work(self, report: CycleReport) -> None:
        """Rerun the Fireworks still RUNNING or RESERVED under pilots that ended (conditionally, bounded).

        Each record is guarded on its own: one that fails (a database error, a workflow lock held too long)
        is logged, stays unreconciled and is tried again next cycle; the others, and the rest of the cycle,
        go on (issue 16, item 6).
        """
        from pilot.manager.reruns import publish_bound

        if not self.dry_run:
            publish_bound(self.lp.db, int(self.pilot_config.max_reruns))
        now = self.clock()
        for rec in self.records.ended_unreconciled():
            alive = verdict(rec, now, VANISHED)
            if not alive.dead:
                log.debug("pilot %s: not dead yet: %s", rec.get("job_name"), alive.why)
                continue
            try:
                done = self._reconcile_record(rec, report, alive.why)
            except Exception as e:  # noqa: BLE001 - one record must never stop the cycle; retried next cycle
                log.exception("pilot %s: reconciling its lost work failed (%s: %s); retried next cycle",
                              rec.get("job_name"), type(e).__name__, e)
                continue
            if done and not self.dry_run:
                self.records.update(rec["_id"], reconciled=True)
        self._release_orphans(report)

    def _release_orphans(self, report: CycleReport) -> None:
        """Fireworks left RESERVED with no launch at all by a pilot killed inside FireWorks' checkout, back to
        READY once :func:`~pilot.manager.reruns.orphan_reservation_seconds` have passed (nothing names their
        pilot). Guarded like a record: a failure is logged and retried next cycle."""
        from pilot.manager.reruns import (
            RerunResult,
            orphan_reservation_seconds,
            orphan_reservations,
            release_orphan_reservation,
        )

        try:
            orphans = orphan_reservations(self.lp, self.clock())
        except Exception as e:  # noqa: BLE001 - the cycle goes on; retried next cycle
            log.exception("looking for orphan reservations failed (%s: %s)", type(e).__name__, e)
            return
        for fw in orphans:
            if self.dry_run:
                log.info("dry run: would release fw %d, RESERVED with no launch", fw["fw_id"])
                continue
            try:
                result = self._under_lock(int(fw["fw_id"]), functools.partial(release_orphan_reservation, self.lp, fw))
            except Exception as e:  # noqa: BLE001 - the others still get their turn
                log.warning("fw %d: releasing its orphan reservation failed (%s: %s); retried next cycle",
                            fw["fw_id"], type(e).__name__, e)
                continue
            if result is RerunResult.RERUN:
                report.reruns.append(int(fw["fw_id"]))
                log.warning("fw %d: RESERVED for over %.0f s with no launch (its pilot died inside FireWorks' "
                            "checkout); back to READY (not counted: it never ran)", fw["fw_id"],
                            orphan_reservation_seconds())

    def lost_launches(self, rec: dict[str, Any], dead: str | None = None) -> list[LostLaunch]:
        """The launches a dead pilot still holds RUNNING or RESERVED whose Firework is still RUNNING or
        RESERVED: held by the Firework, or never written into it (``half``: a checkout left half done).
        ``dead`` says why the pilot is taken for dead (:func:`pilot.manager.liveness.verdict`)."""
        from pilot.manager.reruns import LostLaunch

        fworker = rec.get("fworker")
        if not fworker:
            return []
        out = []
        for launch in self.lp.launches.find({"fworker.name": fworker, "state": {"$in": ["RUNNING", "RESERVED"]}},
                                            {"launch_id": 1, "fw_id": 1, "state": 1}):
            fw = self.lp.fireworks.find_one({"fw_id": launch["fw_id"]}, {"state": 1, "launches": 1})
            if not fw or fw.get("state") not in ("RUNNING", "RESERVED"):
                continue
            held = launch["launch_id"] in (fw.get("launches") or [])
            if held and fw.get("state") != launch["state"]:
                continue
            why = (f"pilot {rec['job_name']} (job {rec.get('job_id')}) on {rec['cluster']} died "
                   f"({dead or 'ended ' + str(rec['state'])}) while it "
                   f"{'ran' if launch['state'] == 'RUNNING' else 'had reserved'} it")
            out.append(LostLaunch(int(launch["fw_id"]), int(launch["launch_id"]), str(launch["state"]),
                                  str(rec["job_name"]), why, half=not held))
        return out

    def _reconcile_record(self, rec: dict[str, Any], report: CycleReport, dead: str | None = None) -> bool:
        """Rerun one dead pilot's lost launches; True when all were handled (the record is then done)."""
        from fireworks.core.launchpad import LockedWorkflowError

        from pilot.manager.reruns import RerunResult

        max_reruns = int(self.pilot_config.max_reruns)
        ok = True
        for lost in self.lost_launches(rec, dead):
            if self.dry_run:
                log.info("dry run: would rerun fw %d: %s", lost.fw_id, lost.reason)
                continue
            try:
                result = self._rerun(lost, max_reruns)
            except LockedWorkflowError:
                ok = False
                continue
            except Exception as e:  # noqa: BLE001 - the pilot's other launches still get their turn
                log.exception("fw %d: rerun failed (%s: %s); retried next cycle", lost.fw_id, type(e).__name__, e)
                ok = False
                continue
            if result is RerunResult.RERUN:
                report.reruns.append(lost.fw_id)
                counted = lost.state == "RUNNING" and not lost.half
                log.warning("fw %d: %s; back to READY (%s)", lost.fw_id, lost.reason,
                            f"rerun {self.records.rerun_count(lost.fw_id)}/{max_reruns}" if counted
                            else "it never ran under that launch: not counted")
            elif result is RerunResult.FIZZLED:
                report.fizzled.append(lost.fw_id)
                log.error("fw %d: FIZZLED: %s; already rerun max_reruns=%d times", lost.fw_id, lost.reason,
                          max_reruns)
            else:
                log.info("fw %d: not rerun: it moved on since it was read (its pilot finished it first)",
                         lost.fw_id)
        return ok

    def _rerun(self, lost: LostLaunch, max_reruns: int) -> RerunResult:
        """One conditional rerun, or release of a half-done checkout (:meth:`_under_lock`)."""
        from pilot.manager.reruns import conditional_rerun, release_half_checkout

        if lost.half:
            return self._under_lock(lost.fw_id, functools.partial(release_half_checkout, self.lp, lost))
        return self._under_lock(lost.fw_id, functools.partial(conditional_rerun, self.lp, lost, max_reruns,
                                                              now=self.clock(), before_claim=self.before_claim))

    def _under_lock(self, fw_id: int, attempt: Callable[..., RerunResult]) -> RerunResult:
        """``attempt(kill=...)`` of a change under the Firework's workflow lock. A lock that every try has found
        held for longer than FireWorks calls a lock expired is taken by force (``kill``): its holder is gone (a
        pilot killed while FireWorks held the lock for its checkout leaves it set for ever, and with it the
        Firework RUNNING and the whole workflow stuck). A LockedWorkflowError before that is logged and
        propagates."""
        from fireworks.core.launchpad import LockedWorkflowError

        from pilot.manager.reruns import stale_lock_seconds

        now = self.clock()
        since = self.locked_since.get(fw_id)
        kill = since is not None and now - since >= stale_lock_seconds()
        if kill:
            log.warning("fw %d: its workflow has been locked for %.0f s, through every try: taking the stale lock "
                        "by force", fw_id, now - float(since or now))
        try:
            result = attempt(kill=kill)
        except LockedWorkflowError:
            first = self.locked_since.setdefault(fw_id, now)
            log.warning("fw %d: its workflow is locked; retried next cycle (taken by force once it has stayed "
                        "locked for %.0f s: %.0f s so far)", fw_id, stale_lock_seconds(), now - first)
            raise
        self.locked_since.pop(fw_id, None)
        return result


__all__ = ["Tracker"]
