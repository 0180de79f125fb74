"""The ssh route of a pilot (``pilot/worker/tunnel.py``) with the real OpenSSH client and server.

The route runs where it runs in production: on the compute node of ``pilotci3`` (its own network namespace,
no route to the fileserver), as the cluster user, to an sshd on its login node's inner address, and forwards to a
TCP listener on the login node's loopback (there, in production, the manager's remote forward listens). The
sshd is a private one (:class:`tests.helpers.OwnSshd`: same host key as the login node's, a temporary
authorized_keys with the route's restricted line), so nothing shared is touched. What counts as right comes
from OpenSSH and the kernel: bytes that come back through the forward, the PIDs of the ssh processes in
``/proc``, sshd's ``permitopen`` refusing another port.

The pure pieces (the target syntax, the ssh command line, the LaunchPad file pointed at the local port) are
checked against the syntax that ssh(1), sshd(8) "AUTHORIZED_KEYS FILE FORMAT" and MongoDB's connection string
documentation give.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilot.checks.bootstrap_route import authorized_line
from pilot.worker.tunnel import SshRoute, launchpad_via_route, parse_route_target, pick_local_port, ssh_argv
from tests.helpers import (
    REPO,
    ClusterInfo,
    free_port_in,
    pid_alive,
    start_route_sshd,
    stop_process_tree,
    wait_for,
)

# ============================================================================ pure


def test_route_targets_read_as_ssh_writes_them():
    assert parse_route_target("pilot@203.0.113.161:22") == ("pilot", "203.0.113.161", 22)
    assert parse_route_target("login.example.org:2222") == (None, "login.example.org", 2222)
    assert parse_route_target("me@[fd00::1]:22") == ("me", "fd00::1", 22)
    for bad in ("pilot@203.0.113.161", "a@b:0", "a@b:65536", "a b@c:22", "fd00::1:22", ""):
        with pytest.raises(ValueError, match="USER@ADDRESS:PORT"):
            parse_route_target(bad)


def test_the_ssh_command_line_forwards_loopback_to_loopback_with_the_designs_options(tmp_path):
    route = SshRoute(port=37117, login_address="203.0.113.161", login_port=2222, user="pilot",
                     key=Path("/home/pilot/.pilot/route_key"), known_hosts=Path("/home/p x/%h_known"))
    argv = ssh_argv(route, 40001)
    assert argv[:6] == ["ssh", "-N", "-L", "127.0.0.1:40001:127.0.0.1:37117", "-p", "2222"]
    assert argv[argv.index("-i") + 1] == "/home/pilot/.pilot/route_key"
    assert argv[-1] == "pilot@203.0.113.161"
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for want in ("IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=yes", "ExitOnForwardFailure=yes",
                 "ServerAliveInterval=15", "ServerAliveCountMax=3"):
        assert want in opts
    # ssh_config(5): "%%" is a literal '%', arguments with blanks are double-quoted
    assert 'UserKnownHostsFile="/home/p x/%%h_known"' in opts
    # ssh -G prints the configuration ssh would use: the file option reads back as one file
    res = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=30, check=True)
    conf = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    assert conf["userknownhostsfile"] == "/home/p x/%h_known"
    assert conf["port"] == "2222" and conf["user"] == "pilot" and conf["exitonforwardfailure"] == "yes"
    assert conf["localforward"] == "[127.0.0.1]:40001 [127.0.0.1]:37117"


def test_the_launchpad_file_goes_through_the_local_port_with_its_credentials_and_tls():
    doc = {"host": "198.51.100.1", "port": 27017, "name": "fireworks", "username": "admin", "password": "p@ss:/",
           "authsource": "admin", "mongoclient_kwargs": {"tls": True, "tlsCAFile": "/home/u/.pilot/ca.pem"}}
    routed = launchpad_via_route(doc, 40001)
    assert routed == {**doc, "host": "127.0.0.1", "port": 40001}
    # a URI (uri_mode) keeps its userinfo, database and options; only host:port change
    uri = {"host": "mongodb://admin:p%40ss@fs.example.org:27017/fireworks?authSource=admin&tls=true",
           "uri_mode": True, "name": "fireworks"}
    assert launchpad_via_route(uri, 40001)["host"] == \
        "mongodb://admin:p%40ss@127.0.0.1:40001/fireworks?authSource=admin&tls=true"
    for many in ("mongodb://a:b@h1:1,h2:2/db", "mongodb+srv://a:b@cluster.example.org/db"):
        with pytest.raises(ValueError, match="one"):
            launchpad_via_route({"host": many, "uri_mode": True}, 40001)


def test_the_local_port_is_free_and_outside_the_ephemeral_range():
    import socket

    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {pick_local_port() for _ in range(20)}
    assert all(not low <= p <= high for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # nothing listens there


def test_sshs_repeated_complaints_reach_the_log_once_a_while():
    from pilot.worker.tunnel import _Throttle

    throttle = _Throttle(every=0.3)
    assert throttle("channel 3: open failed: connect failed: Connection refused") is not None
    assert throttle("channel 4: open failed: connect failed: Connection refused") is None   # the same kind
    assert throttle("Connection to 203.0.113.161 closed by remote host.") is not None      # another kind
    time.sleep(0.35)
    assert throttle("channel 9: open failed: connect failed: Connection refused") == \
        "channel 9: open failed: connect failed: Connection refused (and 1 more like it in the last 0 s)"


def test_worker_route_options_need_each_other(tmp_path):
    lp = tmp_path / "lp.yaml"
    lp.write_text("host: 127.0.0.1\nport: 1\nname: fw\n")
    base = [sys.executable, "-m", "pilot", "worker", "-l", str(lp), "-c", "md", "-n", "t-1", "--no-deadline"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra, words in ((["--route-port", "3"], "without --route-ssh"),
                         (["--route-ssh", "a@b:22"], "needs --route-port"),
                         (["--route-ssh", "a@b", "--route-port", "3"], "USER@ADDRESS:PORT")):
        res = subprocess.run(base + extra, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert res.returncode == 2 and words in res.stderr, res.stderr
    # a route whose key is not there: exit 3 (database unreachable) with the fix, before any database call
    res = subprocess.run(base + ["--route-ssh", "pilot@203.0.113.161:22", "--route-port", "3", "--route-key",
                                 str(tmp_path / "nokey"), "--route-known-hosts", str(tmp_path / "kh")],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert res.returncode == 3, res.stderr
    assert f"the key {tmp_path / 'nokey'} does not exist" in res.stderr and "pilot bootstrap" in res.stderr


def test_the_job_script_of_an_ssh_routed_cluster_gives_the_worker_the_route(tmp_path):
    """The rendered script (run by bash, with a stand-in worker that records its argv) passes the route, and the
    real ``pilot worker`` reads those options: without the key it stops with the fix, exit 3. A direct cluster's
    script has no route options."""
    from pilot.render import render_pilot_script
    from tests.config.test_templates import FAKE_WORKER, make_cluster, run_script

    fake = tmp_path / "bin" / "fake-pilot"
    fake.parent.mkdir()
    fake.write_text(FAKE_WORKER)
    fake.chmod(0o755)
    keys = {"identity_file": str(tmp_path / "id"), "known_hosts": str(tmp_path / "kh")}
    for f in keys.values():
        Path(f).write_text("")
    routed = make_cluster(tmp_path, "slurm", name="routed", **keys, worker_command=f"{fake} worker",
                          launchpad_route={"via": "ssh", "port": 37117, "login_address": "203.0.113.161"})
    home = tmp_path / "home"
    res = run_script(render_pilot_script(routed, "pilotci3", "md", "fwp.md.abc"), tmp_path,
                     {"SLURM_JOB_ID": "77", "HOME": str(home), "FAKE_MODE": "exit0"})
    assert res.returncode == 0, res.stderr
    argv = (tmp_path / "work" / "fake-77.argv").read_text().splitlines()
    i = argv.index("--route-ssh")
    assert argv[i:i + 8] == ["--route-ssh", "alice@203.0.113.161:22", "--route-port", "37117",
                             "--route-key", f"{home}/.pilot/route_key",
                             "--route-known-hosts", f"{home}/.pilot/route_known_hosts"]
    worker = subprocess.run([sys.executable, "-m", "pilot", *argv], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}, check=False)
    assert worker.returncode == 3, worker.stderr
    assert f"the key {home}/.pilot/route_key does not exist" in worker.stderr

    direct = make_cluster(tmp_path, "slurm", name="direct", **keys, launchpad_route="direct")
    assert "--route" not in render_pilot_script(direct, "pilotci", "md", "fwp.md.abc")


# ============================================================================ real ssh on pilotci3
#: A TCP service on the login node's loopback: an echo server, or (with a target) a relay to the target, as
#: the manager's forward relays to the LaunchPad.
RELAY = r"""
import socket, sys, threading
port = int(sys.argv[1])
target = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else None
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
print("listening", flush=True)

