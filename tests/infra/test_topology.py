"""The test clusters are separate hosts (tests/infra/services.sh, docs/testing.md): each has a login node and a
compute node in network namespaces of their own, on RFC 5737 addresses, and one SLURM cluster's compute node
has no route to the fileserver.

Every check here asks the kernel or the real daemons, not the code under test: TCP connections made from
inside each namespace (``nsenter --net``), the network namespace a daemon runs in (``/proc/PID/ns/net``), the
address a batch job sees on its node, and what SLURM's accounting recorded.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from tests.helpers import fileserver_address, wait_for

pytestmark = pytest.mark.slurm

# RFC 5737 documentation ranges; the lower half of 203.0.113.0/24 is where this workplace's registries answer
DOC_NETS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.128/25")]

_CONNECT = textwrap.dedent("""
    import errno, socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
        print("connected")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, str(exc)))
""")


def connect_from(netns: str | None, host: str, port: int) -> str:
    """``connected`` or the errno name of a TCP connection to host:port made inside ``netns``."""
    argv = [sys.executable, "-c", _CONNECT, host, str(port)]
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


@pytest.fixture
def fileserver_listener():
    """A TCP listener on the fileserver's test address (root namespace), closed after the test."""
    addr = fileserver_address()
    assert addr, "services.sh wrote no fileserver address"
    with socket.socket() as s:
        s.bind((addr, 0))
        s.listen(16)
        yield addr, s.getsockname()[1]


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_every_address_is_a_documentation_address(clusters):
    addrs = [fileserver_address()] + [a for c in clusters.values() for a in (c.host, c.login_inner, c.node)]
    for a in addrs:
        assert any(ipaddress.ip_address(a) in net for net in DOC_NETS), a
    assert len(set(addrs)) == len(addrs)   # every host its own addresses


def test_unrouted_node_cannot_reach_the_fileserver_its_login_node_can(unrouted_cluster, fileserver_listener):
    c = unrouted_cluster
    addr, port = fileserver_listener
    assert not c.routed
    assert connect_from(c.node_netns, addr, port) == "ENETUNREACH"
    assert connect_from(c.login_netns, addr, port) == "connected"
    # the compute node does reach its own login node (slurmctld listens on its inner address)
    assert connect_from(c.node_netns, c.login_inner, 6817) == "connected"


def test_routed_nodes_reach_the_fileserver_through_the_network(clusters, fileserver_listener):
    addr, port = fileserver_listener
    routed = [c for c in clusters.values() if c.routed]
    assert {c.name for c in routed} == {"pilotci", "pilotci2", "emupbs", "emulsf", "emusge", "emutorque"}
    for c in routed:
        assert connect_from(c.node_netns, addr, port) == "connected", c.name
        # ... and not through a loopback of their own: nothing of the fileserver listens there
        assert connect_from(c.node_netns, "127.0.0.1", port) == "ECONNREFUSED", c.name


def test_sshd_is_reached_only_on_its_namespace_address(clusters):
    ours = netns_inode("/proc/self/ns/net")
    for c in clusters.values():
        pid = int(Path(c.sshd_config).with_name("sshd.pid").read_text())
        # the shared sshd runs in the login node's namespace, not in ours
        assert netns_inode(f"/proc/{pid}/ns/net") == netns_inode(f"/run/netns/{c.login_netns}") != ours
        with socket.create_connection((c.host, 22), timeout=5) as s:
            assert s.recv(64).startswith(b"SSH-2.0-OpenSSH"), c.name
    # nothing in the fileserver's own namespace listens on port 22 of the test network
    fs = fileserver_address()
    assert connect_from(None, fs, 22) == "ECONNREFUSED"
    assert not [x for x in psutil.net_connections("tcp") if x.status == "LISTEN" and x.laddr.port == 22
                and x.laddr.ip in (fs, "0.0.0.0", "::")]


def test_the_session_launchpad_listens_on_the_fileserver_address(mongo_uri, clusters, unrouted_cluster):
    if os.environ.get("MONGODB_URI"):
        pytest.skip("MONGODB_URI names a MongoDB of its own; its address is the user's choice")
    url = urlparse(mongo_uri)
    assert url.hostname == fileserver_address()
    assert connect_from(clusters["pilotci"].node_netns, url.hostname, url.port) == "connected"
    assert connect_from(unrouted_cluster.node_netns, url.hostname, url.port) == "ENETUNREACH"


def _ssh(c, command: str) -> str:
    argv = ["ssh", "-i", c.key, "-o", f"UserKnownHostsFile={c.known_hosts}", "-o", "BatchMode=yes",
            f"{c.user}@{c.host}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.parametrize("name", ["pilotci", "pilotci3"])
def test_slurm_job_runs_on_the_compute_node_and_is_accounted(clusters, remote_tmp, name):
    c = clusters[name]
    out = remote_tmp / f"{name}.out"
    job = _ssh(c, f"sbatch --parsable -o {out} --wrap 'ip -4 -o addr show dev eth0'").strip()
    wait_for(lambda: out.exists() and out.read_text(), 60, 0.2, f"job {job} on {name} to write its output")
    assert f"inet {c.node}/28" in out.read_text()

    def accounted() -> str | None:
        line = _ssh(c, f"sacct -n -X -P -j {job} -o State,NodeList").strip()
        return line if line.startswith("COMPLETED") else None

    assert wait_for(accounted, 60, 0.5, "sacct to record the job") == f"COMPLETED|{name}node"


@pytest.mark.parametrize("name,submit", [("emupbs", "qsub -j oe -o {out} -- /sbin/ip -4 -o addr show dev eth0"),
                                         ("emulsf", "echo '/sbin/ip -4 -o addr show dev eth0' | bsub -o {out}")])
def test_emulated_job_runs_on_the_compute_node(clusters, remote_tmp, name, submit):
    c = clusters[name]
    out = remote_tmp / f"{name}.out"
    _ssh(c, submit.format(out=out))
    wait_for(lambda: out.exists() and f"inet {c.node}/28" in out.read_text(), 60, 0.2,
             f"the {name} job to write its node's address")
