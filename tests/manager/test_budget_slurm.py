"""Core-hours and budgets on the real SLURM test cluster (issue 20, budgets).

Real pilots of the test user run real Fireworks on pilotci; the expected numbers are what root's own ``sacct``
prints for those jobs (``CPUTimeRAW``, run directly with the cluster's SLURM_CONF, not through our code), and the
test asserts that ``pilot status --json`` and ``pilot report --json`` give the same core-seconds, exactly. Then a
tiny budget: once what a pilot used (+ what live pilots may still use) leaves no room for another, the manager
submits nothing more for that account, says why in its decision and in ``pilot status``, while the other account
of the same cluster still gets pilots.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from pilot.cli import main as cli_main
from pilot.manager.cycle import Manager
from tests.manager.helpers import add_sleepers, fw_states, run_cycles_until
from tests.manager.test_slurm import world  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm]


def sacct_core_seconds(conf: str, job_ids: list[str]) -> dict[str, int]:
    """``CPUTimeRAW`` of each job as root's sacct prints it (allocations only)."""
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,CPUTimeRAW", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=conf), timeout=30, check=True)
    out = {}
    for line in res.stdout.splitlines():
        jid, _, cs = line.partition("|")
        if jid in job_ids:
            out[jid] = int(cs)
    return out


def cli_json(cfg_dir, *args: str) -> dict:
    res = CliRunner().invoke(cli_main, ["--config-dir", str(cfg_dir), *args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def settled(lp) -> bool:
    """Every pilot ended and has the scheduler's final numbers."""
    recs = list(lp.db["pilots"].find())
    return bool(recs) and all(r["state"] in ("COMPLETED", "TIMEOUT", "CANCELLED", "FAILED")
                              and (r.get("usage") or {}).get("final") for r in recs)


def test_core_hours_match_sacct_to_the_second(world, launchpad, slurm_cluster):  # noqa: F811
    config, cluster, _prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], idle_timeout=2, fireworks_per_pilot=2,
                                     pilot={"walltime": "5", "cores": 2, "partition": "debug",
                                            "account": "chem123"})})
    add_sleepers(launchpad, "md", 4, 2.0)
    mgr = Manager(cfg, launchpad)
    try:
        first = mgr.run_cycle()
        assert len(first.submitted) == 2          # ceil(4 / 2)
        run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 4} and settled(launchpad),
                         timeout=150, interval=2)
    finally:
        mgr.close()
    ids = [r["job_id"] for r in launchpad.db["pilots"].find()]
    truth = sacct_core_seconds(slurm_cluster.slurm_conf, ids)
    assert sorted(truth) == sorted(ids) and all(v > 0 for v in truth.values())
    expected = sum(truth.values())

    status = cli_json(cfg.config_dir, "status")["core_hours"]
    (row,) = status["rows"]
    assert (row["cluster"], row["account"], row["pilots"], row["unsettled"]) == ("pilotci", "chem123", 2, 0)
    assert row["core_seconds"] == expected == status["total_core_seconds"]
    assert row["by_category"] == {"md": expected}
    assert sum(sum(c.values()) for c in row["by_day"].values()) == expected

    report = cli_json(cfg.config_dir, "report")
    (rrow,) = report["core_hours"]
    assert (rrow["cluster"], rrow["account"], rrow["core_seconds"]) == ("pilotci", "chem123", expected)
    (cl,) = [c for c in report["clusters"] if c["name"] == "pilotci"]
    assert cl["cpu_hours_source"] == "scheduler" and cl["cpu_hours"] == round(expected / 3600.0, 4)
    text = CliRunner().invoke(cli_main, ["--config-dir", str(cfg.config_dir), "status"]).stdout
    assert f"= {expected} s" in text and "CORE-HOURS" in text


def test_budget_stops_one_account_not_the_other(world, launchpad, slurm_cluster):  # noqa: F811
    config, cluster, _prefix = world
    # a pilot of profile a asks 8 cores x 60 s = 480 core-s; the budget of chem123 is 500 core-s: room for the first
    # pilot, and once it has used anything above 20 core-s, none for a second
    c = cluster(slurm_cluster, ["md", "post"], idle_timeout=2, walltime_margin=30)
    del c["pilot"]
    c["profiles"] = {"a": {"walltime": "1", "cores": 8, "partition": "debug", "account": "chem123",
                           "categories": ["md"]},
                     "b": {"walltime": "1", "cores": 1, "partition": "debug", "account": "phys77",
                           "categories": ["post"]}}
    c["budget"] = {"core_hours": 500 / 3600, "account": "chem123"}
    cfg = config({"pilotci": c})
    add_sleepers(launchpad, "md", 2, 3.0)
    mgr = Manager(cfg, launchpad)
    try:
        first = mgr.run_cycle()
        assert [(s["profile"], s["category"]) for s in first.submitted] == [("a", "md")]
        reports = run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 2} and settled(launchpad),
                                   timeout=120, interval=2)
        assert not [s for r in reports for s in r.submitted]     # the live pilot's 480 core-s are committed
        (p1,) = launchpad.db["pilots"].find()
        used = sacct_core_seconds(slurm_cluster.slurm_conf, [p1["job_id"]])[p1["job_id"]]
        assert used + 480 > 500, used                            # what makes the budget spent now
        assert p1["usage"]["core_seconds"] == used and p1["usage"]["account"] == "chem123"

        add_sleepers(launchpad, "md", 3, 0.5, name="more")
        add_sleepers(launchpad, "post", 3, 0.5, name="other")
        rep = mgr.run_cycle()
        assert {(s["profile"], s["category"]) for s in rep.submitted} == {("b", "post")}
        (md,) = [d for d in rep.decisions if d.category == "md"]
        assert md.submit == 0 and md.reason.startswith("budget spent: ") and "core-h on chem123" in md.reason
        assert "pilot config: budget" in md.reason
    finally:
        mgr.close()

    doc = cli_json(cfg.config_dir, "status")
    (stop,) = doc["needs_you"]["budget_stopped"]
    assert (stop["unit"], stop["category"]) == ("pilotci[a]", "md") and stop["reason"].startswith("budget spent")
    (b,) = doc["core_hours"]["budgets"]
    assert (b["account"], b["limit_core_seconds"], b["used_core_seconds"]) == ("chem123", 500, used)
    assert b["left_core_seconds"] == 500 - used and b["smallest_pilot_core_seconds"] == 480 and b["spent"] is True
    text = CliRunner().invoke(cli_main, ["--config-dir", str(cfg.config_dir), "status"]).stdout
    needs = text[text.index("NEEDS YOU"):]
    assert "pilotci[a]: no new pilot for md: budget spent:" in needs
    assert f"budget pilotci (chem123): 0.139 core-h; used 0:{used // 60:02d}:{used % 60:02d}, committed 0:00:00" in text
    assert "spent: no new pilot, a pilot needs 0:08:00" in text
