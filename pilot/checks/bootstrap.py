"""``pilot bootstrap CLUSTER``: set up the execution environment on a cluster, then run the doctor.

Steps (each reported as it runs):

1. connect and look at the cluster's Python (after the ``setup`` lines, without the line a previous
   bootstrap added): version, platform, glibc, whether ``venv`` is there;
2. look at the venv (default ``<work_dir>/venv``): if it already holds this very build of fireworks-pilot
   (same version and same content digest, recorded in ``<venv>/.pilot-bootstrap.json``), the install steps
   are skipped;
3. build the wheels here (cached in ``<config_dir>/wheelhouse/<target>``): this project's wheel (built from
   a copy of its source tree, or downloaded from the package index for a released install), and its
   dependencies (``pip wheel`` when the cluster's Python matches this one, else ``pip download`` of
   binary wheels for the cluster's Python version and platform);
4. create the venv with the cluster's Python (``python3 -m venv``);
5. install: upload the wheels to ``<work_dir>/wheelhouse`` (only the missing or changed ones) and
   ``pip install --no-index --find-links`` them (``--wheels upload``, the default: it works without any
   package index on the cluster), or upload only the project's wheel and take the dependencies from the
   cluster's index (``--wheels index``); ``--wheels auto`` asks the cluster whether an index answers;
6. write the launchpad file on the cluster with mode 600 (the host rewritten with ``--db-host``);
7. update the cluster's config file: ``setup`` gains ``source <venv>/bin/activate  # added by pilot
   bootstrap`` (replacing an earlier one), ``launchpad_file`` points at the written file, ``python`` (if
   set) at the venv's python; the file's other lines and comments are kept and the old version is saved
   as ``NAME.yaml.bak``;
8. run ``pilot doctor CLUSTER``.

Running it again is safe: what is already in place is reported and left alone; after an upgrade of
fireworks-pilot here the venv is updated to the new version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from pilot.checks.doctor import PROBE_MARK, with_setup

__all__ = [
    "BOOTSTRAP_MARK",
    "STAMP_NAME",
    "BootstrapError",
    "BootstrapOptions",
    "RemotePython",
    "Reporter",
    "WheelMode",
    "activation_line",
    "bootstrap",
    "edit_cluster_yaml",
    "new_setup",
    "project_source",
    "rewrite_db_host",
    "source_digest",
    "strip_bootstrap_lines",
]

#: The comment that marks the setup line a bootstrap added (a later bootstrap replaces that line).
BOOTSTRAP_MARK = "# added by pilot bootstrap"
#: What the venv remembers about its install (version, digest of the build, when).
STAMP_NAME = ".pilot-bootstrap.json"
#: The top-level folders and files whose content makes up this project's wheel (pyproject.toml packages).
SOURCE_PARTS = ("pilot", "queue_adapters", "tasks", "templates", "pyproject.toml")
_SAFE_PATH = re.compile(r"^(~/)?[A-Za-z0-9_./+@,=-]+$")
_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_./~+@,=-][A-Za-z0-9_./~+@,=:-]*$")

INSTALL_TIMEOUT = 1800.0


class BootstrapError(Exception):
    """A bootstrap step failed; the message says which, why, and what to try."""


class WheelMode(str, Enum):
    """Where the cluster's venv gets its packages from."""

    UPLOAD = "upload"   # every wheel built here and uploaded: no package index needed on the cluster
    INDEX = "index"     # only this project's wheel uploaded; dependencies from the cluster's package index
    AUTO = "auto"       # INDEX if `pip index versions pip` answers on the cluster, else UPLOAD


@dataclass(frozen=True)
class BootstrapOptions:
    """What ``pilot bootstrap`` was asked to do (the command-line options)."""

    wheels: WheelMode = WheelMode.UPLOAD
    venv: str | None = None              # default <work_dir>/venv
    python: str = "python3"
    db_host: str | None = None
    launchpad_path: str | None = None    # default: the cluster's launchpad_file
    force: bool = False
    wheelhouse: Path | None = None       # default <config_dir>/wheelhouse
    run_doctor: bool = True
    source: Path | None = None           # default: the source tree this pilot runs from (if any)


@dataclass(frozen=True)
class RemotePython:
    """The cluster's Python (after the setup lines)."""

    version: str
    major: int
    minor: int
    implementation: str
    system: str
    machine: str
    glibc: str | None
    executable: str
    venv: bool
    ensurepip: bool

    @property
    def tag(self) -> str:
        """The wheelhouse folder name: ``cpython311-linux-x86_64-glibc2.36``."""
        return f"{self.implementation}{self.major}{self.minor}-{self.system}-{self.machine}" + (
            f"-glibc{self.glibc}" if self.glibc else "")


