"""The ``local`` scheduler: pilots as local processes with a wall time (:mod:`pilot.localsched`).

The scheduler is this project's own (``python -m pilot.localsched``), so its output format is defined
there: ``status`` prints ``id|state|name|submit|start|end|exit|reason`` lines with epoch times and the
state names of :class:`~queue_adapters.base.JobState`; ``cancel`` prints ``id|cancelled`` or ``id|gone``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .base import (
    CancelResult,
    JobState,
    JobStatus,
    QueueAdapter,
    SchedulerQueryError,
    SubmitOutcome,
    SubmitResult,
    epoch_to_utc,
    map_state,
    output_tail,
)

#: localsched's states are JobState names (pilot/localsched.py writes them)
STATE_MAP = {s.name: s for s in JobState if s is not JobState.UNKNOWN}


def _num(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


class LocalAdapter(QueueAdapter):
    """Adapter for :mod:`pilot.localsched` (no SSH: used with LocalTransport)."""

    name = "local"
    job_id_env = "PILOT_LOCAL_JOBID"
    submit_stdin_from_script = False
    filters_server_side = frozenset({"job_ids"})

    def __init__(self, *, python: str | None = None, state_dir: str | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.python = python or sys.executable
        self.state_dir = state_dir

    def _base(self) -> list[str]:
        state = ["--state", self.state_dir] if self.state_dir else []
        return [self.python, "-m", "pilot.localsched", *state]

    def submit_command(self, script_path: str) -> list[str]:
        return [*self._base(), "submit", script_path]

    def parse_submit(self, returncode: int, stdout: str, stderr: str) -> SubmitResult:
        out = stdout.strip()
        if returncode == 0 and out.isdigit():
            return SubmitResult(SubmitOutcome.SUBMITTED, job_id=out)
        if returncode != 0:
            return SubmitResult(SubmitOutcome.FAILED, reason=output_tail(stderr or stdout) or f"exit code {returncode}",
                                retryable=False)
        return SubmitResult(SubmitOutcome.UNKNOWN, reason=f"unreadable output: {output_tail(stdout)!r}")

    def status_command(self, job_ids: Sequence[str] | None = None, user: str | None = None,
                       name_prefix: str | None = None) -> list[str]:
        return [*self._base(), "status", *(job_ids or [])]

    def parse_status(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        if returncode != 0:
            raise SchedulerQueryError(f"localsched status failed (exit code {returncode}): {output_tail(stderr)}",
                                      command="localsched status", returncode=returncode, stdout=stdout,
                                      stderr=stderr, retryable=True)
        out: dict[str, JobStatus] = {}
        for line in stdout.splitlines():
            f = line.split("|")
            if len(f) != 8 or not f[0]:
                continue
            jid, state, name, submit, start, end, code, reason = f
            s, b, e = _num(submit), _num(start), _num(end)
            out[jid] = JobStatus(
                job_id=jid, state=map_state(STATE_MAP, state, "local"), native_state=state, name=name or None,
                reason=reason or None, exit_code=int(code) if code.lstrip("-").isdigit() else None,
                submit_time=epoch_to_utc(s) if s else None, start_time=epoch_to_utc(b) if b else None,
                end_time=epoch_to_utc(e) if e else None)
        return out

    def history_command(self, job_ids: Sequence[str]) -> list[str] | None:
        return self.status_command(job_ids)

    def parse_history(self, returncode: int, stdout: str, stderr: str) -> dict[str, JobStatus]:
        return self.parse_status(returncode, stdout, stderr)

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            raise ValueError("cancel_command needs at least one job id")
        return [*self._base(), "cancel", *job_ids]

    def parse_cancel(self, returncode: int, stdout: str, stderr: str, job_ids: Sequence[str] = ()) -> CancelResult:
        if returncode != 0:
            return CancelResult(ok=False, reason=output_tail(stderr) or f"exit code {returncode}", retryable=True)
        cancelled: list[str] = []
        gone: list[str] = []
        for line in stdout.splitlines():
            jid, _, what = line.partition("|")
            (cancelled if what == "cancelled" else gone).append(jid)
        return CancelResult(ok=True, cancelled=cancelled, already_gone=gone)
