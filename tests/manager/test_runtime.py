"""ClusterRuntime on its own: lazy transport, counted commands, backoff in memory, in the records and the report."""

from __future__ import annotations

from types import SimpleNamespace

import mongomock

from pilot.config import BackoffConfig
from pilot.manager.records import Records
from pilot.manager.runtime import ClusterRuntime, CycleReport


class FakeTransport:
    def __init__(self) -> None:
        self.ran: list[tuple[list[str], float, str | None]] = []
        self.closed = False

    def run(self, argv, timeout=60, stdin=None):
        self.ran.append((argv, timeout, stdin))
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    def close(self) -> None:
        self.closed = True


def runtime(records=None, now=1000.0):
    made: list[FakeTransport] = []

    def factory(name, cfg):
        made.append(FakeTransport())
        return made[-1]

    rt = ClusterRuntime(name="c1", config=SimpleNamespace(command_timeout=7), adapter=None,
                        transport_factory=factory, backoff=BackoffConfig(initial=10, max=25, factor=2),
                        records=records, clock=lambda: now)
    return rt, made


def test_transport_opens_once_and_commands_are_counted():
    rt, made = runtime()
    assert made == [] and rt.transport is None
    rt.run(["squeue"])
    rt.run(["cat", "x"], stdin="in")
    assert len(made) == 1 and rt.calls == 2
    assert made[0].ran == [(["squeue"], 7.0, None), (["cat", "x"], 7.0, "in")]
    rt.close()
    assert made[0].closed and rt.transport is None


def test_backoff_grows_to_max_and_ok_resets_it():
    records = Records(mongomock.MongoClient().db)
    rt, _ = runtime(records)
    report = CycleReport(started=0.0)
    delays = []
    for _ in range(3):
        rt.fail("ssh down", report)
        delays.append(rt.backoff_until - 1000.0)
    assert delays == [10.0, 20.0, 25.0] and rt.failures == 3 and not rt.available(1010.0)
    assert report.errors == {"c1": "ssh down"}
    st = records.cluster_state("c1")
    assert st["reachable"] is False and st["failures"] == 3 and st["backoff_until"] == 1025.0

    again, _ = runtime(records)          # a restarted manager keeps the backoff
    again.restore(records.cluster_state("c1"))
    assert again.failures == 3 and again.backoff_until == 1025.0 and again.last_error == "ssh down"

    rt.ok()
    assert rt.failures == 0 and rt.available(1000.0) and rt.last_error is None
    assert records.cluster_state("c1")["reachable"] is True


def test_dry_run_records_nothing():
    rt, _ = runtime(records=None)
    report = CycleReport(started=0.0)
    rt.fail("refused", report)
    rt.ok()
    assert report.errors == {"c1": "refused"} and rt.failures == 0
