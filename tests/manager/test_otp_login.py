"""Clusters with one-time-password logins (issue 21): a real sshd that asks for a TOTP code after the key (PAM's
pam_oath on pilotci2's login node, tests/infra/services.sh), one ``pilot connect`` answered in a terminal with a
code pyotp makes from the seed, and the real manager submitting real SLURM pilots through that one login.

When the centre ends the login (the sshd's session killed from the server side), the cluster shows "needs login"
in ``pilot status`` and the other cluster goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pilot.config import ConfigError, load_config
from pilot.manager.cycle import Manager
from pilot.transport import AuthenticationError, CommandTimeout, LoginRequired, SSHTransport
from pilot.transport.clusters import transport_for
from tests.helpers import pid_alive, wait_for
from tests.manager.helpers import add_sleepers, fw_states, run_cycles_until, ssh_cluster, write_config
from tests.manager.test_slurm import world  # noqa: F401,F811  (the fixture of the SLURM manager tests)
from tests.notify.servers import hook  # noqa: F401  (a real local HTTP server in the role of a chat webhook)
from tests.otp_helpers import (
    close_masters,
    end_otp_sessions,
    otp_cluster_file,
    otp_connections,
    otp_logins,
    pilot_connect,
    totp_code,
)

pytestmark = pytest.mark.slurm


@pytest.fixture
def control_dir():
    """A short folder for the ControlMaster socket (a Unix socket path has ~100 bytes); every master found there
    afterwards is closed."""
    d = Path(tempfile.mkdtemp(prefix="pcm", dir="/tmp"))
    yield d
    close_masters(d)
    shutil.rmtree(d, ignore_errors=True)


def pilot_cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(config_dir), *args],
                          capture_output=True, text=True, timeout=120)


def test_the_otp_sshd_asks_for_a_second_factor(slurm_cluster2):
    """The test sshd really wants a code after the key: OpenSSH with the key alone and no prompts is refused, and
    so is the manager's own key-only SSH client."""
    info = slurm_cluster2
    res = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
                          "-o", f"UserKnownHostsFile={info.known_hosts}", "-i", info.key,
                          "-p", str(info.otp_port), f"{info.user}@{info.host}", "true"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stderr
    with SSHTransport(**{**info.ssh_kwargs(), "port": info.otp_port}, connect_timeout=10, name="otp") as tr:
        with pytest.raises(AuthenticationError) as e:   # at once: paramiko's own fallback would read stdin
            tr.run(["true"])
    assert "asks for a one-time password" in str(e.value) and "pilot connect otp" in str(e.value)


def test_connect_refuses_a_wrong_code_and_a_cluster_without_control_path(world, slurm_cluster, slurm_cluster2,  # noqa: F811
                                                                         control_dir, tmp_path):
    config, cluster, _ = world
    cfg = config({"otp": cluster(slurm_cluster2, ["md"], **otp_cluster_file(slurm_cluster2, control_dir)),
                  "keyonly": cluster(slurm_cluster, ["post"])})
    cdir = tmp_path / "cfg"
    rc, shown = pilot_connect(cdir, "otp", "000000")
    assert rc != 0 and "did not succeed" in shown, shown
    res = pilot_cli(cdir, "connect", "otp", "--check", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["connected"] is False
    res = pilot_cli(cdir, "connect", "keyonly")
    assert res.returncode != 0
    assert "keyonly.yaml: control_path: not set" in res.stderr and "control_path: ~/.ssh/pilot-%C" in res.stderr
    assert cfg.clusters["otp"].control_path


def test_control_path_config_errors(tmp_path, slurm_cluster2):
    info = slurm_cluster2
    base = ssh_cluster(info, "/tmp/w", "/tmp/lp.yaml", ["md"], "/opt/venv")
    for over, words in [({"control_path": "sockets/%C"}, "is relative"),
                        ({"control_path": "/tmp/" + "d" * 60 + "/%C"}, "more than a Unix socket takes"),
                        ({"control_path": "/tmp/s-%C", "launchpad_route": "ssh"}, "cannot open unattended"),
                        ({"control_path": "/tmp/s-%k"}, "which ssh does not know in a ControlPath")]:
        d = tmp_path / str(len(words))
        write_config(d, tmp_path / "lp.yaml", {"c": {**base, **over}})
        with pytest.raises(ConfigError) as e:
            load_config(d)
        text = str(e.value)
        assert "c.yaml" in text and words in text, text


def test_two_clusters_on_one_socket_are_refused(tmp_path, slurm_cluster, slurm_cluster2):
    """A command goes wherever the socket's login went: two clusters on one literal path would run each other's
    sbatch. (The same host, port and user may share one: that is one login.)"""
    base = {n: ssh_cluster(i, "/tmp/w", "/tmp/lp.yaml", ["md"], "/opt/venv", control_path="/tmp/pilot-shared")
            for n, i in (("a", slurm_cluster), ("b", slurm_cluster2))}
    write_config(tmp_path / "bad", tmp_path / "lp.yaml", base)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "bad")
    assert "b.yaml: control_path: '/tmp/pilot-shared' is also the control_path of cluster a" in str(e.value)
    same = {n: ssh_cluster(slurm_cluster, "/tmp/w", "/tmp/lp.yaml", [cat], "/opt/venv", control_path="/tmp/pilot-%C")
            for n, cat in (("a", "md"), ("b", "post"))}
    write_config(tmp_path / "ok", tmp_path / "lp.yaml", same)
    assert set(load_config(tmp_path / "ok").clusters) == {"a", "b"}


