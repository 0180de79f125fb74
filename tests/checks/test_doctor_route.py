"""``pilot doctor``'s route check: a tiny batch job on a compute node reaches the LaunchPad, by each route.

What counts as right comes from the test topology (tests/infra/services.sh, docs/testing.md): ``pilotci``'s
compute node routes to the fileserver, where the session's LaunchPad listens with authentication and TLS;
``pilotci3``'s compute node has no route there (the kernel answers ENETUNREACH) but reaches its login node's
inner address. The ssh route is set up as ``pilot bootstrap`` sets it up (a key made on the cluster, its
restricted authorized_keys line, the login node's host key under the address the compute node uses), for an
account of the test's own on pilotci3, with sshds of its own on the login node: the home of the shared test
user, and its ``~/.pilot``, stay untouched while other tests use them. The fix the check prints is applied
as a person would, and the doctor run again.

The pure parts are checked against the formats of sshd(8) (authorized_keys, known_hosts), MongoDB's
connection strings, sbatch(1) and real pymongo errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from pilot.checks.bootstrap_route import authorized_line
from pilot.checks.route_probe import (
    ProbeAnswer,
    authorized_route_port,
    describe_failure,
    known_hosts_entry,
    launchpad_host_port,
    render_probe_script,
    route_yaml,
    usable_from_elsewhere,
)
from pilot.config import LaunchPadRoute, SshRoute, load_cluster
from tests.helpers import free_port_in, own_account
from tests.manager.helpers import ssh_cluster, write_config


# ============================================================================ pure
def test_the_login_nodes_route_files_read_back_as_sshd_defines_them():
    # sshd(8), SSH_KNOWN_HOSTS FILE FORMAT: "[host]:port" for a port other than 22, the bare name for 22
    assert known_hosts_entry("[203.0.113.161]:2222 ssh-ed25519 AAAAC3Nza\n") == ("203.0.113.161", 2222, "AAAAC3Nza")
    assert known_hosts_entry("# comment\nlogin.example.org ssh-ed25519 AAAAB\n") == ("login.example.org", 22, "AAAAB")
    assert known_hosts_entry("|1|hashed= ssh-ed25519 AAAA\n") is None     # a hashed name cannot be read back
    assert known_hosts_entry("") is None
    # sshd(8), AUTHORIZED_KEYS FILE FORMAT: options, key type, key, comment
    keys = ("ssh-ed25519 AAAAother alice@laptop\n"
            'restrict,port-forwarding,permitopen="127.0.0.1:37117" ssh-ed25519 AAAAroute pilot-route\n')
    assert authorized_route_port(keys) == 37117
    assert authorized_route_port("ssh-ed25519 AAAAother alice@laptop\n") is None


def test_the_printed_route_line_is_a_cluster_file_line_for_the_same_route():
    route = SshRoute(port=37117, login_address="203.0.113.161", login_port=2222)
    doc = yaml.safe_load(route_yaml(route))
    assert LaunchPadRoute.model_validate(doc["launchpad_route"]).resolve("login.example.org", 22, "u") == route
    assert yaml.safe_load(route_yaml(None)) == {"launchpad_route": "direct"}


def test_launchpad_addresses_as_mongodb_connection_strings_write_them():
    assert launchpad_host_port({"host": "fs.example.org", "port": 27117}) == ("fs.example.org", 27117)
    assert launchpad_host_port({"host": "mongodb://u:p%40ss@198.51.100.1:27117/fw?tls=true", "uri_mode": True}) == \
        ("198.51.100.1", 27117)
    assert launchpad_host_port({"host": "mongodb://[fd00::1]:27117,other:1/", "uri_mode": True}) == ("fd00::1", 27117)
    assert launchpad_host_port({"host": "mongodb://fs.example.org/", "uri_mode": True}) == ("fs.example.org", 27017)
    assert launchpad_host_port({"host": "mongodb+srv://u:p@cluster0.example.net/", "uri_mode": True}) is None
    assert not usable_from_elsewhere("127.0.0.1") and not usable_from_elsewhere("::1")
    assert not usable_from_elsewhere("0.0.0.0") and not usable_from_elsewhere("localhost")
    assert usable_from_elsewhere("198.51.100.1") and usable_from_elsewhere("fs.example.org")


def _cluster_file(tmp_path: Path, **over) -> Path:
    (tmp_path / "known_hosts").write_text("login.example.org ssh-ed25519 AAAAC3Nza\n")
    doc = {"scheduler": "slurm", "host": "login.example.org", "user": "alice", "categories": ["md"],
           "known_hosts": str(tmp_path / "known_hosts"),
           "launchpad_file": "~/.pilot/my_launchpad.yaml", "work_dir": "/scratch/alice/pilot",
           "setup": "module load python\n",
           "pilot": {"walltime": "24:00:00", "nodes": 4, "cores": 68, "memory": "64G", "gpus": 2, "partition": "normal",
                     "account": "TG-ABC123", "qos": "long", "extra_directives": ["--constraint=knl"]}}
    doc.update(over)
    path = tmp_path / "clusters" / "alpha.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def _directives(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]


def test_the_probe_job_asks_for_the_least_the_pilot_settings_allow(tmp_path):
    cluster = load_cluster(_cluster_file(tmp_path))
    argv = ["python3", "-c", "print('probe')", json.dumps({"candidates": []})]
    script = render_probe_script(cluster, "alpha", "fwp.doctor.abc123", argv, "/scratch/alice/pilot/x.route")
    # sbatch(1): one node, one task, two minutes; the partition, account, qos and the site's extra lines kept
    assert _directives(script) == [
        "#SBATCH --job-name=fwp.doctor.abc123", "#SBATCH --output=/scratch/alice/pilot/pilot-%j.out",
        "#SBATCH --error=/scratch/alice/pilot/pilot-%j.err", "#SBATCH --time=00:02:00", "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=normal", "#SBATCH --account=TG-ABC123",
        "#SBATCH --qos=long", "#SBATCH --no-requeue", "#SBATCH --constraint=knl"]
    assert "module load python" in script                          # the setup lines run first
    assert "exec >>/scratch/alice/pilot/x.route 2>&1" in script    # everything after it goes to the output file
    assert "python3 -c 'print('\"'\"'probe'\"'\"')' '{\"candidates\": []}'" in script
    assert "pilot worker" not in script and "pilot_write_exit" not in script   # no worker, no exit-code file
    assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0


def test_a_cluster_template_without_the_run_block_cannot_make_the_probe_start_a_worker(tmp_path):
    own = tmp_path / "clusters" / "mine.sh.j2"
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/bash\n#SBATCH --job-name={{ job_name }}\n{{ worker_argv | join(' ') }} --launchpad-file x\n")
    cluster = load_cluster(_cluster_file(tmp_path, template="mine.sh.j2"))
    script = render_probe_script(cluster, "alpha", "fwp.doctor.abc123", ["true"], "/scratch/alice/pilot/x.route")
    assert "--launchpad-file" not in script and "#SBATCH --time=00:02:00" in script
    # a template that extends the built-in one keeps its own lines, and the probe replaces the worker
    own.write_text('{% extends "slurm.sh.j2" %}{% block extra_directives %}#SBATCH --exclusive\n{% endblock %}')
    script = render_probe_script(load_cluster(_cluster_file(tmp_path, template="mine.sh.j2")), "alpha",
                                 "fwp.doctor.abc123", ["true"], "/scratch/alice/pilot/x.route")
    assert "#SBATCH --exclusive" in script and "--launchpad-file" not in script


def _pymongo_error(uri: str, wait_ms: int = 3000) -> str:
    """The error of a real client against ``uri``. A server the client never gets to talk to (refused, TLS
    failed) costs the whole server selection timeout ``wait_ms`` (pymongo retries until then), so those cases
    pass a short one; one that answers fails at once (auth) and keeps the long one as a margin."""
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=wait_ms, connectTimeoutMS=3000)
    try:
        client.admin.command("ping")
        client.fw.fireworks.find_one({})
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    finally:
        client.close()
    raise AssertionError(f"{uri} answered")


def test_real_driver_errors_read_as_refused_auth_and_tls(mongo_uri):
    with __import__("socket").socket() as s:     # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = _pymongo_error(f"mongodb://127.0.0.1:{port}/", wait_ms=1000)
    assert describe_failure(ProbeAnswer("direct", False, error=refused, stage="database",
                                        where=f"127.0.0.1:{port}")).startswith(f"connection refused (127.0.0.1:{port})")
    parts = urlsplit(mongo_uri)
    if not parts.password:
        pytest.skip("MONGODB_URI without credentials")
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:wrong-{os.getpid()}@{parts.hostname}:{parts.port}"))
    said = describe_failure(ProbeAnswer("direct", False, error=_pymongo_error(wrong), stage="database"))
    assert said.startswith("authentication refused")
    if "tls=true" in parts.query.lower():
        # TLS without the LaunchPad's CA file: the system's CAs do not know the private CA
        query = "&".join(q for q in parts.query.split("&") if not q.lower().startswith("tlscafile"))
        said = describe_failure(ProbeAnswer("direct", False, error=_pymongo_error(urlunsplit(parts._replace(
            query=query)), wait_ms=1000), stage="database"))
        assert said.startswith("TLS failed"), said


# ============================================================================ on the clusters
def doctor_json(cfg: Path, cluster: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "doctor", cluster, "--json", *args],
                         capture_output=True, text=True, check=False, timeout=900)
    assert res.stdout, res.stderr
    doc = json.loads(res.stdout)
    (c,) = doc["clusters"]
    return {x["id"]: x for x in c["checks"]}


def queued(c, user: str, prefix: str) -> list[str]:
    """The user's jobs whose name starts with ``prefix``, as SLURM lists them (asked as root)."""
    env = dict(os.environ, SLURM_CONF=c.slurm_conf)
    out = subprocess.run(c.on_login(["squeue", "-h", "-u", user, "-t", "PD,R,CG,S", "-o", "%i %j"]), env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if len(ln.split()) == 2 and ln.split()[1].startswith(prefix)]


