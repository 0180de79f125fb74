"""What the doctor finds: one :class:`CheckResult` per check, grouped per cluster, and how it reads as text.

Plain data (``--json`` prints :meth:`DoctorReport.to_dict`); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "CheckResult",
    "CheckStatus",
    "ClusterReport",
    "DoctorReport",
    "format_check",
    "mark",
]


class CheckStatus(str, Enum):
    """The outcome of one check."""

    PASS = "pass"
    WARN = "warn"     # passed, with something worth knowing
    FAIL = "fail"
    SKIP = "skip"     # not run: a check it depends on failed


@dataclass
class CheckResult:
    """One check: what was checked, what came out, and what to do about a failure.

    Attributes
    ----------
    id : str
        Stable identifier (``ssh``, ``database`` ...).
    title : str
        What is checked, in words.
    status : CheckStatus
    detail : str
        What was found (for a failure: what failed, the command, the end of its stderr).
    fix : str | None
        What to do (failures and warnings).
    seconds : float
        How long the check took.
    """

    id: str
    title: str
    status: CheckStatus
    detail: str = ""
    fix: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status.value, "detail": self.detail,
                "fix": self.fix, "seconds": round(self.seconds, 3)}


@dataclass
class ClusterReport:
    """The checks of one cluster."""

    name: str
    scheduler: str | None
    address: str | None
    file: str | None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scheduler": self.scheduler, "address": self.address, "file": self.file,
                "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


@dataclass
class DoctorReport:
    """Everything ``pilot doctor`` found (``--json`` prints :meth:`to_dict`)."""

    config_dir: str
    config: CheckResult
    clusters: list[ClusterReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.config.failed and all(c.ok for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "config_dir": self.config_dir, "config": self.config.to_dict(),
                "clusters": [c.to_dict() for c in self.clusters]}



# ============================================================================ text
_MARKS = {True: {CheckStatus.PASS: "✓", CheckStatus.FAIL: "✗", CheckStatus.WARN: "!", CheckStatus.SKIP: "-"},
          False: {CheckStatus.PASS: "[ok]", CheckStatus.FAIL: "[FAIL]", CheckStatus.WARN: "[warn]",
                  CheckStatus.SKIP: "[skip]"}}


def mark(status: CheckStatus, fancy: bool) -> str:
    """``✓ ✗ ! -`` on a terminal, ``[ok] [FAIL] [warn] [skip]`` otherwise."""
    return _MARKS[fancy][status]


def format_check(r: CheckResult, fancy: bool, indent: str = "  ") -> list[str]:
    """One check as text: the mark, the title, what was found; on failure or warning the fix."""
    m = mark(r.status, fancy).ljust(1 if fancy else 6)
    lines = (r.detail or "").splitlines() or [""]
    out = [f"{indent}{m} {r.title}: {lines[0]}".rstrip().rstrip(":")]
    pad = indent + " " * (len(m) + 1) + "  "
    out += [pad + ln for ln in lines[1:]]
    if r.fix and r.status in (CheckStatus.FAIL, CheckStatus.WARN):
        out.append(f"{pad}fix: {r.fix}")
    return out
