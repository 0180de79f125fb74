"""The manager room: the daemon that keeps pilots on the clusters for the READY work of the LaunchPad.

Once per cycle it gathers (demand from the LaunchPad, its own pilots from each scheduler), decides (a pure
policy) and acts (submits pilots, puts lost work back), and records what it did in the LaunchPad's database.

Modules, each importing only the ones listed before it:

:mod:`~pilot.manager.policy`
    How many pilots to submit: a pure function of demand, our pilots and the cluster limits (no I/O).
:mod:`~pilot.manager.records`
    The manager's collections in the LaunchPad database (pilots, clusters, reruns, heartbeat); ``pilot status``
    and ``pilot report`` read them too, so this module stays cheap to import.
:mod:`~pilot.manager.daemon`
    One manager per configuration directory: the lock and the pidfile.
:mod:`~pilot.manager.runtime`
    :class:`ClusterRuntime` (one cluster's adapter and transport, the commands run, its backoff) and
    :class:`CycleReport` (what one cycle saw and did).
:mod:`~pilot.manager.tracking`
    Queue status -> pilot records (by job id, by name for unknown submissions, history and exit-code files
    for jobs that left the queue), and the rerun of work left RUNNING by pilots that ended.
:mod:`~pilot.manager.cycle`
    :class:`Manager`: gather -> decide -> act -> record, once per cycle, and ``run_forever``.

Import what you need from its module (``from pilot.manager.cycle import Manager, CycleReport``): this
package imports nothing, so ``pilot status`` (which needs only :mod:`~pilot.manager.records`) stays cheap.
"""
