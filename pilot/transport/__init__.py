"""Run argument lists and move files on a cluster host: over SSH (paramiko) or locally (subprocess).

This is the only module of fireworks-pilot that imports paramiko and the only place where an argument
list becomes a shell command line (``shlex.join``). Everything else hands it lists such as
``["sbatch", "--parsable", "/home/me/pilot.sh"]`` and gets a :class:`CompletedCommand` back.

Contract
--------
* A non-zero exit code of the remote command is a *result*, not an exception: schedulers answer with
  non-zero codes and messages on stderr that the queue adapters parse. Only transport failures raise
  (:class:`TransportError` and its subclasses), each with ``retryable`` saying whether trying again can help.
  ``run(..., check=True)`` additionally raises :class:`TransportError` (not retryable) on a non-zero code.
* Every command has a timeout. On timeout the whole remote process group is killed (TERM, then KILL after a
  grace period), the channel is closed, and :class:`CommandTimeout` is raised. See ``docs/transport.md``.
* Files are written atomically (temporary name in the target directory, then rename) with an exact mode.
* Nothing secret is logged: no key material, no passwords, no contents of files that are put, and of the
  environment passed to a command only the variable names.

How a remote command is built
-----------------------------
``run(["printf", "%s\\n", "a b"], cwd="/x", env={"K": "v"})`` sends this line to the login shell::

    printf 'PILOT-PGID-<nonce>=%s\\n' "$$" >&2; cd -- /x && exec env K=v printf '%s\\n' 'a b'

sshd starts every non-pty session command in a new session (``setsid``), so the login shell's ``$$`` is the
id of the process group that holds the command and all of its children; ``exec`` keeps that id. The first
line reports it on stderr under a per-call random marker, which is removed from the stderr that ``run``
returns. On timeout a second channel runs ``kill -s TERM -- -<pgid>`` (then ``KILL``). The login shell must
be POSIX-compatible (sh, bash, dash, ksh, zsh); csh/tcsh are not supported.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import posixpath
import re
import secrets
import shlex
import signal
import socket
import stat as stat_module
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import paramiko

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AuthenticationError",
    "CommandTimeout",
    "CompletedCommand",
    "ConnectError",
    "ConnectionLost",
    "FileStat",
    "HostKeyError",
    "LocalTransport",
    "RemotePathError",
    "SSHTransport",
    "Transport",
    "TransportConfigError",
    "TransportError",
    "close_all_connections",
]

log = logging.getLogger("pilot.transport")

#: How much of a command's stderr an error message carries (characters, then at most this many lines).
STDERR_TAIL_CHARS = 2000
STDERR_TAIL_LINES = 15
#: Concurrent exec channels per SSH connection (OpenSSH's default MaxSessions is 10: 8 for commands,
#: one for the SFTP session, one spare for killing a timed-out command).
MAX_CHANNELS_PER_CONNECTION = 8
#: After a remote command exited, how long to wait for the end of its output (a background process that
#: inherited stdout would otherwise keep the channel open for ever, as with the ``ssh`` client).
EXIT_LINGER_SECONDS = 2.0
#: Seconds allowed for the request that kills a timed-out command's process group.
KILL_REQUEST_TIMEOUT = 3.0
_CHUNK = 32768
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SHA256_HEX = re.compile(r"\\?([0-9a-fA-F]{64})\b")

# Runs on the remote host to stop a timed-out command's process group: TERM now, then a detached watchdog
# sends KILL if the group still exists after $2 tenths of a second. The script itself returns at once, so
# the timed-out call returns within its timeout plus one round trip. Arguments: $1 = process group id,
# $2 = number of 0.1 s polls before KILL. Prints "term" (signal sent) or "gone" (group already ended).
_KILL_SCRIPT = (
    'pg=$1; polls=$2\n'
    'kill -s TERM -- "-$pg" 2>/dev/null || { echo gone; exit 0; }\n'
    '(\n'
    '  n=0\n'
    '  while [ "$n" -lt "$polls" ]; do\n'
    '    kill -s 0 -- "-$pg" 2>/dev/null || exit 0\n'
    '    sleep 0.1 2>/dev/null || sleep 1\n'
    '    n=$((n+1))\n'
    '  done\n'
    '  kill -s KILL -- "-$pg" 2>/dev/null\n'
    ') </dev/null >/dev/null 2>&1 &\n'
    'echo term\n'
)


# =========================================================================== results and errors
@dataclass(frozen=True)
class CompletedCommand:
    """The result of :meth:`Transport.run`.

    Attributes
    ----------
    argv : list of str
        The argument list as the caller passed it (without the ``env``/``cd`` wrapping).
    returncode : int
        The command's exit code. 127 = command not found, 126 = not executable (shell conventions, also
        used by :class:`LocalTransport`). Negative = killed by a signal (``-N`` locally; ``-1`` over SSH,
        where the signal number is not reported).
    stdout, stderr : str
        Decoded as UTF-8 with ``errors="replace"`` (scheduler output may hold other bytes).
    host : str
        The transport's host.
    duration : float
        Wall-clock seconds from sending the command to its end.
    """

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    host: str
    duration: float

    @property
    def ok(self) -> bool:
        """True when the exit code is 0."""
        return self.returncode == 0


@dataclass(frozen=True)
class FileStat:
    """Size, modification time and mode of a file on the transport's host.

    Attributes
    ----------
    size : int
        Bytes.
    mtime : float
        Seconds since the epoch (SFTP reports whole seconds).
    mode : int
        Permission bits (``st_mode & 0o7777``).
    is_dir : bool
        True for a directory.
    """

    size: int
    mtime: float
    mode: int
    is_dir: bool = False


def _tail(text: str | None) -> str:
    if not text:
        return ""
    text = text[-STDERR_TAIL_CHARS:]
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _display(argv: list[str] | None) -> str:
    return shlex.join(argv) if argv is not None else ""


class TransportError(Exception):
    """A command or file transfer could not be carried out (the transport failed, not the command).

    Parameters
    ----------
    what : str
        What failed, e.g. ``"cannot connect"``.
    host : str
        Where (the transport's host; the message shows the full ``user@host:port`` label).
    argv : list of str, optional
        The command concerned, if any.
    returncode : int, optional
        The exit code, when one is known (``check=True``).
    stderr_tail : str
        The end of the command's stderr (or of the underlying error).
    retryable : bool, optional
        Whether trying again later can help; defaults to the class's ``default_retryable``.
    hint : str
        What a person can try.
    label : str, optional
        How to name the host in the message (defaults to ``host``).
    may_have_run : bool
        True when the command was sent and may have run (or be running) on the host although no result came
        back: do not blindly repeat commands that are not idempotent (``sbatch``); reconcile first.

    Attributes
    ----------
    host, argv, returncode, stderr_tail, retryable, hint, may_have_run, what
        As above.
    """

    default_retryable = False

    def __init__(self, what: str, *, host: str, argv: list[str] | None = None, returncode: int | None = None,
                 stderr_tail: str = "", retryable: bool | None = None, hint: str = "",
                 label: str | None = None, may_have_run: bool = False) -> None:
        self.what = what
        self.host = host
        self.argv = list(argv) if argv is not None else None
        self.returncode = returncode
        self.stderr_tail = _tail(stderr_tail)
        self.retryable = self.default_retryable if retryable is None else retryable
        self.hint = hint
        self.may_have_run = may_have_run
        lines = [f"{what} on {label or host}"]
        if self.argv is not None:
            lines.append(f"  command: {_display(self.argv)}")
        if returncode is not None:
            lines.append(f"  exit code: {returncode}")
        if self.stderr_tail:
            lines.append("  stderr (last lines):")
            lines.extend("    " + line for line in self.stderr_tail.splitlines())
        if may_have_run:
            lines.append("  note: the command may have run on the host; check before repeating it")
        if hint:
            lines.append(f"  try: {hint}")
        lines.append(f"  ({'retrying later may help' if self.retryable else 'retrying will not help'})")
        super().__init__("\n".join(lines))


class CommandTimeout(TransportError):
    """The command did not finish within its timeout (its remote process group was killed). Retryable."""

    default_retryable = True


class HostKeyError(TransportError):
    """The host's key is unknown or differs from known_hosts. Not retryable: a person must decide."""


class AuthenticationError(TransportError):
    """The host refused our key(s) or the key could not be used. Not retryable."""


class ConnectError(TransportError):
    """No SSH connection could be made, or it broke before the command was started. Retryable.

    The command did **not** reach the host (``may_have_run`` is False); compare :class:`ConnectionLost`.
    """

    default_retryable = True


class ConnectionLost(TransportError):
    """The connection broke while the command was running: it may have run. Retryable, ``may_have_run``.

    Deliberately not a :class:`ConnectError`: ``except ConnectError`` means "nothing was sent", so a
    non-idempotent command (``sbatch``) caught there can be retried safely; one caught here must be
    reconciled first.
    """

    default_retryable = True


class RemotePathError(TransportError):
    """A file operation failed on the host's file system (missing file, permission denied, ...).

    Attributes
    ----------
    errno : int or None
        The ``errno`` value when the host reported one (``errno.ENOENT``, ``errno.EACCES``, ...).
    path : str
        The path concerned.
    """

    def __init__(self, what: str, *, path: str, errno_value: int | None = None, **kwargs: Any) -> None:
        self.errno = errno_value
        self.path = path
        super().__init__(what, **kwargs)


class TransportConfigError(TransportError, ValueError):
    """The transport's settings are wrong (ssh config file, ProxyJump spec, env names, ...). Not retryable."""


# =========================================================================== the interface
class Transport(ABC):
    """Runs argument lists and moves files on one host.

    Attributes
    ----------
    host : str
        The host as configured (an ssh-config alias, a host name, or ``"localhost"``).
    name : str
        A display name (the cluster name when given).
    """

    host: str
    name: str
    #: Seconds between TERM and KILL when a timed-out command's process group is stopped.
    kill_grace: float = 2.0

    # ------------------------------------------------------------------ commands
    def run(self, argv: list[str], timeout: float = 60, stdin: str | bytes | None = None, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> CompletedCommand:
        """Run ``argv`` (no shell interpretation of its elements) and wait for it.

        Parameters
        ----------
        argv : list of str
            Program and arguments. Each element arrives verbatim, whatever it contains.
        timeout : float
            Seconds. On expiry the command's process group is killed and :class:`CommandTimeout` raised.
        stdin : str or bytes, optional
            Data for the command's standard input (str is UTF-8 encoded). Without it stdin is empty.
        cwd : str, optional
            Working directory. Over SSH a relative path (or ``~/...``) is relative to the home directory.
        env : dict, optional
            Extra environment variables (names must be shell identifiers). Passed as ``env K=V argv...``.
        check : bool
            Raise :class:`TransportError` (``retryable=False``) when the exit code is not 0.

        Returns
        -------
        CompletedCommand
            Also for a non-zero exit code (unless ``check``).

        Raises
        ------
        CommandTimeout, ConnectError, HostKeyError, AuthenticationError, TransportError
        """
        argv = _check_argv(argv)
        env = _check_env(env, argv, self.host)
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        result = self._execute(argv, float(timeout), data, cwd, env)
        log.debug("%s: %s%s -> rc=%d in %.2fs", self.label, _display(argv),
                  f" (env: {', '.join(sorted(env))})" if env else "", result.returncode, result.duration)
        if check and result.returncode != 0:
            raise TransportError(f"command exited with code {result.returncode}", host=self.host,
                                 label=self.label, argv=argv, returncode=result.returncode,
                                 stderr_tail=result.stderr, retryable=False,
                                 hint="read the command's stderr above; the command itself failed, "
                                      "not the connection")
        return result

    @abstractmethod
    def _execute(self, argv: list[str], timeout: float, stdin: bytes | None, cwd: str | None,
                 env: dict[str, str]) -> CompletedCommand:
        """Run a validated command (implementations)."""

    # ------------------------------------------------------------------ files
    @abstractmethod
    def put(self, data_or_path: bytes | str | os.PathLike[str], remote_path: str, mode: int = 0o644) -> None:
        """Write a file on the host atomically (temporary name in the same directory, then rename).

        Parameters
        ----------
        data_or_path : bytes, str or os.PathLike
            ``bytes``: the content. ``str`` or a path object: a local file whose content is copied.
        remote_path : str
            Destination on the host; missing parent directories are created (mode 0o755).
        mode : int
            Permission bits of the new file, set exactly (not subject to umask) before content is written.
        """

    @abstractmethod
    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file from the host to ``local_path`` (atomically; parent directories are created).

        The local copy gets the remote file's permission bits; its size is checked against the remote size.
        """

    @abstractmethod
    def stat(self, path: str) -> FileStat:
        """Size, mtime and mode of ``path``; :class:`RemotePathError` (``errno.ENOENT``) when it is missing."""

    def exists(self, path: str) -> bool:
        """True when ``path`` exists on the host (file or directory)."""
        try:
            self.stat(path)
        except RemotePathError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    @abstractmethod
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Create ``path`` and missing parents (existing directories are fine)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file; a missing file is not an error."""

    @abstractmethod
    def sha256(self, path: str) -> str:
        """The SHA-256 of a file's content as 64 lowercase hex digits."""

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release resources (for SSH: this object's share of the pooled connection)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def label(self) -> str:
        """How messages name this host."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def _check_argv(argv: Any) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError(f"argv must be a list of strings, not a single string: {argv!r}; "
                        f"write e.g. ['squeue', '-u', 'me'] instead of 'squeue -u me'")
    argv = list(argv)
    if not argv:
        raise ValueError("argv is empty: give at least the program to run")
    for i, a in enumerate(argv):
        if not isinstance(a, str):
            raise TypeError(f"argv[{i}] must be str, got {type(a).__name__} ({a!r}); convert it with str()")
        if "\0" in a:
            raise ValueError(f"argv[{i}] contains a NUL byte, which no command line can carry")
    return argv


def _check_env(env: dict[str, str] | None, argv: list[str], host: str) -> dict[str, str]:
    if not env:
        return {}
    out: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise TransportConfigError(f"invalid environment variable name {k!r}", host=host, argv=argv,
                                       hint="names must match [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(v, str) or "\0" in v:
            raise TransportConfigError(f"environment variable {k} must be a str without NUL bytes", host=host,
                                       argv=argv, hint="convert the value with str()")
        out[k] = v
    if "=" in argv[0]:
        raise TransportConfigError(f"program name {argv[0]!r} contains '=', which `env` would take as a "
                                   "variable assignment", host=host, argv=argv,
                                   hint="use the program's path without '='")
    return out


def _decode(b: bytes | bytearray) -> str:
    return bytes(b).decode("utf-8", errors="replace")


# =========================================================================== local
class LocalTransport(Transport):
    """Runs commands on this machine with :mod:`subprocess` (argument lists, never a shell).

    Each command starts in a new session (its own process group); on timeout the whole group gets TERM,
    then KILL after :attr:`kill_grace` seconds. A program that cannot be found gives exit code 127 and one
    that cannot be executed 126, with the reason on stderr, as a POSIX shell (and so ``SSHTransport``) does.

    Parameters
    ----------
    name : str
        Display name in messages and logs.
    """

    def __init__(self, name: str = "local") -> None:
        self.host = "localhost"
        self.name = name

    def _execute(self, argv: list[str], timeout: float, stdin: bytes | None, cwd: str | None,
                 env: dict[str, str]) -> CompletedCommand:
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        workdir = os.path.expanduser(cwd) if cwd else None
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=full_env,
                                    start_new_session=True)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            # The same outcome a shell reports: the caller sees a returncode, not an exception.
            if workdir and not os.path.isdir(workdir):
                rc, msg = 1, f"cd: {workdir}: {exc.strerror or exc}"
            elif isinstance(exc, PermissionError):
                rc, msg = 126, f"{argv[0]}: {exc.strerror or 'Permission denied'}"
            else:
                rc, msg = 127, f"{argv[0]}: command not found"
            return CompletedCommand(argv, rc, "", msg + "\n", self.host, time.monotonic() - start)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            killed = self._kill_group(proc)
            try:  # whatever output the group wrote until it died (briefly: TERM may be ignored)
                out, err = proc.communicate(timeout=0.5)
            except subprocess.TimeoutExpired:
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                out, err = b"", b""  # the watchdog KILLs the group and reaps the child
            raise CommandTimeout(f"command did not finish within {timeout:g} s ({killed})", host=self.host,
                                 label=self.label, argv=argv, stderr_tail=_decode(err), may_have_run=True,
                                 hint="raise the timeout for this command, or find out why it hangs "
                                      "(an overloaded host, an unresponsive scheduler daemon)") from None
        return CompletedCommand(argv, proc.returncode, _decode(out), _decode(err), self.host,
                                time.monotonic() - start)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> str:
        """TERM the command's process group now; a watchdog thread sends KILL after :attr:`kill_grace`."""
        pgid = proc.pid  # start_new_session: the child leads its own process group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return "its process group had already ended"
        grace = self.kill_grace

        def watchdog() -> None:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader as soon as it exits
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)
            try:
                os.killpg(pgid, signal.SIGKILL)
                log.info("%s: process group %d survived SIGTERM for %g s: sent SIGKILL", self.label, pgid, grace)
            except ProcessLookupError:
                pass
            proc.wait()

        threading.Thread(target=watchdog, name=f"pilot-kill-{pgid}", daemon=True).start()
        return (f"SIGTERM sent to its process group {pgid}, SIGKILL follows after {grace:g} s if any of it is "
                "still alive")

    # ------------------------------------------------------------------ files
    def _path_error(self, what: str, path: str, exc: OSError) -> RemotePathError:
        return RemotePathError(f"{what} {path}: {exc.strerror or exc}", path=path, errno_value=exc.errno,
                               host=self.host, label=self.label, stderr_tail=str(exc),
                               hint="check that the path exists and that this user may access it")

    def put(self, data_or_path: bytes | str | os.PathLike[str], remote_path: str, mode: int = 0o644) -> None:
        dest = Path(os.path.expanduser(remote_path))
        if not isinstance(data_or_path, (bytes, bytearray, memoryview)) and not os.path.isfile(data_or_path):
            raise FileNotFoundError(errno.ENOENT, "local file to put does not exist", str(data_or_path))
        tmp: str | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".pilot-tmp")
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)
                if isinstance(data_or_path, (bytes, bytearray, memoryview)):
                    out.write(data_or_path)
                    size = len(data_or_path)
                else:
                    with open(data_or_path, "rb") as src:
                        size = 0
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                            size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
            tmp = None
        except OSError as exc:
            raise self._path_error("cannot write", str(dest), exc) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        log.debug("%s: put %d bytes to %s (mode %o)", self.label, size, dest, mode)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        src = os.path.expanduser(remote_path)
        dest = Path(local_path).expanduser()
        tmp: str | None = None
        try:
            st = os.stat(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".pilot-tmp")
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                os.fchmod(out.fileno(), stat_module.S_IMODE(st.st_mode))
                while chunk := inp.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, dest)
            tmp = None
        except OSError as exc:
            raise self._path_error("cannot copy", src, exc) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass

    def stat(self, path: str) -> FileStat:
        p = os.path.expanduser(path)
        try:
            st = os.stat(p)
        except OSError as exc:
            raise self._path_error("cannot stat", p, exc) from exc
        return FileStat(st.st_size, st.st_mtime, stat_module.S_IMODE(st.st_mode), stat_module.S_ISDIR(st.st_mode))

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        p = os.path.expanduser(path)
        try:
            os.makedirs(p, mode=mode, exist_ok=True)
        except OSError as exc:
            raise self._path_error("cannot create directory", p, exc) from exc

    def remove(self, path: str) -> None:
        p = os.path.expanduser(path)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._path_error("cannot remove", p, exc) from exc

    def sha256(self, path: str) -> str:
        p = os.path.expanduser(path)
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            raise self._path_error("cannot read", p, exc) from exc
        return h.hexdigest()


