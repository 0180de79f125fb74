"""The manager's side of ``launchpad_route: ssh``: a forward on each such cluster's login node, kept alive.

Pilots on a cluster whose compute nodes cannot route to the LaunchPad reach it through their login node: the
manager keeps an SSH connection of its own to the login node and asks its sshd for a remote forward on the
login node's loopback (``launchpad_route.port``) back to the LaunchPad as the manager reaches it
(:mod:`pilot.transport.ssh_forward`); the pilots come to that port with ``ssh -L``. One
:class:`RouteKeeper` per cluster keeps its forward up: a thread checks the connection every second, asks
the server for an answer every ``check_interval`` seconds (a connection that went silent counts as lost),
and re-establishes a lost one with a growing delay (1 s, doubling up to 30 s). A drop and a recovery are
logged once each; :meth:`RouteKeeper.state` says how the route is, for ``pilot status`` and the doctor.

The forward has its own connection, not the pooled one the commands use: the pool closes and re-opens its
connection as commands need, and would take the forward with it. Nothing here sees a secret: the keeper knows
the LaunchPad only as a host and port (:func:`launchpad_target`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.transport.ssh_config import Settings
    from pilot.transport.ssh_forward import RemoteForward
    from pilot.transport.ssh_pool import Connection

__all__ = ["RouteKeeper", "RouteKeepers", "RouteState", "backoff_delays", "launchpad_target"]

log = logging.getLogger("pilot.manager")

#: MongoDB's port when a LaunchPad gives none.
MONGODB_PORT = 27017


class RouteTargetError(ValueError):
    """The LaunchPad's address cannot be the target of a forward (a DNS seed list, a Unix socket)."""


def launchpad_target(lp: Any) -> tuple[str, int]:
    """Where the forward leads: the LaunchPad's host and port as this manager reaches it.

    ``lp`` is a FireWorks LaunchPad (``host``, ``port``, ``uri_mode``); in URI mode the first host of the URI
    (only its host and port are read: the password never reaches the keeper). A wildcard host (``0.0.0.0``,
    ``::``, what a server listens on, not an address) becomes ``127.0.0.1``.
    """
    host = str(getattr(lp, "host", "") or "")
    if getattr(lp, "uri_mode", False) or "://" in host:
        return _uri_target(host)
    return _concrete(host or "127.0.0.1"), int(getattr(lp, "port", None) or MONGODB_PORT)


def _uri_target(uri: str) -> tuple[str, int]:
    from pymongo.uri_parser import split_hosts

    from pilot.redact import uri_hosts

    if uri.startswith("mongodb+srv://"):
        raise RouteTargetError("the LaunchPad's URI is a mongodb+srv:// DNS seed list, which names no host and "
                               "port to forward to: write the URI as mongodb://HOST:PORT/...")
    hosts = uri_hosts(uri).split("://", 1)[-1].rstrip("/")
    try:
        nodes = split_hosts(hosts, default_port=MONGODB_PORT)
    except Exception as exc:   # pymongo raises ValueError / InvalidURI / ConfigurationError here
        raise RouteTargetError(f"cannot read a host and port from the LaunchPad's URI ({exc})") from None
    host, port = nodes[0]
    if port is None or host.endswith(".sock"):
        raise RouteTargetError("the LaunchPad's URI names a Unix socket: an ssh route needs a TCP host and port")
    if len(nodes) > 1:
        log.warning("the LaunchPad's URI names %d hosts; the ssh routes lead to the first, %s:%d",
                    len(nodes), host, port)
    return _concrete(host), int(port)


def _concrete(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host


def backoff_delays(initial: float = 1.0, maximum: float = 30.0) -> Iterator[float]:
    """The waits between attempts to re-establish a route: ``initial``, doubling, at most ``maximum``."""
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * 2)


@dataclass(frozen=True)
class RouteState:
    """How one cluster's route is (for ``pilot status`` and the doctor).

    Attributes
    ----------
    cluster : str
        The cluster's name.
    up : bool
        The forward is listening on the login node now.
    since : float or None
        Epoch seconds of the last change (up or down); None before the first attempt ended.
    last_error : str or None
        Why the last attempt failed or the route dropped (None while up after a clean start).
    port : int
        The login node's loopback port of the forward.
    login : str
        The login node as the manager connects to it.
    target : str
        ``host:port`` of the LaunchPad the forward leads to.
    connects : int
        How often the route was established (1 + recoveries).
    """

    cluster: str
    up: bool
    since: float | None
    last_error: str | None
    port: int
    login: str
    target: str
    connects: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the manager's heartbeat record)."""
        return asdict(self)


