"""Commands and files on this machine: :class:`LocalTransport` (subprocess with argument lists, never a shell)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import stat as stat_module
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pilot.transport.base import CompletedCommand, FileStat, Transport, decode
from pilot.transport.errors import CommandTimeout, RemotePathError

log = logging.getLogger("pilot.transport")


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
                                 label=self.label, argv=argv, stderr_tail=decode(err), may_have_run=True,
                                 hint="raise the timeout for this command, or find out why it hangs "
                                      "(an overloaded host, an unresponsive scheduler daemon)") from None
        return CompletedCommand(argv, proc.returncode, decode(out), decode(err), self.host,
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
