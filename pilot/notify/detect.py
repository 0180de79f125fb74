"""What needs a person, found in the documents the manager and FireWorks keep: pure functions from documents and
numbers to :class:`~pilot.notify.events.Event` objects (the queries are :mod:`pilot.notify.notifier`'s).

Each event's key names the happening itself, not the moment it was seen: a FIZZLED launch (``fizzled:fw 12:launch
34``), an outage by the time it began (``unreachable:pilotci:1765090000.0``, from the cluster record's
``down_since``), a hold by its ``since``, a budget by its cluster, account, start and size. Seeing the same thing
again next cycle, or after a restart, gives the same key, and :mod:`pilot.notify.outbox` sends a key once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pilot.isotime import epoch_seconds
from pilot.notify.events import Event, one_line

__all__ = ["BudgetLike", "budget_events", "cluster_events", "cluster_of_fworker", "error_line", "fizzle_events",
           "refusal_events"]

#: How a command a person can run is written: ``f("status")`` -> ``pilot --config-dir X status``.
Command = Callable[[str], str]

_ERROR_WIDTH = 200
#: A Firework's name is cut to this many characters in a message.
_NAME_WIDTH = 100


def _clock(t: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(t))


def _span(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"


def error_line(stored_data: Any) -> str:
    """Why a launch fizzled, in one short line: the last line of ``_exception._stacktrace`` (``Type: message``),
    else the first of ``_message`` (FireWorks' Rocket stores both, fireworks/core/rocket.py)."""
    text = None
    if isinstance(stored_data, dict):
        exc = stored_data.get("_exception")
        trace = exc.get("_stacktrace") if isinstance(exc, dict) else None
        if isinstance(trace, str):
            lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
            text = lines[-1] if lines else None
        msg = stored_data.get("_message")
        if text is None and isinstance(msg, str) and msg.strip():
            text = msg.strip().splitlines()[0]
    if text is None:
        return "no error recorded"
    return one_line(text, _ERROR_WIDTH)


def cluster_of_fworker(name: str | None, pilots: Mapping[str, str], clusters: Iterable[str]) -> str | None:
    """The cluster a launch ran on: its FWorker's pilot record (``pilots``: fworker -> cluster), else the longest
    configured cluster name that the FWorker name starts with followed by ``-`` (pilots name their FWorker
    ``CLUSTER-JOBID``, :func:`pilot.manager.runtime.fworker_name`); None when neither says."""
    if not name:
        return None
    if name in pilots:
        return pilots[name]
    known = [c for c in clusters if name.startswith(c + "-")]
    return max(known, key=len) if known else None


def fizzle_events(fireworks: Iterable[dict[str, Any]], launches: Mapping[int, dict[str, Any]],
                  pilots: Mapping[str, str], clusters: Iterable[str], pilot_cmd: Command,
                  lpad_cmd: Command, now: float) -> list[Event]:
    """One event per FIZZLED Firework's last launch (``fireworks``: documents with fw_id, name, launches,
    spec._category; ``launches``: launch_id -> launch document). A Firework fizzled again after a rerun is a new
    event (a new launch); one fizzled without any launch (``lpad defuse``-like paths) is keyed by its fw_id."""
    names = list(clusters)
    out = []
    for fw in fireworks:
        fw_id = int(fw["fw_id"])
        ids = [x for x in (fw.get("launches") or []) if isinstance(x, int)]
        lid = ids[-1] if ids else None
        launch = launches.get(lid, {}) if lid is not None else {}
        fworker = (launch.get("fworker") or {}).get("name") if isinstance(launch.get("fworker"), dict) else None
        cluster = cluster_of_fworker(fworker, pilots, names)
        where = cluster or (f"FWorker {fworker}" if fworker else "LaunchPad")
        error = error_line((launch.get("action") or {}).get("stored_data")) if launch else "no launch recorded"
        name = one_line(str(fw.get("name") or ""), _NAME_WIDTH)   # one line: a name may hold anything
        cat = (fw.get("spec") or {}).get("_category")
        label = f"fw {fw_id}" + (f" ({name})" if name else "")
        on = f"on {cluster} (pilot {fworker})" if cluster else (f"on FWorker {fworker}" if fworker else "")
        show = lpad_cmd(f"get_fws -i {fw_id} -d more")
        body = "\n".join(x for x in [
            f"Firework {fw_id}{f' ({name})' if name else ''} FIZZLED {on}".rstrip() + ".",
            f"Error: {error}",
            f"Category: {cat}" if cat else "",
            f"Launch: {lid} on host {launch.get('host')}, in {launch.get('launch_dir')}" if launch else "",
            "",
            f"Details: {show}",
            f"Overview: {pilot_cmd('status')}",
            f"Run it again once fixed: {lpad_cmd(f'rerun_fws -i {fw_id}')}",
        ] if x is not None)
        at = f" on {where}" if fworker or cluster else ""
        out.append(Event(kind="fizzled", key=f"fizzled:fw {fw_id}:launch {lid}", where=where,
                         subject=f"FIZZLED: {label}{at}", body=body, summary=f"{label}{at}: {error}", ref=f"fw {fw_id}",
                         more=f"{pilot_cmd('status')}; {lpad_cmd('get_fws -s FIZZLED -d ids')}",
                         time=epoch_seconds(fw.get("updated_on")) or now, detail=error))
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _down_long_enough(rec: dict[str, Any], down: float, now: float, after: float) -> bool:
    """Whether an outage that began at ``down`` is one a person should hear of: ``after`` seconds old, *and* seen
    failing more than once (``failures``) or failing still ``after`` seconds after it began (``last_error_time``).
    On an idle cluster nobody asks it anything: one transient failure must not age into "unreachable"."""
    if now - down < after:
        return False
    failures = _num(rec.get("failures")) or 0
    seen = _num(rec.get("last_error_time"))
    return failures >= 2 or (seen is not None and seen - down >= after)


def cluster_events(records: Iterable[dict[str, Any]], now: float, unreachable_after: float,
                   open_outages: Mapping[str, float], pilot_cmd: Command, login_notice: bool = True,
                   recovered_notice: bool = True) -> list[Event]:
    """Events from the manager's ``pilot_clusters`` records (:mod:`pilot.manager.records`).

    ``unreachable``: the cluster has failed since ``down_since`` for at least ``unreachable_after`` (and more than
    once, or still that long after the first failure: :func:`_down_long_enough`);
    ``recovered``: a cluster with an outage a person was told of (``open_outages``: cluster -> its down_since)
    answers again, or is down in a later outage (then it recovered in between); ``login``: its one-time-password
    login lapsed (``needs_login``), at once, and instead of ``unreachable`` for that outage (its message names
    the fix; with ``login_notice`` False, as when ``login`` is not among the events sent, it is told as
    ``unreachable``); ``held``: its pilots fail to start (``hold``), once per hold. ``recovered_notice``: whether
    a ``recovered`` message will follow (the unreachable message promises one only then).
    """
    out = []
    for rec in records:
        name = str(rec.get("_id"))
        down = _num(rec.get("down_since"))
        failing = rec.get("reachable") is False and down is not None
        was = open_outages.get(name)
        if was is not None and (not failing or down != was):
            out.append(Event(
                kind="recovered", key=f"recovered:{name}:{was}", where=name,
                subject=f"{name} reachable again", ref=name, more=pilot_cmd("status"), time=now,
                summary=f"{name}: reachable again after {_span(now - was)} (down since {_clock(was)})",
                body=f"Cluster {name} answers again after {_span(now - was)} (failing since {_clock(was)}).\n"
                     f"The manager submits and tracks its pilots as before.\n\nOverview: {pilot_cmd('status')}"))
        if failing and down is not None:
            if rec.get("needs_login") and login_notice:
                out.append(_login_event(name, rec, down, now, pilot_cmd))
            elif _down_long_enough(rec, down, now, unreachable_after):
                out.append(_unreachable_event(name, rec, down, now, pilot_cmd, recovered_notice))
        out += _hold_event(name, rec.get("hold"), now, pilot_cmd)
    return out


def _login_event(name: str, rec: dict[str, Any], down: float, now: float, pilot_cmd: Command) -> Event:
    error = one_line(str(rec.get("last_error") or "no error recorded"), _ERROR_WIDTH * 2)
    return Event(
        kind="login", key=f"login:{name}:{down}", where=name, subject=f"{name}: login needed",
        ref=name, more=pilot_cmd("status"), time=now,
        summary=f"{name}: the one-time-password login lapsed; run {pilot_cmd(f'connect {name}')}",
        body=f"The login to cluster {name} lapsed (it asks for a one-time password): the manager cannot "
             f"reach it until a person logs in again.\nLast error: {error}\n\n"
             f"Log in: {pilot_cmd(f'connect {name}')}\nOverview: {pilot_cmd('status')}")


def _unreachable_event(name: str, rec: dict[str, Any], down: float, now: float, pilot_cmd: Command,
                       recovered_notice: bool) -> Event:
    error = one_line(str(rec.get("last_error") or "no error recorded"), _ERROR_WIDTH * 2)
    promise = "You will get one more message when it answers again.\n" if recovered_notice else ""
    return Event(
        kind="unreachable", key=f"unreachable:{name}:{down}", where=name,
        subject=f"{name} unreachable for {_span(now - down)}", ref=name, more=pilot_cmd("status"),
        time=now, summary=f"{name}: failing since {_clock(down)}: {error}",
        body=f"Cluster {name} has been unreachable (or refusing commands) since {_clock(down)}, "
             f"{_span(now - down)} ago; {int(rec.get('failures') or 0)} failed attempt(s).\n"
             f"Last error: {error}\nNo pilot is submitted there meanwhile; its work goes to other clusters.\n"
             f"{promise}\n"
             f"Check the connection: {pilot_cmd(f'doctor {name}')}\nOverview: {pilot_cmd('status')}")


def refusal_events(records: Iterable[dict[str, Any]], now: float, after: float, open_refusals: Mapping[str, float],
                   pilot_cmd: Command, recovered_notice: bool = True) -> list[Event]:
    """``refusing``: the cluster's scheduler has refused every submission since ``refusing_since`` (the manager
    keeps it across refusals in a row, :meth:`pilot.manager.records.Records.submission_refused`) for at least
    ``after`` seconds: it answers, so it is not unreachable, yet no pilot starts there (an account or a QOS gone).
    Keyed by the run of refusals (``refusing:CLUSTER:SINCE``). Its end, once a person was told (``open_refusals``:
    cluster -> refusing_since), is a ``recovered`` event keyed ``accepting:CLUSTER:SINCE``."""
    out = []
    for rec in records:
        name = str(rec.get("_id"))
        since = _num(rec.get("refusing_since"))
        was = open_refusals.get(name)
        if was is not None and since != was:
            out.append(Event(
                kind="recovered", key=f"accepting:{name}:{was}", where=name,
                subject=f"{name} accepts submissions again", ref=name, more=pilot_cmd("status"), time=now,
                summary=f"{name}: accepts submissions again after {_span(now - was)} of refusals",
                body=f"Cluster {name} accepts pilot submissions again, after refusing them for "
                     f"{_span(now - was)} (since {_clock(was)}).\n\nOverview: {pilot_cmd('status')}"))
        if since is None or now - since < after:
            continue
        reason = one_line(str(rec.get("last_refusal") or "no reason recorded"), _ERROR_WIDTH * 2)
        promise = "You will get one more message when it accepts them again.\n" if recovered_notice else ""
        out.append(Event(
            kind="refusing", key=f"refusing:{name}:{since}", where=name,
            subject=f"{name} refuses pilot submissions", ref=name, more=pilot_cmd("status"), time=now,
            summary=f"{name}: every submission refused since {_clock(since)}: {reason}",
            detail=reason,
            body=f"{name} has refused every submission for {_span(now - since)} (since {_clock(since)}): "
                 f"{reason}\nThe cluster answers, but no pilot starts there; its work goes to other clusters. "
                 f"Check the account, partition and QOS in its cluster file.\n{promise}\n"
                 f"See more: {pilot_cmd(f'doctor {name}')}\nOverview: {pilot_cmd('status')}"))
    return out


def _hold_event(name: str, hold: Any, now: float, pilot_cmd: Command) -> list[Event]:
    if not isinstance(hold, dict) or not isinstance(hold.get("since"), (int, float)):
        return []
    pilot: dict[str, Any] = hold["pilot"] if isinstance(hold.get("pilot"), dict) else {}
    why = str(pilot.get("why") or pilot.get("reason") or "ended before running any Firework")
    tail = str(hold.get("stderr_tail") or "").strip()
    tail_lines = tail.splitlines()[-5:]
    body = [f"Cluster {name} is held: {int(hold.get('failures') or 0)} pilots in a row ended before running any "
            f"Firework (last: job {pilot.get('job_id')}: {why}).",
            "The manager tries one probe pilot now and then; the hold ends when one runs, or when the cluster file "
            "changes."]
    if tail_lines:
        body += ["", "Its stderr ends with:", *(f"  {ln}" for ln in tail_lines)]
    if hold.get("see_more"):
        body += ["", f"See more: {hold['see_more']}"]
    body += [f"Overview: {pilot_cmd('status')}"]
    return [Event(kind="held", key=f"held:{name}:{float(hold['since'])}", where=name,
                  subject=f"{name} held: pilots fail to start", summary=f"{name}: pilots fail to start ({why})",
                  ref=name, more=pilot_cmd("status"), time=now, body="\n".join(body))]


class BudgetLike(Protocol):
    """What :func:`budget_events` reads of a budget state (:class:`pilot.manager.budget.BudgetState`)."""

    cluster: str
    used: int
    committed: int
    budget: Any

    @property
    def limit(self) -> int: ...


def budget_events(states: Iterable[BudgetLike], warn: float, now: float, pilot_cmd: Command) -> list[Event]:
    """One event per budget whose used + committed core-seconds reach ``warn`` of its limit; keyed by cluster,
    account, since and size (a larger budget written later is a new one)."""
    out = []
    for s in states:
        limit = int(s.limit)
        spent = int(s.used) + int(s.committed)
        if limit <= 0 or spent < warn * limit:
            continue
        b = s.budget
        account = getattr(b, "account", None)
        since = getattr(b, "since", None)
        label = b.label() if hasattr(b, "label") else f"{limit / 3600:,.0f} core-h"
        share = spent / limit
        out.append(Event(
            kind="budget", key=f"budget:{s.cluster}:{account or '*'}:{since or '-'}:{limit}", where=s.cluster,
            subject=f"{s.cluster}: budget {share:.0%} spent ({label})", ref=f"{s.cluster}/{account or 'all'}",
            more=pilot_cmd("status"), time=now,
            summary=f"{s.cluster}: {share:.0%} of {label} (used {s.used / 3600:,.1f}, committed "
                    f"{s.committed / 3600:,.1f} core-h)",
            body=f"The budget {label} of cluster {s.cluster} is {share:.0%} spent: used {s.used / 3600:,.1f} "
                 f"core-h, committed to live pilots {s.committed / 3600:,.1f} core-h, of {limit / 3600:,.1f}.\n"
                 "New pilots stop when the next one would go over it; running ones are not touched.\n"
                 f"Raise it in the cluster file (budget:) if more may be spent.\n\n"
                 f"Core-hours: {pilot_cmd('status')}\nHistory: {pilot_cmd('report')}"))
    return out
