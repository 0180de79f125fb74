"""The configuration: ``pilot.yaml`` and one ``clusters/NAME.yaml`` per cluster.

Everything is a pydantic model with ``extra="forbid"`` and a description on every field. Loading collects
*all* problems of all files and raises one :class:`ConfigError`; each problem names the file, the field and
what to write instead::

    ~/.pilot/clusters/stampede.yaml: pilot.wallclock: unknown field; did you mean 'walltime'? ...

The documentation of every field is ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import getpass
import json
import math
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "BackoffConfig", "ClusterConfig", "Config", "ConfigError", "ConfigProblem", "Limits", "PilotConfig",
    "PilotResources", "Scheduler", "format_walltime", "load_cluster", "load_config", "load_pilot_config",
    "parse_memory_mb", "parse_walltime", "validate_job_name", "validate_name",
]

PILOT_FILE = "pilot.yaml"
CLUSTERS_DIR = "clusters"

#: A cluster name (file stem) or a category: it becomes part of job names and of the worker's name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The job-name prefix: a letter then up to 7 letters or digits (PBS requires job names to start with a
#: letter; queue_adapters.base.job_name builds PREFIX.CATEGORY.UID and accepts exactly this).
PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,7}$")
#: A job name as rendered into a directive: printable, no whitespace, no shell metacharacters.
JOB_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,199}$")
#: Partition/queue, account and QOS values: they land in directive lines.
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")
#: Characters allowed in a work_dir: it lands in directive lines (#SBATCH --output=...), unquoted.
PATH_RE = re.compile(r"^[A-Za-z0-9_./+@,=~-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9_.:%\[\]-]+$")
USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*$")
PROXY_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$")

#: Environment variables the pilot script sets itself (an ``env:`` entry may not override them).
RESERVED_ENV = frozenset({
    "PILOT_CLUSTER", "PILOT_CATEGORY", "PILOT_JOB_NAME", "PILOT_JOB_ID", "PILOT_WORK_DIR", "PILOT_DEADLINE",
    "PILOT_WALLTIME", "PILOT_START", "PILOT_EXIT_FILE", "PILOT_CORES", "PILOT_NODES",
})

#: SLURM's ``--signal=...@N`` accepts at most 65535 seconds (sbatch(1)).
SLURM_MAX_SIGNAL_TIME = 65535


class Scheduler(str, Enum):
    """The batch systems a cluster can use."""

    SLURM = "slurm"
    PBS = "pbs"
    LSF = "lsf"
    LOCAL = "local"

    @property
    def directive_prefix(self) -> str | None:
        """The comment prefix of this scheduler's job-script directives (``None`` for local)."""
        return {"slurm": "#SBATCH", "pbs": "#PBS", "lsf": "#BSUB"}.get(self.value)

    @property
    def walltime_formats(self) -> str:
        """The wall-time formats this scheduler accepts, in words (for error messages)."""
        return _WALLTIME_FORMATS[self]


_WALLTIME_FORMATS = {
    Scheduler.SLURM: ('"minutes", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM" or "D-HH:MM:SS" '
                      '(a bare number is minutes), e.g. "24:00:00"'),
    Scheduler.PBS: '"HH:MM:SS", "MM:SS" or seconds (a bare number is seconds), e.g. "24:00:00"',
    Scheduler.LSF: '"HH:MM" or minutes (a bare number is minutes), e.g. "24:00"',
    Scheduler.LOCAL: '"HH:MM:SS", "MM:SS" or seconds (a bare number is seconds), e.g. "01:00:00"',
}


# ------------------------------------------------------------------------------------------ problems
@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration.

    Attributes
    ----------
    file : str
        The file (or directory) the problem is in.
    field : str
        The dotted path of the field (``pilot.walltime``, ``categories[1]``), or ``(file)`` for the file.
    message : str
        What is wrong and what to write instead.
    line : int | None
        1-based line in ``file`` when known.
    """

    file: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.file}: {self.field}: {self.message}{where}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``pilot config check --json``)."""
        return {"file": self.file, "field": self.field, "message": self.message, "line": self.line,
                "text": str(self)}


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them.

    Parameters
    ----------
    problems : list[ConfigProblem]
        All problems found (at least one).
    """

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} configuration problem{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _err(message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose text is ``message`` exactly (pydantic would prefix 'Value error, ')."""
    return PydanticCustomError("pilot_config", "{message}", {"message": message, **ctx})


