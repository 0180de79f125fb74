"""No password in any output: :func:`redact_uri` against the connection-string spec, :func:`scrub` on driver
messages, and the real commands run as a user runs them, with a LaunchPad file whose password is hostile.

The expected strings of the table are written by hand from MongoDB's connection string format
(``mongodb[+srv]://[username:password@]host1[:port1][,...hostN[:portN]][/[defaultauthdb][?options]]``; reserved
characters ``: / ? # [ ] @`` in the userinfo must be percent-encoded) and pymongo's parser (the userinfo ends at
the LAST ``@`` of the host part). Passwords pasted without encoding are hidden whole all the same.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

import pilot.redact as redact
from pilot.launchpad import files
from pilot.status.gather import describe_launchpad
from tests.helpers import EmbeddedServer

#: Every URI delimiter, a percent sign that is no escape, and a ``#`` (which pymongo lets through raw).
PW = "p/a@s:s%?#w0rd"
ENC = quote(PW, safe="")  # p%2Fa%40s%3As%25%3F%23w0rd

# (uri, redact_uri(uri)), by hand
REDACT_TABLE = [
    # plain, and the documentation's own examples (percent-encoded '@')
    ("mongodb://alice:S3cret@db.example.com:27017/fireworks", "mongodb://alice:***@db.example.com:27017/fireworks"),
    ("mongodb://myDBReader:D1fficultP%40ssw0rd@mongodb0.example.com:27017/?authSource=admin",
     "mongodb://myDBReader:***@mongodb0.example.com:27017/?authSource=admin"),
    ("mongodb+srv://myDatabaseUser:D1fficultP%40ssw0rd@mongodb0.example.com/?authSource=admin&replicaSet=myRepl",
     "mongodb+srv://myDatabaseUser:***@mongodb0.example.com/?authSource=admin&replicaSet=myRepl"),
    # several hosts
    ("mongodb://myDBReader:D1fficultP%40ssw0rd@mongodb0.example.com:27017,mongodb1.example.com:27017,"
     "mongodb2.example.com:27017/?authSource=admin&replicaSet=myRepl",
     "mongodb://myDBReader:***@mongodb0.example.com:27017,mongodb1.example.com:27017,"
     "mongodb2.example.com:27017/?authSource=admin&replicaSet=myRepl"),
    # reserved characters pasted raw: '/', '@', ':', '?', '#', and all of them
    ("mongodb://alice:pa/ss@h:27017/fw", "mongodb://alice:***@h:27017/fw"),
    ("mongodb://alice:p@ss@h/fw", "mongodb://alice:***@h/fw"),
    ("mongodb://alice:p@s@s@h1,h2/fw", "mongodb://alice:***@h1,h2/fw"),
    ("mongodb://alice:pa:ss@h/fw", "mongodb://alice:***@h/fw"),
    ("mongodb://alice:pa?ss@h/fw", "mongodb://alice:***@h/fw"),
    ("mongodb://alice:pa#ss@h/fw", "mongodb://alice:***@h/fw"),
    (f"mongodb://alice:{PW}@127.0.0.1:9/fw", "mongodb://alice:***@127.0.0.1:9/fw"),
    (f"mongodb+srv://alice:{PW}@cluster0.example.net/fw?retryWrites=true",
     "mongodb+srv://alice:***@cluster0.example.net/fw?retryWrites=true"),
    # the same, percent-encoded (as it should be written), and encoded lower case
    (f"mongodb://alice:{ENC}@127.0.0.1:9/fw", "mongodb://alice:***@127.0.0.1:9/fw"),
    ("mongodb://alice:p%2fa%40s@h/fw", "mongodb://alice:***@h/fw"),
    ("mongodb://al%40ice:pw@h/fw", "mongodb://al%40ice:***@h/fw"),
    # IPv6 literal, unix socket, upper-case scheme, empty password
    ("mongodb://alice:pw@[::1]:27017/fw", "mongodb://alice:***@[::1]:27017/fw"),
    ("mongodb://alice:pw@%2Ftmp%2Fmongodb-27017.sock/fw", "mongodb://alice:***@%2Ftmp%2Fmongodb-27017.sock/fw"),
    ("MONGODB://alice:pw@h", "MONGODB://alice:***@h"),
    ("mongodb://alice:@h/fw", "mongodb://alice:***@h/fw"),
    # no password: as is
    ("mongodb://alice@h/fw", "mongodb://alice@h/fw"),
    ("mongodb://CN%3Dclient%2COU%3Dpilots@h/?authMechanism=MONGODB-X509",
     "mongodb://CN%3Dclient%2COU%3Dpilots@h/?authMechanism=MONGODB-X509"),
    ("mongodb://h1:27017,h2:27018/fw?replicaSet=rs", "mongodb://h1:27017,h2:27018/fw?replicaSet=rs"),
    ("mongodb+srv://cluster0.example.net/", "mongodb+srv://cluster0.example.net/"),
    ("localhost", "localhost"),
    ("127.0.0.1:27017", "127.0.0.1:27017"),
    # secrets in the options
    ("mongodb://h/?tls=true&tlsCertificateKeyFilePassword=k3yPw", "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=***"),
    ("mongodb://AKIAX:s%2Fecret@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0ken",
     "mongodb://AKIAX:***@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***"),
    # an '@' in an option value is read as the end of a (raw) password: more is hidden than needed, never less
    ("mongodb://h:27017/fw?appName=a@b", "mongodb://h:***@b"),
]

IMPLEMENTATIONS = [pytest.param(redact, id="pilot.redact"), pytest.param(files, id="re-exported by launchpad.files")]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("uri", "expected"), REDACT_TABLE)
def test_redact_uri(impl: Any, uri: str, expected: str) -> None:
    assert impl.redact_uri(uri) == expected


@pytest.mark.parametrize(("uri", "expected"), [
    (f"mongodb://alice:{PW}@127.0.0.1:9/fw", "mongodb://127.0.0.1:9/"),
    ("mongodb+srv://u:p%40w@cluster0.example.net/?x=1", "mongodb+srv://cluster0.example.net/"),
    ("mongodb://alice:S3cr#et@h1:1,h2:2/fw", "mongodb://h1:1,h2:2/"),
    ("mongodb://h", "mongodb://h/"),
])
def test_uri_hosts(uri: str, expected: str) -> None:
    assert files.uri_hosts(uri) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("uri", "expected"), [
    (f"mongodb://alice:{PW}@h/fw", PW), (f"mongodb://alice:{ENC}@h/fw", ENC), ("mongodb://alice@h", None),
    ("mongodb://h:1/fw", None), ("mongodb://alice:@h", ""),
])
def test_uri_password(impl: Any, uri: str, expected: str | None) -> None:
    assert impl.uri_password(uri) == expected


def pieces(secret: str, size: int = 4) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def leaks(text: str, secret: str = PW) -> list[str]:
    """What of ``secret`` is in ``text``: the secret, its percent-encodings, any run of 4 of its characters."""
    encodings = {quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret, safe="").lower()}
    return sorted(s for s in {secret} | encodings | pieces(secret) if s in text)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_scrub_removes_the_secret_verbatim_encoded_and_in_pieces(impl: Any) -> None:
    text = (f"InvalidURI: {PW} | {ENC} | {ENC.lower()} | {quote_plus(PW)} | Bad database name 'a@s:s%' | "
            f"Port must be an integer: 'p/a@' | see mongodb://bob:hunter22@db:27017/x | "
            f"127.0.0.1:9: [Errno 111] Connection refused")
    out = impl.scrub(text, [PW])
    assert leaks(out) == []
    assert "hunter22" not in out and "mongodb://bob:***@db:27017/x" in out
    assert "127.0.0.1:9: [Errno 111] Connection refused" in out     # what is no secret stays
    # the secret as the URI holds it (encoded) finds the decoded one too
    assert leaks(impl.scrub(f"x {PW} y", [ENC])) == []
    # a short secret only where it stands alone
    assert impl.scrub("pw=abc; abcdef", ["abc"]) == "pw=***; abcdef"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_secrets_of_a_launchpad_file(impl: Any) -> None:
    settings = {"host": f"mongodb://alice:{ENC}@h/fw?tlsCertificateKeyFilePassword=k3yPw", "password": "other",
                "mongoclient_kwargs": {"tlsCertificateKeyFilePassword": "kw-secret", "appname": "x"}}
    assert sorted(impl.secrets_of(settings)) == sorted(["other", ENC, "k3yPw", "kw-secret"])
    lp = SimpleNamespace(host="localhost", port=27017, password=PW, mongoclient_kwargs={})
    assert impl.secrets_of(lp) == [PW]
    exc = ValueError(f"cannot use mongodb://alice:{PW}@h/fw")
    assert leaks(impl.error_text(exc, lp)) == [] and impl.error_text(exc, lp).startswith("ValueError: ")


def test_status_shows_hosts_without_userinfo() -> None:
    # pymongo accepts a raw '#' in a password; urlsplit took it for a fragment and showed "alice:S3cr"
    lp = SimpleNamespace(host="mongodb://alice:S3cr#etPw@h1:1,h2:2/fw?authSource=admin", port=None, name="fw")
    assert describe_launchpad(lp) == {"host": "mongodb://h1:1,h2:2/", "name": "fw"}


def test_database_error_of_a_driver_message_that_quotes_the_password(tmp_path: Path) -> None:
    import pymongo.errors

    lpf = files.LaunchPadFile(tmp_path / "my_launchpad.yaml", tmp_path, "default")
    lp = SimpleNamespace(host=f"mongodb://alice:{PW}@db.example.com:27017/fw", uri_mode=True, port=None, name="fw",
                         password=None, mongoclient_kwargs={})
    err = files.database_error(pymongo.errors.OperationFailure(f"bad auth for {PW} ({ENC})", 18), lp, lpf)
    assert leaks(str(err)) == [] and "mongodb://alice:***@db.example.com:27017/fw" in str(err)


# ------------------------------------------------------------------------------------------ end to end
def _free_port() -> int:
    """A loopback port nobody listens on (bound and released: connecting is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launchpad_files(port: int, name: str) -> dict[str, dict[str, Any]]:
    """The LaunchPad files a user may write, each with the password ``PW``: in the URI as pasted (which pymongo
    refuses to parse), in the URI percent-encoded (as it should be), and in the username/password fields."""
    kwargs = {"serverSelectionTimeoutMS": 1500, "connectTimeoutMS": 1500}
    return {
        "uri-raw": {"host": f"mongodb://alice:{PW}@127.0.0.1:{port}/{name}", "name": name, "uri_mode": True,
                    "mongoclient_kwargs": kwargs},
        "uri-encoded": {"host": f"mongodb://alice:{ENC}@127.0.0.1:{port}/{name}?authSource=admin", "name": name,
                        "uri_mode": True, "mongoclient_kwargs": kwargs},
        "fields": {"host": "127.0.0.1", "port": port, "name": name, "username": "alice", "password": PW,
                   "authsource": "admin", "mongoclient_kwargs": kwargs},
    }


def _config_dir(root: Path, lp: dict[str, Any]) -> Path:
    """A config dir with a local cluster, whose pilot.yaml names the LaunchPad file (mode 600)."""
    (root / "clusters").mkdir(parents=True)
    lp_file = root / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(lp))
    lp_file.chmod(0o600)
    (root / "pilot.yaml").write_text(yaml.safe_dump({"launchpad_file": str(lp_file), "log_dir": str(root / "logs")}))
    (root / "clusters" / "local.yaml").write_text(yaml.safe_dump({
        "scheduler": "local", "categories": ["md"], "launchpad_file": str(lp_file), "work_dir": str(root / "work"),
        "python": sys.executable, "pilot": {"walltime": 300}, "walltime_margin": 20, "idle_timeout": 4, "grace": 5,
        "fireworks_per_pilot": 5, "limits": {"max_queued": 10, "max_running": 10}}))
    run = root / "run"
    run.mkdir()
    for name in ("system.xml", "integrator.xml", "start.pdb"):
        (run / name).write_text("<placeholder/>\n")
    return root


