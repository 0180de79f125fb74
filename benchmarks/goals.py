"""The goals of issue 18 as one table: each measured number next to its baseline and the goal, with the ratio.

Why a table of its own: the numbers live in five benchmarks' results, and a reader (or a script reading the
JSON) should see at a glance which goal is met. Baselines are measured in the same run where FireWorks has
a counterpart (``rlaunch`` for utilisation and per-Firework overhead); the manager cycle has none, so its
baseline is the number recorded before the work on it (benchmarks/README.md, commit ff2d8ae), marked as such.
The rows are computed from the results only (pure), so ``run.py --show FILE`` prints them for an old run too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.common import fmt_num, fmt_table, ratio

#: manager cycle (steady state) at 100,000 READY Fireworks x 20 clusters before issue 18: benchmarks/README.md,
#: "Manager scale after the fix (commit ff2d8ae)", measured 2026-11-21 with the same scale benchmark
RECORDED_CYCLE_100K_S = 8.69
RECORDED_CYCLE_REF = "ff2d8ae, recorded"


@dataclass
class Goal:
    """One row: what is measured, our number, the baseline's, the goal, and whether it is met."""

    name: str
    ours: float | None
    baseline: float | None
    baseline_label: str
    goal: str
    met: bool | None
    ratio: float | None = None

    def row(self) -> list[Any]:
        base = self.baseline_label if self.baseline is None else f"{fmt_num(self.baseline)} ({self.baseline_label})"
        return [self.name, self.ours, base, self.goal, self.ratio, "-" if self.met is None else
                ("yes" if self.met else "NO")]


def _scale_goals(sc: dict[str, Any]) -> list[Goal]:
    rows = sc.get("rows") or []
    if not rows:
        return []
    big, small = rows[-1], rows[0]
    c2 = big["cycles"][-1]
    cycle = c2.get("wall_without_ssh_s")
    n = big["fireworks"]
    full = n >= 100_000 and sc.get("clusters", 0) >= 20
    out = [Goal(f"manager cycle w/o SSH s ({n:,} FWs x {sc.get('clusters')} clusters)", cycle,
                RECORDED_CYCLE_100K_S if full else None, RECORDED_CYCLE_REF if full else "-", "< 1 s",
                None if cycle is None or not full else cycle < 1.0,
                ratio(cycle, RECORDED_CYCLE_100K_S) if full else None)]
    db_small, db_big = small["cycles"][-1]["db_commands"], c2["db_commands"]
    out.append(Goal(f"DB commands per cycle at {n:,} vs {small['fireworks']:,} FWs", db_big, db_small,
                    f"at {small['fireworks']:,}", "independent of FWs", db_big <= db_small if len(rows) > 1 else None,
                    ratio(db_big, db_small)))
    rss = max(r["peak_rss_mib"] for r in rows)
    out.append(Goal(f"manager peak RSS MiB ({n:,} FWs)", rss, None, "-", "< 150 MiB",
                    rss < 150 if full else None))
    return out


def _waste_goals(w: dict[str, Any]) -> list[Goal]:
    ours, base = w.get("ours"), w.get("rlaunch")
    if not ours or not base:
        return []
    complete = bool(ours.get("campaign_complete")) and bool(base.get("campaign_complete"))
    u, b = ours.get("utilisation_useful"), base.get("utilisation_useful")
    out = [Goal("utilisation useful/pilot time (wall-time campaign)", u, b, "rlaunch",
                ">= rlaunch (+-1 s/job)", None if u is None or b is None else (complete and _at_least(ours, base)),
                ratio(u, b))]
    k, kb = _killed(ours), _killed(base)
    out.append(Goal("segments killed or past wall time (wall-time campaign)", k, kb, "rlaunch", "0",
                    complete and k == 0))
    return out


def _at_least(ours: dict[str, Any], base: dict[str, Any]) -> bool:
    """Our utilisation at least the baseline's, within what the measurement can tell: both did the same work,
    so ours is at least as good when our pilot time is at most theirs, and sacct's elapsed time is whole
    seconds per job (up to 1 s off for each of the jobs on both sides)."""
    slack = float(ours.get("pilots_started") or 0) + float(base.get("pilots_started") or 0)
    return float(ours["pilot_time_s"]) <= float(base["pilot_time_s"]) + slack


def _killed(m: dict[str, Any]) -> int:
    """Segments the scheduler ended (or would have: still running past the wall time, which SLURM's coarse
    time-limit tick lets pass here, not at hours-long scale) and segments that died unsaved."""
    return (int(m.get("segments_killed_by_scheduler") or 0) + int(m.get("segments_hard_killed") or 0)
            + int(m.get("segments_past_walltime") or 0))


def _overhead_goals(o: dict[str, Any]) -> list[Goal]:
    ours, base = o.get("ours"), o.get("rlaunch")
    if not ours or not base:
        return []
    out = []
    for label, key in (("worker FW/s, no-op Fireworks", "fw_per_s"), ("worker steady FW/s", "steady_fw_per_s")):
        r = ratio(ours.get(key), base.get(key))
        out.append(Goal(label, ours.get(key), base.get(key), "rlaunch", ">= 1.5x rlaunch",
                        None if r is None else r >= 1.5, r))
    at = o.get("worker_rss_at") or {}
    rss = at.get("peak_rss_mib", ours.get("peak_rss_mib"))
    n = at.get("fireworks_in_launchpad") or ours.get("fireworks")
    where = f"{n:,} FWs in the LaunchPad" if isinstance(n, int) else "-"
    out.append(Goal(f"worker peak RSS MiB ({where})", rss, base.get("peak_rss_mib"), "rlaunch", "< 100 MiB",
                    None if rss is None else rss < 100, ratio(rss, base.get("peak_rss_mib"))))
    return out


#: replay rows judged against their bound: met when ours / bound is at most this
_REPLAY_TOLERANCE = {"pilots submitted": 1.2, "pilots started": 1.2, "makespan": 1.5}


def _replay_goals(r: dict[str, Any]) -> list[Goal]:
    from benchmarks import replay

    out = []
    for name, ours, bound, goal, rat in replay.goal_rows(r):
        tol = next((t for key, t in _REPLAY_TOLERANCE.items() if key in str(name)), None)
        numeric = isinstance(bound, (int, float))
        out.append(Goal(str(name), ours, bound if numeric else None, "bound" if numeric else "-", str(goal),
                        None if tol is None or rat is None else rat <= tol, rat))
    return out


def goals(benchmarks: dict[str, Any]) -> list[Goal]:
    """Every goal row that the benchmarks of this run have numbers for."""
    out: list[Goal] = []
    for name, fn in (("scale", _scale_goals), ("waste", _waste_goals), ("overhead", _overhead_goals),
                     ("replay", _replay_goals)):
        if benchmarks.get(name):
            out.extend(fn(benchmarks[name]))
    return out


def table(benchmarks: dict[str, Any]) -> str:
    rows = [g.row() for g in goals(benchmarks)]
    if not rows:
        return "(no goal measured in this run)"
    return fmt_table(["goal (issue 18)", "ours", "baseline", "goal", "ratio ours/baseline", "met"], rows)


def as_json(benchmarks: dict[str, Any]) -> list[dict[str, Any]]:
    return [vars(g) for g in goals(benchmarks)]
