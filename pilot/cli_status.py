"""``pilot status``, ``pilot doctor`` and ``pilot bootstrap``: what a person looks at.

Thin: options are parsed here, the work is in :mod:`pilot.status`, :mod:`pilot.doctor` and
:mod:`pilot.bootstrap`. See ``docs/status-and-doctor.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click


def _fancy(ascii_only: bool) -> bool:
    """Use ✓/✗ only on a terminal whose encoding can print them."""
    if ascii_only or not sys.stdout.isatty():
        return False
    try:
        "✓✗…".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# ============================================================================ status
def _status_sources(app: Any, launchpad_file: Path | None) -> tuple[Any | None, Path, list[str]]:
    """(config or None, the launchpad file, warnings): the config dir is optional for status."""
    from pilot.config import PILOT_FILE, ConfigError, load_config, load_pilot_config

    warnings: list[str] = []
    config = None
    lp_from_config: Path | None = None
    cdir = Path(app.config_dir)
    if cdir.is_dir():
        try:
            config = load_config(cdir)
            lp_from_config = Path(os.path.expanduser(str(config.pilot.launchpad_file)))
        except ConfigError as e:
            warnings.append(f"the config in {cdir} has problems ({len(e.problems)}; see `pilot config check`): "
                            "clusters and categories come from the records")
            try:
                lp_from_config = Path(os.path.expanduser(str(load_pilot_config(cdir / PILOT_FILE).launchpad_file)))
            except ConfigError:
                lp_from_config = None
    lp = Path(os.path.expanduser(str(launchpad_file))) if launchpad_file else lp_from_config
    if lp is None:
        raise click.ClickException(
            f"no launchpad file: {cdir} is not a config directory; pass --launchpad-file my_launchpad.yaml "
            "(status needs only that file), or --config-dir")
    if not lp.is_file():
        where = "--launchpad-file" if launchpad_file else f"{cdir / PILOT_FILE}: launchpad_file"
        raise click.ClickException(f"{where}: {lp} does not exist; pass the my_launchpad.yaml of your LaunchPad")
    return config, lp, warnings


def _open_launchpad(lp_file: Path) -> Any:
    import yaml
    from fireworks import LaunchPad

    try:
        lp = LaunchPad.from_file(str(lp_file))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        # FireWorks passes on whatever its YAML/JSON reader raises; a file without "host" is a KeyError
        raise click.ClickException(f"cannot read the launchpad file {lp_file}: {type(e).__name__}: {e}") from None
    d = lp.to_dict()
    kw = dict(d.get("mongoclient_kwargs") or {})
    kw.setdefault("serverSelectionTimeoutMS", 10000)
    d["mongoclient_kwargs"] = kw
    d["strm_lvl"] = "ERROR"
    return LaunchPad.from_dict(d)


@click.command("status")
@click.option("--launchpad-file", "-l", type=click.Path(dir_okay=False, path_type=Path),
              help="The LaunchPad file (default: launchpad_file of the config dir's pilot.yaml). With it, no "
                   "config dir is needed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (docs/status.schema.json).")
@click.option("--watch", type=float, is_flag=False, flag_value=10.0, default=None, metavar="[SECONDS]",
              help="Redraw every SECONDS (default 10) until Ctrl-C. With --json: one JSON document per line.")
@click.option("--pending-warn", type=float, default=30.0, show_default=True,
              help="Minutes in the queue after which a pilot is listed under 'needs you'.")
@click.option("--recent", type=float, default=60.0, show_default=True,
              help="Minutes: pilots that ended within this time count as 'ended recently'.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="Entries per 'needs you' list (the totals are always complete).")
@click.pass_obj
def status(app: Any, launchpad_file: Path | None, as_json: bool, watch: float | None, pending_warn: float,
           recent: float, limit: int) -> None:
    """Clusters, categories and what needs you, from the LaunchPad database (no SSH)."""
    from pymongo.errors import PyMongoError

    from pilot.status import StatusOptions, describe_launchpad, format_status, gather_status

    config, lp_file, warnings = _status_sources(app, launchpad_file)
    lp = _open_launchpad(lp_file)
    opts = StatusOptions(pending_warn=pending_warn * 60, recent=recent * 60, limit=limit)
    info = describe_launchpad(lp)

    def once() -> str:
        try:
            report = gather_status(lp.db, config, options=opts, launchpad_info=info, warnings=warnings)
        except PyMongoError as e:
            msg = (f"cannot read the LaunchPad database {info.get('host')} ({info.get('name')}): "
                   f"{type(e).__name__}: {str(e).splitlines()[0][:300]}; is the database running and reachable "
                   f"from here? (launchpad file: {lp_file})")
            if watch is None:
                raise click.ClickException(msg) from None
            return json.dumps({"error": msg}) if as_json else f"error: {msg}\n"
        if as_json:
            return json.dumps(report.to_dict(), default=str, indent=None if watch is not None else 2)
        width = shutil.get_terminal_size((120, 40)).columns
        return format_status(report, width=width)

    if watch is None:
        click.echo(once().rstrip("\n"))
        return
    if watch <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--watch")
    tty = sys.stdout.isatty() and not as_json
    try:
        while True:
            text = once().rstrip("\n")
            if tty:
                # home + clear, then the new text in one write: no blank flash between frames
                sys.stdout.write("\033[H\033[2J" + text + f"\n\n(refreshing every {watch:g} s; Ctrl-C to quit)\n")
                sys.stdout.flush()
            else:
                click.echo(text)
            time.sleep(watch)
    except KeyboardInterrupt:
        if tty:
            click.echo("")


# ============================================================================ doctor
class _DoctorPrinter:
    """Prints the doctor's checks as they run (a pending line on a terminal, replaced by the result)."""

    def __init__(self, fancy: bool, live: bool, indent: str = "  ") -> None:
        self.fancy = fancy
        self.live = live
        self.indent = indent
        self.pending = False

    def cluster(self, cr: Any) -> None:
        where = f", {cr.file}" if cr.file else ""
        click.echo(f"\n{cr.name} ({cr.scheduler}, {cr.address}{where})")

    def start(self, _cluster: str, _cid: str, title: str) -> None:
        if self.live:
            click.echo(f"{self.indent}{'…' if self.fancy else '...'} {title}", nl=False)
            self.pending = True

    def result(self, _cluster: str | None, r: Any) -> None:
        from pilot.doctor import format_check

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
@click.pass_obj
def doctor(app: Any, cluster: str | None, as_json: bool, ascii_only: bool) -> None:
    """Check everything a cluster needs, one check at a time, with a fix for each failure.

    Checks CLUSTER, or every cluster of the config dir. Exit code 0 only if no check failed.
    """
    from pilot.doctor import CheckStatus, run_doctor

    fancy = _fancy(ascii_only)
    pr = _DoctorPrinter(fancy, live=fancy and not as_json)
    try:
        if as_json:
            report = run_doctor(app.config_dir, [cluster] if cluster else None)
        else:
            click.echo(f"checking {app.config_dir}" + (f", cluster {cluster}" if cluster else ""))
            report = run_doctor(app.config_dir, [cluster] if cluster else None, on_cluster=pr.cluster,
                                on_start=pr.start, on_result=pr.result)
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
    from pilot.bootstrap import BootstrapError, BootstrapOptions, Reporter, WheelMode
    from pilot.bootstrap import bootstrap as do_bootstrap
    from pilot.config import ConfigError
    from pilot.doctor import ClusterDoctor
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
        click.echo(f"{cluster} is set up; check it with `pilot doctor {cluster}`")
        return
    from pilot.config import load_config

    cfg = load_config(app.config_dir)
    fancy = _fancy(ascii_only)
    pr = _DoctorPrinter(fancy, live=fancy, indent="      ")
    doc = ClusterDoctor(cluster, cfg.clusters[cluster], job_name_prefix=cfg.pilot.job_name_prefix)
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
