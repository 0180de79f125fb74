"""Shared core of the emulated PBS Pro and LSF schedulers (fireworks-pilot test infrastructure).

Identical copies live in ``tests/infra/emulators/pbs/lib`` and ``tests/infra/emulators/lsf/lib``
(``services.sh emulators`` installs each directory on its own); ``tests/infra/test_emulators.py`` fails
when the two copies drift apart.  Standard library only: the commands run under Debian's
``/usr/bin/python3`` as the cluster user.

What lives here
---------------
* ``Settings``: emulator knobs from ``$PILOT_EMU_STATE/config.json`` and ``PILOT_EMU_*`` variables.
* ``Store``: the job table, one JSON file guarded by an ``fcntl.flock`` lock file.
* ``Supervisor``: one detached process per job that waits for a free slot, starts the job as a
  real process group, enforces the time limit, carries out kill requests and records the end.
* ``reap``: run by every command; purges old history and repairs jobs whose supervisor vanished.

The scheduler-specific behaviour (environment, file names, which signals, what is recorded) is
supplied by a *policy* object from ``pbsemu.py`` / ``lsfemu.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_VERSION = 1
SC_CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# internal job states shared by both schedulers; each scheduler maps them to its own letters
QUEUED, HELD, RUNNING, EXITING, FINISHED = "queued", "held", "running", "exiting", "finished"
ACTIVE_STATES = (QUEUED, HELD, RUNNING, EXITING)


# --------------------------------------------------------------------------- settings
def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number "
                         "(emulator setting, see docs/emulated-schedulers.md)") from None


@dataclass
class Settings:
    """Emulator knobs.  Precedence: ``PILOT_EMU_*`` environment > ``config.json`` > defaults.

    ``time_scale``, ``start_delay``, ``kill_delay`` and ``grace`` are copied into each job at
    submission, so changing them later does not touch jobs already queued.
    """

    state_dir: Path
    time_scale: float = 1.0      # emulated seconds per real second (60: one minute lasts one second)
    start_delay: float = 1.0     # real seconds a new job stays queued before it may start
    slots: int = 8               # CPUs of the emulated cluster; jobs wait while they do not fit
    history: float = 3600.0      # real seconds finished jobs stay visible (job_history / CLEAN_PERIOD)
    kill_delay: float = 10.0     # emulated seconds between SIGTERM and SIGKILL (PBS kill_delay,
                                 # LSF JOB_TERMINATE_INTERVAL)
    grace: float = 600.0         # LSF: emulated seconds between SIGUSR2 at the run limit and the kill
    queues: list[str] = field(default_factory=list)
    default_queue: str = ""
    server: str = ""             # PBS server name / LSF cluster name
    first_id: int = 1

    @classmethod
    def load(cls, kind: str, defaults: dict[str, Any]) -> Settings:
        state_dir = state_dir_for(kind)
        values: dict[str, Any] = dict(defaults)
        cfg = state_dir / "config.json"
        if cfg.exists():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError) as exc:
                raise SystemExit(f"{cfg}: unreadable emulator config ({exc}); fix or delete the file") from None
            if not isinstance(data, dict):
                raise SystemExit(f"{cfg}: must hold a JSON object of settings")
            unknown = set(data) - {f for f in cls.__dataclass_fields__ if f != "state_dir"}
            if unknown:
                raise SystemExit(f"{cfg}: unknown settings {sorted(unknown)}")
            values.update(data)
        s = cls(state_dir=state_dir, **values)
        s.time_scale = _float_env("PILOT_EMU_TIME_SCALE", float(s.time_scale))
        s.start_delay = _float_env("PILOT_EMU_START_DELAY", float(s.start_delay))
        s.slots = int(_float_env("PILOT_EMU_SLOTS", float(s.slots)))
        s.history = _float_env("PILOT_EMU_HISTORY", float(s.history))
        s.kill_delay = _float_env("PILOT_EMU_KILL_DELAY", float(s.kill_delay))
        s.grace = _float_env("PILOT_EMU_GRACE", float(s.grace))
        if s.time_scale <= 0:
            raise SystemExit("PILOT_EMU_TIME_SCALE must be > 0")
        return s


def state_dir_for(kind: str) -> Path:
    """``$PILOT_EMU_STATE``, else ``/var/tmp/pilot-emu-<kind>-<user>`` (created on first use)."""
    raw = os.environ.get("PILOT_EMU_STATE")
    path = Path(raw) if raw else Path("/var/tmp") / f"pilot-emu-{kind}-{current_user()}"
    try:
        (path / "jobs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"cannot create the emulator state directory {path}: {exc} "
                         "(set PILOT_EMU_STATE to a writable directory)") from None
    return path


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


# --------------------------------------------------------------------------- the job table
class Store:
    """``state.json`` = {"next_id": int, "jobs": {"<id>": record}}, replaced atomically.

    Writers hold an exclusive ``flock`` on ``state.lock``; readers may read without the lock
    because the file is only ever replaced by ``rename``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.state_dir
        self.path = self.dir / "state.json"
        self.lock_path = self.dir / "state.lock"

    def job_dir(self, job_id: int | str) -> Path:
        return self.dir / "jobs" / str(job_id)

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"next_id": self.settings.first_id, "jobs": {}}
        except ValueError as exc:
            raise SystemExit(f"{self.path}: corrupt emulator state ({exc}); "
                             "remove the directory to start afresh") from None
        data.setdefault("jobs", {})
        data.setdefault("next_id", self.settings.first_id)
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive read-modify-write: yields the state, written back (if changed) unless an exception escapes."""
        with open(self.lock_path, "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                data = self.read()
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    self._write(data)
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def stamp(self) -> int:
        """Modification time of the state file: waiting supervisors re-read only when it changed."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def get(self, job_id: int | str) -> dict[str, Any] | None:
        return self.read()["jobs"].get(str(job_id))


