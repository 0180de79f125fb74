"""``pilot demo``: a small, real MD campaign on this machine with nothing configured.

What it does, in the config directory (``--config-dir``, default ``~/.pilot``):

1. refuses a config directory that holds a configuration the demo did not write (it never overwrites a
   user's files, and never adds demo work to a user's LaunchPad);
2. starts the embedded LaunchPad server with the same code as ``pilot launchpad init`` (data in
   ``CONFIG_DIR/lpserver``, ``CONFIG_DIR/my_launchpad.yaml`` written), or reuses the one running;
3. writes ``pilot.yaml`` and ``clusters/local.yaml`` (scheduler ``local``: pilots are processes on this
   machine with a short wall time) unless the demo wrote them before;
4. measures how fast the engine runs here (a few hundred steps), then adds ``--sims`` segmented water-box
   simulations (:mod:`tasks.testsystems`, :func:`tasks.workflow.make_md_workflow`) whose length gives about
   ``--segments`` segments of ``--segment-seconds`` each;
5. runs the manager in this process (:meth:`pilot.manager.Manager.run_cycle` every ``poll_interval``) with
   a progress display until every simulation has finished, then lets the pilots drain (they leave when
   idle) and cancels any that remain: no pilot process outlives the demo;
6. prints ``pilot status`` and the throughput report, and writes ``CONFIG_DIR/report.png``.

The LaunchPad server keeps running afterwards so that ``pilot status`` and ``pilot report`` work on the
directory; ``pilot launchpad stop`` stops it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("pilot.demo")

#: First line of every file the demo writes: how it recognises its own files on a second run.
DEMO_MARK = "# written by `pilot demo`: a local cluster for the demo; edit freely"
CLUSTER_NAME = "local"
#: Fixed sizes of the demo cluster: short pilots, so that the demo shows pilots coming and going.
PILOT_WALLTIME_S = 90
WALLTIME_MARGIN_S = 20
IDLE_TIMEOUT_S = 4
POLL_INTERVAL_S = 2
#: ``_pilot.walltime`` of a segment: with 70 usable seconds a pilot is planned for two segments, so the
#: manager starts one pilot per two simulations (up to the number of cores).
SEGMENT_FW_WALLTIME_S = 30
DB_NAME = "fireworks"


class DemoError(Exception):
    """The demo cannot run (or cannot go on); the message says what to do."""


@dataclass(frozen=True)
class DemoOptions:
    """The ``pilot demo`` options."""

    engine: str = "openmm"
    sims: int = 3
    segments: int = 3
    segment_seconds: float = 6.0
    keep_going: bool = False
    timeout: float = 900.0


@dataclass
class Sim:
    """One simulation of the demo and what the LaunchPad says about it."""

    name: str
    run_dir: Path
    nsteps: int
    root_fw_id: int = 0
    segments_done: int = 0
    step: int = 0
    state: str = "waiting"  # waiting | running | finished | failed
    where: str = ""  # the FWorker running it
    error: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")


@dataclass
class Pilots:
    """Our pilots by phase, from the manager's records."""

    pending: int = 0
    running: int = 0
    ended: int = 0
    ended_states: dict[str, int] = field(default_factory=dict)


# ============================================================================ the config dir
def _is_demo_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == DEMO_MARK
    except OSError:
        return False