def test_one_login_serves_many_cycles_then_needs_login(world, launchpad, slurm_cluster, slurm_cluster2, control_dir,  # noqa: F811
                                                       hook, tmp_path):  # noqa: F811
    """The issue's "Must show": one `pilot connect` with a code, then the manager submits and tracks real pilots
    through it for many cycles without another code; when the centre ends the login, the cluster shows "needs
    login" in `pilot status` and in one notification (a real local webhook), while the other cluster goes on."""
    config, cluster, _ = world
    cfg = config({"otp": cluster(slurm_cluster2, ["md"], idle_timeout=2,
                                 **otp_cluster_file(slurm_cluster2, control_dir)),
                  "keyonly": cluster(slurm_cluster, ["post"], idle_timeout=2)}, poll_interval=1,
                 notify={"webhook": {"url": f"http://127.0.0.1:{hook.port}/hooks/pilot"}, "batch": 0})
    cdir = tmp_path / "cfg"
    before = otp_logins(slurm_cluster2)
    rc, shown = pilot_connect(cdir, "otp", totp_code(slurm_cluster2))
    assert rc == 0 and "connected" in shown, shown
    assert otp_logins(slurm_cluster2) == before + 1
    logins = json.loads(pilot_cli(cdir, "config", "check", "--json").stdout)["logins"]
    assert set(logins) == {"otp"} and logins["otp"]["open"] is True and "Master running" in logins["otp"]["master"]

    add_sleepers(launchpad, "md", 6, 0.5)
    add_sleepers(launchpad, "post", 3, 0.5)
    mgr = Manager(cfg, launchpad)
    try:
        reports = run_cycles_until(mgr, lambda: fw_states(launchpad).get("COMPLETED", 0) == 9, timeout=150,
                                   interval=1)
        assert len(reports) >= 3
        assert not any("otp" in r.errors for r in reports), [r.errors for r in reports]
        assert {s["cluster"] for r in reports for s in r.submitted} == {"otp", "keyonly"}
        assert mgr.clusters["otp"].calls >= 3   # sbatch, squeue, ... all through the one login
        assert otp_logins(slurm_cluster2) == before + 1   # ... and never another code

        assert end_otp_sessions(slurm_cluster2) >= 1   # the centre ends the login
        wait_for(lambda: pilot_cli(cdir, "connect", "otp", "--check").returncode == 1, 15, what="the master to end")
        add_sleepers(launchpad, "md", 2, 0.5)
        post = add_sleepers(launchpad, "post", 2, 0.5)
        report = mgr.run_cycle()
        assert "needs login" in report.errors.get("otp", ""), report.errors
        assert "pilot connect otp" in report.errors["otp"]
        # the other cluster goes on: its pilots (live ones, or new ones) run the new work. (otp's pilots that still
        # run go on too -- they reach the LaunchPad themselves -- but no new one is submitted without the login.)
        later = run_cycles_until(mgr, lambda: all(launchpad.get_fw_by_id(i).state == "COMPLETED" for i in post),
                                 timeout=90, interval=1)
        assert all("needs login" in r.errors.get("otp", "") for r in later)
        assert not any(s["cluster"] == "otp" for r in later for s in r.submitted)
        # ... and none is even tried: a needs-login cluster gets no pilot planned (no failed submission on record)
        assert launchpad.db["pilots"].count_documents({"cluster": "otp", "state": "SUBMIT_FAILED"}) == 0
        texts = [c.payload["text"] for c in hook.received()]
        told = [t for t in texts if "otp" in t and "login" in t]
        assert len(told) == 1 and "connect otp" in told[0], texts   # one message, however many cycles
    finally:
        mgr.close()

    check = pilot_cli(cdir, "config", "check").stdout
    assert "login: otp: NEEDS LOGIN: run `pilot --config-dir" in check and "connect otp`" in check, check
    status = pilot_cli(cdir, "status", "--json")
    doc = json.loads(status.stdout)
    (otp,) = [c for c in doc["clusters"] if c["name"] == "otp"]
    assert otp["needs_login"] is True and otp["reachable"] is False
    assert [x["cluster"] for x in doc["needs_you"]["needs_login"]] == ["otp"]
    text = pilot_cli(cdir, "status").stdout
    assert "NEEDS LOGIN" in text and "cluster otp needs login" in text and "connect otp" in text, text

    # a new login: the next cycle takes the cluster up again, with no back-off to wait out
    rc, shown = pilot_connect(cdir, "otp", totp_code(slurm_cluster2))
    assert rc == 0, shown
    mgr = Manager(cfg, launchpad)
    try:
        report = mgr.run_cycle()
        assert "otp" not in report.errors, report.errors
    finally:
        mgr.close()
    (otp,) = [c for c in json.loads(pilot_cli(cdir, "status", "--json").stdout)["clusters"] if c["name"] == "otp"]
    assert otp["needs_login"] is False and otp["down_since"] is None


