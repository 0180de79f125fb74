"""GROMACS segments with the real `gmx` (Debian 2022.5 here) and a real LaunchPad (embedded server or
MONGODB_URI): segmented == uninterrupted, SIGTERM to the process group, SIGKILL, broken inputs, deadline.

The reference values (frame counts, final step, error texts) come from running GROMACS itself in the test
(`gmx mdrun` uninterrupted, `gmx check`, `gmx dump`), never from the code under test. The system is the
216-water SPC box of /work/shared/recipes/gromacs-segments.sh: ~2000 steps/s on one core here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.gromacs,
    pytest.mark.skipif(shutil.which("gmx") is None,
                       reason="GROMACS `gmx` not on PATH (apt-get install gromacs; CI installs it)"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning"),
]

NSTEPS = 10000          # 20 ps; ~5 s uninterrupted on one core here
NSTXOUT = 500           # -> 21 xtc frames, 21 edr frames (as `gmx check` counts them on the reference run)
MDRUN = ["-ntmpi", "1", "-ntomp", "1", "-pin", "off"]
ENGINE = {"ntmpi": 1, "ntomp": 1, "pin": "off", "mdrun_args": ["-reprod"]}
ENV = {"GMX_MAXBACKUP": "-1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ GROMACS itself
def gmx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gmx", "-quiet", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV})


def xtc_frames(path: Path) -> int:
    """`gmx check -f` line "Coords   21    1" (as in the recipe's xtc_frames)."""
    out = gmx("check", "-f", str(path), cwd=path.parent)
    m = re.search(r"^Coords\s+(\d+)", out.stdout + out.stderr, re.M)
    assert m, out.stdout + out.stderr
    return int(m.group(1))


def edr_frames(path: Path) -> int:
    """`gmx check -e` line "Found 21 frames with a timestep of ..." (as in the recipe's edr_frames)."""
    out = gmx("check", "-e", str(path), cwd=path.parent)
    m = re.search(r"Found (\d+) frames", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return int(m.group(1))


def cpt_step(path: Path) -> int:
    """`gmx dump -cp`: header line "step = N" (recipe's cpt_step)."""
    out = gmx("dump", "-cp", str(path), cwd=path.parent)
    m = re.search(r"^step = (\d+)$", out.stdout, re.M)
    assert m, out.stderr
    return int(m.group(1))


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """The 216-water box (.tpr, NSTEPS) and an uninterrupted reference run of it by plain `gmx mdrun`."""
    from tasks.testsystems import gromacs_water_box

    root = tmp_path_factory.mktemp("water")
    tpr = gromacs_water_box(root / "build", NSTEPS, nstxout_compressed=NSTXOUT, nstenergy=NSTXOUT)
    ref = root / "ref"
    ref.mkdir()
    shutil.copy(tpr, ref / "md.tpr")
    run = gmx("mdrun", "-deffnm", "md", *MDRUN, "-reprod", cwd=ref)
    assert run.returncode == 0, run.stderr[-2000:]
    info = {"tpr": tpr, "build": root / "build", "ref": ref, "xtc": xtc_frames(ref / "md.xtc"),
            "edr": edr_frames(ref / "md.edr"), "step": cpt_step(ref / "md.cpt")}
    assert info["step"] == NSTEPS and info["xtc"] == NSTEPS // NSTXOUT + 1
    yield info
    shutil.rmtree(root, ignore_errors=True)


def run_dir_with_tpr(water, tmp_path: Path, name: str = "seg") -> Path:
    d = tmp_path / name
    d.mkdir()
    shutil.copy(water["tpr"], d / "md.tpr")
    return d


# ------------------------------------------------------------------------------------------ LaunchPad helpers
def rapidfire_all(lp, tmp_path: Path, category: str | list[str] = "md") -> None:
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    launch = tmp_path / "launcher"
    launch.mkdir(exist_ok=True)
    rapidfire(lp, FWorker(category=category), m_dir=str(launch), nlaunches=0, sleep_time=1, strm_lvl="ERROR")


def md_fireworks(lp, wf_id: int) -> list:
    """The md Fireworks of a workflow, by segment number."""
    wf = lp.get_wf_by_fw_id(wf_id)
    fws = [fw for fw in wf.fws if "-md-" in fw.name]
    return sorted(fws, key=lambda fw: fw.tasks[0]["segment"])


def stored(fw) -> dict:
    launches = [la for la in fw.launches if la.state == "COMPLETED"]
    assert launches, f"{fw.name} has no COMPLETED launch (state {fw.state})"
    return launches[-1].action.stored_data


def exception_text(fw) -> str:
    la = fw.launches[-1]
    exc = la.action.stored_data.get("_exception", {})
    return str(exc.get("_stacktrace", "")) + "\n" + str(exc.get("_details", ""))


def child_rocket(lp, cwd: Path, category: str = "md") -> subprocess.Popen[bytes]:
    """One FireWorks rocket in a child process in its own process group (as the pilot worker runs it)."""
    code = ("import sys\n"
            "from fireworks import LaunchPad, FWorker\n"
            "from fireworks.core.rocket_launcher import launch_rocket\n"
            "lp = LaunchPad(host=sys.argv[1], name=sys.argv[2], uri_mode=True, strm_lvl='ERROR')\n"
            "launch_rocket(lp, FWorker(category=sys.argv[3]), strm_lvl='ERROR')\n")
    log = open(cwd / "child.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-c", code, lp.host, lp.name, category], cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **ENV})
    finally:
        log.close()


