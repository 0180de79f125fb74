"""FireTasks used by tests/worker/test_worker.py (imported by the worker's Firework children, so it lives in a module
of its own; it holds no tests)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import ClassVar

from fireworks.core.firework import FiretaskBase, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize


@explicit_serialize
class TrapTermTask(FiretaskBase):
    """A task that finishes cleanly on SIGTERM, like the MD segment task does while mdrun checkpoints.

    It installs a SIGTERM handler, writes its pid to ``ready_file`` (so that the test knows the handler is in
    place), waits for SIGTERM (or ``max_wait`` seconds), and returns an FWAction with what it saw.
    """

    required_params: ClassVar[list[str]] = ["ready_file"]
    optional_params: ClassVar[list[str]] = ["max_wait"]

    def run_task(self, fw_spec: dict) -> FWAction:
        got: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, _frame: got.append(signum))
        Path(self["ready_file"]).write_text(str(os.getpid()))
        end = time.monotonic() + float(self.get("max_wait", 120))
        while not got and time.monotonic() < end:
            time.sleep(0.05)
        return FWAction(stored_data={"got_sigterm": bool(got), "checkpoint": "written",
                                     "pilot_deadline": os.environ.get("PILOT_DEADLINE"),
                                     "pilot_name": os.environ.get("PILOT_NAME")})


@explicit_serialize
class EnvTask(FiretaskBase):
    """Store the pilot environment variables the task sees, and where it ran."""

    def run_task(self, fw_spec: dict) -> FWAction:
        return FWAction(stored_data={k: os.environ.get(k) for k in ("PILOT_DEADLINE", "PILOT_STOP_AT",
                                                                     "PILOT_NAME")}
                        | {"cwd": os.getcwd(), "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0)})


@explicit_serialize
class IgnoreTermTask(FiretaskBase):
    """A task whose process ignores SIGTERM (as do the programs it starts): only SIGKILL ends it."""

    required_params: ClassVar[list[str]] = ["ready_file"]

    def run_task(self, fw_spec: dict) -> FWAction:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(self["ready_file"]).write_text(str(os.getpid()))
        time.sleep(1000)
        return FWAction()


@explicit_serialize
class OwnStateTask(FiretaskBase):
    """Uses the LaunchPad FireWorks hands to tasks with ``_add_launchpad_and_fw_id``: reads its own Firework."""

    def run_task(self, fw_spec: dict) -> FWAction:
        doc = self.launchpad.fireworks.find_one({"fw_id": self.fw_id}, {"state": 1})
        fw = self.launchpad.get_fw_by_id(self.fw_id)
        return FWAction(stored_data={"state_seen": doc["state"], "name_seen": fw.name})


@explicit_serialize
class LeaveStateTask(FiretaskBase):
    """Changes what a process keeps between Fireworks (an environment variable, the SIGTERM and SIGCHLD
    dispositions, a pending alarm, the umask) and says what it found of the same changes when it started."""

    def run_task(self, fw_spec: dict) -> FWAction:
        seen = {"pid": os.getpid(), "leftover_env": os.environ.get("PILOT_TEST_LEFTOVER"),
                "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                "alarm_left": signal.alarm(0), "umask": os.umask(0o022)}
        os.umask(0)
        os.environ["PILOT_TEST_LEFTOVER"] = "left by an earlier Firework"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # subprocess return codes would all read 0
        signal.alarm(60)  # would kill the next Firework's process
        return FWAction(stored_data=seen)


@explicit_serialize
class LeaveThreadTask(FiretaskBase):
    """Returns while a (non-daemon) thread it started still runs for ``seconds``."""

    required_params: ClassVar[list[str]] = ["seconds"]

    def run_task(self, fw_spec: dict) -> FWAction:
        import threading

        threading.Thread(target=time.sleep, args=(float(self["seconds"]),), name="left-behind").start()
        return FWAction(stored_data={"pid": os.getpid()})


@explicit_serialize
class LeaveProcessTask(FiretaskBase):
    """Returns while a process it started (``sleep``) still runs; stores that process's pid."""

    def run_task(self, fw_spec: dict) -> FWAction:
        import subprocess

        proc = subprocess.Popen(["sleep", "300"])
        return FWAction(stored_data={"pid": os.getpid(), "sleep_pid": proc.pid})


@explicit_serialize
class FailTask(FiretaskBase):
    """Fails, saying in which process."""

    def run_task(self, fw_spec: dict) -> FWAction:
        raise RuntimeError(f"failing on purpose in pid {os.getpid()}")
