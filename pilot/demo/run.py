"""``run_demo``: the demo from start to end, as setup -> loop -> teardown around a :class:`DemoRun`.

* setup (:func:`_setup`, :func:`_add_work`): the config directory, the LaunchPad server, the manager's lock
  and log, the speed test and the simulations;
* loop (:func:`_loop`): a manager cycle every ``POLL_INTERVAL_S`` with the progress display, until every
  simulation is done, one failed (without ``--keep-going``) or the time is up;
* the end (:func:`_finish`, :func:`_show_results`): the pilots drained, the outcome, ``pilot status`` and
  the throughput report;
* teardown (:func:`_teardown`, always): any pilot still alive cancelled, the manager closed, the log handlers
  removed, the lock released, the database connection closed.

No click here: the CLI passes ``show_status`` (it runs the ``status`` command) and ``echo``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pilot.configdir import pilot_command
from pilot.demo.directory import check_config_dir, start_launchpad, write_config
from pilot.demo.engine import add_simulations, choose_engine, measure_gromacs, measure_openmm, steps_for
from pilot.demo.options import CLUSTER_NAME, IDLE_TIMEOUT_S, POLL_INTERVAL_S, DemoError, DemoOptions
from pilot.demo.pilots import stop_pilots
from pilot.demo.watch import Progress, Sim, count_pilots, refresh_sims

if TYPE_CHECKING:
    from pilot.config import Config
    from pilot.launchpad.control import RunningServer
    from pilot.manager.cycle import Manager

__all__ = ["DemoRun", "run_demo"]


def _echo(message: str) -> None:
    """The default ``echo``: a line on stdout, flushed (progress lines must show while the demo runs)."""
    print(message, flush=True)


def _next_run(config_dir: Path) -> int:
    root = config_dir / "demo"
    taken = (
        [int(p.name.split("-", 1)[1]) for p in root.glob("run-*") if p.name.split("-", 1)[1].isdigit()]
        if root.is_dir()
        else []
    )
    return max(taken, default=0) + 1


def _setup_logging(config_dir: Path, verbose: int) -> tuple[logging.Logger, list[logging.Handler], bool]:
    """Manager log lines go to CONFIG_DIR/logs/manager.log (INFO) and stderr (warnings, or INFO with -v)."""
    (config_dir / "logs").mkdir(parents=True, exist_ok=True)
    lg = logging.getLogger("pilot.manager")
    fh = logging.FileHandler(config_dir / "logs" / "manager.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    fh.setLevel(logging.INFO)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    sh.setLevel(logging.INFO if verbose > 0 else logging.WARNING)
    old_propagate = lg.propagate
    lg.addHandler(fh)
    lg.addHandler(sh)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg, [fh, sh], old_propagate


def _print_summary(lp: Any, say: Callable[[str], None]) -> None:
    """Without a ``status`` command to run: a short summary of our own."""
    counts: dict[str, int] = {}
    for row in lp.fireworks.aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}]):
        counts[str(row["_id"])] = int(row["n"])
    pilots: dict[str, int] = {}
    for row in lp.db["pilots"].aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}]):
        pilots[str(row["_id"])] = int(row["n"])
    say("")
    say("Status (`pilot status` is not available in this version):")
    say("  Fireworks: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    say("  pilots:    " + (", ".join(f"{n} {s}" for s, n in sorted(pilots.items())) or "none"))



@dataclass
class DemoRun:
    """What setup hands the loop, the end and the teardown."""

    config_dir: Path
    opts: DemoOptions
    echo: Callable[[str], None]
    engine: str
    tty: bool
    t_start: float
    config: Config
    lp: Any  # fireworks.LaunchPad
    server: RunningServer
    lock: IO[str]
    log: logging.Logger
    log_handlers: list[logging.Handler]
    log_propagate: bool
    label: str = ""
    nsteps: int = 0
    sims: list[Sim] = field(default_factory=list)
    mgr: Manager | None = None
    progress: Progress | None = None
    t_run: float = 0.0
    #: our pilots still to stop (emptied once they are stopped: nothing left for the teardown)
    job_names: set[str] = field(default_factory=set)
    #: every pilot of the run, once stopped
    job_names_done: set[str] = field(default_factory=set)

    def say(self, message: str) -> None:
        """An indented line under the current step."""
        self.echo("  " + message)


def run_demo(
    config_dir: Path,
    opts: DemoOptions,
    show_status: Callable[[], None] | None = None,
    echo: Callable[[str], None] = _echo,
    verbose: int = 0,
) -> bool:
    """Run the demo in ``config_dir``; True when every simulation finished.

    Parameters
    ----------
    config_dir : Path
        The demo's config directory (``--config-dir``).
    opts : DemoOptions
    show_status : callable or None
        Shows ``pilot status`` at the end (the CLI passes one that runs the ``status`` command); ``None``:
        a short summary of the Fireworks and pilots instead.
    echo : callable
        Where the demo's lines go (default: stdout).
    verbose : int
        ``-v`` count: manager log lines at INFO on stderr from 1, FireWorks' own from 2.

    Raises
    ------
    DemoError
        When it cannot start (foreign config, no engine, the server does not start) or gives up.
    """
    t_start = time.monotonic()
    config_dir = Path(os.path.expanduser(str(config_dir))).absolute()
    tty = sys.stdout.isatty()
    check_config_dir(config_dir)
    engine = choose_engine(opts.engine)

    # FireWorks' own loggers ("launchpad") propagate to the root handler: keep their DEBUG/INFO lines out
    fw_logger = logging.getLogger("launchpad")
    fw_propagate = fw_logger.propagate
    fw_logger.propagate = verbose > 1

    received: list[int] = []

    def _terminate(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:  # once: a second SIGTERM does not cut the clean-up short
            raise KeyboardInterrupt(f"signal {signum}")  # same clean-up as Ctrl-C: the pilots are stopped

    old_term = (
        signal.signal(signal.SIGTERM, _terminate)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        return _run(config_dir, opts, show_status, echo, engine, verbose, tty, t_start)
    finally:
        fw_logger.propagate = fw_propagate
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run(
    config_dir: Path,
    opts: DemoOptions,
    show_status: Callable[[], None] | None,
    echo: Callable[[str], None],
    engine: str,
    verbose: int,
    tty: bool,
    t_start: float,
) -> bool:
    run = _setup(config_dir, opts, echo, engine, verbose, tty, t_start)
    try:
        _add_work(run)
        failed_first = _loop(run)
        ok = _finish(run, failed_first)
        _show_results(run, show_status)
        return ok
    except KeyboardInterrupt:
        echo(
            f"\ninterrupted: stopping the pilots; unfinished segments go back to READY "
            f"(`{pilot_command(config_dir, 'manager run')}` "
            "continues them)"
        )
        raise
    finally:
        _teardown(run)


def _setup(
    config_dir: Path, opts: DemoOptions, echo: Callable[[str], None], engine: str, verbose: int, tty: bool,
    t_start: float,
) -> DemoRun:
    """The directory, the LaunchPad server, the config, the manager's lock and log."""
    from fireworks import LaunchPad

    from pilot.config import ConfigError, load_config
    from pilot.manager.daemon import ManagerRunningError, acquire_lock

    config_dir.mkdir(parents=True, exist_ok=True)
    # the local scheduler's job files live in the local cluster's work_dir (as the local adapter puts them)
    os.environ["PILOT_LOCAL_STATE"] = str(config_dir / "work" / "localsched")
    cores = os.cpu_count() or 1
    max_pilots = max(1, min(4, cores, math.ceil(opts.sims / 2)))

    echo(f"pilot demo in {config_dir}")
    server, lpd = start_launchpad(config_dir, lambda m: echo("  " + m))
    for p in write_config(config_dir, max_pilots):
        echo(f"  wrote {p}")
    try:
        config = load_config(config_dir)
    except ConfigError as e:
        raise DemoError(
            f"the demo's configuration in {config_dir} has problems (fix or delete those files):\n{e}"
        ) from None
    if CLUSTER_NAME not in config.clusters:
        raise DemoError(f"{config_dir}/clusters/{CLUSTER_NAME}.yaml is missing")
    lp = LaunchPad.from_dict(dict(lpd, strm_lvl="ERROR"))
    try:
        lock = acquire_lock(config_dir)
    except ManagerRunningError as e:
        raise DemoError(str(e)) from None
    lg, handlers, old_propagate = _setup_logging(config_dir, verbose)
    return DemoRun(
        config_dir=config_dir, opts=opts, echo=echo, engine=engine, tty=tty, t_start=t_start, config=config,
        lp=lp, server=server, lock=lock, log=lg, log_handlers=handlers, log_propagate=old_propagate,
    )


