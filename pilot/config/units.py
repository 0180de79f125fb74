"""Values in the configuration: the schedulers, wall times (each scheduler's own format), memory amounts,
names (clusters, categories, job names) and the patterns that keep hosts, queues and paths safe in job scripts.

Wall-time formats come from the schedulers' documentation: SLURM sbatch(1) ``--time``, PBS ``-l walltime``,
Torque qsub ``-l walltime`` (pbs_resources), LSF bsub ``-W``, Grid Engine ``-l h_rt`` (sge_types(1), TIME_SPECIFIER).
"""

from __future__ import annotations

import math
import os
import re
from enum import Enum
from pathlib import Path

from pydantic import ValidationInfo

from pilot.config.errors import field_error

__all__ = [
    "ENV_NAME_RE", "HOST_RE", "JOB_NAME_RE", "NAME_RE", "PATH_RE", "PREFIX_RE", "PROXY_RE", "QUEUE_RE",
    "RESERVED_ENV", "SLURM_MAX_SIGNAL_TIME", "USER_RE", "Scheduler", "base_dir_of", "expand_path",
    "format_walltime", "one_line", "parse_memory_mb", "parse_walltime", "scheduler_resource_problems",
    "sge_parallel_environment", "validate_job_name", "validate_name",
]


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
    "PILOT_WALLTIME", "PILOT_START", "PILOT_EXIT_FILE", "PILOT_CORES", "PILOT_NODES", "PILOT_PROFILE",
})

#: SLURM's ``--signal=...@N`` accepts at most 65535 seconds (sbatch(1)).
SLURM_MAX_SIGNAL_TIME = 65535


class Scheduler(str, Enum):
    """The batch systems a cluster can use."""

    SLURM = "slurm"
    PBS = "pbs"
    LSF = "lsf"
    LOCAL = "local"
    TORQUE = "torque"   # Torque / old OpenPBS: #PBS directives, `-l nodes=N:ppn=C`, `qstat -f` text
    SGE = "sge"         # Grid Engine (Son of Grid Engine, OGS, Univa/Altair): #$ directives, `qstat -xml`, `qacct`

    @property
    def directive_prefix(self) -> str | None:
        """The comment prefix of this scheduler's job-script directives (``None`` for local).

        Torque reads ``#PBS`` lines like PBS Pro; Grid Engine reads ``#$`` lines (qsub(1), ``-C``).
        """
        return {"slurm": "#SBATCH", "pbs": "#PBS", "torque": "#PBS", "lsf": "#BSUB", "sge": "#$"}.get(self.value)

    @property
    def walltime_formats(self) -> str:
        """The wall-time formats this scheduler accepts, in words (for error messages)."""
        return _WALLTIME_FORMATS[self]


_WALLTIME_FORMATS = {
    Scheduler.SLURM: ('"minutes", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM" or "D-HH:MM:SS" '
                      '(a bare number is minutes), e.g. "24:00:00"'),
    Scheduler.PBS: '"HH:MM:SS", "MM:SS" or seconds (a bare number is seconds), e.g. "24:00:00"',
    Scheduler.TORQUE: '"HH:MM:SS", "MM:SS" or seconds (a bare number is seconds), e.g. "24:00:00"',
    Scheduler.LSF: '"HH:MM" or minutes (a bare number is minutes), e.g. "24:00"',
    Scheduler.SGE: ('"HH:MM:SS" (an empty field is 0, "2::" is two hours) or seconds (a bare number is seconds), '
                    'e.g. "24:00:00"'),
    Scheduler.LOCAL: '"HH:MM:SS", "MM:SS" or seconds (a bare number is seconds), e.g. "01:00:00"',
}


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
    PBS and Torque (``-l walltime``) and local: ``[[HH:]MM:]SS`` (a bare number is seconds).
    LSF (bsub ``-W``): ``[HH:]MM`` (a bare number is minutes).
    Grid Engine (``-l h_rt``, sge_types(1) TIME_SPECIFIER): seconds, or exactly three fields ``H:M:S`` of which
    any may be empty (``1::1`` is an hour and a second); ``MM:SS`` is not a Grid Engine time.

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
    if sched is Scheduler.SGE:
        # sge_types(1): "If a number would be zero it can be left out but the separating colon must remain"
        if len(parts) != 3 or not all(p == "" or _INT_RE.match(p) for p in parts):
            raise bad
        parts = [p or "0" for p in parts]
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
    if len(nums) == 2:          # MM:SS for SLURM, PBS, Torque and local
        return nums[0] * 60 + nums[1]
    return nums[0] * 3600 + nums[1] * 60 + nums[2]


