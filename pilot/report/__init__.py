"""``pilot report``: throughput per cluster and per day, from the LaunchPad alone.

What it counts (all from the LaunchPad's database; the config directory, when there is one, only adds the
cores per pilot):

* **MD segments**: COMPLETED launches whose ``action.stored_data`` holds a segment record
  (``steps_done``, written by :class:`tasks.segment.MDSegmentTask`); **runs finished**: those whose
  ``outcome`` is ``finished``; **trajectory**: their ``steps_done x dt_ps / 1000`` ns (records without
  ``dt_ps``: unknown, counted apart); **Fireworks**: every COMPLETED launch; **fizzled**: FIZZLED launches.
  A launch counts on the day (and in the window) in which it *ended* (``time_end``).
* **Pilot hours / CPU hours**: each pilot's run time (``start_time`` .. ``end_time``, or now while it runs,
  from the ``pilots`` records) clipped to the window and split at UTC midnight, times the cores of one pilot
  (``pilot.cores * pilot.nodes`` of the cluster's config; 1 without a config, and the report says so).
* **Utilisation**: the time pilots spent running Fireworks (the launches' ``runtime_secs``, matched to the
  pilot by the FWorker name the pilot uses, ``CLUSTER-JOBID``; a Firework still running counts up to now)
  divided by the pilots' run time.
* **Queue waits**: ``start_time - submit_time`` of the pilots that started in the window (median, max).
* **Reruns**: Fireworks the manager put back to READY after their pilot died (``pilot_reruns`` history).

Days are UTC days: FireWorks stores launch times as ISO strings in UTC, and grouping them is then a string
operation the database does itself. The launches are read with **one aggregation** (grouped by FWorker,
time bin, state and kind), never document by document; the pilot records with one projected query; the
reruns with one aggregation. So the report stays fast on a LaunchPad with a million launches.

The room's modules, each importing only those above it:

* :mod:`~pilot.report.times`: UTC days, time bins and the ``--since``/``--until`` values people type (options of
  ``pilot report`` only); the ISO UTC text and the reading of stored times, which ``pilot status`` shares, are
  :mod:`pilot.isotime`'s;
* :mod:`~pilot.report.model`: :class:`ThroughputReport` and its rows, and the ``--json`` document
  (:meth:`ThroughputReport.to_dict`);
* :mod:`~pilot.report.queries`: the database reads, one method per query;
* :mod:`~pilot.report.fold`: the query rows turned into the report (no database);
* :mod:`~pilot.report.gather`: :func:`gather_report`, the queries in order and the fold;
* :mod:`~pilot.report.format` (text) and :mod:`~pilot.report.plot` (PNG, matplotlib imported lazily);
* :mod:`~pilot.report.trajectory` (pure, imported by the model): nanoseconds of MD trajectory per cluster and UTC
  day (each segment's ``steps_done x dt_ps``, summed by the launch aggregation), cumulative, and the headline
  "13.2 µs in 15 days on 4 clusters"; :func:`trajectory_rows` ``(db, since, until)`` gives its rows alone (for
  the dashboard).
"""

from __future__ import annotations

from pilot.report.format import format_report
from pilot.report.gather import gather_report, trajectory_rows
from pilot.report.model import OTHER, SCHEMA_VERSION, ClusterThroughput, DayThroughput, ThroughputReport, Timeline
from pilot.report.plot import plot_report
from pilot.report.times import iso_utc, parse_when, utc_day

__all__ = [
    "OTHER",
    "SCHEMA_VERSION",
    "ClusterThroughput",
    "DayThroughput",
    "ThroughputReport",
    "Timeline",
    "format_report",
    "gather_report",
    "iso_utc",
    "parse_when",
    "plot_report",
    "trajectory_rows",
    "utc_day",
]
