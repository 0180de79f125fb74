"""``pilot md``: add a segmented MD run to the LaunchPad (``pilot md add``), show its segments (``pilot md show``).

Thin: parses options, calls :func:`tasks.workflow.make_md_workflow`, adds the workflow, prints the ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pilot.cli import AppContext
    from pilot.launchpad.files import LaunchPadFile


def _key_values(pairs: tuple[str, ...], option: str, parse: bool) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; with ``parse`` the value is read as YAML (``4`` -> int, ``[-nb, cpu]`` -> list)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint=option)
        if parse:
            try:
                out[key.strip()] = yaml.safe_load(value) if value != "" else ""
            except yaml.YAMLError as exc:
                raise click.BadParameter(f"{pair!r}: the value is not valid YAML ({exc})", param_hint=option) from None
        else:
            out[key.strip()] = value
    return out


def _launchpad(obj: AppContext, launchpad_file: Path | None) -> tuple[Any, LaunchPadFile]:
    """The LaunchPad of ``-l``, else of the config dir (``launchpad_file`` of pilot.yaml, else my_launchpad.yaml),
    pinged: a database that is not there is reported before anything is added, within the timeout."""
    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad, ping

    try:
        lpf = find_launchpad_file(Path(obj.config_dir), launchpad_file)
        lp = open_launchpad(lpf)
        ping(lp, lpf)
    except LaunchPadUnavailable as e:
        raise click.ClickException(str(e)) from None
    return lp, lpf


def _check_inputs(run_dir: Path, engine: str, deffnm: str, params: dict[str, Any], staged: bool) -> None:
    """Fail early (before anything is added) when the run directory lacks the engine's inputs."""
    from tasks.workflow import engine_class

    cls = engine_class(engine)
    required, _ = cls.stage_files({**params, "name": deffnm}, resume=False)
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        hint = ("create the .tpr with gmx grompp, or pass -p grompp='{mdp: md.mdp, conf: conf.gro, top: topol.top}'"
                if engine == "gromacs" else
                "serialize the System and Integrator (openmm.XmlSerializer) and write a PDB with the topology")
        raise click.ClickException(f"{run_dir}: missing {', '.join(missing)} for {engine}"
                                   f"{' (staged from here)' if staged else ''}: {hint}")


@click.group("md")
def md() -> None:
    """Segmented MD runs: each segment restarts from the previous checkpoint until the run is done."""


@md.command("add")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--engine", type=click.Choice(["gromacs", "openmm"]), required=True, help="MD engine.")
@click.option("--category", "md_category", default="md", show_default=True,
              help="FireWorks category of the md Fireworks (the pilots of the cluster serve it).")
@click.option("--local-category", default="local", show_default=True,
              help="Category of the stage/pull/continue Fireworks (a worker on this machine serves it).")
