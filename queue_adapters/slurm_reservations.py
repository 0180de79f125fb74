"""SLURM reservations: ``scontrol show reservation`` (pure: the argument list and the parser).

Why the manager asks: a maintenance reservation (``scontrol create reservation ... flags=maint``) makes SLURM
hold back every job whose time limit runs into it; a pilot submitted then waits in the queue until the
maintenance is over, holding a slot of ``max_queued`` while its work could run elsewhere
(:mod:`pilot.manager.maintenance`).

Command: ``env SLURM_TIME_FORMAT=%s scontrol -o show reservation``. ``-o`` prints one line per reservation
(without it, one block of indented lines each, separated by a blank line: both are read here);
``SLURM_TIME_FORMAT=%s`` (a strftime format, honoured by scontrol as by squeue, see ``man scontrol``
ENVIRONMENT VARIABLES) makes StartTime and EndTime epoch seconds, so they are unambiguous whatever the
cluster's time zone. A site whose scontrol ignores it prints its local wall-clock time (``2026-12-08T04:12:44``),
read in the zone given to the parser (the cluster's ``timezone``, as the adapter reads squeue's times).

What scontrol prints (Debian slurm-wlm 22.05.8, captured on the test clusters: the fixtures of
``tests/adapters/test_slurm_reservations.py``)::

    ReservationName=maint-1 StartTime=1796703164 EndTime=1796706764 Duration=01:00:00 Nodes=n1 NodeCnt=1
    CoreCnt=8 Features=(null) PartitionName=(null) Flags=MAINT,SPEC_NODES,ALL_NODES TRES=cpu=8 Users=root ...

(one line), ``No reservations in the system`` when there is none, and on failure a message on stderr with exit
status 1 (``slurm_load_reservations error: Unable to contact slurm controller (connect failure)``). A site with
``PrivateData=reservations`` shows reservations to administrators only: to a user the answer is then the same as
no reservation at all, which nothing here can tell apart.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from .base import UTC, SchedulerQueryError, epoch_to_utc, local_to_utc

__all__ = ["NO_RESERVATIONS", "Reservation", "parse_reservations", "reservations_command"]

#: what scontrol prints when there is no reservation (src/scontrol/info_resv.c)
NO_RESERVATIONS = "No reservations in the system"
#: values scontrol prints for "none" (``(null)``, ``N/A``, ``Unknown``, ``None``)
_EMPTY = frozenset({"", "(null)", "n/a", "N/A", "Unknown", "None"})
#: a key of a reservation's ``Key=value`` fields: a word at the start of a line or after a space (``TRES=cpu=8``
#: is one field: ``cpu`` follows ``=``)
_KEY_RE = re.compile(r"(?:(?<=\s)|^)([A-Za-z][A-Za-z0-9_]*)=")


@dataclass(frozen=True)
class Reservation:
    """One reservation as ``scontrol show reservation`` lists it.

    Attributes
    ----------
    name : str
        ``ReservationName``.
    start, end : datetime.datetime | None
        ``StartTime``, ``EndTime`` in UTC (timezone-aware); ``end`` None: no end (``Duration=UNLIMITED``).
    flags : tuple[str, ...]
        ``Flags``, upper case (``MAINT``, ``IGNORE_JOBS``, ``SPEC_NODES``, ``ALL_NODES``...).
    partition : str | None
        ``PartitionName`` (None: ``(null)``, the reservation names nodes, not a partition).
    nodes : str | None
        ``Nodes`` (a host list such as ``n[1-4]``).
    state : str | None
        ``State``: ``ACTIVE`` or ``INACTIVE`` (not started yet).
    """

    name: str
    start: dt.datetime | None
    end: dt.datetime | None
    flags: tuple[str, ...] = ()
    partition: str | None = None
    nodes: str | None = None
    state: str | None = None

    @property
    def maintenance(self) -> bool:
        """A maintenance reservation (``Flags`` has ``MAINT``)."""
        return "MAINT" in self.flags


def reservations_command() -> list[str]:
    """``env SLURM_TIME_FORMAT=%s scontrol -o show reservation``: every reservation, one line each, epoch times."""
    return ["env", "SLURM_TIME_FORMAT=%s", "scontrol", "-o", "show", "reservation"]


def _fields(block: str) -> dict[str, str]:
    """The ``Key=value`` fields of one reservation (the first of each key; values run to the next key)."""
    text = " ".join(block.split())
    keys = list(_KEY_RE.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        out.setdefault(m.group(1), text[m.end():end].strip())
    return out


def _time(text: str, tz: dt.tzinfo) -> dt.datetime | None:
    text = text.strip()
    if text in _EMPTY:
        return None
    if re.fullmatch(r"\d{1,12}", text):
        return epoch_to_utc(float(text))
    try:
        return local_to_utc(dt.datetime.fromisoformat(text), tz)
    except ValueError:
        return None


def parse_reservations(returncode: int, stdout: str, stderr: str, tz: dt.tzinfo = UTC) -> list[Reservation]:
    """The reservations in the output of :func:`reservations_command` (or of ``scontrol show reservation``).

    A reservation without a readable StartTime is left out (nothing can be judged of it). Times without a zone
    (scontrol ignored ``SLURM_TIME_FORMAT``) are read in ``tz``.

    Raises
    ------
    SchedulerQueryError
        scontrol failed (exit status not 0); retryable: a controller that is down or slow comes back.
    """
    if returncode != 0:
        raise SchedulerQueryError("scontrol show reservation failed", command="scontrol", returncode=returncode,
                                  stdout=stdout, stderr=stderr, retryable=True)
    if stdout.strip().startswith(NO_RESERVATIONS):
        return []
    blocks = re.split(r"(?m)^(?=\s*ReservationName=)", stdout)
    out = []
    for block in blocks:
        f = _fields(block)
        name = f.get("ReservationName")
        start = _time(f.get("StartTime", ""), tz)
        if not name or start is None:
            continue
        flags = tuple(x.strip().upper() for x in f.get("Flags", "").split(",") if x.strip() and x not in _EMPTY)
        part = f.get("PartitionName", "")
        nodes = f.get("Nodes", "")
        out.append(Reservation(name=name, start=start, end=_time(f.get("EndTime", ""), tz), flags=flags,
                               partition=None if part in _EMPTY else part, nodes=None if nodes in _EMPTY else nodes,
                               state=f.get("State") or None))
    return out
