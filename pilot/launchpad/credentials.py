"""The first admin of a data dir and its LaunchPad file, ``DATA/my_launchpad.yaml``.

Why: authentication is always on, so a new data dir needs a user before anyone can use it, and its owner
needs that user's password without it ever being printed or passed on a command line. The server makes the
user itself, the first time it starts on a data dir without users: ``admin`` (role ``root``), with a random
password, stored as salted keys like any other user (journaled: it survives restarts); the password goes only
into ``DATA/my_launchpad.yaml`` (0600, in the 0700 data dir), a FireWorks LaunchPad file that
``lpad -l``/``rlaunch -l`` read as they are and that ``pilot launchpad init`` copies into the config dir.

On every later start the server rewrites that file's ``host``, ``port`` and TLS client settings (where clients
reach it now), keeping the credentials, and warns when they no longer work (the admin's password was changed
or the user removed through ``pilot launchpad user``).

The order of the first start is file first, then the user: a crash in between leaves a data dir without
users, so the next start makes a new admin and overwrites the file; never a user whose password is nowhere.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pilot.configdir import write_private
from pilot.launchpad.listen import ClientAddress, StartupError
from pilot.launchpad.users import ROOT, USERS_DB

if TYPE_CHECKING:
    from pilot.launchpad.backend import Backend

__all__ = ["ADMIN_FILE", "ADMIN_USER", "DEFAULT_DB", "AdminFileError", "admin_launchpad_dict", "ensure_admin",
           "read_admin_file"]

log = logging.getLogger(__name__)

#: The admin's LaunchPad file in the data dir.
ADMIN_FILE = "my_launchpad.yaml"
ADMIN_USER = "admin"
#: The database the admin's LaunchPad file names (FireWorks' own default).
DEFAULT_DB = "fireworks"
#: Client options that belong to the server's TLS setup: rewritten on every start, the others are kept.
_TLS_PREFIXES = ("tls", "ssl")


class AdminFileError(Exception):
    """``DATA/my_launchpad.yaml`` is missing or unusable; the message says what to do."""


def admin_launchpad_dict(address: ClientAddress, password: str, name: str = DEFAULT_DB) -> dict[str, Any]:
    """The admin's LaunchPad file: the fields FireWorks' ``LaunchPad.from_dict`` reads."""
    return {"host": address.host, "port": address.port, "name": name, "username": ADMIN_USER, "password": password,
            "authsource": USERS_DB, "uri_mode": False, "mongoclient_kwargs": dict(address.client_kwargs),
            "logdir": None, "strm_lvl": "INFO", "user_indices": [], "wf_user_indices": []}


def _recovery(data_dir: Path) -> str:
    return (f"make a new root user with `pilot launchpad user add NAME --role root` as another root user (its "
            f"LaunchPad file: -l FILE), or start over with a new data dir (move {data_dir} away)")


def read_admin_file(data_dir: Path) -> dict[str, Any]:
    """The admin's LaunchPad settings from ``DATA/my_launchpad.yaml`` (for ``pilot launchpad init``/control).

    Raises
    ------
    AdminFileError
        The file is missing, unreadable, or not a LaunchPad file with a username and a password.
    """
    path = Path(data_dir) / ADMIN_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdminFileError(f"the admin's LaunchPad file {path} does not exist (the server writes it when it "
                             f"starts on a data dir without users); if the data dir has users, "
                             f"{_recovery(data_dir)}") from None
    except OSError as exc:
        raise AdminFileError(f"cannot read the admin's LaunchPad file {path}: {exc.strerror}; it belongs to the "
                             "account that runs the server (mode 600)") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AdminFileError(f"the admin's LaunchPad file {path} is not valid YAML ({type(exc).__name__}); "
                             f"{_recovery(data_dir)}") from None
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        raise AdminFileError(f"the admin's LaunchPad file {path} is not a LaunchPad file with a username and a "
                             f"password; {_recovery(data_dir)}")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    try:
        write_private(path, yaml.safe_dump(data, sort_keys=False), fsync=True)
    except OSError as exc:
        raise StartupError(f"cannot write the admin's LaunchPad file {path}: {exc.strerror or exc}") from exc


def _create_admin(backend: Backend, data_dir: Path, address: ClientAddress,
                  durable: Callable[[int], None] | None) -> None:
    path = Path(data_dir) / ADMIN_FILE
    password = secrets.token_urlsafe(24)
    _write(path, admin_launchpad_dict(address, password))
    seq = backend.write_internal(lambda: backend.insert_user(ADMIN_USER, USERS_DB, password,
                                                             [{"role": ROOT, "db": USERS_DB}]))
    if durable is not None:
        durable(seq)
    log.info("created the admin user %s@%s (role root); its LaunchPad file is %s", ADMIN_USER, USERS_DB, path)


def _updated(old: dict[str, Any], address: ClientAddress) -> dict[str, Any]:
    kwargs = {k: v for k, v in (old.get("mongoclient_kwargs") or {}).items()
              if not str(k).lower().startswith(_TLS_PREFIXES)}
    return {**old, "host": address.host, "port": address.port,
            "mongoclient_kwargs": {**kwargs, **address.client_kwargs}}


def _check_credentials(backend: Backend, data: dict[str, Any], path: Path, data_dir: Path) -> None:
    """Warn when the file's user is gone or its password no longer matches (changed with ``user password``)."""
    user, db = str(data.get("username")), str(data.get("authsource") or USERS_DB)
    keys = backend.user_keys(db, user)
    if keys is None:
        log.warning("the user %s@%s of the admin's LaunchPad file %s no longer exists: that file no longer works; "
                    "%s", user, db, path, _recovery(data_dir))
    elif not keys.matches(str(data.get("password"))):
        log.warning("the password in the admin's LaunchPad file %s is no longer %s@%s's (changed with `pilot "
                    "launchpad user password`): use the LaunchPad file that command wrote", path, user, db)


def ensure_admin(backend: Backend, data_dir: Path, address: ClientAddress, *,
                 durable: Callable[[int], None] | None = None) -> None:
    """Make the first admin when the data dir has no users; keep ``DATA/my_launchpad.yaml`` pointing at the server.

    Called by the server after restoring the data dir and before it accepts connections.

    Parameters
    ----------
    backend:
        The restored database.
    data_dir:
        The server's data dir (0700).
    address:
        Where clients reach the server now: ``host``, ``port``, ``client_kwargs`` (TLS; ``{}`` without).
    durable:
        ``durable(seq)`` returns once journal record ``seq`` is on disk (the server's ``Journal.wait_durable``):
        the new admin is acknowledged to nobody, but its file is written, so its record is made durable too.

    Raises
    ------
    StartupError
        The file cannot be written.
    """
    data_dir = Path(data_dir)
    path = data_dir / ADMIN_FILE
    if not backend.has_users():
        _create_admin(backend, data_dir, address, durable)
        return
    try:
        old = read_admin_file(data_dir)
    except AdminFileError as exc:
        if path.exists():
            log.error("%s", exc)
        else:
            log.error("the data dir %s has users but no admin LaunchPad file (%s): %s", data_dir, ADMIN_FILE,
                      _recovery(data_dir))
        return
    new = _updated(old, address)
    if new != old:
        _write(path, new)
    _check_credentials(backend, new, path, data_dir)
