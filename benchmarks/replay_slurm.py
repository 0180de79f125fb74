"""A simulated SLURM cluster for the replay benchmark: a job table on a virtual clock that answers the commands
the manager runs (``sbatch``, ``squeue``, ``sacct``, ``scancel``, ``cat`` of an exit-code file) with exactly
the text the real programs print, so that the manager's real SLURM adapter parses every answer.

Why a simulation and not the test clusters: 20,000 segments of hours each would take weeks of real pilots;
with segments of seconds the campaign would be dominated by job start-up and SLURM's one-minute time-limit
tick (benchmarks/README.md, the waste benchmark). Here the manager, its policy and the LaunchPad are real and
only the batch system is modelled, on a clock the benchmark advances.

What is modelled, and where the text comes from:

* ``sbatch --parsable PATH`` reads the job script the manager uploaded (``put``) and takes from it what the
  real sbatch takes: ``#SBATCH --job-name`` and ``--time`` (SLURM's time formats); and what the real job
  would do with it: the worker's ``--margin``, ``--idle-timeout`` and ``--heartbeat`` arguments. It prints
  ``<id>`` (fixture ``cap-sbatch-ok``).
* each job waits a queue wait drawn from the cluster's distribution (other users' work, which is not
  modelled otherwise), then starts first come first served when one of the cluster's ``capacity`` slots is
  free; it runs until its worker leaves or the time limit (TIMEOUT) or its node fails (NODE_FAIL).
* ``squeue`` prints the format of :mod:`queue_adapters.slurm` with ``SLURM_TIME_FORMAT=%s`` (fixtures
  ``cap-squeue-user``, ``cap-squeue-one``, ``cap-squeue-unknown-id``), and keeps ended jobs for
  ``MinJobAge`` (300 s, SLURM's default) as ``--states=all`` does;
* ``sacct -P -X -n -o JobID,State,...`` prints every job ever submitted (fixture ``cap-sacct-history``;
  NODE_FAIL with exit ``1:0`` as in the ``slurm`` reference outputs);
* ``sacct -P -X -n -o JobID,Account,AllocCPUS,...`` (the core-hours query) prints each job's ElapsedRaw and
  CPUTimeRAW (one CPU a pilot); ``scontrol -o show reservation`` prints ``No reservations in the system``;
* ``scancel -v`` prints on stderr as fixtures ``cap-scancel-running`` / ``cap-scancel-completed`` do;
* ``cat WORK_DIR/pilot-ID.exit``: the file the job script's EXIT trap writes (``exit_code=``, ``end_time=``)
  when the batch shell ends normally; a job killed at its time limit or by a node failure leaves none.

Any other command, or a squeue/sacct format other than the adapter's, is answered as a missing program
(exit 127) and counted in :attr:`SimSlurm.unknown`: the benchmark reports it, so a manager that starts
running something new is noticed instead of silently mis-simulated.
"""

from __future__ import annotations

import math
import random
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

#: what squeue --states=all keeps of ended jobs (SLURM's MinJobAge default, seconds)
MIN_JOB_AGE = 300
SQUEUE_FORMAT = "--format=%i|%T|%r|%u|%V|%S|%e|%j"
SACCT_FIELDS = "JobID,State,ExitCode,Submit,Start,End,Reason,User,JobName"
#: the core-hours query (pilot.manager.accounting): one CPU a pilot here, charged to the one account
ACCT_FIELDS = "JobID,Account,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End,State"
ACCOUNT = "campaign"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def slurm_minutes(text: str) -> int:
    """Seconds of a SLURM ``--time`` value: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``
    (sbatch(1), option ``--time``)."""
    text = text.strip()
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        h, m, s = (parts + [0, 0, 0])[:3]
        return ((days * 24 + h) * 60 + m) * 60 + s
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


@dataclass
class ScriptInfo:
    """What a job script tells sbatch (name, time limit) and its worker (margin, idle timeout, heartbeat)."""

    name: str
    limit: int
    margin: float
    idle_timeout: float
    heartbeat: float
    category: str

    @classmethod
    def parse(cls, text: str) -> ScriptInfo:
        def directive(opt: str) -> str:
            m = re.search(rf"^#SBATCH --{opt}=(\S+)\s*$", text, re.MULTILINE)
            if not m:
                raise ValueError(f"job script without #SBATCH --{opt}")
            return m.group(1)

        def worker_arg(opt: str) -> str:
            m = re.search(rf"^\s*--{opt} (\S+)(?: \\)?$", text, re.MULTILINE)
            if not m:
                raise ValueError(f"job script whose worker has no --{opt}")
            return m.group(1)

        cat = re.search(r"^PILOT_CATEGORY=(\S+)$", text, re.MULTILINE)
        return cls(name=directive("job-name"), limit=slurm_minutes(directive("time")),
                   margin=float(worker_arg("margin")), idle_timeout=float(worker_arg("idle-timeout")),
                   heartbeat=float(worker_arg("heartbeat")),
                   category=shlex.split(cat.group(1))[0] if cat else "")


