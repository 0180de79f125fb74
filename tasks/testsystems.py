"""Tiny test systems built from files the engines ship: a 216-water SPC box for GROMACS, a TIP3P box for
OpenMM. Used by the tests and handy for a first try of the segment tasks (seconds per run on one core).

The GROMACS box follows ``/work/shared/recipes/gromacs-segments.sh``: ``gmx solvate -cs spc216.gro`` in a
1.86206 nm box, OPLS-AA SPC water, PME with 0.8 nm cut-offs, v-rescale at 300 K, 2 fs steps.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tasks.gromacs import parse_gromacs_error

WATER_MDP = """\
integrator           = md
dt                   = 0.002
nsteps               = {nsteps}
nstxout-compressed   = {nstxout_compressed}
nstenergy            = {nstenergy}
nstlog               = 5000
nstcalcenergy        = 100
cutoff-scheme        = Verlet
coulombtype          = PME
rcoulomb             = 0.8
rvdw                 = 0.8
rlist                = 0.8
tcoupl               = v-rescale
tc-grps              = System
tau-t                = 0.1
ref-t                = 300
gen-vel              = yes
gen-temp             = 300
gen-seed             = 1234
ld-seed              = 1234
"""

WATER_TOP = """\
#include "oplsaa.ff/forcefield.itp"
#include "oplsaa.ff/spc.itp"

[ system ]
SPC water box

[ molecules ]
SOL {nmol}
"""


def _gmx(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed in {cwd} (exit status {proc.returncode}):\n"
                           f"{parse_gromacs_error(out) or out[-2000:]}")
    return out


def gromacs_water_inputs(run_dir: Path, nsteps: int, *, gmx: str = "gmx", nstxout_compressed: int = 500,
                         nstenergy: int = 500) -> dict[str, str]:
    """Write ``conf.gro``, ``topol.top`` and ``md.mdp`` of a 216-water SPC box into ``run_dir``.

    Returns the grompp file names ``{"mdp": ..., "conf": ..., "top": ...}`` (relative to ``run_dir``).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    _gmx([gmx, "-quiet", "solvate", "-cs", "spc216.gro", "-box", "1.86206", "-o", "conf.gro"], run_dir)
    lines = (run_dir / "conf.gro").read_text().splitlines()
    nmol = sum(1 for ln in lines[2:-1] if ln[5:10].strip() == "SOL" and ln[10:15].strip() == "OW")
    (run_dir / "topol.top").write_text(WATER_TOP.format(nmol=nmol))
    (run_dir / "md.mdp").write_text(WATER_MDP.format(nsteps=nsteps, nstxout_compressed=nstxout_compressed,
                                                     nstenergy=nstenergy))
    return {"mdp": "md.mdp", "conf": "conf.gro", "top": "topol.top"}


def gromacs_water_box(run_dir: Path, nsteps: int, *, name: str = "md", gmx: str = "gmx",
                      nstxout_compressed: int = 500, nstenergy: int = 500) -> Path:
    """Build ``NAME.tpr`` of a 216-water SPC box in ``run_dir`` (solvate + grompp); return its path."""
    files = gromacs_water_inputs(run_dir, nsteps, gmx=gmx, nstxout_compressed=nstxout_compressed,
                                 nstenergy=nstenergy)
    _gmx([gmx, "-quiet", "grompp", "-f", files["mdp"], "-c", files["conf"], "-p", files["top"], "-o", f"{name}.tpr",
          "-po", "mdout.mdp"], run_dir)
    return run_dir / f"{name}.tpr"


def openmm_water_box(run_dir: Path, *, box_nm: float = 1.86, seed: int = 1234, dt_ps: float = 0.002) -> dict[str, str]:
    """Write ``system.xml``, ``integrator.xml`` and ``start.pdb`` of a TIP3P water box into ``run_dir``.

    PME with 0.8 nm cut-off, H-bond constraints, ``LangevinMiddleIntegrator`` at 300 K (friction 1/ps) with
    a fixed random seed. Returns the file names for :class:`tasks.openmm.OpenMMSegmentTask`.
    """
    import openmm as mm
    from openmm import app, unit

    run_dir.mkdir(parents=True, exist_ok=True)
    ff = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", boxSize=mm.Vec3(box_nm, box_nm, box_nm) * unit.nanometer)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                             constraints=app.HBonds)
    integrator = mm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, dt_ps * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    (run_dir / "system.xml").write_text(mm.XmlSerializer.serialize(system))
    (run_dir / "integrator.xml").write_text(mm.XmlSerializer.serialize(integrator))
    with open(run_dir / "start.pdb", "w") as fh:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, fh)
    return {"system": "system.xml", "integrator": "integrator.xml", "topology": "start.pdb"}
