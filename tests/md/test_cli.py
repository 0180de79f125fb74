"""`pilot md add` / `pilot md show` against a real LaunchPad (embedded server or MONGODB_URI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pilot.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")


@pytest.fixture
def lp_file(launchpad, tmp_path) -> Path:
    path = tmp_path / "lp.yaml"
    launchpad.to_file(str(path))
    return path


def invoke(*args: str, config_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config-dir", str(config_dir), *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_add_gromacs_run(launchpad, lp_file, tmp_path):
    run = tmp_path / "water"
    run.mkdir()
    (run / "md.tpr").write_bytes(b"prepared by grompp")
    code, out = invoke("md", "add", str(run), "--engine", "gromacs", "--category", "gpu", "--segment-hours", "2",
                       "-p", "ntomp=8", "-p", "mdrun_args=[-nb, gpu]", "--env", "GMX_MAXBACKUP=-1",
                       "-l", str(lp_file), config_dir=tmp_path / "cfg")
    assert code == 0, out
    assert "added workflow 'water' (gromacs, segments of 2 h)" in out
    fw_ids = launchpad.get_fw_ids()
    assert len(fw_ids) == 1 and f"fw_id {fw_ids[0]}\twater-md-1\t(category gpu, walltime 7500 s)" in out
    fw = launchpad.get_fw_by_id(fw_ids[0])
    assert fw.state == "READY" and fw.spec["_category"] == "gpu"
    # docs/md-segments.md: 60 + 300 + 300; continues: a segment adds the next one
    assert fw.spec["_pilot"] == {"walltime": 7500, "min_walltime": 660, "continues": True}
    task = fw.tasks[0]
    assert type(task).__name__ == "GromacsSegmentTask"
    assert task["ntomp"] == 8 and task["mdrun_args"] == ["-nb", "gpu"] and task["env"] == {"GMX_MAXBACKUP": "-1"}
    assert task["run_dir"] == str(run)


def test_add_uses_config_dir_launchpad_file_and_staging(launchpad, lp_file, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    shutil.copy(lp_file, cfg / "my_launchpad.yaml")
    run = tmp_path / "omm"
    run.mkdir()
    for f in ("system.xml", "integrator.xml", "start.pdb"):
        (run / f).write_text("x")
    code, out = invoke("md", "add", str(run), "--engine", "openmm", "--nsteps", "500000", "--work-dir", "/scratch/omm",
                       "--host", "login.example.org", "--user", "me", "--name", "omm-1", config_dir=cfg)
    assert code == 0, out
    names = sorted(launchpad.get_fw_by_id(i).name for i in launchpad.get_fw_ids())
    assert names == ["omm-1-continue-1", "omm-1-md-1", "omm-1-pull-1", "omm-1-stage-1"]
    stage = next(launchpad.get_fw_by_id(i) for i in launchpad.get_fw_ids()
                 if launchpad.get_fw_by_id(i).name == "omm-1-stage-1")
    assert stage.state == "READY" and stage.spec["_category"] == "local"
    assert stage.tasks[0]["remote"] == {"host": "login.example.org", "user": "me"}
    assert stage.tasks[0]["dest_dir"] == "/scratch/omm"


def test_add_refuses_missing_inputs_and_options(launchpad, lp_file, tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    code, out = invoke("md", "add", str(run), "--engine", "gromacs", "-l", str(lp_file), config_dir=tmp_path)
    assert code != 0 and "missing md.tpr" in out and "grompp" in out
    code, out = invoke("md", "add", str(run), "--engine", "openmm", "-l", str(lp_file), config_dir=tmp_path)
    assert code != 0 and "--nsteps" in out
    code, out = invoke("md", "add", str(run), "--engine", "openmm", "--nsteps", "10", "-l", str(lp_file),
                       config_dir=tmp_path)
    assert code != 0 and "system.xml, integrator.xml, start.pdb" in out
    (run / "md.tpr").write_bytes(b"x")
    code, out = invoke("md", "add", str(run), "--engine", "gromacs", config_dir=tmp_path / "nocfg")
    assert code != 0 and f"no LaunchPad file at {tmp_path / 'nocfg' / 'my_launchpad.yaml'}" in out
    assert f"pilot --config-dir {tmp_path / 'nocfg'} launchpad init" in out
    code, out = invoke("md", "add", str(run), "--engine", "gromacs", "-p", "nonsense", config_dir=tmp_path)
    assert code != 0 and "KEY=VALUE" in out
    assert launchpad.get_fw_ids() == []


@pytest.mark.gromacs
@pytest.mark.skipif(shutil.which("gmx") is None, reason="GROMACS `gmx` not on PATH")
def test_add_run_and_show(launchpad, lp_file, tmp_path, monkeypatch):
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    from tasks.testsystems import gromacs_water_box

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "box"
    gromacs_water_box(run, 3000)
    code, out = invoke("md", "add", str(run), "--engine", "gromacs", "--segment-hours", "0.0002", "-p", "ntmpi=1",
                       "-p", "ntomp=1", "-p", "pin=off", "--env", "GMX_MAXBACKUP=-1", "-l", str(lp_file),
                       config_dir=tmp_path)
    assert code == 0, out
    (tmp_path / "launcher").mkdir()
    rapidfire(launchpad, FWorker(category="md"), m_dir=str(tmp_path / "launcher"), nlaunches=0, sleep_time=1,
              strm_lvl="ERROR")
    first = min(launchpad.get_fw_ids())
    code, out = invoke("md", "show", str(first), "-l", str(lp_file), config_dir=tmp_path)
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if ln[:1].isdigit()]
    assert len(lines) >= 2 and all("COMPLETED" in ln for ln in lines)
    assert "3000/3000" in lines[-1] and "completed" in lines[-1]
    assert "time_limit" in lines[0]
