"""Pilots reach the LaunchPad across the test network, as in the real deployment (docs/deploying.md).

The session's LaunchPad (tests/conftest.py ``mongo_uri``) is the embedded server on the fileserver's address,
with authentication and TLS: pilots on the routed cluster connect to it ``direct``; pilots on the unrouted
cluster (pilotci3: its compute node has no route to the fileserver, tests/infra/services.sh) go through the
``ssh`` route: the manager's remote forward on the login node's loopback, reached by each pilot's ``ssh -L``.
The route is cut mid-run by killing the login node's sshd process that holds the forward; the manager puts it
back, and every Firework still ends COMPLETED with exactly one launch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from pilot.config import load_config
from pilot.manager.cycle import Manager
from tests.helpers import OwnSshd, free_port_in, start_route_sshd, wait_for
from tests.manager.helpers import add_sleepers, fw_states, launches_per_fw, run_cycles_until, ssh_cluster, write_config

pytestmark = pytest.mark.slurm


def scancel_prefix(c, prefix: str) -> None:
    """Cancel the test's jobs on cluster ``c`` (asked of SLURM directly, as root)."""
    env = dict(os.environ, SLURM_CONF=c.slurm_conf)
    out = subprocess.run(c.on_login(["squeue", "-h", "-u", c.user, "-o", "%i %j"]), env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    ids = [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[1].startswith(prefix)]
    if ids:
        subprocess.run(c.on_login(["scancel", *ids]), env=env, capture_output=True, timeout=30)


def cluster_launchpad_file(path: Path, uri: str, name: str, user: str, host: str | None = None,
                           port: int | None = None) -> Path:
    """A LaunchPad file for the cluster user (0600, theirs): the session's URI (credentials, TLS CA), with its
    address replaced by ``host:port`` when given (the route's end on the login node)."""
    parts = urlsplit(uri)
    if host is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        parts = parts._replace(netloc=(userinfo + "@" if userinfo else "") + f"{host}:{port}")
    path.write_text(yaml.safe_dump({"host": urlunsplit(parts), "name": name, "uri_mode": True, "logdir": None,
                                    "strm_lvl": "ERROR"}))
    os.chmod(path, 0o600)
    shutil.chown(path, user, user)
    return path


def run_until_done(mgr: Manager, launchpad, n: int, timeout: float, during=None) -> None:
    """Manager cycles until the ``n`` Fireworks are COMPLETED; ``during()`` is called after every cycle."""
    def done() -> bool:
        if during is not None:
            during()
        return fw_states(launchpad) == {"COMPLETED": n}

    mgr.run_cycle()
    run_cycles_until(mgr, done, timeout=timeout, interval=2)


# ---------------------------------------------------------------------------------------------- direct
def test_pilots_on_the_routed_cluster_complete_fireworks_direct_with_tls_and_auth(
        launchpad, mongo_uri, slurm_cluster, remote_tmp, cluster_venv, tmp_path):
    parts = urlsplit(mongo_uri)
    if os.environ.get("MONGODB_URI") is None:   # the embedded server: always credentials, TLS off loopback
        assert parts.username and parts.password and "tls=true" in parts.query, "the session LaunchPad"
    c = slurm_cluster
    lp_file = cluster_launchpad_file(remote_tmp / "my_launchpad.yaml", mongo_uri, launchpad.db.name, c.user)
    cluster = ssh_cluster(c, str(remote_tmp / "work"), str(lp_file), ["md"], cluster_venv,
                          launchpad_route="direct", fireworks_per_pilot=3)
    prefix = "t" + os.urandom(3).hex()
    mgr = Manager(load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci": cluster}, job_name_prefix=prefix)),
                  launchpad)
    try:
        add_sleepers(launchpad, "md", 3, 0.2)
        run_until_done(mgr, launchpad, 3, timeout=240)
        assert set(launches_per_fw(launchpad).values()) == {1}
        assert mgr.routes.states() == {}   # direct: no forward anywhere
    finally:
        mgr.close()
        scancel_prefix(c, prefix)


# ------------------------------------------------------------------------------------------------ ssh
@pytest.fixture
def route_home(unrouted_cluster) -> Iterator[Path]:
    """The cluster user's ``~/.pilot`` with the route's key (made as that user, as ``pilot bootstrap`` makes it
    on the cluster); removes exactly the files this test created, and restores ``route_known_hosts``."""
    c = unrouted_cluster
    home = Path(os.path.expanduser(f"~{c.user}"))
    dot = home / ".pilot"
    made_dir = not dot.exists()
    key = dot / "route_key"
    made_key = not key.exists()
    known = dot / "route_known_hosts"
    old_known = known.read_bytes() if known.exists() else None
    if made_dir:
        dot.mkdir(mode=0o700)
        shutil.chown(dot, c.user, c.user)
    if made_key:
        subprocess.run(["runuser", "-u", c.user, "--", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "pilot-route", "-f", str(key)], check=True, timeout=60)
    try:
        yield dot
    finally:
        if made_key:
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
        if old_known is None:
            known.unlink(missing_ok=True)
        else:
            known.write_bytes(old_known)
        if made_dir:
            shutil.rmtree(dot, ignore_errors=True)


@pytest.fixture
def route_sshd(unrouted_cluster, route_home, tmp_path) -> Iterator[tuple[OwnSshd, int]]:
    """An sshd of the test's own on the login node's inner address (where the compute node reaches it), whose
    authorized_keys holds the route key restricted as ``pilot bootstrap`` writes it; and the forward's port."""
    c = unrouted_cluster
    port = free_port_in(c.login_netns, "127.0.0.1")
    keys_dir = Path(tempfile.mkdtemp(prefix="pilot-route-e2e-", dir="/run"))   # StrictModes: not below /tmp
    os.chmod(keys_dir, 0o755)
    sshd = start_route_sshd(c, route_home / "route_key.pub", port, keys_dir, tmp_path / "sshd",
                            route_home / "route_known_hosts")
    try:
        yield sshd, port
    finally:
        sshd.stop()
        shutil.rmtree(keys_dir, ignore_errors=True)


def forward_holder(c, port: int) -> int | None:
    """The PID of the login node's process listening on 127.0.0.1:PORT (sshd's session of the manager's forward),
    as the kernel reports it (``ss`` inside the login node's namespace)."""
    out = subprocess.run(c.on_login(["ss", "-Htlnp", f"sport = :{port}"]), capture_output=True, text=True,
                         timeout=30, check=True).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def test_pilots_on_the_unrouted_cluster_complete_fireworks_over_ssh_and_survive_a_cut_route(
        launchpad, mongo_uri, unrouted_cluster, route_sshd, remote_tmp, cluster_venv, tmp_path):
    c = unrouted_cluster
    sshd, port = route_sshd
    lp_file = cluster_launchpad_file(remote_tmp / "my_launchpad.yaml", mongo_uri, launchpad.db.name, c.user,
                                     host="127.0.0.1", port=port)
    route = {"via": "ssh", "port": port, "login_address": c.login_inner, "login_port": sshd.port}
    cluster = ssh_cluster(c, str(remote_tmp / "work"), str(lp_file), ["md"], cluster_venv, launchpad_route=route,
                          pilot={"walltime": "5", "cores": 1, "partition": "debug"}, fireworks_per_pilot=6,
                          idle_timeout=20)
    prefix = "t" + os.urandom(3).hex()
    mgr = Manager(load_config(write_config(tmp_path / "cfg", lp_file, {"pilotci3": cluster}, job_name_prefix=prefix)),
                  launchpad)
    cut: list[int] = []
    in_flight: dict[str, int] = {}

    def cut_the_route_once() -> None:
        """When the second Firework runs, kill the sshd process that holds the manager's forward."""
        if cut or fw_states(launchpad).get("COMPLETED", 0) < 1:
            return
        pid = forward_holder(c, port)
        if pid is not None:
            in_flight.update(fw_states(launchpad))
            os.kill(pid, signal.SIGKILL)   # the login node's sshd session of the route: the route drops
            cut.append(pid)

    try:
        # one pilot runs them in turn: about 8 s of work still ahead when the route is cut after the first
        add_sleepers(launchpad, "md", 6, 2)
        run_until_done(mgr, launchpad, 6, timeout=300, during=cut_the_route_once)
        assert cut, "the route was never cut: the test did not test recovery"
        assert in_flight.get("COMPLETED", 0) < 6, in_flight   # cut while the pilot still had work
        assert set(launches_per_fw(launchpad).values()) == {1}    # none lost, none run twice
        wait_for(lambda: forward_holder(c, port) not in (None, cut[0]), 60, 1, "the forward back on the login node")
        state = mgr.routes.states()["pilotci3"]
        assert state.up and state.connects >= 2
    finally:
        mgr.close()
        scancel_prefix(c, prefix)
    deadline = time.monotonic() + 30
    while forward_holder(c, port) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert forward_holder(c, port) is None   # the manager's close took its forward down
