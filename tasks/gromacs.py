"""GROMACS segment FireTask: ``gmx mdrun -deffnm NAME -cpi NAME.cpt -maxh H`` in the run directory.

Behaviour of GROMACS relied upon (measured with Debian's GROMACS 2022.5, see
``/work/shared/recipes/gromacs-segments.sh`` and docs/md-segments.md):

- ``-cpi NAME.cpt`` with no checkpoint on disk is a fresh start; with one, mdrun continues from it and
  appends to the output files (one ``md.log``, one ``.xtc``/``.edr``, frame counts equal to an
  uninterrupted run).
- ``-maxh H`` stops after 0.99 H with a checkpoint and exit status 0; ``-maxh 0`` means *no limit*, so a
  limit is never passed as 0.
- One SIGTERM: checkpoint at the next neighbour-search step, exit status 1; a second one stops sooner
  (status 2), a third aborts without checkpoint. The task never forwards SIGTERM.
- ``gmx dump -s`` prints the inputrec first (``   nsteps                         = 20000``, three-space
  indent); ``gmx dump -cp`` prints ``step = 20000`` at column 0 in its header. Both are read until the
  wanted lines and then stopped (a full dump of a large system is megabytes).
- Errors are printed between lines of 55 dashes, starting with ``Program:`` and containing
  ``Fatal error:`` (or ``Internal error (bug):`` etc.).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fireworks.utilities.fw_utilities import explicit_serialize

from tasks.contract import COMMON_PARAMS, StopReason
from tasks.segment import (
    EngineRun,
    MDSegmentTask,
    Prepared,
    SegmentError,
    StopFlag,
    tail_file,
    tail_lines,
)

GMX_RULE = "-" * 55
#: mdrun options the task manages itself; giving them in ``mdrun_args`` is an error.
MANAGED_MDRUN_OPTIONS = ("-deffnm", "-s", "-cpi", "-maxh", "-nsteps", "-cpt", "-ntmpi", "-ntomp", "-pin",
                         "-cpo", "-append", "-noappend", "-g", "-o", "-x", "-e", "-c")
DUMP_TIMEOUT_S = 300.0

_TPR_LINE = re.compile(r"^\s+(nsteps|init-step|init_step|dt|delta-t|delta_t)\s+=\s+(\S+)\s*$")
_CPT_STEP = re.compile(r"^step = (-?\d+)\s*$")
_PERF = re.compile(r"^Performance:\s+([0-9.eE+-]+)")


class GromacsError(SegmentError):
    """A gmx helper command (dump, grompp) failed."""


@dataclass(frozen=True)
class TprInfo:
    """The run-control fields of a .tpr (from ``gmx dump -s``)."""

    nsteps: int
    init_step: int
    dt_ps: float | None

    @property
    def target_step(self) -> int | None:
        """Step at which the run is complete; ``None`` for ``nsteps = -1`` (run until stopped)."""
        return None if self.nsteps < 0 else self.init_step + self.nsteps


def parse_gromacs_error(text: str) -> str | None:
    """The last GROMACS error block in ``text`` (``Program: ...`` through the text before the closing rule).

    GROMACS prints errors as::

        -------------------------------------------------------
        Program:     gmx mdrun, version 2022.5-Debian_2022.5_2
        Source file: src/gromacs/fileio/tpxio.cpp (line 565)

        Fatal error:
        ...
        For more information and tips for troubleshooting, please check the GROMACS
        website at http://www.gromacs.org/Documentation/Errors
        -------------------------------------------------------
    """
    lines = text.replace("\r", "\n").splitlines()
    found: str | None = None
    i = 0
    while i < len(lines) - 1:
        if lines[i].strip() == GMX_RULE and lines[i + 1].startswith("Program:"):
            j = i + 1
            while j < len(lines) and lines[j].strip() != GMX_RULE:
                j += 1
            block = [ln for ln in lines[i + 1:j]]
            while block and (block[-1].startswith("For more information") or block[-1].startswith("website at")
                             or not block[-1].strip()):
                block.pop()
            found = "\n".join(block).strip()
            i = j
        i += 1
    return found


def parse_performance(text: str) -> float | None:
    """ns/day from the last ``Performance:`` line of mdrun's output, if any."""
    value = None
    for line in text.splitlines():
        m = _PERF.match(line)
        if m:
            try:
                value = float(m.group(1))
            except ValueError:
                continue
    return value


