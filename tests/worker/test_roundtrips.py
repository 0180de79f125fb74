"""The worker's LaunchPad (``pilot.worker.roundtrips.LeanLaunchPad``) writes what FireWorks' own LaunchPad writes,
with fewer database commands (issue 18).

The reference is FireWorks itself: the same two-Firework workflow is run once through FireWorks' ``LaunchPad``
and once through ours (checkout, the Rocket's pings, completion with an FWAction that updates the child's
spec), on the embedded server, and the Fireworks, launches and workflows they leave are compared with the
values that must differ (ids, times, the category that routes each copy) taken out.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fireworks import Firework, FWorker, LaunchPad, ScriptTask, Workflow
from fireworks.core.firework import FWAction
from fireworks.core.rocket_launcher import launch_rocket
from fireworks.user_objects.firetasks.script_task import PyTask
from pymongo import monitoring

from pilot.worker.roundtrips import LeanLaunchPad
from tests.helpers import wait_for
from tests.worker.test_worker import WorkerProc

#: values that differ between two runs of the same workflow, whoever writes them
VOLATILE = {"_id", "created_on", "updated_on", "time_start", "time_end", "runtime_secs", "fw_id", "launch_id",
            "_category", "category", "launch_dir", "nodes", "links", "parent_links", "fw_states"}


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: Any) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def _lean(args: dict[str, Any]) -> LeanLaunchPad:
    """A LaunchPad of ours, made the way the worker makes it (``LaunchPad.from_dict`` builds FireWorks' class)."""
    lp = LaunchPad.from_dict(args)
    lp.__class__ = LeanLaunchPad
    return lp


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _add(lp: LaunchPad, category: str) -> None:
    parent = Firework([PyTask(func="math.floor", args=[2.5])], spec={"_category": category}, name="parent")
    child = Firework([PyTask(func="math.floor", args=[1.5])], spec={"_category": category, "x": 0}, name="child",
                     parents=[parent])
    lp.add_wf(Workflow([parent, child], name="wf", metadata={"m": 1}))


def _run_parent(lp: LaunchPad, category: str, launch_dir: Path) -> int:
    """What a Rocket asks of its LaunchPad for one task: checkout, checkpoint ping, the ping thread's last
    ping, completion (with an FWAction that updates the child's spec)."""
    m_fw, launch_id = lp.checkout_fw(FWorker(name="w", category=category), str(launch_dir))
    assert m_fw is not None and m_fw.name == "parent"
    lp.ping_launch(launch_id, checkpoint={"_task_n": 0, "_all_stored_data": {}, "_all_update_spec": {},
                                          "_all_mod_spec": []})
    lp.ping_launch(launch_id)
    lp.complete_launch(launch_id, FWAction(stored_data={"out": 2}, update_spec={"x": 7}), "COMPLETED")
    return m_fw.fw_id


def _state(lp: LaunchPad, category: str) -> dict[str, Any]:
    """The workflow of ``category`` as the database holds it, by Firework name, volatile values out."""
    fws = {d["name"]: d for d in lp.fireworks.find({"spec._category": category})}
    names = {d["fw_id"]: n for n, d in fws.items()}
    out: dict[str, Any] = {}
    for name, doc in fws.items():
        launches = [_strip(launch) for launch in lp.launches.find({"launch_id": {"$in": doc["launches"]}})]
        fw = _strip({k: v for k, v in doc.items() if k not in ("launches", "archived_launches")})
        out[name] = {"fw": fw, "launches": launches, "archived": len(doc["archived_launches"])}
    wf = lp.workflows.find_one({"nodes": {"$in": list(names)}})
    assert wf is not None
    out["workflow"] = _strip(wf)
    out["fw_states"] = {names[int(k)]: v for k, v in wf["fw_states"].items()}
    out["links"] = {names[int(k)]: sorted(names[c] for c in v) for k, v in wf["links"].items()}
    out["locked"] = "locked" in wf
    return out


def test_lean_launchpad_writes_what_fireworks_writes_with_fewer_commands(launchpad, tmp_path):
    _add(launchpad, "plain")
    _add(launchpad, "lean")
    plain_count, lean_count = Counter(), Counter()
    args = launchpad.to_dict()
    plain = LaunchPad.from_dict(dict(args, mongoclient_kwargs={"event_listeners": [plain_count]}))
    lean = _lean(dict(args, mongoclient_kwargs={"event_listeners": [lean_count]}))

    _run_parent(plain, "plain", tmp_path)
    _run_parent(lean, "lean", tmp_path)

    expected, got = _state(launchpad, "plain"), _state(launchpad, "lean")
    assert got == expected
    # what FireWorks did, seen the same way: the parent COMPLETED, the child READY with the updated spec
    assert expected["fw_states"] == {"parent": "COMPLETED", "child": "READY"}
    assert expected["child"]["fw"]["spec"]["x"] == 7 and expected["child"]["fw"]["state"] == "READY"
    assert expected["locked"] is False
    running = [h for h in expected["parent"]["launches"][0]["state_history"] if h["state"] == "RUNNING"]
    assert running[0]["checkpoint"]["_task_n"] == 0
    # and with far fewer round trips (FireWorks' count is FireWorks' own)
    assert len(lean_count.names) <= len(plain_count.names) - 10, (plain_count.names, lean_count.names)


def test_a_fizzled_launch_and_a_rerun_firework_come_out_as_with_fireworks(launchpad, tmp_path):
    """A second launch of a Firework (rerun after a FIZZLED one): the checkout reads the earlier launches,
    the refresh ranks them; the result must be FireWorks' own."""
    for cat in ("plain", "lean"):
        _add(launchpad, cat)
    args = launchpad.to_dict()
    for lp, cat in ((LaunchPad.from_dict(args), "plain"), (_lean(args), "lean")):
        m_fw, launch_id = lp.checkout_fw(FWorker(name="w", category=cat), str(tmp_path))
        lp.complete_launch(launch_id, FWAction(stored_data={"_message": "boom"}), "FIZZLED")
        lp.rerun_fw(m_fw.fw_id)
        _run_parent(lp, cat, tmp_path)
    expected, got = _state(launchpad, "plain"), _state(launchpad, "lean")
    assert got == expected
    assert [x["state"] for x in expected["parent"]["launches"]] == ["COMPLETED"]
    assert expected["fw_states"] == {"parent": "COMPLETED", "child": "READY"}


def test_the_launch_id_taken_ahead_is_the_next_checkouts(launchpad, tmp_path):
    _add(launchpad, "lean")
    lean = _lean(launchpad.to_dict())
    before = launchpad.fw_id_assigner.find_one({})["next_launch_id"]
    lean.prefetch_launch_id()
    lean.prefetch_launch_id()  # taken once until a checkout uses it
    assert launchpad.fw_id_assigner.find_one({})["next_launch_id"] == before + 1
    _m_fw, launch_id = lean.checkout_fw(FWorker(name="w", category="lean"), str(tmp_path))
    assert launch_id == before
    assert launchpad.launches.find_one({"launch_id": before})["state"] == "RUNNING"


# --------------------------------------------------------------------------- through the worker
@pytest.fixture
def worker_run(tmp_path):
    started: list[WorkerProc] = []

    def start(lp: LaunchPad, category: str, env: dict[str, str] | None = None) -> WorkerProc:
        lp_file = tmp_path / "my_launchpad.yaml"
        lp.to_file(str(lp_file))
        w = WorkerProc(lp_file, tmp_path, f"pilottest-{uuid.uuid4().hex[:6]}", [category],
                       ["--no-deadline", "--idle-timeout", "0", "--launch-dir", str(tmp_path / "launches")], env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _history(lp: LaunchPad, category: str) -> list[tuple[str, Any]]:
    doc = lp.fireworks.find_one({"spec._category": category})
    launch = lp.launches.find_one({"launch_id": doc["launches"][0]})
    return [(h["state"], (h.get("checkpoint") or {}).get("_task_n")) for h in launch["state_history"]]


@pytest.mark.parametrize("fireworks_calls", ["0", "1"])
def test_the_worker_leaves_the_launch_history_fireworks_leaves(launchpad, tmp_path, worker_run, monkeypatch,
                                                               fireworks_calls):
    """Two tasks: FireWorks pings a checkpoint before each; the worker holds the pings and the last one rides on
    the completion. The launch's history must be the one ``launch_rocket`` leaves for the same Firework; with
    ``PILOT_WORKER_FIREWORKS_CALLS=1`` (FireWorks' own LaunchPad methods in the worker) too."""
    for cat in ("fw-own", "ours"):
        launchpad.add_wf(Firework([PyTask(func="math.floor", args=[1.5]), PyTask(func="math.ceil", args=[1.5])],
                                  spec={"_category": cat}, name="two-tasks"))
    monkeypatch.chdir(tmp_path)
    assert launch_rocket(launchpad, FWorker(name="fw", category="fw-own"), strm_lvl="ERROR")
    w = worker_run(launchpad, "ours", {"PILOT_WORKER_FIREWORKS_CALLS": fireworks_calls})
    assert w.wait(60) == 0, w.log()
    expected = _history(launchpad, "fw-own")
    assert expected == [("RUNNING", 1), ("COMPLETED", None)]  # FireWorks: the last checkpoint is task 1
    assert _history(launchpad, "ours") == expected


def test_a_held_ping_is_written_while_the_task_runs(launchpad, tmp_path, worker_run):
    """The checkpoint ping before a task is held at most a moment: it is in the database while the task runs."""
    go = tmp_path / "go"
    launchpad.add_wf(Firework([ScriptTask.from_str(f"while [ ! -e {go} ]; do sleep 0.05; done")],
                              spec={"_category": "held"}, name="waits"))
    w = worker_run(launchpad, "held")
    try:
        wait_for(lambda: ("RUNNING", 0) in _history_or_empty(launchpad, "held"), 30, 0.05,
                 f"the checkpoint of task 0 in the running launch (worker log: {w.log_path})")
        assert launchpad.fireworks.find_one({"spec._category": "held"})["state"] == "RUNNING"
    finally:
        go.touch()
    assert w.wait(60) == 0, w.log()
    assert _history(launchpad, "held") == [("RUNNING", 0), ("COMPLETED", None)]


def _history_or_empty(lp: LaunchPad, category: str) -> list[tuple[str, Any]]:
    doc = lp.fireworks.find_one({"spec._category": category})
    return _history(lp, category) if doc and doc.get("launches") else []


def test_another_fireworks_version_gets_fireworks_own_calls(monkeypatch):
    """The fewer-round-trip calls re-implement FireWorks 2.1.4's LaunchPad methods: with any other version the
    worker's LaunchPad is FireWorks' own (its methods may read or write otherwise)."""
    import fireworks
    from fireworks.core import launchpad as lpmod
    from fireworks.core.launchpad import LaunchPad

    from pilot.worker.database import install_worker_hooks
    from pilot.worker.roundtrips import TESTED_FIREWORKS, LeanLaunchPad

    monkeypatch.setattr(lpmod, "WFLock", lpmod.WFLock)   # the hooks replace it: put FireWorks' back afterwards
    monkeypatch.setattr(fireworks, "__version__", "99.0.0")
    lp = LaunchPad.__new__(LaunchPad)
    install_worker_hooks(lp)
    assert not isinstance(lp, LeanLaunchPad)
    monkeypatch.setattr(fireworks, "__version__", TESTED_FIREWORKS[0])
    lp = LaunchPad.__new__(LaunchPad)
    install_worker_hooks(lp)
    assert isinstance(lp, LeanLaunchPad)
