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
6. when the LaunchPad file names a CA certificate (TLS): copy it to ``~/.pilot/launchpad-ca.pem``; for
   ``launchpad_route: ssh``: make the route's key on the cluster, allow it on the login node for the one
   forward, and write the login node's host key for the pilots' ssh (:mod:`pilot.checks.bootstrap_route`);
   then write the launchpad file on the cluster with mode 600 (the host rewritten with ``--db-host``, or to
   ``127.0.0.1:PORT`` for the ssh route; ``tlsCAFile`` pointing at the copied CA);
7. update the cluster's config file: ``setup`` gains ``source <venv>/bin/activate  # added by pilot
   bootstrap`` (replacing an earlier one), ``launchpad_file`` points at the written file, ``python`` (if
   set) at the venv's python; the file's other lines and comments are kept and the old version is saved
   as ``NAME.yaml.bak``;
8. run ``pilot doctor CLUSTER``.

Running it again is safe: what is already in place is reported and left alone; after an upgrade of
fireworks-pilot here the venv is updated to the new version.

This module is the entry point (:func:`bootstrap`) and the facade of the pieces: the shared context and
options (:mod:`pilot.checks.bootstrap_context`), the progress lines (:mod:`pilot.checks.progress`), the
wheels built here (:mod:`pilot.checks.bootstrap_wheels`), the venv on the cluster
(:mod:`pilot.checks.bootstrap_venv`), the two files written (:mod:`pilot.checks.bootstrap_files`) and the
CA and the ssh route (:mod:`pilot.checks.bootstrap_route`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.checks.bootstrap_context import (
    STAMP_NAME,
    BootstrapContext,
    BootstrapError,
    BootstrapOptions,
    RemotePython,
    WheelMode,
)
from pilot.checks.bootstrap_files import (
    BOOTSTRAP_MARK,
    activation_line,
    edit_cluster_yaml,
    new_setup,
    read_launchpad,
    rewrite_db_host,
    split_host_port,
    step_config,
    step_launchpad,
    strip_bootstrap_lines,
)
from pilot.checks.bootstrap_route import ca_file_of, step_ca, steps_route
from pilot.checks.bootstrap_venv import decide_mode, step_check_venv, step_connect, step_install, step_venv
from pilot.checks.bootstrap_wheels import (
    platform_tags,
    project_source,
    same_platform,
    source_digest,
    step_wheels,
    wheel_requirements,
)
from pilot.checks.progress import Reporter, write_stream

if TYPE_CHECKING:
    from pilot.transport import Transport

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
    "launchpad_doc",
    "launchpad_step_count",
    "launchpad_steps",
    "new_setup",
    "platform_tags",
    "project_source",
    "rewrite_db_host",
    "same_platform",
    "source_digest",
    "split_host_port",
    "strip_bootstrap_lines",
    "wheel_requirements",
    "write_stream",
]

_SAFE_PATH = re.compile(r"^(~/)?[A-Za-z0-9_./+@,=-]+$")


def launchpad_doc(ctx: BootstrapContext) -> tuple[Path, dict[str, Any]] | None:
    """The LaunchPad file of the config dir and its content, None when it cannot be read (the step that writes
    the cluster's copy says why)."""
    import yaml

    try:
        path, data = read_launchpad(ctx)
        doc = yaml.safe_load(data)
    except (BootstrapError, OSError, yaml.YAMLError):
        return None
    return (path, doc) if isinstance(doc, dict) else None


def launchpad_step_count(ctx: BootstrapContext, found: tuple[Path, dict[str, Any]] | None) -> int:
    """How many steps :func:`launchpad_steps` reports: the CA (when the file names one), the route's three
    (for ``launchpad_route: ssh``), the LaunchPad file."""
    return 1 + (1 if found is not None and ca_file_of(found[1]) else 0) + (3 if ctx.cluster.ssh_route else 0)


def launchpad_steps(ctx: BootstrapContext, found: tuple[Path, dict[str, Any]] | None) -> str:
    """What lets the pilots reach the LaunchPad: its CA certificate, the ssh route's key, authorization and host
    key, then the cluster's LaunchPad file (``found``: :func:`launchpad_doc`). Returns that file's path."""
    ca_remote = step_ca(ctx, found[1], found[0]) if found is not None else None
    route = ctx.cluster.ssh_route
    if route is not None:
        steps_route(ctx, route)
    return step_launchpad(ctx, ca_remote)


def bootstrap(config_dir: Path, name: str, opts: BootstrapOptions, rep: Reporter | None = None,
              transport: Transport | None = None) -> dict[str, Any]:
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
    from pilot.config import load_config
    from pilot.transport.clusters import transport_for

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
    if opts.db_host and cluster.ssh_route is not None:
        raise BootstrapError(f"--db-host {opts.db_host}: cluster {name} has launchpad_route: ssh, so its pilots "
                             f"reach the LaunchPad at 127.0.0.1:{cluster.ssh_route.port} on the login node (the "
                             "manager's forward); leave --db-host out, or write launchpad_route: direct")
    rep = rep or Reporter(total=8 if opts.run_doctor else 7)
    tr = transport or transport_for(name, cluster)
    ctx = BootstrapContext(name=name, cluster=cluster, config=config, opts=opts, rep=rep, transport=tr,
                           base_setup=strip_bootstrap_lines(cluster.setup), venv=venv.rstrip("/"), version=version,
                           digest=source_digest(root) if root is not None else f"release-{version}", source=root)
    found = launchpad_doc(ctx)
    rep.total += launchpad_step_count(ctx, found) - 1  # the callers count the LaunchPad file's step
    try:
        step_connect(ctx)
        step_check_venv(ctx)
        if ctx.skip_install:
            for title, why in (("creating the venv", "it exists"),
                               ("preparing the wheels here", "nothing to install"),
                               ("installing fireworks-pilot", f"{ctx.version} (this build) is installed")):
                with rep.step(title) as ev:
                    ev["result"] = f"skipped: {why}"
        else:
            step_venv(ctx)
            mode = decide_mode(ctx)
            wheels = step_wheels(ctx, mode)
            step_install(ctx, mode, wheels)
        lp_path = launchpad_steps(ctx, found)
        step_config(ctx, lp_path)
        ctx.summary.update({"cluster": name, "venv": ctx.venv, "version": ctx.version,
                            "installed": not ctx.skip_install, "launchpad_file": lp_path,
                            "steps": rep.events})
    finally:
        if transport is None:
            tr.close()
    return ctx.summary

