"""FireWorks' worker model in pilots: a pilot given an FWorker (``-w my_fworker.yaml``, or name, env and query as
the job template passes them) takes the same Fireworks as FireWorks' own ``rlaunch -w my_fworker.yaml`` and its
tasks get the same ``_fw_env`` values (``env_chk``'s ``>>scratch_dir<<``).

The same Fireworks are built for every run (pinned to the FWorker name, to another name, to null, unpinned; in
and out of the FWorker query; of the FWorker's categories and of others; a ``>>key<<`` the env lacks): the
expected outcome of each is what the real ``rlaunch`` did with them, never a value from the worker's code. The
database is the real embedded LaunchPad server (``launchpad`` fixture).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from fireworks import Firework, LaunchPad, Workflow

from pilot.cli.worker import worker_command
from tests.helpers import REPO
from tests.worker.fworker_tasks import ScratchTask
from tests.worker.test_worker import WorkerProc

FWORKER_NAME = "my_fworker"
ENV = {"scratch_dir": "/scratch/fwk-test", "nodes": "node-a"}
#: a top-level "$or": FireWorks moves it into "$and" beside its own _fworker check
QUERY = {"$or": [{"spec.site": "here"}, {"spec.site": "anywhere"}]}
CATEGORIES = ["fwk", "fwk2"]
#: (Firework name, spec, the task's scratch_dir parameter: None for the default ">>scratch_dir<<")
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("pinned-to-fworker", {"_category": "fwk", "_fworker": FWORKER_NAME, "site": "here"}, None),
    ("pinned-to-other", {"_category": "fwk", "_fworker": "someone-else", "site": "here"}, None),
    ("pinned-to-null", {"_category": "fwk", "_fworker": None, "site": "anywhere"}, None),
    ("unpinned", {"_category": "fwk2", "site": "here"}, None),
    ("query-miss", {"_category": "fwk", "site": "elsewhere"}, None),
    ("query-miss-no-site", {"_category": "fwk"}, None),
    ("other-category", {"_category": "other", "site": "here"}, None),
    ("no-category", {"site": "here"}, None),
    ("literal-value", {"_category": "fwk2", "site": "anywhere"}, "/tmp/literal-scratch"),
    ("key-not-in-env", {"_category": "fwk", "site": "here"}, ">>no_such_key<<"),
]

Outcome = dict[str, tuple[str, Any, list[Any]]]


def fworker_file(path: Path, name: str = FWORKER_NAME, category: Any = CATEGORIES, query: Any = None,
                 env: Any = None) -> Path:
    """A FWorker file as FireWorks writes them (``query`` a JSON string)."""
    doc = {"name": name, "category": category, "query": json.dumps(QUERY if query is None else query),
           "env": ENV if env is None else env}
    path.write_text(yaml.safe_dump(doc))
    return path


def scenario(lp: LaunchPad, tmp: Path, label: str, run: Callable[[Path, Path], None]) -> Outcome:
    """Build the Fireworks of :data:`CASES` on an empty LaunchPad, ``run(lp_file, workdir)``, and return each
    Firework's state, what its task wrote (None when it did not run) and the FWorker env its launch records."""
    lp.reset("", require_password=False, max_reset_wo_password=1000)
    work = tmp / label
    out = work / "out"
    out.mkdir(parents=True)
    for tag, spec, scratch in CASES:
        params = {"out_dir": str(out), "tag": tag} | ({"scratch_dir": scratch} if scratch else {})
        lp.add_wf(Workflow([Firework([ScratchTask(**params)], spec=dict(spec), name=tag)]))
    lp_file = work / "my_launchpad.yaml"
    lp.to_file(str(lp_file))
    run(lp_file, work)
    result: Outcome = {}
    for doc in lp.fireworks.find({}, {"name": 1, "state": 1, "fw_id": 1}):
        written = out / f"{doc['name']}.json"
        envs = [d["fworker"].get("env") for d in lp.launches.find({"fw_id": doc["fw_id"]}, {"fworker.env": 1})]
        result[doc["name"]] = (doc["state"], json.loads(written.read_text()) if written.exists() else None, envs)
    return result


