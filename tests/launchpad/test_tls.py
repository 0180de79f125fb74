"""The embedded LaunchPad server off loopback: TLS always on, verified with its own CA, through real clients.

Servers are real ``pilot launchpad serve`` processes (tests.helpers.EmbeddedServer, stopped by PID) on the test
fileserver address 198.51.100.1 (tests/infra/services.sh puts it on ``lo``; RFC 5737, documentation only) or on
127.0.0.1 with ``--tls``. Clients are real: pymongo, FireWorks' LaunchPad, Python's ``ssl``; certificates are
read back with ``openssl`` (a program this project does not write), and the expected names are the ones asked for.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import bson
import pymongo
import pymongo.errors
import pytest
import yaml

from tests.helpers import EmbeddedServer

ADDRESS = "198.51.100.1"
PILOT = [sys.executable, "-m", "pilot"]


def _have_address(addr: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


@pytest.fixture
def address() -> str:
    if not _have_address(ADDRESS):
        pytest.skip(f"{ADDRESS} is not an address of this machine (tests/infra/services.sh puts it on lo)")
    return ADDRESS


@pytest.fixture
def serve(tmp_path):
    """Start embedded servers of this test (their data dirs under tmp_path); all stopped by PID afterwards."""
    servers: list[EmbeddedServer] = []

    def start(host: str, *extra: str, data: Path | None = None) -> EmbeddedServer:
        s = EmbeddedServer(data or tmp_path / "data", host=host, extra_args=list(extra)).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop(signal.SIGKILL)


def tls_uri(server: EmbeddedServer) -> str:
    """The admin's URI (credentials from DATA/my_launchpad.yaml); with TLS it names the data dir's CA."""
    uri = server.uri
    assert "tls=true" in uri and quote(str(ca_of(server))) in uri, uri
    return uri


def ca_of(server: EmbeddedServer) -> Path:
    return server.data_dir / "tls" / "ca.pem"


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def san_of(pem: Path) -> set[str]:
    """The certificate's SANs as ``openssl x509`` prints them, as a set of plain names and addresses."""
    out = openssl("x509", "-in", str(pem), "-noout", "-ext", "subjectAltName")
    names = set()
    for item in out.split("\n", 1)[1].replace("\n", " ").split(","):
        kind, _, value = item.strip().partition(":")
        names.add(str(ipaddress.ip_address(value)) if kind == "IP Address" else value)
    return names


def ca_fingerprint(pem: Path) -> str:
    return openssl("x509", "-in", str(pem), "-noout", "-fingerprint", "-sha256").strip()


def hello_bytes() -> bytes:
    """A plain-text OP_MSG ``hello`` (MongoDB wire protocol: header, flags, one kind-0 section)."""
    body = struct.pack("<I", 0) + b"\x00" + bson.encode({"hello": 1, "$db": "admin"})
    return struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body


# ------------------------------------------------------------------------------------------ connecting
def test_tls_client_with_the_ca_works_and_plain_clients_are_refused(serve, address):
    srv = serve(address)
    info = json.loads((srv.data_dir / "server.json").read_text())
    assert (info["host"], info["listen"], info["tls"]) == (address, address, True)
    # the admin's LaunchPad file names this address and the CA to verify it with (what FireWorks passes on)
    admin = yaml.safe_load((srv.data_dir / "my_launchpad.yaml").read_text())
    assert (admin["host"], admin["port"]) == (address, srv.port)
    assert admin["mongoclient_kwargs"] == {"tls": True, "tlsCAFile": str(ca_of(srv))}

    with pymongo.MongoClient(tls_uri(srv), serverSelectionTimeoutMS=10000) as c:
        c.tlstest.things.insert_one({"x": 1})
        assert c.tlstest.things.find_one({}, {"_id": 0}) == {"x": 1}

    # a client without TLS never gets a MongoDB answer: the server closes it at the handshake
    t0 = time.monotonic()
    with pymongo.MongoClient(f"mongodb://{address}:{srv.port}/", serverSelectionTimeoutMS=2000) as plain, \
            pytest.raises((pymongo.errors.ServerSelectionTimeoutError, pymongo.errors.AutoReconnect)):
        plain.admin.command("ping")
    assert time.monotonic() - t0 < 10
    with socket.create_connection((address, srv.port), timeout=10) as raw:
        raw.sendall(hello_bytes())
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    # at most a TLS alert record (content type 21), never a MongoDB reply
    assert answer == b"" or answer[0] == 21, answer[:40]
    log = srv.log_path.read_text()
    assert "TLS handshake with" in log and "a client without TLS?" in log

    # and it keeps serving the others
    with pymongo.MongoClient(tls_uri(srv), serverSelectionTimeoutMS=10000) as c:
        assert c.tlstest.things.count_documents({}) == 1