def scancel_all(c, user: str, prefix: str) -> None:
    ids = queued(c, user, prefix)
    if ids:
        env = dict(os.environ, SLURM_CONF=c.slurm_conf)
        subprocess.run(c.on_login(["scancel", *ids]), env=env, capture_output=True, timeout=30)


def leftovers(work: Path) -> list[str]:
    """Files of a probe job left in the work dir (its script, output, the scheduler's output files)."""
    if not work.exists():
        return []
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if p.is_file() and (".doctor." in p.name or p.name.startswith("pilot-")))


@pytest.fixture
def pilotci(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    """A config dir for pilotci (route direct), with a job name prefix of the test's own."""
    c = slurm_cluster
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    shutil.chown(lp_file, c.user, c.user)
    os.chmod(lp_file, 0o600)
    prefix = "d" + os.urandom(3).hex()

    def config(**over) -> Path:
        cluster = ssh_cluster(c, str(remote_tmp / "work"), str(lp_file), ["md"], cluster_venv, command_timeout=60,
                              launchpad_route="direct", **over)
        cfg = tmp_path / "cfg"
        shutil.rmtree(cfg, ignore_errors=True)
        return write_config(cfg, lp_file, {"pilotci": cluster}, job_name_prefix=prefix)

    try:
        yield c, config, prefix, remote_tmp / "work"
    finally:
        scancel_all(c, c.user, prefix)


@pytest.mark.slurm
def test_on_the_routed_cluster_direct_works_from_the_compute_node(pilotci):
    c, config, prefix, work = pilotci
    got = doctor_json(config(), "pilotci")
    route = got["route"]
    assert route["status"] == "pass", route
    assert route["detail"].startswith("direct works from compute node"), route["detail"]
    assert "direct: works, connect+auth" in route["detail"]
    assert list(got)[list(got).index("database") + 1] == "route"
    assert queued(c, c.user, prefix) == [] and leftovers(work) == []


@pytest.mark.slurm
def test_a_probe_job_that_cannot_start_in_time_is_a_warning_and_is_cancelled(pilotci):
    c, config, prefix, work = pilotci
    # sbatch(1) --begin: the job stays PENDING (reason BeginTime) for an hour
    got = doctor_json(config(pilot={"walltime": "5", "cores": 1, "partition": "debug",
                                    "extra_directives": ["--begin=now+3600"]}), "pilotci", "--route-timeout", "6")
    route = got["route"]
    assert route["status"] == "warn", route
    assert re.search(r"the probe job \d+ was still pending after \d+ s \(PENDING: BeginTime\)", route["detail"])
    assert "--route-timeout" in route["fix"]
    assert queued(c, c.user, prefix) == [] and leftovers(work) == []


# ---------------------------------------------------------------------------- pilotci3, an account of our own
@pytest.fixture
def account(unrouted_cluster, tmp_path):
    """A new user on pilotci3 with the test key, and two sshds of its own on the login node: one where this
    machine reaches it (the doctor's commands and its forward), one on the inner address (the compute node's
    ssh route). Its jobs are cancelled before it goes."""
    c = unrouted_cluster
    with own_account(c, tmp_path, "pd", {"outer": c.host, "inner": c.login_inner}) as acc:
        try:
            yield acc
        finally:
            scancel_all(c, acc["user"], "")


def _as(user: str, argv: list[str]) -> None:
    subprocess.run(["runuser", "-u", user, "--", *argv], check=True, timeout=60, capture_output=True)


def _cluster_launchpad_file(path: Path, uri: str, db: str, user: str, port: int | None = None) -> None:
    """The cluster's LaunchPad file, as bootstrap writes it: the session's credentials and CA, and for an ssh
    route the address of the route's end on the login node. It also sets pymongo's server selection timeout
    (2 s), as a user's LaunchPad file may: the doctor's probes wait that long, not their own 10 s, for a
    database they cannot reach (every run here tries direct from a compute node that has no route, and the
    kernel's "Network is unreachable" comes at once: pymongo only retries it until the timeout). A database
    that can be reached answers its first hello through the route within milliseconds: 2 s is a wide margin."""
    parts = urlsplit(uri)
    if port is not None:
        parts = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}")
    path.write_text(yaml.safe_dump({"host": urlunsplit(parts), "name": db, "uri_mode": True, "logdir": None,
                                    "strm_lvl": "ERROR", "mongoclient_kwargs": {"serverSelectionTimeoutMS": 2000}}))
    os.chmod(path, 0o600)
    shutil.chown(path, user, user)


