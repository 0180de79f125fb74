"""The one description of an ssh route to the LaunchPad (``launchpad_route: ssh``), for both ends of it.

The config (:class:`pilot.config.LaunchPadRoute`) validates a cluster file's route and resolves it to an
:class:`SshRoute`; the manager keeps its forward on the login node's loopback ``port`` and writes the route
into the job script as ``pilot worker --route-ssh USER@LOGIN_ADDRESS:LOGIN_PORT --route-port PORT``; the
worker (:mod:`pilot.worker.tunnel`) parses those options back into an :class:`SshRoute` and runs
``ssh -L`` with it. A standard-library leaf: the worker may import neither the config nor anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_KEY", "DEFAULT_KNOWN_HOSTS", "SshRoute"]

#: Where ``pilot bootstrap`` writes the route's private key and the login node's host key on the cluster.
DEFAULT_KEY = Path("~/.pilot/route_key")
DEFAULT_KNOWN_HOSTS = Path("~/.pilot/route_known_hosts")


@dataclass(frozen=True)
class SshRoute:
    """An ssh route with every default filled in: what the manager's forward and the pilots' ``ssh -L`` use.

    Attributes
    ----------
    port : int
        The login node's loopback port of the manager's remote forward.
    login_address : str
        The login node as the compute nodes reach it.
    login_port : int
        Its sshd port as the compute nodes reach it.
    user : str or None
        The user the pilot's ssh logs in as (None: ssh's default).
    key, known_hosts : Path
        The route's private key and the known_hosts file with the login node's host key, as
        ``pilot bootstrap`` wrote them on the cluster (the pilot's side only).
    ssh : str
        The ssh program the pilot runs.
    """

    port: int
    login_address: str
    login_port: int
    user: str | None = None
    key: Path = DEFAULT_KEY
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    ssh: str = "ssh"

    @property
    def target(self) -> str:
        """``USER@ADDRESS:PORT`` (IPv6 addresses in brackets): ``--route-ssh`` and messages."""
        host = f"[{self.login_address}]" if ":" in self.login_address else self.login_address
        return (f"{self.user}@" if self.user else "") + f"{host}:{self.login_port}"