def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def serve(conn):
    if target is None:
        pump(conn, conn)
    else:
        out = socket.create_connection(target, timeout=10)
        out.settimeout(None)
        threading.Thread(target=pump, args=(out, conn), daemon=True).start()
        pump(conn, out)

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

#: Runs a Tunnel on the compute node and answers commands on stdin with one JSON line each.
DRIVER = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pilot.worker import tunnel as T
from pilot.worker.logs import setup_worker_logging

setup_worker_logging(None)
spec = json.loads(sys.argv[2])
route = T.SshRoute(port=spec["remote_port"], login_address=spec["address"], login_port=spec["ssh_port"],
                   user=spec["user"], key=Path(spec["key"]), known_hosts=Path(spec["known_hosts"]))

def out(**kw):
    print(json.dumps(kw), flush=True)

busy = None
if spec.get("busy_first"):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    first, real = [busy], T.pick_local_port
    T.pick_local_port = lambda *a, **k: first.pop() if first else real()
tun = T.Tunnel(route, start_timeout=spec.get("start_timeout", 60))
try:
    port = tun.start()
except T.TunnelError as exc:
    out(error=str(exc))
    sys.exit(3)
out(port=port, pid=tun.pid, busy=busy)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "echo":
        data = os.urandom(int(arg))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            out(ok=got == data, n=len(got))
        except OSError as exc:
            out(ok=False, error=str(exc))
    elif cmd == "state":
        out(pid=tun.pid, restarts=tun.restarts)
    elif cmd == "stop":
        pid = tun.pid
        tun.stop()
        out(stopped=True, pid=pid, after=tun.pid)
        break
