"""``pilot status`` with queue profiles, without the test clusters: the QUEUE PROFILES section from the manager's
heartbeat, the NEEDS YOU entry for READY work no profile takes, and the ``--json`` document against its schema.

The decisions in the heartbeat are the policy's own (:func:`pilot.manager.policy.plan` and ``to_record``, as the
manager writes them); which Fireworks no profile takes is the database's answer to the worker's pull rule.
"""

from __future__ import annotations

import time

from fireworks import Firework, ScriptTask, Workflow

from pilot.config import load_config
from pilot.manager.policy import CategoryDemand, ClusterView, plan
from pilot.manager.profiles import profile_shape
from pilot.status import format_status, gather_status
from tests.config import test_config
from tests.config.test_config import stampede, write_config
from tests.status.test_status import validate

files = test_config.files  # the fixture: a key, a known_hosts and a LaunchPad file

PROFILES = {"cpu": {"walltime": "02:00:00", "cores": 8, "partition": "normal"},
            "gpu": {"walltime": "01:00:00", "cores": 4, "gpus": 1, "partition": "gpu"}}


def _config(tmp_path, files):
    c = {**stampede(files), "profiles": PROFILES}
    c.pop("pilot")
    return load_config(write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"gpu1": c}))


def _add(lp, name: str, asks: dict) -> int:
    fw = Firework([ScriptTask.from_str("true")], name=name, spec={"_category": "md", "_pilot": asks})
    old_id = fw.fw_id
    return int(lp.add_wf(Workflow([fw]))[old_id])


def test_queue_profiles_and_work_no_profile_takes(launchpad, tmp_path, files):
    cfg = _config(tmp_path, files)
    _add(launchpad, "gpu-work", {"gpus": 1})
    _add(launchpad, "cpu-work", {"cores": 8})
    big = _add(launchpad, "sixteen-cores", {"cores": 16})                       # more cores than any profile
    long_gpu = _add(launchpad, "long-gpu", {"gpus": 1, "walltime": 5400})       # a GPU for longer than gpu gives
    _add(launchpad, "too-long", {"walltime": 86400})                            # listed as too long instead
    views = [ClusterView("gpu1[gpu]", ("md",), 3000.0, cluster="gpu1", profile="gpu", queue_wait=60.0),
             ClusterView("gpu1[cpu]", ("md",), 6600.0, cluster="gpu1", profile="cpu")]
    fits = {("gpu1[gpu]", "md"): CategoryDemand(ready=1), ("gpu1[cpu]", "md"): CategoryDemand(ready=0)}
    decisions = plan({"md": CategoryDemand(ready=5, takeable=1)}, views, {}, fits=fits)
    now = time.time()
    launchpad.db["pilot_manager"].insert_one({
        "_id": "manager", "last_cycle": now - 5, "last_cycle_duration": 0.2, "errors": {},
        "decisions": [{**d.to_record(), "shape": profile_shape(cfg.clusters["gpu1"], d.profile)} for d in decisions]})
    report = gather_status(launchpad.db, cfg, now=now)
    validate(report.to_dict())
    (tb,) = report.too_big
    assert (tb.category, tb.count, sorted(tb.fw_ids)) == ("md", 2, sorted([big, long_gpu]))
    assert tb.profiles == ["gpu1[cpu]: <= 8 cores, no GPU, <= 1.83 h", "gpu1[gpu]: <= 4 cores, a GPU asked, <= 50 min"]
    assert [t.count for t in report.too_long] == [1]
    text = format_status(report, now=now)
    lines = text.splitlines()
    start = lines.index("QUEUE PROFILES (the manager's choice 5 s ago)")
    assert lines[start + 1].split() == ["profile", "category", "ready", "fit", "per", "pilot", "pending/running",
                                        "queue", "wait", "choice"]
    assert lines[start + 3].split()[:7] == ["gpu1[gpu]", "md", "5", "1", "1", "0/0", "1m"]
    assert lines[start + 3].endswith("submit 1 (demand)")
    assert lines[start + 4].endswith("none (none fit: it takes <= 8 cores, no GPU, <= 1.83 h)")
    assert "* category md: 2 READY Fireworks ask for more cores, GPUs or memory" in text
