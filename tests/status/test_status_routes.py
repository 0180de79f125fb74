"""``pilot status`` and the LaunchPad routes (``launchpad_route: ssh``) the manager keeps.

The manager writes its route keepers' states into its heartbeat record (``pilot_manager`` ``_id: "manager"``,
field ``routes``: ``{cluster: RouteState.to_dict()}``, pilot/manager/cycle.py). These tests write such records
into the session's LaunchPad with pymongo, as the manager does, and read them back through ``gather_status``
and the ``pilot status`` command. Expected text and JSON are written from the values put into the records.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pilot.config import load_config
from pilot.status import format_status, gather_status
from tests.manager.helpers import write_config
from tests.status.test_status import epoch, pilot_cli, validate

#: The login nodes' loopback ports of the forwards, as the cluster files give them.
PORT_UP, PORT_DOWN, PORT_NOT_KEPT = 23456, 23457, 23458
DOWN_ERROR = ("cannot connect to pilot@203.0.113.11:22 (timed out after 10 s)\n"
              "  try: check that sshd runs on 203.0.113.11 port 22 and is reachable")


def _slurm_cluster(tmp: Path, name: str, lp_file: Path, host: str, route: Any) -> dict[str, Any]:
    """A cluster file (loading it contacts nothing); ``route``: its ``launchpad_route``."""
    known_hosts = tmp / "known_hosts"     # loading checks that it exists, never reads it here
    known_hosts.touch()
    return {"scheduler": "slurm", "host": host, "port": 22, "user": "pilot", "use_ssh_config": False,
            "known_hosts": str(known_hosts),
            "categories": [name], "launchpad_file": str(lp_file), "work_dir": f"/scratch/pilot/{name}",
            "pilot": {"walltime": "60", "partition": "debug"}, "walltime_margin": 60,
            "launchpad_route": route}


def _config(tmp_path: Path, launchpad: Any) -> Path:
    """A config dir: ``direct1`` (direct), ``up1``/``down1``/``notkept1`` (ssh, each with its port)."""
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    clusters = {
        "direct1": _slurm_cluster(tmp_path, "direct1", lp_file, "203.0.113.9", "direct"),
        "up1": _slurm_cluster(tmp_path, "up1", lp_file, "203.0.113.10", {"via": "ssh", "port": PORT_UP}),
        "down1": _slurm_cluster(tmp_path, "down1", lp_file, "203.0.113.11", {"via": "ssh", "port": PORT_DOWN}),
        "notkept1": _slurm_cluster(tmp_path, "notkept1", lp_file, "203.0.113.12",
                                   {"via": "ssh", "port": PORT_NOT_KEPT}),
    }
    return write_config(tmp_path / "cfg", lp_file, clusters, poll_interval=60)


def _state(cluster: str, up: bool, since: float | None, error: str | None, port: int, connects: int,
           host: str) -> dict[str, Any]:
    """What RouteState.to_dict() gives (pilot/manager/routes.py)."""
    return {"cluster": cluster, "up": up, "since": since, "last_error": error, "port": port,
            "login": f"pilot@{host}:22", "target": "198.51.100.1:27017", "connects": connects}


def _heartbeat(launchpad: Any, last_cycle: float, routes: dict[str, dict[str, Any]]) -> None:
    """The manager's heartbeat as Manager.run_cycle writes it (an upsert of these fields)."""
    launchpad.db["pilot_manager"].update_one(
        {"_id": "manager"}, {"$set": {"last_cycle": last_cycle, "last_cycle_duration": 0.4, "errors": {},
                                      "routes": routes}}, upsert=True)


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _table_lines(text: str) -> list[str]:
    return text.split("CLUSTERS\n", 1)[1].split("\n\n", 1)[0].splitlines()


def _header_cells(text: str) -> list[str]:
    return [h.strip() for h in _table_lines(text)[0].split("  ") if h.strip()]


def _column(text: str, name: str) -> dict[str, str]:
    """Cluster -> its cell in column ``name`` of the CLUSTERS table (cells start where their header starts)."""
    header, _, *rows = _table_lines(text)
    headers = _header_cells(text)
    start = header.index(name)
    i = headers.index(name)
    end = header.index(headers[i + 1], start) if i + 1 < len(headers) else None
    return {row.split()[0]: row[start:end].strip() for row in rows}


# ============================================================================ up, down, not kept
def _routes_written(launchpad: Any, now: float) -> dict[str, float]:
    """Heartbeat: up1 up for 2 h (connected twice), down1 down for 25 min, leftover states for direct1 and for
    gone1 (no longer in the config) from a manager that ran an older config, none for notkept1. Returns the
    ``since`` times."""
    since = {"up1": now - 7200, "down1": now - 1500}
    _heartbeat(launchpad, now - 20, {
        "up1": _state("up1", True, since["up1"], None, PORT_UP, 2, "203.0.113.10"),
        "down1": _state("down1", False, since["down1"], DOWN_ERROR, PORT_DOWN, 1, "203.0.113.11"),
        "direct1": _state("direct1", True, now - 99999, None, 21000, 1, "203.0.113.9"),
        "gone1": _state("gone1", False, now - 99999, DOWN_ERROR, 21001, 1, "203.0.113.8"),
    })
    return since


