"""The one reader of LaunchPad files: which file a command uses, how it is read, how long it waits.

Every command that talks to the LaunchPad (``pilot status``, ``report``, ``md``, ``manager``, ``submit``,
``cancel``) goes through this module, so that they all agree on three things:

Which file
    :func:`find_launchpad_file`: an explicit ``--launchpad-file``, else the ``launchpad_file:`` that
    ``CONFIG_DIR/pilot.yaml`` names (``~`` expanded, a relative path relative to CONFIG_DIR), else
    ``CONFIG_DIR/my_launchpad.yaml`` -- the file ``pilot launchpad init`` writes. The fallback is the config
    dir's own file, never ``~/.pilot``'s: ``pilot --config-dir D ...`` talks to D's database.

How long to wait (the timeout policy)
    Commands a person waits for give up after :data:`TIMEOUT_S` (5 s) of server selection and of connecting.
    The embedded server answers on loopback in milliseconds and a reachable MongoDB, even across a
    continent with TLS and a DNS SRV lookup, well within a second; after 5 s the database is not there, and
    telling the user so (with the command that fixes it) is worth more than the driver's 30 s of retries.
    The manager daemon (``pilot manager run``) is nobody's prompt: it keeps the driver's own wait (30 s),
    so that a database restart is ridden out inside one cycle instead of failing it. Values written in the
    file's ``mongoclient_kwargs`` always win: the file's owner knows their database.

How a failure reads
    One exception, :class:`LaunchPadUnavailable`: what failed (which file, which database, the driver's
    reason in one short line, never pymongo's topology dump) and the exact command that fixes it, with the
    ``--config-dir`` the user typed (:func:`pilot_command`).

What a message never holds
    A password. Addresses are shown by :func:`launchpad_address` (:func:`redact_uri` for a URI), and every
    driver message goes through :func:`scrub` with the LaunchPad's :func:`secrets_of` first: pymongo quotes the
    URI, or pieces of it, in its errors. These live in :mod:`pilot.redact`, a standard-library-only leaf that
    the pilot worker uses too.

Library code: no click. The CLI turns :class:`LaunchPadUnavailable` into its error message.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pilot.configdir import PILOT_FILE, pilot_command
from pilot.configdir import same_path as _same_path
from pilot.redact import (  # noqa: F401 - re-exported: the reader's callers use them from here
    HIDDEN,
    error_text,
    redact_uri,
    scrub,
    secrets_of,
    uri_hosts,
    uri_password,
)

if TYPE_CHECKING:
    from pilot.config import PilotConfig

#: Name of the FireWorks LaunchPad file in a config dir (written by ``pilot launchpad init``).
LAUNCHPAD_FILE = "my_launchpad.yaml"
#: Seconds an interactive command waits for the database (server selection and connecting); see above.
TIMEOUT_S = 5.0


class LaunchPadUnavailable(Exception):
    """The LaunchPad cannot be used: no file, a file that is not a LaunchPad file, or no database answering.

    ``str(exc)`` is the whole message: ``problem; fix``.

    Attributes
    ----------
    problem : str
        What failed, and where (file, database address).
    fix : str
        What to do, with the exact command.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


# ------------------------------------------------------------------------------------------ which file
@dataclass(frozen=True)
class LaunchPadFile:
    """The LaunchPad file a command uses, and why that one (for messages).

    Attributes
    ----------
    path : Path
        Absolute, ``~`` expanded.
    config_dir : Path
        The command's config dir (for the hints).
    origin : str
        ``"option"`` (``--launchpad-file``), ``"pilot.yaml"`` (its ``launchpad_file``) or ``"default"``
        (``CONFIG_DIR/my_launchpad.yaml``).
    option : str | None
        The command's option for another file (``--launchpad-file``), if it has one.
    """

    path: Path
    config_dir: Path
    origin: str
    option: str | None = "--launchpad-file"

    @property
    def init_command(self) -> str:
        """``pilot [--config-dir D] launchpad init``: writes ``CONFIG_DIR/my_launchpad.yaml``."""
        return pilot_command(self.config_dir, "launchpad init")

    def describe(self) -> str:
        """Where the path came from, e.g. ``D/pilot.yaml: launchpad_file``."""
        if self.origin == "option":
            return self.option or "the given file"
        if self.origin == "pilot.yaml":
            return f"{self.config_dir / PILOT_FILE}: launchpad_file"
        return f"the default {self.config_dir}/{LAUNCHPAD_FILE}"


