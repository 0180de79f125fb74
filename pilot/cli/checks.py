"""``pilot doctor`` and ``pilot bootstrap``: check a cluster end to end, and set one up.

Thin: the work is in :mod:`pilot.checks.doctor` and :mod:`pilot.checks.bootstrap`.
See ``docs/status-and-doctor.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pilot.configdir import pilot_command

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pilot.checks.doctor_base import ForwardKeeper
    from pilot.checks.results import CheckResult, ClusterReport
    from pilot.config import ClusterConfig


def _fancy(ascii_only: bool) -> bool:
    """Use ✓/✗ only on a terminal whose encoding can print them."""
    if ascii_only or not sys.stdout.isatty():
        return False
    try:
        "✓✗…".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class _QuietKeeper:
    """The manager's own keeper of an ssh route (:class:`pilot.manager.routes.RouteKeeper`), for the doctor's
    checks that need the forward up; the checks room may not import the manager's, so the command line hands it
    in. Its log lines are held back while it runs: they are written for a manager's log (a taken port is a
    problem there), and the doctor says what it found in its own words (a taken port is most likely the
    manager's forward)."""

    def __init__(self, keeper: Any) -> None:
        import logging

        self._keeper = keeper
        self._logger = logging.getLogger("pilot.manager")
        thread = f"pilot-route-{keeper.name}"
        self._filter = lambda record: record.threadName != thread

    def start(self) -> None:
        self._logger.addFilter(self._filter)
        self._keeper.start()

    def wait_up(self, timeout: float) -> bool:
        return bool(self._keeper.wait_up(timeout))

    def state(self) -> Any:
        return self._keeper.state()

    def stop(self, timeout: float = 10.0) -> None:
        self._keeper.stop(timeout)
        self._logger.removeFilter(self._filter)


def _route_keeper(name: str, cluster: ClusterConfig, launchpad: Mapping[str, Any]) -> ForwardKeeper:
    """A keeper of ``cluster``'s ssh route leading to the LaunchPad of ``launchpad`` (this config dir's file)."""
    from types import SimpleNamespace

    from pilot.manager.routes import RouteKeeper, launchpad_target

    where = SimpleNamespace(host=launchpad.get("host"), port=launchpad.get("port"), uri_mode=launchpad.get("uri_mode"))
    return _QuietKeeper(RouteKeeper(name, cluster, launchpad_target(where)))


# ============================================================================ status
class _DoctorPrinter:
    """Prints the doctor's checks as they run (a pending line on a terminal, replaced by the result)."""

    def __init__(self, fancy: bool, live: bool, indent: str = "  ") -> None:
        self.fancy = fancy
        self.live = live
        self.indent = indent
        self.pending = False
        self.title = ""

    def cluster(self, cr: ClusterReport) -> None:
        where = f", {cr.file}" if cr.file else ""
        click.echo(f"\n{cr.name} ({cr.scheduler}, {cr.address}{where})")

    def start(self, _cluster: str, _cid: str, title: str) -> None:
        self.title = title
        if self.live:
            click.echo(f"{self.indent}{'…' if self.fancy else '...'} {title}", nl=False)
            self.pending = True

    def progress(self, _cluster: str, text: str) -> None:
        """Where a long check is, rewritten in place on the pending line (terminals only)."""
        if self.live and self.pending:
            click.echo(f"\r\033[K{self.indent}{'…' if self.fancy else '...'} {self.title}: {text}", nl=False)

    def result(self, _cluster: str | None, r: CheckResult) -> None:
        from pilot.checks.doctor import format_check

        if self.pending:
            click.echo("\r\033[K", nl=False)
            self.pending = False
        for line in format_check(r, self.fancy, indent=self.indent):
            click.echo(line)


@click.command("doctor")
@click.argument("cluster", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (no progress lines).")
@click.option("--ascii", "ascii_only", is_flag=True, help="Marks [ok]/[FAIL] instead of ✓/✗ (the default when "
              "the output is not a terminal).")
@click.option("--route-timeout", type=click.FloatRange(min=5), default=180, show_default=True, metavar="SECONDS",
              help="How long the route check waits for its probe job to start on a compute node (a job still "
                   "pending then is cancelled, and the check warns).")
@click.pass_obj
def doctor(app: Any, cluster: str | None, as_json: bool, ascii_only: bool, route_timeout: float) -> None:
    """Check everything a cluster needs, one check at a time, with a fix for each failure.

    Checks CLUSTER, or every cluster of the config dir. Exit code 0 only if no check failed.
    """
    from pilot.checks.doctor import CheckStatus, run_doctor

    fancy = _fancy(ascii_only)
    pr = _DoctorPrinter(fancy, live=fancy and not as_json)
    try:
        if as_json:
            report = run_doctor(app.config_dir, [cluster] if cluster else None, route_keeper=_route_keeper,
                                route_timeout=route_timeout)
        else:
            click.echo(f"checking {app.config_dir}" + (f", cluster {cluster}" if cluster else ""))
            report = run_doctor(app.config_dir, [cluster] if cluster else None, on_cluster=pr.cluster,
                                on_start=pr.start, on_result=pr.result, on_progress=pr.progress,
                                route_keeper=_route_keeper, route_timeout=route_timeout)
    except KeyError as e:
        raise click.ClickException(str(e.args[0])) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        checks = [report.config, *(c for cr in report.clusters for c in cr.checks)]
        failed = sum(c.status is CheckStatus.FAIL for c in checks)
        skipped = sum(c.status is CheckStatus.SKIP for c in checks)
        ran = len(checks) - skipped
        if failed:
            click.echo(f"\n{failed} of {ran} checks failed" + (f", {skipped} skipped" if skipped else "")
                       + ": see the fix under each")
        else:
            click.echo(f"\nall {ran} checks passed")
    sys.exit(0 if report.ok else 1)


# ============================================================================ bootstrap
@click.command("bootstrap")
@click.argument("cluster")
@click.option("--wheels", type=click.Choice(["upload", "index", "auto"]), default="upload", show_default=True,
              help="upload: every wheel is built here and uploaded (no package index needed on the cluster); "
                   "index: the cluster's pip installs the dependencies from its index; auto: index if the "
                   "cluster's index answers, else upload.")
@click.option("--db-host", metavar="HOST[:PORT]",
              help="The database's address as the cluster sees it (rewritten in the cluster's launchpad file).")
@click.option("--venv", metavar="PATH", help="Where the venv goes on the cluster (default: WORK_DIR/venv).")
@click.option("--python", "python", default="python3", show_default=True,
              help="The cluster's Python (after the setup lines) that creates the venv.")
@click.option("--launchpad-path", metavar="PATH", help="Where the launchpad file goes on the cluster "
              "(default: the cluster's launchpad_file); the cluster file is updated to match.")
@click.option("--force", is_flag=True, help="Reinstall even if the venv has the same build.")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path),
              help="Local wheel cache (default: CONFIG_DIR/wheelhouse).")
