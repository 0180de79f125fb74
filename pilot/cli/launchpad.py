"""``pilot launchpad``: serve, init, status, stop and repair the embedded LaunchPad server.

Exit codes: 0 success; 1 the server could not start or an action failed (port busy, data dir unwritable or
locked, corrupt data, connection check failed, an address of another machine as ``--host``); 2 refused
arguments (``--no-tls`` off loopback, a ``--host`` that does not resolve, a bad ``--tls-name``, click usage
errors); 3 ``status``/``stop``: no server runs for that data dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from pilot.cli.launchpad_users import user as user_group
from pilot.configdir import pilot_command, private_dir, same_path
from pilot.launchpad.files import TIMEOUT_S
from pilot.launchpad.limits import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RECEIVE_BUDGET_BYTES,
    Limits,
)
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
    """The embedded LaunchPad server (MongoDB wire protocol, users, TLS off loopback) and the LaunchPad file."""


#: ``--host``/``--tls``/``--tls-name``: the same for ``serve`` and for the server ``init`` starts.
_HOST_HELP = ("Address or name to listen on: 127.0.0.1 (this machine only), an address of this machine that the "
              "clusters reach, or 0.0.0.0 / :: (all). Off loopback TLS is always on.")
_TLS_HELP = "TLS on loopback too (--tls); --no-tls is refused off loopback. Default: TLS exactly off loopback."
_TLS_NAME_HELP = ("Another name or address for the server certificate (repeatable): one that clients use and that "
                  "this machine does not know as its own, e.g. a DNS alias or a NAT address.")


@launchpad.command()
@click.option("--host", default="127.0.0.1", show_default=True, help=_HOST_HELP)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="TCP port; 0 picks a free one (written to DATA/server.json).")
@click.option("--tls/--no-tls", "tls", default=None, help=_TLS_HELP)
@click.option("--tls-name", "tls_names", multiple=True, metavar="NAME", help=_TLS_NAME_HELP)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data dir (journal, snapshot, server.json, tls/). Default: CONFIG_DIR/lpserver.")
@click.option("--compact-mb", type=click.FloatRange(min=0.001), default=DEFAULT_COMPACT_BYTES / 2**20,
              show_default=True, help="Write a snapshot when the journal grows past this size (MiB).")
@click.option("--compact-interval", type=click.FloatRange(min=0.1), default=DEFAULT_COMPACT_INTERVAL_S,
              show_default=True, help="...or when it has unsnapshotted writes this many seconds old.")
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Open client connections at most; more are closed at once (each pilot's pymongo keeps 2-3).")
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=DEFAULT_IDLE_TIMEOUT_S, show_default=True,
              help="Seconds a client may stall in the middle of a message before it is disconnected "
                   "(between messages connections may stay idle).")
@click.option("--max-message-mb", type=click.FloatRange(min=0.01, max=DEFAULT_MAX_MESSAGE_BYTES / 2**20),
              default=DEFAULT_MAX_MESSAGE_BYTES / 2**20, show_default=True,
              help="The largest message a client may send (MiB; MongoDB's 48,000,000 bytes by default).")
@click.option("--receive-budget-mb", type=click.FloatRange(min=1), default=DEFAULT_RECEIVE_BUDGET_BYTES / 2**20,
              show_default=True, help="Memory for partly received messages, all connections together (MiB).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, tls: bool | None, tls_names: tuple[str, ...],
          data_dir: Path | None, compact_mb: float, compact_interval: float, max_connections: int,
          idle_timeout: float, max_message_mb: float, receive_budget_mb: float) -> None:
    """Serve a LaunchPad database (MongoDB wire protocol, SCRAM authentication, TLS off loopback).

    Every write is journaled and fsynced before it is acknowledged; SIGTERM/SIGINT write a final snapshot.
    With TLS, the CA that clients verify the server with is DATA/tls/ca.pem; the admin's LaunchPad file is
    DATA/my_launchpad.yaml. The limits (connections, stalled messages, message size, receive memory) protect
    the server from one misbehaving client: docs/launchpad-server.md, "Limits".
    """
    if ctx.obj is None or ctx.obj.verbose <= 0:
        logging.getLogger("pilot.launchpad").setLevel(logging.INFO)
    _private_config_dir(ctx, data_dir)
    opts = ServerOptions(data_dir=data_dir or _default_data(ctx), host=host, port=port, tls=tls,
                         tls_names=tuple(tls_names), compact_bytes=int(compact_mb * 2**20),
                         compact_interval=compact_interval,
                         limits=Limits(max_connections=max_connections, idle_timeout=idle_timeout,
                                       max_message_bytes=max(1024, min(DEFAULT_MAX_MESSAGE_BYTES,
                                                                       int(max_message_mb * 2**20))),
                                       receive_budget_bytes=int(receive_budget_mb * 2**20)))
    try:
        LaunchPadServer(opts).run()
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(exc.exit_code)


@launchpad.command()
@click.option("--uri", default=None, help="Use this MongoDB instead of the embedded server "
              "(mongodb://user:pass@host:port/dbname?authSource=admin, or mongodb+srv://...). '-' reads it "
              "from standard input, so that its password is in no process list or shell history.")
@click.option("--name", default="fireworks", show_default=True,
              help="Database name (when the URI names none, or for the embedded server).")
@click.option("--host", default=None, help=_HOST_HELP + " Default: as the last init, else 127.0.0.1.")
@click.option("--tls", is_flag=True, default=False, help="TLS on loopback too (off loopback it is always on).")
@click.option("--tls-name", "tls_names", multiple=True, metavar="NAME", help=_TLS_NAME_HELP)
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"Port for a newly started embedded server (default {DEFAULT_PORT} if free, else any).")
@click.option("--check-timeout", type=click.FloatRange(min=0.1), default=TIMEOUT_S, show_default=True,
              help="Seconds to wait for the database when checking the connection.")
@click.pass_context
def init(ctx: click.Context, uri: str | None, name: str, host: str | None, tls: bool, tls_names: tuple[str, ...],
         port: int | None, check_timeout: float) -> None:
    """Write CONFIG_DIR/my_launchpad.yaml and check that the LaunchPad works.

    Without --uri: use the embedded server with data in CONFIG_DIR/lpserver (started in the background with
    --host/--tls/--tls-name if it is not running); the file holds its admin's credentials and, with TLS, the
    CA to verify it with. With --uri: point at that MongoDB. The file is mode 600 (it holds a password); the
    config dir and the data dir are 0700.
    """
    from pilot.launchpad.control import LAUNCHPAD_FILE, ControlError, check_launchpad, write_private_yaml

    config_dir = Path(ctx.obj.config_dir)
    target = config_dir / LAUNCHPAD_FILE
    try:
        try:
            private_dir(config_dir)  # 0700 before anything is written in it (an older one is tightened)
        except OSError as exc:
            raise ControlError(f"cannot create the config dir {config_dir}: {exc.strerror or exc}") from exc
        if uri:
            if host is not None or tls or tls_names:
                raise ControlError("--host, --tls and --tls-name are for the embedded server; a MongoDB given with "
                                   "--uri is configured where it runs (TLS options go in the URI)")
            lp = _uri_launchpad(_read_uri(uri), name)
        else:
            lp = _embedded_launchpad(ctx, name, port, host, tls, tls_names)
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


def _read_uri(uri: str) -> str:
    """``--uri -``: the URI from standard input (its first line); else ``uri``, with a warning when it carries a
    password: an argument is visible to every user of the machine in ``ps`` while the command runs, and stays
    in the shell's history."""
    from pilot.launchpad.control import ControlError
    from pilot.redact import uri_password

    if uri == "-":
        text = click.get_text_stream("stdin").readline().strip()
        if not text:
            raise ControlError("--uri -: no URI on standard input (pipe it in, e.g. `pilot launchpad init --uri - "
                               "< uri.txt`)")
        return text
    if uri_password(uri):
        click.echo("warning: the password in --uri is visible to other users in `ps` and stays in your shell "
                   "history; next time pass the URI on standard input: `pilot launchpad init --uri - < FILE`",
                   err=True)
    return uri