# =========================================================================== SSH: settings
@dataclass(frozen=True)
class _Endpoint:
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


@dataclass(frozen=True)
class _Settings:
    """Everything that determines an SSH connection; also the connection pool's key."""

    target: _Endpoint
    jump: _Endpoint | None
    known_hosts: tuple[str, ...]
    strict: bool
    allow_agent: bool
    connect_timeout: float = field(compare=False)
    keepalive: int = field(compare=False)

    def key(self) -> tuple[Any, ...]:
        # (user, host, port, jump) plus what decides authentication and host-key checking: an object
        # configured with another key or a stricter policy never inherits a connection it could not make.
        return (self.target.user, self.target.hostname, self.target.port, self.jump and str(self.jump),
                self.target.identity_files, self.jump and self.jump.identity_files, self.known_hosts,
                self.strict, self.allow_agent)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _parse_jump(spec: str, source: str, host: str) -> tuple[str | None, str, int | None]:
    """Parse ``[ssh://][user@]host[:port]`` (IPv6 as ``[addr]:port``)."""
    s = spec.strip()
    if "," in s:
        raise TransportConfigError(f"ProxyJump {spec!r} ({source}) names several jump hosts", host=host,
                                   hint="only one jump host is supported: give a single user@host:port")
    s = s.removeprefix("ssh://")
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
    port: int | None = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", s)
    if m:
        hostname, p = m.group(1), m.group(2)
    elif s.count(":") == 1:
        hostname, p = s.split(":")
    else:
        hostname, p = s, None
    if p is not None:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise TransportConfigError(f"ProxyJump {spec!r} ({source}) has an invalid port {p!r}", host=host,
                                       hint="write it as user@host:port, e.g. me@gateway.example.org:22")
        port = int(p)
    if not hostname:
        raise TransportConfigError(f"ProxyJump {spec!r} ({source}) has no host name", host=host,
                                   hint="write it as user@host:port, e.g. me@gateway.example.org:22")
    return user or None, hostname, port


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


