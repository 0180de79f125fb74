"""Running argument lists over SSH: the one place where an argument list becomes a shell command line.

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

import logging
import re
import secrets
import shlex
import time

import paramiko

from pilot.transport.base import CompletedCommand, decode
from pilot.transport.errors import CommandTimeout, ConnectError
from pilot.transport.ssh_base import CHUNK, SSHTransportBase, home_relative
from pilot.transport.ssh_pool import MAX_CHANNELS_PER_CONNECTION, Connection

log = logging.getLogger("pilot.transport")

#: After a remote command exited, how long to wait for the end of its output (a background process that
#: inherited stdout would otherwise keep the channel open for ever, as with the ``ssh`` client).
EXIT_LINGER_SECONDS = 2.0
#: Seconds allowed for the request that kills a timed-out command's process group.
KILL_REQUEST_TIMEOUT = 3.0

# Runs on the remote host to stop a timed-out command's process group: TERM now, then a detached watchdog
# sends KILL if the group still exists after $2 tenths of a second. The script itself returns at once, so
# the timed-out call returns within its timeout plus one round trip. Arguments: $1 = process group id,
# $2 = number of 0.1 s polls before KILL. Prints "term" (signal sent) or "gone" (group already ended).
KILL_SCRIPT = (
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


def command_line(argv: list[str], cwd: str | None, env: dict[str, str], nonce: str) -> str:
    """The line the login shell runs for ``argv`` (see the module's docstring); every element is quoted."""
    marker = shlex.join(["printf", f"PILOT-PGID-{nonce}=%s\\n"]) + ' "$$" >&2'
    exec_argv = (["env", *(f"{k}={v}" for k, v in env.items())] if env else []) + argv
    body = "exec " + shlex.join(exec_argv)
    if cwd:
        body = "cd -- " + shlex.quote(home_relative(cwd)) + " && " + body
    return marker + "; " + body


class SSHCommands(SSHTransportBase):
    """:meth:`~pilot.transport.base.Transport.run` over SSH: one exec channel per command, at most
    :data:`~pilot.transport.ssh_pool.MAX_CHANNELS_PER_CONNECTION` at once on the shared connection."""

    def _open_exec(self, conn: Connection, command: str, argv: list[str],
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
        command = command_line(argv, cwd, env, nonce)
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

    def _collect(self, conn: Connection, chan: paramiko.Channel, transport: paramiko.Transport,
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
                    sent += chan.send(view[sent:sent + CHUNK])  # type: ignore[arg-type]  # any buffer works
                except OSError:  # the command closed its stdin / exited: the rest is not wanted
                    sent = len(view)
                busy = True
                if sent >= len(view):
                    view = None
                    chan.shutdown_write()
            while chan.recv_ready():
                out += chan.recv(CHUNK)
                busy = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
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
                                     label=self._label, argv=argv, stderr_tail=decode(err), may_have_run=True,
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
            self._raise_if_connection_died(conn, chan, transport, argv)
        rc = chan.exit_status
        return CompletedCommand(argv, rc, decode(out), decode(err), self.host, time.monotonic() - start)

    def _raise_if_connection_died(self, conn: Connection, chan: paramiko.Channel, transport: paramiko.Transport,
                                  argv: list[str]) -> None:
        """The channel closed without an exit status: tell a command killed by a signal from a dead connection.

        No exit-status: the command was killed by a signal (sshd then sends "exit-signal", which paramiko
        does not parse) -- or the connection died, which closes every channel shortly before the transport
        reports itself inactive. Tell the two apart.
        """
        waited = 0.0
        while transport.is_active() and waited < (0.05 if chan.eof_received else 0.5):
            time.sleep(0.01)
            waited += 0.01
        if not transport.is_active():
            conn.invalidate(transport)
            raise self._lost("the command did not complete", EOFError("connection closed"), argv, True)

    @staticmethod
    def _strip_marker(err: bytearray, marker: re.Pattern[bytes]) -> None:
        m = marker.search(err)
        if m:
            del err[m.start():m.end()]

    def _kill_remote(self, conn: Connection, transport: paramiko.Transport, pgid: int | None) -> str:
        """Stop a timed-out command's process group through a second channel; returns what happened."""
        if pgid is None:
            return "its process group id never arrived, so nothing was killed on the host; the channel was closed"
        polls = max(1, int(self.kill_grace * 10))
        cmd = shlex.join(["sh", "-c", KILL_SCRIPT, "pilot-kill", str(pgid), str(polls)])
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