def wait_for_checkpoint(d: Path, proc: subprocess.Popen[bytes], min_step: int = 1, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (d.parent / "child.log").read_text()[-3000:]
        if (d / "md.cpt").exists():
            try:
                step = cpt_step(d / "md.cpt")
            except AssertionError:
                step = -1  # being written
            if step >= min_step:
                return step
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint >= step {min_step} in {d} after {timeout} s")


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ------------------------------------------------------------------------------------------ tests
def test_segmented_run_equals_uninterrupted(launchpad, water, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = run_dir_with_tpr(water, tmp_path)
    wf = make_md_workflow(d, "gromacs", "water", segment_hours=0.0004, engine_params=ENGINE, env=ENV)
    fw_ids = launchpad.add_wf(wf)
    rapidfire_all(launchpad, tmp_path)

    fws = md_fireworks(launchpad, list(fw_ids.values())[0])
    assert all(fw.state == "COMPLETED" for fw in fws), [(fw.name, fw.state) for fw in fws]
    assert len(fws) >= 3, f"expected >= 3 segments of ~1.4 s for {NSTEPS} steps, got {len(fws)}"
    data = [stored(fw) for fw in fws]
    assert [s["segment"] for s in data] == list(range(1, len(fws) + 1))
    assert [s["outcome"] for s in data] == ["continue"] * (len(fws) - 1) + ["finished"]
    steps = [s["checkpoint_step"] for s in data]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert sum(s["steps_done"] for s in data) == NSTEPS
    assert all(s["ns_per_day"] and s["ns_per_day"] > 0 and s["wall_time_s"] > 0 for s in data)
    assert all(fw.spec["_pilot"]["walltime"] == 300 + 2 for fw in fws)  # ceil(0.0004 h + 300 s)
    assert all(fw.spec["_category"] == "md" for fw in fws)

    # the same result as the uninterrupted run, judged by GROMACS itself
    assert cpt_step(d / "md.cpt") == water["step"] == NSTEPS
    assert xtc_frames(d / "md.xtc") == water["xtc"]
    assert edr_frames(d / "md.edr") == water["edr"]
    assert (d / "md.gro").read_bytes() == (water["ref"] / "md.gro").read_bytes()  # -reprod, one thread
    log = (d / "md.log").read_text()
    assert log.count("Started mdrun") == len(fws)  # one log, appended by every segment


def test_sigterm_to_process_group_continues_from_checkpoint(launchpad, water, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = run_dir_with_tpr(water, tmp_path)
    wf = make_md_workflow(d, "gromacs", "term", segment_hours=1, engine_params={**ENGINE, "checkpoint_minutes": 0.02},
                          env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    proc = child_rocket(launchpad, tmp_path)
    try:
        wait_for_checkpoint(d, proc)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)  # what the pilot worker does before its wall time: one SIGTERM
        rc = proc.wait(60)
    finally:
        stop_child(proc)
    log = (tmp_path / "child.log").read_text()
    assert rc == 0, f"the task process should survive SIGTERM and report; rc={rc}\n{log[-3000:]}"
    assert "Received the TERM signal" in (d / "md.log").read_text()  # mdrun got exactly the group's SIGTERM
    assert "second INT/TERM" not in (d / "md.log").read_text()  # ...and no forwarded second one
    first = md_fireworks(launchpad, wf_id)
    assert first[0].state == "COMPLETED" and len(first) == 2 and first[1].state == "READY"
    s1 = stored(first[0])
    assert s1["sigterm"] is True and s1["stop_reason"] == "sigterm" and s1["outcome"] == "continue"
    assert 0 < s1["checkpoint_step"] < NSTEPS
    assert s1["checkpoint_step"] == cpt_step(d / "md.cpt")
    assert first[1].tasks[0]["expect_step"] == s1["checkpoint_step"]

    rapidfire_all(launchpad, tmp_path)
    fws = md_fireworks(launchpad, wf_id)
    assert [fw.state for fw in fws] == ["COMPLETED"] * len(fws)
    s2 = stored(fws[1])
    assert s2["start_step"] == s1["checkpoint_step"]  # continued, never restarted from zero
    assert stored(fws[-1])["outcome"] == "finished"
    assert cpt_step(d / "md.cpt") == NSTEPS
    assert xtc_frames(d / "md.xtc") == water["xtc"]
    assert edr_frames(d / "md.edr") == water["edr"]


def test_sigkill_resumes_from_last_periodic_checkpoint(launchpad, water, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = run_dir_with_tpr(water, tmp_path)
    wf = make_md_workflow(d, "gromacs", "kill", segment_hours=1, engine_params={**ENGINE, "checkpoint_minutes": 0.02},
                          env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    proc = child_rocket(launchpad, tmp_path)
    try:
        wait_for_checkpoint(d, proc)
        time.sleep(0.7)
        os.killpg(proc.pid, signal.SIGKILL)  # the scheduler's kill: no chance to checkpoint
        proc.wait(30)
    finally:
        stop_child(proc)
    killed_at = cpt_step(d / "md.cpt")
    assert 0 < killed_at < NSTEPS
    fw = md_fireworks(launchpad, wf_id)[0]
    assert fw.state == "RUNNING"  # a lost run: the manager reruns it; here we do as it does
    launchpad.rerun_fw(fw.fw_id)
    rapidfire_all(launchpad, tmp_path)

    fws = md_fireworks(launchpad, wf_id)
    assert all(f.state == "COMPLETED" for f in fws)
    rerun = stored(fws[0])
    assert rerun["start_step"] == killed_at  # resumed from the periodic checkpoint
    assert rerun["outcome"] == "finished" and rerun["checkpoint_step"] == NSTEPS
    assert xtc_frames(d / "md.xtc") == water["xtc"]  # mdrun truncated the frames written after the checkpoint
    assert edr_frames(d / "md.edr") == water["edr"]


def test_truncated_tpr_fizzles_once_with_gromacs_error(launchpad, water, tmp_path, monkeypatch):
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "md.tpr").write_bytes(water["tpr"].read_bytes()[:3000])
    # what GROMACS itself says about this file
    direct = gmx("mdrun", "-deffnm", "x", "-s", "md.tpr", *MDRUN, cwd=d)
    assert direct.returncode != 0
    m = re.search(r"Fatal error:\n(.+)", direct.stdout + direct.stderr)
    assert m, direct.stderr
    gromacs_says = m.group(1).strip()

    wf = make_md_workflow(d, "gromacs", "bad", segment_hours=0.001, engine_params=ENGINE, env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    fws = launchpad.get_wf_by_fw_id(wf_id).fws
    assert [fw.state for fw in fws] == ["FIZZLED"]  # once: nothing was added, nothing loops
    assert len(fws[0].launches) == 1
    text = exception_text(fws[0])
    assert gromacs_says in text and "Fatal error" in text and "md.tpr" in text


def test_broken_structure_fizzles_with_mdrun_error_and_log_tail(launchpad, water, tmp_path, monkeypatch):
    """Two overlapping waters: grompp accepts it, mdrun stops at step 0 with its own error."""
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "overlap"
    d.mkdir()
    lines = (water["build"] / "conf.gro").read_text().splitlines()
    for i in range(3):  # put molecule 2 onto molecule 1 (0.01 nm apart)
        src = lines[2 + i]
        x, y, z = float(src[20:28]) + 0.01, float(src[28:36]), float(src[36:44])
        lines[5 + i] = lines[5 + i][:20] + f"{x:8.3f}{y:8.3f}{z:8.3f}" + lines[5 + i][44:]
    (d / "conf.gro").write_text("\n".join(lines) + "\n")
    g = gmx("grompp", "-f", str(water["build"] / "md.mdp"), "-c", "conf.gro", "-p", str(water["build"] / "topol.top"),
            "-o", "md.tpr", cwd=d)
    assert g.returncode == 0, g.stderr[-2000:]
    ref = tmp_path / "overlap-ref"
    ref.mkdir()
    shutil.copy(d / "md.tpr", ref / "md.tpr")
    direct = gmx("mdrun", "-deffnm", "md", *MDRUN, cwd=ref)
    m = re.search(r"(Step 0: The total potential energy is [^\n]+)", direct.stdout + direct.stderr)
    assert direct.returncode != 0 and m, direct.stderr[-2000:]

    wf = make_md_workflow(d, "gromacs", "overlap", segment_hours=0.001, engine_params=ENGINE, env=ENV)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    fws = launchpad.get_wf_by_fw_id(wf_id).fws
    assert [fw.state for fw in fws] == ["FIZZLED"]
    text = exception_text(fws[0])
    assert m.group(1) in text
    assert "Internal error (bug)" in text and "Last lines of the log" in text and "gmx mdrun -deffnm md" in text
    details = fws[0].launches[-1].action.stored_data["_exception"]["_details"]
    assert m.group(1) in details["fatal_error"]
    assert "Started mdrun on rank 0" in details["log_tail"]  # the tail of md.log, as mdrun left it


def test_grompp_step_and_broken_topology(launchpad, water, tmp_path, monkeypatch):
    from tasks.testsystems import gromacs_water_inputs
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good"
    files = gromacs_water_inputs(good, 200)
    bad = tmp_path / "broken"
    shutil.copytree(good, bad)
    top = (bad / "topol.top").read_text()
    (bad / "topol.top").write_text(re.sub(r"SOL \d+", "SOL 215", top))
    direct = gmx("grompp", "-f", "md.mdp", "-c", "conf.gro", "-p", "topol.top", "-o", "x.tpr", cwd=bad)
    assert direct.returncode != 0 and "does not match topology" in direct.stdout + direct.stderr

    ids = {}
    for d in (good, bad):
        wf = make_md_workflow(d, "gromacs", d.name, segment_hours=1, engine_params={**ENGINE, "grompp": files},
                              env=ENV)
        ids[d.name] = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path)
    g = launchpad.get_wf_by_fw_id(ids["good"]).fws
    assert [fw.state for fw in g] == ["COMPLETED"] and stored(g[0])["checkpoint_step"] == 200
    assert cpt_step(good / "md.cpt") == 200
    b = launchpad.get_wf_by_fw_id(ids["broken"]).fws
    assert [fw.state for fw in b] == ["FIZZLED"]
    text = exception_text(b[0])
    assert "does not match topology" in text and "gmx grompp failed" in text


def test_deadline_limits_the_segment_and_no_time_skips(water, tmp_path, monkeypatch):
    from tasks.gromacs import GromacsSegmentTask

    d = run_dir_with_tpr(water, tmp_path)
    task = GromacsSegmentTask(run_dir=str(d), name="md", segment_hours=4, deadline_margin_s=5, min_segment_s=1,
                              env=ENV, **ENGINE)
    monkeypatch.delenv("PILOT_STOP_AT", raising=False)
    # 3 s before the deadline margin: mdrun gets -maxh ~3 s, not 4 h
    monkeypatch.setenv("PILOT_DEADLINE", str(time.time() + 5 + 3))
    t0 = time.monotonic()
    r = task.run_segment()
    assert time.monotonic() - t0 < 30
    assert r.outcome == "continue" and r.stop_reason == "time_limit"
    assert r.time_limit_s is not None and 2 < r.time_limit_s <= 3
    assert "Run time exceeded" in (d / "md.mdrun.out").read_text()
    assert 0 < cpt_step(d / "md.cpt") < NSTEPS
    # past the deadline (minus margin): mdrun is not started, the segment continues without progress
    size = (d / "md.log").stat().st_size
    monkeypatch.setenv("PILOT_DEADLINE", str(time.time() + 5 - 1))
    r2 = task.run_segment()
    assert (r2.outcome, r2.stop_reason, r2.steps_done) == ("continue", "no_time", 0)
    assert (d / "md.log").stat().st_size == size


def test_finished_run_is_not_run_again_and_lost_checkpoint_is_refused(water, tmp_path):
    from tasks.gromacs import GromacsSegmentTask
    from tasks.segment import SegmentError

    d = tmp_path / "done"
    shutil.copytree(water["ref"], d)
    size = (d / "md.log").stat().st_size
    r = GromacsSegmentTask(run_dir=str(d), name="md", segment=7, env=ENV, **ENGINE).run_segment()
    assert (r.outcome, r.stop_reason, r.checkpoint_step) == ("finished", "already_done", NSTEPS)
    assert (d / "md.log").stat().st_size == size  # mdrun was not started

    (d / "md.cpt").unlink()
    with pytest.raises(SegmentError, match="Refusing to start from zero"):
        GromacsSegmentTask(run_dir=str(d), name="md", segment=8, expect_step=NSTEPS, env=ENV, **ENGINE).run_segment()
    assert (d / "md.log").stat().st_size == size


def test_missing_tpr_and_missing_gmx_name_the_problem(tmp_path):
    from tasks.gromacs import GromacsSegmentTask
    from tasks.segment import SegmentError

    with pytest.raises(SegmentError, match=r"md\.tpr does not exist"):
        GromacsSegmentTask(run_dir=str(tmp_path), name="md").run_segment()
    (tmp_path / "md.tpr").write_bytes(b"x")
    with pytest.raises(SegmentError, match="gmx-nonexistent"):
        GromacsSegmentTask(run_dir=str(tmp_path), name="md", gmx="gmx-nonexistent").run_segment()


def _staged_run(launchpad, water, tmp_path, work: Path, remote: dict | None) -> None:
    from fireworks import Firework, ScriptTask

    from tasks.workflow import make_md_workflow

    archive = run_dir_with_tpr(water, tmp_path, "archive")
    post = Firework(ScriptTask.from_str("echo segment >> postrun.txt"),
                    spec={"_category": "local", "_launch_dir": str(archive)}, name="post")
    final = Firework(ScriptTask.from_str("echo done > final.txt"),
                     spec={"_category": "local", "_launch_dir": str(archive)}, name="final")
    wf = make_md_workflow(archive, "gromacs", "staged", segment_hours=0.0004, engine_params=ENGINE, env=ENV,
                          stage={"work_dir": str(work), "remote": remote, "retry_delay_s": 0.5},
                          postrun_wf=post, final_wf=final)
    wf_id = list(launchpad.add_wf(wf).values())[0]
    rapidfire_all(launchpad, tmp_path, category=["md", "local"])

    fws = launchpad.get_wf_by_fw_id(wf_id).fws
    assert all(fw.state == "COMPLETED" for fw in fws), [(fw.name, fw.state) for fw in fws if fw.state != "COMPLETED"]
    n = len([fw for fw in fws if "-md-" in fw.name])
    assert n >= 3
    for kind in ("stage", "pull", "continue"):
        assert len([fw for fw in fws if f"-{kind}-" in fw.name]) == n
    assert len([fw for fw in fws if fw.name == "post"]) == n and len([fw for fw in fws if fw.name == "final"]) == 1
    md = md_fireworks(launchpad, wf_id)
    assert all(fw.spec["_launch_dir"] == str(work) for fw in md)
    # the archive holds the whole run, as GROMACS judges it
    assert cpt_step(archive / "md.cpt") == NSTEPS
    assert xtc_frames(archive / "md.xtc") == water["xtc"]
    assert edr_frames(archive / "md.edr") == water["edr"]
    assert (archive / "md.gro").read_bytes() == (water["ref"] / "md.gro").read_bytes()
    assert (archive / "postrun.txt").read_text().count("segment") == n
    assert (archive / "final.txt").read_text().strip() == "done"
    # every stage after the first one found the checkpoint already in the work dir (idempotent: skipped)
    later = [stored(fw)["stage"] for fw in fws if "-stage-" in fw.name and "md.cpt" in fw.tasks[0]["files"]]
    assert len(later) == n - 1 and all("md.cpt" in rep["skipped"] for rep in later)


def test_staged_chain_on_shared_filesystem(launchpad, water, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _staged_run(launchpad, water, tmp_path, tmp_path / "scratch" / "work", remote=None)


@pytest.mark.slurm
def test_staged_chain_over_ssh(launchpad, water, tmp_path, monkeypatch, slurm_cluster, remote_tmp):
    """Stage and pull through the real sshd as the cluster user; md runs in that user's work directory."""
    monkeypatch.chdir(tmp_path)
    remote = {"host": slurm_cluster.host, "port": slurm_cluster.port, "user": slurm_cluster.user,
              "identity_file": slurm_cluster.key, "known_hosts": slurm_cluster.known_hosts}
    _staged_run(launchpad, water, tmp_path, remote_tmp / "work", remote=remote)


# ------------------------------------------------------------------------------------------ under the pilot worker
def start_worker(lp_file: Path, cwd: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    # --idle-timeout 0.2: a worker's work is READY when it starts (a segment's successor becomes READY as the
    # segment completes), so the idle timeout is only how long it lingers when the work is done
    log = open(cwd / f"{name}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", "md",
                                 "--name", name, "--launch-dir", str(cwd), "--idle-timeout", "0.2", *extra],
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **ENV})
    finally:
        log.close()


def test_segments_under_the_pilot_worker(launchpad, water, tmp_path, monkeypatch):
    """The real `pilot worker`: its pre-walltime stop (SIGUSR1 -> one SIGTERM to the Firework's process group)
    ends a segment that then continues; a worker with a deadline gives mdrun a -maxh that ends before it."""
    from tasks.workflow import make_md_workflow

    monkeypatch.chdir(tmp_path)
    lp_file = tmp_path / "lp.yaml"
    launchpad.to_file(str(lp_file))
    d = run_dir_with_tpr(water, tmp_path)
    wf = make_md_workflow(d, "gromacs", "piloted", segment_hours=0.003, startup_slack_s=2, deadline_margin_s=2,
                          stop_margin_s=1, min_segment_s=1, engine_params={**ENGINE, "checkpoint_minutes": 0.02},
                          env=ENV)
    wf_id = next(iter(launchpad.add_wf(wf).values()))
    # docs/md-segments.md: walltime ceil(10.8 + 2); min_walltime min(1, 10.8) + 2 + 2
    assert md_fireworks(launchpad, wf_id)[0].spec["_pilot"] == {"walltime": 13, "min_walltime": 5, "continues": True}

    # 1. a worker without deadline; the batch system's pre-walltime signal arrives mid-segment
    w1 = start_worker(lp_file, tmp_path, "w1", "--no-deadline", "--grace", "30")
    try:
        wait_for_checkpoint(d, w1)
        w1.send_signal(signal.SIGUSR1)
        assert w1.wait(60) == 0, (tmp_path / "w1.log").read_text()[-3000:]
    finally:
        stop_child(w1)
    fws = md_fireworks(launchpad, wf_id)
    s1 = stored(fws[0])
    assert (s1["outcome"], s1["stop_reason"], s1["sigterm"]) == ("continue", "sigterm", True)
    assert 0 < s1["checkpoint_step"] < NSTEPS and fws[1].state == "READY"

    # 2. a worker whose job ends in 9 s (margin 4 s): the next segment (walltime 13 s) does not fit
    w2 = start_worker(lp_file, tmp_path, "w2", "--deadline", str(time.time() + 9), "--margin", "4")
    try:
        assert w2.wait(60) == 0, (tmp_path / "w2.log").read_text()[-3000:]
    finally:
        stop_child(w2)
    assert md_fireworks(launchpad, wf_id)[1].state == "READY"

    # 3. a worker with 20 s left (margin 4): takes it; the segment's limit comes from PILOT_STOP_AT/DEADLINE
    w3 = start_worker(lp_file, tmp_path, "w3", "--deadline", str(time.time() + 20), "--margin", "4")
    try:
        assert w3.wait(90) == 0, (tmp_path / "w3.log").read_text()[-3000:]
    finally:
        stop_child(w3)
    fws = md_fireworks(launchpad, wf_id)
    s2 = stored(fws[1])
    assert s2["start_step"] == s1["checkpoint_step"] and s2["sigterm"] is False
    assert s2["time_limit_s"] <= 10.8 and s2["stop_reason"] in ("time_limit", "completed")

    # 4. the rest without deadline
    w4 = start_worker(lp_file, tmp_path, "w4", "--no-deadline")
    try:
        assert w4.wait(180) == 0, (tmp_path / "w4.log").read_text()[-3000:]
    finally:
        stop_child(w4)
    fws = md_fireworks(launchpad, wf_id)
    assert all(fw.state == "COMPLETED" for fw in fws) and stored(fws[-1])["checkpoint_step"] == NSTEPS
    assert xtc_frames(d / "md.xtc") == water["xtc"]
    assert edr_frames(d / "md.edr") == water["edr"]
