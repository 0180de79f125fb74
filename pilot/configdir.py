"""Which configuration directory a command uses, and how a hint names it.

A leaf module (standard library only) because every room needs it cheaply: the command line's
``--config-dir`` default, the name of its ``pilot.yaml``, the LaunchPad-file reader, and the configuration
loader's hints. A hint that drops
the ``--config-dir`` the user typed sends them to another configuration and another database;
:func:`pilot_command` keeps it.

It also holds the one way pilot writes on this machine into the config dir and the LaunchPad server's data
dir: :func:`private_dir`, :func:`write_private`, :func:`open_private` and :class:`PrivateFileHandler`.
Those places hold or point at secrets (LaunchPad files, the database, logs naming it), so every directory
there is 0700 and every file 0600 (issue 15). A directory or file found with looser modes (an
``~/.pilot`` made 0755 by an older pilot) is tightened when pilot writes into it, with one log line that
says so. Things meant to be shared (the cluster-side venv, job scripts, wheels) never go through these.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
from pathlib import Path
from typing import IO, Any

__all__ = ["CONFIG_DIR_ENV", "DEFAULT_CONFIG_DIR", "PILOT_FILE", "PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE",
           "PrivateFileHandler", "default_config_dir", "open_private", "pilot_command", "private_dir",
           "same_path", "tighten_tree", "write_private"]

log = logging.getLogger("pilot.configdir")

#: The config dir when neither ``--config-dir`` nor :data:`CONFIG_DIR_ENV` names one.
DEFAULT_CONFIG_DIR = "~/.pilot"
#: Environment variable that names the config dir (``--config-dir`` overrides it).
CONFIG_DIR_ENV = "PILOT_CONFIG_DIR"
#: The config dir's main file (pilot settings, ``launchpad_file``); here so that the LaunchPad reader can name
#: it without importing the configuration loader (pydantic).
PILOT_FILE = "pilot.yaml"
#: Modes of what pilot writes in the config dir and the data dir: only the owner may read or enter.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def default_config_dir() -> Path:
    """The config dir a bare ``pilot`` uses: ``$PILOT_CONFIG_DIR``, else ``~/.pilot``."""
    return Path(os.path.expanduser(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR))


def same_path(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name the same place (``~`` expanded, links resolved)."""
    try:
        return Path(os.path.expanduser(str(a))).resolve() == Path(os.path.expanduser(str(b))).resolve()
    except OSError:
        return False


def pilot_command(config_dir: Path | str, args: str) -> str:
    """The command line to suggest: ``pilot ARGS``, with ``--config-dir D`` when D is not the default.

    Examples
    --------
    >>> pilot_command("/srv/lab", "launchpad init")
    'pilot --config-dir /srv/lab launchpad init'
    """
    if same_path(Path(config_dir), default_config_dir()):
        return f"pilot {args}"
    return f"pilot --config-dir {shlex.quote(str(config_dir))} {args}"


# ------------------------------------------------------------------------------------ private files and dirs
def _tighten(path: Path, st: os.stat_result, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if group or others have any bit; True if it changed."""
    if not stat.S_IMODE(st.st_mode) & 0o077:
        return False
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("%s is mode %04o and cannot be made %04o (%s): other accounts may read what pilot writes "
                    "there; fix it with `chmod %o %s`", path, stat.S_IMODE(st.st_mode), mode,
                    exc.strerror or exc, mode, shlex.quote(str(path)))
        return False
    return True


def private_dir(path: Path | str, *, tighten: bool = True) -> Path:
    """Make sure directory ``path`` exists with mode 0700; returns it.

    Every directory this creates (missing parents too: pilot made them only to hold this one) is 0700.
    An existing ``path`` with looser modes is tightened, with one log line, unless ``tighten`` is False (a
    directory the user named outside the config dir, which may be shared on purpose). Existing parents are
    never changed.

    Raises
    ------
    OSError
        As :func:`os.mkdir` (``FileExistsError`` when a file is in the way, ``PermissionError``, ...).
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made by a concurrent pilot: leave it to the check below
        os.chmod(d, PRIVATE_DIR_MODE)  # exactly 0700, whatever the umask
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if tighten and path not in missing:
        st = path.stat()
        if _tighten(path, st, PRIVATE_DIR_MODE):
            # an empty directory exposed nothing (e.g. one just made by ``mkdir``): no need to alarm anyone
            with os.scandir(path) as it:
                level = logging.WARNING if next(it, None) is not None else logging.DEBUG
            log.log(level, "made %s private (mode %04o -> 0700): it holds or points at secrets", path,
                    stat.S_IMODE(st.st_mode))
    return path


def open_private(path: Path | str, mode: str = "a", encoding: str | None = None) -> IO[Any]:
    """Open ``path`` for writing (``"a"``/``"ab"`` append, ``"w"``/``"wb"`` truncate) as a 0600 file.

    A new file is created 0600; an existing one with looser modes is made 0600 (its directory should be
    made private with :func:`private_dir` first).
    """
    if mode.rstrip("b") not in ("a", "w"):
        raise ValueError(f"open_private: mode {mode!r} is not one of a, ab, w, wb")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode, encoding=None if "b" in mode else (encoding or "utf-8"))
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path | str, data: str | bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (a 0600 temp file renamed over it): the file is 0600 even if
    the one it replaces was not. ``fsync``: make the content durable before the rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open_private(tmp, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tighten_tree(root: Path | str) -> int:
    """Make every directory under ``root`` (itself included) 0700 and every file 0600; returns how many
    were changed, and says so in one log line. For a directory that is wholly pilot's (the server's data
    dir), so that files an older pilot wrote 0644 stop being readable by others. Symlinks are left alone."""
    root = Path(root)
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = Path(dirpath, name) if name else Path(dirpath)
            if name == "" and p != root:
                continue  # each directory is handled once, as an entry of its parent
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                changed += _tighten(p, st, PRIVATE_DIR_MODE)
            elif stat.S_ISREG(st.st_mode):
                changed += _tighten(p, st, PRIVATE_FILE_MODE)
    if changed:
        log.warning("made %d of the files and directories in %s private (0600/0700): they hold or point at secrets",
                    changed, root)
    return changed


class PrivateFileHandler(logging.FileHandler):
    """A :class:`logging.FileHandler` whose file is 0600 (see :func:`open_private`)."""

    def _open(self) -> IO[Any]:  # type: ignore[override]
        return open_private(self.baseFilename, "w" if self.mode.startswith("w") else "a", encoding=self.encoding)
