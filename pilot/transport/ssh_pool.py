"""The pooled SSH connection: one (possibly jumped) paramiko connection per distinct set of settings.

Every :class:`~pilot.transport.ssh.SSHTransport` with the same :class:`~pilot.transport.ssh_config.Settings`
shares one :class:`Connection` (thread-safe); it is opened on first use, re-established once when it was
lost, and closed when the last transport that shares it is closed. Failures to connect become the
transport's errors here (:func:`connect_error`), with what a person can try.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import paramiko

from pilot.transport.errors import AuthenticationError, ConnectError, HostKeyError, TransportError
from pilot.transport.ssh_config import Endpoint, Settings
from pilot.transport.ssh_hostkeys import RejectUnknownHost, UnknownHostKey, WarnAutoAdd, fingerprint

log = logging.getLogger("pilot.transport")

#: Concurrent exec channels per SSH connection (OpenSSH's default MaxSessions is 10: 8 for commands,
#: one for the SFTP session, one spare for killing a timed-out command).
MAX_CHANNELS_PER_CONNECTION = 8


class SecondFactorRequired(paramiko.AuthenticationException):
    """The host took the key and asks for a second factor as well (a one-time password: keyboard-interactive)."""


class _NoPromptTransport(paramiko.Transport):
    """A paramiko transport that never asks a person for anything.

    When a host accepts the key and then asks for keyboard-interactive, paramiko's client falls back to
    ``auth_interactive_dumb``, which prints the host's prompt and reads the answer with ``input()``: a daemon
    would block on (or fail reading) its stdin, ``pilot doctor`` would prompt in the middle of its checks. Such a
    cluster is reached through a login a person opened (``control_path``, ``pilot connect``) instead.
    """

    def auth_interactive_dumb(self, username: str, handler: Any = None, submethods: str = "") -> list[str]:
        raise SecondFactorRequired("the host accepted the key and asks for a second factor (keyboard-interactive)")


class Connection:
    """One (possibly jumped) SSH connection shared by every SSHTransport with the same settings."""

    def __init__(self, settings: Settings, label: str) -> None:
        self.settings = settings
        self.label = label
        self.lock = threading.RLock()          # connect / reconnect / teardown
        self.sftp_lock = threading.Lock()      # one SFTP operation at a time on the shared session
        self.channels = threading.BoundedSemaphore(MAX_CHANNELS_PER_CONNECTION)
        self.client: paramiko.SSHClient | None = None
        self.jump_client: paramiko.SSHClient | None = None
        self.sftp_client: paramiko.SFTPClient | None = None
        self.refs = 0
        self.connects = 0

    # ------------------------------------------------------------------ connect
    def transport(self) -> paramiko.Transport:
        """The live paramiko transport, connecting (or reconnecting once) when needed."""
        with self.lock:
            if self.client is not None:
                t = self.client.get_transport()
                if t is not None and t.is_active():
                    return t
                log.warning("%s: the SSH connection was lost; reconnecting", self.label)
                self._teardown()
            self._connect()
            t = self.client.get_transport() if self.client else None
            assert t is not None  # _connect either sets a connected client or raises
            return t

    def invalidate(self, transport: paramiko.Transport | None) -> None:
        """Drop the connection if it is still ``transport`` (another thread may have replaced it)."""
        with self.lock:
            if self.client is not None and (transport is None or self.client.get_transport() is transport):
                self._teardown()

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        for path in self.settings.known_hosts:
            if os.path.isfile(path):
                # "system" host keys: read only; paramiko never writes them back.
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(WarnAutoAdd(self.label) if not self.settings.strict
                                           else RejectUnknownHost())
        return client

    def _client_connect(self, client: paramiko.SSHClient, ep: Endpoint, sock: Any, role: str) -> None:
        s = self.settings
        for f in ep.identity_files:
            if not os.path.isfile(f):
                raise AuthenticationError(f"identity file {f} ({role}) does not exist", host=ep.hostname,
                                          label=self.label,
                                          hint="fix identity_file in the cluster's configuration (or the "
                                               "IdentityFile in your ssh config)")
        # paramiko bounds each step on its own (TCP, banner, authentication): up to 3x connect_timeout in all.
        # A timer closes the half-made connection when connect_timeout has passed, which ends any wait at once
        # (paramiko's own banner and authentication limits, a second later, are only the fallback).
        expired = threading.Event()
        watchdog = threading.Timer(s.connect_timeout, _abort_connect, (client, expired))
        watchdog.daemon = True
        watchdog.start()
        try:
            client.connect(ep.hostname, port=ep.port, username=ep.user,
                           key_filename=list(ep.identity_files) or None,  # type: ignore[arg-type]  # a list works too
                           timeout=s.connect_timeout, banner_timeout=s.connect_timeout + 1,
                           auth_timeout=s.connect_timeout + 1, channel_timeout=s.connect_timeout,
                           allow_agent=s.allow_agent, look_for_keys=not ep.identity_files, sock=sock,
                           transport_factory=_NoPromptTransport)  # type: ignore[arg-type]  # the class is the factory
        except BaseException as exc:
            client.close()
            if expired.is_set() and isinstance(exc, Exception) and not isinstance(exc, TimeoutError):
                raise TimeoutError(f"the SSH connection was not set up within {s.connect_timeout:g} s "
                                   f"(TCP, banner, key exchange and authentication together; "
                                   f"{type(exc).__name__}: {exc})") from exc
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():   # set up just as the timer fired: it may have closed the new connection
            client.close()
            raise TimeoutError(f"the SSH connection was not set up within {s.connect_timeout:g} s")

    def _connect(self) -> None:
        s = self.settings
        t0 = time.monotonic()
        jump_client = None
        sock = None
        try:
            if s.jump is not None:
                jump_client = self._new_client()
                try:
                    self._client_connect(jump_client, s.jump, None, f"jump host {s.jump}")
                except TransportError:
                    raise
                except Exception as exc:
                    raise connect_error(exc, s.jump, f"jump host {s.jump}", s, self.label) from exc
                jt = jump_client.get_transport()
                assert jt is not None
                if s.keepalive > 0:
                    jt.set_keepalive(s.keepalive)
                try:
                    sock = jt.open_channel("direct-tcpip", (s.target.hostname, s.target.port), ("127.0.0.1", 0),
                                           timeout=s.connect_timeout)
                except Exception as exc:
                    raise ConnectError(f"the jump host {s.jump} could not open a connection to "
                                       f"{s.target.hostname}:{s.target.port}", host=s.target.hostname,
                                       label=self.label, stderr_tail=f"{type(exc).__name__}: {exc}",
                                       hint="check the target host/port from the jump host (`ssh -J "
                                            f"{s.jump} -p {s.target.port} {s.target.user}@{s.target.hostname}`)"
                                            " and that the jump host allows TCP forwarding") from exc
            client = self._new_client()
            try:
                self._client_connect(client, s.target, sock, "target host")
            except TransportError:
                raise
            except Exception as exc:
                raise connect_error(exc, s.target, "host", s, self.label) from exc
        except BaseException:
            if jump_client is not None:
                jump_client.close()
            raise
        t = client.get_transport()
        assert t is not None
        if s.keepalive > 0:
            t.set_keepalive(s.keepalive)
        self.client, self.jump_client = client, jump_client
        self.connects += 1
        log.info("%s: connected%s in %.2f s", self.label, f" via {s.jump}" if s.jump else "",
                 time.monotonic() - t0)

    # ------------------------------------------------------------------ SFTP
    def sftp(self, timeout: float) -> tuple[paramiko.SFTPClient, paramiko.Transport]:
        """The shared SFTP session (opened when needed), its channel set to give up a wait after ``timeout`` s.

        Opening it is bounded too: paramiko's ``invoke_subsystem`` waits for sshd's reply with no timeout, and
        the version exchange waits for an ``sftp-server`` that may hang (a hung file system on the host), so a
        timer closes the half-open channel at ``timeout`` and the wait ends with an error.
        """
        with self.lock:
            t = self.transport()
            if self.sftp_client is not None:
                ch = self.sftp_client.get_channel()
                if ch is None or ch.closed or ch.get_transport() is not t:
                    self._close_sftp()
            if self.sftp_client is None:
                self.sftp_client = self._open_sftp(t, timeout)
            ch = self.sftp_client.get_channel()
            if ch is not None:
                ch.settimeout(timeout)
            return self.sftp_client, t

    def _open_sftp(self, t: paramiko.Transport, timeout: float) -> paramiko.SFTPClient:
        try:
            chan = t.open_session(timeout=min(self.settings.connect_timeout, timeout))
        except paramiko.ChannelException as exc:
            raise ConnectError("the host refused an SFTP session", host=self.settings.target.hostname,
                               label=self.label, stderr_tail=str(exc),
                               hint="check that sshd has `Subsystem sftp` configured") from exc
        chan.settimeout(timeout)
        start = time.monotonic()
        watchdog = threading.Timer(timeout, chan.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.invoke_subsystem("sftp")
            return paramiko.SFTPClient(chan)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            if isinstance(exc, socket.timeout) or time.monotonic() - start >= timeout:
                raise TimeoutError(f"the SFTP session did not open within {timeout:g} s") from exc
            if not t.is_active():
                raise
            raise ConnectError("the host refused an SFTP session", host=self.settings.target.hostname,
                               label=self.label, stderr_tail=f"{type(exc).__name__}: {exc}",
                               hint="check that sshd has `Subsystem sftp` configured") from exc
        finally:
            watchdog.cancel()

    def drop_sftp(self, client: paramiko.SFTPClient) -> None:
        """Close the SFTP session if it is still ``client`` (after a deadline: its replies are out of step now);
        the SSH connection itself stays, and the next SFTP call opens a new session."""
        with self.lock:
            if self.sftp_client is client:
                self._close_sftp()

    def _close_sftp(self) -> None:
        if self.sftp_client is not None:
            try:
                self.sftp_client.close()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.debug("%s: closing the SFTP session: %s", self.label, exc)
            self.sftp_client = None

    # ------------------------------------------------------------------ teardown
    def _teardown(self) -> None:
        self._close_sftp()
        for c in (self.client, self.jump_client):
            if c is not None:
                c.close()
        self.client = self.jump_client = None

    def close(self) -> None:
        with self.lock:
            self._teardown()


def _abort_connect(client: paramiko.SSHClient, expired: threading.Event) -> None:
    """The connect deadline passed: close the connection being set up, so that paramiko's wait ends."""
    expired.set()
    t = client.get_transport()
    if t is not None:
        t.close()


