"""The manager lease: one manager per LaunchPad, whatever config dir or host it runs from.

The lock file of :mod:`pilot.manager.daemon` only keeps two managers of one config dir apart. Two config dirs (or
two machines) pointing at one LaunchPad would each count the other's pilots as missing, rerun their work and
double the submissions. So the manager also holds a lease: the document ``_id: "lease"`` in the LaunchPad's
``pilot_manager`` collection, naming its owner (host, pid, config dir, a random token) and an expiry.

* Taking it is one atomic conditional update: it succeeds only if the lease is free, expired, or already ours
  (the unique ``_id`` makes two racing takers collide, and exactly one wins).
* A background thread renews it every ``poll_interval`` seconds, apart from the cycle, so that a cycle slowed
  by a hanging cluster never lets it lapse while the manager lives. A renewal that finds the lease gone to
  someone else stops the manager (``on_lost``): it must not act on work another manager now owns.
* A clean stop deletes it; a killed manager's lease expires after ``3 * poll_interval`` seconds, and then the
  next manager takes it.

Expiry times are the manager host's clock (``time.time()``): the lease lasts minutes, so clocks that agree
within seconds (NTP) are enough.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pymongo.database import Database

log = logging.getLogger("pilot.manager")

COLLECTION = "pilot_manager"
LEASE_ID = "lease"
#: The lease lasts this many poll intervals: a renewal may fail twice (a database blip) without losing it.
LEASE_INTERVALS = 3

__all__ = ["COLLECTION", "LEASE_ID", "LEASE_INTERVALS", "Lease", "LeaseHeldError", "LeaseHolder", "read_holder"]


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease, as its document says (what a refused manager and ``pilot manager status`` show)."""

    host: str
    pid: int
    config_dir: str
    since: float
    renewed: float
    expires: float

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LeaseHolder:
        """The holder of a lease document (missing fields read as empty, so an odd document never crashes)."""
        return cls(host=str(doc.get("host", "?")), pid=int(doc.get("pid", 0) or 0),
                   config_dir=str(doc.get("config_dir", "?")), since=float(doc.get("since", 0) or 0),
                   renewed=float(doc.get("renewed", 0) or 0), expires=float(doc.get("expires", 0) or 0))

    def expired(self, now: float | None = None) -> bool:
        """True once the holder stopped renewing for a whole lease (killed, or cut off from the LaunchPad)."""
        return self.expires <= (time.time() if now is None else now)

    def describe(self, now: float | None = None) -> str:
        """One line: who, where, since when, and when the lease ends unless renewed."""
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        left = self.expires - now
        ends = f"expires in {left:.0f} s unless renewed" if left > 0 else f"expired {-left:.0f} s ago"
        return f"pid {self.pid} on {self.host}, config dir {self.config_dir}, since {since} ({ends})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``pilot manager status --json``)."""
        return {"host": self.host, "pid": self.pid, "config_dir": self.config_dir, "since": self.since,
                "renewed": self.renewed, "expires": self.expires}


class LeaseHeldError(RuntimeError):
    """Another manager holds this LaunchPad's lease; the message names it and says how to stop it."""

    def __init__(self, holder: LeaseHolder, message: str) -> None:
        super().__init__(message)
        self.holder = holder


def read_holder(db: Database) -> LeaseHolder | None:
    """The lease's holder, or None when no manager holds it (PyMongoError passes through)."""
    doc = db[COLLECTION].find_one({"_id": LEASE_ID})
    return LeaseHolder.from_doc(doc) if doc else None


def _refusal(holder: LeaseHolder, now: float) -> str:
    """The message of a refused manager: who holds the LaunchPad, how to stop it, when a dead one's lease ends."""
    stop = f"pilot --config-dir {holder.config_dir} manager stop"
    return (f"another manager already runs on this LaunchPad: {holder.describe(now)}. Stop it on {holder.host} "
            f"with `{stop}`; if that process is gone (killed, or its machine down), its lease expires by itself "
            f"in {max(0.0, holder.expires - now):.0f} s and a manager can start then. Two managers on one "
            "LaunchPad would rerun each other's work.")


