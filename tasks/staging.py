"""Stage a segment's files to the cluster's work directory, and pull the results back.

Two FireTasks, both run on the fileserver (``local`` category):

- :class:`StageTask` copies files from the run's archive directory (``src_dir``, on this machine) to the
  work directory on the cluster (``dest_dir``);
- :class:`PullTask` copies results from the work directory (``src_dir``) back to the archive
  (``dest_dir``, on this machine).

The cluster side is either a **shared file system** (``remote`` not given: a local copy through
:class:`pilot.transport.LocalTransport`) or an **SSH host** (``remote = {"host": ..., "user": ...,
"port": ..., "identity_file": ..., "known_hosts": ...}``, through :class:`pilot.transport.SSHTransport`).
The transport is imported inside the tasks: the md tasks never load it.

Every copy is idempotent and verified: a file already at the destination with the same size and SHA-256
is skipped; a copied file is written under a temporary name and renamed (no partial files), and its
SHA-256 must equal the source's, else it is copied again. Transient transport errors
(``TransportError.retryable``) and checksum mismatches are retried ``max_retry`` times with backoff.
A missing required file is an error that names the file, where it was looked for and what to try.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fireworks import FiretaskBase, FWAction
from fireworks.utilities.fw_utilities import explicit_serialize

from tasks.contract import RESULT_SPEC_KEY

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_RETRY = 3
DEFAULT_RETRY_DELAY_S = 2.0
#: Keys of the ``remote`` parameter passed on to ``pilot.transport.SSHTransport``.
REMOTE_KEYS = ("host", "user", "port", "identity_file", "known_hosts", "strict_host_key_checking", "proxy_jump",
               "use_ssh_config", "ssh_config_path", "connect_timeout", "keepalive", "name", "allow_agent")


class StagingError(RuntimeError):
    """A copy could not be done; the message names the file, both places and what to try."""

    def __init__(self, message: str, details: dict[str, Any] | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.details = dict(details or {})
        self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        return {"message": str(self), "retryable": self.retryable, **self.details}


class ChecksumMismatch(StagingError):
    """The copy's SHA-256 differs from the source's (a transfer error or a file changed meanwhile)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details, retryable=True)


@dataclass
class CopyReport:
    """What a staging/pull task did (stored in the Firework's ``stored_data``)."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------- the two sides
class Side:
    """One end of a copy: files on a host reached through a ``pilot.transport.Transport``.

    ``LocalTransport`` for this machine (the archive, or a cluster work directory on a shared file system),
    ``SSHTransport`` for a cluster reached over SSH.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.local = getattr(transport, "host", "") == "localhost"

    def where(self, path: str) -> str:
        return path if self.local else f"{self.transport.label}:{path}"

    def size(self, path: str) -> int | None:
        from pilot.transport import RemotePathError

        try:
            st = self.transport.stat(path)
        except RemotePathError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if st.is_dir:
            raise StagingError(f"{self.where(path)} is a directory, not a file")
        return int(st.size)

    def sha256(self, path: str) -> str:
        return str(self.transport.sha256(path)).lower()

    def makedirs(self, path: str) -> None:
        self.transport.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        result = self.transport.run(["ls", "-A", "--", path], timeout=60)
        return sorted(result.stdout.split()) if result.returncode == 0 else []


def _is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def _retry(op: Callable[[], T], what: str, max_retry: int, delay_s: float, report: CopyReport) -> T:
    attempt = 0
    while True:
        try:
            return op()
        except Exception as exc:  # only retryable errors are retried, others are re-raised at once
            if not _is_retryable(exc) or attempt >= max_retry:
                raise
            attempt += 1
            report.retries += 1
            wait = delay_s * (2 ** (attempt - 1))
            log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s", what, attempt, max_retry + 1,
                        wait, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            time.sleep(wait)


