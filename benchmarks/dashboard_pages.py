#!/usr/bin/env python3
"""Benchmark: the dashboard's pages with a long campaign's LaunchPad (issue 22: "a page with 100k Fireworks in
the LaunchPad renders in under 1 s": a benchmark, not a timed test).

A LaunchPad of N Fireworks (N = 100,000 by default) in the shape a real campaign leaves behind: one-Firework
workflows over 4 categories, each served by one of 4 clusters; the oldest 72 % have run (each with its launch:
an MD segment's ``steps_done`` and ``dt_ps`` in its stored data, so that the throughput page has trajectory to
add up; one in 50 FIZZLED, with an error), the next 1 % is RUNNING under running pilots, the newest 27 % are
READY; one pilot record per 50 launches of a category, spread over the last 14 days. Each asks
(``spec._pilot``) for an MD segment's 20 minutes and 4 cores, which the clusters' pilots take; a few of each
category ask for a day (work no pilot takes: ``pilot status`` then runs its filters), a few give their time as
an array (values an index holds as no single value). The documents are inserted
with pymongo ``insert_many`` in FireWorks' own shapes (built from ``to_db_dict()`` of a real Firework, Workflow
and Launch, as benchmarks/scale.py does), not by one ``add_wf`` each: 100,000 take about 20 s. Then the indexes
the manager creates at its start (:func:`pilot.manager.demand.ensure_demand_indexes`), as any LaunchPad a manager
has served has them (``--no-manager-indexes``: a LaunchPad no manager has seen yet).

Then ``pilot dashboard`` runs as its own process (its peak RSS is its own) on 127.0.0.1 with a token made by
``pilot dashboard token add``; this process logs in over HTTP and GETs each page once (timed as "first GET":
a page may cache what it computed) and then ``--repeat`` times, on one keep-alive connection: the overview, the
JSON the overview polls, a paginated list (the first and a deep page), a cluster page, a Firework page and the
throughput page. Reported per page: median, min and max seconds until the whole response is read, its size,
the CPU seconds per GET of the dashboard and of the database server, and both processes' peak RSS; next to
them, ``pilot status --json`` on the same LaunchPad. ``--browser`` adds the pages' load times in headless
Chromium (Navigation Timing).

Usage::

    python3 benchmarks/dashboard_pages.py                  # 100,000 Fireworks
    python3 benchmarks/dashboard_pages.py --n 20000 --repeat 5 --json /tmp/dash.json
    python3 benchmarks/dashboard_pages.py --generate-only  # only time the data generator

Needs no test cluster: it starts its own embedded LaunchPad server (``MONGODB_URI`` selects a MongoDB instead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Database,
    fmt_table,
    loadavg,
    machine_info,
    proc_cpu_s,
    source_state,
    vm_hwm_kb,
    write_json,
)
from tests.dashboard.browser import DashboardProcess, make_token, pilot_cli

INSERT_BATCH = 200   # the embedded server checks a batch's new documents against each other: small batches
CLUSTERS = ("alpha", "bravo", "charlie", "delta")
CATEGORIES = ("md", "md-long", "analysis", "post")
FW_PER_PILOT = 50
DAYS = 14
#: The campaign's progress: the oldest 72 % of the Fireworks ran (one in 50 of them FIZZLED), the next 1 % runs
#: now, the newest 27 % are READY.
DONE_SHARE, RUNNING_SHARE, FIZZLE_EVERY = 0.72, 0.01, 50
#: of each category's Fireworks, one in STUCK_EVERY waits for ever (too long), one in ODD_EVERY has an odd value
STUCK_EVERY, ODD_EVERY = 2500, 5000
#: Pages timed, in order: (label, path). ``{fw}`` is a FIZZLED Firework's id, ``{deep}`` a page number far in.
PAGES = (("overview", "/"),
         ("overview JSON (polled)", "/api/overview"),
         ("Fireworks list, page 1", "/fireworks?state=COMPLETED&page=1"),
         ("Fireworks list, deep page", "/fireworks?state=COMPLETED&page={deep}"),
         ("cluster page", "/cluster/alpha"),
         ("Firework page", "/fw/{fw}"),
         ("throughput", "/throughput"))


# ============================================================================ the campaign's documents
def _templates() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A Firework, a Workflow and a Launch document as FireWorks writes them (to_db_dict of real objects)."""
    from fireworks import Firework, FWorker, ScriptTask, Workflow
    from fireworks.core.firework import FWAction, Launch

    fw = Firework([ScriptTask.from_str("true")], spec={"_category": CATEGORIES[0]}, name="seg", fw_id=1)
    t = dt.datetime(2026, 1, 1)
    history = [{"state": "RUNNING", "created_on": t, "updated_on": t}, {"state": "COMPLETED", "created_on": t}]
    launch = Launch("COMPLETED", "/scratch", FWorker("w"), host="node01", ip="203.0.113.10",
                    action=FWAction(stored_data={}), launch_id=1, fw_id=1, state_history=history)
    return fw.to_db_dict(), Workflow([fw], name="seg").to_db_dict(), launch.to_db_dict()


