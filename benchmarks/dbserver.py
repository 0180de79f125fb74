"""Benchmark 5, the embedded LaunchPad server at campaign scale: this tree's engine next to a baseline commit's.

Issue 17 measured the embedded server with 100,000 FireWorks-shaped Fireworks: 879 MB RSS, a 35 s
``count_documents({"state": "READY"})`` and a ``find_one`` of another client waiting 33.9 s behind it. This
benchmark repeats those measurements, and the ones the manager and the pilots depend on, for two engines in
the same run: **ours** (``pilot/`` of the working tree) and **baseline** (``pilot/`` of the commit
``PILOT_BENCH_BASELINE``, default ``ba7deec``: the engine before issue 17, extracted with ``git archive`` into
a temporary directory; the repository's index and working tree are not touched). Each server is
``python -m pilot launchpad serve --data DIR --port 0`` with ``PYTHONPATH`` set to its source tree and its
working directory outside both; the same interpreter with the same environment prints ``pilot.__file__``
first, and that path is stored with the results.

The data: N Fireworks in workflows of 5 independent Fireworks over 20 categories, in states like a campaign
(per 30 Fireworks: 20 READY, 6 COMPLETED, 3 RUNNING, 1 FIZZLED), one launch per Firework that ran, half of the
Fireworks with ``spec._pilot.walltime``. The documents are cloned from what FireWorks itself wrote for a real
``LaunchPad.add_wf`` of 3 Fireworks, one of them run by ``launch_rocket`` (COMPLETED, with its launch) and one
checked out with ``checkout_fw`` (RUNNING), padded to about 1 KB per Firework document, with new ids, names
and categories; they go in with pymongo ``insert_many`` (500 per batch) into a LaunchPad that
``LaunchPad.reset`` set up with FireWorks' own indexes, and ``fw_id_assigner`` is advanced past them.

Measured per engine: load time; the server's VmRSS/VmHWM after the load; the peak RSS of the final snapshot
that SIGTERM writes (VmHWM reset through ``/proc/PID/clear_refs`` just before, the peak read from ``wait4``'s
``ru_maxrss``); the restart (restore from that snapshot) until the server answers; then, on the restarted
server, the median and p95 of repeated ``count_documents({"state": "READY"})``, ``find_one`` by ``fw_id``, the
manager's demand query (:func:`pilot.manager.demand.gather_demand` for 20 clusters of one category each),
FireWorks' reservation ``find_one_and_update`` (the query, update and sort of ``LaunchPad._get_a_fw_to_run``
with a pilot's ``FWorker.query``) and the whole ``LaunchPad.checkout_fw``; each measurement stops early at its
time budget (a 35 s count runs twice, not twenty times: the runs are stored). Last, a small client sends
``find_one`` by ``_id`` every 10 ms while another client runs one long command (the READY count, an unindexed
count matching every Firework, an unindexed ``find`` matching one): the small client's worst and p99 latency
while the long command runs.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, BenchError, fmt_table, loadavg, ratio, short_id, source_state
from tests.helpers import EmbeddedServer

BASELINE_ENV = "PILOT_BENCH_BASELINE"
DEFAULT_BASELINE = "ba7deec"
N_CATEGORIES = 20
FWS_PER_WF = 5
INSERT_BATCH = 500
#: per 30 Fireworks: 20 READY (2/3, as in the issue's measurement), 6 COMPLETED, 3 RUNNING, 1 FIZZLED
STATE_CYCLE = ["READY"] * 20 + ["COMPLETED"] * 6 + ["RUNNING"] * 3 + ["FIZZLED"]
FW_DOC_BYTES = 1024
#: (runs wanted, time budget s): a measurement stops after the run that crosses its budget
PLAN: dict[str, tuple[int, float]] = {"count_ready": (20, 60.0), "find_one_fw_id": (200, 20.0),
                                      "demand": (10, 45.0), "reserve": (40, 45.0), "checkout_fw": (20, 45.0)}
PROBE_INTERVAL_S = 0.01
#: a long command that is faster runs back to back for this long while the small client probes (a LaunchPad of
#: fewer than WINDOW_FULL_AT Fireworks, the smoke run's, gets a proportionally shorter one, at least 0.2 s)
LONG_WINDOW_S = 1.0
WINDOW_FULL_AT = 10_000
#: an engine whose READY count takes longer skips the count over every Firework (hopeless, and minutes long)
SKIP_COUNT_ALL_AFTER_S = 10.0
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 900.0
#: no single command may take longer (a server that stops answering fails its engine instead of hanging the run)
COMMAND_TIMEOUT_S = 600.0


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def stats(samples: list[float]) -> dict[str, Any]:
    """Median, p95 (nearest rank), max and count of durations in seconds."""
    if not samples:
        return {"runs": 0, "median_s": None, "p95_s": None, "max_s": None, "samples_s": []}
    s = sorted(samples)
    med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    p95 = s[min(len(s) - 1, max(0, -(-95 * len(s) // 100) - 1))]
    return {"runs": len(s), "median_s": med, "p95_s": p95, "max_s": s[-1], "samples_s": samples}


def percentile(samples: list[float], p: int) -> float | None:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, -(-p * len(s) // 100) - 1))] if s else None


# ============================================================================ the server of one engine
def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a live process in MiB ({} when it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return {}
    return out


class EngineServer(EmbeddedServer):
    """``python -m pilot launchpad serve --port 0`` running the code of ``tree`` (``PYTHONPATH``).

    The working directory is the data dir's parent, which holds no ``pilot/``: ``-m`` puts the working directory
    first on ``sys.path``, so only ``PYTHONPATH`` decides which ``pilot`` runs.
    """

    def __init__(self, tree: Path, data_dir: Path) -> None:
        super().__init__(data_dir, port=0)
        self.tree = tree
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env["PYTHONPATH"] = str(tree)

    def code_check(self) -> dict[str, str]:
        """``pilot.__file__`` and the server module's file, printed by the same interpreter, env and cwd."""
        res = subprocess.run([sys.executable, "-c", "import pilot, pilot.launchpad.server as s; "
                              "print(pilot.__file__); print(s.__file__)"], capture_output=True, text=True,
                             cwd=self.data_dir.parent, env=self.env, timeout=60, check=False)
        lines = res.stdout.split()
        if res.returncode != 0 or len(lines) != 2 or not lines[0].startswith(str(self.tree) + os.sep):
            raise BenchError(f"the server of {self.tree} would not run that tree's code: {res.stdout} {res.stderr}")
        return {"pilot_file": lines[0], "server_module": lines[1]}

    def start(self, timeout: float = START_TIMEOUT_S) -> EngineServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        info = self.data_dir / "server.json"
        info.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pilot", "launchpad", "serve", "--data",
                                          str(self.data_dir), "--port", "0"], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.data_dir.parent, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the server of {self.tree} exited with {self.proc.returncode}: "
                                 f"{self.log_path.read_text()[-2000:]}")
            try:
                data = json.loads(info.read_text())
                if data.get("pid") == self.proc.pid:
                    self.port = int(data["port"])
                    return self._ping()
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise BenchError(f"the server of {self.tree} did not start in {timeout:.0f} s")

    def _ping(self) -> EngineServer:
        """The server listens (``server.json``): it must also answer, or it fails here instead of hanging the run."""
        import pymongo

        client: Any = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=10000, socketTimeoutMS=10000)
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            self.stop(signal.SIGKILL)
            raise BenchError(f"the server of {self.tree} listens but does not answer ({exc}): "
                             f"{self.log_path.read_text()[-2000:]}") from exc
        finally:
            client.close()
        return self

    def stop_measured(self) -> dict[str, Any]:
        """SIGTERM (the server writes its final snapshot and exits): the peak RSS of that shutdown and its time.

        The kernel's high-water mark is reset to the current RSS first (``clear_refs`` 5), so ``ru_maxrss`` of
        ``wait4`` is the peak of the shutdown alone.
        """
        proc = self.proc
        if proc is None:
            return {}
        before = proc_status(proc.pid)
        with open(f"/proc/{proc.pid}/clear_refs", "w") as fh:
            fh.write("5")
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        timer = threading.Timer(STOP_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.proc = None
        return {"rss_before_mib": before.get("VmRSS"), "hwm_before_mib": before.get("VmHWM"),
                "peak_mib": round(usage.ru_maxrss / 1024, 1), "seconds": time.perf_counter() - t0,
                "exit_code": proc.returncode}


def extract_baseline(commit: str, dest: Path) -> str:
    """``pilot/`` of ``commit`` into ``dest`` (``git archive``: no index, HEAD or working tree is touched)."""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{commit}^{{commit}}"],
                         capture_output=True, text=True, check=False)
    if rev.returncode != 0:
        raise BenchError(f"baseline commit {commit!r} not found in {REPO}: {rev.stderr.strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "pilot"], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True, check=False)
    archive.wait()
    if archive.returncode or tar.returncode:
        raise BenchError(f"extracting pilot/ of {commit} failed: {tar.stderr.decode()[-500:]}")
    return rev.stdout.strip()


# ============================================================================ the documents
def _spec(k: int) -> dict[str, Any]:
    return {"_category": "campaign", "_priority": k % 3, "_pilot": {"walltime": 1800},
            "parameters": {"structure": f"mp-{100000 + k}", "functional": "PBE", "encut_eV": 520,
                           "kpoints": [4, 4, 4], "temperature_K": 300.0, "pressure_bar": 1.0, "seed": k,
                           "tags": ["campaign", "benchmark", "relax"], "notes": ""}}


def make_templates(uri: str, workdir: Path) -> dict[str, Any]:
    """The documents FireWorks writes for a real 3-Firework workflow: one COMPLETED (run by ``launch_rocket``,
    with its launch), one RUNNING (``checkout_fw``), one READY; read back with pymongo, then the database is
    dropped."""
    import bson
    from fireworks import Firework, FWorker, LaunchPad, Workflow
    from fireworks.core.rocket_launcher import launch_rocket
    from fireworks.user_objects.firetasks.script_task import PyTask

    lp = LaunchPad(host=uri, name=f"pilotbench_tmpl_{short_id()}", uri_mode=True, logdir=None, strm_lvl="ERROR")
    lp.reset("", require_password=False, max_reset_wo_password=10**9)
    try:
        fws = [Firework([PyTask(func="os.getpid")], spec=_spec(k), name=f"campaign-{k}") for k in range(3)]
        ids = sorted(lp.add_wf(Workflow(fws, name="campaign")).values())
        worker = FWorker(name="bench-host", category="campaign")
        cwd = os.getcwd()
        os.chdir(workdir)
        try:   # the Rocket's logger prints INFO lines to the stdout it finds when it is made
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                launch_rocket(lp, worker, fw_id=ids[0], strm_lvl="ERROR")
        finally:
            os.chdir(cwd)
        lp.checkout_fw(worker, str(workdir / "running"), fw_id=ids[1], host="bench-host", ip="198.51.100.7")
        fw = {d["state"]: d for d in lp.fireworks.find({}, {"_id": 0})}
        launch = {d["state"]: d for d in lp.launches.find({}, {"_id": 0})}
        wf = lp.workflows.find_one({}, {"_id": 0})
        if set(fw) != {"READY", "COMPLETED", "RUNNING"} or set(launch) != {"COMPLETED", "RUNNING"}:
            raise BenchError(f"unexpected template states: Fireworks {sorted(fw)}, launches {sorted(launch)}")
    finally:
        lp.connection.drop_database(lp.db.name)
    pad = max(0, FW_DOC_BYTES - len(bson.encode(fw["READY"])))
    for d in fw.values():
        d["spec"]["parameters"]["notes"] = "n" * pad
    return {"fw": fw, "launch": launch, "wf": wf}


def _shift(value: Any, seconds: int) -> Any:
    return value + datetime.timedelta(seconds=seconds) if isinstance(value, datetime.datetime) else value


def _clone_fw(t: dict[str, Any], i: int, fw_id: int, state: str, launch_id: int | None) -> dict[str, Any]:
    src = t["fw"]["COMPLETED" if state == "FIZZLED" else state]
    spec = dict(src["spec"])
    spec["_category"] = f"cat{i % N_CATEGORIES:02d}"
    spec["_priority"] = i % 3
    spec["_pilot"] = {"walltime": 600 + 300 * (i % 7)} if i % 2 == 0 else {}
    spec["parameters"] = {**src["spec"]["parameters"], "seed": i, "structure": f"mp-{100000 + i}"}
    doc = dict(src)
    doc.update(fw_id=fw_id, name=f"campaign-{i}", state=state, spec=spec,
               created_on=_shift(src.get("created_on"), i), updated_on=_shift(src.get("updated_on"), i))
    doc["launches"] = [launch_id] if launch_id is not None else []
    return doc


def _clone_launch(t: dict[str, Any], i: int, fw_id: int, launch_id: int, state: str) -> dict[str, Any]:
    src = t["launch"]["RUNNING" if state == "RUNNING" else "COMPLETED"]
    doc = dict(src)
    history = [dict(h) for h in src.get("state_history") or []]
    if history and state == "FIZZLED":
        history[-1]["state"] = "FIZZLED"
    doc.update(fw_id=fw_id, launch_id=launch_id, state=state, state_history=history,
               launch_dir=f"/scratch/campaign/launcher_{i}")
    return doc


def _clone_wf(t: dict[str, Any], first: int, ids: list[int], states: list[str]) -> dict[str, Any]:
    src = t["wf"]
    fw_states = {str(f): s for f, s in zip(ids, states, strict=True)}
    if any(s == "RUNNING" for s in states):
        state = "RUNNING"
    elif all(s == "COMPLETED" for s in states):
        state = "COMPLETED"
    elif any(s == "FIZZLED" for s in states):
        state = "FIZZLED"
    else:
        state = "RUNNING" if "COMPLETED" in states else "READY"
    doc = dict(src)
    doc.update(nodes=list(ids), links={str(f): [] for f in ids}, parent_links={}, fw_states=fw_states, state=state,
               name=f"campaign-wf-{first}", created_on=_shift(src.get("created_on"), first),
               updated_on=_shift(src.get("updated_on"), first))
    return doc


def load(lp: Any, n: int, t: dict[str, Any]) -> dict[str, Any]:
    """Insert ``n`` Fireworks (and their workflows and launches); returns the counts and the seconds it took."""
    t0 = time.perf_counter()
    first_fw = lp.fw_id_assigner.find_one_and_update({}, {"$inc": {"next_fw_id": n}})["next_fw_id"]
    ran = sum(1 for i in range(n) if STATE_CYCLE[i % len(STATE_CYCLE)] != "READY")
    first_launch = lp.fw_id_assigner.find_one_and_update({}, {"$inc": {"next_launch_id": ran}})["next_launch_id"]
    counts: dict[str, int] = {}
    next_launch = first_launch
    nwf = nl = 0
    step = INSERT_BATCH - INSERT_BATCH % FWS_PER_WF
    for k in range(0, n, step):
        fws, wfs, launches = [], [], []
        for w in range(k, min(n, k + step), FWS_PER_WF):
            ids, states = [], []
            for i in range(w, min(n, w + FWS_PER_WF)):
                state = STATE_CYCLE[i % len(STATE_CYCLE)]
                counts[state] = counts.get(state, 0) + 1
                lid = None
                if state != "READY":
                    lid, next_launch = next_launch, next_launch + 1
                    launches.append(_clone_launch(t, i, first_fw + i, lid, state))
                fws.append(_clone_fw(t, i, first_fw + i, state, lid))
                ids.append(first_fw + i)
                states.append(state)
            wfs.append(_clone_wf(t, first_fw + w, ids, states))
        lp.fireworks.insert_many(fws, ordered=False)
        lp.workflows.insert_many(wfs, ordered=False)
        if launches:
            lp.launches.insert_many(launches, ordered=False)
        nwf += len(wfs)
        nl += len(launches)
    return {"seconds": time.perf_counter() - t0, "states": counts, "fireworks": n, "workflows": nwf,
            "launches": nl, "first_fw_id": first_fw}


# ============================================================================ the measurements
def repeat(fn: Callable[[int], Any], runs: int, budget_s: float) -> dict[str, Any]:
    """Run ``fn(k)`` up to ``runs`` times, stopping after the run that crosses ``budget_s``."""
    samples: list[float] = []
    start = time.perf_counter()
    last: Any = None
    for k in range(runs):
        t0 = time.perf_counter()
        last = fn(k)
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= budget_s:
            break
    out = stats(samples)
    out.update(runs_wanted=runs, budget_s=budget_s, cut_by_budget=len(samples) < runs, last_result=_plain(last))
    return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)[:200]


