"""``pilot worker`` as a real process against a real LaunchPad (pymongo against the embedded server).

Each test starts ``python -m pilot worker`` as a subprocess and checks the database afterwards with FireWorks'
own LaunchPad. Expected states come from FireWorks' documented state model (READY / RUNNING / COMPLETED /
FIZZLED, ``rerun_fw`` archives launches) and from the tasks themselves, never from the worker's code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fireworks import Firework, LaunchPad, ScriptTask, Workflow
from fireworks.user_objects.firetasks.script_task import PyTask

from tests.helpers import REPO, EmbeddedServer, stop_process_tree, time_limit_now, wait_for
from tests.worker.test_worker_tasks import EnvTask, IgnoreTermTask, OwnStateTask, TrapTermTask

#: ``--idle-timeout`` where how long a worker waits for work is not what a test is about: all its work is READY
#: before it starts (or comes back READY and is not taken again), so this is only how long it lingers at the end
IDLE = "0.2"


# --------------------------------------------------------------------------- helpers
class WorkerProc:
    """One ``pilot worker`` subprocess with its log file."""

    def __init__(self, lp_file: Path, workdir: Path, name: str, categories: list[str], args: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "pilot", "worker", "--launchpad-file", str(lp_file), "--name", name]
        for cat in categories:
            cmd += ["--category", cat]
        cmd += args
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
        full_env["PYTHONPATH"] = str(REPO)  # the children import tests.worker.test_worker_tasks
        full_env.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                         start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still running after {timeout} s; log:\n{self.log()[-4000:]}") from None

    def stop(self) -> None:
        """Stop the worker by its PID, and any Firework process it left (they run in their own sessions)."""
        stop_process_tree(self.proc)


@pytest.fixture
def workers():
    started: list[WorkerProc] = []

    def start(lp: LaunchPad, tmp: Path, categories: list[str], *args: str, name: str | None = None,
              env: dict[str, str] | None = None) -> WorkerProc:
        lp_file = tmp / "my_launchpad.yaml"
        if not lp_file.exists():
            lp.to_file(str(lp_file))
        w = WorkerProc(lp_file, tmp, name or f"pilottest-{uuid.uuid4().hex[:6]}", categories, list(args), env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def fw_doc(lp: LaunchPad, fw_id: int) -> dict:
    return lp.fireworks.find_one({"fw_id": fw_id})


def launches_of(lp: LaunchPad, fw_id: int) -> list[dict]:
    return sorted(lp.launches.find({"fw_id": fw_id}), key=lambda d: d["launch_id"])


def assert_nothing_running(lp: LaunchPad) -> None:
    running_fws = [d["fw_id"] for d in lp.fireworks.find({"state": {"$in": ["RUNNING", "RESERVED"]}})]
    running_launches = [d["launch_id"] for d in lp.launches.find({"state": {"$in": ["RUNNING", "RESERVED"]}})]
    assert running_fws == [] and running_launches == [], (running_fws, running_launches)


def running_launch(lp: LaunchPad, fw_id: int) -> dict | None:
    return lp.launches.find_one({"fw_id": fw_id, "state": "RUNNING"})


def processes_with_cmdline(*argv: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if tuple(p.info["cmdline"] or ()) == argv:
            out.append(p)
    return out


def add(lp: LaunchPad, task, name: str, category: str, priority: int | None = None, walltime: float | None = None,
        ) -> int:
    spec: dict = {"_category": category}
    if priority is not None:
        spec["_priority"] = priority
    if walltime is not None:
        spec["_pilot"] = {"walltime": walltime}
    fw = Firework([task], spec=spec, name=name)
    lp.add_wf(Workflow([fw]))
    return lp.fireworks.find_one({"name": name}, {"fw_id": 1})["fw_id"]


# --------------------------------------------------------------------------- 1. run and drain
def test_runs_ten_fireworks_and_exits_when_idle(launchpad, tmp_path, workers):
    deadline = int(time.time()) + 3600
    ids = [add(launchpad, EnvTask(), f"env-{i}", "short") for i in range(10)]
    other = add(launchpad, EnvTask(), "other-category", "long")  # not ours: must stay READY
    w = workers(launchpad, tmp_path, ["short"], "--deadline", str(deadline), "--margin", "60",
                "--idle-timeout", IDLE, "--grace", "5", "--launch-dir", str(tmp_path / "launches"),
                name="pilotci-1234")
    assert w.wait(60) == 0, w.log()
    log = w.log()
    for fw_id in ids:
        doc = fw_doc(launchpad, fw_id)
        assert doc["state"] == "COMPLETED"
        launches = launches_of(launchpad, fw_id)
        assert len(launches) == 1 and doc["launches"] == [launches[0]["launch_id"]], launches
        assert doc.get("archived_launches", []) == []
        launch = launches[0]
        assert launch["fworker"]["name"] == "pilotci-1234"
        data = launch["action"]["stored_data"]
        # what the task saw: the deadline as epoch seconds, the stop time (deadline - margin/2), the name
        assert data["PILOT_DEADLINE"] == str(deadline)
        assert data["PILOT_STOP_AT"] == str(deadline - 30)
        assert data["PILOT_NAME"] == "pilotci-1234"
        # its own launcher dir under --launch-dir, its own session and process group
        assert Path(data["cwd"]).parent == tmp_path / "launches" and Path(data["cwd"]).name.startswith("launcher_")
        assert launch["launch_dir"] == data["cwd"]
        assert data["pid"] == data["pgid"] == data["sid"]
        assert re.search(rf"fw {fw_id} 'env-\d' started", log)
        assert re.search(rf"fw {fw_id} COMPLETED in [0-9.]+ s", log)
    cwds = {launches_of(launchpad, i)[0]["action"]["stored_data"]["cwd"] for i in ids}
    assert len(cwds) == 10
    assert fw_doc(launchpad, other)["state"] == "READY"
    assert "10 Fireworks run (10 completed, 0 fizzled, 0 requeued)" in log
    assert "stopped: no matching work for the idle timeout" in log
    assert_nothing_running(launchpad)


# --------------------------------------------------------------------------- 2. wall-time filter
def test_firework_too_long_for_the_time_left_is_not_taken(launchpad, tmp_path, workers):
    # time left ~120 s, margin 20 s -> only Fireworks with spec._pilot.walltime <= ~100 s fit
    long_id = add(launchpad, EnvTask(), "too-long", "md", priority=100, walltime=3600)
    just_over = add(launchpad, EnvTask(), "just-over", "md", priority=90, walltime=115)
    short_id = add(launchpad, EnvTask(), "short", "md", priority=1, walltime=5)
    open_id = add(launchpad, EnvTask(), "no-estimate", "md", priority=1)
    w = workers(launchpad, tmp_path, ["md"], "--deadline", str(time.time() + 120), "--margin", "20",
                "--idle-timeout", IDLE, "--grace", "5")
    assert w.wait(60) == 0, w.log()
    assert fw_doc(launchpad, long_id)["state"] == "READY"
    assert fw_doc(launchpad, just_over)["state"] == "READY"
    assert launches_of(launchpad, long_id) == [] and launches_of(launchpad, just_over) == []
    assert fw_doc(launchpad, short_id)["state"] == "COMPLETED"
    assert fw_doc(launchpad, open_id)["state"] == "COMPLETED"
    assert "2 Fireworks run (2 completed" in w.log()
    # what is left (115 s and more) did not fit even when the pilot began (~100 s usable): a fresh pilot would
    # not take it either, so the worker does not leave for it at once but waits for work that fits
    assert "READY work needs at least 115 s" in w.log() and "a fresh pilot would not take it either" in w.log()
    assert "stopped: no matching work for the idle timeout" in w.log()


def test_several_categories_are_pulled(launchpad, tmp_path, workers):
    a = add(launchpad, EnvTask(), "a", "cat-a")
    b = add(launchpad, EnvTask(), "b", "cat-b")
    c = add(launchpad, EnvTask(), "c", "cat-c")
    w = workers(launchpad, tmp_path, ["cat-a", "cat-b"], "--no-deadline", "--idle-timeout", IDLE)
    assert w.wait(60) == 0, w.log()
    assert [fw_doc(launchpad, i)["state"] for i in (a, b, c)] == ["COMPLETED", "COMPLETED", "READY"]


# --------------------------------------------------------------------------- 3. SIGUSR1 while tasks run
def _start_trap_and_plain(launchpad, tmp_path, workers, *args: str):
    """Two workers: one runs a task that checkpoints on SIGTERM, the other a plain `sleep`."""
    ready = tmp_path / "trap.ready"
    trap_id = add(launchpad, TrapTermTask(ready_file=str(ready), max_wait=120), "trap", "trap")
    sleep_s = str(600 + int(uuid.uuid4().int % 300))  # a sleep nobody else runs, to find its process
    plain_id = add(launchpad, ScriptTask.from_str(f"sleep {sleep_s}"), "plain", "plain")
    w_trap = workers(launchpad, tmp_path, ["trap"], *args, name="pilottest-trap")
    w_plain = workers(launchpad, tmp_path, ["plain"], *args, name="pilottest-plain")
    wait_for(ready.exists, 60, 0.1, "the SIGTERM-trapping task to start")
    wait_for(lambda: processes_with_cmdline("sleep", sleep_s), 60, 0.1, f"the plain task's `sleep {sleep_s}`")
    assert running_launch(launchpad, trap_id) and running_launch(launchpad, plain_id)
    return trap_id, plain_id, w_trap, w_plain, sleep_s


def _check_stopped(launchpad, trap_id, plain_id, w_trap, w_plain, sleep_s) -> None:
    # the task that handled SIGTERM completed; its FWAction (its checkpoint result) stands
    doc = fw_doc(launchpad, trap_id)
    assert doc["state"] == "COMPLETED", w_trap.log()
    (launch,) = launches_of(launchpad, trap_id)
    assert launch["state"] == "COMPLETED"
    assert launch["action"]["stored_data"]["got_sigterm"] is True
    assert launch["action"]["stored_data"]["checkpoint"] == "written"
    assert launch["fworker"]["name"] == "pilottest-trap"
    assert re.search(rf"fw {trap_id} COMPLETED in", w_trap.log())
    # the plain task died with its process group; the Firework is READY again, its launch archived
    doc = fw_doc(launchpad, plain_id)
    assert doc["state"] == "READY", w_plain.log()
    assert doc["launches"] == []
    (launch,) = launches_of(launchpad, plain_id)
    assert doc["archived_launches"] == [launch["launch_id"]]
    assert launch["state"] == "FIZZLED"
    assert [h["state"] for h in launch["state_history"]] == ["RUNNING", "FIZZLED"]
    assert "requeued to READY" in launch["action"]["stored_data"]["_message"]
    assert launch["fworker"]["name"] == "pilottest-plain"
    assert re.search(rf"fw {plain_id} requeued \(now READY\)", w_plain.log())
    assert processes_with_cmdline("sleep", sleep_s) == []
    assert_nothing_running(launchpad)


def test_sigusr1_stops_tasks_and_requeues_unfinished(launchpad, tmp_path, workers):
    """Without a deadline SIGUSR1 is the only warning the worker gets: it stops the work (with a deadline it is
    only logged: test_deadline_stops_tasks_and_sigusr1_does_not)."""
    trap_id, plain_id, w_trap, w_plain, sleep_s = _start_trap_and_plain(
        launchpad, tmp_path, workers, "--no-deadline", "--idle-timeout", "60", "--grace", "20")
    t0 = time.monotonic()
    for w in (w_trap, w_plain):
        os.kill(w.pid, signal.SIGUSR1)
    assert w_trap.wait(30) == 0, w_trap.log()
    assert w_plain.wait(30) == 0, w_plain.log()
    assert time.monotonic() - t0 < 15  # both tasks ended on SIGTERM, long before the 20 s grace
    _check_stopped(launchpad, trap_id, plain_id, w_trap, w_plain, sleep_s)
    for w in (w_trap, w_plain):
        assert "SIGUSR1 (pre-walltime signal) -> SIGTERM to process group" in w.log()
        assert "stopped: stop signal (SIGUSR1)" in w.log()


def test_task_ignoring_sigterm_is_killed_after_grace(launchpad, tmp_path, workers):
    ready = tmp_path / "stubborn.ready"
    fw_id = add(launchpad, IgnoreTermTask(ready_file=str(ready)), "stubborn", "stubborn")
    w = workers(launchpad, tmp_path, ["stubborn"], "--no-deadline", "--idle-timeout", "60", "--grace", "2")
    wait_for(ready.exists, 60, 0.1, "the task to start")
    task_pid = int(ready.read_text())
    t0 = time.monotonic()
    os.kill(w.pid, signal.SIGUSR1)
    assert w.wait(30) == 0, w.log()
    assert 2.0 <= time.monotonic() - t0 < 10
    assert "still running after the grace period -> SIGKILL" in w.log()
    assert not psutil.pid_exists(task_pid)
    assert fw_doc(launchpad, fw_id)["state"] == "READY"
    assert "killed by SIGKILL" in launches_of(launchpad, fw_id)[0]["action"]["stored_data"]["_message"]
    assert_nothing_running(launchpad)


# --------------------------------------------------------------------------- 4. deadline without a signal
def test_deadline_stops_tasks_and_sigusr1_does_not(launchpad, tmp_path, workers):
    """deadline in 12 s, margin 8 s: work fits for ~4 s, tasks are asked to stop at deadline - 4 s. One of the
    two workers gets SIGUSR1 (the pre-walltime signal) while its task runs: with a deadline it only logs it,
    its task goes on and is stopped by the deadline like the other's."""
    deadline = time.time() + 12
    trap_id, plain_id, w_trap, w_plain, sleep_s = _start_trap_and_plain(
        launchpad, tmp_path, workers, "--deadline", str(deadline), "--margin", "8", "--idle-timeout", "60",
        "--grace", "2")
    os.kill(w_plain.pid, signal.SIGUSR1)
    wait_for(lambda: "SIGUSR1 (pre-walltime signal)" in w_plain.log(), 10, 0.1, "the worker to log SIGUSR1")
    assert processes_with_cmdline("sleep", sleep_s) and running_launch(launchpad, plain_id), w_plain.log()
    assert re.search(r"SIGUSR1 \(pre-walltime signal\) \d+ s before the deadline \(margin 8 s\): nothing is "
                     r"stopped", w_plain.log())
    assert w_trap.wait(30) == 0, w_trap.log()
    assert w_plain.wait(30) == 0, w_plain.log()
    assert deadline - 4.5 <= time.time() <= deadline + 1
    _check_stopped(launchpad, trap_id, plain_id, w_trap, w_plain, sleep_s)
    for w in (w_trap, w_plain):
        assert "deadline - margin/2 reached -> SIGTERM to process group" in w.log()
        assert "stopped: deadline reached" in w.log()