# ----------------------------------------------------------------------------------------- the copy
def copy_files(src: Side, src_dir: str, dest: Side, dest_dir: str, required: list[str], optional: list[str],
               transfer: Callable[[str, str], None], *, max_retry: int = DEFAULT_MAX_RETRY,
               retry_delay_s: float = DEFAULT_RETRY_DELAY_S, purpose: str = "copy") -> CopyReport:
    """Copy ``required`` and ``optional`` files (names relative to the dirs) from ``src`` to ``dest``.

    Parameters
    ----------
    src, dest
        The two sides; ``transfer(src_path, dest_path)`` moves one file between them atomically.
    required, optional
        File names. A missing required file raises :class:`StagingError` naming it; a missing optional one
        is recorded and skipped.
    max_retry, retry_delay_s
        Retries (with doubling delay) for retryable transport errors and checksum mismatches.
    purpose
        "stage" or "pull", for messages.

    Returns
    -------
    CopyReport
    """
    report = CopyReport()
    names: list[tuple[str, bool]] = []
    for name, is_required in [(n, True) for n in required] + [(n, False) for n in optional]:
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise StagingError(f"{purpose}: file name {name!r} must be relative to the run directory, without '..'")
        if name not in {n for n, _ in names}:
            names.append((name, is_required))

    # 1. what is there: a missing required file fails the task before anything is copied
    sizes: dict[str, int] = {}
    missing_required: list[str] = []
    for name, is_required in names:
        s_path = os.path.join(src_dir, name)
        s_size = _retry(partial(src.size, s_path), f"{purpose}: stat {src.where(s_path)}", max_retry,
                        retry_delay_s, report)
        if s_size is not None:
            sizes[name] = s_size
        elif is_required:
            missing_required.append(name)
        else:
            report.missing_optional.append(name)
    if missing_required:
        present = src.listdir(src_dir)
        raise StagingError(
            f"{purpose}: required file{'s' if len(missing_required) > 1 else ''} "
            f"{', '.join(missing_required)} missing in {src.where(src_dir)} (copying to {dest.where(dest_dir)}). "
            f"Files there: {', '.join(present[:30]) or '(none, or the directory does not exist)'}"
            f"{' ...' if len(present) > 30 else ''}. What to try: create the file or correct the file list / "
            "run directory of the workflow, then rerun this Firework.",
            {"missing": missing_required, "source_dir": src.where(src_dir), "dest_dir": dest.where(dest_dir)})

    # 2. copy what differs (size or SHA-256), verify every copy
    _retry(partial(dest.makedirs, dest_dir), f"{purpose}: create {dest.where(dest_dir)}", max_retry,
           retry_delay_s, report)
    for name, _ in names:
        if name not in sizes:
            continue
        s_path = os.path.join(src_dir, name)
        d_path = os.path.join(dest_dir, name)
        s_sum = _retry(partial(src.sha256, s_path), f"{purpose}: sha256 {src.where(s_path)}", max_retry,
                       retry_delay_s, report)
        d_size = _retry(partial(dest.size, d_path), f"{purpose}: stat {dest.where(d_path)}", max_retry,
                        retry_delay_s, report)
        if d_size == sizes[name] and _retry(partial(dest.sha256, d_path), f"{purpose}: sha256 {dest.where(d_path)}",
                                            max_retry, retry_delay_s, report) == s_sum:
            report.skipped.append(name)
            continue
        one = partial(_transfer_verified, src, s_path, dest, d_path, transfer, purpose)
        report.bytes_copied += _retry(one, f"{purpose}: copy {name}", max_retry, retry_delay_s, report)
        report.copied.append(name)
    log.info("%s %s -> %s: copied %s, skipped (identical) %s, absent optional %s", purpose, src.where(src_dir),
             dest.where(dest_dir), report.copied, report.skipped, report.missing_optional)
    return report


def _transfer_verified(src: Side, s_path: str, dest: Side, d_path: str, transfer: Callable[[str, str], None],
                       purpose: str) -> int:
    """Copy one file and check the copy's SHA-256 against the source's; return the bytes copied."""
    where = {"source": src.where(s_path), "dest": dest.where(d_path)}
    try:
        transfer(s_path, d_path)
    except OSError as exc:
        raise StagingError(f"{purpose}: cannot copy {where['source']} to {where['dest']}: {exc}. Check permissions "
                           "and free space there.", where) from exc
    got = dest.sha256(d_path)
    now = src.sha256(s_path)
    if got != now:
        raise ChecksumMismatch(f"{purpose}: SHA-256 of {where['dest']} ({got[:12]}...) differs from {where['source']} "
                               f"({now[:12]}...) after copying", where)
    return int(dest.size(d_path) or 0)