class Lease:
    """This manager's lease on one LaunchPad database: :meth:`acquire`, :meth:`start_renewing`, :meth:`release`.

    Parameters
    ----------
    db
        The LaunchPad's database (``LaunchPad.db``).
    config_dir
        This manager's config dir (named in the lease, so a refused manager can say which one to stop).
    duration
        Seconds a lease lasts without renewal (the manager uses ``3 * poll_interval``).
    clock
        ``time.time`` by default; tests pass their own.
    """

    def __init__(self, db: Database, config_dir: Path | str, duration: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.coll: Collection = db[COLLECTION]
        self.duration = float(duration)
        self.clock = clock
        self.token = secrets.token_hex(16)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "config_dir": str(Path(config_dir).absolute())}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> LeaseHolder:
        """Take the lease if it is free, expired or ours; else raise :class:`LeaseHeldError` naming the holder.

        One ``find_one_and_update`` with an upsert: a held lease does not match the filter, so the upsert tries to
        insert a second ``_id: "lease"`` and fails on the unique key; that failure is the refusal.
        """
        now = self.clock()
        free = {"_id": LEASE_ID, "$or": [{"expires": {"$lte": now}}, {"token": self.token}]}
        fields = {**self.owner, "token": self.token, "since": now, "renewed": now, "expires": now + self.duration}
        try:
            doc = self.coll.find_one_and_update(free, {"$set": fields}, upsert=True,
                                                return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            doc = self.coll.find_one({"_id": LEASE_ID})
            if doc is None:   # released between our update and this read: try once more
                return self.acquire()
            holder = LeaseHolder.from_doc(doc)
            if self._holder_is_dead_here(holder):
                taken = self.coll.find_one_and_update({"_id": LEASE_ID, "token": doc.get("token")},
                                                      {"$set": fields}, return_document=ReturnDocument.AFTER)
                if taken is not None:
                    log.warning("took over the manager lease of %s: that process is gone", holder.describe(now))
                    return LeaseHolder.from_doc(taken)
            raise LeaseHeldError(holder, _refusal(holder, now)) from None
        assert doc is not None  # upsert with ReturnDocument.AFTER always returns the document
        return LeaseHolder.from_doc(doc)

    def _holder_is_dead_here(self, holder: LeaseHolder) -> bool:
        """True when the holder ran on this machine and its process is gone (killed, OOM, reboot): its lease
        need not be waited out. A live process of that pid that is no ``pilot ... manager`` (the pid was reused)
        counts as gone too. Another machine's holder is never judged from here: its lease expires by itself."""
        if holder.host != self.owner["host"] or holder.pid <= 0 or holder.pid == os.getpid():
            return False
        import psutil

        try:
            cmd = psutil.Process(holder.pid).cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.AccessDenied:
            return False
        return not ("manager" in cmd and any("pilot" in part for part in cmd))

    def renew(self) -> bool:
        """Push the expiry on; False when the lease is no longer ours (expired and taken by another manager)."""
        now = self.clock()
        res = self.coll.update_one({"_id": LEASE_ID, "token": self.token},
                                   {"$set": {"renewed": now, "expires": now + self.duration}})
        return res.matched_count == 1

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (a clean stop frees the LaunchPad at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.coll.delete_one({"_id": LEASE_ID, "token": self.token})
        except PyMongoError as e:   # it expires by itself
            log.warning("could not release the manager lease (it expires in %.0f s): %s", self.duration, e)

    def start_renewing(self, interval: float, on_lost: Callable[[str], None]) -> None:
        """Renew every ``interval`` seconds in a daemon thread; call ``on_lost(reason)`` once if the lease is lost.

        A database error is only logged: the lease survives ``LEASE_INTERVALS - 1`` failed renewals, and if it
        expired meanwhile the next renewal finds it gone (or another manager's) and reports the loss.
        """
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    if self.renew():
                        continue
                except PyMongoError as e:
                    log.warning("could not renew the manager lease: %s", e)
                    continue
                try:
                    holder = read_holder(self.coll.database)
                except PyMongoError:
                    holder = None
                on_lost("the manager lease was lost" + (f" to {holder.describe()}" if holder else ""))
                return

        self._thread = threading.Thread(target=loop, name="manager-lease", daemon=True)
        self._thread.start()