# --------------------------------------------------------------------------- durations
def parse_hms(text: str) -> float | None:
    """``[[hours:]minutes:]seconds[.frac]`` (PBS walltime syntax) -> seconds, or None when malformed."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or any(p == "" for p in parts):
        return None
    total = 0.0
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if last:
            try:
                v = float(p)
            except ValueError:
                return None
            if not p.replace(".", "", 1).isdigit():
                return None
        else:
            if not p.isdigit():
                return None
            v = int(p)
        total = total * 60 + v
    return total


def fmt_hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- processes
def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/pid/stat), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[19])


def proc_alive(pid: int | None, start_ticks: int | None) -> bool:
    if not pid:
        return False
    now = proc_start_ticks(pid)
    if now is None:
        return False
    if _proc_state(pid) == "Z":
        return False
    return start_ticks is None or now == start_ticks


def _proc_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()[0]


@dataclass
class GroupUsage:
    pids: list[int]
    cpu_seconds: float
    rss_kb: int
    vsize_kb: int
    threads: int


def group_usage(pgid: int | None) -> GroupUsage:
    """Live processes of process group ``pgid`` (zombies excluded) and their summed usage."""
    usage = GroupUsage([], 0.0, 0, 0, 0)
    if not pgid:
        return usage
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        if int(f[2]) != pgid or f[0] == "Z":
            continue
        usage.pids.append(int(entry))
        usage.cpu_seconds += (int(f[11]) + int(f[12])) / SC_CLK_TCK
        usage.vsize_kb += int(f[20]) // 1024
        usage.rss_kb += int(f[21]) * PAGE_KB
        usage.threads += int(f[17])
    usage.pids.sort()
    return usage


def signal_group(pgid: int | None, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def parse_signal(text: str) -> int | None:
    """``USR1``, ``SIGUSR1`` or ``10`` -> signal number (None when unknown)."""
    t = text.strip().upper()
    if t.isdigit():
        return int(t) if 0 < int(t) < signal.NSIG else None
    if not t.startswith("SIG"):
        t = "SIG" + t
    try:
        return int(signal.Signals[t])
    except KeyError:
        return None


def spawn_detached(argv: list[str], log_path: Path) -> None:
    """Double fork + setsid: the process outlives the ssh session that submitted the job.

    All inherited descriptors are closed so that sshd does not keep the channel open.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 65536)
        os.umask(0o022)
        os.execv(sys.executable, argv)
    except BaseException:  # noqa: BLE001 - the child must never return into the caller's code
        os._exit(127)


