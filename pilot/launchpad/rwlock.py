"""A readers-writer lock for the embedded server: readers share it, a writer has it alone, and long readers yield.

Why not one mutex: a count over 66,000 documents must not make a pilot's ``find_one`` (another reader) wait, and
a reader that scans for seconds must let a waiting writer (a reservation) in between chunks, as MongoDB yields
its locks during long operations. The lock prefers writers: once a writer waits, new readers queue behind it, so
a stream of readers cannot starve writes; a reader already inside keeps running until its next
:meth:`RWLock.pause`.

The exclusive side is reentrant for its owning thread (the server's own code nests it), and a thread that holds
it may also "read" (nothing to wait for). Used as a context manager the lock is the *exclusive* side, so
``with backend.lock:`` keeps meaning "nothing else runs".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RWLock:
    """Shared/exclusive lock with writer preference, a reentrant writer and :meth:`pause` for long readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting_writers = 0
        self._waiting_readers = 0
        self._tickets = 0  # readers number themselves as they start waiting ...
        self._turn = 0  # ... and those up to this number may pass waiting writers (a yielding writer sets it)
        self._local = threading.local()

    # ----------------------------------------------------------------------------- exclusive
    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            if getattr(self._local, "reads", 0):
                raise RuntimeError("RWLock: a reader cannot upgrade to the exclusive lock")
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = me
            self._depth = 1

    def release(self) -> None:
        with self._cond:
            if self._writer != threading.get_ident():
                raise RuntimeError("RWLock: release of an exclusive lock this thread does not hold")
            self._depth -= 1
            if not self._depth:
                self._writer = None
                self._cond.notify_all()

    def __enter__(self) -> RWLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def contended(self) -> bool:
        """Is anyone waiting for the lock?"""
        return bool(self._waiting_writers or self._waiting_readers)

    def yield_exclusive(self) -> None:
        """Between two documents of a long write: let the waiting readers and writers run, then continue.

        Only when the calling thread holds the exclusive side once (not nested) and someone waits; the caller
        must have journaled the effects so far (so the journal order stays the execution order).
        """
        me = threading.get_ident()
        with self._cond:
            if self._writer != me or self._depth != 1 or not (self._waiting_writers or self._waiting_readers):
                return
            self._writer = None
            self._depth = 0
            self._turn = self._tickets  # the readers waiting now go before the writers (this one included)
            self._cond.notify_all()
            deadline = time.monotonic() + 0.1
            while self._waiting_readers and not self._readers and time.monotonic() < deadline:
                self._cond.wait(0.01)  # until one of them is in (it notifies), then queue behind them
        self.acquire()

    def held_exclusive(self) -> bool:
        """Does the calling thread hold the exclusive side?"""
        return self._writer == threading.get_ident()

    # -------------------------------------------------------------------------------- shared
    def acquire_shared(self) -> None:
        me = threading.get_ident()
        reads = getattr(self._local, "reads", 0)
        if reads or self._writer == me:  # nested read, or a writer reading: nothing to wait for
            self._local.reads = reads + 1 if self._writer != me else reads
            if self._writer == me:
                with self._cond:
                    self._depth += 1
            return
        with self._cond:
            self._waiting_readers += 1
            self._tickets += 1
            ticket = self._tickets
            try:
                while self._writer is not None or (self._waiting_writers and ticket > self._turn):
                    self._cond.wait()
            finally:
                self._waiting_readers -= 1
            self._readers += 1
            if ticket <= self._turn:
                self._cond.notify_all()  # a yielding writer waits to see its readers in
        self._local.reads = 1

    def release_shared(self) -> None:
        me = threading.get_ident()
        if self._writer == me:
            self.release()
            return
        reads = getattr(self._local, "reads", 0)
        if reads <= 0:
            raise RuntimeError("RWLock: release of a shared lock this thread does not hold")
        self._local.reads = reads - 1
        if reads == 1:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    def pause(self) -> bool:
        """Between two chunks of a long read: let waiting writers run, then continue; True if it did.

        Only a thread that holds the shared side once (not nested, not a writer) yields; anything else is a
        no-op, so scans may call this unconditionally. The caller must not rely on anything it read before
        the pause staying as it was (documents may change: MongoDB's yielding read semantics).
        """
        if self._writer == threading.get_ident() or getattr(self._local, "reads", 0) != 1:
            return False
        if not self._waiting_writers:
            return False
        self.release_shared()
        self.acquire_shared()
        return True