PYTHON_INFO_PROBE = r"""
import json, platform, sys
out = {"version": platform.python_version(), "major": sys.version_info[0], "minor": sys.version_info[1],
       "implementation": sys.implementation.name, "machine": platform.machine(),
       "system": platform.system().lower(), "glibc": None, "executable": sys.executable}
lib, ver = platform.libc_ver()
if lib == "glibc":
    out["glibc"] = ver
for m in ("venv", "ensurepip"):
    try:
        __import__(m)
        out[m] = True
    except Exception:
        out[m] = False
print("PILOT-PROBE " + json.dumps(out))
"""

VENV_PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0]}
try:
    import pilot, fireworks
    out["pilot"] = pilot.__version__
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
try:
    with open(sys.argv[1]) as f:
        out["stamp"] = json.load(f)
except (OSError, ValueError):
    out["stamp"] = None
print("PILOT-PROBE " + json.dumps(out))
"""

#: Lists the wheels in a directory with their SHA-256 (argv[1] = the directory).
LIST_WHEELS = r"""
import hashlib, json, os, sys
out = {}
d = sys.argv[1]
if os.path.isdir(d):
    for n in sorted(os.listdir(d)):
        if n.endswith(".whl"):
            h = hashlib.sha256()
            with open(os.path.join(d, n), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[n] = h.hexdigest()
print("PILOT-PROBE " + json.dumps(out))
"""


# ============================================================================ progress
class Reporter:
    """Prints the steps of a long job: ``[3/8] building wheels ...`` then indented notes and the outcome.

    Parameters
    ----------
    total : int
        Number of steps.
    echo : callable
        ``echo(text, nl=True)``; default writes to stdout.
    live : bool
        The output is a terminal: counters may rewrite their line.
    """

    def __init__(self, total: int, echo: Callable[..., None] | None = None, live: bool = False) -> None:
        self.total = total
        self.n = 0
        self.live = live
        self._echo = echo or (lambda text="", nl=True: (sys.stdout.write(text + ("\n" if nl else "")),
                                                        sys.stdout.flush()))
        self.events: list[dict[str, Any]] = []

    def echo(self, text: str = "", nl: bool = True) -> None:
        self._echo(text, nl=nl)

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        """One step: prints its title; the body may set ``ev["result"]`` (the closing note)."""
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {title}")
        ev: dict[str, Any] = {"step": self.n, "title": title, "result": None}
        t0 = time.monotonic()
        try:
            yield ev
        except BaseException:
            ev["failed"] = True
            ev["seconds"] = time.monotonic() - t0
            self.events.append(ev)
            raise
        ev["seconds"] = time.monotonic() - t0
        self.events.append(ev)
        note = ev.get("result") or "done"
        self.echo(f"      {note} ({ev['seconds']:.1f} s)")

    def note(self, text: str) -> None:
        self.echo(f"      {text}")

    def counter(self, text: str) -> None:
        """A progress counter: rewritten in place on a terminal, only the last value elsewhere."""
        if self.live:
            self.echo(f"\r\033[K      {text}", nl=False)


# ============================================================================ pure helpers
def activation_line(venv: str) -> str:
    """The setup line that activates ``venv`` (marked so that a later bootstrap can replace it)."""
    return f"source {venv}/bin/activate  {BOOTSTRAP_MARK}"


def strip_bootstrap_lines(setup: str) -> str:
    """``setup`` without the lines an earlier bootstrap added."""
    lines = [ln for ln in setup.splitlines() if BOOTSTRAP_MARK not in ln]
    text = "\n".join(lines).strip("\n")
    return text + "\n" if text else ""


def new_setup(setup: str, venv: str) -> str:
    """The user's own setup lines first (module loads ...), then the activation of ``venv``."""
    return strip_bootstrap_lines(setup) + activation_line(venv) + "\n"


def split_host_port(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6addr]:port`` -> (host, port)."""
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value)
    if m:
        return m.group(1), int(m.group(2)) if m.group(2) else None
    if value.count(":") == 1:
        h, p = value.split(":")
        if not p.isdigit():
            raise ValueError(f"--db-host {value!r}: the port after ':' must be a number")
        return h, int(p)
    return value, None


def rewrite_db_host(doc: dict[str, Any], db_host: str) -> dict[str, Any]:
    """A LaunchPad file's content with the database address replaced by ``db_host`` (``HOST[:PORT]``).

    Handles both forms FireWorks reads (``LaunchPad.from_dict``): ``host`` + ``port`` fields, and
    ``uri_mode: true`` with a ``mongodb://[user:pw@]host[:port]/...`` URI in ``host`` (user, password,
    database and options kept). Without a port in ``db_host`` the old port stays.
    """
    host, port = split_host_port(db_host.strip())
    if not host:
        raise ValueError("--db-host is empty: write the database's address as the cluster sees it, HOST[:PORT]")
    out = dict(doc)
    old = str(out.get("host") or "")
    if old.startswith(("mongodb://", "mongodb+srv://")):
        parts = urlsplit(old)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        old_port = None
        if "," not in hosts:
            _, old_port = split_host_port(hosts)
        shown = f"[{host}]" if ":" in host else host
        new_port = port if port is not None else old_port
        netloc = (userinfo + at) + shown + (f":{new_port}" if new_port and not parts.scheme.endswith("+srv") else "")
        out["host"] = urlunsplit(parts._replace(netloc=netloc))
    else:
        out["host"] = host
        if port is not None:
            out["port"] = port
    return out


def _yaml_scalar(value: str) -> str:
    return value if _PLAIN_SCALAR.match(value) else json.dumps(value)


def _yaml_block(key: str, value: str) -> list[str]:
    lines = value.rstrip("\n").split("\n")
    indicator = "|2" if lines and lines[0][:1] in (" ", "\t") else "|"
    if not value.endswith("\n"):
        indicator += "-"
    return [f"{key}: {indicator}", *(("  " + ln) if ln else "" for ln in lines)]


def _key_span(lines: list[str], key: str) -> tuple[int, int] | None:
    """Line range [start, end) of a top-level ``key:`` and its value (indented lines, ``- `` items)."""
    pat = re.compile(rf"^{re.escape(key)}\s*:(\s|$)")
    for i, line in enumerate(lines):
        if pat.match(line):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j][:1] in (" ", "\t")
                                      or lines[j].startswith("- ") or lines[j].rstrip() == "-"):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1   # trailing blank lines belong to what follows
            return i, j
    return None


def edit_cluster_yaml(text: str, updates: dict[str, str]) -> str:
    """Set top-level keys of a cluster file's text, keeping every other line and comment.

    A key's old value (one line, a ``|`` block or a list) is replaced; a missing key is appended. A
    one-line value keeps its trailing ``# comment``. Multi-line values are written as ``|`` blocks.

    Raises
    ------
    BootstrapError
        If the edited text does not read back as the old content plus exactly the updates.
    """
    try:
        before = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BootstrapError(f"the cluster file is not valid YAML ({e}); fix it first") from None
    lines = text.splitlines()
    for key, value in updates.items():
        span = _key_span(lines, key)
        if "\n" in value.rstrip("\n") or value.endswith("\n"):
            new = _yaml_block(key, value)
        else:
            new = [f"{key}: {_yaml_scalar(value)}"]
            if span and span[1] == span[0] + 1:
                m = re.search(r"\s+#.*$", lines[span[0]].split(":", 1)[1])
                if m and "'" not in lines[span[0]] and '"' not in lines[span[0]]:
                    new[0] += m.group(0)
        if span is None:
            while lines and not lines[-1].strip():
                lines.pop()
            lines += new
        else:
            lines[span[0]:span[1]] = new
    out = "\n".join(lines) + "\n"
    expected = dict(before) if isinstance(before, dict) else {}
    expected.update(updates)
    got = yaml.safe_load(out)
    if got != expected:
        changed = sorted(k for k in set(got or {}) | set(expected) if (got or {}).get(k) != expected.get(k))
        raise BootstrapError("could not edit the cluster file safely (these fields would not read back as "
                             f"intended: {', '.join(changed)}); set them by hand: "
                             + "; ".join(f"{k}: {v!r}" for k, v in updates.items()))
    return out


def project_source(root: Path | None = None) -> Path | None:
    """This project's source tree (the folder with pyproject.toml above ``pilot/``), if running from one;
    or ``root`` if it is a fireworks-pilot source tree."""
    import pilot

    root = Path(root) if root is not None else Path(pilot.__file__).resolve().parent.parent
    pp = root / "pyproject.toml"
    try:
        if pp.is_file() and 'name = "fireworks-pilot"' in pp.read_text():
            return root
    except OSError:
        return None
    return None


def source_digest(root: Path) -> str:
    """SHA-256 over the files that make up the wheel (paths and contents, caches excluded)."""
    h = hashlib.sha256()
    for part in SOURCE_PARTS:
        p = root / part
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".pyc", ".pyo"):
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            return []
        text = z.read(meta).decode("utf-8", "replace")
    return sorted(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:"))


def local_python() -> dict[str, Any]:
    import platform

    lib, ver = platform.libc_ver()
    return {"implementation": sys.implementation.name, "major": sys.version_info[0], "minor": sys.version_info[1],
            "system": platform.system().lower(), "machine": platform.machine(),
            "glibc": ver if lib == "glibc" else None}


def _ver_tuple(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or ""))


def same_platform(remote: RemotePython, here: dict[str, Any] | None = None) -> bool:
    """True when wheels built by this Python install on the cluster's (same version, machine, older glibc)."""
    here = here or local_python()
    return (remote.implementation == here["implementation"] == "cpython" and remote.major == here["major"]
            and remote.minor == here["minor"] and remote.system == here["system"] == "linux"
            and remote.machine == here["machine"] and remote.glibc is not None and here["glibc"] is not None
            and _ver_tuple(here["glibc"]) <= _ver_tuple(remote.glibc))


