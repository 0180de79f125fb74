"""Pure parts of the MD segment tasks: the decision, time limits, SIGTERM flag, GROMACS output parsing, and the
workflow shape (categories, _pilot walltime, links, next segment, serialization). No engine runs here."""

from __future__ import annotations

import json
import os
import signal

import pytest
from fireworks import Firework, FWAction, ScriptTask, Workflow

from tasks.gromacs import GromacsSegmentTask, format_maxh, parse_gromacs_error, parse_performance
from tasks.openmm import OpenMMSegmentTask
from tasks.segment import (
    ContinueTask,
    Outcome,
    SegmentError,
    StopReason,
    decide,
    read_deadline,
    sigterm_flag,
    time_limit_s,
)
from tasks.staging import PullTask, StageTask
from tasks.workflow import make_md_workflow, next_additions

# Real output of `gmx mdrun -deffnm bad -cpi bad.cpt` (GROMACS 2022.5-Debian_2022.5_2) on a .tpr truncated to
# 3000 bytes, captured on this machine (stdout+stderr, as the task records them in NAME.mdrun.out).
MDRUN_TRUNCATED_TPR = """\
Compiled SIMD: SSE4.1, but for this host/run AVX2_256 might be better (see
log).
Reading file bad.tpr, VERSION 2022.5-Debian_2022.5_2 (single precision)

-------------------------------------------------------
Program:     gmx mdrun, version 2022.5-Debian_2022.5_2
Source file: src/gromacs/fileio/tpxio.cpp (line 565)

Fatal error:
sc-r-power=48 is no longer supported

For more information and tips for troubleshooting, please check the GROMACS
website at http://www.gromacs.org/Documentation/Errors
-------------------------------------------------------
"""

# Real output of mdrun (same version) on the 216-water box with one water moved onto another (captured here):
# GROMACS reports this one as "Internal error (bug)", not "Fatal error".
MDRUN_OVERLAP = """\
starting mdrun 'SPC water box'
20000 steps,     40.0 ps.

-------------------------------------------------------
Program:     gmx mdrun, version 2022.5-Debian_2022.5_2
Source file: src/gromacs/mdlib/sim_util.cpp (line 554)
Function:    void checkPotentialEnergyValidity(int64_t, const gmx_enerdata_t&, const t_inputrec&)

Internal error (bug):
Step 0: The total potential energy is 2.63348e+18, which is extremely high.
The LJ and electrostatic contributions to the energy are 2.63348e+18 and
1132.04, respectively. A very high potential energy can be caused by
overlapping interactions in bonded interactions or very large coordinate
values. Usually this is caused by a badly- or non-equilibrated initial
configuration, incorrect interactions or parameters in the topology.

For more information and tips for troubleshooting, please check the GROMACS
website at http://www.gromacs.org/Documentation/Errors
-------------------------------------------------------
"""

# Real end of a segment stopped by -maxh 0.001 (recipe gromacs-segments.sh, seg2.out).
MDRUN_MAXH = """\
starting mdrun 'SPC water box'
20000 steps,     40.0 ps (continuing from step 8100,     16.2 ps).

Step 16225: Run time exceeded 0.001 hours, will terminate the run within 25 steps

               Core t (s)   Wall t (s)        (%)
       Time:        3.587        3.587      100.0
                 (ns/day)    (hour/ns)
Performance:      392.651        0.061
"""


