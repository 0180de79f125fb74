"""Grid Engine adapter (Son of Grid Engine, Open Grid Scheduler, Univa/Altair GE).

Commands built here
-------------------
* submit: ``qsub -terse SCRIPT`` prints only the job id (``#$`` directives are read from the
  script file).  The default message ``Your job 123 ("name") has been submitted`` is read too.
* status: ``qstat -xml -u USER`` (``-u *`` for all users): running jobs under
  ``<queue_info>``, pending ones under a nested ``<job_info>``; job ids are filtered by the
  caller (``qstat -j`` switches to another, detailed format).
* history: ``qacct -j ID`` -- one job per call (:attr:`SgeAdapter.history_max_ids` = 1).
* cancel: ``qdel IDS``.

A Grid Engine state is a combination of letters (``qw``, ``hqw``, ``Eqw``, ``dr``, ``Rr``);
:func:`sge_state` decodes it with the precedence deletion > error > hold > suspension >
running > waiting.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .base import (
    CancelResult,
    JobState,
    JobStatus,
    QueueAdapter,
    SchedulerQueryError,
    SubmitOutcome,
    SubmitResult,
    checked_ids,
    local_to_utc,
    map_state,
    output_tail,
    split_lines,
)

__all__ = ["SGE_STATE_LETTERS", "SgeAdapter", "sge_state"]

# State letters.  Sources: qstat(1) of Son of Grid Engine 8.1 ("state of the job - one of
# d(eletion), E(rror), h(old), r(unning), R(estarted), s(uspended), S(uspended), t(ransfering),
# T(hreshold) or w(aiting)", plus q(ueued)) and Univa Grid Engine qstat(1) (adds
# e(N)hanced suspended and (P)reempted):
#   https://arc.liv.ac.uk/SGE/htmlman/htmlman1/qstat.html
SGE_STATE_LETTERS: dict[str, JobState] = {
    "d": JobState.COMPLETING,  # being deleted (qdel)
    "E": JobState.HELD,  # error state: will not run until cleared with qmod -cj
    "h": JobState.HELD,  # hold
    "r": JobState.RUNNING,
    "R": JobState.RUNNING,  # restarted
    "t": JobState.RUNNING,  # being transferred to the execution host (starting)
    "s": JobState.SUSPENDED,  # suspended
    "S": JobState.SUSPENDED,  # suspended because its queue is suspended
    "T": JobState.SUSPENDED,  # suspended by a queue threshold
    "N": JobState.SUSPENDED,  # Univa: enhanced suspended
    "P": JobState.SUSPENDED,  # Univa: preempted
    "q": JobState.PENDING,  # queued
    "w": JobState.PENDING,  # waiting
}
_PRECEDENCE = "dEhsSTNPrRtqw"


def sge_state(code: str) -> JobState:
    """Decode a Grid Engine state string (``hqw`` -> HELD, ``Rr`` -> RUNNING, ``dr`` -> COMPLETING).

    An unknown letter makes the whole code UNKNOWN (with the usual warning).
    """
    code = code.strip()
    if not code or any(ch not in SGE_STATE_LETTERS for ch in code):
        return map_state({}, code, "sge")
    for letter in _PRECEDENCE:
        if letter in code:
            state = SGE_STATE_LETTERS[letter]
            if state is JobState.HELD and ("r" in code or "t" in code):
                return JobState.RUNNING  # a hold on a running job does not stop it
            return state
    return map_state({}, code, "sge")


_SUBMIT_TERSE = re.compile(r"^\s*(\d+)(?:\.\d+-\d+:\d+)?\s*$")
_SUBMIT_MSG = re.compile(r"Your job(?:-array)? (\d+)")
_TRANSIENT = re.compile(
    r"unable to contact qmaster|commlib error|can't connect|cannot connect|Connection refused|"
    r"got no connection|timed out|timeout|qmaster is down|not responding", re.IGNORECASE
)
_SUBMIT_RETRYABLE = re.compile(r"jobs are allowed|max_u_jobs|max_jobs|Only \d+ jobs", re.IGNORECASE)
_ID_ARG_RE = re.compile(r"^\d+(?:\.\d+(?:-\d+(?::\d+)?)?)?$")


class SgeAdapter(QueueAdapter):
    """Adapter for Grid Engine (SGE 6.2/8.1, OGS, Univa)."""

    name = "sge"
    job_id_env = "JOB_ID"
    submit_stdin_from_script = False
    filters_server_side = frozenset({"user"})
    history_max_ids = 1

    # -- submit -------------------------------------------------------------------------
    def submit_command(self, script_path: str) -> list[str]:
        """``qsub -terse SCRIPT``."""
        if not script_path:
            raise ValueError("script path is empty")
        return ["qsub", "-terse", script_path]

    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        """Parse ``qsub -terse`` (``123``) or the default ``Your job 123 (...) has been submitted``."""
        if returncode == 0:
            for line in split_lines(stdout):
                match = _SUBMIT_TERSE.match(line) or _SUBMIT_MSG.search(line)
                if match:
                    return SubmitResult(SubmitOutcome.SUBMITTED, job_id=match.group(1))
        text = f"{stderr}\n{stdout}"
        tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
        if returncode == 0 or returncode < 0:
            return SubmitResult(SubmitOutcome.UNKNOWN, reason=(
                f"qsub gave no job id (exit status {returncode}): {tail!r}. The job may exist; "
                "look for the pilot by its job name before submitting again."))
        if _TRANSIENT.search(text):
            return SubmitResult(SubmitOutcome.FAILED, retryable=True,
                                reason=f"qsub failed: {tail!r}; the qmaster is unreachable")
        if _SUBMIT_RETRYABLE.search(text):
            return SubmitResult(SubmitOutcome.FAILED, retryable=True,
                                reason=f"qsub failed: {tail!r}; a job limit is reached")
        return SubmitResult(SubmitOutcome.FAILED, reason=(
            f"qsub rejected the job: {tail!r}; fix the pilot's qsub options (queue, parallel "
            "environment, h_rt) or job name in the cluster configuration"))

    # -- status -------------------------------------------------------------------------
    def status_command(
        self,
        job_ids: Sequence[str] | None = None,
        user: str | None = None,
        name_prefix: str | None = None,
    ) -> list[str]:
        """``qstat -xml -u USER`` (``-u *`` without a user); ids and prefix are filtered by
        the caller."""
        _checked_ids(job_ids or [])
        return ["qstat", "-xml", "-u", user or "*"]

    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse ``qstat -xml``: every ``job_list`` element, running or pending."""
        problems = split_lines(stderr)
        if returncode != 0 or problems:
            raise SchedulerQueryError(
                "qstat failed", command="qstat", returncode=returncode, stdout=stdout,
                stderr=stderr, retryable=bool(_TRANSIENT.search(stderr)) or returncode < 0,
            )
        if not stdout.strip():
            return {}
        try:
            root = ET.fromstring(stdout.strip())
        except ET.ParseError as exc:
            raise SchedulerQueryError(
                f"qstat -xml printed XML that cannot be parsed ({exc})", command="qstat",
                returncode=returncode, stdout=stdout, stderr=stderr, retryable=False,
            ) from exc
        result: dict[str, JobStatus] = {}
        for job in root.iter("job_list"):
            number = (job.findtext("JB_job_number") or "").strip()
            if not number:
                continue
            tasks = (job.findtext("tasks") or "").strip()
            job_id = f"{number}.{tasks}" if tasks else number
            native = (job.findtext("state") or "").strip()
            state = sge_state(native)
            submit = job.findtext("JB_submission_time")
            start = job.findtext("JAT_start_time")
            result[job_id] = JobStatus(
                job_id=job_id,
                state=state,
                native_state=native,
                name=job.findtext("JB_name"),
                reason="error state (clear it with qmod -cj)" if "E" in native else None,
                submit_time=self._time(submit),
                start_time=self._time(start) if state.order >= 2 else None,
                user=job.findtext("JB_owner"),
            )
        return result

    # -- history ------------------------------------------------------------------------
    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """``qacct -j ID`` for the **first** id only (see :attr:`history_max_ids`).

        ``qacct -j`` takes one job; a caller that passes more ids gets the history of the
        first and resolves the others from their exit-code files (or splits the list).
        """
        ids = _checked_ids(job_ids)
        if not ids:
            return None
        return ["qacct", "-j", ids[0]]

    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse ``qacct -j`` records (``key value`` lines between ``=====`` rulers).

        ``error: job id N not found`` (exit 1: not yet or no longer in the accounting file)
        means no entry.  ``exit_status`` 0 and ``failed`` 0: COMPLETED, else FAILED.
        """
        if re.search(r"job id \S+ not found|job name \S+ not found", stderr, re.IGNORECASE):
            return {}
        if returncode != 0 or split_lines(stderr):
            raise SchedulerQueryError(
                "qacct failed", command="qacct", returncode=returncode, stdout=stdout,
                stderr=stderr, retryable=bool(_TRANSIENT.search(stderr)),
            )
        result: dict[str, JobStatus] = {}
        for record in re.split(r"^=+\s*$", stdout, flags=re.MULTILINE):
            fields: dict[str, str] = {}
            for line in record.splitlines():
                match = re.match(r"^(\w+)\s+(.*?)\s*$", line)
                if match:
                    fields[match.group(1)] = match.group(2)
            number = fields.get("jobnumber")
            if not number:
                continue
            task = fields.get("taskid", "undefined")
            job_id = number if task in ("undefined", "") else f"{number}.{task}"
            exit_status = _int(fields.get("exit_status"))
            failed = fields.get("failed", "0").split(":", 1)[0].strip()
            ok = exit_status == 0 and failed == "0"
            result[job_id] = JobStatus(
                job_id=job_id,
                state=JobState.COMPLETED if ok else JobState.FAILED,
                native_state=f"failed={fields.get('failed', '')}".strip(),
                name=fields.get("jobname"),
                reason=None if failed == "0" else fields.get("failed"),
                exit_code=exit_status,
                submit_time=self._ctime(fields.get("qsub_time")),
                start_time=self._ctime(fields.get("start_time")),
                end_time=self._ctime(fields.get("end_time")),
                user=fields.get("owner"),
            )
        return result

    # -- cancel -------------------------------------------------------------------------
    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``qdel IDS``."""
        ids = _checked_ids(job_ids)
        if not ids:
            raise ValueError("no job ids to cancel")
        return ["qdel", *ids]

    def parse_cancel(
        self, returncode: int, stdout: str, stderr: str, job_ids: Sequence[str] = ()
    ) -> CancelResult:
        """Parse qdel: ``<user> has registered the job N for deletion`` (stdout) or
        ``denied: job "N" does not exist`` (already gone)."""
        cancelled: list[str] = []
        gone: list[str] = []
        failed: dict[str, str] = {}
        retryable = False
        for line in split_lines(f"{stdout}\n{stderr}"):
            # running: "<user> has registered the job N for deletion"; pending: "<user> has deleted job N"
            # (qmaster MSG_JOB_REGDELJOB_SU / MSG_JOB_DELETEJOB_SU); again: "job N is already in deletion"
            match = re.search(r"registered the job (\d+)|has deleted job (\d+)|job (\d+) is already in deletion",
                              line)
            if match:
                cancelled.append(next(g for g in match.groups() if g))
                continue
            match = re.search(r'job "?(\d+)"? does not exist', line)
            if match:
                gone.append(match.group(1))
                continue
            match = re.search(r'job "?(\d+)"?', line)
            failed[match.group(1) if match else "*"] = line.strip()
            if _TRANSIENT.search(line):
                retryable = True
        if returncode != 0 and not (cancelled or gone or failed):
            failed["*"] = f"qdel exited with status {returncode} and printed nothing"
        ok = not failed
        reason = None
        if failed:
            hint = ("the qmaster is unreachable, try again later" if retryable
                    else "check the job ids and that they belong to this user")
            reason = f"qdel failed: {'; '.join(failed.values())} ({hint})"
        return CancelResult(ok=ok, cancelled=cancelled, already_gone=gone, reason=reason,
                            retryable=retryable and not ok)

    # -- internals ----------------------------------------------------------------------
    def _time(self, text: str | None) -> dt.datetime | None:
        if not text or not text.strip():
            return None
        try:
            return local_to_utc(dt.datetime.fromisoformat(text.strip()), self.tz)
        except ValueError:
            return None

    def _ctime(self, text: str | None) -> dt.datetime | None:
        if not text:
            return None
        try:
            return local_to_utc(dt.datetime.strptime(" ".join(text.split()),
                                                     "%a %b %d %H:%M:%S %Y"), self.tz)
        except ValueError:
            return None


def _int(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"\s*-?\d+\s*", text):
        return None
    return int(text)


def _checked_ids(job_ids: Sequence[str]) -> list[str]:
    return checked_ids(job_ids, _ID_ARG_RE, "Grid Engine")