def test_deadline_already_too_close_takes_nothing(launchpad, tmp_path, workers):
    fw_id = add(launchpad, EnvTask(), "env", "late")
    w = workers(launchpad, tmp_path, ["late"], "--deadline", str(time.time() + 30), "--margin", "60")
    assert w.wait(30) == 0, w.log()
    assert fw_doc(launchpad, fw_id)["state"] == "READY"
    assert "stopped: deadline reached" in w.log()


def test_sigterm_to_worker_requeues_within_two_seconds(launchpad, tmp_path, workers):
    """What SLURM does at the time limit (KillWait=2 here): SIGTERM, and SIGKILL 2 s later."""
    fw_id = add(launchpad, ScriptTask.from_str("sleep 777"), "plain", "term")
    w = workers(launchpad, tmp_path, ["term"], "--no-deadline", "--idle-timeout", "60", "--grace", "30")
    wait_for(lambda: processes_with_cmdline("sleep", "777"), 60, 0.1, "sleep 777")
    t0 = time.monotonic()
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait(10) == 0, w.log()
    assert time.monotonic() - t0 < 2.0, w.log()
    assert fw_doc(launchpad, fw_id)["state"] == "READY"
    assert_nothing_running(launchpad)


# --------------------------------------------------------------------------- 5. crashing children
def test_child_crash_requeues_and_worker_continues(launchpad, tmp_path, workers):
    pidfile = tmp_path / "victim.pid"
    crash_id = add(launchpad, PyTask(func="os._exit", args=[9]), "os-exit", "crash", priority=3)
    victim_id = add(launchpad, ScriptTask.from_str(f"echo $PPID > {pidfile}; sleep 778"), "victim", "crash",
                    priority=2)
    ok_id = add(launchpad, EnvTask(), "fine", "crash", priority=1)
    w = workers(launchpad, tmp_path, ["crash"], "--no-deadline", "--idle-timeout", IDLE, "--grace", "5")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, 0.1, "the victim task's pid")
    victim_pid = int(pidfile.read_text())
    assert psutil.Process(victim_pid).cmdline()[:3] == [sys.executable, "-m", "pilot"]  # the Firework child
    os.kill(victim_pid, signal.SIGKILL)
    assert w.wait(60) == 0, w.log()
    log = w.log()
    for fw_id, how in ((crash_id, "exit code 9"), (victim_id, "killed by SIGKILL")):
        doc = fw_doc(launchpad, fw_id)
        assert doc["state"] == "READY", log
        (launch,) = launches_of(launchpad, fw_id)
        assert launch["state"] == "FIZZLED" and doc["archived_launches"] == [launch["launch_id"]]
        assert how in launch["action"]["stored_data"]["_message"]
        assert re.search(rf"fw {fw_id} requeued \(now READY\).*{how}", log)
    assert fw_doc(launchpad, ok_id)["state"] == "COMPLETED"
    assert processes_with_cmdline("sleep", "778") == []  # the killed child's group was cleared
    assert "3 Fireworks run (1 completed, 0 fizzled, 2 requeued)" in log
    assert_nothing_running(launchpad)