def platform_tags(remote: RemotePython) -> list[str]:
    """``--platform`` values for ``pip download`` of binary wheels that run on the cluster (manylinux)."""
    if remote.system != "linux" or not remote.glibc:
        raise BootstrapError(
            f"cannot collect wheels for {remote.system}/{remote.machine} without glibc from here: use "
            "--wheels index (the cluster installs from its own package index)")
    major, minor = (_ver_tuple(remote.glibc) + (0, 0))[:2]
    arch = remote.machine
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if major == 2 and minor >= m]
    return tags


# ============================================================================ the steps
@dataclass
class _Ctx:
    name: str
    cluster: Any
    config: Any
    opts: BootstrapOptions
    rep: Reporter
    transport: Any
    base_setup: str = ""
    venv: str = ""
    source: Path | None = None
    remote: RemotePython | None = None
    version: str = ""
    digest: str = ""
    skip_install: bool = False
    reinstall_same_version: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return float(self.cluster.command_timeout)

    def run(self, argv: list[str], timeout: float | None = None, setup: bool = True,
            env: dict[str, str] | None = None) -> Any:
        cmd = with_setup(self.base_setup, argv) if setup else argv
        full = {**dict(self.cluster.env), **(env or {})}
        return self.transport.run(cmd, timeout=timeout or self.timeout, env=full or None)


