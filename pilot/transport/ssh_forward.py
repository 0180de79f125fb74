"""A remote port forward (``ssh -R``) on a paramiko connection: a port on the SSH server that leads back here.

Compute nodes that cannot route to the LaunchPad can still reach their login node. The manager asks the login
node's sshd to listen on its loopback (``request_port_forward("127.0.0.1", port)``); every connection made
there arrives here as an SSH channel, which :class:`RemoteForward` joins to a new TCP connection to the
target (the LaunchPad as this machine reaches it) and pumps bytes both ways until either side closes. It never
looks into the bytes: TLS between the pilot and the LaunchPad stays end to end.

The forward lives on a connection of its own (:func:`private_connection`), never on the pooled command
connection: the pool re-establishes and closes that one as commands need, which would take the forward
with it. It is opened with the same settings, host-key checks, ProxyJump and keys as the commands' one
(:mod:`~pilot.transport.ssh_pool`). Keeping the forward alive across drops is the caller's job
(:mod:`pilot.manager.routes`); :func:`keepalive` is how it notices a connection that went silent.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import paramiko

from pilot.transport.errors import ConnectError, TransportError
from pilot.transport.ssh_config import Settings
from pilot.transport.ssh_pool import Connection

__all__ = ["ForwardRefused", "RemoteForward", "keepalive", "private_connection"]

log = logging.getLogger("pilot.transport")

#: Bytes per read from one side of a forwarded connection.
CHUNK = 32768
#: How often a pump looks whether the forward is being closed (seconds).
POLL = 1.0

T = TypeVar("T")


class ForwardRefused(TransportError):
    """The SSH server refused to listen for the forward: the port is taken there, or its sshd does not allow
    remote forwarding (``AllowTcpForwarding no``/``local``, ``PermitListen``, a ``restrict`` key option).

    Retryable: a port still held by an earlier session of ours frees itself when sshd notices that session
    is gone; a port held by someone else, or a server that forbids forwarding, does not (the hint says so).
    """

    default_retryable = True


def private_connection(settings: Settings, label: str) -> Connection:
    """A connection of its own with the same settings (keys, known_hosts, ProxyJump) as the pooled ones, but
    outside the pool: nobody else reconnects or closes it under the forward. Not yet connected."""
    return Connection(settings, label)


def _bounded(transport: paramiko.Transport, timeout: float, call: Callable[[], T]) -> tuple[T | None, bool]:
    """Run a blocking global request, closing the transport if no answer comes within ``timeout`` seconds.

    paramiko waits for the answer to a global request for as long as the transport is up; a server that went
    silent (a network blip: no FIN, no RST) would block the caller for the TCP timeout, many minutes. Closing
    the transport ends the wait. Returns the call's result and whether the deadline passed.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        transport.close()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        return call(), expired.is_set()
    finally:
        timer.cancel()


def keepalive(transport: paramiko.Transport, timeout: float) -> bool:
    """Ask the server for an answer (``keepalive@openssh.com``, as ssh's ServerAliveInterval does) and wait for
    it at most ``timeout`` seconds; False (and the transport closed) when none came or the transport is gone.

    paramiko's own keepalive asks for no answer, so it only notices a dead peer when TCP gives up.
    """
    if not transport.is_active():
        return False
    try:
        _, expired = _bounded(transport, timeout,
                              lambda: transport.global_request("keepalive@openssh.com", wait=True))
    except (OSError, EOFError, paramiko.SSHException):     # the connection broke while sending it
        transport.close()
        return False
    return transport.is_active() and not expired


