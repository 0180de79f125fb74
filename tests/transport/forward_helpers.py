"""What the forward tests share: a plain TCP echo server on the fileserver's address (the stand-in for the
LaunchPad: the forward only moves bytes), a client run on a login node (its own network namespace), a
listener that takes a port there, and the SSH settings of a test cluster."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import ClusterInfo, fileserver_address, stop_process_tree, wait_for


class EchoServer:
    """A threaded TCP server that sends back every byte it gets; ``bye`` makes it close the connection first.

    It counts the connections it accepted and those whose client closed (``eofs``), so a test sees that both
    the bytes and the end of a connection went through the forward.
    """

    def __init__(self, host: str | None = None) -> None:
        addr = host or fileserver_address()
        assert addr, "the test services wrote no fileserver address"
        self.listener = socket.socket()
        self.listener.bind((addr, 0))
        self.listener.listen(64)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.accepted = 0
        self.eofs = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), name="echo-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    with self._lock:
                        self.eofs += 1
                    return
                if data == b"bye":
                    return
                conn.sendall(data)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accept loop (close alone does not)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept.join(5)
        for t in self._threads:
            t.join(5)


_CLIENT = textwrap.dedent("""
    import errno, hashlib, json, os, socket, sys, threading, time
    a = json.loads(sys.argv[1])
    port = a["port"]

    def connect():
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    def reply(s, n):
        got = b""
        try:
            while len(got) < n:
                d = s.recv(65536)
                if not d:
                    return got, "EOF"
                got += d
        except socket.timeout:
            return got, "timeout"
        return got, "ok"

    try:
        if a["mode"] == "echo":           # random bytes there and back, written while reading
            s = connect()
            data = os.urandom(a["size"])
            sender = threading.Thread(target=s.sendall, args=(data,))
            sender.start()
            got, how = reply(s, len(data))
            sender.join()
            s.close()
            out = {"how": how, "same": got == data, "len": len(got)}
        elif a["mode"] == "many":         # n connections open at once, one ping each
            socks = [connect() for _ in range(a["n"])]
            out = {"replies": []}
            for i, s in enumerate(socks):
                msg = b"ping%d" % i
                try:
                    s.sendall(msg)
                except OSError as exc:
                    out["replies"].append(errno.errorcode.get(exc.errno, str(exc)))
                    continue
                got, how = reply(s, len(msg))
                out["replies"].append(got.decode() if how == "ok" else how)
            for s in socks:
                s.close()
        elif a["mode"] == "bye":          # the far end closes: the near end sees it
            s = connect()
            s.sendall(b"bye")
            t0 = time.monotonic()
            got, how = reply(s, 1)
            out = {"how": how, "seconds": time.monotonic() - t0}
        else:                             # "probe": does anything answer there?
            s = connect()
            s.sendall(b"x")
            got, how = reply(s, 1)
            out = {"how": how}
    except OSError as exc:
        out = {"error": errno.errorcode.get(exc.errno, str(exc))}
    print(json.dumps(out))
""")


def login_client(cluster: ClusterInfo, port: int, mode: str, **args: Any) -> dict[str, Any]:
    """Run the client in the login node's network namespace against ``127.0.0.1:port``; its JSON answer."""
    argv = cluster.on_login([sys.executable, "-c", _CLIENT, json.dumps({"port": port, "mode": mode, **args})])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(res.stdout)


class PortBlocker:
    """Something else listening on ``127.0.0.1:port`` on a login node: a process started here, stopped by PID."""

    def __init__(self, cluster: ClusterInfo, port: int) -> None:
        code = ("import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(1); "
                "print('listening', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen(cluster.on_login([sys.executable, "-c", code, str(port)]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening"

    def stop(self) -> None:
        stop_process_tree(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def listener_pid(cluster: ClusterInfo, port: int) -> int | None:
    """The PID of the process listening on ``127.0.0.1:port`` on the login node (``ss -tlnp`` there)."""
    out = subprocess.run(cluster.on_login(["ss", "-tlnpH", f"sport = :{port}"]), capture_output=True, text=True,
                         timeout=30, check=True).stdout
    import re

    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def route_cluster(cluster: ClusterInfo, port: int, *, host: str | None = None, ssh_port: int | None = None,
                  known_hosts: str | Path | None = None, **route: Any) -> Any:
    """A validated ClusterConfig for ``cluster`` with ``launchpad_route: {via: ssh, port: PORT}`` (the login
    node's sshd, or another one at ``host:ssh_port``)."""
    from pilot.config import ClusterConfig

    return ClusterConfig.model_validate({
        "scheduler": "slurm", "host": host or cluster.host, "port": ssh_port or cluster.port, "user": cluster.user,
        "identity_file": cluster.key, "known_hosts": str(known_hosts or cluster.known_hosts),
        "categories": ["md"], "launchpad_file": "~/.pilot/my_launchpad.yaml", "work_dir": "/tmp/pilot-route",
        "pilot": {"walltime": "5", "partition": "debug"}, "connect_timeout": 10,
        "launchpad_route": {"via": "ssh", "port": port, **route}})


def forward_threads() -> list[str]:
    """Names of the forward's and the keepers' threads still alive (a test must leave none)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("pilot-forward-", "pilot-route-"))]


def no_forward_threads(timeout: float = 10.0) -> None:
    wait_for(lambda: not forward_threads(), timeout=timeout, interval=0.1,
             what=f"the forward's threads to end ({forward_threads()})")


@contextmanager
def closed_after(close: Callable[[Any], object]) -> Iterator[list[Any]]:
    """A list for the forwards or route keepers a test makes: each is closed with ``close`` when the test ends,
    and then no forward or keeper thread may be left."""
    made: list[Any] = []
    try:
        yield made
    finally:
        for m in made:
            close(m)
        no_forward_threads()
