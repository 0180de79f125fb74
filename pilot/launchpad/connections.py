"""Client connections of the embedded LaunchPad server: accept, limits, TLS handshake, read, screen, reply.

One thread per connection, started by the accept loop. It runs the TLS handshake (so a silent client delays
nobody else), then reads one message at a time, runs it through the server's dispatch callback and sends the
reply. Why threads and not a selector: an idle connection costs its thread's touched stack and Python's
per-thread state, about 17 KiB of RSS (measured: 2,000 idle connections add 33 MiB; with TLS about 53 KiB
each, see docs/launchpad-server.md, "Limits"); MongoDB itself serves each connection with its own thread. The
stack size is set to :data:`pilot.launchpad.limits.CONNECTION_STACK_BYTES` (address space, not memory).

The limits (:class:`pilot.launchpad.limits.Limits`, each a ``serve`` option):

* at most ``max_connections`` open connections; one more is closed at once, with a log line at most every
  10 s however many arrive (a flood must not flood the log);
* between messages a connection may stay silent for ever (drivers keep pools of idle connections); once a
  message has begun, the client must keep sending: ``idle_timeout`` seconds, extended for every
  :data:`pilot.launchpad.limits.MIN_RATE_BYTES_PER_S` bytes that arrive (a slow-loris client that trickles a
  byte now and then is closed);
* a header announcing more than ``max_message_bytes`` closes the connection before its body is read; a body
  grows as its bytes arrive (nothing is reserved from the announced length), and every byte of a partly
  received message counts against ``receive_budget_bytes``, shared by all connections: the connection whose
  bytes do not fit is closed;
* documents beyond MongoDB's depth and size limits get MongoDB's error replies before the engine sees them
  (:func:`pilot.launchpad.wire.parse_request`, :func:`pilot.launchpad.limits.screen_writes`).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import bson

from pilot.launchpad import limits, tls, wire
from pilot.launchpad.limits import Limits, RateLimitedLog, ReceiveBudget

log = logging.getLogger(__name__)

#: ``(request, connection id, peer) -> reply``: run one command (the server's, journaled and durable).
Dispatch = Callable[[wire.Request, int, str], dict[str, Any]]
#: ``(connection id, db, command) -> Unauthorized reply or None``: whether the connection may run it at all.
Authorize = Callable[[int, str, dict[str, Any]], dict[str, Any] | None]

#: File descriptors the server needs besides its connections (journal, snapshot, listener, logs, TLS files).
_SPARE_FDS = 128
#: Between messages a connection waits this long at a time (for ever, in steps).
_IDLE_WAIT_S = 600.0
#: The most bytes one recv asks for: the body grows in steps this size as bytes arrive.
_CHUNK = 256 * 1024


class _Closing(Exception):
    """The connection is closed for a reason already logged."""


class Connections:
    """The accept loop and the connection threads of one server.

    Parameters
    ----------
    listener:
        The bound, listening socket.
    settings:
        The limits.
    dispatch, authorize:
        The server's callbacks (see :data:`Dispatch`, :data:`Authorize`).
    closed:
        Called with a connection's id when it ends (its cursors and login go).
    ssl_context:
        With TLS: the server context (the handshake runs in the connection's thread).
    """

    def __init__(self, listener: socket.socket, settings: Limits, dispatch: Dispatch, authorize: Authorize,
                 closed: Callable[[int], None], ssl_context: ssl.SSLContext | None = None) -> None:
        self.limits = settings
        self.max_connections = settings.max_connections
        self.budget = ReceiveBudget(settings.receive_budget_bytes)
        self._listener = listener
        self._dispatch = dispatch
        self._authorize = authorize
        self._closed = closed
        self._ssl = ssl_context
        self._ids = itertools.count(1)
        self._open: set[socket.socket] = set()
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refused = 0
        self._refuse_log = RateLimitedLog(10.0)
        self._accept_log = RateLimitedLog(10.0)
        self._limit_log = RateLimitedLog(1.0)
        self._close_log = RateLimitedLog(1.0)  # a thousand clients stalling at once: not a thousand lines

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Raise the open-files limit as far as ``max_connections`` needs, then accept in a thread of its own."""
        self.max_connections = _raise_open_files(self.limits.max_connections)
        wire.message_size_limit = self.limits.max_message_bytes  # what hello advertises
        threading.stack_size(limits.CONNECTION_STACK_BYTES)
        threading.Thread(target=self._accept_loop, daemon=True, name="accept").start()

    def stop(self) -> None:
        """Stop accepting (the listener itself is the server's to close)."""
        self._stop.set()

    def close_all(self) -> None:
        """Shut every open connection down (at shutdown, after the final snapshot)."""
        self._stop.set()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def count(self) -> int:
        """Open connections (those in their TLS handshake included)."""
        return self._count

    def stats(self) -> dict[str, Any]:
        return {"current": self._count, "limit": self.max_connections, "refused": self.refused,
                "receiveBudgetUsed": self.budget.used, "receiveBudgetPeak": self.budget.peak}

    # ------------------------------------------------------------------------------------ accept
    def _accept_loop(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set() or self._listener.fileno() < 0:
                    return  # stopping: the server closed the listener
                hint = (" (the open-files limit, `ulimit -n`: lower --max-connections or raise the limit)"
                        if exc.errno in (errno.EMFILE, errno.ENFILE) else "")
                self._accept_log.warning("accepting a connection failed: %s%s", exc, hint)
                time.sleep(0.1)
                continue
            self._admit(sock, f"{addr[0]}:{addr[1]}")

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """Start the connection's thread, or close it at once when the server is full."""
        with self._lock:
            full = self._count >= self.max_connections
            if not full:
                self._count += 1
                self._open.add(sock)
        if full:
            self.refused += 1
            sock.close()
            self._refuse_log.warning("refusing a connection from %s: %d connections are open, the limit "
                                     "(--max-connections %d)", peer, self.max_connections, self.max_connections)
            return
        try:
            threading.Thread(target=self._serve, args=(sock, peer), daemon=True, name=f"conn-{peer}").start()
        except RuntimeError as exc:  # the process may not start more threads (ulimit -u, memory)
            self._forget(sock)
            sock.close()
            self._refuse_log.warning("refusing a connection from %s: cannot start a thread for it (%s); %d "
                                     "connections are open", peer, exc, self._count)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._open:
                self._open.discard(sock)
                self._count -= 1

    # ------------------------------------------------------------------------------------- serve
    def _serve(self, sock: socket.socket, peer: str) -> None:
        raw = sock
        conn_id = 0
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                wrapped = tls.handshake(self._ssl, sock, peer)
                if wrapped is None:
                    return
                with self._lock:
                    self._open.discard(raw)
                    self._open.add(wrapped)
                sock = wrapped
            conn_id = next(self._ids)
            while not self._stop.is_set():
                data = self._one_message(sock, conn_id, peer)
                if data:
                    self._send(sock, data, peer)
        except (_Closing, ConnectionError, OSError):
            return
        finally:
            with self._lock:
                for s in (raw, sock):
                    if s in self._open:
                        self._open.discard(s)
                        self._count -= 1
                        break
            try:
                sock.close()
            except OSError:
                pass
            if conn_id:
                self._closed(conn_id)  # the cursors this connection owned are discarded, its login forgotten

    def _one_message(self, sock: socket.socket, conn_id: int, peer: str) -> bytes | None:
        """Read, check and run one message; the encoded reply (None when the client wants none).

        The message's bytes stay counted in the receive budget until its reply is encoded: its decoded form,
        larger than the bytes, lives that long (waiting for the lock included), so many large messages at once
        are bounded by the budget, not only those still arriving.
        """
        request_id, opcode, body, held = self._read(sock, peer)
        try:
            try:
                req = wire.parse_request(request_id, opcode, body)
            except wire.Refused as exc:
                self._limit_log.warning("refused a command from %s: %s (code %s)", peer, exc, exc.reply.get("code"))
                return None if exc.request.more_to_come else wire.encode_reply(exc.request, exc.reply)
            except wire.ProtocolError as exc:
                self._close_log.warning("closing connection from %s: %s", peer, exc)
                raise _Closing from None
            finally:
                del body
            reply = self._run(req, conn_id, peer)
            if req.more_to_come:
                return None
            return _encode(req, reply)
        finally:
            self.budget.give(held)

    def _run(self, req: wire.Request, conn_id: int, peer: str) -> dict[str, Any]:
        """The reply to one decoded request: refusals of the connection layer, else the server's dispatch."""
        if "$legacyQuery" in req.command:
            return {"$err": f"legacy OP_QUERY on {req.command['$legacyQuery']} is not supported; use a driver that "
                            "speaks OP_MSG (pymongo >= 3.7)", "code": 59, "ok": 0.0}
        name = next(iter(req.command), "")
        found = limits.screen_writes(name, req.command, req.sequences, req.size, req.deep)
        if found is None:
            return self._dispatch(req, conn_id, peer)
        denied = self._authorize(conn_id, req.db, req.command)
        if denied is not None:
            return denied
        first = min(found.errors) if found.errors else None
        why = found.command_error["errmsg"] if found.command_error else found.errors[first or 0][1]
        self._limit_log.warning("refused %s from %s: %s", f"statement {first} of {name}" if first is not None
                                else name, peer, why)
        if found.command_error is not None:
            return found.command_error
        ordered_cmd = dict(req.command)
        part = limits.without_refused(req.command, req.sequences, found)
        reply = None
        kept: list[int] = []
        if part is not None:
            command, sequences, kept = part
            reply = self._dispatch(dataclasses.replace(req, command=command, sequences=sequences), conn_id, peer)
        return limits.merge_refused(reply, ordered_cmd, found, kept)

    # ------------------------------------------------------------------------------- bytes in/out
    def _read(self, sock: socket.socket, peer: str) -> tuple[int, int, bytearray, int]:
        """One message: ``(request_id, opcode, body, bytes held in the receive budget)``; the caller gives the
        budget back once the body is decoded.

        Between messages this waits for ever; from the first byte on the limits apply (module docstring)."""
        first = b""
        sock.settimeout(_IDLE_WAIT_S)  # a timeout, not None: a TLS socket then waits in poll(), not in SSL_read
        while not first:                # holding its buffers (about 40 KiB less per idle TLS connection)
            try:
                first = sock.recv(16)
            except TimeoutError:
                if self._stop.is_set():
                    raise _Closing from None
                continue
            break
        if not first:
            raise ConnectionError("peer closed the connection")
        deadline = time.monotonic() + self.limits.idle_timeout
        header = bytearray(first)
        while len(header) < 16:
            header += self._recv(sock, 16 - len(header), deadline, peer, header, 16)
        try:
            length, request_id, opcode = wire.parse_header(bytes(header), self.limits.max_message_bytes)
        except wire.ProtocolError as exc:
            self._close_log.warning("closing connection from %s: %s (the largest message is --max-message-mb %g)",
                                    peer, exc,
                        self.limits.max_message_bytes / 2**20)
            raise _Closing from None
        body = bytearray()
        held = 0
        try:
            while len(body) < length - 16:
                chunk = self._recv(sock, min(length - 16 - len(body), _CHUNK), deadline, peer, body, length)
                if not self.budget.take(len(chunk)):
                    self._close_log.warning(
                        "closing connection from %s: partly received messages hold %.1f MiB, its message of %d "
                        "bytes does not fit in the receive budget (--receive-budget-mb %g)", peer,
                        self.budget.used / 2**20, length, self.budget.limit / 2**20)
                    raise _Closing
                held += len(chunk)
                body += chunk
                deadline += len(chunk) / limits.MIN_RATE_BYTES_PER_S
        except BaseException:
            self.budget.give(held)
            raise
        return request_id, opcode, body, held

    def _recv(self, sock: socket.socket, n: int, deadline: float, peer: str, got: bytearray, length: int) -> bytes:
        """Up to ``n`` bytes of a message in progress, before ``deadline``; closes a silent client."""
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(n)
        except TimeoutError:
            self._close_log.warning(
                "closing connection from %s: it started a message (%d of %s bytes so far) and then sent too "
                "little for %g s (--idle-timeout %g)", peer, len(got) + (16 if length > 16 else 0),
                        length if length > 16 else "?", self.limits.idle_timeout, self.limits.idle_timeout)
            raise _Closing from None
        if not chunk:
            raise ConnectionError("peer closed the connection mid-message")
        return chunk

    def _send(self, sock: socket.socket, data: bytes, peer: str) -> None:
        """Send a reply; a client that does not read it within the idle timeout (plus time for its size) is
        closed rather than holding its thread and the reply for ever."""
        sock.settimeout(self.limits.idle_timeout + len(data) / limits.MIN_RATE_BYTES_PER_S)
        try:
            sock.sendall(data)
        except TimeoutError:
            self._close_log.warning("closing connection from %s: it did not read a reply of %d bytes within %g s",
                                    peer, len(data), self.limits.idle_timeout)
            raise _Closing from None


def _encode(req: wire.Request, reply: dict[str, Any]) -> bytes:
    try:
        data = wire.encode_reply(req, reply)
    except (bson.errors.InvalidDocument, OverflowError, ValueError) as exc:
        data = wire.encode_reply(req, limits.refusal(f"reply cannot be encoded: {exc}", 1))
    if len(data) > wire.MAX_MESSAGE_SIZE:
        data = wire.encode_reply(req, limits.refusal(
            f"reply of {len(data)} bytes exceeds the maximum message size; use a smaller batchSize", 10334))
    return data


def _raise_open_files(wanted_connections: int) -> int:
    """Raise the soft open-files limit towards what ``wanted_connections`` need (up to the hard limit); the
    number of connections the limit allows (a warning says so when it is fewer than wanted)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = wanted_connections + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, new, exc)
    if soft != resource.RLIM_INFINITY and soft < want:
        allowed = max(1, soft - _SPARE_FDS)
        log.warning("the open-files limit (ulimit -n) is %d: at most %d connections, not --max-connections %d; "
                    "raise the hard limit (limits.conf, systemd LimitNOFILE) for more", soft, allowed,
                    wanted_connections)
        return allowed
    return wanted_connections