def _multi(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """Several problems found by one validator: ``(sub-field, message)`` pairs, expanded on reporting."""
    return PydanticCustomError("pilot_config", "{message}",
                               {"message": "; ".join(m for _, m in problems), "problems": problems})


# ------------------------------------------------------------------------------------------ values
def validate_name(value: str, what: str = "name") -> str:
    """Check a cluster name or a category (letters, digits, ``_ . -``; starts with a letter or digit).

    Raises
    ------
    ValueError
        With a message saying what to write instead.
    """
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit (it becomes part of job names and shell code)")
    return value


def validate_job_name(value: str) -> str:
    """Check a job name before it lands in a directive (``#SBATCH --job-name=...``).

    Raises
    ------
    ValueError
        If it is empty, too long, or holds whitespace or shell metacharacters.
    """
    if not isinstance(value, str) or not JOB_NAME_RE.match(value):
        raise ValueError(f"job name {value!r} is not allowed: use up to 200 letters, digits, '_', '.' or '-', "
                         "starting with a letter (PBS requires a leading letter)")
    return value


_INT_RE = re.compile(r"^\d+$")


def parse_walltime(value: str | int, scheduler: Scheduler | str) -> int:
    """Convert a wall time written in ``scheduler``'s own format to seconds.

    SLURM (sbatch ``--time``): ``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.
    PBS (``-l walltime``) and local: ``[[HH:]MM:]SS`` (a bare number is seconds).
    LSF (bsub ``-W``): ``[HH:]MM`` (a bare number is minutes).

    Parameters
    ----------
    value : str | int
        The wall time as written in the cluster file.
    scheduler : Scheduler | str
        Whose format applies.

    Returns
    -------
    int
        Seconds, always > 0.

    Raises
    ------
    ValueError
        With the accepted formats when ``value`` does not match.
    """
    sched = Scheduler(scheduler)
    bad = ValueError(f"wall time {value!r} is not valid for {sched.value}: write {sched.walltime_formats}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad
    text = str(value).strip()
    if isinstance(value, int) or _INT_RE.match(text):
        n = int(text)
        seconds = n * 60 if sched in (Scheduler.SLURM, Scheduler.LSF) else n
    else:
        seconds = _parse_walltime_text(text, sched, bad)
    if seconds <= 0:
        raise ValueError(f"wall time {value!r} is zero: a pilot needs a finite, positive wall time; "
                         f"write {sched.walltime_formats}")
    return seconds


def _parse_walltime_text(text: str, sched: Scheduler, bad: ValueError) -> int:
    days = 0
    if sched is Scheduler.SLURM and "-" in text:
        d, _, rest = text.partition("-")
        if not _INT_RE.match(d) or not rest:
            raise bad
        days = int(d)
        parts = rest.split(":")
        if len(parts) > 3 or not all(_INT_RE.match(p) for p in parts):
            raise bad
        h, m, s = (int(p) for p in (parts + ["0", "0"])[:3])
        if h >= 24 or m >= 60 or s >= 60:
            raise ValueError(f"wall time {text!r}: hours must be 0-23 and minutes/seconds 0-59 after "
                             f"'D-'; write {sched.walltime_formats}")
        return days * 86400 + h * 3600 + m * 60 + s
    parts = text.split(":")
    if not all(_INT_RE.match(p) for p in parts):
        raise bad
    nums = [int(p) for p in parts]
    if sched is Scheduler.LSF:
        if len(nums) != 2:
            raise bad
        return nums[0] * 3600 + nums[1] * 60
    if len(nums) not in (2, 3):
        raise bad
    if any(n >= 60 for n in nums[1:]):
        raise ValueError(f"wall time {text!r}: minutes and seconds must be 0-59; write {sched.walltime_formats}")
    if len(nums) == 2:          # MM:SS for SLURM, PBS and local
        return nums[0] * 60 + nums[1]
    return nums[0] * 3600 + nums[1] * 60 + nums[2]


def format_walltime(seconds: int, scheduler: Scheduler | str) -> str:
    """Write ``seconds`` the way ``scheduler``'s directive expects it.

    SLURM: ``HH:MM:SS`` or ``D-HH:MM:SS`` (at least a day); PBS and local: ``HH:MM:SS`` (hours may exceed 24);
    LSF: ``H:MM`` (whole minutes, rounded up).
    """
    sched = Scheduler(scheduler)
    if sched is Scheduler.LSF:
        minutes = math.ceil(seconds / 60)
        return f"{minutes // 60}:{minutes % 60:02d}"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    if sched is Scheduler.SLURM and h >= 24:
        return f"{h // 24}-{h % 24:02d}:{m:02d}:{s:02d}"
    return f"{h:02d}:{m:02d}:{s:02d}"


_MEM_RE = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_MEM_FACTOR_KB = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}


def parse_memory_mb(value: str | int) -> int:
    """Convert a memory amount (``4G``, ``4000M``, ``64GB``, ``512``) to MiB; a bare number is MiB.

    Raises
    ------
    ValueError
        With the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"memory {value!r} is not an amount: write e.g. 4G, 4000M or 4096 (MiB)")  # noqa: TRY004
    if isinstance(value, int):
        mb = value
    else:
        mt = _MEM_RE.match(str(value).strip())
        if not mt:
            raise ValueError(f"memory {value!r} is not an amount: write a whole number with an optional unit "
                             "K, M, G or T (binary, as SLURM does), e.g. 4G, 4000M or 4096 (MiB)")
        unit = (mt.group(2) or "M").upper()
        mb = math.ceil(int(mt.group(1)) * _MEM_FACTOR_KB[unit] / 1024)
    if mb <= 0:
        raise ValueError(f"memory {value!r} must be at least 1M; write e.g. 4G, or null for the default")
    return mb


def _expand(path: str | os.PathLike[str], base: Path | None) -> Path:
    """Expand ``~`` and make a relative path relative to ``base`` (when given)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _base_dir(info: ValidationInfo) -> Path | None:
    ctx = info.context or {}
    base = ctx.get("base_dir")
    return Path(base) if base else None


def _no_control(value: str, what: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise _err(f"{what} must be one line: remove the line break")
    return value


# ------------------------------------------------------------------------------------------ pilot.yaml
class BackoffConfig(BaseModel):
    """How long the manager leaves a failing cluster alone (doubling from ``initial`` up to ``max``)."""

    model_config = ConfigDict(extra="forbid")

    initial: float = Field(60.0, gt=0, description="Seconds to wait after the first failure talking to a "
                           "cluster (SSH or scheduler command) before trying it again.", examples=[60])
    max: float = Field(1800.0, gt=0, description="Upper bound of the wait in seconds; the wait doubles after "
                       "every further failure until it reaches this.", examples=[1800])
    factor: float = Field(2.0, ge=1.0, description="Multiplier applied to the wait after every further "
                          "failure (1 = constant wait).", examples=[2])

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.initial > self.max:
            raise _err(f"initial ({self.initial:g} s) is larger than max ({self.max:g} s): "
                       f"write max: {self.initial:g} or more, or a smaller initial", subfield="max")
        return self


class PilotConfig(BaseModel):
    """``pilot.yaml``: settings of the manager itself (one per config directory)."""

    model_config = ConfigDict(extra="forbid")

    launchpad_file: Path = Field(Path("~/.pilot/my_launchpad.yaml"), validate_default=True,
                                 description="Where the manager finds the FireWorks LaunchPad file "
                                 "(my_launchpad.yaml). '~' is expanded; a relative path is relative to the "
                                 "config directory.", examples=["~/.pilot/my_launchpad.yaml"])
    poll_interval: float = Field(60.0, ge=1, description="Seconds between two manager cycles "
                                 "(gather -> decide -> act).", examples=[60])
    log_dir: Path = Field(Path("~/.pilot/logs"), validate_default=True,
                          description="Directory for the manager's log files. '~' is expanded; a relative "
                          "path is relative to the config directory.", examples=["~/.pilot/logs"])
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig.model_validate({}),
                                   description="Retry delays for a cluster whose commands fail.")
    max_reruns: int = Field(3, ge=0, description="How many times a Firework whose pilot died under it "
                            "(lost run) is put back to READY before it is left FIZZLED.", examples=[3])
    job_name_prefix: str = Field("fwp", description="First part of every pilot job name "
                                 "(PREFIX.CATEGORY.ID): how the manager recognises its own jobs in the queue. "
                                 "A letter, then up to 7 letters or digits.", examples=["fwp"])

    @field_validator("launchpad_file", "log_dir")
    @classmethod
    def _paths(cls, v: Path, info: ValidationInfo) -> Path:
        return _expand(v, _base_dir(info))

    @field_validator("job_name_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not PREFIX_RE.match(v):
            raise _err(f"{v!r} is not a usable job-name prefix: write a letter followed by up to 7 letters "
                       "or digits (no '.', '-' or '_'), e.g. fwp")
        return v


# ------------------------------------------------------------------------------------------ clusters
class PilotResources(BaseModel):
    """The ``pilot:`` section of a cluster file: what each pilot job asks the scheduler for."""

    model_config = ConfigDict(extra="forbid")

    walltime: str | int = Field(description="Wall time of every pilot job, in the scheduler's own format "
                                "(see docs/configuration.md). Quote it in YAML: \"24:00:00\".",
                                examples=["24:00:00"])
    nodes: int = Field(1, ge=1, description="Nodes per pilot job.", examples=[1])
    cores: int = Field(1, ge=1, description="CPU cores per node (SLURM --ntasks-per-node, PBS ncpus, "
                       "LSF span[ptile]); exported to the job as PILOT_CORES.", examples=[68])
    memory: str | int | None = Field(None, description="Memory per node, e.g. 4G or 4000M (a bare number is "
                                     "MiB); null leaves the scheduler's default.", examples=["64G"])
    gpus: int | None = Field(None, ge=1, description="GPUs per node (SLURM --gpus-per-node, PBS ngpus, "
                             "LSF -gpu num=); null asks for none.", examples=[1])
    partition: str | None = Field(None, description="SLURM partition; the queue name for PBS (-q) and LSF (-q). "
                                  "null uses the default.", examples=["normal"])
    account: str | None = Field(None, description="Account/project charged (SLURM --account, PBS -A, "
                                "LSF -P); null uses your default.", examples=["TG-ABC123"])
    qos: str | None = Field(None, description="SLURM quality of service (--qos). SLURM only.",
                            examples=["normal"])
    extra_directives: list[str] = Field(default_factory=list,
                                        description="More scheduler options, one per entry: either a "
                                        "whole directive line ('#SBATCH --constraint=knl') or just the option "
                                        "('--constraint=knl'), to which the scheduler's prefix is added.",
                                        examples=[["--constraint=knl"]])

    _walltime_seconds: int | None = PrivateAttr(None)

    @property
    def walltime_seconds(self) -> int:
        """The wall time in seconds (set when the cluster, whose scheduler defines the format, validated it)."""
        if self._walltime_seconds is None:
            raise RuntimeError("walltime_seconds is only known inside a validated ClusterConfig")
        return self._walltime_seconds

    @property
    def memory_mb(self) -> int | None:
        """``memory`` in MiB, or ``None``."""
        return None if self.memory is None else parse_memory_mb(self.memory)

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_type(cls, v: Any) -> Any:
        if isinstance(v, (bool, float)) or not isinstance(v, (str, int)):
            raise _err(f"expected a duration, got {_describe(v)}: write it in quotes, e.g. \"24:00:00\"")
        if isinstance(v, str):
            _no_control(v, "walltime")
        return v

    @field_validator("partition", "account", "qos", mode="before")
    @classmethod
    def _queue_like(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)          # numeric account names exist
        if isinstance(v, str) and not QUEUE_RE.match(v):
            raise _err(f"{v!r} cannot be used as {info.field_name}: use only letters, digits and "
                       "'_ . @ : + -' (no spaces, quotes, line breaks or shell characters)")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is not None:
            try:
                parse_memory_mb(v)
            except ValueError as e:
                raise _err(str(e)) from None
        return v

    @field_validator("extra_directives")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        problems = []
        for i, line in enumerate(v):
            if any(c in line for c in "\n\r\0"):
                problems.append((f"[{i}]", f"{line!r} holds a line break: write one directive per list entry"))
            elif not line.strip():
                problems.append((f"[{i}]", "empty entry: remove it"))
        if problems:
            raise _multi(problems)
        return [line.strip() for line in v]


class Limits(BaseModel):
    """How many pilots of this manager may be on the cluster at once (the policy in pilot/policy.py)."""

    model_config = ConfigDict(extra="forbid")

    max_queued: int = Field(10, ge=1, description="Most pilots of this manager waiting in the cluster's queue "
                            "at once, all categories together (at least 1: a new pilot waits first).",
                            examples=[10])
    max_running: int = Field(20, ge=1, description="Most pilots of this manager on the cluster at once, queued "
                             "or running, all categories together.", examples=[20])
    min_pilots: int = Field(0, ge=0, description="Pilots kept (queued or running) for each category even when "
                            "no Firework is READY, a warm pool; 0 submits on demand only.", examples=[0])

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if self.max_queued > self.max_running:
            raise _err(f"max_queued ({self.max_queued}) is more than max_running ({self.max_running}), which "
                       "counts queued and running pilots together, so the extra queue room is never used: write "
                       f"max_queued: {self.max_running} or less, or raise max_running", subfield="max_queued")
        if self.min_pilots > self.max_running:
            raise _err(f"min_pilots ({self.min_pilots}) is more than max_running ({self.max_running}): that many "
                       f"pilots may never be on the cluster; write min_pilots: {self.max_running} or less",
                       subfield="min_pilots")
        return self


class ClusterConfig(BaseModel):
    """``clusters/NAME.yaml``: one cluster (or this machine, with ``scheduler: local``)."""

    model_config = ConfigDict(extra="forbid")

    # -- the scheduler first: the validators of the fields below depend on it
    scheduler: Scheduler = Field(description="The cluster's batch system: slurm, pbs, lsf, or local "
                                 "(pilots run as processes on this machine, no SSH).", examples=["slurm"])
    # -- reaching the cluster
    host: str | None = Field(None, validate_default=True,
                             description="Login host to reach over SSH (a ~/.ssh/config alias works with "
                             "use_ssh_config). Required unless scheduler is local.",
                             examples=["login.stampede.example.org"])
    user: str | None = Field(None, description="User name on the cluster; null: from ~/.ssh/config "
                             "(use_ssh_config) or your local user name.", examples=["alice"])
    port: int = Field(22, ge=1, le=65535, description="SSH port. With use_ssh_config, a Port line in "
                      "~/.ssh/config replaces the default 22.", examples=[22])
    identity_file: Path | None = Field(None, description="Private key file for SSH ('~' is expanded); "
                                       "null: your SSH agent / ~/.ssh/config / default keys.",
                                       examples=["~/.ssh/id_ed25519"])
    proxy_jump: str | None = Field(None, description="A gateway to hop through, as [user@]host[:port] "
                                   "(like ssh -J); null for a direct connection.",
                                   examples=["alice@gateway.example.org:22"])
    strict_host_key_checking: bool = Field(True, description="Refuse hosts whose key is not in known_hosts "
                                           "(true, recommended). false accepts and records unknown keys.",
                                           examples=[True])
    known_hosts: Path = Field(Path("~/.ssh/known_hosts"), validate_default=True,
                              description="known_hosts file with the cluster's host key ('~' is expanded).",
                              examples=["~/.ssh/known_hosts"])
    use_ssh_config: bool = Field(False, description="Also read ~/.ssh/config for this host (HostName, User, "
                                 "Port, IdentityFile, ProxyJump, UserKnownHostsFile) where this file leaves "
                                 "the value unset; the file must exist.", examples=[False])
    connect_timeout: float = Field(30.0, gt=0, description="Seconds to wait for the SSH connection.",
                                   examples=[30])
    command_timeout: float = Field(120.0, gt=0, description="Seconds any one remote command (sbatch, squeue, "
                                   "...) may take before it counts as failed.", examples=[120])
    # -- what the pilots do
    categories: list[str] = Field(min_length=1, description="FireWorks _category values this cluster serves; "
                                  "each pilot serves one category.", examples=[["md"]])
    launchpad_file: str = Field(description="The LaunchPad file as the pilot on the cluster sees it "
                                "(absolute, or starting with ~/ for the cluster user's home).",
                                examples=["/home/alice/.pilot/my_launchpad.yaml"])
    work_dir: str = Field(description="Absolute directory on the cluster for job scripts, pilot output and "
                          "exit-code files ('~' is not expanded in scheduler directives, so write the full "
                          "path; for local, '~' is expanded).", examples=["/scratch/alice/pilot"])
    python: str | None = Field(None, description="Python interpreter on the cluster; when set the worker is "
                               "started as PYTHON -m pilot worker (instead of worker_command).",
                               examples=["/home/alice/venvs/pilot/bin/python"])
    worker_command: str = Field("pilot worker", description="Command that starts the pilot worker, as shell "
                                "words (the worker options are appended).", examples=["pilot worker"])
    setup: str = Field("", description="Shell lines run (with set -e) before the worker starts: module "
                       "loads, venv activation. A list of lines is accepted too.",
                       examples=["module load gromacs/2022\nsource ~/venvs/pilot/bin/activate\n"])
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables exported in "
                                "the pilot job (values are quoted; use setup for shell expansions).",
                                examples=[{"OMP_NUM_THREADS": "1"}])
    pilot: PilotResources = Field(description="What every pilot job requests from the scheduler.")
    walltime_margin: int = Field(600, ge=0, description="Seconds before the end of the wall time at which "
                                 "the pilot stops starting work (and the scheduler's warning signal USR1 is "
                                 "asked for).", examples=[600])
    grace: int = Field(60, ge=0, description="Seconds the worker waits for a running task after forwarding "
                       "SIGTERM to it before killing it; must be less than walltime_margin.", examples=[60])
    idle_timeout: int = Field(300, ge=0, description="Seconds a pilot waits with no READY Firework before it "
                              "exits (0: exit as soon as there is no work).", examples=[300])
    fireworks_per_pilot: int = Field(1, ge=1, description="How many READY Fireworks one pilot is expected to "
                                     "run, used when Fireworks give no expected duration: READY / this = "
                                     "pilots wanted.", examples=[1])
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}), description="How many pilots may be queued/running at once.")
    template: Path | None = Field(None, description="A custom Jinja2 job template (may {% extends "
                                  "\"slurm.sh.j2\" %} and override blocks); relative to the clusters/ folder. "
                                  "null uses the built-in template of the scheduler.",
                                  examples=["../templates/my-slurm.sh.j2"])

    _source: Path | None = PrivateAttr(None)

    # ------------------------------------------------------------------ derived values
    @property
    def source_file(self) -> Path | None:
        """The file this cluster was loaded from (``None`` when built in code)."""
        return self._source

    @property
    def walltime_seconds(self) -> int:
        """The pilots' wall time in seconds."""
        return self.pilot.walltime_seconds

    @property
    def memory_mb(self) -> int | None:
        """``pilot.memory`` in MiB, or ``None``."""
        return self.pilot.memory_mb

    @property
    def worker_argv(self) -> list[str]:
        """The words that start the worker (its options are appended by the template)."""
        if self.python:
            return [self.python, "-m", "pilot", "worker"]
        return shlex.split(self.worker_command)

    @property
    def is_local(self) -> bool:
        """True for ``scheduler: local`` (no SSH)."""
        return self.scheduler is Scheduler.LOCAL

    def directive_lines(self) -> list[str]:
        """``extra_directives`` as full directive lines (the scheduler's prefix added to plain options)."""
        prefix = self.scheduler.directive_prefix
        out = []
        for line in self.pilot.extra_directives:
            out.append(line if line.startswith("#") or prefix is None else f"{prefix} {line}")
        return out

    # ------------------------------------------------------------------ validators (in field order)
    @staticmethod
    def _sched(info: ValidationInfo) -> Scheduler | None:
        s = info.data.get("scheduler")
        return s if isinstance(s, Scheduler) else None

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in {s.value for s in Scheduler}:
            return v.lower()
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None, info: ValidationInfo) -> str | None:
        sched = cls._sched(info)
        if sched is Scheduler.LOCAL:
            if v not in (None, "localhost", "127.0.0.1"):
                raise _err(f"scheduler local runs pilots on this machine without SSH, so host {v!r} is not "
                           "used: remove host (or write localhost), or choose the cluster's scheduler")
            return None
        if v is None:
            if sched is None:
                return v
            raise _err(f"required for scheduler {sched.value}: write the login host, e.g. "
                       "host: login.cluster.example.org (or use scheduler: local for this machine)")
        if not HOST_RE.match(v):
            raise _err(f"{v!r} is not a host name: write a name or address without spaces, "
                       "e.g. login.cluster.example.org (user and port have their own fields)")
        return v

    @field_validator("user", "port", "identity_file", "proxy_jump")
    @classmethod
    def _ssh_only(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and cls._sched(info) is Scheduler.LOCAL:
            raise _err(f"scheduler local does not use SSH: remove {info.field_name}")
        if v is None:
            return v
        if info.field_name == "user" and not USER_RE.match(v):
            raise _err(f"{v!r} is not a user name: write the login name only, e.g. alice")
        if info.field_name == "identity_file":
            p = _expand(v, None)
            if not p.is_file():
                raise _err(f"file not found: {p}; write the path of your private key "
                           "(e.g. ~/.ssh/id_ed25519), or null to use your SSH agent / ~/.ssh/config")
            return p
        if info.field_name == "proxy_jump":
            m = PROXY_RE.match(v)
            if not m or (m.group("port") and not 1 <= int(m.group("port")) <= 65535):
                raise _err(f"{v!r} is not a jump host: write [user@]host[:port], "
                           "e.g. alice@gateway.example.org:22 (one hop)")
        return v

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts(cls, v: Path, info: ValidationInfo) -> Path:
        p = _expand(v, None)
        if (cls._sched(info) not in (Scheduler.LOCAL, None) and info.data.get("strict_host_key_checking", True)
                and not p.is_file()):
            host = info.data.get("host") or "HOST"
            port = info.data.get("port") or 22
            raise _err(f"file not found: {p}; with strict_host_key_checking: true the cluster's host key "
                       f"must be there: run `ssh-keyscan -p {port} {host} >> {p}` and check the fingerprint, "
                       "or point known_hosts at the right file")
        return p

    @field_validator("use_ssh_config")
    @classmethod
    def _ssh_config(cls, v: bool, info: ValidationInfo) -> bool:
        if v and cls._sched(info) not in (Scheduler.LOCAL, None):
            cfg = _expand("~/.ssh/config", None)
            if not cfg.is_file():
                raise _err(f"use_ssh_config is true but {cfg} does not exist: create it, or write "
                           "use_ssh_config: false and give host, user, port and identity_file here")
        return v

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: list[str]) -> list[str]:
        problems = []
        seen: set[str] = set()
        for i, c in enumerate(v):
            try:
                validate_name(c, "category")
            except ValueError as e:
                problems.append((f"[{i}]", str(e)))
            if c in seen:
                problems.append((f"[{i}]", f"category {c!r} is listed twice: remove one"))
            seen.add(c)
        if problems:
            raise _multi(problems)
        return v

    @field_validator("launchpad_file")
    @classmethod
    def _launchpad_file(cls, v: str, info: ValidationInfo) -> str:
        _no_control(v, "launchpad_file")
        if cls._sched(info) is Scheduler.LOCAL:
            return str(_expand(v, _base_dir(info)))
        if not (v.startswith(("/", "~/")) or v == "~"):
            raise _err(f"{v!r} is relative: write the absolute path on the cluster, e.g. "
                       "/home/alice/.pilot/my_launchpad.yaml, or ~/.pilot/my_launchpad.yaml for the cluster "
                       "user's home")
        return v

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, v: str, info: ValidationInfo) -> str:
        _no_control(v, "work_dir")
        if cls._sched(info) is Scheduler.LOCAL:
            v = str(_expand(v, None))
        if not v.startswith("/"):
            hint = (" ('~' is not expanded in scheduler directives such as #SBATCH --output)"
                    if v.startswith("~") else "")
            raise _err(f"{v!r} is not an absolute path{hint}: write the full path on the cluster, "
                       "e.g. /scratch/alice/pilot")
        if not PATH_RE.match(v):
            raise _err(f"{v!r} holds characters that break scheduler directives (spaces, quotes, %, $ ...): "
                       "choose a directory whose path has only letters, digits and '_ . / + @ , = -'")
        return v.rstrip("/") or "/"

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None:
            _no_control(v, "python")
            if not v.strip():
                raise _err("empty: write the interpreter path, e.g. ~/venvs/pilot/bin/python, or null")
        return v

    @field_validator("worker_command")
    @classmethod
    def _worker_command(cls, v: str, info: ValidationInfo) -> str:
        _no_control(v, "worker_command")
        try:
            words = shlex.split(v)
        except ValueError as e:
            raise _err(f"cannot split {v!r} into words ({e}): fix the quoting, e.g. pilot worker") from None
        if not words:
            raise _err("empty: write the command that starts the worker, e.g. pilot worker")
        if info.data.get("python") and v != "pilot worker":
            raise _err("both python and worker_command are set: keep one (python X runs X -m pilot worker)")
        return v

    @field_validator("setup", mode="before")
    @classmethod
    def _setup(cls, v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = "\n".join(v)
        if isinstance(v, str) and "\0" in v:
            raise _err("holds a NUL character: remove it")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x)
                    for k, x in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        problems = []
        for k, x in v.items():
            if not ENV_NAME_RE.match(k):
                msg = f"{k!r} is not a variable name: use letters, digits and '_', not starting with a digit"
                problems.append((k, msg))
            elif k in RESERVED_ENV:
                problems.append((k, f"{k} is set by the pilot script itself: remove it"))
            elif "\0" in x:
                problems.append((k, "value holds a NUL character: remove it"))
        if problems:
            raise _multi(problems)
        return v

    @field_validator("pilot")
    @classmethod
    def _pilot(cls, v: PilotResources, info: ValidationInfo) -> PilotResources:
        sched = cls._sched(info)
        if sched is None:
            return v
        problems: list[tuple[str, str]] = []
        try:
            v._walltime_seconds = parse_walltime(v.walltime, sched)
        except ValueError as e:
            problems.append(("walltime", str(e)))
        if sched is not Scheduler.SLURM and v.qos is not None:
            problems.append(("qos", (f"qos is a SLURM option and {sched.value} has none: remove it "
                                     "(or put the option your scheduler uses in extra_directives)")))
        if sched is Scheduler.LOCAL:
            for name in ("partition", "account", "memory", "gpus"):
                if getattr(v, name) is not None:
                    problems.append((name, f"scheduler local has no {name}: remove it"))
            if v.nodes != 1:
                problems.append(("nodes", "scheduler local runs on this one machine: write nodes: 1"))
            if v.extra_directives:
                problems.append(("extra_directives", "scheduler local has no directives: remove them"))
        else:
            prefix = sched.directive_prefix or ""
            for i, line in enumerate(v.extra_directives):
                if line.startswith("#"):
                    if not line.startswith((prefix + " ", prefix + "\t")):
                        problems.append((f"extra_directives[{i}]",
                                         (f"{line!r} is not a {sched.value} directive: start it with "
                                          f"'{prefix} ' or write just the option, e.g. '-x value'")))
                elif not line.startswith("-"):
                    problems.append((f"extra_directives[{i}]",
                                     (f"{line!r} is neither an option nor a directive: write an option "
                                      f"such as '--constraint=knl' / '-l place=scatter', or a whole line "
                                      f"'{prefix} ...'")))
        if problems:
            raise _multi(problems)
        return v

    @field_validator("walltime_margin")
    @classmethod
    def _margin(cls, v: int, info: ValidationInfo) -> int:
        pilot = info.data.get("pilot")
        sched = cls._sched(info)
        if isinstance(pilot, PilotResources) and pilot._walltime_seconds is not None:
            wt = pilot._walltime_seconds
            if v >= wt:
                raise _err(f"{v} s is not less than the wall time ({wt} s): the pilot would have no time to "
                           f"work; write a smaller margin (e.g. {max(wt // 10, 0)}) or a longer walltime")
        if sched is Scheduler.SLURM and v > SLURM_MAX_SIGNAL_TIME:
            raise _err(f"SLURM sends the warning signal at most {SLURM_MAX_SIGNAL_TIME} s before the end: "
                       f"write {SLURM_MAX_SIGNAL_TIME} or less")
        return v

    @field_validator("grace")
    @classmethod
    def _grace(cls, v: int, info: ValidationInfo) -> int:
        margin = info.data.get("walltime_margin")
        if isinstance(margin, int) and margin > 0 and v >= margin:
            raise _err(f"{v} s is not less than walltime_margin ({margin} s): a task stopped at the margin "
                       f"must finish before the wall time; write grace: {max(margin // 2, 0)} or raise "
                       "walltime_margin")
        return v

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: Limits, info: ValidationInfo) -> Limits:
        cats = info.data.get("categories")
        if isinstance(cats, list) and v.min_pilots * len(cats) > v.max_running:
            raise _err(f"min_pilots ({v.min_pilots}) for each of the {len(cats)} categories makes "
                       f"{v.min_pilots * len(cats)} pilots, more than max_running ({v.max_running}): write "
                       f"min_pilots: {v.max_running // len(cats)} or less, or raise max_running",
                       subfield="min_pilots")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        p = _expand(v, _base_dir(info))
        if not p.is_file():
            raise _err(f"file not found: {p}; write the path of your Jinja2 template (relative paths are "
                       "relative to the clusters/ folder), or null for the built-in template")
        return p


