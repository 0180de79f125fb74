"""Benchmark 2, pilot overhead: N no-op Fireworks through one ``pilot worker`` versus ``rlaunch rapidfire``.

Both run locally (as this user) against the same database server (the embedded server, or ``MONGODB_URI``),
each on its own fresh database holding N READY one-Firework workflows whose only task is
``PyTask(func="os.getpid")``; both log at FireWorks' default level (INFO) into a file.

* ours: ``python -m pilot worker -l LP -c CAT --name bench-worker --no-deadline --idle-timeout 0
  --launch-dir DIR`` (exits as soon as no READY Firework is left);
* FireWorks: ``rlaunch -l LP -w FWORKER rapidfire`` in DIR (exits when nothing is READY or will be).

With ``repeat`` > 1 the two alternate (ours first, then rlaunch first, ...) and the median run of each is
reported, with the range. Reported: wall time from process start to exit and Fireworks per second (N / wall),
the steady rate from the launches themselves ((N - 1) / (last launch start - first launch start), without
interpreter start-up), the database commands per Firework (served by the embedded server, ``pilotStats``),
and peak RSS of the process and of its children (the worker forks one child per Firework).

Two cost models follow: the first pilot worker's design (a forked child with its own database client, next to
``launch_rocket`` in-process), and where a no-op Firework's time goes now (:func:`phases`: one traced run of
each system, milliseconds and database commands per phase). Last, the worker's peak RSS in a LaunchPad of
100,000 READY Fireworks (:func:`worker_rss_at`).
"""

from __future__ import annotations

import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import REPO, BenchError, Database, PeakSampler, proc_cpu_s, short_id


def _add_noops(lp: Any, category: str, n: int) -> None:
    from fireworks import Firework
    from fireworks.user_objects.firetasks.script_task import PyTask

    for k in range(0, n, 500):
        lp.bulk_add_wfs([Firework([PyTask(func="os.getpid")], spec={"_category": category}, name=f"noop-{i}")
                         for i in range(k, min(n, k + 500))])


def _launch_times(lp: Any) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of every COMPLETED launch, from FireWorks' own state history."""
    out = []
    for d in lp.launches.find({"state": "COMPLETED"}, {"state_history": 1}):
        hist = {h["state"]: h for h in d.get("state_history") or []}
        try:
            start = _epoch(hist["RUNNING"]["created_on"])
            end = _epoch(hist["COMPLETED"]["created_on"])
        except KeyError:
            continue
        out.append((start, end))
    return sorted(out)


def _epoch(v: Any) -> float:
    if isinstance(v, datetime.datetime):
        dt = v
    else:
        dt = datetime.datetime.fromisoformat(str(v))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def _rlaunch() -> str:
    exe = Path(sys.executable).parent / "rlaunch"
    if exe.exists():
        return str(exe)
    found = shutil.which("rlaunch")
    if not found:
        raise BenchError(f"rlaunch not found next to {sys.executable} nor on PATH: pip install fireworks")
    return found


def _env() -> dict[str, str]:
    """The environment of the measured processes: this source tree's ``pilot`` first (``python -m pilot`` runs
    in the launch directory, where an editable install of another checkout would otherwise be found)."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""))


def _argv(db: Database, lp: Any, which: str, cat: str, d: Path) -> list[str]:
    """The command line of ``which`` (``ours``: ``pilot worker``; ``fresh``: ``pilot worker --fresh-process``, a
    process per Firework; ``rlaunch``: ``rlaunch rapidfire``) in ``d``."""
    lp_file = d / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    if which in ("ours", "fresh"):
        return [sys.executable, "-m", "pilot", "worker", "-l", str(lp_file), "-c", cat, "--name", "bench-worker",
                "--no-deadline", "--idle-timeout", "0", "--launch-dir", str(d),
                *(["--fresh-process"] if which == "fresh" else [])]
    fw_file = d / "my_fworker.yaml"
    fw_file.write_text(yaml.safe_dump({"name": "bench-rlaunch", "category": cat, "query": "{}"}))
    return [_rlaunch(), "-l", str(lp_file), "-w", str(fw_file), "rapidfire"]


def run_measured(argv: list[str], cwd: Path, log_path: Path, timeout: float, what: str) -> tuple[float, dict[str, Any]]:
    """Run ``argv`` in ``cwd`` (this tree's ``pilot`` first, :func:`_env`) with its output in ``log_path``, in a
    session of its own; its wall time and the peak RSS of it and its children (:class:`PeakSampler`). A run that
    takes longer than ``timeout`` is killed, group and all, and so is one that exits non-zero: :class:`BenchError`
    naming ``what``."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env())
        sampler = PeakSampler(proc.pid).start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
            raise BenchError(f"{what} not done in {timeout:.0f} s; log: {log_path}") from None
        finally:
            rss = sampler.stop()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"{what}: exited {rc}: {log_path.read_text()[-1500:]}")
    return wall, rss


