"""The remote forward (pilot/transport/ssh_forward.py) against a real login node's sshd.

The forward is asked of pilotci3's login node (the cluster whose compute node cannot route to the fileserver);
its far end is a plain TCP echo server on the fileserver's address (a stand-in for the LaunchPad: the forward
moves bytes, TLS or not). Every check is made where a pilot's ``ssh -L`` ends: inside the login node's network
namespace, on ``127.0.0.1:PORT``. What the kernel and sshd answer there (connected, refused, EOF, the bytes) is
the expected value, not anything the code under test says.
"""

from __future__ import annotations

import socket

import pytest

from pilot.transport import HostKeyError, SSHTransport, close_all_connections
from pilot.transport.ssh_config import resolve_settings
from pilot.transport.ssh_forward import ForwardRefused, RemoteForward, keepalive, private_connection
from pilot.transport.ssh_pool import Connection
from tests.helpers import ClusterInfo, OwnSshd, fileserver_address, free_port_in, wait_for
from tests.transport.forward_helpers import PortBlocker, closed_after, login_client

pytestmark = pytest.mark.slurm


def _connection(cluster: ClusterInfo, *, host: str | None = None, port: int | None = None,
                known_hosts: str | None = None) -> Connection:
    settings = resolve_settings(host or cluster.host, cluster.user, port or cluster.port, cluster.key,
                                known_hosts or cluster.known_hosts, True, None, False, "~/.ssh/config", 10, 15,
                                False, name=cluster.name)
    return private_connection(settings, f"{cluster.name} (test route)")


@pytest.fixture
def conn(unrouted_cluster):
    """A connection of its own to pilotci3's login node (the shared sshd: it allows remote forwarding)."""
    c = _connection(unrouted_cluster)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def forwards():
    """Forwards made by a test, closed after it; no forward thread may outlive them."""
    with closed_after(RemoteForward.close) as made:
        yield made


def _forward(forwards: list[RemoteForward], conn: Connection, cluster: ClusterInfo, target: tuple[str, int],
             **kw: object) -> RemoteForward:
    port = free_port_in(cluster.login_netns, "127.0.0.1")
    fwd = RemoteForward(conn.transport(), port, target, label=cluster.name, **kw)  # type: ignore[arg-type]
    forwards.append(fwd)
    assert fwd.start(timeout=15) == port
    return fwd


def test_bytes_go_both_ways_and_a_closed_client_closes_the_far_end(unrouted_cluster, conn, echo, forwards):
    fwd = _forward(forwards, conn, unrouted_cluster, echo.address)
    assert login_client(unrouted_cluster, fwd.port, "echo", size=5) == {"how": "ok", "same": True, "len": 5}
    big = 2 * 1024 * 1024        # more than the channel window and the socket buffers: both directions at once
    assert login_client(unrouted_cluster, fwd.port, "echo", size=big) == {"how": "ok", "same": True, "len": big}
    assert echo.accepted == 2 and fwd.served == 2
    # the clients closed their ends on the login node: the echo server saw each connection end
    wait_for(lambda: echo.eofs == 2, timeout=10, interval=0.1, what="the far ends to close")
    wait_for(lambda: fwd.connections == 0, timeout=10, interval=0.1, what="the forwarded connections to end")


def test_the_far_end_closing_closes_the_near_end(unrouted_cluster, conn, echo, forwards):
    fwd = _forward(forwards, conn, unrouted_cluster, echo.address)
    out = login_client(unrouted_cluster, fwd.port, "bye")
    assert out["how"] == "EOF" and out["seconds"] < 5


def test_connections_beyond_the_bound_are_closed_and_their_slots_come_back(unrouted_cluster, conn, echo, forwards):
    fwd = _forward(forwards, conn, unrouted_cluster, echo.address, max_connections=2)
    assert login_client(unrouted_cluster, fwd.port, "many", n=3)["replies"] == ["ping0", "ping1", "EOF"]
    wait_for(lambda: fwd.connections == 0, timeout=10, interval=0.1, what="the slots to come back")
    assert login_client(unrouted_cluster, fwd.port, "many", n=2)["replies"] == ["ping0", "ping1"]