def _set_up_route(acc: dict, port: int) -> None:
    """What `pilot bootstrap` does for an ssh route, by hand: a key made as the user, its line in the login
    node's authorized_keys (sshd(8): restrict, then only a local forward to 127.0.0.1:PORT), the login node's
    host key under the address and port the compute node uses."""
    c, user, home = acc["cluster"], acc["user"], acc["home"]
    dot = home / ".pilot"
    _as(user, ["mkdir", "-m", "700", "-p", str(dot)])
    _as(user, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pilot-route", "-f", str(dot / "route_key")])
    with open(home / ".ssh" / "authorized_keys", "a") as f:
        f.write(authorized_line((dot / "route_key.pub").read_text(), port) + "\n")
    (dot / "route_known_hosts").write_text(c.host_key_line(c.login_inner, acc["inner"].port))
    os.chmod(dot / "route_known_hosts", 0o600)
    shutil.chown(dot / "route_known_hosts", user, user)


def _listening(c, port: int) -> bool:
    out = subprocess.run(c.on_login(["ss", "-Htln", f"sport = :{port}"]), capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return bool(out.strip())


class Unrouted:
    """pilotci3 for the test's account: the config dir written anew for each doctor run, the cluster's LaunchPad
    file (the session's credentials and CA), this machine's LaunchPad file (the fileserver's address)."""

    def __init__(self, acc: dict, launchpad, mongo_uri: str, venv: str, tmp_path: Path) -> None:
        self.c, self.user, self.home = acc["cluster"], acc["user"], acc["home"]
        self.acc, self.uri, self.db, self.tmp = acc, mongo_uri, launchpad.db.name, tmp_path
        self.local_lp = tmp_path / "lp.yaml"
        self.local_lp.write_text(yaml.safe_dump({"host": mongo_uri, "name": self.db, "uri_mode": True,
                                                 "logdir": None, "strm_lvl": "ERROR"}))
        os.chmod(self.local_lp, 0o600)
        self.cluster_lp = self.home / "my_launchpad.yaml"
        self.lp_at()
        outer = acc["outer"]
        self.cluster = ssh_cluster(self.c, f"{self.home}/pilot", str(self.cluster_lp), ["md"], venv,
                                   command_timeout=60, host=self.c.host, port=outer.port, user=self.user,
                                   known_hosts=str(outer.known_hosts), launchpad_route="direct")
        self.prefix = "d" + os.urandom(3).hex()
        self.cfg = tmp_path / "cfg"

    def lp_at(self, port: int | None = None) -> None:
        _cluster_launchpad_file(self.cluster_lp, self.uri, self.db, self.user, port=port)

    def write(self, route_over: dict | None = None) -> Path:
        shutil.rmtree(self.cfg, ignore_errors=True)
        return write_config(self.cfg, self.local_lp, {"pilotci3": {**self.cluster, **(route_over or {})}},
                            job_name_prefix=self.prefix)

    def run(self, route_over: dict | None = None) -> dict:
        return doctor_json(self.write(route_over), "pilotci3")

    def config(self):
        from pilot.config import load_config

        return load_config(self.cfg).clusters["pilotci3"]


@pytest.fixture
def unrouted(account, launchpad, mongo_uri, cluster_venv, tmp_path) -> Unrouted:
    return Unrouted(account, launchpad, mongo_uri, cluster_venv, tmp_path)


def _the_fix_names_the_ssh_route_that_works(u: Unrouted) -> tuple[int, str]:
    """Steps 1 and 2: direct only, then the route set up as bootstrap sets it up; returns its port and line."""
    # 1. direct, no route key: the login node reaches the database, the compute node has no route
    got = u.run()
    assert got["database"]["status"] == "pass", got["database"]
    route = got["route"]
    assert route["status"] == "fail", route
    assert "direct: no route to host" in route["detail"] and "Network is unreachable" in route["detail"]
    assert "ssh: not tried: there is no ~/.pilot/route_key on the cluster" in route["detail"]
    assert "docs/deploying.md#when-neither-route-works" in route["fix"]
    assert "write `launchpad_route: ssh`" in route["fix"] and "bootstrap pilotci3`" in route["fix"]
    assert "launchpad_route: direct" not in route["fix"]

    # 2. the route set up as bootstrap sets it up: the check tries it, and prints its exact line
    port = free_port_in(u.c.login_netns, "127.0.0.1")
    _set_up_route(u.acc, port)
    route = u.run()["route"]
    assert route["status"] == "fail", route
    assert "the configured route, direct, does not work" in route["detail"]
    assert "direct: no route to host" in route["detail"] and "ssh: works, connect+auth" in route["detail"]
    line = (f"launchpad_route: {{via: ssh, port: {port}, login_address: {u.c.login_inner}, "
            f"login_port: {u.acc['inner'].port}}}")
    assert f"write `{line}` in" in route["fix"], route["fix"]
    assert not _listening(u.c, port)        # the doctor's forward lived as long as the check
    return port, re.search(r"write `(launchpad_route: [^`]*)`", route["fix"]).group(1)


@pytest.mark.slurm
def test_on_the_unrouted_cluster_the_check_finds_the_ssh_route_and_its_line_works(unrouted):
    u = unrouted
    port, written = _the_fix_names_the_ssh_route_that_works(u)

    # 3. the fix applied (and the cluster's LaunchPad file at the route's end, as bootstrap writes it)
    u.lp_at(port)
    got = u.run(yaml.safe_load(written))
    assert got["database"]["status"] == "pass" and f"port {port}" in got["database"]["detail"], got["database"]
    route = got["route"]
    assert route["status"] == "pass", route
    assert route["detail"].startswith("ssh works from compute node"), route["detail"]
    assert "direct: no route to host" in route["detail"]
    assert not _listening(u.c, port)

    # 4. the manager's forward holds the port: the doctor's own is refused, and the probe goes through the manager's
    from pilot.manager.routes import RouteKeeper, launchpad_target

    manager_forward = RouteKeeper("pilotci3", u.config(), launchpad_target(SimpleNamespace(
        host=u.uri, port=None, uri_mode=True)))
    manager_forward.start()
    try:
        assert manager_forward.wait_up(60), manager_forward.state()
        got = u.run(yaml.safe_load(written))
        assert got["database"]["status"] == "pass", got["database"]
        route = got["route"]
        assert route["status"] == "pass" and route["detail"].startswith("ssh works from compute node"), route
        assert (f"forward: the login node's sshd would not open 127.0.0.1:{port} for the doctor: most likely the "
                "manager's own forward holds it") in route["detail"]
        assert manager_forward.state().up and _listening(u.c, port)
    finally:
        manager_forward.stop()
    assert queued(u.c, u.user, u.prefix) == [] and leftovers(Path(u.home) / "pilot") == []


@pytest.mark.slurm
def test_without_a_forward_the_database_check_of_an_ssh_route_warns_and_says_why(unrouted):
    """A doctor that cannot open the forward (no keeper handed in, as a library caller may build it) and no
    manager: the login node's end of the route is closed; the check says why instead of failing."""
    from pilot.checks.doctor import CheckStatus, ClusterDoctor

    port = free_port_in(unrouted.c.login_netns, "127.0.0.1")
    unrouted.lp_at(port)
    # the probe waits the LaunchPad file's server selection timeout (2 s) for the closed port
    unrouted.write({"launchpad_route": {"via": "ssh", "port": port}})
    doc = ClusterDoctor("pilotci3", unrouted.config(), config_dir=unrouted.cfg)
    try:
        res = doc.check_database()
    finally:
        doc.close()
    assert res.status is CheckStatus.WARN, res
    assert f"(127.0.0.1:{port}), which is open only while a forward is up" in res.detail
    assert "manager start`" in (res.fix or "")


@pytest.mark.slurm
def test_the_probe_output_is_read_while_the_job_still_appends_to_it(slurm_cluster, remote_tmp):
    """The doctor polls the probe's output while the job appends to it (``exec >>``): a copy that sees the file
    grow between its stat and its read (the SFTP copy's EIO) is tried again, not reported as unreadable."""
    from pilot.checks.doctor_route import RouteChecks
    from pilot.transport.ssh import SSHTransport

    out = remote_tmp / "probe.route"
    out.write_text("")
    shutil.chown(out, slurm_cluster.user, slurm_cluster.user)
    stop = threading.Event()

    def append() -> None:   # a probe writing its lines, here for 0.4 s without a pause, then done
        end = time.monotonic() + 0.4
        with open(out, "a") as fh:
            i = 0
            while time.monotonic() < end and not stop.is_set():
                fh.write(f"PILOT-PROBE line {i:07d} " + "x" * 40 + "\n")
                fh.flush()
                i += 1

    writer = threading.Thread(target=append)
    with SSHTransport(**slurm_cluster.ssh_kwargs(), name=slurm_cluster.name) as t:
        writer.start()
        try:
            time.sleep(0.1)
            texts = [RouteChecks._read_remote(SimpleNamespace(transport=t), str(out)) for _ in range(2)]
        finally:
            stop.set()
            writer.join(30)
    for text in texts:
        assert text is not None and all(line.startswith("PILOT-PROBE line ") for line in text.splitlines()[:-1])