def _run_until(launchpad, tmp_path, workers, category: str, pidfile: Path, end: str) -> str:
    """One worker takes the Firework; once its task runs, ``end`` is done to it: ``stop`` (SIGTERM to the
    worker, as scancel does) or ``crash`` (SIGKILL to the Firework's process). Returns the worker's log."""
    pidfile.unlink(missing_ok=True)
    w = workers(launchpad, tmp_path, [category], "--no-deadline", "--idle-timeout", IDLE, "--grace", "30")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, 0.1, "the task's pid")
    os.kill(w.pid if end == "stop" else int(pidfile.read_text()), signal.SIGTERM if end == "stop" else signal.SIGKILL)
    assert w.wait(60) == 0, w.log()
    return w.log()


def test_requeues_after_a_stop_request_are_recorded_but_not_counted(launchpad, tmp_path, workers):
    """Only a crash counts toward max_reruns: a Firework whose pilots are told to stop (scancel, preemption,
    the deadline) while it is within its walltime is requeued every time, each one in the history."""
    from pilot.manager.reruns import publish_bound

    publish_bound(launchpad.db, 1)   # the manager's bound: one counted requeue, the next one FIZZLES
    pidfile = tmp_path / "task.pid"
    fw_id = add(launchpad, ScriptTask.from_str(f"echo $PPID > {pidfile}; sleep 600"), "preempted", "bound",
                walltime=600)
    for end in ("stop", "stop", "crash", "stop"):
        log = _run_until(launchpad, tmp_path, workers, "bound", pidfile, end)
        assert fw_doc(launchpad, fw_id)["state"] == "READY", (end, log)
    doc = launchpad.db["pilot_reruns"].find_one({"_id": fw_id})
    assert doc["count"] == 1                                 # the crash alone
    reasons = [h["reason"] for h in doc["history"]]
    assert [("not counted" in r and "SIGTERM" in r, "not counted" not in r and "process died" in r)
            for r in reasons] == [(True, False), (True, False), (False, True), (True, False)], reasons
    # a second crash is past the bound: FIZZLED, with the whole history as its message
    log = _run_until(launchpad, tmp_path, workers, "bound", pidfile, "crash")
    assert fw_doc(launchpad, fw_id)["state"] == "FIZZLED", log
    last = launches_of(launchpad, fw_id)[-1]
    assert last["state"] == "FIZZLED" and "max_reruns=1" in last["action"]["stored_data"]["_message"]
    assert_nothing_running(launchpad)