def _add_work(run: DemoRun) -> None:
    """The speed test, then the simulations sized from it."""
    config_dir, opts, echo = run.config_dir, run.opts, run.echo
    run_no = _next_run(config_dir)
    root = config_dir / "demo" / f"run-{run_no}"
    root.mkdir(parents=True, exist_ok=True)
    label = {"openmm": "OpenMM", "gromacs": "GROMACS"}[run.engine]
    echo(f"  measuring {label}'s speed on this machine ...")
    speed = (measure_openmm if run.engine == "openmm" else measure_gromacs)(root / "speed-test")
    nsteps = steps_for(speed, opts.segments, opts.segment_seconds)
    run.sims = add_simulations(run.lp, run.engine, root, opts.sims, nsteps, opts.segment_seconds,
                               f"demo{run_no}", segments=opts.segments)
    run.label, run.nsteps = label, nsteps
    echo(
        f"  {speed.steps_per_s:.0f} steps/s: added {opts.sims} {label} water-box simulations of "
        f"{nsteps:,} "
        f"steps (~{opts.segments} segments of {opts.segment_seconds:g} s each) in {root}"
    )
    lc = run.config.clusters[CLUSTER_NAME]
    echo(
        f"  manager: cluster '{CLUSTER_NAME}', pilots are local processes "
        f"({lc.walltime_seconds} s wall time, "
        f"up to {lc.limits.max_running} at once); log {config_dir / 'logs' / 'manager.log'}"
    )
    echo("")