def connect_error(exc: BaseException, ep: Endpoint, role: str, settings: Settings, label: str) -> TransportError:
    """The transport error for a failed connection attempt to ``ep`` (``role``: "host" or "jump host ...")."""
    where = f"{ep}" if role == "host" else f"{role}"
    kh = ", ".join(settings.known_hosts) or "(none)"
    hostspec = ep.hostname if ep.port == 22 else f"[{ep.hostname}]:{ep.port}"
    detail = f"{type(exc).__name__}: {exc}"
    first_kh = settings.known_hosts[0] if settings.known_hosts else "~/.ssh/known_hosts"
    if isinstance(exc, UnknownHostKey):
        return HostKeyError(
            f"the host key of {where} is not in known_hosts ({kh}); the host offered "
            f"{exc.key.get_name()} {fingerprint(exc.key)}", host=ep.hostname, label=label,
            stderr_tail=detail,
            hint=f"verify that fingerprint with the cluster's documentation or admins, then add the key: "
                 f"`ssh-keyscan -p {ep.port} {ep.hostname} >> {first_kh}` "
                 f"or connect once with `ssh -p {ep.port} {ep.user}@{ep.hostname}` and accept it; "
                 f"or (test machines only) set strict_host_key_checking: false for this cluster")
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"the host key of {where} DIFFERS from known_hosts ({kh}): expected "
            f"{fingerprint(exc.expected_key)}, got {exc.key.get_name()} {fingerprint(exc.key)}",
            host=ep.hostname, label=label, stderr_tail=detail,
            hint=f"if the host was reinstalled (ask its admins), remove the old entry with "
                 f"`ssh-keygen -R '{hostspec}'` and add the new one; otherwise do not connect: "
                 f"someone may be intercepting the connection")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return AuthenticationError(
            f"the private key for {where} is encrypted and no passphrase is available", host=ep.hostname,
            label=label, stderr_tail=detail,
            hint="load the key into ssh-agent (`ssh-add KEYFILE`); passphrases are never stored")
    if isinstance(exc, SecondFactorRequired):
        # the label is "NAME (user@host:port)" when the transport has a name of its own (a cluster's)
        name = label.split(" (", 1)[0] if " (" in label else "CLUSTER"
        return AuthenticationError(
            f"{where} accepted the key and asks for a one-time password (a second factor) as well", host=ep.hostname,
            label=label, stderr_tail=detail,
            hint=f"add `control_path: ~/.ssh/pilot-%C` to the cluster file of {name} and log in once with "
                 f"`pilot connect {name}` (it asks for the code); the manager then uses that login")
    if isinstance(exc, paramiko.AuthenticationException):
        keys = ", ".join(ep.identity_files) or "the default keys in ~/.ssh and the ssh-agent"
        return AuthenticationError(
            f"authentication as {ep.user} failed for {where} (tried {keys})", host=ep.hostname,
            label=label, stderr_tail=detail,
            hint=f"check the user name and that the public key is in ~{ep.user}/.ssh/authorized_keys on "
                 f"the host; test with `ssh -i KEYFILE -p {ep.port} {ep.user}@{ep.hostname} true`")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve the host name of {where}", host=ep.hostname, label=label,
                            stderr_tail=detail, hint="check the host name (and HostName in ssh config) "
                                                     "and DNS")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectError(f"connecting to {where} timed out after {settings.connect_timeout:g} s",
                            host=ep.hostname, label=label, stderr_tail=detail,
                            hint="check that the host is up and reachable (VPN, firewall) and the port")
    if isinstance(exc, (OSError, paramiko.SSHException, EOFError)):
        return ConnectError(f"cannot connect to {where}", host=ep.hostname, label=label,
                            stderr_tail=detail,
                            hint=f"check that sshd runs on {ep.hostname} port {ep.port} and is reachable "
                                 f"(`ssh -p {ep.port} {ep.user}@{ep.hostname} true`)")
    return ConnectError(f"cannot connect to {where}", host=ep.hostname, label=label, stderr_tail=detail,
                        hint="see the error above")


_POOL: dict[tuple[Any, ...], Connection] = {}
_POOL_LOCK = threading.Lock()


def acquire(settings: Settings, label: str) -> Connection:
    """The pooled connection for ``settings`` (created, not yet connected, when there is none); counts a user."""
    with _POOL_LOCK:
        conn = _POOL.get(settings.key())
        if conn is None:
            conn = Connection(settings, label)
            _POOL[settings.key()] = conn
        conn.refs += 1
        return conn


def release(conn: Connection) -> None:
    """One user fewer; the last one closes the connection and takes it out of the pool."""
    with _POOL_LOCK:
        conn.refs -= 1
        if conn.refs > 0:
            return
        if _POOL.get(conn.settings.key()) is conn:
            del _POOL[conn.settings.key()]
    conn.close()


def close_all_connections() -> None:
    """Close every pooled SSH connection (e.g. at process exit). Transports reconnect if used again."""
    with _POOL_LOCK:
        conns = list(_POOL.values())
    for c in conns:
        c.close()