def _commands(cdir: Path) -> list[list[str]]:
    lp_file = str(cdir / "my_launchpad.yaml")
    return [["report"], ["report", "--json"], ["status"], ["status", "--json"],
            ["md", "add", str(cdir / "run"), "--engine", "openmm", "--nsteps", "100"], ["md", "show", "1"],
            ["manager", "status"], ["manager", "status", "--json"],
            ["worker", "-l", lp_file, "-c", "md", "-n", "secrets-1", "--no-deadline", "--idle-timeout", "1",
             "--db-retry-time", "1", "--launch-dir", str(cdir / "launches"),
             "--log-file", str(cdir / "logs" / "worker.log")]]


def _run(cdir: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cdir), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env, cwd=cdir)


def _file_leaks(root: Path, skip: set[Path]) -> dict[str, list[str]]:
    """Every file under ``root`` (logs, launch dirs, the server's log) but the LaunchPad files themselves."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path not in skip:
            hit = leaks(path.read_bytes().decode("utf-8", errors="replace"))
            if hit:
                found[str(path)] = hit
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real embedded server on loopback (it refuses logins: every file with a password is refused)."""
    srv = EmbeddedServer(tmp_path_factory.mktemp("secrets-server") / "data", host="127.0.0.1").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("target", ["unreachable", "server"])
