"""Benchmark 6, seed-scale replay (issue 18): a whole campaign of segmented MD runs over four clusters.

``full``: 400 runs x 50 segments = 20,000 segments of 4 hours each (the campaign of issue 18), over four
SLURM clusters with different wall times, limits, slots, queue waits and node-failure rates. Reported:
pilots submitted against the minimum needed, total idle pilot time, segments killed, work redone, the
makespan against a lower bound, and the manager's and the LaunchPad server's CPU time and peak RSS over the
whole campaign.

What is real and what is simulated, and why:

* **real**: the manager (:class:`pilot.manager.cycle.Manager`: its cycle, policy, demand, tracking, liveness
  rule, reruns, holds, records), loaded from real config files (``pilot.yaml`` and one cluster YAML per
  cluster, as ``pilot manager run`` loads them), in a process of its own; its SLURM adapter parsing every
  answer; the LaunchPad (the embedded server that ``benchmarks.common.Database`` starts, or
  ``MONGODB_URI``) with real FireWorks documents: the MD workflow of :mod:`tasks.workflow`, checked out and
  completed with FireWorks' own calls, the next segment added by :func:`tasks.chain.next_additions`; the
  worker's pull query, its "nothing fits" rule and its heartbeat/exit records (:mod:`benchmarks.replay_sim`).
* **simulated**: the batch systems (:mod:`benchmarks.replay_slurm`: queue waits, slots, time limits, node
  failures, answering ``sbatch``/``squeue``/``sacct``/``scancel``/``cat`` with SLURM's exact text), the
  running time of each segment and its checkpoints, and time itself: a virtual clock, given to the manager
  through its ``clock`` argument and to the heartbeat through its module's ``time``.
* why: 20,000 real segments of hours need weeks of real pilots; segments of seconds would measure job
  start-up and SLURM's one-minute time-limit tick (see the waste benchmark) instead of the manager. On a
  virtual clock the manager, its policy and the database do all their real work (every cycle, every
  checkout and completion) and the campaign takes minutes. What a simulation cannot show, the other
  benchmarks measure on the real clusters (submission, waste).

Bounds: the makespan can be no shorter than the total work divided by the slots of all clusters (each pilot
runs one segment at a time; a cluster's slots are ``min(capacity, max_running)``) nor than one run (its
segments run one after another); the pilots needed are at least the total work divided by the most work one
pilot can do (the longest wall time less what ends every segment before the worker's stop time:
``walltime_margin / 2 + stop_margin_s``).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import REPO, Database, fmt_table, loadavg, proc_cpu_s, ratio, short_id
from benchmarks.replay_sim import Campaign, Workload
from benchmarks.replay_slurm import ClusterSpec, SimSlurm, slurm_minutes

URI_ENV = "PILOT_BENCH_URI"
CATEGORY = "md"

#: the four clusters at ``full`` size: (spec, wall time, max_running, max_queued); smaller sizes divide the
#: slots and limits by their ``scale`` (at least 1)
CLUSTERS: list[tuple[ClusterSpec, str, int, int]] = [
    (ClusterSpec("alpha", capacity=80, wait_median=900, node_mtbf_h=5000), "2-00:00:00", 80, 10),
    (ClusterSpec("beta", capacity=60, wait_median=3600, node_mtbf_h=1000), "1-00:00:00", 60, 10),
    (ClusterSpec("gamma", capacity=50, wait_median=6 * 3600, node_mtbf_h=5000), "2-00:00:00", 50, 5),
    (ClusterSpec("delta", capacity=30, wait_median=300, node_mtbf_h=400), "12:00:00", 40, 10),
]
MARGIN_S = 600
IDLE_TIMEOUT_S = 300
HEARTBEAT_S = 60

SIZES: dict[str, dict[str, Any]] = {
    "full": {"runs": 400, "segments": 50, "segment_s": 4 * 3600, "scale": 1, "poll": 600},
    "quick": {"runs": 40, "segments": 10, "segment_s": 4 * 3600, "scale": 10, "poll": 300},
    # smoke: short segments (few cycles), and nodes that fail every 4 hours on average (the rerun path runs)
    "smoke": {"runs": 4, "segments": 3, "segment_s": 3600, "scale": 40, "poll": 300, "node_mtbf_h": 4.0},
}


# ============================================================================ set-up
def _clusters(scale: int, mtbf_h: float | None = None) -> list[tuple[ClusterSpec, str, int, int]]:
    """:data:`CLUSTERS` with slots and limits divided by ``scale``, and another node MTBF if given."""
    out = []
    for spec, wt, run, queued in CLUSTERS:
        mtbf = spec.node_mtbf_h if mtbf_h is None else mtbf_h
        s = ClusterSpec(spec.name, capacity=max(1, spec.capacity // scale), wait_median=spec.wait_median,
                        wait_sigma=spec.wait_sigma, node_mtbf_h=mtbf)
        out.append((s, wt, max(1, run // scale), max(1, queued // scale)))
    return out


def write_config(cfg_dir: Path, lp_file: Path, clusters: list[tuple[ClusterSpec, str, int, int]], poll: float,
                 prefix: str) -> None:
    """``pilot.yaml`` and one cluster file per cluster, as a user would write them for these clusters."""
    (cfg_dir / "clusters").mkdir(parents=True, exist_ok=True)
    known_hosts = cfg_dir / "known_hosts"   # no SSH happens (the transport is simulated); the config asks for one
    known_hosts.write_text("")
    (cfg_dir / "pilot.yaml").write_text(yaml.safe_dump({
        "launchpad_file": str(lp_file), "poll_interval": poll, "log_dir": str(cfg_dir / "logs"),
        "max_reruns": 10, "job_name_prefix": prefix}))
    for k, (spec, walltime, max_running, max_queued) in enumerate(clusters):
        (cfg_dir / "clusters" / f"{spec.name}.yaml").write_text(yaml.safe_dump({
            "scheduler": "slurm", "host": f"198.51.100.{11 + k}", "user": spec.user, "known_hosts": str(known_hosts),
            "categories": [CATEGORY],
            "launchpad_file": "/sim/my_launchpad.yaml", "work_dir": f"/sim/{spec.name}",
            "python": "/opt/pilot-venv/bin/python",
            "pilot": {"walltime": walltime, "cores": 1, "partition": "compute"},
            "walltime_margin": MARGIN_S, "idle_timeout": IDLE_TIMEOUT_S, "heartbeat_interval": HEARTBEAT_S,
            "grace": 60, "fireworks_per_pilot": 1,
            "limits": {"max_queued": max_queued, "max_running": max_running}}))


def add_runs(lp: Any, work: Workload) -> float:
    """The campaign's first segments (each adds the next as it completes); returns the seconds it took."""
    from tasks.workflow import make_md_workflow

    t0 = time.perf_counter()
    wfs = [make_md_workflow(f"/sim/runs/run{r}", "gromacs", name=f"run{r}", md_category=CATEGORY,
                            segment_hours=work.segment_s / 3600.0, startup_slack_s=work.slack_s)
           for r in range(work.runs)]
    for k in range(0, len(wfs), 100):
        lp.bulk_add_wfs(wfs[k:k + 100])
    return time.perf_counter() - t0


