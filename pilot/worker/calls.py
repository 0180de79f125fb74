"""The worker's side of a Firework child's pipe: it reads the Rocket's LaunchPad calls and runs them on the
worker's own (warm) LaunchPad, noting on the child what the checkout and the completion did."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.worker.children import killpg
from pilot.worker.logs import LOG
from pilot.worker.model import WorkerError
from pilot.worker.protocol import FRAME, ROCKET_CALLS, launch_of, send_reply

#: seconds a ping of the Rocket may wait for the child's next call (see :meth:`CallServer.serve`)
PING_HOLD_S = 0.25
#: seconds the next launch id may take to come while a Firework runs (else the next checkout takes its own)
PREFETCH_TIMEOUT_S = 2.0


def _ping_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``ping_launch(launch_id, ptime=None, checkpoint=None)``'s arguments as (launch id, ptime, checkpoint)."""
    full = (*args, None, None, None)
    return (launch_of(args, kwargs), kwargs.get("ptime", full[1]), kwargs.get("checkpoint", full[2]))

if TYPE_CHECKING:
    from pilot.worker.children import ChildPool, ChildState


class CallServer:
    """Serves the Rocket's LaunchPad calls (:data:`~pilot.worker.protocol.ROCKET_CALLS`) of the children."""

    def __init__(self, lp: Any, children: ChildPool, stopping: Callable[[], bool],
                 retry: Callable[..., Any] | None = None, keep: Callable[[ChildState], bool] | None = None,
                 bind: Callable[[ChildState, Any], dict[str, Any] | None] | None = None) -> None:
        self.lp = lp
        self.children = children
        #: does the process of a child whose launch was just completed take the next Firework? (told to the
        #: child with the completion's answer: :mod:`pilot.worker.reuse`)
        self._keep = keep
        #: True once the worker got a stop signal: a checkout then finds no work
        self._stopping = stopping
        #: runs a database call through connection errors (the worker's DbRetry): a Rocket's completion must
        #: outlast a short outage (an ssh route put back, a server restart), or its Firework would be lost
        self._retry = retry
        #: in a packed pilot: the cores and GPUs a child's Firework, just checked out, holds (passed with the
        #: checkout's answer, which the child applies before its tasks run: :mod:`pilot.worker.packing`)
        self._bind = bind

    def read_calls(self, child: ChildState) -> None:
        """Read what the child sent; serve every complete call."""
        try:
            data = os.read(child.call_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            child.eof = True
            return
        child.buffer += data
        while len(child.buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(child.buffer)
            if len(child.buffer) < FRAME.size + size:
                break
            frame = child.buffer[FRAME.size:FRAME.size + size]
            child.buffer = child.buffer[FRAME.size + size:]
            self.serve(child, frame)

    def serve(self, child: ChildState, frame: bytes) -> None:
        """Run one of the Rocket's LaunchPad calls for ``child`` on the worker's LaunchPad and reply.

        Pings (no reply) are held until the child's next call or :data:`PING_HOLD_S`, whichever comes first
        (:meth:`flush_due`; the worker flushes what is left when the child ends): the calls still reach the
        database in the order the Rocket made them, with fewer writes (``LeanLaunchPad.ping_launches``; a
        completion takes them along)."""
        try:
            method, args, kwargs, want_reply = pickle.loads(frame)
        except Exception as exc:  # noqa: BLE001 - a garbled message must not end the worker
            LOG.error("fw child %d: unreadable call (%s: %s): killing it, the conversation is lost", child.pid,
                      type(exc).__name__, exc)
            killpg(child.pid, signal.SIGKILL)
            child.killed = True
            return
        if method not in ROCKET_CALLS:
            if want_reply:
                send_reply(child.reply_fd, "err", RuntimeError(f"pilot worker does not serve LaunchPad.{method}"))
            return
        if method == "ping_launch" and hasattr(self.lp, "ping_launches"):
            # held until the child's next call or PING_HOLD_S: pings that come together are written at once, and
            # when the next call completes the launch they ride on the completion's own write of the launch
            child.held_pings.append(_ping_of(args, kwargs))
            if child.pings_due is None:
                child.pings_due = time.monotonic() + PING_HOLD_S
            return
        if method == "complete_launch" and child.held_pings and all(
                p[0] == launch_of(args, kwargs) for p in child.held_pings):
            pings, child.held_pings, child.pings_due = child.held_pings, [], None
            self.lp.pings_for_completion = [p[1:] for p in pings]
            try:
                done = self._execute(child, method, args, kwargs, want_reply)
            finally:
                self.lp.pings_for_completion = None
            if not done:
                self._write_pings(child, pings)  # the completion failed: the pings as FireWorks wrote them
            return
        self.flush(child)  # written first: the calls run in the order the Rocket made them
        self._execute(child, method, args, kwargs, want_reply)

    def flush(self, child: ChildState) -> None:
        """Write the pings held for ``child`` now (before its next call is served, or when their time is up)."""
        if child.held_pings:
            pings, child.held_pings, child.pings_due = child.held_pings, [], None
            self._write_pings(child, pings)

    def _write_pings(self, child: ChildState, pings: list[tuple[Any, Any, Any]]) -> None:
        start = 0
        for k in range(1, len(pings) + 1):
            if k == len(pings) or pings[k][0] != pings[start][0]:
                self._execute(child, "ping_launches", (pings[start][0], [p[1:] for p in pings[start:k]]), {},
                              False)
                start = k

    def flush_due(self, child: ChildState) -> float | None:
        """Write the held pings if their time is up; else the seconds until it is (None: none held)."""
        if child.pings_due is None:
            return None
        left = child.pings_due - time.monotonic()
        if left <= 0:
            self.flush(child)
            return None
        return left

    def _execute(self, child: ChildState, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 want_reply: bool) -> bool:
        """Run one of the Rocket's calls on the worker's LaunchPad (through the retry) and reply; False when the
        call failed."""
        if method == "checkout_fw":
            if child.fworker is None or self._stopping() or child.stop_sent_at is not None:
                send_reply(child.reply_fd, "ok", (None, None))  # stopping: the Rocket finds no work and ends
                return True
            # the query of this moment (time left), not the one the child was forked with
            if args:
                args = (child.fworker, *args[1:])
            else:
                kwargs["fworker"] = child.fworker
        self.lp._pilot_child = child
        try:
            call = getattr(self.lp, method)
            if self._retry is None:
                result = call(*args, **kwargs)
            else:
                result = self._retry(f"serving LaunchPad.{method} to fw child {child.pid}", call, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - FireWorks' Rocket handles it in the child, as with its own LP
            # the retry gave up (or the server refused): the Rocket gets the driver's own exception
            err = exc.__cause__ if isinstance(exc, WorkerError) and isinstance(exc.__cause__, Exception) else exc
            LOG.warning("fw child %d: LaunchPad.%s failed: %s: %s", child.pid, method, type(err).__name__, exc)
            if want_reply:
                send_reply(child.reply_fd, "err", err)
            return False
        if want_reply:
            self._answer(child, method, args, kwargs, result)
        return True

    def _answer(self, child: ChildState, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                result: Any) -> None:
        """Note what a checkout or completion did, reply, and have the next child forked once a Firework runs."""
        fw_modules = None
        bind = None
        if method == "checkout_fw":
            m_fw, launch_id = result
            if m_fw is not None:
                from fireworks.utilities import fw_serializers

                fw_modules = dict(fw_serializers.SAVED_FW_MODULES)
                self.children.task_modules.update(type(t).__module__ for t in m_fw.tasks)
                child.fw_id, child.launch_id, child.name = m_fw.fw_id, launch_id, m_fw.name
                child.started_mono = time.monotonic()
                LOG.info("fw %d '%s' started (launch %d, pid %d, dir %s)", m_fw.fw_id, m_fw.name, launch_id,
                         child.pid, args[1] if len(args) > 1 else kwargs.get("launch_dir"))
                bind = self._bind(child, m_fw) if self._bind is not None else None
        elif method == "complete_launch":
            child.end_state = str(kwargs.get("state", args[2] if len(args) > 2 else "COMPLETED"))
            child.keep = self._keep is not None and self._keep(child)
        send_reply(child.reply_fd, "ok", result, fw_modules, keep=child.keep, binding=bind)
        if (method == "checkout_fw" and child.fw_id is not None and not self.children.pending
                and child.stop_sent_at is None and not self._stopping()):
            # the next child is forked while this Firework runs
            self.children.request()
        if method == "checkout_fw" and child.fw_id is not None:
            self._prefetch_launch_id()

    def _prefetch_launch_id(self) -> None:
        """Take the next checkout's launch id while this Firework runs (one database write fewer between two
        Fireworks); on a database error the next checkout takes its own."""
        prefetch = getattr(self.lp, "prefetch_launch_id", None)
        if prefetch is None or self._stopping():
            return
        import pymongo
        from pymongo.errors import PyMongoError

        try:
            with pymongo.timeout(PREFETCH_TIMEOUT_S):  # the child runs meanwhile: never hold its supervision
                prefetch()
        except PyMongoError as exc:
            LOG.info("could not take the next launch id ahead (%s: %s); the next checkout takes its own",
                     type(exc).__name__, exc)
