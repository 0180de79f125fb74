"""``launchpad_route:`` of a cluster file: how the pilots on the compute nodes reach the LaunchPad.

``direct`` (the default): the pilots connect to the host and port of the cluster's LaunchPad file, which must
be reachable from the compute nodes. ``ssh``: many clusters' compute nodes cannot route to the user's
fileserver, but they can reach their login node. There the manager keeps its own SSH connection open and
asks the login node's sshd for a remote forward on the login node's loopback (``port``) back to the LaunchPad;
each pilot reaches that port with an ``ssh -L`` to ``login_address:login_port`` (the login node as the compute
nodes see it, often not the address the manager uses). Bytes only: TLS stays end to end.

Written either as a plain word (``launchpad_route: ssh``) or as a mapping::

    launchpad_route:
      via: ssh
      port: 37117
      login_address: 203.0.113.161
      login_port: 22

What the pilots and the manager use is :class:`pilot.ssh_route.SshRoute` (every default filled in; the
worker parses the same type back from its ``--route-*`` options), from
:meth:`LaunchPadRoute.resolve` / :attr:`pilot.config.ClusterConfig.ssh_route`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pilot.config.errors import describe, field_error
from pilot.ssh_route import SshRoute

__all__ = ["DEFAULT_PORT_RANGE", "LaunchPadRoute", "SshRoute", "default_route_port"]

#: The ways a pilot reaches the LaunchPad.
ROUTES = ("direct", "ssh")

#: Where the default ``port`` of an ssh route falls: below Linux's ephemeral range (32768-60999), so an
#: outgoing connection on the login node never holds it, and above the well-known services.
DEFAULT_PORT_RANGE = (20000, 29999)

#: A login address as it lands in ``ssh ... USER@ADDRESS`` on a compute node: a name or an IPv4/IPv6 address,
#: never starting with '-' (it would read as an option).
LOGIN_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")


def default_route_port(user: str, login_host: str) -> int:
    """The forward's port when the file gives none: the same for the same user and login node on every run
    (the key that ``pilot bootstrap`` installs is bound to it), and different for different users of one login
    node with high probability (their forwards share its loopback)."""
    lo, hi = DEFAULT_PORT_RANGE
    digest = hashlib.sha256(f"{user}@{login_host}".encode()).digest()
    return lo + int.from_bytes(digest[:4], "big") % (hi - lo + 1)


class LaunchPadRoute(BaseModel):
    """``launchpad_route:`` of a cluster file: ``direct`` or ``ssh`` (a word, or a mapping with ``via``)."""

    model_config = ConfigDict(extra="forbid")

    via: Literal["direct", "ssh"] = Field("direct", description="direct: pilots connect to the host and port "
                                          "of the cluster's LaunchPad file. ssh: through a remote forward that "
                                          "the manager keeps on the login node (for compute nodes that cannot "
                                          "route to the LaunchPad).", examples=["ssh"])
    port: int | None = Field(None, ge=1024, le=65535, description="ssh only: the login node's loopback port of "
                             "the manager's forward, free on the login node (1024-65535); null: a port derived "
                             "from your user name and the login host (20000-29999), the same on every run.",
                             examples=[37117])
    login_address: str | None = Field(None, description="ssh only: the login node's name or address as the "
                                      "compute nodes reach it; null: the cluster's host (write it when host is "
                                      "an ssh-config alias or an address the compute nodes cannot reach).",
                                      examples=["203.0.113.161"])
    login_port: int | None = Field(None, ge=1, le=65535, description="ssh only: the login node's sshd port as "
                                   "the compute nodes reach it; null: the cluster's port.", examples=[22])

    @property
    def is_ssh(self) -> bool:
        """True for ``via: ssh``."""
        return self.via == "ssh"

    def resolve(self, host: str | None, ssh_port: int, user: str) -> SshRoute | None:
        """The route with every default filled in (``None`` for ``direct``): ``login_address`` defaults to the
        cluster's ``host``, ``login_port`` to its ``port``, ``port`` to :func:`default_route_port`."""
        if not self.is_ssh:
            return None
        login = self.login_address or host or "localhost"
        return SshRoute(port=self.port if self.port is not None else default_route_port(user, host or login),
                        login_address=login, login_port=self.login_port or ssh_port)

    # ------------------------------------------------------------------ validators
    @model_validator(mode="before")
    @classmethod
    def _word(cls, v: Any) -> Any:
        """``launchpad_route: ssh`` is ``{via: ssh}``: the short form most files need."""
        if v is None:
            return {}
        if isinstance(v, str):
            word = v.strip().lower()
            if word in ROUTES:
                return {"via": word}
            raise field_error(f"{v!r} is not a route{_did_you_mean(word)}: write launchpad_route: direct (pilots "
                              "connect to the LaunchPad themselves) or launchpad_route: ssh (through the login "
                              "node), or a mapping such as {via: ssh, port: 37117}")
        if not isinstance(v, (dict, cls)):
            raise field_error(f"expected direct, ssh or a mapping, got {describe(v)}: write launchpad_route: direct, "
                              "launchpad_route: ssh, or a mapping such as {via: ssh, port: 37117}")
        return v

    @field_validator("via", mode="before")
    @classmethod
    def _via(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ROUTES:
            return v.strip().lower()
        word = v.strip().lower() if isinstance(v, str) else ""
        raise field_error(f"{describe(v)} is not a route{_did_you_mean(word)}; write via: direct or via: ssh")

    @field_validator("login_address")
    @classmethod
    def _login_address(cls, v: str | None) -> str | None:
        if v is not None and not LOGIN_ADDRESS_RE.match(v):
            raise field_error(f"{v!r} is not a host name or address: write the login node as the compute nodes "
                              "reach it, without user, port or spaces, e.g. login_address: 203.0.113.161")
        return v

    @field_validator("port", "login_address", "login_port")
    @classmethod
    def _ssh_only(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and info.data.get("via") == "direct":
            raise field_error(f"{info.field_name} is only used with via: ssh: remove it, or write via: ssh")
        return v


def _did_you_mean(word: str) -> str:
    close = difflib.get_close_matches(word, ROUTES, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
