"""Core-hours on the emulated PBS Pro and LSF clusters (issue 20, budgets): what ``pilot status --json`` and
``pilot report --json`` add up equals, to the second, what the emulators' own accounting prints for the pilots
(``qstat -x -f -F json``: resources_used.walltime x resources_used.ncpus; ``bjobs -o 'run_time slots' -json``),
read here over plain ssh and parsed by the test itself, not through our adapters.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.manager.helpers import add_sleepers, completed_launches_per_fw, fw_states, run_cycles_until
from tests.manager.test_budget_slurm import cli_json, settled
from tests.manager.test_emulated import world  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.emulated]


def on_cluster(info, command: str) -> str:
    """``command`` run by the test user on the cluster's login node (plain ssh, the emulator's own programs)."""
    res = subprocess.run(["ssh", "-i", info.key, "-o", f"UserKnownHostsFile={info.known_hosts}", "-o", "BatchMode=yes",
                          "-p", str(info.port), f"{info.user}@{info.host}", command],
                         capture_output=True, text=True, timeout=60, check=False)
    return res.stdout


def hms_seconds(text: str) -> int:
    h, m, s = (int(x) for x in text.split(":"))
    return (h * 60 + m) * 60 + s


def pbs_truth(info, ids: list[str]) -> int:
    total = 0
    for jid in ids:   # one id per call: the emulated qstat, like OpenPBS >= 23.06, may print only the first
        job = json.loads(on_cluster(info, f"qstat -x -f -F json {jid}"))["Jobs"][jid]
        used = job["resources_used"]
        total += hms_seconds(used["walltime"]) * int(used["ncpus"])
    return total


def lsf_truth(info, ids: list[str]) -> int:
    out = on_cluster(info, "bjobs -o 'jobid run_time slots' -json -a " + " ".join(ids))
    recs = json.loads(out)["RECORDS"]
    assert sorted(r["JOBID"] for r in recs) == sorted(ids)
    return sum(int(r["RUN_TIME"].split()[0]) * int(r["SLOTS"]) for r in recs)


def test_core_hours_match_the_emulators_accounting(world, launchpad, pbs_cluster, lsf_cluster):  # noqa: F811
    mgr = world
    add_sleepers(launchpad, "md", 6, 1.0)
    add_sleepers(launchpad, "post", 6, 1.0)
    first = mgr.run_cycle()
    assert len(first.submitted) == 4
    run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 12} and settled(launchpad), timeout=150,
                     interval=2)
    assert set(completed_launches_per_fw(launchpad).values()) == {1}
    ids = {c: [r["job_id"] for r in launchpad.db["pilots"].find({"cluster": c})] for c in ("emupbs", "emulsf")}
    truth = {"emupbs": pbs_truth(pbs_cluster, ids["emupbs"]), "emulsf": lsf_truth(lsf_cluster, ids["emulsf"])}
    assert all(v > 0 for v in truth.values()), truth

    rows = cli_json(mgr.config.config_dir, "status")["core_hours"]["rows"]
    got: dict[str, int] = {}
    for r in rows:
        got[r["cluster"]] = got.get(r["cluster"], 0) + r["core_seconds"]
        assert r["unsettled"] == 0
    assert got == truth
    accounts = {(r["cluster"], r["account"]) for r in rows}
    assert accounts == {("emupbs", None), ("emulsf", "default")}   # no -A; LSF's default project is "default"
    report = cli_json(mgr.config.config_dir, "report")
    assert {r["cluster"]: r["core_seconds"] for r in report["core_hours"]} == truth


def test_a_failing_accounting_query_keeps_the_last_numbers(world, launchpad):  # noqa: F811
    """A real failing query: the emulated PBS login node has no SLURM to ask. The refresher logs and records it, raises
    nothing, does not back the cluster off, and the pilot keeps its last numbers (shown by ``pilot status``)."""
    from pilot.manager.accounting import AccountingRefresher
    from pilot.manager.runtime import CycleReport
    from queue_adapters import SlurmAdapter

    mgr = world
    rt = mgr.clusters["emupbs"]
    rt.adapter = SlurmAdapter()           # asks `sacct`, which this host has no SLURM for
    last = {"cpus": 2, "seconds": 21, "core_seconds": 42, "account": "chem123", "start": 1.0, "end": None,
            "final": False, "checked": 5.0}
    launchpad.db["pilots"].insert_one({"_id": "p1", "cluster": "emupbs", "category": "md", "job_id": "12345",
                                       "state": "RUNNING", "end_time": None, "usage": last, "walltime": 300.0})
    report = CycleReport(started=0.0)
    AccountingRefresher(mgr.records, mgr.settings).refresh_cluster(rt, report)
    assert report.errors == {} and rt.available(mgr.clock())
    usage = launchpad.db["pilots"].find_one({"_id": "p1"})["usage"]
    assert {k: v for k, v in usage.items() if k != "checked"} == {k: v for k, v in last.items() if k != "checked"}
    assert usage["checked"] > last["checked"]    # asked (to the back of the line), not answered: numbers kept
    assert "answered" not in usage
    acct = launchpad.db["pilot_clusters"].find_one({"_id": "emupbs"})["accounting"]
    assert acct["ok"] is False and acct["error"].startswith("accounting query failed: sacct")
    doc = cli_json(mgr.config.config_dir, "status")["core_hours"]
    assert doc["errors"]["emupbs"] == acct["error"]
    assert [r["core_seconds"] for r in doc["rows"] if r["cluster"] == "emupbs"] == [42]
