"""LSF adapter: ``bsub``, ``bjobs -o ... -json``, ``bkill`` (pure: argv builders and parsers).

Commands built here
-------------------
* submit: ``bsub`` with the job script on **stdin** (:attr:`LsfAdapter.submit_stdin_from_script`
  is True).  LSF reads ``#BSUB`` directives only from a script given on standard input
  (``bsub < script``); ``bsub script`` would run the file as a command and ignore them.  The
  caller reads the script and feeds it to the command's stdin.  Output: ``Job <123> is
  submitted to queue <normal>.``
* status: ``bjobs -o "jobid stat job_name user queue submit_time start_time finish_time
  exit_code exit_reason pend_reason delimiter='|'" -json -a [-u USER] [IDS]``.
  ``-json`` (LSF 10.1.0.2+) gives ``{"COMMAND": "bjobs", "JOBS": n, "RECORDS": [...]}``
  with upper-case keys and string values; an unknown id gives a record with an ``ERROR``
  key.  ``-a`` keeps jobs that finished within ``CLEAN_PERIOD`` (default one hour).  The
  name prefix is not passed as ``-J 'prefix*'``: the caller filters names (one behaviour
  for every scheduler, and nothing lost if a site's bjobs treats ``*`` literally).
* history: the same ``bjobs -a`` for the given ids (older jobs are purged from mbatchd
  memory: "Job <N> is not found"; the pilot's exit-code file resolves those).
* accounting: ``bjobs -o "jobid stat run_time nalloc_slot slots proj_name ..." -json -a IDS``: ``run_time`` x
  allocated slots and the project (see :mod:`queue_adapters.accounting`).
* cancel: ``bkill IDS``.

Time stamps: LSF prints ``May 28 12:45`` (no year, local time; ``-hms`` adds seconds).  The
year is taken from the adapter's clock (``now``), going back one year when the date would
otherwise lie more than a day in the future (a December job seen in January).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .accounting import Usage, duration_seconds
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
    unique,
)

__all__ = ["BJOBS_FIELDS", "LSF_STATES", "LsfAdapter"]

# Job states.  Source: bjobs(1) "Description" / "Job states", IBM Spectrum LSF 10.1.0:
#   https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=bjobs-description
# EXIT is refined with EXIT_REASON (run limit -> TIMEOUT, killed by owner/admin -> CANCELLED).
LSF_STATES: dict[str, JobState] = {
    "PEND": JobState.PENDING,  # waiting in a queue to be scheduled and dispatched
    "PROV": JobState.PENDING,  # dispatched to a host that is being provisioned
    "PSUSP": JobState.HELD,  # suspended by its owner or an admin while pending (bsub -H, bstop)
    "RUN": JobState.RUNNING,
    "USUSP": JobState.SUSPENDED,  # suspended by its owner or an admin while running
    "SSUSP": JobState.SUSPENDED,  # suspended by LSF (load, run window)
    "DONE": JobState.COMPLETED,  # finished with exit status 0
    "EXIT": JobState.FAILED,  # non-zero exit status, killed, or failed to start
    "UNKWN": JobState.RUNNING,  # mbatchd lost contact with sbatchd on the job's host
    "WAIT": JobState.PENDING,  # chunk-job member waiting to run
    "ZOMBI": JobState.COMPLETING,  # killed while its host was unreachable; becomes EXIT
}

#: The ``bjobs -o`` field list of :meth:`LsfAdapter.status_command`.
BJOBS_FIELDS = ("jobid stat job_name user queue submit_time start_time finish_time exit_code "
                "exit_reason pend_reason delimiter='|'")
#: The ``bjobs -o`` field list of :meth:`LsfAdapter.accounting_command`.
ACCOUNTING_FIELDS = "jobid stat run_time nalloc_slot slots proj_name start_time finish_time delimiter='|'"

# EXIT_REASON texts (bjobs -o exit_reason / "TERM_*" exit reasons of bacct(1), LSF 10.1):
#   https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=bacct-termination-reasons
_TIMEOUT_REASONS = re.compile(r"TERM_RUNLIMIT|TERM_DEADLINE|run ?time limit|reached .*deadline", re.IGNORECASE)
_CANCEL_REASONS = re.compile(
    r"TERM_OWNER|TERM_ADMIN|TERM_FORCE_OWNER|TERM_FORCE_ADMIN|TERM_PREEMPT|TERM_REQUEUE|"
    r"killed by owner|killed by (?:LSF )?administrator|job killed by|preempted", re.IGNORECASE
)
_EMPTY = frozenset({"", "-", "N/A", "n/a"})

_SUBMIT_RE = re.compile(r"Job <(\d+(?:\[\d+\])?)> is submitted(?: to (?:default )?queue <([^>]*)>)?")
_JOB_LINE = re.compile(r"Job <(\d+(?:\[\d+\])?)>")
_TRANSIENT = re.compile(
    r"LSF is down|Batch system not responding|Cannot connect to LSF|"
    r"Failed in an LSF library call|Slave LIM configuration is not ready|"
    r"mbatchd.*(?:not responding|down)|Connection refused|try again later|LIM is down|"
    r"Communication time out|Timeout on connect", re.IGNORECASE
)
_SUBMIT_UNKNOWN = re.compile(r"Timeout|timed out|time out", re.IGNORECASE)
_SUBMIT_RETRYABLE = re.compile(
    r"threshold reached|Pending job threshold|job limit|Too many jobs|MAX_PEND_JOBS|"
    r"Maximum number of jobs|reached the limit", re.IGNORECASE
)
_NOT_FOUND = re.compile(r"is not found|No matching job found|No (?:unfinished )?job found", re.IGNORECASE)
_KILL_OK = re.compile(r"Job <(\d+(?:\[\d+\])?)> is being (?:terminated|signaled|killed)", re.IGNORECASE)
_KILL_GONE = re.compile(r"Job has already finished|No matching job found|is not found", re.IGNORECASE)


class LsfAdapter(QueueAdapter):
    """Adapter for IBM Spectrum LSF 10.1 (``bjobs -json`` needs 10.1.0.2 or later)."""

    name = "lsf"
    job_id_env = "LSB_JOBID"
    submit_stdin_from_script = True
    filters_server_side = frozenset({"job_ids", "user"})

    def __init__(self, *, tz: dt.tzinfo | None = None,
                 now: Callable[[], dt.datetime] | None = None) -> None:
        """Create an LSF adapter.

        Parameters
        ----------
        tz
            Time zone of LSF's time stamps (local time of the cluster).  Default UTC.
        now
            Clock used only to guess the year of LSF time stamps (they have none); default
            ``datetime.now(tz)``.
        """
        super().__init__(tz=tz)
        self._now = now

    # -- submit -------------------------------------------------------------------------
    def submit_command(self, script_path: str) -> list[str]:
        """``bsub``: the caller must feed the content of ``script_path`` on stdin.

        ``script_path`` is not part of the argument list (see the module notes); it is
        checked only so that a caller cannot forget to provide a script.
        """
        if not script_path:
            raise ValueError("script path is empty")
        return ["bsub"]

    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        """Parse ``Job <123> is submitted to queue <normal>.`` (anywhere in the output)."""
        text = f"{stdout}\n{stderr}"
        match = _SUBMIT_RE.search(text)
        if match and returncode == 0:
            return SubmitResult(SubmitOutcome.SUBMITTED, job_id=match.group(1))
        tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
        if match or returncode == 0 or returncode < 0 or (
                _SUBMIT_UNKNOWN.search(text) and not re.search(r"Timeout on connect", text, re.IGNORECASE)):
            return SubmitResult(
                SubmitOutcome.UNKNOWN,
                reason=f"bsub did not clearly report a job (exit status {returncode}): {tail!r}. "
                "The job may exist; look for the pilot by its job name before submitting again.",
            )
        if _TRANSIENT.search(text):
            return SubmitResult(SubmitOutcome.FAILED, retryable=True,
                                reason=f"bsub failed: {tail!r}; LSF is unreachable or busy, "
                                "it will be tried again")
        if _SUBMIT_RETRYABLE.search(text):
            return SubmitResult(SubmitOutcome.FAILED, retryable=True,
                                reason=f"bsub failed: {tail!r}; a job limit is reached, it frees "
                                "up as jobs finish")
        return SubmitResult(
            SubmitOutcome.FAILED,
            reason=f"bsub rejected the job: {tail!r}; fix the #BSUB options of the pilot "
            "(queue, -n, -R resource string, -W wall time) in the cluster configuration",
        )

    # -- status -------------------------------------------------------------------------
    def status_command(
        self,
        job_ids: Sequence[str] | None = None,
        user: str | None = None,
        name_prefix: str | None = None,
    ) -> list[str]:
        """``bjobs -o FIELDS -json -a [-u USER] [IDS]``; ``name_prefix`` is filtered by the
        caller (:func:`queue_adapters.base.filter_statuses`)."""
        argv = ["bjobs", "-o", BJOBS_FIELDS, "-json", "-a"]
        if user:
            argv += ["-u", user]
        return argv + _checked_ids(job_ids or [])

    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse ``bjobs -json`` output.

        Records with an ``ERROR`` key "Job <N> is not found", and "No job found" /
        "Job <N> is not found" on stderr, mean no entry.  "LSF is down" and similar raise a
        retryable :class:`SchedulerQueryError`.  "LSF is processing your request" lines
        before the JSON are skipped.
        """
        result: dict[str, JobStatus] = {}
        for record in self._records(returncode, stdout, stderr):
            status = self._record_status(record)
            if status is not None:
                result[status.job_id] = status
        return result

    def _records(self, returncode: int, stdout: str, stderr: str) -> list[dict[str, Any]]:
        """The job records of ``bjobs -json`` output (not-found ones dropped); failures raise."""
        problems = [line for line in split_lines(stderr)
                    if not _NOT_FOUND.search(line) and not _is_banner(line)]
        if problems:
            raise SchedulerQueryError(
                "bjobs failed", command="bjobs", returncode=returncode, stdout=stdout,
                stderr=stderr, retryable=any(_TRANSIENT.search(p) for p in problems),
            )
        start = stdout.find("{")
        if start < 0:
            lines = split_lines(stdout)
            junk = [line for line in lines if not _NOT_FOUND.search(line) and not _is_banner(line)]
            if any(_is_banner(line) for line in lines + split_lines(stderr)) and not any(
                    _NOT_FOUND.search(line) for line in lines + split_lines(stderr)):
                raise SchedulerQueryError(
                    "bjobs gave up waiting for LSF (only 'Please wait ...' lines, no answer)",
                    command="bjobs", returncode=returncode, stdout=stdout, stderr=stderr,
                    retryable=True,
                )
            if junk:
                raise SchedulerQueryError(
                    "bjobs printed no JSON (is this LSF older than 10.1.0.2, without -json?)",
                    command="bjobs", returncode=returncode, stdout=stdout, stderr=stderr,
                    retryable=bool(_TRANSIENT.search(stdout)),
                )
            return []
        try:
            data = json.loads(stdout[start:])
        except json.JSONDecodeError as exc:
            raise SchedulerQueryError(
                f"bjobs -json printed invalid JSON ({exc.msg} at line {exc.lineno})",
                command="bjobs", returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=True,
            ) from exc
        records = data.get("RECORDS") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise SchedulerQueryError(
                "bjobs -json output has no RECORDS list", command="bjobs",
                returncode=returncode, stdout=stdout, stderr=stderr, retryable=False,
            )
        kept: list[dict[str, Any]] = []
        for record in records:
            if not isinstance(record, dict):
                continue
            if "ERROR" in record:
                if not _NOT_FOUND.search(str(record["ERROR"])):
                    raise SchedulerQueryError(
                        f"bjobs reported an error: {record['ERROR']}", command="bjobs",
                        returncode=returncode, stdout=stdout, stderr=stderr,
                        retryable=bool(_TRANSIENT.search(str(record["ERROR"]))),
                    )
                continue
            kept.append(record)
        return kept

    # -- history ------------------------------------------------------------------------
    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """``bjobs -o FIELDS -json -a IDS`` (``None`` for an empty list)."""
        if not job_ids:
            return None
        return ["bjobs", "-o", BJOBS_FIELDS, "-json", "-a", *_checked_ids(job_ids)]

    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Same format as :meth:`parse_status`."""
        return self.parse_status(returncode, stdout, stderr)

    # -- accounting ---------------------------------------------------------------------
    #: most ids in one accounting query (the manager splits longer lists)
    accounting_max_ids = 200

    def accounting_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """``bjobs -o "jobid stat run_time nalloc_slot slots proj_name start_time finish_time delimiter='|'"
        -json -a IDS``; None for no ids. Jobs purged from mbatchd (older than CLEAN_PERIOD) are not found: the
        manager reads them while they are there, every cycle, so their last numbers are the final ones."""
        if not job_ids:
            return None
        return ["bjobs", "-o", ACCOUNTING_FIELDS, "-json", "-a", *_checked_ids(job_ids)]

    def parse_accounting(self, returncode: int, stdout: str, stderr: str) -> dict[str, Usage]:
        """``{job_id: Usage}``: ``RUN_TIME`` (``N second(s)``, or ``hh:mm:ss`` under ``-hms``) x ``NALLOC_SLOT``
        (``SLOTS`` where that field is empty), ``PROJ_NAME``; final in DONE or EXIT. Errors as for
        :meth:`parse_status` (whose record checks it shares)."""
        out: dict[str, Usage] = {}
        for record in self._records(returncode, stdout, stderr):
            job_id = _field(record, "JOBID")
            if job_id is None:
                continue
            cpus = duration_seconds(_field(record, "NALLOC_SLOT") or _field(record, "SLOTS")) or 0
            seconds = duration_seconds(_field(record, "RUN_TIME")) or 0
            final = (_field(record, "STAT") or "") in ("DONE", "EXIT")
            out[job_id] = Usage(job_id=job_id, cpus=cpus, seconds=seconds, core_seconds=cpus * seconds,
                                account=_field(record, "PROJ_NAME"), start=self._time(_field(record, "START_TIME")),
                                end=self._time(_field(record, "FINISH_TIME")) if final else None, final=final)
        return out

    # -- cancel -------------------------------------------------------------------------
    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``bkill IDS``."""
        ids = _checked_ids(job_ids)
        if not ids:
            raise ValueError("no job ids to cancel")
        return ["bkill", *ids]

    def parse_cancel(
        self, returncode: int, stdout: str, stderr: str, job_ids: Sequence[str] = ()
    ) -> CancelResult:
        """Parse bkill output: one line per job on stdout or stderr.

        ``Job <N> is being terminated``/``signaled``: cancelled.  ``Job has already
        finished`` and ``No matching job found``: already gone (bkill exits 255 for them).
        Other per-job errors (``User permission denied``): failed.
        """
        cancelled: list[str] = []
        gone: list[str] = []
        failed: dict[str, str] = {}
        retryable = False
        for line in split_lines(f"{stdout}\n{stderr}"):
            ok = _KILL_OK.search(line)
            if ok:
                cancelled.append(ok.group(1))
                continue
            job = _JOB_LINE.search(line)
            if job and _KILL_GONE.search(line):
                gone.append(job.group(1))
                continue
            if _is_banner(line):
                continue
            key = job.group(1) if job else "*"
            failed[key] = line.strip()
            if _TRANSIENT.search(line):
                retryable = True
        if returncode != 0 and not (cancelled or gone or failed):
            failed["*"] = f"bkill exited with status {returncode} and printed nothing"
        ok_all = not failed
        reason = None
        if failed:
            detail = "; ".join(failed.values())
            hint = ("LSF is unreachable, try again later" if retryable
                    else "check the job ids and that they belong to this user")
            reason = f"bkill failed: {detail} ({hint})"
        return CancelResult(ok=ok_all, cancelled=_unique(cancelled), already_gone=_unique(gone),
                            reason=reason, retryable=retryable and not ok_all)

    # -- internals ----------------------------------------------------------------------
    def _record_status(self, record: dict[str, Any]) -> JobStatus | None:
        job_id = _field(record, "JOBID")
        if job_id is None:
            return None
        native = _field(record, "STAT") or ""
        state = map_state(LSF_STATES, native, "lsf")
        exit_reason = _field(record, "EXIT_REASON")
        if state is JobState.FAILED and exit_reason:
            if _TIMEOUT_REASONS.search(exit_reason):
                state = JobState.TIMEOUT
            elif _CANCEL_REASONS.search(exit_reason):
                state = JobState.CANCELLED
        exit_code = None
        if state.final:
            raw = _field(record, "EXIT_CODE")
            exit_code = int(raw) if raw and re.fullmatch(r"-?\d+", raw) else (
                0 if native == "DONE" else None)
        reason = _field(record, "PEND_REASON") if not state.final else exit_reason
        return JobStatus(
            job_id=job_id,
            state=state,
            native_state=native,
            name=_field(record, "JOB_NAME"),
            reason=reason,
            exit_code=exit_code,
            submit_time=self._time(_field(record, "SUBMIT_TIME")),
            start_time=self._time(_field(record, "START_TIME")) if state.order >= 2 else None,
            end_time=self._time(_field(record, "FINISH_TIME")) if state.final else None,
            user=_field(record, "USER"),
        )

    def _time(self, text: str | None) -> dt.datetime | None:
        """``Feb  2 07:48``, ``May 28 12:45:01``, ``Dec  31 23:48 L``, ``2024/05/28 12:45``."""
        if not text:
            return None
        parts = text.split()
        if parts and re.fullmatch(r"[A-Z]", parts[-1]):
            parts = parts[:-1]  # trailing markers: L (run limit), E (estimated), X
        cleaned = " ".join(parts)
        for fmt in ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%b %d %H:%M:%S %Y", "%b %d %H:%M %Y"):
            try:
                return local_to_utc(dt.datetime.strptime(cleaned, fmt), self.tz)
            except ValueError:
                pass
        for fmt in ("%b %d %H:%M:%S", "%b %d %H:%M"):
            try:
                parsed = dt.datetime.strptime(f"{cleaned} 2000", f"{fmt} %Y")
            except ValueError:
                continue
            now = (self._now() if self._now else dt.datetime.now(self.tz))
            now_local = now.astimezone(self.tz).replace(tzinfo=None) if now.tzinfo else now
            try:
                candidate = parsed.replace(year=now_local.year)
            except ValueError:  # Feb 29 in a year that has none
                candidate = parsed.replace(year=now_local.year - 1, day=28)
            if candidate - now_local > dt.timedelta(days=1):
                try:
                    candidate = candidate.replace(year=candidate.year - 1)
                except ValueError:
                    candidate = candidate.replace(year=candidate.year - 1, day=28)
            return local_to_utc(candidate, self.tz)
        return None


def _field(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _EMPTY else text


def _is_banner(line: str) -> bool:
    """Progress lines LSF commands print while mbatchd is busy or being retried."""
    return bool(re.match(r"\s*(?:LSF is processing your request|Cannot connect to LSF)\. "
                         r"Please wait \.\.\.\s*$", line, re.IGNORECASE))


_ID_ARG_RE = re.compile(r"^\d+(?:\[\d+\])?$")


def _checked_ids(job_ids: Sequence[str]) -> list[str]:
    return checked_ids(job_ids, _ID_ARG_RE, "LSF")


_unique = unique