@dataclass
class Job:
    """One batch job of the simulated cluster."""

    id: int
    info: ScriptInfo
    submit: int
    eligible: int
    start: int | None = None
    end: int | None = None
    state: str = "PENDING"
    exit_code: str = "0:0"
    exit_file: str | None = None

    @property
    def reason(self) -> str:
        if self.state == "PENDING":
            return "Priority"
        return {"TIMEOUT": "TimeLimit", "NODE_FAIL": "NodeDown", "FAILED": "NonZeroExitCode"}.get(self.state, "None")


@dataclass
class ClusterSpec:
    """A simulated cluster: its slots for our pilots, its queue waits (lognormal around ``wait_median``, what
    other users' work makes a job wait; ``wait_sigma`` 0 = always the median), and the mean time between
    failures of a pilot's node (hours, exponential; None = nodes never fail)."""

    name: str
    capacity: int
    wait_median: float
    wait_sigma: float = 0.8
    node_mtbf_h: float | None = None
    user: str = "pilot"


@dataclass
class SimSlurm:
    """One simulated SLURM cluster (see the module docstring)."""

    spec: ClusterSpec
    rng: random.Random
    work_dir: str
    first_id: int = 1000
    jobs: dict[int, Job] = field(default_factory=dict)
    #: the jobs not yet ended (pending or running): what the scheduler looks at when a slot frees up
    live: dict[int, Job] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    #: ids scancel asked to end: the campaign ends their pilots (and their jobs) at the current time
    cancelled: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ the jobs
    def running(self) -> int:
        return sum(1 for j in self.live.values() if j.state == "RUNNING")

    def pending(self) -> list[Job]:
        return [j for j in self.live.values() if j.state == "PENDING"]

    def startable(self, now: float) -> list[Job]:
        """Pending jobs whose queue wait is over, in the order they start (first eligible first)."""
        return sorted((j for j in self.pending() if j.eligible <= now), key=lambda j: (j.eligible, j.id))

    def submit(self, info: ScriptInfo, now: int) -> Job:
        wait = self.spec.wait_median
        if self.spec.wait_sigma > 0:
            wait = self.spec.wait_median * math.exp(self.rng.gauss(0.0, self.spec.wait_sigma))
        job = Job(id=self.first_id + len(self.jobs), info=info, submit=now, eligible=now + int(round(wait)))
        self.jobs[job.id] = self.live[job.id] = job
        return job

    def end(self, job: Job, now: int, state: str, exit_file: bool) -> None:
        job.state, job.end = state, now
        self.live.pop(job.id, None)
        job.exit_code = "1:0" if state == "NODE_FAIL" else "0:0"
        if exit_file:
            job.exit_file = f"exit_code=0\nend_time={now}\n"

    # ------------------------------------------------------------------ the commands
    def execute(self, argv: list[str], now: int) -> tuple[int, str, str]:
        """Answer one command as the real program would (returncode, stdout, stderr)."""
        words = list(argv)
        if words[:2] == ["env", "SLURM_TIME_FORMAT=%s"]:
            words = words[2:]
        prog = words[0] if words else "?"
        self.commands[prog] = self.commands.get(prog, 0) + 1
        if prog == "sbatch" and words[1:2] == ["--parsable"] and len(words) == 3:
            return self._sbatch(words[2], now)
        if prog == "squeue" and SQUEUE_FORMAT in words and "-M" not in words:
            return self._squeue(words, now)
        if prog == "sacct" and SACCT_FIELDS in words and "-j" in words:
            return self._sacct(words[words.index("-j") + 1])
        if prog == "sacct" and ACCT_FIELDS in words and "-j" in words:
            return self._sacct_usage(words[words.index("-j") + 1], now)
        if prog == "scontrol" and words[1:] == ["-o", "show", "reservation"]:
            return 0, "No reservations in the system\n", ""   # what scontrol prints without any
        if prog == "scancel" and words[1:2] == ["-v"]:
            return self._scancel(words[2:], now)
        if prog == "cat" and len(words) == 2:
            return self._cat(words[1])
        self.unknown.append(shlex.join(argv))
        return 127, "", f"bash: {prog}: command not found\n"

    def _sbatch(self, path: str, now: int) -> tuple[int, str, str]:
        text = self.scripts.get(path)
        if text is None:
            return 1, "", f"sbatch: error: Unable to open file {path}\n"
        job = self.submit(ScriptInfo.parse(text), now)
        return 0, f"{job.id}\n", ""

    def _squeue_line(self, j: Job) -> str:
        u, name = self.spec.user, j.info.name
        if j.state == "PENDING":
            return f"{j.id}|PENDING|{j.reason}|{u}|{j.submit}|N/A|N/A|{name}"
        if j.state == "RUNNING":
            return f"{j.id}|RUNNING|None|{u}|{j.submit}|{j.start}|{(j.start or 0) + j.info.limit}|{name}"
        start = j.start if j.start is not None else j.end
        return f"{j.id}|{j.state}|{j.reason}|{u}|{j.submit}|{start}|{j.end}|{name}"

    def _squeue(self, words: list[str], now: int) -> tuple[int, str, str]:
        listed = [j for j in self.jobs.values()
                  if j.state not in FINAL or (j.end is not None and now - j.end <= MIN_JOB_AGE)]
        if "-u" in words and words[words.index("-u") + 1] != self.spec.user:
            listed = []
        if "-j" in words:
            ids = words[words.index("-j") + 1].split(",")
            listed = [j for j in listed if str(j.id) in ids]
            if len(ids) == 1 and not listed:
                return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
        return 0, "".join(self._squeue_line(j) + "\n" for j in sorted(listed, key=lambda j: j.id)), ""

    def _sacct(self, ids_arg: str) -> tuple[int, str, str]:
        out = []
        for jid in ids_arg.split(","):
            j = self.jobs.get(int(jid)) if jid.isdigit() else None
            if j is None:
                continue
            state = "CANCELLED by 0" if j.state == "CANCELLED" else j.state
            start = str(j.start) if j.start is not None else ("None" if j.state in FINAL else "Unknown")
            end = str(j.end) if j.end is not None else "Unknown"
            out.append(f"{j.id}|{state}|{j.exit_code}|{j.submit}|{start}|{end}|{j.reason}|{self.spec.user}|"
                       f"{j.info.name}\n")
        return 0, "".join(out), ""

    def _sacct_usage(self, ids_arg: str, now: int) -> tuple[int, str, str]:
        """The core-hours query: ElapsedRaw so far (running) or in all, CPUTimeRAW = AllocCPUS x ElapsedRaw."""
        out = []
        for jid in ids_arg.split(","):
            j = self.jobs.get(int(jid)) if jid.isdigit() else None
            if j is None:
                continue
            elapsed = 0 if j.start is None else (j.end if j.end is not None else now) - j.start
            start = str(j.start) if j.start is not None else ("None" if j.state in FINAL else "Unknown")
            end = str(j.end) if j.end is not None else "Unknown"
            state = "CANCELLED by 0" if j.state == "CANCELLED" else j.state
            out.append(f"{j.id}|{ACCOUNT}|1|{elapsed}|{elapsed}|{j.submit}|{start}|{end}|{state}\n")
        return 0, "".join(out), ""

    def _scancel(self, ids: list[str], now: int) -> tuple[int, str, str]:
        err = []
        for jid in ids:
            j = self.jobs.get(int(jid)) if jid.isdigit() else None
            if j is None:
                err.append(f"scancel: error: Kill job error on job id {jid}: Invalid job id specified")
                continue
            err.append(f"scancel: Terminating job {jid}")
            if j.state in FINAL:
                err.append(f"scancel: error: Kill job error on job id {jid}: Job/step already completing or "
                           "completed")
            else:
                self.cancelled.append(j.id)
        return 0, "", "".join(e + "\n" for e in err)

    def _cat(self, path: str) -> tuple[int, str, str]:
        m = re.fullmatch(re.escape(self.work_dir) + r"/pilot-(\d+)\.exit", path)
        j = self.jobs.get(int(m.group(1))) if m else None
        if j is None or j.exit_file is None:
            return 1, "", f"cat: {path}: No such file or directory\n"
        return 0, j.exit_file, ""

    def put(self, path: str, data: str) -> None:
        """A file the manager uploaded (its job scripts)."""
        self.scripts[path] = data

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for j in self.jobs.values():
            states[j.state] = states.get(j.state, 0) + 1
        waits = [j.start - j.submit for j in self.jobs.values() if j.start is not None]
        return {"jobs": len(self.jobs), "states": states, "commands": dict(self.commands),
                "unknown_commands": list(self.unknown[:10]),
                "median_queue_wait_s": sorted(waits)[len(waits) // 2] if waits else None}
