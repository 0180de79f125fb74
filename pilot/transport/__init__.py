"""Run argument lists and move files on a cluster host: over SSH (paramiko) or locally (subprocess).

This package is the only part of fireworks-pilot that imports paramiko, and
:mod:`pilot.transport.ssh_commands` the only place where an argument list becomes a shell command line
(``shlex.join``). Everything else hands it lists such as ``["sbatch", "--parsable", "/home/me/pilot.sh"]`` and
gets a :class:`CompletedCommand` back.

Contract
--------
* A non-zero exit code of the remote command is a *result*, not an exception: schedulers answer with
  non-zero codes and messages on stderr that the queue adapters parse. Only transport failures raise
  (:class:`TransportError` and its subclasses), each with ``retryable`` saying whether trying again can help.
  ``run(..., check=True)`` additionally raises :class:`TransportError` (not retryable) on a non-zero code.
* Every command has a timeout. On timeout the whole remote process group is killed (TERM, then KILL after a
  grace period), the channel is closed, and :class:`CommandTimeout` is raised. See ``docs/transport.md``.
* Files are written atomically (temporary name in the target directory, then rename) with an exact mode.
* Nothing secret is logged: no key material, no passwords, no contents of files that are put, and of the
  environment passed to a command only the variable names.

Modules
-------
``errors`` (the exceptions and their retry flags) · ``base`` (:class:`Transport`, :class:`CompletedCommand`,
:class:`FileStat`) · ``local`` (:class:`LocalTransport`) · ``ssh`` (:class:`SSHTransport`, made of
``ssh_base``, ``ssh_commands`` and ``ssh_files``) · ``ssh_config`` (``~/.ssh/config``, ProxyJump) ·
``ssh_hostkeys`` (unknown host keys) · ``ssh_pool`` (the pooled connection) · ``ssh_forward`` (a remote
port forward on a connection of its own, for ``launchpad_route: ssh``) · ``clusters`` (a cluster's
config -> its transport and queue adapter). This module re-exports the names the rest of the pilot uses.
"""

from __future__ import annotations

from pilot.transport.base import CompletedCommand, FileStat, Transport
from pilot.transport.errors import (
    AuthenticationError,
    CommandTimeout,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    LoginRequired,
    RemotePathError,
    TransportConfigError,
    TransportError,
)
from pilot.transport.local import LocalTransport
from pilot.transport.ssh import SSHTransport
from pilot.transport.ssh_pool import close_all_connections

__all__ = [
    "AuthenticationError",
    "CommandTimeout",
    "CompletedCommand",
    "ConnectError",
    "ConnectionLost",
    "FileStat",
    "HostKeyError",
    "LocalTransport",
    "LoginRequired",
    "RemotePathError",
    "SSHTransport",
    "Transport",
    "TransportConfigError",
    "TransportError",
    "close_all_connections",
]
