"""``pilot status``: what the pilots, the clusters and the work are doing, and what needs a person.

Everything here reads the LaunchPad database only (the FireWorks collections and the manager's own
collections described in :mod:`pilot.manager.records`); nothing is asked over SSH. So ``pilot status`` works from
any machine that has the launchpad file. With a config directory it also knows which clusters serve which
categories and how much wall time their pilots give; without one, it takes both from the pilot records.

The room has three modules, each importing only those above it:

* :mod:`~pilot.status.model`: the :class:`StatusReport` dataclasses and the JSON document described by
  ``docs/status.schema.json`` (:meth:`StatusReport.to_dict`; times as ISO 8601 UTC text, as in
  ``pilot report --json``);
* :mod:`~pilot.status.gather`: :func:`gather_status` runs a small number of index-backed queries (the module
  says how it stays fast with 100,000 Fireworks) and returns a :class:`StatusReport`;
* :mod:`~pilot.status.format`: :func:`format_status` is pure: it turns a report into text (aligned tables,
  "3 min ago").
"""

from __future__ import annotations

from pilot.status.format import (
    format_status,
    format_table,
    human_ago,
    human_clock,
    human_duration,
    human_until,
    short_duration,
)
from pilot.status.gather import describe_launchpad, error_line, gather_status
from pilot.status.model import (
    FW_STATES,
    OTHER_CATEGORIES,
    SCHEMA_VERSION,
    SHOWN_FW_STATES,
    CategoryStatus,
    ClusterStatus,
    FizzledFirework,
    LostRun,
    PendingPilot,
    RouteCondition,
    RouteStatus,
    StatusOptions,
    StatusReport,
    TooBig,
    TooLong,
    first_line,
)

__all__ = [
    "FW_STATES",
    "OTHER_CATEGORIES",
    "SCHEMA_VERSION",
    "SHOWN_FW_STATES",
    "CategoryStatus",
    "ClusterStatus",
    "FizzledFirework",
    "LostRun",
    "PendingPilot",
    "RouteCondition",
    "RouteStatus",
    "StatusOptions",
    "StatusReport",
    "TooBig",
    "TooLong",
    "describe_launchpad",
    "error_line",
    "first_line",
    "format_status",
    "format_table",
    "gather_status",
    "human_ago",
    "human_clock",
    "human_duration",
    "human_until",
    "short_duration",
]
