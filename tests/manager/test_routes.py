"""The manager keeps ``launchpad_route: ssh`` forwards up (pilot/manager/routes.py) on real login nodes.

Drops are made the ways they happen: the route's connection closed, the login node's sshd stopped and started
again, the sshd process serving the route killed, the login node gone silent (SIGSTOP) while its stale session
still holds the port. Each time the keeper must re-establish the forward within a bounded time, and log the
drop and the recovery once. Private sshds (tests.helpers.OwnSshd) take every restart and kill; the shared
sshds are never touched. The far end is a plain TCP echo server (the forward only moves bytes), except in the
Manager test, which reaches the session's real LaunchPad through the forward.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import psutil
import pytest
from fireworks import LaunchPad

from pilot.config import load_config
from pilot.manager.cycle import Manager
from pilot.manager.routes import (
    RouteKeeper,
    RouteKeepers,
    RouteTargetError,
    backoff_delays,
    launchpad_target,
)
from tests.helpers import OwnSshd, free_port_in, wait_for
from tests.manager.helpers import ssh_cluster, write_config
from tests.transport.forward_helpers import (
    PortBlocker,
    closed_after,
    listener_pid,
    login_client,
    no_forward_threads,
    route_cluster,
)

slurm = pytest.mark.slurm
FAST = {"check_interval": 1.0, "probe_timeout": 2.0, "backoff_initial": 0.2, "backoff_max": 1.0}


# ----------------------------------------------------------------------------------------- no services needed
def _lp(**kw: object) -> LaunchPad:
    return LaunchPad(name="x", logdir=None, strm_lvl="ERROR", **kw)  # no connection is made until it is used


def test_the_target_is_the_launchpad_as_the_manager_reaches_it():
    assert launchpad_target(_lp(host="198.51.100.1", port=27018)) == ("198.51.100.1", 27018)
    # a wildcard is where a server listens, not an address: the manager reaches it on loopback
    assert launchpad_target(_lp(host="0.0.0.0", port=27019)) == ("127.0.0.1", 27019)
    assert launchpad_target(SimpleNamespace(host="::", port=27019, uri_mode=False)) == ("127.0.0.1", 27019)
    uri = "mongodb://admin:s3cr%2Ft@198.51.100.1:31337/fireworks?authSource=admin&tls=true"
    target = launchpad_target(_lp(host=uri, uri_mode=True))
    assert target == ("198.51.100.1", 31337) and "s3cr" not in repr(target)
    assert launchpad_target(_lp(host="mongodb://[::1]/", uri_mode=True)) == ("::1", 27017)


def test_targets_a_forward_cannot_lead_to_are_refused_with_the_fix():
    with pytest.raises(RouteTargetError, match="mongodb://HOST:PORT"):
        launchpad_target(SimpleNamespace(host="mongodb+srv://u:p@cluster0.example.org/", uri_mode=True))
    with pytest.raises(RouteTargetError, match="Unix socket"):
        launchpad_target(SimpleNamespace(host="mongodb://%2Ftmp%2Fmongodb.sock", uri_mode=True))


def test_backoff_doubles_from_one_second_up_to_thirty():
    delays = backoff_delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def _cluster_file(tmp_path, route: object, **over: object):
    (tmp_path / "known_hosts").write_text("")
    c = {"scheduler": "slurm", "host": "127.0.0.1", "user": "nobody", "known_hosts": str(tmp_path / "known_hosts"),
         "categories": ["md"], "launchpad_file": "~/lp.yaml", "work_dir": "/tmp/x", "pilot": {"walltime": "5"},
         "launchpad_route": route, "connect_timeout": 3, **over}
    (tmp_path / "lp.yaml").write_text("host: 127.0.0.1\n")
    cdir = write_config(tmp_path / "cfg", tmp_path / "lp.yaml", {"c": c})
    return load_config(cdir)


def test_only_ssh_routed_clusters_get_a_keeper(tmp_path):
    cfg = _cluster_file(tmp_path, "direct")
    keepers = RouteKeepers(cfg.clusters, _lp(host="127.0.0.1", port=1))
    assert len(keepers) == 0
    keepers.start()
    assert keepers.keepers == {} and keepers.states() == {}
    with pytest.raises(ValueError, match="launchpad_route: direct"):
        RouteKeeper("c", cfg.clusters["c"], ("127.0.0.1", 1))


def test_a_login_node_that_cannot_be_reached_is_retried_and_logged_once(tmp_path, caplog):
    """Nothing listens at the login address: the route stays down with the reason, attempts go on with a
    growing delay, and the same failure is logged once, not at every attempt."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    cfg = _cluster_file(tmp_path, {"via": "ssh", "port": 30001}, port=dead_port)
    caplog.set_level(logging.DEBUG, logger="pilot.manager")
    keeper = RouteKeeper("c", cfg.clusters["c"], ("127.0.0.1", 1), **FAST)
    keeper.start()
    try:
        wait_for(lambda: _attempts(caplog) >= 4, timeout=15, interval=0.1, what="several attempts")
        st = keeper.state()
        assert not st.up and st.port == 30001 and st.connects == 0 and st.since is not None
        assert st.last_error and "cannot connect" in st.last_error and f"127.0.0.1 port {dead_port}" in st.last_error
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "not established" in r.message]
        assert len(warned) == 1
    finally:
        keeper.stop()
    no_forward_threads()


