"""``pilot worker``: the process inside a batch job that pulls FireWorks work until its wall time.

The worker is a small supervisor around FireWorks' own :func:`fireworks.core.rocket_launcher.launch_rocket`:

* it pulls Fireworks of its categories one after another, but only those whose expected duration
  (``spec._pilot.walltime``, seconds; absent means "fits anything"), or the least time it can use
  (``spec._pilot.min_walltime``, a Firework that sizes itself to the time it gets), fits the time left before
  the job's deadline minus a safety margin;
* every Firework runs in a forked child process that is the leader of its own session / process group, in its
  own ``launcher_*`` directory, where FireWorks' ``launch_rocket`` runs it; the Rocket's own LaunchPad calls
  (checkout, ping, complete) are executed by the worker on its warm connection (a killed child can never
  leave them half written), anything else a task does with the LaunchPad uses the child's own connection;
* when the deadline comes close (``deadline - margin/2``), on SIGTERM/SIGINT, or, for a worker without a
  deadline, on the batch system's pre-walltime signal (SIGUSR1; with a deadline it is only logged: the
  scheduler sends it early, the deadline is known) it takes no new work, sends SIGTERM to the running
  Firework's process group,
  waits a grace period, SIGKILLs the group if needed, and makes sure the Firework is not left RUNNING: a
  result the task reported stands; a launch that is still RUNNING is archived (marked FIZZLED with a message)
  and the Firework goes back to READY;
* it leaves when no matching work has come for ``--idle-timeout`` seconds, so the allocation is released, and
  at once when READY work is there that a fresh pilot would take but that no longer fits its own time left.

FireTasks learn the deadline from the environment (``PILOT_DEADLINE``, epoch seconds; ``PILOT_STOP_AT``, when
the worker will send SIGTERM; ``PILOT_NAME``), so ``tasks/`` never imports this module.

The room is split by what each part does (submodules import downward only, and nothing of ``pilot`` outside
this package, so that start-up inside a batch job stays cheap):

* :mod:`~pilot.worker.protocol`: frames on the pipes, exit codes of the worker and of its children;
* :mod:`~pilot.worker.model`: :class:`WorkerConfig`, outcomes, the summary, the errors that end the worker;
* :mod:`~pilot.worker.logs`: the ``pilot.worker`` logger;
* :mod:`~pilot.worker.child`: a Firework child (``launch_rocket`` with a LaunchPad that calls the worker);
* :mod:`~pilot.worker.forkserver`: the process that forks the children;
* :mod:`~pilot.worker.children`: the worker's view of its children (standby child, exiting ones);
* :mod:`~pilot.worker.database`: the worker's LaunchPad, its hooks, retries through connection errors;
* :mod:`~pilot.worker.calls`: serving the Rocket's LaunchPad calls of a child;
* :mod:`~pilot.worker.settle`: what happens to a Firework at the end of its child (requeue, archive);
* :mod:`~pilot.worker.slots`: the cores and GPUs of a packed pilot (``--pack``), which each Firework holds (pure);
* :mod:`~pilot.worker.packing`: the loop of a packed pilot, several Fireworks at once, each supervised as one;
* :mod:`~pilot.worker.tunnel`: the ssh route to the LaunchPad (``launchpad_route: ssh``), :class:`Tunnel`;
* :mod:`~pilot.worker.supervisor`: :class:`Worker`, the loop.

See ``docs/worker.md`` for the user-facing description.
"""

from pilot.worker.logs import LOG, setup_worker_logging
from pilot.worker.model import LaunchRecord, Outcome, StopReason, Summary, WorkerConfig, WorkerError
from pilot.worker.protocol import EXIT_DB_UNREACHABLE, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from pilot.worker.supervisor import Worker
from pilot.worker.tunnel import SshRoute, Tunnel, TunnelError, parse_route_target

__all__ = [
    "EXIT_DB_UNREACHABLE",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG",
    "LaunchRecord",
    "Outcome",
    "SshRoute",
    "StopReason",
    "Summary",
    "Tunnel",
    "TunnelError",
    "Worker",
    "WorkerConfig",
    "WorkerError",
    "parse_route_target",
    "setup_worker_logging",
]
