"""Fair share end to end: the real Manager on the emulated PBS Pro cluster (over the real sshd), two categories
with READY work, ``share: {md: 3, analysis: 1}`` and room for fewer pilots than both want.

Expected from the weights (docs/campaign.md, "Fair share between categories"): of every 4 pilots the room
gives, 3 go to md and 1 to analysis. The pilots are counted in the scheduler's own job list (``qstat -x``),
not in the manager's records; ``pilot status --json`` shows the weights and the split.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.manager.helpers import add_sleepers, job_prefix, readable_lp_file, ssh_cluster, write_config
from tests.status.test_status import validate

pytestmark = [pytest.mark.emulated]


@pytest.fixture
def world(launchpad, remote_tmp, pbs_cluster, cluster_venv, tmp_path):
    lp_file = readable_lp_file(launchpad, remote_tmp)
    prefix = job_prefix("s")
    # room for 4 queued and 8 live pilots: both categories want more (12 READY each, a pilot each)
    cluster = ssh_cluster(pbs_cluster, str(remote_tmp / "emupbs"), str(lp_file), ["md", "analysis"], cluster_venv,
                          fireworks_per_pilot=1, idle_timeout=30, limits={"max_queued": 4, "max_running": 8})
    cdir = write_config(tmp_path / "cfg", lp_file, {"emupbs": cluster}, job_name_prefix=prefix,
                        share={"md": 3, "analysis": 1})
    mgr = Manager(load_config(cdir), launchpad)
    yield mgr, prefix, cdir
    for rt in mgr.clusters.values():   # cancel ours, through the scheduler's own command
        ids = [r["job_id"] for r in mgr.records.live(rt.name) if r.get("job_id")]
        if ids:
            rt.run(rt.adapter.cancel_command(ids))
    mgr.close()


def our_jobs(mgr: Manager, prefix: str) -> dict[str, tuple[str, str]]:
    """Our jobs as the emulated PBS server lists them (``qstat -fx -F json``, finished ones included):
    job id -> (category from the job name PREFIX.CATEGORY.ID, job_state)."""
    rt = mgr.clusters["emupbs"]
    res = rt.run(["qstat", "-fx", "-F", "json"])
    assert res.returncode == 0, res
    jobs = json.loads(res.stdout).get("Jobs") or {}
    return {jid: (j["Job_Name"].split(".")[1], j["job_state"]) for jid, j in jobs.items()
            if str(j.get("Job_Name", "")).startswith(prefix + ".")}


def wait_all_started(mgr: Manager, prefix: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        jobs = our_jobs(mgr, prefix)
        if len(jobs) == n and all(state != "Q" for _, state in jobs.values()):
            return
        assert time.monotonic() < deadline, jobs
        time.sleep(0.5)


def test_pilots_follow_the_weights_on_a_contested_cluster(world, launchpad):
    mgr, prefix, cdir = world
    # long enough that no pilot ends during the test (every pilot keeps running its first Firework)
    add_sleepers(launchpad, "md", 12, 60)
    add_sleepers(launchpad, "analysis", 12, 60)

    mgr.run_cycle()                       # room: max_queued 4 -> 3 md, 1 analysis
    jobs = our_jobs(mgr, prefix)
    assert Counter(cat for cat, _ in jobs.values()) == Counter({"md": 3, "analysis": 1}), jobs

    wait_all_started(mgr, prefix, 4)      # none queued: room for 4 more under max_running 8
    second = mgr.run_cycle()
    jobs = our_jobs(mgr, prefix)
    assert Counter(cat for cat, _ in jobs.values()) == Counter({"md": 6, "analysis": 2}), jobs
    # both wanted more; the decisions say that the share held them back
    reasons = {d.category: d.reason for d in second.decisions}
    assert reasons == {"md": "max_queued (share md 3 : analysis 1)",
                       "analysis": "max_queued (share md 3 : analysis 1)"}, reasons

    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cdir), "status", "--json"],
                         capture_output=True, text=True, check=False, timeout=60)
    doc = json.loads(res.stdout)
    validate(doc)                         # docs/status.schema.json
    share = {c["category"]: c for c in doc["share"]["categories"]}
    assert (share["md"]["weight"], share["md"]["target"]) == (3, 0.75)
    assert (share["analysis"]["weight"], share["analysis"]["target"]) == (1, 0.25)
    live = {c: share[c]["pending"] + share[c]["running"] for c in share}
    assert live == {"md": 6, "analysis": 2} and share["md"]["cores_share"] == 0.75
    assert share["md"]["held_back"] == ["emupbs"] and share["analysis"]["held_back"] == ["emupbs"]
    text = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cdir), "status"],
                          capture_output=True, text=True, check=False, timeout=60).stdout
    assert "FAIR SHARE" in text and "held back on emupbs" in text, text
