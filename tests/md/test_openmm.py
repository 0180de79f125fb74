"""OpenMM segments with the real OpenMM (CPU platform, one thread) and a real LaunchPad: segmented ==
uninterrupted (final step, DCD frames, energy lines), SIGTERM to the process group, SIGKILL, a blow-up.

The reference is a plain OpenMM script in the test (openmm.app.Simulation with DCDReporter and
StateDataReporter, run uninterrupted), not the code under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM not installed (pip install 'fireworks-pilot[md]')")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")

NSTEPS = 2000
INTERVAL = 100
ENV = {"OPENMM_CPU_THREADS": "1"}  # the CPU platform's PME uses its own threads otherwise
ENGINE = {"nsteps": NSTEPS, "platform": "CPU", "platform_properties": {"Threads": "1"}, "traj_interval": INTERVAL,
          "energy_interval": INTERVAL, "temperature": 300, "seed": 1, "chunk_seconds": 0.2}


def dcd_header_frames(path: Path) -> int:
    """Frame count in the DCD header (offset 8, int32; written by openmm.app.DCDFile after every frame)."""
    with open(path, "rb") as fh:
        fh.seek(8)
        return struct.unpack("<i", fh.read(4))[0]


def csv_steps(path: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """The water box inputs and an uninterrupted plain-OpenMM reference run of NSTEPS steps."""
    from openmm import app, unit

    from tasks.testsystems import openmm_water_box

    root = tmp_path_factory.mktemp("ommbox")
    inputs = root / "inputs"
    openmm_water_box(inputs)
    ref = root / "ref"
    ref.mkdir()
    os.environ.setdefault("OPENMM_CPU_THREADS", "1")
    system = openmm.XmlSerializer.deserialize((inputs / "system.xml").read_text())
    integrator = openmm.XmlSerializer.deserialize((inputs / "integrator.xml").read_text())
    pdb = app.PDBFile(str(inputs / "start.pdb"))
    sim = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(pdb.positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    sim.reporters.append(app.DCDReporter(str(ref / "md.dcd"), INTERVAL))
    sim.reporters.append(app.StateDataReporter(str(ref / "md.csv"), INTERVAL, step=True, potentialEnergy=True))
    sim.step(NSTEPS)
    del sim
    info = {"inputs": inputs, "frames": dcd_header_frames(ref / "md.dcd"), "steps": csv_steps(ref / "md.csv")}
    assert info["frames"] == NSTEPS // INTERVAL
    yield info
    shutil.rmtree(root, ignore_errors=True)


def fresh_run_dir(box, tmp_path: Path, name: str = "run") -> Path:
    d = tmp_path / name
    shutil.copytree(box["inputs"], d)
    return d


def rapidfire_all(lp, tmp_path: Path) -> None:
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    (tmp_path / "launcher").mkdir(exist_ok=True)
    rapidfire(lp, FWorker(category="md"), m_dir=str(tmp_path / "launcher"), nlaunches=0, sleep_time=1,
              strm_lvl="ERROR")


def md_fireworks(lp, wf_id: int) -> list:
    fws = [fw for fw in lp.get_wf_by_fw_id(wf_id).fws if "-md-" in fw.name]
    return sorted(fws, key=lambda fw: fw.tasks[0]["segment"])


def stored(fw) -> dict:
    launches = [la for la in fw.launches if la.state == "COMPLETED"]
    assert launches, f"{fw.name}: no COMPLETED launch (state {fw.state})"
    return launches[-1].action.stored_data


def child_rocket(lp, cwd: Path) -> subprocess.Popen[bytes]:
    """One rocket in a child process in its own process group (as the pilot worker runs a Firework)."""
    code = ("import sys\n"
            "from fireworks import LaunchPad, FWorker\n"
            "from fireworks.core.rocket_launcher import launch_rocket\n"
            "lp = LaunchPad(host=sys.argv[1], name=sys.argv[2], uri_mode=True, strm_lvl='ERROR')\n"
            "launch_rocket(lp, FWorker(category='md'), strm_lvl='ERROR')\n")
    log = open(cwd / "child.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-c", code, lp.host, lp.name], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **ENV})
    finally:
        log.close()


def wait_for_state_file(d: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> int:
    from tasks.openmm import read_state_step

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (d.parent / "child.log").read_text()[-3000:]
        step = read_state_step(d / "md_state.xml") if (d / "md_state.xml").exists() else None
        if step:
            return step
        time.sleep(0.1)
    raise TimeoutError(f"no periodic checkpoint in {d} after {timeout} s")


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_segmented_run_equals_uninterrupted(launchpad, box, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = fresh_run_dir(box, tmp_path)
    # segments of at most 600 steps (and 1.8 s): at least ceil(2000 / 600) = 4, whatever the machine's speed
    wf = make_md_workflow(d, "openmm", "omm", segment_hours=0.0005, engine_params={**ENGINE, "segment_steps": 600},
                          env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    fws = md_fireworks(launchpad, wf_id)
    assert all(fw.state == "COMPLETED" for fw in fws)
    assert len(fws) >= 4, f"expected >= 4 segments of <= 600 steps, got {len(fws)}"
    data = [stored(fw) for fw in fws]
    assert [s["outcome"] for s in data] == ["continue"] * (len(fws) - 1) + ["finished"]
    assert sum(s["steps_done"] for s in data) == NSTEPS
    assert data[-1]["checkpoint_step"] == NSTEPS
    assert all(s["ns_per_day"] and s["ns_per_day"] > 0 for s in data if s["steps_done"])
    assert [s["start_step"] for s in data[1:]] == [s["checkpoint_step"] for s in data[:-1]]
    assert dcd_header_frames(d / "md.dcd") == box["frames"]
    from tasks.openmm import dcd_frame_count, read_state_step

    assert dcd_frame_count(d / "md.dcd") == box["frames"]  # and the file size agrees with the header
    assert csv_steps(d / "md.csv") == box["steps"]
    assert read_state_step(d / "md_state.xml") == NSTEPS
    # the DCD is readable by OpenMM's own reader side: a fresh DCDFile in append mode accepts it
    assert (d / "md.out").read_text().count("start at step") == len(fws)


def test_sigterm_to_process_group_continues(launchpad, box, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = fresh_run_dir(box, tmp_path)
    wf = make_md_workflow(d, "openmm", "term", segment_hours=1,
                          engine_params={**ENGINE, "checkpoint_minutes": 0.005}, env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    proc = child_rocket(launchpad, tmp_path)
    try:
        wait_for_state_file(d, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        stop_child(proc)
    assert rc == 0, (tmp_path / "child.log").read_text()[-3000:]
    fws = md_fireworks(launchpad, wf_id)
    s1 = stored(fws[0])
    assert (s1["outcome"], s1["stop_reason"], s1["sigterm"]) == ("continue", "sigterm", True)
    assert 0 < s1["checkpoint_step"] < NSTEPS
    rapidfire_all(launchpad, tmp_path)
    fws = md_fireworks(launchpad, wf_id)
    assert all(fw.state == "COMPLETED" for fw in fws)
    assert stored(fws[1])["start_step"] == s1["checkpoint_step"]
    assert stored(fws[-1])["checkpoint_step"] == NSTEPS
    assert dcd_header_frames(d / "md.dcd") == box["frames"]
    assert csv_steps(d / "md.csv") == box["steps"]


def test_sigkill_resumes_from_periodic_checkpoint_and_truncates_outputs(launchpad, box, tmp_path, monkeypatch):
    from tasks.openmm import dcd_frame_count, read_state_step
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = fresh_run_dir(box, tmp_path)
    wf = make_md_workflow(d, "openmm", "kill", segment_hours=1,
                          engine_params={**ENGINE, "checkpoint_minutes": 0.01}, env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    proc = child_rocket(launchpad, tmp_path)
    try:
        wait_for_state_file(d, proc)
        time.sleep(0.4)  # let it write frames past the checkpoint
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        stop_child(proc)
    killed_at = read_state_step(d / "md_state.xml")
    assert 0 < killed_at < NSTEPS
    frames_on_disk = dcd_frame_count(d / "md.dcd")
    assert frames_on_disk >= killed_at // INTERVAL  # outputs are flushed before every checkpoint
    fw = md_fireworks(launchpad, wf_id)[0]
    assert fw.state == "RUNNING"
    launchpad.rerun_fw(fw.fw_id)
    rapidfire_all(launchpad, tmp_path)
    fws = md_fireworks(launchpad, wf_id)
    assert all(f.state == "COMPLETED" for f in fws)
    s = stored(fws[0])
    assert s["start_step"] == killed_at and s["checkpoint_step"] == NSTEPS
    assert dcd_header_frames(d / "md.dcd") == dcd_frame_count(d / "md.dcd") == box["frames"]
    assert csv_steps(d / "md.csv") == box["steps"]  # lines after the checkpoint were dropped, then rewritten


def test_blow_up_fizzles_with_openmm_error(launchpad, box, tmp_path, monkeypatch):
    """A 20 fs time step on flexible-angle water: OpenMM itself reports NaN coordinates."""
    from openmm import app

    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = fresh_run_dir(box, tmp_path)
    integ = openmm.XmlSerializer.deserialize((d / "integrator.xml").read_text())
    integ.setStepSize(0.02)
    (d / "integrator.xml").write_text(openmm.XmlSerializer.serialize(integ))
    # what OpenMM says when run directly
    system = openmm.XmlSerializer.deserialize((d / "system.xml").read_text())
    pdb = app.PDBFile(str(d / "start.pdb"))
    sim = app.Simulation(pdb.topology, system, openmm.XmlSerializer.deserialize((d / "integrator.xml").read_text()),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(pdb.positions)
    with pytest.raises(openmm.OpenMMException) as direct:
        for _ in range(200):
            sim.step(10)
            sim.context.getState(positions=True)  # raises when positions are NaN
    del sim

    wf = make_md_workflow(d, "openmm", "boom", segment_hours=1, engine_params={**ENGINE, "nsteps": 2000}, env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    fws = launchpad.get_wf_by_fw_id(wf_id).fws
    assert [fw.state for fw in fws] == ["FIZZLED"]
    exc = fws[0].launches[-1].action.stored_data["_exception"]
    text = exc["_stacktrace"]
    assert str(direct.value).split("\n")[0] in text
    assert "FAILED" in text and "What to try" in text


def test_missing_input_names_the_file(tmp_path):
    from tasks.openmm import OpenMMSegmentTask
    from tasks.segment import SegmentError

    with pytest.raises(SegmentError, match="system.xml"):
        OpenMMSegmentTask(run_dir=str(tmp_path), name="md", nsteps=10).run_segment()


def test_truncate_dcd_refuses_lost_frames(box, tmp_path):
    """A trajectory shorter than the checkpoint implies is an error (data lost), never silently accepted."""
    from tasks.openmm import truncate_dcd
    from tasks.segment import SegmentError

    src = box["inputs"].parent / "ref" / "md.dcd"
    p = tmp_path / "t.dcd"
    shutil.copy(src, p)
    assert truncate_dcd(p, 1000) == 10
    assert dcd_header_frames(p) == 10
    with pytest.raises(SegmentError, match="frames were lost"):
        truncate_dcd(p, 1500)


def test_segments_that_write_no_frame_continue(launchpad, box, tmp_path, monkeypatch):
    """A segment that stops before its first trajectory frame leaves an empty DCD; the next one must go on."""
    from tasks.openmm import dcd_frame_count, read_state_step
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = fresh_run_dir(box, tmp_path)
    # one frame, at the very last step: every segment before the last writes none
    wf = make_md_workflow(d, "openmm", "omm", segment_hours=0.0005, engine_params={**ENGINE, "traj_interval": NSTEPS},
                          env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    fws = md_fireworks(launchpad, wf_id)
    assert len(fws) >= 2 and all(fw.state == "COMPLETED" for fw in fws), [(f.name, f.state) for f in fws]
    assert read_state_step(d / "md_state.xml") == NSTEPS
    assert dcd_frame_count(d / "md.dcd") == 1
