"""The cores and GPUs of a packed pilot (``pilot worker --pack``): which ones each running Firework holds, and
what its process is told about them.

A packed pilot runs several Fireworks at once; each holds ``spec._pilot.cores`` cores (at least one: a process
needs a CPU to run on) and ``spec._pilot.gpus`` GPUs (:func:`pilot.fit.asked`) until it ends, and no two hold the
same one: that is what keeps two Fireworks from sharing a device. The ids it holds reach its process as
environment variables (``PILOT_CORES``, ``PILOT_CORE_LIST``, ``OMP_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``) and,
when the pilot may use at least as many CPUs as it has cores, as its CPU affinity.

Pure (no I/O, no process state): the worker reads ``os.sched_getaffinity`` and ``CUDA_VISIBLE_DEVICES`` once
and passes them in, so everything here is tested by itself (tests/worker/test_packing.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pilot.fit import asked

#: what a Firework's process is told (all set for every Firework of a packed pilot)
BINDING_ENV = ("PILOT_CORES", "PILOT_CORE_LIST", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Hold:
    """The cores (CPU ids) and GPUs (device ids as CUDA names them) one Firework holds while it runs."""

    cores: tuple[int, ...]
    gpus: tuple[str, ...]


def firework_asks(spec: Mapping[str, Any] | None) -> tuple[int, int]:
    """(cores, GPUs) a Firework with this ``spec`` holds: ``spec._pilot.cores`` (missing: 1, and never fewer
    than 1) and ``spec._pilot.gpus`` (missing: 0), each rounded up (:func:`pilot.fit.asked`)."""
    pilot = (spec or {}).get("_pilot")
    pilot = pilot if isinstance(pilot, Mapping) else {}
    return max(asked(pilot.get("cores"), 1), 1), asked(pilot.get("gpus"), 0)


def cpu_ids(count: int, allowed: Iterable[int]) -> tuple[list[int], bool]:
    """The ids of the pilot's ``count`` cores, and whether a Firework can be bound to them: the first ``count``
    CPUs the worker may run on (``allowed``: ``os.sched_getaffinity(0)``, the batch job's CPU set) when there are
    that many; else ``0 .. count-1``, ids that only keep the Fireworks' counts apart (no affinity is set)."""
    cpus = sorted(set(allowed))
    if len(cpus) >= count:
        return cpus[:count], True
    return list(range(count)), False


def gpu_ids(count: int, visible: str | None) -> list[str]:
    """The ids of the pilot's ``count`` GPUs: the first ``count`` of the worker's ``CUDA_VISIBLE_DEVICES``
    (``visible``; the batch system's own choice of devices: SLURM, LSF set it) when it is set, else
    ``0 .. count-1``. Fewer when the variable lists fewer devices (the pilot has only those)."""
    if visible is not None and visible.strip():
        return [part.strip() for part in visible.split(",") if part.strip()][:count]
    return [str(n) for n in range(count)]


class Slots:
    """Which of the pilot's cores and GPUs are free. :meth:`take` gives a Firework the lowest free ids (so
    a Firework of several cores gets neighbouring ones when it can), :meth:`give_back` returns them."""

    def __init__(self, cores: Iterable[int], gpus: Iterable[str]) -> None:
        self.cores = list(cores)
        self.gpus = list(gpus)
        self._free_cores = list(self.cores)
        self._free_gpus = list(self.gpus)

    @property
    def free_cores(self) -> int:
        return len(self._free_cores)

    @property
    def free_gpus(self) -> int:
        return len(self._free_gpus)

    @property
    def busy(self) -> bool:
        """Some core or GPU is held."""
        return self.free_cores < len(self.cores) or self.free_gpus < len(self.gpus)

    def can_start(self, gpu_work_only: bool = False) -> bool:
        """Could a Firework start now: a core free, and, for a GPU-work-only pilot with GPUs (it takes only
        Fireworks asking for at least one), a GPU free too."""
        if self.free_cores < 1:
            return False
        return not (gpu_work_only and self.gpus and self.free_gpus < 1)

    def take(self, cores: int, gpus: int) -> Hold | None:
        """Hold ``cores`` cores and ``gpus`` GPUs, the lowest free ids of each; None (nothing held) when not
        that many are free."""
        if cores > self.free_cores or gpus > self.free_gpus:
            return None
        hold = Hold(tuple(self._free_cores[:cores]), tuple(self._free_gpus[:gpus]))
        del self._free_cores[:cores]
        del self._free_gpus[:gpus]
        return hold

    def give_back(self, hold: Hold) -> None:
        """Free what ``hold`` held (once; ids the pilot does not have, or already free, are ignored)."""
        for core in hold.cores:
            if core in self.cores and core not in self._free_cores:
                self._free_cores.append(core)
        for gpu in hold.gpus:
            if gpu in self.gpus and gpu not in self._free_gpus:
                self._free_gpus.append(gpu)
        self._free_cores.sort(key=self.cores.index)
        self._free_gpus.sort(key=self.gpus.index)


def binding(hold: Hold, bind_cpus: bool) -> dict[str, Any]:
    """What the Firework process holding ``hold`` applies before its tasks run: ``env`` (the variables of
    :data:`BINDING_ENV`; ``CUDA_VISIBLE_DEVICES`` empty when it holds no GPU, so that it sees none of the
    devices other Fireworks hold) and ``cpus`` (its CPU affinity, None when the ids are not real CPUs)."""
    cores = ",".join(str(c) for c in hold.cores)
    env = {"PILOT_CORES": str(len(hold.cores)), "PILOT_CORE_LIST": cores, "OMP_NUM_THREADS": str(len(hold.cores)),
           "CUDA_VISIBLE_DEVICES": ",".join(hold.gpus)}
    return {"env": env, "cpus": sorted(hold.cores) if bind_cpus else None}


__all__ = ["BINDING_ENV", "Hold", "Slots", "binding", "cpu_ids", "firework_asks", "gpu_ids"]
