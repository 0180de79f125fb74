"""PBS adapter: PBS Pro / OpenPBS (``qstat -f -F json``) and Torque (``qstat -f`` text).

Commands built here
-------------------
* submit: ``qsub SCRIPT`` prints the full job id ``<seq>.<server>``.
* status: PBS Pro ``qstat -f -F json [IDS]``; Torque ``qstat -f [IDS]``.  ``-f`` output keeps
  full job ids and names (the default listing truncates both, e.g. ``2399360.casper-p*``).
  ``-u`` is never combined with ``-F json``: OpenPBS before openpbs/openpbs#2675 prints the
  text table plus a JSON object without ``Jobs`` for that combination, so users are
  filtered by the caller (``Job_Owner``).
* history: PBS Pro ``qstat -f -F json -x IDS`` (``-x`` includes finished jobs while the
  server keeps job history); Torque keeps completed jobs (state ``C``) for
  ``keep_completed`` seconds and shows them without ``-x`` (which means XML there).
* accounting (PBS Pro): ``qstat -x -f -F json IDS``: ``resources_used.walltime`` x ``resources_used.ncpus``
  and ``Account_Name`` (see :mod:`queue_adapters.accounting`); Torque has none.
* cancel: ``qdel IDS``.

Known quirks handled by the parser (see tests/fixtures/scheduler/pbs.yaml):
* invalid JSON from ``qstat -F json``: backslash escapes such as ``\\'`` or ``\\,`` in
  ``Variable_List`` (openpbs PR #2049), unquoted numbers with leading zeros (issue #1255),
  unescaped quotes (PR #830), code of exported bash functions (issue #2541).  The parser
  tries strict JSON, then JSON with those repairs, then a line-based reading of the
  one-attribute-per-line layout that qstat prints.
* a JSON header without ``Jobs`` and ``cannot connect to server`` on stderr (exit 255) is a
  failed query, not "no jobs".
* ``qstat -f`` text folds long values onto continuation lines that start with a tab (and,
  for Torque's ``sched_hint``, even with no indentation).
* OpenPBS builds after 23.06 print only the first job of ``qstat -f -F json ID1 ID2``
  (openpbs/openpbs#2672); jobs missing from a status answer are looked up again through the
  history query and, last, the pilot's exit-code file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

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

__all__ = ["PBS_STATES", "TORQUE_STATES", "PbsAdapter"]

logger = logging.getLogger(__name__)

# Job state letters.  Sources:
#   OpenPBS qstat(1B), "Job states": https://github.com/openpbs/openpbs/blob/master/doc/man1/qstat.1B
#   PBS Professional Reference Guide 2022.1, "Job States":
#     https://help.altair.com/2022.1.0/PBS%20Professional/PBSReferenceGuide2022.1.pdf
# F and X are refined with Exit_status/substate (see PbsAdapter._final_state).
PBS_STATES: dict[str, JobState] = {
    "B": JobState.RUNNING,  # array job has at least one subjob running (Begun)
    "E": JobState.COMPLETING,  # exiting after having run
    "F": JobState.COMPLETED,  # finished (history); refined by Exit_status
    "H": JobState.HELD,
    "M": JobState.PENDING,  # moved to another server (it continues there)
    "Q": JobState.PENDING,  # queued, eligible to run or be routed
    "R": JobState.RUNNING,
    "S": JobState.SUSPENDED,  # suspended by the server (preemption)
    "T": JobState.PENDING,  # in transit to a new location
    "U": JobState.SUSPENDED,  # suspended because the workstation became busy
    "W": JobState.PENDING,  # waiting for its execution time or after a stage-in failure
    "X": JobState.COMPLETED,  # subjob finished (expired); refined by Exit_status
}

# Torque qstat(1) "job_state": C E H Q R T W S.
#   https://docs.adaptivecomputing.com/torque/6-1-2/adminGuide/Content/topics/torque/commands/qstat.htm
TORQUE_STATES: dict[str, JobState] = {
    "C": JobState.COMPLETED,  # completed (kept for keep_completed); refined by exit_status
    "E": JobState.COMPLETING,
    "H": JobState.HELD,
    "Q": JobState.PENDING,
    "R": JobState.RUNNING,
    "T": JobState.PENDING,  # being moved
    "W": JobState.PENDING,  # waiting for its execution time
    "S": JobState.SUSPENDED,
}

_FINAL_LETTERS = frozenset({"F", "X", "C"})
# PBS Pro substate of a finished job that was deleted (JOB_SUBSTATE_TERMINATED in
# src/include/job.h: 91 terminated, 92 finished, 93 failed, 94 moved).
_SUBSTATE_TERMINATED = 91
# Special Exit_status values (src/include/job.h of OpenPBS; Torque "Job Exit Status" page:
# https://docs.adaptivecomputing.com/torque/6-1-2/adminGuide/Content/topics/torque/2-jobs/jobExitStatus.htm).
_PBSPRO_KILL_WALLTIME = -29  # JOB_EXEC_KILL_WALLTIME
_TORQUE_OVERLIMIT_WT = -11  # JOB_EXEC_OVERLIMIT_WT
# qdel sends SIGTERM, then SIGKILL after kill_delay: Exit_status 256 + 15 / 256 + 9.
_DELETED_EXIT = frozenset({256 + 15, 256 + 9})

_SUBMIT_ID_RE = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.\-]+)?$")
_ID_ARG_RE = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.\-]+)?(?:@[A-Za-z0-9_.\-]+)?$")

_GONE = re.compile(
    r"Unknown Job Id|Job has finished|not configured to maintain job history|"
    r"job has already finished|Job is not in history", re.IGNORECASE
)
_TRANSIENT = re.compile(
    r"cannot connect to server|Connection refused|No route to host|timed out|Timeout|"
    r"End of File|errno=15010|Server shutting down|could not connect|"
    r"Communication failure|pbs_iff|Bad file descriptor|Network is unreachable", re.IGNORECASE
)
_SUBMIT_UNKNOWN = re.compile(r"End of File|timed out|Timeout|Communication failure", re.IGNORECASE)
_SUBMIT_RETRYABLE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"cannot connect to server|Connection refused|No route to host|"
                r"Server shutting down|could not connect|errno=15010", re.IGNORECASE),
     "the PBS server is unreachable; it will be tried again"),
    (re.compile(r"Maximum number of jobs already in queue|would exceed .*limit|"
                r"exceed.*max_queued|Maximum number of jobs", re.IGNORECASE),
     "a queue/user job limit is reached; it frees up as jobs finish"),
)
_SUBMIT_PERMANENT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Unknown queue|Unknown resource|Unknown node", re.IGNORECASE),
     "fix the queue/resource names in the cluster configuration ('qstat -Q' lists queues)"),
    (re.compile(r"exceeds queue resource limits|Job violates queue|exceed.*resource|"
                r"cannot locate feasible nodes|Illegal attribute or resource value", re.IGNORECASE),
     "the request (walltime, nodes, cpus, memory) is beyond what the queue allows; lower it"),
    (re.compile(r"Unauthorized Request|ACL|not allowed|Bad UID|Access from host not allowed",
                re.IGNORECASE),
     "this user may not submit to that queue/server; check the queue and the account"),
    (re.compile(r"script file|No such file|cannot be loaded|Bad file", re.IGNORECASE),
     "the job script is missing or unreadable on the cluster"),
)


class PbsAdapter(QueueAdapter):
    """Adapter for PBS Pro / OpenPBS (``flavor="pbspro"``) and Torque (``flavor="torque"``)."""

    name = "pbs"
    job_id_env = "PBS_JOBID"
    submit_stdin_from_script = False
    filters_server_side = frozenset({"job_ids"})

    def __init__(self, *, flavor: Literal["pbspro", "torque"] = "pbspro",
                 tz: dt.tzinfo | None = None) -> None:
        """Create a PBS adapter.

        Parameters
        ----------
        flavor
            ``"pbspro"`` (PBS Professional / OpenPBS: JSON status) or ``"torque"``
            (Torque / old PBS: text status, state ``C`` for completed jobs).
        tz
            Time zone of the server's time stamps (``ctime``, ``stime``...): qstat prints
            local wall-clock time without a zone.  Default UTC.
        """
        super().__init__(tz=tz)
        if flavor not in ("pbspro", "torque"):
            raise ValueError(f"unknown PBS flavor {flavor!r}: use 'pbspro' or 'torque'")
        self.flavor = flavor
        self.name = "pbs" if flavor == "pbspro" else "torque"
        self._states = PBS_STATES if flavor == "pbspro" else {**PBS_STATES, **TORQUE_STATES}

    def __repr__(self) -> str:
        return f"PbsAdapter(flavor={self.flavor!r}, tz={self.tz!r})"

    # -- submit -------------------------------------------------------------------------
    def submit_command(self, script_path: str) -> list[str]:
        """``qsub SCRIPT``."""
        if not script_path:
            raise ValueError("script path is empty")
        return ["qsub", script_path]

    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        """Parse qsub output: the job id (``1234.server``) is the last line of stdout."""
        lines = split_lines(stdout)
        if returncode == 0 and lines and _SUBMIT_ID_RE.match(lines[-1].strip()):
            return SubmitResult(SubmitOutcome.SUBMITTED, job_id=lines[-1].strip())
        text = f"{stderr}\n{stdout}"
        tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
        if returncode == 0 or returncode < 0 or _SUBMIT_UNKNOWN.search(text):
            return SubmitResult(
                SubmitOutcome.UNKNOWN,
                reason=f"qsub gave no job id (exit status {returncode}): {tail!r}. The job may "
                "exist; look for the pilot by its job name before submitting again.",
            )
        for pattern, hint in _SUBMIT_RETRYABLE:
            if pattern.search(text):
                return SubmitResult(SubmitOutcome.FAILED, reason=f"qsub failed: {tail!r}; {hint}",
                                    retryable=True)
        for pattern, hint in _SUBMIT_PERMANENT:
            if pattern.search(text):
                return SubmitResult(SubmitOutcome.FAILED,
                                    reason=f"qsub rejected the job: {tail!r}; {hint}")
        return SubmitResult(
            SubmitOutcome.FAILED,
            reason=f"qsub failed (exit status {returncode}): {tail!r}; run the same qsub by hand "
            "on the cluster to see the full error",
        )

    # -- status -------------------------------------------------------------------------
    def status_command(
        self,
        job_ids: Sequence[str] | None = None,
        user: str | None = None,
        name_prefix: str | None = None,
    ) -> list[str]:
        """``qstat -f -F json [IDS]`` (Torque: ``qstat -f [IDS]``).

        ``user`` and ``name_prefix`` are not passed to qstat (see the module notes): filter
        the result with :func:`queue_adapters.base.filter_statuses`.
        """
        argv = ["qstat", "-f"] + (["-F", "json"] if self.flavor == "pbspro" else [])
        return argv + _checked_ids(job_ids or [])

    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse ``qstat -f`` output (JSON, or the text layout as a fallback).

        ``qstat: Unknown Job Id X`` / ``Job has finished`` lines on stderr mean those jobs
        left the queue (no entry, no error).  Connection problems raise a retryable
        :class:`SchedulerQueryError`.
        """
        return self._parse_qstat(returncode, stdout, stderr)

    # -- history ------------------------------------------------------------------------
    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """PBS Pro: ``qstat -f -F json -x IDS``; Torque: ``qstat -f IDS``; ``None`` if no ids."""
        if not job_ids:
            return None
        if self.flavor == "pbspro":
            return ["qstat", "-f", "-F", "json", "-x", *_checked_ids(job_ids)]
        return ["qstat", "-f", *_checked_ids(job_ids)]

    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Same format as :meth:`parse_status`; ``PBS is not configured to maintain job
        history`` means no entry (the caller falls back to the exit-code file)."""
        return self._parse_qstat(returncode, stdout, stderr)

    # -- accounting ---------------------------------------------------------------------
    #: most ids in one accounting query (the manager splits longer lists)
    accounting_max_ids = 100

    def accounting_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """PBS Pro: ``qstat -x -f -F json IDS`` (running and finished jobs with ``resources_used``); None for
        Torque (its ``resources_used`` has no core count, and finished jobs vanish after keep_completed: no
        core-hours are read there) and for no ids."""
        if not job_ids or self.flavor != "pbspro":
            return None
        return ["qstat", "-x", "-f", "-F", "json", *_checked_ids(job_ids)]

    def parse_accounting(self, returncode: int, stdout: str, stderr: str) -> dict[str, Usage]:
        """``{job_id: Usage}``: ``resources_used.walltime`` (``hh:mm:ss``) x ``resources_used.ncpus`` (or
        ``Resource_List.ncpus`` before the job reports usage), ``Account_Name``, ``stime``/``obittime``; a job
        not yet started has 0 seconds. A job is final in state F or X once it reports its usage (or never
        started). Same errors as :meth:`parse_history`."""
        out: dict[str, Usage] = {}
        for job_id, attrs in self._qstat_records(returncode, stdout, stderr).items():
            used, wanted = _resources(attrs, "resources_used"), _resources(attrs, "Resource_List")
            cpus = _to_int(used.get("ncpus")) or _to_int(wanted.get("ncpus")) or 0
            seconds = duration_seconds(used.get("walltime")) or 0
            native = str(attrs.get("job_state", "")).strip()
            # a finished job that ran (stime) but reports no resources_used (its MoM lost) has no numbers to
            # settle on: not final, so that the budget counts its run time instead of 0
            final = native in _FINAL_LETTERS and ("walltime" in used or attrs.get("stime") in (None, ""))
            account = attrs.get("Account_Name")
            out[job_id] = Usage(job_id=job_id, cpus=cpus, seconds=seconds, core_seconds=cpus * seconds,
                                account=str(account) if account not in (None, "") else None,
                                start=self._time(attrs.get("stime")),
                                end=self._time(attrs.get("obittime")) if final else None, final=final)
        return out

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
        """Parse qdel output: silent on success, one stderr line per job that failed.

        ``Unknown Job Id`` and ``Job has finished`` mean already gone; ``Unauthorized
        Request`` and malformed ids are failures; an unreachable server is retryable.  The
        exit status is not trusted (PBS returns the error code of the last failure).
        """
        requested = list(job_ids)
        gone: list[str] = []
        failed: dict[str, str] = {}
        retryable = False
        for line in split_lines(f"{stderr}\n{stdout}"):
            jid = _match_id(line, requested)
            if _GONE.search(line) and jid is not None:
                gone.append(jid)
                continue
            key = jid if jid is not None else "*"
            failed[key] = line.strip()
            if _TRANSIENT.search(line):
                retryable = True
        if returncode != 0 and not failed and not gone:
            failed["*"] = f"qdel exited with status {returncode} and printed nothing"
        cancelled = [] if "*" in failed else [j for j in _unique(requested)
                                              if j not in gone and j not in failed]
        ok = not failed
        reason = None
        if failed:
            detail = "; ".join(failed.values())
            hint = ("the PBS server is unreachable, try again later" if retryable
                    else "check the job ids and that they belong to this user")
            reason = f"qdel failed: {detail} ({hint})"
        return CancelResult(ok=ok, cancelled=cancelled, already_gone=_unique(gone), reason=reason,
                            retryable=retryable and not ok)

    # -- parsing internals --------------------------------------------------------------
    def _parse_qstat(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        records = self._qstat_records(returncode, stdout, stderr)
        return {job_id: self._job_status(job_id, attrs) for job_id, attrs in records.items()}

    def _qstat_records(self, returncode: int, stdout: str, stderr: str) -> dict[str, dict[str, Any]]:
        """Each job's attributes, from ``qstat -f`` JSON or text (text values are strings: ``a.b = v`` lines
        stay dotted keys there, nested objects in JSON)."""
        problems = [line for line in split_lines(stderr) if not _GONE.search(line)]
        if problems:
            raise SchedulerQueryError(
                "qstat failed", command="qstat", returncode=returncode, stdout=stdout,
                stderr=stderr, retryable=any(_TRANSIENT.search(p) for p in problems),
            )
        gone_only = bool(split_lines(stderr))
        if returncode != 0 and not gone_only:
            raise SchedulerQueryError(
                f"qstat exited with status {returncode} without saying why", command="qstat",
                returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=returncode < 0,
            )
        lines = stdout.splitlines()
        first_json = None
        if not stdout.lstrip().startswith("Job Id:"):
            first_json = next((i for i, line in enumerate(lines) if line.lstrip().startswith("{")),
                              None)
        if first_json is not None:
            before = [line for line in lines[:first_json] if line.strip()]
            if before:
                raise SchedulerQueryError(
                    "qstat printed text before its JSON (OpenPBS prints a text table plus JSON "
                    "without 'Jobs' when -F json is combined with -u/-a/-n, openpbs#2675); "
                    "check for a qstat wrapper or alias on the cluster that adds options",
                    command="qstat", returncode=returncode, stdout=stdout, stderr=stderr,
                    retryable=False,
                )
            data = self._load_json("\n".join(lines[first_json:]), returncode, stdout, stderr)
            jobs = data.get("Jobs")
            if jobs is None:
                return {}
            if not isinstance(jobs, dict):
                raise SchedulerQueryError(
                    "qstat JSON has a 'Jobs' entry that is not an object", command="qstat",
                    returncode=returncode, stdout=stdout, stderr=stderr, retryable=False,
                )
            return {str(k): v for k, v in jobs.items() if isinstance(v, dict)}
        return dict(parse_qstat_text(stdout))

    def _load_json(self, text: str, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
        for attempt in (text, repair_pbs_json(text)):
            try:
                data = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
        data = lenient_pbs_json(text)
        if data is None:
            raise SchedulerQueryError(
                "qstat -F json printed JSON that cannot be read even leniently",
                command="qstat", returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=False,
            )
        logger.warning("qstat -F json output was not valid JSON; read it leniently "
                       "(known PBS escaping bugs, see docs/queue-adapters.md)")
        return data

    def _job_status(self, job_id: str, attrs: dict[str, Any]) -> JobStatus:
        native = str(attrs.get("job_state", "")).strip()
        state = map_state(self._states, native, self.name)
        exit_raw = attrs.get("Exit_status", attrs.get("exit_status"))
        exit_status = _to_int(exit_raw)
        substate = _to_int(attrs.get("substate"))
        exit_code = None
        if native in _FINAL_LETTERS and state is not JobState.UNKNOWN:
            state = self._final_state(exit_status, substate)
            exit_code = _shell_exit_code(exit_status)
        owner = attrs.get("Job_Owner") or attrs.get("euser")
        user = str(owner).split("@", 1)[0] if owner else None
        name = attrs.get("Job_Name")
        comment = attrs.get("comment")
        start = attrs.get("stime", attrs.get("start_time"))
        end = attrs.get("obittime", attrs.get("comp_time"))
        return JobStatus(
            job_id=job_id,
            state=state,
            native_state=native,
            name=str(name) if name is not None else None,
            reason=str(comment) if comment else None,
            exit_code=exit_code,
            submit_time=self._time(attrs.get("ctime", attrs.get("qtime"))),
            start_time=self._time(start) if state.order >= 2 else None,
            end_time=self._time(end) if state.final else None,
            user=user,
        )

    def _final_state(self, exit_status: int | None, substate: int | None) -> JobState:
        if exit_status == 0:
            return JobState.COMPLETED
        if exit_status is None:
            return JobState.CANCELLED  # deleted before it ran: no Exit_status
        if self.flavor == "pbspro" and exit_status == _PBSPRO_KILL_WALLTIME:
            return JobState.TIMEOUT
        if self.flavor == "torque" and exit_status == _TORQUE_OVERLIMIT_WT:
            return JobState.TIMEOUT
        if substate == _SUBSTATE_TERMINATED or exit_status in _DELETED_EXIT:
            return JobState.CANCELLED
        return JobState.FAILED

    def _time(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc) if value > 0 else None
        text = " ".join(str(value).split())
        if re.fullmatch(r"\d{9,11}", text):  # Torque prints some times as epoch seconds
            return dt.datetime.fromtimestamp(int(text), tz=dt.timezone.utc)
        try:
            return local_to_utc(dt.datetime.strptime(text, "%a %b %d %H:%M:%S %Y"), self.tz)
        except ValueError:
            return None


# -- JSON repairs -----------------------------------------------------------------------
_VALID_ESCAPES = frozenset('"\\/bfnrtu')


def repair_pbs_json(text: str) -> str:
    """Repair the JSON mistakes that qstat is known to make.

    * a backslash before a character JSON does not allow (``\\'``, ``\\,``, ``\\ ``) is
      dropped (openpbs PR #2049);
    * an unquoted number with leading zeros (``"foo":005``, issue #1255) becomes a string.
    """
    def fix_escape(match: re.Match[str]) -> str:
        ch = match.group(1)
        return match.group(0) if ch in _VALID_ESCAPES else ch

    repaired = re.sub(r"\\(.)", fix_escape, text, flags=re.DOTALL)
    repaired = re.sub(r'(:\s*)(-?0\d+)(\s*[,}\n])', r'\1"\2"\3', repaired)
    return repaired


_KEY_LINE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s*:\s*(.*?)\s*$')


def lenient_pbs_json(text: str) -> dict[str, Any] | None:
    """Read qstat's pretty-printed JSON line by line, forgiving bad strings.

    qstat writes one attribute per line (``"key":value,``) and escapes newlines inside
    values, so a value is everything between the first ``"`` after the colon and the last
    ``"`` of the line, whatever quotes or backslashes it contains.  Returns ``None`` when
    the text does not have that layout.
    """
    root: dict[str, Any] | None = None
    stack: list[dict[str, Any]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "{" and root is None:
            root = {}
            stack.append(root)
            continue
        if not stack:
            return None
        if line.startswith("}"):
            stack.pop()
            continue
        match = _KEY_LINE.match(line)
        if not match:
            return None
        key, rest = _unescape(match.group(1)), match.group(2)
        if rest.endswith(","):
            rest = rest[:-1].rstrip()
        if rest == "{":
            child: dict[str, Any] = {}
            stack[-1][key] = child
            stack.append(child)
            continue
        if rest.endswith("{}"):
            stack[-1][key] = {}
            continue
        if rest.startswith('"') and rest.endswith('"') and len(rest) >= 2:
            stack[-1][key] = _unescape(rest[1:-1])
        elif re.fullmatch(r"-?\d+", rest):
            stack[-1][key] = int(rest) if not re.fullmatch(r"-?0\d+", rest) else rest
        elif re.fullmatch(r"-?\d+\.\d*(?:[eE][-+]?\d+)?", rest):
            stack[-1][key] = float(rest)
        elif rest in ("true", "false"):
            stack[-1][key] = rest == "true"
        elif rest == "null":
            stack[-1][key] = None
        else:
            stack[-1][key] = rest
    return root


def _unescape(text: str) -> str:
    table = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}

    def one(match: re.Match[str]) -> str:
        ch = match.group(1)
        if ch == "u":
            return match.group(0)
        return table.get(ch, ch)

    out = re.sub(r"\\(.)", one, text, flags=re.DOTALL)
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), out)


# -- qstat -f text ----------------------------------------------------------------------
_JOB_ID_LINE = re.compile(r"^Job Id:\s*(\S+)")
_ATTR_LINE = re.compile(r"^ {4}([A-Za-z_][\w.]*) = ?(.*)$")


def parse_qstat_text(text: str) -> dict[str, dict[str, str]]:
    """Parse the ``qstat -f`` text layout into ``{job_id: {attribute: value}}``.

    A job starts with ``Job Id: <id>``; attributes are ``    name = value`` lines (4 spaces).
    Every other non-empty line continues the previous value: qstat folds long values onto
    lines that start with a tab, cutting words in the middle, so the pieces are joined
    without a separator (a line that is not indented at all, as in Torque's multi-line
    ``sched_hint``, is joined the same way).  Blank lines are ignored.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r\n")
        match = _JOB_ID_LINE.match(line)
        if match:
            current = jobs.setdefault(match.group(1), {})
            last_key = None
            continue
        if current is None or not line.strip():
            continue
        attr = _ATTR_LINE.match(line)
        if attr:
            last_key = attr.group(1)
            current[last_key] = attr.group(2)
            continue
        if last_key is not None:
            piece = line.removeprefix("\t")
            current[last_key] += piece
    return jobs


# -- helpers ----------------------------------------------------------------------------
def _resources(attrs: dict[str, Any], name: str) -> dict[str, Any]:
    """``resources_used`` / ``Resource_List`` of a job: a nested object in JSON, ``name.key`` in text."""
    nested = attrs.get(name)
    if isinstance(nested, dict):
        return nested
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in attrs.items() if k.startswith(prefix)}


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _shell_exit_code(exit_status: int | None) -> int | None:
    """PBS Exit_status to the shell convention: ``256 + N`` (killed by signal N) -> 128 + N."""
    if exit_status is None:
        return None
    if exit_status >= 256:
        return 128 + (exit_status - 256)
    return exit_status


def _checked_ids(job_ids: Sequence[str]) -> list[str]:
    return checked_ids(job_ids, _ID_ARG_RE, "PBS")


def _match_id(line: str, requested: Sequence[str]) -> str | None:
    """Which requested job id a qdel message is about (qdel may add the server suffix)."""
    tokens = [t.strip(".,:;'\"") for t in line.split()]
    for jid in requested:
        short = jid.split(".", 1)[0]
        for tok in tokens:
            if tok == jid or tok.startswith(jid + ".") or (tok == short and "." not in tok):
                return jid
            if "." in tok and "." not in jid and tok.split(".", 1)[0] == jid:
                return jid
    for tok in reversed(tokens):
        if re.fullmatch(r"\d+(?:\[\d*\])?(?:\.[\w.\-]+)?", tok):
            return tok
    return None


_unique = unique