# =========================================================================== SSH: connection pool
class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"no known_hosts entry for {hostname}")
        self.hostname = hostname
        self.key = key


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RejectUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an exception that carries the offered key."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


class _WarnAutoAdd(paramiko.AutoAddPolicy):
    """paramiko's AutoAddPolicy (in memory only: no host-key file is ever written), with a WARNING."""

    def __init__(self, label: str) -> None:
        self.label = label

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning("%s: accepting the UNVERIFIED %s host key %s of %s because strict_host_key_checking is "
                    "off for this host (nothing is written to known_hosts)", self.label, key.get_name(),
                    _fingerprint(key), hostname)
        super().missing_host_key(client, hostname, key)


class _Connection:
    """One (possibly jumped) SSH connection shared by every SSHTransport with the same settings."""

    def __init__(self, settings: _Settings, label: str) -> None:
        self.settings = settings
        self.label = label
        self.lock = threading.RLock()          # connect / reconnect / teardown
        self.sftp_lock = threading.Lock()      # one SFTP operation at a time on the shared session
        self.channels = threading.BoundedSemaphore(MAX_CHANNELS_PER_CONNECTION)
        self.client: paramiko.SSHClient | None = None
        self.jump_client: paramiko.SSHClient | None = None
        self.sftp_client: paramiko.SFTPClient | None = None
        self.refs = 0
        self.connects = 0

    # ------------------------------------------------------------------ connect
    def transport(self) -> paramiko.Transport:
        """The live paramiko transport, connecting (or reconnecting once) when needed."""
        with self.lock:
            if self.client is not None:
                t = self.client.get_transport()
                if t is not None and t.is_active():
                    return t
                log.warning("%s: the SSH connection was lost; reconnecting", self.label)
                self._teardown()
            self._connect()
            t = self.client.get_transport() if self.client else None
            assert t is not None  # _connect either sets a connected client or raises
            return t

    def invalidate(self, transport: paramiko.Transport | None) -> None:
        """Drop the connection if it is still ``transport`` (another thread may have replaced it)."""
        with self.lock:
            if self.client is not None and (transport is None or self.client.get_transport() is transport):
                self._teardown()

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        for path in self.settings.known_hosts:
            if os.path.isfile(path):
                # "system" host keys: read only; paramiko never writes them back.
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(_WarnAutoAdd(self.label) if not self.settings.strict
                                           else _RejectUnknownHost())
        return client

    def _client_connect(self, client: paramiko.SSHClient, ep: _Endpoint, sock: Any, role: str) -> None:
        s = self.settings
        for f in ep.identity_files:
            if not os.path.isfile(f):
                raise AuthenticationError(f"identity file {f} ({role}) does not exist", host=ep.hostname,
                                          label=self.label,
                                          hint="fix identity_file in the cluster's configuration (or the "
                                               "IdentityFile in your ssh config)")
        try:
            client.connect(ep.hostname, port=ep.port, username=ep.user, key_filename=list(ep.identity_files) or None,
                           timeout=s.connect_timeout, banner_timeout=s.connect_timeout,
                           auth_timeout=s.connect_timeout, channel_timeout=s.connect_timeout,
                           allow_agent=s.allow_agent, look_for_keys=not ep.identity_files, sock=sock)
        except BaseException:
            client.close()
            raise

    def _connect(self) -> None:
        s = self.settings
        t0 = time.monotonic()
        jump_client = None
        sock = None
        try:
            if s.jump is not None:
                jump_client = self._new_client()
                try:
                    self._client_connect(jump_client, s.jump, None, f"jump host {s.jump}")
                except TransportError:
                    raise
                except Exception as exc:
                    raise self._connect_error(exc, s.jump, f"jump host {s.jump}") from exc
                jt = jump_client.get_transport()
                assert jt is not None
                if s.keepalive > 0:
                    jt.set_keepalive(s.keepalive)
                try:
                    sock = jt.open_channel("direct-tcpip", (s.target.hostname, s.target.port), ("127.0.0.1", 0),
                                           timeout=s.connect_timeout)
                except Exception as exc:
                    raise ConnectError(f"the jump host {s.jump} could not open a connection to "
                                       f"{s.target.hostname}:{s.target.port}", host=s.target.hostname,
                                       label=self.label, stderr_tail=f"{type(exc).__name__}: {exc}",
                                       hint="check the target host/port from the jump host (`ssh -J "
                                            f"{s.jump} -p {s.target.port} {s.target.user}@{s.target.hostname}`)"
                                            " and that the jump host allows TCP forwarding") from exc
            client = self._new_client()
            try:
                self._client_connect(client, s.target, sock, "target host")
            except TransportError:
                raise
            except Exception as exc:
                raise self._connect_error(exc, s.target, "host") from exc
        except BaseException:
            if jump_client is not None:
                jump_client.close()
            raise
        t = client.get_transport()
        assert t is not None
        if s.keepalive > 0:
            t.set_keepalive(s.keepalive)
        self.client, self.jump_client = client, jump_client
        self.connects += 1
        log.info("%s: connected%s in %.2f s", self.label, f" via {s.jump}" if s.jump else "",
                 time.monotonic() - t0)

    def _connect_error(self, exc: BaseException, ep: _Endpoint, role: str) -> TransportError:
        where = f"{ep}" if role == "host" else f"{role}"
        kh = ", ".join(self.settings.known_hosts) or "(none)"
        hostspec = ep.hostname if ep.port == 22 else f"[{ep.hostname}]:{ep.port}"
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _UnknownHostKey):
            return HostKeyError(
                f"the host key of {where} is not in known_hosts ({kh}); the host offered "
                f"{exc.key.get_name()} {_fingerprint(exc.key)}", host=ep.hostname, label=self.label,
                stderr_tail=detail,
                hint=f"verify that fingerprint with the cluster's documentation or admins, then add the key: "
                     f"`ssh-keyscan -p {ep.port} {ep.hostname} >> {self.settings.known_hosts[0] if self.settings.known_hosts else '~/.ssh/known_hosts'}` "
                     f"or connect once with `ssh -p {ep.port} {ep.user}@{ep.hostname}` and accept it; "
                     f"or (test machines only) set strict_host_key_checking: false for this cluster")
        if isinstance(exc, paramiko.BadHostKeyException):
            return HostKeyError(
                f"the host key of {where} DIFFERS from known_hosts ({kh}): expected "
                f"{_fingerprint(exc.expected_key)}, got {exc.key.get_name()} {_fingerprint(exc.key)}",
                host=ep.hostname, label=self.label, stderr_tail=detail,
                hint=f"if the host was reinstalled (ask its admins), remove the old entry with "
                     f"`ssh-keygen -R '{hostspec}'` and add the new one; otherwise do not connect: "
                     f"someone may be intercepting the connection")
        if isinstance(exc, paramiko.PasswordRequiredException):
            return AuthenticationError(
                f"the private key for {where} is encrypted and no passphrase is available", host=ep.hostname,
                label=self.label, stderr_tail=detail,
                hint="load the key into ssh-agent (`ssh-add KEYFILE`); passphrases are never stored")
        if isinstance(exc, paramiko.AuthenticationException):
            keys = ", ".join(ep.identity_files) or "the default keys in ~/.ssh and the ssh-agent"
            return AuthenticationError(
                f"authentication as {ep.user} failed for {where} (tried {keys})", host=ep.hostname,
                label=self.label, stderr_tail=detail,
                hint=f"check the user name and that the public key is in ~{ep.user}/.ssh/authorized_keys on "
                     f"the host; test with `ssh -i KEYFILE -p {ep.port} {ep.user}@{ep.hostname} true`")
        if isinstance(exc, socket.gaierror):
            return ConnectError(f"cannot resolve the host name of {where}", host=ep.hostname, label=self.label,
                                stderr_tail=detail, hint="check the host name (and HostName in ssh config) "
                                                         "and DNS")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return ConnectError(f"connecting to {where} timed out after {self.settings.connect_timeout:g} s",
                                host=ep.hostname, label=self.label, stderr_tail=detail,
                                hint="check that the host is up and reachable (VPN, firewall) and the port")
        if isinstance(exc, (OSError, paramiko.SSHException, EOFError)):
            return ConnectError(f"cannot connect to {where}", host=ep.hostname, label=self.label,
                                stderr_tail=detail,
                                hint=f"check that sshd runs on {ep.hostname} port {ep.port} and is reachable "
                                     f"(`ssh -p {ep.port} {ep.user}@{ep.hostname} true`)")
        return ConnectError(f"cannot connect to {where}", host=ep.hostname, label=self.label, stderr_tail=detail,
                            hint="see the error above")

    # ------------------------------------------------------------------ SFTP
    def sftp(self) -> tuple[paramiko.SFTPClient, paramiko.Transport]:
        with self.lock:
            t = self.transport()
            if self.sftp_client is not None:
                ch = self.sftp_client.get_channel()
                if ch is None or ch.closed or ch.get_transport() is not t:
                    self._close_sftp()
            if self.sftp_client is None:
                self.sftp_client = paramiko.SFTPClient.from_transport(t)
                if self.sftp_client is None:
                    raise ConnectError("the host refused an SFTP session", host=self.settings.target.hostname,
                                       label=self.label, hint="check that sshd has `Subsystem sftp` configured")
            return self.sftp_client, t

    def _close_sftp(self) -> None:
        if self.sftp_client is not None:
            try:
                self.sftp_client.close()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.debug("%s: closing the SFTP session: %s", self.label, exc)
            self.sftp_client = None

    # ------------------------------------------------------------------ teardown
    def _teardown(self) -> None:
        self._close_sftp()
        for c in (self.client, self.jump_client):
            if c is not None:
                c.close()
        self.client = self.jump_client = None

    def close(self) -> None:
        with self.lock:
            self._teardown()