def run_one(db: Database, which: str, n: int, work: Path, timeout: float) -> dict[str, Any]:
    lp = db.launchpad()
    cat = f"noop{short_id()}"
    _add_noops(lp, cat, n)
    d = work / which
    d.mkdir(parents=True)
    argv = _argv(db, lp, which, cat, d)
    before = db.server_stats(lp)
    log_path = d / "output.log"
    # CPU of the measured process tree (every process of it is waited for by its parent) and of the server
    cpu0, srv0 = resource.getrusage(resource.RUSAGE_CHILDREN), proc_cpu_s(db.server_pid)
    wall, rss = run_measured(argv, d, log_path, timeout, f"{which}: {n} no-op Fireworks")
    cpu1, srv1 = resource.getrusage(resource.RUSAGE_CHILDREN), proc_cpu_s(db.server_pid)
    srv = Database.stats_diff(db.server_stats(lp), before)
    states: dict[str, int] = {}
    for doc in lp.fireworks.find({}, {"state": 1}):
        states[doc["state"]] = states.get(doc["state"], 0) + 1
    times = _launch_times(lp)
    steady = None
    if len(times) > 1 and times[-1][0] > times[0][0]:
        steady = (len(times) - 1) / (times[-1][0] - times[0][0])
    per_fw = [e - s for s, e in times]
    gaps = [times[i + 1][0] - times[i][1] for i in range(len(times) - 1)]
    db.drop(lp)
    if states.get("COMPLETED") != n:
        raise BenchError(f"{which}: expected {n} COMPLETED Fireworks, got {states}; log: {log_path}")
    return {"fireworks": n, "wall_s": wall, "fw_per_s": n / wall, "steady_fw_per_s": steady,
            "mean_launch_s": sum(per_fw) / len(per_fw) if per_fw else None,
            "mean_gap_s": sum(gaps) / len(gaps) if gaps else None,
            "db_commands_per_fw": (sum(srv.values()) / n) if srv else None, "db_commands_by_name": srv,
            "cpu_user_ms_per_fw": 1000 * (cpu1.ru_utime - cpu0.ru_utime) / n,
            "cpu_system_ms_per_fw": 1000 * (cpu1.ru_stime - cpu0.ru_stime) / n,
            "server_cpu_ms_per_fw": None if srv0 is None or srv1 is None else 1000 * (srv1 - srv0) / n, **rss}


