"""SLURM maintenance reservations (issue 20): a real ``flags=maint`` reservation on the test cluster blocks the
pilots whose wall time would run into it, a queue profile with a shorter wall time still gets its pilot, and
``pilot status`` says so. The reservation is made and deleted by root with ``scontrol``, as an administrator does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import replace

import pytest

from pilot.manager.cycle import Manager
from pilot.manager.gates import UnitAsk
from pilot.manager.maintenance import MaintenanceGate, overlap_reason, walltime_words
from pilot.manager.records import Records
from pilot.manager.runtime import ManagerSettings
from tests.manager.helpers import add_sleepers
from tests.manager.test_drain import live_jobs, pilot_cli
from tests.manager.test_slurm import world  # noqa: F401  (the fixture of the SLURM manager tests)


def scontrol(conf: str, *args: str) -> str:
    res = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=True,
                         env=dict(os.environ, SLURM_CONF=conf, SLURM_TIME_FORMAT="%s"))
    return res.stdout


@pytest.fixture
def maintenance(slurm_cluster):
    """A maintenance reservation of the whole cluster from 30 min from now, for 60 min: (name, start, end), the
    times as scontrol itself gives them (epoch seconds). Deleted afterwards."""
    conf = slurm_cluster.slurm_conf
    name = "maint-" + os.urandom(3).hex()
    scontrol(conf, "create", "reservation", f"reservationname={name}", "starttime=now+30minutes", "duration=60",
             "flags=maint", "nodes=ALL", "users=root")
    try:
        line = scontrol(conf, "-o", "show", "reservation", name)
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        yield name, int(fields["StartTime"]), int(fields["EndTime"])
    finally:
        scontrol(conf, "delete", f"reservationname={name}")


def hhmm(t: float, now: float) -> str:
    when = dt.datetime.fromtimestamp(t)
    return when.strftime("%H:%M" if when.date() == dt.datetime.fromtimestamp(now).date() else "%m-%d %H:%M")


def test_overlap_rule():
    res = {"name": "m", "start": 10_000.0, "end": 13_600.0}
    assert overlap_reason(res, 3600, 6_400) is None            # ends exactly when the maintenance begins
    assert overlap_reason(res, 3601, 6_400) is not None        # one second into it
    assert overlap_reason(res, 60, 12_000) is not None         # during it
    assert overlap_reason(res, 60, 13_600) is None             # it is over
    assert overlap_reason({**res, "end": None}, 60, 99_999) is not None   # no end given
    assert [walltime_words(s) for s in (600, 3600, 5400, 7200)] == ["10 min", "1 h", "1 h 30 min", "2 h"]


def long_and_short_cycle(the_world, launchpad, slurm_cluster):
    """One manager cycle on pilotci with a 1 h profile listed before a 10 min one (without a maintenance the
    long one gets the pilot) and two READY Fireworks: (the config, the cycle's report)."""
    config, cluster, _prefix = the_world
    c = cluster(slurm_cluster, ["md"])
    c.pop("pilot")
    c["profiles"] = {"long": {"walltime": "60", "cores": 1, "partition": "debug"},
                     "short": {"walltime": "10", "cores": 1, "partition": "debug"}}
    cfg = config({"pilotci": c})
    add_sleepers(launchpad, "md", 2, 1)
    mgr = Manager(cfg, launchpad)
    try:
        return cfg, mgr.run_cycle()
    finally:
        mgr.close()


@pytest.mark.slurm
def test_maintenance_blocks_the_long_profile_the_short_one_still_gets_a_pilot(world, maintenance,  # noqa: F811
                                                                               launchpad, slurm_cluster):
    prefix = world[2]
    name, start, end = maintenance
    cfg, report = long_and_short_cycle(world, launchpad, slurm_cluster)
    now = report.started
    by_profile = {d.profile: d for d in report.decisions}
    assert by_profile["long"].submit == 0
    assert by_profile["long"].reason == (f"maintenance {name} from {hhmm(start, now)} to {hhmm(end, now)}: "
                                         "a 1 h pilot would run into it")
    assert [s["profile"] for s in report.submitted] == ["short"]
    assert len(live_jobs(slurm_cluster, prefix)) == 1
    text = pilot_cli(cfg.config_dir, "status").stdout
    print(text)
    assert f"pilotci: maintenance {name} coming, from {hhmm(start, now)} to {hhmm(end, now)}" in text
    assert f"none (maintenance {name} from" in text          # the queue profiles' table gives the reason
    doc = json.loads(pilot_cli(cfg.config_dir, "status", "--json").stdout)
    (cs,) = [x for x in doc["clusters"] if x["name"] == "pilotci"]
    (r,) = [x for x in cs["maintenance"]["reservations"] if x["name"] == name]
    assert dt.datetime.fromisoformat(r["start"]).replace(tzinfo=dt.timezone.utc).timestamp() == start
    assert cs["maintenance"]["error"] is None and cs["drain"] is None
    assert doc["needs_you"]["waiting_on_gates"] == []        # the short profile serves the work
    # a manager started again knows of it before the cluster answers (scontrol failing, the cluster backed off):
    # from the cluster's record, with no command run
    gate = MaintenanceGate(Records(launchpad.db), ManagerSettings())
    gate.refresh(now)
    long = UnitAsk(cluster="pilotci", profile="long", walltime=3600.0, cores=1, partition="debug")
    assert gate.closed(long, now) == by_profile["long"].reason
    assert gate.closed(replace(long, walltime=600.0), now) is None


@pytest.mark.slurm
def test_without_a_maintenance_the_long_profile_gets_the_pilot(world, launchpad, slurm_cluster):  # noqa: F811
    """The control of the test above: the same cluster file, no reservation."""
    if "MAINT" in scontrol(slurm_cluster.slurm_conf, "-o", "show", "reservation"):
        pytest.skip("a maintenance reservation is on the test cluster now")
    _cfg, report = long_and_short_cycle(world, launchpad, slurm_cluster)
    assert [s["profile"] for s in report.submitted] == ["long"]
    doc = launchpad.db["pilot_clusters"].find_one({"_id": "pilotci"})
    assert doc["maintenance"] == [] and doc["maintenance_checked"] >= report.started
