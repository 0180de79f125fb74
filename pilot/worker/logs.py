"""The worker's log: one logger, ``pilot.worker``, on stderr and optionally a file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG = logging.getLogger("pilot.worker")


def setup_worker_logging(log_file: Path | None) -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        # FireWorks' loggers carry their own stream handler and level DEBUG, and also propagate to the root:
        # keep the root handlers at the root's level (-v) so that their records are not printed twice.
        handler.setLevel(max(handler.level, root.getEffectiveLevel()))
    fmt = logging.Formatter("%(asctime)s pilot-worker %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        LOG.addHandler(fh)


def secs(seconds: float) -> str:
    """Durations for the log: 41.2, 0.031."""
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.3f}"