def _dump_lines(argv: list[str], cwd: Path, want: set[str], matcher: re.Pattern[str],
                timeout_s: float) -> tuple[dict[str, str], int | None, str]:
    """Run a ``gmx dump`` command, collecting ``matcher`` groups until all keys in ``want`` are seen.

    Returns (fields, returncode or None if stopped early, stderr text).
    """
    fields: dict[str, str] = {}
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                    text=True, errors="replace")
        except FileNotFoundError as exc:
            raise GromacsError(f"cannot run {argv[0]!r}: {exc.strerror}. Is GROMACS installed and on PATH in the "
                               "pilot's environment (module load gromacs)? Set the task's 'gmx' parameter to the "
                               "binary's name or full path.", {"command": argv}) from exc
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        stopped_early = False
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                m = matcher.match(line)
                if m:
                    key = m.group(1) if m.re.groups > 1 else "step"
                    value = m.group(m.re.groups)
                    fields.setdefault(key, value)
                    if want <= fields.keys():
                        stopped_early = True
                        break
        finally:
            if stopped_early and proc.poll() is None:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
            rc = proc.wait()
            timer.cancel()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return fields, (None if stopped_early else rc), stderr


def read_tpr(gmx: str, tpr: Path, cwd: Path) -> TprInfo:
    """nsteps, init-step and dt of a .tpr, from ``gmx dump -s`` (stops reading after the inputrec lines)."""
    argv = [gmx, "-quiet", "dump", "-s", str(tpr)]
    fields, rc, stderr = _dump_lines(argv, cwd, {"nsteps", "init-step", "dt"}, _TPR_LINE, DUMP_TIMEOUT_S)
    for alias, key in (("init_step", "init-step"), ("delta-t", "dt"), ("delta_t", "dt")):
        if alias in fields:
            fields.setdefault(key, fields[alias])
    if "nsteps" not in fields or "init-step" not in fields:
        error = parse_gromacs_error(stderr) or tail_lines(stderr, 20)
        raise GromacsError(f"cannot read nsteps/init-step from {tpr} with `{' '.join(argv)}` (exit status {rc}):\n"
                           f"{error}\nWhat to try: regenerate the .tpr with gmx grompp using this GROMACS version.",
                           {"command": argv, "returncode": rc, "fatal_error": error})
    try:
        return TprInfo(nsteps=int(fields["nsteps"]), init_step=int(fields["init-step"]),
                       dt_ps=float(fields["dt"]) if "dt" in fields else None)
    except ValueError as exc:
        raise GromacsError(f"unexpected values in `{' '.join(argv)}`: {fields}") from exc


def read_checkpoint_step(gmx: str, cpt: Path, cwd: Path) -> int | None:
    """The step stored in a GROMACS checkpoint (``gmx dump -cp``), ``None`` if the file does not exist."""
    if not (cwd / cpt).exists():
        return None
    argv = [gmx, "-quiet", "dump", "-cp", str(cpt)]
    fields, rc, stderr = _dump_lines(argv, cwd, {"step"}, _CPT_STEP, DUMP_TIMEOUT_S)
    if "step" not in fields:
        error = parse_gromacs_error(stderr) or tail_lines(stderr, 20)
        raise GromacsError(f"cannot read the step of checkpoint {cwd / cpt} with `{' '.join(argv)}` "
                           f"(exit status {rc}):\n{error}\nWhat to try: restore {cpt} from the previous one "
                           f"(the *_prev.cpt next to it) or from the archive copy.",
                           {"command": argv, "returncode": rc, "fatal_error": error})
    return int(fields["step"])


def format_maxh(limit_s: float) -> str:
    """``-maxh`` value in hours; never ``0`` (GROMACS reads ``-maxh 0`` as "no limit")."""
    hours = max(limit_s, 1.0) / 3600.0
    return f"{hours:.6f}".rstrip("0").rstrip(".") if hours >= 1e-6 else "0.000001"


GROMACS_PARAMS = [
    "gmx",              # str, the gmx binary (default "gmx"; e.g. "gmx_mpi")
    "launcher",         # list[str], prefix for mdrun only (e.g. ["srun"], ["mpirun", "-np", "4"])
    "tpr",              # str, run input (default NAME.tpr)
    "ntmpi", "ntomp",   # int, thread-MPI ranks / OpenMP threads per rank
    "pin",              # "on" | "off" | "auto"
    "checkpoint_minutes",  # float, mdrun -cpt (periodic checkpoint interval; GROMACS default 15)
    "mdrun_args",       # list[str], extra mdrun arguments
    "grompp",           # dict, build the .tpr when it is missing: mdp, conf, top, [index, maxwarn, args]
]


