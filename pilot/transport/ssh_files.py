"""Files over SSH: SFTP on the shared connection, one operation at a time, reconnecting once when it was lost.

Files are written atomically (a temporary name in the target directory, then ``posix-rename``) with their
mode set before any content arrives; reading checks the size; ``sha256`` runs ``sha256sum`` on the host.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import re
import secrets
import socket
import stat as stat_module
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko

from pilot.transport.base import FileStat
from pilot.transport.errors import CommandTimeout, RemotePathError, TransportError
from pilot.transport.ssh_base import CHUNK, SSHTransportBase, home_relative

log = logging.getLogger("pilot.transport")

_SHA256_HEX = re.compile(r"\\?([0-9a-fA-F]{64})\b")
_T = TypeVar("_T")


class Progress:
    """When an SFTP call last moved data. Its deadline counts from there: a large transfer that keeps moving is
    no hang, however long it takes; one that stops moving for :attr:`SSHFiles.sftp_timeout` seconds is."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self, *_: object) -> None:
        """Data moved (also usable as paramiko's ``callback(done, total)``)."""
        self.last = time.monotonic()


def _watch(chan: paramiko.Channel | None, limit: float, progress: Progress, expired: threading.Event,
           done: threading.Event) -> None:
    """Close the channel (which ends every wait on it) once ``limit`` seconds passed without progress."""
    while True:
        left = progress.last + limit - time.monotonic()
        if left <= 0:
            expired.set()
            if chan is not None:
                chan.close()
            return
        if done.wait(left):
            return


class SSHFiles(SSHTransportBase):
    """The file operations of :class:`~pilot.transport.base.Transport` over SFTP."""

    def _sftp_call(self, what: str, path: str, fn: Callable[[paramiko.SFTPClient], _T],
                   progress: Progress | None = None) -> _T:
        """Run ``fn`` on the shared SFTP session within :attr:`sftp_timeout` seconds, reconnecting once when the
        connection was lost.

        The deadline covers the whole call (opening the session, waiting for it, every request), counted from
        the last time ``progress`` was touched when ``fn`` moves data: a watchdog thread closes the session's
        channel when it expires, and each single wait gives up after the same time. A call that hit the
        deadline is not repeated (it would hang again): the session is closed, the next call opens a new one,
        and :class:`~pilot.transport.errors.CommandTimeout` says what hung.
        """
        conn = self._connection()
        limit = float(self.sftp_timeout)
        progress = progress or Progress()
        for attempt in (1, 2):
            expired, done = threading.Event(), threading.Event()
            sftp: paramiko.SFTPClient | None = None
            transport: paramiko.Transport | None = None
            progress.touch()
            try:
                sftp, transport = conn.sftp(limit)
                left = progress.last + limit - time.monotonic()
                if not conn.sftp_lock.acquire(timeout=max(left, 0.001)):
                    raise TimeoutError("another SFTP operation on this connection did not end")
                watchdog = threading.Thread(target=_watch, args=(sftp.get_channel(), limit, progress, expired, done),
                                            name=f"sftp-deadline-{self.name}", daemon=True)
                watchdog.start()
                try:
                    return fn(sftp)
                finally:
                    done.set()
                    conn.sftp_lock.release()
            except TransportError:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if expired.is_set() or isinstance(exc, socket.timeout):
                    if sftp is not None:
                        conn.drop_sftp(sftp)
                    raise self._sftp_timeout(what, path, limit, exc) from exc
                if transport is None:   # the session did not open, and the connection broke meanwhile
                    raise self._lost(f"cannot {what} {path}", exc, None, False) from exc
                if transport.is_active() and isinstance(exc, OSError):
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

    def _sftp_timeout(self, what: str, path: str, limit: float, exc: BaseException) -> CommandTimeout:
        return CommandTimeout(f"no answer from the SFTP server within {limit:g} s to {what} {path}",
                              host=self.host, label=self._label, stderr_tail=f"{type(exc).__name__}: {exc}",
                              hint=f"the file system of {path} on the host may hang (try `ls` on it there); "
                                   "the SFTP session was closed and the next call opens a new one")

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
        rp = home_relative(remote_path)
        parent, base = posixpath.split(rp)
        if not base:
            raise ValueError(f"remote_path {remote_path!r} names a directory, not a file")
        is_data = isinstance(data_or_path, (bytes, bytearray, memoryview))
        if not is_data and not os.path.isfile(data_or_path):
            raise FileNotFoundError(errno.ENOENT, "local file to put does not exist", str(data_or_path))

        progress = Progress()

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
                        for i in range(0, len(buf), CHUNK):
                            f.write(buf[i:i + CHUNK])
                            progress.touch()
                        size = len(buf)
                    else:
                        with open(data_or_path, "rb") as src:
                            while chunk := src.read(CHUNK):
                                f.write(chunk)
                                progress.touch()
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

        size = self._sftp_call("write", remote_path, do, progress)
        log.debug("%s: put %d bytes to %s (mode %o)", self._label, size, remote_path, mode)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        rp = home_relative(remote_path)
        dest = Path(local_path).expanduser()
        dest.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress()

        def do(sftp: paramiko.SFTPClient) -> int:
            st = sftp.stat(rp)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".pilot-tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), stat_module.S_IMODE(st.st_mode or 0o600))
                    size = sftp.getfo(rp, out, callback=progress.touch)
                if st.st_size is not None and size != st.st_size:
                    raise OSError(errno.EIO, f"copied {size} bytes but the remote file has {st.st_size}")
                os.replace(tmp, dest)
                tmp = ""
            finally:
                if tmp:
                    os.unlink(tmp)
            return size

        size = self._sftp_call("read", remote_path, do, progress)
        log.debug("%s: got %d bytes from %s into %s", self._label, size, remote_path, dest)

    def stat(self, path: str) -> FileStat:
        st = self._sftp_call("stat", path, lambda sftp: sftp.stat(home_relative(path)))
        m = st.st_mode or 0
        return FileStat(int(st.st_size or 0), float(st.st_mtime or 0), stat_module.S_IMODE(m),
                        stat_module.S_ISDIR(m))

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._sftp_call("create directory", path, lambda sftp: self._sftp_makedirs(sftp, home_relative(path), mode))

    def remove(self, path: str) -> None:
        def do(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(home_relative(path))
            except FileNotFoundError:
                pass

        self._sftp_call("remove", path, do)

    def sha256(self, path: str) -> str:
        """SHA-256 computed on the host with ``sha256sum`` (no transfer); over SFTP if that is missing."""
        argv = ["sha256sum", "--", home_relative(path)]
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
            with sftp.open(home_relative(path), "rb") as f:
                f.prefetch()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    progress.touch()
            return h.hexdigest()

        progress = Progress()
        return self._sftp_call("read", path, do, progress)