# ------------------------------------------------------------------------------------------------ decide
class TestDecide:
    def test_fatal_error_fails_even_with_progress(self):
        d = decide(before=100, after=500, initial_step=0, target=1000, fatal_error="Fatal error:\nboom", sigterm=False)
        assert d.outcome is Outcome.FAILED and d.reason is StopReason.FATAL_ERROR

    def test_progress_continues_with_engine_hint(self):
        d = decide(before=100, after=500, initial_step=0, target=1000, fatal_error=None, sigterm=False,
                   stop_hint=StopReason.TIME_LIMIT)
        assert (d.outcome, d.reason) == (Outcome.CONTINUE, StopReason.TIME_LIMIT)

    def test_fresh_start_progress_measured_from_initial_step(self):
        assert decide(before=None, after=10, initial_step=0, target=100, fatal_error=None,
                      sigterm=False).outcome is Outcome.CONTINUE
        # a fresh start of a .tpr with init-step 5000 that only reached 5000 made no progress
        assert decide(before=None, after=5000, initial_step=5000, target=9000, fatal_error=None,
                      sigterm=False).outcome is Outcome.FAILED

    def test_target_reached_finishes(self):
        d = decide(before=900, after=1000, initial_step=0, target=1000, fatal_error=None, sigterm=False)
        assert (d.outcome, d.reason) == (Outcome.FINISHED, StopReason.COMPLETED)

    def test_no_progress_fails_so_a_broken_input_never_loops(self):
        d = decide(before=500, after=500, initial_step=0, target=1000, fatal_error=None, sigterm=False)
        assert (d.outcome, d.reason) == (Outcome.FAILED, StopReason.NO_PROGRESS)

    def test_no_checkpoint_fails(self):
        assert decide(before=None, after=None, initial_step=0, target=1000, fatal_error=None,
                      sigterm=False).outcome is Outcome.FAILED

    def test_sigterm_counts_as_progress_and_continues(self):
        d = decide(before=100, after=300, initial_step=0, target=1000, fatal_error=None, sigterm=True,
                   stop_hint=StopReason.ENGINE_EXIT)
        assert (d.outcome, d.reason) == (Outcome.CONTINUE, StopReason.SIGTERM)

    def test_sigterm_without_progress_continues_not_fails(self):
        for after in (None, 100):
            d = decide(before=100 if after else None, after=after, initial_step=0, target=1000, fatal_error=None,
                       sigterm=True)
            assert (d.outcome, d.reason) == (Outcome.CONTINUE, StopReason.SIGTERM)

    def test_checkpoint_going_back_fails(self):
        assert decide(before=800, after=400, initial_step=0, target=1000, fatal_error=None,
                      sigterm=False).outcome is Outcome.FAILED

    def test_open_ended_run_never_finishes(self):
        assert decide(before=10**9, after=10**9 + 10, initial_step=0, target=None, fatal_error=None,
                      sigterm=False).outcome is Outcome.CONTINUE

    def test_engine_says_completed_but_checkpoint_short_continues(self):
        d = decide(before=0, after=400, initial_step=0, target=1000, fatal_error=None, sigterm=False,
                   stop_hint=StopReason.COMPLETED)
        assert (d.outcome, d.reason) == (Outcome.CONTINUE, StopReason.ENGINE_EXIT)


# ------------------------------------------------------------------------------------------------ time
def test_time_limit_is_min_of_segment_and_deadline():
    assert time_limit_s(14400, now=1000.0, deadline=None, margin_s=300) == 14400
    assert time_limit_s(14400, now=1000.0, deadline=1000.0 + 3600, margin_s=300) == 3300
    assert time_limit_s(600, now=1000.0, deadline=1000.0 + 3600, margin_s=300) == 600
    assert time_limit_s(600, now=1000.0, deadline=1100.0, margin_s=300) == -200
    # the worker's SIGTERM time (PILOT_STOP_AT) also bounds it, with its own small margin
    assert time_limit_s(14400, now=1000.0, deadline=1000.0 + 3600, margin_s=300, stop_at=1000.0 + 1000,
                        stop_margin_s=30) == 970
    assert time_limit_s(14400, now=1000.0, deadline=None, margin_s=300, stop_at=1000.0 + 1000) == 970


def test_read_deadline():
    assert read_deadline({}) is None
    assert read_deadline({"PILOT_DEADLINE": "1700000000"}) == 1700000000.0
    assert read_deadline({"PILOT_DEADLINE": "1700000000.5"}) == 1700000000.5
    assert read_deadline({"PILOT_DEADLINE": "soon"}) is None
    assert read_deadline({"PILOT_DEADLINE": "inf"}) is None
    assert read_deadline({"PILOT_STOP_AT": "1700000000"}, var="PILOT_STOP_AT") == 1700000000.0


def test_format_maxh_never_zero():
    # GROMACS reads -maxh 0 as "no limit" (recipe: "[-maxh 0] treated as 'no limit'")
    assert format_maxh(14400) == "4"
    assert format_maxh(3.6) == "0.001"
    assert float(format_maxh(0)) > 0
    assert float(format_maxh(-50)) > 0


# ------------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_flag_catches_and_restores():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with sigterm_flag() as flag:
            assert not flag.is_set()
            os.kill(os.getpid(), signal.SIGTERM)
            assert flag.is_set() and flag.received_at is not None
        assert seen == []  # our handler took it, the previous one was not called
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # and the previous handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ parsing
def test_parse_gromacs_fatal_error_block():
    err = parse_gromacs_error(MDRUN_TRUNCATED_TPR)
    assert err is not None
    assert err.startswith("Program:     gmx mdrun")
    assert "Fatal error:\nsc-r-power=48 is no longer supported" in err
    assert "For more information" not in err


def test_parse_gromacs_internal_error_block():
    err = parse_gromacs_error(MDRUN_OVERLAP)
    assert err is not None and "Internal error (bug):" in err and "extremely high" in err


