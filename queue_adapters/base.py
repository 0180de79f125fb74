"""The scheduler-independent part of the queue adapters: state model, result types, helpers.

Everything here is pure: no subprocess, no files, no network.  An adapter turns a request
into an argument list (``["sbatch", "--parsable", path]``) and turns the ``(returncode,
stdout, stderr)`` of that command into typed results.  Running the command is the job of
the transport (``pilot/transport/``).

Conventions shared by every adapter
-----------------------------------
* Times in :class:`JobStatus` are **timezone-aware datetimes in UTC** (``tzinfo=UTC``), so
  ``status.start_time.timestamp()`` compares directly with ``time.time()``.  Where a
  scheduler prints epoch seconds (SLURM with ``SLURM_TIME_FORMAT=%s``) the value is exact;
  where it prints wall-clock text without a zone (PBS, LSF) the adapter interprets it in the
  zone given to the adapter (``tz=``, default UTC).  Unknown or absent times are ``None``.
* ``JobStatus.exit_code`` follows the shell convention: the exit status of the batch script,
  or ``128 + N`` when it was killed by signal ``N``.  Negative values are scheduler-specific
  "could not run the job" codes (PBS ``JOB_EXEC_*``), kept as printed.
* An unknown native state code never raises: it maps to :attr:`JobState.UNKNOWN` and logs a
  warning on ``logging.getLogger("queue_adapters.<module>")``.
* A job id the scheduler does not know (it left the queue) is **not** an error: the status
  and history parsers simply return no entry for it.  Only a failed query (controller down,
  socket timeout) raises :class:`SchedulerQueryError`.
* Job-name filtering: no scheduler can filter by name *prefix* everywhere, so callers always
  apply :func:`filter_statuses` to the parsed result (it is cheap and idempotent).  The
  attribute :attr:`QueueAdapter.filters_server_side` says which filters the built command
  already applies, to keep the query small.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "CancelResult",
    "JobState",
    "JobStatus",
    "QueueAdapter",
    "SchedulerQueryError",
    "SubmitOutcome",
    "SubmitResult",
    "exit_file_name",
    "filter_statuses",
    "job_name",
    "parse_exit_file",
    "parse_job_name",
]

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc


class JobState(Enum):
    """Scheduler-independent job state (the common state model of all adapters).

    ``TIMEOUT`` is its own state, as in Parsl: a pilot that reaches its wall time is the
    normal end of a pilot, not a failure.  ``NODE_FAIL`` is a failure of the machine, not of
    the job.  ``UNKNOWN`` is what an unrecognised native state code becomes.
    """

    PENDING = "PENDING"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    UNKNOWN = "UNKNOWN"

    @property
    def final(self) -> bool:
        """True when the job is over and will not change state again."""
        return self in _FINAL_STATES

    @property
    def order(self) -> int:
        """Position in the life cycle, for "a state can only move forward" checks.

        ``UNKNOWN`` = 0, ``PENDING`` = ``HELD`` = 1, ``RUNNING`` = ``SUSPENDED`` = 2,
        ``COMPLETING`` = 3, every final state = 4.  States with the same order can alternate
        (a job can be held and released, suspended and resumed).  A scheduler can still move
        a job backwards (a requeued job goes from RUNNING to PENDING); the manager decides
        what to do with that, this number only makes the comparison explicit.
        """
        return _STATE_ORDER[self]


_FINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL}
)
_STATE_ORDER = {
    JobState.UNKNOWN: 0,
    JobState.PENDING: 1,
    JobState.HELD: 1,
    JobState.RUNNING: 2,
    JobState.SUSPENDED: 2,
    JobState.COMPLETING: 3,
    JobState.COMPLETED: 4,
    JobState.FAILED: 4,
    JobState.CANCELLED: 4,
    JobState.TIMEOUT: 4,
    JobState.NODE_FAIL: 4,
}


@dataclass(frozen=True)
class JobStatus:
    """What a scheduler says about one job.

    Attributes
    ----------
    job_id
        The id exactly as the scheduler prints it (``"123"``, ``"123_4"``, ``"1234.server"``).
    state
        The common state.
    native_state
        The scheduler's own state text (``"CANCELLED by 1001"``, ``"F"``, ``"EXIT"``), or
        ``"EXITFILE"`` for a status read from the pilot's exit-code file.
    name
        The job name, ``None`` when the output does not carry it.
    reason
        The scheduler's reason text: why a job is pending (``"Priority"``, ``"JobHeldUser"``,
        a PBS comment) or, for a finished job, the explanation it gives (``"TimeLimit"``,
        ``"TERM_RUNLIMIT: ..."``).  ``None`` when there is none.
    exit_code
        Exit status of the batch script (``128 + N`` if killed by signal ``N``), ``None`` if
        unknown or not finished.
    submit_time, start_time, end_time
        Timezone-aware UTC datetimes, or ``None``.
    user
        The owner, ``None`` when the output does not carry it.
    """

    job_id: str
    state: JobState
    native_state: str
    name: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    submit_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    user: str | None = None


class SubmitOutcome(Enum):
    """Result of one submission attempt (qtoolkit style).

    ``UNKNOWN`` means the output could not be read: the job may exist.  A caller must never
    treat it as "not submitted" (resubmitting could double the pilots); reconcile by job name
    instead.
    """

    SUBMITTED = "SUBMITTED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class SubmitResult:
    """Parsed submit output.

    Attributes
    ----------
    outcome
        SUBMITTED, FAILED or UNKNOWN.
    job_id
        The new job's id when SUBMITTED, else ``None``.
    reason
        For FAILED/UNKNOWN: what went wrong, the scheduler's own message and what to try.
    retryable
        For FAILED: whether the same submission can succeed later unchanged (a limit that
        frees up, a controller that comes back).  ``False`` for configuration errors (bad
        partition, account, time limit).  Always ``False`` for SUBMITTED and UNKNOWN.
    """

    outcome: SubmitOutcome
    job_id: str | None = None
    reason: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class CancelResult:
    """Parsed cancel output.

    Attributes
    ----------
    ok
        True when every requested job is cancelled or already gone.
    cancelled
        Jobs the scheduler accepted to cancel.
    already_gone
        Jobs that had already finished or that the scheduler no longer knows: nothing to do.
    reason
        Why ``ok`` is False (the scheduler's message and what to try), else ``None``.
    retryable
        Whether repeating the same cancel can help (controller unreachable).
    """

    ok: bool
    cancelled: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    reason: str | None = None
    retryable: bool = False


class SchedulerQueryError(Exception):
    """A status or history query failed as a query (not "job unknown").

    Attributes
    ----------
    retryable
        Whether the same query can succeed later (timeouts, controller or network down).
    command
        The program whose output was parsed (``"squeue"``); callers that know the full
        argument list may put it in their own message.
    returncode
        The command's exit status.
    output_tail
        The last lines of stderr (or stdout if stderr was empty), for error messages.
    """

    def __init__(
        self,
        message: str,
        *,
        command: str,
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        retryable: bool,
    ) -> None:
        self.command = command
        self.returncode = returncode
        self.retryable = retryable
        self.output_tail = output_tail(stderr) or output_tail(stdout)
        detail = f" (exit status {returncode}); output: {self.output_tail!r}"
        hint = " Retrying later may help." if retryable else " Retrying will not help until this is fixed."
        super().__init__(f"{command}: {message}{detail}.{hint}")


def output_tail(text: str, lines: int = 6, chars: int = 800) -> str:
    """Return the last non-empty ``lines`` lines of ``text`` (at most ``chars`` characters)."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    tail = "\n".join(kept[-lines:])
    return tail[-chars:]


class QueueAdapter(ABC):
    """Interface of a scheduler adapter: pure argument-list builders and output parsers.

    Class attributes
    ----------------
    name
        Short scheduler name (``"slurm"``, ``"pbs"``, ``"lsf"``).
    job_id_env
        Environment variable that holds the job id inside a running job.
    submit_stdin_from_script
        When True the submit command reads the job script on **stdin** (LSF ``bsub < script``);
        the caller must feed the script's content to the command's stdin.  When False the
        script path is an argument of the submit command.
    filters_server_side
        The filters of :meth:`status_command` that the built command applies itself
        (subset of ``{"job_ids", "user", "name_prefix"}``).  Callers apply
        :func:`filter_statuses` anyway; this only tells how big the output can get.
    history_max_ids
        Most job ids one :meth:`history_command` can ask about (``None``: no limit).  SGE's
        ``qacct -j`` takes one id, so callers split longer lists into chunks.
    """

    name: str = ""
    job_id_env: str = ""
    submit_stdin_from_script: bool = False
    filters_server_side: frozenset[str] = frozenset()
    history_max_ids: int | None = None

    def __init__(self, *, tz: dt.tzinfo | None = None) -> None:
        """Create an adapter.

        Parameters
        ----------
        tz
            Time zone of the scheduler's wall-clock time stamps (used only where the
            scheduler prints times without a zone).  Default: UTC.
        """
        self.tz: dt.tzinfo = tz if tz is not None else UTC

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tz={self.tz!r})"

    # -- submit -------------------------------------------------------------------------
    @abstractmethod
    def submit_command(self, script_path: str) -> list[str]:
        """Argument list that submits the job script at ``script_path`` (a path on the cluster)."""

    @abstractmethod
    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        """Parse the output of :meth:`submit_command`."""

    # -- status -------------------------------------------------------------------------
    @abstractmethod
    def status_command(
        self,
        job_ids: Sequence[str] | None = None,
        user: str | None = None,
        name_prefix: str | None = None,
    ) -> list[str]:
        """Argument list for one query of the jobs in the queue.

        ``job_ids`` restricts the query to those jobs (``None`` or empty: all jobs visible
        to the query); ``user`` and ``name_prefix`` are applied where the scheduler can (see
        :attr:`filters_server_side`).
        """

    @abstractmethod
    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse :meth:`status_command` output into ``{job_id: JobStatus}``.

        Jobs the scheduler does not know get no entry.  Raises :class:`SchedulerQueryError`
        when the query itself failed.
        """

    # -- history ------------------------------------------------------------------------
    @abstractmethod
    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """Argument list asking about jobs that left the queue, ``None`` if not possible."""

    @abstractmethod
    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse :meth:`history_command` output (same contract as :meth:`parse_status`)."""

    # -- cancel -------------------------------------------------------------------------
    @abstractmethod
    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """Argument list that cancels ``job_ids`` (must not be empty)."""

    @abstractmethod
    def parse_cancel(
        self, returncode: int, stdout: str, stderr: str, job_ids: Sequence[str] = ()
    ) -> CancelResult:
        """Parse :meth:`cancel_command` output.

        ``job_ids`` are the ids that were passed to :meth:`cancel_command`: some schedulers
        print nothing for a successful cancel, so the parser needs them to fill
        :attr:`CancelResult.cancelled`.
        """