def _probe(stdout: str) -> dict[str, Any] | None:
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                data = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def _tail(text: str, n: int = 8) -> str:
    rows = [ln for ln in (text or "").rstrip().splitlines() if ln.strip()]
    return "\n".join("        " + r for r in rows[-n:])


def _shown(argv: list[str]) -> str:
    """An argument list for a message (display only, never run): the setup wrapper is summarised."""
    prefix = ""
    if argv[:2] == ["bash", "-c"] and len(argv) > 3 and argv[3] == "pilot-setup":
        prefix, argv = "(after the setup lines) ", argv[4:]
    words = [a if a and not any(ch in a for ch in " \t\n'\"") else repr(a) for a in argv]
    text = prefix + " ".join(words)
    return text if len(text) <= 300 else text[:297] + "..."


def _fail(what: str, res: Any, fix: str) -> BootstrapError:
    return BootstrapError(f"{what}\n    command: {_shown(res.argv)}\n    exit code: {res.returncode}\n"
                          f"    stderr (last lines):\n{_tail(res.stderr)}\n    try: {fix}")


def _step_connect(ctx: _Ctx) -> None:
    from pilot.checks.doctor import address_of

    with ctx.rep.step(f"connecting to {ctx.name} ({address_of(ctx.cluster)}) and looking at its Python") as ev:
        py = ctx.opts.python
        res = ctx.run([py, "-c", PYTHON_INFO_PROBE])
        info = _probe(res.stdout)
        if res.returncode != 0 or info is None:
            raise _fail(f"the cluster's Python ({py}, after the setup lines) did not run", res,
                        "load a Python 3.10+ in the cluster's setup lines (e.g. `module load python`) or pass "
                        "--python /path/to/python3")
        r = RemotePython(version=str(info["version"]), major=int(info["major"]), minor=int(info["minor"]),
                         implementation=str(info["implementation"]), system=str(info["system"]),
                         machine=str(info["machine"]), glibc=info.get("glibc"), executable=str(info["executable"]),
                         venv=bool(info.get("venv")), ensurepip=bool(info.get("ensurepip")))
        if (r.major, r.minor) < (3, 10):
            raise BootstrapError(f"{ctx.name}: {py} is Python {r.version}; fireworks-pilot needs 3.10 or newer: "
                                 "load a newer Python in setup (module load ...) or pass --python")
        ctx.remote = r
        ev["result"] = (f"Python {r.version} ({r.executable}), {r.system} {r.machine}"
                        + (f", glibc {r.glibc}" if r.glibc else ""))


