"""The FAIR SHARE section of ``pilot status``: per category its weight, the share the weights give it, its live
pilots and their cores now, and what fair share counts (live and ended within ``share_window``).

Shown when ``pilot.yaml`` sets ``share`` or the clusters serve several categories (with one category there is
nobody to share with). Two queries on the manager's pilot records; the weights come from the config directory,
so without one there is no section. The last cycle's decisions that fair share held back (their reason ends in
``(share ...)``, :mod:`pilot.manager.share`) are named per category, so the section says why a category got
fewer pilots than it wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.manager.records import PENDING_STATES, live_query, ran_and_ended_since
from pilot.manager.share import pilot_cores, weight_of

if TYPE_CHECKING:
    from pilot.config import Config

__all__ = ["gather_share", "share_lines"]


def gather_share(q: Any, config: Config | None, manager: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The section as a JSON-ready dict (``share`` in ``docs/status.schema.json``), or None when not shown.

    Parameters
    ----------
    q : pilot.status.gather._Queries
        The counting database handle (``find(collection, query, projection)``).
    config : Config | None
        The config directory (weights, the clusters' categories and pilot sizes).
    manager : dict | None
        The manager's heartbeat as ``pilot status`` reads it (its ``decisions``).
    now : float
        Epoch seconds.
    """
    if config is None:
        return None
    share, served = config.pilot.share, config.categories
    if not share and len(served) < 2:
        return None
    fields = {"category": 1, "cluster": 1, "profile": 1, "state": 1}
    live = q.find("pilots", live_query(), fields)
    window = float(config.pilot.share_window)
    ended = q.find("pilots", ran_and_ended_since(now - window), fields) if window else []
    total_w = sum(weight_of(share, c) for c in served)
    rows: dict[str, dict[str, Any]] = {
        c: {"category": c, "weight": weight_of(share, c), "target": weight_of(share, c) / total_w,
            "pending": 0, "running": 0, "cores": 0, "counted_cores": 0, "held_back": []} for c in served}
    for rec, is_live in [*((r, True) for r in live), *((r, False) for r in ended)]:
        row = rows.get(str(rec.get("category")))
        if row is None:
            continue
        cores = pilot_cores(rec, config.clusters)
        row["counted_cores"] += cores
        if is_live:
            row["pending" if rec.get("state") in PENDING_STATES else "running"] += 1
            row["cores"] += cores
    for d in (manager or {}).get("decisions") or ():
        if "(share " in str(d.get("reason")) and d.get("category") in rows:
            rows[d["category"]]["held_back"].append(str(d.get("unit") or d.get("cluster")))
    cores_now = sum(r["cores"] for r in rows.values())
    counted = sum(r["counted_cores"] for r in rows.values())
    for r in rows.values():
        r["cores_share"] = r["cores"] / cores_now if cores_now else None
        r["counted_share"] = r["counted_cores"] / counted if counted else None
    return {"window": window, "categories": list(rows.values())}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def share_lines(share: dict[str, Any] | None, table: Callable[[list[str], list[list[Any]]], list[str]]) -> list[str]:
    """The section as text (empty when not shown); ``table`` aligns it (:func:`pilot.status.format.format_table`,
    passed in: the formatter imports this module)."""
    if not share:
        return []
    rows = [[r["category"], f"{r['weight']:g}", _pct(r["target"]), f"{r['pending']}/{r['running']}", r["cores"],
             _pct(r["cores_share"]), _pct(r["counted_share"]),
             ("held back on " + ", ".join(r["held_back"])) if r["held_back"] else ""]
            for r in share["categories"]]
    window = f"live + ended in the last {share['window'] / 3600:g} h" if share["window"] else "live only"
    return ["", f"FAIR SHARE (pilots go by weight; counted: {window})",
            *table(["category", "weight", "target", "pending/running", "cores", "cores now", "counted",
                    "last cycle"], rows)]
