"""SLURM adapter: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` (pure: argv builders and parsers).

Commands built here
-------------------
* submit: ``sbatch --parsable SCRIPT`` prints ``<id>`` or ``<id>;<cluster>``.
* status: ``env SLURM_TIME_FORMAT=%s squeue --noheader --array --states=all
  --format=%i|%T|%r|%u|%V|%S|%e|%j [-j IDS] [-u USER]``.  ``SLURM_TIME_FORMAT=%s`` (a
  strftime format, see ``man squeue``) makes every time stamp epoch seconds, so times are
  unambiguous whatever the cluster's time zone or the user's own ``SLURM_TIME_FORMAT``.
  ``--array`` prints one line per array task, ``--states=all`` keeps jobs that finished in
  the last ``MinJobAge`` seconds.  The job name is the **last** field, so a name that
  contains the ``|`` delimiter cannot shift the other columns.
* history: ``env SLURM_TIME_FORMAT=%s sacct -P -X -n -o
  JobID,State,ExitCode,Submit,Start,End,Reason,User,JobName -j IDS`` (``-X``: allocations
  only, no ``.batch``/``.extern`` steps; ``-P``: ``|``-separated without a trailing ``|``;
  JobName last for the same reason as above).
* federated ids: ``sbatch`` on a multi-cluster or federated site (``#SBATCH -M other``, ``SLURM_CLUSTERS``)
  prints ``<id>;<cluster>``. The id is kept whole, and every later query names the cluster: ``squeue -M
  CLUSTERS`` (without ``--noheader``: the ``CLUSTER: name`` lines say which cluster each job is on),
  ``sacct -M CLUSTERS -o Cluster,...``, ``scancel -M CLUSTER``. Without it the job is missing from the plain
  listing, and a pilot that runs looks gone.
* accounting: ``env SLURM_TIME_FORMAT=%s sacct -P -X -n -o
  JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End,State -j IDS``: what each job is charged
  (``CPUTimeRAW`` = AllocCPUS x ElapsedRaw, see :mod:`queue_adapters.accounting`).
* cancel: ``scancel -v IDS``.  ``-v`` makes scancel name every job it works on
  (``scancel: Terminating job N``) and report per job why it could not
  (``Kill job error on job id N: ...``); without it, Slurm 22.05 prints nothing at all for
  an unknown or finished job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence

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
    epoch_to_utc,
    local_to_utc,
    map_state,
    output_tail,
    signal_exit_code,
    split_lines,
    unique,
)

__all__ = ["SLURM_SHORT_STATES", "SLURM_STATES", "SlurmAdapter"]

# Job state codes.  Sources:
#   squeue(1) "JOB STATE CODES": https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES
#   sacct(1) "JOB STATE CODES":  https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES
#   job state overview:          https://slurm.schedmd.com/job_state_codes.html
# A PENDING job whose reason is JobHeldUser/JobHeldAdmin is reported as HELD (see
# _HELD_REASONS).  sacct appends the canceller's uid ("CANCELLED by 1001"); only the first
# word is looked up.
SLURM_STATES: dict[str, JobState] = {
    "BOOT_FAIL": JobState.NODE_FAIL,  # terminated: launch failure, typically hardware
    "CANCELLED": JobState.CANCELLED,  # cancelled by the user or an administrator
    "COMPLETED": JobState.COMPLETED,  # all processes finished with exit code 0
    "CONFIGURING": JobState.PENDING,  # allocated, nodes still booting/being configured
    "COMPLETING": JobState.COMPLETING,  # ending, some processes may still be active
    "DEADLINE": JobState.TIMEOUT,  # terminated on its --deadline
    "FAILED": JobState.FAILED,  # non-zero exit code or other failure
    "NODE_FAIL": JobState.NODE_FAIL,  # terminated: failure of an allocated node
    "OUT_OF_MEMORY": JobState.FAILED,  # out of memory
    "PENDING": JobState.PENDING,  # awaiting resources
    "PREEMPTED": JobState.CANCELLED,  # terminated by preemption (not the job's fault)
    "RUNNING": JobState.RUNNING,
    "RESV_DEL_HOLD": JobState.HELD,  # held because its reservation was deleted
    "REQUEUE_FED": JobState.PENDING,  # being requeued by a federation
    "REQUEUE_HOLD": JobState.HELD,  # requeued and held
    "REQUEUED": JobState.PENDING,  # being requeued
    "RESIZING": JobState.RUNNING,  # about to change size
    "REVOKED": JobState.CANCELLED,  # federation sibling removed: it runs on another cluster
    "SIGNALING": JobState.COMPLETING,  # being signaled
    "SPECIAL_EXIT": JobState.HELD,  # requeued in a special (held) state by the site
    "STAGE_OUT": JobState.COMPLETING,  # staging out data (burst buffer)
    "STOPPED": JobState.SUSPENDED,  # stopped with SIGSTOP, keeps its allocation
    "SUSPENDED": JobState.SUSPENDED,
    "TIMEOUT": JobState.TIMEOUT,  # reached its time limit
}

# The compact codes printed by squeue %t (same man page sections as above).
SLURM_SHORT_STATES: dict[str, JobState] = {
    "BF": JobState.NODE_FAIL,
    "CA": JobState.CANCELLED,
    "CD": JobState.COMPLETED,
    "CF": JobState.PENDING,
    "CG": JobState.COMPLETING,
    "DL": JobState.TIMEOUT,
    "F": JobState.FAILED,
    "NF": JobState.NODE_FAIL,
    "OOM": JobState.FAILED,
    "PD": JobState.PENDING,
    "PR": JobState.CANCELLED,
    "R": JobState.RUNNING,
    "RD": JobState.HELD,
    "RF": JobState.PENDING,
    "RH": JobState.HELD,
    "RQ": JobState.PENDING,
    "RS": JobState.RUNNING,
    "RV": JobState.CANCELLED,
    "SI": JobState.COMPLETING,
    "SE": JobState.HELD,
    "SO": JobState.COMPLETING,
    "ST": JobState.SUSPENDED,
    "S": JobState.SUSPENDED,
    "TO": JobState.TIMEOUT,
}

_ALL_STATES: dict[str, JobState] = {**SLURM_STATES, **SLURM_SHORT_STATES}

# Pending reasons that mean "held" (squeue(1), JOB REASON CODES).
_HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})

_SQUEUE_FORMAT = "%i|%T|%r|%u|%V|%S|%e|%j"
#: Meaning of the columns of :data:`_SQUEUE_FORMAT` (see SlurmAdapter.parse_squeue_table).
SQUEUE_COLUMNS: tuple[str | None, ...] = (
    "job_id", "state", "reason", "user", "submit", "start", "end", "name")
_SACCT_FIELDS = "JobID,State,ExitCode,Submit,Start,End,Reason,User,JobName"
#: The accounting query's fields (:meth:`SlurmAdapter.accounting_command`) and their meanings.
_ACCT_FIELDS = "JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End,State"
_ACCT_COLUMNS = ("job_id", "account", "cpus", "elapsed", "core_seconds", "submit", "start", "end", "state")
#: Meaning of the columns of :data:`_SACCT_FIELDS`.
SACCT_COLUMNS: tuple[str | None, ...] = (
    "job_id", "state", "exit_code", "submit", "start", "end", "reason", "user", "name")

# Header names printed by squeue -O / sacct (upper-cased) and what they mean here.
_HEADER_COLUMNS = {
    "JOBID": "job_id", "JOBIDRAW": None, "STATE": "state", "ST": "state", "REASON": "reason",
    "NODELIST(REASON)": "reason_or_nodes", "USER": "user", "NAME": "name", "JOBNAME": "name",
    "SUBMIT_TIME": "submit", "SUBMIT": "submit", "START_TIME": "start", "START": "start",
    "END_TIME": "end", "END": "end", "EXITCODE": "exit_code", "EXIT_CODE": "exit_code",
}

# 123, 123_4, 123_[5-10], 123_[2-4%1], 123+0 (heterogeneous job component)
_JOB_ID_RE = re.compile(r"^\d+(?:_(?:\d+|\[[0-9,\-%:]+\]))?(?:\+\d+)?$")
_SUBMIT_RE = re.compile(r"^(\d+)(?:;(\S+))?$")
_EMPTY_TIMES = frozenset({"", "N/A", "NONE", "None", "Unknown", "(null)", "INVALID"})

# sbatch errors.  Message texts from src/common/slurm_errno.c
# (https://github.com/SchedMD/slurm/blob/master/src/common/slurm_errno.c) and the captures in
# tests/fixtures/scheduler/slurm.yaml.  Order matters: the first match decides.
_UNKNOWN_SUBMIT = (
    # The request may have reached slurmctld and the answer got lost: the job may exist.
    re.compile(r"Socket timed out on send/recv", re.IGNORECASE),
    re.compile(r"Zero Bytes were transmitted or received", re.IGNORECASE),
    re.compile(r"Unable to contact slurm controller \((?:receive|shutdown) failure\)", re.IGNORECASE),
    re.compile(r"Connection timed out reading", re.IGNORECASE),
)
_RETRYABLE_SUBMIT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Unable to contact slurm controller \((?:connect|send) failure\)", re.IGNORECASE),
     "the SLURM controller is unreachable; it will be tried again"),
    (re.compile(r"Slurm temporarily unable to accept job", re.IGNORECASE),
     "slurmctld is busy; it will be tried again"),
    (re.compile(r"Rate limit exceeded", re.IGNORECASE), "slurmctld rate limit; it will be tried again"),
    (re.compile(r"MaxJobCount limit reached", re.IGNORECASE),
     "the cluster holds as many jobs as it can (MaxJobCount); it will be tried again"),
    (re.compile(r"(?:QOS|Assoc)MaxSubmitJob|MaxSubmitJobs?PerUser|(?:QOS|Assoc)Grp\w*Limit|"
                r"QOSGrp|AssocGrp", re.IGNORECASE),
     "a submit/group limit of the account or QOS is reached; it frees up as jobs finish"),
    (re.compile(r"Connection refused|Connection timed out establishing", re.IGNORECASE),
     "the SLURM controller is unreachable; it will be tried again"),
)
_PERMANENT_SUBMIT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Invalid partition name|invalid partition specified", re.IGNORECASE),
     "fix the partition in the cluster configuration ('sinfo -s' lists the partitions)"),
    (re.compile(r"Invalid account or account/partition combination", re.IGNORECASE),
     ("fix the account (or the account/partition pair) in the cluster configuration "
      "('sacctmgr show assoc user=$USER format=account,partition,qos' lists what you may use)")),
    (re.compile(r"Invalid qos specification", re.IGNORECASE),
     "fix the QOS in the cluster configuration ('sacctmgr show assoc user=$USER format=qos')"),
    (re.compile(r"Requested time limit is invalid|Invalid --time specification|timelimit exceeds",
                re.IGNORECASE),
     "lower the pilot wall time to what the partition/QOS allows ('sinfo -o \"%P %l\"')"),
    (re.compile(r"Job violates accounting/QOS policy", re.IGNORECASE),
     ("the request breaks an account/QOS limit (size or time); lower the wall time or size, "
      "or use another QOS/account")),
    (re.compile(r"Requested node configuration is not available|More processors requested "
                r"than permitted|Node count specification invalid|Memory required by task",
                re.IGNORECASE),
     "the requested nodes/CPUs/memory do not exist in that partition; lower the request"),
    (re.compile(r"Unable to open file", re.IGNORECASE),
     "the job script is missing on the cluster; check the work directory and the upload"),
    (re.compile(r"Access/permission denied|not permitted to use this partition|"
                r"Access denied to requested reservation", re.IGNORECASE),
     "this user may not submit there; check partition, reservation and account"),
)
_TRANSIENT_QUERY = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection refused|"
    r"Connection timed out|Zero Bytes were transmitted|Rate limit exceeded|"
    r"Slurm backup controller in standby mode|Problem talking to the database|"
    r"persistent connection|slurmdbd|Resource temporarily unavailable|Communication connection",
    re.IGNORECASE,
)
_INVALID_JOB_ID = re.compile(r"Invalid job id specified", re.IGNORECASE)
_KILL_ERROR = re.compile(r"Kill job error on job id (\S+?):\s*(.*)$")
_TERMINATING = re.compile(r"scancel: (?:Terminating|Signal \d+ to) (?:batch )?job (\S+)")
_BAD_ID = re.compile(r"scancel: error: Invalid job id (\S+)")


class SlurmAdapter(QueueAdapter):
    """Adapter for SLURM (tested against Slurm 22.05 here and outputs of older/newer versions)."""

    name = "slurm"
    job_id_env = "SLURM_JOB_ID"
    submit_stdin_from_script = False
    filters_server_side = frozenset({"job_ids", "user"})

    # -- submit -------------------------------------------------------------------------
    def submit_command(self, script_path: str) -> list[str]:
        """``sbatch --parsable SCRIPT``."""
        if not script_path:
            raise ValueError("script path is empty")
        return ["sbatch", "--parsable", script_path]

    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        """Parse ``sbatch --parsable`` output.

        ``<id>`` or ``<id>;<cluster>`` on the last stdout line means SUBMITTED.  Errors are
        classified by their message: configuration errors are not retryable, an unreachable
        or busy controller and submit limits are, and a socket timeout (the job may have been
        created) is UNKNOWN.
        """
        lines = split_lines(stdout)
        if returncode == 0 and lines:
            match = _SUBMIT_RE.match(lines[-1].strip())
            if match:
                # a federated id keeps its cluster: the queries need it (-M)
                return SubmitResult(SubmitOutcome.SUBMITTED, job_id=match.group(0))
        text = f"{stderr}\n{stdout}"
        tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
        if returncode < 0 or any(p.search(text) for p in _UNKNOWN_SUBMIT):
            return SubmitResult(
                SubmitOutcome.UNKNOWN,
                reason=f"sbatch may or may not have created the job (exit status {returncode}): "
                f"{tail!r}. Do not resubmit blindly: look for the pilot by its job name.",
            )
        if returncode == 0:
            return SubmitResult(
                SubmitOutcome.UNKNOWN,
                reason=f"sbatch exited 0 but printed no job id: {tail!r}. The job may exist; "
                "look for the pilot by its job name.",
            )
        # Retryable causes are checked first: "Job violates accounting/QOS policy" is the
        # generic last line of both permanent and retryable limit messages, so the specific
        # line before it (QOSMaxSubmitJobPerUserLimit, ...) must decide.
        for pattern, hint in _RETRYABLE_SUBMIT:
            if pattern.search(text):
                return SubmitResult(
                    SubmitOutcome.FAILED, reason=f"sbatch failed: {tail!r}; {hint}", retryable=True
                )
        for pattern, hint in _PERMANENT_SUBMIT:
            if pattern.search(text):
                return SubmitResult(
                    SubmitOutcome.FAILED, reason=f"sbatch rejected the job: {tail!r}; {hint}",
                    retryable=False,
                )
        return SubmitResult(
            SubmitOutcome.FAILED,
            reason=f"sbatch failed (exit status {returncode}): {tail!r}; run the same sbatch "
            "by hand on the cluster to see the full error",
            retryable=False,
        )

    # -- status -------------------------------------------------------------------------
    def status_command(
        self,
        job_ids: Sequence[str] | None = None,
        user: str | None = None,
        name_prefix: str | None = None,
    ) -> list[str]:
        """``squeue`` with a fixed format; ``-j`` and ``-u`` when given.

        squeue cannot filter by name prefix (``--name`` matches whole names), so
        ``name_prefix`` is not used here: filter the result with
        :func:`queue_adapters.base.filter_statuses`.
        """
        plain, clusters = split_federated(job_ids or ())
        if clusters:
            # all the user's jobs on those clusters; the CLUSTER: lines (no --noheader) tell them apart
            argv = ["env", "SLURM_TIME_FORMAT=%s", "squeue", "-M", ",".join(clusters), "--array",
                    "--states=all", f"--format={_SQUEUE_FORMAT}"]
            return argv + (["-u", user] if user else [])
        argv = ["env", "SLURM_TIME_FORMAT=%s", "squeue", "--noheader", "--array", "--states=all",
                f"--format={_SQUEUE_FORMAT}"]
        if job_ids:
            argv += ["-j", ",".join(_checked_ids(plain))]
        if user:
            argv += ["-u", user]
        return argv

    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse the squeue output built by :meth:`status_command`.

        * ``slurm_load_jobs error: Invalid job id specified`` (exit 1, a single unknown id)
          means the job left the queue: no entry, no error.
        * Any other error (exit status not 0, or an error on stderr such as a socket
          timeout after a ``CLUSTER:`` header) raises :class:`SchedulerQueryError`.
        * Lines that are not job lines (site banners, ``CLUSTER: x`` headers) are skipped.
        """
        return self.parse_squeue_table(returncode, stdout, stderr, columns=SQUEUE_COLUMNS,
                                       delimiter="|")

    def parse_squeue_table(
        self,
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        columns: Sequence[str | None] | None = None,
        delimiter: str | None = "|",
        trailing: bool = False,
    ) -> dict[str, JobStatus]:
        """Parse delimiter-separated squeue output with the given column meanings.

        :meth:`parse_status` uses it with this adapter's own format; it also reads other
        ``squeue -o``/``-O`` layouts (tests feed it outputs recorded by other projects).

        Parameters
        ----------
        columns
            Meaning of each column: ``"job_id"``, ``"state"``, ``"reason"``,
            ``"reason_or_nodes"`` (``%R``: a reason in parentheses or a node list),
            ``"user"``, ``"name"``, ``"submit"``, ``"start"``, ``"end"``, ``"exit_code"``,
            or ``None`` to ignore.  ``None`` (the argument) means the output starts with a
            header line whose names give the columns (``squeue -O``).
        delimiter
            Column separator.  When a line has more columns than expected, the surplus is
            given back to the ``name`` column (a job name may contain the delimiter).
            ``None``: whitespace-separated columns (squeue's default listing); the last
            column takes the rest of the line.
        trailing
            Every line (and the header) ends with the delimiter (``-O "Field:|"``).
        """
        self._check_query("squeue", returncode, stdout, stderr)
        lines = split_lines(stdout)
        if columns is None:
            lines = [line for line in lines if not line.startswith("CLUSTER: ")]
            if not lines:
                return {}
            columns = columns_from_header(lines[0], delimiter)
            lines = lines[1:]
        result: dict[str, JobStatus] = {}
        cluster: str | None = None
        for line in lines:
            if line.startswith("CLUSTER: "):
                cluster = line[len("CLUSTER: "):].strip() or None
                continue
            row = _split_row(line, delimiter, columns, trailing)
            if row is None or not _JOB_ID_RE.match(row.get("job_id", "").strip()):
                continue
            _add_status(result, self._row_status(row), cluster)
        return result

    # -- history ------------------------------------------------------------------------
    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """``sacct -P -X -n -o ... -j IDS`` (``None`` for an empty list)."""
        if not job_ids:
            return None
        plain, clusters = split_federated(job_ids)
        if clusters:
            # Cluster first: a federated id is only unique with its cluster
            return ["env", "SLURM_TIME_FORMAT=%s", "sacct", "-M", ",".join(clusters), "-P", "-X", "-n", "-o",
                    f"Cluster,{_SACCT_FIELDS}", "-j", ",".join(_checked_ids(plain))]
        return ["env", "SLURM_TIME_FORMAT=%s", "sacct", "-P", "-X", "-n", "-o", _SACCT_FIELDS,
                "-j", ",".join(_checked_ids(plain))]

    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        """Parse the sacct output built by :meth:`history_command`.

        ``ExitCode`` is ``code:signal``: ``0:15`` becomes exit code 143 (128 + 15).  An id
        sacct does not know prints nothing.  When an id appears several times the record
        submitted last wins: job ids are reused when slurmctld starts again without its saved
        state, and sacct then lists every job that ever had the id; for equal submit times (a
        requeued job) the later line wins.  Note: for a few seconds after a pending job is
        cancelled, Slurm 22.05 reports it with JobName ``allocation`` and User ``root``
        (fixture ``cap-sacct-just-cancelled``); the state is already right.  Job steps (``123.batch``)
        are skipped.  Accounting errors (slurmdbd down) raise :class:`SchedulerQueryError`;
        "accounting storage is disabled" is not retryable.
        """
        return self.parse_sacct_table(returncode, stdout, stderr, columns=SACCT_COLUMNS,
                                      delimiter="|")

    def parse_sacct_table(
        self,
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        columns: Sequence[str | None],
        delimiter: str | None = "|",
        trailing: bool = False,
    ) -> dict[str, JobStatus]:
        """Parse ``sacct --parsable[2] --noheader`` output with the given column meanings.

        Same column names as :meth:`parse_squeue_table` (``"exit_code"`` is sacct's
        ``code:signal``); ``trailing=True`` for ``--parsable`` (a ``|`` ends every line),
        False for ``-P``/``--parsable2``.  Used by :meth:`parse_history` with this adapter's
        own format.
        """
        if re.search(r"accounting storage is disabled", stderr, re.IGNORECASE):
            raise SchedulerQueryError(
                "SLURM accounting is disabled on this cluster, so finished jobs cannot be looked "
                "up with sacct; the manager falls back to the pilots' exit-code files",
                command="sacct", returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=False,
            )
        self._check_query("sacct", returncode, stdout, stderr)
        result: dict[str, JobStatus] = {}
        for line in split_lines(stdout):
            cluster, line = _cluster_column(line, delimiter)
            row = _split_row(line, delimiter, columns, trailing)
            if row is None or not _JOB_ID_RE.match(row.get("job_id", "").strip()):
                continue  # job steps (123.batch, 123.0) and junk
            status = self._row_status(row)
            if cluster:
                status = dataclasses.replace(status, job_id=f"{status.job_id};{cluster}")
            previous = result.get(status.job_id)
            if previous is not None and _older(status, previous):
                continue
            result[status.job_id] = status
        return result

    # -- accounting ---------------------------------------------------------------------
    #: most ids in one accounting query (the manager splits longer lists)
    accounting_max_ids = 200

    def accounting_command(self, job_ids: Sequence[str]) -> list[str] | None:
        """``env SLURM_TIME_FORMAT=%s sacct -P -X -n -o JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,
        Start,End,State -j IDS`` (``-M CLUSTERS`` and ``Cluster`` first for federated ids); None for no ids."""
        if not job_ids:
            return None
        plain, clusters = split_federated(job_ids)
        ids = ",".join(_checked_ids(plain))
        if clusters:
            return ["env", "SLURM_TIME_FORMAT=%s", "sacct", "-M", ",".join(clusters), "-P", "-X", "-n", "-o",
                    f"Cluster,{_ACCT_FIELDS}", "-j", ids]
        return ["env", "SLURM_TIME_FORMAT=%s", "sacct", "-P", "-X", "-n", "-o", _ACCT_FIELDS, "-j", ids]

    def parse_accounting(self, returncode: int, stdout: str, stderr: str) -> dict[str, Usage]:
        """Parse :meth:`accounting_command` output into ``{job_id: Usage}``.

        ``core_seconds`` is ``CPUTimeRAW`` as printed (AllocCPUS x ElapsedRaw, what the site bills); a running
        job's numbers grow until it ends (``final`` once its state is final). An empty ``Account`` (no
        association) is None. A job id sacct lists several times (ids reused after slurmctld lost its state)
        is the one submitted last, as in :meth:`parse_history`. Failures raise as for :meth:`parse_history`.
        """
        if re.search(r"accounting storage is disabled", stderr, re.IGNORECASE):
            raise SchedulerQueryError(
                "SLURM accounting is disabled on this cluster: no core-hours to read with sacct",
                command="sacct", returncode=returncode, stdout=stdout, stderr=stderr, retryable=False)
        self._check_query("sacct", returncode, stdout, stderr)
        result: dict[str, Usage] = {}
        submitted: dict[str, float] = {}
        for line in split_lines(stdout):
            cluster, line = _cluster_column(line, "|")
            parts = line.split("|")
            if len(parts) != len(_ACCT_COLUMNS):
                continue
            row = dict(zip(_ACCT_COLUMNS, (p.strip() for p in parts), strict=True))
            usage = self._usage(row)
            if usage is None:
                continue  # job steps (123.batch) and junk
            if cluster:
                usage = dataclasses.replace(usage, job_id=f"{usage.job_id};{cluster}")
            sub = self._time(row["submit"])
            when = sub.timestamp() if sub else 0.0
            if usage.job_id in submitted and when < submitted[usage.job_id]:
                continue
            submitted[usage.job_id] = when
            result[usage.job_id] = usage
        return result

    def _usage(self, row: dict[str, str]) -> Usage | None:
        if not _JOB_ID_RE.match(row["job_id"]):
            return None
        cpus, elapsed, core = (duration_seconds(row[k]) for k in ("cpus", "elapsed", "core_seconds"))
        if cpus is None or elapsed is None or core is None:
            return None
        native = row["state"].split()[0] if row["state"].split() else ""
        final = map_state(_ALL_STATES, native, "slurm").final
        return Usage(job_id=row["job_id"], cpus=cpus, seconds=elapsed, core_seconds=core,
                     account=row["account"] or None, start=self._time(row["start"]),
                     end=self._time(row["end"]) if final else None, final=final)

    # -- cancel -------------------------------------------------------------------------
    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``scancel -v IDS``."""
        plain, clusters = split_federated(job_ids)
        ids = _checked_ids(plain)
        if not ids:
            raise ValueError("no job ids to cancel")
        if len(clusters) > 1:
            raise ValueError(f"federated jobs of several clusters ({', '.join(clusters)}): cancel them one "
                             "cluster at a time (scancel -M takes the same ids on every cluster it names)")
        return ["scancel", "-v", *(["-M", clusters[0]] if clusters else []), *ids]

    def parse_cancel(
        self, returncode: int, stdout: str, stderr: str, job_ids: Sequence[str] = ()
    ) -> CancelResult:
        """Parse ``scancel -v`` output.

        "Invalid job id specified" and "Job/step already completing or completed" mean the
        job is already gone (scancel may even exit 0 for them); "Access/permission denied"
        and malformed ids are failures that retrying will not fix; an unreachable controller
        is a retryable failure.  The exit status is not trusted (0 and 210 are both seen for
        permission errors).
        """
        requested = list(job_ids)
        gone: list[str] = []
        failed: dict[str, str] = {}
        retryable = False
        mentioned: list[str] = []
        for line in split_lines(f"{stderr}\n{stdout}"):
            kill = _KILL_ERROR.search(line)
            if kill:
                jid, message = kill.group(1), kill.group(2).strip()
                if re.search(r"Invalid job id specified|already completing or completed|"
                             r"Job has already finished", message, re.IGNORECASE):
                    gone.append(jid)
                else:
                    failed[jid] = message
                    if _TRANSIENT_QUERY.search(message):
                        retryable = True
                continue
            bad = _BAD_ID.search(line)
            if bad:
                failed[bad.group(1)] = "malformed job id"
                continue
            term = _TERMINATING.search(line)
            if term:
                mentioned.append(term.group(1))
                continue
            if "error" in line.lower():
                failed.setdefault("*", line.strip())
                if _TRANSIENT_QUERY.search(line):
                    retryable = True
        candidates = requested or mentioned
        cancelled = [j for j in _unique(candidates) if j not in gone and j not in failed]
        if "*" in failed:
            # A general error (not tied to one id): nothing is known to be cancelled.
            cancelled = []
        ok = not failed
        reason = None
        if failed:
            detail = "; ".join(f"{j}: {m}" for j, m in failed.items())
            hint = ("the controller is unreachable, try again later" if retryable
                    else "check the job ids and that they belong to this user")
            reason = f"scancel failed for {detail} ({hint})"
        return CancelResult(ok=ok, cancelled=cancelled, already_gone=_unique(gone), reason=reason,
                            retryable=retryable and not ok)

    # -- internals ----------------------------------------------------------------------
    def _check_query(self, command: str, returncode: int, stdout: str, stderr: str) -> None:
        errors = [line for line in split_lines(stderr) if re.search(r"error", line, re.IGNORECASE)]
        real = [line for line in errors if not _INVALID_JOB_ID.search(line)]
        if real:
            raise SchedulerQueryError(
                f"{command} failed",
                command=command, returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=any(_TRANSIENT_QUERY.search(line) for line in real),
            )
        if returncode != 0 and not errors:
            raise SchedulerQueryError(
                f"{command} exited with status {returncode}",
                command=command, returncode=returncode, stdout=stdout, stderr=stderr,
                retryable=returncode < 0 or bool(_TRANSIENT_QUERY.search(stderr)),
            )

    def _row_status(self, row: dict[str, str]) -> JobStatus:
        job_id = row["job_id"].strip()
        native = row.get("state", "").strip()
        reason = row.get("reason", "").strip()
        if "reason_or_nodes" in row and not reason:
            value = row["reason_or_nodes"].strip()
            if value.startswith("(") and value.endswith(")"):
                reason = value[1:-1]
        code = native.split()[0] if native.split() else native
        state = map_state(_ALL_STATES, code, "slurm")
        if state is JobState.PENDING and reason in _HELD_REASONS:
            state = JobState.HELD
        exit_code = _exit_code(row["exit_code"]) if "exit_code" in row else None
        name = row.get("name")
        user = row.get("user", "").strip()
        return JobStatus(
            job_id=job_id,
            state=state,
            native_state=native,
            name=name if name else None,
            reason=None if reason in _EMPTY_TIMES else reason,
            exit_code=exit_code if state.final else None,
            submit_time=self._time(row.get("submit", "")),
            start_time=self._time(row.get("start", "")) if state.order >= 2 else None,
            end_time=self._time(row.get("end", "")) if state.final else None,
            user=user or None,
        )

    def _time(self, text: str) -> dt.datetime | None:
        text = text.strip()
        if text in _EMPTY_TIMES:
            return None
        if re.fullmatch(r"\d{1,12}", text):
            return epoch_to_utc(float(text))
        try:
            return local_to_utc(dt.datetime.fromisoformat(text), self.tz)
        except ValueError:
            return None  # relative formats such as "4 Sep 11:18" carry no year


def _older(new: JobStatus, old: JobStatus) -> bool:
    """True when ``new`` was submitted before ``old`` (a job id reused after slurmctld lost its
    state: sacct then lists every job that ever had the id; the latest one is ours)."""
    if new.submit_time is None or old.submit_time is None:
        return False
    return new.submit_time < old.submit_time


def _exit_code(text: str) -> int | None:
    """sacct ``ExitCode`` ``code:signal`` to one shell-style code (``0:15`` -> 143).

    Only 1-64 count as signals: Slurm reports out-of-memory kills as ``0:125``, which is
    not a signal number, so such a job keeps exit code 0 (its state says OUT_OF_MEMORY).
    """
    match = re.fullmatch(r"\s*(-?\d+):(\d+)\s*", text)
    if not match:
        return None
    code, signal = int(match.group(1)), int(match.group(2))
    return signal_exit_code(code, signal if 1 <= signal <= 64 else 0)


def columns_from_header(header: str, delimiter: str | None) -> list[str | None]:
    """Column meanings from a squeue/sacct header line.

    When a name repeats, the **last** column with that name is used: ``squeue -O
    JobID,...,JobArrayID`` prints the header ``JOBID`` twice, and only the second one
    (``JobArrayID``) tells array tasks apart (``31_1``, ``31_2``; ``JobID`` prints ``31`` for
    both while they are pending).
    """
    if delimiter is not None and header.endswith(delimiter):
        header = header[: -len(delimiter)]
    names = [n.strip().upper() for n in header.split(delimiter)]
    columns: list[str | None] = []
    for n in names:
        key = _HEADER_COLUMNS.get(n)
        if key is not None and key in columns:
            columns[columns.index(key)] = None
        columns.append(key)
    return columns


def _split_row(
    line: str, delimiter: str | None, columns: Sequence[str | None], trailing: bool
) -> dict[str, str] | None:
    """Split one delimited line into ``{column: value}``; ``None`` if it cannot be a row.

    ``trailing``: every line ends with the delimiter (``sacct --parsable``, ``squeue -O
    "Field:|"``).  When a line has more columns than expected, the surplus is given back to
    the ``name`` column: a job name may contain the delimiter.  ``delimiter=None`` splits
    fixed-width listings on whitespace; the last column takes the rest of the line.
    """
    n = len(columns)
    if delimiter is None:
        parts = line.split(None, n - 1)
        if len(parts) != n:
            return None
        return {key: value for key, value in zip(columns, parts, strict=True) if key is not None}
    if trailing:
        if not line.endswith(delimiter):
            return None
        line = line[: -len(delimiter)]
    parts = line.split(delimiter)
    if len(parts) > n and "name" in columns:
        extra = len(parts) - n
        i = columns.index("name")
        parts[i : i + extra + 1] = [delimiter.join(parts[i : i + extra + 1])]
    if len(parts) != n:
        return None
    return {key: value for key, value in zip(columns, parts, strict=True) if key is not None}


_ID_ARG_RE = re.compile(r"^[0-9][0-9_\[\]\-,%+]*$")


def _checked_ids(job_ids: Sequence[str]) -> list[str]:
    return checked_ids(job_ids, _ID_ARG_RE, "SLURM")


_CLUSTER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def split_federated(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ids without their ``;cluster`` part, and the clusters named (sorted, once each)."""
    plain, clusters = [], set()
    for jid in job_ids:
        head, sep, cluster = jid.partition(";")
        plain.append(head)
        if sep:
            if not _CLUSTER_RE.match(cluster):
                raise ValueError(f"job id {jid!r}: {cluster!r} is not a SLURM cluster name")
            clusters.add(cluster)
    return plain, sorted(clusters)


def _add_status(result: dict[str, JobStatus], status: JobStatus, cluster: str | None) -> None:
    """File a listed job under its id, and under ``id;cluster`` below a ``CLUSTER:`` line (a job listed in a
    plain listing that prints those lines anyway keeps its plain id too, unless another cluster has it)."""
    if cluster is None:
        result[status.job_id] = status
        return
    result[f"{status.job_id};{cluster}"] = dataclasses.replace(status, job_id=f"{status.job_id};{cluster}")
    result.setdefault(status.job_id, status)


def _cluster_column(line: str, delimiter: str | None) -> tuple[str | None, str]:
    """``Cluster|JobID|...`` (the federated history command) -> (cluster, ``JobID|...``); other lines as
    they are."""
    if not delimiter:
        return None, line
    head, sep, rest = line.partition(delimiter)
    if sep and _CLUSTER_RE.match(head) and _JOB_ID_RE.match(rest.partition(delimiter)[0].strip()):
        return head, rest
    return None, line


_unique = unique