def asks_of(j: int) -> dict[str, Any]:
    """``spec._pilot`` of the ``j``-th Firework: an MD segment's expected time and cores, which the clusters'
    pilots take; one in :data:`STUCK_EVERY` of each category asks for a day (longer than any pilot: ``pilot
    status`` lists it, so its filters run), and one in :data:`ODD_EVERY` gives its time as an array (a value
    the database's index holds as no single value)."""
    k = j // len(CATEGORIES)
    if k % STUCK_EVERY == STUCK_EVERY - 1:
        return {"walltime": 86400, "cores": 4}
    if k % ODD_EVERY == ODD_EVERY // 2:
        return {"walltime": [600, 1200], "cores": 4}
    return {"walltime": 1200, "min_walltime": 600, "cores": 4}


def state_of(j: int, n: int) -> str:
    """The state of the ``j``-th of ``n`` Fireworks (oldest first; the same N always gives the same counts)."""
    if j >= n * (DONE_SHARE + RUNNING_SHARE):
        return "READY"
    if j >= n * DONE_SHARE:
        return "RUNNING"
    return "FIZZLED" if j % FIZZLE_EVERY == FIZZLE_EVERY // 2 else "COMPLETED"


def _iso(t: float, offset: bool = False) -> str:
    """UTC time as FireWorks writes it: ``state_history`` and ``updated_on`` without an offset, a launch's
    ``time_start``/``time_end`` with ``+00:00``."""
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return d.isoformat() if offset else d.replace(tzinfo=None).isoformat()


def _launch(template: dict[str, Any], fw_id: int, launch_id: int, state: str, fworker: str, t_end: float,
            runtime: float, task: dict[str, Any]) -> dict[str, Any]:
    """A launch of a pilot's Firework: ``runtime`` seconds of an MD segment (500,000 steps of 2 fs = 1 ns)."""
    t_start = t_end - runtime
    history: list[dict[str, Any]] = [{"state": "RUNNING", "created_on": _iso(t_start), "updated_on": _iso(t_end)}]
    stored: dict[str, Any] = {"steps_done": 500_000, "dt_ps": 0.002}
    if state != "RUNNING":
        history.append({"state": state, "created_on": _iso(t_end)})
    if state == "FIZZLED":
        stored = {"_message": "runtime error during task", "_task": task,
                  "_exception": {"_stacktrace": "Traceback ...\nRuntimeError: gmx mdrun exited with 1\n",
                                 "_details": None}}
    return {**template, "launch_id": launch_id, "fw_id": fw_id, "state": state,
            "fworker": {**template["fworker"], "name": fworker}, "launch_dir": f"/scratch/pilot/{fworker}/{fw_id}",
            "time_start": _iso(t_start, True), "time_end": _iso(t_end, True) if state != "RUNNING" else None,
            "state_history": history, "action": {**template["action"], "stored_data": stored},
            "runtime_secs": runtime if state != "RUNNING" else None}