def _loop(run: DemoRun) -> Sim | None:
    """Manager cycles with the progress display until the work is done; the first failed simulation, if the
    loop stopped at it."""
    from pilot.manager.cycle import Manager

    sims, opts = run.sims, run.opts
    mgr = run.mgr = Manager(run.config, run.lp)
    progress = run.progress = Progress(sims, run.label, run.tty, run.echo)
    run.t_run = time.monotonic()
    while True:
        cycle = mgr.run_cycle()
        run.job_names.update(s["job_name"] for s in cycle.submitted)
        refresh_sims(run.lp, sims)
        progress.update(count_pilots(mgr.records, run.job_names), time.monotonic() - run.t_run)
        failed = [s for s in sims if s.state == "failed"]
        if failed and not opts.keep_going:
            return failed[0]
        if all(s.done for s in sims):
            return None
        if time.monotonic() - run.t_start > opts.timeout:
            raise DemoError(
                f"not finished after {opts.timeout:.0f} s ({sum(s.state == 'finished' for s in sims)} of "
                f"{len(sims)} simulations done); see {run.config_dir / 'logs' / 'manager.log'} and "
                f"`{pilot_command(run.config_dir, 'status')}`. "
                f"The pilots were cancelled; `{pilot_command(run.config_dir, 'manager run')}` continues the work."
            )
        time.sleep(POLL_INTERVAL_S)


def _finish(run: DemoRun, failed_first: Sim | None) -> bool:
    """Drain and stop our pilots, show the last progress and say how it went; True when all finished."""
    assert run.mgr is not None
    echo, sims, config_dir = run.echo, run.sims, run.config_dir
    stop_pilots(run.mgr, run.job_names, IDLE_TIMEOUT_S + 3 * POLL_INTERVAL_S + 5, run.say)
    run.job_names_done = set(run.job_names)
    run.job_names = set()  # stopped: nothing left for the teardown
    refresh_sims(run.lp, sims)
    pil = count_pilots(run.mgr.records, run.job_names_done)
    if run.progress is not None:
        run.progress.update(pil, time.monotonic() - run.t_run)
    finished = [s for s in sims if s.state == "finished"]
    total_segments = sum(s.segments_done for s in sims)
    echo("")
    if failed_first is not None:
        echo(f"{failed_first.name} FAILED: {failed_first.error}")
        echo(
            f"  run directory {failed_first.run_dir}; "
            f"`lpad -l {config_dir / 'my_launchpad.yaml'} get_fws "
            f"-s FIZZLED -d more` shows the error; --keep-going runs the others to the end"
        )
    elif len(finished) == len(sims):
        every = (
            "The simulation"
            if len(sims) == 1
            else "Both simulations"
            if len(sims) == 2
            else f"All {len(sims)} simulations"
        )
        echo(
            f"{every} finished at step {run.nsteps:,}: {total_segments} segments on "
            f"{len(run.job_names_done)} pilots in {time.monotonic() - run.t_run:.0f} s."
        )
    else:
        echo(
            f"{len(finished)} of {len(sims)} simulations finished; "
            + ", ".join(f"{s.name} {s.state}" for s in sims if s.state != "finished")
        )
    return len(finished) == len(sims)


def _show_results(run: DemoRun, show_status: Callable[[], None] | None) -> None:
    """``pilot status``, the throughput report and its figure, and what to run next."""
    from pilot.report import format_report, gather_report, plot_report

    echo, config_dir, server = run.echo, run.config_dir, run.server
    if show_status is not None:
        echo("")
        echo("$ pilot status")
        show_status()
    else:
        _print_summary(run.lp, echo)
    rep = gather_report(run.lp.db, run.config)
    png = plot_report(rep, config_dir / "report.png")
    echo("")
    echo("$ pilot report")
    echo(format_report(rep))
    echo(f"wrote {png}")
    echo("")
    echo(
        f"Done in {time.monotonic() - run.t_start:.0f} s. The LaunchPad server keeps running "
        f"(pid {server.pid}, "
        f"{server.host}:{server.port}), so these work on what the demo left:"
    )
    echo(f"  {pilot_command(config_dir, 'status')}")
    echo(f"  {pilot_command(config_dir, 'report --plot report.png')}")
    echo(f"  lpad -l {config_dir / 'my_launchpad.yaml'} get_wflows")
    echo(f"Stop the server with `{pilot_command(config_dir, 'launchpad stop')}`; delete {config_dir} to remove "
         "everything.")


def _teardown(run: DemoRun) -> None:
    """Always: stop any pilot still alive, close the manager, restore logging, release the lock, disconnect."""
    from pilot.manager.daemon import release_lock

    try:
        if run.mgr is not None and run.job_names:
            stop_pilots(run.mgr, run.job_names, 0.0, run.say)
    finally:
        if run.mgr is not None:
            run.mgr.close()
        for h in run.log_handlers:
            run.log.removeHandler(h)
            h.close()
        run.log.propagate = run.log_propagate
        release_lock(run.config_dir, run.lock)
        run.lp.connection.close()