@pytest.mark.parametrize("walltime", [2, None])
def test_a_firework_stopped_past_its_walltime_never_fits_and_is_counted(launchpad, tmp_path, workers, walltime):
    """Taken because its walltime (2 s) fit the time left, or with none, taken when the pilot began (all its
    usable time, 9 - 5 s, ahead), and still running at the deadline: it never fits."""
    fw_id = add(launchpad, ScriptTask.from_str("sleep 30"), "too-long", "overrun", walltime=walltime)
    w = workers(launchpad, tmp_path, ["overrun"], "--deadline", str(time.time() + 9), "--margin", "5",
                "--idle-timeout", "60", "--grace", "1")
    assert w.wait(30) == 0, w.log()
    assert fw_doc(launchpad, fw_id)["state"] == "READY"
    doc = launchpad.db["pilot_reruns"].find_one({"_id": fw_id})
    assert doc["count"] == 1 and "never fits" in doc["history"][0]["reason"], doc


def test_failing_task_fizzles_normally(launchpad, tmp_path, workers):
    fw_id = add(launchpad, ScriptTask.from_str("exit 3"), "fails", "fail")
    w = workers(launchpad, tmp_path, ["fail"], "--no-deadline", "--idle-timeout", IDLE)
    assert w.wait(60) == 0, w.log()
    assert fw_doc(launchpad, fw_id)["state"] == "FIZZLED"
    assert "1 Fireworks run (0 completed, 1 fizzled, 0 requeued)" in w.log()


