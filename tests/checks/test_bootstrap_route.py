"""``pilot bootstrap`` for TLS and ``launchpad_route: ssh``: the CA, the route's key, its authorized_keys line,
the login node's host key, the cluster's LaunchPad file (``pilot/checks/bootstrap_route.py``).

The pure pieces are checked against what the real programs say: ``ssh-keygen -F`` finds the known_hosts line
under the name ssh looks up, sshd(8)'s "AUTHORIZED_KEYS FILE FORMAT" gives the option syntax. The real test
bootstraps a fresh account on ``pilotci3``'s login node (a new Unix user with only the test key, reached through
an sshd of its own on the login node, same host key: nothing shared is touched), twice (the second run changes
nothing), once more with another port (the route line is replaced, not added), and then uses what it wrote: a
route from the compute node, as that user, with the key the bootstrap made there and the host key it wrote,
through a second sshd of that account on the login node's inner address, to a listener on the login node's
loopback. Everything is stopped by PID and the user is removed.
"""

from __future__ import annotations

import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilot.checks.bootstrap import BootstrapError, BootstrapOptions, Reporter, bootstrap
from pilot.checks.bootstrap_route import (
    authorized_line,
    ca_file_of,
    known_hosts_line,
    with_ca_file,
    with_route_line,
)
from tests.helpers import OwnSshd, free_port_in, own_account, stop_process_tree

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGv8lb1Wq1hXhn2c6gZ1b3y5W8n2t5v4yQ0bq2m3p4sT pilot-route"

#: the options of the route's authorized_keys line (sshd(8), AUTHORIZED_KEYS FILE FORMAT), up to permitopen's value
RESTRICT = 'restrict,port-forwarding,command="/bin/false",permitopen='



# ============================================================================ pure
def test_the_ca_file_is_found_and_replaced_where_pymongo_reads_it():
    kwargs = {"host": "198.51.100.1", "mongoclient_kwargs": {"tls": True, "tlsCAFile": "/srv/lp/tls/ca.pem"}}
    assert ca_file_of(kwargs) == "/srv/lp/tls/ca.pem"
    assert with_ca_file(kwargs, "/home/u/.pilot/launchpad-ca.pem")["mongoclient_kwargs"] == \
        {"tls": True, "tlsCAFile": "/home/u/.pilot/launchpad-ca.pem"}
    # pymongo matches option names without regard to case, in keyword arguments and in the URI
    assert ca_file_of({"mongoclient_kwargs": {"TLSCAFILE": "/x/ca.pem"}}) == "/x/ca.pem"
    uri = {"host": "mongodb://u:p%40w@198.51.100.1:27017/fw?authSource=admin&tls=true&tlscafile=/srv/ca.pem",
           "uri_mode": True}
    assert ca_file_of(uri) == "/srv/ca.pem"
    moved = with_ca_file(uri, "/home/u/.pilot/launchpad-ca.pem")["host"]
    assert moved == ("mongodb://u:p%40w@198.51.100.1:27017/fw?authSource=admin&tls=true"
                     "&tlscafile=/home/u/.pilot/launchpad-ca.pem")
    assert ca_file_of({"host": "h", "mongoclient_kwargs": {"tls": True}}) is None  # the system's CAs: nothing
    assert ca_file_of({"host": "h"}) is None


def test_the_route_line_allows_one_forward_and_replaces_an_older_one():
    line = authorized_line(KEY, 37117)
    assert line == ('restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:37117" ssh-ed25519 '
                    'AAAAC3NzaC1lZDI1NTE5AAAAIGv8lb1Wq1hXhn2c6gZ1b3y5W8n2t5v4yQ0bq2m3p4sT pilot-route')
    mine = "ssh-rsa AAAAB3Nza me@laptop\n# a comment\n"
    once = with_route_line(mine, line)
    assert once == mine + line + "\n"
    assert with_route_line(once, line) == once                                  # idempotent
    moved = with_route_line(once, authorized_line(KEY, 20001))
    assert moved == mine + authorized_line(KEY, 20001) + "\n"                  # replaced, not added
    assert with_route_line("ssh-rsa AAAAB3Nza me@laptop", line) == "ssh-rsa AAAAB3Nza me@laptop\n" + line + "\n"
    assert with_route_line("", line) == line + "\n"


@pytest.mark.parametrize("port, name", [(22, "203.0.113.161"), (2222, "[203.0.113.161]:2222")])
def test_the_known_hosts_line_is_found_under_the_name_ssh_looks_up(tmp_path, port, name):
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line("203.0.113.161", port, "ssh-ed25519", KEY.split()[1]))
    res = subprocess.run(["ssh-keygen", "-F", name, "-f", str(kh)], capture_output=True, text=True, timeout=30,
                         check=False)
    assert res.returncode == 0 and KEY.split()[1] in res.stdout, res.stdout + res.stderr