def route_settings(name: str, cluster: ClusterConfig, keepalive: int) -> Settings:
    """The SSH settings of the route's own connection: those the cluster's commands use (the same keys,
    known_hosts, host-key policy and ProxyJump, as :func:`pilot.transport.clusters.transport_for` reads them)."""
    from pilot.transport.ssh_config import resolve_settings

    return resolve_settings(
        str(cluster.host), cluster.user, cluster.port,
        os.path.expanduser(cluster.identity_file) if cluster.identity_file else None,
        os.path.expanduser(cluster.known_hosts) if cluster.known_hosts else None,
        cluster.strict_host_key_checking, cluster.proxy_jump, cluster.use_ssh_config, "~/.ssh/config",
        float(cluster.connect_timeout), keepalive, True, name=name)


def refused_message(name: str, cluster: ClusterConfig, port: int, detail: str) -> str:
    """What to do when the login node's sshd will not listen on the route's port."""
    where = str(cluster.source_file or f"clusters/{name}.yaml")
    return (f"{where}: launchpad_route.port: the login node's sshd refused to listen on 127.0.0.1:{port} for "
            f"the LaunchPad route of {name}: port {port} is taken there (by another program or user, or by an "
            "earlier manager's session that the login node has not yet dropped), or its sshd does not allow remote "
            "forwarding (AllowTcpForwarding no or local, PermitListen). Fix: write another free port "
            f"(launchpad_route: {{via: ssh, port: N}}) and run `pilot bootstrap {name}` again (the pilots' key is "
            "bound to the port); or ask the cluster's admins to allow remote forwarding; or, when the compute "
            f"nodes reach the LaunchPad themselves, write launchpad_route: direct. ({detail})")


class RouteKeeper:
    """Keeps one ssh-routed cluster's forward up, in a thread of its own.

    Parameters
    ----------
    name : str
        The cluster's name.
    cluster : pilot.config.ClusterConfig
        Its configuration (``launchpad_route: ssh``).
    target : tuple of (str, int)
        The LaunchPad as this manager reaches it (:func:`launchpad_target`).
    check_interval : float
        Seconds between keepalives that must be answered.
    probe_timeout : float
        Seconds a keepalive (and a forward request) may wait for its answer before the connection counts
        as lost.
    backoff_initial, backoff_max : float
        The first wait before re-establishing, and the longest (doubling in between).
    """

    def __init__(self, name: str, cluster: ClusterConfig, target: tuple[str, int], *,
                 check_interval: float = 15.0, probe_timeout: float = 15.0, backoff_initial: float = 1.0,
                 backoff_max: float = 30.0) -> None:
        route = cluster.ssh_route
        if route is None:
            raise ValueError(f"cluster {name} has launchpad_route: direct; only ssh routes are kept")
        self.name = name
        self.cluster = cluster
        self.port = route.port
        self.target = target
        self.check_interval = check_interval
        self.probe_timeout = probe_timeout
        self.backoff = (backoff_initial, backoff_max)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._up_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._forward: RemoteForward | None = None
        self._login = f"{cluster.user or ''}{'@' if cluster.user else ''}{cluster.host}:{cluster.port}"
        self._up = False
        self._since: float | None = None
        self._error: str | None = None
        self._connects = 0
        self._down_at: float | None = None     # monotonic time of the drop, for the recovery line

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        """Start the keeper's thread (once); the first attempt is made there, so a slow login node never
        holds up the manager's cycle."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"pilot-route-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, cancel the forward and close the connection (waits at most about ``timeout``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():          # still connecting: closing the connection ends that
                with self._lock:
                    conn = self._conn
                if conn is not None:
                    conn.close()
                thread.join(timeout)
        self._up_event.clear()

    def state(self) -> RouteState:
        """How the route is now."""
        with self._lock:
            return RouteState(cluster=self.name, up=self._up, since=self._since, last_error=self._error,
                              port=self.port, login=self._login, target=f"{self.target[0]}:{self.target[1]}",
                              connects=self._connects)

    def wait_up(self, timeout: float) -> bool:
        """Wait until the forward is listening (True) or ``timeout`` seconds passed (False)."""
        return self._up_event.wait(timeout)

    @property
    def forward(self) -> RemoteForward | None:
        """The forward now in place (None while down); its ``transport`` is the route's connection."""
        with self._lock:
            return self._forward if self._up else None

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        """Establish, watch, and after a drop or a failure wait (growing) and establish again, until stopped."""
        delays = backoff_delays(*self.backoff)
        attempts = 0
        while not self._stop.is_set():
            attempts += 1
            try:
                self._establish()
            except Exception as exc:    # every failure is reported in state() and retried; none ends the thread
                self._teardown()        # the connection of a refused forward too: each attempt opens its own
                if self._stop.is_set():
                    break
                self._failed(self._describe(exc))
                self._stop.wait(next(delays))
                continue
            self._went_up(attempts)
            attempts = 0
            delays = backoff_delays(*self.backoff)
            try:
                reason = self._watch()
            except Exception as exc:    # whatever broke the watch, the route is re-established, never abandoned
                reason = f"{type(exc).__name__}: {exc}"
            self._teardown()
            if self._stop.is_set():
                break
            self._went_down(reason)
            self._stop.wait(next(delays))
        self._teardown()
        with self._lock:
            self._up = False

    def _establish(self) -> None:
        """A connection of its own and the forward on it; raises what went wrong."""
        from pilot.transport.ssh_forward import RemoteForward, private_connection

        settings = route_settings(self.name, self.cluster, keepalive=max(1, int(self.check_interval)))
        conn = private_connection(settings, f"{self.name} (route)")
        with self._lock:
            self._conn = conn
        if self._stop.is_set():
            raise RuntimeError("stopped")
        transport = conn.transport()
        fwd = RemoteForward(transport, self.port, self.target, label=f"{self.name} (route)",
                            connect_timeout=float(self.cluster.connect_timeout))
        fwd.start(timeout=self.probe_timeout)
        with self._lock:
            self._forward = fwd

    def _watch(self) -> str:
        """Return once the connection is lost (or the keeper stops): why it was."""
        from pilot.transport.ssh_forward import keepalive

        fwd = self._forward
        assert fwd is not None
        transport = fwd.transport
        tick = min(1.0, self.check_interval)
        waited = 0.0
        while not self._stop.wait(tick):
            if not transport.is_active():
                return "the SSH connection to the login node closed"
            waited += tick
            if waited >= self.check_interval:
                waited = 0.0
                if not keepalive(transport, self.probe_timeout):
                    return f"the login node did not answer a keepalive within {self.probe_timeout:g} s"
        return "stopped"

    def _teardown(self) -> None:
        with self._lock:
            fwd, self._forward = self._forward, None
            conn, self._conn = self._conn, None
        if fwd is not None:
            fwd.close()
        if conn is not None:
            conn.close()

    def _describe(self, exc: BaseException) -> str:
        from pilot.transport.errors import TransportError
        from pilot.transport.ssh_forward import ForwardRefused

        if isinstance(exc, ForwardRefused):
            return refused_message(self.name, self.cluster, self.port, exc.stderr_tail)
        if isinstance(exc, TransportError):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ state changes, logged once each
    def _went_up(self, attempts: int) -> None:
        with self._lock:
            recovered = self._connects > 0 or self._error is not None
            self._up, self._since, self._connects = True, time.time(), self._connects + 1
            self._error = None
            down_for = time.monotonic() - self._down_at if self._down_at is not None else None
            self._down_at = None
        self._up_event.set()
        if recovered:
            log.info("%s: LaunchPad route re-established after %d attempt(s)%s: 127.0.0.1:%d on the login node -> "
                     "%s:%d", self.name, attempts, f", down {down_for:.0f} s" if down_for is not None else "",
                     self.port, *self.target)
        else:
            log.info("%s: LaunchPad route up: 127.0.0.1:%d on the login node (%s) -> %s:%d", self.name, self.port,
                     self._login, *self.target)

    def _went_down(self, reason: str) -> None:
        self._up_event.clear()
        with self._lock:
            self._up, self._since, self._error = False, time.time(), reason
            self._down_at = time.monotonic()
        log.warning("%s: LaunchPad route dropped (%s); re-establishing it (waits %g s, doubling up to %g s)",
                    self.name, reason, *self.backoff)

    def _failed(self, error: str) -> None:
        self._up_event.clear()
        with self._lock:
            first = error != self._error
            self._error = error
            if self._up or self._since is None:
                self._since = time.time()
            self._up = False
            if self._down_at is None:
                self._down_at = time.monotonic()
        (log.warning if first else log.debug)("%s: LaunchPad route not established: %s", self.name, error)


