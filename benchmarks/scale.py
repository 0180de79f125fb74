"""Benchmark 4, manager scale: one manager cycle with N Fireworks in the LaunchPad and 20 clusters.

N READY one-Firework workflows (N = 1,000, 10,000, 100,000) spread over 20 categories, and 20 cluster files
(``scale00`` ... ``scale19``, one category each) that all point at the loopback sshd of ``pilotci``. The
documents are inserted directly with pymongo ``insert_many`` in the exact shape FireWorks writes (built from
``Firework.to_db_dict()`` / ``Workflow.to_db_dict()`` of a real Firework, with ``fw_id_assigner`` advanced);
``LaunchPad.bulk_add_wfs`` is timed on the first size for comparison.

The manager runs in its own process (so that its peak RSS is its own): cycle 1 submits one held pilot per
cluster (``limits: max_queued 1``), cycle 2 is the steady state (one ``squeue`` per cluster, nothing to
submit). Reported per cycle: wall time, database commands the manager's client sent (pymongo
``CommandListener``) and, on the embedded server, the commands it served and the seconds it spent in them
(``pilotStats``), plus scheduler calls, and the time spent in the demand aggregation
(:meth:`Manager.gather_demand`, once per cycle). Pilots are cancelled afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    REPO,
    BenchError,
    CommandCounter,
    Database,
    Slurm,
    busy_seconds,
    counting_factory,
    ensure_cluster_venv,
    make_remote_dir,
    require_infra,
    short_id,
    ssh_connects,
    vm_hwm_kb,
)

INSERT_BATCH = 200   # the embedded server checks a batch's new documents against each other: keep batches small


def _templates(category: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from fireworks import Firework, Workflow
    from fireworks.user_objects.firetasks.script_task import PyTask

    fw = Firework([PyTask(func="os.getpid")], spec={"_category": category}, name="scale", fw_id=1)
    wf = Workflow([fw], name="scale")
    fw_doc = fw.to_db_dict()
    fw_doc["state"] = "READY"       # a root Firework, as add_wf / bulk_add_wfs set it
    wf_doc = wf.to_db_dict()
    wf_doc["fw_states"] = {"1": "READY"}
    return fw_doc, wf_doc


def insert_direct(lp: Any, n: int, categories: list[str]) -> float:
    """Insert ``n`` READY one-Firework workflows with pymongo; returns the seconds it took."""
    fw_t, wf_t = _templates(categories[0])
    t0 = time.perf_counter()
    first = lp.fw_id_assigner.find_one_and_update({}, {"$inc": {"next_fw_id": n}})["next_fw_id"]
    for k in range(0, n, INSERT_BATCH):
        fws, wfs = [], []
        for i in range(first + k, first + min(n, k + INSERT_BATCH)):
            fw = dict(fw_t)
            fw["fw_id"] = i
            fw["name"] = f"scale-{i}"
            fw["spec"] = {**fw_t["spec"], "_category": categories[i % len(categories)]}
            fws.append(fw)
            wf = dict(wf_t)
            wf["nodes"] = [i]
            wf["links"] = {str(i): []}
            wf["fw_states"] = {str(i): "READY"}
            wf["name"] = f"scale-{i}"
            wfs.append(wf)
        lp.workflows.insert_many(wfs, ordered=False)
        lp.fireworks.insert_many(fws, ordered=False)
    return time.perf_counter() - t0


def insert_fireworks_api(lp: Any, n: int, categories: list[str]) -> float:
    """Insert ``n`` one-Firework workflows with FireWorks' own ``LaunchPad.bulk_add_wfs``."""
    from fireworks import Firework
    from fireworks.user_objects.firetasks.script_task import PyTask

    t0 = time.perf_counter()
    for k in range(0, n, INSERT_BATCH):
        lp.bulk_add_wfs([Firework([PyTask(func="os.getpid")], spec={"_category": categories[i % len(categories)]},
                                  name=f"scale-{i}") for i in range(k, min(n, k + INSERT_BATCH))])
    return time.perf_counter() - t0


