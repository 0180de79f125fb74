"""SSHTransport against real OpenSSH servers on the test clusters' login nodes: host keys, authentication,
connection pooling, ProxyJump (to a compute node that only its login node reaches), ssh config aliases,
reconnects after an sshd restart, and a SLURM smoke test.

The shared sshds of tests/infra/services.sh are never stopped here: the restart tests start their own sshd
(same host key, ``AllowUsers pilot``) on the login node at a free port, and stop it by its PID.
TCP connections are counted with psutil (the kernel's socket table), not by asking the code under test.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from pilot.transport.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    TransportConfigError,
)
from pilot.transport.ssh import SSHTransport
from pilot.transport.ssh_pool import close_all_connections
from tests.helpers import OwnSshd, free_port_in, wait_for

pytestmark = pytest.mark.slurm


def _tcp_conns_to(host: str, port: int) -> list[tuple[str, int]]:
    """Local addresses of this process's established TCP connections to host:port."""
    out = []
    for c in psutil.Process().net_connections(kind="tcp"):
        if c.raddr and (c.raddr.ip, c.raddr.port) == (host, port) and c.status == psutil.CONN_ESTABLISHED:
            out.append((c.laddr.ip, c.laddr.port))
    return out


def _openssh_fingerprint(pub: Path) -> str:
    """The SHA256 fingerprint as OpenSSH's ssh-keygen prints it."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture(autouse=True)
def _fresh_pool():
    """Each test starts and ends without pooled connections (the pool is module-level)."""
    close_all_connections()
    yield
    close_all_connections()


# --------------------------------------------------------------------------- our own sshd
@pytest.fixture
def own_sshd(tmp_path, slurm_cluster):
    sshd = OwnSshd(slurm_cluster, tmp_path).start()
    try:
        yield sshd
    finally:
        sshd.stop()


# --------------------------------------------------------------------------- host keys
def test_unknown_host_key_is_rejected(slurm_cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                     identity_file=slurm_cluster.key, known_hosts=str(empty), name="pilotci")
    with pytest.raises(HostKeyError) as ei:
        t.run(["true"])
    e = ei.value
    assert e.retryable is False
    msg = str(e)
    assert _openssh_fingerprint(Path(f"{slurm_cluster.host_key}.pub")) in msg  # what `ssh-keygen -l` shows
    assert f"ssh-keyscan -p {slurm_cluster.port} {slurm_cluster.host}" in msg
    assert "strict_host_key_checking: false" in msg
    assert empty.read_text() == ""
    t.close()


def test_opt_out_accepts_unknown_key_with_warning_and_writes_nothing(slurm_cluster, tmp_path, caplog):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    caplog.set_level(logging.WARNING, logger="pilot.transport")
    with SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                      identity_file=slurm_cluster.key, known_hosts=str(empty), strict_host_key_checking=False,
                      name="pilotci") as t:
        assert t.run(["whoami"]).stdout == "pilot\n"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pilot.transport"]
    assert warnings, caplog.text
    assert slurm_cluster.host in warnings[0].getMessage() and "UNVERIFIED" in warnings[0].getMessage()
    assert _openssh_fingerprint(Path(f"{slurm_cluster.host_key}.pub")) in warnings[0].getMessage()
    assert empty.read_text() == ""  # nothing written


def test_changed_host_key_is_rejected_even_with_opt_out(slurm_cluster, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    key_type, key_b64 = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{slurm_cluster.host} {key_type} {key_b64}\n")
    for strict in (True, False):
        t = SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                         identity_file=slurm_cluster.key, known_hosts=str(kh), strict_host_key_checking=strict)
        with pytest.raises(HostKeyError) as ei:
            t.run(["true"])
        assert "DIFFERS" in str(ei.value) and "ssh-keygen -R" in str(ei.value)
        assert _openssh_fingerprint(tmp_path / "other.pub") in str(ei.value)
        t.close()


# --------------------------------------------------------------------------- authentication / connect
def test_wrong_key_is_authentication_error(slurm_cluster, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "wrong")], check=True)
    t = SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                     identity_file=str(tmp_path / "wrong"), known_hosts=slurm_cluster.known_hosts,
                     allow_agent=False)
    with pytest.raises(AuthenticationError) as ei:
        t.run(["true"])
    assert ei.value.retryable is False
    assert str(tmp_path / "wrong") in str(ei.value) and "authorized_keys" in str(ei.value)
    assert "PRIVATE KEY" not in str(ei.value)  # never key contents
    t.close()


def test_missing_identity_file(slurm_cluster, tmp_path):
    t = SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                     identity_file=str(tmp_path / "nokey"), known_hosts=slurm_cluster.known_hosts)
    with pytest.raises(AuthenticationError, match="does not exist"):
        t.run(["true"])
    t.close()


def test_wrong_user_is_authentication_error(slurm_cluster):
    # the login node's sshd_config: AllowUsers pilot
    t = SSHTransport(slurm_cluster.host, user="nobody", port=slurm_cluster.port, identity_file=slurm_cluster.key,
                     known_hosts=slurm_cluster.known_hosts, allow_agent=False)
    with pytest.raises(AuthenticationError):
        t.run(["true"])
    t.close()


def test_connection_refused_is_retryable_connect_error(slurm_cluster):
    port = free_port_in(slurm_cluster.login_netns, slurm_cluster.host)  # nothing listens there
    t = SSHTransport(slurm_cluster.host, user="pilot", port=port, identity_file=slurm_cluster.key,
                     known_hosts=slurm_cluster.known_hosts, connect_timeout=5)
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as ei:
        t.run(["true"])
    assert time.monotonic() - t0 < 5
    assert ei.value.retryable is True
    assert f"{slurm_cluster.host} port {port}" in str(ei.value)
    t.close()


# --------------------------------------------------------------------------- pooling
def test_one_connection_reused_and_shared(slurm_cluster):
    host, port = slurm_cluster.host, slurm_cluster.port
    before = set(_tcp_conns_to(host, port))  # other tests in this process must not count
    a = SSHTransport(**slurm_cluster.ssh_kwargs(), name="a")
    b = SSHTransport(**slurm_cluster.ssh_kwargs(), name="b")
    for i in range(20):
        assert a.run(["printf", "%s", str(i)]).stdout == str(i)
    mine = set(_tcp_conns_to(host, port)) - before
    assert len(mine) == 1, mine
    for _ in range(5):
        b.run(["true"])
    a.put(b"x", "/tmp/pilot-transport-pool-test")  # SFTP over the same connection
    b.remove("/tmp/pilot-transport-pool-test")
    assert set(_tcp_conns_to(host, port)) - before == mine
    assert a.connects == b.connects == 1
    a.close()
    assert b.run(["true"]).returncode == 0  # still open: b holds it
    assert set(_tcp_conns_to(host, port)) - before == mine
    b.close()
    wait_for(lambda: not (set(_tcp_conns_to(host, port)) - before), timeout=5, interval=0.05,
             what="the pooled connection to close after the last user closed it")


def test_different_key_does_not_share_connection(slurm_cluster, tmp_path):
    """An object with other credentials must not inherit a connection it could not make itself."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "wrong")], check=True)
    good = SSHTransport(**slurm_cluster.ssh_kwargs())
    good.run(["true"])
    bad = SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                       identity_file=str(tmp_path / "wrong"), known_hosts=slurm_cluster.known_hosts,
                       allow_agent=False)
    with pytest.raises(AuthenticationError):
        bad.run(["true"])
    good.close()
    bad.close()


