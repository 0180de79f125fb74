"""The throughput page's data: per cluster and day the segments completed, core-hours and nanoseconds of
trajectory, and each cluster's cumulative trajectory, shaped for uPlot.

The rows come from ``pilot report`` (``pilot.report.trajectory_rows``), one row per cluster and UTC day:
``{cluster, day, segments, core_hours, ns, ns_unknown_segments}`` (``ns`` None: only segments of unknown length
that day); the row of launches by no pilot (``(not a pilot)``: other FWorkers) is no cluster and is left out, as
the report's headline leaves it out. The dashboard never computes trajectory lengths of its own. :func:`series`
is pure: rows in, the arrays uPlot draws out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, is_dataclass
from typing import Any

from pilot.report.trajectory import is_cluster

__all__ = ["load_rows", "normalise_rows", "series"]


def load_rows(db: Any, config: Any = None) -> list[dict[str, Any]] | None:
    """The trajectory rows of the LaunchPad (``pilot.report.trajectory_rows``: the numbers of
    ``pilot report --json``'s ``trajectory.days``)."""
    from pilot.report import trajectory_rows

    return normalise_rows(trajectory_rows(db, config=config))


def _day(value: Any) -> str | None:
    if isinstance(value, str) and len(value) >= 10:
        return value[:10]
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).date().isoformat()
    return None


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def normalise_rows(raw: Any) -> list[dict[str, Any]]:
    """Rows as dicts ``{cluster, day (YYYY-MM-DD), segments, core_hours, ns (None: unknown),
    ns_unknown_segments}`` (dataclasses and mappings accepted; a row without a cluster or a day is left out),
    sorted by day and cluster."""
    out = []
    for r in raw or []:
        d = asdict(r) if is_dataclass(r) and not isinstance(r, type) else dict(r) if isinstance(r, dict) else None
        if d is None:
            continue
        day = _day(d.get("day"))
        if not d.get("cluster") or day is None or not is_cluster(str(d["cluster"])):
            continue
        ns = d.get("ns")
        out.append({"cluster": str(d["cluster"]), "day": day, "segments": int(_num(d.get("segments"))),
                    "core_hours": _num(d.get("core_hours")), "ns": _num(ns) if ns is not None else None,
                    "ns_unknown_segments": int(_num(d.get("ns_unknown_segments")))})
    return sorted(out, key=lambda r: (r["day"], r["cluster"]))


def series(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """uPlot's data: ``x`` (epoch seconds of each day, UTC midnight, every day from the first to the last),
    and per cluster ``ns`` (per day), ``cumulative`` (ns so far), ``segments`` and ``core_hours`` (per day);
    ``total_ns`` over all clusters."""
    if not rows:
        return {"x": [], "clusters": {}, "total_ns": 0.0, "days": []}
    first = dt.date.fromisoformat(rows[0]["day"])
    last = dt.date.fromisoformat(max(r["day"] for r in rows))
    days = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    index = {d: i for i, d in enumerate(days)}
    clusters: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        c = clusters.setdefault(r["cluster"], {k: [0.0] * len(days) for k in ("ns", "segments", "core_hours")})
        i = index[r["day"]]
        for k in ("ns", "segments", "core_hours"):
            c[k][i] += r[k] or 0.0   # ns of unknown length count as nothing here; the table says how many
    for c in clusters.values():
        run = 0.0
        c["cumulative"] = []
        for v in c["ns"]:
            run += v
            c["cumulative"].append(run)
    x = [dt.datetime.combine(dt.date.fromisoformat(d), dt.time(), dt.timezone.utc).timestamp() for d in days]
    return {"x": x, "days": days, "clusters": dict(sorted(clusters.items())),
            "total_ns": sum(c["cumulative"][-1] for c in clusters.values())}
