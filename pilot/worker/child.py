"""The Firework child's side: a process forked by the fork server runs a Firework with FireWorks' own
``launch_rocket``, in its own ``launcher_*`` directory, and sends the Rocket's LaunchPad calls to the worker;
after a short clean Firework it takes the next one (:mod:`pilot.worker.reuse`)."""

from __future__ import annotations

import datetime
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

from pilot.worker.protocol import (
    CHILD_DECLINED,
    CHILD_NO_WORK,
    CHILD_RAN,
    CHILD_UNUSED,
    WorkerGone,
    encode_call,
    launch_of,
    read_frame,
    write_frame,
)
from pilot.worker.reuse import CleanSlate


class WorkerLink:
    """The child's side of the pipes to the worker: a blocking call/reply channel (thread-safe: FireWorks'
    ping thread calls the LaunchPad too)."""

    def __init__(self, call_fd: int, reply_fd: int) -> None:
        self.call_fd = call_fd
        self.reply_fd = reply_fd
        self.lock = threading.Lock()
        self.served = False
        #: launches this process completed: FireWorks' ping thread pings once more after the Rocket stopped it,
        #: which is dropped here (it could only touch a launch that is no longer RUNNING, and in a warm child
        #: it would reach the worker during the next Firework)
        self.completed: set[Any] = set()
        #: the worker's word with the last completion: it will serve this process's next checkout
        self.keep = False

    def ping(self, launch_id: Any, *args: Any, **kwargs: Any) -> None:
        """A ping (no reply; the worker runs it before any later call of this child), unless the launch is
        completed (checked under the lock: the completion may be on its way from the Rocket's thread)."""
        with self.lock:
            if launch_id not in self.completed:
                write_frame(self.call_fd, encode_call("ping_launch", args, kwargs, False))

    def call(self, method: str, *args: Any, completes: Any = None, **kwargs: Any) -> Any:
        """A call with a reply; ``completes``: the launch it completes (no ping of it is sent after it)."""
        from fireworks.utilities import fw_serializers

        with self.lock:
            if completes is not None:
                self.completed.add(completes)
            try:
                write_frame(self.call_fd, encode_call(method, args, kwargs, True))
            except BrokenPipeError:
                raise WorkerGone("the pilot worker closed the connection to this Firework process") from None
            kind, fw_modules, payload, keep, bind = pickle.loads(read_frame(self.reply_fd))
            self.served = True
            if completes is not None:
                self.keep = keep
        if fw_modules:
            # where the worker found the task classes by name: spares this process FireWorks' package walk
            fw_serializers.SAVED_FW_MODULES.update(fw_modules)
        result = pickle.loads(payload)
        if bind:
            apply_binding(bind)  # before the Rocket, which goes on to run the tasks, has the checkout's answer
        if kind == "ok":
            return result
        raise result


def apply_binding(bind: dict[str, Any]) -> None:
    """Give this process (and so the Firework's tasks and every program they start) the cores and GPUs its
    Firework holds in a packed pilot (:func:`pilot.worker.slots.binding`): the environment, and the CPU
    affinity when the ids are real CPUs. Called from the thread that runs the Rocket, before its tasks: threads
    and processes started afterwards inherit the affinity."""
    for key, value in (bind.get("env") or {}).items():
        os.environ[key] = value
    cpus = bind.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # a CPU set the batch system changed meanwhile: the environment still holds
            print(f"pilot worker: Firework process {os.getpid()} could not be bound to CPUs {cpus}: {exc}",
                  flush=True)


