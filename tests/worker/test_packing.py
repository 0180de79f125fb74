"""Several Fireworks at once in one pilot (``pilot worker --pack``), each on the cores and GPUs it asks for.

Real ``pilot worker`` processes against the real embedded LaunchPad; what each Firework's process saw (the
binding variables, its CPU affinity, its pid) is written by the task itself (tests/worker/test_packing_tasks.py),
when the Fireworks ran comes from FireWorks' own launch records. The expected bindings are the rules of the
issue and docs/worker.md ("Packing"): a Firework holds ``spec._pilot.cores`` cores (missing: 1) and
``spec._pilot.gpus`` GPUs (missing: 0), no two hold the same one, GPU ids come from the worker's
``CUDA_VISIBLE_DEVICES``, and the CPU affinity is set only when the job may run on at least ``--cores`` CPUs.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from fireworks import Firework, Workflow

from pilot.worker.slots import Hold, Slots, binding, cpu_ids, firework_asks, gpu_ids
from tests.helpers import wait_for
from tests.worker import test_worker
from tests.worker.test_packing_tasks import SlotTask
from tests.worker.test_worker import IDLE, assert_nothing_running, fw_doc, launches_of

#: the ``workers`` fixture of test_worker.py (real ``pilot worker`` subprocesses, stopped after the test)
workers = test_worker.workers


# --------------------------------------------------------------------------- the allocator, by itself
def test_slots_give_each_firework_its_own_cores_and_gpus():
    slots = Slots([0, 1, 2, 3], ["3", "5"])
    a = slots.take(2, 1)
    b = slots.take(1, 1)
    assert a == Hold((0, 1), ("3",)) and b == Hold((2,), ("5",))
    assert (slots.free_cores, slots.free_gpus) == (1, 0)
    assert slots.take(2, 0) is None and slots.take(1, 1) is None          # not that many free: nothing held
    assert (slots.free_cores, slots.free_gpus) == (1, 0)
    slots.give_back(a)
    assert (slots.free_cores, slots.free_gpus) == (3, 1)
    assert slots.take(3, 1) == Hold((0, 1, 3), ("3",))                     # the lowest free ids
    slots.give_back(b)
    slots.give_back(b)                                                     # twice: freed once
    assert (slots.free_cores, slots.free_gpus) == (1, 1) and slots.busy


def test_slots_can_start_needs_a_core_and_for_gpu_work_a_gpu():
    slots = Slots([0, 1], ["0"])
    assert slots.can_start() and slots.can_start(gpu_work_only=True)
    slots.take(1, 1)
    assert slots.can_start() and not slots.can_start(gpu_work_only=True)  # a core, but no GPU for GPU work
    slots.take(1, 0)
    assert not slots.can_start()
    assert Slots([0], []).can_start(gpu_work_only=True)                    # a pilot without GPUs: CPU work


def test_what_a_firework_asks_for():
    assert firework_asks({}) == (1, 0) and firework_asks(None) == (1, 0)
    assert firework_asks({"_pilot": {"cores": 2, "gpus": 1}}) == (2, 1)
    assert firework_asks({"_pilot": {"cores": 1.5, "gpus": None}}) == (2, 0)   # rounded up; null: the default
    assert firework_asks({"_pilot": {"cores": 0}}) == (1, 0)                   # a process needs a CPU
    assert firework_asks({"_pilot": "x"}) == (1, 0)


def test_core_and_gpu_ids():
    assert cpu_ids(2, {7, 3, 5}) == ([3, 5], True)          # the first CPUs the job may use: real, bound
    assert cpu_ids(4, {0, 1}) == ([0, 1, 2, 3], False)       # fewer CPUs than cores: logical ids only
    assert gpu_ids(2, "4,6,7") == ["4", "6"]                 # the batch system's own devices
    assert gpu_ids(3, None) == ["0", "1", "2"] and gpu_ids(2, "") == ["0", "1"]
    assert gpu_ids(3, "GPU-a, GPU-b") == ["GPU-a", "GPU-b"]  # only those the job has (UUIDs too)


def test_binding_env():
    both = binding(Hold((2, 3), ("5",)), bind_cpus=True)
    assert both == {"env": {"PILOT_CORES": "2", "PILOT_CORE_LIST": "2,3", "OMP_NUM_THREADS": "2",
                            "CUDA_VISIBLE_DEVICES": "5"}, "cpus": [2, 3]}
    cpu_only = binding(Hold((1,), ()), bind_cpus=False)
    assert cpu_only["env"]["CUDA_VISIBLE_DEVICES"] == "" and cpu_only["cpus"] is None   # sees no GPU


# --------------------------------------------------------------------------- helpers
def add_slot(lp, out: Path, name: str, category: str, cores=None, gpus=None, priority=None, walltime=None,
             memory=None, **task) -> int:
    pilot = {k: v for k, v in (("cores", cores), ("gpus", gpus), ("walltime", walltime), ("memory", memory))
             if v is not None}
    spec: dict = {"_category": category}
    if pilot:
        spec["_pilot"] = pilot
    if priority is not None:
        spec["_priority"] = priority
    lp.add_wf(Workflow([Firework([SlotTask(out_dir=str(out), name=name, **task)], spec=spec, name=name)]))
    return lp.fireworks.find_one({"name": name}, {"fw_id": 1})["fw_id"]


def seen(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def wait_seen(out: Path, names, what: str, timeout: float = 60) -> None:
    wait_for(lambda: all((out / f"{n}.json").exists() for n in names), timeout, 0.05, what)


def interval(lp, fw_id: int) -> tuple[datetime.datetime, datetime.datetime]:
    """When the Firework ran, from FireWorks' launch record (its RUNNING and its final state entry)."""
    (launch,) = launches_of(lp, fw_id)
    hist = {h["state"]: h["created_on"] for h in launch["state_history"]}
    start, end = hist["RUNNING"], hist[launch["state"]]
    return _when(start), _when(end)