def test_task_given_the_launchpad_uses_it(launchpad, tmp_path, workers):
    """FireWorks gives the LaunchPad to tasks with spec._add_launchpad_and_fw_id; it must work in the child."""
    fw = Firework([OwnStateTask()], spec={"_category": "lpuser", "_add_launchpad_and_fw_id": True}, name="me")
    launchpad.add_wf(Workflow([fw]))
    fw_id = launchpad.fireworks.find_one({"name": "me"})["fw_id"]
    w = workers(launchpad, tmp_path, ["lpuser"], "--no-deadline", "--idle-timeout", IDLE)
    assert w.wait(60) == 0, w.log()
    (launch,) = launches_of(launchpad, fw_id)
    assert launch["state"] == "COMPLETED", w.log()
    assert launch["action"]["stored_data"] == {"state_seen": "RUNNING", "name_seen": "me"}


def test_fork_server_killed_while_firework_runs(launchpad, tmp_path, workers):
    fw_id = add(launchpad, ScriptTask.from_str("sleep 779"), "orphaned", "fsrv")
    w = workers(launchpad, tmp_path, ["fsrv"], "--no-deadline", "--idle-timeout", "60")
    wait_for(lambda: processes_with_cmdline("sleep", "779"), 60, 0.1, "sleep 779")
    (fork_server,) = psutil.Process(w.pid).children()  # the worker's only child; Firework children are its
    fork_server.kill()
    assert w.wait(30) == 1
    log = w.log()
    assert f"the fork server (pid {fork_server.pid}) died while fw child" in log
    assert fw_doc(launchpad, fw_id)["state"] == "READY"
    assert processes_with_cmdline("sleep", "779") == []
    assert_nothing_running(launchpad)


