"""From a cluster's config to the things that talk to it: its transport and its queue adapter."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.transport.base import Transport
    from queue_adapters.base import QueueAdapter


def transport_for(name: str, cluster: ClusterConfig) -> Transport:
    """The transport for one cluster config: SSH, or local for ``scheduler: local`` / ``host: localhost``
    without a user.

    Parameters
    ----------
    name : str
        The cluster's name (for messages).
    cluster : pilot.config.ClusterConfig
        Its configuration.
    """
    from pilot.transport.local import LocalTransport
    from pilot.transport.ssh import SSHTransport

    if _scheduler(cluster) == "local" or not cluster.host:
        return LocalTransport()
    return SSHTransport(
        host=cluster.host, user=cluster.user, port=cluster.port,
        identity_file=os.path.expanduser(cluster.identity_file) if cluster.identity_file else None,
        known_hosts=os.path.expanduser(cluster.known_hosts) if cluster.known_hosts else None,
        strict_host_key_checking=cluster.strict_host_key_checking, proxy_jump=cluster.proxy_jump,
        use_ssh_config=cluster.use_ssh_config, connect_timeout=float(cluster.connect_timeout), name=name)


def _scheduler(cluster: Any) -> str:
    s = cluster.scheduler
    return str(getattr(s, "value", s))


def adapter_for(cluster: ClusterConfig) -> QueueAdapter:
    """The queue adapter for a cluster config's scheduler (``local``: :mod:`pilot.localsched`)."""
    from queue_adapters import get_adapter

    name = _scheduler(cluster)
    if name == "local":
        from queue_adapters.local import LocalAdapter

        # each local "cluster" keeps its job table in its own work_dir: job ids and pilot names never clash
        return LocalAdapter(python=getattr(cluster, "python", None),
                            state_dir=os.path.join(os.path.expanduser(cluster.work_dir), "localsched"))
    return get_adapter(name)