def child_launchpad(link: WorkerLink, lp_dict: dict[str, Any]) -> Any:
    """The LaunchPad given to the Rocket in a Firework child.

    The Rocket's own calls (:data:`~pilot.worker.protocol.ROCKET_CALLS`) go to the worker; anything else (a
    task that receives the LaunchPad through ``_add_launchpad_and_fw_id`` and uses it) runs here, on a
    MongoClient of the child's own, created on first use after the fork.
    """
    from fireworks.core.launchpad import LaunchPad

    class ChildLaunchPad(LaunchPad):
        def __init__(self) -> None:  # no connection: see __getattr__
            self._pilot_local: Any = None
            self.host = lp_dict.get("host")
            self.name = lp_dict.get("name")
            self.logdir = lp_dict.get("logdir")
            self.strm_lvl = lp_dict.get("strm_lvl")

        def __getattr__(self, attr: str) -> Any:
            if attr.startswith("__") or attr == "_pilot_local":
                raise AttributeError(attr)
            if self._pilot_local is None:
                self._pilot_local = LaunchPad.from_dict(lp_dict)
            return getattr(self._pilot_local, attr)

        def to_dict(self) -> dict[str, Any]:
            return dict(lp_dict)

        def get_logdir(self) -> Any:
            return self.logdir

        def checkout_fw(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("checkout_fw", *args, **kwargs)

        def ping_launch(self, *args: Any, **kwargs: Any) -> Any:
            # A ping (heartbeat, or the checkpoint before each task) returns nothing: the Rocket goes on while
            # the worker writes it; the worker runs it before the child's next call, so the order holds.
            try:
                link.ping(launch_of(args, kwargs), *args, **kwargs)
            except BrokenPipeError:
                # FireWorks' ping thread pings once more after the launch is complete; the worker has moved on
                # by then, and a ping only ever updates a RUNNING launch: nothing is lost
                pass

        def complete_launch(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("complete_launch", *args, completes=launch_of(args, kwargs),
                             **kwargs)

        def change_launch_dir(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("change_launch_dir", *args, **kwargs)

        def restore_backup_data(self, *args: Any, **kwargs: Any) -> Any:
            return link.call("restore_backup_data", *args, **kwargs)

    return ChildLaunchPad()


def make_launcher_dir(base: Path) -> Path:
    """Create ``base/launcher_<timestamp>`` like ``rlaunch rapidfire`` does (unique, never reused)."""
    while True:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
        path = base / f"launcher_{stamp}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            time.sleep(1e-6)


def child_main(lp_dict: dict[str, Any], fworker_dict: dict[str, Any], base_dir: Path, fw_log_level: str,
               call_fd: int, reply_fd: int, reuse: bool = True) -> int:
    """Body of a Firework child; the return value is the process exit code.

    The child is forked ahead of time, while the previous Firework still runs; it prepares its launcher dir and
    calls FireWorks' ``launch_rocket`` at once. The Rocket's first call, ``checkout_fw``, waits in the pipe until
    the worker serves it: right when the previous Firework is done, with the FWorker query of that moment.
    After a Firework the worker's answer to the completion says whether it keeps this process; if so, and the
    process is clean, the child asks for the next Firework the same way (:mod:`pilot.worker.reuse`).
    """
    from fireworks.core.fworker import FWorker

    link = WorkerLink(call_fd, reply_fd)
    fworker = FWorker.from_dict(fworker_dict)  # name, categories, env; the worker puts in the query
    lp = child_launchpad(link, lp_dict)
    slate = CleanSlate() if reuse else None  # (--fresh-process: one Firework, no subreaper, nothing to check)
    while True:
        code = _one_rocket(link, lp, fworker, base_dir, fw_log_level)
        if code != CHILD_RAN or not link.keep or slate is None:
            return code
        why = slate.restore()
        if why is not None:
            if not why.startswith("this system"):
                print(f"pilot worker: Firework process {os.getpid()} takes no other Firework: {why}", flush=True)
            return CHILD_DECLINED
        link.served = link.keep = False


def _one_rocket(link: WorkerLink, lp: Any, fworker: Any, base_dir: Path, fw_log_level: str) -> int:
    """One ``launch_rocket`` in a fresh ``launcher_*`` dir: CHILD_RAN, CHILD_NO_WORK or CHILD_UNUSED."""
    from fireworks.core.rocket_launcher import launch_rocket

    launch_dir = make_launcher_dir(base_dir)
    os.chdir(launch_dir)
    try:
        ran = launch_rocket(lp, fworker, strm_lvl=fw_log_level)
    except WorkerGone:
        if link.served:
            raise
        return CHILD_UNUSED  # the worker stopped, or wants a fresh process, before this child's turn
    finally:
        os.chdir(base_dir)
        try:
            launch_dir.rmdir()  # only succeeds when empty (no Firework, or the Firework used _launch_dir)
        except OSError:
            pass
    return CHILD_RAN if ran else CHILD_NO_WORK
