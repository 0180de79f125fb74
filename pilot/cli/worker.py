"""``pilot worker``: the command line of the process inside a batch job (see :mod:`pilot.worker`).

Only click and :mod:`pilot.worker` are imported here, so the pilot's start-up inside a batch job stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from pilot.worker import EXIT_INTERNAL, LOG, SshRoute, Worker, WorkerConfig, parse_route_target, setup_worker_logging


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise click.UsageError(f"environment variable {name}={raw!r} is not a number of epoch seconds") from None


def _route(target: str | None, port: int | None, key: Path | None, known_hosts: Path | None) -> SshRoute | None:
    """The ssh route the --route-* options describe, None without --route-ssh (the others need it)."""
    if target is None:
        given = [opt for opt, value in (("--route-port", port), ("--route-key", key),
                                        ("--route-known-hosts", known_hosts)) if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} without --route-ssh: pass --route-ssh USER@ADDRESS:PORT "
                                   "too, or leave them out to connect directly")
        return None
    if port is None:
        raise click.UsageError("--route-ssh needs --route-port PORT (the login node's port of the manager's "
                               "forward, launchpad_route.port in the cluster file)")
    try:
        user, address, ssh_port = parse_route_target(target)
    except ValueError as exc:
        raise click.UsageError(f"--route-ssh: {exc}") from None
    return SshRoute(port=port, login_address=address, login_port=ssh_port, user=user,
                    key=(key or Path("~/.pilot/route_key")).expanduser().absolute(),
                    known_hosts=(known_hosts or Path("~/.pilot/route_known_hosts")).expanduser().absolute())


def _query(text: str | None) -> dict[str, Any] | None:
    """The ``--query`` JSON object (None without it or when empty): refused at once when it is not one, so a
    broken job script ends the pilot before it takes anything."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--query: not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise click.UsageError(f"--query: a JSON object (a MongoDB filter) is needed, got {text!r}")
    return value or None


def _fworker_env(text: str | None) -> dict[str, Any] | None:
    """The ``--fworker-env`` JSON object (None without it): refused at once when it is not one."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--fworker-env: not JSON ({exc}): {text!r}; pass a JSON object, e.g. "
                               "'{\"scratch_dir\": \"/scratch\"}'") from None
    if not isinstance(value, dict):
        raise click.UsageError(f"--fworker-env: a JSON object (the FWorker env, key: value) is needed, got {text!r}")
    return value or None


def _fworker(categories: tuple[str, ...], query: dict[str, Any] | None, name: str | None, env_json: str | None,
             file: Path | None) -> tuple[tuple[str, ...], dict[str, Any] | None, str | None, dict[str, Any] | None]:
    """Categories, query, FWorker name and env from the options and a ``-w`` FWorker file (read as ``rlaunch -w``
    reads it): the file's category when no --category is given, its query ANDed with --query, its name unless
    --fworker-name, its env under --fworker-env's keys."""
    env = _fworker_env(env_json)
    if file is None:
        if not categories:
            raise click.UsageError("no category: pass --category CAT (repeat for several), or -w FWORKER_FILE "
                                   "(its category is used)")
        return categories, query, name or None, env
    from pilot.worker.fworker import FWorkerFileError, read_fworker_file

    try:
        fwf = read_fworker_file(file)
    except FWorkerFileError as exc:
        raise click.UsageError(f"-w/--fworker-file: {exc}") from None
    both = {"$and": [fwf.query, query]} if fwf.query and query else None
    return (categories or fwf.categories, both or fwf.query or query or None, name or fwf.name,
            {**fwf.env, **(env or {})} or None)


@click.command("worker")
@click.option("--launchpad-file", "-l", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="FireWorks LaunchPad file (my_launchpad.yaml) of the database to pull from.")
@click.option("--category", "-c", "categories", multiple=True,
              help="Firework category (spec._category) to pull; repeat for several. Required unless -w gives it.")
@click.option("--name", "-n", default=lambda: os.environ.get("PILOT_NAME"),
              help="FWorker name recorded in every launch (cluster name + job id, e.g. pilotci-1234). "
                   "Environment: PILOT_NAME.")