def _when(value) -> datetime.datetime:
    return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)


def core_set(data: dict) -> set[int]:
    return {int(c) for c in data["PILOT_CORE_LIST"].split(",")}


def expected_cores(n: int) -> tuple[list[int], bool]:
    """The rule of the issue: the job's first ``n`` CPUs when it may run on that many, else logical ids."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[:n], True) if len(allowed) >= n else (list(range(n)), False)


# --------------------------------------------------------------------------- several at once, disjoint
def test_four_one_core_fireworks_run_at_once_on_their_own_cores_and_gpus(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    names = [f"one-{i}" for i in range(4)]
    ids = [add_slot(launchpad, out, n, "pack", gpus=1, seconds=2.5) for n in names]
    w = workers(launchpad, tmp_path, ["pack"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "4",
                "--gpus", "4", "--pack", env={"CUDA_VISIBLE_DEVICES": "3,5,7,9"})
    assert w.wait(60) == 0, w.log()
    log = w.log()
    assert "4 Fireworks run (4 completed, 0 fizzled, 0 requeued)" in log, log
    spans = [interval(launchpad, i) for i in ids]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans   # all four ran at the same time
    data = [seen(out, n) for n in names]
    assert len({d["pid"] for d in data}) == 4
    cores, real = expected_cores(4)
    assert sorted(c for d in data for c in core_set(d)) == cores        # one core each, none shared
    assert all(d["PILOT_CORES"] == "1" and d["OMP_NUM_THREADS"] == "1" for d in data)
    assert sorted(d["CUDA_VISIBLE_DEVICES"] for d in data) == ["3", "5", "7", "9"]   # one GPU each, of the job's
    for d in data:
        if real:
            assert d["affinity"] == sorted(core_set(d)), d
        else:
            assert d["affinity"] == sorted(os.sched_getaffinity(0)), d   # logical ids: the job's CPU set stays
    if not real:
        assert "core ids 0,1,2,3 are logical only" in log, log
    assert_nothing_running(launchpad)


def test_a_two_core_firework_holds_two_and_one_asking_eight_is_never_taken(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    huge = add_slot(launchpad, out, "eight", "mixed", cores=8, priority=100, seconds=0.1)
    big = add_slot(launchpad, out, "two", "mixed", cores=2, priority=10, seconds=2.5)
    small = [add_slot(launchpad, out, f"one-{i}", "mixed", priority=5, seconds=2.5) for i in range(2)]
    w = workers(launchpad, tmp_path, ["mixed"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "4", "--pack")
    assert w.wait(60) == 0, w.log()
    assert "3 Fireworks run (3 completed" in w.log(), w.log()
    assert fw_doc(launchpad, huge)["state"] == "READY" and launches_of(launchpad, huge) == []
    spans = [interval(launchpad, i) for i in (big, *small)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    two, *ones = (seen(out, n) for n in ("two", "one-0", "one-1"))
    assert two["PILOT_CORES"] == "2" and two["OMP_NUM_THREADS"] == "2" and len(core_set(two)) == 2
    sets = [core_set(two), *(core_set(d) for d in ones)]
    assert sorted(c for s in sets for c in s) == expected_cores(4)[0]   # 2 + 1 + 1 of the 4, none shared
    assert all(d["CUDA_VISIBLE_DEVICES"] == "" for d in (two, *ones))    # no GPU held: sees none
    assert_nothing_running(launchpad)


def test_a_pilot_without_pack_takes_only_what_fits_its_cores_and_gpus(launchpad, tmp_path, workers):
    """One slot, the whole pilot: the default pilot (1 core, no GPU) leaves a 2-core and a GPU Firework; a
    2-core pilot takes the 2-core one, one at a time as before, and sets no binding."""
    out = tmp_path / "seen"
    out.mkdir()
    plain = add_slot(launchpad, out, "plain", "solo", seconds=0.1)
    two = add_slot(launchpad, out, "two", "solo", cores=2, seconds=0.1)
    gpu = add_slot(launchpad, out, "gpu", "solo", gpus=1, seconds=0.1)
    w = workers(launchpad, tmp_path, ["solo"], "--no-deadline", "--idle-timeout", IDLE)
    assert w.wait(60) == 0, w.log()
    assert [fw_doc(launchpad, i)["state"] for i in (plain, two, gpu)] == ["COMPLETED", "READY", "READY"]
    w = workers(launchpad, tmp_path, ["solo"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "2")
    assert w.wait(60) == 0, w.log()
    assert [fw_doc(launchpad, i)["state"] for i in (two, gpu)] == ["COMPLETED", "READY"]
    assert seen(out, "two")["PILOT_CORE_LIST"] is None
    w = workers(launchpad, tmp_path, ["solo"], "--no-deadline", "--idle-timeout", IDLE, "--gpus", "1",
                "--gpu-work-only")
    assert w.wait(60) == 0, w.log()
    assert fw_doc(launchpad, gpu)["state"] == "COMPLETED"


def test_memory_asks_beyond_the_pilots_are_not_taken(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    small = add_slot(launchpad, out, "small", "mem", memory=500, seconds=0.1)
    big = add_slot(launchpad, out, "big", "mem", memory=4000, seconds=0.1)
    w = workers(launchpad, tmp_path, ["mem"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "2", "--pack",
                "--memory-mb", "1000")
    assert w.wait(60) == 0, w.log()
    assert [fw_doc(launchpad, i)["state"] for i in (small, big)] == ["COMPLETED", "READY"]


def test_gpu_work_only_pilot_takes_gpu_fireworks_only(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    cpu = add_slot(launchpad, out, "cpu", "gw", seconds=0.1)
    gpus = [add_slot(launchpad, out, f"gpu-{i}", "gw", gpus=1, seconds=2.0) for i in range(2)]
    w = workers(launchpad, tmp_path, ["gw"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "4", "--gpus",
                "2", "--pack", "--gpu-work-only")
    assert w.wait(60) == 0, w.log()
    assert fw_doc(launchpad, cpu)["state"] == "READY"
    assert {seen(out, f"gpu-{i}")["CUDA_VISIBLE_DEVICES"] for i in range(2)} == {"0", "1"}
    spans = [interval(launchpad, i) for i in gpus]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="CPU affinity needs a job of at least 2 CPUs")
def test_fireworks_are_bound_to_their_cpus(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    for i in range(2):
        add_slot(launchpad, out, f"b-{i}", "bind", seconds=1.5)
    w = workers(launchpad, tmp_path, ["bind"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "2", "--pack")
    assert w.wait(60) == 0, w.log()
    data = [seen(out, f"b-{i}") for i in range(2)]
    assert [d["affinity"] for d in data] == [sorted(core_set(d)) for d in data]     # each on its own CPU
    assert sorted(a for d in data for a in d["affinity"]) == sorted(os.sched_getaffinity(0))[:2]
    assert "logical only" not in w.log()


# --------------------------------------------------------------------------- per slot: lost run, stop, deadline
def test_killing_one_slots_firework_requeues_only_it(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    go = tmp_path / "go"
    names = [f"k-{i}" for i in range(4)]
    ids = {n: add_slot(launchpad, out, n, "kill", go_file=str(go), max_wait=60) for n in names}
    w = workers(launchpad, tmp_path, ["kill"], "--no-deadline", "--idle-timeout", IDLE, "--cores", "4", "--pack",
                "--grace", "5")
    wait_seen(out, names, "all four Fireworks to run")
    victim = seen(out, "k-2")["pid"]
    os.killpg(victim, signal.SIGKILL)   # the Firework's whole process group, as the OOM killer or a crash would
    wait_for(lambda: re.search(rf"fw {ids['k-2']} requeued", w.log()), 30, 0.1, "the killed Firework's requeue")
    # the other slots go on: still RUNNING, their processes alive
    for n in ("k-0", "k-1", "k-3"):
        assert fw_doc(launchpad, ids[n])["state"] == "RUNNING", w.log()
        assert psutil.pid_exists(seen(out, n)["pid"])
    go.touch()
    assert w.wait(60) == 0, w.log()
    log = w.log()
    doc = fw_doc(launchpad, ids["k-2"])
    assert doc["state"] == "READY", log
    (launch,) = launches_of(launchpad, ids["k-2"])                       # not taken again by this pilot
    assert launch["state"] == "FIZZLED" and doc["archived_launches"] == [launch["launch_id"]]
    assert "killed by SIGKILL" in launch["action"]["stored_data"]["_message"]
    for n in ("k-0", "k-1", "k-3"):
        assert fw_doc(launchpad, ids[n])["state"] == "COMPLETED" and len(launches_of(launchpad, ids[n])) == 1
    assert "4 Fireworks run (3 completed, 0 fizzled, 1 requeued)" in log, log
    assert_nothing_running(launchpad)


def test_sigterm_to_the_worker_stops_every_slot_within_the_grace(launchpad, tmp_path, workers):
    out = tmp_path / "seen"
    out.mkdir()
    trap = {f"t-{i}": add_slot(launchpad, out, f"t-{i}", "term", trap=True, max_wait=60) for i in range(2)}
    plain = {f"p-{i}": add_slot(launchpad, out, f"p-{i}", "term", max_wait=60) for i in range(2)}
    w = workers(launchpad, tmp_path, ["term"], "--no-deadline", "--idle-timeout", "60", "--cores", "4", "--pack",
                "--grace", "30")
    wait_seen(out, [*trap, *plain], "all four Fireworks to run")
    t0 = time.monotonic()
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait(15) == 0, w.log()
    took = time.monotonic() - t0
    log = w.log()
    assert took < 3.5, (took, log)          # --term-grace 1 s, not --grace 30 s
    assert log.count("SIGTERM -> SIGTERM to process group") == 4, log
    for name, fw_id in trap.items():        # handled SIGTERM: its result stands
        (launch,) = launches_of(launchpad, fw_id)
        assert launch["state"] == "COMPLETED" and launch["action"]["stored_data"]["got_sigterm"] is True, name
    for fw_id in plain.values():            # died of it: back to READY, not counted
        assert fw_doc(launchpad, fw_id)["state"] == "READY", log
        assert "not counted" in launches_of(launchpad, fw_id)[0]["action"]["stored_data"]["_message"]
    assert not any(psutil.pid_exists(seen(out, n)["pid"]) for n in [*trap, *plain])
    assert "stopped: stop signal (SIGTERM)" in log
    assert_nothing_running(launchpad)


def test_work_too_long_for_the_time_left_is_not_started_while_others_run(launchpad, tmp_path, workers):
    """Deadline in 20 s, margin 4 s: about 15 s usable at the start, two cores. A (3 s) and B (7 s) start at
    once; when A ends, some 11-12 s are usable: C (walltime 13 s) no longer fits and stays READY while B runs,
    D (walltime 5 s) fits and takes the free core."""
    out = tmp_path / "seen"
    out.mkdir()
    deadline = time.time() + 20
    a = add_slot(launchpad, out, "a", "dl", walltime=3, priority=3, seconds=3)
    b = add_slot(launchpad, out, "b", "dl", walltime=10, priority=2, seconds=7)
    c = add_slot(launchpad, out, "c", "dl", walltime=13, priority=1, seconds=0.5)
    d = add_slot(launchpad, out, "d", "dl", walltime=5, priority=0, seconds=0.5)
    w = workers(launchpad, tmp_path, ["dl"], "--deadline", str(deadline), "--margin", "4", "--idle-timeout", "1",
                "--grace", "1", "--cores", "2", "--pack")
    assert w.wait(30) == 0, w.log()
    log = w.log()
    assert [fw_doc(launchpad, i)["state"] for i in (a, b, d)] == ["COMPLETED"] * 3, log
    assert fw_doc(launchpad, c)["state"] == "READY" and launches_of(launchpad, c) == [], log
    (a_start, a_end), (b_start, b_end), (d_start, _) = (interval(launchpad, i) for i in (a, b, d))
    assert max(a_start, b_start) < a_end <= d_start < b_end, log       # D ran on A's core while B ran
    assert ("stopped: READY work, but none fits the time left" in log
            or "stopped: no matching work for the idle timeout" in log), log
    assert_nothing_running(launchpad)


def test_every_slot_is_stopped_at_deadline_minus_half_the_margin(launchpad, tmp_path, workers):
    """Deadline in 12 s, margin 8 s: both Fireworks (no walltime: they fit) start at once and run on; at
    deadline - 4 s each gets SIGTERM. The one that handles it completes with its checkpoint, the other one is
    put back to READY; both within the grace (1 s)."""
    out = tmp_path / "seen"
    out.mkdir()
    deadline = time.time() + 12
    trap = add_slot(launchpad, out, "trap", "dls", trap=True, max_wait=60)
    plain = add_slot(launchpad, out, "plain", "dls", max_wait=60)
    w = workers(launchpad, tmp_path, ["dls"], "--deadline", str(deadline), "--margin", "8", "--idle-timeout", "60",
                "--grace", "1", "--cores", "2", "--pack")
    assert w.wait(30) == 0, w.log()
    assert deadline - 4.5 <= time.time() <= deadline + 1
    log = w.log()
    assert log.count("deadline - margin/2 reached -> SIGTERM to process group") == 2, log
    (launch,) = launches_of(launchpad, trap)
    assert launch["state"] == "COMPLETED" and launch["action"]["stored_data"]["got_sigterm"] is True, log
    assert fw_doc(launchpad, plain)["state"] == "READY", log
    assert "stopped: deadline reached" in log
    assert_nothing_running(launchpad)
