"""What the MD FireTasks agree on with each other, with the pilot worker and with stored workflows.

Nothing here runs anything: spec keys, environment variable names, the outcomes of a segment and its
defaults. Every other module of :mod:`tasks` imports from here (never the other way round), so the
names below are the contract a workflow written today must keep meaning tomorrow:

- ``md_segment`` (:data:`RESULT_SPEC_KEY`) is how a segment's result travels to the pull and continue
  Fireworks (``update_spec``) and to the final workflow's root Fireworks;
- ``PILOT_DEADLINE`` / ``PILOT_STOP_AT`` are set by the pilot worker (:mod:`pilot.worker`), which imports
  nothing of :mod:`tasks`; this is the only place the tasks spell them;
- :class:`Outcome` values are stored in ``stored_data`` and read back by the continue Firework and by
  ``pilot report``.
"""

from __future__ import annotations

import enum

#: Environment variable holding the pilot job's deadline (epoch seconds), set by the pilot worker.
DEADLINE_ENV = "PILOT_DEADLINE"
#: When the pilot worker will send SIGTERM to the Firework (epoch seconds), set by the pilot worker.
STOP_AT_ENV = "PILOT_STOP_AT"
#: A segment aims to end this many seconds before PILOT_STOP_AT (by its own time limit, not by SIGTERM).
STOP_AT_MARGIN_S = 30.0
#: Key under which a segment's result is passed to its child Fireworks (``update_spec``).
RESULT_SPEC_KEY = "md_segment"

DEFAULT_SEGMENT_HOURS = 4.0
#: Seconds kept free before the pilot's deadline: final checkpoint, FireWorks bookkeeping.
DEFAULT_DEADLINE_MARGIN_S = 300.0
#: A segment with less time than this (or than its own length, if shorter) is not started.
DEFAULT_MIN_SEGMENT_S = 60.0
#: Seconds added to the segment length in the md Firework's ``_pilot.walltime`` (start-up, checkpoint, DB).
DEFAULT_STARTUP_SLACK_S = 300.0

#: FireWorks spec keys every Firework of a segment carries (FireWorks' own, and the pilot worker's).
CATEGORY_KEY = "_category"
LAUNCH_DIR_KEY = "_launch_dir"
PRIORITY_KEY = "_priority"
#: ``{"walltime": seconds}``: a pilot worker only takes an md Firework that fits in its remaining time.
PILOT_KEY = "_pilot"

#: engine name -> "module:class" of its segment FireTask.
ENGINES: dict[str, str] = {
    "gromacs": "tasks.gromacs:GromacsSegmentTask",
    "openmm": "tasks.openmm:OpenMMSegmentTask",
}
#: Keys allowed in the ``stage`` argument of :func:`tasks.workflow.make_md_workflow`.
STAGE_KEYS = ("work_dir", "remote", "files", "optional_files", "pull_files", "max_retry", "retry_delay_s")


class Outcome(str, enum.Enum):
    """What a segment decided."""

    FINISHED = "finished"
    CONTINUE = "continue"
    FAILED = "failed"


class StopReason(str, enum.Enum):
    """Why a segment stopped (recorded; the decision itself comes from the checkpoint)."""

    COMPLETED = "completed"          # reached the target step
    TIME_LIMIT = "time_limit"        # segment length or pilot deadline (-maxh)
    SEGMENT_STEPS = "segment_steps"  # the segment's step budget (OpenMM segment_steps)
    SIGTERM = "sigterm"              # the pilot asked us to stop
    ALREADY_DONE = "already_done"    # the checkpoint was already at the target: engine not started
    NO_TIME = "no_time"              # too little time before the pilot's deadline: engine not started
    ENGINE_EXIT = "engine_exit"      # the engine exited early without a fatal error (e.g. killed)
    FATAL_ERROR = "fatal_error"
    NO_PROGRESS = "no_progress"


#: Parameters every md segment FireTask accepts (besides ``run_dir`` and ``name``).
COMMON_PARAMS = [
    "segment",            # int, 1-based segment number (default 1)
    "expect_step",        # int | None: checkpoint step the previous segment ended at (guards a lost checkpoint)
    "segment_hours",      # float, segment length (default 4)
    "deadline_margin_s",  # float, seconds kept free before PILOT_DEADLINE (default 300)
    "min_segment_s",      # float, do not start with less time than this (default 60)
    "stop_margin_s",      # float, aim to end this long before PILOT_STOP_AT (default 30)
    "env",                # dict, extra environment variables for the engine
    "chain",              # dict, how to build the next segment (see tasks.chain)
]
