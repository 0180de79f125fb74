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
``route``       a tiny batch job reaches the LaunchPad from a compute node, by each route it can try
``launchpad_file``  that file is readable by its owner alone (it holds the database password)
``render``      a pilot script renders for every category and passes ``bash -n`` on the cluster

A failed check makes the ones that depend on it ``skip``; ``warn`` is a pass with a note. The exit code of
``pilot doctor`` is 0 only when no check failed.

This module runs them (:class:`ClusterDoctor`, :func:`run_doctor`); the checks themselves are grouped by
what they check in :mod:`pilot.checks.doctor_connection`, :mod:`pilot.checks.doctor_environment`,
:mod:`pilot.checks.doctor_launchpad` and :mod:`pilot.checks.doctor_route`; the results and their text are in
:mod:`pilot.checks.results`, the probe scripts in :mod:`pilot.checks.probes` and
:mod:`pilot.checks.route_probe`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.checks.doctor_base import KeeperFactory
from pilot.checks.doctor_connection import ConnectionChecks, scheduler_commands
from pilot.checks.doctor_environment import EnvironmentChecks
from pilot.checks.doctor_launchpad import LaunchpadChecks
from pilot.checks.doctor_route import ROUTE_TITLE, RouteChecks
from pilot.checks.probes import DB_PROBE, PROBE_MARK, PY_PROBE, address_of, ssh_prefix, with_setup
from pilot.checks.results import CheckResult, CheckStatus, ClusterReport, DoctorReport, format_check, mark
from pilot.configdir import pilot_command

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, Config

__all__ = [
    "DB_PROBE",
    "PROBE_MARK",
    "PY_PROBE",
    "CheckResult",
    "CheckStatus",
    "ClusterDoctor",
    "ClusterReport",
    "DoctorReport",
    "KeeperFactory",
    "address_of",
    "check_config",
    "format_check",
    "mark",
    "run_doctor",
    "scheduler_commands",
    "ssh_prefix",
    "with_setup",
]


# ============================================================================ config
def check_config(config_dir: Path) -> tuple[CheckResult, Config | None, dict[str, ClusterConfig], str]:
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
        clusters: dict[str, ClusterConfig] = {}
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
                          fix="correct each field named above (docs/configuration.md); "
                              f"`{pilot_command(config_dir, 'config check')}` repeats this list",
                          seconds=time.monotonic() - t0)
        return res, None, clusters, prefix
    n = len(cfg.clusters)
    res = CheckResult("config", title, CheckStatus.PASS,
                      detail=f"{config_dir}: pilot.yaml and {n} cluster file{'s' if n != 1 else ''}",
                      seconds=time.monotonic() - t0)
    return res, cfg, dict(cfg.clusters), cfg.pilot.job_name_prefix


# ============================================================================ one cluster
class ClusterDoctor(ConnectionChecks, EnvironmentChecks, LaunchpadChecks, RouteChecks):
    """Runs the checks of one cluster in order (see the module docstring); parameters as :class:`DoctorBase`."""

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
            ("route", ROUTE_TITLE, self.check_route, ("python", "scheduler", "work_dir")),
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


# ============================================================================ the whole run
def run_doctor(config_dir: Path, names: list[str] | None = None,
               on_cluster: Callable[[ClusterReport], None] | None = None,
               on_start: Callable[[str, str, str], None] | None = None,
               on_result: Callable[[str | None, CheckResult], None] | None = None,
               on_progress: Callable[[str, str], None] | None = None, route_keeper: KeeperFactory | None = None,
               route_timeout: float = 180.0) -> DoctorReport:
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
    on_progress : callable, optional
        ``on_progress(cluster, text)``: where a long check is (the route check's job pending, running).
    route_keeper : KeeperFactory | None
        Opens an ssh route's forward while a check needs it (:class:`pilot.manager.routes.RouteKeeper`, which
        this room may not import: the command line passes it in).
    route_timeout : float
        Seconds the route check waits for its probe job to start.

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
        doc = ClusterDoctor(n, c, job_name_prefix=prefix, config_dir=config_dir, route_keeper=route_keeper,
                            route_timeout=route_timeout,
                            progress=functools.partial(on_progress, n) if on_progress is not None else None)
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