def check_config_dir(config_dir: Path) -> None:
    """Refuse a config directory with a configuration the demo did not write.

    Raises
    ------
    DemoError
        Naming the files, and suggesting a directory of its own for the demo.
    """
    import yaml

    from pilot.launchpad.control import LAUNCHPAD_FILE, SERVER_DIR

    if config_dir.exists() and not config_dir.is_dir():
        raise DemoError(f"{config_dir} is a file, not a directory: choose another --config-dir")
    foreign: list[str] = []
    pilot_yaml = config_dir / "pilot.yaml"
    if pilot_yaml.exists() and not _is_demo_file(pilot_yaml):
        foreign.append(str(pilot_yaml))
    cdir = config_dir / "clusters"
    if cdir.is_dir():
        for p in sorted([*cdir.glob("*.yaml"), *cdir.glob("*.yml")]):
            if not _is_demo_file(p):
                foreign.append(str(p))
    lp_file = config_dir / LAUNCHPAD_FILE
    if lp_file.exists():
        try:
            data = yaml.safe_load(lp_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DemoError(
                f"{lp_file} cannot be read ({e}): move it away, or run the demo in another --config-dir"
            ) from None
        embedded = (
            isinstance(data, dict)
            and not data.get("uri_mode")
            and str(data.get("host")) in ("127.0.0.1", "localhost", "::1")
            and (config_dir / SERVER_DIR).is_dir()
        )
        if not embedded:
            foreign.append(f"{lp_file} (a LaunchPad that is not this directory's embedded server)")
    if foreign:
        listed = "\n  ".join(foreign)
        raise DemoError(
            f"{config_dir} already holds a configuration that `pilot demo` did not write:\n  {listed}\n"
            "The demo never overwrites your files nor adds its simulations to your LaunchPad. Run it in a "
            f"directory of its own, e.g. `pilot --config-dir {config_dir.parent / 'pilot-demo'} demo`."
        )


def _yaml_text(doc: dict[str, Any], comment: str) -> str:
    import yaml

    return f"{DEMO_MARK}\n# {comment}\n" + yaml.safe_dump(doc, sort_keys=False)


def write_config(config_dir: Path, max_pilots: int) -> list[Path]:
    """Write ``pilot.yaml`` and ``clusters/local.yaml`` where they do not exist yet; return those written."""
    from pilot.launchpad.control import LAUNCHPAD_FILE

    written = []
    pilot_yaml = config_dir / "pilot.yaml"
    if not pilot_yaml.exists():
        pilot_yaml.write_text(
            _yaml_text(
                {
                    "launchpad_file": LAUNCHPAD_FILE,
                    "poll_interval": POLL_INTERVAL_S,
                    "log_dir": "logs",
                    "backoff": {"initial": 5, "max": 60},
                    "max_reruns": 3,
                },
                "the manager: LaunchPad file and log dir relative to this folder; a cycle every 2 s",
            )
        )
        written.append(pilot_yaml)
    cdir = config_dir / "clusters"
    cdir.mkdir(exist_ok=True)
    cluster = cdir / f"{CLUSTER_NAME}.yaml"
    if not cluster.exists():
        cluster.write_text(
            _yaml_text(
                {
                    "scheduler": "local",
                    "categories": ["md", "local"],
                    "launchpad_file": str(config_dir / LAUNCHPAD_FILE),
                    "work_dir": str(config_dir / "work"),
                    "python": sys.executable,
                    "pilot": {"walltime": PILOT_WALLTIME_S, "cores": 1},
                    "walltime_margin": WALLTIME_MARGIN_S,
                    "grace": 5,
                    "idle_timeout": IDLE_TIMEOUT_S,
                    "limits": {"max_queued": max_pilots, "max_running": max_pilots},
                },
                f"this machine: pilots are local processes with a {PILOT_WALLTIME_S} s wall time",
            )
        )
        written.append(cluster)
    return written


def start_launchpad(config_dir: Path, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Start (or reuse) the embedded server of ``config_dir`` and write its LaunchPad file, as
    ``pilot launchpad init`` does. Returns the running server and the LaunchPad dict."""
    import yaml

    from pilot.launchpad.control import (
        LAUNCHPAD_FILE,
        SERVER_DIR,
        ControlError,
        check_launchpad,
        find_running,
        launchpad_dict,
        start_background,
        write_private_yaml,
    )

    data_dir = config_dir / SERVER_DIR
    lp_file = config_dir / LAUNCHPAD_FILE
    name = DB_NAME
    if lp_file.exists():
        old = yaml.safe_load(lp_file.read_text()) or {}
        name = str(old.get("name") or DB_NAME)
    try:
        server = find_running(data_dir)
        if server is None:
            server = start_background(data_dir, None)
            say(
                f"started the embedded LaunchPad server: pid {server.pid}, {server.host}:{server.port}, "
                f"data {data_dir}"
            )
        else:
            say(f"using the running embedded LaunchPad server: pid {server.pid}, {server.host}:{server.port}")
        lpd = launchpad_dict(name, server.host, server.port)
        check_launchpad(lpd)
    except ControlError as e:
        raise DemoError(f"the embedded LaunchPad server: {e}") from None
    write_private_yaml(lp_file, lpd)
    return server, lpd


# ============================================================================ the engine
def choose_engine(engine: str) -> str:
    """``openmm`` or ``gromacs`` for ``--engine``; a :class:`DemoError` says what to install."""
    has_gmx = shutil.which("gmx") is not None
    if engine == "auto":
        engine = "gromacs" if has_gmx else "openmm"
    if engine == "gromacs" and not has_gmx:
        raise DemoError(
            "--engine gromacs: `gmx` is not on the PATH; install GROMACS (e.g. `apt install gromacs` "
            "or `conda install -c conda-forge gromacs`), or use --engine openmm"
        )
    if engine == "openmm":
        try:
            import openmm  # noqa: F401
        except ImportError:
            alt = " or use --engine gromacs (`gmx` is on the PATH)" if has_gmx else ""
            raise DemoError(
                "--engine openmm: OpenMM is not installed; install the extra that brings it: "
                f'pip install "fireworks-pilot[md]"{alt}'
            ) from None
    return engine


@dataclass(frozen=True)
class Speed:
    """What the speed test measured: steps per second, and the start-up cost of one segment."""

    steps_per_s: float
    setup_s: float


def measure_openmm(work: Path) -> Speed:
    """Run a few hundred steps of the demo's water box (CPU, one thread) and time them."""
    import openmm as mm
    from openmm import app, unit

    from tasks.testsystems import openmm_water_box

    files = openmm_water_box(work, seed=1)
    t0 = time.monotonic()
    system = mm.XmlSerializer.deserialize((work / files["system"]).read_text())
    integrator = mm.XmlSerializer.deserialize((work / files["integrator"]).read_text())
    pdb = app.PDBFile(str(work / files["topology"]))
    sim = app.Simulation(
        pdb.topology, system, integrator, mm.Platform.getPlatformByName("CPU"), {"Threads": "1"}
    )
    sim.context.setPositions(pdb.positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    sim.step(10)
    setup = time.monotonic() - t0
    n, t1 = 0, time.monotonic()
    while time.monotonic() - t1 < 1.0:
        sim.step(100)
        n += 100
    rate = n / (time.monotonic() - t1)
    return Speed(steps_per_s=rate, setup_s=setup)


def measure_gromacs(work: Path) -> Speed:
    """Run a short ``gmx mdrun`` of the demo's water box (one thread) and time it."""
    import subprocess

    from tasks.gromacs import parse_performance
    from tasks.testsystems import gromacs_water_box

    nsteps = 2000
    gromacs_water_box(work, nsteps, name="speed")
    argv = ["gmx", "-quiet", "mdrun", "-deffnm", "speed", "-ntmpi", "1", "-ntomp", "1", "-pin", "off"]
    t0 = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=work,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
        env=dict(os.environ, OMP_NUM_THREADS="1", GMX_MAXBACKUP="-1"),
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        from tasks.gromacs import parse_gromacs_error

        text = proc.stdout + proc.stderr
        raise DemoError(
            f"the GROMACS speed test failed in {work} (`{' '.join(argv)}`, exit status "
            f"{proc.returncode}):\n{parse_gromacs_error(text) or text[-1500:]}"
        )
    ns_day = parse_performance(proc.stdout + proc.stderr)
    if ns_day:
        rate = ns_day * 1000.0 / 86400.0 / 0.002  # ns/day -> ps/s -> steps of 2 fs per second
        return Speed(steps_per_s=rate, setup_s=max(0.0, wall - nsteps / rate))
    return Speed(steps_per_s=nsteps / wall, setup_s=0.0)


def steps_for(speed: Speed, segments: int, segment_s: float) -> int:
    """A run length that takes about ``segments`` segments of ``segment_s`` seconds at ``speed``.

    Each segment integrates for about ``segment_s - setup``; the run is ``segments - 0.5`` of those, so the
    last segment is about half full and a busier machine only adds segments.
    """
    per_segment = max(1.0, segment_s - speed.setup_s - 0.5) * speed.steps_per_s
    n = per_segment * (segments - 0.5)
    return max(500, math.ceil(n / 100.0) * 100)


def add_simulations(
    lp: Any, engine: str, root: Path, count: int, nsteps: int, segment_s: float, prefix: str, segments: int = 3
) -> list[Sim]:
    """Build ``count`` water boxes under ``root`` and add one segmented workflow for each."""
    from tasks.workflow import make_md_workflow

    sims = []
    hours = segment_s / 3600.0
    slack = max(1.0, SEGMENT_FW_WALLTIME_S - segment_s)

    def workflow(run_dir: Path, name: str, params: dict[str, Any], env: dict[str, str]) -> Any:
        return make_md_workflow(
            run_dir,
            engine,
            name,
            segment_hours=hours,
            engine_params=params,
            env=env,
            startup_slack_s=slack,
            deadline_margin_s=10.0,
            min_segment_s=2.0,
            stop_margin_s=5.0,
        )

    for i in range(1, count + 1):
        run_dir = root / f"sim-{i}"
        name = f"{prefix}-sim{i}"
        if engine == "openmm":
            from tasks.testsystems import openmm_water_box

            openmm_water_box(run_dir, seed=1000 + i)
            params = {
                "nsteps": nsteps,
                "platform": "CPU",
                "platform_properties": {"Threads": "1"},
                "traj_interval": 100,
                "energy_interval": 100,
                "temperature": 300,
                "seed": i,
                "chunk_seconds": 0.5,
                # a step budget per segment: the run takes its segments whatever the machine's speed
                "segment_steps": math.ceil(nsteps / segments),
            }
            wf = workflow(run_dir, name, params, {"OPENMM_CPU_THREADS": "1"})
        else:
            from tasks.testsystems import gromacs_water_box

            gromacs_water_box(run_dir, nsteps)
            params = {"ntmpi": 1, "ntomp": 1, "pin": "off"}
            wf = workflow(run_dir, name, params, {"OMP_NUM_THREADS": "1", "GMX_MAXBACKUP": "-1"})
        id_map = lp.add_wf(wf)
        sims.append(
            Sim(name=name, run_dir=run_dir, nsteps=nsteps, root_fw_id=int(next(iter(id_map.values()))))
        )
    return sims


# ============================================================================ watching
def refresh_sims(lp: Any, sims: list[Sim]) -> None:
    """Update every simulation from the LaunchPad: two queries for all of them."""
    by_root = {s.root_fw_id: s for s in sims}
    node_sim: dict[int, Sim] = {}
    states: dict[int, str] = {}
    for wf in lp.workflows.find({"nodes": {"$in": list(by_root)}}, {"nodes": 1, "fw_states": 1}):
        sim = next((by_root[n] for n in wf.get("nodes", []) if n in by_root), None)
        if sim is None:
            continue
        for n in wf.get("nodes", []):
            node_sim[int(n)] = sim
        for k, v in (wf.get("fw_states") or {}).items():
            states[int(k)] = str(v)
    per: dict[str, dict[str, Any]] = {
        s.name: {"done": 0, "step": 0, "finished": False, "where": "", "failed": "", "running": False}
        for s in sims
    }
    for fw_id, st in states.items():
        sim = node_sim[fw_id]
        if st == "RUNNING":
            per[sim.name]["running"] = True
    proj = {
        "fw_id": 1,
        "state": 1,
        "fworker.name": 1,
        "action.stored_data.checkpoint_step": 1,
        "action.stored_data.outcome": 1,
        "action.stored_data._exception._stacktrace": 1,
        "_id": 0,
    }
    ids = sorted(node_sim)
    for doc in lp.launches.find(
        {"fw_id": {"$in": ids}, "state": {"$in": ["COMPLETED", "RUNNING", "FIZZLED"]}}, proj
    ):
        sim = node_sim.get(int(doc["fw_id"]))
        if sim is None:
            continue
        p = per[sim.name]
        sd = (doc.get("action") or {}).get("stored_data") or {}
        if doc["state"] == "COMPLETED":
            p["done"] += 1
            p["step"] = max(p["step"], int(sd.get("checkpoint_step") or 0))
            if sd.get("outcome") == "finished":
                p["finished"] = True
        elif doc["state"] == "RUNNING":
            p["where"] = (doc.get("fworker") or {}).get("name") or ""
        elif states.get(int(doc["fw_id"])) == "FIZZLED":
            trace = ((sd.get("_exception") or {}).get("_stacktrace") or "").strip()
            p["failed"] = trace.splitlines()[0] if trace else "FIZZLED"
    for s in sims:
        p = per[s.name]
        s.segments_done, s.step = p["done"], p["step"]
        if p["finished"]:
            s.state, s.where = "finished", ""
        elif p["failed"]:
            s.state, s.error, s.where = "failed", p["failed"], ""
        elif p["running"]:
            s.state, s.where = "running", p["where"]
        else:
            s.state, s.where = "waiting", ""


def count_pilots(records: Any, job_names: set[str]) -> Pilots:
    from pilot.manager.records import PENDING_STATES, RUNNING_STATES

    out = Pilots()
    for p in records.pilots.find({"_id": {"$in": sorted(job_names)}}, {"state": 1}):
        st = str(p.get("state"))
        if st in PENDING_STATES:
            out.pending += 1
        elif st in RUNNING_STATES:
            out.running += 1
        else:
            out.ended += 1
            out.ended_states[st] = out.ended_states.get(st, 0) + 1
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class Progress:
    """The live display: a small table redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, sims: list[Sim], engine: str, tty: bool, echo: Callable[[str], None]) -> None:
        self.sims = sims
        self.engine = engine
        self.tty = tty
        self.echo = echo
        self.drawn = 0
        self.last: dict[str, tuple[Any, ...]] = {}
        self.last_pilots: tuple[int, int, int] | None = None

    def table(self, pilots: Pilots, elapsed: float) -> list[str]:
        w = max(len(s.name) for s in self.sims)
        lines = [f"  {'simulation'.ljust(w)}  segments  {'steps'.rjust(15)}  state"]
        for s in self.sims:
            steps = f"{s.step:,}/{s.nsteps:,}"
            state = s.state + (f" on {s.where}" if s.where else "")
            bar_n = int(10 * min(1.0, s.step / s.nsteps)) if s.nsteps else 0
            lines.append(
                f"  {s.name.ljust(w)}  {s.segments_done:>8}  {steps:>15}  "
                f"[{'#' * bar_n}{'.' * (10 - bar_n)}] "
                f"{state}"
            )
        lines.append(
            f"  pilots: {pilots.running} running, {pilots.pending} queued, {pilots.ended} ended"
            f"    elapsed {_clock(elapsed)}"
        )
        return lines

    def update(self, pilots: Pilots, elapsed: float) -> None:
        if self.tty:
            lines = self.table(pilots, elapsed)
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stdout.write(up + "\x1b[J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
            self.drawn = len(lines)
            return
        stamp = f"[{_clock(elapsed):>5}]"
        for s in self.sims:
            key = (s.segments_done, s.state, s.where)
            if self.last.get(s.name) == key:
                continue
            self.last[s.name] = key
            if s.state == "finished":
                what = f"finished at step {s.step:,} after {s.segments_done} segments"
            elif s.state == "failed":
                what = f"FAILED: {s.error}"
            elif s.state == "running":
                what = f"segment {s.segments_done + 1} running on {s.where} (step {s.step:,}/{s.nsteps:,})"
            else:
                what = (
                    f"waiting for a pilot ({s.segments_done} "
                    f"segment{'' if s.segments_done == 1 else 's'} done, "
                    f"step {s.step:,}/{s.nsteps:,})"
                )
            self.echo(f"{stamp} {s.name}: {what}")
        pk = (pilots.running, pilots.pending, pilots.ended)
        if pk != self.last_pilots:
            self.last_pilots = pk
            self.echo(
                f"{stamp} pilots: {pilots.running} running, {pilots.pending} queued, {pilots.ended} ended"
            )


# ============================================================================ pilots
def _live_records(mgr: Any, job_names: set[str]) -> list[dict[str, Any]]:
    return [r for r in mgr.records.live() if r["_id"] in job_names]


def refresh_only(mgr: Any) -> None:
    """Update our pilots' records from the scheduler without submitting anything."""
    from pilot.manager.cycle import CycleReport

    rep = CycleReport(started=time.time())
    for rt in mgr.clusters.values():
        mgr.refresh_cluster(rt, rep)
    mgr.reconcile_lost_work(rep)


def _local_job_pids(job_ids: list[str]) -> list[int]:
    """Supervisor and job pids that :mod:`pilot.localsched` recorded for these jobs (its JSON job files)."""
    from pilot.localsched import state_dir

    pids: list[int] = []
    for jid in job_ids:
        try:
            job = json.loads((state_dir() / "jobs" / f"{jid}.json").read_text())
        except (OSError, ValueError):
            continue
        pids.extend(int(p) for p in (job.get("supervisor"), job.get("pid")) if p)
    return pids


def stop_pilots(mgr: Any, job_names: set[str], drain_s: float, say: Callable[[str], None]) -> None:
    """Let our pilots leave by themselves for ``drain_s`` seconds, then cancel the rest; wait until every
    pilot process (the localsched supervisor and the job's process group) is gone."""
    import psutil

    deadline = time.monotonic() + drain_s
    while _live_records(mgr, job_names) and time.monotonic() < deadline:
        time.sleep(1.0)
        refresh_only(mgr)
    live = _live_records(mgr, job_names)
    if live:
        ids = [str(r["job_id"]) for r in live if r.get("job_id")]
        say(f"cancelling {len(live)} pilot{'s' if len(live) != 1 else ''} still alive: {', '.join(ids)}")
        from pilot.transport.clusters import transport_for

        for rt in mgr.clusters.values():
            mine = [str(r["job_id"]) for r in live if r.get("job_id") and r["cluster"] == rt.name]
            if mine:
                tr = transport_for(rt.name, rt.config)
                try:
                    res = tr.run(rt.adapter.cancel_command(mine), timeout=60.0)
                finally:
                    tr.close()
                out = rt.adapter.parse_cancel(res.returncode, res.stdout, res.stderr, mine)
                if not out.ok:
                    say(f"warning: cancelling {', '.join(mine)} failed: {out.reason}")
        end = time.monotonic() + 30.0
        while _live_records(mgr, job_names) and time.monotonic() < end:
            time.sleep(0.5)
            refresh_only(mgr)
    # the records say ended: make sure the processes are gone too
    all_ids = [
        str(r["job_id"])
        for r in mgr.records.pilots.find({"_id": {"$in": sorted(job_names)}}, {"job_id": 1})
        if r.get("job_id")
    ]
    end = time.monotonic() + 20.0
    left = [p for p in _local_job_pids(all_ids) if psutil.pid_exists(p)]
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    if left:
        say(f"warning: pilot processes still alive after cancelling: pids {', '.join(map(str, left))}")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# ============================================================================ the demo
def _cmd_prefix(config_dir: Path) -> str:
    default = Path(os.path.expanduser(os.environ.get("PILOT_CONFIG_DIR", "~/.pilot")))
    return "pilot" if config_dir.resolve() == default.resolve() else f"pilot --config-dir {config_dir}"


def _next_run(config_dir: Path) -> int:
    root = config_dir / "demo"
    taken = (
        [int(p.name.split("-", 1)[1]) for p in root.glob("run-*") if p.name.split("-", 1)[1].isdigit()]
        if root.is_dir()
        else []
    )
    return max(taken, default=0) + 1


def _setup_logging(config_dir: Path, verbose: int) -> tuple[logging.Logger, list[logging.Handler], bool]:
    """Manager log lines go to CONFIG_DIR/logs/manager.log (INFO) and stderr (warnings, or INFO with -v)."""
    (config_dir / "logs").mkdir(parents=True, exist_ok=True)
    lg = logging.getLogger("pilot.manager")
    fh = logging.FileHandler(config_dir / "logs" / "manager.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    fh.setLevel(logging.INFO)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    sh.setLevel(logging.INFO if verbose > 0 else logging.WARNING)
    old_propagate = lg.propagate
    lg.addHandler(fh)
    lg.addHandler(sh)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg, [fh, sh], old_propagate


def _print_status(ctx: click.Context | None, lp: Any, config: Any, say: Callable[[str], None]) -> None:
    """``pilot status`` when the command exists, else a short summary of our own."""
    from pilot.cli import COMMANDS

    if ctx is not None and "status" in COMMANDS:
        cmd = ctx.command.get_command(ctx, "status") if isinstance(ctx.command, click.Group) else None
        if cmd is None and ctx.parent is not None and isinstance(ctx.parent.command, click.Group):
            cmd = ctx.parent.command.get_command(ctx.parent, "status")
        if cmd is not None:
            say("")
            say("$ pilot status")
            try:
                ctx.invoke(cmd)
            except click.exceptions.Exit:
                pass  # status exits 1 when something needs a person: it said what
            except click.ClickException as e:
                say(f"pilot status failed: {e.format_message()}")
            return
    counts: dict[str, int] = {}
    for row in lp.fireworks.aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}]):
        counts[str(row["_id"])] = int(row["n"])
    pilots: dict[str, int] = {}
    for row in lp.db["pilots"].aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}]):
        pilots[str(row["_id"])] = int(row["n"])
    say("")
    say("Status (`pilot status` is not available in this version):")
    say("  Fireworks: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    say("  pilots:    " + (", ".join(f"{n} {s}" for s, n in sorted(pilots.items())) or "none"))


def run_demo(
    config_dir: Path,
    opts: DemoOptions,
    ctx: click.Context | None = None,
    echo: Callable[[str], None] = click.echo,
) -> bool:
    """Run the demo in ``config_dir``; True when every simulation finished.

    Raises
    ------
    DemoError
        When it cannot start (foreign config, no engine, the server does not start) or gives up.
    """
    t_start = time.monotonic()
    config_dir = Path(os.path.expanduser(str(config_dir))).absolute()
    verbose = int(getattr(ctx.obj, "verbose", 0)) if ctx is not None and ctx.obj is not None else 0
    tty = sys.stdout.isatty()
    check_config_dir(config_dir)
    engine = choose_engine(opts.engine)

    # FireWorks' own loggers ("launchpad") propagate to the root handler: keep their DEBUG/INFO lines out
    fw_logger = logging.getLogger("launchpad")
    fw_propagate = fw_logger.propagate
    fw_logger.propagate = verbose > 1

    received: list[int] = []

    def _terminate(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:  # once: a second SIGTERM does not cut the clean-up short
            raise KeyboardInterrupt(f"signal {signum}")  # same clean-up as Ctrl-C: the pilots are stopped

    old_term = (
        signal.signal(signal.SIGTERM, _terminate)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        return _run(config_dir, opts, ctx, echo, engine, verbose, tty, t_start)
    finally:
        fw_logger.propagate = fw_propagate
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run(
    config_dir: Path,
    opts: DemoOptions,
    ctx: click.Context | None,
    echo: Callable[[str], None],
    engine: str,
    verbose: int,
    tty: bool,
    t_start: float,
) -> bool:
    from fireworks import LaunchPad

    from pilot.config import ConfigError, load_config
    from pilot.manager.cycle import Manager

    config_dir.mkdir(parents=True, exist_ok=True)
    # the local scheduler's job files live in the local cluster's work_dir (as the local adapter puts them)
    os.environ["PILOT_LOCAL_STATE"] = str(config_dir / "work" / "localsched")
    cores = os.cpu_count() or 1
    max_pilots = max(1, min(4, cores, math.ceil(opts.sims / 2)))

    echo(f"pilot demo in {config_dir}")
    server, lpd = start_launchpad(config_dir, lambda m: echo("  " + m))
    for p in write_config(config_dir, max_pilots):
        echo(f"  wrote {p}")
    try:
        config = load_config(config_dir)
    except ConfigError as e:
        raise DemoError(
            f"the demo's configuration in {config_dir} has problems (fix or delete those files):\n{e}"
        ) from None
    if CLUSTER_NAME not in config.clusters:
        raise DemoError(f"{config_dir}/clusters/{CLUSTER_NAME}.yaml is missing")
    lp = LaunchPad.from_dict(dict(lpd, strm_lvl="ERROR"))

    from pilot.manager.daemon import ManagerRunningError, acquire_lock, release_lock

    try:
        lock = acquire_lock(config_dir)
    except ManagerRunningError as e:
        raise DemoError(str(e)) from None
    lg, handlers, old_propagate = _setup_logging(config_dir, verbose)
    mgr: Manager | None = None
    job_names: set[str] = set()
    ok = False
    try:
        run_no = _next_run(config_dir)
        root = config_dir / "demo" / f"run-{run_no}"
        root.mkdir(parents=True, exist_ok=True)
        label = {"openmm": "OpenMM", "gromacs": "GROMACS"}[engine]
        echo(f"  measuring {label}'s speed on this machine ...")
        speed = (measure_openmm if engine == "openmm" else measure_gromacs)(root / "speed-test")
        nsteps = steps_for(speed, opts.segments, opts.segment_seconds)
        sims = add_simulations(lp, engine, root, opts.sims, nsteps, opts.segment_seconds, f"demo{run_no}",
                               segments=opts.segments)
        echo(
            f"  {speed.steps_per_s:.0f} steps/s: added {opts.sims} {label} water-box simulations of "
            f"{nsteps:,} "
            f"steps (~{opts.segments} segments of {opts.segment_seconds:g} s each) in {root}"
        )
        lc = config.clusters[CLUSTER_NAME]
        echo(
            f"  manager: cluster '{CLUSTER_NAME}', pilots are local processes "
            f"({lc.walltime_seconds} s wall time, "
            f"up to {lc.limits.max_running} at once); log {config_dir / 'logs' / 'manager.log'}"
        )
        echo("")
        mgr = Manager(config, lp)
        progress = Progress(sims, label, tty, echo)
        t_run = time.monotonic()
        failed_first: Sim | None = None
        while True:
            cycle = mgr.run_cycle()
            job_names.update(s["job_name"] for s in cycle.submitted)
            refresh_sims(lp, sims)
            progress.update(count_pilots(mgr.records, job_names), time.monotonic() - t_run)
            failed = [s for s in sims if s.state == "failed"]
            if failed and not opts.keep_going:
                failed_first = failed[0]
                break
            if all(s.done for s in sims):
                break
            if time.monotonic() - t_start > opts.timeout:
                raise DemoError(
                    f"not finished after {opts.timeout:.0f} s ({sum(s.state == 'finished' for s in sims)} of "
                    f"{len(sims)} simulations done); see {config_dir / 'logs' / 'manager.log'} and "
                    "`pilot status`. "
                    "The pilots were cancelled; `pilot manager run` continues the work."
                )
            time.sleep(POLL_INTERVAL_S)
        stop_pilots(mgr, job_names, IDLE_TIMEOUT_S + 3 * POLL_INTERVAL_S + 5, lambda m: echo("  " + m))
        job_names_done = set(job_names)
        job_names = set()  # stopped: nothing left for the finally block
        refresh_sims(lp, sims)
        pil = count_pilots(mgr.records, job_names_done)
        progress.update(pil, time.monotonic() - t_run)
        finished = [s for s in sims if s.state == "finished"]
        total_segments = sum(s.segments_done for s in sims)
        echo("")
        if failed_first is not None:
            echo(f"{failed_first.name} FAILED: {failed_first.error}")
            echo(
                f"  run directory {failed_first.run_dir}; "
                f"`lpad -l {config_dir / 'my_launchpad.yaml'} get_fws "
                f"-s FIZZLED -d more` shows the error; --keep-going runs the others to the end"
            )
        elif len(finished) == len(sims):
            every = (
                "The simulation"
                if len(sims) == 1
                else "Both simulations"
                if len(sims) == 2
                else f"All {len(sims)} simulations"
            )
            echo(
                f"{every} finished at step {nsteps:,}: {total_segments} segments on "
                f"{len(job_names_done)} pilots in {time.monotonic() - t_run:.0f} s."
            )
        else:
            echo(
                f"{len(finished)} of {len(sims)} simulations finished; "
                + ", ".join(f"{s.name} {s.state}" for s in sims if s.state != "finished")
            )
        ok = len(finished) == len(sims)

        _print_status(ctx, lp, config, echo)
        from pilot.report import format_report, gather_report, plot_report

        rep = gather_report(lp.db, config)
        png = plot_report(rep, config_dir / "report.png")
        echo("")
        echo("$ pilot report")
        echo(format_report(rep))
        echo(f"wrote {png}")
        pre = _cmd_prefix(config_dir)
        echo("")
        echo(
            f"Done in {time.monotonic() - t_start:.0f} s. The LaunchPad server keeps running "
            f"(pid {server.pid}, "
            f"{server.host}:{server.port}), so these work on what the demo left:"
        )
        echo(f"  {pre} status")
        echo(f"  {pre} report --plot report.png")
        echo(f"  lpad -l {config_dir / 'my_launchpad.yaml'} get_wflows")
        echo(f"Stop the server with `{pre} launchpad stop`; delete {config_dir} to remove everything.")
        return ok
    except KeyboardInterrupt:
        echo(
            f"\ninterrupted: stopping the pilots; unfinished segments go back to READY "
            f"(`{_cmd_prefix(config_dir)} manager run` "
            "continues them)"
        )
        raise
    finally:
        try:
            if mgr is not None and job_names:
                stop_pilots(mgr, job_names, 0.0, lambda m: echo("  " + m))
        finally:
            if mgr is not None:
                mgr.close()
            for h in handlers:
                lg.removeHandler(h)
                h.close()
            lg.propagate = old_propagate
            release_lock(config_dir, lock)
            lp.connection.close()
