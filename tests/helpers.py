"""Helpers shared by the tests: the embedded LaunchPad server as a process, cluster descriptions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

REPO = Path(__file__).resolve().parents[1]
#: What a wheel of this project is built from (everything else in the tree is not part of it).
SOURCE_PARTS = ("pilot", "queue_adapters", "tasks", "templates", "pyproject.toml", "README.md")


def clean_source_copy(dest: Path) -> Path:
    """Copy the project's sources to ``dest`` (no ``build/``, ``*.egg-info`` or caches) and return it.

    Building from the working tree reuses its ``build/lib``, where setuptools never deletes a module that has
    since moved: a wheel built there would still carry it, and a test could pass on an import path that no
    longer exists. A copy also keeps concurrent builds from racing in the tree.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_PARTS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest
def source_digest(root: Path = REPO) -> str:
    """What a build of the project is made of, as one hash: the files of its packages and pyproject.toml under
    ``root``. The cluster venv records the digest of what it was built from (tests/infra/services.sh when it
    builds it, tests/conftest.py ``cluster_venv`` when it rebuilds it), and is rebuilt only when it differs."""
    import hashlib

    h = hashlib.sha256()
    for top in ("pilot", "queue_adapters", "tasks", "templates"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()


INFRA_STATE = Path(os.environ.get("PILOT_INFRA_STATE", "/tmp/pilot-infra/state"))


class EmbeddedServer:
    """``pilot launchpad serve`` as a child process, stopped by its PID.

    The server writes ``server.json`` (pid, host, port) into its data dir once it listens.
    """

    def __init__(self, data_dir: Path, port: int = 0, extra_args: list[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"
        self.ca_copy = ""

    @property
    def anonymous_uri(self) -> str:
        """The server's address with no credentials (what an unauthenticated client uses)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mongodb://{host}:{self.port}/" + ("?tls=true&tlsCAFile=" + quote(self.ca_file) if self.ca_file else "")

    @property
    def uri(self) -> str:
        """The admin's URI, from the LaunchPad file the server wrote in its data dir (``my_launchpad.yaml``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.admin:
            return self.anonymous_uri
        user = quote(str(self.admin["username"]), safe="")
        pw = quote(str(self.admin["password"]), safe="")
        query = f"authSource={quote(str(self.admin.get('authsource') or 'admin'))}"
        if self.ca_file:
            query += "&tls=true&tlsCAFile=" + quote(self.ca_file)
        return f"mongodb://{user}:{pw}@{host}:{self.port}/?{query}"

    @property
    def admin(self) -> dict[str, Any]:
        """The data dir's admin LaunchPad file ({} before the server wrote one)."""
        try:
            data = yaml.safe_load((self.data_dir / "my_launchpad.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def ca_file(self) -> str:
        """The CA file clients verify the server with ("" when the server does not use TLS)."""
        if self.ca_copy:
            return self.ca_copy
        kwargs = self.admin.get("mongoclient_kwargs") or {}
        return str(kwargs.get("tlsCAFile") or "") if kwargs.get("tls") else ""

    def publish_ca(self, path: Path) -> str:
        """Copy the server's CA certificate (public) to ``path``, world-readable, for other accounts' clients
        (the data dir is 0700); later URIs name that copy. Returns it ("" without TLS)."""
        ca = self.ca_file
        if not ca:
            return ""
        shutil.copyfile(ca, path)
        os.chmod(path, 0o644)
        self.ca_copy = str(path)
        return self.ca_copy

    def start(self, timeout: float = 30.0) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        info = self.data_dir / "server.json"
        info.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pilot", "launchpad", "serve", "--host", self.host,
             "--port", str(self.port), "--data", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                data = json.loads(info.read_text())
                if data.get("pid") == self.proc.pid:
                    self.port = int(data["port"])
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded server did not start in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the server by its PID (SIGTERM, then SIGKILL); returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass(frozen=True)
class ClusterInfo:
    """One test cluster: a login node and a compute node, each its own network namespace
    (tests/infra/services.sh; docs/testing.md has the picture)."""

    name: str
    host: str                 # the login node's address, as the fileserver reaches it
    port: int
    user: str
    key: str
    known_hosts: str
    scheduler: str
    venv: str
    slurm_conf: str | None = None
    login_netns: str = ""
    node_netns: str = ""
    login_inner: str = ""     # the login node's address inside the cluster
    node: str = ""            # the compute node's address
    routed: bool = True       # False: the compute node has no route to the fileserver
    sshd_config: str = ""     # the login node's sshd_config (private sshds are modelled on it)
    host_key: str = ""        # the login node's host key (private key file; .pub beside it)
    node_sshd: str = ""       # address of the compute node's sshd, "" if it has none
    otp_port: int | None = None   # the login node's sshd that also asks for a TOTP code (issue 21), if any
    otp_seed: str = ""        # the file with that code's base32 seed (root's alone)

    def ssh_kwargs(self) -> dict[str, object]:
        return dict(host=self.host, port=self.port, user=self.user, identity_file=self.key,
                    known_hosts=self.known_hosts)

    def on_login(self, argv: list[str]) -> list[str]:
        """``argv`` run on the login node (its network namespace), e.g. scheduler commands as an admin."""
        return ["nsenter", f"--net=/run/netns/{self.login_netns}", *argv]

    def on_node(self, argv: list[str]) -> list[str]:
        """``argv`` run on the compute node (its network namespace)."""
        return ["nsenter", f"--net=/run/netns/{self.node_netns}", *argv]

    def host_key_line(self, host: str, port: int) -> str:
        """A known_hosts line for this cluster's host key at ``host:port``."""
        key_type, key_b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {key_type} {key_b64}\n"


def load_clusters() -> dict[str, ClusterInfo]:
    data = json.loads((INFRA_STATE / "clusters.json").read_text())
    out = {}
    for c in data["clusters"]:
        out[c["name"]] = ClusterInfo(
            name=c["name"], host=c["host"], port=int(data["port"]), user=data["user"], key=data["key"],
            known_hosts=data["known_hosts"], scheduler=c["scheduler"], venv=data["venv"],
            slurm_conf=c.get("slurm_conf") or None, login_netns=c["login_netns"], node_netns=c["node_netns"],
            login_inner=c["login_inner"], node=c["node"], routed=bool(c["routed"]), sshd_config=c["sshd_config"],
            host_key=c["host_key"], node_sshd=c.get("node_sshd", ""), otp_port=c.get("otp_port"),
            otp_seed=data.get("otp_seed", "") if c.get("otp_port") else "")
    return out


def fileserver_address() -> str | None:
    """The fileserver's address on the test network (where pilots reach the LaunchPad), if the services run
    (clusters.json names it, and it is an address of this machine now)."""
    try:
        addr = str(json.loads((INFRA_STATE / "clusters.json").read_text())["fileserver"])
        with socket.socket() as s:
            s.bind((addr, 0))
    except (OSError, ValueError, KeyError):
        return None
    return addr


def launchpad_host() -> str:
    """Where a test LaunchPad server listens: the fileserver's test address while the clusters run (their
    pilots reach it over the network, as in a real deployment), else 127.0.0.1."""
    return (fileserver_address() if os.geteuid() == 0 else None) or "127.0.0.1"


def free_port_in(netns: str | None, host: str) -> int:
    """A TCP port nothing listens on at ``host`` in network namespace ``netns`` (None: this one)."""
    code = "import socket; s = socket.socket(); s.bind((__import__('sys').argv[1], 0)); print(s.getsockname()[1])"
    argv = [sys.executable, "-c", code, host]
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout)


class OwnSshd:
    """A private sshd on a cluster's login node (or ``netns``/``host``), on a free port, modelled on the
    cluster's shared sshd_config (same host key), started and stopped by PID: tests that stop or restart an
    sshd, or that need another account, never touch the shared ones."""

    def __init__(self, cluster: ClusterInfo, workdir: Path, user: str | None = None,
                 authorized_keys: Path | None = None, netns: str | None = None, host: str | None = None) -> None:
        self.cluster = cluster
        self.netns = netns or cluster.login_netns
        self.host = host or cluster.host
        self.port = free_port_in(self.netns, self.host)
        self.user = user or cluster.user
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "sshd.log"
        self.config = self.workdir / "sshd_config"
        drop = ("ListenAddress", "PidFile", "AllowUsers") + (("AuthorizedKeysFile",) if authorized_keys else ())
        lines = [ln for ln in Path(cluster.sshd_config).read_text().splitlines() if ln.split(" ", 1)[0] not in drop]
        lines += [f"ListenAddress {self.host}:{self.port}", f"PidFile {self.workdir / 'sshd.pid'}",
                  f"AllowUsers {self.user}"]
        if authorized_keys is not None:
            lines.append(f"AuthorizedKeysFile {authorized_keys}")
        self.config.write_text("\n".join(lines) + "\n")
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text(cluster.host_key_line(self.host, self.port))
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(self.config)], check=True, capture_output=True)

    def start(self) -> OwnSshd:
        # -D: stay in the foreground, so self.proc.pid is the listener's PID (nsenter execs sshd)
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "/usr/sbin/sshd", "-D",
                                      "-f", str(self.config), "-E", str(self.log)])

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            return "Server listening" in (self.log.read_text() if self.log.exists() else "")

        try:
            wait_for(listening, timeout=10, interval=0.05, what=f"own sshd on {self.host}:{self.port}")
        except BaseException:
            self.stop()   # no fixture would get the object to stop it
            raise
        self.log.write_text("")   # the next start waits for its own line
        return self

    def stop(self) -> None:
        """Stop the listener and every per-connection sshd it forked (by PID): existing sessions die too."""
        if self.proc is None:
            return
        stop_process_tree(self.proc)
        self.proc = None

    def ssh_kwargs(self) -> dict[str, object]:
        return dict(host=self.host, port=self.port, user=self.user, identity_file=self.cluster.key,
                    known_hosts=str(self.known_hosts))

    def transport(self, **kw: object):  # pilot.transport is imported here: helpers stay cheap to import
        from pilot.transport import SSHTransport

        return SSHTransport(**self.ssh_kwargs(), **kw)


