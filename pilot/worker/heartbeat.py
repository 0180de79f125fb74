"""The pilot's own word on whether it lives: a heartbeat in its record, and an exit record when it stops.

The manager decides that a pilot is dead, and reruns the work it held, only when the scheduler says the job
ended **and** the pilot itself has gone quiet (see :mod:`pilot.manager.liveness`). A scheduler alone is not
enough: ``squeue`` answers garbage or an unknown state code, a federated job is missing from one listing,
slurmctld is down for a cycle; each of those once made the manager rerun work that was still running, and
two copies of one MD segment then wrote the same checkpoint. So the worker writes, into its record in the
manager's ``pilots`` collection (``_id`` = the batch job name, ``--record``):

* ``heartbeat`` (epoch seconds) and ``heartbeat_interval`` every ``--heartbeat`` seconds, from a thread, so a
  Firework that runs for hours still beats;
* ``exit`` = {time, stop, reason, code, fireworks} once, when the worker stops: the manager then knows at once that
  nothing of this pilot runs any more, without waiting for the heartbeat to go stale;
* ``fworker`` (its FWorker name) when the record has none: a submission whose outcome the manager never
  learned still gets its lost work found.

Every write is best effort: a heartbeat that cannot be written (database unreachable) is simply missing, and
a missing heartbeat never kills a pilot the scheduler still shows running.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from pilot.worker.logs import LOG

#: seconds between two heartbeats unless ``--heartbeat`` says otherwise
DEFAULT_INTERVAL = 60.0


class Heartbeat:
    """Writes the pilot's heartbeat into its record from a daemon thread, and its exit record at the end.

    Parameters
    ----------
    pilots : pymongo.collection.Collection
        The manager's ``pilots`` collection in the LaunchPad's database.
    record : str
        The pilot's record id: its batch job name.
    fworker : str
        The worker's FWorker name (``CLUSTER-JOBID``).
    interval : float
        Seconds between two heartbeats.
    """

    def __init__(self, pilots: Any, record: str, fworker: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.pilots = pilots
        self.record = record
        self.fworker = fworker
        self.interval = max(1.0, float(interval))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def start(self) -> None:
        """Write the first heartbeat now (before any work is taken), then one every interval."""
        self._first()
        self._thread = threading.Thread(target=self._run, name="pilot-heartbeat", daemon=True)
        self._thread.start()

    def _first(self) -> None:
        try:
            # a record without an FWorker (the manager never learned the job id) gets ours
            self.pilots.update_one({"_id": self.record, "fworker": None},
                                   {"$set": {"fworker": self.fworker, "job_id": self.fworker.rsplit("-", 1)[-1]}})
        except Exception as exc:  # noqa: BLE001 - best effort; the beat below says the same
            LOG.debug("heartbeat: naming the record failed: %s", type(exc).__name__)
        self.beat()

    def beat(self) -> bool:
        """Write one heartbeat; False when it could not be written."""
        try:
            self.pilots.update_one({"_id": self.record}, {"$set": {
                "heartbeat": time.time(), "heartbeat_interval": self.interval, "host": socket.gethostname()}})
        except Exception as exc:  # noqa: BLE001 - a missing heartbeat is the signal; never stop the worker
            LOG.warning("heartbeat: could not write to the LaunchPad (%s); retrying in %.0f s",
                        type(exc).__name__, self.interval)
            return False
        self.beats += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self, stop: str, reason: str, code: int, fireworks: int) -> None:
        """Stop beating and write the exit record (one try: the worker is leaving).

        ``stop`` is why, for programs: IDLE, NOTHING_FITS, DEADLINE, SIGNAL, DRAINED (normal ends), ERROR or INTERNAL
        (the worker failed: exit ``code``); ``reason`` is the same for people; ``fireworks`` how many it ran."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        # in a thread of its own, waited for a bounded time: an unreachable database must not hold the pilot
        # past its wall time (the driver would wait its server selection timeout)
        record = {"stop": stop, "reason": reason, "code": code, "fireworks": fireworks}
        writer = threading.Thread(target=self._write_exit, args=(record,), daemon=True)
        writer.start()
        writer.join(timeout=10.0)

    def _write_exit(self, record: dict[str, Any]) -> None:
        try:
            self.pilots.update_one({"_id": self.record}, {"$set": {"exit": {"time": time.time(), **record}}})
        except Exception as exc:  # noqa: BLE001 - the manager falls back on the heartbeat's silence
            LOG.warning("could not write the exit record (%s); the manager will go by the silence of the "
                        "heartbeat", type(exc).__name__)


__all__ = ["DEFAULT_INTERVAL", "Heartbeat"]
