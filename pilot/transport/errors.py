"""The transport's errors: what failed, where, the command, its stderr, what to try, and whether retrying helps.

Every failure of the transport (not of the command: a non-zero exit code is a result) raises
:class:`TransportError` or a subclass; ``retryable`` says whether trying again later can help and
``may_have_run`` whether a command may have reached the host although no result came back.
"""

from __future__ import annotations

import shlex
from typing import Any

#: How much of a command's stderr an error message carries (characters, then at most this many lines).
STDERR_TAIL_CHARS = 2000
STDERR_TAIL_LINES = 15


def tail(text: str | None) -> str:
    """The end of ``text`` that a message carries (:data:`STDERR_TAIL_CHARS`, then :data:`STDERR_TAIL_LINES`)."""
    if not text:
        return ""
    text = text[-STDERR_TAIL_CHARS:]
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def display(argv: list[str] | None) -> str:
    """How messages and logs show a command (for people only: the command line that runs on a host is built
    in :mod:`pilot.transport.ssh_commands`)."""
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
        self.stderr_tail = tail(stderr_tail)
        self.retryable = self.default_retryable if retryable is None else retryable
        self.hint = hint
        self.may_have_run = may_have_run
        lines = [f"{what} on {label or host}"]
        if self.argv is not None:
            lines.append(f"  command: {display(self.argv)}")
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


class LoginRequired(ConnectError):
    """A cluster that needs a person's login (a one-time password) has no open login: nothing was sent.

    Retryable: once someone runs ``pilot connect CLUSTER`` the next call goes through. Its own class so that the
    manager can tell "needs login" (a person must act, at once) from "unreachable" (wait and retry).
    """


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