@explicit_serialize
class GromacsSegmentTask(MDSegmentTask):
    """One GROMACS segment: ``gmx mdrun -deffnm NAME -cpi NAME.cpt -maxh H`` (appending) in ``run_dir``.

    Parameters (besides those of :class:`tasks.segment.MDSegmentTask`)
    ------------------------------------------------------------------
    gmx : str
        GROMACS binary (default ``gmx``).
    launcher : list of str
        Prefix for mdrun (``["srun"]``, ``["mpirun", "-np", "4"]``); not used for ``gmx dump``.
    tpr : str
        Run input file relative to ``run_dir`` (default ``NAME.tpr``). Its ``init-step + nsteps`` is the
        target step. To extend a run, make a new one with ``gmx convert-tpr -extend`` and point ``tpr``
        at it.
    ntmpi, ntomp : int
        ``-ntmpi`` / ``-ntomp``.
    pin : str
        ``-pin on|off|auto``.
    checkpoint_minutes : float
        ``-cpt``: periodic checkpoint interval in minutes (bounds the work lost to a SIGKILL).
    mdrun_args : list of str
        Extra mdrun arguments (not the options the task manages: -deffnm, -s, -cpi, -maxh, -nsteps, ...).
    grompp : dict
        When the .tpr does not exist yet: ``{"mdp": ..., "conf": ..., "top": ..., "index": None,
        "maxwarn": 0, "args": []}`` run ``gmx grompp`` first (its errors fail the segment).
    """

    engine = "gromacs"
    required_params = ["run_dir", "name"]
    optional_params = COMMON_PARAMS + GROMACS_PARAMS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extra = [str(a) for a in (self.get("mdrun_args") or [])]
        clash = sorted({a.split("=")[0] for a in extra} & set(MANAGED_MDRUN_OPTIONS))
        if clash:
            raise ValueError(f"GromacsSegmentTask: mdrun_args must not contain {', '.join(clash)}: the task sets "
                             "them (use the parameters tpr, segment_hours, checkpoint_minutes, ntmpi, ntomp, pin)")

    # ---- file names ---------------------------------------------------------------------------------
    @property
    def gmx(self) -> str:
        return str(self.get("gmx") or "gmx")

    @property
    def tpr_name(self) -> str:
        return str(self.get("tpr") or f"{self['name']}.tpr")

    @classmethod
    def stage_files(cls, params: dict[str, Any], resume: bool) -> tuple[list[str], list[str]]:
        name = params["name"]
        tpr = params.get("tpr") or f"{name}.tpr"
        grompp = params.get("grompp") or {}
        outputs = [f"{name}.{ext}" for ext in ("xtc", "trr", "edr", "log")] + [f"{name}_prev.cpt"]
        if grompp:
            required = [grompp["mdp"], grompp["conf"], grompp["top"]] + ([grompp["index"]] if grompp.get("index")
                                                                          else [])
            optional = [tpr]
        else:
            required, optional = [tpr], []
        if resume:
            return required + [f"{name}.cpt"], optional + outputs
        return required, optional + [f"{name}.cpt"] + outputs

    @classmethod
    def result_files(cls, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        name = params["name"]
        tpr = params.get("tpr") or f"{name}.tpr"
        others = [f"{name}_prev.cpt", f"{name}.log", f"{name}.xtc", f"{name}.trr", f"{name}.edr", f"{name}.gro",
                  f"{name}.mdrun.out"]
        if params.get("grompp"):
            others += [tpr, f"{name}.mdout.mdp", f"{name}.grompp.out"]
        return [f"{name}.cpt"], others

    # ---- engine ---------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path) -> Prepared:
        name = str(self["name"])
        if not (run_dir / self.tpr_name).exists():
            if self.get("grompp"):
                self._grompp(run_dir)
            else:
                raise SegmentError(f"{self.describe()}: run input {run_dir / self.tpr_name} does not exist. "
                                   "Create it with gmx grompp (or give the task a 'grompp' parameter), or check "
                                   "that the staging Firework copied it.", {"run_dir": str(run_dir)})
        try:
            info = read_tpr(self.gmx, Path(self.tpr_name), run_dir)
            step = read_checkpoint_step(self.gmx, Path(f"{name}.cpt"), run_dir)
        except GromacsError as exc:
            raise GromacsError(f"{self.describe()}: {exc}", exc.details) from exc
        return Prepared(checkpoint_step=step, initial_step=info.init_step, target_step=info.target_step,
                        dt_ps=info.dt_ps)

    def _grompp(self, run_dir: Path) -> None:
        g = dict(self["grompp"])
        name = str(self["name"])
        missing = [k for k in ("mdp", "conf", "top") if not g.get(k)]
        if missing:
            raise SegmentError(f"{self.describe()}: the grompp parameter needs {', '.join(missing)} "
                               "(file names relative to run_dir)")
        argv = [self.gmx, "-quiet", "grompp", "-f", str(g["mdp"]), "-c", str(g["conf"]), "-p", str(g["top"]),
                "-o", self.tpr_name, "-po", f"{name}.mdout.mdp", "-maxwarn", str(int(g.get("maxwarn", 0)))]
        if g.get("index"):
            argv += ["-n", str(g["index"])]
        argv += [str(a) for a in g.get("args", [])]
        out_path = run_dir / f"{name}.grompp.out"
        try:
            with open(out_path, "wb") as out:
                rc = subprocess.run(argv, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.engine_env(), timeout=3600).returncode
        except FileNotFoundError as exc:
            raise GromacsError(f"cannot run {self.gmx!r}: {exc.strerror}. Load GROMACS in the pilot's environment "
                               "or set the task's 'gmx' parameter.", {"command": argv}) from exc
        text = out_path.read_text(errors="replace")
        if rc != 0 or not (run_dir / self.tpr_name).exists():
            error = parse_gromacs_error(text)
            raise GromacsError(
                f"{self.describe()}: gmx grompp failed (exit status {rc}) in {run_dir}.\nCommand: {' '.join(argv)}\n"
                + (f"GROMACS error:\n{error}\n" if error else f"Output:\n{tail_lines(text, 30)}\n")
                + "What to try: fix the topology/structure/mdp the error names, then rerun this Firework.",
                {"command": argv, "returncode": rc, "fatal_error": error, "output_tail": tail_lines(text, 30)})

    def mdrun_argv(self, limit_s: float) -> list[str]:
        name = str(self["name"])
        argv = [*[str(a) for a in (self.get("launcher") or [])], self.gmx, "mdrun", "-deffnm", name,
                "-s", self.tpr_name, "-cpi", f"{name}.cpt", "-maxh", format_maxh(limit_s)]
        if self.get("checkpoint_minutes") is not None:
            argv += ["-cpt", str(self["checkpoint_minutes"])]
        if self.get("ntmpi") is not None:
            argv += ["-ntmpi", str(int(self["ntmpi"]))]
        if self.get("ntomp") is not None:
            argv += ["-ntomp", str(int(self["ntomp"]))]
        if self.get("pin") is not None:
            pin = self["pin"]
            if isinstance(pin, bool):  # YAML reads `pin: off` as false
                pin = "on" if pin else "off"
            argv += ["-pin", str(pin)]
        argv += [str(a) for a in (self.get("mdrun_args") or [])]
        return argv

    def run_engine(self, run_dir: Path, prepared: Prepared, limit_s: float, stop: StopFlag) -> EngineRun:
        name = str(self["name"])
        argv = self.mdrun_argv(limit_s)
        out_path = run_dir / f"{name}.mdrun.out"
        with open(out_path, "ab") as out:
            offset = out.tell()
            out.write(f"\n===== segment {self.segment_number} {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"from step {prepared.checkpoint_step}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                # Same process group as this task: the pilot's one SIGTERM to the group reaches mdrun directly.
                proc = subprocess.Popen(argv, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.engine_env())
            except FileNotFoundError as exc:
                raise GromacsError(f"{self.describe()}: cannot run {argv[0]!r}: {exc.strerror}. Load GROMACS in the "
                                   "pilot's environment or set the task's 'gmx'/'launcher' parameters.",
                                   {"command": argv}) from exc
            rc = proc.wait()
        with open(out_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
        fatal = parse_gromacs_error(text)
        after = read_checkpoint_step(self.gmx, Path(f"{name}.cpt"), run_dir)
        if "Received the TERM signal" in text or "Received the INT signal" in text:
            hint = StopReason.SIGTERM
        elif "Run time exceeded" in text:
            hint = StopReason.TIME_LIMIT
        elif rc == 0:
            hint = StopReason.COMPLETED
        else:
            hint = StopReason.ENGINE_EXIT
        return EngineRun(checkpoint_step=after, returncode=rc, fatal_error=fatal, stop_hint=hint,
                         ns_per_day=parse_performance(text), command=argv,
                         output_tail=tail_lines(text, 30), log_tail=tail_file(run_dir / f"{name}.log", 30))
