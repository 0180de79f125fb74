"""The FireTask of tests/worker/test_fworker_model.py (imported by ``rlaunch`` and by the pilot's Firework
children, so it lives in a module of its own; it holds no tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from fireworks.core.firework import FiretaskBase, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize


def env_chk(val: Any, fw_spec: dict, strict: bool = True, default: Any = None) -> Any:
    """``env_chk`` as the FireWorks ecosystem defines it (atomate's ``atomate.utils.utils.env_chk``; FireWorks
    2.1 itself ships none, its worker tutorial documents the ``_fw_env`` it reads): ``">>KEY<<"`` is replaced by
    ``fw_spec["_fw_env"][KEY]`` (a KeyError when ``strict`` and missing, else ``default``), anything else is
    passed through as it is, None gives ``default``."""
    if val is None:
        return default
    if isinstance(val, str) and val.startswith(">>") and val.endswith("<<"):
        if strict:
            return fw_spec["_fw_env"][val[2:-2]]
        return fw_spec.get("_fw_env", {}).get(val[2:-2], default)
    return val


@explicit_serialize
class ScratchTask(FiretaskBase):
    """Resolves ``scratch_dir`` (default ``>>scratch_dir<<``) with :func:`env_chk` and writes what it got, with the
    whole ``_fw_env`` it saw, to ``out_dir/<tag>.json``."""

    required_params: ClassVar[list[str]] = ["out_dir", "tag"]
    optional_params: ClassVar[list[str]] = ["scratch_dir"]

    def run_task(self, fw_spec: dict) -> FWAction:
        got = env_chk(self.get("scratch_dir", ">>scratch_dir<<"), fw_spec)
        seen = {"scratch_dir": got, "fw_env": fw_spec.get("_fw_env")}
        Path(self["out_dir"], f"{self['tag']}.json").write_text(json.dumps(seen, sort_keys=True))
        return FWAction(stored_data=seen)
