"""``pilot launchpad user add|password|remove|list``: the users of the LaunchPad database.

Why through the wire and not the data dir: these commands send MongoDB's own ``createUser``, ``updateUser``,
``dropUser`` and ``usersInfo`` as the user of a LaunchPad file (a ``root`` user: the data dir's admin, which
``pilot launchpad init`` copies to ``CONFIG_DIR/my_launchpad.yaml``), so they work on a running embedded server
(the change applies at once: no restart) and on a real MongoDB alike.

A password is never printed and never given on the command line (it would show in ``ps`` and in shell
history): ``add`` and ``password`` make a random one and write it into a LaunchPad file for that user (mode
600, default ``CONFIG_DIR/launchpad-NAME.yaml``), and say where.

Exit codes: 0 done; 1 the database refused or could not be reached, or a file could not be written; 2 usage.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import click

from pilot.configdir import pilot_command

#: Users are made where the data dir's admin lives (its LaunchPad files say ``authsource: admin``).
USERS_DB = "admin"
#: What ``--role`` offers: a LaunchPad needs read-write (manager, pilots, lpad) or read-only (status, report).
ROLE_CHOICES = ("readWrite", "read", "root")
#: A user name that is also safe as part of a file name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_lp_option = click.option(
    "-l", "--launchpad-file", "launchpad_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="LaunchPad file of a root user to act as. Default: the one the other commands use "
         "(pilot.yaml's launchpad_file, else CONFIG_DIR/my_launchpad.yaml).")
_file_option = click.option(
    "--file", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Where to write the user's LaunchPad file (mode 600). Default: CONFIG_DIR/launchpad-NAME.yaml.")


class _Failed(Exception):
    """Print the message and exit 1."""


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise click.BadParameter("letters, digits, '_', '.' and '-' (starting with a letter or digit), at most 64",
                                 param_hint="NAME")
    return name


class _Session:
    """The LaunchPad file in use, and a client of its database (as its user)."""

    def __init__(self, ctx: click.Context, launchpad_file: Path | None) -> None:
        from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad, read_settings

        self.config_dir = Path(ctx.obj.config_dir)
        self.lpf = find_launchpad_file(self.config_dir, launchpad_file, option="--launchpad-file")
        try:
            self.settings = read_settings(self.lpf)
            self.lp = open_launchpad(self.lpf, quiet=True)
        except LaunchPadUnavailable as exc:
            raise _Failed(str(exc)) from None

    @property
    def me(self) -> tuple[str, str]:
        """``(user, db)`` of the LaunchPad file's user (from its URI in uri_mode)."""
        if not self.settings.get("uri_mode"):
            return str(self.settings.get("username") or ""), str(self.settings.get("authsource") or USERS_DB)
        _head, userinfo, rest = _split_uri(str(self.settings.get("host") or ""))
        source = next((o.split("=", 1)[1] for o in rest.partition("?")[2].split("&")
                       if o.lower().startswith("authsource=")), USERS_DB)
        return unquote(userinfo.partition(":")[0]), unquote(source)

    def command(self, name: str, value: Any, **kw: Any) -> dict[str, Any]:
        """Run a user-management command in the users' database; _Failed with the server's words."""
        import pymongo.errors

        from pilot.launchpad.files import database_error, scrub, secrets_of

        try:
            return dict(self.lp.connection[USERS_DB].command(name, value, **kw))
        except pymongo.errors.OperationFailure as exc:
            msg = scrub(str((exc.details or {}).get("errmsg") or exc), secrets_of(self.settings) + [kw.get("pwd", "")])
            if exc.code == 13:
                msg += (f" (the user of {self.lpf.path} may not manage users: that needs a root user's LaunchPad "
                        "file, -l)")
            raise _Failed(f"{name} {value}: refused by the LaunchPad database: {msg}") from None
        except pymongo.errors.PyMongoError as exc:
            raise _Failed(str(database_error(exc, self.lp, self.lpf))) from None

    def close(self) -> None:
        self.lp.connection.close()

    def user_file(self, name: str, out_file: Path | None) -> Path:
        return Path(out_file).expanduser().absolute() if out_file else self.config_dir / f"launchpad-{name}.yaml"


