"""The ssh route of a pilot (``launchpad_route: ssh``): a local port on the compute node that reaches the
LaunchPad through the cluster's login node.

Many compute nodes cannot route to the fileserver. The manager keeps a remote forward open on the login node
(sshd binds ``127.0.0.1:PORT`` there, see :mod:`pilot.transport.ssh_forward`); only the login node's loopback
has that port (sshd's default ``GatewayPorts no``), so a pilot runs OpenSSH's own client::

    ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:PORT -p LOGIN_PORT -i ~/.pilot/route_key ... USER@LOGIN_ADDRESS

with a key that ``pilot bootstrap`` made on the cluster and authorized on the login node for nothing but that
one forward (``restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:PORT"``), and the login
node's host key that the bootstrap's own connection verified. The worker then talks to ``127.0.0.1:LOCAL``
with the LaunchPad file's credentials and TLS settings: TLS stays end to end (the certificate names
127.0.0.1), ssh only carries bytes.

Why a process and not paramiko: the worker room stays light (nothing heavy is imported inside batch jobs) and
OpenSSH is on every cluster, with the site's own ciphers and settings.

:class:`Tunnel` starts ssh, waits until it forwards, restarts it with backoff when it exits (a watchdog
thread; the worker's database retry covers the gap, and the local port stays the same, so the worker's
LaunchPad keeps working), and stops it when the worker ends. ssh stays in the worker's process group (batch
systems that kill a job by process group or cgroup also kill it) but ignores the soft signals that batch
systems send to every process of a job (TERM, INT, USR1, USR2): the worker still needs the route to put a
Firework back when it is told to stop; it stops ssh itself, by PID, when it is done.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from pilot.ssh_route import SshRoute
from pilot.worker.logs import LOG

__all__ = ["SshRoute", "Tunnel", "TunnelError", "launchpad_via_route", "parse_route_target", "ssh_argv"]

#: ssh's own words when its -L listener cannot bind (OpenSSH channels.c, ssh.c): another port is tried.
_BIND_FAILED = ("address already in use", "cannot listen to port", "could not request local forwarding")
#: ssh's words for failures that a retry cannot mend: the key is not authorized, the host key does not match.
_PERMANENT = ("permission denied", "host key verification failed", "no such identity",
              "remote host identification has changed", "bad configuration option", "bad owner or permissions")
#: The wrapper that makes ssh ignore the batch system's soft signals (an ignored signal stays ignored across
#: exec, and ssh installs its TERM/INT handlers only when they are not ignored); then it IS ssh (same PID).
_IGNORE_SOFT_SIGNALS = 'trap "" INT TERM USR1 USR2; exec "$@"'
#: Ports tried for LOCAL lie outside the kernel's ephemeral range, so no bind(0) elsewhere takes ours while
#: ssh is being restarted; this is the range used when the kernel's cannot be read.
_DEFAULT_EPHEMERAL = (32768, 60999)


class TunnelError(RuntimeError):
    """The route could not be opened: what ssh said, and what to do about it."""


_TARGET = re.compile(r"^(?:(?P<user>[^@\s]+)@)?"
                     r"(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^\s:@\[\]]+)):(?P<port>\d{1,5})$")


def parse_route_target(text: str) -> tuple[str | None, str, int]:
    """``[USER@]ADDRESS:PORT`` (``[v6]:PORT`` for IPv6) -> (user or None, address, port).

    Raises
    ------
    ValueError
        The text is not of that form or the port is out of range; the message shows the form.
    """
    m = _TARGET.match(text.strip())
    port = int(m.group("port")) if m else 0
    if m is None or not 1 <= port <= 65535:
        raise ValueError(f"{text!r} is not USER@ADDRESS:PORT (e.g. alice@10.1.0.1:22, [fd00::1]:22 for IPv6)")
    return m.group("user"), m.group("v6") or m.group("host"), port


def _ssh_file_option(path: Path) -> str:
    """A path as ssh reads a file option: ``%`` doubled (ssh expands %-tokens in IdentityFile and
    UserKnownHostsFile) and double quotes around a path with blanks (ssh splits option values on them)."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(ch.isspace() for ch in text) else text


