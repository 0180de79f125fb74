"""What every benchmark needs: the machine, the database, the clusters, peak memory, counting, tables.

The benchmarks run against the same real services as the tests (``tests/infra/services.sh``): the SLURM
cluster ``pilotci`` reached over the loopback sshd as user ``pilot``, and the embedded LaunchPad server
(``python -m pilot launchpad serve``) unless ``MONGODB_URI`` names a MongoDB to use instead.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers import INFRA_STATE, ClusterInfo, EmbeddedServer, launchpad_host, load_clusters  # noqa: E402

__all__ = [
    "INFRA_STATE",
    "REPO",
    "BenchError",
    "ClusterInfo",
    "CommandCounter",
    "CountingTransport",
    "Database",
    "PeakSampler",
    "Slurm",
    "counting_factory",
    "ensure_cluster_venv",
    "fmt_num",
    "fmt_table",
    "load_clusters",
    "loadavg",
    "machine_info",
    "make_remote_dir",
    "ratio",
    "short_id",
    "vm_hwm_kb",
]


class BenchError(RuntimeError):
    """A benchmark could not run (missing services, a failed command); the message says what to do."""


def short_id() -> str:
    """Six hex digits: unique names for one benchmark run (categories, job names, databases)."""
    return uuid.uuid4().hex[:6]


# ============================================================================ machine
def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: note them next to the numbers)."""
    return [round(x, 2) for x in os.getloadavg()]


def source_state() -> dict[str, Any]:
    """The commit measured, and which files of the measured code differ from it (the tree is shared)."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False,
                             timeout=30)
        return res.stdout.rstrip("\n") if res.returncode == 0 else ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "pilot", "queue_adapters", "tasks",
                                      "templates").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "uncommitted_changes_in": dirty}


def machine_info() -> dict[str, Any]:
    """Cores, memory, OS, versions and the date: printed and stored with every result."""
    import fireworks
    import pymongo

    return {**source_state(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "cores": os.cpu_count(), "memory_gib": _meminfo_gib(), "os": _os_name(),
        "kernel": platform.release(), "python": platform.python_version(),
        "fireworks": getattr(fireworks, "__version__", "?"), "pymongo": pymongo.version,
        "mongodb_uri": "MONGODB_URI" if os.environ.get("MONGODB_URI") else "embedded server",
        "loadavg_start": loadavg(),
    }


# ============================================================================ memory and CPU
def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a live process (/proc/PID/stat, fields 14 and 15), in seconds; None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM, KiB) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


class PeakSampler:
    """Samples the peak RSS (VmHWM) of a process and, separately, of its descendants, in a thread.

    VmHWM is the kernel's own high-water mark, so a sample taken any time before a process exits sees its
    peak so far; processes that live shorter than ``interval`` can be missed (their peak is then at most
    what the sampled ones show, for the forked Firework children of the pilot worker).
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.root_kb = 0
        self.child_kb = 0
        self.children_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        kb = vm_hwm_kb(self.pid)
        if kb:
            self.root_kb = max(self.root_kb, kb)
        for c in _children(self.pid):
            ckb = vm_hwm_kb(c)
            if ckb:
                self.children_seen.add(c)
                self.child_kb = max(self.child_kb, ckb)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        return {"peak_rss_mib": round(self.root_kb / 1024, 1),
                "peak_child_rss_mib": round(self.child_kb / 1024, 1) if self.child_kb else None,
                "children_sampled": len(self.children_seen)}


# ============================================================================ database
class CommandCounter:
    """A pymongo CommandListener that counts the commands one client sends (by name)."""

    def __init__(self) -> None:
        from pymongo import monitoring

        class _Listener(monitoring.CommandListener):
            def __init__(inner) -> None:
                inner.counts: Counter[str] = Counter()
                inner.lock = threading.Lock()

            def started(inner, event: Any) -> None:
                with inner.lock:
                    inner.counts[event.command_name] += 1

            def succeeded(inner, event: Any) -> None:
                pass

            def failed(inner, event: Any) -> None:
                pass

        self.listener = _Listener()

    def snapshot(self) -> Counter[str]:
        with self.listener.lock:
            return Counter(self.listener.counts)

    @staticmethod
    def diff(after: Counter[str], before: Counter[str]) -> dict[str, int]:
        """Commands sent between two snapshots; the driver's own handshakes and pings are left out."""
        out = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
        for k in ("hello", "ismaster", "isMaster", "ping", "endSessions"):
            out.pop(k, None)
        return out


