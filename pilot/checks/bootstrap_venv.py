"""Bootstrap's work on the cluster's venv: look at the cluster's Python and at the venv (is this very build
installed already?), create the venv, upload the missing wheels and ``pip install`` them there.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pilot.checks.bootstrap_context import (
    INSTALL_TIMEOUT,
    STAMP_NAME,
    BootstrapContext,
    BootstrapError,
    RemotePython,
    WheelMode,
    command_failed,
)
from pilot.checks.probes import LIST_WHEELS, PYTHON_INFO_PROBE, VENV_PROBE, address_of, read_probe

__all__ = ["decide_mode", "step_check_venv", "step_connect", "step_install", "step_venv"]


def step_connect(ctx: BootstrapContext) -> None:
    with ctx.rep.step(f"connecting to {ctx.name} ({address_of(ctx.cluster)}) and looking at its Python") as ev:
        py = ctx.opts.python
        res = ctx.run([py, "-c", PYTHON_INFO_PROBE])
        info = read_probe(res.stdout)
        if res.returncode != 0 or info is None:
            raise command_failed(f"the cluster's Python ({py}, after the setup lines) did not run", res,
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


def step_check_venv(ctx: BootstrapContext) -> None:
    with ctx.rep.step(f"looking at the venv {ctx.venv}") as ev:
        res = ctx.run([f"{ctx.venv}/bin/python", "-c", VENV_PROBE, f"{ctx.venv}/{STAMP_NAME}"])
        info = read_probe(res.stdout) if res.returncode == 0 else None
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


def step_venv(ctx: BootstrapContext) -> None:
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
            raise command_failed(f"creating the venv {ctx.venv} failed", res,
                        "check free space and quota in work_dir; or pass --venv with another place")
        ev["result"] = "created"


def _remote_wheels(ctx: BootstrapContext, rdir: str) -> dict[str, str]:
    res = ctx.run([f"{ctx.venv}/bin/python", "-c", LIST_WHEELS, rdir])
    info = read_probe(res.stdout)
    if res.returncode != 0 or info is None:
        raise command_failed(f"listing {rdir} on the cluster failed", res, "check that work_dir is readable")
    return {str(k): str(v) for k, v in info.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_install(ctx: BootstrapContext, mode: WheelMode, wheels: list[Path]) -> None:
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
            raise command_failed("pip install on the cluster failed", res, fix)
        if ctx.reinstall_same_version:
            res = ctx.run([*pip, "--no-deps", "--force-reinstall", project], timeout=INSTALL_TIMEOUT, env=pip_env)
            if res.returncode != 0:
                raise command_failed("reinstalling fireworks-pilot on the cluster failed", res, "run bootstrap again")
        check = ctx.run([f"{ctx.venv}/bin/python", "-c", VENV_PROBE, "/nonexistent"])
        info = read_probe(check.stdout)
        if check.returncode != 0 or info is None or info.get("pilot") != ctx.version:
            raise command_failed(f"after the install the venv does not import fireworks-pilot {ctx.version} "
                        f"(it says: {info})", check, "run bootstrap again with --force")
        stamp = {"version": ctx.version, "digest": ctx.digest, "time": time.time(), "wheels": mode.value,
                 "python": ctx.remote.version if ctx.remote else None}
        ctx.transport.put(json.dumps(stamp).encode(), f"{ctx.venv}/{STAMP_NAME}", mode=0o644)
        ev["result"] = f"installed ({len(wheels)} wheels)"


def decide_mode(ctx: BootstrapContext) -> WheelMode:
    if ctx.opts.wheels is not WheelMode.AUTO:
        return ctx.opts.wheels
    res = ctx.run([f"{ctx.venv}/bin/python", "-m", "pip", "index", "versions", "pip", "--disable-pip-version-check"],
                  timeout=60)
    mode = WheelMode.INDEX if res.returncode == 0 else WheelMode.UPLOAD
    ctx.rep.note(f"--wheels auto: the cluster's package index {'answers' if res.returncode == 0 else 'does not answer'}"
                 f": {mode.value}")
    return mode
