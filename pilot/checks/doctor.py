"""``pilot doctor``: check, one by one, everything a cluster needs before pilots can work there.

Each check is run for real, the way the manager and the pilot job will do it: the SSH connection through
the same transport, the scheduler commands on the same (non-login) PATH the manager uses, the ``setup``
lines under ``bash`` with ``set -e`` as in the job script, the worker command and Python after them, the
database reached *from the cluster* with the cluster's launchpad file. Every failure says what to do.

The checks, in order (ids as in ``--json``):

``config``      the config directory loads (every file, every field)
``ssh``         the SSH connection works and the host key is known (local clusters: this machine)
``scheduler``   the scheduler's commands are on the PATH (the adapter's own submit/status/history/cancel)
``work_dir``    work_dir can be created, written and cleaned (a probe file)
``setup``       the setup lines succeed (``bash -c 'set -e; <setup>'``, in work_dir, with ``env:``)
``python``      after setup, Python imports fireworks and pilot (versions compared with this machine's)
``worker``      after setup, the worker command starts (``<worker command> --help``)
``database``    after setup, the cluster's launchpad file reaches the database (ping + one read)
``launchpad_file``  that file is readable by its owner alone (it holds the database password)
``render``      a pilot script renders for every category and passes ``bash -n`` on the cluster

A failed check makes the ones that depend on it ``skip``; ``warn`` is a pass with a note. The exit code of
``pilot doctor`` is 0 only when no check failed.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = [
    "DB_PROBE",
    "PROBE_MARK",
    "PY_PROBE",
    "CheckResult",
    "CheckStatus",
    "ClusterDoctor",
    "ClusterReport",
    "DoctorReport",
    "check_config",
    "format_check",
    "mark",
    "run_doctor",
    "with_setup",
]

#: The line prefix under which the probes print their JSON result (setup lines may print other things).
PROBE_MARK = "PILOT-PROBE "

#: Run by the cluster's Python after setup: versions of Python, fireworks and fireworks-pilot.
PY_PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import fireworks
    out["fireworks"] = getattr(fireworks, "__version__", "?")
except Exception as e:
    out["error"] = "cannot import fireworks: %s: %s" % (type(e).__name__, e)
try:
    import pilot
    out["pilot"] = pilot.__version__
except Exception as e:
    out.setdefault("error", "cannot import pilot (fireworks-pilot): %s: %s" % (type(e).__name__, e))
print("PILOT-PROBE " + json.dumps(out))
"""

#: Run by the cluster's Python after setup: LaunchPad.from_file(argv[1]), then ping and one read.
#: argv[2] = server selection timeout in ms.
DB_PROBE = r"""
import json, os, sys, time
path = os.path.expanduser(sys.argv[1])
from fireworks import LaunchPad
lp = LaunchPad.from_file(path)
d = lp.to_dict()
kw = dict(d.get("mongoclient_kwargs") or {})
kw.setdefault("serverSelectionTimeoutMS", int(sys.argv[2]))
d["mongoclient_kwargs"] = kw
d["strm_lvl"] = "ERROR"
lp = LaunchPad.from_dict(d)
t = time.time()
lp.connection.admin.command("ping")
lp.fireworks.find_one({}, {"_id": 1})
print("PILOT-PROBE " + json.dumps({"database": lp.db.name, "seconds": round(time.time() - t, 3)}))
"""


class CheckStatus(str, Enum):
    """The outcome of one check."""

    PASS = "pass"
    WARN = "warn"     # passed, with something worth knowing
    FAIL = "fail"
    SKIP = "skip"     # not run: a check it depends on failed


@dataclass
class CheckResult:
    """One check: what was checked, what came out, and what to do about a failure.

    Attributes
    ----------
    id : str
        Stable identifier (``ssh``, ``database`` ...).
    title : str
        What is checked, in words.
    status : CheckStatus
    detail : str
        What was found (for a failure: what failed, the command, the end of its stderr).
    fix : str | None
        What to do (failures and warnings).
    seconds : float
        How long the check took.
    """

    id: str
    title: str
    status: CheckStatus
    detail: str = ""
    fix: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status.value, "detail": self.detail,
                "fix": self.fix, "seconds": round(self.seconds, 3)}


