"""The transport interface: :class:`Transport` (run argument lists, move files on one host) and its results.

:meth:`Transport.run` validates the argument list and the environment, then hands them to the implementation
(:class:`~pilot.transport.local.LocalTransport`, :class:`~pilot.transport.ssh.SSHTransport`); a non-zero exit
code is a :class:`CompletedCommand`, only transport failures raise.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pilot.transport.errors import RemotePathError, TransportConfigError, TransportError, display

if TYPE_CHECKING:
    from typing_extensions import Self

# every module of the room logs as "pilot.transport" (one logger name for the whole transport)
log = logging.getLogger("pilot.transport")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
        argv = check_argv(argv)
        env = check_env(env, argv, self.host)
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        result = self._execute(argv, float(timeout), data, cwd, env)
        log.debug("%s: %s%s -> rc=%d in %.2fs", self.label, display(argv),
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

    def check_login(self) -> str:
        """Whether the login this transport needs is open: what it says, or :class:`LoginRequired`. Only a
        login a person opens (one-time passwords) can lapse; the others have nothing to check."""
        return "no login to check"

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:  # noqa: B027 -- a no-op by default (LocalTransport holds nothing to release)
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


def check_argv(argv: Any) -> list[str]:
    """``argv`` as a list of str, or a TypeError / ValueError that says how to write it."""
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


def check_env(env: dict[str, str] | None, argv: list[str], host: str) -> dict[str, str]:
    """``env`` checked for names ``env K=V`` can pass (:class:`TransportConfigError` otherwise)."""
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


def decode(b: bytes | bytearray) -> str:
    """Command output as text (UTF-8; other bytes, which scheduler output may hold, are replaced)."""
    return bytes(b).decode("utf-8", errors="replace")