# ============================================================================ the manager's process
#: The database URI reaches the child in its environment: it carries a password, and argv is visible in ps.
URI_ENV = "PILOT_BENCH_URI"


#: a directory: each manager cycle of the child is run under cProfile and its stats written there
PROFILE_ENV = "PILOT_BENCH_PROFILE_DIR"


def _profiled(fn: Callable[[], Any], cycle: int) -> Any:
    """``fn()``, under cProfile when PILOT_BENCH_PROFILE_DIR names a directory (``cycle<N>.pstats``)."""
    where = os.environ.get(PROFILE_ENV)
    if not where:
        return fn()
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        prof.dump_stats(str(Path(where) / f"cycle{cycle}.pstats"))


def child_main(argv: list[str]) -> int:
    """``run.py _scale-child``: build the manager, run cycles, print one JSON line with the measurements."""
    ap = argparse.ArgumentParser(prog="run.py _scale-child")
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--cycles", type=int, default=2)
    a = ap.parse_args(argv)
    from fireworks import LaunchPad

    from pilot.config import load_config
    from pilot.manager.cycle import Manager

    counter = CommandCounter()
    lp = LaunchPad(host=os.environ[URI_ENV], name=a.db, uri_mode=True, logdir=None, strm_lvl="ERROR",
                   mongoclient_kwargs={"event_listeners": [counter.listener]})
    cfg = load_config(Path(a.config_dir))
    factory, made = counting_factory()
    t0 = time.perf_counter()
    mgr = Manager(cfg, lp, transport_factory=factory)
    init_s = time.perf_counter() - t0
    # time the demand aggregation inside each cycle (an instance attribute wrapping the real method)
    agg_times: list[float] = []
    real_gather = mgr.gather_demand

    def timed_gather() -> Any:
        t = time.perf_counter()
        try:
            return real_gather()
        finally:
            agg_times.append(time.perf_counter() - t)

    mgr.gather_demand = timed_gather  # type: ignore[method-assign]
    cycles = []
    try:
        for _ in range(a.cycles):
            agg_times.clear()
            before = counter.snapshot()
            cmd_before = {id(t): dict(t.commands) for t in made}
            t0, cpu0 = time.perf_counter(), time.process_time()
            report = _profiled(mgr.run_cycle, len(cycles) + 1)
            t1 = time.perf_counter()
            wall, cpu = t1 - t0, time.process_time() - cpu0
            ssh = busy_seconds([iv for t in made for iv in t.intervals], t0, t1)
            db = CommandCounter.diff(counter.snapshot(), before)
            sched: dict[str, int] = {}
            for t in made:
                prev = cmd_before.get(id(t), {})
                for k, v in t.commands.items():
                    if v - prev.get(k, 0):
                        sched[k] = sched.get(k, 0) + v - prev.get(k, 0)
            cycles.append({"wall_s": wall, "cpu_s": cpu, "ssh_busy_s": ssh, "wall_without_ssh_s": wall - ssh,
                           "db_commands": sum(db.values()), "db_commands_by_name": db,
                           "scheduler_commands": sched, "submitted": len(report.submitted),
                           "submitted_jobs": [s["job_id"] for s in report.submitted], "errors": report.errors,
                           "ready": sum(d.ready for d in report.demand.values()),
                           "aggregations": len(agg_times), "aggregation_s": sum(agg_times)})
        connects = ssh_connects(made)
    finally:
        mgr.close()
    print(json.dumps({"init_s": init_s, "cycles": cycles, "ssh_connects": connects,
                      "peak_rss_mib": round((vm_hwm_kb(os.getpid()) or 0) / 1024, 1)}))
    return 0