def blocking(uri: str, db: str, probe_id: Any, long_cmd: Callable[[Any], Any], window_s: float = LONG_WINDOW_S
             ) -> dict[str, Any]:
    """A second client's ``find_one`` by ``_id`` every 10 ms while ``long_cmd`` runs on the first client.

    A command shorter than ``LONG_WINDOW_S`` is repeated back to back until the window is full, so that the
    probes overlap it; ``long_s`` is the time of one run.
    """
    import pymongo

    probes: list[tuple[float, float]] = []
    stop = threading.Event()
    prober: Any = pymongo.MongoClient(uri, maxPoolSize=1, socketTimeoutMS=int(COMMAND_TIMEOUT_S * 1000))
    runner: Any = pymongo.MongoClient(uri, maxPoolSize=1, socketTimeoutMS=int(COMMAND_TIMEOUT_S * 1000))
    coll = prober[db]["fireworks"]
    coll.find_one({"_id": probe_id})      # connected and authenticated before the clock starts
    runner[db].command("ping")

    def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            coll.find_one({"_id": probe_id})
            probes.append((t0, time.perf_counter()))
            stop.wait(PROBE_INTERVAL_S)

    th = threading.Thread(target=probe, daemon=True, name="probe")
    try:
        th.start()
        time.sleep(0.3 * window_s)
        l0 = time.perf_counter()
        runs = 0
        while runs == 0 or time.perf_counter() - l0 < window_s:   # a fast one back to back, for a window
            result = long_cmd(runner[db]["fireworks"])
            runs += 1
        l1 = time.perf_counter()
        time.sleep(0.2 * window_s)
    finally:
        stop.set()
        th.join(STOP_TIMEOUT_S)
        prober.close()
        runner.close()
    during = [b - a for a, b in probes if b > l0 and a < l1]
    idle = [b - a for a, b in probes if b <= l0]
    return {"long_s": (l1 - l0) / runs, "runs": runs, "window_s": l1 - l0, "result": _plain(result),
            "probes_during": len(during),
            "max_s": max(during) if during else None, "p99_s": percentile(during, 99),
            "idle_median_s": stats(idle)["median_s"]}


