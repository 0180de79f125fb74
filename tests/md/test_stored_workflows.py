"""Workflows stored by the code before the package layout changed still load and complete (issue 14).

``tests/fixtures/launchpad-before-layout/`` holds the ``fireworks``, ``workflows`` and ``fw_id_assigner``
collections of a LaunchPad into which the code at commit f73a045 (before any module moved) added four
segmented MD workflows (see its README.md). The test restores them into a fresh LaunchPad, points the
placeholder paths ``/RUN_DIR`` and ``/WORK_DIR`` at temporary directories holding real inputs, and runs
the Fireworks with today's code, exactly as FireWorks loads them: by the stored ``_fw_name``s
(``{{tasks.segment.ContinueTask}}``, ``{{tasks.openmm.OpenMMSegmentTask}}``, ...).

Each run goes through two segments, so that the stored tasks also build the next segment with today's
code: the first segment runs with ``PILOT_DEADLINE`` too close for the stored ``deadline_margin_s`` (300 s)
and ``min_segment_s`` (60 s), so it does not start the engine and continues (the documented contract of
``PILOT_DEADLINE``); the second runs without a deadline to the end. What is checked comes from the stored
workflows and from the engines' own files: every Firework COMPLETED, the new Fireworks carry the same
``_fw_name``s, and the checkpoint holds the step the inputs ask for (read from the files with a regular
expression / ``gmx dump``, not with the code under test).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from bson import json_util

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "launchpad-before-layout"
NSTEPS = 5000  # the OpenMM workflows' stored nsteps; the GROMACS .tpr is built with the same
#: Stored ``_fw_name``s per Firework name stem (the contract the moved modules must keep loading).
FW_NAMES = {
    "openmm": {"md": "{{tasks.openmm.OpenMMSegmentTask}}"},
    "gromacs": {"md": "{{tasks.gromacs.GromacsSegmentTask}}"},
    "staged": {"stage": "{{tasks.staging.StageTask}}", "pull": "{{tasks.staging.PullTask}}",
               "continue": "{{tasks.segment.ContinueTask}}"},
}
#: The stored Fireworks (fw_ids of the fixture) in an order that respects their links, per workflow.
STORED_ORDER = {"sim-openmm": [1], "staged-openmm": [4, 5, 3, 2], "sim-gromacs": [6],
                "staged-gromacs": [9, 10, 8, 7]}
ENV = {"OPENMM_CPU_THREADS": "1", "OMP_NUM_THREADS": "1", "GMX_MAXBACKUP": "-1"}


def _load(name: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = json_util.loads((FIXTURE / f"{name}.json").read_text())
    return docs


def _rewrite(obj: Any, prefixes: dict[str, str]) -> Any:
    """``obj`` with every string starting with a placeholder prefix pointed at the real directory."""
    if isinstance(obj, dict):
        return {k: _rewrite(v, prefixes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rewrite(v, prefixes) for v in obj]
    if isinstance(obj, str):
        for old, new in prefixes.items():
            if obj == old or obj.startswith(old + "/"):
                return new + obj[len(old):]
    return obj


def _restore(lp, prefixes: dict[str, str], wf_names: list[str]) -> list[dict[str, Any]]:
    """Put the fixture's workflows ``wf_names`` (and the id counters) into ``lp``'s fresh database; return
    their stored Fireworks."""
    workflows = [d for d in _load("workflows") if d["name"] in wf_names]
    assert sorted(d["name"] for d in workflows) == sorted(wf_names)
    nodes = {fw_id for d in workflows for fw_id in d["nodes"]}
    fireworks = [_rewrite(d, prefixes) for d in _load("fireworks") if d["fw_id"] in nodes]
    lp.fireworks.insert_many(fireworks)
    lp.workflows.insert_many([_rewrite(d, prefixes) for d in workflows])
    lp.fw_id_assigner.delete_many({})
    lp.fw_id_assigner.insert_many(_load("fw_id_assigner"))
    return fireworks


def _stored_names(fw_doc: dict[str, Any]) -> list[str]:
    return [t["_fw_name"] for t in fw_doc["spec"]["_tasks"]]


def _expected_names(wf_name: str, fw_name: str) -> list[str]:
    engine = "openmm" if "openmm" in wf_name else "gromacs"
    stem = fw_name.rsplit("-", 2)[-2]  # "<wf>-md-2" -> "md"
    names = {**FW_NAMES[engine], **FW_NAMES["staged"]}
    return [names[stem]]


def _state_step(path: Path) -> int:
    """``stepCount`` of an OpenMM XML State (OpenMM's own serialisation)."""
    m = re.search(r'stepCount="(\d+)"', path.read_text())
    assert m, f"{path}: no stepCount"
    return int(m.group(1))


def _cpt_step(path: Path) -> int:
    """``gmx dump -cp``: header line ``step = N``."""
    out = subprocess.run(["gmx", "-quiet", "dump", "-cp", str(path)], capture_output=True, text=True, timeout=120)
    m = re.search(r"^step = (\d+)$", out.stdout, re.M)
    assert m, out.stderr[-2000:]
    return int(m.group(1))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def openmm_inputs(tmp_path_factory) -> Path:
    pytest.importorskip("openmm", reason="OpenMM not installed (pip install 'fireworks-pilot[md]')")
    from tasks.testsystems import openmm_water_box

    d = tmp_path_factory.mktemp("stored-omm")
    # the smallest box the 0.8 nm PME cut-off allows (426 atoms, not 615): the stored runs' 5000 steps take
    # ~2/3 of the time, and what is checked (the stored workflows load, run and finish) does not depend on it
    openmm_water_box(d, box_nm=1.65)
    return d


@pytest.fixture(scope="module")
def gromacs_inputs(tmp_path_factory) -> Path:
    if shutil.which("gmx") is None:
        pytest.skip("GROMACS `gmx` not on PATH (apt-get install gromacs; CI installs it)")
    from tasks.testsystems import gromacs_water_box

    d = tmp_path_factory.mktemp("stored-gmx")
    gromacs_water_box(d, NSTEPS)
    return d


def _run_stored(lp, tmp_path: Path, monkeypatch, wf_names: list[str]) -> dict[str, Any]:
    """Segment 1 of each stored workflow under a too-close deadline (CONTINUE), then all the rest."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import launch_rocket, rapidfire

    fworker = FWorker(category=["md", "local"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PILOT_DEADLINE", str(time.time() + 300 + 30))  # 30 s < min_segment_s once margin is off
    for wf in wf_names:
        for fw_id in STORED_ORDER[wf]:
            assert launch_rocket(lp, fworker, fw_id=fw_id, strm_lvl="ERROR"), f"{wf}: fw {fw_id} did not launch"
    monkeypatch.delenv("PILOT_DEADLINE")
    (tmp_path / "launcher").mkdir()
    rapidfire(lp, fworker, m_dir=str(tmp_path / "launcher"), nlaunches=0, sleep_time=1, strm_lvl="ERROR")
    return {wf: lp.get_wf_by_fw_id(STORED_ORDER[wf][0]) for wf in wf_names}


def _check_chain(lp, wf_name: str, wf: Any, stored_ids: list[int]) -> dict[str, Any]:
    """Every Firework COMPLETED with the stored ``_fw_name``s; segment 1 continued, segment 2 finished."""
    assert {fw.name: fw.state for fw in wf.fws} == {fw.name: "COMPLETED" for fw in wf.fws}
    staged = wf_name.startswith("staged")
    stems = ["stage", "md", "pull", "continue"] if staged else ["md"]
    assert sorted(fw.name for fw in wf.fws) == sorted(f"{wf_name}-{s}-{k}" for s in stems for k in (1, 2))
    for doc in lp.fireworks.find({"fw_id": {"$in": [fw.fw_id for fw in wf.fws]}}):
        assert _stored_names(doc) == _expected_names(wf_name, doc["name"]), doc["name"]
    assert {fw.fw_id for fw in wf.fws if fw.name.endswith("-1")} == set(stored_ids)
    results = {}
    for fw in wf.fws:
        if "-md-" in fw.name:
            launches = [la for la in fw.launches if la.state == "COMPLETED"]
            assert len(launches) == 1, fw.name
            results[fw.name] = launches[0].action.stored_data
    first, second = results[f"{wf_name}-md-1"], results[f"{wf_name}-md-2"]
    assert (first["outcome"], first["steps_done"], first["checkpoint_step"]) == ("continue", 0, None)
    assert (second["outcome"], second["segment"], second["checkpoint_step"]) == ("finished", 2, NSTEPS)
    if staged:
        cont = next(fw for fw in wf.fws if fw.name == f"{wf_name}-continue-2")
        assert cont.launches[-1].action.stored_data["outcome"] == "finished"
    return results


def _restore_and_run(launchpad, tmp_path, monkeypatch, names, run_root, work_root) -> None:
    """Restore the stored workflows ``names``, run them, and check each chain and the stored task names."""
    stored = _restore(launchpad, {"/RUN_DIR": str(run_root), "/WORK_DIR": str(work_root)}, names)
    before = {d["fw_id"]: _stored_names(d) for d in stored}
    wfs = _run_stored(launchpad, tmp_path, monkeypatch, names)
    for name, wf in wfs.items():
        _check_chain(launchpad, name, wf, STORED_ORDER[name])
    for doc in launchpad.fireworks.find({"fw_id": {"$in": list(before)}}):
        assert _stored_names(doc) == before[doc["fw_id"]]


def test_stored_openmm_workflows_load_and_complete(launchpad, openmm_inputs, tmp_path, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    run_root, work_root = tmp_path / "run", tmp_path / "work"
    for name in ("sim-openmm", "staged-openmm"):
        shutil.copytree(openmm_inputs, run_root / name)
    _restore_and_run(launchpad, tmp_path, monkeypatch, ["sim-openmm", "staged-openmm"], run_root, work_root)
    for d in (run_root / "sim-openmm", work_root / "staged-openmm", run_root / "staged-openmm"):
        assert _state_step(d / "md_state.xml") == NSTEPS, d
        for f in ("md.chk", "md.dcd", "md.csv"):
            assert (d / f).stat().st_size > 0, d / f
    for f in ("md_state.xml", "md.chk", "md.dcd", "md.csv"):  # the pull brought the results home
        assert _sha(run_root / "staged-openmm" / f) == _sha(work_root / "staged-openmm" / f), f


@pytest.mark.gromacs
def test_stored_gromacs_workflows_load_and_complete(launchpad, gromacs_inputs, tmp_path, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    run_root, work_root = tmp_path / "run", tmp_path / "work"
    for name in ("sim-gromacs", "staged-gromacs"):
        (run_root / name).mkdir(parents=True)
        shutil.copy(gromacs_inputs / "md.tpr", run_root / name / "md.tpr")
    _restore_and_run(launchpad, tmp_path, monkeypatch, ["sim-gromacs", "staged-gromacs"], run_root, work_root)
    for d in (run_root / "sim-gromacs", work_root / "staged-gromacs", run_root / "staged-gromacs"):
        assert _cpt_step(d / "md.cpt") == NSTEPS, d
        for f in ("md.xtc", "md.edr", "md.log"):
            assert (d / f).stat().st_size > 0, d / f
    for f in ("md.cpt", "md.xtc", "md.edr", "md.log"):
        assert _sha(run_root / "staged-gromacs" / f) == _sha(work_root / "staged-gromacs" / f), f