@dataclass
class Database:
    """The LaunchPad database of one benchmark: the embedded server (started here) or ``MONGODB_URI``."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pilot-bench-db-")))
    server: EmbeddedServer | None = None
    uri: str = ""
    names: list[str] = field(default_factory=list)

    def start(self) -> Database:
        uri = os.environ.get("MONGODB_URI")
        if uri:
            self.uri = uri
            return self
        os.chmod(self.tmp, 0o755)
        self.server = EmbeddedServer(self.tmp / "data", host=launchpad_host()).start()
        self.server.publish_ca(self.tmp / "ca.pem")   # pilots run as the clusters' user: the data dir is 0700
        self.uri = self.server.uri
        return self

    @property
    def server_pid(self) -> int | None:
        return self.server.proc.pid if self.server is not None and self.server.proc is not None else None

    def server_peak_mib(self) -> float | None:
        pid = self.server_pid
        kb = vm_hwm_kb(pid) if pid else None
        return round(kb / 1024, 1) if kb else None

    def launchpad(self, name: str | None = None, listener: Any = None) -> Any:
        """A FireWorks LaunchPad on a fresh database (dropped by :meth:`stop`)."""
        from fireworks import LaunchPad

        name = name or f"pilotbench_{short_id()}"
        kwargs = {"event_listeners": [listener]} if listener is not None else None
        lp = LaunchPad(host=self.uri, name=name, uri_mode=True, logdir=None, strm_lvl="ERROR",
                       mongoclient_kwargs=kwargs)
        lp.reset("", require_password=False, max_reset_wo_password=10**9)
        if name not in self.names:
            self.names.append(name)
        return lp

    def launchpad_file_dict(self, lp: Any) -> dict[str, Any]:
        """The content of a my_launchpad.yaml for ``lp`` (for rlaunch, qlaunch and pilot workers)."""
        return {"host": self.uri, "name": lp.db.name, "uri_mode": True, "logdir": None, "strm_lvl": "ERROR"}

    def server_stats(self, lp: Any) -> dict[str, int] | None:
        """Commands the embedded server has served so far, by name (``pilotStats``); None on MongoDB."""
        from pymongo.errors import OperationFailure

        if self.server is None:
            return None
        try:
            return dict(lp.connection.admin.command("pilotStats")["commands"])
        except OperationFailure:
            return None

    @staticmethod
    def stats_diff(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
        if after is None or before is None:
            return None
        out = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
        for k in ("hello", "ismaster", "isMaster", "ping", "endSessions", "pilotStats"):
            out.pop(k, None)
        return out

    def drop(self, lp: Any) -> None:
        lp.connection.drop_database(lp.db.name)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        else:
            from pymongo import MongoClient

            if self.names and self.uri:
                client: Any = MongoClient(self.uri, serverSelectionTimeoutMS=5000)
                for n in self.names:
                    client.drop_database(n)
                client.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ============================================================================ clusters
def make_remote_dir(prefix: str, user: str) -> Path:
    """A fresh directory in /tmp owned by the cluster user (the batch jobs write there)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    shutil.chown(path, user, user)
    os.chmod(path, 0o755)
    return path


def chown_tree(path: Path, user: str) -> None:
    for p in [path, *path.rglob("*")]:
        shutil.chown(p, user, user)


def _source_digest() -> str:
    # the same digest as tests/conftest.py: a venv stamped by either is current for both
    h = hashlib.sha256()
    for top in ("pilot", "queue_adapters", "tasks", "templates"):
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(REPO)).encode())
                h.update(p.read_bytes())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()


