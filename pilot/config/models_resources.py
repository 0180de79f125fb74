"""What a pilot job asks the scheduler for: a cluster file's ``pilot:`` section, or each of its ``profiles:``.

A cluster often has several queues with different limits (short, long, GPU, debug). Each **queue profile** is
one pilot shape: its wall time, nodes, cores, GPUs and memory, its partition/queue, account and QoS, the
categories it serves, and whether its pilots pack several Fireworks at once (``pack``). ``pilot:`` is the
one-profile form (named ``default``), so a file written before profiles existed means what it meant.

The wall-time format and which options exist depend on the scheduler, which the cluster file names; so the
per-scheduler checks (:func:`check_resources`) run from the cluster's validators, once the scheduler is known.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from pilot.config.errors import describe, field_error, field_errors
from pilot.config.units import (
    QUEUE_RE,
    Scheduler,
    one_line,
    parse_memory_mb,
    parse_walltime,
    scheduler_resource_problems,
    validate_name,
)

__all__ = ["DEFAULT_PROFILE", "PilotResources", "check_one_form", "check_profiles", "check_resources"]

#: the name of the one profile a ``pilot:`` section makes
DEFAULT_PROFILE = "default"


class PilotResources(BaseModel):
    """One pilot shape: the ``pilot:`` section of a cluster file, or one entry of its ``profiles:``."""

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
    categories: list[str] | None = Field(None, description="The categories this profile's pilots serve (each "
                                         "one of the cluster's categories); null: all of them.",
                                         examples=[["md"]])
    pack: bool = Field(False, description="Run several Fireworks at once in one pilot, each with the cores "
                       "and GPUs it asks for (spec._pilot.cores, default 1; spec._pilot.gpus, default 0), bound "
                       "to its own cores (PILOT_CORE_LIST, affinity) and GPUs (CUDA_VISIBLE_DEVICES). false: "
                       "one Firework at a time, holding the whole pilot.", examples=[False])
    extra_directives: list[str] = Field(default_factory=list,
                                        description="More scheduler options, one per entry: either a "
                                        "whole directive line ('#SBATCH --constraint=knl') or just the option "
                                        "('--constraint=knl'), to which the scheduler's prefix is added.",
                                        examples=[["--constraint=knl"]])

    _walltime_seconds: int | None = PrivateAttr(None)

    @property
    def total_cores(self) -> int:
        """Cores of one pilot: nodes times cores per node (what it is charged for, at the least)."""
        return int(self.nodes) * int(self.cores)

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
            raise field_error(f"expected a duration, got {describe(v)}: write it in quotes, e.g. \"24:00:00\"")
        if isinstance(v, str):
            one_line(v, "walltime")
        return v

    @field_validator("partition", "account", "qos", mode="before")
    @classmethod
    def _queue_like(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)          # numeric account names exist
        if isinstance(v, str) and not QUEUE_RE.match(v):
            raise field_error(f"{v!r} cannot be used as {info.field_name}: use only letters, digits and "
                              "'_ . @ : + -' (no spaces, quotes, line breaks or shell characters)")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is not None:
            try:
                parse_memory_mb(v)
            except ValueError as e:
                raise field_error(str(e)) from None
        return v

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        problems = []
        for i, c in enumerate(v):
            try:
                validate_name(c, "category")
            except ValueError as e:
                problems.append((f"[{i}]", str(e)))
        if not v:
            problems.append(("", "empty: list the categories this profile serves, or remove the field for all"))
        if problems:
            raise field_errors(problems)
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
            raise field_errors(problems)
        return [line.strip() for line in v]


def check_resources(v: PilotResources, sched: Scheduler) -> list[tuple[str, str]]:
    """The checks that need the scheduler: the wall time in its format (kept in seconds on ``v``), and the
    options it has. Returns ``(sub-field, message)`` problems."""
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
        return problems
    # what the scheduler cannot express as written (Grid Engine: slots need a parallel environment, no GPUs)
    problems.extend(scheduler_resource_problems(sched, v.nodes, v.cores, v.gpus, v.extra_directives))
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
    return problems


def check_profiles(profiles: dict[str, PilotResources], sched: Scheduler | None,
                   data: dict[str, Any]) -> dict[str, PilotResources]:
    """``profiles:``: names usable in logs and records, each profile right for the scheduler, and its categories
    among the cluster's (``data``: the fields validated before it)."""
    problems: list[tuple[str, str]] = []
    cats = data.get("categories")
    for name, res in profiles.items():
        try:
            validate_name(name, "profile name")
        except ValueError as e:
            problems.append((name, str(e)))
            continue
        if sched is not None:
            problems += [(f"{name}.{field}", msg) for field, msg in check_resources(res, sched)]
        if isinstance(cats, list) and res.categories:
            for i, c in enumerate(res.categories):
                if c not in cats:
                    problems.append((f"{name}.categories[{i}]",
                                     f"category {c!r} is not one of the cluster's categories ({', '.join(cats)}): "
                                     "add it to categories, or remove it here"))
    if isinstance(cats, list) and profiles and not problems:
        for c in cats:
            if not any(c in (res.categories or cats) for res in profiles.values()):
                problems.append(("", f"no profile serves category {c!r}: add it to the categories of a profile "
                                     "(or remove a profile's categories to serve all), or remove it from categories"))
    if problems:
        raise field_errors(problems)
    return profiles


def check_one_form(pilot: PilotResources | None, profiles: dict[str, PilotResources]) -> None:
    """Exactly one of ``pilot:`` (one shape) and ``profiles:`` (several) describes the pilots."""
    if pilot is not None and profiles:
        raise field_error("both pilot and profiles are set: write the one shape under pilot, or several under "
                          "profiles (e.g. profiles: {gpu: {...}, cpu: {...}}), not both", subfield="profiles")
    if pilot is None and not profiles:
        raise field_error("missing: write what every pilot job asks the scheduler for, e.g. pilot: {walltime: "
                          "\"24:00:00\", cores: 16}, or several queue profiles under profiles:", subfield="pilot")
