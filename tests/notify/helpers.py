"""What the notification tests share: Fireworks made FIZZLED for real (FireWorks' own rapidfire runs a task that
raises), manager cycles until something arrived, and the checks that no secret leaked anywhere."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fireworks import Firework, FWorker, PyTask, Workflow
from fireworks.core.rocket_launcher import rapidfire


def bad_input(i: int) -> str:
    return f"not a number {i}"


def python_error(i: int) -> str:
    """The error line Python itself gives for the task's failure (the expected value comes from Python)."""
    try:
        int(bad_input(i))
    except ValueError as e:
        return f"ValueError: {e}"
    raise AssertionError("int() accepted it")


def make_fizzled(lp: Any, n: int, fworker: str, launch_dir: Path, first: int = 0,
                 name: str | None = None) -> list[int]:
    """``n`` Fireworks whose task raises (``int('not a number I')``), run by FireWorks' rapidfire as FWorker
    ``fworker`` (a pilot's name is CLUSTER-JOBID): FIZZLED the way a pilot leaves them. Named ``bad-I``, or
    ``name``. Returns their fw_ids."""
    ids = []
    for i in range(first, first + n):
        fw = Firework([PyTask(func="builtins.int", args=[bad_input(i)])], name=name or f"bad-{i}",
                      spec={"_category": "nobody"})
        old_id = fw.fw_id   # add_wf: {the Firework's id: the id the LaunchPad gave it}
        ids.append(int(lp.add_wf(Workflow([fw]))[old_id]))
    launch_dir.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    try:
        rapidfire(lp, FWorker(name=fworker, category="nobody"), m_dir=str(launch_dir), nlaunches=n,
                  strm_lvl="CRITICAL")
    finally:
        os.chdir(here)
    states = {d["fw_id"]: d["state"] for d in lp.fireworks.find({"fw_id": {"$in": ids}}, {"fw_id": 1, "state": 1})}
    assert set(states.values()) == {"FIZZLED"}, states
    return ids


def config_for(launchpad: Any, tmp_path: Path, notify: dict[str, Any]) -> Path:
    """A config directory with two local clusters (alpha, beta) and ``notify`` as pilot.yaml's ``notify:``."""
    from tests.manager.helpers import local_cluster, readable_lp_file, write_config

    lp_file = readable_lp_file(launchpad, tmp_path)
    return Path(write_config(tmp_path / "cfg", lp_file, {"alpha": local_cluster(tmp_path / "w", lp_file, ["md"]),
                                                         "beta": local_cluster(tmp_path / "w2", lp_file, ["md"])},
                             notify=notify))


def notifier_for(launchpad: Any, tmp_path: Path, notify: dict[str, Any]) -> Any:
    """A :class:`~pilot.notify.notifier.Notifier` of :func:`config_for`'s directory, on the real LaunchPad."""
    from pilot.config import load_config
    from pilot.notify.notifier import Notifier

    return Notifier(load_config(config_for(launchpad, tmp_path, notify)), launchpad.db)


def cycle_until(mgr: Any, predicate: Callable[[], bool], timeout: float = 20.0, pause: float = 0.1) -> int:
    """Run manager cycles until ``predicate()``; returns how many ran."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        mgr.run_cycle()
        n += 1
        if predicate():
            return n
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {n} cycles in {timeout} s")
        time.sleep(pause)


def cycles(mgr: Any, n: int, pause: float = 0.1) -> None:
    for _ in range(n):
        mgr.run_cycle()
        time.sleep(pause)


def proc_cmdlines() -> list[str]:
    """Every process's argv on this machine (what ``ps`` shows to anyone)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return out


def assert_no_secret(secrets: Iterable[str], **texts: Iterable[str] | str) -> None:
    """No secret appears in any of the named texts (logs, messages, argv)."""
    for name, value in texts.items():
        items = [value] if isinstance(value, str) else list(value)
        for s in secrets:
            assert s, "an empty secret proves nothing"
            leaks = [t for t in items if s in t]
            assert not leaks, f"a secret appears in {name}: {leaks[0][:300]!r}"