def ssh_argv(route: SshRoute, local_port: int) -> list[str]:
    """The ssh command line of the route (no secret in it: the key is a file name).

    Besides the options of the design (key only, no prompts, the bootstrap's known_hosts and nothing else
    trusted on first use, exit when the forward cannot be set up, keepalives that notice a dead login node), the
    user's ~/.ssh/config is neutralised where it could break a background forward: no connection sharing
    (ControlMaster), no agent, no X11, no local commands, no rewriting of the known_hosts file.
    """
    return [
        route.ssh, "-N",
        "-L", f"127.0.0.1:{local_port}:127.0.0.1:{route.port}",
        "-p", str(route.login_port),
        "-i", str(route.key),  # taken as written (a file option's quoting and %-tokens do not apply to -i)
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={_ssh_file_option(route.known_hosts)}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=3",
        "-o", "ConnectTimeout=20",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "PermitLocalCommand=no",
        (f"{route.user}@" if route.user else "") + route.login_address,
    ]


def launchpad_via_route(doc: dict[str, Any], local_port: int) -> dict[str, Any]:
    """A LaunchPad file's content pointed at ``127.0.0.1:local_port`` (credentials and TLS settings kept).

    Both forms FireWorks reads are handled: ``host`` + ``port``, and ``uri_mode: true`` with one
    ``mongodb://`` host in ``host``.

    Raises
    ------
    ValueError
        A URI that names several hosts or an SRV record cannot go through one forwarded port.
    """
    out = dict(doc)
    host = str(out.get("host") or "")
    if out.get("uri_mode") or host.startswith(("mongodb://", "mongodb+srv://")):
        parts = urlsplit(host)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if parts.scheme != "mongodb" or "," in hosts:
            raise ValueError("the LaunchPad URI names an SRV record or several hosts; an ssh route carries one "
                             "host:port (write host and port fields, or one mongodb://HOST:PORT)")
        out["host"] = urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{local_port}"))
    else:
        out["host"] = "127.0.0.1"
        out["port"] = local_port
    return out