class RemoteForward:
    """``bind_address:port`` on the SSH server, forwarded to ``target`` (host, port) as reached from here.

    Parameters
    ----------
    transport : paramiko.Transport
        A connected transport of its own (:func:`private_connection`).
    port : int
        The port the server listens on.
    target : tuple of (str, int)
        Where each forwarded connection goes from this machine.
    bind_address : str
        The server-side address; ``127.0.0.1``: only processes on the server (and ``ssh -L`` sessions there)
        reach it (sshd's default ``GatewayPorts no`` binds loopback whatever is asked).
    label : str
        How logs and errors name the server (``user@host:port``).
    max_connections : int
        Forwarded connections served at once (one thread each); more are closed at once, with a warning.
    connect_timeout : float
        Seconds for the TCP connection to the target.
    """

    def __init__(self, transport: paramiko.Transport, port: int, target: tuple[str, int], *,
                 bind_address: str = "127.0.0.1", label: str = "", max_connections: int = 128,
                 connect_timeout: float = 10.0) -> None:
        self.transport = transport
        self.port = int(port)
        self.target = (str(target[0]), int(target[1]))
        self.bind_address = bind_address
        self.label = label or bind_address
        self.connect_timeout = connect_timeout
        self.served = 0                     # forwarded connections accepted so far
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._live: dict[int, tuple[paramiko.Channel, socket.socket | None]] = {}
        self._threads: set[threading.Thread] = set()
        self._closing = threading.Event()
        self._started = False
        self._full_warned = False
        self._target_down = False

    @property
    def where(self) -> str:
        """``127.0.0.1:PORT on LABEL -> HOST:PORT``, for logs."""
        return f"{self.bind_address}:{self.port} on {self.label} -> {self.target[0]}:{self.target[1]}"

    @property
    def connections(self) -> int:
        """Forwarded connections open now."""
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------------ start / close
    def start(self, timeout: float = 30.0) -> int:
        """Ask the server to listen; returns the port. Raises :class:`ForwardRefused` when it says no, and
        :class:`ConnectError` when the connection is gone or no answer came within ``timeout`` seconds."""
        host = self.transport.getpeername()[0] if self.transport.is_active() else self.bind_address
        try:
            port, expired = _bounded(self.transport, timeout, lambda: self.transport.request_port_forward(
                self.bind_address, self.port, handler=self._incoming))
        except paramiko.SSHException as exc:
            if not self.transport.is_active():
                raise self._gone("the SSH connection was lost while asking for the forward", exc, host) from exc
            raise ForwardRefused(
                f"the SSH server refused to listen on {self.bind_address}:{self.port} for a remote forward",
                host=host, label=self.label, stderr_tail=f"{type(exc).__name__}: {exc}",
                hint=f"port {self.port} may be in use on that host (by another program or user, or by an earlier "
                     "session that has not ended yet: choose another port), or its sshd does not allow remote "
                     "forwarding (AllowTcpForwarding no or local, PermitListen): ask its admins") from exc
        if expired or port is None:
            raise self._gone(f"no answer to the forward request within {timeout:g} s", None, host)
        self._started = True
        log.info("%s: forwarding %s", self.label, self.where)
        return int(port)

    def _gone(self, what: str, exc: BaseException | None, host: str) -> ConnectError:
        return ConnectError(what, host=host, label=self.label,
                            stderr_tail=f"{type(exc).__name__}: {exc}" if exc else "",
                            hint="check the network and the host's sshd; the route is tried again")

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the forward on the server (when the connection is still up), close every forwarded
        connection and wait for their threads (at most ``timeout`` seconds in all)."""
        self._closing.set()
        if self._started and self.transport.is_active():
            try:
                _bounded(self.transport, timeout, lambda: self.transport.cancel_port_forward(
                    self.bind_address, self.port))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                log.debug("%s: cancelling the forward: %s", self.label, exc)
        self._started = False
        with self._lock:
            live = list(self._live.values())
            threads = list(self._threads)
        for chan, sock in live:
            _shut(chan, sock, close_socket=False)   # the pump thread closes its socket itself
        for t in threads:
            t.join(timeout)

    # ------------------------------------------------------------------ forwarded connections
    def _incoming(self, chan: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
        """paramiko's handler, called in the transport's thread: hand the channel to a thread of its own
        (connecting to the target may take seconds), or close it when the forward is full or closing."""
        if self._closing.is_set() or not self._slots.acquire(blocking=False):
            if not self._closing.is_set() and not self._full_warned:
                self._full_warned = True
                log.warning("%s: %d forwarded connections are open, the most allowed: refusing more",
                            self.label, len(self._live))
            chan.close()
            return
        with self._lock:
            self.served += 1
            n = self.served
            self._live[id(chan)] = (chan, None)
        t = threading.Thread(target=self._serve, args=(chan,), name=f"pilot-forward-{self.port}-{n}", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _serve(self, chan: paramiko.Channel) -> None:
        """One forwarded connection: connect to the target, pump until either side closes, close both."""
        sock: socket.socket | None = None
        try:
            sock = self._connect_target()
            if sock is None:
                return
            with self._lock:
                if id(chan) in self._live:
                    self._live[id(chan)] = (chan, sock)
            if not self._closing.is_set():
                _pump(chan, sock, self._closing)
        finally:
            _shut(chan, sock)
            with self._lock:
                self._live.pop(id(chan), None)
                self._threads.discard(threading.current_thread())
                if len(self._live) == 0:
                    self._full_warned = False
            self._slots.release()

    def _connect_target(self) -> socket.socket | None:
        """A TCP connection to the target; None when it cannot be reached (logged once until it can again)."""
        try:
            sock = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError as exc:
            if not self._target_down:
                self._target_down = True
                log.warning("%s: cannot reach the forward's target %s:%d (%s): forwarded connections are closed "
                            "until it answers", self.label, self.target[0], self.target[1], exc)
            return None
        if self._target_down:
            self._target_down = False
            log.info("%s: the forward's target %s:%d answers again", self.label, *self.target)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _pump(chan: paramiko.Channel, sock: socket.socket, closing: threading.Event) -> None:
    """Copy bytes both ways until one side ends (EOF or an error) or ``closing`` is set."""
    other: dict[Any, Any] = {chan: sock, sock: chan}
    sides: list[Any] = [chan, sock]
    while not closing.is_set():
        try:
            ready, _, _ = select.select(sides, [], [], POLL)
        except (OSError, ValueError):      # a side was closed under us (RemoteForward.close)
            return
        for src in ready:
            try:
                data = src.recv(CHUNK)
                if not data:
                    return
                other[src].sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                return


def _shut(chan: paramiko.Channel, sock: socket.socket | None, close_socket: bool = True) -> None:
    """End both sides of a forwarded connection; safe more than once. From another thread than the pump's,
    only shut the socket down (that wakes the pump, which closes it), so the pump never waits on a descriptor
    number that a new connection may already have been given."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass                            # not connected any more: closing is all that is left
        if close_socket:
            sock.close()
    chan.close()