def start_route_sshd(cluster: ClusterInfo, public_key: Path, port: int, keys_dir: Path, workdir: Path,
                     known_hosts: Path) -> OwnSshd:
    """Start an sshd of the test's own on ``cluster``'s login node at its inner address (where the compute node
    reaches it) that takes only the route key ``public_key``, by the line ``pilot bootstrap`` writes (a forward
    to the login node's ``127.0.0.1:port``), from ``keys_dir/authorized_keys`` (sshd's StrictModes: not below
    /tmp); write its host key line to ``known_hosts``, owned by the cluster user."""
    from pilot.checks.bootstrap_route import authorized_line

    auth = keys_dir / "authorized_keys"
    auth.write_text(authorized_line(public_key.read_text(), port) + "\n")
    os.chmod(auth, 0o644)
    sshd = OwnSshd(cluster, workdir, authorized_keys=auth, host=cluster.login_inner).start()
    known_hosts.write_text(cluster.host_key_line(cluster.login_inner, sshd.port))
    shutil.chown(known_hosts, cluster.user, cluster.user)
    return sshd


def kill_user_processes(user: str) -> None:
    """Kill, by PID, every process left running as ``user`` (a test account's SSH sessions' children)."""
    import psutil

    for p in psutil.process_iter(["username"]):
        if p.info["username"] == user:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


