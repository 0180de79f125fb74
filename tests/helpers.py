"""Helpers shared by the tests: the embedded LaunchPad server as a process, cluster descriptions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INFRA_STATE = Path(os.environ.get("PILOT_INFRA_STATE", "/tmp/pilot-infra/state"))


class EmbeddedServer:
    """``pilot launchpad serve`` as a child process, stopped by its PID.

    The server writes ``server.json`` (pid, host, port) into its data dir once it listens.
    """

    def __init__(self, data_dir: Path, port: int = 0, extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        info = self.data_dir / "server.json"
        info.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pilot", "launchpad", "serve", "--host", "127.0.0.1",
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
    """One test cluster reached over the loopback sshd (from tests/infra/services.sh)."""

    name: str
    host: str
    port: int
    user: str
    key: str
    known_hosts: str
    scheduler: str
    venv: str
    slurm_conf: str | None = None

    def ssh_kwargs(self) -> dict[str, object]:
        return dict(host=self.host, port=self.port, user=self.user, identity_file=self.key,
                    known_hosts=self.known_hosts)


def load_clusters() -> dict[str, ClusterInfo]:
    data = json.loads((INFRA_STATE / "clusters.json").read_text())
    out = {}
    for c in data["clusters"]:
        out[c["name"]] = ClusterInfo(name=c["name"], host=c["host"], port=int(data["port"]), user=data["user"],
                                     key=data["key"], known_hosts=data["known_hosts"], scheduler=c["scheduler"],
                                     venv=data["venv"], slurm_conf=c.get("slurm_conf"))
    return out


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
