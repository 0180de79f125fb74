"""The manager daemon's lock and pidfile: one manager per configuration directory.

(One manager per LaunchPad, across config dirs and hosts, is the lease of :mod:`pilot.manager.lease`, taken
after this lock; the lock stays because ``stop`` and ``status`` find the process through its pidfile.)

Two managers on one LaunchPad would each count the other's pilots as missing and double the submissions, so
``pilot manager run`` takes an exclusive ``flock`` on ``CONFIG_DIR/manager.lock`` for its whole life and writes
its pid next to it. The lock, not the pidfile, is the truth (a crash releases it); the pidfile lets ``stop`` and
``status`` find the process, and :func:`is_our_manager` guards against a reused pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from pilot.configdir import open_private, pilot_command, private_dir, write_private


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