"""


def as_user(cluster: ClusterInfo, argv: list[str], where: str = "node", user: str | None = None) -> list[str]:
    """``argv`` as the cluster user (or ``user``) on the compute node (or the login node), as a batch job runs
    it (``setpriv`` execs: the PID is the command's)."""
    netns = cluster.node_netns if where == "node" else cluster.login_netns
    user = user or cluster.user
    return ["nsenter", f"--net=/run/netns/{netns}", "setpriv", "--reuid", user, "--regid", user,
            "--init-groups", "--", *argv]


def user_env(user: str) -> dict[str, str]:
    home = os.path.expanduser(f"~{user}")
    return {"HOME": home, "USER": user, "LOGNAME": user, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8"}


class Driver:
    """The tunnel driver on the compute node, run as ``spec["user"]``: one command, one JSON answer."""

    def __init__(self, cluster: ClusterInfo, spec: dict[str, Any], log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        argv = [f"{cluster.venv}/bin/python", "-c", DRIVER, str(REPO), json.dumps(spec)]
        self.proc = subprocess.Popen(as_user(cluster, argv, user=spec["user"]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=user_env(spec["user"]))

    def read(self, timeout: float = 90.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise AssertionError(f"no answer from the driver (exit {self.proc.poll()}); its log:\n"
                                 f"{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 90.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        stop_process_tree(self.proc)
        self._err.close()


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A root-owned directory outside /tmp for a temporary authorized_keys: sshd's StrictModes refuses a file
    below a group- or world-writable directory such as /tmp; sshd reads the file as the user."""
    path = Path(tempfile.mkdtemp(prefix="pilot-route-test-", dir="/run"))
    os.chmod(path, 0o755)  # sshd reads authorized_keys as the user
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def route_setup(unrouted_cluster, remote_tmp, private_dir, tmp_path):
    """The route's pieces, all temporary: a key of the cluster user, an authorized_keys with the restricted
    line, an sshd of our own on the login node's inner address, an echo server on the login node's loopback."""
    c = unrouted_cluster
    key = remote_tmp / "route_key"
    subprocess.run(as_user(c, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pilot-route", "-f",
                               str(key)], where="login"), check=True, timeout=60, env=user_env(c.user))
    echo_port = free_port_in(c.login_netns, "127.0.0.1")
    known = remote_tmp / "route_known_hosts"
    sshd = start_route_sshd(c, remote_tmp / "route_key.pub", echo_port, private_dir, tmp_path / "sshd", known)
    echo = subprocess.Popen(c.on_login([sys.executable, "-c", RELAY, str(echo_port)]), stdout=subprocess.PIPE)
    drivers: list[Driver] = []
    try:
        assert echo.stdout is not None and echo.stdout.readline() == b"listening\n"
        spec = {"address": c.login_inner, "ssh_port": sshd.port, "remote_port": echo_port, "user": c.user,
                "key": str(key), "known_hosts": str(known)}

        def start(**over: Any) -> Driver:
            drivers.append(Driver(c, {**spec, **over}, tmp_path / f"driver{len(drivers)}.log"))
            return drivers[-1]

        yield {"cluster": c, "sshd": sshd, "spec": spec, "start": start, "auth": private_dir / "authorized_keys",
               "key": key}
    finally:
        for d in drivers:
            d.stop()
        stop_process_tree(echo)
        sshd.stop()


def _ssh_pids(user: str, forward: int | str) -> list[int]:
    """PIDs of ssh clients of ``user`` that forward local port ``forward`` (or whose -L holds the text
    ``forward``), from /proc: what really runs."""
    import psutil

    text = f"127.0.0.1:{forward}:" if isinstance(forward, int) else forward
    out = []
    for p in psutil.process_iter(["name", "username", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "ssh" and p.info["username"] == user and any(text in a for a in cmd):
            out.append(p.pid)
    return out


@pytest.mark.slurm
def test_bytes_flow_through_the_route_and_a_killed_ssh_is_started_again(route_setup):
    c = route_setup["cluster"]
    drv = route_setup["start"]()
    hello = drv.read()
    assert "error" not in hello, hello
    port, pid = hello["port"], hello["pid"]
    assert _ssh_pids(c.user, port) == [pid]
    # the ssh process runs in the compute node's network namespace, as the cluster user
    node_ns = os.stat(f"/run/netns/{c.node_netns}").st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == node_ns
    assert drv.ask("echo 1000000") == {"ok": True, "n": 1000000}

    # the batch system's soft signals do not end the route (the worker may still need it to settle)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        os.kill(pid, sig)
    time.sleep(0.5)
    assert pid_alive(pid) and drv.ask("state") == {"pid": pid, "restarts": 0}

    # killed: the watchdog starts ssh again, on the same local port, and bytes flow again
    os.kill(pid, signal.SIGKILL)
    state = wait_for(lambda: (s := drv.ask("state"))["pid"] not in (None, pid) and s, timeout=30, interval=0.3,
                     what="a new ssh")
    assert state["restarts"] == 1 and _ssh_pids(c.user, port) == [state["pid"]]
    wait_for(lambda: drv.ask("echo 65536")["ok"], timeout=30, interval=0.3, what="bytes through the new ssh")
    # the watchdog sees the forward listening (it polls for it) and says so
    wait_for(lambda: f"forwarding again on 127.0.0.1:{port}" in drv.log.read_text(), timeout=30, interval=0.2,
             what="the watchdog's report of the new forward")

    # stopped: no ssh of the route is left
    bye = drv.ask("stop")
    assert bye == {"stopped": True, "pid": state["pid"], "after": None}
    assert not pid_alive(state["pid"]) and _ssh_pids(c.user, port) == []
    assert drv.proc.wait(30) == 0
    log = drv.log.read_text()
    assert f"ssh (pid {pid}) ended after" in log and "(killed by SIGKILL)" in log
    assert f"forwarding again on 127.0.0.1:{port}" in log


@pytest.mark.slurm
def test_a_taken_local_port_is_exchanged_for_another(route_setup):
    drv = route_setup["start"](busy_first=True)
    hello = drv.read()
    assert "error" not in hello, hello
    assert hello["port"] != hello["busy"]
    assert drv.ask("echo 1000") == {"ok": True, "n": 1000}
    assert "was taken; trying another" in drv.log.read_text()


@pytest.mark.slurm
def test_the_key_opens_only_its_own_port(route_setup, tmp_path):
    """sshd enforces the authorized_keys line: the route to another loopback port of the login node (say, a
    service there) is accepted by ssh locally, but sshd refuses the channel, so nothing comes back."""
    c = route_setup["cluster"]
    other = free_port_in(c.login_netns, "127.0.0.1")
    echo = subprocess.Popen(c.on_login([sys.executable, "-c", RELAY, str(other)]), stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == b"listening\n"
        drv = route_setup["start"](remote_port=other)
        hello = drv.read()
        assert "error" not in hello, hello
        answer = drv.ask("echo 1000")
        assert answer["ok"] is False
        wait_for(lambda: "administratively prohibited" in drv.log.read_text(), timeout=10, interval=0.2,
                 what="ssh's report of sshd's refusal")
        drv.ask("stop")
    finally:
        stop_process_tree(echo)


@pytest.mark.slurm
def test_the_key_runs_no_command_on_the_login_node(route_setup):
    """The line's forced ``command="/bin/false"`` (sshd(8)): with the route key, ``ssh login COMMAND`` runs
    /bin/false (exit 1), never COMMAND; ``ssh -N`` (what the pilots run) asks for no command at all."""
    c, spec = route_setup["cluster"], route_setup["spec"]
    marker = Path(f"/tmp/pilot-route-cmd-{os.getpid()}-{time.monotonic_ns()}")
    argv = ["ssh", "-i", spec["key"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o",
            f"UserKnownHostsFile={spec['known_hosts']}", "-p", str(spec["ssh_port"]), f"{c.user}@{c.login_inner}",
            "touch", str(marker)]
    try:
        res = subprocess.run(as_user(c, argv), env=user_env(c.user), capture_output=True, timeout=60)
        assert res.returncode == 1, res.stderr
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.slurm
def test_a_key_that_is_not_authorized_fails_at_once_with_the_fix(route_setup):
    route_setup["auth"].write_text("")   # nothing authorized
    t0 = time.monotonic()
    drv = route_setup["start"](start_timeout=120)
    hello = drv.read()
    assert time.monotonic() - t0 < 60
    assert "Permission denied" in hello["error"] and "pilot bootstrap" in hello["error"]
    assert drv.proc.wait(30) == 3


@pytest.mark.slurm
def test_a_worker_on_the_unrouted_node_runs_fireworks_through_the_route(route_setup, launchpad, mongo_uri,
                                                                        remote_tmp, tmp_path):
    """``pilot worker --route-ssh ...`` on pilotci3's compute node, as the cluster user: the LaunchPad it reaches
    is the session's server on the fileserver, through the route and a relay on the login node's loopback
    (where the manager's forward listens in production). The ssh of the route is killed while a Firework runs:
    it is started again, the Firework completes with one launch, and no ssh is left when the worker ends."""
    import uuid
    from urllib.parse import urlsplit

    from fireworks import Firework, ScriptTask

    c = route_setup["cluster"]
    lp_host = urlsplit(mongo_uri).hostname
    lp_port = urlsplit(mongo_uri).port or 27017
    relay_port = free_port_in(c.login_netns, "127.0.0.1")
    relay = subprocess.Popen(c.on_login([sys.executable, "-c", RELAY, str(relay_port), str(lp_host), str(lp_port)]),
                             stdout=subprocess.PIPE)
    worker = None
    try:
        assert relay.stdout is not None and relay.stdout.readline() == b"listening\n"
        # the key may open the relay's port (the fixture's authorized_keys allowed the echo server's)
        route_setup["auth"].write_text(authorized_line((remote_tmp / "route_key.pub").read_text(), relay_port) + "\n")
        category = f"route-{uuid.uuid4().hex[:8]}"
        launchpad.add_wf(Firework([ScriptTask.from_str("sleep 4")], spec={"_category": category}, name="slow"))
        launchpad.add_wf(Firework([ScriptTask.from_str("true")], spec={"_category": category}, name="quick"))
        lp_file = remote_tmp / "my_launchpad.yaml"
        lp_file.write_text(json.dumps({"host": mongo_uri, "uri_mode": True, "name": launchpad.db.name,
                                       "logdir": None, "strm_lvl": "ERROR"}))
        os.chmod(lp_file, 0o600)
        shutil.chown(lp_file, c.user, c.user)
        spec = route_setup["spec"]
        argv = [f"{c.venv}/bin/python", "-m", "pilot", "worker", "-l", str(lp_file), "-c", category, "-n", "t-route",
                "--no-deadline", "--idle-timeout", "3", "--launch-dir", str(remote_tmp / "launches"),
                "--route-ssh", f"{c.user}@{c.login_inner}:{spec['ssh_port']}", "--route-port", str(relay_port),
                "--route-key", spec["key"], "--route-known-hosts", spec["known_hosts"]]
        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(as_user(c, argv), stdout=out, stderr=subprocess.STDOUT, env=user_env(c.user),
                                      cwd=remote_tmp)
        slow = launchpad.get_fw_ids({"name": "slow"})[0]
        wait_for(lambda: launchpad.get_fw_by_id(slow).state == "RUNNING", timeout=60, interval=0.2,
                 what=f"the slow Firework RUNNING (worker log: {log})")
        before = _ssh_pids(c.user, f":127.0.0.1:{relay_port}")
        assert len(before) == 1
        os.kill(before[0], signal.SIGKILL)
        assert worker.wait(120) == 0, log.read_text()[-3000:]
        for fw_id in launchpad.get_fw_ids({"spec._category": category}):
            fw = launchpad.get_fw_by_id(fw_id)
            assert fw.state == "COMPLETED" and len(fw.launches) == 1, (fw.name, fw.state, log.read_text()[-3000:])
        text = log.read_text()
        assert "forwarding again on 127.0.0.1:" in text and "(killed by SIGKILL)" in text
        assert _ssh_pids(c.user, f":127.0.0.1:{relay_port}") == []
    finally:
        if worker is not None:
            stop_process_tree(worker)
        stop_process_tree(relay)