def _attempts(caplog) -> int:
    return sum("LaunchPad route not established" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------------------- real login nodes
@pytest.fixture
def keepers():
    """Keepers made by a test, stopped after it; no forward or keeper thread may outlive them."""
    with closed_after(RouteKeeper.stop) as made:
        yield made


def _keeper(keepers: list[RouteKeeper], cluster_cfg, target, name: str = "pilotci3", **kw: object) -> RouteKeeper:
    k = RouteKeeper(name, cluster_cfg, target, **{**FAST, **kw})  # type: ignore[arg-type]
    keepers.append(k)
    k.start()
    return k


def _own_sshd(cluster, tmp_path) -> OwnSshd:
    return OwnSshd(cluster, tmp_path / "sshd").start()


def _lines(caplog, words: str) -> list[str]:
    return [r.message for r in caplog.records if words in r.message]


@slurm
def test_the_route_comes_up_carries_bytes_and_stops(unrouted_cluster, echo, keepers):
    port = free_port_in(unrouted_cluster.login_netns, "127.0.0.1")
    k = _keeper(keepers, route_cluster(unrouted_cluster, port), echo.address)
    assert k.wait_up(30), k.state()
    st = k.state()
    assert st.up and st.port == port and st.connects == 1 and st.last_error is None
    assert st.login == f"{unrouted_cluster.user}@{unrouted_cluster.host}:22"
    assert st.target == f"{echo.address[0]}:{echo.address[1]}" and abs(time.time() - (st.since or 0)) < 60
    assert login_client(unrouted_cluster, port, "echo", size=300_000)["same"]
    k.stop()
    assert not k.state().up
    assert login_client(unrouted_cluster, port, "probe") == {"error": "ECONNREFUSED"}


@slurm
def test_a_closed_connection_is_re_established_and_logged_once(unrouted_cluster, echo, keepers, caplog):
    caplog.set_level(logging.INFO, logger="pilot.manager")
    port = free_port_in(unrouted_cluster.login_netns, "127.0.0.1")
    k = _keeper(keepers, route_cluster(unrouted_cluster, port), echo.address)
    assert k.wait_up(30)
    fwd = k.forward
    assert fwd is not None
    fwd.transport.close()                     # the network took the connection
    wait_for(lambda: k.state().connects == 2 and k.state().up, timeout=20, interval=0.1, what="the route back")
    assert login_client(unrouted_cluster, port, "echo", size=1000)["same"]
    assert len(_lines(caplog, "LaunchPad route dropped")) == 1
    assert len(_lines(caplog, "LaunchPad route re-established")) == 1


@slurm
def test_a_restarted_login_sshd_gets_the_route_back(unrouted_cluster, echo, keepers, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pilot.manager")
    own = _own_sshd(unrouted_cluster, tmp_path)
    try:
        port = free_port_in(own.netns, "127.0.0.1")
        cfg = route_cluster(unrouted_cluster, port, host=own.host, ssh_port=own.port, known_hosts=own.known_hosts)
        k = _keeper(keepers, cfg, echo.address)
        assert k.wait_up(30)
        own.stop()                            # sshd and the session serving the route are gone
        wait_for(lambda: not k.state().up, timeout=10, interval=0.1, what="the drop to be seen")
        wait_for(lambda: "cannot connect" in (k.state().last_error or ""), timeout=10, interval=0.1,
                 what="a failed attempt")
        assert login_client(unrouted_cluster, port, "probe") == {"error": "ECONNREFUSED"}
        own.start()                           # same port, same host key
        assert k.wait_up(15), k.state()
        assert login_client(unrouted_cluster, port, "echo", size=1000)["same"]
        assert k.state().connects == 2 and k.state().last_error is None
        assert len(_lines(caplog, "LaunchPad route dropped")) == 1
        assert len(_lines(caplog, "LaunchPad route not established")) == 1   # however many attempts failed
        assert len(_lines(caplog, "LaunchPad route re-established")) == 1
    finally:
        own.stop()


def _own_child(own: OwnSshd, pid: int | None) -> int:
    """``pid``, checked to be a process our private sshd forked (never anybody else's)."""
    assert pid is not None and own.proc is not None
    family = {p.pid for p in psutil.Process(own.proc.pid).children(recursive=True)}
    assert pid in family, f"pid {pid} is not a child of our own sshd {own.proc.pid}"
    return pid


@slurm
def test_killing_the_sshd_process_that_serves_the_route(unrouted_cluster, echo, keepers, tmp_path):
    own = _own_sshd(unrouted_cluster, tmp_path)
    try:
        port = free_port_in(own.netns, "127.0.0.1")
        cfg = route_cluster(unrouted_cluster, port, host=own.host, ssh_port=own.port, known_hosts=own.known_hosts)
        k = _keeper(keepers, cfg, echo.address)
        assert k.wait_up(30)
        serving = _own_child(own, listener_pid(unrouted_cluster, port))   # who listens on the forward's port
        os.kill(serving, signal.SIGKILL)
        wait_for(lambda: k.state().connects == 2 and k.state().up, timeout=20, interval=0.1, what="the route back")
        assert listener_pid(unrouted_cluster, port) not in (None, serving)
        assert login_client(unrouted_cluster, port, "echo", size=1000)["same"]
    finally:
        own.stop()


@slurm
def test_a_silent_login_node_is_noticed_and_its_stale_session_outwaited(unrouted_cluster, echo, keepers, tmp_path):
    """A network blip: the session serving the route stops answering (SIGSTOP) but still holds the port. The
    keepalive finds it silent, the new forward is refused while the old one holds the port (said so in the
    state), and the route is back once the stale session goes."""
    own = _own_sshd(unrouted_cluster, tmp_path)
    frozen = None
    try:
        port = free_port_in(own.netns, "127.0.0.1")
        cfg = route_cluster(unrouted_cluster, port, host=own.host, ssh_port=own.port, known_hosts=own.known_hosts)
        k = _keeper(keepers, cfg, echo.address)
        assert k.wait_up(30)
        frozen = _own_child(own, listener_pid(unrouted_cluster, port))
        os.kill(frozen, signal.SIGSTOP)
        wait_for(lambda: "launchpad_route.port" in (k.state().last_error or ""), timeout=20, interval=0.1,
                 what="the keepalive to fail and the port to be found taken")
        assert not k.state().up
        os.kill(frozen, signal.SIGCONT)       # it finds its client gone, ends, and lets go of the port
        frozen = None
        wait_for(lambda: k.state().up, timeout=20, interval=0.1, what="the route back")
        assert login_client(unrouted_cluster, port, "echo", size=1000)["same"]
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        own.stop()


@slurm
def test_a_port_taken_on_the_login_node_names_the_file_the_field_and_the_fix(unrouted_cluster, echo, keepers,
                                                                             tmp_path):
    port = free_port_in(unrouted_cluster.login_netns, "127.0.0.1")
    cfg = route_cluster(unrouted_cluster, port)
    cfg._source = tmp_path / "clusters" / "pilotci3.yaml"
    blocker = PortBlocker(unrouted_cluster, port)
    try:
        k = _keeper(keepers, cfg, echo.address)
        wait_for(lambda: k.state().last_error, timeout=20, interval=0.1, what="the refusal")
        err = k.state().last_error or ""
        assert not k.state().up
        assert err.startswith(f"{tmp_path}/clusters/pilotci3.yaml: launchpad_route.port: ")
        assert f"refused to listen on 127.0.0.1:{port}" in err and f"port {port} is taken there" in err
        assert "write another free port" in err and "pilot bootstrap pilotci3" in err
        assert "AllowTcpForwarding" in err
        time.sleep(3)                         # several more refused attempts: none may leave its connection open
        assert len(_ssh_connections_to(unrouted_cluster.host)) <= 1
    finally:
        blocker.stop()
    assert k.wait_up(15), k.state()           # the port came free: the keeper, still trying, takes it
    assert login_client(unrouted_cluster, port, "echo", size=100)["same"]


def _ssh_connections_to(host: str) -> list[object]:
    """This process's open TCP connections to ``host``'s sshd."""
    return [c for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.ip == host and c.raddr.port == 22 and c.status == psutil.CONN_ESTABLISHED]


_PING_THROUGH = textwrap.dedent("""
    import sys, pymongo
    uri = sys.stdin.read()
    client = pymongo.MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=15000)
    try:
        print(client.admin.command("ping")["ok"])
    finally:
        client.close()
""")


@slurm
def test_the_manager_starts_its_routes_at_the_first_cycle_and_stops_them_on_close(
        unrouted_cluster, launchpad, mongo_uri, cluster_venv, tmp_path):
    """Through the manager's forward, the login node reaches the session's real LaunchPad (authenticated, TLS
    when the server has it: the forward only moves bytes)."""
    port = free_port_in(unrouted_cluster.login_netns, "127.0.0.1")
    c = ssh_cluster(unrouted_cluster, "/tmp/pilot-route-test", "~/.pilot/my_launchpad.yaml", ["md"], cluster_venv,
                    launchpad_route={"via": "ssh", "port": port, "login_address": unrouted_cluster.login_inner})
    (tmp_path / "lp.yaml").write_text("host: 127.0.0.1\n")
    cfg = load_config(write_config(tmp_path / "cfg", tmp_path / "lp.yaml", {"pilotci3": c}))
    assert Manager(cfg, launchpad, dry_run=True).routes.keepers == {}     # built, not started
    dry = Manager(cfg, launchpad, dry_run=True)
    dry.start_routes()
    assert dry.routes.keepers == {}          # a dry run takes no port a running manager may hold
    dry.close()
    mgr = Manager(cfg, launchpad)
    try:
        mgr.start_routes()
        keeper = mgr.routes.keepers["pilotci3"]
        assert keeper.target == launchpad_target(launchpad)
        assert keeper.wait_up(30), keeper.state()
        host, lp_port = keeper.target
        uri = mongo_uri.replace(f"{host}:{lp_port}/", f"127.0.0.1:{port}/")
        assert f"127.0.0.1:{port}" in uri
        res = subprocess.run(unrouted_cluster.on_login([sys.executable, "-c", _PING_THROUGH]), input=uri,
                             capture_output=True, text=True, timeout=60)
        assert res.stdout.strip() == "1.0", res.stderr[-2000:]
        assert mgr.routes.states()["pilotci3"].up
    finally:
        mgr.close()
    assert not keeper.state().up
    assert login_client(unrouted_cluster, port, "probe") == {"error": "ECONNREFUSED"}
    no_forward_threads()