def test_routes_up_down_and_not_kept_in_the_report(launchpad, tmp_path):
    cfg_dir = _config(tmp_path, launchpad)
    now = time.time()
    since = _routes_written(launchpad, now)
    report = gather_status(launchpad.db, load_config(cfg_dir), now=now)
    doc = report.to_dict()
    validate(doc)
    clusters = {c["name"]: c for c in doc["clusters"]}
    assert clusters["direct1"]["route"] is None          # direct in the config: the leftover state is not shown
    assert "gone1" not in clusters                       # nor a cluster the config no longer has
    up = clusters["up1"]["route"]
    assert epoch(up.pop("since")) == pytest.approx(since["up1"], abs=1e-6)
    assert up == {"via": "ssh", "up": True, "last_error": None, "port": PORT_UP, "connects": 2}
    down = clusters["down1"]["route"]
    assert epoch(down.pop("since")) == pytest.approx(since["down1"], abs=1e-6)
    assert down == {"via": "ssh", "up": False, "last_error": DOWN_ERROR, "port": PORT_DOWN, "connects": 1}
    assert clusters["notkept1"]["route"] == {"via": "ssh", "up": False, "since": None, "last_error": None,
                                             "port": PORT_NOT_KEPT, "connects": None}
    assert doc["needs_you"]["count"] == 2                # down1 and notkept1; nothing else is wrong
    assert doc["schema_version"] == 2

    text = format_status(report, now=now)
    print(text)
    assert _header_cells(text)[:4] == ["cluster", "scheduler", "reachable", "route"]
    assert _column(text, "route") == {"direct1": "-", "down1": "ssh DOWN 25m", "notkept1": "ssh NOT KEPT",
                                      "up1": "ssh up"}
    assert "NEEDS YOU (2)" in text
    pilot = f"pilot --config-dir {cfg_dir}"     # the hints keep the config dir (not the default one)
    assert (f"* cluster down1: the LaunchPad route (the manager's forward on the login node's "
            f"127.0.0.1:{PORT_DOWN}) is down since {_clock(since['down1'])} (25 min ago): "
            "cannot connect to pilot@203.0.113.11:22 (timed out after 10 s)\n"
            "    try: check that sshd runs on 203.0.113.11 port 22 and is reachable\n"
            f"    check it with: {pilot} doctor down1\n") in text
    assert (f"* cluster notkept1: its launchpad_route is ssh, but the manager keeps no LaunchPad route for it (no "
            f"forward on the login node's 127.0.0.1:{PORT_NOT_KEPT}), so its pilots cannot reach the LaunchPad. "
            f"The manager reads the cluster files when it starts: restart it (`{pilot} manager stop`, then "
            f"`{pilot} manager start`); if the route is still missing, its log says why\n"
            f"    check it with: {pilot} doctor notkept1\n") in text
    assert "cluster up1:" not in text and "cluster direct1:" not in text


