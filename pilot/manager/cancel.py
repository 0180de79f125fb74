"""Cancel pilots of one cluster: the given job ids, or every live pilot of this manager there.

One implementation for ``pilot cancel`` (``pilot/cli/pilots.py``) and the dashboard's "cancel pilot" action:
both ask the cluster's scheduler through the manager's own runtime (its transport and queue adapter), and
never touch a job that is not one of ours when asked for "all" (the ids come from the manager's records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pilot.manager.records import Records
    from pilot.manager.runtime import ClusterRuntime
    from queue_adapters.base import CancelResult

__all__ = ["CancelOutcome", "cancel_pilots"]


@dataclass(frozen=True)
class CancelOutcome:
    """What was asked (``ids``; empty: no live pilot to cancel) and the scheduler's answer (None: nothing
    was sent)."""

    cluster: str
    ids: list[str]
    result: CancelResult | None

    @property
    def ok(self) -> bool:
        return self.result is None or self.result.ok


def cancel_pilots(records: Records, rt: ClusterRuntime, job_ids: Sequence[str] | None) -> CancelOutcome:
    """Cancel ``job_ids`` on the runtime's cluster, or (``None``) every live pilot of ours there.

    Raises
    ------
    pilot.transport.TransportError
        The cluster could not be reached or the command did not finish (the message says which and why).
    """
    cluster = rt.name
    ids = list(job_ids) if job_ids is not None else [str(r["job_id"]) for r in records.live(cluster)
                                                     if r.get("job_id")]
    if not ids:
        return CancelOutcome(cluster, [], None)
    res = rt.run(rt.adapter.cancel_command(ids))
    return CancelOutcome(cluster, ids, rt.adapter.parse_cancel(res.returncode, res.stdout, res.stderr, ids))
