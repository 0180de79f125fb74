"""The demo's options, its fixed sizes, and its error."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLUSTER_NAME",
    "DB_NAME",
    "DEMO_MARK",
    "IDLE_TIMEOUT_S",
    "PILOT_WALLTIME_S",
    "POLL_INTERVAL_S",
    "SEGMENT_FW_WALLTIME_S",
    "WALLTIME_MARGIN_S",
    "DemoError",
    "DemoOptions",
]

#: First line of every file the demo writes: how it recognises its own files on a second run.
DEMO_MARK = "# written by `pilot demo`: a local cluster for the demo; edit freely"
CLUSTER_NAME = "local"
#: Fixed sizes of the demo cluster: short pilots, so that the demo shows pilots coming and going.
PILOT_WALLTIME_S = 90
WALLTIME_MARGIN_S = 20
IDLE_TIMEOUT_S = 4
POLL_INTERVAL_S = 2
#: ``_pilot.walltime`` of a segment: with 70 usable seconds a pilot runs two segments and then leaves for a
#: fresh one (the demo shows pilots coming and going); segments are chain heads (``_pilot.continues``), so the
#: manager starts one pilot per simulation (up to the number of cores).
SEGMENT_FW_WALLTIME_S = 30
DB_NAME = "fireworks"


class DemoError(Exception):
    """The demo cannot run (or cannot go on); the message says what to do."""


@dataclass(frozen=True)
class DemoOptions:
    """The ``pilot demo`` options."""

    engine: str = "openmm"
    sims: int = 3
    segments: int = 3
    segment_seconds: float = 6.0
    keep_going: bool = False
    timeout: float = 900.0
