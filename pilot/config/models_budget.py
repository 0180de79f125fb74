"""``budget:`` in a cluster file: the core-hours this manager may spend there, per account.

A budget stops *new* pilots (:mod:`pilot.manager.budget`); it never touches running ones. It is written as one
mapping, or as a list of them for several accounts::

    budget: {core_hours: 5000, account: chem123, since: 2026-12-01}
    budget:
      - {core_hours: 5000, account: chem123}
      - {core_hours: 200, account: phys77, since: 2026-12-01}

``account`` (optional) names the account (project) the scheduler charges; without it the budget covers every
account of this cluster file's pilots. ``since`` (optional, a date, UTC midnight) counts only pilots that
started on or after it; without it every pilot this manager's records remember counts.

The entries are checked here by hand, not by pydantic's generic messages, so that each problem names its place
as the user wrote it (``budget.core_hours`` for the one-mapping form, ``budget[1].account`` in a list) and says
what to write instead.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pilot.config.errors import describe, field_errors

__all__ = ["Budget", "budgets_from"]

UTC = dt.timezone.utc


class Budget(BaseModel):
    """One budget: at most ``core_hours`` on the cluster (for ``account``, since ``since``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    core_hours: float = Field(gt=0, description="Core-hours (cores x hours, as the scheduler charges them: "
                              "sacct CPUTimeRAW, PBS resources_used, LSF run_time x slots) this manager may "
                              "spend; new pilots stop when they would go over.", examples=[5000])
    account: str | None = Field(None, description="The account (project) it covers, as the scheduler prints "
                                "it; null: every account of this cluster's pilots.", examples=["chem123"])
    since: dt.date | None = Field(None, description="Count only pilots that started on or after this date "
                                  "(UTC); null: all of them.", examples=["2026-12-01"])

    @property
    def core_seconds(self) -> int:
        """The budget in core-seconds (what the scheduler counts)."""
        return int(round(self.core_hours * 3600))

    @property
    def since_epoch(self) -> float | None:
        """``since`` as epoch seconds (UTC midnight), or None."""
        if self.since is None:
            return None
        return dt.datetime.combine(self.since, dt.time(0, 0), tzinfo=UTC).timestamp()

    def covers(self, account: str | None) -> bool:
        """Whether pilots charged to ``account`` count against this budget (account names compare without case:
        SLURM prints them in lower case)."""
        return self.account is None or (account or "").casefold() == self.account.casefold()

    def label(self) -> str:
        """``5,000 core-h on chem123 since 2026-12-01`` (for messages and ``pilot config check``)."""
        who = f"on {self.account}" if self.account else "on all accounts"
        since = f" since {self.since.isoformat()}" if self.since else ""
        return f"{self.core_hours:,g} core-h {who}{since}"


_FIELDS = ("core_hours", "account", "since")
_EXAMPLE = "budget: {core_hours: 5000, account: chem123, since: 2026-12-01}"


def budgets_from(value: Any) -> list[Budget]:
    """The ``budget:`` value as written (None, one mapping or a list of them) as a list of :class:`Budget`;
    every problem at once as a :func:`pilot.config.errors.field_errors` error (sub-field, message)."""
    if value is None:
        return []
    if isinstance(value, Budget):
        return [value]
    single = isinstance(value, dict)
    items = [value] if single else value
    if not isinstance(items, list) or not items:
        raise field_errors([("", f"expected a mapping or a list of mappings, got {describe(value)}; write e.g. "
                                 f"{_EXAMPLE}")])
    problems: list[tuple[str, str]] = []
    out: list[Budget] = []
    for i, item in enumerate(items):
        at = "" if single else f"[{i}]"
        entry = _entry(item, at, problems)
        if entry is not None:
            out.append(entry)
    accounts = [(b.account or "").casefold() for b in out]
    for i, b in enumerate(out):
        if accounts.index(accounts[i]) != i:
            who = f"account {b.account!r}" if b.account else "all accounts (no account:)"
            problems.append((f"[{i}].account", f"a second budget for {who}; keep one entry per account"))
    if problems:
        raise field_errors(problems)
    return out


def _entry(item: Any, at: str, problems: list[tuple[str, str]]) -> Budget | None:
    """One entry checked field by field; its problems are added to ``problems`` (None when it has any)."""
    def where(name: str) -> str:
        return f"{at}.{name}" if at else name

    if not isinstance(item, dict):
        problems.append((at, f"expected a mapping, got {describe(item)}; write e.g. "
                             "{core_hours: 5000, account: chem123}"))
        return None
    before = len(problems)
    meant: set[str] = set()     # fields a misspelled key stands for: not also "missing"
    for key in item:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1, cutoff=0.5)
            meant.update(close)
            hint = f"did you mean '{close[0]}'?" if close else f"the fields are {', '.join(_FIELDS)}"
            problems.append((where(str(key)), f"unknown field '{key}' of a budget; {hint}"))
    hours = item.get("core_hours")
    if hours is None and "core_hours" not in meant:
        problems.append((where("core_hours"), "required: the core-hours this manager may spend here; add e.g. "
                                              "core_hours: 5000"))
    elif hours is None:
        pass
    elif isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        problems.append((where("core_hours"), f"expected a positive number of core-hours, got {describe(hours)}; "
                                              "write e.g. core_hours: 5000 (a number, no unit)"))
    account = item.get("account")
    if isinstance(account, int) and not isinstance(account, bool):
        account = str(account)            # numeric account names exist
    if account is not None and (not isinstance(account, str) or not account.strip() or " " in account.strip()):
        problems.append((where("account"), f"expected an account name (one word), got {describe(account)}; "
                                           "write e.g. account: chem123, or leave it out for every account"))
    since = _date(item.get("since"))
    if since is False:
        problems.append((where("since"), f"expected a date, got {describe(item.get('since'))}; write it as "
                                         "YYYY-MM-DD, e.g. since: 2026-12-01, or leave it out to count every pilot"))
    if len(problems) > before or not isinstance(hours, (int, float)):
        return None
    return Budget(core_hours=float(hours), account=account.strip() if isinstance(account, str) else None,
                  since=since if isinstance(since, dt.date) else None)


def _date(value: Any) -> dt.date | None | bool:
    """A ``since:`` value as a date (YAML parses 2026-12-01 itself; text is read as ISO), None when absent,
    False when it is no date."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return False
    return False
