#!/usr/bin/env python3
"""Run the fireworks-pilot benchmarks side by side with their FireWorks baselines; print tables, write JSON.

Usage::

    python3 benchmarks/run.py                 # full sizes (about 12 minutes on 2 cores)
    python3 benchmarks/run.py --quick         # small sizes (a few minutes)
    python3 benchmarks/run.py --smoke         # every benchmark at its tiniest size (about a minute)
    python3 benchmarks/run.py --only overhead,scale --json /tmp/out.json

Benchmarks (``--only`` takes a comma-separated list): ``submission``, ``overhead``, ``waste``, ``scale``,
``dbserver``, ``replay``, ``packing``. They need the test services (``bash tests/infra/services.sh up``, as root);
``overhead`` and ``packing`` only need a database, ``dbserver`` starts its own servers (this tree's engine and a
baseline commit's).
``MONGODB_URI`` selects a MongoDB instead of the embedded server. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")   # FireWorks' bulk_add_wfs draws a progress bar otherwise

from benchmarks import goals
from benchmarks.common import (
    REPO,
    BenchError,
    fmt_table,
    loadavg,
    machine_info,
    ratio,
    source_state,
    write_json,
)

NAMES = ("submission", "overhead", "waste", "scale", "dbserver", "replay", "packing")

SIZES: dict[str, dict[str, Any]] = {
    "full": {"submission": {"sizes": [8, 40, 200], "cap": 20, "default_interval_for": 8},
             "overhead": {"n": 500, "repeat": 3}, "waste": "full",
             "scale": {"sizes": [1000, 10000, 100000], "clusters": 20}, "dbserver": {"n": 100000},
             "replay": "full", "packing": "full"},
    "quick": {"submission": {"sizes": [8], "cap": 20, "default_interval_for": None},
              "overhead": {"n": 50, "repeat": 1}, "waste": "quick", "scale": {"sizes": [1000], "clusters": 20},
              "dbserver": {"n": 20000}, "replay": "quick", "packing": "quick"},
    "smoke": {"submission": {"sizes": [4], "cap": 4, "default_interval_for": None},
              "overhead": {"n": 10, "repeat": 1}, "waste": "smoke", "scale": {"sizes": [200], "clusters": 3},
              "dbserver": {"n": 1000}, "replay": "smoke", "packing": "smoke"},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ============================================================================ tables
def table_submission(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        o, q = r["ours"], r["qlaunch"]
        rows.append([r["ready"], r["right_number"], o["jobs"], q["jobs"], o["wall_s"], q["wall_s"],
                     ratio(o["wall_s"], q["wall_s"]), o["scheduler_calls"], q["scheduler_calls"],
                     f"{o['ssh_connects']}/{o['ssh_operations']}", f"{q['ssh_connects']}/{q['ssh_operations']}",
                     o["db_commands"], q["db_commands_server"]])
        d = r.get("qlaunch_default_interval")
        if d:
            rows.append([f"{r['ready']} (FW default sleep {d['update_interval_s']} s)", "", "", d["jobs"], "",
                         d["wall_s"], ratio(o["wall_s"], d["wall_s"]), "", d["scheduler_calls"], "", "", "",
                         d["db_commands_server"]])
    return fmt_table(["R ready", "right", "ours jobs", "qlaunch jobs", "ours s", "qlaunch s", "s ratio",
                      "ours sched", "qlaunch sched", "ours ssh conn/ops", "qlaunch ssh", "ours DB", "qlaunch DB"],
                     rows)


def table_overhead(res: dict[str, Any]) -> str:
    o, r = res["ours"], res["rlaunch"]
    rows = []
    systems = [("pilot worker", o), ("rlaunch rapidfire", r)]
    if res.get("fresh"):  # results of before the warm Firework processes have no such run
        systems.append(("pilot worker --fresh-process", res["fresh"]))
    for name, x in systems:
        rng = x.get("fw_per_s_range")
        fw_s = f"{x['fw_per_s']:.2f}" + (f" ({rng[0]:.1f}-{rng[1]:.1f})" if rng and rng[0] != rng[1] else "")
        cpu = [x.get(k) for k in ("cpu_user_ms_per_fw", "cpu_system_ms_per_fw", "server_cpu_ms_per_fw")]
        rows.append([name, x["fireworks"], x["wall_s"], fw_s, x["steady_fw_per_s"],
                     (x["mean_launch_s"] or 0) * 1000, (x["mean_gap_s"] or 0) * 1000, x["db_commands_per_fw"],
                     *cpu, x["peak_rss_mib"], x["peak_child_rss_mib"]])
    rows.append(["ratio ours/rlaunch", "", ratio(o["wall_s"], r["wall_s"]), ratio(o["fw_per_s"], r["fw_per_s"]),
                 ratio(o["steady_fw_per_s"], r["steady_fw_per_s"]), ratio(o["mean_launch_s"], r["mean_launch_s"]),
                 ratio(o["mean_gap_s"], r["mean_gap_s"]), ratio(o["db_commands_per_fw"], r["db_commands_per_fw"]),
                 *(ratio(o.get(k), r.get(k)) for k in ("cpu_user_ms_per_fw", "cpu_system_ms_per_fw",
                                                        "server_cpu_ms_per_fw")), "", ""])
    out = fmt_table(["", "FWs", "wall s", "FW/s", "steady FW/s", "launch ms", "gap ms", "DB cmds/FW",
                     "CPU user ms/FW", "CPU sys ms/FW", "server CPU ms/FW", "RSS MiB", "child RSS MiB"], rows)
    b = res.get("fork_breakdown")
    if b:
        out += (f"\n\ncost model of one Firework in a freshly forked child with its own DB client, next to "
                f"launch_rocket in-process (medians over {b['fireworks']} interleaved rounds, ms):\n")
        out += fmt_table(["in-process rocket", "fork", "new client+hello", "1st rocket in child",
                          "2nd rocket in child", "1st after 0.3 s", "1st, minPoolSize=2"],
                         [[b["in_process_rocket_ms"], b["fork_ms"], b["connect_ms"], b["child_first_rocket_ms"],
                           b["child_second_rocket_ms"], b["child_first_rocket_after_pause_ms"],
                           b["warm_pool_first_rocket_ms"]]])
    ph = (b or {}).get("phases")
    if ph:
        out += (f"\n\nwhere a no-op Firework's time goes now: one traced run of each on {ph['fireworks']} Fireworks "
                "(ms and database commands per Firework; exclusive times; '-': no such phase):\n")
        labels = {"checkout": "pull: checkout_fw", "pings": "pings (FireWorks' ping_launch)",
                  "complete": "complete_launch + workflow refresh",
                  "rocket_and_task": "Rocket + task (ours: worker waits for the child)",
                  "handoff": "hand-off of the pre-forked child", "settle": "settle + reap",
                  "between": "loop between Fireworks"}
        prows = []
        for key, label in labels.items():
            row: list[Any] = [label]
            for side in ("ours", "rlaunch"):
                x = ph[side]
                row += [x.get(f"{key}_ms", "-"), x.get(f"{key}_cmds", "-")]
            prows.append(row)
        o_ph, r_ph = ph["ours"], ph["rlaunch"]
        prows.append(["sum of the phases", sum(o_ph.get(f"{k}_ms", 0) for k in labels),
                      sum(o_ph.get(f"{k}_cmds", 0) for k in labels), sum(r_ph.get(f"{k}_ms", 0) for k in labels),
                      sum(r_ph.get(f"{k}_cmds", 0) for k in labels)])
        prows.append(["wall / Fireworks (with start-up)", o_ph["wall_ms_per_fw"], "", r_ph["wall_ms_per_fw"], ""])
        out += fmt_table(["phase", "ours ms", "ours cmds", "rlaunch ms", "rlaunch cmds"], prows)
    rss = res.get("worker_rss_at")
    if rss:
        out += (f"\n\npilot worker in a LaunchPad of {rss['fireworks_in_launchpad']:,} READY Fireworks, running "
                f"{rss['fireworks_run']} of them: peak RSS {rss['peak_rss_mib']} MiB, its Firework children "
                f"{rss['peak_child_rss_mib']} MiB (insert {rss['insert_s']:.1f} s, worker {rss['wall_s']:.1f} s)")
    return out


WASTE_ROWS = [
    ("campaign complete", "campaign_complete"), ("campaign time s", "campaign_s"),
    ("pilots submitted", "pilots_submitted"), ("pilots started", "pilots_started"),
    ("pilot time s", "pilot_time_s"), ("segment attempts", "attempts"),
    ("segments killed by scheduler", "segments_killed_by_scheduler"),
    ("segments stopped by pilot", "segments_stopped_by_pilot"), ("segments hard-killed", "segments_hard_killed"),
    ("Fireworks rerun by manager", "fireworks_rerun_by_manager"),
    ("segments running past wall time", "segments_past_walltime"), ("work past wall time s", "work_past_walltime_s"),
    ("work redone s", "work_redone_s"),
    ("work done s", "work_done_s"), ("work required s", "work_required_s"), ("busy s", "busy_s"),
    ("utilisation busy/pilot", "utilisation_busy"), ("utilisation useful/pilot", "utilisation_useful"),
    ("segments sized to the deadline", "segments_sized_to_deadline"),
    ("pilot time lost: start-up s", "lost_startup_s"), ("pilot time lost: between segments s", "lost_gaps_s"),
    ("pilot time lost: tail s", "lost_tail_s"), ("pilot time lost: jobs with no segment s", "lost_empty_jobs_s"),
    ("wall time given back unused s", "walltime_returned_s"),
]


def table_waste(res: dict[str, Any]) -> str:
    systems = res.get("systems", ["ours", "rlaunch"])
    heads = {"ours": "pilot worker", "ours_no_usr1": "pilot worker, no USR1",
             "rlaunch": f"rlaunch --timeout {res.get('rlaunch_timeout_s')}s",
             "rlaunch_close": f"rlaunch --timeout {res.get('rlaunch_close_timeout_s')}s",
             "rlaunch_maxh": f"rlaunch {res.get('rlaunch_timeout_s')}s, sized segments"}
    rows = [[label, *(res[k].get(key) for k in systems)] for label, key in WASTE_ROWS]
    for label, key in (("pilot states", "pilot_states"), ("attempt endings", "attempt_endings"),
                       ("TIMEOUT overrun s", "timeout_overrun_s"), ("pilots got USR1", "pilots_got_usr1"),
                       ("USR1 s before deadline", "usr1_s_before_deadline")):
        rows.append([label, *(_short(res[k].get(key)) for k in systems)])
    head = (f"{res['size']['runs']} runs x {res['size']['segments']} segments of {res['segment_lengths_s']} s; "
            f"pilots of {res['walltime_s']} s, margin {res['size']['margin']} s\n")
    return head + fmt_table(["", *(heads.get(k, k) for k in systems)], rows)


def _short(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.0f}" if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def table_scale(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        c1, c2 = r["cycles"][0], r["cycles"][-1]
        rows.append([r["fireworks"], r["insert_s"], c1["wall_s"], c1["db_commands"], c1["submitted"],
                     sum(c1["scheduler_commands"].values()), c2["wall_s"], c2.get("wall_without_ssh_s"),
                     c2.get("cpu_s"), c2["db_commands"], sum(c2["scheduler_commands"].values()), c2["aggregation_s"],
                     r["server_seconds_total"], r["peak_rss_mib"], r["server_peak_rss_mib"]])
    out = fmt_table(["Fireworks", "insert s", "cycle1 s", "cycle1 DB", "cycle1 pilots", "cycle1 sched",
                     "cycle2 s", "cycle2 s w/o SSH", "cycle2 CPU s", "cycle2 DB", "cycle2 sched",
                     "cycle2 in aggregation s", "server busy s", "manager RSS", "server RSS"], rows)
    out += ("\ncycle2 s w/o SSH: the cycle's wall time less the time at least one SSH/scheduler call was in flight "
            "(goal: under 1 s at 100,000 Fireworks x 20 clusters, issue 18)")
    ic = res.get("insert_compare")
    if ic:
        out += (f"\ninsertion of {ic['fireworks']:,} Fireworks: LaunchPad.bulk_add_wfs {ic['bulk_add_wfs_s']:.2f} s, "
                f"pymongo insert_many {ic['pymongo_insert_many_s']:.2f} s -> used {ic['used']}")
    return out


def table_rss(results: dict[str, Any]) -> str:
    rows = []
    sc = results.get("scale", {})
    if sc.get("rows"):
        rows.append([f"manager (scale, {sc['rows'][-1]['fireworks']:,} Fireworks)",
                     max(r["peak_rss_mib"] for r in sc["rows"])])
    ov = results.get("overhead", {})
    if ov.get("ours"):
        rows.append(["pilot worker (overhead)", ov["ours"]["peak_rss_mib"]])
        rows.append(["pilot worker's Firework child", ov["ours"]["peak_child_rss_mib"]])
        rows.append(["rlaunch rapidfire (overhead)", ov["rlaunch"]["peak_rss_mib"]])
    pk = results.get("packing", {})
    if pk.get("ours"):
        rows.append(["pilot worker --pack (packing)", pk["ours"]["peak_rss_mib"]])
        rows.append(["its Firework children (packing)", pk["ours"]["peak_child_rss_mib"]])
        rows.append(["rlaunch multi (packing)", pk["rlaunch"]["peak_rss_mib"]])
        rows.append(["its processes (packing)", pk["rlaunch"]["peak_child_rss_mib"]])
    for name in NAMES:
        v = results.get(name, {}).get("server_peak_rss_mib")
        if v is not None:
            rows.append([f"embedded server ({name})", v])
    return fmt_table(["process", "peak RSS MiB"], rows) if rows else "(no RSS measured)"


def table_dbserver(res: dict[str, Any]) -> str:
    from benchmarks import dbserver
    return dbserver.table(res)


def table_replay(res: dict[str, Any]) -> str:
    from benchmarks import replay
    return replay.table(res)


def table_packing(res: dict[str, Any]) -> str:
    from benchmarks import packing
    return packing.table(res)


TABLES = {"submission": table_submission, "overhead": table_overhead, "waste": table_waste, "scale": table_scale,
          "dbserver": table_dbserver, "replay": table_replay, "packing": table_packing}


def print_tables(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    dirty = m.get("uncommitted_changes_in") or []
    print(f"\n=== fireworks-pilot benchmarks ({results['mode']}) - {m['date']} - {m['cores']} cores, "
          f"{m['memory_gib']} GiB, {m['os']}, FireWorks {m['fireworks']}, database: {m['mongodb_uri']}; "
          f"commit {m.get('commit')}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else ""))
    for name in results["only"]:
        la = results["loadavg"].get(name, {"seconds": 0, "before": "-", "after": "-"})
        print(f"\n--- {name} ({la['seconds']:.0f} s; load average before {la['before']}, after {la['after']})")
        if name in results["benchmarks"]:
            print(TABLES[name](results["benchmarks"][name]))
        else:
            print(f"FAILED: {results['errors'].get(name, 'not run').splitlines()[0]}")
    print("\n--- peak RSS")
    print(table_rss(results["benchmarks"]))
    print("\n--- goals (issue 18): ours next to the baseline measured in this run (or recorded, where FireWorks has "
          "no counterpart)")
    print(goals.table(results["benchmarks"]))
    print(f"\nresults: {path}")


# ============================================================================ main
def run_benchmark(name: str, mode: str, repeat: int | None) -> dict[str, Any]:
    sz = SIZES[mode][name]
    if name == "submission":
        from benchmarks import submission
        return submission.run(sz["sizes"], cap=sz["cap"], default_interval_for=sz["default_interval_for"], log=log)
    if name == "overhead":
        from benchmarks import overhead
        return overhead.run(sz["n"], repeat=repeat or sz["repeat"], log=log)
    if name == "waste":
        from benchmarks import waste
        return waste.run(waste.SIZES[sz], log=log)
    if name == "scale":
        from benchmarks import scale
        return scale.run(sz["sizes"], n_clusters=sz["clusters"], log=log)
    if name == "dbserver":
        from benchmarks import dbserver
        return dbserver.run(sz["n"], log=log)
    if name == "replay":
        from benchmarks import replay
        return replay.run(sz, log=log)
    if name == "packing":
        from benchmarks import packing
        p = packing.SIZES[sz]
        return packing.run(p["n"], p["sleep"], repeat=repeat or p["repeat"], log=log)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_scale-child":
        from benchmarks import scale
        return scale.child_main(argv[1:])
    if argv and argv[0] == "_fork-breakdown":
        from benchmarks import overhead
        return overhead.breakdown_main(argv[1:])
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    g.add_argument("--smoke", action="store_true", help="every benchmark at its tiniest size (about a minute)")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}")
    ap.add_argument("--json", type=Path, default=None,
                    help="result file (default benchmarks/results/results-DATE[-MODE].json)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="overhead: runs per system, the median is reported (default: 3 full, 1 quick/smoke)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the manager's log lines")
    ap.add_argument("--show", type=Path, default=None, metavar="JSON",
                    help="print the tables of an earlier result file and exit (runs nothing)")
    a = ap.parse_args(argv)
    if a.show is not None:
        import json

        print_tables(json.loads(a.show.read_text()), a.show)
        return 0
    only = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in only if n not in NAMES]
    if bad:
        ap.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(NAMES)}")
    mode = "quick" if a.quick else "smoke" if a.smoke else "full"
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # FireWorks' loggers are at DEBUG with handlers of their own; what they propagate is filtered here
        handler.setLevel(logging.INFO if a.verbose else logging.WARNING)
    for noisy in ("paramiko", "launchpad", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.json or REPO / "benchmarks" / "results" / f"results-{stamp}{'' if mode == 'full' else '-' + mode}.json"
    results: dict[str, Any] = {"machine": machine_info(), "mode": mode, "only": only, "benchmarks": {},
                               "loadavg": {}, "errors": {}}
    machine = results["machine"]
    log(f"fireworks-pilot benchmarks ({mode}): {', '.join(only)}; machine {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {machine['os']}; load {machine['loadavg_start']}")
    failed = False
    for name in only:
        t0 = time.time()
        before = loadavg()
        state = source_state()   # the tree is shared and may change between benchmarks: record it for each
        try:
            results["benchmarks"][name] = run_benchmark(name, mode, a.repeat)
        except BenchError as exc:
            failed = True
            results["errors"][name] = str(exc)
            log(f"{name}: FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken benchmark must not lose the others' results: report, go on
            failed = True
            results["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            log(f"{name}: FAILED with an unexpected error:\n{traceback.format_exc()}")
        results["loadavg"][name] = {"before": before, "after": loadavg(), "seconds": round(time.time() - t0, 1),
                                    "source_at_start": state}
        write_json(out_path, results)
    results["machine"]["loadavg_end"] = loadavg()
    results["goals"] = goals.as_json(results["benchmarks"])
    write_json(out_path, results)
    print_tables(results, out_path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
