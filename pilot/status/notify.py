"""The NOTIFICATIONS section of ``pilot status``: the channels of ``notify:`` (pilot.yaml), what each sent last,
whether it is failing now (its last failure is newer than its last send), and how many events wait.

Read from the outbox (:mod:`pilot.notify.outbox`, the LaunchPad's ``pilot_notifications``): two queries. Shown
when the config has ``notify:`` or the database has an outbox (a config-less ``pilot status`` still sees it).
No secret is read: the channels are named by the SMTP server and recipients, or the webhook's scheme and host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.isotime import iso_utc
from pilot.notify.outbox import COLLECTION, STATE_ID

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["gather_notifications", "notification_lines", "notifications_json"]


#: ``pilot status`` shows at most this many characters of a channel's last error (one table row).
ERROR_SHOWN = 300


def _error(v: Any) -> str | None:
    if v is None:
        return None
    text = " ".join(str(v).split())
    return text if len(text) <= ERROR_SHOWN else text[:ERROR_SHOWN - 3] + "..."


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def gather_notifications(q: Any, config: Config | None) -> dict[str, Any] | None:
    """The section as a JSON-ready dict (``notifications`` in ``pilot status --json``), or None when not shown.

    ``{"channels": [{"name", "where", "last_sent", "last_subject", "last_error", "last_error_time",
    "failing"}], "pending": n, "events": [...kinds], "unreachable_after": s}`` (times as ISO UTC text).
    """
    notify = config.pilot.notify if config is not None else None
    state = q.find_one(COLLECTION, {"_id": STATE_ID})
    if notify is None and state is None:
        return None
    where: dict[str, str] = {}
    if notify is not None:
        if notify.email is not None:
            where["email"] = f"{notify.email.where()} to {', '.join(notify.email.to)}"
        if notify.webhook is not None:
            where["webhook"] = notify.webhook.where()   # "(cannot read FILE)" when its url_file went away
    seen = (state or {}).get("channels") or {}
    channels = []
    for name in [*where, *(n for n in seen if n not in where)]:
        ch = seen.get(name) or {}
        sent, failed = _num(ch.get("last_sent")), _num(ch.get("last_error_time"))
        channels.append({"name": name, "where": where.get(name, "(not configured)"),
                         "last_sent": iso_utc(sent) if sent else None, "last_subject": ch.get("last_subject"),
                         "last_error": _error(ch.get("last_error")) if failed else None,
                         "last_error_time": iso_utc(failed) if failed else None,
                         "failing": bool(failed and (sent is None or failed > sent)),
                         "_sent": sent, "_failed": failed})
    pending = q.count_documents(COLLECTION, {"_id": {"$ne": STATE_ID}, "pending.0": {"$exists": True}})
    return {"channels": channels, "pending": pending,
            "events": list(notify.events) if notify is not None else None,
            "unreachable_after": notify.unreachable_after if notify is not None else None}


def notifications_json(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """The section without its private (epoch) fields."""
    if section is None:
        return None
    return {**section, "channels": [{k: v for k, v in c.items() if not k.startswith("_")}
                                    for c in section["channels"]]}


def notification_lines(section: dict[str, Any] | None, now: float, ago: Callable[[float | None, float], str],
                       table: Callable[..., list[str]]) -> list[str]:
    """The section as text lines (empty without one); ``ago`` and ``table`` come from
    :mod:`pilot.status.format` (which imports this module)."""
    if section is None:
        return []
    out = ["", f"NOTIFICATIONS ({section['pending']} pending)"]
    rows = []
    for c in section["channels"]:
        last = f"{ago(c['_sent'], now)}: {c['last_subject']}" if c["_sent"] else "never"
        fail = (f"FAILING since {ago(c['_failed'], now)}: {c['last_error']}" if c["failing"]
                else "ok" if c["_sent"] else "-")
        rows.append([c["name"], c["where"], last, fail])
    if rows:
        out += table(["channel", "to", "last sent", "state"], rows)
    else:
        out.append("  (no channel configured)")
    return out
