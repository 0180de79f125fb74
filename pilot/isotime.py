"""Times as ISO 8601 UTC text: the one form of the ``--json`` documents of ``pilot status`` and ``pilot report``,
and the one reader of the times FireWorks stores.

FireWorks stores launch times as ``datetime.isoformat()`` of UTC times, and the report's window bounds must
compare with those strings, so the form is FireWorks' own without the offset. A leaf of the root package
(it imports nothing of ``pilot``), so that both rooms, which may not import each other, share it.
"""

from __future__ import annotations

import datetime as _dt
import math

__all__ = ["epoch_seconds", "iso_utc"]


def iso_utc(t: float) -> str:
    """Epoch seconds as the ISO UTC text FireWorks stores (``2024-05-01T12:00:00[.ffffff]``, no offset).

    Strings in this form compare like the times they stand for, with or without FireWorks' ``+00:00``.
    """
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f" if d.microsecond else "%Y-%m-%dT%H:%M:%S")


def epoch_seconds(value: object) -> float | None:
    """Epoch seconds of a time as FireWorks or the manager stores it; None if it is not one.

    Accepted: ISO text as FireWorks writes it (``2024-05-01T12:00:00.5``; a space for the ``T``, a ``Z`` or an
    offset are fine too), a :class:`datetime.datetime`, or epoch seconds (a finite number). Naive times are UTC.
    """
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)).timestamp()
    if isinstance(value, str):
        return _parse_iso(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parse_iso(text: str) -> float | None:
    if len(text) < 10:
        return None
    s = text.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()