def test_db_host_and_the_ssh_route_exclude_each_other(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "clusters").mkdir(parents=True)
    (cfg / "pilot.yaml").write_text(f"launchpad_file: {tmp_path / 'lp.yaml'}\n")
    (tmp_path / "known_hosts").write_text("")
    (cfg / "clusters" / "c.yaml").write_text(
        f"scheduler: slurm\nhost: login.example.org\nknown_hosts: {tmp_path / 'known_hosts'}\n"
        "categories: [md]\nlaunchpad_file: ~/.pilot/lp.yaml\n"
        "work_dir: /scratch/me\npilot: {walltime: '1:00:00'}\nlaunchpad_route: {via: ssh, port: 37117}\n")
    with pytest.raises(BootstrapError, match="--db-host .* launchpad_route: ssh"):
        bootstrap(cfg, "c", BootstrapOptions(db_host="198.51.100.1"))


# ============================================================================ a fresh account on pilotci3
@pytest.fixture
def fresh_account(unrouted_cluster, tmp_path):
    """A new user on pilotci3 with only the test key, two sshds of its own on the login node (one on the
    address the fileserver reaches, for bootstrap; one on the inner address, for the compute node's route)."""
    c = unrouted_cluster
    with own_account(c, tmp_path, "pr", {"outer": c.host, "inner": c.login_inner}) as acc:
        yield acc


def _make_ca(path: Path) -> bytes:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=test LaunchPad CA", "-days", "1", "-keyout", str(path.with_suffix(".key")),
                    "-out", str(path)], check=True, capture_output=True, timeout=60)
    return path.read_bytes()


def _config(fa: dict[str, Any], tmp_path: Path, port: int, login_address: str | None = None,
            login_port: int | None = None) -> Path:
    """A config dir with cluster ``fresh`` (launchpad_route: ssh) and a LaunchPad file with TLS and a password."""
    cfg = tmp_path / "cfg"
    (cfg / "clusters").mkdir(parents=True, exist_ok=True)
    ca = tmp_path / "lp" / "ca.pem"
    if not ca.exists():
        ca.parent.mkdir()
        _make_ca(ca)
    lp = tmp_path / "lp" / "my_launchpad.yaml"
    lp.write_text(yaml.safe_dump({"host": "198.51.100.1", "port": 27017, "name": "fireworks", "username": "admin",
                                  "password": "s3cret/@pw", "authsource": "admin", "uri_mode": False,
                                  "mongoclient_kwargs": {"tls": True, "tlsCAFile": str(ca)}}))
    (cfg / "pilot.yaml").write_text(f"launchpad_file: {lp}\nlog_dir: {tmp_path / 'logs'}\n")
    outer, inner, c = fa["outer"], fa["inner"], fa["cluster"]
    route = {"via": "ssh", "port": port, "login_address": login_address or c.login_inner,
             "login_port": login_port or inner.port}
    (cfg / "clusters" / "fresh.yaml").write_text(yaml.safe_dump({
        "scheduler": "slurm", "host": outer.host, "port": outer.port, "user": fa["user"], "identity_file": c.key,
        "known_hosts": str(outer.known_hosts), "categories": ["md"], "launchpad_file": "~/.pilot/my_launchpad.yaml",
        "work_dir": f"{fa['home']}/pilot", "pilot": {"walltime": "5"}, "launchpad_route": route}))
    return cfg