def _pilot(job: int, cluster: str, category: str, t_start: float, t_end: float, running: bool) -> dict[str, Any]:
    """A pilot record of the manager's (``pilots`` collection) that ran from ``t_start`` to ``t_end``."""
    name = f"pl-{category}-{job:06d}"
    return {"_id": name, "job_name": name, "job_id": str(100000 + job), "cluster": cluster, "category": category,
            "profile": "default", "state": "RUNNING" if running else "COMPLETED", "exit_code": None if running else 0,
            "submit_time": t_start - 600, "start_time": t_start,
            "end_time": None if running else t_end, "fworker": f"{cluster}-{name}"}


def generate(lp: Any, n: int, now: float | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Insert a campaign of ``n`` Fireworks into ``lp``'s database; returns the counts and the seconds taken.

    Fireworks ``fw_id`` and their launches are spread evenly over the last :data:`DAYS` days; every
    :data:`FW_PER_PILOT` launches belong to one pilot of the Firework's cluster (by category)."""
    fw_t, wf_t, launch_t = _templates()
    task = fw_t["spec"]["_tasks"][0]   # what a FIZZLED launch's stored data names as the failed task
    now = time.time() if now is None else now
    t0 = time.perf_counter()
    first = lp.fw_id_assigner.find_one_and_update({}, {"$inc": {"next_fw_id": n}})["next_fw_id"]
    first_launch = lp.fw_id_assigner.find_one_and_update({}, {"$inc": {"next_launch_id": n}})["next_launch_id"]
    counts: dict[str, int] = {}
    pilots: dict[int, dict[str, Any]] = {}
    span = DAYS * 86400.0
    # one cluster's Fireworks follow each other every `gap` seconds; each runs 90 % of that (20 minutes at most):
    # a pilot runs one at a time, busy most of its time, as in a real campaign
    gap = span * len(CLUSTERS) / n
    runtime = min(1200.0, 0.9 * gap)
    for k in range(0, n, INSERT_BATCH):
        fws, wfs, launches = [], [], []
        for i in range(first + k, first + min(n, k + INSERT_BATCH)):
            j = i - first
            state = state_of(j, n)
            counts[state] = counts.get(state, 0) + 1
            cat = CATEGORIES[j % len(CATEGORIES)]
            cluster = CLUSTERS[j % len(CLUSTERS)]
            t_end = now - span + span * (j + 1) / n
            if state == "RUNNING":   # started within the last segment's time, runs now
                t_end = now - runtime * (j % 10) / 10
            fw = {**fw_t, "fw_id": i, "name": f"seg-{cat}-{i}", "state": state, "created_on": _iso(now - span - 3600),
                  "spec": {**fw_t["spec"], "_category": cat, "_pilot": asks_of(j)},
                  "updated_on": _iso(t_end), "launches": [], "archived_launches": []}
            if state != "READY":
                job = j // (FW_PER_PILOT * len(CATEGORIES)) * len(CATEGORIES) + j % len(CATEGORIES)
                last = min(n - 1, (j // len(CATEGORIES) // FW_PER_PILOT + 1) * FW_PER_PILOT * len(CATEGORIES) - 1)
                pilot = pilots.setdefault(job, _pilot(job, cluster, cat, t_end - runtime - 30,
                                                      now - span + span * (last + 1) / n + 30, state == "RUNNING"))
                if state == "RUNNING":   # a pilot whose first Fireworks completed runs on
                    pilot.update(state="RUNNING", end_time=None, exit_code=None)
                fw["launches"] = [first_launch + j]
                launches.append(_launch(launch_t, i, first_launch + j, state, pilot["fworker"], t_end, runtime, task))
            fws.append(fw)
            wfs.append({**wf_t, "nodes": [i], "links": {str(i): []}, "parent_links": {}, "fw_states": {str(i): state},
                        "name": f"seg-{cat}-{i}", "state": state, "created_on": fw["created_on"],
                        "updated_on": fw["updated_on"]})
        lp.workflows.insert_many(wfs, ordered=False)
        lp.fireworks.insert_many(fws, ordered=False)
        if launches:
            lp.launches.insert_many(launches, ordered=False)
        if k and k % 20000 == 0:
            log(f"  {k:,} of {n:,} Fireworks inserted ({time.perf_counter() - t0:.0f} s)")
    docs = list(pilots.values())
    for k in range(0, len(docs), INSERT_BATCH):
        lp.db["pilots"].insert_many(docs[k:k + INSERT_BATCH], ordered=False)
    return {"fireworks": n, "by_state": dict(sorted(counts.items())), "pilots": len(docs),
            "launches": sum(v for s, v in counts.items() if s != "READY"), "insert_s": time.perf_counter() - t0,
            "a_fizzled_fw_id": first + next(j for j in range(n) if state_of(j, n) == "FIZZLED")}


# ============================================================================ the dashboard's config
def write_config_dir(root: Path, lp: Any) -> Path:
    """A config dir under ``root``: ``lp``'s LaunchPad file, pilot.yaml naming it, one cluster file per cluster
    (local scheduler: the dashboard draws its pages from the records, it never contacts a cluster for that)."""
    import yaml

    cfg = root / "cfg"
    (cfg / "clusters").mkdir(parents=True)
    lp.to_file(str(cfg / "my_launchpad.yaml"))
    (cfg / "pilot.yaml").write_text(yaml.safe_dump({"launchpad_file": str(cfg / "my_launchpad.yaml"),
                                                    "log_dir": str(root / "logs")}))
    for c, cat in zip(CLUSTERS, CATEGORIES, strict=True):
        (cfg / "clusters" / f"{c}.yaml").write_text(yaml.safe_dump({
            "scheduler": "local", "categories": [cat], "work_dir": str(root / "work" / c),
            "launchpad_file": str(cfg / "my_launchpad.yaml"), "python": sys.executable,
            "pilot": {"walltime": 3600, "cores": 4}}))
    return cfg


# ============================================================================ the benchmark
def time_pages(dash: DashboardProcess, pages: list[tuple[str, str]], repeat: int,
               server_pid: int | None) -> list[dict[str, Any]]:
    """GET each page ``repeat`` times (after one untimed warm-up GET): seconds until the body is read, and the
    CPU seconds the dashboard and the database server spent per GET (where the time goes)."""
    rows = []
    for label, path in pages:
        t0 = time.perf_counter()
        status, _, body = dash.request("GET", path)
        cold = time.perf_counter() - t0
        times = []
        cpu0 = (proc_cpu_s(dash.pid), proc_cpu_s(server_pid))
        for _ in range(repeat):
            t0 = time.perf_counter()
            status, _, body = dash.request("GET", path)
            times.append(time.perf_counter() - t0)
        cpu1 = (proc_cpu_s(dash.pid), proc_cpu_s(server_pid))
        cpu = [None if a is None or b is None else (b - a) / repeat for a, b in zip(cpu0, cpu1, strict=True)]
        rows.append({"page": label, "path": path, "status": status, "bytes": len(body),
                     "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                     "cold_s": cold, "runs": repeat, "dashboard_cpu_s": cpu[0], "server_cpu_s": cpu[1]})
    return rows


def time_in_browser(dash: DashboardProcess, token: str, pages: list[tuple[str, str]],
                    repeat: int) -> list[dict[str, Any]]:
    """Each page loaded ``repeat`` times in headless Chromium (tests/dashboard/browser.py), logged in: the
    browser's own Navigation Timing, from the request to the end of the load event (scripts run, the
    throughput plot drawn by uPlot included)."""
    from urllib.parse import urlsplit

    from tests.dashboard.browser import by_testid, start_browser, wait_until

    rows = []
    with start_browser() as driver:
        driver.get(dash.url + "/login")
        by_testid(driver, "login-token").send_keys(token)
        by_testid(driver, "login-submit").click()
        wait_until(driver, lambda d: urlsplit(d.current_url).path == "/", what="the overview after the login")
        for label, path in pages:
            if path.startswith("/api/"):
                continue
            times = []
            for _ in range(repeat + 1):
                driver.get(dash.url + path)
                got = urlsplit(driver.current_url)
                if got.path != urlsplit(path).path:   # e.g. sent to /login: that page was not measured
                    raise RuntimeError(f"the browser asked for {path} and got {driver.current_url}")
                nav = driver.execute_script("var e = performance.getEntriesByType('navigation')[0];"
                                            "return [e.responseEnd - e.startTime, e.loadEventEnd - e.startTime];")
                times.append((nav[0] / 1000, nav[1] / 1000))
            times = times[1:]   # the first load warms the caches, as the warm-up GET does
            rows.append({"page": label, "path": path,
                         "response_median_s": statistics.median(t[0] for t in times),
                         "load_median_s": statistics.median(t[1] for t in times),
                         "load_max_s": max(t[1] for t in times)})
    return rows


def run(n: int = 100_000, repeat: int = 5, log: Callable[[str], None] = print,
        pages: tuple[tuple[str, str], ...] = PAGES, browser: bool = False,
        manager_indexes: bool = True) -> dict[str, Any]:
    db = Database().start()
    tmp = Path(tempfile.mkdtemp(prefix="pilot-bench-dash-"))
    dash: DashboardProcess | None = None
    out: dict[str, Any] = {"n": n, "repeat": repeat}
    try:
        lp = db.launchpad()
        log(f"inserting a campaign of {n:,} Fireworks")
        out["campaign"] = gen = generate(lp, n, log=log)
        log(f"  {gen['insert_s']:.1f} s: {gen['by_state']}, {gen['launches']:,} launches, {gen['pilots']:,} pilots")
        if manager_indexes:   # what the manager's first cycle leaves in a campaign's LaunchPad
            from pilot.manager.demand import ensure_demand_indexes

            ensure_demand_indexes(lp.fireworks)
        out["manager_indexes"] = manager_indexes
        cfg = write_config_dir(tmp, lp)
        token = make_token(cfg)
        t0 = time.perf_counter()
        dash = DashboardProcess(cfg, tmp / "dashboard.log").start()
        out["dashboard_start_s"] = time.perf_counter() - t0
        dash.login(token)
        t0 = time.perf_counter()
        dash.request("GET", "/")   # while the server computes the throughput rows (as every 5 minutes)
        out["overview_during_throughput_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dash.request("GET", "/throughput")   # waits for the rows the server began computing at its start
        out["throughput_warm_up_s"] = time.perf_counter() - t0
        log(f"  the throughput rows were ready after {out['throughput_warm_up_s']:.1f} s more")
        deep = max(1, gen["by_state"].get("COMPLETED", 0) // 50 // 2)
        todo = [(label, path.format(fw=gen["a_fizzled_fw_id"], deep=deep)) for label, path in pages]
        out["load_before"] = loadavg()
        out["pages"] = time_pages(dash, todo, repeat, db.server_pid)
        t0 = time.perf_counter()
        pilot_cli(cfg, "status", "--json")
        out["pilot_status_json_s"] = time.perf_counter() - t0   # the same report on the command line
        if browser:
            log("the same pages in headless Chromium")
            out["browser"] = time_in_browser(dash, token, todo, repeat)
        out["load_after"] = loadavg()
        out["dashboard_peak_rss_mib"] = round((vm_hwm_kb(dash.pid) or 0) / 1024, 1) if dash.pid else None
        out["server_peak_rss_mib"] = db.server_peak_mib()
        return out
    finally:
        if dash is not None:
            dash.stop()
        db.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(res: dict[str, Any]) -> str:
    rows = [[r["page"], r["path"], r["status"], f"{r['bytes']:,}", r.get("cold_s"), r["median_s"], r["min_s"],
             r["max_s"], r.get("dashboard_cpu_s"), r.get("server_cpu_s"),
             "yes" if r["status"] == 200 and r["max_s"] < 1 else "NO"] for r in res["pages"]]
    c = res["campaign"]
    head = (f"dashboard pages with {c['fireworks']:,} Fireworks ({c['by_state']}; {c['launches']:,} launches, "
            f"{c['pilots']:,} pilots; inserted in {c['insert_s']:.1f} s), {res['repeat']} GETs each after a warm-up\n")
    out = head + fmt_table(["page", "path", "HTTP", "bytes", "first GET s", "median s", "min s", "max s",
                            "dashboard CPU s/GET", "DB server CPU s/GET", "< 1 s"], rows)
    if res.get("browser"):
        out += "\n\nin headless Chromium (Navigation Timing, medians; load = until the load event ended):\n"
        out += fmt_table(["page", "path", "response s", "load s", "load max s"],
                         [[r["page"], r["path"], r["response_median_s"], r["load_median_s"], r["load_max_s"]]
                          for r in res["browser"]])
    out += (f"\nthe overview while the dashboard computed the throughput rows: "
            f"{res.get('overview_during_throughput_s', 0):.2f} s (the rows took "
            f"{res.get('throughput_warm_up_s', 0):.1f} s more); the manager's demand indexes "
            f"{'present' if res.get('manager_indexes') else 'absent'}"
            f"\n`pilot status --json` on the same LaunchPad (a new process): {res.get('pilot_status_json_s', 0):.2f} s"
            f"\ndashboard peak RSS {res['dashboard_peak_rss_mib']} MiB, database server peak RSS "
            f"{res['server_peak_rss_mib']} MiB; dashboard started in {res['dashboard_start_s']:.2f} s; load average "
            f"{res['load_before']} before, {res['load_after']} after (goal, issue 22: every page under 1 s with "
            "100k Fireworks)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000, help="Fireworks in the LaunchPad (default 100,000)")
    ap.add_argument("--repeat", type=int, default=5, help="timed GETs per page (default 5)")
    ap.add_argument("--json", type=Path, help="write the results there (default benchmarks/results/...)")
    ap.add_argument("--generate-only", action="store_true", help="only insert the campaign and time that")
    ap.add_argument("--browser", action="store_true",
                    help="also load each page in headless Chromium (Debian's chromium + chromium-driver)")
    ap.add_argument("--no-manager-indexes", dest="manager_indexes", action="store_false",
                    help="leave out the indexes the manager creates (a LaunchPad no manager has served yet)")
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if a.generate_only:
        db = Database().start()
        try:
            gen = generate(db.launchpad(), a.n, log=log)
            log(f"{gen['fireworks']:,} Fireworks in {gen['insert_s']:.1f} s: {gen['by_state']}, "
                f"{gen['launches']:,} launches, {gen['pilots']:,} pilots; server peak RSS {db.server_peak_mib()} MiB")
        finally:
            db.stop()
        return 0
    res = run(a.n, a.repeat, log, browser=a.browser, manager_indexes=a.manager_indexes)
    print(table(res))
    res.update({"machine": machine_info(), "source": source_state(), "date": dt.datetime.now(dt.timezone.utc)
                .isoformat(timespec="seconds")})
    path = a.json or Path(__file__).resolve().parent / "results" / f"dashboard-{time.strftime('%Y%m%dT%H%M%S')}.json"
    write_json(path, res)
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