# ============================================================================ the manager's process
class ManagerProcess:
    """The manager in its own process (:mod:`benchmarks.replay_child`); :meth:`cycle` runs one cycle at a
    virtual time and answers its commands from the simulated clusters."""

    def __init__(self, cfg_dir: Path, db_name: str, uri: str, clusters: dict[str, SimSlurm], log_path: Path) -> None:
        self.clusters = clusters
        self.log_fh = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.replay_child", "--config-dir", str(cfg_dir),
                                      "--db", db_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log_fh, text=True, bufsize=1, cwd=REPO,
                                     env=dict(os.environ, TQDM_DISABLE="1", **{URI_ENV: uri}))
        self.now = 0.0

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log_fh.flush()
            tail = Path(self.log_fh.name).read_text()[-3000:]
            raise RuntimeError(f"the manager process ended (exit {self.proc.wait()}); its log ends:\n{tail}")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cycle(self, now: float) -> dict[str, Any]:
        self.now = now
        self._send({"op": "cycle", "now": now})
        while True:
            msg = self._read()
            if msg["op"] == "done":
                return msg
            c = self.clusters[msg["cluster"]]
            if msg["op"] == "put":
                c.put(msg["path"], msg["data"])
                self._send({"ok": True})
            else:
                rc, out, err = c.execute(msg["argv"], int(now))
                self._send({"rc": rc, "out": out, "err": err})

    def close(self, ok: bool = True) -> dict[str, Any]:
        """End the manager's process: its totals when it ends normally; killed when the replay failed (it may
        be waiting for an answer)."""
        if not ok and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.poll() is not None:
            self.log_fh.close()
            return {"exit": self.proc.returncode}
        try:
            self._send({"op": "exit"})
            return self._read()
        finally:
            self.proc.wait(timeout=60)
            self.log_fh.close()