def test_parse_gromacs_no_error():
    assert parse_gromacs_error(MDRUN_MAXH) is None
    assert parse_performance(MDRUN_MAXH) == pytest.approx(392.651)
    assert parse_performance("nothing") is None


def test_mdrun_args_may_not_override_managed_options():
    with pytest.raises(ValueError, match="-nsteps"):
        GromacsSegmentTask(run_dir="/x", name="md", mdrun_args=["-nsteps", "10"])
    GromacsSegmentTask(run_dir="/x", name="md", mdrun_args=["-nb", "cpu"])


def test_mdrun_argv_pin_from_yaml_boolean(tmp_path):
    assert GromacsSegmentTask(run_dir=str(tmp_path), name="md", pin=False).mdrun_argv(60)[-2:] == ["-pin", "off"]
    assert GromacsSegmentTask(run_dir=str(tmp_path), name="md", pin=True).mdrun_argv(60)[-2:] == ["-pin", "on"]


def test_mdrun_argv(tmp_path):
    t = GromacsSegmentTask(run_dir=str(tmp_path), name="run", gmx="gmx_mpi", launcher=["srun"], ntmpi=1, ntomp=2,
                           pin="off", checkpoint_minutes=5, mdrun_args=["-nb", "cpu"])
    assert t.mdrun_argv(1800) == ["srun", "gmx_mpi", "mdrun", "-deffnm", "run", "-s", "run.tpr", "-cpi", "run.cpt",
                                  "-maxh", "0.5", "-cpt", "5", "-ntmpi", "1", "-ntomp", "2", "-pin", "off",
                                  "-nb", "cpu"]


# ------------------------------------------------------------------------------------------------ workflow
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")


def _roundtrip(wf: Workflow) -> Workflow:
    return Workflow.from_dict(json.loads(json.dumps(wf.to_dict(), default=str)))


def test_workflow_without_staging(tmp_path):
    wf = make_md_workflow(tmp_path, "gromacs", "water", segment_hours=2, md_category="big",
                          engine_params={"ntomp": 4})
    assert len(wf.fws) == 1
    fw = wf.fws[0]
    assert fw.name == "water-md-1"
    assert fw.spec["_category"] == "big"
    assert fw.spec["_launch_dir"] == str(tmp_path)
    # docs/md-segments.md: walltime = segment + slack; min_walltime = min(min_segment_s, segment) + margin + slack;
    # continues: a segment adds the next one (a chain head, one pilot each)
    assert fw.spec["_pilot"] == {"walltime": 2 * 3600 + 300, "min_walltime": 60 + 300 + 300, "continues": True}
    task = _roundtrip(wf).fws[0].tasks[0]
    assert isinstance(task, GromacsSegmentTask)
    assert task["ntomp"] == 4 and task["segment"] == 1 and task["expect_step"] is None


def test_workflow_with_staging_links_and_categories(tmp_path):
    post = Workflow([Firework(ScriptTask.from_str("echo analyse"), name="analyse")], name="post")
    wf = make_md_workflow(tmp_path / "run", "openmm", "w", stage={"work_dir": "/scratch/w", "files": ["extra.dat"]},
                          postrun_wf=post, engine_params={"nsteps": 1000}, local_category="fs")
    by_name = {fw.name: fw for fw in wf.fws}
    assert set(by_name) == {"w-stage-1", "w-md-1", "w-pull-1", "w-continue-1", "analyse"}
    ids = {name: fw.fw_id for name, fw in by_name.items()}
    assert wf.links[ids["w-stage-1"]] == [ids["w-md-1"]]
    assert sorted(wf.links[ids["w-md-1"]]) == sorted([ids["w-pull-1"], ids["w-continue-1"]])
    assert sorted(wf.links[ids["w-pull-1"]]) == sorted([ids["w-continue-1"], ids["analyse"]])
    assert wf.root_fw_ids == [ids["w-stage-1"]]
    assert by_name["w-md-1"].spec["_category"] == "md"
    assert by_name["w-md-1"].spec["_launch_dir"] == "/scratch/w"
    for n in ("w-stage-1", "w-pull-1", "w-continue-1"):
        assert by_name[n].spec["_category"] == "fs"
        assert by_name[n].spec["_launch_dir"] == str(tmp_path / "run")
        assert "_pilot" not in by_name[n].spec
    stage = by_name["w-stage-1"].tasks[0]
    assert isinstance(stage, StageTask)
    assert stage["files"] == ["system.xml", "integrator.xml", "start.pdb", "extra.dat"]  # first segment: no cpt
    pull = by_name["w-pull-1"].tasks[0]
    assert isinstance(pull, PullTask) and pull["checkpoint_files"] == ["md_state.xml"]
    cont = _roundtrip(wf)
    cont_task = next(fw for fw in cont.fws if fw.name == "w-continue-1").tasks[0]
    assert isinstance(cont_task, ContinueTask) and isinstance(cont_task["md_task"], OpenMMSegmentTask)


