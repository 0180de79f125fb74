"""Times as ISO 8601 UTC text: the one form of the ``--json`` documents of ``pilot status`` and ``pilot report``.

FireWorks stores launch times as ``datetime.isoformat()`` of UTC times, and the report's window bounds must
compare with those strings, so the form is FireWorks' own without the offset. A leaf of the root package
(it imports nothing of ``pilot``), so that both rooms, which may not import each other, share it.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["iso_utc"]


def iso_utc(t: float) -> str:
    """Epoch seconds as the ISO UTC text FireWorks stores (``2024-05-01T12:00:00[.ffffff]``, no offset).

    Strings in this form compare like the times they stand for, with or without FireWorks' ``+00:00``.
    """
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f" if d.microsecond else "%Y-%m-%dT%H:%M:%S")