@contextmanager
def own_account(cluster: ClusterInfo, workdir: Path, prefix: str,
                sshd_hosts: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A new user on ``cluster`` (name ``prefix`` + 6 hex digits) with only the test key in its
    authorized_keys, and an sshd of its own on the login node at each address of ``sshd_hosts`` (name ->
    address; its files in ``workdir/sshd-NAME``): a test that bootstraps an account, or changes its
    authorized_keys, leaves the shared test user's home and the shared sshds alone. Yields ``{"cluster",
    "user", "home"}`` and each sshd under its name; afterwards the sshds stop, the user's processes are
    killed by PID and the user is removed with its home."""
    import pwd

    import pytest

    if shutil.which("useradd") is None:
        pytest.skip("needs useradd")
    user = prefix + os.urandom(3).hex()
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True, timeout=30)
    sshds: dict[str, OwnSshd] = {}
    try:
        home = Path(pwd.getpwnam(user).pw_dir)
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700)
        shutil.copy(f"{cluster.key}.pub", ssh / "authorized_keys")
        os.chmod(ssh / "authorized_keys", 0o600)
        for p in (ssh, ssh / "authorized_keys"):
            shutil.chown(p, user, user)
        subprocess.run(["usermod", "-p", "*", user], check=True, timeout=30)   # not locked: sshd accepts keys
        for name, host in sshd_hosts.items():
            sshds[name] = OwnSshd(cluster, Path(workdir) / f"sshd-{name}", user=user, host=host,
                                  authorized_keys=Path(".ssh/authorized_keys")).start()
        yield {"cluster": cluster, "user": user, "home": home, **sshds}
    finally:
        for sshd in sshds.values():
            sshd.stop()
        kill_user_processes(user)
        subprocess.run(["userdel", "-r", user], capture_output=True, timeout=60, check=True)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def time_limit_now(job_id: str) -> list[str]:
    """The ``scontrol update`` that ends a running SLURM job's time limit now (run as the job's owner).

    ``--time=1`` is SLURM's smallest limit: a test waiting for it waits a minute and up to 30 s more.
    scontrol(1) lets users lower their own job's TimeLimit; 0 puts its end at the moment of the update
    (slurmctld/job_mgr.c). slurmctld's next time-limit pass (every 30 s: PERIODIC_TIMEOUT, slurmctld.h) then
    ends the job as at any time limit: SIGTERM, SIGKILL KillWait later, state TIMEOUT."""
    return ["scontrol", "update", f"JobId={job_id}", "TimeLimit=0"]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_process_tree(proc, timeout: float = 10.0) -> None:
    """Stop a child process by its PID (SIGTERM, then SIGKILL) and then every descendant it had.

    The descendants are listed before the signal: processes that left its session (per-connection sshds,
    Firework process groups) would otherwise be missed once they are reparented.
    """
    import psutil

    if proc.poll() is not None:
        return
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=5)
