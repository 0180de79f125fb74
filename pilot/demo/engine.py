"""The demo's MD engine: which one, how fast it runs here, and the simulations sized from that."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.demo.options import SEGMENT_FW_WALLTIME_S, DemoError
from pilot.demo.watch import Sim

__all__ = ["Speed", "add_simulations", "choose_engine", "measure_gromacs", "measure_openmm", "steps_for"]


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
