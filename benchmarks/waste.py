"""Benchmark 3, wall-time waste: segmented work in short pilots, ``pilot worker`` versus ``rlaunch``.

A campaign of ``runs`` runs, each a chain of ``segments`` segments of about ``length`` seconds of work
(:mod:`benchmarks.segtask`: sleeps in steps, checkpoints every few seconds and on SIGTERM, adds its
continuation), is served by short pilots (``walltime`` of one or two minutes) on the real SLURM cluster
``pilotci``. The systems run *at the same time*, each on its own category, driven by one and the same
manager (so that submission, the policy and the recovery of lost Fireworks are identical):

The segments are the same in every system: each Firework carries ``spec._pilot.walltime`` (its work plus 5 s)
and ``min_walltime`` (``min_work`` plus 5 s), and a segment told the job's end (``PILOT_DEADLINE``, and our
worker's ``PILOT_STOP_AT``) sizes itself to it like an MD segment with ``-maxh`` (same rule,
:func:`tasks.segment.time_limit_s`), then saves and adds its continuation.

* ``ours``: cluster ``pilotci``, the standard job script with ``pilot worker``: it takes a segment when its
  ``walltime``, or its ``min_walltime`` (the tail of the pilot), fits the time left minus ``walltime_margin``,
  stops a running one (SIGTERM: the segment saves and continues elsewhere) at the deadline minus margin/2,
  logs SLURM's pre-walltime signal (``--signal=B:USR1@margin``) but goes by its deadline, and leaves at once
  when READY work fits no more;
* ``rlaunch``: plain FireWorks in the same job script: the worker replaced by
  ``rlaunch -w FWORKER rapidfire --timeout (walltime - margin) --sleep 5`` (a template that extends
  ``slurm.sh.j2``; the FWorker is named like our pilots, CLUSTER-JOBID, so that the manager can rerun what a
  killed pilot left RUNNING, more than plain FireWorks would do without ``lpad detect_lostruns``), no
  pre-walltime signal (``walltime_margin: 0``: rlaunch has no handler for it), and its tasks are not told the
  job's end (``env -u PILOT_DEADLINE``: plain FireWorks has none to tell), so segments run whole;
* ``rlaunch_close``: the same with ``--timeout (walltime - 5 s)``, a timeout set without knowing how long
  the Fireworks take;
* ``rlaunch_maxh``: ``rlaunch`` whose segments *are* told the job's end (as a user would hard-code ``-maxh``
  per job): the strongest baseline, rlaunch's tail filled by segments that shorten themselves.

Reported per system, from the segments' own attempt records and SLURM's accounting (``sacct``, as root):
segments killed by the scheduler (interrupted in a job that ended TIMEOUT), segments stopped by the pilot,
segment work redone (seconds of work done after the last checkpoint of an interrupted attempt), pilot time
(sum of the jobs' elapsed time), busy time (attempts running), utilisation = busy / pilot time and
useful / pilot time (useful = the campaign's work); how far past their wall time TIMEOUT jobs ran, segments
that were still running past the job's wall time (SLURM here enforces limits on a tick of up to ~30 s, a
grace that hides overruns at this time scale but not at hours-long ones), segments that sized themselves to
the deadline; where the pilot time that ran no segment went (start-up, gaps between segments, the tail after
the last one, jobs that ran none) and the wall time given back unused; and (from our workers' logs) how long
before the deadline SIGUSR1 came.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    REPO,
    Database,
    Slurm,
    chown_tree,
    ensure_cluster_venv,
    make_remote_dir,
    require_infra,
    short_id,
)


@dataclass(frozen=True)
class WasteSize:
    runs: int
    segments: int
    length: float          # mean seconds of work per segment; runs vary around it
    walltime_min: int      # pilot wall time, minutes (SLURM --time)
    margin: int            # our walltime_margin; rlaunch's --timeout is walltime - margin
    grace: int
    idle_timeout: int
    max_pilots: int        # per system: limits.max_queued and max_running
    timeout: float         # give up on the campaign after this many seconds
    min_work: float = 4.0  # a segment sizes itself to the pilot's time, but runs at least this (spec min_walltime)
    poll: float = 3.0      # seconds between the manager's cycles while the campaign runs


SIZES = {
    "full": WasteSize(runs=6, segments=4, length=20.0, walltime_min=2, margin=20, grace=8, idle_timeout=10,
                      max_pilots=3, timeout=540.0),
    "quick": WasteSize(runs=3, segments=3, length=12.0, walltime_min=1, margin=15, grace=5, idle_timeout=8,
                       max_pilots=2, timeout=300.0, min_work=3.0),
    # smoke: that every system runs and is accounted for, not its numbers: short segments, frequent cycles, and
    # pilots that leave 1 s after the last one (the next segment is READY when the one before completes)
    "smoke": WasteSize(runs=1, segments=2, length=2.0, walltime_min=1, margin=15, grace=5, idle_timeout=1,
                       max_pilots=1, timeout=150.0, poll=1.0),
}

#: plain FireWorks: rlaunch's tasks are not told the job's end (our job script exports PILOT_DEADLINE)
PLAIN = "env -u PILOT_DEADLINE "

#: ``rlaunch_close``: a --timeout that cuts it close (wall time minus this), as one sets it without knowing
#: how long the Fireworks take
RLAUNCH_CLOSE_MARGIN = 5

RLAUNCH_TEMPLATE = """{{% extends "slurm.sh.j2" %}}
{{#- benchmark baseline: the same pilot job script, but the worker is FireWorks' own rlaunch rapidfire -#}}
{{% block setup %}}
{{{{ super() }}}}
printf 'name: %s\\ncategory: %s\\nquery: "{{}}"\\n' "$PILOT_CLUSTER-$PILOT_JOB_ID" "$PILOT_CATEGORY" \\
    > "$PILOT_WORK_DIR/fworker-$PILOT_FILE_ID.yaml"
{{% endblock %}}
{{% block worker_command %}}
{env}{rlaunch} -l {{{{ launchpad_file | remote_path }}}} -w "$PILOT_WORK_DIR/fworker-$PILOT_FILE_ID.yaml" \\
    rapidfire --timeout {timeout} --sleep {sleep}
{{% endblock %}}
"""


def _lengths(size: WasteSize) -> list[float]:
    """Seconds of work per segment for each run: about ``length``, varied by +-20 % across runs."""
    spread = [0.0, 0.2, -0.2, 0.1, -0.1, 0.15, -0.15, 0.05]
    return [round(size.length * (1 + spread[i % len(spread)]), 1) for i in range(size.runs)]


def _install_task(remote: Path) -> Path:
    """Copy benchmarks/segtask.py where the cluster user's jobs import it from (PYTHONPATH)."""
    lib = remote / "pylib"
    (lib / "benchmarks").mkdir(parents=True)
    (lib / "benchmarks" / "__init__.py").write_text("")
    shutil.copy(REPO / "benchmarks" / "segtask.py", lib / "benchmarks" / "segtask.py")
    return lib


def _campaign_done(run_dir: Path, runs: list[str], segments: int) -> bool:
    for r in runs:
        try:
            ck = json.loads((run_dir / f"{r}.ckpt.json").read_text())
        except (OSError, ValueError):
            return False
        if int(ck.get("segment", 0)) < segments:
            return False
    return True


def _attempts(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted((run_dir / "attempts").glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _metrics(attempts: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], pilots: list[dict[str, Any]],
             required: float, done: bool, finished_at: float | None, started: float,
             reruns: int, walltime_s: float) -> dict[str, Any]:
    reasons = Counter(str(a.get("reason")) for a in attempts)
    killed_sched = stopped_pilot = hard_killed = past_limit = 0
    redone = busy = work = past_limit_s = 0.0
    for a in attempts:
        busy += max(0.0, float(a["t_last"]) - float(a["start"]))
        work += max(0.0, float(a["progress"]) - float(a["p0"]))
        job_start = jobs.get(str(a.get("job_id")), {}).get("start")
        if job_start is not None:
            # SLURM enforces time limits on a coarse tick: count work that ran past the wall time anyway
            limit = job_start + walltime_s
            over = float(a["t_last"]) - max(limit, float(a["start"]))
            if over > 1.0:
                past_limit += 1
                past_limit_s += over
        if a.get("reason") in ("done", "already_done", "time_limit"):
            continue  # finished, or sized itself to the deadline and saved: nothing interrupted it
        redone += max(0.0, float(a["progress"]) - float(a["saved"]))
        job = jobs.get(str(a.get("job_id")), {})
        if job.get("state") == "TIMEOUT":
            killed_sched += 1      # SLURM's time limit: SIGTERM (saved) or SIGKILL (reason None)
        elif a.get("reason") is None:
            hard_killed += 1       # died without saving in a job that SLURM did not time out
        elif a.get("reason") == "sigterm":
            stopped_pilot += 1
    pilot_time = float(sum(j["elapsed"] for j in jobs.values()))
    losses = _losses(attempts, jobs, walltime_s)
    states = Counter(j["state"] for j in jobs.values())
    return {
        "campaign_complete": done, "campaign_s": (finished_at - started) if finished_at else None,
        "pilots_submitted": len(pilots), "pilots_started": sum(1 for j in jobs.values() if j["elapsed"] > 0),
        "pilot_states": dict(states), "pilot_time_s": pilot_time,
        "attempts": len(attempts), "attempt_endings": dict(reasons),
        "segments_killed_by_scheduler": killed_sched, "segments_stopped_by_pilot": stopped_pilot,
        "segments_hard_killed": hard_killed, "fireworks_rerun_by_manager": reruns,
        "segments_past_walltime": past_limit, "work_past_walltime_s": past_limit_s,
        "work_redone_s": redone, "work_done_s": work, "work_required_s": required, "busy_s": busy,
        "utilisation_busy": (busy / pilot_time) if pilot_time else None,
        "utilisation_useful": (min(work, required) / pilot_time) if pilot_time else None,
        "segments_sized_to_deadline": reasons.get("time_limit", 0), **losses,
    }


def _losses(attempts: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], walltime_s: float) -> dict[str, Any]:
    """Where each second of pilot time that ran no segment went, per job from SLURM's start/end and the
    attempts that ran in it: start-up (job start to its first segment), gaps between segments, the tail (last
    segment's end to the job's end), whole jobs that ran nothing; and the wall time given back (asked for but
    not used: not charged, but another pilot had to be queued for it)."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_job.setdefault(str(a.get("job_id")), []).append(a)
    startup = gaps = tail = empty = returned = 0.0
    for jid, job in jobs.items():
        if not job.get("elapsed"):
            continue
        returned += max(0.0, walltime_s - float(job["elapsed"]))
        runs = sorted(by_job.get(jid, []), key=lambda a: float(a["start"]))
        if job.get("start") is None:
            continue  # sacct did not say when it started: its losses are unknown
        if not runs:
            empty += float(job["elapsed"])
            continue
        end = float(job["start"]) + float(job["elapsed"])
        startup += max(0.0, float(runs[0]["start"]) - float(job["start"]))
        gaps += sum(max(0.0, float(b["start"]) - float(a["t_last"])) for a, b in zip(runs, runs[1:], strict=False))
        tail += max(0.0, end - max(float(a["t_last"]) for a in runs))
    return {"lost_startup_s": startup, "lost_gaps_s": gaps, "lost_tail_s": tail, "lost_empty_jobs_s": empty,
            "walltime_returned_s": returned}


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) pilot-worker")
_DEADLINE = re.compile(r"deadline (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \(in")


def _usr1_diagnostics(work_dir: Path) -> dict[str, Any]:
    """From the pilot workers' logs: how many pilots got the pre-walltime SIGUSR1 and how long before their
    deadline it came (SLURM may send it up to 60 s earlier than asked, documented for ``--signal``)."""
    early: list[float] = []
    for err in sorted(work_dir.glob("pilot-*.err")):
        deadline = None
        for line in err.read_text(errors="replace").splitlines():
            m = _DEADLINE.search(line)
            if m and deadline is None:
                deadline = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            if "SIGUSR1" in line and deadline is not None:
                t = _LOG_TIME.match(line)
                if t:
                    early.append(deadline - time.mktime(time.strptime(t.group(1), "%Y-%m-%d %H:%M:%S")))
                break
    return {"pilots_got_usr1": len(early),
            "usr1_s_before_deadline": sorted(early)}


def _systems(size: WasteSize, venv: Path, tag: str, walltime_s: int) -> dict[str, dict[str, Any]]:
    """The four systems run side by side: system -> its cluster file's name, category, template and overrides."""
    rlaunch = f"{venv}/bin/rlaunch"
    return {
        "ours": {"cluster": "pilotci", "category": f"segours{tag}", "template": None,
                 "over": {"walltime_margin": size.margin, "grace": size.grace}},
        "rlaunch": {"cluster": "pilotcirl", "category": f"segrl{tag}",
                    "template": RLAUNCH_TEMPLATE.format(rlaunch=rlaunch, timeout=walltime_s - size.margin, sleep=5,
                                                        env=PLAIN),
                    "over": {"walltime_margin": 0, "grace": 0}},
        "rlaunch_close": {"cluster": "pilotcirlc", "category": f"segrc{tag}",
                          "template": RLAUNCH_TEMPLATE.format(rlaunch=rlaunch, env=PLAIN,
                                                              timeout=walltime_s - RLAUNCH_CLOSE_MARGIN, sleep=5),
                          "over": {"walltime_margin": 0, "grace": 0}},
        "rlaunch_maxh": {"cluster": "pilotcirlm", "category": f"segrm{tag}",
                         "template": RLAUNCH_TEMPLATE.format(rlaunch=rlaunch, timeout=walltime_s - size.margin,
                                                             sleep=5, env=""),
                         "over": {"walltime_margin": 0, "grace": 0}},
    }


def _write_clusters(size: WasteSize, systems: dict[str, dict[str, Any]], info: Any, venv: Path, remote: Path,
                    lib: Path, lp_file: Path, cfg_dir: Path, prefix: str) -> Path:
    """One cluster file per system (all on the same SLURM cluster), and pilot.yaml; returns the config dir."""
    from tests.manager.helpers import ssh_cluster, write_config

    (cfg_dir / "clusters").mkdir(parents=True)
    cluster_files = {}
    for k, s in systems.items():
        over = dict(s["over"], pilot={"walltime": str(size.walltime_min), "cores": 1, "partition": "debug"},
                    idle_timeout=size.idle_timeout, env={"PYTHONPATH": str(lib)},
                    limits={"max_queued": size.max_pilots, "max_running": size.max_pilots})
        if s["template"]:
            tpl = cfg_dir / "clusters" / f"{k}.sh.j2"
            tpl.write_text(s["template"])
            over["template"] = tpl.name
        cluster_files[s["cluster"]] = ssh_cluster(info, str(remote / s["cluster"]), str(lp_file),
                                                  [s["category"]], venv, **over)
    return write_config(cfg_dir, lp_file, cluster_files, poll_interval=3, job_name_prefix=prefix)


def _drive(mgr: Any, systems: dict[str, dict[str, Any]], run_names: list[str], size: WasteSize,
           log: Callable[[str], None]) -> tuple[float, dict[str, float | None], int]:
    """Cycle the manager until every system's campaign is done (or the timeout), then let the pilots drain."""
    started = time.time()
    log(f"waste: {size.runs} runs x {size.segments} segments of ~{size.length:g} s, {size.walltime_min} min "
        f"pilots; {', '.join(systems)} side by side (up to {size.timeout:.0f} s) ...")
    finished: dict[str, float | None] = {k: None for k in systems}
    cycles = 0
    while True:
        mgr.run_cycle()
        cycles += 1
        now = time.time()
        for k, s in systems.items():
            if finished[k] is None and _campaign_done(s["run_dir"], run_names, size.segments):
                finished[k] = now
                log(f"waste: {k}: campaign complete after {now - started:.0f} s")
        if all(finished.values()) or now - started > size.timeout:
            break
        time.sleep(size.poll)
    # let the pilots leave by themselves (idle timeout / no more work), then cancel what is left
    drain_until = time.time() + size.idle_timeout + 45
    while time.time() < drain_until and mgr.records.live():
        mgr.run_cycle()
        time.sleep(1)  # only watching pilots leave: a shorter wait than the campaign's cycles costs nothing
    return started, finished, cycles


def _system_metrics(lp: Any, s: dict[str, Any], pilots: list[dict[str, Any]], acct: dict[str, Any],
                    reruns: set[Any], required: float, started: float, finished: float | None,
                    walltime_s: int) -> dict[str, Any]:
    """One system's waste metrics from its pilots' accounting and its segments' attempt records."""
    mine = [p for p in pilots if p["cluster"] == s["cluster"]]
    jobs = {str(p["job_id"]): acct.get(str(p["job_id"]), {"state": "UNKNOWN", "elapsed": 0})
            for p in mine if p.get("job_id")}
    fw_ids = {d["fw_id"] for d in lp.fireworks.find({"spec._category": s["category"]}, {"fw_id": 1})}
    m = _metrics(_attempts(s["run_dir"]), jobs, mine, required, finished is not None, finished,
                 started, len(reruns & fw_ids), walltime_s)
    m["timeout_overrun_s"] = sorted(j["elapsed"] - walltime_s for j in jobs.values() if j["state"] == "TIMEOUT")
    return m


def run(size: WasteSize, log: Callable[[str], None] = print) -> dict[str, Any]:
    from benchmarks.segtask import segment_firework
    from pilot.config import load_config
    from pilot.manager.cycle import Manager

    clusters = require_infra()
    info = clusters["pilotci"]
    venv = ensure_cluster_venv(info.venv)
    slurm = Slurm(info.slurm_conf or "/etc/slurm/slurm.conf", info.user)
    db = Database().start()
    remote = make_remote_dir("pilot-bench-waste-", info.user)
    cfg_dir = Path(tempfile.mkdtemp(prefix="pilot-bench-cfg-"))
    prefix = "bw" + short_id()[:4]
    walltime_s = size.walltime_min * 60
    systems = _systems(size, venv, short_id(), walltime_s)  # one manager serves all of them at once
    mgr = None
    out: dict[str, Any] = {}
    try:
        lp = db.launchpad()
        lib = _install_task(remote)
        lp_file = remote / "my_launchpad.yaml"
        lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
        for s in systems.values():
            s["run_dir"] = remote / f"runs-{s['category']}"
            (s["run_dir"] / "attempts").mkdir(parents=True)
        chown_tree(remote, info.user)
        cfg = load_config(_write_clusters(size, systems, info, venv, remote, lib, lp_file, cfg_dir, prefix))
        lengths = _lengths(size)
        run_names = [f"r{i}" for i in range(size.runs)]
        for s in systems.values():
            for name, length in zip(run_names, lengths, strict=True):
                lp.add_wf(segment_firework(str(s["run_dir"]), name, 0, size.segments, length, s["category"],
                                           min_work=size.min_work))
        required = sum(lengths) * size.segments
        mgr = Manager(cfg, lp)
        started, finished, cycles = _drive(mgr, systems, run_names, size, log)
        left = slurm.cancel_names(prefix)
        pilots = list(lp.db["pilots"].find({}))
        time.sleep(2)
        acct = slurm.accounting([str(p["job_id"]) for p in pilots if p.get("job_id")])
        reruns = {d["_id"] for d in lp.db["pilot_reruns"].find({})}
        out.update({"size": vars(size), "segment_lengths_s": lengths, "manager_cycles": cycles,
                    "cancelled_at_end": len(left), "walltime_s": walltime_s,
                    "rlaunch_timeout_s": walltime_s - size.margin,
                    "rlaunch_close_timeout_s": walltime_s - RLAUNCH_CLOSE_MARGIN, "systems": list(systems)})
        for k, s in systems.items():
            out[k] = _system_metrics(lp, s, pilots, acct, reruns, required, started, finished[k], walltime_s)
            if not k.startswith("rlaunch"):
                out[k].update(_usr1_diagnostics(remote / s["cluster"]))
        return out
    finally:
        if mgr is not None:
            mgr.close()
        slurm.cancel_names(prefix)
        out["server_peak_rss_mib"] = db.server_peak_mib()
        db.stop()
        shutil.rmtree(cfg_dir, ignore_errors=True)
        if os.environ.get("PILOT_BENCH_KEEP"):
            log(f"waste: kept {remote} (PILOT_BENCH_KEEP)")
        else:
            shutil.rmtree(remote, ignore_errors=True)
