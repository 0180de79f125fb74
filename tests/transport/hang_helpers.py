"""Hosts that hang, for the deadline tests: a TCP server that accepts and never answers, and a private sshd
whose SFTP server stops answering (issue 16, item 9).

Both are real: the silent server is a listening socket in this process (on loopback); the hung SFTP is the
real ``sftp-server`` of the cluster's login node behind a small relay that stops passing requests on once
one of them names a given path, as ``sftp-server`` itself does when that path's file system hangs (it
serves requests one at a time, so the blocked one holds up every later one).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from tests.helpers import ClusterInfo, OwnSshd

SFTP_SERVER = "/usr/lib/openssh/sftp-server"

# Run by sshd as the test user for each SFTP session: argv[1] is the path whose file system "hangs" ("-": the
# server never even answers the version exchange), argv[2] the real sftp-server.
_RELAY = r'''
import os, subprocess, sys, threading

hang = sys.argv[1].encode()


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def drain_until_eof():
    # hung: nothing is answered any more; end when the client closes the session
    while os.read(0, 65536):
        pass
    sys.exit(0)


if hang == b"-":
    drain_until_eof()
srv = subprocess.Popen([sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)


def pump():
    while True:
        chunk = os.read(srv.stdout.fileno(), 65536)
        if not chunk:
            return
        os.write(1, chunk)


threading.Thread(target=pump, daemon=True).start()
while True:
    head = read_exact(4)
    body = read_exact(int.from_bytes(head, "big")) if head else None
    if body is None:
        break
    if hang in body:
        srv.stdin.close()
        drain_until_eof()
    srv.stdin.write(head + body)
srv.kill()
'''


class SilentServer:
    """A TCP server on ``host`` that accepts every connection and never sends a byte (an sshd frozen before
    its banner, a firewall that answers the handshake), or, with ``banner_after``, sends an SSH banner after
    that many seconds and then nothing (an sshd that hangs in the key exchange). Closed by :meth:`close`
    (listener and connections)."""

    def __init__(self, host: str = "127.0.0.1", banner_after: float | None = None) -> None:
        self.banner_after = banner_after
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)   # close() from another thread does not wake a blocked accept()
        self.host, self.port = self.sock.getsockname()[:2]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:   # closed
                return
            self.accepted.append(conn)
            if self.banner_after is not None:
                timer = threading.Timer(self.banner_after, _send_banner, (conn,))
                timer.daemon = True
                timer.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in [self.sock, *self.accepted]:
            try:
                c.close()
            except OSError:
                pass


def _send_banner(conn: socket.socket) -> None:
    try:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    except OSError:   # closed meanwhile
        pass


def hung_sftp_sshd(cluster: ClusterInfo, workdir: Path, script_dir: Path, hang_path: str) -> OwnSshd:
    """A private sshd (not started) on ``cluster``'s login node whose SFTP sessions hang at the first request
    that names ``hang_path`` (``"-"``: at once, before the version exchange). ``script_dir`` must be readable by
    the test user (the relay runs as that user). sshd splits the ``Subsystem`` line into words itself: the path
    must hold no blanks or quotes."""
    relay = script_dir / "hung-sftp-relay.py"
    relay.write_text(_RELAY)
    os.chmod(relay, 0o755)
    sshd = OwnSshd(cluster, workdir)
    lines = [ln for ln in sshd.config.read_text().splitlines() if ln.split(None, 1)[:1] != ["Subsystem"]]
    if not hang_path or any(c.isspace() or c in "'\"" for c in hang_path):
        raise ValueError(f"hang_path {hang_path!r} cannot be passed on a Subsystem line")
    lines.append(f"Subsystem sftp /usr/bin/python3 {relay} {hang_path} {SFTP_SERVER}")
    sshd.config.write_text("\n".join(lines) + "\n")
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(sshd.config)], check=True, capture_output=True)
    return sshd


class DelayedRelay:
    """A TCP relay on loopback to ``target`` that connects each client only ``delay`` seconds after accepting it
    (a slow network, an sshd slow to start its session): the client waits that long for the SSH banner, then the
    real server answers. Closed by :meth:`close`."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.server = SilentServer("127.0.0.1")
        self.host, self.port = self.server.host, self.server.port
        self.upstream: list[socket.socket] = []
        self._seen = 0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self.server._stop.is_set():
            while self._seen < len(self.server.accepted):
                conn = self.server.accepted[self._seen]
                self._seen += 1
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()
            self.server._stop.wait(0.05)

    def _relay(self, client: socket.socket) -> None:
        if self.server._stop.wait(self.delay):
            return
        try:
            up = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        up.settimeout(None)
        self.upstream.append(up)
        threading.Thread(target=_pipe, args=(up, client), daemon=True).start()
        _pipe(client, up)

    def close(self) -> None:
        self.server.close()
        self._thread.join(timeout=5)
        for s in self.upstream:
            try:
                s.close()
            except OSError:
                pass


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def slow_auth_sshd(cluster: ClusterInfo, workdir: Path, command_dir: Path) -> OwnSshd:
    """A private sshd (not started) on ``cluster``'s login node whose public-key authentication never ends: its
    ``AuthorizedKeysCommand`` sleeps (an LDAP or NFS home behind it that hangs). ``command_dir`` must be a
    directory that sshd accepts for that command: it and every parent owned by root and not group or world
    writable (``/tmp`` is not); it is created here, mode 0755."""
    command_dir.mkdir(mode=0o755)
    cmd = command_dir / "hanging-keys"
    cmd.write_text("#!/bin/sh\nexec sleep 600\n")
    os.chmod(cmd, 0o755)
    sshd = OwnSshd(cluster, workdir)
    drop = ("AuthorizedKeysFile", "AuthorizedKeysCommand", "AuthorizedKeysCommandUser")
    lines = [ln for ln in sshd.config.read_text().splitlines() if ln.split(None, 1)[:1] not in [[d] for d in drop]]
    lines += ["AuthorizedKeysFile none", f"AuthorizedKeysCommand {cmd} %u", f"AuthorizedKeysCommandUser {cluster.user}"]
    sshd.config.write_text("\n".join(lines) + "\n")
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(sshd.config)], check=True, capture_output=True)
    return sshd
