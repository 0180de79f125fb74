"""Pure scheduler adapters: build argument lists, parse outputs. No I/O.

``get_adapter("slurm")`` returns the adapter of a scheduler; see ``docs/queue-adapters.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from .base import (
    CancelResult,
    JobState,
    JobStatus,
    QueueAdapter,
    SchedulerQueryError,
    SubmitOutcome,
    SubmitResult,
    exit_file_name,
    filter_statuses,
    job_name,
    parse_exit_file,
    parse_job_name,
)
from .local import LocalAdapter
from .lsf import LsfAdapter
from .pbs import PbsAdapter
from .sge import SgeAdapter
from .slurm import SlurmAdapter

__all__ = [
    "ADAPTERS",
    "CancelResult",
    "JobState",
    "JobStatus",
    "LocalAdapter",
    "LsfAdapter",
    "PbsAdapter",
    "QueueAdapter",
    "SchedulerQueryError",
    "SgeAdapter",
    "SlurmAdapter",
    "SubmitOutcome",
    "SubmitResult",
    "exit_file_name",
    "filter_statuses",
    "get_adapter",
    "job_name",
    "parse_exit_file",
    "parse_job_name",
]

#: Scheduler name -> factory taking ``tz``.  "pbs" is PBS Pro/OpenPBS (``qstat -F json``);
#: "torque" is Torque/old PBS (plain ``qstat -f`` text).
ADAPTERS: dict[str, Callable[..., QueueAdapter]] = {
    "slurm": SlurmAdapter,
    "pbs": lambda **kw: PbsAdapter(flavor="pbspro", **kw),
    "pbspro": lambda **kw: PbsAdapter(flavor="pbspro", **kw),
    "openpbs": lambda **kw: PbsAdapter(flavor="pbspro", **kw),
    "torque": lambda **kw: PbsAdapter(flavor="torque", **kw),
    "lsf": LsfAdapter,
    "sge": SgeAdapter,
    "local": LocalAdapter,
}


def get_adapter(name: str, *, tz: dt.tzinfo | None = None) -> QueueAdapter:
    """Return a new adapter for the scheduler called ``name`` (case-insensitive).

    Parameters
    ----------
    name
        ``slurm``, ``pbs`` (= ``pbspro``, ``openpbs``), ``torque``, ``lsf``, ``sge`` or ``local``
        (:mod:`pilot.localsched`, pilots as local processes).
    tz
        Time zone of the scheduler's wall-clock time stamps (PBS, LSF, SGE print local
        times without a zone).  Default: UTC.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    key = name.strip().lower()
    factory = ADAPTERS.get(key)
    if factory is None:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(
            f"unknown scheduler {name!r}: the queue adapters know {known} "
            "(set 'scheduler' in the cluster configuration to one of them)"
        )
    return factory(tz=tz)