# ============================================================================ the local port
def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def pick_local_port(rng: random.Random | None = None, tries: int = 50) -> int:
    """A port nothing listens on at 127.0.0.1, outside the ephemeral range when possible (see
    :data:`_DEFAULT_EPHEMERAL`); the kernel's choice (bind to port 0) as the last resort."""
    rng = rng or random.Random()
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 65536) if not low <= p <= high]
    for _ in range(tries if candidates else 0):
        port = rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (this network namespace), None when /proc cannot tell."""
    found: set[str] | None = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = found or set()
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st ... inode: st 0A is LISTEN; the port is hex after the colon
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def forwarding(pid: int, port: int) -> bool:
    """Whether process ``pid`` listens on ``port``: its sockets (``/proc/PID/fd``) against the kernel's
    listening sockets. Without /proc: whether 127.0.0.1:``port`` accepts a connection."""
    inodes = _listen_inodes(port)
    if inodes is not None:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            return False
        return any(link[8:-1] in inodes for link in links if link.startswith("socket:["))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# ============================================================================ the ssh process
class _Throttle:
    """Lets one line of a kind into the log per ``every`` seconds and counts the others.

    While the manager's forward is down, ssh reports every connection the driver tries ("channel 7: open
    failed: connect failed: ..."), and pymongo tries twice a second while it has no server: one line a minute
    tells as much. Lines differing only in numbers are one kind.
    """

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, line: str) -> str | None:
        """The text to log for ``line`` (with the count of the ones held back), None to hold it back."""
        kind = re.sub(r"\d+", "#", line)
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(kind, (-math.inf, 0))
            if now - last < self.every:
                self._last[kind] = (last, held + 1)
                return None
            self._last[kind] = (now, 0)
        return f"{line} (and {held} more like it in the last {now - last:.0f} s)" if held else line


class _Ssh:
    """One ssh process of the route, and a thread that copies its stderr into the worker's log."""

    def __init__(self, route: SshRoute, local_port: int, throttle: _Throttle | None = None) -> None:
        self.port = local_port
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._throttle = throttle or _Throttle()
        argv = ["/bin/sh", "-c", _IGNORE_SOFT_SIGNALS, "pilot-route", *ssh_argv(route, local_port)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, close_fds=True)
        self.started = time.monotonic()
        assert self.proc.stderr is not None  # stderr=PIPE
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr, route.target),
                                        name=f"pilot-route-stderr-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes], target: str) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.tail.append(line)
                    shown = self._throttle(line)
                    if shown is not None:
                        LOG.warning("route to %s: ssh (pid %d): %s", target, self.proc.pid, shown)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def said(self, words: tuple[str, ...]) -> bool:
        """Whether ssh's stderr holds one of ``words`` (lower case)."""
        self._reader.join(2.0)  # ssh has exited: let the reader take its last lines
        return any(w in line.lower() for line in self.tail for w in words)

    def text(self) -> str:
        self._reader.join(2.0)
        return " | ".join(self.tail) or "(nothing on stderr)"

    def stop(self, grace: float = 2.0) -> None:
        """SIGHUP (ssh closes the connection cleanly; TERM and INT it ignores, see the module docstring), then
        SIGKILL after ``grace`` seconds; by PID: ssh leads no group of its own."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGHUP)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2.0)


# ============================================================================ the tunnel
class Tunnel:
    """The route of one worker: ssh started, watched, restarted with backoff, stopped.

    Parameters
    ----------
    route : SshRoute
        Where to.
    start_timeout : float
        Seconds :meth:`start` keeps trying (a login node's sshd that is being restarted is waited for).
    up_timeout : float
        Seconds one ssh may take to set up its forward before it is killed and tried again.
    max_backoff : float
        Longest wait between two restarts (the waits double from one second).
    """

    def __init__(self, route: SshRoute, start_timeout: float = 120.0, up_timeout: float = 60.0,
                 max_backoff: float = 30.0) -> None:
        self.route = route
        self.start_timeout = start_timeout
        self.up_timeout = up_timeout
        self.max_backoff = max_backoff
        #: the local port the worker's LaunchPad uses (the same for every ssh of this tunnel)
        self.port: int | None = None
        #: how many times ssh was started again after it exited
        self.restarts = 0
        self._ssh: _Ssh | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: ssh's stderr lines, one of a kind a minute (shared by every ssh of this tunnel)
        self._throttle = _Throttle()

    @property
    def pid(self) -> int | None:
        """PID of the current ssh, None before :meth:`start` or after :meth:`stop`."""
        ssh = self._ssh
        return ssh.pid if ssh is not None and ssh.proc.poll() is None else None

    def _spawn(self, port: int) -> _Ssh | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            self._ssh = _Ssh(self.route, port, self._throttle)
            return self._ssh

    def _wait_up(self, ssh: _Ssh, timeout: float, abort: Callable[[], bool] | None = None) -> str:
        """"up", "exited", "timeout" or "stopped": what became of ``ssh`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._stopping.is_set() or (abort is not None and abort()):
                return "stopped"
            if ssh.proc.poll() is not None:
                return "exited"
            if forwarding(ssh.pid, ssh.port):
                return "up"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _pause(self, seconds: float, abort: Callable[[], bool] | None) -> bool:
        """Wait ``seconds``; True as soon as the tunnel is stopped or ``abort()`` says so."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stopping.wait(min(left, 0.2)) or (abort is not None and abort()):
                return True
        return self._stopping.is_set()

    def _check_files(self) -> None:
        if shutil.which(self.route.ssh) is None:
            raise TunnelError(f"route to {self.route.target}: no {self.route.ssh} program on this node; the ssh route "
                              "needs the OpenSSH client on the compute nodes (load its module in the cluster's "
                              "setup lines), or use launchpad_route: direct")
        if "%" in str(self.route.key):
            raise TunnelError(f"route to {self.route.target}: the key's path {self.route.key} holds a '%', which "
                              "ssh reads as a token; move the key to a path without one")
        for what, path in (("key", self.route.key), ("known_hosts file", self.route.known_hosts)):
            if not path.is_file():
                raise TunnelError(f"route to {self.route.target}: the {what} {path} does not exist on this node; "
                                  "run `pilot bootstrap CLUSTER` on the manager's machine (it writes it into the "
                                  "cluster account's ~/.pilot), or check that the home directory is shared with "
                                  "the compute nodes")

    def start(self, abort: Callable[[], bool] | None = None) -> int:
        """Start ssh and wait until it forwards; returns the local port.

        A port that ssh cannot bind is exchanged for another; a failure that may pass (the login node's sshd
        restarting, a network blip) is retried with backoff for ``start_timeout`` seconds; a key that is not
        authorized or a host key that does not match fail at once. ``abort()`` returning true (a stop signal
        came) ends the attempt with a :class:`TunnelError` too.
        """
        self._check_files()
        deadline = time.monotonic() + self.start_timeout
        delay = 1.0
        while True:
            port = pick_local_port()
            ssh = self._spawn(port)
            outcome = "stopped" if ssh is None else self._wait_up(ssh, min(self.up_timeout, max(
                deadline - time.monotonic(), 1.0)), abort)
            if outcome == "up" and ssh is not None:
                self.port = port
                LOG.info("route to %s: forwarding 127.0.0.1:%d to the login node's 127.0.0.1:%d (ssh pid %d)",
                         self.route.target, port, self.route.port, ssh.pid)
                self._watchdog = threading.Thread(target=self._watch, name="pilot-route-watchdog", daemon=True)
                self._watchdog.start()
                return port
            if ssh is not None:
                ssh.stop()
            if outcome == "stopped":
                raise TunnelError(f"route to {self.route.target}: stopped while it was being opened")
            self._raise_if_hopeless(ssh, outcome, deadline, delay)
            if outcome == "exited" and ssh is not None and ssh.said(_BIND_FAILED):
                LOG.info("route to %s: local port %d was taken; trying another", self.route.target, port)
                continue
            LOG.warning("route to %s: ssh %s; trying again in %.0f s", self.route.target,
                        "did not set up the forward in time" if outcome == "timeout" else "exited", delay)
            if self._pause(delay, abort):
                raise TunnelError(f"route to {self.route.target}: stopped while it was being opened")
            delay = min(delay * 2.0, self.max_backoff)

    def _raise_if_hopeless(self, ssh: _Ssh | None, outcome: str, deadline: float, delay: float) -> None:
        """The error for a start that cannot succeed: a permanent refusal, or no time left for another try."""
        said = ssh.text() if ssh is not None else ""
        fix = (f"check that `pilot bootstrap CLUSTER` has run for this cluster (it authorizes {self.route.key} on "
               "the login node and writes the login node's host key), that launchpad_route's login_address and "
               "login_port are the login node's sshd as compute nodes reach it, and that the manager is running "
               f"(its forward holds the login node's port {self.route.port})")
        if ssh is not None and outcome == "exited" and ssh.said(_PERMANENT):
            raise TunnelError(f"route to {self.route.target}: ssh was refused: {said}; {fix}")
        if time.monotonic() + delay >= deadline:
            what = "did not set up the forward" if outcome == "timeout" else "kept failing"
            raise TunnelError(f"route to {self.route.target}: ssh {what} for {self.start_timeout:g} s (last: "
                              f"{said}); {fix}")

    def _watch(self) -> None:
        """The watchdog: wait for ssh to exit, then start it again (same port) after a backoff that doubles
        while restarts keep failing and starts over once the route has stayed up for a minute."""
        delay = 1.0
        while not self._stopping.is_set():
            ssh = self._ssh
            if ssh is None:
                return
            rc = ssh.proc.wait()
            if self._stopping.is_set():
                return
            up_for = time.monotonic() - ssh.started
            if up_for >= 60.0:
                delay = 1.0
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            said = f"; it said: {ssh.text()}" if ssh.tail else ""
            LOG.warning("route to %s: ssh (pid %d) ended after %.0f s (%s%s); starting it again in %.0f s",
                        self.route.target, ssh.pid, up_for, how, said, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2.0, self.max_backoff)
            assert self.port is not None  # the watchdog runs only after a successful start
            new = self._spawn(self.port)
            if new is None:
                return
            self.restarts += 1
            outcome = self._wait_up(new, self.up_timeout)
            if outcome == "up":
                LOG.info("route to %s: forwarding again on 127.0.0.1:%d (ssh pid %d)", self.route.target,
                         self.port, new.pid)
            elif outcome == "timeout":
                LOG.warning("route to %s: ssh (pid %d) did not set up the forward within %.0f s; stopping it",
                            self.route.target, new.pid, self.up_timeout)
                new.stop()

    def stop(self) -> None:
        """Stop ssh and the watchdog (idempotent); called when the worker ends."""
        self._stopping.set()
        with self._lock:
            ssh, self._ssh = self._ssh, None
        if ssh is not None:
            running = ssh.proc.poll() is None
            ssh.stop()
            if running:
                LOG.info("route to %s: ssh (pid %d) stopped", self.route.target, ssh.pid)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(10.0)