def test_a_socket_left_by_a_dead_master_is_replaced(world, slurm_cluster2, control_dir, tmp_path):  # noqa: F811
    """A master killed with SIGKILL (an OOM kill, a reboot) leaves its socket behind: the next `pilot connect`
    replaces it instead of failing for ever."""
    config, cluster, _ = world
    config({"otp": cluster(slurm_cluster2, ["md"], **otp_cluster_file(slurm_cluster2, control_dir))})
    cdir = tmp_path / "cfg"
    rc, shown = pilot_connect(cdir, "otp", totp_code(slurm_cluster2))
    assert rc == 0, shown
    said = json.loads(pilot_cli(cdir, "connect", "otp", "--check", "--json").stdout)
    pid = int(said["master"].split("pid=")[1].rstrip(")"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, what="the master to die")
    assert Path(said["control_path"]).exists()   # the socket stays behind
    assert pilot_cli(cdir, "connect", "otp", "--check").returncode == 1
    rc, shown = pilot_connect(cdir, "otp", totp_code(slurm_cluster2))
    assert rc == 0 and "connected" in shown, shown
    assert pilot_cli(cdir, "connect", "otp", "--check").returncode == 0


def test_transport_through_the_login(world, slurm_cluster, slurm_cluster2, control_dir, tmp_path):  # noqa: F811
    """Commands and files through the ControlMaster: exit codes and both streams, files written atomically with
    their mode, a timed-out command's process group killed on the host; without the login, LoginRequired (and no
    login attempt at the centre)."""
    config, cluster, _ = world
    cfg = config({"otp": cluster(slurm_cluster2, ["md"], **otp_cluster_file(slurm_cluster2, control_dir))})
    rc, shown = pilot_connect(tmp_path / "cfg", "otp", totp_code(slurm_cluster2))
    assert rc == 0, shown
    tr = transport_for("otp", cfg.clusters["otp"])
    try:
        r = tr.run(["sh", "-c", 'printf "%s|" "$1"; echo err >&2; exit 3', "x", "a b 'c'"])
        assert (r.returncode, r.stdout, r.stderr) == (3, "a b 'c'|", "err\n")
        path = f"{tmp_path.name}-otp/sub/f.bin"
        data = bytes(range(256)) * 40
        tr.put(data, "~/" + path, mode=0o640)
        st = tr.stat("~/" + path)
        assert (st.size, st.mode, st.is_dir) == (len(data), 0o640, False)
        assert tr.sha256("~/" + path) == __import__("hashlib").sha256(data).hexdigest()
        tr.get("~/" + path, tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == data
        tr.remove("~/" + path)
        assert not tr.exists("~/" + path)
        with pytest.raises(CommandTimeout) as e:
            tr.run(["sh", "-c", "sleep 300 & echo $! > ~/.otp-sleeper; wait"], timeout=2)
        assert "SIGTERM sent to its process group" in str(e.value)
        pid = tr.run(["cat", ".otp-sleeper"]).stdout.strip()
        wait_for(lambda: tr.run(["kill", "-0", pid]).returncode != 0, 10, what="the sleeper to be killed")
        tr.run(["rm", "-rf", f"{tmp_path.name}-otp", ".otp-sleeper"])
        tried = otp_connections(slurm_cluster2)
        close_masters(control_dir)
        with pytest.raises(LoginRequired) as e2:
            tr.run(["true"])
        assert "pilot connect otp" in str(e2.value)
        assert otp_connections(slurm_cluster2) == tried   # no login attempt reached the centre
    finally:
        tr.close()