def _named_in_pilot_yaml(config_dir: Path, pilot: PilotConfig | None) -> Path | None:
    """The ``launchpad_file`` that ``pilot.yaml`` writes (None when it names none)."""
    if pilot is not None:
        return Path(pilot.launchpad_file) if "launchpad_file" in pilot.model_fields_set else None
    path = config_dir / PILOT_FILE
    if not path.is_file():
        return None
    from pilot.config import ConfigError, load_pilot_config

    try:
        return _named_in_pilot_yaml(config_dir, load_pilot_config(path))
    except ConfigError:
        pass
    # another field of pilot.yaml is wrong: still honour its launchpad_file, so that the commands that work
    # without a valid config (status, report) read the database the user named, not another one
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    value = data.get("launchpad_file") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    named = Path(os.path.expanduser(value.strip()))
    return named if named.is_absolute() else config_dir / named


def find_launchpad_file(config_dir: Path | str, explicit: Path | str | None = None, *,
                        pilot: PilotConfig | None = None, option: str | None = "--launchpad-file") -> LaunchPadFile:
    """Which LaunchPad file a command of ``config_dir`` uses (it need not exist; :func:`read_settings` checks).

    Parameters
    ----------
    config_dir : Path | str
        The command's config dir (``--config-dir``).
    explicit : Path | str | None
        ``--launchpad-file``, when given: used as is (relative to the current directory).
    pilot : PilotConfig | None
        ``pilot.yaml`` when the caller has loaded it already; else it is read here (if it exists).
    option : str | None
        The command's option that names another file, for the hints; None for commands without one.
    """
    cdir = Path(os.path.expanduser(str(config_dir)))
    if explicit is not None:
        return LaunchPadFile(Path(os.path.expanduser(str(explicit))).absolute(), cdir, "option", option)
    named = _named_in_pilot_yaml(cdir, pilot)
    if named is not None:
        return LaunchPadFile(named.absolute(), cdir, "pilot.yaml", option)
    return LaunchPadFile((cdir / LAUNCHPAD_FILE).absolute(), cdir, "default", option)


# ------------------------------------------------------------------------------------------ reading
def missing_file(lpf: LaunchPadFile) -> LaunchPadUnavailable:
    """The one message for a LaunchPad file that does not exist: where the path came from, and the command
    that writes it (or the line of ``pilot.yaml`` to correct). Returned, not raised: ``config check`` lists
    it as one problem among others, bootstrap wraps it in its own error."""
    init = f"`{lpf.init_command}`"
    init_uri = f"`{lpf.init_command} --uri mongodb://...`"
    other = f", or pass {lpf.option} FILE" if lpf.option else ""
    if lpf.origin == "option":
        return LaunchPadUnavailable(f"{lpf.option} {lpf.path}: no such file",
                                    f"give the my_launchpad.yaml of your LaunchPad ({init} writes "
                                    f"{lpf.config_dir / LAUNCHPAD_FILE})")
    if lpf.origin == "pilot.yaml":
        own = lpf.config_dir / LAUNCHPAD_FILE
        if _same_path(lpf.path, own):
            fix = f"create it with {init} (embedded server) or {init_uri} (your MongoDB){other}"
        else:
            fix = (f"correct launchpad_file in {lpf.config_dir / PILOT_FILE}, or remove that line to use {own} "
                   f"(which {init} writes){other}")
        return LaunchPadUnavailable(f"{lpf.describe()}: {lpf.path} does not exist", fix)
    return LaunchPadUnavailable(
        f"no LaunchPad file at {lpf.path}",
        f"create it with {init} (embedded server) or {init_uri} (your MongoDB){other}, "
        f"or point launchpad_file in {lpf.config_dir / PILOT_FILE} at yours")


