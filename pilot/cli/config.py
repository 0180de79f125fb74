"""``pilot init``, ``pilot config check|show`` and ``pilot render``: the configuration on the command line."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from pilot.config import (
    CLUSTERS_DIR,
    PILOT_FILE,
    ClusterConfig,
    Config,
    ConfigError,
    ConfigProblem,
    load_cluster,
    load_config,
    load_pilot_config,
)
from pilot.config.models_pilot import share_text
from pilot.configdir import pilot_command, private_dir, write_private

EXAMPLE_PILOT_YAML = """\
# fireworks-pilot: settings of the manager. Every field is optional; the values below are the defaults.
# Reference: docs/configuration.md.  Check with: pilot config check

# Where the commands of this directory find the FireWorks LaunchPad file. A relative path is relative to
# this directory: my_launchpad.yaml is the file `pilot launchpad init` writes here.
launchpad_file: my_launchpad.yaml

# Seconds between two manager cycles (each cycle: a few LaunchPad counts per category, one queue query per cluster).
poll_interval: 60

# The manager's log files (relative: inside this directory).
log_dir: logs

# A cluster whose commands fail (SSH down, scheduler error) is left alone for `initial` seconds, then
# twice as long after every further failure, up to `max`.
backoff:
  initial: 60
  max: 1800
  factor: 2

# A Firework whose pilot died under it is put back to READY at most this many times.
max_reruns: 3

# Pilot jobs are named PREFIX.CATEGORY.ID; the manager counts only jobs with this prefix as its own.
job_name_prefix: fwp

# Categories that compete for a cluster's room get pilots by these weights (unlisted: 1); docs/campaign.md.
# share: {md: 3, analysis: 1}

# Tell a person when something needs them (a FIZZLED Firework, a cluster down, a budget nearly spent, a login that
# lapsed), by e-mail and/or a chat webhook; docs/notifications.md.
# notify: {webhook: {url_file: ~/.pilot/webhook-url}}
"""

EXAMPLE_CLUSTER_YAML = """\
# One cluster. Its name is this file's name ("example"); copy the file to clusters/NAME.yaml per cluster.
# Reference: docs/configuration.md.  Check with: pilot config check;  see the job script: pilot render NAME

# --- reaching the cluster over SSH (scheduler: local needs none of these)
host: login.cluster.example.org
user: alice                       # null: from ~/.ssh/config, else your local user name
port: 22
identity_file: null               # e.g. ~/.ssh/id_ed25519; null: SSH agent / ~/.ssh/config
proxy_jump: null                  # or "alice@gateway.example.org:22"
strict_host_key_checking: true    # the host key must be in known_hosts (ssh-keyscan, check the fingerprint)
known_hosts: ~/.ssh/known_hosts
use_ssh_config: false             # true: also read ~/.ssh/config for this host
control_path: null                # one-time-password logins: ~/.ssh/pilot-%C, then `pilot connect NAME`
command_timeout: 120              # seconds one remote command may take

# --- the batch system: slurm | pbs | torque | lsf | sge | local
scheduler: slurm

# FireWorks _category values this cluster serves (one pilot serves one category).
categories: [md]

# Paths as the pilot ON THE CLUSTER sees them.
launchpad_file: ~/.pilot/my_launchpad.yaml   # absolute, or ~/ for the cluster user's home
work_dir: /scratch/alice/pilot               # absolute: scripts, pilot output, exit-code files

# Shell lines run before the worker starts (with set -e: a failing line ends the pilot).
setup: |
  module load gromacs/2022
  source ~/venvs/pilot/bin/activate

# Extra environment variables for the pilot job.
env: {}

# What every pilot job asks for.
pilot:
  walltime: "24:00:00"            # the scheduler's format; quote it (SLURM: "D-HH:MM:SS" too)
  nodes: 1
  cores: 16                       # per node
  memory: null                    # per node, e.g. 64G
  gpus: null                      # per node
  partition: null                 # SLURM partition / PBS or LSF queue; null: the default
  account: null
  qos: null                       # SLURM only
  extra_directives: []            # e.g. ["--constraint=knl"] or ["#SBATCH --exclusive"]

