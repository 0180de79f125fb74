"""``pilot dashboard``: the web dashboard (the work is in :mod:`pilot.dashboard`); ``pilot dashboard token``:
its logins. See ``docs/dashboard.md``."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pilot.cli import AppContext


@click.group("dashboard", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --tls.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@click.option("--tls", is_flag=True, help="Serve HTTPS with a certificate of its own (dashboard.pem) from the "
              "LaunchPad's CA (CONFIG_DIR/lpserver/tls, as `pilot launchpad init --host` makes it).")
@click.option("--tls-name", "tls_names", multiple=True, metavar="NAME",
              help="Another name (or address) the certificate must hold: the one the laptop's browser uses.")
@click.option("--launchpad-file", "-l", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The LaunchPad file actions write with (default: the config dir's, as `pilot drain` uses).")
@click.option("--read-launchpad-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A read-only LaunchPad file that pages read with (default: CONFIG_DIR/launchpad-viewer.yaml "
                   "when it exists; else the one above).")
@click.option("--single-role", is_flag=True,
              help="Off loopback, read pages with the LaunchPad file that acts (without it, a read-only file is "
                   "required there).")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, tls: bool, tls_names: tuple[str, ...],
              launchpad_file: Path | None, read_launchpad_file: Path | None, single_role: bool) -> None:
    """Serve the web dashboard (overview, clusters, Fireworks, throughput; actions behind a confirmation).

    Every page needs a login: make a token with `pilot dashboard token add NAME`. From a laptop:
    `ssh -L 8765:127.0.0.1:8765 FILESERVER`, then open http://127.0.0.1:8765/.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pilot.dashboard.server import (
        DashboardError,
        check_address,
        is_loopback,
        make_server,
        open_dashboard,
        tls_context,
    )

    app: AppContext = ctx.obj
    try:
        check_address(host, tls, app.config_dir)
        ssl_ctx = tls_context(app.config_dir, host, list(tls_names)) if tls else None
        dash = open_dashboard(app.config_dir, launchpad_file, read_launchpad_file, tls=tls)
        if dash.single_role and not single_role and not is_loopback(host):
            raise DashboardError(
                f"{host} is reachable from other machines, so pages must read with a read-only LaunchPad user: add "
                "one (`pilot launchpad user add viewer --role read` writes CONFIG_DIR/launchpad-viewer.yaml) or name "
                "its file with --read-launchpad-file; or pass --single-role to read with the file that acts")
        server = make_server(dash, host, port, ssl_ctx)
    except DashboardError as e:
        raise click.ClickException(str(e)) from None
    if app.verbose <= 0:
        dlog = logging.getLogger("pilot.dashboard")   # one line per request and action, even without -v
        dlog.setLevel(logging.INFO)
        dlog.addHandler(logging.StreamHandler())
        dlog.propagate = False
    dash.warm_up()   # the throughput rows (a report's aggregation) are ready before anyone opens that page
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    scheme = "https" if tls else "http"
    click.echo(f"pilot dashboard on {scheme}://{bound_host}:{bound_port}/ (Ctrl-C to stop)")
    _stop_on_sigterm(server)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        click.echo("")
    finally:
        server.server_close()
        # an action under way finishes first (a rerun half done is worse than a slower stop), then the clients go
        if dash.action_lock.acquire(timeout=30):
            dash.action_lock.release()
        for lp in {id(dash.read_lp): dash.read_lp, id(dash.write_lp): dash.write_lp}.values():
            lp.connection.close()


def _stop_on_sigterm(server: object) -> None:
    """SIGTERM (``kill PID``, a service manager) stops the server as Ctrl-C does: serve_forever returns."""
    import signal
    import threading

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()   # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)


@dashboard.group("token")
def token() -> None:
    """The dashboard's logins: tokens stored hashed in CONFIG_DIR/dashboard-tokens.json."""


@token.command("add")
@click.argument("name")
@click.pass_obj
def token_add(app: AppContext, name: str) -> None:
    """Make a login token for NAME (replacing NAME's old one) and print it: the only time it is shown."""
    from pilot.dashboard.tokens import TokenError, TokenStore

    store = TokenStore(app.config_dir)
    try:
        secret = store.add(name)
    except TokenError as e:
        raise click.ClickException(str(e)) from None
    click.echo(secret)
    click.echo(f"(shown once; its hash is in {store.path})", err=True)


@token.command("list")
@click.pass_obj
def token_list(app: AppContext) -> None:
    """The tokens' names and when each was made (never the tokens)."""
    from pilot.dashboard.tokens import TokenError, TokenStore

    try:
        tokens = TokenStore(app.config_dir).list()
    except TokenError as e:
        raise click.ClickException(str(e)) from None
    if not tokens:
        click.echo("no dashboard tokens (pilot dashboard token add NAME)")
    for t in tokens:
        made = dt.datetime.fromtimestamp(t.created).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{t.name}\tmade {made}")


@token.command("remove")
@click.argument("name")
@click.pass_obj
def token_remove(app: AppContext, name: str) -> None:
    """Forget NAME's token: its sessions end at their next request."""
    from pilot.dashboard.tokens import TokenError, TokenStore

    try:
        TokenStore(app.config_dir).remove(name)
    except TokenError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"removed the dashboard token {name}")