def run(n: int, repeat: int = 1, log: Callable[[str], None] = print, rss_at: int | None = None
        ) -> dict[str, Any]:
    """The side-by-side runs, the cost models, and the worker's RSS in a LaunchPad of ``rss_at`` READY
    Fireworks (default: 100,000 at the full size, N >= 500; 100 N below; 0: not measured)."""
    if rss_at is None:
        rss_at = 100_000 if n >= 500 else 100 * n
    db = Database().start()
    work = Path(tempfile.mkdtemp(prefix="pilot-bench-overhead-"))
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "rlaunch": [], "fresh": []}
    names = {"ours": "pilot worker", "rlaunch": "rlaunch rapidfire", "fresh": "pilot worker --fresh-process"}
    try:
        for k in range(repeat):
            order = ("ours", "rlaunch", "fresh") if k % 2 == 0 else ("fresh", "rlaunch", "ours")
            for which in order:
                through = names[which]
                log(f"overhead: {n} no-op Fireworks through {through}"
                    f" (run {k + 1}/{repeat}) ...")
                runs[which].append(run_one(db, which, n, work / f"r{k}", timeout=max(300.0, n * 2.0)))
        log("overhead: where a forked child's time goes ...")
        # rounds: 30 at the full size, 5 quick; one in the smoke run, which checks that it works, not its numbers
        breakdown = fork_breakdown(db, min(30, max(1, n // 10)), work)
        log(f"overhead: where a no-op Firework's time goes now, one traced run each ({min(n, 300)} Fireworks) ...")
        breakdown["phases"] = phases(db, min(n, 300), work / "phases", timeout=max(300.0, n * 2.0))
        rss = None
        if rss_at:
            log(f"overhead: the worker's peak RSS in a LaunchPad of {rss_at:,} READY Fireworks ...")
            rss = worker_rss_at(db, rss_at, 20, work / "rss", timeout=900.0)
    finally:
        server_mib = db.server_peak_mib()
        db.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(rs, key=lambda r: r["fw_per_s"])
        return dict(ordered[(len(ordered) - 1) // 2],
                    fw_per_s_range=[ordered[0]["fw_per_s"], ordered[-1]["fw_per_s"]])

    return {"fireworks": n, "repeat": repeat, "ours": median(runs["ours"]), "rlaunch": median(runs["rlaunch"]),
            "fresh": median(runs["fresh"]), "all_runs": runs, "fork_breakdown": breakdown, "worker_rss_at": rss,
            "server_peak_rss_mib": server_mib}


# ============================================================================ where the time goes
def _child_rockets(lp_dict: dict[str, Any], fworker: Any, pause: float) -> tuple[int, float, float, float, float]:
    """Fork a child that connects (new client + hello), waits ``pause`` s (as a pre-forked standby child
    does), runs two Rockets and exits. Returns (pid, fork s, connect s, first rocket s, second rocket s)."""
    import json

    from fireworks import LaunchPad
    from fireworks.core.rocket_launcher import launch_rocket

    r, w = os.pipe()
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t1 = time.perf_counter()
            child_lp = LaunchPad.from_dict(lp_dict)
            child_lp.connection.admin.command("hello")
            t2 = time.perf_counter()
            time.sleep(pause)
            t3 = time.perf_counter()
            launch_rocket(child_lp, fworker, strm_lvl="ERROR")
            t4 = time.perf_counter()
            launch_rocket(child_lp, fworker, strm_lvl="ERROR")
            t5 = time.perf_counter()
            os.write(w, json.dumps([t1 - t, t2 - t1, t4 - t3, t5 - t4]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    fork_s, conn_s, first, second = json.loads(data)
    return pid, fork_s, conn_s, first, second


def breakdown_main(argv: list[str]) -> int:
    """``run.py _fork-breakdown --lp-file F --category C --n K --dir D``: what running a Firework in a freshly
    forked child with its own LaunchPad client costs (fork, new client + hello, launch_rocket, exit; the
    design of the first pilot worker, before its fork server and worker-side LaunchPad calls), next to
    ``launch_rocket`` in-process as rlaunch does; the variants are interleaved (one of each
    per round) so that the load of the shared machine affects them alike. Needs 1 + 7K READY no-op Fireworks
    of C. Prints one JSON line of medians in milliseconds."""
    import argparse
    import json
    import statistics

    from fireworks import FWorker, LaunchPad
    from fireworks.core.rocket_launcher import launch_rocket
    from fireworks.utilities.fw_utilities import get_my_host, get_my_ip

    ap = argparse.ArgumentParser(prog="run.py _fork-breakdown")
    ap.add_argument("--lp-file", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    os.chdir(a.dir)
    get_my_host()
    get_my_ip()
    lp = LaunchPad.from_file(a.lp_file)
    plain = lp.to_dict()
    warm_pool = dict(plain, mongoclient_kwargs={"minPoolSize": 2})
    fworker = FWorker(name="bench-breakdown", category=a.category)
    launch_rocket(lp, fworker, strm_lvl="ERROR")   # resolves the task class once, as the worker's children do
    cols: dict[str, list[float]] = {k: [] for k in (
        "in_process_rocket", "fork", "connect", "child_first_rocket", "child_second_rocket",
        "child_first_rocket_after_pause", "warm_pool_first_rocket")}
    for _ in range(a.n):
        t = time.perf_counter()
        launch_rocket(lp, fworker, strm_lvl="ERROR")
        cols["in_process_rocket"].append(time.perf_counter() - t)
        _, f, c, first, second = _child_rockets(plain, fworker, 0.0)
        cols["fork"].append(f)
        cols["connect"].append(c)
        cols["child_first_rocket"].append(first)
        cols["child_second_rocket"].append(second)
        cols["child_first_rocket_after_pause"].append(_child_rockets(plain, fworker, 0.3)[3])
        cols["warm_pool_first_rocket"].append(_child_rockets(warm_pool, fworker, 0.3)[3])
    out: dict[str, Any] = {"fireworks": a.n}
    for k, v in cols.items():
        out[f"{k}_ms"] = round(1000 * statistics.median(v), 1)
    print(json.dumps(out))
    return 0


def fork_breakdown(db: Database, n: int, work: Path) -> dict[str, Any]:
    import json

    lp = db.launchpad()
    cat = f"brk{short_id()}"
    _add_noops(lp, cat, 1 + 7 * n)
    d = work / "breakdown"
    d.mkdir(parents=True)
    lp_file = d / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    try:
        res = subprocess.run([sys.executable, str(Path(__file__).with_name("run.py")), "_fork-breakdown",
                              "--lp-file", str(lp_file), "--category", cat, "--n", str(n), "--dir", str(d)],
                             capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            raise BenchError(f"fork breakdown failed (exit {res.returncode}): {res.stderr[-1500:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        db.drop(lp)


# ============================================================================ where a Firework's time goes now
#: the phases of one no-op Firework, in the order of the table (both systems; "-" where one has no such phase)
PHASES = ("checkout", "pings", "complete", "rocket_and_task", "handoff", "settle", "between")


class _Tracer:
    """Exclusive wall time and database commands per phase, per thread (FireWorks pings from a thread of its
    own): a wrapped function's time counts for its phase minus the time of wrapped functions it calls; every
    command the process's MongoClients send counts for the phase of the thread that sends it (a pymongo
    ``CommandListener`` registered before any client exists)."""

    def __init__(self) -> None:
        import threading

        from pymongo import monitoring

        self.local = threading.local()
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.commands: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        tracer = self

        class _Listener(monitoring.CommandListener):
            def started(self, event: Any) -> None:
                stack = getattr(tracer.local, "stack", None)
                phase = stack[-1][0] if stack else "between"
                with tracer.lock:
                    tracer.commands[phase] = tracer.commands.get(phase, 0) + 1

            def succeeded(self, event: Any) -> None:
                pass

            def failed(self, event: Any) -> None:
                pass

        monitoring.register(_Listener())

    def wrap(self, owner: Any, name: str, phase: str | Callable[..., str]) -> None:
        orig = getattr(owner, name)
        tracer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            label = phase(*args) if callable(phase) else phase
            stack = tracer.local.__dict__.setdefault("stack", [])
            stack.append([label, 0.0])
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                _, inner = stack.pop()
                if stack:
                    stack[-1][1] += dt
                with tracer.lock:
                    tracer.seconds[label] = tracer.seconds.get(label, 0.0) + dt - inner
                    tracer.calls[label] = tracer.calls.get(label, 0) + 1

        setattr(owner, name, timed)

    def dump(self, path: str, wall: float) -> None:
        import json

        Path(path).write_text(json.dumps({"wall_s": wall, "seconds": self.seconds, "commands": self.commands,
                                          "calls": self.calls}))


def _served_phase(_self: Any, _child: Any, frame: bytes) -> str:
    import pickle

    method = pickle.loads(frame)[0]
    return {"checkout_fw": "checkout", "ping_launch": "pings", "complete_launch": "complete"}.get(method, "between")


def _trace_ours(tracer: _Tracer, argv: list[str]) -> None:
    from pilot.worker import calls, children, settle, supervisor

    tracer.wrap(supervisor.Worker, "_loop", "between")
    tracer.wrap(supervisor.Worker, "_supervise", "rocket_and_task")  # waiting for the child's next call
    tracer.wrap(calls.CallServer, "serve", _served_phase)
    tracer.wrap(calls.CallServer, "_prefetch_launch_id", "between")   # while the child runs: off the path
    tracer.wrap(children.ChildPool, "fork", "handoff")
    tracer.wrap(settle.Settler, "settle", "settle")
    tracer.wrap(children.ChildPool, "reap_exiting", "settle")
    from pilot.cli import main

    sys.argv = ["pilot", *argv]
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def _trace_rlaunch(tracer: _Tracer, argv: list[str]) -> None:
    from fireworks.core import launchpad, rocket, rocket_launcher

    tracer.wrap(rocket_launcher, "rapidfire", "between")
    tracer.wrap(rocket.Rocket, "run", "rocket_and_task")
    tracer.wrap(launchpad.LaunchPad, "checkout_fw", "checkout")
    tracer.wrap(launchpad.LaunchPad, "ping_launch", "pings")
    tracer.wrap(launchpad.LaunchPad, "complete_launch", "complete")
    from fireworks.scripts.rlaunch_run import rlaunch

    sys.argv = ["rlaunch", *argv]
    rlaunch()


def trace_main(argv: list[str]) -> int:
    """``python -m benchmarks.overhead _phases ours|rlaunch OUT.json -- ARGS``: run ``pilot ARGS`` (ours) or
    ``rlaunch ARGS`` in this process with the phases traced; write the totals to OUT.json."""
    which, out = argv[0], argv[1]
    args = argv[argv.index("--") + 1:]
    tracer = _Tracer()
    t = time.perf_counter()
    (_trace_ours if which == "ours" else _trace_rlaunch)(tracer, args)
    tracer.dump(out, time.perf_counter() - t)
    return 0


def phases(db: Database, n: int, work: Path, timeout: float) -> dict[str, Any]:
    """Per-Firework milliseconds and database commands of each phase, one traced run of each system on N no-op
    Fireworks (the tracing costs a little time of its own; the wall time per Firework is shown with it)."""
    import json

    out: dict[str, Any] = {"fireworks": n}
    for which in ("ours", "rlaunch"):
        lp = db.launchpad()
        cat = f"ph{short_id()}"
        _add_noops(lp, cat, n)
        d = work / f"phases-{which}"
        d.mkdir(parents=True)
        argv = _argv(db, lp, which, cat, d)
        args = argv[3:] if which == "ours" else argv[1:]
        res_file = d / "phases.json"
        cmd = [sys.executable, "-m", "benchmarks.overhead", "_phases", which, str(res_file), "--", *args]
        with open(d / "output.log", "wb") as log:
            rc = subprocess.run(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=_env(), timeout=timeout,
                                check=False).returncode
        done = lp.fireworks.count_documents({"state": "COMPLETED"})
        db.drop(lp)
        if rc != 0 or done != n or not res_file.exists():
            raise BenchError(f"phases of {which}: exit {rc}, {done}/{n} COMPLETED; log: {d / 'output.log'}")
        r = json.loads(res_file.read_text())
        out[which] = {"wall_ms_per_fw": 1000 * r["wall_s"] / n,
                      **{f"{p}_ms": 1000 * r["seconds"][p] / n for p in PHASES if p in r["seconds"]},
                      **{f"{p}_cmds": r["commands"].get(p, 0) / n for p in PHASES if p in r["seconds"]}}
    return out


# ============================================================================ the worker's RSS at campaign scale
def worker_rss_at(db: Database, total: int, k: int, work: Path, timeout: float) -> dict[str, Any]:
    """Peak RSS of ``pilot worker`` (and of its children) in a LaunchPad holding ``total`` READY Fireworks, of
    which ``k`` are of the worker's category (the rest inserted with pymongo ``insert_many`` as scale.py does)."""
    from benchmarks.scale import insert_direct

    lp = db.launchpad()
    cat = f"rss{short_id()}"
    t = time.perf_counter()
    insert_direct(lp, total - k, [f"bulk{short_id()}"])
    _add_noops(lp, cat, k)
    insert_s = time.perf_counter() - t
    d = work / "rss"
    d.mkdir(parents=True)
    argv = _argv(db, lp, "ours", cat, d)
    log_path = d / "output.log"
    with open(log_path, "wb") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env())
        sampler = PeakSampler(proc.pid, interval=0.02).start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
            rc = -9
        finally:
            rss = sampler.stop()
        wall = time.perf_counter() - t
    ready = lp.fireworks.count_documents({"state": "READY"})
    done = lp.fireworks.count_documents({"state": "COMPLETED", "spec._category": cat})
    db.drop(lp)
    if rc != 0 or done != k:
        raise BenchError(f"worker at {total} Fireworks: exit {rc}, {done}/{k} COMPLETED; log: {log_path}")
    return {"fireworks_in_launchpad": total, "fireworks_run": k, "ready_left": ready, "insert_s": insert_s,
            "wall_s": wall, **rss}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_phases":
        sys.exit(trace_main(sys.argv[2:]))
    sys.exit(f"usage: python -m benchmarks.overhead _phases ours|rlaunch OUT.json -- ARGS (got {sys.argv[1:]})")