# ============================================================================ the benchmark
def run(sizes: list[int], n_clusters: int = 20, log: Callable[[str], None] = print) -> dict[str, Any]:
    from tests.manager.helpers import ssh_cluster, write_config

    clusters = require_infra()
    info = clusters["pilotci"]
    venv = ensure_cluster_venv(info.venv)
    slurm = Slurm(info.slurm_conf or "/etc/slurm/slurm.conf", info.user)
    db = Database().start()
    remote = make_remote_dir("pilot-bench-scale-", info.user)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"clusters": n_clusters, "rows": rows}
    try:
        # which insertion is faster: measured once on min(first size, 1000) Fireworks
        n_cmp = min(sizes[0], 1000)
        cats = [f"c{k:02d}" for k in range(n_clusters)]
        lp = db.launchpad()
        api_s = insert_fireworks_api(lp, n_cmp, cats)
        db.drop(lp)
        lp = db.launchpad()
        direct_s = insert_direct(lp, n_cmp, cats)
        db.drop(lp)
        out["insert_compare"] = {"fireworks": n_cmp, "bulk_add_wfs_s": api_s, "pymongo_insert_many_s": direct_s,
                                 "used": "pymongo insert_many" if direct_s <= api_s else "bulk_add_wfs"}
        use_direct = direct_s <= api_s
        for n in sizes:
            tag = short_id()
            cats = [f"sc{tag}{k:02d}" for k in range(n_clusters)]
            prefix = "bc" + tag[:4]
            lp = db.launchpad()
            log(f"scale: inserting {n:,} Fireworks ({out['insert_compare']['used']}) ...")
            ins = insert_direct(lp, n, cats) if use_direct else insert_fireworks_api(lp, n, cats)
            lp_file = remote / f"lp-{tag}.yaml"
            lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
            os.chmod(lp_file, 0o644)
            cfg_dir = Path(tempfile.mkdtemp(prefix="pilot-bench-cfg-"))
            cl = {f"scale{k:02d}": ssh_cluster(info, str(remote / f"scale{k:02d}"), str(lp_file), [cats[k]], venv,
                                               fireworks_per_pilot=4, limits={"max_queued": 1, "max_running": 1},
                                               pilot={"walltime": "5", "cores": 1, "partition": "debug",
                                                      "extra_directives": ["#SBATCH --hold"]})
                  for k in range(n_clusters)}
            write_config(cfg_dir, lp_file, cl, poll_interval=60, job_name_prefix=prefix)
            log(f"scale: {n:,} Fireworks, {n_clusters} clusters: two manager cycles in a fresh process ...")
            before = db.server_stats(lp)
            before_s = _server_seconds(lp) if db.server else None
            try:
                res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "_scale-child",
                                      "--config-dir", str(cfg_dir), "--db", lp.db.name],
                                     capture_output=True, text=True, timeout=1800, cwd=REPO, check=False,
                                     env=dict(os.environ, TQDM_DISABLE="1", **{URI_ENV: db.uri}))
            finally:
                slurm.cancel_names(prefix)
                shutil.rmtree(cfg_dir, ignore_errors=True)
            if res.returncode != 0 or not res.stdout.strip():
                raise BenchError(f"the manager process failed (exit {res.returncode}): {res.stderr[-2000:]}")
            child = json.loads(res.stdout.strip().splitlines()[-1])
            srv = Database.stats_diff(db.server_stats(lp), before)
            srv_s = (_server_seconds(lp) - before_s) if before_s is not None else None
            for c in child["cycles"]:
                c.pop("submitted_jobs", None)
            rows.append({"fireworks": n, "insert_s": ins, **child,
                         "server_commands_total": sum(srv.values()) if srv is not None else None,
                         "server_seconds_total": srv_s, "server_peak_rss_mib": db.server_peak_mib()})
            db.drop(lp)
    finally:
        out["server_peak_rss_mib"] = db.server_peak_mib()
        db.stop()
        shutil.rmtree(remote, ignore_errors=True)
    return out


def _server_seconds(lp: Any) -> float:
    stats = lp.connection.admin.command("pilotStats")
    return float(sum(v for k, v in stats.get("commandSeconds", {}).items() if k != "pilotStats"))
