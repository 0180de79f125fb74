"""``pilot bootstrap``: the pure pieces (YAML editing, launchpad host rewrite, platform tags), and a real
bootstrap of a cluster account that starts with nothing.

The real test creates a fresh Unix user that only has the test public key, starts an sshd of its own for
that user (modelled on the shared one: same host key, ``AllowUsers`` that user), bootstraps it with the
system Python (Debian's 3.11, python3-venv), runs ``pilot doctor``, bootstraps again (nothing to
install), and once more after the installed build was marked as different (reinstall). Everything it
started is stopped by PID and the user is removed.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pilot.checks.bootstrap import (
    BOOTSTRAP_MARK,
    BootstrapError,
    RemotePython,
    activation_line,
    edit_cluster_yaml,
    new_setup,
    platform_tags,
    rewrite_db_host,
    same_platform,
    strip_bootstrap_lines,
)
from pilot.checks.bootstrap_route import ca_file_of, with_ca_file
from tests.helpers import REPO, own_account
from tests.manager.helpers import local_cluster, write_config

CLUSTER_FILE = """\
# my cluster (this comment must survive)
scheduler: slurm
host: login.example.org   # the login node
port: 22
categories: [md]   # what it serves
launchpad_file: ~/old/my_launchpad.yaml  # where the pilots read it
work_dir: /scratch/me/pilot
setup: |
  module load gromacs   # keep me
  source /old/venv/bin/activate  # added by pilot bootstrap

# --- the pilot jobs
pilot:
  walltime: "24:00:00"
  cores: 4