_POOL: dict[tuple[Any, ...], _Connection] = {}
_POOL_LOCK = threading.Lock()


def _acquire(settings: _Settings, label: str) -> _Connection:
    with _POOL_LOCK:
        conn = _POOL.get(settings.key())
        if conn is None:
            conn = _Connection(settings, label)
            _POOL[settings.key()] = conn
        conn.refs += 1
        return conn


def _release(conn: _Connection) -> None:
    with _POOL_LOCK:
        conn.refs -= 1
        if conn.refs > 0:
            return
        if _POOL.get(conn.settings.key()) is conn:
            del _POOL[conn.settings.key()]
    conn.close()


def close_all_connections() -> None:
    """Close every pooled SSH connection (e.g. at process exit). Transports reconnect if used again."""
    with _POOL_LOCK:
        conns = list(_POOL.values())
    for c in conns:
        c.close()


_T = TypeVar("_T")


def _remote_path(path: str) -> str:
    """SFTP and commands start in the home directory: ``~/x`` becomes ``x``."""
    p = str(path)
    if p == "~":
        return "."
    if p.startswith("~/"):
        return p[2:] or "."
    return p


# =========================================================================== SSH
class SSHTransport(Transport):
    """Commands and files on a host over SSH (paramiko), with a pooled, kept-alive connection.

    Parameters
    ----------
    host : str
        Host name or address (or an ssh-config ``Host`` alias when ``use_ssh_config``).
    user : str, optional
        Remote user; default: ssh config ``User``, else the local user name.
    port : int
        Default 22 (an explicit non-22 port wins over ssh config ``Port``).
    identity_file : str, optional
        Private key file. Without it: ssh config ``IdentityFile``, else the ssh-agent and ``~/.ssh/id_*``.
        The ssh-agent is always tried as well.
    known_hosts : str, optional
        known_hosts file to check host keys against. Default: ssh config ``UserKnownHostsFile``, else
        ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. Never written to.
    strict_host_key_checking : bool
        True (default): an unknown host key is rejected (:class:`HostKeyError`). False: it is accepted for
        this connection with a WARNING (nothing written). A *changed* key is always rejected.
    proxy_jump : str, optional
        One jump host, ``user@host:port`` (user and port optional; default user: the target's user).
    use_ssh_config : bool
        Read ``Host`` entries of ``ssh_config_path`` (HostName, User, Port, IdentityFile, ProxyJump,
        UserKnownHostsFile) for ``host`` and for the jump host.
    ssh_config_path : str
        Default ``~/.ssh/config``.
    connect_timeout : float
        Seconds for TCP connect, SSH banner, authentication and channel opening.
    keepalive : int
        Seconds between SSH keepalive packets (0 = off).
    name : str, optional
        Display name (e.g. the cluster name) for messages and logs.
    allow_agent : bool
        Try keys from a running ssh-agent (default True).

    Notes
    -----
    Objects with the same (user, host, port, jump) and the same key/known_hosts/policy settings share one
    connection from a module-level pool (thread-safe); it is opened on first use and closed when the last
    sharing object is closed. A dropped connection is re-established once per call; if that fails the call
    raises :class:`ConnectError`.
    """

    def __init__(self, host: str, user: str | None = None, port: int = 22, identity_file: str | None = None,
                 known_hosts: str | None = None, strict_host_key_checking: bool = True,
                 proxy_jump: str | None = None, use_ssh_config: bool = False,
                 ssh_config_path: str = "~/.ssh/config", connect_timeout: float = 15, keepalive: int = 30,
                 name: str | None = None, allow_agent: bool = True) -> None:
        self.host = host
        self.name = name or host
        self._settings = self._resolve(host, user, port, identity_file, known_hosts, strict_host_key_checking,
                                       proxy_jump, use_ssh_config, ssh_config_path, connect_timeout,
                                       int(keepalive), allow_agent)
        t = self._settings.target
        endpoint = f"{t}" + (f" via {self._settings.jump}" if self._settings.jump else "")
        self._label = endpoint if self.name == host and host == t.hostname else f"{self.name} ({endpoint})"
        self._conn: _Connection | None = None
        self._conn_lock = threading.Lock()

    # ------------------------------------------------------------------ settings
    def _resolve(self, host: str, user: str | None, port: int, identity_file: str | None,
                 known_hosts: str | None, strict: bool, proxy_jump: str | None, use_ssh_config: bool,
                 ssh_config_path: str, connect_timeout: float, keepalive: int, allow_agent: bool) -> _Settings:
        config: paramiko.SSHConfig | None = None
        cfg_path = _expand(ssh_config_path)
        if use_ssh_config:
            if not os.path.isfile(cfg_path):
                raise TransportConfigError(f"use_ssh_config is on but the ssh config file {cfg_path} does not "
                                           "exist", host=host, label=self.name,
                                           hint="create it, set ssh_config_path to the right file, or set "
                                                "use_ssh_config: false")
            try:
                config = paramiko.SSHConfig.from_path(cfg_path)
            except (OSError, paramiko.ConfigParseError, ValueError) as exc:
                raise TransportConfigError(f"cannot read the ssh config file {cfg_path}", host=host,
                                           label=self.name, stderr_tail=str(exc),
                                           hint="fix the file (test it with `ssh -G HOST`)") from exc

        def lookup(alias: str) -> dict[str, Any]:
            return dict(config.lookup(alias)) if config is not None else {}

        def cfg_identities(entry: dict[str, Any]) -> tuple[str, ...]:
            files = []
            for f in entry.get("identityfile", []):
                p = _expand(f)
                if os.path.isfile(p):
                    files.append(p)
                else:
                    log.debug("%s: IdentityFile %s from %s does not exist; skipped", self.name, p, cfg_path)
            return tuple(files)

        entry = lookup(host)
        if "proxycommand" in entry and "proxyjump" not in entry and proxy_jump is None:
            raise TransportConfigError(f"{cfg_path}: Host {host} uses ProxyCommand, which is not supported",
                                       host=host, label=self.name,
                                       hint="use `ProxyJump user@gateway:port` instead (one jump host)")
        hostname = entry.get("hostname", host) if config is not None else host
        t_user = user or entry.get("user") or _local_user()
        t_port = port
        if port == 22 and "port" in entry:
            try:
                t_port = int(entry["port"])
            except ValueError as exc:
                raise TransportConfigError(f"{cfg_path}: Host {host}: Port {entry['port']!r} is not a number",
                                           host=host, label=self.name, hint="fix the Port line") from exc
        if identity_file:
            ids: tuple[str, ...] = (_expand(identity_file),)
        else:
            ids = cfg_identities(entry)
        if known_hosts:
            kh: tuple[str, ...] = (_expand(known_hosts),)
        elif entry.get("userknownhostsfile"):
            kh = tuple(_expand(p) for p in entry["userknownhostsfile"].split())
        else:
            kh = (_expand("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts")

        jump_spec, jump_source = proxy_jump, "proxy_jump"
        if jump_spec is None and entry.get("proxyjump"):
            jump_spec, jump_source = entry["proxyjump"], f"ProxyJump in {cfg_path}"
        jump = None
        if jump_spec and jump_spec.strip().lower() != "none":
            j_user, j_alias, j_port = _parse_jump(jump_spec, jump_source, host)
            j_entry = lookup(j_alias)
            j_hostname = j_entry.get("hostname", j_alias) if config is not None else j_alias
            j_port_final = j_port or (int(j_entry["port"]) if str(j_entry.get("port", "")).isdigit() else 22)
            jump = _Endpoint(j_hostname, j_port_final, j_user or j_entry.get("user") or t_user,
                             cfg_identities(j_entry) or ids)
        return _Settings(_Endpoint(hostname, int(t_port), t_user, ids), jump, kh, bool(strict), allow_agent,
                         float(connect_timeout), keepalive)

    @property
    def label(self) -> str:
        return self._label

    @property
    def hostname(self) -> str:
        """The host actually connected to (after ssh-config resolution)."""
        return self._settings.target.hostname

    @property
    def port(self) -> int:
        return self._settings.target.port

    @property
    def user(self) -> str:
        return self._settings.target.user

    @property
    def connects(self) -> int:
        """How many times the shared connection has been established (1 + reconnects)."""
        return self._connection().connects

    # ------------------------------------------------------------------ connection
    def _connection(self) -> _Connection:
        with self._conn_lock:
            if self._conn is None:
                self._conn = _acquire(self._settings, self._label)
            return self._conn

    def connect(self) -> None:
        """Open the connection now (it is otherwise opened by the first call). Raises like :meth:`run`."""
        self._connection().transport()

    def close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            _release(conn)

    def _lost(self, what: str, exc: BaseException, argv: list[str] | None,
              may_have_run: bool) -> ConnectError | ConnectionLost:
        cls = ConnectionLost if may_have_run else ConnectError
        return cls(f"{what}: the SSH connection was lost", host=self.host, label=self._label,
                   argv=argv, stderr_tail=f"{type(exc).__name__}: {exc}", may_have_run=may_have_run,
                   hint="check the network and the host's sshd; the next call reconnects")

    # ------------------------------------------------------------------ commands
    def _command_line(self, argv: list[str], cwd: str | None, env: dict[str, str], nonce: str) -> str:
        marker = shlex.join(["printf", f"PILOT-PGID-{nonce}=%s\\n"]) + ' "$$" >&2'
        exec_argv = (["env", *(f"{k}={v}" for k, v in env.items())] if env else []) + argv
        body = "exec " + shlex.join(exec_argv)
        if cwd:
            body = "cd -- " + shlex.quote(_remote_path(cwd)) + " && " + body
        return marker + "; " + body

    def _open_exec(self, conn: _Connection, command: str, argv: list[str],
                   timeout: float) -> tuple[paramiko.Channel, paramiko.Transport]:
        for attempt in (1, 2):
            transport = conn.transport()  # (re)connects; a failing reconnect raises a clear error here
            try:
                # on a live connection this takes milliseconds; if it hangs the connection is dead (half-open
                # TCP, frozen peer): give up after the command's own timeout and reconnect once
                chan = transport.open_session(timeout=min(self._settings.connect_timeout, timeout))
            except paramiko.ChannelException as exc:
                raise ConnectError("the host refused a new SSH session", host=self.host, label=self._label,
                                   argv=argv, stderr_tail=f"{exc}",
                                   hint="the host's sshd may limit sessions per connection (MaxSessions); "
                                        "retry later") from exc
            except (paramiko.SSHException, EOFError, OSError) as exc:
                conn.invalidate(transport)
                if attempt == 2:
                    raise self._lost("cannot open a session", exc, argv, False) from exc
                log.warning("%s: cannot open a session (%s); reconnecting once", self._label, exc)
                continue
            try:
                chan.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                chan.close()
                if transport.is_active():
                    raise ConnectError("the host refused to execute the command", host=self.host,
                                       label=self._label, argv=argv, stderr_tail=str(exc),
                                       hint="check the account's login shell and sshd's logs") from exc
                conn.invalidate(transport)
                if attempt == 2:
                    raise self._lost("cannot start the command", exc, argv, False) from exc
                log.warning("%s: connection lost while starting a command; reconnecting once", self._label)
                continue
            return chan, transport
        raise AssertionError("unreachable")

    def _execute(self, argv: list[str], timeout: float, stdin: bytes | None, cwd: str | None,
                 env: dict[str, str]) -> CompletedCommand:
        conn = self._connection()
        nonce = secrets.token_hex(8)
        command = self._command_line(argv, cwd, env, nonce)
        start = time.monotonic()
        if not conn.channels.acquire(timeout=timeout):
            raise CommandTimeout(f"no free SSH session within {timeout:g} s ({MAX_CHANNELS_PER_CONNECTION} "
                                 "commands already running on this connection)", host=self.host,
                                 label=self._label, argv=argv, hint="run fewer commands at once")
        waited = time.monotonic() - start
        try:
            # (re)connecting is bounded by connect_timeout, not by the command's timeout
            chan, transport = self._open_exec(conn, command, argv, max(timeout - waited, 0.5))
            try:
                return self._collect(conn, chan, transport, argv, timeout, max(timeout - waited, 0.001), stdin,
                                     nonce, start)
            finally:
                chan.close()
        finally:
            conn.channels.release()

    def _collect(self, conn: _Connection, chan: paramiko.Channel, transport: paramiko.Transport,
                 argv: list[str], timeout: float, remaining: float, stdin: bytes | None, nonce: str,
                 start: float) -> CompletedCommand:
        deadline = time.monotonic() + remaining
        out, err = bytearray(), bytearray()
        marker = re.compile(rb"PILOT-PGID-" + nonce.encode() + rb"=(\d+)\n")
        pgid: int | None = None
        view = memoryview(stdin) if stdin else None
        sent = 0
        if view is None:
            chan.shutdown_write()
        exited_at: float | None = None
        delay = 0.001
        while True:
            busy = False
            if view is not None and chan.send_ready():
                try:
                    sent += chan.send(view[sent:sent + _CHUNK])
                except OSError:  # the command closed its stdin / exited: the rest is not wanted
                    sent = len(view)
                busy = True
                if sent >= len(view):
                    view = None
                    chan.shutdown_write()
            while chan.recv_ready():
                out += chan.recv(_CHUNK)
                busy = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
                busy = True
            if pgid is None and err:
                m = marker.search(err)
                if m:
                    pgid = int(m.group(1))
                    del err[m.start():m.end()]
            if chan.exit_status_ready() and exited_at is None:
                exited_at = time.monotonic()
            if chan.closed or (exited_at is not None and chan.eof_received):
                if not (chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                continue
            now = time.monotonic()
            if exited_at is not None and now - exited_at > EXIT_LINGER_SECONDS:
                log.info("%s: %s exited but its output stayed open (a background process holds it); "
                         "returning what arrived", self._label, argv[0])
                break
            if not transport.is_active():
                conn.invalidate(transport)
                raise self._lost("the command did not complete", EOFError("connection closed"), argv, True)
            if now >= deadline:
                outcome = self._kill_remote(conn, transport, pgid)
                self._strip_marker(err, marker)
                raise CommandTimeout(f"command did not finish within {timeout:g} s ({outcome})", host=self.host,
                                     label=self._label, argv=argv, stderr_tail=_decode(err), may_have_run=True,
                                     hint="raise the timeout for this command, or find out why it hangs "
                                          "(an overloaded host, an unresponsive scheduler daemon)")
            if busy:
                delay = 0.001
            else:
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        if pgid is None:
            self._strip_marker(err, marker)
        if chan.exit_status == -1:
            # No exit-status: the command was killed by a signal (sshd then sends "exit-signal", which
            # paramiko does not parse) -- or the connection died, which closes every channel shortly before
            # the transport reports itself inactive. Tell the two apart.
            waited = 0.0
            while transport.is_active() and waited < (0.05 if chan.eof_received else 0.5):
                time.sleep(0.01)
                waited += 0.01
            if not transport.is_active():
                conn.invalidate(transport)
                raise self._lost("the command did not complete", EOFError("connection closed"), argv, True)
        rc = chan.exit_status
        return CompletedCommand(argv, rc, _decode(out), _decode(err), self.host, time.monotonic() - start)

    @staticmethod
    def _strip_marker(err: bytearray, marker: re.Pattern[bytes]) -> None:
        m = marker.search(err)
        if m:
            del err[m.start():m.end()]

    def _kill_remote(self, conn: _Connection, transport: paramiko.Transport, pgid: int | None) -> str:
        """Stop a timed-out command's process group through a second channel; returns what happened."""
        if pgid is None:
            return "its process group id never arrived, so nothing was killed on the host; the channel was closed"
        polls = max(1, int(self.kill_grace * 10))
        cmd = shlex.join(["sh", "-c", _KILL_SCRIPT, "pilot-kill", str(pgid), str(polls)])
        try:
            # short: the script returns at once; if the host does not answer, the connection is likely dead
            chan = transport.open_session(timeout=KILL_REQUEST_TIMEOUT)
            try:
                chan.settimeout(KILL_REQUEST_TIMEOUT)
                chan.exec_command(cmd)
                chan.shutdown_write()
                answer = chan.makefile("rb").read().decode(errors="replace")
                rc = chan.recv_exit_status()
            finally:
                chan.close()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            conn.invalidate(transport)  # unresponsive: the next call opens a fresh connection
            return (f"could not kill its process group {pgid} on the host ({type(exc).__name__}: {exc}); "
                    "it may still be running")
        if rc != 0:
            return f"killing its process group {pgid} failed with exit code {rc}; it may still be running"
        if "gone" in answer:
            return f"its process group {pgid} had already ended"
        return (f"SIGTERM sent to its process group {pgid} on the host, SIGKILL follows after "
                f"{self.kill_grace:g} s if any of it is still alive")

    # ------------------------------------------------------------------ SFTP
    def _sftp_call(self, what: str, path: str, fn: Callable[[paramiko.SFTPClient], _T]) -> _T:
        conn = self._connection()
        for attempt in (1, 2):
            sftp, transport = conn.sftp()
            try:
                with conn.sftp_lock:
                    return fn(sftp)
            except TransportError:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if transport.is_active() and isinstance(exc, OSError) and not isinstance(exc, socket.timeout):
                    raise RemotePathError(f"cannot {what} {path}: {exc.strerror or exc}", path=path,
                                          errno_value=exc.errno, host=self.host, label=self._label,
                                          stderr_tail=f"{type(exc).__name__}: {exc}",
                                          hint="check that the path exists and that "
                                               f"{self._settings.target.user} may access it") from exc
                conn.invalidate(transport)
                if attempt == 2:
                    raise self._lost(f"cannot {what} {path}", exc, None, False) from exc
                log.warning("%s: connection lost during SFTP (%s); reconnecting once", self._label, exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str, mode: int) -> None:
        path = path.rstrip("/") or "/"
        parts = []
        p = path
        while p not in ("", "/", "."):
            try:
                st = sftp.stat(p)
            except FileNotFoundError:
                parts.append(p)
                p = posixpath.dirname(p)
                continue
            if not stat_module.S_ISDIR(st.st_mode or 0):
                raise NotADirectoryError(errno.ENOTDIR, f"{p} exists and is not a directory")
            break
        for d in reversed(parts):
            try:
                sftp.mkdir(d, mode)
            except OSError:
                st = sftp.stat(d)  # created meanwhile by someone else?
                if not stat_module.S_ISDIR(st.st_mode or 0):
                    raise

    def put(self, data_or_path: bytes | str | os.PathLike[str], remote_path: str, mode: int = 0o644) -> None:
        rp = _remote_path(remote_path)
        parent, base = posixpath.split(rp)
        if not base:
            raise ValueError(f"remote_path {remote_path!r} names a directory, not a file")
        is_data = isinstance(data_or_path, (bytes, bytearray, memoryview))
        if not is_data and not os.path.isfile(data_or_path):  # type: ignore[arg-type]
            raise FileNotFoundError(errno.ENOENT, "local file to put does not exist", str(data_or_path))

        def do(sftp: paramiko.SFTPClient) -> int:
            if parent:
                self._sftp_makedirs(sftp, parent, 0o755)
            tmp = posixpath.join(parent, f".{base}.pilot-tmp-{secrets.token_hex(6)}")
            size = 0
            try:
                with sftp.open(tmp, "wb") as f:
                    f.chmod(mode)  # before any content arrives: a 0600 secret is never readable by others
                    f.set_pipelined(True)
                    if is_data:
                        buf = memoryview(data_or_path)  # type: ignore[arg-type]
                        for i in range(0, len(buf), _CHUNK):
                            f.write(buf[i:i + _CHUNK])
                        size = len(buf)
                    else:
                        with open(data_or_path, "rb") as src:  # type: ignore[arg-type]
                            while chunk := src.read(_CHUNK):
                                f.write(chunk)
                                size += len(chunk)
                try:
                    sftp.posix_rename(tmp, rp)  # atomic replace (OpenSSH extension, since 2008)
                except OSError as exc:
                    if "unsupported" not in str(exc).lower():
                        raise
                    # a server without posix-rename: plain SFTP rename refuses an existing target, so
                    # remove it first (NOT atomic: readers may briefly find no file)
                    log.warning("%s: the SFTP server has no posix-rename; replacing %s non-atomically",
                                self._label, rp)
                    try:
                        sftp.remove(rp)
                    except FileNotFoundError:
                        pass
                    sftp.rename(tmp, rp)
                tmp = ""
            finally:
                if tmp:
                    try:
                        sftp.remove(tmp)
                    except (OSError, paramiko.SSHException, EOFError) as exc:
                        log.debug("%s: could not remove temporary file %s: %s", self._label, tmp, exc)
            return size

        size = self._sftp_call("write", remote_path, do)
        log.debug("%s: put %d bytes to %s (mode %o)", self._label, size, remote_path, mode)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        rp = _remote_path(remote_path)
        dest = Path(local_path).expanduser()
        dest.parent.mkdir(parents=True, exist_ok=True)

        def do(sftp: paramiko.SFTPClient) -> int:
            st = sftp.stat(rp)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".pilot-tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), stat_module.S_IMODE(st.st_mode or 0o600))
                    size = sftp.getfo(rp, out)
                if st.st_size is not None and size != st.st_size:
                    raise OSError(errno.EIO, f"copied {size} bytes but the remote file has {st.st_size}")
                os.replace(tmp, dest)
                tmp = ""
            finally:
                if tmp:
                    os.unlink(tmp)
            return size

        size = self._sftp_call("read", remote_path, do)
        log.debug("%s: got %d bytes from %s into %s", self._label, size, remote_path, dest)

    def stat(self, path: str) -> FileStat:
        st = self._sftp_call("stat", path, lambda sftp: sftp.stat(_remote_path(path)))
        m = st.st_mode or 0
        return FileStat(int(st.st_size or 0), float(st.st_mtime or 0), stat_module.S_IMODE(m),
                        stat_module.S_ISDIR(m))

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._sftp_call("create directory", path, lambda sftp: self._sftp_makedirs(sftp, _remote_path(path), mode))

    def remove(self, path: str) -> None:
        def do(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(_remote_path(path))
            except FileNotFoundError:
                pass

        self._sftp_call("remove", path, do)

    def sha256(self, path: str) -> str:
        """SHA-256 computed on the host with ``sha256sum`` (no transfer); over SFTP if that is missing."""
        argv = ["sha256sum", "--", _remote_path(path)]
        res = self.run(argv, timeout=600)
        if res.returncode == 0:
            m = _SHA256_HEX.match(res.stdout)
            if m:
                return m.group(1).lower()
        if res.returncode != 127:
            self.stat(path)  # raises RemotePathError for a missing / unreadable file
            raise TransportError("sha256sum failed", host=self.host, label=self._label, argv=argv,
                                 returncode=res.returncode, stderr_tail=res.stderr,
                                 hint="check that the file is readable")

        def do(sftp: paramiko.SFTPClient) -> str:
            h = hashlib.sha256()
            with sftp.open(_remote_path(path), "rb") as f:
                f.prefetch()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h.hexdigest()

        return self._sftp_call("read", path, do)