# -- helpers for the adapters -----------------------------------------------------------


def map_state(table: Mapping[str, JobState], code: str, scheduler: str) -> JobState:
    """Look ``code`` up in a state table; unknown codes give UNKNOWN and a warning."""
    state = table.get(code)
    if state is None:
        logging.getLogger(f"queue_adapters.{scheduler}").warning(
            "%s: unknown native job state %r; treating it as UNKNOWN "
            "(please report it so it can be added to the state table)",
            scheduler,
            code,
        )
        return JobState.UNKNOWN
    return state


def epoch_to_utc(value: float) -> dt.datetime | None:
    """Epoch seconds to an aware UTC datetime; ``None`` for 0, negative or absurd values."""
    if not math.isfinite(value) or value <= 0 or value > 253402300799:
        return None
    return dt.datetime.fromtimestamp(value, tz=UTC)


def local_to_utc(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """Interpret a naive wall-clock datetime in ``tz`` and convert it to UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def signal_exit_code(code: int, signal: int) -> int:
    """Combine an exit status and a terminating signal into one shell-style exit code."""
    if signal > 0 and code == 0:
        return 128 + signal
    return code


def split_lines(text: str) -> list[str]:
    """Non-empty, right-stripped lines of ``text``."""
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]


# -- job names --------------------------------------------------------------------------

#: Longest name :func:`job_name` produces.  PBS Pro allows 236 characters, SLURM and LSF
#: more; 40 keeps names readable in ``squeue``/``qstat``/``bjobs`` listings.
MAX_JOB_NAME = 40
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,7}")
_UID_RE = re.compile(r"[A-Za-z0-9]{1,16}")
_CATEGORY_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def job_name(category: str, uid: str, prefix: str = "fwp") -> str:
    """Build the batch job name of a pilot: ``<prefix>.<category>.<uid>``.

    The name is valid for SLURM, PBS Pro/Torque, LSF and SGE: it starts with a letter, uses
    only ``[A-Za-z0-9_.-]`` and is at most :data:`MAX_JOB_NAME` characters.  The category is
    *sanitized*, not encoded: characters outside ``[A-Za-z0-9_.-]`` become ``_`` and a long
    category is truncated to fit.  The name therefore identifies the pilot (by ``uid``) and
    shows its category to a person, but the exact category must be kept by the caller (the
    manager stores it in its own records).  :func:`parse_job_name` is unambiguous because the
    uid is the part after the last ``.`` and may not contain one.

    Parameters
    ----------
    category
        The FireWorks ``_category`` the pilot serves (any non-empty text).
    uid
        Short unique id of the pilot: 1-16 characters ``[A-Za-z0-9]``.
    prefix
        Marks the jobs of this tool: 1-8 characters, a letter then letters/digits.

    Raises
    ------
    ValueError
        On an empty category, a bad uid or prefix.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"job name prefix {prefix!r} is invalid: use 1-8 letters/digits starting with a letter"
        )
    if not _UID_RE.fullmatch(uid):
        raise ValueError(f"pilot uid {uid!r} is invalid: use 1-16 characters [A-Za-z0-9]")
    if not category:
        raise ValueError("pilot category is empty: pass the FireWorks _category the pilot serves")
    room = MAX_JOB_NAME - len(prefix) - len(uid) - 2
    safe = _CATEGORY_BAD.sub("_", category)[:room]
    return f"{prefix}.{safe}.{uid}"