# ------------------------------------------------------------------------------------------ YAML
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers: ``walltime: 24:00:00`` stays the text "24:00:00"
    (PyYAML would read it as the integer 86400)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (_INT_TAG, _FLOAT_TAG)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*"
                           r"(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _read_yaml(path: Path, shown: str) -> tuple[Any, yaml.Node | None, list[ConfigProblem]]:
    """Parse one YAML file; returns (data, node tree for line numbers, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None, [ConfigProblem(shown, "(file)", "file not found; run `pilot init` to write an "
                                          "example, or pass the right --config-dir")]
    except (OSError, UnicodeDecodeError) as e:
        return None, None, [ConfigProblem(shown, "(file)", f"cannot read the file ({e}); check its "
                                          "permissions and that it is UTF-8 text")]
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        what = " ".join(x for x in (e.context, e.problem) if x)
        hint = ("YAML does not allow tabs for indentation: use spaces" if "\\t" in what or "\t" in what
                else "check the indentation and quoting there (values with ': ' or '#' need quotes)")
        at = f"line {line}, column {col}: " if line else ""
        return None, None, [ConfigProblem(shown, "(syntax)", f"YAML syntax error at {at}{what}; {hint}")]
    except yaml.YAMLError as e:
        return None, None, [ConfigProblem(shown, "(syntax)", f"YAML error: {e}; fix the file's syntax")]
    finally:
        loader.dispose()
    return data, node, _duplicate_keys(node, shown)


def _duplicate_keys(node: yaml.Node | None, shown: str, path: str = "") -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            sub = f"{path}.{key}" if path else key
            if key in seen:
                out.append(ConfigProblem(shown, sub, f"written twice (first at line {seen[key]}); YAML keeps "
                                         "only the last one: remove one of them", k.start_mark.line + 1))
            seen.setdefault(key, k.start_mark.line + 1)
            out.extend(_duplicate_keys(v, shown, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.extend(_duplicate_keys(v, shown, f"{path}[{i}]"))
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the value (or key) at ``loc`` in the node tree, as deep as it exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# ------------------------------------------------------------------------------------------ error text
#: Names people write for our fields (other tools' spellings) -> our field.
SYNONYMS = {
    "wallclock": "walltime", "wall_time": "walltime", "wallclock_time": "walltime", "time": "walltime",
    "time_limit": "walltime", "timelimit": "walltime", "runtime": "walltime", "walltime_limit": "walltime",
    "queue": "partition", "queue_name": "partition", "project": "account", "allocation": "account",
    "ncpus": "cores", "cpus": "cores", "ppn": "cores", "ntasks": "cores", "ntasks_per_node": "cores",
    "cpus_per_node": "cores", "nnodes": "nodes", "num_nodes": "nodes", "node": "nodes", "mem": "memory",
    "memory_per_node": "memory", "ngpus": "gpus", "gpus_per_node": "gpus", "hostname": "host",
    "username": "user", "login": "user", "key": "identity_file", "key_file": "identity_file",
    "keyfile": "identity_file", "ssh_key": "identity_file", "private_key": "identity_file",
    "identityfile": "identity_file", "jump_host": "proxy_jump", "proxyjump": "proxy_jump",
    "proxy": "proxy_jump", "gateway": "proxy_jump", "bastion": "proxy_jump", "known_hosts_file": "known_hosts",
    "queue_type": "scheduler", "q_type": "scheduler", "batch_system": "scheduler", "category": "categories",
    "fworker_category": "categories", "launchpad": "launchpad_file", "lpad_file": "launchpad_file",
    "launchpad_path": "launchpad_file", "workdir": "work_dir", "working_dir": "work_dir",
    "directives": "extra_directives", "extra": "extra_directives", "margin": "walltime_margin",
    "pre_rocket": "setup", "prerun": "setup", "modules": "setup", "environment": "env", "limit": "limits",
    "max_jobs_queue": "max_queued", "max_queue": "max_queued", "max_jobs_running": "max_running",
    "interval": "poll_interval", "sleep_time": "poll_interval", "logdir": "log_dir", "prefix": "job_name_prefix",
}

_TYPE_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping (key: value lines)", type(None): "nothing (null)"}


def _describe(value: Any) -> str:
    words = _TYPE_WORDS.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({words})"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc[-1]`` (navigating nested models by field name)."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = current.model_fields.get(str(part))
        ann = getattr(f, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            current = ann
        else:
            return None
    return current


def _example(model: type[BaseModel] | None, name: str) -> str:
    if model is None or name not in model.model_fields:
        return ""
    ex = model.model_fields[name].examples
    if not ex:
        return ""
    val = ex[0]
    if isinstance(val, str) and "\n" in val:
        return f"{name}: |\n  ..."
    return f"{name}: {json.dumps(val)}"


_OTHER_PLACES: dict[str, dict[str, str]] = {}


def _other_places() -> dict[str, dict[str, str]]:
    """field name -> {model name -> where it belongs}, to say 'walltime belongs under pilot:'."""
    if not _OTHER_PLACES:
        places: dict[type[BaseModel], str] = {
            ClusterConfig: "at the top level of the cluster file", PilotResources: "under 'pilot:'",
            Limits: "under 'limits:'", PilotConfig: "in pilot.yaml", BackoffConfig: "under 'backoff:' in pilot.yaml",
        }
        for model, where in places.items():
            for name in model.model_fields:
                _OTHER_PLACES.setdefault(name, {})[model.__name__] = where
    return _OTHER_PLACES


def _unknown_key(model: type[BaseModel] | None, key: str) -> str:
    known = list(model.model_fields) if model is not None else []
    hint = ""
    where = {k: v for k, v in _other_places().get(key, {}).items() if model is None or k != model.__name__}
    if key.lower() in known:
        hint = f"did you mean '{key.lower()}'? (field names are lower case)"
    elif where:
        hint = f"it belongs {' or '.join(sorted(set(where.values())))}: move it there"
    elif SYNONYMS.get(key.lower()) in known:
        hint = f"did you mean '{SYNONYMS[key.lower()]}'?"
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean '{close[0]}'?"
    if hint:
        return f"unknown field '{key}'; {hint}"
    return (f"unknown field '{key}'; remove it or correct the name"
            + (f" (known fields here: {', '.join(known)})" if known else ""))


def _message(err: Any, model: type[BaseModel] | None, name: str, value: Any) -> str:
    t = err["type"]
    ctx = err.get("ctx") or {}
    if t == "pilot_config":
        return str(ctx.get("message", err["msg"]))
    if t == "extra_forbidden":
        return _unknown_key(model, name)
    if t == "missing":
        ex = _example(model, name)
        return f"required field is missing; add it{', e.g. ' + ex if ex else ''}"
    if t == "enum" and name == "scheduler":
        known = ", ".join(s.value for s in Scheduler)
        close = difflib.get_close_matches(str(value).lower(), [s.value for s in Scheduler], n=1, cutoff=0.5)
        did = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown scheduler {value!r}{did}; write one of: {known}"
    if t == "enum":
        return f"{_describe(value)} is not allowed; write one of: {ctx.get('expected', '')}"
    if t in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_describe(value)}; write e.g. {_example(model, name) or '1'}"
    if t in ("float_type", "float_parsing"):
        return f"expected a number, got {_describe(value)}; write e.g. {_example(model, name) or '60'}"
    if t in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_describe(value)}; write {name}: true or {name}: false"
    if t == "string_type":
        return f"expected text, got {_describe(value)}; write e.g. {_example(model, name) or name + ': text'}"
    if t == "list_type":
        return f"expected a list, got {_describe(value)}; write e.g. {_example(model, name) or name + ': [a, b]'}"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return (f"expected a mapping (indented key: value lines), got {_describe(value)}; "
                f"see docs/configuration.md for the '{name}:' section")
    if t in ("path_type",):
        return f"expected a file path, got {_describe(value)}"
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), "")
        fix = {"greater_than": f"too small: write more than {bound}",
               "greater_than_equal": f"too small: write {bound} or more",
               "less_than": f"too large: write less than {bound}",
               "less_than_equal": f"too large: write {bound} or less"}[t]
        return f"{value!r} is {fix}"
    if t in ("too_short", "string_too_short"):
        return f"must not be empty; write e.g. {_example(model, name) or name + ': ...'}"
    return f"{err['msg']} (got {_describe(value)})"


def _fmt_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _problems_from(exc: ValidationError, model: type[BaseModel], shown: str,
                   node: yaml.Node | None) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # a union type reports each branch; 'walltime' and 'memory' (str | int) are checked by validators
        ctx = err.get("ctx") or {}
        if err["type"] == "pilot_config" and ctx.get("problems"):
            for sub, msg in ctx["problems"]:
                full = loc + _split_loc(sub)
                problems.append(ConfigProblem(shown, _fmt_loc(full), msg, _line_of(node, full)))
            continue
        if err["type"] == "pilot_config" and ctx.get("subfield"):
            loc = loc + (ctx["subfield"],)
        name = str(loc[-1]) if loc else ""
        owner = _model_at(model, loc) if loc else model
        problems.append(ConfigProblem(shown, _fmt_loc(loc), _message(err, owner, name, err.get("input")),
                                      _line_of(node, loc)))
    unique: dict[tuple[str, str], ConfigProblem] = {}
    for p in problems:
        unique.setdefault((p.field, p.message), p)
    return list(unique.values())


def _split_loc(sub: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", sub):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


# ------------------------------------------------------------------------------------------ loading
def _shown(path: Path) -> str:
    return str(path)


def _validate_file(path: Path, model: type[BaseModel], base_dir: Path,
                   allow_empty: bool) -> tuple[BaseModel | None, list[ConfigProblem]]:
    shown = _shown(path)
    data, node, problems = _read_yaml(path, shown)
    if problems and data is None:
        return None, problems
    if data is None:
        if not allow_empty:
            return None, problems + [ConfigProblem(shown, "(file)", "the file is empty; write the cluster "
                                                   "settings (`pilot init` writes a commented example)")]
        data = {}
    if not isinstance(data, dict):
        return None, problems + [ConfigProblem(shown, "(file)", f"expected a mapping of settings (key: value "
                                               f"lines), got {_TYPE_WORDS.get(type(data), type(data).__name__)}; "
                                               "see docs/configuration.md for the layout")]
    bad_keys = [k for k in data if not isinstance(k, str)]
    for k in bad_keys:
        problems.append(ConfigProblem(shown, str(k), f"field names must be text, got {_describe(k)}; "
                                      "see docs/configuration.md for the field names", _line_of(node, (k,))))
    if bad_keys:
        return None, problems
    try:
        obj = model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        return None, problems + _problems_from(e, model, shown, node)
    return obj, problems


def load_pilot_config(path: Path | str) -> PilotConfig:
    """Load ``pilot.yaml`` (relative paths in it are relative to its folder).

    Raises
    ------
    ConfigError
        With every problem found.
    """
    path = Path(path)
    obj, problems = _validate_file(path, PilotConfig, path.parent, allow_empty=True)
    if problems or obj is None:
        raise ConfigError(problems)
    assert isinstance(obj, PilotConfig)
    return obj


def load_cluster(path: Path | str) -> ClusterConfig:
    """Load one cluster file; the cluster's name is the file's stem.

    Raises
    ------
    ConfigError
        With every problem found in the file (and a bad file name).
    """
    cluster, problems = _load_cluster(Path(path))
    if problems or cluster is None:
        raise ConfigError(problems)
    return cluster


def _load_cluster(path: Path) -> tuple[ClusterConfig | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    try:
        validate_name(path.stem, "cluster name (the file name)")
    except ValueError as e:
        problems.append(ConfigProblem(_shown(path), "(file)", f"{e}; rename the file"))
    obj, more = _validate_file(path, ClusterConfig, path.parent, allow_empty=False)
    problems.extend(more)
    if obj is not None:
        assert isinstance(obj, ClusterConfig)
        obj._source = path
    return (obj if not problems else None), problems  # type: ignore[return-value]


@dataclass(frozen=True)
class Config:
    """The whole configuration of one config directory.

    Attributes
    ----------
    pilot : PilotConfig
        ``pilot.yaml``.
    clusters : dict[str, ClusterConfig]
        Cluster name (file stem) -> its settings, sorted by name.
    config_dir : Path
        The directory they came from.
    """

    pilot: PilotConfig
    clusters: dict[str, ClusterConfig]
    config_dir: Path
    problems: list[ConfigProblem] = field(default_factory=list, compare=False, repr=False)

    @property
    def categories(self) -> list[str]:
        """Every category some cluster serves, sorted."""
        return sorted({c for cl in self.clusters.values() for c in cl.categories})

    def cluster(self, name: str) -> ClusterConfig:
        """The cluster called ``name``.

        Raises
        ------
        KeyError
            Listing the known clusters.
        """
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(self.clusters) or "none"
            close = difflib.get_close_matches(name, list(self.clusters), n=1)
            did = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"no cluster {name!r}{did} in {self.config_dir / CLUSTERS_DIR}; "
                           f"known clusters: {known}") from None


def load_config(config_dir: Path | str) -> Config:
    """Load ``pilot.yaml`` and every ``clusters/*.yaml`` of ``config_dir``.

    Parameters
    ----------
    config_dir : Path | str
        The configuration directory ('~' is expanded).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Listing every problem in every file (all files are checked before raising).
    """
    config_dir = Path(os.path.expanduser(str(config_dir)))
    problems: list[ConfigProblem] = []
    if not config_dir.is_dir():
        raise ConfigError([ConfigProblem(str(config_dir), "(dir)", "configuration directory not found; run "
                                         f"`pilot --config-dir {config_dir} init` to create it, or pass "
                                         "--config-dir / set PILOT_CONFIG_DIR to an existing one")])
    pilot_path = config_dir / PILOT_FILE
    pilot_obj, more = _validate_file(pilot_path, PilotConfig, config_dir, allow_empty=True)
    problems.extend(more)

    clusters: dict[str, ClusterConfig] = {}
    cdir = config_dir / CLUSTERS_DIR
    files = sorted([*cdir.glob("*.yaml"), *cdir.glob("*.yml")]) if cdir.is_dir() else []
    if not files:
        problems.append(ConfigProblem(str(cdir), "(dir)", "no cluster files: add one clusters/NAME.yaml per "
                                      "cluster (`pilot init` writes clusters/example.yaml)"))
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            problems.append(ConfigProblem(_shown(path), "(file)", f"cluster {path.stem!r} is also defined in "
                                          f"{stems[path.stem].name}: keep one of the two files"))
            continue
        stems[path.stem] = path
        cluster, more = _load_cluster(path)
        problems.extend(more)
        if cluster is not None:
            clusters[path.stem] = cluster

    if problems:
        raise ConfigError(problems)
    assert isinstance(pilot_obj, PilotConfig)
    return Config(pilot=pilot_obj, clusters=dict(sorted(clusters.items())), config_dir=config_dir)


def current_user() -> str:
    """The local user name (what SSH uses when ``user`` is null and ~/.ssh/config says nothing)."""
    return getpass.getuser()
