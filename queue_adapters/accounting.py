"""Core-hours as the scheduler counts them: the :class:`Usage` of one job, and helpers the adapters share.

A campaign's budget is charged by the site in the scheduler's own numbers, so the manager never estimates
what the scheduler can tell: each adapter that can builds one accounting query for a list of job ids
(``accounting_command(job_ids)``) and parses its output into ``{job_id: Usage}``
(``parse_accounting(returncode, stdout, stderr)``), pure as the rest of the adapters.

What each scheduler charges (core-seconds = cpus x elapsed seconds):

* SLURM: ``CPUTimeRAW`` of the allocation (``sacct -X``), which Slurm defines as ``AllocCPUS x ElapsedRaw``
  (sacct(1), "CPUTimeRAW"). It is kept as printed: it is the number ``sreport``/``sshare`` bill.
* PBS Pro: ``resources_used.walltime`` x ``resources_used.ncpus`` (``Resource_List.ncpus`` before the job
  reports usage), ``Account_Name``, from ``qstat -x -f -F json`` (qstat(1B); PBS Reference Guide,
  "Resources built in": ``resources_used.walltime`` is the job's elapsed wall time).
* LSF: ``run_time`` x ``nalloc_slot`` (``slots`` on versions without it), ``proj_name``, from
  ``bjobs -o ... -json -a`` (bjobs(1) -o fields; ``run_time`` prints ``N second(s)``, or ``hh:mm:ss`` with
  ``-hms``/``LSB_HMS_TIME_FORMAT``).
* Torque, SGE and the local scheduler: no accounting query here (``accounting_command`` is absent or returns
  ``None``): the manager then has no core-hours for those clusters and says so, it never guesses.

A job the query does not list gets no entry (not an error); a failed query raises
:class:`~queue_adapters.base.SchedulerQueryError` like the status parsers do.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Accounting", "Usage", "accounting_of", "batches", "duration_seconds"]


@dataclass(frozen=True)
class Usage:
    """What the scheduler says one job has used so far (or in all, when ``final``).

    Attributes
    ----------
    job_id : str
        The id as the query printed it (with ``;cluster`` for a federated SLURM id).
    cpus : int
        Cores (CPUs, slots) allocated to the job.
    seconds : int
        Elapsed wall-clock seconds the job has run (0 while pending).
    core_seconds : int
        What the scheduler charges: ``CPUTimeRAW`` for SLURM, ``cpus x seconds`` otherwise.
    account : str | None
        The account (project) charged, as the scheduler prints it; None when it prints none.
    start, end : datetime | None
        When the job started and ended (aware UTC), as the scheduler says.
    final : bool
        The job is over: these numbers will not change any more.
    """

    job_id: str
    cpus: int
    seconds: int
    core_seconds: int
    account: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    final: bool = False

    def to_record(self) -> dict[str, Any]:
        """The ``usage`` field of a pilot record: times as epoch seconds."""
        return {"cpus": self.cpus, "seconds": self.seconds, "core_seconds": self.core_seconds,
                "account": self.account, "start": self.start.timestamp() if self.start else None,
                "end": self.end.timestamp() if self.end else None, "final": self.final}


class Accounting(Protocol):
    """An adapter that can ask its scheduler what jobs used (see the module docstring)."""

    def accounting_command(self, job_ids: Sequence[str]) -> list[str] | None: ...

    def parse_accounting(self, returncode: int, stdout: str, stderr: str) -> dict[str, Usage]: ...


def accounting_of(adapter: object, probe: Sequence[str] = ("1",)) -> Accounting | None:
    """``adapter`` when it has an accounting query (for ``probe`` ids), else None (Torque, SGE, local)."""
    build = getattr(adapter, "accounting_command", None)
    if build is None or not hasattr(adapter, "parse_accounting"):
        return None
    try:
        return adapter if build(list(probe)) is not None else None  # type: ignore[return-value]
    except ValueError:
        return adapter  # type: ignore[return-value]  # the probe id did not suit its id syntax


def batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (one accounting query each: command lines have limits)."""
    for i in range(0, len(items), max(1, size)):
        yield list(items[i:i + max(1, size)])


_HMS = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})(?:\.\d+)?\s*$")
_SECONDS = re.compile(r"^\s*(\d+)(?:\.\d+)?\s*(?:second\(s\)|seconds?|sec\.?|s)?\s*$", re.IGNORECASE)


def duration_seconds(value: Any) -> int | None:
    """A duration as schedulers print it, in whole seconds: ``41:45:13``, ``1-02:03:04``, ``754 second(s)``,
    ``754`` or a number; None for anything else (``-``, empty, garbage)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value) if value >= 0 else None
    text = str(value)
    m = _HMS.match(text)
    if m:
        days, h, mi, s = (int(g) if g else 0 for g in m.groups())
        return ((days * 24 + h) * 60 + mi) * 60 + s
    m = _SECONDS.match(text)
    return int(m.group(1)) if m else None