def ensure_cluster_venv(venv: str) -> str:
    """Make the cluster user's venv hold this source tree (as the ``cluster_venv`` test fixture does)."""
    stamp = Path(venv) / ".pilot-source-digest"
    digest = _source_digest()
    with open("/tmp/pilot-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != digest:
            res = subprocess.run([f"{venv}/bin/pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise BenchError(f"reinstalling {REPO} into the cluster venv {venv} failed (exit "
                                 f"{res.returncode}): {res.stderr[-1500:]}")
            subprocess.run(["chmod", "-R", "a+rX", venv], check=True)
            stamp.write_text(digest)
    return venv


def require_infra() -> dict[str, ClusterInfo]:
    """The test clusters, or a BenchError saying how to start them."""
    if os.geteuid() != 0:
        raise BenchError("the benchmarks need root: they start jobs as the cluster user and read SLURM's "
                         "accounting like the tests do (run them as root on the test machine)")
    if not (INFRA_STATE / "clusters.json").exists():
        raise BenchError(f"the test services are not running ({INFRA_STATE}/clusters.json missing): run "
                         "`bash tests/infra/services.sh up` as root first")
    return load_clusters()


def program_name(argv: list[str]) -> str:
    """The program an argument list runs: ``env SLURM_TIME_FORMAT=%s squeue ...`` runs squeue."""
    words = list(argv)
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
        while words and ("=" in words[0] or words[0].startswith("-")):
            words = words[1:]
    return os.path.basename(words[0]) if words else "?"


class CountingTransport:
    """Wraps a transport and counts what goes over it: commands by program, file transfers, connects, and when
    each call was in flight (``intervals``, perf_counter pairs: what a cycle spent waiting on SSH)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.commands: Counter[str] = Counter()
        self.transfers = 0
        self.intervals: list[tuple[float, float]] = []

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.intervals.append((t0, time.perf_counter()))

    def run(self, argv: list[str], *args: Any, **kwargs: Any) -> Any:
        self.commands[program_name(argv)] += 1
        return self._timed(self.inner.run, argv, *args, **kwargs)

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.transfers += 1
        return self._timed(self.inner.put, *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.transfers += 1
        return self._timed(self.inner.get, *args, **kwargs)

    @property
    def connects(self) -> int:
        try:
            return int(self.inner.connects)
        except (AttributeError, TypeError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def busy_seconds(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """How long at least one of ``intervals`` was in progress between ``start`` and ``end`` (their union)."""
    total, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b <= reach:
            continue
        total += b - max(a, reach)
        reach = b
    return total


def counting_factory() -> tuple[Callable[[str, Any], CountingTransport], list[CountingTransport]]:
    """A transport factory for :class:`pilot.manager.Manager` that keeps every transport it made."""
    from pilot.transport.clusters import transport_for

    made: list[CountingTransport] = []

    def factory(name: str, cluster: Any) -> CountingTransport:
        t = CountingTransport(transport_for(name, cluster))
        made.append(t)
        return t

    return factory, made


def ssh_connects(transports: list[CountingTransport]) -> int:
    """SSH connections opened (transports with the same settings share one pooled connection)."""
    seen: dict[int, int] = {}
    for t in transports:
        try:
            conn = t.inner._connection()
        except AttributeError:
            continue
        seen[id(conn)] = int(conn.connects)
    return sum(seen.values())


@dataclass
class Slurm:
    """Root's direct view of one SLURM cluster (as the tests ask it: not through the code we measure)."""

    conf: str
    user: str

    def _run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, SLURM_CONF=self.conf))

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of the user's jobs in the queue."""
        res = self._run(["squeue", "-h", "-u", self.user, "-o", "%i|%j|%T"])
        if res.returncode != 0:
            raise BenchError(f"squeue failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")
        return [tuple(line.split("|", 2)) for line in res.stdout.splitlines() if line.count("|") == 2]  # type: ignore[misc]

    def cancel(self, ids: list[str]) -> None:
        ids = [i for i in ids if i]
        for k in range(0, len(ids), 200):
            self._run(["scancel", *ids[k:k + 200]])

    def cancel_names(self, prefix: str) -> list[str]:
        """Cancel every queued/running job of the user whose name starts with ``prefix``."""
        ids = [j[0] for j in self.jobs() if j[1].startswith(prefix)]
        self.cancel(ids)
        return ids

    def accounting(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """sacct for the given jobs: state, elapsed seconds, start/end (epoch) of the allocation."""
        out: dict[str, dict[str, Any]] = {}
        ids = [i for i in ids if i]
        for k in range(0, len(ids), 200):
            res = self._run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,ElapsedRaw,Start,End",
                             "-j", ",".join(ids[k:k + 200])])
            for line in res.stdout.splitlines():
                parts = line.split("|")
                if len(parts) != 5:
                    continue
                jid, state, elapsed, start, end = parts
                out[jid] = {"state": state.split()[0] if state else "", "elapsed": int(elapsed or 0),
                            "start": _slurm_time(start), "end": _slurm_time(end)}
        return out


def _slurm_time(text: str) -> float | None:
    if not text or text in ("Unknown", "None"):
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# ============================================================================ output
def fmt_num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[fmt_num(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