def _split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme://, userinfo, hosts/db?options)`` of a connection string; the userinfo ends at the last ``@``
    (as pymongo reads it)."""
    scheme, sep, rest = uri.partition("://")
    userinfo, at, after = rest.rpartition("@")
    return scheme + sep, userinfo if at else "", after


def _with_credentials(settings: dict[str, Any], user: str, password: str, db: str) -> dict[str, Any]:
    """A copy of a LaunchPad file's settings for another user (and database), same server and client options."""
    out = {**settings, "name": db}
    host = str(settings.get("host") or "")
    if not settings.get("uri_mode"):
        return {**out, "username": user, "password": password, "authsource": USERS_DB}
    head, _userinfo, rest = _split_uri(host)
    hosts, q, query = rest.partition("?")
    opts = [o for o in query.split("&") if o and not o.lower().startswith("authsource=")] + [f"authSource={USERS_DB}"]
    uri = f"{head}{quote(user, safe='')}:{quote(password, safe='')}@{hosts}?{'&'.join(opts)}"
    return {**out, "host": uri, "username": None, "password": None}


def _write_file(path: Path, data: dict[str, Any]) -> None:
    from pilot.launchpad.control import write_private_yaml

    try:
        write_private_yaml(path, data)
    except OSError as exc:
        raise _Failed(f"cannot write {path}: {exc.strerror or exc}") from None


def _run(ctx: click.Context, launchpad_file: Path | None, action: Any) -> None:
    """Open the session, run ``action(session)``, turn failures into ``error: ...`` and exit 1."""
    try:
        session = _Session(ctx, launchpad_file)
        try:
            action(session)
        finally:
            session.close()
    except _Failed as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)


@click.group("user")
def user() -> None:
    """Users of the LaunchPad database: add, change a password, remove, list.

    Acts as the user of a LaunchPad file (a root user, e.g. the admin that `pilot launchpad init` wrote
    into CONFIG_DIR/my_launchpad.yaml). Works on the embedded server and on MongoDB; changes apply at once.
    """


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLE_CHOICES), default="readWrite", show_default=True,
              help="readWrite: manager, pilots, lpad; read: status and reports; root: everything, users too.")
@click.option("--db", default=None, help="Database the role is on. Default: the LaunchPad file's (its `name`).")
@_file_option
@_lp_option
@click.pass_context
def add(ctx: click.Context, name: str, role: str, db: str | None, out_file: Path | None,
        launchpad_file: Path | None) -> None:
    """Add user NAME with a random password; write a LaunchPad file for it (the password is not shown)."""
    _check_name(name)

    def action(s: _Session) -> None:
        dbname = db or str(s.settings.get("name") or "fireworks")
        roles = [{"role": "root", "db": USERS_DB}] if role == "root" else [{"role": role, "db": dbname}]
        target = s.user_file(name, out_file)
        password = secrets.token_urlsafe(24)
        s.command("createUser", name, pwd=password, roles=roles)
        try:
            _write_file(target, _with_credentials(s.settings, name, password, dbname))
        except _Failed as exc:
            raise _Failed(f"{exc}; user {name} was added, but its password is nowhere now: give it a new one with "
                          f"`{pilot_command(s.config_dir, f'launchpad user password {name} --file FILE')}`") from None
        shown = "root" if role == "root" else f"{role} on {dbname}"
        click.echo(f"added user {name} ({shown}); its LaunchPad file: {target} (mode 600; use it with "
                   f"`lpad -l {target}`)")

    _run(ctx, launchpad_file, action)


