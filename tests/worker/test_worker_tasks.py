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
