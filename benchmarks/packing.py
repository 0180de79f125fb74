"""Benchmark 7, packing: a campaign of short Fireworks through one 4-slot pilot versus ``rlaunch multi 4``.

FireWorks' own way to fill a node with several Fireworks at once is ``rlaunch multi N``: N processes, each a
``rapidfire`` loop, sharing one LaunchPad client through a multiprocessing manager. A packing pilot does it with
one worker that keeps as many Fireworks running as its slots hold (``pilot worker --cores 4 --pack``), each in a
process of its own, bound to its own core (``PILOT_CORE_LIST``).

Both run locally (as this user) against the same database server (the embedded server, or ``MONGODB_URI``), each on
a fresh database holding N READY one-Firework workflows whose only task is ``ScriptTask("sleep S")``: short
Fireworks, where what a launcher spends between them shows. Reported, from FireWorks' own launch records (the
state history's RUNNING and COMPLETED times): wall time from process start to exit, Fireworks per second,
utilisation of the 4 slots (the tasks' own work, N x S, over 4 x wall: what a node allocation would be spent on),
the share of slot time inside launches (RUNNING to COMPLETED, the launcher's own work in a launch included), the
most launches running at once and the mean, and peak RSS of the launcher and of its children. With ``repeat`` > 1
the two alternate and the median run of each is reported.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import BenchError, Database, short_id
from benchmarks.overhead import _launch_times, _rlaunch, run_measured

SLOTS = 4
SIZES = {"full": {"n": 200, "sleep": 0.5, "repeat": 3}, "quick": {"n": 40, "sleep": 0.5, "repeat": 1},
         "smoke": {"n": 8, "sleep": 0.2, "repeat": 1}}
NAMES = {"ours": f"pilot worker --cores {SLOTS} --pack", "rlaunch": f"rlaunch multi {SLOTS}"}


def _add_sleepers(lp: Any, category: str, n: int, seconds: float) -> None:
    from fireworks import Firework, ScriptTask

    for k in range(0, n, 500):
        lp.bulk_add_wfs([Firework([ScriptTask.from_str(f"sleep {seconds}")], spec={"_category": category},
                                  name=f"short-{i}") for i in range(k, min(n, k + 500))])


def _argv(db: Database, lp: Any, which: str, cat: str, d: Path) -> list[str]:
    lp_file = d / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    if which == "ours":
        return [sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", cat, "--name", "bench-pack",
                "--no-deadline", "--idle-timeout", "0", "--launch-dir", str(d), "--cores", str(SLOTS), "--pack"]
    fw_file = d / "my_fworker.yaml"
    fw_file.write_text(yaml.safe_dump({"name": "bench-multi", "category": cat, "query": "{}"}))
    return [_rlaunch(), "-l", str(lp_file), "-w", str(fw_file), "multi", str(SLOTS), "--nlaunches", "0"]


def concurrency(times: list[tuple[float, float]]) -> tuple[int, float]:
    """The most launches running at one time, and the mean number running over the span from the first start
    to the last end (a sweep over the starts and ends)."""
    if not times:
        return 0, 0.0
    events = sorted([(s, 1) for s, _ in times] + [(e, -1) for _, e in times], key=lambda x: (x[0], x[1]))
    running = peak = 0
    area, last = 0.0, events[0][0]
    for t, step in events:
        area += running * (t - last)
        last = t
        running += step
        peak = max(peak, running)
    span = times[-1][1] - times[0][0] if times else 0.0
    span = max(span, max(e for _, e in times) - times[0][0])
    return peak, area / span if span > 0 else 0.0


def run_one(db: Database, which: str, n: int, seconds: float, work: Path, timeout: float,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """One run of ``which`` (``ours`` or ``rlaunch``) over ``n`` Fireworks sleeping ``seconds`` each.

    ``rlaunch multi`` has been seen (once, in a CI run on a loaded machine) to exit 0 having run nothing: a run of
    the baseline that completed no Firework is tried once more, on a fresh database, and says so in the result
    (``baseline_retries``, with the first attempt's output); any other shortfall is an error, with the output."""
    for attempt in (1, 2):
        lp = db.launchpad()
        cat = f"pack{short_id()}"
        _add_sleepers(lp, cat, n, seconds)
        d = work / f"{which}-{attempt}"
        d.mkdir(parents=True)
        argv = _argv(db, lp, which, cat, d)
        log_path = d / "output.log"
        wall, rss = run_measured(argv, d, log_path, timeout, f"{NAMES[which]}: {n} Fireworks")
        done = lp.fireworks.count_documents({"state": "COMPLETED"})
        times = _launch_times(lp)
        db.drop(lp)
        output = log_path.read_text(errors="replace")[-1500:]
        if done == 0 and which == "rlaunch" and attempt == 1:
            log(f"packing: {NAMES[which]} exited 0 having run none of {n} Fireworks; once more. Its output:\n{output}")
            first_output = output
            continue
        if done != n:
            raise BenchError(f"{which}: expected {n} COMPLETED Fireworks, got {done}; output:\n{output}")
        busy = sum(e - s for s, e in times)
        peak, mean = concurrency(times)
        return {"fireworks": n, "sleep_s": seconds, "slots": SLOTS, "wall_s": wall, "fw_per_s": n / wall,
                "utilisation": n * seconds / (SLOTS * wall), "in_launch": busy / (SLOTS * wall), "busy_s": busy,
                "max_running": peak, "mean_running": mean, "ideal_wall_s": n * seconds / SLOTS,
                "baseline_retries": attempt - 1, **({"first_output": first_output} if attempt > 1 else {}), **rss}
    raise AssertionError("unreachable")


def run(n: int, seconds: float, repeat: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The side-by-side runs, alternating who goes first; the median run of each."""
    db = Database().start()
    work = Path(tempfile.mkdtemp(prefix="pilot-bench-packing-"))
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "rlaunch": []}
    try:
        for k in range(repeat):
            for which in (("ours", "rlaunch") if k % 2 == 0 else ("rlaunch", "ours")):
                log(f"packing: {n} Fireworks of {seconds:g} s through {NAMES[which]} (run {k + 1}/{repeat}) ...")
                runs[which].append(run_one(db, which, n, seconds, work / f"r{k}", timeout=max(300.0, n * 5.0),
                                           log=log))
    finally:
        db.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(rs, key=lambda r: r["fw_per_s"])
        return dict(ordered[(len(ordered) - 1) // 2], fw_per_s_range=[ordered[0]["fw_per_s"], ordered[-1]["fw_per_s"]])

    return {"fireworks": n, "sleep_s": seconds, "slots": SLOTS, "repeat": repeat, "ours": median(runs["ours"]),
            "rlaunch": median(runs["rlaunch"]), "all_runs": runs}


def table(res: dict[str, Any]) -> str:
    """The two systems side by side, and their ratio."""
    from benchmarks.common import fmt_table, ratio

    o, r = res["ours"], res["rlaunch"]
    rows = []
    for name, x in ((NAMES["ours"], o), (NAMES["rlaunch"], r)):
        rows.append([name, x["fireworks"], x["wall_s"], x["ideal_wall_s"], x["fw_per_s"], 100 * x["utilisation"],
                     100 * x["in_launch"], x["max_running"], x["mean_running"], x["peak_rss_mib"],
                     x["peak_child_rss_mib"]])
    rows.append(["ratio ours/rlaunch", "", ratio(o["wall_s"], r["wall_s"]), "", ratio(o["fw_per_s"], r["fw_per_s"]),
                 ratio(o["utilisation"], r["utilisation"]), ratio(o["in_launch"], r["in_launch"]), "",
                 ratio(o["mean_running"], r["mean_running"]), ratio(o["peak_rss_mib"], r["peak_rss_mib"]), ""])
    return fmt_table(["system", "Fireworks", "wall s", "ideal s", "FW/s", "util. %", "in launch %", "max running",
                      "mean running", "RSS MiB", "children MiB"], rows)