def rlaunch(fworker_yaml: Path) -> Callable[[Path, Path], None]:
    def run(lp_file: Path, work: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FW_CONFIG"))}
        env["PYTHONPATH"] = str(REPO)  # rlaunch imports tests.worker.fworker_tasks
        res = subprocess.run(["rlaunch", "-l", str(lp_file), "-w", str(fworker_yaml), "--loglvl", "ERROR",
                              "rapidfire", "--nlaunches", "0"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=180, check=False)
        assert res.returncode == 0, f"rlaunch failed ({res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return run


def pilot(name: str, categories: list[str], *args: str) -> Callable[[Path, Path], None]:
    def run(lp_file: Path, work: Path) -> None:
        w = WorkerProc(lp_file, work, name, categories, ["--deadline", str(int(time.time()) + 3600),
                                                          "--margin", "60", "--idle-timeout", "1",
                                                          "--launch-dir", str(work), *args])
        try:
            assert w.wait(120) == 0, w.log()
        finally:
            w.stop()
    return run


def names_in_launches(lp: LaunchPad) -> set[str]:
    return {d["fworker"]["name"] for d in lp.launches.find({}, {"fworker.name": 1})}


def test_pilot_takes_what_rlaunch_takes_and_substitutes_the_same_env(launchpad, tmp_path):
    fw_yaml = fworker_file(tmp_path / "my_fworker.yaml")
    expected = scenario(launchpad, tmp_path, "rlaunch", rlaunch(fw_yaml))
    # the reference covers both sides: rlaunch took pinned and unpinned work of its categories and query, left
    # the rest READY, substituted its env, passed a literal through and fizzled on a key its env lacks
    states = {tag: state for tag, (state, *_) in expected.items()}
    assert states == {"pinned-to-fworker": "COMPLETED", "pinned-to-other": "READY", "pinned-to-null": "COMPLETED",
                      "unpinned": "COMPLETED", "query-miss": "READY", "query-miss-no-site": "READY",
                      "other-category": "READY", "no-category": "READY", "literal-value": "COMPLETED",
                      "key-not-in-env": "FIZZLED"}, expected
    assert expected["pinned-to-fworker"][1] == {"scratch_dir": ENV["scratch_dir"], "fw_env": ENV}
    assert expected["literal-value"][1] == {"scratch_dir": "/tmp/literal-scratch", "fw_env": ENV}
    assert expected["unpinned"][2] == [ENV]  # the launch records the FWorker's env

    # -w my_fworker.yaml: name, categories, query and env from the file, as rlaunch read them
    got = scenario(launchpad, tmp_path, "pilot-w", pilot("pilotfwk-101", [], "-w", str(fw_yaml)))
    assert got == expected
    assert names_in_launches(launchpad) == {"pilotfwk-101"}  # launches record the pilot's own name

    # as the job template passes the cluster file's fworker: name, env and query as options
    got = scenario(launchpad, tmp_path, "pilot-options", pilot(
        "pilotfwk-102", CATEGORIES, "--fworker-name", FWORKER_NAME, "--fworker-env", json.dumps(ENV),
        "--query", json.dumps(QUERY)))
    assert got == expected
    assert names_in_launches(launchpad) == {"pilotfwk-102"}


def test_overrides_and_any_category_as_rlaunch_with_that_file(launchpad, tmp_path):
    """--fworker-env over the file's env equals rlaunch with the merged env; a file category '' (any) and no
    query take every category, as rlaunch does."""
    override = {"scratch_dir": "/scratch/override"}
    merged = fworker_file(tmp_path / "merged.yaml", category="", query={}, env={**ENV, **override})
    expected = scenario(launchpad, tmp_path, "rlaunch", rlaunch(merged))
    assert expected["other-category"][0] == "COMPLETED" and expected["no-category"][0] == "COMPLETED", expected
    assert expected["pinned-to-other"][0] == "READY"
    original = fworker_file(tmp_path / "original.yaml", category="", query={})
    got = scenario(launchpad, tmp_path, "pilot", pilot("pilotfwk-201", [], "-w", str(original),
                                                       "--fworker-env", json.dumps(override)))
    assert got == expected


def test_firework_pinned_to_the_pilots_own_name_is_taken(launchpad, tmp_path):
    fw_yaml = fworker_file(tmp_path / "my_fworker.yaml")
    out = tmp_path / "out"
    out.mkdir()
    own, other = "pilotfwk-301", "pilotfwk-302"
    for tag, pin in (("own", own), ("fworker", FWORKER_NAME), ("other-pilot", other)):
        spec = {"_category": "fwk", "site": "here", "_fworker": pin}
        launchpad.add_wf(Workflow([Firework([ScratchTask(out_dir=str(out), tag=tag)], spec=spec, name=tag)]))
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    pilot(own, [], "-w", str(fw_yaml))(lp_file, tmp_path)
    states = {d["name"]: d["state"] for d in launchpad.fireworks.find({}, {"name": 1, "state": 1})}
    assert states == {"own": "COMPLETED", "fworker": "COMPLETED", "other-pilot": "READY"}
    assert names_in_launches(launchpad) == {own}
    assert json.loads((out / "own.json").read_text())["scratch_dir"] == ENV["scratch_dir"]


def _preserve_scenario(lp: LaunchPad, tmp: Path, label: str, run: Callable[[Path, Path], None]) -> Any:
    """A parent with ``_preserve_fworker`` and its child: what ``_fworker`` the child got when the parent ran."""
    lp.reset("", require_password=False, max_reset_wo_password=1000)
    work = tmp / label
    (work / "out").mkdir(parents=True)
    spec = {"_category": "fwk", "site": "here", "_preserve_fworker": True}
    parent = Firework([ScratchTask(out_dir=str(work / "out"), tag="parent")], spec=spec, name="parent")
    child = Firework([ScratchTask(out_dir=str(work / "out"), tag="child")], spec={"_category": "elsewhere"},
                     name="child", parents=[parent])
    lp.add_wf(Workflow([parent, child]))
    lp_file = work / "my_launchpad.yaml"
    lp.to_file(str(lp_file))
    run(lp_file, work)
    return lp.fireworks.find_one({"name": "child"})["spec"].get("_fworker")


def test_preserve_fworker_pins_the_children_to_the_fworker_name_as_rlaunch_does(launchpad, tmp_path):
    """``_preserve_fworker``: FireWorks pins the children to the name of the FWorker that ran the parent. Under
    ``rlaunch -w`` that is the file's name; a pilot gives the same name (the cluster's FWorker, which any of its
    pilots takes), not its own CLUSTER-JOBID, which may be gone when the children become READY."""
    fw_yaml = fworker_file(tmp_path / "my_fworker.yaml")
    expected = _preserve_scenario(launchpad, tmp_path, "rlaunch", rlaunch(fw_yaml))
    assert expected == FWORKER_NAME
    assert _preserve_scenario(launchpad, tmp_path, "pilot", pilot("pilotfwk-401", [], "-w", str(fw_yaml))) == expected
    assert names_in_launches(launchpad) == {"pilotfwk-401"}


def test_pilot_fworker_survives_pickling_with_both_names():
    """The worker pickles what it passes around; FireWorks pickles an FWorker as its dict, ours keeps the alias."""
    from pilot.worker.fworker import PilotFWorker

    fw = PilotFWorker("pilotfwk-1", CATEGORIES, QUERY, ENV, alias=FWORKER_NAME)
    back = pickle.loads(pickle.dumps(fw))
    assert type(back) is PilotFWorker and back.query == fw.query and back.env == ENV
    pins = [c["spec._fworker"] for c in back.query["$and"][-1]["$or"]]
    assert pins == [{"$exists": False}, None, "pilotfwk-1", FWORKER_NAME]


# --------------------------------------------------------------------------- option errors (exit 2, before any work)
def _invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(worker_command, ["-l", str(tmp_path / "lp.yaml"), "--name", "pilotfwk-1",
                                              "--no-deadline", *args])
    return res.exit_code, res.output


@pytest.mark.parametrize(("args", "says"), [
    (["-c", "fwk", "--fworker-env", "{scratch: /x}"], "--fworker-env: not JSON"),
    (["-c", "fwk", "--fworker-env", "[1, 2]"], "--fworker-env: a JSON object"),
    ([], "no category: pass --category CAT"),
])
def test_bad_options_are_refused(tmp_path, args, says):
    code, output = _invoke(tmp_path, *args)
    assert code == 2 and says in output, output


@pytest.mark.parametrize(("name", "text", "says"), [
    ("missing.yaml", None, "no such file"),
    ("dict-query.yaml", "name: a\ncategory: fwk\nquery: {spec.site: here}\nenv: {}\n", "query is not a JSON string"),
    ("no-query.yaml", "name: a\ncategory: fwk\nenv: {}\n", "the key 'query' is missing"),
    ("broken.yaml", "name: [a\n", "cannot be parsed"),
    ("my_fworker.yml", "name: a\ncategory: fwk\nquery: '{}'\n", "by its extension, .yaml or .json"),
    ("not-a-mapping.yaml", "- a\n- b\n", "cannot be parsed"),
])
def test_unusable_fworker_file_is_refused_naming_the_file(tmp_path, name, text, says):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    # the same files fail under FireWorks' own reader, which rlaunch -w uses
    from fireworks.core.fworker import FWorker

    with pytest.raises(Exception):  # noqa: B017 - whichever FireWorks raises: the file does not work there either
        FWorker.from_file(str(path))
    code, output = _invoke(tmp_path, "-w", str(path))
    assert code == 2 and f"FWorker file {path}" in output and says in output, output
