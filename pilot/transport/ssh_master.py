"""The login a person opens for a cluster with one-time passwords: an OpenSSH ControlMaster and its socket.

Clusters that ask for a one-time password (TOTP, Duo) at every SSH login cannot be reached by a daemon with a
key alone. ``pilot connect CLUSTER`` runs OpenSSH once in the person's terminal (:func:`open_master`: OpenSSH
itself asks for the code, through the centre's own keyboard-interactive prompts) and leaves a master connection
behind at the cluster's ``control_path``; every later command goes through that socket
(:class:`~pilot.transport.ssh_mux.ControlMasterTransport`) and needs no code.

The socket is resolved once to a literal path (:func:`socket_path`, ``ssh -G`` with the master's own options:
``%C`` hashes the jump host too in newer OpenSSH) and then named with ``-S`` everywhere, so the master, the
checks and the commands can never look at different sockets, and clients need neither the jump host nor the
user's ssh config (either could make a client log in by itself).
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from pilot.transport.errors import TransportConfigError

#: Seconds for the local ``ssh -G`` / ``-O check`` / ``-O exit`` requests (they only talk to the local master).
CONTROL_TIMEOUT = 10.0

__all__ = ["CONTROL_TIMEOUT", "MasterSettings", "client_argv", "close_master", "master_alive", "master_argv",
           "no_ssh_client", "open_master", "run_ssh", "socket_path"]


@dataclass(frozen=True)
class MasterSettings:
    """How OpenSSH reaches the cluster and where its master lives (the cluster file's fields)."""

    host: str
    user: str | None
    port: int
    control_path: str
    identity_file: str | None = None
    known_hosts: str | None = None     # None: OpenSSH's own default (or the user's ssh config)
    strict: bool = True
    proxy_jump: str | None = None
    ssh_config: str | None = None      # None: no config file (``-F /dev/null``): the cluster file says all
    connect_timeout: float = 15

    def where(self) -> list[str]:
        """Port, user and host: ``-p`` only where it says more than the ssh config would."""
        argv = ["-p", str(self.port)] if self.ssh_config is None or self.port != 22 else []
        return argv + (["-l", self.user] if self.user else []) + ["--", self.host]

    def login_options(self) -> list[str]:
        """What the login itself needs (never a client's): config file, host keys, key, jump host."""
        argv = ["-F", os.path.expanduser(self.ssh_config) if self.ssh_config else "/dev/null",
                "-o", f"StrictHostKeyChecking={'yes' if self.strict else 'accept-new'}",
                "-o", f"ConnectTimeout={int(max(1, self.connect_timeout))}"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(self.known_hosts)}"]
        if self.identity_file:
            argv += ["-i", os.path.expanduser(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.proxy_jump:
            argv += ["-J", self.proxy_jump]
        return argv


def no_ssh_client(host: str, label: str | None = None) -> TransportConfigError:
    """The error for a machine without the OpenSSH client, which clusters with ``control_path`` need."""
    return TransportConfigError("the OpenSSH client (ssh) is not installed here", host=host, label=label,
                                hint="install it (Debian: apt install openssh-client); clusters with "
                                     "control_path are reached through it")


def run_ssh(argv: list[str], timeout: float = CONTROL_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` of an ``ssh`` argv; no ssh client on this machine is a config error that says so."""
    try:
        return subprocess.run(argv, timeout=timeout, **kw)
    except FileNotFoundError as exc:
        raise no_ssh_client(argv[-1]) from exc


@functools.lru_cache(maxsize=64)
def socket_path(s: MasterSettings) -> str:
    """The control path as a literal file name: ssh's tokens (%C, %h, %r, ...) expanded by ``ssh -G`` with the
    master's options, ``~`` expanded."""
    if "%" not in s.control_path:
        return os.path.expanduser(s.control_path)
    r = run_ssh(["ssh", *s.login_options(), "-S", s.control_path, "-G", *s.where()], capture_output=True,
                text=True, stdin=subprocess.DEVNULL)
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "controlpath" and value:
            return value
    raise TransportConfigError(f"cannot expand control_path {s.control_path!r}", host=s.host,
                               stderr_tail=r.stderr, hint="check the %-tokens (ssh_config(5), TOKENS)")


def master_argv(s: MasterSettings, persist: str = "yes") -> list[str]:
    """The ``ssh`` that opens the master in a person's terminal: it asks for the code and then goes to the
    background (``-f -N``), keeping the connection until the centre ends it. ``ControlMaster=auto``: a socket a
    dead master left behind is replaced, not an error."""
    return ["ssh", *s.login_options(), "-S", socket_path(s), "-o", "ControlMaster=auto",
            "-o", f"ControlPersist={persist}", "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4",
            "-o", "RemoteCommand=none", "-f", "-N", *s.where()]


def client_argv(s: MasterSettings) -> list[str]:
    """An ``ssh`` that only ever uses the master: no prompts (``BatchMode``), and the fallback to a connection of
    its own fails locally at once (``ProxyCommand=/bin/false``), so a lapsed login never costs a failed login
    at the centre. No config file: nothing in it can add a jump host or a remote command."""
    return ["ssh", "-F", "/dev/null", "-S", socket_path(s), "-T", "-o", "ControlMaster=no", "-o", "BatchMode=yes",
            "-o", "ProxyCommand=/bin/false", "-p", str(s.port), *(["-l", s.user] if s.user else []),
            "--", s.host]


def _control(s: MasterSettings, op: str) -> subprocess.CompletedProcess[str]:
    return run_ssh(["ssh", "-F", "/dev/null", "-S", socket_path(s), "-O", op, "--", s.host], capture_output=True,
                   text=True, stdin=subprocess.DEVNULL)


def master_alive(s: MasterSettings) -> tuple[bool, str]:
    """Whether a master answers at the socket, and what ssh said (``Master running (pid=N)``)."""
    try:
        r = _control(s, "check")
    except subprocess.TimeoutExpired:
        return False, f"no answer from the master within {CONTROL_TIMEOUT:g} s"
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def open_master(s: MasterSettings) -> tuple[int, bool, str]:
    """Log in interactively in this terminal (stdin and stdout are the person's): (ssh's exit code, whether a
    master answers now, what it says). The socket's folder is made (0700) when missing."""
    path = socket_path(s)
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        rc = subprocess.call(master_argv(s))
    except FileNotFoundError:
        run_ssh(["ssh", "-V"])   # raises the config error that says what to install
        raise
    alive, said = master_alive(s)
    return rc, alive, said


def close_master(s: MasterSettings) -> tuple[bool, str]:
    """``ssh -O exit``: (whether it worked, what ssh said)."""
    r = _control(s, "exit")
    return r.returncode == 0, (r.stderr or r.stdout).strip()
