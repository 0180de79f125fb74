"""``pilot report`` with core-hours from the schedulers (issue 20): the charged numbers replace the run time x cores
estimate where a pilot has them (and say so), the core-time table and ``--json`` are exact per day and category,
and ``--plot`` also writes the stacked-bar figure. Records in the real test LaunchPad; numbers worked out by hand."""

from __future__ import annotations

import datetime as dt

from pilot.report import format_report, gather_report, plot_report

MIDNIGHT = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc).timestamp()


def pilot(name, cluster, category, start, end, usage=None):
    doc = {"_id": name, "job_name": name, "cluster": cluster, "category": category, "state": "COMPLETED",
           "submit_time": start - 5, "start_time": start, "end_time": end, "fworker": f"{cluster}-{name}",
           "profile": "default", "walltime": 600.0}
    if usage:
        doc["usage"] = usage
    return doc


def test_charged_core_hours_by_day_category_and_plot(launchpad, tmp_path):
    # a: 8 cores from 23:58:00 for 300 s (120 s before midnight) -> 2400 core-s: 960 on the 6th, 1440 on the 7th
    # b: 2 cores, 61 s on the 7th, category post -> 122; c: no usage -> estimated (1 core assumed, 100 s)
    a = {"cpus": 8, "seconds": 300, "core_seconds": 2400, "account": "chem123", "start": MIDNIGHT - 120,
         "end": MIDNIGHT + 180, "final": True}
    b = {"cpus": 2, "seconds": 61, "core_seconds": 122, "account": "chem123", "start": MIDNIGHT + 1000,
         "end": MIDNIGHT + 1061, "final": True}
    launchpad.db["pilots"].insert_many([
        pilot("a", "east", "md", MIDNIGHT - 120, MIDNIGHT + 180, a),
        pilot("b", "east", "post", MIDNIGHT + 1000, MIDNIGHT + 1061, b),
        pilot("c", "west", "md", MIDNIGHT + 10, MIDNIGHT + 110)])
    rep = gather_report(launchpad.db, None, now=MIDNIGHT + 3600)
    (row,) = rep.core_hours
    assert (row.cluster, row.account, row.core_seconds) == ("east", "chem123", 2522)
    assert row.by_day == {"2026-12-06": {"md": 960}, "2026-12-07": {"md": 1440, "post": 122}}
    east, west = (next(c for c in rep.clusters if c.name == n) for n in ("east", "west"))
    assert (east.cpu_source, round(east.cpu_s), west.cpu_source, round(west.cpu_s)) == ("scheduler", 2522,
                                                                                         "estimate", 100)
    days = {(d.day, d.cluster): round(d.cpu_s) for d in rep.days}
    assert days[("2026-12-06", "east")] == 960 and days[("2026-12-07", "east")] == 1562
    doc = rep.to_dict()
    assert doc["core_hours"][0]["core_seconds"] == 2522
    text = format_report(rep)
    assert "0:42:02 = 2522 s" in text and " charged" in text
    assert "2026-12-06  0:16:00  0:00:00  0:16:00" in text
    assert "cores per pilot assumed 1 for west (no config dir)" in text     # east's CPU-h are the scheduler's
    png = plot_report(rep, tmp_path / "t.png")
    extra = tmp_path / "t-core-hours.png"
    assert png.stat().st_size > 1000 and extra.stat().st_size > 1000
    assert f"core-hour plot: {extra}" in rep.notes
