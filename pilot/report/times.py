"""Times of ``pilot report``: ISO UTC text as FireWorks stores it, UTC days, and
the ``--since``/``--until`` values people type.

FireWorks stores launch times as ISO strings in UTC without an offset, so the report's window bounds and its
JSON use the same form (:func:`iso_utc`, from :mod:`pilot.isotime`, which ``pilot status --json`` uses too):
such strings compare like the times they stand for. Stored times are read by :func:`pilot.isotime.epoch_seconds`
(``pilot status`` reads them with it too).
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections.abc import Iterable

from pilot.isotime import epoch_seconds, iso_utc

__all__ = ["bin_start", "iso_utc", "parse_when", "split_days", "utc_day"]


def utc_day(t: float) -> str:
    """``YYYY-MM-DD`` of epoch seconds, in UTC."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d")


def bin_start(prefix: str) -> float | None:
    """Epoch seconds of the start of a time bin given as an ISO prefix (``2024-05-01T12``, ``...:34``)."""
    n = len(prefix)
    if n == 13:
        prefix += ":00:00"
    elif n == 16:
        prefix += ":00"
    return epoch_seconds(prefix)


_REL = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|hours|d|day|days|w|week|weeks)\s*(ago)?\s*$", re.IGNORECASE
)
_REL_UNITS = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}


def parse_when(text: str, now: float | None = None) -> float:
    """Read a ``--since``/``--until`` value: an ISO date or time, or an age.

    Accepted: ``2024-05-01`` (midnight UTC), ``2024-05-01T12:30`` / ``2024-05-01 12:30:00`` (UTC unless an
    offset is given, e.g. ``+02:00``), ``now``, ``today`` (midnight UTC), and ages ``90s``, ``30m``, ``12h``,
    ``3d``, ``2w`` (optionally followed by ``ago``).

    Returns
    -------
    float
        Epoch seconds.

    Raises
    ------
    ValueError
        Saying which forms are accepted.
    """
    now = time.time() if now is None else float(now)
    s = text.strip()
    low = s.lower()
    if low == "now":
        return now
    if low == "today":
        d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
        return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    m = _REL.match(s)
    if m:
        return now - float(m.group(1)) * _REL_UNITS[m.group(2).lower()]
    t = epoch_seconds(s)
    if t is None:
        raise ValueError(
            f"{text!r} is not a date: write 2024-05-01, 2024-05-01T12:30 (UTC, or with an offset "
            "such as +02:00), today, now, or an age such as 12h, 3d, 2w"
        )
    return t



def split_days(start: float, end: float) -> Iterable[tuple[str, float]]:
    """``(UTC day, seconds)`` pieces of the interval [start, end)."""
    t = start
    while t < end:
        d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        midnight = (d.replace(hour=0, minute=0, second=0, microsecond=0) + _dt.timedelta(days=1)).timestamp()
        stop = min(end, midnight)
        yield d.strftime("%Y-%m-%d"), stop - t
        t = stop