"""


# ============================================================================ pure
def test_setup_lines_keep_the_users_own_and_replace_the_bootstraps():
    setup = "module load gromacs   # keep me\nsource /old/venv/bin/activate  " + BOOTSTRAP_MARK + "\n"
    assert strip_bootstrap_lines(setup) == "module load gromacs   # keep me\n"
    assert new_setup(setup, "/w/venv") == ("module load gromacs   # keep me\n"
                                           f"source /w/venv/bin/activate  {BOOTSTRAP_MARK}\n")
    assert new_setup("", "/w/venv") == activation_line("/w/venv") + "\n"
    # idempotent
    assert new_setup(new_setup(setup, "/w/venv"), "/w/venv") == new_setup(setup, "/w/venv")


def test_edit_cluster_yaml_keeps_comments_and_other_lines():
    setup = new_setup("module load gromacs   # keep me\n", "/scratch/me/pilot/venv")
    out = edit_cluster_yaml(CLUSTER_FILE, {"setup": setup, "launchpad_file": "/home/me/.pilot/lp.yaml"})
    assert "# my cluster (this comment must survive)" in out
    assert "host: login.example.org   # the login node" in out
    assert "# --- the pilot jobs" in out
    assert "launchpad_file: /home/me/.pilot/lp.yaml  # where the pilots read it" in out
    data = yaml.safe_load(out)
    assert data["setup"] == setup
    assert data["pilot"] == {"walltime": "24:00:00", "cores": 4}
    assert out.count("/old/venv") == 0
    # a second edit with the same values changes nothing
    assert edit_cluster_yaml(out, {"setup": setup, "launchpad_file": "/home/me/.pilot/lp.yaml"}) == out


def test_edit_cluster_yaml_list_setup_missing_keys_and_quoting():
    text = "scheduler: slurm\nsetup:\n- module load a\n- module load b\ncategories: [md]\n"
    out = edit_cluster_yaml(text, {"setup": "module load a\nmodule load b\nsource /v/bin/activate\n",
                                   "python": "/v/bin/python", "launchpad_file": "/a b/lp.yaml"})
    data = yaml.safe_load(out)
    assert data["setup"] == "module load a\nmodule load b\nsource /v/bin/activate\n"
    assert data["python"] == "/v/bin/python" and data["launchpad_file"] == "/a b/lp.yaml"
    assert data["categories"] == ["md"]
    # a first line that starts with a space needs an explicit indentation indicator
    out = edit_cluster_yaml("setup: ''\n", {"setup": "  indented\nnext\n"})
    assert yaml.safe_load(out)["setup"] == "  indented\nnext\n"
    with pytest.raises(BootstrapError):
        edit_cluster_yaml("setup: [unclosed\n", {"setup": "x\n"})


def test_rewrite_db_host_both_launchpad_forms():
    # uri_mode: FireWorks passes host to MongoClient as a URI (LaunchPad.__init__)
    doc = {"host": "mongodb://u:p%40ss@127.0.0.1:27018/fw?authSource=admin", "name": "fw", "uri_mode": True}
    assert rewrite_db_host(doc, "db.cluster.org")["host"] == \
        "mongodb://u:p%40ss@db.cluster.org:27018/fw?authSource=admin"
    assert rewrite_db_host(doc, "198.51.100.5:27020")["host"] == \
        "mongodb://u:p%40ss@198.51.100.5:27020/fw?authSource=admin"
    assert rewrite_db_host({"host": "mongodb://127.0.0.1/", "uri_mode": True}, "[fe80::1]:1")["host"] == \
        "mongodb://[fe80::1]:1/"
    # host/port form
    plain = {"host": "localhost", "port": 27017, "name": "fw", "username": "u"}
    assert rewrite_db_host(plain, "db:27019") == {"host": "db", "port": 27019, "name": "fw", "username": "u"}
    assert rewrite_db_host(plain, "db")["port"] == 27017
    with pytest.raises(ValueError):
        rewrite_db_host(plain, "db:notaport")


def _remote(glibc: str | None = "2.36", minor: int = 11, machine: str = "x86_64") -> RemotePython:
    return RemotePython(version=f"3.{minor}.2", major=3, minor=minor, implementation="cpython", system="linux",
                        machine=machine, glibc=glibc, executable="/usr/bin/python3", venv=True, ensurepip=True)


def test_platform_tags_follow_pep_600():
    # PEP 600: manylinux_2_17 == manylinux2014, 2_12 == manylinux2010, 2_5 == manylinux1
    tags = platform_tags(_remote("2.17"))
    assert tags[0] == "manylinux_2_17_x86_64" and tags[-4] == "manylinux_2_5_x86_64"
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_28_x86_64" not in tags
    with pytest.raises(BootstrapError):
        platform_tags(_remote(None))
    here = {"implementation": "cpython", "major": 3, "minor": 11, "system": "linux", "machine": "x86_64",
            "glibc": "2.36"}
    assert same_platform(_remote("2.36"), here) and same_platform(_remote("2.39"), here)
    assert not same_platform(_remote("2.28"), here)        # wheels built here may need a newer glibc
    assert not same_platform(_remote(minor=10), here)
    assert not same_platform(_remote(machine="aarch64"), here)


def test_a_missing_launchpad_file_is_told_as_the_commands_of_the_config_dir_tell_it(tmp_path):
    # the file pilot.yaml names does not exist: bootstrap stops before it touches the cluster, naming that
    # line and the command that writes the config dir's own file (with the --config-dir typed)
    from pilot.checks.bootstrap_context import BootstrapContext, BootstrapOptions
    from pilot.checks.bootstrap_files import step_launchpad
    from pilot.checks.progress import Reporter
    from pilot.config import load_config

    cfg = tmp_path / "cfg"
    gone = tmp_path / "elsewhere" / "my_launchpad.yaml"
    write_config(cfg, gone, {"box": local_cluster(tmp_path / "work", gone, ["md"])})
    config = load_config(cfg)
    ctx = BootstrapContext(name="box", cluster=config.cluster("box"), config=config, opts=BootstrapOptions(),
                           rep=Reporter(total=1, echo=lambda text="", nl=True: None), transport=None)
    with pytest.raises(BootstrapError) as err:
        step_launchpad(ctx)
    msg = str(err.value)
    assert f"{cfg / 'pilot.yaml'}: launchpad_file: {gone} does not exist" in msg
    assert f"`pilot --config-dir {cfg} launchpad init`" in msg


# ============================================================================ a fresh cluster account
@pytest.fixture
def fresh_cluster(slurm_cluster, tmp_path):
    """A new user with only the test key in authorized_keys, reachable through an sshd of its own on the
    login node of cluster pilotci (the shared sshds and the shared test user are not touched)."""
    with own_account(slurm_cluster, tmp_path, "pb", {"outer": slurm_cluster.host}) as acc:
        sshd = acc["outer"]
        yield {"user": acc["user"], "home": acc["home"], "host": sshd.host, "port": sshd.port,
               "known_hosts": str(sshd.known_hosts), "key": slurm_cluster.key, "sshd_log": sshd.log}


def _bootstrap(cfg: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "bootstrap", *args],
                          capture_output=True, text=True, check=False, timeout=timeout)


def _fresh_config(fc: dict, tmp_path: Path, lp_local: Path) -> tuple[Path, Path, str]:
    """A config directory with one cluster, ``fresh``: the new account, nothing installed there yet.
    Returns (config dir, cluster file, work_dir)."""
    cfg = tmp_path / "cfg"
    (cfg / "clusters").mkdir(parents=True)
    (cfg / "pilot.yaml").write_text(f"launchpad_file: {lp_local}\nlog_dir: {tmp_path / 'logs'}\n")
    work = f"{fc['home']}/pilot"
    cluster_file = cfg / "clusters" / "fresh.yaml"
    cluster_file.write_text(
        "# a brand-new account: nothing installed there (this comment must survive)\n"
        f"scheduler: slurm\nhost: {fc['host']}\nport: {fc['port']}\nuser: {fc['user']}\n"
        f"identity_file: {fc['key']}\nknown_hosts: {fc['known_hosts']}\n"
        "categories: [md]\n"
        "launchpad_file: ~/.pilot/my_launchpad.yaml   # bootstrap writes it\n"
        f"work_dir: {work}\n"
        "pilot:\n  walltime: \"5\"\n  partition: debug\n"
        "walltime_margin: 30\n")
    return cfg, cluster_file, work


def _source_snapshot(tmp_path: Path) -> Path:
    """A snapshot of the source: the working tree may change while the test runs (other work goes on in it),
    and a changed tree is (rightly) a different build."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist",
                                                            ".git", ".*_cache", "tests", "benchmarks"))
    return src