def open_transport(remote: dict[str, Any]) -> Any:
    """An ``SSHTransport`` for the ``remote`` parameter (imported lazily: tasks never need paramiko otherwise)."""
    from pilot.transport import SSHTransport

    unknown = sorted(set(remote) - set(REMOTE_KEYS))
    if unknown:
        raise StagingError(f"remote: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(REMOTE_KEYS)}")
    if not remote.get("host"):
        raise StagingError("remote: 'host' is required (the cluster's SSH host)")
    return SSHTransport(**{k: v for k, v in remote.items() if v is not None})


COPY_PARAMS = ["files", "optional_files", "remote", "max_retry", "retry_delay_s"]


class _CopyTask(FiretaskBase):
    required_params = ["src_dir", "dest_dir"]
    optional_params = list(COPY_PARAMS)
    purpose = "copy"

    def _lists(self, fw_spec: dict[str, Any]) -> tuple[list[str], list[str]]:
        return [str(f) for f in self.get("files") or []], [str(f) for f in self.get("optional_files") or []]

    def _run(self, fw_spec: dict[str, Any], push: bool) -> FWAction:
        src_dir = os.path.expandvars(os.path.expanduser(str(self["src_dir"])))
        dest_dir = os.path.expandvars(os.path.expanduser(str(self["dest_dir"])))
        required, optional = self._lists(fw_spec)
        kw: dict[str, Any] = {"max_retry": int(self.get("max_retry", DEFAULT_MAX_RETRY)),
                              "retry_delay_s": float(self.get("retry_delay_s", DEFAULT_RETRY_DELAY_S)),
                              "purpose": self.purpose}
        from pilot.transport import LocalTransport

        here = LocalTransport(name="local")
        remote = self.get("remote")
        there = open_transport(dict(remote)) if remote else here
        try:
            near, far = Side(here), Side(there)
            if push:
                report = copy_files(near, src_dir, far, dest_dir, required, optional,
                                    lambda s, d: there.put(s, d, stat_module.S_IMODE(os.stat(s).st_mode)), **kw)
            else:
                report = copy_files(far, src_dir, near, dest_dir, required, optional,
                                    lambda s, d: there.get(s, d), **kw)
        finally:
            there.close()
        return FWAction(stored_data={self.purpose: report.to_dict()})


@explicit_serialize
class StageTask(_CopyTask):
    """Copy a segment's input files from the archive (this machine) to the cluster's work directory.

    Parameters
    ----------
    src_dir : str
        Archive directory on this machine.
    dest_dir : str
        Work directory on the cluster (a path on the shared file system, or on ``remote``).
    files : list of str
        Required file names (relative); a missing one fails the task, naming it.
    optional_files : list of str
        Copied when present.
    remote : dict, optional
        SSH settings for ``pilot.transport.SSHTransport`` (host, user, port, identity_file, known_hosts,
        ...). Without it the copy is local (shared file system).
    max_retry : int
        Retries of transient errors (default 3).
    retry_delay_s : float
        First retry delay, doubled each time (default 2).
    """

    purpose = "stage"

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        return self._run(fw_spec, push=True)


@explicit_serialize
class PullTask(_CopyTask):
    """Copy a segment's results from the cluster's work directory back to the archive (this machine).

    Parameters as :class:`StageTask` (``src_dir`` is the work directory, ``dest_dir`` the archive), plus
    ``checkpoint_files``: required when the md Firework of this segment reported a checkpoint (its
    ``md_segment`` result in the spec), optional otherwise.
    """

    optional_params = COPY_PARAMS + ["checkpoint_files"]
    purpose = "pull"

    def _lists(self, fw_spec: dict[str, Any]) -> tuple[list[str], list[str]]:
        required, optional = super()._lists(fw_spec)
        cpt = [str(f) for f in self.get("checkpoint_files") or []]
        result = fw_spec.get(RESULT_SPEC_KEY) or {}
        if result.get("checkpoint_step") is not None:
            return required + cpt, optional
        return required, cpt + optional

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        return self._run(fw_spec, push=False)
