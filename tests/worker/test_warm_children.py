"""A Firework process that ran a short Firework cleanly takes the next one (pilot/worker/reuse.py), and never
after anything that could make it unlike a fresh process.

Real ``pilot worker`` processes against the embedded server; the process ids, the environment and the signal
dispositions come from the tasks themselves (tests/worker/test_worker_tasks.py), read back from the launches.
"""

from __future__ import annotations

import collections
import re
import time

import psutil

from tests.worker.test_worker import add, assert_nothing_running, launches_of, workers  # noqa: F401 - fixture
from tests.worker.test_worker_tasks import EnvTask, FailTask, LeaveProcessTask, LeaveStateTask, LeaveThreadTask


def _data(lp, fw_id: int) -> dict:
    (launch,) = launches_of(lp, fw_id)
    return launch["action"]["stored_data"]


def _run(lp, tmp_path, workers, *args: str) -> str:  # noqa: F811 - the fixture
    w = workers(lp, tmp_path, ["warm"], "--no-deadline", "--idle-timeout", "1", "--launch-dir", str(tmp_path),
                *args)
    assert w.wait(180) == 0, w.log()
    log = w.log()
    # a process the worker does not keep learns it with its completion and exits quietly (a task's own failure
    # is printed by FireWorks; no traceback comes out of the Firework process itself)
    assert "_become_firework_child" not in log and "BrokenPipeError" not in log, log[-4000:]
    # a process that declines the next Firework is no failure
    assert "failed before taking a Firework" not in log, log[-4000:]
    return log


def test_short_fireworks_share_a_process_a_hundred_at_most(launchpad, tmp_path, workers):  # noqa: F811
    ids = [add(launchpad, EnvTask(), f"env-{i}", "warm") for i in range(205)]
    log = _run(launchpad, tmp_path, workers)
    data = [_data(launchpad, i) for i in ids]
    per_process = collections.Counter(d["pid"] for d in data)
    assert sorted(per_process.values()) == [5, 100, 100], (per_process, log[-3000:])
    # still a launcher dir per Firework, and the process leads its own session and group
    assert len({d["cwd"] for d in data}) == 205
    assert all(d["pid"] == d["pgid"] == d["sid"] for d in data)
    assert "205 Fireworks run (205 completed, 0 fizzled, 0 requeued)" in log
    assert_nothing_running(launchpad)


def test_fresh_process_runs_each_firework_in_its_own(launchpad, tmp_path, workers):  # noqa: F811
    ids = [add(launchpad, EnvTask(), f"env-{i}", "warm") for i in range(5)]
    _run(launchpad, tmp_path, workers, "--fresh-process")
    assert len({_data(launchpad, i)["pid"] for i in ids}) == 5


def test_the_next_firework_finds_the_process_as_it_was(launchpad, tmp_path, workers):  # noqa: F811
    first = add(launchpad, LeaveStateTask(), "first", "warm", priority=10)
    second = add(launchpad, LeaveStateTask(), "second", "warm", priority=9)
    _run(launchpad, tmp_path, workers)
    a, b = _data(launchpad, first), _data(launchpad, second)
    assert a["pid"] == b["pid"]  # the same process ran both ...
    # ... and the second found neither the variable nor the SIGTERM disposition the first left
    assert a["leftover_env"] is None and b["leftover_env"] is None
    assert a["sigterm_default"] and b["sigterm_default"] and a["sigchld_default"] and b["sigchld_default"]
    assert a["alarm_left"] == b["alarm_left"] == 0 and a["umask"] == b["umask"] != 0


def test_no_reuse_after_a_thread_a_process_or_a_failure_is_left(launchpad, tmp_path, workers):  # noqa: F811
    order = [("thread", LeaveThreadTask(seconds=3)), ("after-thread", EnvTask()),
             ("process", LeaveProcessTask()), ("after-process", EnvTask()),
             ("fails", FailTask()), ("after-failure", EnvTask())]
    ids = {name: add(launchpad, task, name, "warm", priority=100 - k) for k, (name, task) in enumerate(order)}
    log = _run(launchpad, tmp_path, workers)
    fws = {name: launchpad.fireworks.find_one({"fw_id": i}) for name, i in ids.items()}
    assert fws["fails"]["state"] == "FIZZLED"
    pids = {name: _data(launchpad, i).get("pid") for name, i in ids.items() if name != "fails"}
    assert pids["after-thread"] != pids["thread"], log
    assert "takes no other Firework: a thread of the Firework still runs (left-behind)" in log
    assert pids["after-process"] != pids["process"], log
    assert "takes no other Firework: a process the Firework started still runs" in log
    trace = _data(launchpad, ids["fails"])["_exception"]["_stacktrace"]
    failed_pid = int(re.search(r"failing on purpose in pid (\d+)", trace).group(1))
    assert pids["after-failure"] != failed_pid, log
    # what the Firework left went with its process: the group is killed when the process ends
    sleep_pid = _data(launchpad, ids["process"])["sleep_pid"]
    end = time.monotonic() + 10
    while psutil.pid_exists(sleep_pid) and psutil.Process(sleep_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < end, "the process a Firework left outlived its Firework process"
        time.sleep(0.1)
    assert "6 Fireworks run (5 completed, 1 fizzled, 0 requeued)" in log
    assert_nothing_running(launchpad)
