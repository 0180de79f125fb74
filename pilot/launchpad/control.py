"""Managing the embedded server from the outside: start it detached, find it, stop it, write LaunchPad files.

Used by ``pilot launchpad init|stop|status``. A server is identified by its data dir: ``server.json``
(pid, host, port) written once it listens; before anything is done to a pid, :func:`is_our_server` checks
that the process is a ``launchpad serve`` that holds that data dir's ``server.lock`` open.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from pilot.configdir import open_private, private_dir, write_private
from pilot.launchpad.credentials import AdminFileError, read_admin_file
from pilot.launchpad.files import LAUNCHPAD_FILE, TIMEOUT_S, redact_uri
from pilot.launchpad.listen import ListenPlan, StartupError, bind, plan_listen
from pilot.launchpad.server import DEFAULT_PORT, INFO_FILE, LOCK_FILE, PID_FILE, read_server_info
from pilot.launchpad.tls import SERVER_PEM, client_kwargs, server_names, tls_dir
from pilot.redact import scrub, secrets_of

__all__ = ["LAUNCHPAD_FILE", "SERVER_DIR", "SERVER_LOG", "CheckResult", "ControlError", "ListenOptions",
           "RunningServer", "ServerState", "admin_client_kwargs", "admin_launchpad", "check_launchpad",
           "check_matches", "find_running", "is_our_server", "launchpad_dict", "redact_uri", "server_state",
           "start_background", "stop_server", "write_private_yaml"]

#: Data dir of the background server, relative to the config dir.
SERVER_DIR = "lpserver"
SERVER_LOG = "server.log"
#: Where ``init`` remembers the ``--host``/``--tls``/``--tls-name`` it started the server with.
OPTIONS_FILE = "init-options.json"


class ControlError(Exception):
    """An action on the server or the LaunchPad failed; the message says what to do."""


@dataclass(frozen=True)
class RunningServer:
    """A live server, from its ``server.json``: ``host`` is the one clients use (``listen`` is what it bound)."""

    pid: int
    host: str
    port: int
    data_dir: Path
    started_now: bool = False
    tls: bool = False
    listen: str = ""

    @classmethod
    def from_info(cls, info: dict[str, Any], data_dir: Path, started_now: bool = False) -> RunningServer:
        host = str(info.get("host", "127.0.0.1"))
        return cls(int(info["pid"]), host, int(info["port"]), Path(data_dir), started_now,
                   tls=bool(info.get("tls", False)), listen=str(info.get("listen") or host))

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """``MongoClient`` keyword arguments for TLS (``{}`` without)."""
        return client_kwargs(self.data_dir, self.tls)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def is_our_server(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a live ``launchpad serve`` process holding ``data_dir``'s lock file open."""
    lock = (Path(data_dir) / LOCK_FILE).resolve()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
        if "launchpad" not in cmd or "serve" not in cmd:
            return False
        return any(Path(f.path).resolve() == lock for f in proc.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def find_running(data_dir: Path) -> RunningServer | None:
    """The server currently serving ``data_dir``, if any (checked by pid and lock file)."""
    info = read_server_info(data_dir)
    if not info or not isinstance(info.get("pid"), int):
        return None
    if not is_our_server(info["pid"], data_dir):
        return None
    return RunningServer.from_info(info, data_dir)


def _port_free(plan: ListenPlan, port: int) -> bool:
    try:
        bind(plan, port).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ListenOptions:
    """``--host``/``--tls``/``--tls-name`` of the background server, remembered in ``DATA/init-options.json``
    so that a later ``init`` without them starts it where the clusters' LaunchPad files point."""

    host: str = "127.0.0.1"
    tls: bool | None = None
    tls_names: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        out = ["--host", self.host]
        if self.tls is not None:
            out.append("--tls" if self.tls else "--no-tls")
        for n in self.tls_names:
            out += ["--tls-name", n]
        return out

    def save(self, data_dir: Path) -> None:
        write_private(Path(data_dir) / OPTIONS_FILE, json.dumps(
            {"host": self.host, "tls": self.tls, "tls_names": list(self.tls_names)}) + "\n")

    @classmethod
    def load(cls, data_dir: Path) -> ListenOptions | None:
        """The options the last ``init`` started the server with, None if there are none (or unreadable)."""
        try:
            d = json.loads((Path(data_dir) / OPTIONS_FILE).read_text())
            return cls(str(d["host"]), d.get("tls"), tuple(str(n) for n in d.get("tls_names") or ()))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def plan_for(opts: ListenOptions) -> ListenPlan:
    """What the server would do with ``opts`` (ControlError with the server's own words if it would refuse)."""
    try:
        return plan_listen(opts.host, opts.tls, opts.tls_names)
    except StartupError as exc:
        raise ControlError(str(exc)) from exc


def start_background(data_dir: Path, port: int | None = None, timeout: float = 60.0,
                     listen: ListenOptions | None = None) -> RunningServer:
    """Start ``pilot launchpad serve`` detached (own session, output to DATA/server.log); wait until it listens.

    The data dir is made 0700 and the log 0600 (see :func:`pilot.configdir.private_dir`); the server makes
    everything else it writes there private.

    ``port`` None: the default port when free, else any free port. ``listen`` None: loopback, no TLS.
    """
    data_dir = Path(data_dir).absolute()
    listen = listen or ListenOptions()
    plan = plan_for(listen)  # a refused --host/--tls-name fails here, with the server's message
    try:
        private_dir(data_dir)
    except OSError as exc:
        raise ControlError(f"cannot create the server data dir {data_dir}: {exc.strerror or exc}") from exc
    if port is None:
        port = DEFAULT_PORT if _port_free(plan, DEFAULT_PORT) else 0
    (data_dir / INFO_FILE).unlink(missing_ok=True)
    log_path = data_dir / SERVER_LOG
    argv = [sys.executable, "-m", "pilot", "launchpad", "serve", *listen.argv(), "--port", str(port),
            "--data", str(data_dir)]
    with open_private(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=str(data_dir))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ControlError(f"the embedded LaunchPad server exited with code {rc} while starting "
                               f"(log {log_path}): {' | '.join(tail)}")
        info = read_server_info(data_dir)
        if info and info.get("pid") == proc.pid:
            return RunningServer.from_info(info, data_dir, started_now=True)
        time.sleep(0.05)
    proc.terminate()
    raise ControlError(f"the embedded LaunchPad server did not start within {timeout:.0f}s (log {log_path})")


def check_matches(server: RunningServer, listen: ListenOptions, stop: str = "pilot launchpad stop") -> None:
    """Raise ControlError when the running ``server`` does not listen as ``listen`` asks (address, TLS, the
    certificate's names): silently reusing it would write LaunchPad files the clusters cannot use."""
    plan = plan_for(listen)
    names = plan.tls_names
    have = set(tls_names_of(server.data_dir)) if server.tls else set()
    if plan.address == server.listen and plan.tls == server.tls and set(names) <= have:
        return
    what = ", ".join(f"{n} missing from its certificate" for n in names if n not in have) if \
        plan.address == server.listen and plan.tls == server.tls else \
        f"{server.listen} with TLS {'on' if server.tls else 'off'}"
    raise ControlError(f"the embedded LaunchPad server of {server.data_dir} already runs (pid {server.pid}, "
                       f"{what}); stop it (`{stop}`) and run this again to start it with "
                       f"{' '.join(listen.argv())}")


def tls_names_of(data_dir: Path) -> list[str]:
    """The SANs of the server certificate in ``DATA/tls`` ([] when there is none)."""
    return server_names(tls_dir(data_dir) / SERVER_PEM)


class ServerState(enum.Enum):
    """What a data dir's server.json/server.pid point at."""

    NONE = "none"            # no pid recorded
    GONE = "gone"            # the recorded pid is not running
    FOREIGN = "foreign"      # the recorded pid runs, but it is not our server for this data dir
    RUNNING = "running"      # our server, serving this data dir


def server_state(data_dir: Path) -> tuple[ServerState, int | None]:
    """Classify the pid recorded in ``data_dir`` (server.json, else server.pid)."""
    data_dir = Path(data_dir).absolute()
    info = read_server_info(data_dir) or {}
    pid = info.get("pid")
    if not isinstance(pid, int):
        try:
            pid = int((data_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return ServerState.NONE, None
    if not _alive(pid):
        return ServerState.GONE, pid
    if not is_our_server(pid, data_dir):
        return ServerState.FOREIGN, pid
    return ServerState.RUNNING, pid


def stop_server(data_dir: Path, timeout: float = 60.0) -> int:
    """Stop the server of ``data_dir`` by its pid (SIGTERM: final snapshot); returns the pid.

    Raises
    ------
    ControlError
        Nothing runs there, the pid is not our server, or it did not stop in time.
    """
    data_dir = Path(data_dir).absolute()
    state, pid = server_state(data_dir)
    if state in (ServerState.NONE, ServerState.GONE) or pid is None:
        raise ControlError(f"no embedded LaunchPad server runs for {data_dir}"
                           + (f" (pid {pid} from {INFO_FILE} is gone)" if pid else ""))
    if state is ServerState.FOREIGN:
        raise ControlError(f"pid {pid} (from {data_dir / INFO_FILE}) is not an embedded LaunchPad server serving "
                           f"{data_dir}; not sending it any signal")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.1)
    raise ControlError(f"server pid {pid} did not stop within {timeout:.0f}s after SIGTERM; `kill -9 {pid}` "
                       "loses no acknowledged write (the journal has them)")


def write_private_yaml(path: Path, data: dict[str, Any]) -> Path | None:
    """Write ``data`` as YAML with mode 600 (atomically) in a 0700 directory; returns the backup path if an
    older, different file was kept as ``<name>.bak`` (0600 too)."""
    private_dir(path.parent)
    text = yaml.safe_dump(data, sort_keys=False)
    backup = None
    if path.exists():
        old = path.read_text()
        if old != text:
            backup = path.with_name(path.name + ".bak")
            write_private(backup, old)
    write_private(path, text)
    return backup


def admin_launchpad(server: RunningServer, name: str) -> dict[str, Any]:
    """The LaunchPad dict of the server's admin (``DATA/my_launchpad.yaml``, which the server keeps up to date
    with where it listens and its TLS settings), for database ``name``.

    Raises
    ------
    ControlError
        The file is missing or unusable (the message says how to recover).
    """
    try:
        data = read_admin_file(server.data_dir)
    except AdminFileError as exc:
        raise ControlError(str(exc)) from exc
    return {**data, "host": server.host, "port": server.port, "name": name,
            "mongoclient_kwargs": {**(data.get("mongoclient_kwargs") or {}), **server.client_kwargs}}


def admin_client_kwargs(server: RunningServer) -> dict[str, Any]:
    """``MongoClient`` keyword arguments for the server's admin: address, credentials, TLS."""
    lp = admin_launchpad(server, "admin")
    kw: dict[str, Any] = {"host": server.host, "port": server.port, **(lp.get("mongoclient_kwargs") or {})}
    if lp.get("username"):
        kw.update(username=lp["username"], password=lp.get("password"), authSource=lp.get("authsource") or "admin")
    return kw


def launchpad_dict(name: str, host: str, port: int | None = None, uri_mode: bool = False) -> dict[str, Any]:
    """The fields FireWorks' ``LaunchPad.from_dict`` reads (fireworks/core/launchpad.py, LaunchPad.__init__)."""
    return {"host": host, "port": port, "name": name, "username": None, "password": None, "logdir": None,
            "strm_lvl": "INFO", "user_indices": [], "wf_user_indices": [], "authsource": None,
            "uri_mode": uri_mode, "mongoclient_kwargs": {}}


@dataclass(frozen=True)
class CheckResult:
    fireworks: int
    workflows: int
    initialized: bool


def check_launchpad(lp_dict: dict[str, Any], timeout_ms: int = int(TIMEOUT_S * 1000)) -> CheckResult:
    """Ping the database and make one LaunchPad call; initialize (``lpad reset``) a database with no collections.

    Raises
    ------
    ControlError
        With the redacted address and the driver's message.
    """
    import pymongo.errors
    from fireworks import LaunchPad

    d = dict(lp_dict, strm_lvl="ERROR", logdir=None,
             mongoclient_kwargs={**(lp_dict.get("mongoclient_kwargs") or {}),
                                 "serverSelectionTimeoutMS": timeout_ms})
    where = redact_uri(str(d["host"])) if d.get("uri_mode") else f"{d['host']}:{d['port']}"
    try:
        lp = LaunchPad.from_dict(d)
        try:
            lp.connection.admin.command("ping")
            initialized = False
            if not lp.db.list_collection_names():
                lp.reset("", require_password=False, max_reset_wo_password=0)
                initialized = True
            nfw = lp.get_fw_ids(count_only=True)
            nwf = lp.get_wf_ids(count_only=True)
        finally:
            lp.connection.close()
    except pymongo.errors.PyMongoError as exc:
        raise ControlError(f"cannot use the LaunchPad database {d['name']!r} at {where}: "
                           f"{type(exc).__name__}: {scrub(str(exc), secrets_of(lp_dict))[:300]}") from exc
    return CheckResult(int(nfw), int(nwf), initialized)
