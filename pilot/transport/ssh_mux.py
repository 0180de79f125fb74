"""Commands and files through the login a person opened (an OpenSSH ControlMaster): :class:`ControlMasterTransport`.

For a cluster with ``control_path`` (one-time-password logins, :mod:`pilot.transport.ssh_master`). The transport
never logs in itself (:func:`~pilot.transport.ssh_master.client_argv`); a call that finds no master raises
:class:`LoginRequired`, which the manager shows as "needs login" while the other clusters go on.

Commands run as with :class:`~pilot.transport.ssh.SSHTransport`: the same command line and the same process-group
kill on timeout (:func:`~pilot.transport.ssh_commands.command_line`, :data:`KILL_SCRIPT`). Files move through small
shell commands (``cat``, ``stat``, ``sha256sum``): an SFTP session would need a subsystem request of its own.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path

from pilot.transport.base import CompletedCommand, FileStat, Transport, decode
from pilot.transport.errors import (
    CommandTimeout,
    ConnectError,
    ConnectionLost,
    LoginRequired,
    RemotePathError,
    TransportError,
)
from pilot.transport.ssh_base import home_relative
from pilot.transport.ssh_commands import KILL_REQUEST_TIMEOUT, KILL_SCRIPT, command_line
from pilot.transport.ssh_master import MasterSettings, client_argv, master_alive, no_ssh_client

log = logging.getLogger("pilot.transport")

# put: parents 0755; the content goes into a file only its owner can read, which gets its mode and its name at
# the end (a mode without owner write works too); a failure removes the half-written file
_PUT_SCRIPT = ('set -e; umask 022; mkdir -p -- "$1"; trap \'rm -f -- "$2"\' EXIT; (umask 077; cat >"$2"); '
               'chmod "$4" -- "$2"; mv -f -- "$2" "$3"; trap - EXIT')
#: The C locale for file commands: their error messages are matched (No such file, Permission denied).
_C_LOCALE = {"LC_ALL": "C"}


class ControlMasterTransport(Transport):
    """A :class:`~pilot.transport.base.Transport` over a ControlMaster socket (see the module docstring)."""

    def __init__(self, settings: MasterSettings, name: str | None = None, sftp_timeout: float = 120) -> None:
        self.settings = settings
        self.host = settings.host
        self.name = name or settings.host
        self.sftp_timeout = float(sftp_timeout)   # file operations: the same bound as over SFTP

    @property
    def label(self) -> str:
        who = f"{self.settings.user}@" if self.settings.user else ""
        return f"{self.name} ({who}{self.host}:{self.settings.port} via {self.settings.control_path})"

    def check_login(self) -> str:
        """What the master says of itself (``Master running (pid=N)``); :class:`LoginRequired` when none answers."""
        alive, said = master_alive(self.settings)
        if not alive:
            raise self._login_required(["ssh", "-O", "check"], said)
        return said

    # ------------------------------------------------------------------ commands
    def _execute(self, argv: list[str], timeout: float, stdin: bytes | None, cwd: str | None,
                 env: dict[str, str]) -> CompletedCommand:
        nonce = secrets.token_hex(8)
        rc, out, err, took = self._call(argv, command_line(argv, cwd, env, nonce), timeout, stdin, nonce)
        return CompletedCommand(argv, rc, decode(out), decode(err), self.host, took)

    def _call(self, argv: list[str], line: str, timeout: float, stdin: bytes | None,
              nonce: str) -> tuple[int, bytes, bytes, float]:
        """Run one command line through the master: (exit code, stdout, stderr without the marker, seconds)."""
        start = time.monotonic()
        marker = re.compile(rb"PILOT-PGID-" + nonce.encode() + rb"=(\d+)\n")
        try:
            proc = subprocess.Popen(client_argv(self.settings) + [line], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as exc:
            raise no_ssh_client(self.host, self.label) from exc
        try:
            out, err = proc.communicate(stdin or b"", timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            m = marker.search(exc.stderr or b"")
            outcome = self._kill_remote(int(m.group(1)) if m else None)
            self._reap(proc)
            raise CommandTimeout(f"command did not finish within {timeout:g} s ({outcome})", host=self.host,
                                 label=self.label, argv=argv, may_have_run=True,
                                 hint="raise the timeout for this command, or find out why it hangs") from None
        m = marker.search(err)
        if m is None and proc.returncode == 255:
            raise self._no_master(argv, decode(err))
        if m is not None:
            err = err[:m.start()] + err[m.end():]
            if proc.returncode == 255 and not master_alive(self.settings)[0]:
                raise ConnectionLost("the login (ControlMaster) ended while the command ran", host=self.host,
                                     label=self.label, argv=argv, stderr_tail=decode(err), may_have_run=True,
                                     hint=f"log in again with `pilot connect {self.name}`")
        return proc.returncode, out, err, time.monotonic() - start

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        """Kill the local ssh client of a timed-out call and collect it (bounded: its pipes are closed after)."""
        proc.kill()
        try:
            proc.communicate(timeout=KILL_REQUEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def _no_master(self, argv: list[str], stderr: str) -> TransportError:
        """ssh itself failed before the command started: no master (:class:`LoginRequired`), or one that failed."""
        alive, said = master_alive(self.settings)
        if not alive:
            return self._login_required(argv, said)
        return ConnectError("ssh failed through the open login (ControlMaster)", host=self.host, label=self.label,
                            argv=argv, stderr_tail=stderr, hint="check `ssh -O check` and the master's log")

    def _login_required(self, argv: list[str], said: str) -> LoginRequired:
        return LoginRequired("needs login: no open login at the control path", host=self.host, label=self.label,
                             argv=argv, stderr_tail=said,
                             hint=f"log in with `pilot connect {self.name}` (it asks for your one-time code); "
                                  "the manager uses that login from its next cycle on")

    def _kill_remote(self, pgid: int | None) -> str:
        if pgid is None:
            return "its process group id never arrived, so nothing was killed on the host"
        polls = max(1, int(self.kill_grace * 10))
        line = shlex.join(["sh", "-c", KILL_SCRIPT, "pilot-kill", str(pgid), str(polls)])
        try:
            r = subprocess.run(client_argv(self.settings) + [line], capture_output=True,
                               timeout=KILL_REQUEST_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"the request to kill its process group {pgid} got no answer; it may still be running"
        if b"gone" in r.stdout:
            return f"its process group {pgid} had already ended"
        if b"term" in r.stdout:
            return (f"SIGTERM sent to its process group {pgid} on the host, SIGKILL follows after "
                    f"{self.kill_grace:g} s if any of it is still alive")
        return (f"killing its process group {pgid} failed (exit code {r.returncode}: "
                f"{decode(r.stderr).strip()[-200:]}); it may still be running")

    # ------------------------------------------------------------------ files
    def _file_call(self, what: str, path: str, argv: list[str], stdin: bytes | None = None) -> bytes:
        """Run a file command; a failure becomes :class:`RemotePathError` with the errno its stderr names."""
        nonce = secrets.token_hex(8)
        rc, out, err, _ = self._call(argv, command_line(argv, None, _C_LOCALE, nonce), self.sftp_timeout, stdin,
                                     nonce)
        if rc != 0:
            text = decode(err).strip()
            code = errno.ENOENT if "No such file" in text else errno.EACCES if "ermission denied" in text else None
            raise RemotePathError(f"{what} {path} failed", path=path, errno_value=code, host=self.host,
                                  label=self.label, argv=argv, returncode=rc, stderr_tail=text,
                                  hint="check the path and its permissions on the host")
        return out

    def put(self, data_or_path: bytes | str | os.PathLike[str], remote_path: str, mode: int = 0o644) -> None:
        data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
        path = home_relative(remote_path)
        parent = os.path.dirname(path) or "."
        tmp = os.path.join(parent, f".{os.path.basename(path)}.pilot-{secrets.token_hex(4)}")
        self._file_call("writing", remote_path, ["sh", "-c", _PUT_SCRIPT, "pilot-put", parent, tmp, path,
                                                  format(mode & 0o7777, "o")], stdin=data)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        st = self.stat(remote_path)
        data = self._file_call("reading", remote_path, ["cat", "--", home_relative(remote_path)])
        if len(data) != st.size:
            raise TransportError(f"copying {remote_path}: {len(data)} bytes arrived of {st.size}", host=self.host,
                                 label=self.label, retryable=True, hint="the file changed while it was copied?")
        local = os.fspath(local_path)
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        tmp = f"{local}.pilot-{secrets.token_hex(4)}"
        Path(tmp).write_bytes(data)
        os.chmod(tmp, st.mode)
        os.replace(tmp, local)

    def stat(self, path: str) -> FileStat:
        out = self._file_call("stat", path, ["stat", "-L", "-c", "%s %Y %f", "--", home_relative(path)])
        size, mtime, raw = decode(out).split()
        st_mode = int(raw, 16)
        return FileStat(int(size), float(mtime), st_mode & 0o7777, is_dir=(st_mode & 0o170000) == 0o040000)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._file_call("making", path, ["mkdir", "-p", "-m", format(mode & 0o7777, "o"), "--",
                                         home_relative(path)])

    def remove(self, path: str) -> None:
        self._file_call("removing", path, ["rm", "-f", "--", home_relative(path)])

    def sha256(self, path: str) -> str:
        # the file on stdin: sha256sum escapes a name with a backslash or newline in its output line
        out = self._file_call("hashing", path, ["sh", "-c", 'sha256sum <"$1"', "pilot-sha", home_relative(path)])
        return decode(out).split()[0]
