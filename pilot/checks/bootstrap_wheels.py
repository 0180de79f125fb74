"""Bootstrap's wheels, built here: this project's wheel (from its source tree, or the released one from the
package index) and its dependencies' wheels for the cluster's Python and platform, cached in the local
wheelhouse (``<config_dir>/wheelhouse/<target>``) and rebuilt only when the source or the requirements change.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.checks.bootstrap_context import (
    INSTALL_TIMEOUT,
    BootstrapContext,
    BootstrapError,
    RemotePython,
    WheelMode,
    command_failed,
)

if TYPE_CHECKING:
    from pilot.transport import CompletedCommand

__all__ = [
    "SOURCE_PARTS",
    "local_python",
    "platform_tags",
    "project_source",
    "same_platform",
    "source_digest",
    "step_wheels",
    "wheel_requirements",
]

#: The top-level folders and files whose content makes up this project's wheel (pyproject.toml packages).
SOURCE_PARTS = ("pilot", "queue_adapters", "tasks", "templates", "pyproject.toml")


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


def _pip(ctx: BootstrapContext, argv: list[str], cwd: str | None = None,
         timeout: float = INSTALL_TIMEOUT) -> CompletedCommand:
    """``python -m pip ARGV`` on this machine (with this Python)."""
    from pilot.transport import LocalTransport

    return LocalTransport(name="this machine").run([sys.executable, "-m", "pip", *argv], timeout=timeout, cwd=cwd)


def _build_project_wheel(ctx: BootstrapContext, wh: Path) -> Path:
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
            raise command_failed(what, res, "read pip's error above; `pip wheel .` in the source tree shows the same")
        built = sorted(out.glob("fireworks_pilot-*.whl"))
        if not built:
            raise BootstrapError(f"{what}: pip produced no fireworks_pilot wheel in {out}")
        dest = wh / built[-1].name
        shutil.copy2(built[-1], dest)
    marker.write_text(json.dumps({"digest": ctx.digest, "wheel": dest.name}))
    return dest


def _collect_dependencies(ctx: BootstrapContext, wh: Path, project_wheel: Path) -> None:
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
        raise command_failed("collecting the dependencies' wheels failed", res,
                    "check this machine's access to the package index (pip config list); or use --wheels index "
                    "so that the cluster installs the dependencies from its own index")
    files = sorted(p.name for p in wh.glob("*.whl") if not p.name.startswith("fireworks_pilot-"))
    marker.write_text(json.dumps({"key": key, "files": files}))


def step_wheels(ctx: BootstrapContext, mode: WheelMode) -> list[Path]:
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
