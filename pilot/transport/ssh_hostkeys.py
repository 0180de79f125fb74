"""Host-key checking for SSH connections: the policies for a host that known_hosts does not list.

Strict (the default): reject, with an exception that carries the offered key so the message can show its
fingerprint as ``ssh-keygen -l`` does. Not strict: accept for this connection only, with a WARNING;
nothing is ever written to a known_hosts file. A *changed* key is always rejected (by paramiko).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import NoReturn

import paramiko

log = logging.getLogger("pilot.transport")


class UnknownHostKey(paramiko.SSHException):
    """known_hosts has no entry for the host; ``key`` is what it offered."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"no known_hosts entry for {hostname}")
        self.hostname = hostname
        self.key = key


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as OpenSSH shows it (``ssh-keygen -l``), so a person can compare it with the cluster's docs."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class RejectUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an exception that carries the offered key."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise UnknownHostKey(hostname, key)


class WarnAutoAdd(paramiko.AutoAddPolicy):
    """paramiko's AutoAddPolicy (in memory only: no host-key file is ever written), with a WARNING."""

    def __init__(self, label: str) -> None:
        self.label = label

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning("%s: accepting the UNVERIFIED %s host key %s of %s because strict_host_key_checking is "
                    "off for this host (nothing is written to known_hosts)", self.label, key.get_name(),
                    fingerprint(key), hostname)
        super().missing_host_key(client, hostname, key)

