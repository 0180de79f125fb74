"""``pilot connect`` and ``pilot disconnect``: the one interactive login of a cluster with one-time passwords.

``pilot connect CLUSTER`` runs OpenSSH in this terminal to open a master connection at the cluster's
``control_path`` (OpenSSH asks for the code, as it would for ``ssh`` by hand), then leaves it running in the
background: the manager, ``pilot doctor`` and ``pilot status`` send everything through it without another code,
for as long as the centre keeps the connection (:mod:`pilot.transport.ssh_master`). When it ends, ``pilot status``
shows the cluster as "needs login", a notification says so, and running this command again is the fix.
See ``docs/deploying.md``, "Clusters with one-time passwords (2FA)".
"""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pathlib import Path

    from pilot.cli import AppContext
    from pilot.config import ClusterConfig, Config
    from pilot.transport.ssh_master import MasterSettings


def _cluster(app: AppContext, name: str) -> ClusterConfig:
    """The cluster ``name`` of the config dir, with a ``control_path``; click.ClickException that says the fix."""
    from pilot.config import ConfigError, load_config
    from pilot.config.loading import CLUSTERS_DIR

    try:
        config = load_config(app.config_dir)
    except ConfigError as e:
        raise click.ClickException(f"the configuration has problems:\n{e}") from None
    cdir = app.config_dir / CLUSTERS_DIR
    if name not in config.clusters:
        known = sorted(config.clusters)
        close = difflib.get_close_matches(name, known, n=1)
        raise click.ClickException(f"no cluster named {name!r} in {cdir} (its clusters: {', '.join(known) or 'none'})"
                                   + (f"; did you mean {close[0]!r}?" if close else ""))
    c = config.clusters[name]
    if not c.control_path:
        raise click.ClickException(
            f"{cdir / (name + '.yaml')}: control_path: not set, so {name} logs in with its key alone and needs no "
            f"`pilot connect`. For a cluster that asks for a one-time password, add e.g. `control_path: "
            f"~/.ssh/pilot-%C` there, then run this again")
    return c


def _settings(c: ClusterConfig) -> MasterSettings:
    from pilot.transport.clusters import master_settings

    return master_settings(c)


@click.command("connect")
@click.argument("cluster")
@click.option("--check", is_flag=True, help="Only say whether the login is open (exit code 1 when it is not).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (with --check).")
@click.pass_obj
def connect_cmd(app: AppContext, cluster: str, check: bool, as_json: bool) -> None:
    """Log in to CLUSTER once (one-time password) and keep the login for the manager.

    OpenSSH asks for the code in this terminal; the login then stays open in the background at the cluster's
    control_path, and everything of fireworks-pilot uses it until the centre ends it.
    """
    from pilot.transport.ssh_master import master_alive, open_master, socket_path

    s = _settings(_cluster(app, cluster))
    alive, said = master_alive(s)
    if check:
        if as_json:
            click.echo(json.dumps({"cluster": cluster, "connected": alive, "control_path": socket_path(s),
                                   "master": said}))
        else:
            click.echo(f"{cluster}: " + (f"connected ({said})" if alive else "needs login: run "
                                         f"`pilot connect {cluster}`"))
        raise SystemExit(0 if alive else 1)
    if alive:
        click.echo(f"{cluster}: already connected ({said}); nothing to do.")
        return
    click.echo(f"{cluster}: logging in to {s.host} (OpenSSH asks for your one-time code) ...")
    rc, alive, said = open_master(s)   # in this terminal: the person answers the centre's prompts
    if rc != 0:
        raise click.ClickException(f"{cluster}: the login did not succeed (ssh exit code {rc}; {said}): check the "
                                   "code (a code is good for one login only) and try again")
    if not alive:
        raise click.ClickException(f"{cluster}: ssh logged in but no master answers at {socket_path(s)} ({said}): "
                                   "is another ssh using that socket? Check the socket's folder, then try again")
    click.echo(f"{cluster}: connected ({said}, socket {socket_path(s)}).\n"
               "  The manager uses this login from its next cycle on, until the centre ends it; then "
               f"`pilot status` shows {cluster} as \"needs login\" and you run `pilot connect {cluster}` again.")


def login_states(cfg: Config) -> dict[str, dict[str, object]]:
    """Each cluster with one-time-password logins: whether its login is open (``pilot config check``)."""
    from pilot.transport.ssh_master import master_alive

    out: dict[str, dict[str, object]] = {}
    for name, c in cfg.clusters.items():
        if c.control_path and not c.is_local:
            alive, said = master_alive(_settings(c))
            out[name] = {"open": alive, "master": said}
    return out


def login_lines(config_dir: Path, cfg: Config) -> list[str]:
    """``login: NAME: open (...)`` or ``login: NAME: NEEDS LOGIN: run `pilot connect NAME```."""
    from pilot.configdir import pilot_command

    return [f"login: {name}: " + (f"open ({s['master']})" if s["open"] else
                                  f"NEEDS LOGIN: run `{pilot_command(config_dir, f'connect {name}')}`")
            for name, s in login_states(cfg).items()]


@click.command("disconnect")
@click.argument("cluster")
@click.pass_obj
def disconnect_cmd(app: AppContext, cluster: str) -> None:
    """Close the login that `pilot connect CLUSTER` opened (the manager then shows CLUSTER as "needs login")."""
    from pilot.transport.ssh_master import close_master, master_alive

    s = _settings(_cluster(app, cluster))
    if not master_alive(s)[0]:
        click.echo(f"{cluster}: no open login; nothing to close.")
        return
    ok, said = close_master(s)
    if not ok:
        raise click.ClickException(f"{cluster}: ssh -O exit failed: {said}")
    click.echo(f"{cluster}: login closed.")


__all__ = ["connect_cmd", "disconnect_cmd", "login_lines", "login_states"]