def test_a_client_that_trusts_another_ca_is_refused(serve, address, tmp_path):
    srv = serve(address)
    other_key, other_ca = tmp_path / "other.key", tmp_path / "other.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=another CA", "-keyout", str(other_key), "-out", str(other_ca))
    uri = tls_uri(srv).replace(quote(str(ca_of(srv))), quote(str(other_ca)))
    assert quote(str(other_ca)) in uri
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000) as c, \
            pytest.raises(pymongo.errors.ServerSelectionTimeoutError) as exc:
        c.admin.command("ping")
    assert "certificate verify failed" in str(exc.value)
    # the system's CAs do not vouch for it either
    ctx = ssl.create_default_context()
    with socket.create_connection((address, srv.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname=address)


def test_the_certificate_holds_the_names_asked_for_and_no_other_name_verifies(serve, address):
    srv = serve(address, "--tls-name", "fs.example.org", "--tls-name", "203.0.113.7")
    asked = {"localhost", "127.0.0.1", "::1", address, "fs.example.org", "203.0.113.7"}
    assert san_of(srv.data_dir / "tls" / "server.pem") == asked

    # what a verifying client sees on the wire (Python's ssl, the CA as the only trust anchor)
    ctx = ssl.create_default_context(cafile=str(ca_of(srv)))
    for name in ("fs.example.org", address):
        with socket.create_connection((address, srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            seen = {v.strip() for _k, v in tls.getpeercert()["subjectAltName"]}
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert {str(ipaddress.ip_address(v)) if ":" in v or v[0].isdigit() else v for v in seen} == asked
    # a name that is not in the certificate: hostname mismatch
    with socket.create_connection((address, srv.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError) as exc:
        ctx.wrap_socket(raw, server_hostname="db.example.org")
    assert "mismatch" in str(exc.value).lower() or "doesn't match" in str(exc.value)


def test_loopback_is_plain_unless_asked(serve, tmp_path):
    srv = serve("127.0.0.1")
    assert json.loads((srv.data_dir / "server.json").read_text())["tls"] is False
    assert not (srv.data_dir / "tls").exists()
    assert yaml.safe_load((srv.data_dir / "my_launchpad.yaml").read_text())["mongoclient_kwargs"] == {}
    with pymongo.MongoClient(srv.uri, serverSelectionTimeoutMS=10000) as c:
        assert c.admin.command("ping")["ok"] == 1.0


def test_tls_on_loopback_on_request(serve):
    srv = serve("127.0.0.1", "--tls")
    assert json.loads((srv.data_dir / "server.json").read_text())["tls"] is True
    uri = tls_uri(srv)
    for host in ("127.0.0.1", "localhost"):  # both in the certificate
        with pymongo.MongoClient(uri.replace("127.0.0.1:", f"{host}:"), serverSelectionTimeoutMS=10000) as c:
            assert c.admin.command("ping")["ok"] == 1.0
    with pymongo.MongoClient(f"mongodb://127.0.0.1:{srv.port}/", serverSelectionTimeoutMS=2000) as plain, \
            pytest.raises((pymongo.errors.ServerSelectionTimeoutError, pymongo.errors.AutoReconnect)):
        plain.admin.command("ping")


def test_a_silent_client_does_not_hold_up_others_and_is_closed_after_the_handshake_timeout(serve, address):
    srv = serve(address)
    with socket.create_connection((address, srv.port), timeout=30) as silent:
        t0 = time.monotonic()
        with pymongo.MongoClient(tls_uri(srv), serverSelectionTimeoutMS=5000) as c:
            assert c.admin.command("ping")["ok"] == 1.0
        assert time.monotonic() - t0 < 5
        assert silent.recv(1) == b""  # closed by the server (10 s handshake timeout), long before ours (30 s)
        assert time.monotonic() - t0 < 25


# ------------------------------------------------------------------------------------------ files
def test_tls_files_are_private_and_the_ca_is_reused_when_a_name_is_added(serve, address, tmp_path):
    data = tmp_path / "data"
    srv = serve(address, "--tls-name", "a.example.org", data=data)
    tls_dir = data / "tls"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in tls_dir.iterdir()) == [".lock", "ca.key", "ca.pem", "server.pem"]
    for p in tls_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    fp = ca_fingerprint(tls_dir / "ca.pem")
    first = (tls_dir / "server.pem").read_bytes()
    srv.stop()

    # the same names again: nothing is reissued
    srv = serve(address, "--tls-name", "a.example.org", data=data)
    assert (tls_dir / "server.pem").read_bytes() == first
    srv.stop()

    # a new name: the server certificate is reissued by the same CA, keeping the names clients had
    srv = serve(address, "--tls-name", "b.example.org", data=data)
    assert ca_fingerprint(tls_dir / "ca.pem") == fp
    assert (tls_dir / "server.pem").read_bytes() != first
    assert {"a.example.org", "b.example.org", address} <= san_of(tls_dir / "server.pem")
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls_dir / "ca.pem"), str(tls_dir / "server.pem")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stderr
    for p in tls_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    # a client holding the CA copy from the first start still verifies the server
    with pymongo.MongoClient(tls_uri(srv), serverSelectionTimeoutMS=10000) as c:
        assert c.admin.command("ping")["ok"] == 1.0


def test_programs_that_start_together_make_one_ca(tmp_path):
    """The LaunchPad server and the dashboard may make their certificates at the same moment on a fresh config
    dir: every certificate must come from the one CA left in ca.pem/ca.key (openssl verifies each)."""
    code = ("import sys, time; from pathlib import Path; from pilot.launchpad.tls import ensure_certificates\n"
            "t = float(sys.argv[2]); time.sleep(max(0.0, t - time.time()))\n"
            "ensure_certificates(Path(sys.argv[1]), ['127.0.0.1'], server_file=sys.argv[3])")
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(start), f"s{i}.pem"],
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    tls_dir = tmp_path / "tls"
    for i in range(8):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls_dir / "ca.pem"), str(tls_dir / f"s{i}.pem")],
                                capture_output=True, text=True, timeout=30, check=False)
        assert verify.returncode == 0, (i, verify.stdout, verify.stderr)
    key_pub = subprocess.run(["openssl", "pkey", "-in", str(tls_dir / "ca.key"), "-pubout"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    cert_pub = subprocess.run(["openssl", "x509", "-in", str(tls_dir / "ca.pem"), "-noout", "-pubkey"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    assert key_pub == cert_pub   # the CA key beside the CA certificate is its own


def test_a_damaged_ca_is_not_replaced_silently(serve, address, tmp_path):
    data = tmp_path / "data"
    serve(address, data=data).stop()
    (data / "tls" / "ca.key").write_text("not a key\n")
    res = subprocess.run([*PILOT, "launchpad", "serve", "--host", address, "--port", "0", "--data", str(data)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data / "tls") in lines[0] and "pilot bootstrap" in lines[0]
    assert not (data / "server.pid").exists()


# ------------------------------------------------------------------------------------------ init
def _pilot(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PILOT, "--config-dir", str(config_dir), "launchpad", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def config_dir(tmp_path):
    """A config dir; a background server left in it is stopped by its PID afterwards."""
    from pilot.launchpad.control import is_our_server

    cfg = tmp_path / "cfg"
    yield cfg
    data = cfg / "lpserver"
    try:
        pid = json.loads((data / "server.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if is_our_server(pid, data):
        os.kill(pid, signal.SIGKILL)


def test_init_with_host_writes_a_launchpad_file_fireworks_uses_over_tls(config_dir, address):
    from fireworks import Firework, LaunchPad, ScriptTask

    res = _pilot(config_dir, "init", "--host", address, "--port", "0", "--tls-name", "fs.example.org")
    assert res.returncode == 0, res.stderr
    data = config_dir / "lpserver"
    assert f"TLS on: clients verify the server with {data / 'tls' / 'ca.pem'}" in res.stdout
    lp_file = config_dir / "my_launchpad.yaml"
    assert stat.S_IMODE(lp_file.stat().st_mode) == 0o600
    conf = yaml.safe_load(lp_file.read_text())
    info = json.loads((data / "server.json").read_text())
    assert (conf["host"], conf["port"], conf["name"]) == (address, info["port"], "fireworks")
    assert conf["mongoclient_kwargs"] == {"tls": True, "tlsCAFile": str(data / "tls" / "ca.pem")}
    admin = yaml.safe_load((data / "my_launchpad.yaml").read_text())  # init hands on the admin's credentials
    assert (conf["username"], conf["password"], conf["authsource"]) == \
        (admin["username"], admin["password"], admin["authsource"])
    assert admin["password"] not in res.stdout + res.stderr

    # FireWorks' own clients with that file: LaunchPad.from_file, rlaunch, lpad
    lp = LaunchPad.from_file(str(lp_file))
    lp.add_wf(Firework(ScriptTask.from_str("echo hello"), name="hello"))
    run = subprocess.run(["rlaunch", "-l", str(lp_file), "-s", "singleshot"], cwd=config_dir.parent,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert lp.fireworks.find_one({"name": "hello"})["state"] == "COMPLETED"
    lp.connection.close()
    wf = subprocess.run(["lpad", "-l", str(lp_file), "get_wflows", "-d", "count"], capture_output=True, text=True,
                        timeout=120, check=False)
    assert wf.returncode == 0 and wf.stdout.strip() == "1", wf.stdout + wf.stderr

    st = _pilot(config_dir, "status")
    assert st.returncode == 0, st.stderr
    assert f"{address}:{info['port']}, TLS on" in st.stdout and "documents" in st.stdout

    # asking for another address while it runs: an error, not a silent reuse
    other = _pilot(config_dir, "init", "--host", "127.0.0.1")
    assert other.returncode == 1 and "already runs" in other.stderr and "launchpad stop" in other.stderr
    # a bare init reuses it; after a stop, a bare init starts it again where it was
    assert "reusing the running" in _pilot(config_dir, "init").stdout
    assert _pilot(config_dir, "stop").returncode == 0
    again = _pilot(config_dir, "init", "--port", "0")
    assert again.returncode == 0, again.stderr
    assert f"as the last init: --host {address} --tls-name fs.example.org" in again.stdout
    assert "1 Fireworks" in again.stdout
    assert json.loads((data / "server.json").read_text())["listen"] == address
    assert _pilot(config_dir, "stop").returncode == 0


def test_wildcard_certificate_names_are_the_machines_own():
    """For 0.0.0.0 the certificate names the machine: its host name, FQDN and IPv4 addresses (as ``ip`` lists
    them, loopback and link-local left out), and clients on the machine use 127.0.0.1."""
    from pilot.launchpad.listen import LOCAL_NAMES, certificate_names, plan_listen

    plan = plan_listen("0.0.0.0", None, ["fs.example.org"])
    assert (plan.wildcard, plan.tls, plan.client_host) == (True, True, "127.0.0.1")
    names = set(certificate_names(plan))
    ip = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout)
    addrs = {a["local"] for link in ip for a in link["addr_info"]}
    addrs = {a for a in addrs if not ipaddress.ip_address(a).is_loopback and not ipaddress.ip_address(a).is_link_local}
    expected = set(LOCAL_NAMES) | addrs | {"fs.example.org"}
    hostname = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip().lower()
    expected.add(hostname)
    assert expected <= names
    assert not {n for n in names - set(LOCAL_NAMES) if ":" in n}  # 0.0.0.0 takes no IPv6 client


def test_init_refuses_listening_options_it_cannot_use(tmp_path):
    cfg = tmp_path / "cfg"
    res = _pilot(cfg, "init", "--uri", "mongodb://127.0.0.1:1/x", "--host", ADDRESS)
    assert res.returncode == 1 and "--host, --tls and --tls-name are for the embedded server" in res.stderr
    res = _pilot(cfg, "init", "--host", "no-such-host.invalid")
    assert res.returncode == 1 and "cannot resolve --host 'no-such-host.invalid'" in res.stderr
    res = _pilot(cfg, "init", "--tls-name", "db.example.org")  # loopback without --tls: no certificate
    assert res.returncode == 1 and "add --tls" in res.stderr
    assert not (cfg / "lpserver" / "server.json").exists() and not (cfg / "my_launchpad.yaml").exists()


def test_ipv6_loopback_with_tls(serve):
    """``--host ::1 --tls``: an IPv6 listener, verified by the address ::1 in the certificate."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    srv = serve("::1", "--tls")
    info = json.loads((srv.data_dir / "server.json").read_text())
    assert (info["host"], info["listen"], info["tls"]) == ("::1", "::1", True)
    with pymongo.MongoClient(tls_uri(srv), serverSelectionTimeoutMS=10000) as c:
        assert "@[::1]:" in tls_uri(srv) and c.admin.command("ping")["ok"] == 1.0


@pytest.mark.parametrize(("given", "in_certificate"), [
    ("FS.Example.ORG.", "fs.example.org"),            # DNS names compare case-insensitively (RFC 4343)
    ("bücher.example", "xn--bcher-kva.example"),       # IDNA: the ASCII form goes into a certificate (RFC 5280)
    ("0:0:0:0:0:0:0:1", "::1"),
    ("*.example.org", "*.example.org"),
])
def test_tls_names_go_into_the_certificate_in_their_canonical_form(serve, given, in_certificate):
    srv = serve("127.0.0.1", "--tls", "--tls-name", given)
    assert in_certificate in san_of(srv.data_dir / "tls" / "server.pem")