def parse_job_name(name: str | None, prefix: str = "fwp") -> tuple[str, str] | None:
    """Split a name made by :func:`job_name` into ``(category, uid)``.

    Returns ``None`` for any other name (another user's job, a different prefix, ``None``).
    The category is the sanitized/truncated one that is in the name.
    """
    if not name or not name.startswith(prefix + "."):
        return None
    rest = name[len(prefix) + 1 :]
    category, sep, uid = rest.rpartition(".")
    if not sep or not category or not _UID_RE.fullmatch(uid):
        return None
    if _CATEGORY_BAD.search(category):
        return None
    return category, uid


def filter_statuses(
    statuses: Mapping[str, JobStatus],
    *,
    name_prefix: str | None = None,
    user: str | None = None,
) -> dict[str, JobStatus]:
    """Keep the jobs whose name starts with ``name_prefix`` and whose owner is ``user``.

    A job whose name (or user) the output did not carry is dropped when that filter is set:
    counting someone else's job as ours is worse than missing one listing.
    """
    kept: dict[str, JobStatus] = {}
    for job_id, status in statuses.items():
        if name_prefix is not None and not (status.name or "").startswith(name_prefix):
            continue
        if user is not None and status.user != user:
            continue
        kept[job_id] = status
    return kept


def checked_ids(job_ids: Sequence[str], pattern: re.Pattern[str], scheduler: str) -> list[str]:
    """The job ids as strings, each checked against ``pattern`` before it becomes a command argument.

    Raises ``ValueError("not a <scheduler> job id: ...")`` for anything else (an option-like or empty string
    must never reach an argument list).
    """
    ids = [str(j).strip() for j in job_ids]
    for jid in ids:
        if not pattern.match(jid):
            raise ValueError(f"not a {scheduler} job id: {jid!r}")
    return ids