def latencies(uri: str, lp: Any, loaded: dict[str, Any], n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every repeated measurement and the blocking test, on the restarted server."""
    from fireworks import FWorker
    from pymongo import DESCENDING

    from pilot.manager.demand import PilotOffer, ensure_demand_indexes, gather_demand

    fws = lp.fireworks
    first = loaded["first_fw_id"]
    cats = [f"cat{k:02d}" for k in range(N_CATEGORIES)]
    offers = [PilotOffer(cluster=f"scale{k:02d}", categories=(c,), usable_seconds=3600.0) for k, c in enumerate(cats)]
    out: dict[str, Any] = {}

    def run(name: str, fn: Callable[[int], Any]) -> None:
        log(f"dbserver:   {name} ...")
        out[name] = repeat(fn, *PLAN[name])

    run("count_ready", lambda k: fws.count_documents({"state": "READY"}))
    run("find_one_fw_id", lambda k: fws.find_one({"fw_id": first + (k * 7919) % n})["fw_id"])
    slow = (out["count_ready"]["median_s"] or 0) > SKIP_COUNT_ALL_AFTER_S
    ensure_demand_indexes(fws)  # as the manager does every cycle
    if slow:
        out["demand"] = {"skipped": f"the READY count took {out['count_ready']['median_s']:.0f} s: the demand "
                                    "aggregation reads every READY Firework on this engine (minutes)"}
    else:
        run("demand", lambda k: gather_demand(fws, offers).queries)
    probe_id = fws.find_one({"fw_id": first + n // 2}, {"_id": 1})["_id"]
    long_cmds: dict[str, Callable[[Any], Any]] = {
        "count_ready": lambda c: c.count_documents({"state": "READY"}),
        "unindexed_count_all": lambda c: c.count_documents({"spec.parameters.seed": {"$gte": 0}}),
        "unindexed_find_one_match": lambda c: len(list(c.find({"spec.parameters.seed": n - 1}, {"fw_id": 1}))),
    }
    out["blocking"] = {}
    for name, cmd in long_cmds.items():
        if name == "unindexed_count_all" and slow:
            out["blocking"][name] = {"skipped": f"the READY count took {out['count_ready']['median_s']:.0f} s (more "
                                                f"than {SKIP_COUNT_ALL_AFTER_S:.0f} s): a count materialising every "
                                                "Firework would take longer, with the other client waiting as long"}
            continue
        log(f"dbserver:   a small client's find_one every 10 ms during {name} ...")
        out["blocking"][name] = blocking(uri, lp.db.name, probe_id, cmd,
                                         max(0.2, LONG_WINDOW_S * min(1.0, n / WINDOW_FULL_AT)))
    sortby = [("spec._priority", DESCENDING)]

    def reserve(k: int) -> Any:
        q = dict(FWorker(name="bench-pilot", category=cats[k % N_CATEGORIES]).query, state="READY")
        doc = fws.find_one_and_update(q, {"$set": {"state": "RESERVED", "updated_on": datetime.datetime.now(
            datetime.timezone.utc)}}, sort=sortby)
        return doc["fw_id"]

    run("reserve", reserve)
    run("checkout_fw", lambda k: lp.checkout_fw(FWorker(name="bench-pilot", category=cats[(k + 3) % N_CATEGORIES]),
                                                 "/scratch/campaign/bench", host="bench", ip="198.51.100.8")[1])
    return out


def _snapshots(lp: Any) -> int | None:
    """Snapshots the server wrote so far (``pilotStats``), None when it does not say."""
    try:
        return int(lp.connection.admin.command("pilotStats")["snapshots"])
    except Exception:  # noqa: BLE001 - an engine without the counter is still measured
        return None


def measure_engine(label: str, tree: Path, n: int, templates: dict[str, Any], log: Callable[[str], None]
                   ) -> dict[str, Any]:
    """Load, snapshot, restart and measure one engine; the server is stopped by its PID in every case."""
    from fireworks import LaunchPad

    tmp = Path(tempfile.mkdtemp(prefix=f"pilot-bench-dbserver-{label}-"))
    srv = EngineServer(tree, tmp / "data")
    res: dict[str, Any] = {"tree": str(tree), "loadavg_before": loadavg()}

    def connect() -> Any:
        return LaunchPad(host=srv.uri, name="campaign", uri_mode=True, logdir=None, strm_lvl="ERROR",
                         mongoclient_kwargs={"socketTimeoutMS": int(COMMAND_TIMEOUT_S * 1000)})

    try:
        res.update(srv.code_check())
        log(f"dbserver: {label}: server runs {res['pilot_file']}")
        srv.start()
        if not templates:
            templates.update(make_templates(srv.uri, tmp))
        lp = connect()
        lp.reset("", require_password=False, max_reset_wo_password=10**9)
        log(f"dbserver: {label}: loading {n:,} Fireworks ...")
        loaded = load(lp, n, templates)
        res["load"] = loaded
        res["rss_after_load"] = proc_status(srv.proc.pid) if srv.proc else {}
        res["snapshots_during_load"] = _snapshots(lp)
        lp.connection.close()
        log(f"dbserver: {label}: loaded in {loaded['seconds']:.1f} s, {res['rss_after_load']}; clean restart ...")
        res["snapshot"] = srv.stop_measured()
        res["data_dir_mib"] = round(sum(p.stat().st_size for p in srv.data_dir.rglob("*") if p.is_file()) / 2**20, 1)
        t0 = time.perf_counter()
        srv.start()
        res["restart_s"] = time.perf_counter() - t0
        res["rss_after_restart"] = proc_status(srv.proc.pid) if srv.proc else {}
        lp = connect()
        res["ready_counted"] = lp.fireworks.count_documents({"state": "READY"})
        res["fireworks_counted"] = lp.fireworks.estimated_document_count()
        res.update(latencies(srv.uri, lp, loaded, n, log))
        res["rss_end"] = proc_status(srv.proc.pid) if srv.proc else {}
        lp.connection.close()
    finally:
        srv.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    res["loadavg_after"] = loadavg()
    return res


def run(n: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both engines, the baseline first; an engine that fails is reported and the other still measured."""
    commit = os.environ.get(BASELINE_ENV, DEFAULT_BASELINE)
    base_dir = Path(tempfile.mkdtemp(prefix="pilot-bench-baseline-"))
    out: dict[str, Any] = {"fireworks": n, "categories": N_CATEGORIES, "fws_per_workflow": FWS_PER_WF,
                           "state_cycle": STATE_CYCLE, "plan": PLAN, "engines": {}, "errors": {}}
    templates: dict[str, Any] = {}
    try:
        out["baseline_commit"] = extract_baseline(commit, base_dir)
        out["ours_source"] = source_state()
        for label, tree in (("baseline", base_dir), ("ours", REPO)):
            try:
                out["engines"][label] = measure_engine(label, tree, n, templates, log)
            except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the other's numbers
                out["errors"][label] = f"{type(exc).__name__}: {exc}"
                log(f"dbserver: {label} FAILED: {exc}")
    finally:
        subprocess.run(["rm", "-rf", str(base_dir)], check=False)
    if templates:
        import bson

        out["fw_doc_bytes"] = {s: len(bson.encode(d)) for s, d in templates["fw"].items()}
        out["launch_doc_bytes"] = {s: len(bson.encode(d)) for s, d in templates["launch"].items()}
    ours = out["engines"].get("ours", {})
    out["server_peak_rss_mib"] = (ours.get("rss_end") or {}).get("VmHWM")
    if not out["engines"]:
        raise BenchError(f"no engine could be measured: {out['errors']}")
    return out


# ============================================================================ the table
def _row(label: str, b: Any, o: Any, note: str = "") -> list[Any]:
    numbers = all(isinstance(v, (int, float)) for v in (b, o))
    return [label, b, o, ratio(o, b) if numbers else None, note]


def _lat_rows(label: str, key: str, b: dict[str, Any], o: dict[str, Any]) -> list[list[Any]]:
    x, y = b.get(key) or {}, o.get(key) or {}
    runs = f"runs {x.get('runs', '-')} / {y.get('runs', '-')}"
    return [_row(f"{label} ms, median", ms(x.get("median_s")), ms(y.get("median_s")), runs),
            _row(f"{label} ms, p95", ms(x.get("p95_s")), ms(y.get("p95_s")))]


def table(res: dict[str, Any]) -> str:
    b, o = res["engines"].get("baseline", {}), res["engines"].get("ours", {})

    def g(d: dict[str, Any], *path: str) -> Any:
        for p in path:
            d = d.get(p) if isinstance(d, dict) else None  # type: ignore[assignment]
        return d

    rows = [_row("load s", g(b, "load", "seconds"), g(o, "load", "seconds")),
            _row("RSS after load MiB", g(b, "rss_after_load", "VmRSS"), g(o, "rss_after_load", "VmRSS")),
            _row("peak RSS during load MiB", g(b, "rss_after_load", "VmHWM"), g(o, "rss_after_load", "VmHWM")),
            _row("final snapshot s", g(b, "snapshot", "seconds"), g(o, "snapshot", "seconds")),
            _row("peak RSS during snapshot MiB", g(b, "snapshot", "peak_mib"), g(o, "snapshot", "peak_mib")),
            _row("data dir MiB", b.get("data_dir_mib"), o.get("data_dir_mib")),
            _row("restart (restore) s", b.get("restart_s"), o.get("restart_s")),
            _row("RSS after restart MiB", g(b, "rss_after_restart", "VmRSS"), g(o, "rss_after_restart", "VmRSS")),
            _row("peak RSS at the end MiB", g(b, "rss_end", "VmHWM"), g(o, "rss_end", "VmHWM"))]
    for label, key in (("count READY", "count_ready"), ("find_one fw_id", "find_one_fw_id"),
                       ("demand (gather_demand)", "demand"), ("reserve findAndModify", "reserve"),
                       ("checkout_fw", "checkout_fw")):
        rows += _lat_rows(label, key, b, o)
    for label, key in (("count READY", "count_ready"), ("unindexed count all", "unindexed_count_all"),
                       ("unindexed find", "unindexed_find_one_match")):
        x, y = g(b, "blocking", key) or {}, g(o, "blocking", key) or {}
        rows.append(_row(f"{label}: long command s", x.get("long_s", "skipped" if "skipped" in x else None),
                         y.get("long_s", "skipped" if "skipped" in y else None),
                         f"runs {x.get('runs', '-')} / {y.get('runs', '-')}"))
        rows.append(_row("  other client's max wait ms", ms(x.get("max_s")), ms(y.get("max_s")),
                         f"probes {x.get('probes_during', '-')} / {y.get('probes_during', '-')}"))
        rows.append(_row("  other client's p99 wait ms", ms(x.get("p99_s")), ms(y.get("p99_s"))))
    head = (f"{res['fireworks']:,} Fireworks ({g(b, 'load', 'states') or g(o, 'load', 'states')}), "
            f"{g(o, 'load', 'workflows') or g(b, 'load', 'workflows')} workflows, "
            f"{g(o, 'load', 'launches') or g(b, 'load', 'launches')} launches; Firework document "
            f"{res.get('fw_doc_bytes', {}).get('READY', '?')} bytes; baseline {res.get('baseline_commit')}, "
            f"ours = working tree\n")
    for label, e in (("baseline", b), ("ours", o)):
        if e:
            head += (f"{label}: pilot from {e.get('pilot_file')}, READY counted {e.get('ready_counted')}, "
                     f"load average {e.get('loadavg_before')} -> {e.get('loadavg_after')}\n")
    for label, err in (res.get("errors") or {}).items():
        head += f"{label}: FAILED: {err.splitlines()[0][:300]}\n"
    return head + fmt_table(["", "baseline", "ours", "ours/baseline", ""], rows)