def test_concurrent_runs_share_one_connection(slurm_cluster):
    host, port = slurm_cluster.host, slurm_cluster.port
    before = set(_tcp_conns_to(host, port))
    t = SSHTransport(**slurm_cluster.ssh_kwargs())

    def worker(_: int) -> list[str]:
        return [t.run(["sh", "-c", "sleep 0.2; echo ok"]).stdout for _ in range(3)]

    with ThreadPoolExecutor(16) as pool:  # more threads than channels allowed per connection
        assert list(pool.map(worker, range(16), timeout=60)) == [["ok\n"] * 3] * 16
    assert len(set(_tcp_conns_to(host, port)) - before) == 1
    t.close()


def test_timeout_over_ssh_leaves_connection_usable(slurm_cluster):
    t = SSHTransport(**slurm_cluster.ssh_kwargs())
    for _ in range(3):
        with pytest.raises(Exception) as ei:
            t.run(["sleep", "30"], timeout=0.5)
        assert type(ei.value).__name__ == "CommandTimeout"
    assert t.run(["echo", "alive"]).stdout == "alive\n"
    assert t.connects == 1
    t.close()


# --------------------------------------------------------------------------- ProxyJump / ssh config
def _no_route_from_here(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    return False


def test_proxy_jump(unrouted_cluster):
    """The compute node of the unrouted cluster runs an sshd that only its login node reaches."""
    c = unrouted_cluster
    jump = f"{c.user}@{c.host}:{c.port}"
    assert _no_route_from_here(c.node_sshd, 22)   # the fileserver cannot reach the node directly
    before = set(_tcp_conns_to(c.host, c.port))
    with SSHTransport(c.node_sshd, user=c.user, port=22, identity_file=c.key, known_hosts=c.known_hosts,
                      proxy_jump=jump, name="node") as t:
        res = t.run(["sh", "-c", 'printf "%s\\n" "$SSH_CONNECTION" "$SLURM_CONF"'])
        conn, conf = res.stdout.splitlines()
        # sshd sets SSH_CONNECTION = "client_ip client_port server_ip server_port": the node's sshd saw the
        # login node's inner address as its client, so the connection went through the login node
        assert conn.split()[0] == c.login_inner and conn.split()[2:] == [c.node_sshd, "22"]
        assert conf == c.slurm_conf
        # we hold one connection, to the jump host
        assert len(set(_tcp_conns_to(c.host, c.port)) - before) == 1
        t.put(b"via jump", "/tmp/pilot-transport-jump-test")
        assert Path("/tmp/pilot-transport-jump-test").read_bytes() == b"via jump"
        t.remove("/tmp/pilot-transport-jump-test")


def test_proxy_jump_target_unreachable(unrouted_cluster):
    c = unrouted_cluster
    jump = f"{c.user}@{c.host}:{c.port}"
    port = free_port_in(c.node_netns, c.node)   # nothing listens there on the compute node
    t = SSHTransport(c.node, user="pilot", port=port, identity_file=c.key, known_hosts=c.known_hosts,
                     proxy_jump=jump, connect_timeout=5)
    with pytest.raises(ConnectError) as ei:
        t.run(["true"])
    assert "jump host" in str(ei.value) and ei.value.retryable
    t.close()


def test_proxy_jump_spec_errors():
    with pytest.raises(TransportConfigError, match="several jump hosts"):
        SSHTransport("h", proxy_jump="a@b:22,c@d:22")
    with pytest.raises(TransportConfigError, match="invalid port"):
        SSHTransport("h", proxy_jump="a@b:notaport")


def _write_ssh_config(path: Path, c) -> None:
    path.write_text(f"""\
# test ssh config (ssh_config(5) syntax)
Host login-alias
    HostName {c.host}
    Port {c.port}
    User {c.user}
    IdentityFile {c.key}
    UserKnownHostsFile {c.known_hosts}

Host node-via-jump
    HostName {c.node_sshd}
    User {c.user}
    IdentityFile {c.key}
    UserKnownHostsFile {c.known_hosts}
    ProxyJump login-alias
""")


def test_ssh_config_alias(unrouted_cluster, tmp_path):
    c = unrouted_cluster
    cfg = tmp_path / "config"
    _write_ssh_config(cfg, c)
    with SSHTransport("login-alias", use_ssh_config=True, ssh_config_path=str(cfg)) as t:
        assert (t.hostname, t.port, t.user) == (c.host, c.port, c.user)
        res = t.run(["sh", "-c", 'whoami; printf "%s\\n" "$SSH_CONNECTION"'])
        who, conn = res.stdout.splitlines()
        assert who == "pilot" and conn.split()[2] == c.host
    with SSHTransport("node-via-jump", use_ssh_config=True, ssh_config_path=str(cfg)) as t:
        res = t.run(["sh", "-c", 'printf "%s\\n" "$SSH_CONNECTION"'])
        assert res.stdout.split()[0] == c.login_inner and res.stdout.split()[2] == c.node_sshd
        assert f"via pilot@{c.host}:22" in t.label


def test_ssh_config_missing_file_names_it(tmp_path):
    with pytest.raises(TransportConfigError) as ei:
        SSHTransport("x", use_ssh_config=True, ssh_config_path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(ei.value) and "use_ssh_config" in str(ei.value)


# --------------------------------------------------------------------------- reconnects (own sshd)
def test_reconnect_after_sshd_restart(own_sshd):
    t = own_sshd.transport(name="own")
    assert t.run(["echo", "one"]).stdout == "one\n"
    port_before = _tcp_conns_to(own_sshd.host, own_sshd.port)
    assert len(port_before) == 1 and t.connects == 1

    # sshd down: the connection is gone and the one reconnect attempt is refused -> a clear, retryable error
    own_sshd.stop()
    wait_for(lambda: not _tcp_conns_to(own_sshd.host, own_sshd.port), timeout=5, interval=0.05,
             what="the server side to close the connection")
    with pytest.raises(ConnectError) as ei:
        t.run(["echo", "two"])
    assert ei.value.retryable and f"{own_sshd.host} port {own_sshd.port}" in str(ei.value)

    # back up: the next call reconnects
    own_sshd.start()
    assert t.run(["echo", "three"]).stdout == "three\n"
    port_after = _tcp_conns_to(own_sshd.host, own_sshd.port)
    assert len(port_after) == 1 and port_after != port_before

    # restarted between two calls: the call transparently reconnects once
    own_sshd.stop()
    own_sshd.start()
    assert t.run(["echo", "four"]).stdout == "four\n"
    assert t.exists("/tmp")  # SFTP reconnects too
    t.put(b"after restart", "/tmp/pilot-transport-restart-test")
    t.remove("/tmp/pilot-transport-restart-test")
    t.close()


def test_connection_lost_during_command(own_sshd):
    t = own_sshd.transport()
    t.run(["true"])
    tag = f"63.{uuid.uuid4().int % 10**8}"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(t.run, ["sleep", tag], timeout=30)
        time.sleep(1.0)
        t0 = time.monotonic()
        own_sshd.stop()
        exc = future.exception(timeout=15)
    assert time.monotonic() - t0 < 10
    # not a ConnectError: that one promises the command never reached the host
    assert isinstance(exc, ConnectionLost) and not isinstance(exc, ConnectError), exc
    assert exc.may_have_run is True and exc.retryable and "may have run" in str(exc)
    own_sshd.start()
    assert t.run(["echo", "back"]).stdout == "back\n"
    t.close()


# --------------------------------------------------------------------------- SLURM smoke
def test_sbatch_squeue_scancel_over_ssh(slurm_cluster, remote_tmp):
    with SSHTransport(**slurm_cluster.ssh_kwargs(), name=slurm_cluster.name) as t:
        name = f"pilot-transport-smoke-{uuid.uuid4().hex[:6]}"
        script = "#!/bin/sh\nsleep 30\n"
        # sbatch reads the script from stdin when no file is given (sbatch(1)); --hold keeps it PENDING
        res = t.run(["sbatch", "--parsable", "--hold", "-J", name, "-o", "/dev/null", "-D", str(remote_tmp)],
                    stdin=script, timeout=30)
        assert res.returncode == 0, res.stderr
        job_id = res.stdout.strip().split(";")[0]
        assert job_id.isdigit()
        try:
            q = t.run(["squeue", "-h", "-j", job_id, "-o", "%i|%j|%T|%r"], timeout=30)
            assert q.returncode == 0, q.stderr
            # squeue(1): %T = state (extended form), %r = reason; a held job is PENDING with reason JobHeldUser
            assert q.stdout.strip() == f"{job_id}|{name}|PENDING|JobHeldUser"
        finally:
            t.run(["scancel", job_id], timeout=30)
        bad = t.run(["sbatch", "--parsable", "-p", "no-such-partition", "--wrap", "true"], timeout=30)
        assert bad.returncode != 0 and "invalid partition" in bad.stderr.lower()


def test_home_relative_paths(slurm_cluster):
    """``~/x`` and relative paths mean the remote user's home, for commands and for files alike."""
    import pwd

    home = Path(pwd.getpwnam(slurm_cluster.user).pw_dir)
    sub = f"pilot-transport-home-{uuid.uuid4().hex[:6]}"
    with SSHTransport(**slurm_cluster.ssh_kwargs()) as t:
        try:
            t.put(b"h", f"~/{sub}/f.txt")
            assert (home / sub / "f.txt").read_bytes() == b"h"
            assert t.exists(f"{sub}/f.txt")
            assert t.run(["pwd"], cwd="~").stdout == f"{home}\n"
            assert t.run(["cat", "f.txt"], cwd=f"~/{sub}").stdout == "h"
            assert t.run(["cat", f"{sub}/f.txt"]).stdout == "h"  # commands start in the home directory
        finally:
            t.run(["rm", "-rf", "--", str(home / sub)])


def _server_side_of(own_sshd: OwnSshd) -> list[psutil.Process]:
    """The per-connection sshd processes of our own sshd (its children), not the listener itself."""
    return psutil.Process(own_sshd.proc.pid).children(recursive=True)


def test_frozen_connection_is_replaced(own_sshd):
    """A connection whose server side stops answering (half-open TCP, frozen host) is given up after the
    command's timeout and replaced by a fresh one."""
    t = own_sshd.transport()
    assert t.run(["echo", "a"]).stdout == "a\n"
    frozen = _server_side_of(own_sshd)
    assert frozen
    for p in frozen:
        p.suspend()  # SIGSTOP: the TCP connection stays open, nothing answers
    try:
        t0 = time.monotonic()
        assert t.run(["echo", "b"], timeout=2).stdout == "b\n"  # via a new connection
        assert time.monotonic() - t0 < 2 + 3
        assert t.connects == 2
    finally:
        for p in frozen:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_connection_freezing_during_command(own_sshd):
    t = own_sshd.transport()
    t.run(["true"])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(t.run, ["sleep", "30"], timeout=2)
        time.sleep(0.5)
        frozen = _server_side_of(own_sshd)
        for p in frozen:
            p.suspend()
        t0 = time.monotonic()
        exc = future.exception(timeout=15)
    try:
        # the deadline passes, the kill request gets no answer within KILL_REQUEST_TIMEOUT (3 s)
        assert time.monotonic() - t0 < 1.5 + 3 + 1.5
        assert type(exc).__name__ == "CommandTimeout", exc
        assert "may still be running" in str(exc)
        assert t.run(["echo", "fresh"]).stdout == "fresh\n"
        assert t.connects == 2
    finally:
        for p in frozen:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_hashed_known_hosts(slurm_cluster, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(Path(slurm_cluster.known_hosts).read_text())
    subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert slurm_cluster.host not in kh.read_text() and kh.read_text().startswith("|1|")
    with SSHTransport(slurm_cluster.host, user=slurm_cluster.user, port=slurm_cluster.port,
                      identity_file=slurm_cluster.key, known_hosts=str(kh)) as t:
        assert t.run(["true"]).returncode == 0