def _result(outcome: str, step: int | None, segment: int = 1) -> dict:
    return {"outcome": outcome, "checkpoint_step": step, "segment": segment, "stop_reason": "time_limit"}


def test_next_segment_and_final_workflow(tmp_path):
    final = Firework(ScriptTask.from_str("echo done"), name="final")
    post = Firework(ScriptTask.from_str("echo post"), name="post")
    wf = _roundtrip(make_md_workflow(tmp_path, "gromacs", "r", postrun_wf=post, final_wf=final))
    md = wf.fws[0].tasks[0] if wf.fws[0].name == "r-md-1" else wf.fws[1].tasks[0]
    nxt = next_additions(md, _result("continue", 4200))
    assert len(nxt) == 1
    names = sorted(fw.name for fw in nxt[0].fws)
    assert names == ["post", "r-md-2"]
    md2 = next(fw for fw in nxt[0].fws if fw.name == "r-md-2")
    assert md2.tasks[0]["segment"] == 2 and md2.tasks[0]["expect_step"] == 4200
    assert all(fw.fw_id < 0 for fw in nxt[0].fws)
    # adding the same post-run workflow twice gives distinct ids (FireWorks requires fresh negative ids)
    again = next_additions(md, _result("continue", 4300))
    assert not {fw.fw_id for fw in again[0].fws} & {fw.fw_id for fw in nxt[0].fws}
    done = next_additions(md, {**_result("finished", 9000), "target_step": 9000})
    assert [fw.name for fw in done[0].fws] == ["final"]
    assert done[0].fws[0].spec["md_segment"]["checkpoint_step"] == 9000
    with pytest.raises(ValueError):
        next_additions(md, _result("failed", 10))


def test_staging_chain_requires_checkpoint_after_first_segment(tmp_path):
    wf = _roundtrip(make_md_workflow(tmp_path, "gromacs", "r", stage={"work_dir": "/w"}))
    md = next(fw for fw in wf.fws if fw.name == "r-md-1").tasks[0]
    nxt = next_additions(md, _result("continue", 500))[0]
    stage2 = next(fw for fw in nxt.fws if fw.name == "r-stage-2").tasks[0]
    assert stage2["files"] == ["md.tpr", "md.cpt"]
    assert "md.xtc" in stage2["optional_files"]


def test_continue_task_without_result_names_the_problem(tmp_path):
    wf = make_md_workflow(tmp_path, "gromacs", "r", stage={"work_dir": "/w"})
    md = next(fw for fw in wf.fws if fw.name == "r-md-1").tasks[0]
    with pytest.raises(SegmentError, match="md_segment"):
        ContinueTask(md_task=md).run_task({})
    action = ContinueTask(md_task=md).run_task({"md_segment": _result("continue", 700)})
    assert isinstance(action, FWAction) and len(action.additions) == 1
    assert action.stored_data["added_fireworks"] == 4


def test_make_md_workflow_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown MD engine"):
        make_md_workflow(tmp_path, "namd")
    with pytest.raises(ValueError, match="work_dir"):
        make_md_workflow(tmp_path, "gromacs", stage={"remote": None})
    with pytest.raises(ValueError, match="unknown key"):
        make_md_workflow(tmp_path, "gromacs", stage={"work_dir": "/w", "wrk": 1})
    with pytest.raises(ValueError, match="segment_hours"):
        make_md_workflow(tmp_path, "gromacs", segment_hours=0)
    with pytest.raises(ValueError, match="run_dir"):
        make_md_workflow(tmp_path, "gromacs", engine_params={"run_dir": "/elsewhere"})


def test_two_segments_of_one_run_never_run_at_once(tmp_path):
    """The run lock is an flock held by the segment's process; a second process is refused, naming the holder."""
    import subprocess
    import sys

    task = GromacsSegmentTask(run_dir=str(tmp_path), name="md", segment=3)
    code = ("import sys, time\nfrom tasks.gromacs import GromacsSegmentTask\n"
            "t = GromacsSegmentTask(run_dir=sys.argv[1], name='md', segment=2)\n"
            "with t.run_lock(t.run_dir):\n    print('locked', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = rf"another segment of this run is running \(pid {holder.pid} .*segment 2"
        with pytest.raises(SegmentError, match=busy):
            task.run_segment()
    finally:
        holder.kill()
        holder.wait(10)
    with task.run_lock(task.run_dir):  # released when the holder died
        pass