def _step_check_venv(ctx: _Ctx) -> None:
    with ctx.rep.step(f"looking at the venv {ctx.venv}") as ev:
        res = ctx.run([f"{ctx.venv}/bin/python", "-c", VENV_PROBE, f"{ctx.venv}/{STAMP_NAME}"])
        info = _probe(res.stdout) if res.returncode == 0 else None
        ctx.summary["venv_before"] = info
        if info is None:
            ev["result"] = "no usable venv yet: it will be created"
            return
        stamp = info.get("stamp") or {}
        have = info.get("pilot")
        if info.get("error"):
            ev["result"] = f"the venv exists but fireworks-pilot does not import ({info['error']}): installing"
        elif have == ctx.version and stamp.get("digest") == ctx.digest and not ctx.opts.force:
            ctx.skip_install = True
            ev["result"] = (f"already has fireworks-pilot {have} (the same build, installed "
                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp.get('time') or 0))}): "
                            "skipping the install")
        elif have == ctx.version:
            ctx.reinstall_same_version = True
            why = "--force" if ctx.opts.force else "its content differs from this machine's"
            ev["result"] = f"has fireworks-pilot {have}, but {why}: reinstalling it"
        else:
            ev["result"] = f"has fireworks-pilot {have}; this machine has {ctx.version}: upgrading"


def _pip(ctx: _Ctx, argv: list[str], cwd: str | None = None, timeout: float = INSTALL_TIMEOUT) -> Any:
    from pilot.transport import LocalTransport

    return LocalTransport(name="this machine").run([sys.executable, "-m", "pip", *argv], timeout=timeout, cwd=cwd)


