"""What every part of :class:`~pilot.transport.ssh.SSHTransport` shares: its settings, its label, its share of
the pooled connection, and how a lost connection is reported.

The commands (:mod:`~pilot.transport.ssh_commands`) and the files (:mod:`~pilot.transport.ssh_files`) build on
:class:`SSHTransportBase`; :class:`~pilot.transport.ssh.SSHTransport` combines the two.
"""

from __future__ import annotations

import threading

from pilot.transport.base import Transport
from pilot.transport.errors import ConnectError, ConnectionLost
from pilot.transport.ssh_config import Settings, resolve_settings
from pilot.transport.ssh_pool import Connection, acquire, release

#: Bytes per read from / write to a channel or an SFTP file.
CHUNK = 32768


def home_relative(path: str) -> str:
    """SFTP and commands start in the home directory: ``~/x`` becomes ``x``."""
    p = str(path)
    if p == "~":
        return "."
    if p.startswith("~/"):
        return p[2:] or "."
    return p


class SSHTransportBase(Transport):
    """Settings, label and the pooled connection of an SSH transport (parameters: see ``SSHTransport``)."""

    def __init__(self, host: str, user: str | None = None, port: int = 22, identity_file: str | None = None,
                 known_hosts: str | None = None, strict_host_key_checking: bool = True,
                 proxy_jump: str | None = None, use_ssh_config: bool = False,
                 ssh_config_path: str = "~/.ssh/config", connect_timeout: float = 15, keepalive: int = 30,
                 name: str | None = None, allow_agent: bool = True, sftp_timeout: float = 120) -> None:
        if sftp_timeout <= 0:
            raise ValueError(f"sftp_timeout must be a positive number of seconds, got {sftp_timeout!r}")
        self.host = host
        #: Seconds one file operation (put, get, stat, ...) may take before it fails with CommandTimeout.
        self.sftp_timeout = float(sftp_timeout)
        self.name = name or host
        self._settings: Settings = resolve_settings(host, user, port, identity_file, known_hosts,
                                                    strict_host_key_checking, proxy_jump, use_ssh_config,
                                                    ssh_config_path, connect_timeout, int(keepalive), allow_agent,
                                                    name=self.name)
        t = self._settings.target
        endpoint = f"{t}" + (f" via {self._settings.jump}" if self._settings.jump else "")
        self._label = endpoint if self.name == host and host == t.hostname else f"{self.name} ({endpoint})"
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()

    # ------------------------------------------------------------------ settings
    @property
    def label(self) -> str:
        return self._label

    @property
    def hostname(self) -> str:
        """The host actually connected to (after ssh-config resolution)."""
        return self._settings.target.hostname

    @property
    def port(self) -> int:
        return self._settings.target.port

    @property
    def user(self) -> str:
        return self._settings.target.user

    @property
    def connects(self) -> int:
        """How many times the shared connection has been established (1 + reconnects)."""
        return self._connection().connects

    # ------------------------------------------------------------------ connection
    def _connection(self) -> Connection:
        with self._conn_lock:
            if self._conn is None:
                self._conn = acquire(self._settings, self._label)
            return self._conn

    def connect(self) -> None:
        """Open the connection now (it is otherwise opened by the first call). Raises like :meth:`run`."""
        self._connection().transport()

    def close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            release(conn)

    def _lost(self, what: str, exc: BaseException, argv: list[str] | None,
              may_have_run: bool) -> ConnectError | ConnectionLost:
        cls = ConnectionLost if may_have_run else ConnectError
        return cls(f"{what}: the SSH connection was lost", host=self.host, label=self._label,
                   argv=argv, stderr_tail=f"{type(exc).__name__}: {exc}", may_have_run=may_have_run,
                   hint="check the network and the host's sshd; the next call reconnects")