walltime_margin: 600              # seconds before the wall time at which the pilot stops taking work
grace: 60                         # seconds a task gets after SIGTERM before it is killed
idle_timeout: 300                 # seconds a pilot waits for work before it exits
fireworks_per_pilot: 1            # READY Fireworks per pilot when Fireworks give no expected duration
limits: {max_queued: 10, max_running: 20, min_pilots: 0}
template: null                    # a custom Jinja2 template, e.g. my-slurm.sh.j2 (next to this file)

# Core-hours this manager may spend here, as the scheduler charges them; new pilots stop before it would go
# over (docs/campaign.md). `pilot drain example` stops new pilots by hand.
# budget: {core_hours: 5000, account: chem123, since: 2026-12-01}
"""


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


@click.command("init")
@click.option("--force", is_flag=True, help="Overwrite existing pilot.yaml / clusters/example.yaml.")
@click.pass_obj
def init(app: Any, force: bool) -> None:
    """Write a commented example pilot.yaml and clusters/example.yaml into the config directory.

    The directory and clusters/ are made 0700, the files 0600 (they point at the LaunchPad file).
    """
    cdir: Path = app.config_dir
    targets = [(cdir / PILOT_FILE, EXAMPLE_PILOT_YAML), (cdir / CLUSTERS_DIR / "example.yaml", EXAMPLE_CLUSTER_YAML)]
    existing = [p for p, _ in targets if p.exists()]
    if existing and not force:
        raise click.ClickException(
            f"{', '.join(str(p) for p in existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "nothing written. Use --force to overwrite, or --config-dir for another directory.")
    # 0700 dirs, 0600 files: they name the LaunchPad file and the clusters' accounts (an older 0755 dir is
    # tightened, with a log line)
    try:
        private_dir(cdir)
        private_dir(cdir / CLUSTERS_DIR)
        for path, text in targets:
            write_private(path, text)
            click.echo(f"wrote {path}")
    except OSError as e:
        raise click.ClickException(f"cannot write in {cdir}: {e}") from None
    click.echo(f"next: edit {cdir / CLUSTERS_DIR / 'example.yaml'} (rename it to your cluster's name), "
               f"run `{pilot_command(cdir, 'launchpad init')}` for the LaunchPad, "
               f"then `{pilot_command(cdir, 'config check')}`")


@click.group("config")
def config() -> None:
    """Check or show the configuration (pilot.yaml and clusters/*.yaml)."""


def _script_problems(cfg: Config) -> list[ConfigProblem]:
    """Render every cluster's script for each queue profile and category it serves, and check it with
    ``bash -n``. One problem per cluster at most: the first script that fails says what to fix."""
    out: list[ConfigProblem] = []
    for name, cl in cfg.clusters.items():
        for profile in cl.pilot_profiles:
            problem = next((p for cat in cl.profile_categories(profile)
                            if (p := _script_problem(cfg, name, profile, cat)) is not None), None)
            if problem is not None:
                out.append(problem)
                break
    return out


def _script_problem(cfg: Config, name: str, profile: str, category: str) -> ConfigProblem | None:
    """The problem of one rendered script (a template error, or what ``bash -n`` says), or None."""
    from pilot.render import RenderError, render_pilot_script

    cl = cfg.clusters[name]
    shown = str(cl.source_file or name)
    job = f"{cfg.pilot.job_name_prefix}.{category}.check"
    try:
        script = render_pilot_script(cl, name, category, _job_name(category, cfg.pilot.job_name_prefix, job),
                                     profile=profile)
    except RenderError as e:
        return ConfigProblem(shown, "template", str(e).removeprefix(f"{shown}: "))
    bash = shutil.which("bash")
    if not bash:
        return None
    res = subprocess.run([bash, "-n"], check=False, input=script, capture_output=True, text=True, timeout=30)
    if res.returncode == 0:
        return None
    err = res.stderr.strip().splitlines()[-1:] or ["(no message)"]
    where = f" (profile {profile})" if len(cl.pilot_profiles) > 1 else ""
    return ConfigProblem(shown, "template" if cl.template else "setup",
                         f"the rendered job script{where} is not valid bash: {err[0]}; see it with "
                         f"`{pilot_command(cfg.config_dir, f'render {name} --profile {profile}')}` and fix the lines")


def _profiles_line(cfg: Config) -> str:
    """The queue profiles of the clusters that have several, for the summary: ``gpu1: gpu (1 GPU, 8 cores,
    md), cpu (32 cores, md)``; empty when every cluster has one."""
    parts = []
    for name, cl in cfg.clusters.items():
        if len(cl.pilot_profiles) < 2:
            continue
        shapes = []
        for pname, res in cl.pilot_profiles.items():
            gpus = f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}, " if res.gpus else ""
            packed = ", packed" if res.pack else ""
            shapes.append(f"{pname} ({gpus}{res.cores} cores, {res.walltime_seconds / 3600:g} h, "
                          f"{','.join(cl.profile_categories(pname))}{packed})")
        parts.append(f"{name}: {', '.join(shapes)}")
    return "; ".join(parts)


def _job_name(category: str, prefix: str, fallback: str) -> str:
    try:
        from queue_adapters.base import job_name
    except ImportError:
        return fallback
    return job_name(category, secrets.token_hex(3), prefix=prefix)


def _launchpad_file_problems(config_dir: Path, cfg: Config) -> list[ConfigProblem]:
    """The LaunchPad file the commands of ``config_dir`` use must exist (found as they find it)."""
    from pilot.launchpad.files import find_launchpad_file, missing_file

    lpf = find_launchpad_file(config_dir, pilot=cfg.pilot, option=None)
    if lpf.path.is_file():
        return []
    # the reader's own fix (the FILE: FIELD: prefix already says where the path came from)
    fix = missing_file(lpf).fix
    return [ConfigProblem(str(config_dir / PILOT_FILE), "launchpad_file", f"file not found: {lpf.path}; {fix}")]


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-render", is_flag=True, help="Do not render the job scripts (and check them with bash -n).")
@click.pass_obj
def check(app: Any, as_json: bool, no_render: bool) -> None:
    """Validate every file; print each problem as FILE: FIELD: what is wrong, what to write instead.

    Exit code 0 when all is well, 1 on any problem.
    """
    problems: list[ConfigProblem] = []
    cfg: Config | None = None
    try:
        cfg = load_config(app.config_dir)
    except ConfigError as e:
        problems = e.problems
    if cfg is not None:
        problems.extend(_launchpad_file_problems(app.config_dir, cfg))
        if not no_render:
            problems.extend(_script_problems(cfg))
    summary = (f"{_plural(len(cfg.clusters), 'cluster')}, {_plural(len(cfg.categories), 'category', 'categories')}"
               if cfg is not None else "")
    ok = not problems
    if as_json:
        click.echo(json.dumps({
            "ok": ok, "config_dir": str(app.config_dir),
            "clusters": sorted(cfg.clusters) if cfg else [], "categories": cfg.categories if cfg else [],
            "profiles": {n: list(c.pilot_profiles) for n, c in cfg.clusters.items()} if cfg else {},
            **_campaign_json(app.config_dir, cfg, ok),
            "problems": [p.as_dict() for p in problems],
            "summary": f"{summary}: OK" if ok else _plural(len(problems), "problem"),
        }, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        if ok:
            if cfg is not None and (line := _profiles_line(cfg)):
                click.echo(f"queue profiles: {line}")
            for line in _campaign_lines(app.config_dir, cfg) if cfg is not None else ():
                click.echo(line)
            click.echo(f"{summary}: OK")
        else:
            click.echo(f"{_plural(len(problems), 'problem')} in {app.config_dir}", err=True)
    sys.exit(0 if ok else 1)


def _campaign_lines(config_dir: Path, cfg: Config) -> list[str]:
    """What the config says of running the campaign (docs/campaign.md): the share between categories, each
    cluster's budget, and which clusters are drained now (from the LaunchPad, when it answers at once)."""
    from pilot.cli.drain import drained_lines

    out = [f"share: {share_text(cfg.pilot.share, cfg.categories)}"] if cfg.pilot.share else []
    out += [f"budget: {name}: {'; '.join(b.label() for b in cl.budget)}" for name, cl in cfg.clusters.items()
            if cl.budget]
    out += cfg.pilot.notify.summary() if cfg.pilot.notify is not None else []   # without secrets
    from pilot.cli.connect import login_lines

    return out + drained_lines(config_dir, cfg) + login_lines(config_dir, cfg)


def _campaign_json(config_dir: Path, cfg: Config | None, ok: bool) -> dict[str, Any]:
    """:func:`_campaign_lines` for ``--json``: weights of every category, budgets, drains, logins."""
    from pilot.cli.connect import login_states
    from pilot.cli.drain import drained_clusters

    if cfg is None:
        return {"share": {}, "budgets": {}, "drained": {}, "notify": None, "logins": {}}
    return {"share": {c: cfg.pilot.share.get(c, 1.0) for c in cfg.categories},
            "notify": cfg.pilot.notify.to_public() if cfg.pilot.notify is not None else None,
            "budgets": {n: [b.model_dump(mode="json") for b in c.budget] for n, c in cfg.clusters.items() if c.budget},
            "drained": drained_clusters(config_dir, cfg) if ok else {},
            "logins": login_states(cfg) if ok else {}}


@config.command("show")
@click.argument("cluster", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_obj
def show(app: Any, cluster: str | None, as_json: bool) -> None:
    """Print the effective settings (defaults filled in) of pilot.yaml and every cluster, or of CLUSTER."""
    try:
        cfg = load_config(app.config_dir)
    except ConfigError as e:
        _fail_problems(e)
    if cluster:
        try:
            data: Any = _cluster_settings(cfg.cluster(cluster))
        except KeyError as e:
            raise click.ClickException(str(e.args[0])) from None
    else:
        data = {"pilot": cfg.pilot.model_dump(mode="json"),
                "clusters": {n: _cluster_settings(c) for n, c in cfg.clusters.items()}}
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False), nl=as_json)


def _cluster_settings(c: ClusterConfig) -> dict[str, Any]:
    """A cluster's effective settings, with only the form of its pilots it uses: ``pilot`` (one shape) or
    ``profiles`` (several), not the other one empty."""
    data = c.model_dump(mode="json")
    data.pop("profiles" if c.pilot is not None else "pilot", None)
    return data


def _fail_problems(e: ConfigError) -> NoReturn:
    for p in e.problems:
        click.echo(str(p), err=True)
    sys.exit(1)


def _cluster_file(config_dir: Path, name: str) -> Path:
    cdir = config_dir / CLUSTERS_DIR
    for ext in (".yaml", ".yml"):
        if (cdir / f"{name}{ext}").is_file():
            return cdir / f"{name}{ext}"
    known = sorted(p.stem for p in [*cdir.glob("*.yaml"), *cdir.glob("*.yml")]) if cdir.is_dir() else []
    import difflib
    close = difflib.get_close_matches(name, known, n=1)
    did = f" (did you mean {close[0]!r}?)" if close else ""
    none = f"none (run `{pilot_command(config_dir, 'init')}`)"
    raise click.ClickException(f"no cluster {name!r}{did}: {cdir / (name + '.yaml')} does not exist; "
                               f"known clusters: {', '.join(known) or none}")


@click.command("render")
@click.argument("cluster")
@click.option("--category", "-c", help="Category the pilot serves (default: the cluster's first category).")
@click.option("--job-name", help="Batch job name (default: PREFIX.CATEGORY.<random id>, as the manager names them).")
@click.option("--job-id", "job_id", help="scheduler local only: the job id used when the local scheduler sets none.")
@click.option("--profile", "-p", help="Queue profile of the pilot (default: the cluster's first).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@click.pass_obj
def render(app: Any, cluster: str, category: str | None, job_name: str | None, job_id: str | None,
           profile: str | None, output: Path | None) -> None:
    """Print the job script of one pilot of CLUSTER (what the manager would submit)."""
    from pilot.render import RenderError, render_pilot_script

    path = _cluster_file(app.config_dir, cluster)
    try:
        ccfg: ClusterConfig = load_cluster(path)
        pilot_path = app.config_dir / PILOT_FILE
        prefix = load_pilot_config(pilot_path).job_name_prefix if pilot_path.exists() else "fwp"
    except ConfigError as e:
        _fail_problems(e)
    cat = category or ccfg.categories[0]
    name = job_name or _job_name(cat, prefix, f"{prefix}.{cat}.render")
    try:
        script = render_pilot_script(ccfg, cluster, cat, name, job_id_hint=job_id, profile=profile)
    except RenderError as e:
        raise click.ClickException(str(e)) from None
    if output:
        output.write_text(script, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(script, nl=False)
