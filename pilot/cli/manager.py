"""``pilot manager run|start|stop|status``: the manager daemon's command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from pilot.configdir import PrivateFileHandler, open_private, private_dir
from pilot.manager.daemon import (
    ManagerRunningError,
    acquire_lock,
    is_our_manager,
    lock_paths,
    read_pid,
    release_lock,
    write_pidfile,
)

if TYPE_CHECKING:
    from pilot.cli import AppContext
    from pilot.config import Config
    from pilot.launchpad.files import LaunchPadFile
    from pilot.manager.lease import Lease
    from pilot.manager.runtime import CycleReport

log = logging.getLogger("pilot.manager")


def load_manager_inputs(app: AppContext, interactive: bool = True) -> tuple[Config, Any, LaunchPadFile]:
    """The config dir's configuration, its LaunchPad and the LaunchPad file (read by :mod:`pilot.launchpad.files`).

    What a :class:`~pilot.manager.cycle.Manager` is built from (``pilot manager run``, ``pilot submit``,
    ``pilot cancel``); click.ClickException when the configuration has problems or there is no LaunchPad.

    ``interactive`` False (the daemon): the database gets the driver's own wait, not the 5 s of a prompt.
    """
    from pilot.config import ConfigError, load_config
    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad

    try:
        config = load_config(app.config_dir)
    except ConfigError as e:
        raise click.ClickException(f"the configuration has problems:\n{e}") from None
    try:
        lpf = find_launchpad_file(app.config_dir, pilot=config.pilot, option=None)
        return config, open_launchpad(lpf, interactive=interactive), lpf
    except LaunchPadUnavailable as e:
        raise click.ClickException(str(e)) from None


def private_log_dir(log_dir: Path, config_dir: Path) -> Path:
    """Make the manager's log dir 0700 (its logs name clusters, accounts and the LaunchPad).

    An existing one is tightened only inside the config dir: a ``log_dir`` the user pointed elsewhere may be
    shared on purpose (its files are 0600 all the same).
    """
    inside = log_dir.absolute().is_relative_to(config_dir.absolute())
    if inside:
        private_dir(config_dir)
    return private_dir(log_dir, tighten=inside)


def _file_logging(log_dir: Path, config_dir: Path) -> None:
    """Log INFO and up to LOG_DIR/manager.log (0600, in a 0700 dir: see :func:`private_log_dir`)."""
    private_log_dir(log_dir, config_dir)
    h = PrivateFileHandler(log_dir / "manager.log")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    h.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(h)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
        for other in root.handlers:
            if other is not h and other.level == logging.NOTSET:
                other.setLevel(logging.WARNING)


@click.group("manager")
def manager() -> None:
    """The manager daemon: submits the pilots that demand needs, reruns lost work."""


@manager.command("run")
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.option("--dry-run", is_flag=True, help="Query and print the decisions; submit, record and rerun nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print each cycle's report as one JSON line.")
@click.pass_obj
def run_cmd(obj: AppContext, once: bool, dry_run: bool, as_json: bool) -> None:
    """Run the manager in the foreground (SIGTERM finishes the current cycle, then exits)."""
    config, lp, lpf = load_manager_inputs(obj, interactive=False)
    lock, lease = (None, None) if dry_run else _take_lock_and_lease(obj, lp, lpf, config)
    try:   # whatever fails from here on, a clean exit releases the lease: the next manager need not wait it out
        lost = _run_manager(obj, config, lp, lease, once=once, dry_run=dry_run, as_json=as_json)
    finally:
        if lease is not None:
            lease.release()
        if lock is not None:
            release_lock(obj.config_dir, lock)
    if lost:
        raise click.ClickException(lost[0])


def _run_manager(obj: AppContext, config: Config, lp: Any, lease: Lease | None, *, once: bool, dry_run: bool,
                 as_json: bool) -> list[str]:
    """Build the :class:`~pilot.manager.cycle.Manager` and cycle until SIGTERM (or once); the reason the lease was
    lost, if it was (the manager then stops at the end of its cycle: another manager acts on this LaunchPad)."""
    from pilot.manager.cycle import Manager

    _file_logging(Path(os.path.expanduser(str(config.pilot.log_dir))), obj.config_dir)
    mgr = Manager(config, lp, dry_run=dry_run)
    lost: list[str] = []

    def _stop(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing the current cycle, then exiting", signal.Signals(signum).name)
        mgr.stop_event.set()

    def _lost(reason: str) -> None:
        log.error("%s: stopping, so that two managers never act on one LaunchPad", reason)
        lost.append(reason)
        mgr.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def show(report: CycleReport) -> None:
        if as_json:
            click.echo(json.dumps(report.to_dict(), default=str))
            return
        for d in report.decisions:
            click.echo(("[dry run] " if dry_run else "") + d.log_line())
        for name, err in report.errors.items():
            click.echo(f"{name}: ERROR: {err}", err=True)

    if lease is not None:
        lease.start_renewing(float(config.pilot.poll_interval), _lost)
    try:
        log.info("manager started (pid %d, config %s, %d clusters%s)", os.getpid(), obj.config_dir,
                 len(config.clusters), ", dry run" if dry_run else "")
        if once:
            show(mgr.run_cycle())
        else:
            mgr.run_forever(on_cycle=show)
        log.info("manager stopped")
    finally:
        mgr.close()
    return lost


def _take_lock_and_lease(obj: AppContext, lp: Any, lpf: LaunchPadFile, config: Config) -> tuple[IO[str], Lease]:
    """The config dir's lock, then the LaunchPad's lease (:mod:`pilot.manager.lease`), then the pidfile.

    The lock keeps a second manager of this config dir out (and gives ``stop``/``status`` the pidfile); the lease
    keeps out a manager of any other config dir or host on the same LaunchPad. The pidfile comes last, so that
    ``pilot manager start`` (which waits for it) reports a refused manager as refused, with its message.
    """
    import pymongo.errors

    from pilot.launchpad.files import database_error
    from pilot.manager.lease import LEASE_INTERVALS, Lease, LeaseHeldError

    try:
        lock = acquire_lock(obj.config_dir, write_pid=False)
    except ManagerRunningError as e:
        raise click.ClickException(str(e)) from None
    lease = Lease(lp.db, obj.config_dir, LEASE_INTERVALS * float(config.pilot.poll_interval))
    try:
        lease.acquire()
    except LeaseHeldError as e:
        release_lock(obj.config_dir, lock)
        raise click.ClickException(str(e)) from None
    except pymongo.errors.PyMongoError as e:
        release_lock(obj.config_dir, lock)
        raise click.ClickException(str(database_error(e, lp, lpf))) from None
    write_pidfile(obj.config_dir)
    return lock, lease


@manager.command("start")
@click.pass_obj
def start_cmd(obj: AppContext) -> None:
    """Start the manager in the background (log: LOG_DIR/manager.log, pidfile: CONFIG_DIR/manager.pid)."""
    from pilot.config import ConfigError, load_config

    _, pidfile = lock_paths(obj.config_dir)
    pid = read_pid(pidfile)
    if pid and is_our_manager(pid):
        raise click.ClickException(f"the manager is already running (pid {pid})")
    try:
        config = load_config(obj.config_dir)
    except ConfigError as e:
        raise click.ClickException(f"the configuration has problems:\n{e}") from None
    log_dir = Path(os.path.expanduser(str(config.pilot.log_dir)))
    private_log_dir(log_dir, obj.config_dir)
    out = open_private(log_dir / "manager.out", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(obj.config_dir), "manager", "run"],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (log_dir / "manager.out").read_text(errors="replace")[-1500:]
            raise click.ClickException(f"the manager exited at once (code {proc.returncode}):\n{tail}")
        if read_pid(pidfile) == proc.pid:
            click.echo(f"manager started (pid {proc.pid}); log: {log_dir / 'manager.log'}")
            return
        time.sleep(0.1)
    raise click.ClickException(f"the manager (pid {proc.pid}) did not report in 15 s; see {log_dir / 'manager.out'}")


@manager.command("stop")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the current cycle to end.")
@click.pass_obj
def stop_cmd(obj: AppContext, timeout: float) -> None:
    """Stop the background manager (SIGTERM: it finishes its cycle first)."""
    _, pidfile = lock_paths(obj.config_dir)
    pid = read_pid(pidfile)
    if not pid or not is_our_manager(pid):
        click.echo("the manager is not running")
        pidfile.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_our_manager(pid):
            click.echo(f"manager stopped (pid {pid})")
            return
        time.sleep(0.2)
    raise click.ClickException(f"the manager (pid {pid}) is still finishing its cycle after {timeout:.0f} s")


def _heartbeat(obj: AppContext) -> dict[str, Any]:
    """The manager's last cycle as it recorded it in the LaunchPad (click.ClickException: no LaunchPad)."""
    import pymongo.errors

    from pilot.launchpad.files import database_error
    from pilot.manager.lease import read_holder

    _, lp, lpf = load_manager_inputs(obj)
    try:
        hb = lp.db["pilot_manager"].find_one({"_id": "manager"}) or {}
        holder = read_holder(lp.db)
    except pymongo.errors.PyMongoError as e:
        raise click.ClickException(str(database_error(e, lp, lpf))) from None
    finally:
        lp.connection.close()
    return {"last_cycle": hb.get("last_cycle"), "last_cycle_duration": hb.get("last_cycle_duration"),
            "errors": hb.get("errors") or {}, "lease": holder.to_dict() if holder else None}