def test_status_command_shows_the_routes(launchpad, tmp_path):
    """``pilot --config-dir D status`` (text and --json) on the records written as the manager writes them."""
    cfg_dir = _config(tmp_path, launchpad)
    since = _routes_written(launchpad, time.time())
    res = pilot_cli("--config-dir", str(cfg_dir), "status")
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    route = _column(res.stdout, "route")
    assert (route["up1"], route["down1"]) == ("ssh up", "ssh DOWN 25m")
    assert f"pilot --config-dir {cfg_dir} doctor down1" in res.stdout
    assert (f"is down since {_clock(since['down1'])} (25 min ago): cannot connect to pilot@203.0.113.11:22"
            in res.stdout)
    res = pilot_cli("--config-dir", str(cfg_dir), "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    validate(doc)
    routes = {c["name"]: c["route"] for c in doc["clusters"]}
    assert (routes["up1"]["up"], routes["down1"]["up"], routes["down1"]["last_error"]) == (True, False, DOWN_ERROR)
    assert doc["needs_you"]["count"] == 2


def test_the_table_stays_within_120_columns(launchpad, tmp_path):
    """Routes, a backed-off cluster and a long error: the clusters table still fits 120 columns."""
    cfg_dir = _config(tmp_path, launchpad)
    now = time.time()
    _routes_written(launchpad, now)
    launchpad.db["pilot_clusters"].insert_one({
        "_id": "down1", "reachable": False, "last_contact": now - 4000, "last_error": "x" * 300,
        "last_error_time": now - 30, "failures": 4, "backoff_until": now + 600})
    report = gather_status(launchpad.db, load_config(cfg_dir), now=now)
    text = format_status(report, now=now, width=120)
    print(text)
    assert max(len(ln) for ln in _table_lines(text)) <= 120
    lines = _table_lines(text)
    assert len(lines[1]) == 120                       # what the other columns leave goes to the last error
    assert _column(text, "last error")["down1"] == "x" * (len(lines[1].split()[-1]) - 3) + "..."
    assert _column(text, "backed off")["down1"] == "in 10 min"   # the clock time is under NEEDS YOU
    assert f"is backed off in 10 min ({dt.datetime.fromtimestamp(now + 600):%H:%M:%S})" in text


# ============================================================================ stale, starting, no config
def test_a_stale_heartbeat_says_unknown_not_up(launchpad, tmp_path):
    """The manager stopped cycling an hour ago with every route up: nothing is shown as up, and the only entry
    is that the manager is not cycling."""
    cfg_dir = _config(tmp_path, launchpad)
    now = time.time()
    _heartbeat(launchpad, now - 3600, {
        "up1": _state("up1", True, now - 7200, None, PORT_UP, 1, "203.0.113.10"),
        "down1": _state("down1", False, now - 4000, DOWN_ERROR, PORT_DOWN, 1, "203.0.113.11"),
    })
    report = gather_status(launchpad.db, load_config(cfg_dir), now=now)
    doc = report.to_dict()
    validate(doc)
    routes = {c["name"]: c["route"] for c in doc["clusters"]}
    assert [routes[n]["up"] for n in ("up1", "down1", "notkept1")] == [None, None, None]
    assert routes["down1"]["last_error"] == DOWN_ERROR and routes["up1"]["connects"] == 1   # as last recorded
    assert routes["notkept1"]["port"] == PORT_NOT_KEPT and routes["direct1"] is None
    assert doc["needs_you"]["manager_stale"] is not None and doc["needs_you"]["count"] == 1
    text = format_status(report, now=now)
    assert _column(text, "route") == {"direct1": "-", "down1": "ssh unknown", "notkept1": "ssh unknown",
                                      "up1": "ssh unknown"}
    assert "NEEDS YOU (1)" in text and "the manager is not cycling" in text
    assert "LaunchPad route" not in text


def test_first_attempt_under_way_is_starting_not_down(launchpad, tmp_path):
    """A keeper whose first attempt has not ended (since and last_error None, connects 0): not a problem yet."""
    cfg_dir = _config(tmp_path, launchpad)
    now = time.time()
    _heartbeat(launchpad, now - 5, {
        "up1": _state("up1", False, None, None, PORT_UP, 0, "203.0.113.10"),
        "down1": _state("down1", True, now - 30, None, PORT_DOWN, 1, "203.0.113.11"),
        "notkept1": _state("notkept1", True, now - 30, None, PORT_NOT_KEPT, 1, "203.0.113.12"),
    })
    report = gather_status(launchpad.db, load_config(cfg_dir), now=now)
    doc = report.to_dict()
    validate(doc)
    assert {c["name"]: c["route"]["up"] for c in doc["clusters"] if c["route"]} == \
        {"up1": False, "down1": True, "notkept1": True}
    assert doc["needs_you"]["count"] == 0
    text = format_status(report, now=now)
    assert _column(text, "route")["up1"] == "ssh starting"
    assert "NEEDS YOU: nothing" in text


def test_without_config_the_routes_come_from_the_heartbeat(launchpad):
    """From another machine (no config dir): every route of the heartbeat, and only those."""
    now = time.time()
    _heartbeat(launchpad, now - 10, {
        "far": _state("far", False, now - 180, "the login node did not answer a keepalive within 15 s", 24000, 3,
                      "203.0.113.20"),
    })
    launchpad.db["pilot_clusters"].insert_one({"_id": "near", "reachable": True, "last_contact": now - 10,
                                               "last_error": None, "last_error_time": None, "failures": 0,
                                               "backoff_until": None})
    report = gather_status(launchpad.db, None, now=now)
    doc = report.to_dict()
    validate(doc)
    clusters = {c["name"]: c for c in doc["clusters"]}
    assert clusters["near"]["route"] is None
    assert clusters["far"]["route"]["up"] is False and clusters["far"]["route"]["connects"] == 3
    assert doc["needs_you"]["count"] == 1
    text = format_status(report, now=now)
    assert _column(text, "route") == {"far": "ssh DOWN 3m", "near": "-"}
    assert (f"* cluster far: the LaunchPad route (the manager's forward on the login node's 127.0.0.1:24000) is "
            f"down since {_clock(now - 180)} (3 min ago): the login node did not answer a keepalive within 15 s\n"
            "    check it with: pilot doctor far\n") in text


def test_no_routes_no_route_column(launchpad):
    """Only direct clusters: the table is as before (no route column, route null in --json)."""
    now = time.time()
    _heartbeat(launchpad, now - 10, {})
    launchpad.db["pilot_manager"].update_one({"_id": "manager"}, {"$unset": {"routes": ""}})
    launchpad.db["pilot_clusters"].insert_one({"_id": "near", "reachable": True, "last_contact": now - 10,
                                               "last_error": None, "last_error_time": None, "failures": 0,
                                               "backoff_until": None})
    report = gather_status(launchpad.db, None, now=now)
    doc = report.to_dict()
    validate(doc)
    assert [c["route"] for c in doc["clusters"]] == [None]
    assert "route" not in _header_cells(format_status(report, now=now))