@dataclass
class ClusterReport:
    """The checks of one cluster."""

    name: str
    scheduler: str | None
    address: str | None
    file: str | None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scheduler": self.scheduler, "address": self.address, "file": self.file,
                "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


@dataclass
class DoctorReport:
    """Everything ``pilot doctor`` found (``--json`` prints :meth:`to_dict`)."""

    config_dir: str
    config: CheckResult
    clusters: list[ClusterReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.config.failed and all(c.ok for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "config_dir": self.config_dir, "config": self.config.to_dict(),
                "clusters": [c.to_dict() for c in self.clusters]}


# ============================================================================ helpers
def with_setup(setup: str, argv: list[str]) -> list[str]:
    """``argv`` run after the ``setup`` lines, as the pilot job script runs them (bash, ``set -e``).

    The setup text goes to ``bash -c`` as one argument and ``argv`` follows as ``"$@"``, so nothing is
    re-quoted: ``["bash", "-c", "set -e; trap ... ERR; <setup>\\ntrap - ERR\\nexec \\"$@\\"", "pilot-setup",
    *argv]``. The first setup line shares the script's first line, so that line numbers in bash's own
    messages (``pilot-setup: line N: ...``) and in ``pilot: setup failed at line N (exit code C)`` (from
    the ERR trap) are the numbers of the setup lines.
    """
    text = setup.strip("\n")
    if not text.strip():
        return ["bash", "-c", 'exec "$@"', "pilot-setup", *argv]
    script = ("set -e; trap 'echo \"pilot: setup failed at line $LINENO (exit code $?)\" >&2' ERR; "
              + text + "\ntrap - ERR\nexec \"$@\"")
    return ["bash", "-c", script, "pilot-setup", *argv]


def _tail(text: str, lines: int = 6) -> str:
    rows = [ln for ln in (text or "").rstrip().splitlines() if ln.strip()]
    return "\n".join(rows[-lines:])


def _last(text: str) -> str:
    rows = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return rows[-1] if rows else ""


def _short_error(line: str, limit: int = 300) -> str:
    """A Python error line without pymongo's topology dump (``..., Timeout: 10.0s, Topology Description: ...``)."""
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description"):
        i = line.find(cut)
        if i > 0:
            line = line[:i]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _probe(stdout: str) -> dict[str, Any] | None:
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                data = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def address_of(cluster: Any) -> str:
    """``user@host:port`` (``local`` for a local cluster)."""
    if cluster.is_local or not cluster.host:
        return "local"
    user = f"{cluster.user}@" if cluster.user else ""
    port = f":{cluster.port}" if cluster.port != 22 else ""
    return f"{user}{cluster.host}{port}" + (f" via {cluster.proxy_jump}" if cluster.proxy_jump else "")


def ssh_prefix(cluster: Any) -> str:
    """The ``ssh ...`` words a person types to run a command on the cluster (for fixes)."""
    if cluster.is_local or not cluster.host:
        return ""
    words = ["ssh"]
    if cluster.port != 22:
        words += ["-p", str(cluster.port)]
    if cluster.identity_file:
        words += ["-i", str(cluster.identity_file)]
    if cluster.proxy_jump:
        words += ["-J", cluster.proxy_jump]
    words.append(f"{cluster.user}@{cluster.host}" if cluster.user else cluster.host)
    return " ".join(words) + " "


def scheduler_commands(cluster: Any) -> list[str]:
    """The programs the manager runs on the cluster: the first word of every adapter command."""
    from pilot.transport.clusters import adapter_for

    ad = adapter_for(cluster)
    argvs = [ad.submit_command("/x/pilot.sh"), ad.status_command(user=cluster.user), ad.cancel_command(["1"])]
    hist = ad.history_command(["1"])
    if hist:
        argvs.append(hist)
    out: list[str] = []
    for argv in argvs:
        words = list(argv)
        if words[:1] == ["env"]:   # env VAR=value program ...
            words = words[1:]
            while words and "=" in words[0] and not words[0].startswith("/"):
                words = words[1:]
        if words and words[0] not in out:
            out.append(words[0])
    return out


# ============================================================================ config
def check_config(config_dir: Path) -> tuple[CheckResult, Any | None, dict[str, Any], str]:
    """Load the config directory.

    Returns
    -------
    (result, config, clusters, prefix)
        ``config`` is the loaded :class:`~pilot.config.Config` (``None`` if it has problems); ``clusters``
        maps names to the cluster files that load on their own (so the other checks still run for them);
        ``prefix`` is the job-name prefix to render with.
    """
    from pilot.config import (
        CLUSTERS_DIR,
        PILOT_FILE,
        ConfigError,
        load_cluster,
        load_config,
        load_pilot_config,
    )

    t0 = time.monotonic()
    title = "config valid"
    try:
        cfg = load_config(config_dir)
    except ConfigError as e:
        clusters: dict[str, Any] = {}
        cdir = Path(config_dir) / CLUSTERS_DIR
        for path in sorted([*cdir.glob("*.yaml"), *cdir.glob("*.yml")]) if cdir.is_dir() else []:
            try:
                clusters[path.stem] = load_cluster(path)
            except ConfigError:
                continue
        try:
            prefix = load_pilot_config(Path(config_dir) / PILOT_FILE).job_name_prefix
        except ConfigError:
            prefix = "fwp"
        res = CheckResult("config", title, CheckStatus.FAIL, detail=str(e),
                          fix="correct each field named above (docs/configuration.md); `pilot config check` "
                              "repeats this list", seconds=time.monotonic() - t0)
        return res, None, clusters, prefix
    n = len(cfg.clusters)
    res = CheckResult("config", title, CheckStatus.PASS,
                      detail=f"{config_dir}: pilot.yaml and {n} cluster file{'s' if n != 1 else ''}",
                      seconds=time.monotonic() - t0)
    return res, cfg, dict(cfg.clusters), cfg.pilot.job_name_prefix


# ============================================================================ one cluster
class ClusterDoctor:
    """Runs the checks of one cluster in order (see the module docstring).

    Parameters
    ----------
    name : str
        The cluster's name.
    cluster : pilot.config.ClusterConfig
    job_name_prefix : str
        For the rendered test script.
    transport : Transport | None
        Default: :func:`pilot.transport.clusters.transport_for` (SSH, or local for ``scheduler: local``).
    local_version : str | None
        This machine's fireworks-pilot version, compared with the cluster's (default: ``pilot.__version__``).
    """

    def __init__(self, name: str, cluster: Any, job_name_prefix: str = "fwp", transport: Any | None = None,
                 local_version: str | None = None) -> None:
        from pilot import __version__

        self.name = name
        self.c = cluster
        self.prefix = job_name_prefix
        self._transport = transport
        self.local_version = local_version or __version__
        self.timeout = float(cluster.command_timeout)
        self.state: dict[str, CheckStatus] = {}
        self.python_info: dict[str, Any] | None = None

    @property
    def transport(self) -> Any:
        if self._transport is None:
            from pilot.transport.clusters import transport_for

            self._transport = transport_for(self.name, self.c)
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def file(self) -> str:
        return str(self.c.source_file) if self.c.source_file else f"clusters/{self.name}.yaml"

    @property
    def interpreter(self) -> str:
        """The Python the checks use after setup: ``python:`` if set, else ``python3``."""
        return self.c.python or "python3"

    # the checks, in order: (id, title, method, ids it needs to have passed)
    def plan(self) -> list[tuple[str, str, Callable[[], CheckResult], tuple[str, ...]]]:
        return [
            ("ssh", "SSH connection and host key" if not self.c.is_local else "this machine (scheduler local)",
             self.check_ssh, ()),
            ("scheduler", "scheduler commands present", self.check_scheduler, ("ssh",)),
            ("work_dir", "work_dir writable", self.check_work_dir, ("ssh",)),
            ("setup", "setup lines run", self.check_setup, ("ssh",)),
            ("python", "Python imports fireworks and pilot", self.check_python, ("setup",)),
            ("worker", "pilot worker starts", self.check_worker, ("setup",)),
            ("database", "database reachable from the cluster", self.check_database, ("python",)),
            ("launchpad_file", "launchpad file readable by its owner only", self.check_launchpad_file, ("ssh",)),
            ("render", "pilot script renders", self.check_render, ()),
        ]

    def run(self, on_start: Callable[[str, str], None] | None = None) -> Iterator[CheckResult]:
        """Run the checks one by one, yielding each result as soon as it is known."""
        for cid, title, fn, needs in self.plan():
            missing = [n for n in needs if self.state.get(n) not in (CheckStatus.PASS, CheckStatus.WARN)]
            if missing:
                res = CheckResult(cid, title, CheckStatus.SKIP, detail=f"not run: needs the {missing[0]} check")
            else:
                if on_start:
                    on_start(cid, title)
                t0 = time.monotonic()
                res = self._safely(cid, title, fn)
                res.seconds = time.monotonic() - t0
            self.state[cid] = res.status
            yield res

    def _safely(self, cid: str, title: str, fn: Callable[[], CheckResult]) -> CheckResult:
        from pilot.transport import TransportError

        try:
            return fn()
        except TransportError as e:
            return CheckResult(cid, title, CheckStatus.FAIL, detail=str(e).split("\n  try:")[0],
                               fix=e.hint or "see the error above")

    def _run(self, argv: list[str], stdin: str | None = None, cwd: str | None = None,
             env: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        return self.transport.run(argv, timeout=timeout or self.timeout, stdin=stdin, cwd=cwd, env=env)

    def _after_setup(self, argv: list[str], timeout: float | None = None) -> Any:
        cwd = self.c.work_dir if self.state.get("work_dir") is CheckStatus.PASS else None
        return self._run(with_setup(self.c.setup, argv), cwd=cwd, env=dict(self.c.env) or None, timeout=timeout)

    # ------------------------------------------------------------------ the checks
    def check_ssh(self) -> CheckResult:
        from pilot.transport import AuthenticationError, ConnectError, HostKeyError, TransportError

        title = "SSH connection and host key" if not self.c.is_local else "this machine (scheduler local)"
        try:
            res = self._run(["id", "-un"], timeout=max(self.timeout, float(self.c.connect_timeout) + 5))
        except HostKeyError as e:
            kh = self.c.known_hosts
            fix = e.hint or (f"ssh-keyscan -p {self.c.port} {self.c.host} >> {kh}  (then compare the fingerprint "
                             "with the one the cluster's documentation gives)")
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=e.what, fix=fix)
        except AuthenticationError as e:
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=e.what, fix=e.hint)
        except (ConnectError, TransportError) as e:
            detail = e.what + (f" ({_last(e.stderr_tail)})" if e.stderr_tail else "")
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=detail, fix=e.hint or (
                f"check host and port in {self.file}, and that you can log in: {ssh_prefix(self.c)}true"))
        if res.returncode != 0:
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=f"`id -un` exited with {res.returncode}: "
                               f"{_tail(res.stderr)}", fix="check the account's login shell on the cluster")
        who = res.stdout.strip()
        if self.c.is_local:
            return CheckResult("ssh", title, CheckStatus.PASS, detail=f"pilots run here as {who} (no SSH)")
        return CheckResult("ssh", title, CheckStatus.PASS,
                           detail=f"logged in as {who} on {address_of(self.c)} in {res.duration:.2f} s "
                                  f"(host key in {self.c.known_hosts})")

    def check_scheduler(self) -> CheckResult:
        title = "scheduler commands present"
        cmds = scheduler_commands(self.c)
        script = 'for c; do command -v "$c" >/dev/null 2>&1 || printf "%s\\n" "$c"; done'
        res = self._run(["sh", "-c", script, "pilot-doctor", *cmds])
        missing = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        if res.returncode != 0:
            return CheckResult("scheduler", title, CheckStatus.FAIL, detail=f"the shell exited with "
                               f"{res.returncode}: {_tail(res.stderr)}", fix="check the login shell on the cluster")
        if missing:
            sched = self.c.scheduler.value
            return CheckResult(
                "scheduler", title, CheckStatus.FAIL,
                detail=f"not found on the PATH of a non-interactive SSH command: {', '.join(missing)} "
                       f"(scheduler: {sched} needs {', '.join(cmds)})",
                fix=(f"is this a {sched} cluster? check `scheduler:` in {self.file}. The manager runs these "
                     "commands without your setup lines: if they come from a module, make them available in "
                     "non-interactive shells (e.g. `module load` near the top of ~/.bashrc, before any "
                     f"interactive-only guard); test with: {ssh_prefix(self.c)}command -v {missing[0]}"))
        return CheckResult("scheduler", title, CheckStatus.PASS, detail=f"found {', '.join(cmds)}")

    def check_work_dir(self) -> CheckResult:
        from pilot.transport import RemotePathError

        title = "work_dir writable"
        wd = self.c.work_dir
        probe = f"{wd}/.pilot-doctor-{secrets.token_hex(4)}"
        tr = self.transport
        try:
            tr.makedirs(wd)
            tr.put(b"fireworks-pilot doctor probe\n", probe, mode=0o600)
            size = tr.stat(probe).size
            tr.remove(probe)
        except RemotePathError as e:
            return CheckResult("work_dir", title, CheckStatus.FAIL, detail=f"{e.what} ({_last(e.stderr_tail)})",
                               fix=(f"create it or choose a directory you can write: {ssh_prefix(self.c)}"
                                    f"mkdir -p {wd}, or change work_dir in {self.file}"))
        if size != len(b"fireworks-pilot doctor probe\n"):
            return CheckResult("work_dir", title, CheckStatus.FAIL,
                               detail=f"a probe file written to {wd} came back with {size} bytes",
                               fix="check the file system's quota and health (`df`, `quota`)")
        return CheckResult("work_dir", title, CheckStatus.PASS, detail=f"created, wrote and removed a file in {wd}")

    def check_setup(self) -> CheckResult:
        title = "setup lines run"
        if not self.c.setup.strip():
            return CheckResult("setup", title, CheckStatus.PASS,
                               detail="no setup lines: the worker runs in the login environment")
        res = self._after_setup(["true"])
        n = len(self.c.setup.strip("\n").splitlines())
        if res.returncode != 0:
            return CheckResult(
                "setup", title, CheckStatus.FAIL,
                detail=f"bash -c 'set -e; <setup>' exited with {res.returncode}:\n{_tail(res.stderr)}",
                fix=(f"correct the failing line of `setup:` in {self.file} (line numbers count the setup "
                     f"lines); try the lines by hand in a login on the cluster: {ssh_prefix(self.c)}"))
        return CheckResult("setup", title, CheckStatus.PASS,
                           detail=f"{n} line{'s' if n != 1 else ''} ran with set -e under bash")

    def check_python(self) -> CheckResult:
        title = "Python imports fireworks and pilot"
        py = self.interpreter
        res = self._after_setup([py, "-c", PY_PROBE])
        info = _probe(res.stdout)
        fix = (f"install fireworks-pilot {self.local_version} in the environment your setup lines activate: "
               f"`pilot bootstrap {self.name}` does it (a venv in work_dir), or set python: in {self.file}")
        if res.returncode != 0 or info is None:
            why = f"{py} exited with {res.returncode}" if res.returncode != 127 else f"{py}: command not found"
            return CheckResult("python", title, CheckStatus.FAIL, detail=f"{why}: {_tail(res.stderr, 3)}", fix=fix)
        self.python_info = info
        where = f"Python {info.get('python')} ({info.get('executable')})"
        if info.get("error"):
            return CheckResult("python", title, CheckStatus.FAIL, detail=f"{where}: {info['error']}", fix=fix)
        detail = f"{where}, fireworks {info.get('fireworks')}, fireworks-pilot {info.get('pilot')}"
        if info.get("pilot") != self.local_version:
            return CheckResult("python", title, CheckStatus.WARN,
                               detail=detail + f"; this machine has fireworks-pilot {self.local_version}",
                               fix=f"use the same version on both sides: `pilot bootstrap {self.name}`")
        return CheckResult("python", title, CheckStatus.PASS, detail=detail)

    def check_worker(self) -> CheckResult:
        import shlex

        title = "pilot worker starts"
        argv = list(self.c.worker_argv)
        res = self._after_setup([*argv, "--help"])
        shown = shlex.join(argv)
        if res.returncode != 0 or "--launchpad-file" not in res.stdout:
            what = (f"{argv[0]}: command not found" if res.returncode == 127 else
                    f"`{shown} --help` exited with {res.returncode}")
            return CheckResult("worker", title, CheckStatus.FAIL, detail=f"{what}: {_tail(res.stderr, 3)}",
                               fix=(f"the job starts the worker as `{shown}` after the setup lines: install "
                                    f"fireworks-pilot there (`pilot bootstrap {self.name}`), or correct "
                                    f"worker_command / python in {self.file}"))
        return CheckResult("worker", title, CheckStatus.PASS, detail=f"`{shown} --help` works after setup")

    def check_database(self) -> CheckResult:
        title = "database reachable from the cluster"
        lpf = self.c.launchpad_file
        wait_ms = int(min(20.0, max(5.0, self.timeout / 3)) * 1000)
        res = self._after_setup([self.interpreter, "-c", DB_PROBE, lpf, str(wait_ms)])
        info = _probe(res.stdout)
        if res.returncode == 0 and info is not None:
            return CheckResult("database", title, CheckStatus.PASS,
                               detail=f"{lpf}: database {info.get('database')} answered in {info.get('seconds')} s")
        err = _short_error(_last(res.stderr)) or f"exit code {res.returncode}"
        if "FileNotFoundError" in err or "No such file" in err:
            fix = (f"the launchpad file is missing on the cluster: `pilot bootstrap {self.name}` copies yours "
                   f"there (mode 600), or correct launchpad_file in {self.file}")
        elif "PermissionError" in err:
            fix = f"the cluster user cannot read {lpf}: {ssh_prefix(self.c)}chmod 600 {lpf} (as its owner)"
        elif "ServerSelectionTimeout" in err or "Connection refused" in err or "timed out" in err:
            fix = ("the cluster cannot reach the database at the address in its launchpad file: the address "
                   "must be reachable from the cluster's nodes (not 'localhost' of your laptop); if the server "
                   "is the embedded one, run it with --host on a reachable address, then "
                   f"`pilot bootstrap {self.name} --db-host ADDRESS` writes that address into the cluster's file; "
                   "check firewalls between the cluster and the database")
        elif "Authentication" in err or "auth" in err.lower():
            fix = f"the database refused the credentials in {lpf}: check username/password there"
        else:
            fix = f"read the error above; test by hand: {ssh_prefix(self.c)}lpad -l {lpf} get_fws -d count"
        return CheckResult("database", title, CheckStatus.FAIL, detail=f"{lpf}: {err}", fix=fix)

    def check_launchpad_file(self) -> CheckResult:
        import errno

        from pilot.transport import RemotePathError

        title = "launchpad file readable by its owner only"
        lpf = self.c.launchpad_file
        try:
            st = self.transport.stat(lpf)
        except RemotePathError as e:
            if e.errno == errno.ENOENT:
                return CheckResult("launchpad_file", title, CheckStatus.FAIL, detail=f"{lpf} does not exist",
                                   fix=(f"`pilot bootstrap {self.name}` copies your launchpad file there with "
                                        f"mode 600, or correct launchpad_file in {self.file}"))
            raise
        if st.mode & 0o077:
            return CheckResult("launchpad_file", title, CheckStatus.FAIL,
                               detail=(f"{lpf} has mode {st.mode:03o}: other users can read the database "
                                       "credentials in it"),
                               fix=f"{ssh_prefix(self.c)}chmod 600 {lpf}")
        return CheckResult("launchpad_file", title, CheckStatus.PASS, detail=f"{lpf} has mode {st.mode:03o}")

    def check_render(self) -> CheckResult:
        from pilot.render import RenderError, render_pilot_script
        from queue_adapters.base import job_name

        title = "pilot script renders"
        scripts = []
        for cat in self.c.categories:
            try:
                scripts.append((cat, render_pilot_script(self.c, self.name, cat,
                                                         job_name(cat, "doctor", prefix=self.prefix))))
            except RenderError as e:
                return CheckResult("render", title, CheckStatus.FAIL, detail=str(e),
                                   fix=f"correct the template or the field named above; see `pilot render {self.name}`")
        if self.state.get("ssh") not in (CheckStatus.PASS, CheckStatus.WARN):
            return CheckResult("render", title, CheckStatus.PASS,
                               detail=f"rendered for {', '.join(c for c, _ in scripts)} (bash -n skipped: no SSH)")
        for cat, text in scripts:
            res = self._run(["bash", "-n"], stdin=text)
            if res.returncode != 0:
                return CheckResult("render", title, CheckStatus.FAIL,
                                   detail=f"bash -n on the cluster rejects the script for {cat}: {_tail(res.stderr)}",
                                   fix=f"look at the script with `pilot render {self.name} -c {cat}` and correct "
                                       "the setup lines or the template")
        return CheckResult("render", title, CheckStatus.PASS,
                           detail=f"rendered for {', '.join(c for c, _ in scripts)}; bash -n on the cluster passes")