def _run(cfg: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The launchpad steps of ``pilot bootstrap`` (no venv: that part has its own test) against the cluster."""
    from pilot.checks.bootstrap import launchpad_doc, launchpad_step_count, launchpad_steps
    from pilot.checks.bootstrap_context import BootstrapContext
    from pilot.config import load_config
    from pilot.transport.clusters import transport_for

    config = load_config(cfg)
    cluster = config.cluster("fresh")
    out: list[str] = []
    rep = Reporter(total=0, echo=lambda text="", nl=True: out.append(text))
    tr = transport_for("fresh", cluster)
    try:
        tr.connect()
        ctx = BootstrapContext(name="fresh", cluster=cluster, config=config, opts=BootstrapOptions(), rep=rep,
                               transport=tr)
        found = launchpad_doc(ctx)
        rep.total = launchpad_step_count(ctx, found)
        assert launchpad_steps(ctx, found) == "~/.pilot/my_launchpad.yaml"
    finally:
        tr.close()
    return out, rep.events


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(home: Path) -> dict[str, tuple[bytes, int, float]]:
    files = [home / ".ssh" / "authorized_keys", *sorted((home / ".pilot").iterdir())]
    return {p.name: (p.read_bytes(), _mode(p), p.stat().st_mtime) for p in files}


@pytest.mark.slurm
def test_bootstrap_sets_up_the_route_and_the_ca_idempotently_and_the_route_works(fresh_account, tmp_path):
    fa, c = fresh_account, fresh_account["cluster"]
    home, user = fa["home"], fa["user"]
    uid = pwd.getpwnam(user).pw_uid
    port = free_port_in(c.login_netns, "127.0.0.1")
    cfg = _config(fa, tmp_path, port)
    out, events = _run(cfg)
    assert [e["title"].split(" ")[0] for e in events] == ["copying", "making", "allowing", "writing", "writing"]

    pilot_dir = home / ".pilot"
    assert _mode(pilot_dir) == 0o700 and pilot_dir.stat().st_uid == uid
    for name in ("route_key", "route_key.pub", "route_known_hosts", "launchpad-ca.pem", "my_launchpad.yaml"):
        assert _mode(pilot_dir / name) == 0o600 and (pilot_dir / name).stat().st_uid == uid, name
    # the key was made there, by the account itself (ssh-keygen's own format), and never came here
    private = (pilot_dir / "route_key").read_text()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public = (pilot_dir / "route_key.pub").read_text().split()
    assert public[0] == "ssh-ed25519" and public[2] == "pilot-route"
    body = private.splitlines()[1]
    assert all(body not in line for line in out)
    for f in tmp_path.rglob("*"):
        if f.is_file() and not f.is_relative_to(tmp_path / "sshd-outer") and not f.is_relative_to(
                tmp_path / "sshd-inner"):
            assert body.encode() not in f.read_bytes(), f
    # authorized_keys: the test key as it was, and the route line
    auth = (home / ".ssh" / "authorized_keys").read_text().splitlines()
    assert auth[0] == Path(f"{c.key}.pub").read_text().strip()
    assert auth[1:] == [f'{RESTRICT}"127.0.0.1:{port}" {public[0]} {public[1]} pilot-route']
    # the host key is the login node's own (its .pub file), under the name the compute node uses
    assert (pilot_dir / "route_known_hosts").read_text() == c.host_key_line(c.login_inner, fa["inner"].port)
    assert (pilot_dir / "launchpad-ca.pem").read_bytes() == (tmp_path / "lp" / "ca.pem").read_bytes()
    lp = yaml.safe_load((pilot_dir / "my_launchpad.yaml").read_text())
    assert (lp["host"], lp["port"], lp["password"]) == ("127.0.0.1", port, "s3cret/@pw")
    assert lp["mongoclient_kwargs"] == {"tls": True, "tlsCAFile": f"{home}/.pilot/launchpad-ca.pem"}

    # again: nothing changes, and every step says so
    before = _snapshot(home)
    out2, events2 = _run(cfg)
    assert _snapshot(home) == before
    assert [e["result"].split(":")[0].split(";")[0] for e in events2] == [
        "already there with the same content and mode 600", "already there", "already there",
        "already there with the same key and mode 600", "already there with the same content and mode 600"]

    # another port: the line is replaced, the key kept
    port2 = free_port_in(c.login_netns, "127.0.0.1")
    _run(_config(fa, tmp_path, port2))
    auth = (home / ".ssh" / "authorized_keys").read_text().splitlines()
    assert auth[1:] == [f'{RESTRICT}"127.0.0.1:{port2}" {public[0]} {public[1]} pilot-route']
    assert (pilot_dir / "route_key").read_text() == private

    # and the route works with what bootstrap wrote: compute node -> login node's inner sshd -> loopback port2
    _route_works(fa, port2, tmp_path)


def _route_works(fa: dict[str, Any], port: int, tmp_path: Path) -> None:
    from tests.worker.test_tunnel import RELAY, Driver

    c = fa["cluster"]
    echo = subprocess.Popen(c.on_login([sys.executable, "-c", RELAY, str(port)]), stdout=subprocess.PIPE)
    drv = None
    try:
        assert echo.stdout is not None and echo.stdout.readline() == b"listening\n"
        drv = Driver(c, {"address": c.login_inner, "ssh_port": fa["inner"].port, "remote_port": port,
                         "user": fa["user"], "key": f"{fa['home']}/.pilot/route_key",
                         "known_hosts": f"{fa['home']}/.pilot/route_known_hosts"}, tmp_path / "driver.log")
        hello = drv.read()
        assert "error" not in hello, hello
        assert drv.ask("echo 100000") == {"ok": True, "n": 100000}
        assert drv.ask("stop")["stopped"] is True
    finally:
        if drv is not None:
            drv.stop()
        stop_process_tree(echo)


@pytest.mark.slurm
def test_a_login_address_of_another_machine_is_caught(fresh_account, tmp_path):
    """login_address:login_port naming another sshd (its own host key) than the login node bootstrap connected
    to: the login node, asked with ssh-keyscan, does not confirm the verified key, and no host key is written."""
    c = fresh_account["cluster"]
    other_key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True, timeout=60)
    other = OwnSshd(c, tmp_path / "sshd-other", user=fresh_account["user"], host=c.login_inner)
    other.config.write_text("\n".join(f"HostKey {other_key}" if ln.startswith("HostKey ") else ln
                                      for ln in other.config.read_text().splitlines()) + "\n")
    other.start()
    try:
        cfg = _config(fresh_account, tmp_path, 30000, login_port=other.port)
        with pytest.raises(BootstrapError, match="offers other host keys"):
            _run(cfg)
    finally:
        other.stop()
    assert not (fresh_account["home"] / ".pilot" / "route_known_hosts").exists()
