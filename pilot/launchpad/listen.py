"""Where the embedded LaunchPad server listens, whether it speaks TLS there, and where clients reach it.

``serve --host`` takes any address or name, wildcards (``0.0.0.0``, ``::``) included. The rule that keeps
this safe is one line: off loopback, TLS is always on (``--no-tls`` there is refused), because pilots on
compute nodes reach the server across networks nobody here controls; on loopback it is plain unless ``--tls``
asks for it (nobody else can see that traffic, and authentication is on either way).

Clients are told the address they can verify: the ``--host`` as given (it is in the certificate), or
``127.0.0.1`` for a wildcard (the machine's own clients: the manager, ``lpad`` on the fileserver; a cluster's
LaunchPad file names a routable address or name, which the certificate also holds -- ``--tls-name``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from pilot.launchpad.tls import normalize_name

log = logging.getLogger(__name__)

#: Names and addresses every server certificate holds: the machine's own clients use them.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class StartupError(Exception):
    """The server cannot start; ``exit_code`` 2 = refused arguments, 1 = environment problem."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClientAddress:
    """How clients reach a server: what its LaunchPad files hold (``host``, ``port``, ``mongoclient_kwargs``)."""

    host: str
    port: int
    client_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListenPlan:
    """The decision about one ``--host``, made before anything is touched."""

    host: str            # as the user gave it (brackets of an IPv6 literal removed)
    family: int
    address: str         # what is bound
    loopback: bool
    wildcard: bool
    tls: bool
    tls_names: tuple[str, ...] = ()   # the --tls-name values, checked, in SAN form

    @property
    def client_host(self) -> str:
        """The host LaunchPad files name: 127.0.0.1 for a wildcard, the bound address on loopback (as
        before: a name such as ``localhost`` may also resolve to an address nothing listens on), else the
        ``--host`` as given (the certificate holds it)."""
        if self.wildcard:
            return "127.0.0.1"
        return self.address if self.loopback else self.host


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolve(host: str) -> tuple[int, str]:
    """``(family, address)`` to bind for ``host``: a literal as is; for a name, its first loopback address if
    every address is loopback, else its first other one (IPv4 first, as clients mostly try)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), host
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve --host {host!r}: {exc.strerror}; give an address of this machine "
                           "(127.0.0.1 for this machine only, 0.0.0.0 for all its IPv4 addresses)", 2) from exc
    addrs = [(int(family), str(sockaddr[0])) for family, _t, _p, _c, sockaddr in infos
             if family in (socket.AF_INET, socket.AF_INET6)]
    if not addrs:
        raise StartupError(f"--host {host!r} resolves to no IPv4 or IPv6 address", 2)
    addrs.sort(key=lambda fa: (fa[0] != socket.AF_INET))
    outside = [fa for fa in addrs if not _is_loopback(fa[1])]
    return (outside or addrs)[0]


def plan_listen(host: str, tls: bool | None, tls_names: Iterable[str] = ()) -> ListenPlan:
    """Decide where to listen and whether TLS is on; ``tls`` None = on exactly when off loopback.

    Raises
    ------
    StartupError
        exit 2: the name does not resolve, ``--no-tls`` off loopback, a ``--tls-name`` that is not a name or
        address, or one without TLS.
    """
    names = tuple(check_tls_names(tls_names))
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    family, address = _resolve(host)
    try:
        wildcard = ipaddress.ip_address(address.split("%")[0]).is_unspecified
    except ValueError:
        wildcard = False
    loopback = _is_loopback(address)
    if tls is False and not loopback:
        what = "every address of this machine" if wildcard else f"{address}, which is not a loopback address"
        raise StartupError(f"refusing --no-tls with --host {host}: it listens on {what}; off loopback the "
                           "LaunchPad server always uses TLS (clients verify it with DATA/tls/ca.pem). Leave out "
                           "--no-tls, or listen on 127.0.0.1.", 2)
    on = tls if tls is not None else not loopback
    if names and not on:
        raise StartupError(f"--tls-name {names[0]}: TLS is off ({address} is loopback); add --tls to use it there", 2)
    return ListenPlan(host, family, address, loopback, wildcard, on, names)


def _interface_addresses(family: int) -> list[str]:
    """This machine's addresses that another machine may use: no loopback, no link-local (a link-local
    address needs a zone that a certificate cannot name)."""
    fams = (socket.AF_INET, socket.AF_INET6) if family == socket.AF_INET6 else (socket.AF_INET,)
    out = []
    for snics in psutil.net_if_addrs().values():
        for snic in snics:
            if snic.family not in fams:
                continue
            try:
                ip = ipaddress.ip_address(str(snic.address).split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                out.append(str(ip))
    return out


def check_tls_names(names: Iterable[str]) -> list[str]:
    """The ``--tls-name`` values in SAN form; StartupError (exit 2) for one that is not a host name or address."""
    out = []
    for n in names:
        norm = normalize_name(n)
        if norm is None:
            raise StartupError(f"--tls-name {n!r} is neither an IP address nor a host name (letters, digits, '-' "
                               "and '.', optionally starting with '*.')", 2)
        out.append(norm)
    return out


def certificate_names(plan: ListenPlan) -> list[str]:
    """The names the server certificate must hold: :data:`LOCAL_NAMES`, the ``--host`` (and the address it
    resolved to), for a wildcard the machine's host name, FQDN and interface addresses, and the ``--tls-name``
    values."""
    names: list[str | None] = list(LOCAL_NAMES)
    if plan.wildcard:
        names += [normalize_name(socket.gethostname()), normalize_name(socket.getfqdn())]
        names += _interface_addresses(plan.family)
    else:
        names += [normalize_name(plan.host), normalize_name(plan.address)]
    names += list(plan.tls_names)
    return list(dict.fromkeys(n for n in names if n))


def bind(plan: ListenPlan, port: int) -> socket.socket:
    """A listening socket for ``plan`` (``port`` 0: any free one).

    Raises
    ------
    OSError
        As :meth:`socket.socket.bind` (EADDRINUSE, EADDRNOTAVAIL for an address this machine does not have).
    """
    sockaddr = socket.getaddrinfo(plan.address, port, plan.family, socket.SOCK_STREAM, 0,
                                  socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0][4]
    sock = socket.socket(plan.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart on the same port after kill -9
        if plan.family == socket.AF_INET6 and plan.wildcard:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 clients too
        sock.bind(sockaddr)
        # the kernel's own cap (net.core.somaxconn): a burst of pilots starting at once would otherwise overflow a
        # backlog of 128, and each dropped connection request costs its client a 1 s retransmission
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock
