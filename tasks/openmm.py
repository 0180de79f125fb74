"""OpenMM segment FireTask: load the checkpoint (or start from the prepared system), integrate until the
step target, the time limit or SIGTERM, save the checkpoint, decide like every segment.

Files in the run directory (``NAME`` = the task's ``name``):

- inputs, prepared by the user: ``system.xml`` (serialized ``System``), ``integrator.xml`` (serialized
  ``Integrator``, with its random seed), a topology with starting positions (``start.pdb`` or ``.cif``)
  and optionally a starting state (``state_in``: XML ``State`` with positions, velocities, box);
- checkpoint: ``NAME.chk`` (OpenMM binary checkpoint: exact continuation, RNG included, but tied to the
  platform and OpenMM version) and ``NAME_state.xml`` (portable XML state; its ``stepCount`` is the
  checkpoint step the segment decides from). Both are written under a temporary name and renamed; the
  binary one is used when its step matches the XML state, else the XML state is loaded (another
  platform or version: continuation without the integrator's random state);
- outputs, appended segment after segment: ``NAME.dcd`` (trajectory, one frame every ``traj_interval``
  steps) and ``NAME.csv`` (``StateDataReporter``: step, time, energies, temperature, volume), and
  ``NAME.out``, a short human-readable log of the segments.

Outputs are flushed to disk before every checkpoint. On resume they are truncated to the checkpoint's
step (frames/lines written after the last checkpoint by a killed segment are dropped, then written again),
as GROMACS does for its appended output files; a trajectory *shorter* than the checkpoint implies is an
error (data lost), never silently accepted.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fireworks.utilities.fw_utilities import explicit_serialize

from tasks.contract import COMMON_PARAMS, StopReason
from tasks.segment import (
    EngineRun,
    MDSegmentTask,
    Prepared,
    SegmentError,
    StopFlag,
    tail_file,
)

_STEP_COUNT = re.compile(rb'stepCount="(-?\d+)"')
_STEP_SIZE = re.compile(r'stepSize="([0-9.eE+-]+)"')

OPENMM_PARAMS = [
    "nsteps",              # int, target step count (total, from step 0)
    "system",              # str, serialized System (default system.xml)
    "integrator",          # str, serialized Integrator (default integrator.xml)
    "topology",            # str, PDB/PDBx with topology and starting positions (default start.pdb)
    "state_in",            # str | None, XML State to start from (positions, velocities, box)
    "platform",            # str | None, e.g. "CPU", "CUDA" (default: OpenMM's fastest)
    "platform_properties",  # dict, e.g. {"Threads": "1"} or {"DeviceIndex": "0"}
    "traj_interval",       # int, DCD frame every N steps (0: no trajectory; default 5000)
    "energy_interval",     # int, CSV line every N steps (0: none; default traj_interval)
    "checkpoint_minutes",  # float, periodic checkpoint interval (default 15)
    "minimize",            # bool | int, minimize on a fresh start (int: max iterations)
    "temperature",         # float | None, K: velocities on a fresh start (without velocities in state_in)
    "seed",                # int | None, for those velocities
    "chunk_seconds",       # float, the loop checks time and SIGTERM at least this often (default 2)
    "segment_steps",       # int, at most this many steps per segment, besides the time limit (default: none)
]


# ----------------------------------------------------------------------------------------- file helpers
def read_state_step(path: Path) -> int | None:
    """``stepCount`` of an OpenMM XML State file (read from its first KiB), ``None`` if the file is missing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except FileNotFoundError:
        return None
    m = _STEP_COUNT.search(head)
    if not m:
        raise SegmentError(f"{path} is not an OpenMM XML State with a stepCount (first line: "
                           f"{head.splitlines()[:2]!r}); restore it from the archive copy or delete the run's "
                           "checkpoint files to start again", {"path": str(path)})
    return int(m.group(1))