def _exec_retrying(argv: list[str], env: dict[str, str]) -> None:
    """execve, again for up to 2 s while the kernel says ETXTBSY: a job script that a process forked meanwhile
    (another job's start, holding the copy's write descriptor until its own exec) still has open for writing
    cannot be executed yet. A real batch system's execution daemon has the same race and waits it out too."""
    for attempt in range(40):
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            if exc.errno != errno.ETXTBSY or attempt == 39:
                raise
            time.sleep(0.05)


# --------------------------------------------------------------------------- execution host
# Real PBS and LSF start jobs on the execution host through a root daemon (pbs_mom, sbatchd), not on the
# login node where qsub/bsub ran.  The test clusters put that host in its own network namespace: with
# PILOT_EMU_EXEC_SPOOL=DIR (set by the login node's sshd) the submit command leaves a request in DIR, and
# the execution daemon (``pbsemu.py mom`` / ``lsfemu.py mom``, root, in the compute node's namespace)
# starts the supervisor there, as the user who owns the request (never root), on the request's job table.
SPOOL_ENV = "PILOT_EMU_EXEC_SPOOL"


def launch_supervisor(store: Store, job_id: str, script: str) -> None:
    """Start the job's supervisor here, or hand it to the execution daemon (see above)."""
    spool = os.environ.get(SPOOL_ENV)
    if not spool:
        spawn_detached([sys.executable, script, "supervise", str(job_id)],
                       store.job_dir(job_id) / "supervisor.log")
        return
    name = f"{job_id}.{os.getpid()}.{time.monotonic_ns()}"
    tmp = Path(spool) / f".{name}"
    tmp.write_text(json.dumps({"state": str(store.dir), "job": str(job_id)}))
    os.replace(tmp, Path(spool) / name)


def _start_as(uid: int, argv: list[str], log_path: Path, state_dir: Path) -> None:
    """Fork; the child drops to ``uid`` and starts ``argv`` detached with the job table ``state_dir``."""
    user = pwd.getpwuid(uid)
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(uid)
        os.chdir(user.pw_dir)
        os.environ.clear()
        os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell,
                          PATH=f"{Path(argv[1]).parent.parent / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                          PILOT_EMU_STATE=str(state_dir))
        spawn_detached(argv, log_path)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the daemon's loop
        print(f"cannot start {argv} as uid {uid}: {exc}", flush=True)
        os._exit(1)
    os._exit(0)


