"""The manager daemon's lock and pidfile: one manager per configuration directory.

(One manager per LaunchPad, across config dirs and hosts, is the lease of :mod:`pilot.manager.lease`, taken
after this lock; the lock stays because ``stop`` and ``status`` find the process through its pidfile.)

Two managers on one LaunchPad would each count the other's pilots as missing and double the submissions, so
``pilot manager run`` takes an exclusive ``flock`` on ``CONFIG_DIR/manager.lock`` for its whole life and writes
its pid next to it. The lock, not the pidfile, is the truth (a crash releases it); the pidfile lets ``stop`` and
``status`` find the process, and :func:`is_our_manager` guards against a reused pid.

:class:`ClusterFileWatcher` lets the daemon live on through a fix of a cluster file: a changed
``clusters/NAME.yaml`` is read again at the next cycle (:mod:`pilot.manager.holds` ends a hold on it).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pilot.configdir import open_private, pilot_command, private_dir, write_private

if TYPE_CHECKING:
    from pilot.config import ClusterConfig

log = logging.getLogger("pilot.manager")


class ManagerRunningError(RuntimeError):
    """Another manager holds the lock of this configuration directory."""


def lock_paths(config_dir: Path) -> tuple[Path, Path]:
    """The lock file and the pidfile of the manager of ``config_dir``."""
    return config_dir / "manager.lock", config_dir / "manager.pid"


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile``, or None if it is missing or unreadable."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_manager(pid: int) -> bool:
    """True if ``pid`` is alive and is a ``pilot ... manager run`` process (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "manager" in args and "run" in args


def acquire_lock(config_dir: Path, write_pid: bool = True) -> IO[str]:
    """Take the one-manager-per-config-dir lock and write our pid; keep the returned file open while running.

    ``write_pid`` False: the caller writes the pidfile (:func:`write_pidfile`) once it also holds the LaunchPad's
    lease, so that ``pilot manager start``, which waits for the pidfile, never reports a refused manager as started.

    Raises
    ------
    ManagerRunningError
        another process holds the lock (its pid in the message when the pidfile names it).
    """
    lock_path, pidfile = lock_paths(config_dir)
    private_dir(config_dir)
    fh = open_private(lock_path, "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = read_pid(pidfile)
        fh.close()
        raise ManagerRunningError(
            f"another manager is already running for {config_dir}" + (f" (pid {pid})" if pid else "")
            + f": stop it with `{pilot_command(config_dir, 'manager stop')}`, or use another --config-dir") from None
    if write_pid:
        write_pidfile(config_dir)
    return fh


def write_pidfile(config_dir: Path) -> None:
    """Write our pid into the pidfile of ``config_dir`` (only while holding its lock)."""
    write_private(lock_paths(config_dir)[1], f"{os.getpid()}\n")


def release_lock(config_dir: Path, lock: IO[str]) -> None:
    """Remove our pidfile (only if it still names us) and drop the lock."""
    _, pidfile = lock_paths(config_dir)
    if read_pid(pidfile) == os.getpid():
        pidfile.unlink(missing_ok=True)
    lock.close()


class ClusterFileWatcher:
    """Reads the cluster files again when they change, so that a fix reaches the running manager.

    Why: a cluster held back because its pilots cannot start (:mod:`pilot.manager.holds`) is released when the
    user fixes its file; the daemon runs for weeks and must not need a restart for that. Only the files of the
    clusters the manager started with are watched (a new or removed file, and ``pilot.yaml``, still need a
    restart). A file is read again when its modification time, size or inode changes; one that does not validate
    is logged and ignored (the cluster keeps the settings it has), and is read again at its next change.

    Parameters
    ----------
    config_dir : Path
        The configuration directory (its ``clusters/NAME.yaml`` files).
    names : iterable of str
        The clusters to watch.
    """

    def __init__(self, config_dir: Path, names: Iterable[str]) -> None:
        from pilot.config.loading import CLUSTERS_DIR

        self.dir = Path(config_dir) / CLUSTERS_DIR
        self.seen: dict[str, tuple[int, int, int] | None] = {n: self._stamp(self._path(n)) for n in names}

    def _path(self, name: str) -> Path | None:
        for ext in (".yaml", ".yml"):
            p = self.dir / f"{name}{ext}"
            if p.is_file():
                return p
        return None

    @staticmethod
    def _stamp(path: Path | None) -> tuple[int, int, int] | None:
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> dict[str, ClusterConfig]:
        """The clusters whose file changed since the last call and loads: name -> its new settings."""
        from pilot.config import ConfigError, load_cluster

        out: dict[str, ClusterConfig] = {}
        for name, old in self.seen.items():
            path = self._path(name)
            stamp = self._stamp(path)
            if stamp == old:
                continue
            self.seen[name] = stamp
            if path is None:
                log.warning("%s: its cluster file is gone; the manager keeps its settings until it is restarted",
                            name)
                continue
            try:
                out[name] = load_cluster(path)
            except ConfigError as e:
                log.warning("%s: %s changed but does not load; keeping the previous settings:\n%s", name, path, e)
                continue
            log.info("%s: %s changed: its new settings apply from this cycle", name, path)
        return out