# ============================================================================ the benchmark
def run(size: str = "full", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Replay one campaign (``SIZES[size]``) and return everything measured (JSON-able)."""
    sz = SIZES[size]
    work = Workload(runs=sz["runs"], segments=sz["segments"], segment_s=float(sz["segment_s"]))
    clusters = _clusters(int(sz["scale"]), sz.get("node_mtbf_h"))
    db = Database().start()
    tmp = Path(tempfile.mkdtemp(prefix="pilot-bench-replay-"))
    out: dict[str, Any] = {"size": size, **sz, "loadavg_before": loadavg()}
    try:
        lp = db.launchpad()
        out["insert_s"] = add_runs(lp, work)
        lp_file = tmp / "my_launchpad.yaml"
        lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
        os.chmod(lp_file, 0o600)
        write_config(tmp / "config", lp_file, clusters, float(sz["poll"]), "rp" + short_id()[:4])
        rng = random.Random(work.seed)
        sims = {spec.name: SimSlurm(spec, random.Random(rng.random()), f"/sim/{spec.name}")
                for spec, *_ in clusters}
        srv0 = db.server_stats(lp)
        srv_cpu0 = proc_cpu_s(db.server_pid)
        mgr = ManagerProcess(tmp / "config", lp.db.name, db.uri, sims, tmp / "manager.log")
        ok = False
        try:
            t0 = time.perf_counter()
            camp = Campaign(lp, sims, work, mgr.cycle, float(sz["poll"]), t0=float(int(time.time())), log=log)
            camp.run()
            out["replay_wall_s"] = time.perf_counter() - t0
            ok = True
        finally:
            out["manager"] = mgr.close(ok)
        srv_cpu1 = proc_cpu_s(db.server_pid)
        out["server"] = {"cpu_s": None if srv_cpu0 is None or srv_cpu1 is None else srv_cpu1 - srv_cpu0,
                         "peak_rss_mib": db.server_peak_mib(),
                         "commands": _total(Database.stats_diff(db.server_stats(lp), srv0))}
        out.update(summarize(camp, clusters, work, sims))
        out["audit"] = audit(lp, work)
        out["manager_log_tail"] = (tmp / "manager.log").read_text()[-1500:] if out["audit"]["problems"] else ""
    finally:
        db.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_after"] = loadavg()
    return out


def _total(d: dict[str, int] | None) -> int | None:
    return None if d is None else sum(d.values())


# ============================================================================ what it measured
def bounds(work: Workload, clusters: list[tuple[ClusterSpec, str, int, int]]) -> dict[str, Any]:
    """The lower bounds of the module docstring (makespan, pilots)."""
    from tasks.contract import STOP_AT_MARGIN_S

    total = work.runs * work.target_s
    slots = sum(min(spec.capacity, max_running) for spec, _wt, max_running, _q in clusters)
    usable = {spec.name: slurm_minutes(wt) - MARGIN_S / 2 - STOP_AT_MARGIN_S for spec, wt, _r, _q in clusters}
    return {"work_s": total, "runs": work.runs, "segments_nominal": work.runs * work.segments, "slots": slots,
            "longest_run_s": work.target_s, "makespan_by_slots_s": total / slots,
            "makespan_lower_bound_s": max(total / slots, work.target_s), "most_work_per_pilot_s": usable,
            "min_pilots": math.ceil(total / max(usable.values()))}


def summarize(camp: Campaign, clusters: list[tuple[ClusterSpec, str, int, int]], work: Workload,
              sims: dict[str, SimSlurm]) -> dict[str, Any]:
    """The campaign's numbers: pilots, idle time, kills, redone work, makespan, manager cycles."""
    b = bounds(work, clusters)
    t = camp.tally
    # the fewest pilots that could have done the work each cluster did: no pilot does more than its usable time
    per_pilot = b["most_work_per_pilot_s"]
    min_for_work = sum(math.ceil(w / per_pilot[c]) for c, w in t.useful_by_cluster.items() if w > 0)
    jobs = [j for c in sims.values() for j in c.jobs.values()]
    started = [j for j in jobs if j.start is not None]
    pilot_s = float(sum((j.end or j.start or 0) - (j.start or 0) for j in started))
    cyc = camp.cycles
    makespan = (camp.done_at - camp.t0) if camp.done_at is not None else None
    return {
        "bounds": b, "complete": camp.done_at is not None, "stalled": camp.stalled, "segments_done": len(t.completions),
        "runs_finished": t.runs_done, "segments_cut_by_deadline": t.cut_by_deadline, "segments_no_time": t.no_time,
        "pilots_submitted": len(jobs), "pilots_started": len(started), "min_pilots": b["min_pilots"],
        "min_pilots_for_work_done": min_for_work, "useful_s_by_cluster": dict(t.useful_by_cluster),
        "pilot_s": pilot_s, "busy_s": t.busy_s, "idle_s": pilot_s - t.busy_s, "useful_s": b["work_s"],
        "utilisation_busy": t.busy_s / pilot_s if pilot_s else None,
        "utilisation_useful": b["work_s"] / pilot_s if pilot_s else None,
        "attempts": t.attempts, "killed": t.killed, "killed_by": t.killed_by, "redone_s": t.redone_s,
        "out_of_order": t.out_of_order, "worker_exits": t.exits,
        "makespan_s": makespan, "makespan_lower_bound_s": b["makespan_lower_bound_s"],
        "makespan_ratio": ratio(makespan, b["makespan_lower_bound_s"]),
        "manager_cycles": len(cyc), "manager_cycle_cpu_s": sum(c["cpu_s"] for c in cyc),
        "manager_cycle_wall_s": sum(c["wall_s"] for c in cyc),
        "manager_cycle_max_wall_s": max((c["wall_s"] for c in cyc), default=None),
        "manager_db_commands": sum(c["db_commands"] for c in cyc),
        "manager_reruns": sum(len(c["reruns"]) for c in cyc), "manager_fizzled": sum(len(c["fizzled"]) for c in cyc),
        "manager_cycle_errors": sum(1 for c in cyc if c["errors"]),
        "pilots_db_s": t.db_s, "progress": camp.samples,
        "clusters": {n: c.summary() for n, c in sims.items()},
    }


def audit(lp: Any, work: Workload) -> dict[str, Any]:
    """What the LaunchPad holds at the end, read from FireWorks' documents (not from the simulation's own
    counts): each run's md Fireworks are segments 1..k, each completed by exactly one launch, in order, their
    checkpoints moving forward to the run's target with the last one FINISHED; nothing left RUNNING."""
    problems: list[str] = []
    states: dict[str, int] = {}
    fw_seg: dict[int, tuple[int, int]] = {}
    attempts = 0
    for d in lp.fireworks.find({}, {"fw_id": 1, "name": 1, "state": 1, "launches": 1, "archived_launches": 1}):
        states[d["state"]] = states.get(d["state"], 0) + 1
        run_s, _md, seg_s = str(d["name"]).split("-")
        fw_seg[d["fw_id"]] = (int(run_s.removeprefix("run")), int(seg_s))
        attempts += len(d.get("launches") or []) + len(d.get("archived_launches") or [])
    if set(states) != {"COMPLETED"}:
        problems.append(f"Firework states at the end: {states}")
    done: dict[int, list[tuple[Any, int, dict[str, Any]]]] = {}
    completed = 0
    for launch in lp.launches.find({"state": "COMPLETED"}, {"fw_id": 1, "time_end": 1, "action.stored_data": 1}):
        run, seg = fw_seg[launch["fw_id"]]
        done.setdefault(run, []).append((launch["time_end"], seg, (launch.get("action") or {}).get("stored_data")
                                         or {}))
        completed += 1
    segs_by_run: dict[int, list[int]] = {}
    for d in fw_seg.values():
        segs_by_run.setdefault(d[0], []).append(d[1])
    target = int(work.target_s)
    for run in range(work.runs):
        segs = sorted(segs_by_run.get(run, []))
        got = sorted(done.get(run, []), key=lambda x: x[0])
        steps = [int(r.get("checkpoint_step") or -1) for _t, _s, r in got]
        why = None
        if segs != list(range(1, len(segs) + 1)) or not segs:
            why = f"its md Fireworks are segments {segs}"
        elif [s for _t, s, _r in got] != segs:
            why = f"its segments completed as {[s for _t, s, _r in got]}"
        elif steps != sorted(steps) or steps[-1] != target or got[-1][2].get("outcome") != "finished":
            why = f"its checkpoints went {steps} (target {target}), last outcome {got[-1][2].get('outcome')}"
        if why:
            problems.append(f"run {run}: {why}")
    return {"fireworks": sum(states.values()), "states": states, "attempts": attempts,
            "completed_launches": completed, "problems": problems[:10],
            "reruns_counted": sum(int(d.get("count") or 0) for d in lp.db["pilot_reruns"].find({}, {"count": 1}))}


def table(res: dict[str, Any]) -> str:
    """The replay's numbers next to their bounds."""
    b = res["bounds"]
    h = 3600.0
    mgr, srv = res["manager"], res["server"]
    rows = [
        ["runs finished", res["runs_finished"], b["runs"], ratio(res["runs_finished"], b["runs"])],
        ["segments done (nominal)", res["segments_done"], b["segments_nominal"],
         ratio(res["segments_done"], b["segments_nominal"])],
        ["segments cut short by a pilot's deadline", res["segments_cut_by_deadline"], None, None],
        ["segments with no time to start", res["segments_no_time"], None, None],
        ["pilots submitted (vs all work on the longest pilots)", res["pilots_submitted"], res["min_pilots"],
         ratio(res["pilots_submitted"], res["min_pilots"])],
        ["pilots started (vs each cluster's work / its pilots' time)", res["pilots_started"],
         res.get("min_pilots_for_work_done"), ratio(res["pilots_started"], res.get("min_pilots_for_work_done"))],
        ["pilot time h", res["pilot_s"] / h, None, None],
        ["idle pilot time h (share)", res["idle_s"] / h, None, ratio(res["idle_s"], res["pilot_s"])],
        ["utilisation useful/pilot", res["utilisation_useful"], None, None],
        ["segment attempts (vs segments done)", res["attempts"], res["segments_done"],
         ratio(res["attempts"], res["segments_done"])],
        ["segments killed", res["killed"], 0, None],
        ["Fireworks rerun by the manager", res["manager_reruns"], None, None],
        ["work redone h", res["redone_s"] / h, 0.0, None],
        ["makespan days (vs lower bound)", (res["makespan_s"] or 0) / 86400, b["makespan_lower_bound_s"] / 86400,
         res["makespan_ratio"]],
        ["manager cycles", res["manager_cycles"], None, None],
        ["manager CPU s (whole process)", mgr.get("cpu_s"), None, None],
        ["manager CPU s in cycles (ms per cycle)", res["manager_cycle_cpu_s"], None,
         1000 * (ratio(res["manager_cycle_cpu_s"], res["manager_cycles"]) or 0)],
        ["manager cycle wall s, longest", res["manager_cycle_max_wall_s"], None, None],
        ["manager peak RSS MiB", mgr.get("peak_rss_mib"), None, None],
        ["manager DB commands (per cycle)", res["manager_db_commands"], None,
         ratio(res["manager_db_commands"], res["manager_cycles"])],
        ["server CPU s (whole campaign)", srv.get("cpu_s"), None, None],
        ["server peak RSS MiB", srv.get("peak_rss_mib"), None, None],
        ["server commands", srv.get("commands"), None, None],
        ["replay wall time s", res.get("replay_wall_s"), None, None],
    ]
    head = (f"{res['runs']} runs x {res['segments']} segments of {res['segment_s'] / h:g} h over "
            f"{len(res['clusters'])} simulated SLURM clusters ({b['slots']} slots), manager poll "
            f"{res['poll']} s (virtual); killed by {res['killed_by'] or 'nothing'}; worker exits "
            f"{res['worker_exits']}; audit: {'; '.join(res['audit']['problems']) or 'all segments once, in order'}")
    return head + "\n" + fmt_table(["", "replay", "bound", "ratio"], rows)


def goal_rows(res: dict[str, Any]) -> list[list[Any]]:
    """Rows [name, ours, baseline-or-bound, goal, ratio] for the summary table of benchmarks/run.py."""
    h = 3600.0
    mgr, srv = res["manager"], res["server"]
    rss = mgr.get("peak_rss_mib")
    return [
        *([["replay: pilots started vs minimum", res["pilots_started"], res["min_pilots_for_work_done"],
             "close to the minimum (each cluster's work / its usable time per pilot)",
             ratio(res["pilots_started"], res["min_pilots_for_work_done"])]]
          if res.get("min_pilots_for_work_done") else  # results of before it was measured
          [["replay: pilots submitted vs minimum", res["pilots_submitted"], res["min_pilots"],
            "close to the minimum (work / most work per pilot)", ratio(res["pilots_submitted"], res["min_pilots"])]]),
        ["replay: makespan days vs lower bound", (res["makespan_s"] or 0) / 86400,
         res["makespan_lower_bound_s"] / 86400, "close to max(work / slots, one run)", res["makespan_ratio"]],
        ["replay: idle pilot h vs pilot h", res["idle_s"] / h, res["pilot_s"] / h, "small",
         ratio(res["idle_s"], res["pilot_s"])],
        ["replay: segments killed (node failures)", res["killed"], 0, "none killed by the wall time", None],
        ["replay: work redone h vs work h", res["redone_s"] / h, res["useful_s"] / h, "only since a checkpoint",
         ratio(res["redone_s"], res["useful_s"])],
        ["replay: manager CPU s (whole campaign)", mgr.get("cpu_s"), None, "-", None],
        ["replay: manager peak RSS MiB", rss, 150.0, "under 150 MiB", ratio(rss, 150.0)],
        ["replay: server CPU s (whole campaign)", srv.get("cpu_s"), None, "-", None],
        ["replay: server peak RSS MiB", srv.get("peak_rss_mib"), None, "-", None],
    ]


if __name__ == "__main__":
    # python3 -m benchmarks.replay [full|quick|smoke] [JSON]: one replay without benchmarks/run.py
    size = sys.argv[1] if len(sys.argv) > 1 else "smoke"
    os.environ.setdefault("TQDM_DISABLE", "1")   # FireWorks' bulk_add_wfs draws a progress bar otherwise
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the manager and the server on the way out
    result = run(size, log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    print(table(result))
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(json.dumps(result, indent=1, default=str))
