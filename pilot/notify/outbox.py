"""The outbox: every event once, kept in the LaunchPad's ``pilot_notifications`` collection, so a restarted
manager never sends one twice, and bursts go out as one digest.

One document per event, ``_id`` = its key (:mod:`pilot.notify.detect`)::

    {_id, kind, where, subject, body, summary, ref, more, time,
     queued,                  # when it was recorded (epoch seconds)
     pending: [channel, ...], # the channels that still have to send it
     sent: {channel: time}, attempts: {channel: n}, errors: {channel: text}, gave_up: [channel, ...],
     dropped: bool}           # superseded before any channel sent it (an outage over before anyone was told)

and one ``_id: "_state"`` document: the FIZZLED cursor (``fizzled_since``, ``fizzled_cursor``) and per channel its
last send and last failure (what ``pilot status`` shows).

The rules (docs/notifications.md, "Digests and duplicates"):

* an event is recorded once (an upsert on its key: recording it again changes nothing), *then* sent: a crash
  between the send and its mark sends it once more after a restart (at least once, never lost);
* each channel keeps its own list: a channel that is down does not hold back the other;
* a kind's events wait ``batch`` seconds from the first of them still pending on a channel; then all pending
  events of that kind go out together: one event as its own message, several as one digest. So a channel sends
  at most one message per kind per ``batch``, whatever the burst;
* a failed send stays pending and is tried again next cycle; after :data:`GIVE_UP` seconds it is given up (an
  ERROR in the log and in ``pilot status``);
* events that every channel is done with are kept :data:`KEEP` seconds (for dedup), then pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pilot.notify.events import Event

__all__ = ["COLLECTION", "GIVE_UP", "KEEP", "Outbox"]

log = logging.getLogger("pilot.notify")

COLLECTION = "pilot_notifications"
#: A send that keeps failing is given up this many seconds after its event was recorded.
GIVE_UP = 86400.0
#: Sent (or given up) events are kept this long for dedup.
KEEP = 30 * 86400.0
STATE_ID = "_state"
#: An error text is stored (and shown by ``pilot status``) cut to this many characters.
ERROR_MAX = 500


def _cut(text: str, limit: int = ERROR_MAX) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Outbox:
    """The ``pilot_notifications`` collection of a LaunchPad database (see the module docstring)."""

    def __init__(self, db: Any) -> None:
        self.coll = db[COLLECTION]

    def ensure_indexes(self) -> None:
        self.coll.create_index("pending")
        self.coll.create_index([("pending", 1), ("queued", 1)])   # due(): pending on a channel, oldest first
        self.coll.create_index([("kind", 1), ("where", 1)])
        self.coll.create_index("queued")

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return self.coll.find_one({"_id": STATE_ID}) or {}

    def set_state(self, **fields: Any) -> None:
        self.coll.update_one({"_id": STATE_ID}, {"$set": fields}, upsert=True)

    # ------------------------------------------------------------------ recording
    def record(self, events: Iterable[Event], channels: list[str], now: float) -> list[Event]:
        """Record the events not yet known (by key), pending on ``channels``; returns the new ones."""
        new = []
        events = list(events)
        known = self.known(e.key for e in events)   # one query for what every cycle sees again (a hold, ...)
        for e in (e for e in events if e.key not in known):
            doc = {**e.to_doc(), "queued": now, "pending": list(channels), "sent": {}, "attempts": {},
                   "errors": {}, "gave_up": [], "dropped": False}
            doc.pop("key", None)
            res = self.coll.update_one({"_id": e.key}, {"$setOnInsert": doc}, upsert=True)
            if res.upserted_id is not None:
                new.append(e)
                log.info("notify: %s: %s (pending on %s)", e.key, e.subject, ", ".join(channels) or "no channel")
        return new

    def known(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are recorded already."""
        keys = list(keys)
        if not keys:
            return set()
        return {str(d["_id"]) for d in self.coll.find({"_id": {"$in": keys}}, {"_id": 1})}

    def open_outages(self) -> dict[str, float]:
        """Clusters with an outage a person was (or is about to be) told of (unreachable, or a lapsed login) and
        no recovery recorded yet: cluster -> the outage's down_since (the latest one per cluster)."""
        out: dict[str, float] = {}
        for d in self.coll.find({"kind": {"$in": ["unreachable", "login"]}, "dropped": {"$ne": True}},
                                {"_id": 1, "where": 1}):
            try:
                down = float(str(d["_id"]).rsplit(":", 1)[1])
            except (IndexError, ValueError):
                continue
            name = str(d.get("where"))
            out[name] = max(out.get(name, down), down)
        if not out:
            return out
        told = self.known(f"recovered:{c}:{t}" for c, t in out.items())
        return {c: t for c, t in out.items() if f"recovered:{c}:{t}" not in told}

    def open_refusals(self) -> dict[str, float]:
        """Clusters with a run of refused submissions a person was (or is about to be) told of and no end of it
        recorded yet (``accepting:CLUSTER:SINCE``): cluster -> the run's refusing_since (the latest per cluster)."""
        out: dict[str, float] = {}
        for d in self.coll.find({"kind": "refusing", "dropped": {"$ne": True}}, {"_id": 1, "where": 1}):
            try:
                since = float(str(d["_id"]).rsplit(":", 1)[1])
            except (IndexError, ValueError):
                continue
            name = str(d.get("where"))
            out[name] = max(out.get(name, since), since)
        if not out:
            return out
        told = self.known(f"accepting:{c}:{t}" for c, t in out.items())
        return {c: t for c, t in out.items() if f"accepting:{c}:{t}" not in told}

    def told(self, keys: Iterable[str]) -> bool:
        """Whether any channel sent (or gave up on) one of ``keys``: a person was (meant to be) told."""
        return self.coll.count_documents({"_id": {"$in": list(keys)}, "$or": [
            {"sent": {"$ne": {}}}, {"gave_up": {"$ne": []}}]}) > 0

    def drop_unsent(self, key: str, now: float) -> bool:
        """Drop event ``key`` if no channel has sent it yet (an outage that ended while its message waited for
        its digest: telling a person of it, then of its end, helps nobody). True when dropped."""
        res = self.coll.update_one({"_id": key, "sent": {}, "gave_up": []},
                                   {"$set": {"pending": [], "dropped": True, "dropped_at": now}})
        return bool(res.modified_count)

    # ------------------------------------------------------------------ sending
    def forget_channels(self, configured: list[str]) -> None:
        """Events pending on a channel no longer configured are not pending on it any more (else they would wait
        for it forever, and never be pruned)."""
        for channel in self.coll.distinct("pending"):
            if channel not in configured:
                self.coll.update_many({"pending": channel}, {"$pull": {"pending": channel}})
                log.info("notify: channel %s is no longer configured: its pending events are dropped", channel)

    def due(self, channel: str, now: float, batch: float) -> list[list[Event]]:
        """The groups of events ``channel`` should send now: per kind, all its pending events once the oldest has
        waited ``batch`` seconds (each group oldest first)."""
        kinds: dict[str, list[dict[str, Any]]] = {}
        # without the bodies: a digest lists summaries; a single event's body is read when it goes out alone
        for d in self.coll.find({"pending": channel}, {"body": 0}).sort([("queued", 1), ("_id", 1)]):
            kinds.setdefault(str(d.get("kind")), []).append(d)
        out = []
        for docs in kinds.values():
            if now - min(float(d.get("queued") or 0.0) for d in docs) >= batch:
                if len(docs) == 1:
                    docs = [self.coll.find_one({"_id": docs[0]["_id"]}) or docs[0]]
                out.append([Event.from_doc({**d, "key": d["_id"]}) for d in docs])
        return out

    def sent(self, channel: str, keys: list[str], now: float, subject: str) -> None:
        self.coll.update_many({"_id": {"$in": keys}}, {"$pull": {"pending": channel},
                                                        "$set": {f"sent.{channel}": now},
                                                        "$inc": {f"attempts.{channel}": 1}})
        self.set_state(**{f"channels.{channel}.last_sent": now, f"channels.{channel}.last_subject": subject})

    def failed(self, channel: str, keys: list[str], now: float, error: str) -> list[str]:
        """A send of ``keys`` failed: they stay pending, except those recorded :data:`GIVE_UP` seconds ago or
        more (given up, returned)."""
        error = _cut(error)
        self.coll.update_many({"_id": {"$in": keys}}, {"$set": {f"errors.{channel}": error},
                                                        "$inc": {f"attempts.{channel}": 1}})
        old = [str(d["_id"]) for d in self.coll.find({"_id": {"$in": keys}, "queued": {"$lt": now - GIVE_UP}},
                                                       {"_id": 1})]
        if old:
            self.coll.update_many({"_id": {"$in": old}}, {"$pull": {"pending": channel},
                                                          "$push": {"gave_up": channel}})
        self.set_state(**{f"channels.{channel}.last_error": error, f"channels.{channel}.last_error_time": now})
        return old

    def refused(self, channel: str, keys: list[str], now: float, error: str) -> None:
        """The server refused this message for good (:attr:`SendError.permanent`): ``keys`` are given up on
        ``channel`` at once (sending them again would be refused again), and the failure is the channel's last."""
        error = _cut(error)
        self.coll.update_many({"_id": {"$in": keys}}, {"$set": {f"errors.{channel}": error},
                                                        "$inc": {f"attempts.{channel}": 1},
                                                        "$pull": {"pending": channel}, "$push": {"gave_up": channel}})
        self.set_state(**{f"channels.{channel}.last_error": error, f"channels.{channel}.last_error_time": now})

    def prune(self, now: float) -> int:
        """Delete the events every channel is done with that were recorded :data:`KEEP` seconds ago or more."""
        res = self.coll.delete_many({"_id": {"$ne": STATE_ID}, "pending": {"$size": 0}, "queued": {"$lt": now - KEEP}})
        return int(res.deleted_count)

    # ------------------------------------------------------------------ what status shows
    def pending_count(self) -> int:
        return int(self.coll.count_documents({"_id": {"$ne": STATE_ID}, "pending.0": {"$exists": True}}))