# ============================================================================ the whole run
def run_doctor(config_dir: Path, names: list[str] | None = None,
               on_cluster: Callable[[ClusterReport], None] | None = None,
               on_start: Callable[[str, str, str], None] | None = None,
               on_result: Callable[[str | None, CheckResult], None] | None = None) -> DoctorReport:
    """Check the config directory, then every cluster (or those in ``names``), one check at a time.

    Parameters
    ----------
    config_dir : Path
    names : list[str] | None
        Clusters to check (default: all).
    on_cluster, on_start, on_result : callables, optional
        Called when a cluster's checks begin, when a check starts (cluster, id, title), and with each
        result as soon as it is known (cluster ``None`` for the config check), so a caller can print
        progress.

    Raises
    ------
    KeyError
        A name in ``names`` that is not a cluster of the config directory (the message lists them).
    """
    import difflib

    res, _cfg, clusters, prefix = check_config(config_dir)
    report = DoctorReport(config_dir=str(config_dir), config=res)
    if on_result:
        on_result(None, res)
    wanted = list(clusters) if not names else names
    for n in wanted:
        if n not in clusters:
            close = difflib.get_close_matches(n, list(clusters), n=1)
            did = f" (did you mean {close[0]!r}?)" if close else ""
            why = "" if res.status is CheckStatus.PASS else " that loads without problems"
            raise KeyError(f"no cluster {n!r}{did}{why} in {Path(config_dir) / 'clusters'}; known: "
                           f"{', '.join(clusters) or 'none'}")
    for n in wanted:
        c = clusters[n]
        cr = ClusterReport(name=n, scheduler=c.scheduler.value, address=address_of(c),
                           file=str(c.source_file) if c.source_file else None)
        report.clusters.append(cr)
        if on_cluster:
            on_cluster(cr)
        doc = ClusterDoctor(n, c, job_name_prefix=prefix)
        started: Callable[[str, str], None] | None = None
        if on_start is not None:
            started = functools.partial(on_start, n)
        try:
            for r in doc.run(on_start=started):
                cr.checks.append(r)
                if on_result:
                    on_result(n, r)
        finally:
            doc.close()
    return report