def _uri_launchpad(uri: str, name: str) -> dict[str, Any]:
    """The LaunchPad dict for ``init --uri`` (ControlError for a URI pymongo cannot parse, password hidden)."""
    from pymongo import uri_parser
    from pymongo.errors import ConfigurationError, InvalidURI

    from pilot.launchpad.control import ControlError, launchpad_dict, redact_uri
    from pilot.redact import scrub, uri_password

    try:
        parsed = uri_parser.parse_uri(uri)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        why = scrub(str(exc), [p for p in [uri_password(uri)] if p])
        raise ControlError(f"--uri {redact_uri(uri)} is not a valid MongoDB URI: {why}") from exc
    db = parsed.get("database") or name
    click.echo(f"using MongoDB at {redact_uri(uri)}, database {db!r}")
    return launchpad_dict(db, uri, None, uri_mode=True)


def _embedded_launchpad(ctx: click.Context, name: str, port: int | None, host: str | None, tls: bool,
                        tls_names: tuple[str, ...]) -> dict[str, Any]:
    """Start (or reuse) the background server with these options; its admin's LaunchPad dict for ``name``.

    Without --host/--tls/--tls-name the options of the last ``init`` are used: the clusters' LaunchPad files
    point there. A running server that does not listen as asked is an error (stop it first), not reused."""
    from pilot.launchpad.control import (
        ListenOptions,
        admin_launchpad,
        check_matches,
        find_running,
        start_background,
    )

    config_dir = Path(ctx.obj.config_dir)
    data_dir = _default_data(ctx)
    explicit = host is not None or tls or bool(tls_names)
    wanted = ListenOptions(host or "127.0.0.1", True if tls else None, tls_names) if explicit else \
        ListenOptions.load(data_dir) or ListenOptions()
    server = find_running(data_dir)
    if server is None:
        server = start_background(data_dir, port, listen=wanted)
        wanted.save(data_dir)
        again = "" if explicit or wanted == ListenOptions() else f" (as the last init: {' '.join(wanted.argv())})"
        click.echo(f"started the embedded LaunchPad server in the background{again}: pid {server.pid}, "
                   f"{server.listen}:{server.port}, data {data_dir} (log {data_dir / 'server.log'})")
    else:
        if explicit:
            check_matches(server, wanted, stop=pilot_command(config_dir, "launchpad stop"))
        click.echo(f"reusing the running embedded LaunchPad server: pid {server.pid}, "
                   f"{server.listen}:{server.port}, data {data_dir}")
    if server.tls:
        click.echo(f"TLS on: clients verify the server with {server.client_kwargs['tlsCAFile']}; "
                   f"`{pilot_command(config_dir, 'bootstrap CLUSTER')}` copies it to a cluster")
    else:
        click.echo(f"note: the server listens on {server.listen} (this machine only); for pilots on clusters, "
                   f"stop it and run `{pilot_command(config_dir, 'launchpad init --host ADDRESS')}` with an "
                   "address they reach (TLS is then on)")
    return admin_launchpad(server, name)


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

    from pilot.launchpad.control import ControlError, admin_client_kwargs, find_running
    from pilot.redact import scrub, secrets_of

    data_dir = data_dir or _default_data(ctx)
    server = find_running(data_dir)
    if server is None:
        click.echo(f"not running (data dir {data_dir})")
        ctx.exit(3)
        return
    click.echo(f"running: pid {server.pid}, {server.listen}:{server.port}, TLS {'on' if server.tls else 'off'}, "
               f"data {data_dir}")
    from pilot.launchpad.files import short_reason

    wait_ms = int(TIMEOUT_S * 1000)
    try:
        kwargs = admin_client_kwargs(server)  # the admin's credentials and the CA (pilotStats needs root)
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
        return
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        **kwargs, serverSelectionTimeoutMS=wait_ms, connectTimeoutMS=wait_ms)
    try:
        st = client.admin.command("pilotStats")
    except pymongo.errors.PyMongoError as exc:
        why = scrub(short_reason(str(exc)), secrets_of(kwargs))
        click.echo(f"error: the server does not answer within {TIMEOUT_S:g} s: {why}", err=True)
        ctx.exit(1)
        return
    finally:
        client.close()
    ncmd = sum(st["commands"].values())
    j = st.get("journal", {})
    click.echo(f"uptime {st['uptime']:.0f}s, {st['documents']} documents, {ncmd} commands served "
               f"({ncmd / max(st['uptime'], 1e-9):.1f}/s), {st['errors']} errors")
    conns = st.get("connections")
    if conns:
        click.echo(f"connections: {conns['current']} open (limit {conns['limit']}), {conns['refused']} refused "
                   f"since start")
    if j:
        click.echo(f"journal generation {j['generation']}: {j['size']} bytes, {j['fsyncs']} fsyncs "
                   f"({1000 * j['fsyncSeconds'] / max(j['fsyncs'], 1):.2f} ms each), "
                   f"{st['snapshots']} snapshots since start")
    refused = st.get("writesRefused")
    if refused:
        click.echo(f"WRITES REFUSED since {refused['since']} (code {refused['code']}): {refused['reason']}")


@launchpad.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data dir to repair (never changed). Default: CONFIG_DIR/lpserver.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="New data dir to write (must not exist, or be empty). Default: DATA.repaired-<time>.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def repair(ctx: click.Context, data_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Recover every undamaged record of a data dir into a NEW data dir; report what could not be recovered.

    For a server that refuses to start because its snapshot or journal is damaged. DATA is never changed; the
    new dir holds a snapshot of the recovered state, the admin's LaunchPad file and the TLS files. Refused while
    a server runs on DATA. Exit 0 when the new dir was written (the report says what is lost), 1 otherwise.
    """
    import json

    from pilot.launchpad.repair import RepairError
    from pilot.launchpad.repair import repair as run_repair

    try:
        report = run_repair(data_dir or _default_data(ctx), out)
    except (RepairError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
        return
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))


launchpad.add_command(user_group)  # pilot launchpad user add|password|remove|list