def integrator_step_ps(xml_head: str) -> float | None:
    """The step size (ps) of a serialized OpenMM ``Integrator`` (its ``stepSize`` attribute), from the file's head.

    ``None`` for a variable-step integrator (``VariableLangevinIntegrator``, ``VariableVerletIntegrator``):
    its ``stepSize`` is only the current step, so steps x stepSize is not the trajectory's length.
    """
    if re.search(r'type="Variable\w*Integrator"', xml_head):
        return None
    m = _STEP_SIZE.search(xml_head)
    return float(m.group(1)) if m else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def dcd_layout(path: Path) -> dict[str, int]:
    """Header fields of a DCD file as OpenMM's ``DCDFile`` writes it (CHARMM format, little endian).

    Returns
    -------
    dict
        ``header_end``, ``frame_size``, ``frames_on_disk`` (complete frames), ``first_step``, ``interval``,
        ``natoms``, ``header_count``.
    """
    with open(path, "rb") as fh:
        head = fh.read(104)
        if len(head) < 104 or struct.unpack("<i", head[:4])[0] != 84 or head[4:8] != b"CORD":
            raise SegmentError(f"{path} is not a DCD file written by OpenMM (bad header)", {"path": str(path)})
        header_count, first_step, interval = struct.unpack("<3i", head[8:20])
        box_flag = struct.unpack("<i", head[48:52])[0]
        comments = struct.unpack("<i", head[92:96])[0]
        fh.seek(104 + comments)
        natoms = struct.unpack("<i", fh.read(4))[0]
        header_end = 104 + comments + 8
        size = os.fstat(fh.fileno()).st_size
    frame_size = (56 if box_flag else 0) + 3 * (8 + 4 * natoms)
    return {"header_end": header_end, "frame_size": frame_size,
            "frames_on_disk": max(0, (size - header_end) // frame_size), "first_step": first_step,
            "interval": max(1, interval), "natoms": natoms, "header_count": header_count}


def truncate_dcd(path: Path, max_step: int) -> int:
    """Drop the frames of a DCD file written after ``max_step``; return the number of frames kept.

    Raises :class:`SegmentError` when the file holds fewer frames than ``max_step`` implies.
    """
    lay = dcd_layout(path)
    first, interval = lay["first_step"], lay["interval"]
    expected = 0 if max_step < first else (max_step - first) // interval + 1
    if lay["frames_on_disk"] < expected:
        raise SegmentError(
            f"trajectory {path} has {lay['frames_on_disk']} complete frames but the checkpoint at step {max_step} "
            f"implies {expected} (one every {interval} steps from step {first}): frames were lost. Restore the "
            "trajectory from the archive copy, or move it away to start a new file from the checkpoint.",
            {"path": str(path), "frames": lay["frames_on_disk"], "expected": expected})
    with open(path, "r+b") as fh:
        fh.truncate(lay["header_end"] + expected * lay["frame_size"])
        fh.seek(8)
        fh.write(struct.pack("<i", expected))
        fh.seek(20)
        fh.write(struct.pack("<i", first + max(0, expected - 1) * interval))
    return expected


def dcd_frame_count(path: Path) -> int:
    """Number of complete frames in a DCD file (from its size and header)."""
    return dcd_layout(path)["frames_on_disk"]


def truncate_csv(path: Path, max_step: int) -> int:
    """Drop data lines of a StateDataReporter file (step in the first column) after ``max_step``; keep the
    header. Returns the number of data lines kept."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    kept: list[bytes] = []
    n = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # partial last line of a killed segment
        if line.startswith(b"#"):
            kept.append(line)
            continue
        try:
            step = int(line.split(b",", 1)[0])
        except ValueError:
            break
        if step > max_step:
            break
        kept.append(line)
        n += 1
    _write_atomic(path, b"".join(kept))
    return n


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of an in-process run (e.g. ``OPENMM_CPU_THREADS``)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _save_checkpoint(sim: Any, files: dict[str, Path], dcd: _DCDWriter | None, csv: IO[str] | None) -> None:
    """Flush the outputs, then write ``NAME.chk`` and ``NAME_state.xml`` (each atomically).

    The outputs go to disk first, so that a checkpoint never runs ahead of the frames/lines it implies.
    """
    import openmm as mm

    if dcd is not None:
        dcd.flush()
    if csv is not None:
        csv.flush()
        os.fsync(csv.fileno())
    _write_atomic(files["chk"], sim.context.createCheckpoint())
    state = sim.context.getState(positions=True, velocities=True, parameters=True, integratorParameters=True)
    _write_atomic(files["state"], mm.XmlSerializer.serialize(state).encode())


class _DCDWriter:
    """An OpenMM reporter writing DCD frames to a file handle we own (so it can be flushed at checkpoints).

    Frames are written at steps that are multiples of ``interval``, exactly as ``openmm.app.DCDReporter``.
    """

    def __init__(self, fh: IO[bytes], interval: int, append: bool) -> None:
        self._fh = fh
        self._interval = interval
        self._append = append
        self._dcd: Any = None

    def describeNextReport(self, simulation: Any) -> dict[str, Any]:  # OpenMM's reporter API name
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation: Any, state: Any) -> None:
        from openmm import app

        if self._dcd is None:
            self._dcd = app.DCDFile(self._fh, simulation.topology, simulation.integrator.getStepSize(),
                                    self._interval, self._interval, self._append)
        self._dcd.writeModel(state.getPositions(asNumpy=True), periodicBoxVectors=state.getPeriodicBoxVectors())

    def flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())


def _integrate(sim: Any, stop: StopFlag, stop_at: int, target: int, t_end: float, checkpoint: Callable[[], None],
               cpt_seconds: float, chunk_seconds: float) -> StopReason:
    """Step in chunks of about ``chunk_seconds`` until ``stop_at``, ``t_end`` (monotonic) or SIGTERM, with a
    checkpoint every ``cpt_seconds`` (0: none) before the target; returns why the loop stopped."""
    last_cpt = time.monotonic()
    rate: float | None = None
    while sim.currentStep < stop_at:
        if stop.is_set():
            return StopReason.SIGTERM
        now = time.monotonic()
        remaining = t_end - now
        if remaining <= 0:
            return StopReason.TIME_LIMIT
        n = stop_at - sim.currentStep
        if rate is None:
            n = min(n, 10)
        else:
            n = max(1, min(n, int(rate * min(chunk_seconds, remaining))))
        t0 = time.monotonic()
        sim.step(n)
        dt = time.monotonic() - t0
        rate = n / dt if dt > 0 else None
        if cpt_seconds > 0 and time.monotonic() - last_cpt >= cpt_seconds and sim.currentStep < target:
            checkpoint()
            last_cpt = time.monotonic()
    return StopReason.COMPLETED if sim.currentStep >= target else StopReason.SEGMENT_STEPS


@explicit_serialize
class OpenMMSegmentTask(MDSegmentTask):
    """One OpenMM segment in ``run_dir``: resume from ``NAME.chk``/``NAME_state.xml`` (or start from the
    prepared system), integrate until ``nsteps``, the time limit or SIGTERM, save the checkpoint, decide.

    Parameters (besides those of :class:`tasks.segment.MDSegmentTask`)
    ------------------------------------------------------------------
    nsteps : int
        Total number of steps of the run (the target step; a fresh start is step 0).
    system, integrator : str
        Serialized ``System`` / ``Integrator`` XML (defaults ``system.xml``, ``integrator.xml``).
    topology : str
        PDB or PDBx/mmCIF file with the topology and the starting positions (default ``start.pdb``).
    state_in : str, optional
        XML ``State`` to start from (positions, velocities, box), instead of the topology's positions.
    platform : str, optional
        ``CPU``, ``CUDA``, ``OpenCL``, ``Reference`` (default: OpenMM's fastest available).
    platform_properties : dict
        E.g. ``{"Threads": "2"}``.
    traj_interval, energy_interval : int
        DCD frame / CSV line every N steps (defaults 5000 / ``traj_interval``; 0 disables).
    checkpoint_minutes : float
        Periodic checkpoint interval (default 15): bounds the work lost to a SIGKILL.
    minimize : bool or int
        Minimize the energy on a fresh start (an int is the maximum number of iterations).
    temperature, seed
        On a fresh start without velocities: draw velocities at ``temperature`` K with ``seed``.
    chunk_seconds : float
        Steps are run in chunks of about this many seconds; time and SIGTERM are checked in between.
    segment_steps : int
        At most this many steps per segment (e.g. one nanosecond), besides the time limit: segments of a
        fixed length in simulated time, whatever the machine's speed (default: time limit only).
    """

    engine = "openmm"
    required_params = ["run_dir", "name", "nsteps"]
    optional_params = COMMON_PARAMS + OPENMM_PARAMS

    # ---- files ----------------------------------------------------------------------------------------
    def _path(self, run_dir: Path, key: str, default: str) -> Path:
        return run_dir / str(self.get(key) or default)

    @classmethod
    def stage_files(cls, params: dict[str, Any], resume: bool) -> tuple[list[str], list[str]]:
        name = params["name"]
        required = [params.get("system") or "system.xml", params.get("integrator") or "integrator.xml",
                    params.get("topology") or "start.pdb"]
        if params.get("state_in"):
            required.append(params["state_in"])
        outputs = [f"{name}.chk", f"{name}.dcd", f"{name}.csv", f"{name}.out"]
        if resume:
            return required + [f"{name}_state.xml"], outputs
        return required, [f"{name}_state.xml"] + outputs

    @classmethod
    def result_files(cls, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        name = params["name"]
        return [f"{name}_state.xml"], [f"{name}.chk", f"{name}.dcd", f"{name}.csv", f"{name}.out"]

    def _names(self, run_dir: Path) -> dict[str, Path]:
        name = str(self["name"])
        return {"chk": run_dir / f"{name}.chk", "state": run_dir / f"{name}_state.xml",
                "dcd": run_dir / f"{name}.dcd", "csv": run_dir / f"{name}.csv", "out": run_dir / f"{name}.out"}

    # ---- engine ---------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path) -> Prepared:
        inputs = [self._path(run_dir, "system", "system.xml"), self._path(run_dir, "integrator", "integrator.xml"),
                  self._path(run_dir, "topology", "start.pdb")]
        if self.get("state_in"):
            inputs.append(run_dir / str(self["state_in"]))
        missing = [str(p) for p in inputs if not p.is_file()]
        if missing:
            raise SegmentError(f"{self.describe()}: input file(s) missing: {', '.join(missing)}. Prepare the "
                               "system (openmm.XmlSerializer.serialize of the System and Integrator, a PDB with "
                               "the topology) or check that the staging Firework copied them.",
                               {"missing": missing})
        nsteps = int(self["nsteps"])
        step = read_state_step(self._names(run_dir)["state"])
        return Prepared(checkpoint_step=step, initial_step=0, target_step=nsteps,
                        dt_ps=integrator_step_ps(inputs[1].read_text(errors="replace")[:4096]))

    def run_engine(self, run_dir: Path, prepared: Prepared, limit_s: float, stop: StopFlag) -> EngineRun:
        t_start = time.monotonic()
        files = self._names(run_dir)
        out_log = open(files["out"], "a", encoding="utf-8")
        try:
            with _environment({str(k): str(v) for k, v in (self.get("env") or {}).items()}):
                return self._run(run_dir, prepared, limit_s, stop, t_start, files, out_log)
        finally:
            out_log.close()

    def _say(self, out_log: IO[str], text: str) -> None:
        out_log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} segment {self.segment_number}: {text}\n")
        out_log.flush()

    def _run(self, run_dir: Path, prepared: Prepared, limit_s: float, stop: StopFlag, t_start: float,
             files: dict[str, Path], out_log: IO[str]) -> EngineRun:
        import openmm as mm

        before = prepared.checkpoint_step
        target = int(self["nsteps"])
        traj_interval = int(self.get("traj_interval", 5000) or 0)
        energy_interval = int(self.get("energy_interval", traj_interval) or 0)
        cpt_seconds = float(self.get("checkpoint_minutes", 15.0)) * 60.0
        chunk_seconds = max(0.05, float(self.get("chunk_seconds", 2.0)))
        fatal: str | None = None
        hint: StopReason | None = None
        handles: list[IO[Any]] = []
        start_step = before if before is not None else 0
        seg_steps = int(self.get("segment_steps") or 0)
        stop_at = min(target, start_step + seg_steps) if seg_steps > 0 else target
        run_seconds = 0.0
        try:
            sim, top = self._simulation(run_dir)
            if before is not None:
                how = self._load(sim, files, before, out_log)
            else:
                how = self._fresh(sim, top, run_dir)
            self._say(out_log, f"start at step {sim.currentStep} ({how}) on "
                               f"{sim.context.getPlatform().getName()}, target {target}, limit {limit_s:.0f} s")
            dcd, csv = self._open_outputs(sim, files, before, handles, traj_interval, energy_interval)

            def checkpoint() -> None:
                _save_checkpoint(sim, files, dcd, csv)

            t_run = time.monotonic()
            hint = _integrate(sim, stop, stop_at, target, t_start + limit_s, checkpoint, cpt_seconds, chunk_seconds)
            run_seconds = time.monotonic() - t_run
            checkpoint()
            end_step = sim.currentStep
            self._say(out_log, f"end at step {end_step} ({hint.value if hint else '?'}), "
                               f"{end_step - start_step} steps in {run_seconds:.1f} s")
        except (mm.OpenMMException, ValueError, ArithmeticError) as exc:
            fatal = f"{type(exc).__name__}: {exc}"
            hint = StopReason.FATAL_ERROR
            self._say(out_log, "ERROR " + "".join(traceback.format_exception(exc)).rstrip())
        finally:
            for fh in handles:
                with contextlib.suppress(OSError):
                    fh.close()
        return self._engine_run(run_dir, files, prepared, start_step, run_seconds, fatal, hint)

    def _simulation(self, run_dir: Path) -> tuple[Any, Any]:
        """The ``app.Simulation`` of the serialized system and integrator, and the topology file read."""
        import openmm as mm
        from openmm import app

        system = mm.XmlSerializer.deserialize(self._path(run_dir, "system", "system.xml").read_text())
        integrator = mm.XmlSerializer.deserialize(self._path(run_dir, "integrator", "integrator.xml").read_text())
        top_path = self._path(run_dir, "topology", "start.pdb")
        top = app.PDBxFile(str(top_path)) if top_path.suffix.lower() in (".cif", ".pdbx") else app.PDBFile(
            str(top_path))
        platform_name = self.get("platform")
        props = {str(k): str(v) for k, v in (self.get("platform_properties") or {}).items()}
        if platform_name:
            sim = app.Simulation(top.topology, system, integrator, mm.Platform.getPlatformByName(platform_name),
                                 props)
        else:
            sim = app.Simulation(top.topology, system, integrator)
        return sim, top

    def _open_outputs(self, sim: Any, files: dict[str, Path], before: int | None, handles: list[IO[Any]],
                      traj_interval: int, energy_interval: int) -> tuple[_DCDWriter | None, IO[str] | None]:
        """Attach the DCD and CSV reporters: truncated to the checkpoint (resume) or new files (fresh).

        Every file opened is appended to ``handles`` at once (the caller closes them, whatever happens).
        """
        from openmm import app

        resume = before is not None
        dcd: _DCDWriter | None = None
        csv: IO[str] | None = None
        fh: IO[bytes]
        if traj_interval > 0:
            empty = files["dcd"].exists() and files["dcd"].stat().st_size == 0
            if empty and (before or 0) >= traj_interval:
                raise SegmentError(
                    f"trajectory {files['dcd']} is empty but the checkpoint at step {before} implies frames "
                    f"(one every {traj_interval} steps): frames were lost. Restore the trajectory from the "
                    "archive copy, or move it away to start a new file from the checkpoint.",
                    {"path": str(files["dcd"]), "frames": 0})
            if resume and files["dcd"].exists() and not empty:
                # (an empty file: the previous segment stopped before its first frame; start it anew)
                truncate_dcd(files["dcd"], before or 0)
                fh = open(files["dcd"], "r+b")
                dcd = _DCDWriter(fh, traj_interval, append=True)
            else:
                fh = open(files["dcd"], "wb")
                dcd = _DCDWriter(fh, traj_interval, append=False)
            handles.append(fh)
            sim.reporters.append(dcd)
        if energy_interval > 0:
            append_csv = resume and files["csv"].exists()
            if append_csv:
                truncate_csv(files["csv"], before or 0)
            csv = open(files["csv"], "a" if append_csv else "w", encoding="utf-8")
            handles.append(csv)
            sim.reporters.append(app.StateDataReporter(
                csv, energy_interval, step=True, time=True, potentialEnergy=True, kineticEnergy=True,
                totalEnergy=True, temperature=True, volume=True, append=append_csv))
        return dcd, csv

    def _engine_run(self, run_dir: Path, files: dict[str, Path], prepared: Prepared, start_step: int,
                    run_seconds: float, fatal: str | None, hint: StopReason | None) -> EngineRun:
        """What the run reported: the checkpoint step on disk, the speed, the log's tail."""
        after = read_state_step(files["state"])
        steps = (after - start_step) if after is not None else 0
        dt_ps = prepared.dt_ps
        ns_day = (steps * dt_ps / 1000.0 / (run_seconds / 86400.0)) if (dt_ps and run_seconds > 0 and steps > 0) \
            else None
        return EngineRun(checkpoint_step=after, returncode=None, fatal_error=fatal, stop_hint=hint,
                         ns_per_day=ns_day, command=["openmm", f"{self['name']} in {run_dir}"],
                         log_tail=tail_file(files["out"], 30) + ("\n" + tail_file(files["csv"], 5)
                                                                 if files["csv"].exists() else ""))

    def _load(self, sim: Any, files: dict[str, Path], before: int, out_log: IO[str]) -> str:
        import openmm as mm

        if files["chk"].exists():
            try:
                sim.loadCheckpoint(str(files["chk"]))
                if sim.currentStep == before:
                    return f"binary checkpoint {files['chk'].name}"
                self._say(out_log, f"{files['chk'].name} is at step {sim.currentStep}, {files['state'].name} at "
                                   f"{before}: using the XML state")
            except mm.OpenMMException as exc:
                self._say(out_log, f"cannot load {files['chk'].name} ({exc}); using the portable XML state "
                                   "(continuation without the integrator's random state)")
        sim.loadState(str(files["state"]))
        sim.currentStep = before
        return f"XML state {files['state'].name}"

    def _fresh(self, sim: Any, top: Any, run_dir: Path) -> str:
        from openmm import unit

        how = "fresh start"
        if self.get("state_in"):
            sim.loadState(str(run_dir / str(self["state_in"])))
            how += f" from {self['state_in']}"
        else:
            box = top.topology.getPeriodicBoxVectors()
            if box is not None:
                sim.context.setPeriodicBoxVectors(*box)
            sim.context.setPositions(top.positions)
            how += f" from {self.get('topology') or 'start.pdb'}"
        minimize = self.get("minimize")
        if minimize:
            iters = 0 if minimize is True else int(minimize)
            sim.minimizeEnergy(maxIterations=iters)
            how += ", minimized"
        if self.get("temperature") is not None:
            seed = self.get("seed")
            if seed is None:
                sim.context.setVelocitiesToTemperature(float(self["temperature"]) * unit.kelvin)
            else:
                sim.context.setVelocitiesToTemperature(float(self["temperature"]) * unit.kelvin, int(seed))
            how += f", velocities at {self['temperature']} K"
        sim.currentStep = 0
        sim.context.setTime(0.0)
        return how
