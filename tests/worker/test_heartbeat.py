"""The worker's heartbeat and exit record in its pilot record, and a database retry that wakes on a stop signal
(issue 16: the dead-pilot rule needs the pilot's own word; a worker must not sleep through its stop signal)."""

from __future__ import annotations

import os
import signal
import time

from fireworks import ScriptTask

from tests.helpers import EmbeddedServer, wait_for
from tests.worker.test_worker import add, fw_doc, outage_launchpad
from tests.worker.test_worker import workers as workers  # noqa: PLC0414 - the fixture, used by name


def test_heartbeat_and_exit_record(launchpad, tmp_path, workers):
    """Beats every --heartbeat seconds into the record named by --record (before and while a Firework runs),
    fills in the FWorker of a record that has none, and writes its exit record when it leaves."""
    rec = "fwp.hb." + os.urandom(3).hex()
    launchpad.db["pilots"].insert_one({"_id": rec, "job_name": rec, "fworker": None, "state": "RUNNING"})
    fw_id = add(launchpad, ScriptTask.from_str("sleep 4"), "beating", "hb")
    w = workers(launchpad, tmp_path, ["hb"], "--no-deadline", "--idle-timeout", "1", "--record", rec,
                "--heartbeat", "1", name="pilotci-4711")
    beats: list[float] = []

    def beat_seen() -> bool:
        doc = launchpad.db["pilots"].find_one({"_id": rec}) or {}
        if doc.get("heartbeat") and (not beats or doc["heartbeat"] != beats[-1]):
            beats.append(doc["heartbeat"])
        return len(beats) >= 3

    wait_for(beat_seen, 30, 0.2, "three heartbeats")
    assert w.wait(60) == 0, w.log()
    doc = launchpad.db["pilots"].find_one({"_id": rec})
    assert doc["fworker"] == "pilotci-4711" and doc["job_id"] == "4711"
    assert doc["heartbeat_interval"] == 1.0
    assert fw_doc(launchpad, fw_id)["state"] == "COMPLETED"
    assert doc["exit"]["code"] == 0 and doc["exit"]["fireworks"] == 1
    assert doc["exit"]["stop"] == "IDLE" and "idle timeout" in doc["exit"]["reason"], doc["exit"]
    assert doc["exit"]["time"] >= doc["heartbeat"] >= beats[0]


def test_a_worker_started_by_hand_writes_no_record(launchpad, tmp_path, workers):
    before = launchpad.db["pilots"].count_documents({})
    w = workers(launchpad, tmp_path, ["nobody"], "--no-deadline", "--idle-timeout", "0")
    assert w.wait(30) == 0, w.log()
    assert launchpad.db["pilots"].count_documents({}) == before


def test_database_retry_wakes_on_the_stop_signal(tmp_path, workers):
    """The server goes away while a Firework runs; its completion is retried (--db-retry-time 120) until
    SIGTERM comes: then the worker gives up --grace seconds later, not 120 s later, and says why."""
    server = EmbeddedServer(tmp_path / "db").start()
    go = tmp_path / "go"
    try:
        lp = outage_launchpad(server, "wake")
        fw_id = add(lp, ScriptTask.from_str(f"until [ -e {go} ]; do sleep 0.1; done"), "stranded", "wake")
        w = workers(lp, tmp_path, ["wake"], "--no-deadline", "--idle-timeout", "5", "--db-retry-time", "120",
                    "--grace", "1")
        wait_for(lambda: fw_doc(lp, fw_id)["state"] == "RUNNING", 60, 0.1, "the Firework to start")
        server.stop()
        go.touch()   # the Firework ends while the server is down
        wait_for(lambda: "database unreachable while" in w.log(), 30, 0.2, "the worker to retry")
        t0 = time.monotonic()
        os.kill(w.pid, signal.SIGTERM)
        code = w.wait(60)
        took = time.monotonic() - t0
        assert code == 3, w.log()
        assert took < 20, f"the worker took {took:.0f} s after SIGTERM"
        assert "given up 1 s (--grace) after the stop signal" in w.log()
    finally:
        server.stop()


def test_one_grace_for_all_the_calls_after_the_stop_signal(tmp_path):
    """A completion that meets the outage after the stop signal is retried for --grace seconds; the call after it
    (the requeue) gets what is left of that grace, not a grace of its own: the batch system's SIGKILL comes once,
    its KillWait after the signal. The database here is a call that always fails as pymongo does; what is
    counted is the tries of each call (with a grace each, the second call would be tried again after 1 s)."""
    from pymongo.errors import AutoReconnect

    from pilot.worker.database import DbRetry
    from pilot.worker.model import WorkerConfig, WorkerError

    tries: list[int] = []

    def down() -> None:
        tries[-1] += 1
        raise AutoReconnect("127.0.0.1:9: [Errno 111] Connection refused")

    cfg = WorkerConfig(launchpad_file=tmp_path / "none.yaml", categories=("md",), name="t", deadline=None,
                       grace=1.0, db_retry_time=60.0)
    db = DbRetry(cfg, [signal.SIGTERM], time.sleep)   # the stop signal has come
    for what in ("completing fw 1", "requeueing fw 1"):
        tries.append(0)
        try:
            db(what, down)
        except WorkerError as exc:
            assert "given up 1 s (--grace) after the stop signal" in str(exc)
        else:
            raise AssertionError(f"{what}: the call did not fail")
    assert tries == [2, 1], tries   # the first: at once and 1 s (the grace) later; the second: once, at once