def unique(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, in their first order."""
    return list(dict.fromkeys(items))


# -- exit-code file ---------------------------------------------------------------------


def exit_file_name(job_id: str) -> str:
    """File name (no directory) of the exit-code file the pilot script writes for ``job_id``.

    The pilot script writes ``<work_dir>/pilot-<jobid>.exit`` using the scheduler's job id
    variable (:attr:`QueueAdapter.job_id_env`); ``/`` and NUL cannot appear in a file name
    and become ``_``; a federated SLURM id ``123;cluster`` is the file of ``123``.
    """
    if not job_id:
        raise ValueError("job id is empty")
    job_id = job_id.split(";", 1)[0]  # a federated SLURM id: the job sees only its number
    return "pilot-" + job_id.replace("/", "_").replace("\0", "_") + ".exit"


_EXIT_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(\S*)\s*$")


def parse_exit_file(text: str, job_id: str) -> JobStatus | None:
    """Read the pilot's exit-code file.

    The file has ``key=value`` lines; ``exit_code=<int>`` is required, ``end_time=<epoch
    seconds>`` optional; other lines are ignored.  Exit code 0 gives COMPLETED, anything else
    FAILED.  Returns ``None`` (never raises) for text that is not such a file: empty, cut
    short while being written, or garbage.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _EXIT_LINE.match(line)
        if match:
            values[match.group(1).lower()] = match.group(2)
    raw_code = values.get("exit_code")
    if raw_code is None or not re.fullmatch(r"-?\d{1,6}", raw_code):
        return None
    code = int(raw_code)
    end_time = None
    raw_end = values.get("end_time")
    if raw_end is not None:
        try:
            end_time = epoch_to_utc(float(raw_end))
        except ValueError:
            end_time = None
    return JobStatus(
        job_id=job_id,
        state=JobState.COMPLETED if code == 0 else JobState.FAILED,
        native_state="EXITFILE",
        exit_code=code,
        end_time=end_time,
    )


def first_match(patterns: Iterable[tuple[re.Pattern[str], object]], text: str) -> object | None:
    """Return the value paired with the first pattern that matches ``text``."""
    for pattern, value in patterns:
        if pattern.search(text):
            return value
    return None
