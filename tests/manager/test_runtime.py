"""ClusterRuntime on its own: lazy transport, counted commands, backoff in memory, in the records and the report;
and inside a Manager, whose clock and dry-run switch it reads at each use."""

from __future__ import annotations

from types import SimpleNamespace

import mongomock

from pilot.config import BackoffConfig, load_config
from pilot.manager.cycle import Manager
from pilot.manager.records import Records
from pilot.manager.runtime import ClusterRuntime, CycleReport, ManagerSettings
from pilot.transport import ConnectError
from tests.manager.helpers import local_cluster, write_config


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
                        records=records, settings=ManagerSettings(clock=lambda: now))
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

    records = Records(mongomock.MongoClient().db)
    rt, _ = runtime(records)
    rt.settings.dry_run = True
    rt.fail("refused", report)
    assert rt.failures == 1 and records.cluster_state("c1") == {}


def unreachable_manager(tmp_path, clock):
    """A Manager (mongomock database) with one cluster ``box`` whose transport never connects, and 1 READY md."""
    db = mongomock.MongoClient().db
    db.fireworks.insert_one({"fw_id": 1, "state": "READY", "spec": {"_category": "md"}})
    lp_file = tmp_path / "lp.yaml"
    lp_file.write_text("host: 127.0.0.1\nport: 1\nname: x\n")
    # backoff (tests.manager.helpers): initial 1 s, doubling, at most 4 s
    cfg = load_config(write_config(tmp_path / "cfg", lp_file, {"box": local_cluster(tmp_path / "w", lp_file, ["md"])}))

    def refuse(name, ccfg):
        raise ConnectError("no route to host", host=name)

    lp = SimpleNamespace(db=db, fireworks=db.fireworks, launches=db.launches)
    return Manager(cfg, lp, transport_factory=refuse, clock=clock), db


def test_a_clock_set_on_the_manager_later_governs_the_backoff(tmp_path):
    """Before the runtimes were split out, the backoff read ``Manager.clock`` at each failure; it still does."""
    mgr, db = unreachable_manager(tmp_path, clock=lambda: 1000.0)
    mgr.clock = lambda: 5000.0          # after construction: the runtimes and the tracker follow
    report = mgr.run_cycle()
    rt = mgr.clusters["box"]
    assert "no route to host" in report.errors["box"]
    assert (rt.failures, rt.backoff_until) == (1, 5001.0)
    st = Records(db).cluster_state("box")
    assert (st["failures"], st["backoff_until"]) == (1, 5001.0)
    assert mgr.tracking.clock() == 5000.0 and report.started == 5000.0

    mgr.clock = lambda: 6000.0          # again, between cycles: the next failure backs off from the new now
    mgr.run_cycle()                     # (the second failure in a row: initial 1 s * factor 2)
    assert rt.backoff_until == 6002.0 and Records(db).cluster_state("box")["backoff_until"] == 6002.0
    assert not rt.available(6001.5) and rt.available(6002.0)


def test_dry_run_set_on_the_manager_later_governs_its_helpers(tmp_path):
    mgr, db = unreachable_manager(tmp_path, clock=lambda: 1000.0)
    mgr.dry_run = True
    rt = mgr.clusters["box"]
    assert rt.settings.dry_run and mgr.tracking.dry_run
    rt.fail("ssh down", CycleReport(started=0.0))
    assert rt.failures == 1 and Records(db).cluster_state("box") == {}


def test_a_cluster_that_fails_at_every_submission_backs_off_longer_each_time(tmp_path):
    """docs/configuration.md: after the n-th failure in a row the wait is initial * factor**(n-1), at most max.

    The cluster has no live pilot, so no status query is made; its failures come from submitting. Not asking it
    must not count as an answer (the manager used to reset the back-off then, and retried every `initial`).
    """
    now = [1000.0]
    mgr, db = unreachable_manager(tmp_path, clock=lambda: now[0])
    rt = mgr.clusters["box"]
    waits = []
    for _ in range(5):
        mgr.run_cycle()
        waits.append(rt.backoff_until - now[0])
        now[0] = rt.backoff_until          # the next cycle comes exactly when the cluster may be tried again
    # tests.manager.helpers: backoff initial 1 s, factor 2, max 4 s
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert rt.failures == 5 and Records(db).cluster_state("box")["failures"] == 5