def test_worker_killed_takes_its_fireworks_with_it(launchpad, tmp_path, workers):
    """SIGKILL of the worker alone (an OOM kill): its Firework's processes must not run on unsupervised,
    or the manager's rerun of that Firework would run it twice at once."""
    marker = f"781.{os.getpid()}{time.monotonic_ns() % 10**6}"   # this test's sleep, and no other's
    fw_id = add(launchpad, ScriptTask.from_str(f"sleep {marker}"), "orphan-candidate", "wkill")
    w = workers(launchpad, tmp_path, ["wkill"], "--no-deadline", "--idle-timeout", "60")
    try:
        wait_for(lambda: processes_with_cmdline("sleep", marker), 60, 0.1, f"sleep {marker}")
        os.kill(w.pid, signal.SIGKILL)
        w.wait(30)
        wait_for(lambda: processes_with_cmdline("sleep", marker) == [], 10, 0.1, "the Firework's sleep to be killed")
        # the launch stays RUNNING in the database: that is the manager's to rerun (its pilot ended)
        assert fw_doc(launchpad, fw_id)["state"] == "RUNNING"
    finally:
        for p in processes_with_cmdline("sleep", marker):   # a failed run leaves no orphan behind
            p.kill()


# --------------------------------------------------------------------------- errors a person can act on
def test_refuses_to_start_without_deadline(launchpad, tmp_path, workers):
    w = workers(launchpad, tmp_path, ["x"])
    assert w.wait(30) == 2
    assert "no deadline: pass --deadline" in w.log() and "PILOT_DEADLINE" in w.log()


def test_deadline_from_environment(launchpad, tmp_path, workers):
    fw_id = add(launchpad, EnvTask(), "env", "envdl")
    w = workers(launchpad, tmp_path, ["envdl"], "--idle-timeout", IDLE,
                env={"PILOT_DEADLINE": str(int(time.time()) + 1000)})
    assert w.wait(60) == 0, w.log()
    (launch,) = launches_of(launchpad, fw_id)
    assert int(launch["action"]["stored_data"]["PILOT_DEADLINE"]) > time.time() + 900


