"""From a cluster's config to the things that talk to it: its transport and its queue adapter."""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.config import ClusterConfig
    from pilot.transport.base import Transport
    from pilot.transport.ssh_master import MasterSettings
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
    if getattr(cluster, "control_path", None):
        from pilot.transport.ssh_mux import ControlMasterTransport

        return ControlMasterTransport(master_settings(cluster), name=name, sftp_timeout=float(cluster.command_timeout))
    return SSHTransport(
        host=cluster.host, user=cluster.user, port=cluster.port,
        identity_file=os.path.expanduser(cluster.identity_file) if cluster.identity_file else None,
        known_hosts=os.path.expanduser(cluster.known_hosts) if cluster.known_hosts else None,
        strict_host_key_checking=cluster.strict_host_key_checking, proxy_jump=cluster.proxy_jump,
        use_ssh_config=cluster.use_ssh_config, connect_timeout=float(cluster.connect_timeout), name=name,
        sftp_timeout=float(cluster.command_timeout))


def master_settings(cluster: ClusterConfig) -> MasterSettings:
    """How OpenSSH reaches a cluster with one-time-password logins through its ``control_path``
    (:mod:`pilot.transport.ssh_master`): the same host, user, key, known_hosts and jump host as the cluster file."""
    from pilot.transport.ssh_master import MasterSettings

    kh = os.path.expanduser(str(cluster.known_hosts)) if cluster.known_hosts else None
    if cluster.use_ssh_config and kh == os.path.expanduser("~/.ssh/known_hosts"):
        kh = None   # the default: the ssh config's UserKnownHostsFile (or ssh's own default) decides
    return MasterSettings(
        host=str(cluster.host), user=cluster.user, port=cluster.port, control_path=str(cluster.control_path),
        identity_file=str(cluster.identity_file) if cluster.identity_file else None, known_hosts=kh,
        strict=cluster.strict_host_key_checking, proxy_jump=cluster.proxy_jump,
        ssh_config="~/.ssh/config" if cluster.use_ssh_config else None,
        connect_timeout=float(cluster.connect_timeout))


def _scheduler(cluster: Any) -> str:
    s = cluster.scheduler
    return str(getattr(s, "value", s))


def adapter_for(cluster: ClusterConfig) -> QueueAdapter:
    """The queue adapter for a cluster config's scheduler (``local``: :mod:`pilot.localsched`), reading the
    scheduler's zone-less times in the cluster's zone (:func:`cluster_zone`)."""
    from queue_adapters import get_adapter

    name = _scheduler(cluster)
    if name == "local":
        from queue_adapters.local import LocalAdapter

        # each local "cluster" keeps its job table in its own work_dir: job ids and pilot names never clash
        return LocalAdapter(python=getattr(cluster, "python", None),
                            state_dir=os.path.join(os.path.expanduser(cluster.work_dir), "localsched"))
    return get_adapter(name, tz=cluster_zone(cluster))


def cluster_zone(cluster: ClusterConfig) -> dt.tzinfo:
    """The zone the cluster's scheduler prints its times in: its ``timezone``, else this machine's (:func:`local_zone`).

    PBS, LSF and SLURM print local wall-clock times without a zone; read in the wrong zone, every start time, time
    left and queue wait is off by hours (issue 16, item 14).
    """
    name = getattr(cluster, "timezone", None)
    return zoneinfo.ZoneInfo(name) if name else local_zone()


def local_zone() -> dt.tzinfo:
    """This machine's time zone with its rules (DST included): ``TZ`` if it names a zone, else ``/etc/localtime``.

    A fixed offset (``datetime.now().astimezone().tzinfo``) would be wrong for half the year where clocks change, so
    it is only the last resort (a ``TZ`` such as ``CET-1CEST`` that is no zone name, and no ``/etc/localtime``).
    """
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return zoneinfo.ZoneInfo(tz) if not tz.startswith("/") else _zone_file(Path(tz))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    else:
        try:
            return _zone_file(Path("/etc/localtime"))
        except (OSError, ValueError):
            pass
    return dt.datetime.now().astimezone().tzinfo or dt.timezone.utc


def _zone_file(path: Path) -> dt.tzinfo:
    """The zone of a tzfile; named (``Europe/Berlin``) when it is a link into a zoneinfo tree, for readable logs."""
    target = path.resolve()
    parts = target.parts
    if "zoneinfo" in parts:
        key = "/".join(parts[len(parts) - parts[::-1].index("zoneinfo"):])
        try:
            return zoneinfo.ZoneInfo(key)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    with open(target, "rb") as fh:
        return zoneinfo.ZoneInfo.from_file(fh, key=str(path))