def test_a_target_that_does_not_answer_closes_the_connection_not_the_forward(unrouted_cluster, conn, forwards):
    with socket.socket() as s:                # a port on the fileserver where nothing listens
        s.bind((fileserver_address(), 0))
        target = s.getsockname()[:2]
    fwd = _forward(forwards, conn, unrouted_cluster, target, connect_timeout=5)
    assert login_client(unrouted_cluster, fwd.port, "probe") == {"how": "EOF"}
    assert login_client(unrouted_cluster, fwd.port, "probe") == {"how": "EOF"}   # still listening


def test_close_cancels_the_forward_on_the_server(unrouted_cluster, conn, echo, forwards):
    fwd = _forward(forwards, conn, unrouted_cluster, echo.address)
    assert login_client(unrouted_cluster, fwd.port, "echo", size=10)["same"]
    fwd.close()
    assert conn.transport().is_active()      # the connection stays; only the listener went
    assert login_client(unrouted_cluster, fwd.port, "probe") == {"error": "ECONNREFUSED"}
    # sshd really let go of the port: the same connection may ask for it again
    again = RemoteForward(conn.transport(), fwd.port, echo.address, label="again")
    forwards.append(again)
    assert again.start(timeout=15) == fwd.port
    assert login_client(unrouted_cluster, fwd.port, "echo", size=10)["same"]


def test_a_port_taken_on_the_login_node_is_refused_with_a_clear_error(unrouted_cluster, conn, echo, forwards):
    port = free_port_in(unrouted_cluster.login_netns, "127.0.0.1")
    blocker = PortBlocker(unrouted_cluster, port)
    try:
        fwd = RemoteForward(conn.transport(), port, echo.address, label=unrouted_cluster.name)
        forwards.append(fwd)
        with pytest.raises(ForwardRefused) as info:
            fwd.start(timeout=15)
    finally:
        blocker.stop()
    text = str(info.value)
    assert f"refused to listen on 127.0.0.1:{port}" in text
    assert f"port {port} may be in use" in text and "AllowTcpForwarding" in text
    assert info.value.retryable
    assert conn.transport().is_active()      # a refused forward leaves the connection usable


def test_an_sshd_that_allows_only_local_forwarding_refuses(unrouted_cluster, echo, forwards, tmp_path):
    own = OwnSshd(unrouted_cluster, tmp_path / "sshd")
    with open(own.config, "a") as f:
        f.write("AllowTcpForwarding local\n")
    own.start()
    c = _connection(unrouted_cluster, host=own.host, port=own.port, known_hosts=str(own.known_hosts))
    try:
        fwd = RemoteForward(c.transport(), free_port_in(own.netns, "127.0.0.1"), echo.address, label="own")
        forwards.append(fwd)
        with pytest.raises(ForwardRefused, match="does not allow remote forwarding"):
            fwd.start(timeout=15)
    finally:
        c.close()
        own.stop()


def test_keepalive_is_answered_while_the_connection_lives(conn):
    t = conn.transport()
    assert keepalive(t, 5)
    t.close()
    assert not keepalive(t, 5)


def test_the_forward_connection_is_not_the_pooled_one(unrouted_cluster, conn, echo, forwards):
    """Closing every pooled connection (what the commands' side does) leaves the forward alone, and the other
    way round: the pool never hands out or recycles the forward's connection."""
    fwd = _forward(forwards, conn, unrouted_cluster, echo.address)
    pooled = SSHTransport(**unrouted_cluster.ssh_kwargs())  # type: ignore[arg-type]
    try:
        assert pooled.run(["true"], timeout=30).returncode == 0
        close_all_connections()
        assert fwd.transport.is_active()
        assert login_client(unrouted_cluster, fwd.port, "echo", size=100)["same"]
        fwd.close()
        conn.close()
        assert pooled.run(["true"], timeout=30).returncode == 0
    finally:
        pooled.close()


def test_an_unknown_host_key_is_refused(unrouted_cluster, tmp_path):
    """The forward's connection checks host keys like the commands' one: never accepted unseen."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    c = _connection(unrouted_cluster, known_hosts=str(empty))
    try:
        with pytest.raises(HostKeyError, match="not in known_hosts"):
            c.transport()
    finally:
        c.close()
