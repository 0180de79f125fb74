"""The manager room: the daemon that keeps pilots on the clusters for the READY work of the LaunchPad.

Once per cycle it gathers (demand from the LaunchPad, its own pilots from each scheduler), decides (a pure
policy) and acts (submits pilots, puts lost work back), and records what it did in the LaunchPad's database.

Modules, each importing only the ones listed before it:

:mod:`~pilot.manager.policy`
    How many pilots to submit: a pure function of demand, our pilots and the cluster limits (no I/O).
:mod:`~pilot.manager.demand`
    What a pilot of each cluster could take: the READY Fireworks that fit its wall time, are not pinned to
    another FWorker, and match the cluster's ``fworker_query`` (one count per cluster and category per cycle).
:mod:`~pilot.manager.records`
    The manager's collections in the LaunchPad database (pilots, clusters, reruns, heartbeat); ``pilot status``
    and ``pilot report`` read them too, so this module stays cheap to import.
:mod:`~pilot.manager.daemon`
    One manager per configuration directory: the lock and the pidfile; and the watcher that reads a changed
    cluster file into the running manager.
:mod:`~pilot.manager.lease`
    One manager per LaunchPad: a lease document (owner, expiry) taken atomically and renewed by a thread.
:mod:`~pilot.manager.reruns`
    Putting a dead pilot's work back: a compare-and-set on the Firework's state and launch id under FireWorks'
    workflow lock, within the ``max_reruns`` bound and history shared with the worker.
:mod:`~pilot.manager.runtime`
    :class:`ClusterRuntime` (one cluster's adapter and transport, the commands run, its backoff),
    :class:`CycleReport` (what one cycle saw and did) and :class:`ManagerSettings` (the clock and dry-run
    switch the manager shares with its helpers).
:mod:`~pilot.manager.tracking`
    Queue status -> pilot records (by job id, by name for unknown submissions, history and exit-code files
    for jobs that left the queue), and the rerun of work left RUNNING by pilots that ended.
:mod:`~pilot.manager.holds`
    Pilots that cannot start: each ended pilot judged once (ran a Firework, stopped normally, or a failed start);
    after ``failed_starts_before_hold`` failed starts in a row the cluster is held (growing delays, one probe
    pilot), until a pilot starts or its cluster file changes (:class:`~pilot.manager.daemon.ClusterFileWatcher`).
:mod:`~pilot.manager.routes`
    ``launchpad_route: ssh``: a :class:`~pilot.manager.routes.RouteKeeper` per such cluster keeps a remote
    forward on its login node back to the LaunchPad, re-established when it drops.
:mod:`~pilot.manager.cycle`
    :class:`Manager`: gather -> decide -> act -> record, once per cycle, and ``run_forever``; starts the route
    keepers at its first cycle and stops them in ``close``.

``from pilot.manager import Manager, CycleReport, ClusterRuntime`` works as before the split, but lazily: this
package imports none of its modules until one of those names is asked for (a module-level ``__getattr__``), so
``pilot status`` (which needs only :mod:`~pilot.manager.records`) does not pay for the cycle and its imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.manager.cycle import Manager
    from pilot.manager.runtime import ClusterRuntime, CycleReport

__all__ = ["ClusterRuntime", "CycleReport", "Manager"]


def __getattr__(name: str) -> Any:
    """``pilot.manager.Manager``, ``CycleReport`` and ``ClusterRuntime``, imported from their module on first use."""
    value: Any
    if name == "Manager":
        from pilot.manager import cycle

        value = cycle.Manager
    elif name in ("CycleReport", "ClusterRuntime"):
        from pilot.manager import runtime

        value = getattr(runtime, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups find it without this function
    return value