# ============================================================================ text
_MARKS = {True: {CheckStatus.PASS: "✓", CheckStatus.FAIL: "✗", CheckStatus.WARN: "!", CheckStatus.SKIP: "-"},
          False: {CheckStatus.PASS: "[ok]", CheckStatus.FAIL: "[FAIL]", CheckStatus.WARN: "[warn]",
                  CheckStatus.SKIP: "[skip]"}}


def mark(status: CheckStatus, fancy: bool) -> str:
    """``✓ ✗ ! -`` on a terminal, ``[ok] [FAIL] [warn] [skip]`` otherwise."""
    return _MARKS[fancy][status]


def format_check(r: CheckResult, fancy: bool, indent: str = "  ") -> list[str]:
    """One check as text: the mark, the title, what was found; on failure or warning the fix."""
    m = mark(r.status, fancy).ljust(1 if fancy else 6)
    lines = (r.detail or "").splitlines() or [""]
    out = [f"{indent}{m} {r.title}: {lines[0]}".rstrip().rstrip(":")]
    pad = indent + " " * (len(m) + 1) + "  "
    out += [pad + ln for ln in lines[1:]]
    if r.fix and r.status in (CheckStatus.FAIL, CheckStatus.WARN):
        out.append(f"{pad}fix: {r.fix}")
    return out