@click.option("--record", default=None, metavar="JOB_NAME",
              help="The pilot's record in the manager's database (its batch job name): the worker writes a "
                   "heartbeat there every --heartbeat seconds and an exit record when it stops. Default: none "
                   "(a worker started by hand).")
@click.option("--heartbeat", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="Seconds between two heartbeats written into --record.")
@click.option("--deadline", type=float, default=None,
              help="End of the job's wall time, epoch seconds. Default: environment PILOT_DEADLINE.")
@click.option("--no-deadline", is_flag=True, help="Run without a deadline (until idle or a signal; SIGUSR1 then "
              "stops the work, with a deadline it is only logged).")
@click.option("--margin", type=float, default=60.0, show_default=True,
              help="Seconds kept free before the deadline: a Firework is pulled only if spec._pilot.walltime "
                   "(or min_walltime, for one that sizes itself to the time left) <= time left - margin; pulling "
                   "stops when time left <= margin; a running Firework is "
                   "stopped at deadline - margin/2.")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True,
              help="Exit after this many seconds without matching READY work (at once when READY work is "
                   "there that a fresh pilot would take but that no longer fits the time left).")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds a Firework gets after SIGTERM (at deadline - margin/2, or on SIGUSR1 with "
                   "--no-deadline) before SIGKILL.")
@click.option("--term-grace", type=float, default=1.0, show_default=True,
              help="Grace when the worker itself gets SIGTERM/SIGINT (the batch system SIGKILLs soon after: "
                   "SLURM KillWait).")
@click.option("--launch-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory in which each Firework gets its own launcher_<timestamp> dir. Default: cwd.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the worker's log lines to this file.")
@click.option("--fresh-process", is_flag=True,
              help="Run every Firework in a process of its own. Default: a process that ran a short Firework "
                   "(under 10 s) cleanly, leaving no thread or process behind, takes the next one (up to 100).")
@click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU cores of the pilot: a Firework asking for more (spec._pilot.cores, missing: 1) is never "
                   "taken. With --pack, the cores the Fireworks running at once share.")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs of the pilot: a Firework asking for more (spec._pilot.gpus, missing: 0) is never taken. "
                   "With --pack, each Firework gets CUDA_VISIBLE_DEVICES with the GPUs it holds.")
@click.option("--memory-mb", type=click.IntRange(min=1), default=None,
              help="MiB of memory a Firework may ask for (spec._pilot.memory). Default: any.")
@click.option("--pack", is_flag=True,
              help="Run several Fireworks at once, each holding the cores (and GPUs) it asks for, bound to them "
                   "(PILOT_CORE_LIST, CUDA_VISIBLE_DEVICES, CPU affinity). Default: one Firework at a time.")
@click.option("--gpu-work-only", is_flag=True,
              help="Take only Fireworks asking for at least one GPU (spec._pilot.gpus >= 1): the pilots of a GPU "
                   "queue profile.")
@click.option("--db-retry-time", type=float, default=300.0, show_default=True,
              help="Keep retrying an unreachable database this many seconds before giving up (exit 3).")
@click.option("--fw-log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
              default="INFO", show_default=True, help="Stream log level of FireWorks' own rocket logger.")
@click.option("--query", "query_json", metavar="JSON", default=None,
              help="A FWorker query (a MongoDB filter on the fireworks collection, as a JSON object) ANDed into "
                   "every pull: the cluster file's fworker_query, passed by the job script.")
@click.option("--fworker-name", metavar="NAME", default=None,
              help="The configured FWorker name (the cluster file's fworker.name): a Firework pinned to it "
                   "(spec._fworker) is taken, as one pinned to --name is. Launches still record --name. "
                   "Default: the name in -w FILE, else none.")
@click.option("--fworker-env", "fworker_env_json", metavar="JSON", default=None,
              help="The FWorker env as a JSON object (the cluster file's fworker.env): FireWorks gives it to every "
                   "task as spec._fw_env (env_chk's >>key<<). Its keys override those of -w FILE.")
@click.option("--fworker-file", "-w", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A FireWorks FWorker file (my_fworker.yaml or .json), read as `rlaunch -w` reads it: its name "
                   "is the FWorker name, its category is pulled when no --category is given, its query is ANDed "
                   "with --query, its env is the FWorker env.")
