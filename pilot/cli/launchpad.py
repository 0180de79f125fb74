"""``pilot launchpad``: serve, init, status and stop the embedded LaunchPad server.

Exit codes: 0 success; 1 the server could not start or an action failed (port busy, data dir unwritable or
locked, corrupt data, connection check failed); 2 refused arguments (a non-loopback ``--host``, click usage
errors); 3 ``status``/``stop``: no server runs for that data dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from pilot.configdir import pilot_command, private_dir, same_path
from pilot.launchpad.files import TIMEOUT_S
from pilot.launchpad.server import (
    DEFAULT_COMPACT_BYTES,
    DEFAULT_COMPACT_INTERVAL_S,
    DEFAULT_PORT,
    LaunchPadServer,
    ServerOptions,
    StartupError,
)


def _default_data(ctx: click.Context) -> Path:
    from pilot.launchpad.control import SERVER_DIR

    return Path(ctx.obj.config_dir) / SERVER_DIR


def _private_config_dir(ctx: click.Context, data_dir: Path | None) -> None:
    """Make the config dir 0700 (created so, or tightened) when the data dir is in it: a first ``serve``
    must not leave ``~/.pilot`` readable by others. An error is left to the server, which names the data dir."""
    if ctx.obj is None:
        return
    config_dir = Path(ctx.obj.config_dir)
    if data_dir is not None and not Path(data_dir).absolute().is_relative_to(config_dir.absolute()):
        return
    try:
        private_dir(config_dir)
    except OSError:
        pass


@click.group()
def launchpad() -> None:
    """The embedded LaunchPad server (MongoDB wire protocol, one machine) and the LaunchPad file."""


@launchpad.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; must be loopback (127.0.0.1, ::1, localhost).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="TCP port; 0 picks a free one (written to DATA/server.json).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data dir (journal, snapshot, server.json). Default: CONFIG_DIR/lpserver.")
@click.option("--compact-mb", type=click.FloatRange(min=0.001), default=DEFAULT_COMPACT_BYTES / 2**20,
              show_default=True, help="Write a snapshot when the journal grows past this size (MiB).")
@click.option("--compact-interval", type=click.FloatRange(min=0.1), default=DEFAULT_COMPACT_INTERVAL_S,
              show_default=True, help="...or when it has unsnapshotted writes this many seconds old.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, data_dir: Path | None, compact_mb: float,
          compact_interval: float) -> None:
    """Serve a LaunchPad database on loopback (MongoDB wire protocol; for one machine).

    Every write is journaled and fsynced before it is acknowledged; SIGTERM/SIGINT write a final snapshot.
    """
    if ctx.obj is None or ctx.obj.verbose <= 0:
        logging.getLogger("pilot.launchpad").setLevel(logging.INFO)
    _private_config_dir(ctx, data_dir)
    opts = ServerOptions(data_dir=data_dir or _default_data(ctx), host=host, port=port,
                         compact_bytes=int(compact_mb * 2**20), compact_interval=compact_interval)
    try:
        LaunchPadServer(opts).run()
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(exc.exit_code)


@launchpad.command()
@click.option("--uri", default=None, help="Use this MongoDB instead of the embedded server "
              "(mongodb://user:pass@host:port/dbname?authSource=admin, or mongodb+srv://...).")
@click.option("--name", default="fireworks", show_default=True,
              help="Database name (when the URI names none, or for the embedded server).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"Port for a newly started embedded server (default {DEFAULT_PORT} if free, else any).")
@click.option("--check-timeout", type=click.FloatRange(min=0.1), default=TIMEOUT_S, show_default=True,
              help="Seconds to wait for the database when checking the connection.")
@click.pass_context
def init(ctx: click.Context, uri: str | None, name: str, port: int | None, check_timeout: float) -> None:
    """Write CONFIG_DIR/my_launchpad.yaml and check that the LaunchPad works.

    Without --uri: use the embedded server with data in CONFIG_DIR/lpserver (started in the background if
    it is not running). With --uri: point at that MongoDB. The file is mode 600 (it may hold a password); the
    config dir and the data dir are 0700.
    """
    from pilot.launchpad.control import (
        LAUNCHPAD_FILE,
        ControlError,
        check_launchpad,
        find_running,
        launchpad_dict,
        redact_uri,
        start_background,
        write_private_yaml,
    )
    from pilot.redact import scrub, uri_password

    config_dir = Path(ctx.obj.config_dir)
    target = config_dir / LAUNCHPAD_FILE
    try:
        try:
            private_dir(config_dir)  # 0700 before anything is written in it (an older one is tightened)
        except OSError as exc:
            raise ControlError(f"cannot create the config dir {config_dir}: {exc.strerror or exc}") from exc
        if uri:
            from pymongo import uri_parser
            from pymongo.errors import ConfigurationError, InvalidURI

            try:
                parsed = uri_parser.parse_uri(uri)
            except (InvalidURI, ConfigurationError, ValueError) as exc:
                why = scrub(str(exc), [p for p in [uri_password(uri)] if p])
                raise ControlError(f"--uri {redact_uri(uri)} is not a valid MongoDB URI: {why}") from exc
            db = parsed.get("database") or name
            lp = launchpad_dict(db, uri, None, uri_mode=True)
            click.echo(f"using MongoDB at {redact_uri(uri)}, database {db!r}")
        else:
            data_dir = _default_data(ctx)
            server = find_running(data_dir)
            if server is None:
                server = start_background(data_dir, port)
                click.echo(f"started the embedded LaunchPad server in the background: pid {server.pid}, "
                           f"{server.host}:{server.port}, data {data_dir} (log {data_dir / 'server.log'})")
            else:
                click.echo(f"reusing the running embedded LaunchPad server: pid {server.pid}, "
                           f"{server.host}:{server.port}, data {data_dir}")
            click.echo("note: the embedded server is for one machine; for production use MongoDB "
                       f"({pilot_command(config_dir, 'launchpad init')} --uri mongodb://...)")
            lp = launchpad_dict(name, server.host, server.port)
        result = check_launchpad(lp, timeout_ms=int(check_timeout * 1000))
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
        return
    backup = write_private_yaml(target, lp)
    if result.initialized:
        click.echo(f"initialized the empty database {lp['name']!r} (lpad reset)")
    click.echo(f"LaunchPad OK: {result.fireworks} Fireworks, {result.workflows} workflows")
    if backup:
        click.echo(f"kept the previous file as {backup}")
    click.echo(f"wrote {target} (mode 600); use it with `lpad -l {target}` and `rlaunch -l {target}`")
    _warn_if_not_read(config_dir, target)


def _warn_if_not_read(config_dir: Path, written: Path) -> None:
    """Say so when the commands of ``config_dir`` read another LaunchPad file than the one just written
    (``pilot.yaml`` names another ``launchpad_file``, e.g. ``~/.pilot``'s, as ``pilot init`` once wrote)."""
    from pilot.launchpad.files import find_launchpad_file

    lpf = find_launchpad_file(config_dir, option=None)
    if not same_path(lpf.path, written):
        click.echo(f"warning: {lpf.describe()} is {lpf.path}, so the commands of {config_dir} use that file, not "
                   f"{written}: point launchpad_file at {written.name} (or remove that line) to use this one",
                   err=True)


@launchpad.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data dir of the server. Default: CONFIG_DIR/lpserver.")
@click.pass_context
def stop(ctx: click.Context, data_dir: Path | None) -> None:
    """Stop the embedded server of a data dir by its pid (it writes a final snapshot)."""
    from pilot.launchpad.control import ControlError, ServerState, server_state, stop_server

    data_dir = data_dir or _default_data(ctx)
    state, pid = server_state(data_dir)
    if state in (ServerState.NONE, ServerState.GONE):
        click.echo(f"no embedded LaunchPad server runs for {data_dir}"
                   + (f" (pid {pid} recorded there is gone)" if pid else ""), err=True)
        ctx.exit(3)
    try:
        pid = stop_server(data_dir)
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
        return
    click.echo(f"stopped the embedded LaunchPad server (pid {pid}); data in {data_dir}")


@launchpad.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data dir of the server. Default: CONFIG_DIR/lpserver.")
@click.pass_context
def status(ctx: click.Context, data_dir: Path | None) -> None:
    """Show whether the embedded server runs, where, and what it has done."""
    import pymongo
    import pymongo.errors

    from pilot.launchpad.control import find_running

    data_dir = data_dir or _default_data(ctx)
    server = find_running(data_dir)
    if server is None:
        click.echo(f"not running (data dir {data_dir})")
        ctx.exit(3)
        return
    click.echo(f"running: pid {server.pid}, {server.host}:{server.port}, data {data_dir}")
    from pilot.launchpad.files import short_reason

    wait_ms = int(TIMEOUT_S * 1000)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        server.host, server.port, serverSelectionTimeoutMS=wait_ms, connectTimeoutMS=wait_ms)
    try:
        st = client.admin.command("pilotStats")
    except pymongo.errors.PyMongoError as exc:
        click.echo(f"error: the server does not answer within {TIMEOUT_S:g} s: {short_reason(str(exc))}", err=True)
        ctx.exit(1)
        return
    finally:
        client.close()
    ncmd = sum(st["commands"].values())
    j = st.get("journal", {})
    click.echo(f"uptime {st['uptime']:.0f}s, {st['documents']} documents, {ncmd} commands served "
               f"({ncmd / max(st['uptime'], 1e-9):.1f}/s), {st['errors']} errors")
    if j:
        click.echo(f"journal generation {j['generation']}: {j['size']} bytes, {j['fsyncs']} fsyncs "
                   f"({1000 * j['fsyncSeconds'] / max(j['fsyncs'], 1):.2f} ms each), "
                   f"{st['snapshots']} snapshots since start")