class RouteKeepers:
    """The keepers of every cluster with ``launchpad_route: ssh`` (none for the others), for the Manager.

    Parameters
    ----------
    clusters : mapping of str to pilot.config.ClusterConfig
        Every cluster of the configuration.
    launchpad : fireworks.LaunchPad
        The manager's LaunchPad: the forwards lead to it (:func:`launchpad_target`).
    """

    def __init__(self, clusters: Mapping[str, ClusterConfig], launchpad: Any, **keeper_options: Any) -> None:
        self._routed = {name: c for name, c in sorted(clusters.items()) if c.ssh_route is not None}
        self._lp = launchpad
        self._options = keeper_options
        self.keepers: dict[str, RouteKeeper] = {}
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self._routed)

    def start(self) -> None:
        """Start a keeper for each ssh-routed cluster (once; later calls do nothing)."""
        if self.keepers or not self._routed or self.error:
            return
        try:
            target = launchpad_target(self._lp)
        except RouteTargetError as exc:
            self.error = str(exc)
            log.error("no LaunchPad route for %s: %s", ", ".join(self._routed), exc)
            return
        for name, cluster in self._routed.items():
            self.keepers[name] = keeper = RouteKeeper(name, cluster, target, **self._options)
            keeper.start()

    def stop(self) -> None:
        """Stop every keeper: forwards cancelled, connections closed."""
        for keeper in self.keepers.values():
            keeper.stop()

    def states(self) -> dict[str, RouteState]:
        """Cluster name -> its route's state (started keepers only)."""
        return {name: k.state() for name, k in self.keepers.items()}