def _read_request(req: Path) -> tuple[int, Path, str]:
    """(owner uid, job table, job id) of a request; ValueError when it is not one to act on.

    Root reads it: no symlink is followed, nothing but a small regular file with one link and an owner
    other than root is read (the spool is world-writable, like /tmp).
    """
    fd = os.open(req, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid == 0:
            raise ValueError(f"not a plain file of an ordinary user (mode {st.st_mode:o}, uid {st.st_uid})")
        pwd.getpwuid(st.st_uid)   # KeyError: an owner without an account
        data = json.loads(os.read(fd, 4096))
        state, job_id = Path(data["state"]), str(data["job"])
    finally:
        os.close(fd)
    if not job_id.isdigit() or not state.is_absolute():
        raise ValueError(f"bad job id {job_id!r} or job table {str(state)!r}")
    return st.st_uid, state, job_id


def run_exec_daemon(script: str, poll: float = 0.1) -> int:
    """The execution daemon's loop: one supervisor per request in $PILOT_EMU_EXEC_SPOOL, as the request's owner."""
    spool = Path(os.environ[SPOOL_ENV])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pidfile = os.environ.get("PILOT_EMU_EXEC_PIDFILE")
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} execution daemon on {short_hostname()}, spool {spool}", flush=True)
    refused: set[str] = set()
    while True:
        for req in sorted(spool.glob("[0-9]*")):
            if req.name in refused:
                continue
            try:
                uid, state, job_id = _read_request(req)
            except Exception as exc:  # noqa: BLE001 - a bad request is reported and dropped, the daemon goes on
                print(f"refusing request {req.name}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                refused.add(req.name)
                with contextlib.suppress(OSError):
                    req.unlink()
                    refused.discard(req.name)
                continue
            with contextlib.suppress(OSError):
                req.unlink()
            _start_as(uid, [sys.executable, script, "supervise", job_id],
                      state / "jobs" / job_id / "supervisor.log", state)
        time.sleep(poll)


# --------------------------------------------------------------------------- scheduling
def allocation(jobs: dict[str, dict[str, Any]], slots: int, now: float) -> set[str]:
    """Ids of queued jobs that may start now: first fit in id order over eligible jobs."""
    used = sum(j["ncpus"] for j in jobs.values() if j["state"] in (RUNNING, EXITING) or j.get("starting"))
    free = slots - used
    chosen: set[str] = set()
    for jid in sorted(jobs, key=int):
        j = jobs[jid]
        if j["state"] != QUEUED or j.get("starting") or now < j["eligible_at"]:
            continue
        if j["ncpus"] <= free:
            chosen.add(jid)
            free -= j["ncpus"]
    return chosen


def queue_wait_reason(jobs: dict[str, dict[str, Any]], job: dict[str, Any], slots: int) -> tuple[int, int]:
    """(requested, available) CPUs for a job that could not start."""
    used = sum(j["ncpus"] for j in jobs.values() if j["state"] in (RUNNING, EXITING) or j.get("starting"))
    return job["ncpus"], max(0, slots - used)


# --------------------------------------------------------------------------- supervisor
class Supervisor:
    """Runs one job from queued to finished.  Started detached by the submit command."""

    WAIT_POLL = 0.5   # real seconds between checks while queued or held
    RUN_POLL = 0.1    # real seconds between checks while running

    def __init__(self, policy: Any, store: Store, job_id: str) -> None:
        self.policy = policy
        self.store = store
        self.job_id = str(job_id)
        self.me = os.getpid()
        self.my_start = proc_start_ticks(self.me)
        self.schedule: list[tuple[float, int]] = []   # (real time, signal) still to send
        self.events_done: set[str] = set()
        self.kill_seen = False
        self.last_kill = ""

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {self.job_id}: {msg}", flush=True)

    # ---- phase 1: wait for a slot
    def claim_and_wait(self) -> dict[str, Any] | None:
        with self.store.locked() as st:
            job = st["jobs"].get(self.job_id)
            if job is None or job["state"] not in (QUEUED, HELD):
                return None
            if job.get("sup_pid") and job["sup_pid"] != self.me and proc_alive(job["sup_pid"], job.get("sup_start")):
                self.log(f"another supervisor ({job['sup_pid']}) owns the job; exiting")
                return None
            job["sup_pid"], job["sup_start"] = self.me, self.my_start
        seen, checked_eligible = -1, False
        while True:
            stamp = self.store.stamp()
            eligible_now = not checked_eligible and time.time() >= job["eligible_at"]
            if stamp == seen and not eligible_now:
                time.sleep(self.WAIT_POLL)   # nothing changed: no job ended, no qrls, no qdel
                continue
            seen, checked_eligible = stamp, checked_eligible or eligible_now
            st = self.store.read()
            job = st["jobs"].get(self.job_id)
            if job is None or job["state"] not in (QUEUED, HELD):
                return None
            if job["state"] == QUEUED and time.time() >= job["eligible_at"]:
                with self.store.locked() as st:
                    job = st["jobs"].get(self.job_id)
                    if job is None or job["state"] not in (QUEUED, HELD):
                        return None
                    now = time.time()
                    if job["state"] == QUEUED and self.job_id in allocation(st["jobs"], self.store.settings.slots, now):
                        job["starting"] = True
                        return dict(job)
                    if job["state"] == QUEUED:
                        need, avail = queue_wait_reason(st["jobs"], job, self.store.settings.slots)
                        self.policy.on_wait(job, need, avail, self.store.settings.slots)
            time.sleep(self.WAIT_POLL)

    # ---- phase 2: start the process group
    def start(self, job: dict[str, Any]) -> int | None:
        spec = self.policy.launch_spec(job, self.store)
        jdir = self.store.job_dir(self.job_id)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the job: its own session, so its pgid is its pid
            try:
                os.close(r)
                os.setsid()
                os.umask(0o022)
                fd_in = os.open(os.devnull, os.O_RDONLY)
                fd_out = _open_output(spec["stdout"], spec.get("stdout_append", True))
                fd_err = fd_out if spec["stderr"] == spec["stdout"] else _open_output(
                    spec["stderr"], spec.get("stderr_append", True))
                os.dup2(fd_in, 0)
                os.dup2(fd_out, 1)
                os.dup2(fd_err, 2)
                try:
                    os.chdir(spec["cwd"])
                except OSError as exc:
                    os.write(2, f"{spec['cwd']}: {exc.strerror}\n".encode())
                    os.chdir(spec.get("fallback_cwd", "/"))
                os.closerange(3, w)      # w itself is close-on-exec: the supervisor reads EOF on success
                os.closerange(w + 1, 65536)
                for sig in (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)  # the supervisor ignores some; exec keeps SIG_IGN
                _exec_retrying(spec["argv"], spec["env"])
            except BaseException as exc:  # noqa: BLE001 - report anything to the supervisor and the job
                for fd in (w, 2):
                    with contextlib.suppress(OSError):
                        os.write(fd, f"cannot start job: {exc}\n".encode())
                os._exit(127)
        os.close(w)
        failure = os.read(r, 4096).decode(errors="replace").strip()
        os.close(r)
        if failure:
            self.log(failure)
        now = time.time()
        with self.store.locked() as st:
            rec = st["jobs"].get(self.job_id)
            if rec is None or rec["state"] != QUEUED:   # deleted while it was being started
                signal_group(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                if rec is not None:
                    rec.pop("starting", None)
                return None
            rec.pop("starting", None)
            rec.update(state=RUNNING, pid=pid, pgid=pid, stime=now, mtime=now, run_count=rec.get("run_count", 0) + 1,
                       exec_host=short_hostname(), workdir=spec["cwd"], tmpdir=spec.get("tmpdir"))
            self.policy.on_start(rec)
            job.update(rec)
        self.log(f"started pid {pid}: {spec['argv']}")
        (jdir / "started").write_text(str(pid))
        return pid

    # ---- phase 3: watch it
    def emulated_elapsed(self, job: dict[str, Any], now: float) -> float:
        return (now - job["stime"]) * job["time_scale"]

    def real_delay(self, job: dict[str, Any], emulated_seconds: float) -> float:
        return emulated_seconds / job["time_scale"]

    def watch(self, job: dict[str, Any], pid: int) -> tuple[int, Any]:
        kill_file = self.store.job_dir(self.job_id) / "kill"
        while True:
            try:
                wpid, status, rusage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                return 0, None
            if wpid == pid:
                return status, rusage
            now = time.time()
            try:
                raw_kill = kill_file.read_text()
            except OSError:
                raw_kill = ""
            if raw_kill and raw_kill != self.last_kill:
                self.kill_seen = True
                self.last_kill = raw_kill
                try:
                    request = json.loads(raw_kill)
                except ValueError:
                    request = {}
                self.log(f"kill request {request}")
                self.schedule.extend(self.policy.kill_sequence(job, request, now))
                with self.store.locked() as st:
                    rec = st["jobs"].get(self.job_id)
                    if rec is not None:
                        self.policy.on_kill_request(rec, request)
                        job.update(rec)
            for name, at_emulated in self.policy.limit_events(job):
                if name in self.events_done or self.kill_seen:
                    continue
                if self.emulated_elapsed(job, now) >= at_emulated:
                    self.events_done.add(name)
                    self.log(f"limit event {name}")
                    steps, updates = self.policy.on_limit(job, name, now, self.emulated_elapsed(job, now))
                    self.schedule.extend(steps)
                    if updates:
                        with self.store.locked() as st:
                            rec = st["jobs"].get(self.job_id)
                            if rec is not None:
                                rec.update(updates)
                                job.update(rec)
            due = [s for s in self.schedule if s[0] <= now]
            for item in due:
                self.schedule.remove(item)
                self.log(f"signal {signal_name(item[1])} to process group {pid}")
                signal_group(pid, item[1])
            time.sleep(self.RUN_POLL)

    # ---- phase 4: record the end
    def finish(self, job: dict[str, Any], status: int, rusage: Any) -> None:
        pgid = job["pgid"]
        leftovers = group_usage(pgid).pids
        if leftovers:
            self.log(f"killing leftover processes {leftovers}")
            signal_group(pgid, signal.SIGKILL)
        now = time.time()
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        term_sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cpu = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
        max_rss = rusage.ru_maxrss if rusage is not None else 0
        with self.store.locked() as st:
            rec = st["jobs"].get(self.job_id)
            if rec is None:
                return
            rec.update(state=FINISHED, end_time=now, mtime=now, exit_code=exit_code, term_signal=term_sig,
                       cpu_time=cpu, max_rss_kb=max_rss,
                       walltime_used=self.emulated_elapsed(rec, now))
            self.policy.on_finish(rec)
            job.update(rec)
        self.policy.after_finish(job, self.store)
        self.log(f"finished: exit code {exit_code}, signal {term_sig}")

    def run(self) -> int:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        job = self.claim_and_wait()
        if job is None:
            return 0
        try:
            pid = self.start(job)
        except Exception as exc:  # noqa: BLE001 - any failure to start must end the job, not leave it queued
            self.log(f"cannot start the job: {exc!r}")
            now = time.time()
            with self.store.locked() as st:
                rec = st["jobs"].get(self.job_id)
                if rec is not None:
                    rec.pop("starting", None)
                    rec.update(state=FINISHED, end_time=now, mtime=now, exit_code=None, term_signal=None,
                               lost=True, start_error=str(exc), walltime_used=0.0)
                    self.policy.on_finish(rec)
            return 1
        if pid is None:
            return 0
        status, rusage = self.watch(job, pid)
        self.finish(job, status, rusage)
        return 0


def _open_output(path: str, append: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        os.write(2, f"cannot open {path}: {exc.strerror}\n".encode())
        return os.open(os.devnull, os.O_WRONLY)


# --------------------------------------------------------------------------- housekeeping
def reap(policy: Any, store: Store) -> None:
    """Run by every command: purge expired history, respawn or settle jobs whose supervisor died."""
    now = time.time()
    respawn: list[str] = []
    purge: list[str] = []
    st = store.read()
    needs_lock = False
    for job in st["jobs"].values():
        expired = job["state"] == FINISHED and now - job.get("end_time", now) > store.settings.history
        if expired or job["state"] in ACTIVE_STATES and _supervisor_lost(job, now):
            needs_lock = True
    if not needs_lock:
        return
    with store.locked() as st:
        for jid, job in list(st["jobs"].items()):
            if job["state"] == FINISHED and now - job.get("end_time", now) > store.settings.history:
                del st["jobs"][jid]
                purge.append(jid)
            elif job["state"] in ACTIVE_STATES and _supervisor_lost(job, now):
                if job["state"] in (QUEUED, HELD):
                    job.pop("starting", None)
                    job["sup_pid"], job["sup_start"], job["spawned_at"] = None, None, now
                    respawn.append(jid)
                else:  # running without a supervisor: nobody can collect its exit status any more
                    signal_group(job.get("pgid"), signal.SIGKILL)
                    job.update(state=FINISHED, end_time=now, mtime=now, exit_code=None, term_signal=None,
                               lost=True, walltime_used=(now - job.get("stime", now)) * job["time_scale"])
                    policy.on_finish(job)
    for jid in purge:
        _rmtree(store.job_dir(jid))
    for jid in respawn:
        policy.spawn_supervisor(store, jid)


def _supervisor_lost(job: dict[str, Any], now: float) -> bool:
    if job.get("sup_pid"):
        return not proc_alive(job["sup_pid"], job.get("sup_start"))
    return now - job.get("spawned_at", now) > 30.0


def _rmtree(path: Path) -> None:
    if not path.exists():
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def rmtree(path: Path | str | None) -> None:
    if path:
        _rmtree(Path(path))


def write_kill_request(store: Store, job_id: str, request: dict[str, Any]) -> None:
    path = store.job_dir(job_id) / "kill"
    tmp = path.with_name(".kill.tmp")
    tmp.write_text(json.dumps(request))
    os.replace(tmp, path)


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))