def _build_project_wheel(ctx: _Ctx, wh: Path) -> Path:
    """This project's wheel in ``wh`` (rebuilt only when the source digest changed)."""
    root = ctx.source
    marker = wh / ".project.json"
    try:
        known = json.loads(marker.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get("digest") == ctx.digest and (wh / str(known.get("wheel"))).is_file():
        ctx.rep.note(f"this project's wheel is cached: {known['wheel']}")
        return wh / str(known["wheel"])
    for old in wh.glob("fireworks_pilot-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="pilot-build-") as tmp:
        out = Path(tmp) / "dist"
        if root is not None:
            src = Path(tmp) / "src"
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".git",
                                            ".*_cache", ".venv", "tests", "benchmarks")
            shutil.copytree(root, src, ignore=ignore)
            ctx.rep.note(f"building this project's wheel from {root} (pip wheel)")
            res = _pip(ctx, ["wheel", "--no-deps", "-q", "-w", str(out), "."], cwd=str(src))
            what = "building this project's wheel failed"
        else:
            ctx.rep.note(f"downloading fireworks-pilot=={ctx.version} from the package index")
            res = _pip(ctx, ["download", "--no-deps", "-d", str(out), f"fireworks-pilot=={ctx.version}"])
            what = f"downloading fireworks-pilot {ctx.version} failed"
        if res.returncode != 0:
            raise _fail(what, res, "read pip's error above; `pip wheel .` in the source tree shows the same")
        built = sorted(out.glob("fireworks_pilot-*.whl"))
        if not built:
            raise BootstrapError(f"{what}: pip produced no fireworks_pilot wheel in {out}")
        dest = wh / built[-1].name
        shutil.copy2(built[-1], dest)
    marker.write_text(json.dumps({"digest": ctx.digest, "wheel": dest.name}))
    return dest


def _collect_dependencies(ctx: _Ctx, wh: Path, project_wheel: Path) -> None:
    """The dependencies' wheels in ``wh`` (skipped when the requirements have not changed)."""
    assert ctx.remote is not None
    reqs = wheel_requirements(project_wheel)
    same = same_platform(ctx.remote)
    marker = wh / ".deps.json"
    key = {"requires": reqs, "mode": "same" if same else "cross", "target": ctx.remote.tag}
    try:
        known = json.loads(marker.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get("key") == key and all((wh / f).is_file() for f in known.get("files", [])):
        ctx.rep.note(f"the dependencies' wheels are cached ({len(known['files'])} files)")
        return
    if same:
        ctx.rep.note("collecting the dependencies' wheels (pip wheel; the cluster's Python matches this one)")
        res = _pip(ctx, ["wheel", "-q", "-w", str(wh), "--find-links", str(wh), str(project_wheel)])
    else:
        r = ctx.remote
        plats = [a for t in platform_tags(r) for a in ("--platform", t)]
        ctx.rep.note(f"downloading binary wheels for Python {r.major}.{r.minor} on {r.tag} (pip download)")
        res = _pip(ctx, ["download", "-q", "--only-binary=:all:", "-d", str(wh), "--python-version",
                         f"{r.major}.{r.minor}", "--implementation", "cp", "--abi", f"cp{r.major}{r.minor}",
                         "--abi", "abi3", "--abi", "none", *plats, str(project_wheel)])
    if res.returncode != 0:
        raise _fail("collecting the dependencies' wheels failed", res,
                    "check this machine's access to the package index (pip config list); or use --wheels index "
                    "so that the cluster installs the dependencies from its own index")
    files = sorted(p.name for p in wh.glob("*.whl") if not p.name.startswith("fireworks_pilot-"))
    marker.write_text(json.dumps({"key": key, "files": files}))


def _step_wheels(ctx: _Ctx, mode: WheelMode) -> list[Path]:
    assert ctx.remote is not None
    base = ctx.opts.wheelhouse or (Path(ctx.config.config_dir) / "wheelhouse")
    wh = base / ctx.remote.tag
    with ctx.rep.step(f"preparing the wheels here ({wh})") as ev:
        wh.mkdir(parents=True, exist_ok=True)
        project = _build_project_wheel(ctx, wh)
        if mode is WheelMode.INDEX:
            ev["result"] = f"{project.name} (the dependencies come from the cluster's package index)"
            return [project]
        _collect_dependencies(ctx, wh, project)
        known = json.loads((wh / ".deps.json").read_text())
        wheels = [project, *(wh / f for f in known["files"])]
        size = sum(p.stat().st_size for p in wheels)
        ev["result"] = f"{len(wheels)} wheels, {size / 1e6:.1f} MB"
        return wheels


def _step_venv(ctx: _Ctx) -> None:
    assert ctx.remote is not None
    with ctx.rep.step(f"creating the venv {ctx.venv} with {ctx.remote.executable}") as ev:
        before = ctx.summary.get("venv_before")
        if before is not None:
            ev["result"] = "the venv exists: kept"
            return
        if not ctx.remote.venv or not ctx.remote.ensurepip:
            raise BootstrapError(
                f"{ctx.name}: Python {ctx.remote.version} ({ctx.remote.executable}) has no "
                f"{'venv' if not ctx.remote.venv else 'ensurepip'} module, so it cannot create a venv with pip: "
                "ask the admins for python3-venv (Debian/Ubuntu), load another Python in setup "
                "(module load python), or pass --python")
        ctx.transport.makedirs(ctx.cluster.work_dir)
        ctx.transport.makedirs(ctx.venv.rsplit("/", 1)[0] or "/")
        res = ctx.run([ctx.opts.python, "-m", "venv", "--clear", ctx.venv], timeout=max(ctx.timeout, 300))
        if res.returncode != 0:
            raise _fail(f"creating the venv {ctx.venv} failed", res,
                        "check free space and quota in work_dir; or pass --venv with another place")
        ev["result"] = "created"


def _remote_wheels(ctx: _Ctx, rdir: str) -> dict[str, str]:
    res = ctx.run([f"{ctx.venv}/bin/python", "-c", LIST_WHEELS, rdir])
    info = _probe(res.stdout)
    if res.returncode != 0 or info is None:
        raise _fail(f"listing {rdir} on the cluster failed", res, "check that work_dir is readable")
    return {str(k): str(v) for k, v in info.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _step_install(ctx: _Ctx, mode: WheelMode, wheels: list[Path]) -> None:
    rdir = f"{ctx.cluster.work_dir}/wheelhouse"
    with ctx.rep.step(f"installing fireworks-pilot {ctx.version} into the venv") as ev:
        there = _remote_wheels(ctx, rdir)
        todo = [w for w in wheels if there.get(w.name) != _sha256(w)]
        total = sum(w.stat().st_size for w in todo)
        if todo:
            ctx.rep.note(f"uploading {len(todo)} of {len(wheels)} wheels ({total / 1e6:.1f} MB) to {rdir}")
            t0 = time.monotonic()
            for i, w in enumerate(todo, 1):
                ctx.rep.counter(f"{i}/{len(todo)} {w.name}")
                ctx.transport.put(str(w), f"{rdir}/{w.name}", mode=0o644)
            if ctx.rep.live:
                ctx.rep.echo("\r\033[K", nl=False)
            ctx.rep.note(f"uploaded in {time.monotonic() - t0:.1f} s")
        else:
            ctx.rep.note(f"the {len(wheels)} wheels are already in {rdir}")
        project = f"{rdir}/{wheels[0].name}"
        pip = [f"{ctx.venv}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
        if mode is WheelMode.UPLOAD:
            pip += ["--no-index", "--find-links", rdir]
        ctx.rep.note("pip install on the cluster (" + ("from the uploaded wheels only" if mode is WheelMode.UPLOAD
                                                        else "dependencies from the cluster's index") + ")")
        # upload: exactly the uploaded wheels (no pip configuration file adds an index or other find-links)
        pip_env = {"PIP_CONFIG_FILE": "/dev/null"} if mode is WheelMode.UPLOAD else None
        res = ctx.run([*pip, project], timeout=INSTALL_TIMEOUT, env=pip_env)
        if res.returncode != 0:
            fix = ("a dependency is missing from the uploaded wheels: run bootstrap again with --force"
                   if mode is WheelMode.UPLOAD else "the cluster's package index failed: use --wheels upload")
            raise _fail("pip install on the cluster failed", res, fix)
        if ctx.reinstall_same_version:
            res = ctx.run([*pip, "--no-deps", "--force-reinstall", project], timeout=INSTALL_TIMEOUT, env=pip_env)
            if res.returncode != 0:
                raise _fail("reinstalling fireworks-pilot on the cluster failed", res, "run bootstrap again")
        check = ctx.run([f"{ctx.venv}/bin/python", "-c", VENV_PROBE, "/nonexistent"])
        info = _probe(check.stdout)
        if check.returncode != 0 or info is None or info.get("pilot") != ctx.version:
            raise _fail(f"after the install the venv does not import fireworks-pilot {ctx.version} "
                        f"(it says: {info})", check, "run bootstrap again with --force")
        stamp = {"version": ctx.version, "digest": ctx.digest, "time": time.time(), "wheels": mode.value,
                 "python": ctx.remote.version if ctx.remote else None}
        ctx.transport.put(json.dumps(stamp).encode(), f"{ctx.venv}/{STAMP_NAME}", mode=0o644)
        ev["result"] = f"installed ({len(wheels)} wheels)"


def _decide_mode(ctx: _Ctx) -> WheelMode:
    if ctx.opts.wheels is not WheelMode.AUTO:
        return ctx.opts.wheels
    res = ctx.run([f"{ctx.venv}/bin/python", "-m", "pip", "index", "versions", "pip", "--disable-pip-version-check"],
                  timeout=60)
    mode = WheelMode.INDEX if res.returncode == 0 else WheelMode.UPLOAD
    ctx.rep.note(f"--wheels auto: the cluster's package index {'answers' if res.returncode == 0 else 'does not answer'}"
                 f": {mode.value}")
    return mode


def _step_launchpad(ctx: _Ctx) -> str:
    from pilot.transport import RemotePathError

    local = Path(os.path.expanduser(str(ctx.config.pilot.launchpad_file)))
    target = ctx.opts.launchpad_path or ctx.cluster.launchpad_file
    with ctx.rep.step(f"writing the launchpad file {target} on the cluster (mode 600)") as ev:
        if not local.is_file():
            raise BootstrapError(f"{Path(ctx.config.config_dir) / 'pilot.yaml'}: launchpad_file: {local} does "
                                 "not exist; create it (`pilot launchpad init`) or point launchpad_file at your "
                                 "my_launchpad.yaml")
        data = local.read_bytes()
        if ctx.opts.db_host:
            try:
                doc = yaml.safe_load(data) or {}
                doc = rewrite_db_host(doc, ctx.opts.db_host)
            except (yaml.YAMLError, ValueError, AttributeError) as e:
                raise BootstrapError(f"cannot rewrite the database host in {local}: {e}") from None
            data = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False).encode()
            ctx.rep.note(f"database host as the cluster sees it: {ctx.opts.db_host}")
        want = hashlib.sha256(data).hexdigest()
        try:
            st = ctx.transport.stat(target)
            same = st.mode & 0o777 == 0o600 and ctx.transport.sha256(target) == want
        except RemotePathError:
            same = False
        if same:
            ev["result"] = "already there with the same content and mode 600: unchanged"
        else:
            ctx.transport.put(data, target, mode=0o600)
            ev["result"] = f"written from {local}"
        return target


def _step_config(ctx: _Ctx, launchpad_path: str) -> None:
    from pydantic import ValidationError

    from pilot.config import ClusterConfig

    path = Path(ctx.cluster.source_file) if ctx.cluster.source_file else None
    with ctx.rep.step(f"updating the cluster file {path}") as ev:
        if path is None or not path.is_file():
            raise BootstrapError(f"cluster {ctx.name} has no file to update; write these fields by hand: "
                                 f"setup: {new_setup(ctx.cluster.setup, ctx.venv)!r}, "
                                 f"launchpad_file: {launchpad_path}")
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        updates: dict[str, str] = {}
        setup = new_setup(ctx.cluster.setup, ctx.venv)
        if ctx.cluster.setup != setup:
            updates["setup"] = setup
        if data.get("launchpad_file") != launchpad_path:
            updates["launchpad_file"] = launchpad_path
        if data.get("python") and data.get("python") != f"{ctx.venv}/bin/python":
            updates["python"] = f"{ctx.venv}/bin/python"
        if not updates:
            ev["result"] = "already up to date: unchanged"
            return
        new = edit_cluster_yaml(text, updates)
        candidate = yaml.safe_load(new)
        try:
            ClusterConfig.model_validate(candidate, context={"base_dir": path.parent})
        except ValidationError as e:  # the edit would break the file
            raise BootstrapError(f"the updated {path} would not load ({e}); set by hand: {updates}") from None
        bak = path.with_name(path.name + ".bak")
        shutil.copy2(path, bak)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(new)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        ev["result"] = f"set {', '.join(updates)} (the previous version is in {bak.name})"


# ============================================================================ entry point
def bootstrap(config_dir: Path, name: str, opts: BootstrapOptions, rep: Reporter | None = None,
              transport: Any | None = None) -> dict[str, Any]:
    """Set up cluster ``name`` (see the module docstring). Returns a summary of what was done.

    Raises
    ------
    BootstrapError
        A step failed (the message names it, the command, its stderr and what to try).
    pilot.config.ConfigError
        The config directory does not load.
    pilot.transport.TransportError
        The cluster could not be reached (the message has the fix).
    """
    from pilot import __version__
    from pilot.transport.clusters import transport_for
    from pilot.config import load_config

    config = load_config(config_dir)
    cluster = config.cluster(name)
    venv = opts.venv or f"{cluster.work_dir}/venv"
    if not _SAFE_PATH.match(venv) or not venv.startswith(("/", "~/")):
        raise BootstrapError(f"--venv {venv!r}: write an absolute path of letters, digits and '_ . / + @ , = -'")
    if opts.launchpad_path and not opts.launchpad_path.startswith(("/", "~/")):
        raise BootstrapError(f"--launchpad-path {opts.launchpad_path!r}: write an absolute path (or ~/...)")
    root = project_source(opts.source)
    if opts.source is not None and root is None:
        raise BootstrapError(f"--source {opts.source}: not a fireworks-pilot source tree (no pyproject.toml "
                             "naming fireworks-pilot there)")
    if root is not None:
        m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", (root / "pilot" / "__init__.py").read_text(),
                      re.MULTILINE)
        if m is None:
            raise BootstrapError(f"{root / 'pilot' / '__init__.py'}: no __version__ = \"...\" line")
        version = m.group(1)
    else:
        version = __version__
    rep = rep or Reporter(total=8 if opts.run_doctor else 7)
    tr = transport or transport_for(name, cluster)
    ctx = _Ctx(name=name, cluster=cluster, config=config, opts=opts, rep=rep, transport=tr,
               base_setup=strip_bootstrap_lines(cluster.setup), venv=venv.rstrip("/"), version=version,
               digest=source_digest(root) if root is not None else f"release-{version}", source=root)
    try:
        _step_connect(ctx)
        _step_check_venv(ctx)
        if ctx.skip_install:
            for title, why in (("creating the venv", "it exists"),
                               ("preparing the wheels here", "nothing to install"),
                               ("installing fireworks-pilot", f"{ctx.version} (this build) is installed")):
                with rep.step(title) as ev:
                    ev["result"] = f"skipped: {why}"
        else:
            _step_venv(ctx)
            mode = _decide_mode(ctx)
            wheels = _step_wheels(ctx, mode)
            _step_install(ctx, mode, wheels)
        lp_path = _step_launchpad(ctx)
        _step_config(ctx, lp_path)
        ctx.summary.update({"cluster": name, "venv": ctx.venv, "version": ctx.version,
                            "installed": not ctx.skip_install, "launchpad_file": lp_path,
                            "steps": rep.events})
    finally:
        if transport is None:
            tr.close()
    return ctx.summary


def write_stream(stream: IO[str]) -> Callable[..., None]:
    """An ``echo(text, nl=True)`` for :class:`Reporter` that writes to ``stream``."""
    def echo(text: str = "", nl: bool = True) -> None:
        stream.write(text + ("\n" if nl else ""))
        stream.flush()
    return echo
