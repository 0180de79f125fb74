"""What a person is told: one :class:`Event` per thing that happened, and the message one or several of a kind
make (:func:`message`: the event's own text, or a digest).

Pure: no I/O. An event carries its dedup ``key`` (the same happening always gives the same key, so a restarted
manager that detects it again sends nothing twice), where it happened, a subject, the body (what happened, where,
and the command that shows more) and a one-line ``summary`` a digest lists.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BODY_MAX", "DIGEST_DETAILS", "LINE_MAX", "SUBJECT_MAX", "Event", "Message", "clean_body", "message",
           "one_line"]

#: A digest lists this many events with their details; the rest by their ``ref`` only.
DIGEST_DETAILS = 10
#: At most this many refs are named in a digest's "and also" line.
DIGEST_REFS = 200
#: At most this many distinct errors are counted in a digest.
DIGEST_KINDS = 5

#: A subject is cut to this many characters (a mail header, a chat post's first line).
SUBJECT_MAX = 200
#: A body line is cut to this many characters (a stderr line of a megabyte is no line to read).
LINE_MAX = 500
#: A body is cut to this many characters: a chat service refuses longer posts (Mattermost's limit is 16,383
#: characters, HTTP 400), and a message that is refused for its size would be refused every time.
BODY_MAX = 15000
#: What a body keeps of its end when it is cut (the commands that show more are there).
_BODY_TAIL = 2000
#: Control characters (C0 but tab and newline, DEL, C1) and the Unicode line and paragraph separators: a Firework
#: name with CR/LF in a mail header is a header injection (Python's email package refuses it with ValueError).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

#: per kind: how a digest names several of them (``{n}`` events, ``{where}``)
_DIGEST_SUBJECT = {
    "fizzled": "{n} Fireworks FIZZLED {where}",
    "unreachable": "{n} clusters unreachable: {where}",
    "recovered": "{n} clusters reachable again: {where}",
    "held": "{n} clusters held (pilots fail to start): {where}",
    "budget": "{n} budgets nearly spent: {where}",
    "login": "{n} logins lapsed: {where}",
    "refusing": "{n} clusters refuse submissions: {where}",
}


def one_line(text: str, limit: int = SUBJECT_MAX) -> str:
    """``text`` as one line of at most ``limit`` characters: line breaks and other control characters become
    spaces (what came from a Firework's name or a scheduler's answer cannot add a mail header)."""
    text = _CONTROL.sub(" ", text.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clean_body(text: str) -> str:
    """``text`` with control characters replaced (CR and CR LF become line breaks), each line cut to
    :data:`LINE_MAX` and the whole to :data:`BODY_MAX` (its start and its end kept: the commands are at the end)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "\n".join(one_line(ln.replace("\t", "    "), LINE_MAX) for ln in lines)
    if len(body) <= BODY_MAX:
        return body
    cut = len(body) - BODY_MAX + 100
    head = body[:BODY_MAX - _BODY_TAIL - 100]
    return f"{head}\n[... {cut:,} characters cut ...]\n{body[-_BODY_TAIL:]}"


@dataclass(frozen=True)
class Event:
    """One thing a person should hear of.

    Attributes
    ----------
    kind : str
        One of :data:`pilot.config.models_notify.EVENT_KINDS`.
    key : str
        The dedup key: ``fizzled:fw 12:launch 34``, ``unreachable:pilotci:1765090000``.
    where : str
        The cluster (or ``LaunchPad`` when no cluster is known).
    subject : str
        One line (the mail's subject).
    body : str
        What happened, where, and the command that shows more.
    summary : str
        One line for a digest (``fw 12 (relax-3) on pilotci: ValueError: boom``).
    ref : str
        A short name for long digests (``fw 12``).
    more : str
        The command that shows more of all events of this kind (``pilot status``), for a digest's last line.
    time : float
        When it happened (epoch seconds).
    detail : str
        What a digest counts alike (a FIZZLED Firework's error line): ``48 x FileNotFoundError: ...``.
    """

    kind: str
    key: str
    where: str
    subject: str
    body: str
    summary: str
    ref: str
    more: str
    time: float
    detail: str = ""

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Event:
        return cls(kind=str(doc.get("kind")), key=str(doc.get("key") or doc.get("_id")),
                   where=str(doc.get("where") or "?"), subject=str(doc.get("subject") or ""),
                   body=str(doc.get("body") or ""), summary=str(doc.get("summary") or doc.get("subject") or ""),
                   ref=str(doc.get("ref") or ""), more=str(doc.get("more") or ""),
                   time=float(doc.get("time") or 0.0), detail=str(doc.get("detail") or ""))


@dataclass(frozen=True)
class Message:
    """What one send carries: a subject and a body (plain text), and the events it tells of."""

    subject: str
    body: str
    keys: tuple[str, ...]


def _places(events: list[Event]) -> str:
    wheres = sorted({e.where for e in events})
    if len(wheres) == 1:
        return wheres[0]
    return ", ".join(wheres[:5]) + (f" and {len(wheres) - 5} more" if len(wheres) > 5 else "")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def message(events: list[Event], prefix: str = "[pilot]") -> Message:
    """The message for ``events`` (all of one kind, oldest first): one event is its own message, several are one
    digest that lists the first :data:`DIGEST_DETAILS` with their details and names the rest."""
    if not events:
        raise ValueError("no events")
    events = sorted(events, key=lambda e: e.time)   # stable: ties keep the outbox's order (as recorded)
    keys = tuple(e.key for e in events)
    if len(events) == 1:
        e = events[0]
        return Message(one_line(f"{prefix} {e.subject}"), clean_body(f"{e.body}\n\n(at {_stamp(e.time)})\n"), keys)
    kind = events[0].kind
    where = _places(events)
    if kind == "fizzled":
        where = f"on {where}"
    subject = _DIGEST_SUBJECT.get(kind, "{n} events: {where}").format(n=len(events), where=where)
    lines = [f"{subject}, from {_stamp(events[0].time)} to {_stamp(events[-1].time)}.", ""]
    alike = Counter(e.detail for e in events if e.detail)
    if alike:
        lines += ["Errors:", *(f"  {n} x {d}" for d, n in alike.most_common(DIGEST_KINDS))]
        if len(alike) > DIGEST_KINDS:
            lines.append(f"  and {len(alike) - DIGEST_KINDS} other errors")
        lines.append("")
    shown = events[:DIGEST_DETAILS]
    lines += [f"- {e.summary}" for e in shown]
    rest = events[DIGEST_DETAILS:]
    if rest:
        refs = [e.ref or e.key for e in rest[:DIGEST_REFS]]
        lines += ["", f"and {len(rest)} more: {', '.join(refs)}" + (", ..." if len(rest) > DIGEST_REFS else "")]
    mores = list(dict.fromkeys(e.more for e in events if e.more))
    if mores:
        lines += ["", "More: " + "; ".join(mores[:3])]
    return Message(one_line(f"{prefix} {subject}"), clean_body("\n".join(lines) + "\n"), keys)