def test_bad_launchpad_file(tmp_path, workers):
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 27017\nname: x\n")  # no host
    w = WorkerProc(bad, tmp_path, "bad", ["x"], ["--no-deadline"])
    try:
        assert w.wait(30) == 2
        assert f"launchpad file {bad}" in w.log()
    finally:
        w.stop()
    missing = tmp_path / "missing.yaml"
    w = WorkerProc(missing, tmp_path, "missing", ["x"], ["--no-deadline"])
    try:
        assert w.wait(30) == 2
        assert f"launchpad file {missing}: not found" in w.log()
    finally:
        w.stop()


def test_unreachable_database_exits_3(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lp = LaunchPad(host=f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300", name="nowhere",
                   uri_mode=True)
    lp_file = tmp_path / "lp.yaml"
    lp.to_file(str(lp_file))
    w = WorkerProc(lp_file, tmp_path, "unreach", ["x"], ["--no-deadline", "--db-retry-time", "2"])
    try:
        assert w.wait(60) == 3
        log = w.log()
        assert "database unreachable while checking for READY work" in log
        assert "retrying in" in log and str(lp_file) in log
    finally:
        w.stop()


def test_database_restart_does_not_kill_the_pilot(tmp_path, workers):
    """The LaunchPad server goes away for a few seconds while the worker polls, then comes back."""
    server = EmbeddedServer(tmp_path / "db").start()
    try:
        lp = outage_launchpad(server, "restart")
        first = add(lp, EnvTask(), "before", "restart")
        w = workers(lp, tmp_path, ["restart"], "--no-deadline", "--idle-timeout", "30", "--db-retry-time", "60")
        wait_for(lambda: fw_doc(lp, first)["state"] == "COMPLETED", 60, 0.2, "the first Firework")
        port = server.port
        server.stop()
        # down until the worker has met the outage while it polls (not a fixed time: the condition itself)
        wait_for(lambda: "database unreachable while checking for READY work" in w.log(), 60, 0.2,
                 "the worker to find the database gone")
        server = EmbeddedServer(tmp_path / "db", port=port).start()
        second = add(lp, EnvTask(), "after", "restart")
        wait_for(lambda: fw_doc(lp, second)["state"] == "COMPLETED", 60, 0.2, "the Firework added after restart")
        assert w.proc.poll() is None
        os.kill(w.pid, signal.SIGUSR1)
        assert w.wait(30) == 0, w.log()
        assert "database unreachable while checking for READY work" in w.log()
    finally:
        server.stop()


def outage_launchpad(server: EmbeddedServer, name: str) -> LaunchPad:
    """A fresh LaunchPad on ``server`` with a short server selection timeout, so that a call during an outage
    fails (and is retried by the worker) instead of waiting it out."""
    lp = LaunchPad(host=server.uri, name=name, uri_mode=True, strm_lvl="ERROR",
                   mongoclient_kwargs={"serverSelectionTimeoutMS": 500})
    lp.reset("", require_password=False)
    return lp


def test_a_fireworks_completion_outlasts_a_database_outage(tmp_path, workers):
    """The server goes away while a Firework runs and comes back after the Firework ended: the Rocket's
    completion (served by the worker) waits through the outage, so the Firework ends COMPLETED with its one
    launch instead of failing to report and being left to a rerun."""
    server = EmbeddedServer(tmp_path / "db").start()
    go = tmp_path / "go"
    try:
        lp = outage_launchpad(server, "outage")
        fw_id = add(lp, ScriptTask.from_str(f"until [ -e {go} ]; do sleep 0.1; done"), "through-outage", "outage")
        w = workers(lp, tmp_path, ["outage"], "--no-deadline", "--idle-timeout", IDLE, "--db-retry-time", "60")
        # running, and the Rocket's pings before its task (FireWorks' checkpoint) written: nothing of it is held
        wait_for(lambda: "checkpoint" in ((running_launch(lp, fw_id) or {}).get("state_history") or [{}])[-1], 60,
                 0.1, "the Firework's task to start")
        port = server.port
        server.stop()
        go.touch()   # the Firework ends while the server is down; its completion meets the outage
        wait_for(lambda: "database unreachable while serving LaunchPad.complete_launch" in w.log(), 60, 0.1,
                 "the completion to meet the outage")
        server = EmbeddedServer(tmp_path / "db", port=port).start()
        assert w.wait(90) == 0, w.log()
        doc = fw_doc(lp, fw_id)
        assert doc["state"] == "COMPLETED" and len(launches_of(lp, fw_id)) == 1
        assert "database unreachable while serving LaunchPad." in w.log()
    finally:
        server.stop()


# --------------------------------------------------------------------------- 6. on the real SLURM
def _slurm(cluster, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a SLURM command as the test user (whose batch jobs use the cluster venv)."""
    cmd = ["runuser", "-u", cluster.user, "--", "env", f"SLURM_CONF={cluster.slurm_conf}", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_time_limit_kills_pilot_mid_firework(launchpad, slurm_cluster, cluster_venv, remote_tmp):
    """--time=1 and a Firework that sleeps for 5 minutes: SLURM's time limit sends SIGTERM to the job's
    processes and SIGKILL KillWait (2 s, /etc/slurm/slurm.conf) later; the worker, not told the deadline,
    learns it only from that SIGTERM and must put the Firework back to READY within those 2 s. Once the
    Firework runs, the job's owner lowers its limit to now (tests.helpers.time_limit_now): the same time-limit
    kill, at slurmctld's next pass instead of a minute after the start."""
    fw_id = add(launchpad, ScriptTask.from_str("sleep 300"), "too-long", "slurmkill")
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    os.chmod(lp_file, 0o644)
    script = remote_tmp / "pilot.sh"
    script.write_text("\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=pilot-worker-test",
        "#SBATCH --time=1",
        f"#SBATCH --output={remote_tmp}/job.out",
        f"#SBATCH --chdir={remote_tmp}",
        (f"exec {cluster_venv}/bin/pilot worker --launchpad-file {lp_file} --category slurmkill"
         f" --name {slurm_cluster.name}-$SLURM_JOB_ID --no-deadline --idle-timeout 300 --grace 30"
         f" --launch-dir {remote_tmp}/launches --log-file {remote_tmp}/worker.log"),
        ""]))
    os.chmod(script, 0o755)
    sub = _slurm(slurm_cluster, "sbatch", "--parsable", str(script))
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: running_launch(launchpad, fw_id), 120, 0.2, "the Firework to run inside the job")
        assert running_launch(launchpad, fw_id)["fworker"]["name"] == f"{slurm_cluster.name}-{job_id}"
        lower = _slurm(slurm_cluster, *time_limit_now(job_id))
        assert lower.returncode == 0, lower.stderr

        def job_done():
            out = _slurm(slurm_cluster, "squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip()
            return out == "" or out in ("COMPLETED", "TIMEOUT", "FAILED", "CANCELLED")

        wait_for(job_done, 240, 0.3, f"SLURM job {job_id} to hit its time limit")
    finally:
        _slurm(slurm_cluster, "scancel", job_id)
    state = wait_for(lambda: _slurm(slurm_cluster, "sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State").stdout
                     .strip(), 60, 0.3, "sacct to know the job")
    assert state == "TIMEOUT", state  # the documented SLURM state for a job killed at its time limit
    log = (remote_tmp / "worker.log").read_text()
    doc = fw_doc(launchpad, fw_id)
    assert doc["state"] == "READY", log
    (launch,) = launches_of(launchpad, fw_id)
    assert launch["state"] == "FIZZLED" and doc["archived_launches"] == [launch["launch_id"]]
    assert launch["fworker"]["name"] == f"{slurm_cluster.name}-{job_id}"
    assert "SIGTERM" in launch["action"]["stored_data"]["_message"]
    # SLURM signals every process of the job at once: either the worker forwarded SIGTERM to the Firework's
    # group, or SLURM's own SIGTERM ended it first; either way the worker noted the stop and requeued it
    assert "SIGTERM -> SIGTERM to process group" in log or "stopped: stop signal (SIGTERM)" in log, log
    m = re.search(rf"fw {fw_id} requeued \(now READY\).*; ([0-9.]+) s after the stop request", log)
    assert m, log
    assert float(m.group(1)) < 2.0  # within KillWait
    print(f"SLURM SIGTERM -> Firework READY in {m.group(1)} s")
    assert_nothing_running(launchpad)