@click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Build fireworks-pilot from this source tree (default: the tree this pilot runs from, or the "
                   "released version from the package index).")
@click.option("--no-doctor", is_flag=True, help="Do not run `pilot doctor CLUSTER` at the end.")
@click.option("--ascii", "ascii_only", is_flag=True, help="Doctor marks [ok]/[FAIL] instead of ✓/✗.")
@click.pass_obj
def bootstrap(app: Any, cluster: str, wheels: str, db_host: str | None, venv: str | None, python: str,
              launchpad_path: str | None, force: bool, wheelhouse: Path | None, source: Path | None,
              no_doctor: bool, ascii_only: bool) -> None:
    """Set up CLUSTER: a venv in work_dir with this version of fireworks-pilot, the launchpad file
    (mode 600), the cluster file's setup and launchpad_file; then run the doctor."""
    from pilot.checks.bootstrap import BootstrapError, BootstrapOptions, Reporter, WheelMode
    from pilot.checks.bootstrap import bootstrap as do_bootstrap
    from pilot.checks.doctor import ClusterDoctor
    from pilot.config import ConfigError
    from pilot.transport import TransportError

    opts = BootstrapOptions(wheels=WheelMode(wheels), venv=venv, python=python, db_host=db_host,
                            launchpad_path=launchpad_path, force=force, wheelhouse=wheelhouse,
                            run_doctor=not no_doctor, source=source)
    live = sys.stdout.isatty()
    rep = Reporter(total=8 if not no_doctor else 7, echo=lambda text="", nl=True: click.echo(text, nl=nl),
                   live=live)
    try:
        do_bootstrap(app.config_dir, cluster, opts, rep=rep)
    except ConfigError as e:
        raise click.ClickException(f"the configuration has problems:\n{e}") from None
    except KeyError as e:
        raise click.ClickException(str(e.args[0])) from None
    except (BootstrapError, TransportError) as e:
        raise click.ClickException(f"bootstrap of {cluster} stopped:\n{e}") from None
    if no_doctor:
        click.echo(f"{cluster} is set up; check it with `{pilot_command(app.config_dir, f'doctor {cluster}')}`")
        return
    from pilot.config import load_config

    cfg = load_config(app.config_dir)
    fancy = _fancy(ascii_only)
    pr = _DoctorPrinter(fancy, live=fancy, indent="      ")
    doc = ClusterDoctor(cluster, cfg.clusters[cluster], job_name_prefix=cfg.pilot.job_name_prefix,
                        config_dir=app.config_dir, route_keeper=_route_keeper,
                        progress=lambda text: pr.progress(cluster, text))
    failed = 0
    with rep.step(f"pilot doctor {cluster}") as ev:
        try:
            for r in doc.run(on_start=lambda cid, title: pr.start(cluster, cid, title)):
                pr.result(cluster, r)
                failed += r.failed
        finally:
            doc.close()
        ev["result"] = "all checks passed" if not failed else f"{failed} check(s) failed: see the fix under each"
    sys.exit(1 if failed else 0)
