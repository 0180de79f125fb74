"""From SSHTransport's arguments and ``~/.ssh/config`` to the settings of one SSH connection.

Reads the ``Host`` entries a user already keeps for ``ssh`` (HostName, User, Port, IdentityFile, ProxyJump,
UserKnownHostsFile) for the target and for one jump host, and resolves a ``ProxyJump`` spec. The result,
:class:`Settings`, is also the connection pool's key.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import paramiko

from pilot.transport.errors import TransportConfigError

log = logging.getLogger("pilot.transport")


@dataclass(frozen=True)
class Endpoint:
    """One SSH server as connected to: host name (after ssh-config resolution), port, user and key files."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything that determines an SSH connection; also the connection pool's key."""

    target: Endpoint
    jump: Endpoint | None
    known_hosts: tuple[str, ...]
    strict: bool
    allow_agent: bool
    connect_timeout: float = field(compare=False)
    keepalive: int = field(compare=False)

    def key(self) -> tuple[Any, ...]:
        # (user, host, port, jump) plus what decides authentication and host-key checking: an object
        # configured with another key or a stricter policy never inherits a connection it could not make.
        return (self.target.user, self.target.hostname, self.target.port, self.jump and str(self.jump),
                self.target.identity_files, self.jump and self.jump.identity_files, self.known_hosts,
                self.strict, self.allow_agent)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def parse_jump(spec: str, source: str, host: str) -> tuple[str | None, str, int | None]:
    """Parse ``[ssh://][user@]host[:port]`` (IPv6 as ``[addr]:port``)."""
    s = spec.strip()
    if "," in s:
        raise TransportConfigError(f"ProxyJump {spec!r} ({source}) names several jump hosts", host=host,
                                   hint="only one jump host is supported: give a single user@host:port")
    s = s.removeprefix("ssh://")
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
    port: int | None = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", s)
    if m:
        hostname, p = m.group(1), m.group(2)
    elif s.count(":") == 1:
        hostname, p = s.split(":")
    else:
        hostname, p = s, None
    if p is not None:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise TransportConfigError(f"ProxyJump {spec!r} ({source}) has an invalid port {p!r}", host=host,
                                       hint="write it as user@host:port, e.g. me@gateway.example.org:22")
        port = int(p)
    if not hostname:
        raise TransportConfigError(f"ProxyJump {spec!r} ({source}) has no host name", host=host,
                                   hint="write it as user@host:port, e.g. me@gateway.example.org:22")
    return user or None, hostname, port


def expand(path: str) -> str:
    """``~`` and ``$VARIABLES`` expanded, as ssh does for the paths in its config."""
    return os.path.expandvars(os.path.expanduser(path))



class _SshConfigFile:
    """The ``Host`` entries of one ssh config file (none when ``use_ssh_config`` is off)."""

    def __init__(self, path: str, use: bool, host: str, name: str) -> None:
        self.path = expand(path)
        self.name = name
        self.config: paramiko.SSHConfig | None = None
        if not use:
            return
        if not os.path.isfile(self.path):
            raise TransportConfigError(f"use_ssh_config is on but the ssh config file {self.path} does not "
                                       "exist", host=host, label=name,
                                       hint="create it, set ssh_config_path to the right file, or set "
                                            "use_ssh_config: false")
        try:
            self.config = paramiko.SSHConfig.from_path(self.path)
        except (OSError, paramiko.ConfigParseError, ValueError) as exc:
            raise TransportConfigError(f"cannot read the ssh config file {self.path}", host=host,
                                       label=name, stderr_tail=str(exc),
                                       hint="fix the file (test it with `ssh -G HOST`)") from exc

    def lookup(self, alias: str) -> dict[str, Any]:
        """The settings for ``alias`` (empty without a config file)."""
        return dict(self.config.lookup(alias)) if self.config is not None else {}

    def hostname(self, entry: dict[str, Any], alias: str) -> str:
        """HostName of an entry; the alias itself without a config file."""
        return entry.get("hostname", alias) if self.config is not None else alias

    def identities(self, entry: dict[str, Any]) -> tuple[str, ...]:
        """The entry's IdentityFiles that exist (ssh skips missing ones too)."""
        files = []
        for f in entry.get("identityfile", []):
            p = expand(f)
            if os.path.isfile(p):
                files.append(p)
            else:
                log.debug("%s: IdentityFile %s from %s does not exist; skipped", self.name, p, self.path)
        return tuple(files)


def _known_hosts(known_hosts: str | None, entry: dict[str, Any]) -> tuple[str, ...]:
    if known_hosts:
        return (expand(known_hosts),)
    if entry.get("userknownhostsfile"):
        return tuple(expand(p) for p in entry["userknownhostsfile"].split())
    return (expand("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts")


def _jump_endpoint(cfg: _SshConfigFile, proxy_jump: str | None, entry: dict[str, Any], host: str,
                   t_user: str, ids: tuple[str, ...]) -> Endpoint | None:
    """The jump host from ``proxy_jump`` (wins) or the entry's ProxyJump; its own ssh-config entry applies."""
    jump_spec, jump_source = proxy_jump, "proxy_jump"
    if jump_spec is None and entry.get("proxyjump"):
        jump_spec, jump_source = entry["proxyjump"], f"ProxyJump in {cfg.path}"
    if not jump_spec or jump_spec.strip().lower() == "none":
        return None
    j_user, j_alias, j_port = parse_jump(jump_spec, jump_source, host)
    j_entry = cfg.lookup(j_alias)
    j_hostname = cfg.hostname(j_entry, j_alias)
    j_port_final = j_port or (int(j_entry["port"]) if str(j_entry.get("port", "")).isdigit() else 22)
    return Endpoint(j_hostname, j_port_final, j_user or j_entry.get("user") or t_user,
                    cfg.identities(j_entry) or ids)


def resolve_settings(host: str, user: str | None, port: int, identity_file: str | None, known_hosts: str | None,
                     strict: bool, proxy_jump: str | None, use_ssh_config: bool, ssh_config_path: str,
                     connect_timeout: float, keepalive: int, allow_agent: bool, *, name: str) -> Settings:
    """The connection settings for SSHTransport's arguments (see there); explicit arguments win over ssh config.

    ``name`` is how messages name the transport. Raises :class:`TransportConfigError` for a missing or
    unreadable config file, a ``ProxyCommand``, a bad ``Port`` or ``ProxyJump``.
    """
    cfg = _SshConfigFile(ssh_config_path, use_ssh_config, host, name)
    entry = cfg.lookup(host)
    if "proxycommand" in entry and "proxyjump" not in entry and proxy_jump is None:
        raise TransportConfigError(f"{cfg.path}: Host {host} uses ProxyCommand, which is not supported",
                                   host=host, label=name,
                                   hint="use `ProxyJump user@gateway:port` instead (one jump host)")
    hostname = cfg.hostname(entry, host)
    t_user = user or entry.get("user") or _local_user()
    t_port = port
    if port == 22 and "port" in entry:
        try:
            t_port = int(entry["port"])
        except ValueError as exc:
            raise TransportConfigError(f"{cfg.path}: Host {host}: Port {entry['port']!r} is not a number",
                                       host=host, label=name, hint="fix the Port line") from exc
    ids: tuple[str, ...] = (expand(identity_file),) if identity_file else cfg.identities(entry)
    jump = _jump_endpoint(cfg, proxy_jump, entry, host, t_user, ids)
    return Settings(Endpoint(hostname, int(t_port), t_user, ids), jump, _known_hosts(known_hosts, entry),
                    bool(strict), allow_agent, float(connect_timeout), keepalive)
