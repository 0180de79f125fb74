"""``gather_report``: the queries of :mod:`pilot.report.queries`, in order, folded by :mod:`pilot.report.fold`;
``trajectory_rows``: its trajectory rows (:mod:`pilot.report.trajectory`) for callers that want only those."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pilot.isotime import epoch_seconds
from pilot.report.fold import Fold, resolution
from pilot.report.model import ThroughputReport
from pilot.report.queries import ReportQueries, launch_match
from pilot.report.times import iso_utc
from pilot.report.trajectory import day_rows

if TYPE_CHECKING:
    from pymongo.database import Database

    from pilot.config import Config

__all__ = ["gather_report", "trajectory_rows"]


def gather_report(
    db: Database[Any],
    config: Config | None = None,
    since: float | None = None,
    until: float | None = None,
    now: float | None = None,
    notes: Sequence[str] = (),
) -> ThroughputReport:
    """Read the LaunchPad database and build a :class:`ThroughputReport`.

    Parameters
    ----------
    db : pymongo.database.Database
        The LaunchPad's database (``LaunchPad.db``).
    config : pilot.config.Config | None
        The loaded config directory (cores per pilot, the clusters to list even when idle).
    since, until : float | None
        The window in epoch seconds (``since`` None: all history; ``until`` None: now).
    now : float | None
        Epoch seconds of "now" (running pilots and Fireworks count up to it).
    notes : sequence of str
        Notes to carry into the report (e.g. why there is no config).

    Returns
    -------
    ThroughputReport
    """
    now = time.time() if now is None else float(now)
    until = now if until is None else float(until)
    if since is not None and since >= until:
        raise ValueError(
            f"the window is empty: --since {iso_utc(since)} is not before --until {iso_utc(until)}"
        )
    q = ReportQueries(db)
    fold = Fold(config, since, until, now, notes)
    # 1. the pilot records (one projected query)
    fold.add_pilots(q.pilots(since, until))
    # 2. the launches: the span decides the bin length, then one aggregation
    match = launch_match(since, until)
    if since is None and fold.first is None:
        # no pilot ran: the first launch gives the span (pilots give it otherwise; one query saved)
        fold.first = epoch_seconds(q.earliest_launch_end(match))
    prefix, res = resolution(since, until, fold.first)
    fold.add_launch_groups(q.launch_groups(match, prefix), res)
    # 3. the Fireworks running now under running pilots: busy up to now
    if fold.wants_running():
        fold.add_running(q.running_launches(sorted(fold.running_fworkers)))
    # 4. the reruns (one aggregation over the manager's rerun history; the owners outside step 1 looked up)
    reruns = q.reruns(since, until)
    unknown = fold.unknown_pilots(reruns)
    if unknown:
        fold.add_pilot_clusters(q.pilot_clusters(unknown))
    fold.add_reruns(reruns)
    return fold.report(now, q.count)


def trajectory_rows(
    db: Database[Any],
    since: float | None = None,
    until: float | None = None,
    *,
    config: Config | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Throughput and trajectory per cluster and UTC day: the rows of the report's trajectory section.

    For the dashboard's throughput page (and any script): the same numbers as ``pilot report --json``'s
    ``trajectory.days``, from the same few database commands (:func:`gather_report`: one projected query of the
    pilot records, one aggregation of the launches, one of the rerun history; never one per Firework), so it
    stays fast on a campaign of 20,000 segments.

    Parameters
    ----------
    db : pymongo.database.Database
        The LaunchPad's database (``LaunchPad.db``); reading is all it does (the read-only role suffices).
    since, until : float | None
        The window in epoch seconds (``since`` None: all history; ``until`` None: now). A segment counts on the
        UTC day its launch ended; ``cumulative_ns`` starts at zero at ``since``.
    config : pilot.config.Config | None
        The config (cores per pilot, for the CPU hours of pilots the scheduler did not charge; 1 without).
    now : float | None
        Epoch seconds of "now" (running pilots count up to it).

    Returns
    -------
    list of dict
        In day order, one per (UTC day, cluster) with pilot time or completions: ``{"day": "YYYY-MM-DD",
        "cluster": str, "segments": int, "core_hours": float, "ns": float | None, "ns_unknown_segments": int,
        "cumulative_ns": float | None}`` (:func:`pilot.report.trajectory.day_rows`). ``ns`` is None only when
        every segment of the row advanced without a time step in its record (records older than ``dt_ps``).
    """
    return day_rows(gather_report(db, config, since=since, until=until, now=now))
