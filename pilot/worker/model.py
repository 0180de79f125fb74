"""What the worker was told (:class:`WorkerConfig`), what became of its pulls (:class:`Outcome`,
:class:`LaunchRecord`, :class:`Summary`), why it stops, and the errors that end it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.worker.tunnel import SshRoute

#: Firework / launch states in which a Firework still "belongs" to a running launch.
ACTIVE_STATES = ("RUNNING", "RESERVED")
FINAL_LAUNCH_STATES = ("COMPLETED", "FIZZLED")


class Outcome(enum.Enum):
    """What became of one pull attempt."""

    COMPLETED = "COMPLETED"
    FIZZLED = "FIZZLED"
    #: the launch was still RUNNING when the child ended: the Firework went back to READY.
    REQUEUED = "REQUEUED"
    #: the child found no matching READY Firework.
    NO_WORK = "NO_WORK"
    #: the child failed before it took a Firework (database error, broken environment).
    CHILD_FAILED = "CHILD_FAILED"
    #: the Firework vanished from the database while it ran (deleted by someone else).
    LOST = "LOST"


class StopReason(enum.Enum):
    """Why the worker stopped pulling work."""

    IDLE = "no matching work for the idle timeout"
    DEADLINE = "deadline reached (time left minus margin <= 0)"
    #: READY work is there but none fits the time left; a fresh pilot would take it
    NOTHING_FITS = "READY work, but none fits the time left"
    SIGNAL = "stop signal"
    #: the pilot's record says ``drain: true`` (``pilot drain CLUSTER``): no more Fireworks after the current one
    DRAINED = "the cluster is drained (pilot drain): no new Firework"


class StopRequested(Exception):
    """A stop signal arrived while the worker was waiting for the database to look for work."""


class WorkerError(RuntimeError):
    """A failure that ends the worker with a message a person can act on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``pilot worker`` was told on its command line."""

    launchpad_file: Path
    categories: tuple[str, ...]
    name: str
    deadline: float | None
    margin: float = 60.0
    idle_timeout: float = 60.0
    grace: float = 30.0
    term_grace: float = 1.0
    launch_dir: Path = field(default_factory=Path.cwd)
    log_file: Path | None = None
    db_retry_time: float = 300.0
    fw_log_level: str = "INFO"
    #: the ssh route to the LaunchPad (``--route-ssh`` ...); None: connect to the LaunchPad file's address
    route: SshRoute | None = None
    #: a FWorker query ANDed into every pull (``--query``: the cluster file's ``fworker_query``); None: none
    query: dict[str, Any] | None = None
    #: the configured FWorker name (``--fworker-name``, or the name in ``-w FILE``): a Firework pinned to it
    #: (``spec._fworker``) is taken as one pinned to ``name``; launches still record ``name``. None: none
    fworker_name: str | None = None
    #: the FWorker env (``--fworker-env``, over the env in ``-w FILE``): FireWorks hands it to every task as
    #: ``spec._fw_env`` (what ``env_chk``'s ``>>key<<`` looks up). None: empty
    fworker_env: dict[str, Any] | None = None
    #: the pilot's record in the manager's ``pilots`` collection (``--record``: the batch job name); None: the
    #: worker was started by hand and writes no heartbeat
    record: str | None = None
    #: seconds between two heartbeats written into the record (``--heartbeat``)
    heartbeat: float = 60.0
    #: run every Firework in a fresh process (``--fresh-process``); default: a process that ran a short
    #: Firework cleanly takes the next one (:mod:`pilot.worker.reuse`)
    fresh_process: bool = False
    #: CPU cores of the pilot (``--cores``): a Firework asking for more (``spec._pilot.cores``) is never taken
    cores: int = 1
    #: GPUs of the pilot (``--gpus``): a Firework asking for more (``spec._pilot.gpus``) is never taken
    gpus: int = 0
    #: MiB of memory a Firework may ask for (``--memory-mb``, ``spec._pilot.memory``); None: any
    memory_mb: int | None = None
    #: run several Fireworks at once, each on the cores/GPUs it asks for (``--pack``, :mod:`pilot.worker.packing`)
    pack: bool = False
    #: take only Fireworks asking for at least one GPU (``--gpu-work-only``: a GPU queue profile's pilots)
    gpu_work_only: bool = False

    @property
    def stop_at(self) -> float | None:
        """Epoch seconds at which a still-running Firework is asked to stop (``deadline - margin/2``)."""
        return None if self.deadline is None else self.deadline - self.margin / 2.0


@dataclass
class LaunchRecord:
    """One pull attempt as the worker saw it."""

    outcome: Outcome
    fw_id: int | None = None
    launch_id: int | None = None
    name: str = ""
    duration: float = 0.0
    detail: str = ""


@dataclass
class Summary:
    """Counters for the summary line printed at exit."""

    started_mono: float = field(default_factory=time.monotonic)
    run: int = 0
    completed: int = 0
    fizzled: int = 0
    requeued: int = 0
    lost: int = 0
    busy: float = 0.0
    #: a packed pilot's cores (None: one Firework at a time); its utilisation is core-seconds busy over
    #: core-seconds elapsed, each Firework weighed by the cores it held
    cores: int | None = None
    core_busy: float = 0.0

    def add(self, rec: LaunchRecord, cores: int = 1) -> None:
        if rec.fw_id is None:
            return
        self.run += 1
        self.busy += rec.duration
        self.core_busy += rec.duration * cores
        if rec.outcome is Outcome.COMPLETED:
            self.completed += 1
        elif rec.outcome is Outcome.FIZZLED:
            self.fizzled += 1
        elif rec.outcome is Outcome.REQUEUED:
            self.requeued += 1
        elif rec.outcome is Outcome.LOST:
            self.lost += 1

    def line(self, name: str, reason: str) -> str:
        elapsed = max(time.monotonic() - self.started_mono, 1e-9)
        util = 100.0 * self.busy / elapsed
        busy = f"busy {self.busy:.1f} s of {elapsed:.1f} s elapsed"
        if self.cores is not None:
            util = 100.0 * self.core_busy / (elapsed * max(self.cores, 1))
            busy = f"busy {self.core_busy:.1f} core-s of {elapsed:.1f} s elapsed x {self.cores} cores"
        lost = f", {self.lost} lost" if self.lost else ""
        return (f"summary {name}: {self.run} Fireworks run ({self.completed} completed, {self.fizzled} fizzled, "
                f"{self.requeued} requeued{lost}); {busy} ({util:.0f}% utilisation); stopped: {reason}")