@manager.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status_cmd(obj: AppContext, as_json: bool) -> None:
    """Is the manager running, and when did it last cycle?"""
    _, pidfile = lock_paths(obj.config_dir)
    pid = read_pid(pidfile)
    running = bool(pid and is_our_manager(pid))
    info: dict[str, Any] = {"running": running, "pid": pid if running else None}
    try:
        info.update(_heartbeat(obj))
    except click.ClickException as e:
        info["error"] = e.message
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    click.echo(f"manager: {f'running (pid {pid})' if running else 'not running'}")
    if info.get("lease"):
        from pilot.manager.lease import LeaseHolder

        holder = LeaseHolder.from_doc(info["lease"])
        state = "held by" if not holder.expired() else "left by (expired: free to take)"
        click.echo(f"LaunchPad lease: {state} {holder.describe()}")
    elif "error" not in info:
        click.echo("LaunchPad lease: free (no manager runs on this LaunchPad)")
    if info.get("last_cycle"):
        ago = time.time() - float(info["last_cycle"])
        click.echo(f"last cycle: {ago:.0f} s ago, took {info['last_cycle_duration']:.1f} s")
    for name, err in (info.get("errors") or {}).items():
        click.echo(f"  {name}: {err}")
    if info.get("error"):
        click.echo(info["error"])