@click.option("--route-ssh", metavar="USER@ADDRESS:PORT", default=None,
              help="Reach the LaunchPad through an ssh forward to this login node (launchpad_route: ssh): the "
                   "worker runs `ssh -N -L` to it and uses the LaunchPad file's credentials and TLS settings "
                   "on the forwarded local port. USER@ may be left out (this account). Default: connect "
                   "to the LaunchPad file's address.")
@click.option("--route-port", type=click.IntRange(1, 65535), default=None,
              help="With --route-ssh: the login node's loopback port of the manager's forward.")
@click.option("--route-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --route-ssh: the private key of the route. Default: ~/.pilot/route_key.")
@click.option("--route-known-hosts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --route-ssh: the known_hosts file with the login node's host key. "
                   "Default: ~/.pilot/route_known_hosts.")
def worker_command(launchpad_file: Path, categories: tuple[str, ...], name: str | None, record: str | None,
                   heartbeat: float, deadline: float | None,
                   no_deadline: bool, margin: float, idle_timeout: float, grace: float, term_grace: float,
                   launch_dir: Path | None, log_file: Path | None, fresh_process: bool, cores: int, gpus: int,
                   memory_mb: int | None, pack: bool, gpu_work_only: bool, db_retry_time: float,
                   fw_log_level: str, query_json: str | None, route_ssh: str | None, route_port: int | None,
                   route_key: Path | None, route_known_hosts: Path | None, fworker_name: str | None,
                   fworker_env_json: str | None, fworker_file: Path | None) -> None:
    """Run inside a batch job: pull Fireworks of CATEGORY that fit the time left, until idle or the deadline.

    Exit codes: 0 drained normally (idle, deadline, stop signal handled), 2 usage or launchpad-file error,
    3 database unreachable after retries, 1 internal error.
    """
    if not name:
        raise click.UsageError("no worker name: pass --name NAME (cluster name + job id, e.g. pilotci-1234) "
                               "or set PILOT_NAME")
    if no_deadline:
        if deadline is not None:
            raise click.UsageError("--deadline and --no-deadline exclude each other")
    else:
        deadline = deadline if deadline is not None else _env_float("PILOT_DEADLINE")
        if deadline is None:
            raise click.UsageError("no deadline: pass --deadline EPOCH_SECONDS (the job's end time) or set "
                                   "PILOT_DEADLINE, or pass --no-deadline to run until idle")
    for opt, value in (("--margin", margin), ("--idle-timeout", idle_timeout), ("--grace", grace),
                       ("--term-grace", term_grace), ("--db-retry-time", db_retry_time)):
        if value < 0 or not math.isfinite(value):
            raise click.UsageError(f"{opt} must be a finite number >= 0, got {value:g}")
    route = _route(route_ssh, route_port, route_key, route_known_hosts)
    categories, query, fworker_name, fworker_env = _fworker(categories, _query(query_json), fworker_name,
                                                           fworker_env_json, fworker_file)
    setup_worker_logging(log_file)
    if fworker_name or fworker_env or fworker_file:
        LOG.info("FWorker %s: also takes Fireworks pinned to %s; env keys %s; categories %s; query %s", name,
                 fworker_name or "-", ",".join(sorted(fworker_env or {})) or "-", ",".join(categories) or "any",
                 json.dumps(query, sort_keys=True, default=str) if query else "-")
    cfg = WorkerConfig(launchpad_file=launchpad_file, categories=tuple(categories), name=name,
                       deadline=deadline, margin=margin, idle_timeout=idle_timeout, grace=grace,
                       term_grace=term_grace,
                       launch_dir=(launch_dir or Path.cwd()).absolute(), log_file=log_file,
                       db_retry_time=db_retry_time, fw_log_level=fw_log_level, route=route, query=query,
                       fworker_name=fworker_name, fworker_env=fworker_env,
                       record=record or None, heartbeat=heartbeat, fresh_process=fresh_process, cores=cores,
                       gpus=gpus, memory_mb=memory_mb, pack=pack, gpu_work_only=gpu_work_only)
    try:
        code = Worker(cfg).run()
    except Exception:  # noqa: BLE001 - the last line of defence: say what broke, exit 1
        LOG.error("internal error in pilot worker %s:\n%s", name, traceback.format_exc())
        code = EXIT_INTERNAL
    sys.exit(code)