def _doctor(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), "doctor", "fresh", *args],
                          capture_output=True, text=True, check=False, timeout=300)


def _assert_set_up(fc: dict, venv: Path, lp_local: Path, cluster_file: Path) -> dict:
    """What is on the cluster after the first bootstrap (same machine: read it directly); returns the stamp."""
    from pilot import __version__

    stamp = json.loads((venv / ".pilot-bootstrap.json").read_text())
    assert stamp["version"] == __version__
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import pilot, fireworks; print(pilot.__file__)"],
                         capture_output=True, text=True, timeout=60, check=True, cwd="/").stdout
    assert out.startswith(str(venv))
    lp_remote = fc["home"] / ".pilot" / "my_launchpad.yaml"
    st = lp_remote.stat()
    assert st.st_mode & 0o777 == 0o600 and pwd.getpwuid(st.st_uid).pw_name == fc["user"]
    local_doc = yaml.safe_load(lp_local.read_text())
    if ca_file_of(local_doc):  # a LaunchPad with TLS: its CA was copied, and the cluster's file names the copy
        ca = fc["home"] / ".pilot" / "launchpad-ca.pem"
        assert ca.read_bytes() == Path(str(ca_file_of(local_doc))).read_bytes() and ca.stat().st_mode & 0o777 == 0o600
        assert yaml.safe_load(lp_remote.read_text()) == with_ca_file(local_doc, str(ca))
    else:
        assert lp_remote.read_bytes() == lp_local.read_bytes()
    text = cluster_file.read_text()
    assert "# a brand-new account: nothing installed there (this comment must survive)" in text
    assert "launchpad_file: ~/.pilot/my_launchpad.yaml   # bootstrap writes it" in text
    assert yaml.safe_load(text)["setup"] == f"source {venv}/bin/activate  {BOOTSTRAP_MARK}\n"
    assert (cluster_file.parent / "fresh.yaml.bak").is_file()
    return stamp


@pytest.mark.slurm
@pytest.mark.slow
def test_bootstrap_a_fresh_account_then_doctor_then_again(fresh_cluster, launchpad, tmp_path):
    lp_local = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_local))
    cfg, cluster_file, work = _fresh_config(fresh_cluster, tmp_path, lp_local)
    where = ("--wheelhouse", str(tmp_path / "wheelhouse"), "--source", str(_source_snapshot(tmp_path)))

    # before: the doctor fails (no fireworks-pilot there, no launchpad file)
    res = _doctor(cfg, "--json")
    before = {c["id"]: c["status"] for c in json.loads(res.stdout)["clusters"][0]["checks"]}
    assert res.returncode == 1 and before["ssh"] == "pass" and before["python"] == "fail"
    assert before["launchpad_file"] == "fail"
    fixes = {c["id"]: c["fix"] for c in json.loads(res.stdout)["clusters"][0]["checks"]}
    assert f"`pilot --config-dir {cfg} bootstrap fresh`" in fixes["launchpad_file"]   # the config dir typed

    t0 = time.monotonic()
    res = _bootstrap(cfg, "fresh", *where)
    first = time.monotonic() - t0
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = 9 if ca_file_of(yaml.safe_load(lp_local.read_text())) else 8   # + copying the LaunchPad's CA
    assert f"[{steps}/{steps}] pilot doctor fresh" in res.stdout and "all checks passed" in res.stdout
    assert "[FAIL]" not in res.stdout
    venv = Path(work) / "venv"
    stamp = _assert_set_up(fresh_cluster, venv, lp_local, cluster_file)

    # the doctor on its own
    res = _doctor(cfg)
    assert res.returncode == 0, res.stdout

    # again: nothing to install, nothing to change (the doctor left to the user, with the config dir typed)
    t0 = time.monotonic()
    res = _bootstrap(cfg, "fresh", *where, "--no-doctor")
    second = time.monotonic() - t0
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipping the install" in res.stdout
    assert "unchanged" in res.stdout
    assert f"fresh is set up; check it with `pilot --config-dir {cfg} doctor fresh`" in res.stdout
    print(f"bootstrap: first {first:.1f} s, again (nothing to do) {second:.1f} s")  # what it saves: said, not asserted

    # after an upgrade here (simulated: the venv's record of its build differs): reinstalled, doctor passes
    stamp["digest"] = "an-older-build"
    (venv / ".pilot-bootstrap.json").write_text(json.dumps(stamp))
    res = _bootstrap(cfg, "fresh", *where)
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reinstalling it" in res.stdout and "already in" in res.stdout   # the wheels were not uploaded again
    assert json.loads((venv / ".pilot-bootstrap.json").read_text())["digest"] != "an-older-build"
    print(f"bootstrap: first {first:.1f} s, second {second:.1f} s")