@click.option("--segment-hours", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Length of one segment (a pilot's deadline may shorten it).")
@click.option("--name", default=None, help="Workflow name (default: the run directory's name).")
@click.option("--deffnm", default="md", show_default=True, help="File name stem (GROMACS -deffnm).")
@click.option("--nsteps", type=click.IntRange(min=1), default=None, help="OpenMM: total steps of the run.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Engine task parameter, value read as YAML (repeatable): ntomp=8, gmx=gmx_mpi, "
                   "checkpoint_minutes=15, mdrun_args='[-nb, gpu]', platform=CUDA, traj_interval=5000.")
@click.option("--env", "envs", multiple=True, metavar="KEY=VALUE", help="Environment variable for the engine.")
@click.option("--work-dir", default=None,
              help="Stage to this directory on the cluster and run there (stage -> md -> pull -> continue); "
                   "without --host it is on a shared file system.")
@click.option("--host", default=None, help="With --work-dir: stage over SSH to this host.")
@click.option("--user", default=None, help="SSH user for --host.")
@click.option("--port", type=int, default=None, help="SSH port for --host (default 22).")
@click.option("--identity-file", default=None, help="SSH private key for --host.")
@click.option("--known-hosts", default=None, help="known_hosts file for --host (default ~/.ssh/known_hosts).")
@click.option("--priority", type=int, default=None, help="FireWorks _priority of the run's Fireworks.")
@click.option("-l", "--launchpad-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="FireWorks LaunchPad file (default: launchpad_file of pilot.yaml, else "
                   "CONFIG_DIR/my_launchpad.yaml).")
@click.option("--dry-run", is_flag=True, help="Print the first segment's Fireworks as JSON; add nothing.")
@click.pass_obj
def add(obj: AppContext, run_dir: Path, engine: str, md_category: str, local_category: str, segment_hours: float,
        name: str | None, deffnm: str, nsteps: int | None, params: tuple[str, ...], envs: tuple[str, ...],
        work_dir: str | None, host: str | None, user: str | None, port: int | None, identity_file: str | None,
        known_hosts: str | None, priority: int | None, launchpad_file: Path | None, dry_run: bool) -> None:
    """Add the segmented MD workflow of RUN_DIR to the LaunchPad and print its Firework ids.

    RUN_DIR holds the prepared inputs: for GROMACS the .tpr (DEFFNM.tpr, or -p tpr=FILE, or -p grompp=...),
    for OpenMM system.xml, integrator.xml and start.pdb (and --nsteps). The first segment is added; each
    segment adds the next until the checkpoint reaches the end of the run.
    """
    from tasks.workflow import make_md_workflow

    run_dir = run_dir.absolute()
    engine_params = _key_values(params, "--param", parse=True)
    if engine == "openmm":
        if nsteps is None and "nsteps" not in engine_params:
            raise click.UsageError("--engine openmm needs --nsteps N (the total number of steps of the run)")
        if nsteps is not None:
            engine_params["nsteps"] = nsteps
    elif nsteps is not None:
        raise click.UsageError("--nsteps is for OpenMM; for GROMACS the .tpr's nsteps is the target "
                               "(gmx convert-tpr -nsteps/-extend to change it)")
    if host and not work_dir:
        raise click.UsageError("--host needs --work-dir (the run directory on that host)")
    stage = None
    if work_dir:
        remote = None
        if host:
            remote = {k: v for k, v in {"host": host, "user": user, "port": port, "identity_file": identity_file,
                                        "known_hosts": known_hosts}.items() if v is not None}
        stage = {"work_dir": work_dir, "remote": remote}
    _check_inputs(run_dir, engine, deffnm, engine_params, staged=stage is not None)
    try:
        wf = make_md_workflow(run_dir, engine, name, md_category=md_category, local_category=local_category,
                              segment_hours=segment_hours, stage=stage, deffnm=deffnm, engine_params=engine_params,
                              env=_key_values(envs, "--env", parse=False) or None, priority=priority)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        click.echo(json.dumps(wf.to_dict(), indent=2, default=str))
        return
    import pymongo.errors

    from pilot.launchpad.files import database_error, error_text, launchpad_address

    lp, lpf = _launchpad(obj, launchpad_file)
    old_ids = [(fw.fw_id, fw) for fw in wf.fws]  # add_wf renumbers the Fireworks in place
    root_old = wf.root_fw_ids[0]
    try:
        id_map = lp.add_wf(wf)
    except pymongo.errors.PyMongoError as exc:
        raise click.ClickException(f"cannot add the workflow: {database_error(exc, lp, lpf)}") from None
    except Exception as exc:  # noqa: BLE001 - FireWorks raises many types: report where and what
        raise click.ClickException(f"cannot add the workflow to the LaunchPad at {launchpad_address(lp)} "
                                   f"(database {lp.name}): {error_text(exc, lp)}") from None
    click.echo(f"added workflow {wf.name!r} ({engine}, segments of {segment_hours:g} h): workflow id "
               f"{id_map[root_old]}")
    for old, fw in sorted(old_ids, key=lambda item: id_map[item[0]]):
        extra = f", walltime {fw.spec['_pilot']['walltime']} s" if "_pilot" in fw.spec else ""
        click.echo(f"  fw_id {id_map[old]}\t{fw.name}\t(category {fw.spec.get('_category')}{extra})")


@md.command("show")
@click.argument("fw_id", type=int)
@click.option("-l", "--launchpad-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="FireWorks LaunchPad file (default: launchpad_file of pilot.yaml, else "
                   "CONFIG_DIR/my_launchpad.yaml).")
@click.option("--json", "as_json", is_flag=True, help="Print the segments as JSON.")
@click.pass_obj
def show(obj: AppContext, fw_id: int, launchpad_file: Path | None, as_json: bool) -> None:
    """One line per segment of the MD workflow holding FW_ID: state, steps, ns/day, wall time, why it stopped."""
    import pymongo.errors

    from pilot.launchpad.files import database_error

    lp, lpf = _launchpad(obj, launchpad_file)
    try:
        wf = lp.get_wf_by_fw_id(fw_id)
    except ValueError:
        raise click.ClickException(f"no Firework with id {fw_id} in {lp.name}") from None
    except pymongo.errors.PyMongoError as exc:
        raise click.ClickException(str(database_error(exc, lp, lpf))) from None
    rows = []
    for fw in wf.fws:
        task = fw.tasks[0] if fw.tasks else None
        if task is None or not hasattr(task, "segment_number"):
            continue
        data: dict[str, Any] = {}
        for launch in reversed(fw.launches):
            if launch.action and "segment" in (launch.action.stored_data or {}):
                data = launch.action.stored_data
                break
        rows.append({"fw_id": fw.fw_id, "segment": task.segment_number, "state": fw.state, **{
            k: data.get(k) for k in ("checkpoint_step", "target_step", "steps_done", "ns_per_day", "wall_time_s",
                                     "stop_reason", "host")}})
    rows.sort(key=lambda r: r["segment"])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{wf.name}: {len(rows)} segment(s)")
    click.echo("seg  fw_id  state      step/target          ns/day   wall s  stopped")
    for r in rows:
        step = f"{r['checkpoint_step'] if r['checkpoint_step'] is not None else '-'}/{r['target_step'] or '-'}"
        nsd = f"{r['ns_per_day']:.1f}" if r["ns_per_day"] else "-"
        wall = f"{r['wall_time_s']:.0f}" if r["wall_time_s"] is not None else "-"
        click.echo(f"{r['segment']:<4} {r['fw_id']:<6} {r['state']:<10} {step:<20} {nsd:>7} {wall:>7}  "
                   f"{r['stop_reason'] or ''}")
