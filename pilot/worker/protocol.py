"""What the worker, its fork server and its Firework children say to each other.

A Firework child sends the Rocket's LaunchPad calls (:data:`ROCKET_CALLS`) to the worker as length-prefixed
pickled frames over a pipe, and reads the replies from a second pipe; its exit code (``CHILD_*``) tells the
worker whether it ran a Firework. The exit codes of ``pilot worker`` itself (``EXIT_*``) are here too, so that
the command line needs nothing else. Only the standard library: every process of the worker imports this.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

#: Exit codes of ``pilot worker``.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DB_UNREACHABLE = 3

#: Exit codes of a Firework child process (internal protocol between child and worker).
CHILD_RAN = 0
CHILD_ERROR = 1
CHILD_NO_WORK = 3
#: a pre-forked child that was never given work
CHILD_UNUSED = 4
#: a child that ran a Firework and cannot take another (see :mod:`pilot.worker.reuse`)
CHILD_DECLINED = 5

#: LaunchPad methods that FireWorks' Rocket calls on its LaunchPad during a launch. In a Firework child they
#: run in the worker process (over the child's pipe), on the worker's warm connection: a child killed at any
#: moment can never leave one of these database writes half done, and a child needs no connection of its own.
ROCKET_CALLS = frozenset({"checkout_fw", "ping_launch", "complete_launch", "change_launch_dir",
                          "restore_backup_data"})

#: the length prefix of every frame
FRAME = struct.Struct(">I")


class WorkerGone(RuntimeError):
    """The worker process closed its end of a Firework child's pipe (it exited or was killed)."""


def launch_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The launch id of a Rocket's ``ping_launch`` or ``complete_launch`` call (FireWorks passes it first)."""
    return args[0] if args else kwargs.get("launch_id")


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(FRAME.pack(len(payload)) + payload)
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise WorkerGone("the pilot worker closed the connection to this Firework process")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes:
    (size,) = FRAME.unpack(read_exact(fd, FRAME.size))
    return read_exact(fd, size)


def encode_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], want_reply: bool) -> bytes:
    """A child's LaunchPad call as a frame payload."""
    return pickle.dumps((method, args, kwargs, want_reply), protocol=pickle.HIGHEST_PROTOCOL)


def send_reply(fd: int, kind: str, payload: Any, fw_modules: dict[str, str] | None = None,
               keep: bool = False, binding: dict[str, Any] | None = None) -> bool:
    """Send the worker's reply (``kind`` "ok" or "err") to a child's call; False when the child is gone.

    ``fw_modules``: FireWorks' SAVED_FW_MODULES of the worker, passed along with a checkout so the child is
    spared FireWorks' package walk to find the task classes by name. ``keep``, with a completion: the worker
    will serve this process's next checkout (:mod:`pilot.worker.reuse`); else the process exits after its
    Rocket instead of asking for more. ``binding``, with a checkout in a packed pilot: the cores and GPUs the
    Firework holds (:func:`pilot.worker.slots.binding`), which the child applies before the Rocket runs the tasks.
    """
    try:
        body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception is reported as text
        kind = "err"
        body = pickle.dumps(RuntimeError(f"pilot worker could not pass back {payload!r}: "
                                         f"{type(exc).__name__}: {exc}"))
    data = pickle.dumps((kind, fw_modules, body, keep, binding), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        write_frame(fd, data)
        return True
    except (BrokenPipeError, OSError):
        return False
