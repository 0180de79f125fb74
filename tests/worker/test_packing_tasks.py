"""FireTasks used by tests/worker/test_packing.py (imported by the worker's Firework children, so it lives in a
module of its own; it holds no tests)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

from fireworks.core.firework import FiretaskBase, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize

#: what a packed pilot tells a Firework's process (docs/worker.md, "Packing")
SEEN_ENV = ("PILOT_CORES", "PILOT_CORE_LIST", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


@explicit_serialize
class SlotTask(FiretaskBase):
    """Writes what its process sees (the binding variables, its CPU affinity, its pid) to ``out_dir/NAME.json``
    as soon as it starts, then waits: ``seconds``, or until ``go_file`` exists (at most ``max_wait`` s). With
    ``trap``, a SIGTERM ends the wait and the task returns normally (a checkpointing task)."""

    required_params: ClassVar[list[str]] = ["out_dir", "name"]
    optional_params: ClassVar[list[str]] = ["seconds", "go_file", "max_wait", "trap"]

    def run_task(self, fw_spec: dict) -> FWAction:
        got: list[int] = []
        if self.get("trap"):
            signal.signal(signal.SIGTERM, lambda signum, _frame: got.append(signum))
        seen = {key: os.environ.get(key) for key in SEEN_ENV}
        seen |= {"affinity": sorted(os.sched_getaffinity(0)), "pid": os.getpid(), "start": time.time()}
        out = Path(self["out_dir"]) / f"{self['name']}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(seen))
        tmp.rename(out)  # whole, for the test that waits for it
        end = time.monotonic() + float(self.get("seconds", self.get("max_wait", 60)))
        go = Path(self["go_file"]) if self.get("go_file") else None
        while not got and time.monotonic() < end and not (go is not None and go.exists()):
            time.sleep(0.05)
        return FWAction(stored_data=seen | {"end": time.time(), "got_sigterm": bool(got)})