def read_settings(lpf: LaunchPadFile) -> dict[str, Any]:
    """The LaunchPad file's settings (host, port, name, ...) as FireWorks' ``LaunchPad.from_dict`` reads them.

    Raises
    ------
    LaunchPadUnavailable
        The file does not exist, cannot be read, or is not a mapping with a ``host``.
    """
    import yaml

    if not lpf.path.is_file():
        raise missing_file(lpf)
    rewrite = f"write it with `{lpf.init_command}` (or `{lpf.init_command} --uri mongodb://...`)"
    try:
        data = yaml.safe_load(lpf.path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LaunchPadUnavailable(f"cannot read the LaunchPad file {lpf.path}: {exc.strerror}",
                                   "check its owner and mode (it should be yours, mode 600)") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LaunchPadUnavailable(f"the LaunchPad file {lpf.path} is not valid YAML ({first})", rewrite) from None
    if not isinstance(data, dict) or not data.get("host"):
        raise LaunchPadUnavailable(f"the LaunchPad file {lpf.path} is not a LaunchPad file (a YAML mapping with "
                                   "host, port and name)", rewrite)
    return data


def _effective(settings: dict[str, Any], interactive: bool, quiet: bool) -> dict[str, Any]:
    d = dict(settings)
    kw = dict(d.get("mongoclient_kwargs") or {})
    if interactive:
        kw.setdefault("serverSelectionTimeoutMS", int(TIMEOUT_S * 1000))
        kw.setdefault("connectTimeoutMS", int(TIMEOUT_S * 1000))
    d["mongoclient_kwargs"] = kw
    if quiet:
        d.update(strm_lvl="ERROR", logdir=None)
    return d


def open_launchpad(lpf: LaunchPadFile, *, interactive: bool = True, quiet: bool = False) -> Any:
    """A FireWorks ``LaunchPad`` from the file (lazy: nothing is sent to the database yet; see :func:`ping`).

    Parameters
    ----------
    lpf : LaunchPadFile
        From :func:`find_launchpad_file`.
    interactive : bool
        True: wait :data:`TIMEOUT_S` for the database; False (the manager daemon): the driver's own wait.
    quiet : bool
        True for read-only views: FireWorks logs errors only and writes no log file.

    Raises
    ------
    LaunchPadUnavailable
        The file is missing or unusable (a bad URI, an unknown client option, ...).
    """
    import pymongo.errors
    from fireworks import LaunchPad

    d = _effective(read_settings(lpf), interactive, quiet)
    try:
        return LaunchPad.from_dict(d)
    except (pymongo.errors.PyMongoError, ValueError, TypeError, KeyError) as exc:
        # a bad or unresolvable URI (ConfigurationError, InvalidURI), an unknown client option (TypeError), ...
        raise LaunchPadUnavailable(f"the LaunchPad file {lpf.path} cannot be used: {type(exc).__name__}: "
                                   f"{short_reason(scrub(str(exc), secrets_of(d)))}",
                                   f"correct it, or rewrite it with `{lpf.init_command}` "
                                   f"(or `{lpf.init_command} --uri mongodb://...`)") from None


# ------------------------------------------------------------------------------------------ talking
def short_reason(text: str, limit: int = 200) -> str:
    """The driver's reason without pymongo's appendix (timeouts, topology description), cut at a word."""
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description:"):
        text = text.split(cut, 1)[0]
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def launchpad_address(lp: Any) -> str:
    """Where a LaunchPad's database is, for messages: ``host:port``, or its URI without the password."""
    host = str(getattr(lp, "host", "") or "")
    if getattr(lp, "uri_mode", False) or "://" in host:
        return redact_uri(host)
    return f"{host}:{getattr(lp, 'port', '')}"


def _is_local(lp: Any) -> bool:
    """True when the database is on this machine (then it is probably the embedded server)."""
    if getattr(lp, "uri_mode", False):
        return False
    host = str(getattr(lp, "host", "") or "")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wait_s(lp: Any) -> float:
    try:
        return float(lp.connection.options.server_selection_timeout)
    except (AttributeError, TypeError, ValueError):
        return TIMEOUT_S


def database_error(exc: Exception, lp: Any, lpf: LaunchPadFile) -> LaunchPadUnavailable:
    """The one message for a database that failed a command: what, where, and the command that helps."""
    import pymongo.errors

    where = f"the LaunchPad database {getattr(lp, 'name', None)!r} at {launchpad_address(lp)}"
    reason = short_reason(scrub(str(exc), secrets_of(lp))) or type(exc).__name__
    source = f"LaunchPad file: {lpf.path}"
    if isinstance(exc, pymongo.errors.OperationFailure) and exc.code in (13, 18):
        return LaunchPadUnavailable(f"{where} refused the login or the access ({reason})",
                                    f"check username, password and authsource in {lpf.path}")
    if isinstance(exc, pymongo.errors.ConnectionFailure):   # ServerSelectionTimeoutError, AutoReconnect, ...
        problem = f"{where} does not answer within {_wait_s(lp):g} s ({reason})"
    else:
        problem = f"{where} failed: {type(exc).__name__}: {reason}"
    if _is_local(lp):
        fix = ("is the database running? For the embedded server: "
               f"`{pilot_command(lpf.config_dir, 'launchpad status')}` shows it, `{lpf.init_command}` starts it "
               f"({source})")
    else:
        fix = (f"is the database running, and reachable from this machine (network, firewall)? Check its "
               f"address and settings in {lpf.path}")
    return LaunchPadUnavailable(problem, fix)


def ping(lp: Any, lpf: LaunchPadFile) -> None:
    """Ask the database for a ``ping``: fails within the LaunchPad's timeout, with the one message.

    Raises
    ------
    LaunchPadUnavailable
        The database does not answer (or refuses): :func:`database_error`.
    """
    import pymongo.errors

    try:
        lp.connection.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        raise database_error(exc, lp, lpf) from None