def _user_db(s: _Session, name: str) -> str:
    """The database a user's LaunchPad file should name: its read/readWrite role's, else the current file's."""
    info = s.command("usersInfo", {"user": name, "db": USERS_DB})
    users = info.get("users") or []
    if not users:
        listing = pilot_command(s.config_dir, "launchpad user list")
        raise _Failed(f"no user {name} in the LaunchPad database (`{listing}` lists them)")
    for r in users[0].get("roles") or []:
        if r.get("role") in ("read", "readWrite"):
            return str(r.get("db"))
    return str(s.settings.get("name") or "fireworks")


@user.command("password")
@click.argument("name")
@_file_option
@_lp_option
@click.pass_context
def password(ctx: click.Context, name: str, out_file: Path | None, launchpad_file: Path | None) -> None:
    """Give user NAME a new random password (it applies at once); write its LaunchPad file.

    The old password stops working for new connections at once. When NAME is the user of the LaunchPad file
    in use, that file is rewritten (unless --file names another).
    """
    _check_name(name)

    def action(s: _Session) -> None:
        own = s.me == (name, USERS_DB)
        target = s.user_file(name, out_file) if (out_file or not own) else s.lpf.path
        dbname = str(s.settings.get("name") or "fireworks") if own else _user_db(s, name)
        new_password = secrets.token_urlsafe(24)
        s.command("updateUser", name, pwd=new_password)
        base = s.settings if own else _with_credentials(s.settings, name, "", dbname)
        _write_file(target, _with_credentials(base, name, new_password, str(base.get("name") or dbname)))
        click.echo(f"new password for user {name} (in effect now; the old one no longer works); its LaunchPad "
                   f"file: {target} (mode 600)")
        _update_admin_copy(s, name, new_password, target)

    _run(ctx, launchpad_file, action)


def _update_admin_copy(s: _Session, name: str, new_password: str, written: Path) -> None:
    """The data dir of this config dir's embedded server keeps the admin's file (DATA/my_launchpad.yaml):
    when it is this user's, on this server, it gets the new password too (else a later `launchpad init`
    would copy a dead one)."""
    import yaml

    from pilot.launchpad.control import SERVER_DIR
    from pilot.launchpad.credentials import ADMIN_FILE

    path = s.config_dir / SERVER_DIR / ADMIN_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if (not isinstance(data, dict) or path.resolve() == written.resolve() or data.get("username") != name
            or data.get("port") != s.settings.get("port") or s.settings.get("uri_mode")):
        return
    _write_file(path, {**data, "password": new_password})
    click.echo(f"also updated {path}")


@user.command("remove")
@click.argument("name")
@_lp_option
@click.pass_context
def remove(ctx: click.Context, name: str, launchpad_file: Path | None) -> None:
    """Remove user NAME (its open connections lose every privilege at once)."""
    _check_name(name)

    def action(s: _Session) -> None:
        s.command("dropUser", name)
        click.echo(f"removed user {name}")
        own_file = s.user_file(name, None)
        if own_file.is_file():
            click.echo(f"note: {own_file} holds its password, which no longer works; remove it when you like")

    _run(ctx, launchpad_file, action)


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {user, db, roles}.")
@_lp_option
@click.pass_context
def list_users(ctx: click.Context, as_json: bool, launchpad_file: Path | None) -> None:
    """List the users and their roles (never a password or key)."""

    def action(s: _Session) -> None:
        users = s.command("usersInfo", {"forAllDBs": True}).get("users") or []
        rows: list[dict[str, Any]] = [
            {"user": str(u.get("user")), "db": str(u.get("db")),
             "roles": [{"role": str(r.get("role")), "db": str(r.get("db"))} for r in u.get("roles") or []]}
            for u in users]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        width = max([len(r["user"]) for r in rows] + [4])
        click.echo(f"{'USER':<{width}}  DB     ROLES")
        for r in rows:
            roles = ", ".join(f"{x['role']}@{x['db']}" for x in r["roles"]) or "-"
            click.echo(f"{r['user']:<{width}}  {r['db']:<5}  {roles}")

    _run(ctx, launchpad_file, action)