def test_no_command_shows_the_password(tmp_path: Path, server: EmbeddedServer, target: str) -> None:
    port = _free_port() if target == "unreachable" else server.port
    # against the server: a database name that does not exist there either
    dirs = {kind: _config_dir(tmp_path / kind, lp) for kind, lp in _launchpad_files(port, "nosuchdb").items()}
    jobs = [(kind, cdir, args) for kind, cdir in dirs.items() for args in _commands(cdir)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:  # mostly waiting out the database timeout
        results = list(pool.map(lambda job: (job, _run(job[1], job[2])), jobs))
    found: dict[str, Any] = {}
    for (kind, _cdir, args), res in results:
        for stream, text in (("stdout", res.stdout), ("stderr", res.stderr)):
            if leaks(text):
                found[f"{kind}: pilot {' '.join(args[:2])} ({stream})"] = (leaks(text), text[-600:])
    skip = {cdir / "my_launchpad.yaml" for cdir in dirs.values()}
    found.update(_file_leaks(tmp_path, skip))
    found.update(_file_leaks(server.data_dir.parent, set()))
    assert not found, found
    by = {(kind, args[0] + (" " + args[1] if args[0] in ("md", "manager") else "")): res
          for (kind, _c, args), res in results if "--json" not in args}
    # the commands failed, and said why (not a blank or a traceback)
    for (kind, cmd), res in by.items():
        if cmd != "manager status":
            assert res.returncode != 0, (kind, cmd, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, (kind, cmd, res.stderr)
    assert "InvalidURI" in by["uri-raw", "report"].stderr
    refused = "refused the login" if target == "server" else "does not answer"
    assert refused in by["uri-encoded", "report"].stderr
    assert "mongodb://alice:***@127.0.0.1" in by["uri-encoded", "report"].stderr
    assert refused in by["fields", "status"].stderr
    assert refused in by["fields", "md add"].stderr and refused in by["uri-encoded", "md show"].stderr
    assert refused in by["uri-encoded", "manager status"].stdout