def format_walltime(seconds: int, scheduler: Scheduler | str) -> str:
    """Write ``seconds`` the way ``scheduler``'s directive expects it.

    SLURM: ``HH:MM:SS`` or ``D-HH:MM:SS`` (at least a day); PBS, Torque, Grid Engine (``h_rt``) and local:
    ``HH:MM:SS`` (hours may exceed 24); LSF: ``H:MM`` (whole minutes, rounded up).
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


def sge_parallel_environment(extra_directives: list[str]) -> tuple[str, int | None] | None:
    """The ``-pe NAME [SLOTS]`` request among a cluster's ``extra_directives`` (plain options or ``#$`` lines).

    Grid Engine gives a job more than one slot only through a parallel environment, whose name is site
    configuration (``qconf -spl`` lists them), so the cluster file names it: ``-pe smp`` (the built-in
    template adds the slot count, nodes x cores) or ``-pe smp 16``. Returns ``(name, slots or None)``, or
    ``None`` when there is no ``-pe``.
    """
    for line in extra_directives:
        words = line.split()
        if words[:1] == ["#$"]:
            words = words[1:]
        if len(words) >= 2 and words[0] == "-pe":
            slots = words[2] if len(words) > 2 else None
            return words[1], (int(slots) if slots is not None and _INT_RE.match(slots) else None)
    return None


def scheduler_resource_problems(scheduler: Scheduler | str, nodes: int, cores: int, gpus: int | None,
                                extra_directives: list[str]) -> list[tuple[str, str]]:
    """What a ``pilot:`` section asks that the scheduler cannot express as written, as ``(field, message)`` pairs.

    Grid Engine (``sge``): slots come only through a parallel environment (see
    :func:`sge_parallel_environment`), and it has no standard GPU request (sites define their own complex,
    e.g. ``-l gpu=1``). Torque takes everything through ``-l nodes=N:ppn=C[:gpus=G]``; the others are checked
    elsewhere. ``qos`` (SLURM only) is refused for every other scheduler by the cluster model.
    """
    sched = Scheduler(scheduler)
    problems: list[tuple[str, str]] = []
    if sched is not Scheduler.SGE:
        return problems
    if gpus is not None:
        problems.append(("gpus", "Grid Engine has no standard GPU request: remove gpus and put your site's "
                                 "GPU resource in extra_directives, e.g. '-l gpu=1' (qconf -sc lists them)"))
    slots = nodes * cores
    pe = sge_parallel_environment(extra_directives)
    if pe is None and slots > 1:
        problems.append(("extra_directives", f"Grid Engine gives a job {slots} slots (nodes x cores) only through "
                                             "a parallel environment: add '-pe NAME' to extra_directives (the "
                                             "slot count is added; qconf -spl lists the names), e.g. '-pe smp'"))
    elif pe is not None and pe[1] is not None and pe[1] != slots:
        problems.append(("extra_directives", f"'-pe {pe[0]} {pe[1]}' asks for {pe[1]} slots but nodes x cores is "
                                             f"{slots}: write '-pe {pe[0]}' (the template adds {slots}) or make "
                                             "them agree"))
    return problems


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


# ------------------------------------------------------------------------------------------ paths and text
def expand_path(path: str | os.PathLike[str], base: Path | None) -> Path:
    """Expand ``~`` and make a relative path relative to ``base`` (when given)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def existing_file(path: str | os.PathLike[str], base: Path | None, fix: str) -> Path:
    """``path`` expanded (:func:`expand_path`) when it names an existing file; else the field error
    ``file not found: PATH; FIX`` (the one wording every file field of the config uses)."""
    p = expand_path(path, base)
    if not p.is_file():
        raise field_error(f"file not found: {p}; {fix}")
    return p


def base_dir_of(info: ValidationInfo) -> Path | None:
    """The folder relative paths are relative to (``base_dir`` in the validation context, set by loading)."""
    ctx = info.context or {}
    base = ctx.get("base_dir")
    return Path(base) if base else None


def one_line(value: str, what: str) -> str:
    """``value`` unchanged if it has no line break or NUL (it lands in a directive or a shell line)."""
    if any(c in value for c in "\n\r\0"):
        raise field_error(f"{what} must be one line: remove the line break")
    return value
