"""Every remote operation has a deadline (issue 16, item 9): SFTP calls (put, stat, ...) and the connection set-up.

Real parts: a private sshd on the pilotci login node whose SFTP server hangs (tests/transport/hang_helpers.py),
and a TCP server that accepts and never answers. Expected: the call fails with a clear error within its
deadline (plus a little), instead of hanging, and the next call works.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pilot.transport.errors import CommandTimeout, ConnectError
from pilot.transport.ssh import SSHTransport
from tests.transport.hang_helpers import DelayedRelay, SilentServer, hung_sftp_sshd, slow_auth_sshd

pytestmark = pytest.mark.slurm

LIMIT = 3.0
SLACK = 2.0   # a round trip, the channel close, thread start-up


def test_put_into_a_hung_directory_fails_within_its_deadline_and_the_connection_stays_usable(
        slurm_cluster, tmp_path, remote_tmp):
    hung = remote_tmp / "hung"
    sshd = hung_sftp_sshd(slurm_cluster, tmp_path / "sshd", remote_tmp, str(hung)).start()
    try:
        with sshd.transport(sftp_timeout=LIMIT) as t:
            # a path elsewhere is served by the real sftp-server behind the relay
            t.put(b"ok\n", f"{remote_tmp}/fine/a.txt", mode=0o600)
            assert (remote_tmp / "fine" / "a.txt").read_bytes() == b"ok\n"
            t0 = time.monotonic()
            with pytest.raises(CommandTimeout) as err:
                t.put(b"x" * 100_000, f"{hung}/scripts/p.sh", mode=0o700)
            took = time.monotonic() - t0
            assert LIMIT - 0.5 <= took <= LIMIT + SLACK, took
            msg = str(err.value)
            assert f"no answer from the SFTP server within {LIMIT:g} s" in msg
            assert f"{hung}/scripts/p.sh" in msg
            assert not hung.exists()          # nothing was written under the hung path
            # the SSH connection was kept (commands go on at once); the next SFTP call opens a new session
            t1 = time.monotonic()
            assert t.run(["echo", "alive"], timeout=10).stdout == "alive\n"
            t.put(b"again\n", f"{remote_tmp}/fine/b.txt")
            assert time.monotonic() - t1 < LIMIT
            assert (remote_tmp / "fine" / "b.txt").read_bytes() == b"again\n"
            assert t.connects == 1
    finally:
        sshd.stop()


def test_an_sftp_server_that_never_answers_costs_the_deadline_once(slurm_cluster, tmp_path, remote_tmp):
    """The SFTP session itself never opens (the server does not answer the version exchange): each call fails
    after its deadline, and commands on the same connection are not held up."""
    sshd = hung_sftp_sshd(slurm_cluster, tmp_path / "sshd", remote_tmp, "-").start()
    try:
        with sshd.transport(sftp_timeout=LIMIT) as t:
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(CommandTimeout, match="no answer from the SFTP server"):
                    t.stat(str(remote_tmp))
                assert LIMIT - 0.5 <= time.monotonic() - t0 <= LIMIT + SLACK
            t1 = time.monotonic()
            assert t.run(["echo", "alive"], timeout=10).stdout == "alive\n"
            assert time.monotonic() - t1 < 2
    finally:
        sshd.stop()


def connect_times_out(transport: SSHTransport) -> None:
    """The first command's connection set-up fails as a whole after connect_timeout (LIMIT), and says so."""
    with transport as t:
        t0 = time.monotonic()
        with pytest.raises(ConnectError) as err:
            t.run(["true"], timeout=60)
        took = time.monotonic() - t0
    assert LIMIT - 0.5 <= took <= LIMIT + 1.0, took
    assert f"timed out after {LIMIT:g} s" in str(err.value)


@pytest.mark.parametrize("banner_after", [None, 2.5], ids=["no-banner", "banner-then-silence"])
def test_a_host_that_accepts_and_never_answers_fails_within_connect_timeout(slurm_cluster, banner_after):
    """paramiko gives the TCP connect, the banner, the key exchange and the authentication connect_timeout each:
    a host that sends its banner just in time and then hangs in the key exchange took 2.5 + 3 s. The connection
    set-up as a whole gets connect_timeout."""
    server = SilentServer("127.0.0.1", banner_after=banner_after)
    try:
        connect_times_out(SSHTransport(server.host, port=server.port, user=slurm_cluster.user,
                                       identity_file=slurm_cluster.key, known_hosts=slurm_cluster.known_hosts,
                                       connect_timeout=LIMIT, name="silent"))
        assert server.accepted, "the TCP connection was made: the wait was for the SSH server"
    finally:
        server.close()


def test_a_slow_banner_then_a_hanging_authentication_costs_connect_timeout_in_all(slurm_cluster, tmp_path):
    """Each step within its own limit, together past it: the banner arrives after 2 s (a slow network), then the
    authentication hangs (the sshd's AuthorizedKeysCommand sleeps). paramiko alone gave up after 2 + 3 s; the
    connection set-up as a whole gets connect_timeout."""
    command_dir = Path("/run") / f"pilot-test-{os.getpid()}-{time.monotonic_ns()}"
    sshd = slow_auth_sshd(slurm_cluster, tmp_path / "sshd", command_dir)
    relay = None
    try:
        sshd.start()
        relay = DelayedRelay((sshd.host, sshd.port), delay=2.0)
        known = tmp_path / "known_hosts"
        known.write_text(slurm_cluster.host_key_line(relay.host, relay.port))
        connect_times_out(SSHTransport(relay.host, port=relay.port, user=slurm_cluster.user,
                                       identity_file=slurm_cluster.key, known_hosts=str(known), connect_timeout=LIMIT,
                                       allow_agent=False, name="slowauth"))
        assert "Starting session" not in sshd.log.read_text()
    finally:
        if relay is not None:
            relay.close()
        sshd.stop()
        shutil.rmtree(command_dir, ignore_errors=True)
