"""``pilot status``: the pure formatting, the gathering on the embedded server, and a real run on SLURM.

The real run (``test_status_after_a_real_run``) runs the manager with real pilots on the SLURM cluster
pilotci: Fireworks that complete, one that fails on purpose, a cluster whose sshd is not there; then
``pilot status`` (text and ``--json``) must show what happened. Expected values come from the database
itself (read directly with pymongo), from the files SLURM wrote, and from FireWorks' documented behaviour,
never from pilot.status.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fireworks import Firework, FWorker, ScriptTask, Workflow

from pilot.status import (
    OTHER_CATEGORIES,
    StatusOptions,
    error_line,
    format_status,
    format_table,
    gather_status,
    human_ago,
    human_duration,
    human_until,
)
from tests.helpers import REPO, wait_for

SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())


def validate(doc: dict) -> None:
    """Validate a status document against docs/status.schema.json (jsonschema when installed)."""
    try:
        import jsonschema
    except ImportError:  # a structural check of the top level and of every cluster/category entry
        for key in SCHEMA["required"]:
            assert key in doc, key
        for c in doc["clusters"]:
            assert set(SCHEMA["$defs"]["cluster"]["required"]) == set(c)
        for c in doc["categories"]:
            assert set(SCHEMA["$defs"]["category"]["required"]) == set(c)
        return
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def epoch(text: str) -> float:
    """Epoch seconds of a ``--json`` time: ISO 8601 UTC text without offset (as ``pilot report --json``)."""
    d = dt.datetime.fromisoformat(text)
    assert d.tzinfo is None, text
    return d.replace(tzinfo=dt.timezone.utc).timestamp()


def pilot_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", *args], capture_output=True, text=True, check=False,
                          timeout=timeout)


# ============================================================================ pure
def test_human_times():
    now = 1_000_000.0
    assert human_ago(None, now) == "never"
    assert human_ago(now - 2, now) == "just now"
    assert human_ago(now - 40, now) == "40 s ago"
    assert human_ago(now - 180, now) == "3 min ago"
    assert human_ago(now - 7500, now) == "2 h 5 min ago"
    assert human_ago(now - 7200, now) == "2 h ago"
    assert human_ago(now - 3 * 86400 - 4 * 3600, now) == "3 d 4 h ago"
    assert human_ago(now + 120, now) == "in 2 min"
    assert human_ago(now - 270, now) == "4 min 30 s ago"
    assert human_ago(now - 1500, now) == "25 min ago"
    assert human_duration(59.9) == "59 s"
    assert human_until(None, now) == "-"
    assert human_until(now - 1, now) == "-"
    assert human_until(now + 540, now).startswith("in 9 min (")


def test_error_line_takes_the_last_line_of_the_trace_else_the_message():
    # FireWorks' Rocket stores {"_message": ..., "_exception": {"_stacktrace": traceback text}}
    # (fireworks/core/rocket.py); the last line of a Python traceback is "Type: message".
    trace = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
             "RuntimeError: ScriptTask fizzled! Return code: [3]\n")
    assert error_line({"_message": "runtime error during task", "_exception": {"_stacktrace": trace}}) == \
        "RuntimeError: ScriptTask fizzled! Return code: [3]"
    assert error_line({"_message": "pilot p1 ended\nsecond line"}) == "pilot p1 ended"
    assert error_line(None).startswith("no error recorded")
    assert error_line({}).startswith("no error recorded")


def test_stored_times_are_read_one_way():
    """``pilot status`` and ``pilot report`` read FireWorks' times with one function (pilot.isotime)."""
    from pilot.isotime import epoch_seconds

    t = 1714564800.0   # 2024-05-01T12:00:00 UTC
    assert epoch_seconds("2024-05-01T12:00:00") == t                  # FireWorks' form: naive means UTC
    assert epoch_seconds("2024-05-01 14:00:00+02:00") == t
    assert epoch_seconds("2024-05-01T12:00:00Z") == t
    assert epoch_seconds(dt.datetime(2024, 5, 1, 12)) == t
    assert epoch_seconds(t) == t
    assert [epoch_seconds(v) for v in ("soon", "", None, True, float("nan"))] == [None] * 5


def test_format_table_aligns_columns():
    lines = format_table(["a", "long header"], [["xxxxx", 1], [None, 22]])
    assert lines == ["  a      long header", "  -----  -----------", "  xxxxx  1", "  -      22"]


# ============================================================================ gathering (embedded server)
def _add(lp, category, state_goal="READY", walltime=None, name="fw", script="true"):
    spec = {} if category is None else {"_category": category}
    if walltime is not None:
        spec["_pilot"] = {"walltime": walltime}
    fw = Firework([ScriptTask.from_str(script)], spec=spec, name=name)
    lp.add_wf(Workflow([fw]))
    return max(lp.get_fw_ids())


def _record(lp, name, cluster, category, state, **kw):
    doc = {"_id": name, "job_name": name, "cluster": cluster, "category": category, "job_id": kw.pop("job_id", "1"),
           "state": state, "reason": None, "submit_time": time.time() - 60, "start_time": None, "end_time": None,
           "walltime": 3600.0, "margin": 600.0, "fworker": None, "reconciled": False,
           "script_path": f"/scratch/w-{cluster}/scripts/{name}.sh"}
    doc.update(kw)
    lp.db["pilots"].insert_one(doc)


def test_gather_from_records_only(launchpad):
    """No config: clusters and categories from the records; every 'needs you' kind is found."""
    lp = launchpad
    now = time.time()
    ready_md = [_add(lp, "md", walltime=60) for _ in range(2)]
    too_long = _add(lp, "md", walltime=7200, name="too-long")      # usable on c1: 3600 - 600 = 3000 s
    orphan = _add(lp, "orphan")
    _add(lp, None, name="no-category")
    # a Firework checked out by a worker whose pilot ended: FireWorks' own checkout makes it RUNNING
    lost = _add(lp, "md", name="lost")
    lp.checkout_fw(FWorker(name="c1-77", category="md", query={"fw_id": lost}), "/scratch/w-c1/launcher_x",
                   fw_id=lost)
    assert lp.get_fw_by_id(lost).state == "RUNNING"
    _record(lp, "fwp.md.aaa", "c1", "md", "CANCELLED", job_id="77", fworker="c1-77", end_time=now - 30)
    _record(lp, "fwp.md.bbb", "c1", "md", "PENDING", job_id="78", submit_time=now - 7200, reason="Priority")
    _record(lp, "fwp.md.ccc", "c1", "md", "RUNNING", job_id="79", start_time=now - 100)
    # uncertain, still polled: an unmapped state code; missing everywhere but not found dead yet
    _record(lp, "fwp.md.ddd", "c1", "md", "UNKNOWN", job_id="80", start_time=now - 100)
    _record(lp, "fwp.md.eee", "c1", "md", "VANISHED", job_id="81", end_time=now - 20)
    # missing everywhere, found dead and its work reconciled: over
    _record(lp, "fwp.md.fff", "c1", "md", "VANISHED", job_id="82", end_time=now - 40, reconciled=True)
    lp.db["pilot_clusters"].insert_one({"_id": "c2", "reachable": False, "last_error": "cannot connect to c2\n"
                                        "  try: check that sshd runs", "last_error_time": now - 5, "failures": 3,
                                        "backoff_until": now + 300, "last_contact": None})
    lp.db["pilot_clusters"].insert_one({"_id": "c1", "reachable": True, "last_contact": now - 10,
                                        "last_error": "old", "last_error_time": now - 1000, "failures": 0,
                                        "backoff_until": None})
    report = gather_status(lp.db, None, now=now, options=StatusOptions(pending_warn=1800))
    doc = report.to_dict()
    validate(doc)

    clusters = {c["name"]: c for c in doc["clusters"]}
    # times are ISO UTC text (microseconds kept), the same instants as the records' epoch seconds
    assert epoch(doc["generated_at"]) == pytest.approx(now, abs=1e-6)
    assert epoch(clusters["c1"]["last_contact"]) == pytest.approx(now - 10, abs=1e-6)
    assert epoch(clusters["c2"]["backoff_until"]) == pytest.approx(now + 300, abs=1e-6)
    assert clusters["c2"]["last_contact"] is None
    assert clusters["c1"]["categories"] == ["md"]
    assert clusters["c1"]["usable_walltime"] == 3000.0
    assert clusters["c1"]["pilots"] == {"pending": 1, "running": 1, "uncertain": 2, "ended_recently": 2,
                                        "ended_recently_by_state": {"CANCELLED": 1, "VANISHED": 1}}
    assert clusters["c1"]["last_error"] is None          # older than the last good contact
    assert clusters["c2"]["backed_off"] and clusters["c2"]["failures"] == 3

    cats = {c["name"]: c for c in doc["categories"]}
    assert cats["md"]["counts"]["READY"] == len(ready_md) + 1 and cats["md"]["counts"]["RUNNING"] == 1
    assert cats["md"]["served_by"] == ["c1"]
    assert cats["orphan"]["counts"]["READY"] == 1 and cats["orphan"]["served_by"] == []
    assert cats[None]["counts"]["READY"] == 1

    needs = doc["needs_you"]
    assert {u["category"] for u in needs["unserved_categories"]} == {"orphan", None}
    assert [(t["category"], t["fw_ids"], t["longest"], t["usable"]) for t in needs["too_long"]] == \
        [("md", [too_long], 7200.0, 3000.0)]
    assert needs["pending_long"]["total"] == 1
    assert needs["pending_long"]["items"][0]["reason"] == "Priority"
    assert epoch(needs["pending_long"]["items"][0]["submit_time"]) == pytest.approx(now - 7200, abs=1e-6)
    assert needs["pending_long"]["items"][0]["waiting"] == pytest.approx(7200, abs=1e-6)   # a duration: seconds
    assert [b["cluster"] for b in needs["backed_off"]] == ["c2"]
    assert epoch(needs["backed_off"][0]["until"]) == pytest.approx(now + 300, abs=1e-6)
    assert [(x["fw_id"], x["pilot"], x["pilot_state"]) for x in needs["running_under_ended_pilots"]] == \
        [(lost, "fwp.md.aaa", "CANCELLED")]
    assert epoch(needs["running_under_ended_pilots"][0]["pilot_end_time"]) == pytest.approx(now - 30, abs=1e-6)
    assert orphan in lp.get_fw_ids({"spec._category": "orphan"})

    text = format_status(report, now=now)
    assert "category orphan: 1 READY Firework but no cluster serves it" in text
    assert f"fw {too_long}" in text and "no pilot will take them" in text
    assert "c1: fwp.md.bbb (job 78) PENDING for 2 h, reason: Priority" in text
    assert "try: check that sshd runs" in text and "pilot doctor c2" in text
    assert f"fw {lost} lost: pilot fwp.md.aaa on c1 ended CANCELLED" in text
    # a report made for a config dir that is not the default: the hint keeps its --config-dir
    report.config_dir = "/srv/lab"
    assert "check it with: pilot --config-dir /srv/lab doctor c2" in format_status(report, now=now)


def test_fizzled_firework_error_and_paths(launchpad, tmp_path, monkeypatch):
    """A Firework fizzled by FireWorks' own Rocket: the error line and where to look."""
    from fireworks.core.rocket_launcher import launch_rocket

    lp = launchpad
    fw_id = _add(lp, "md", script="exit 3", name="fails")
    monkeypatch.chdir(tmp_path)
    launch_rocket(lp, FWorker(name="c9-123", category="md"), strm_lvl="ERROR")
    if True:
        assert lp.get_fw_by_id(fw_id).state == "FIZZLED"
        launch = lp.launches.find_one({"fw_id": fw_id})
        _record(lp, "fwp.md.zzz", "c9", "md", "COMPLETED", job_id="123", fworker="c9-123", end_time=time.time())
        report = gather_status(lp.db, None)
        (f,) = report.fizzled
        # ScriptTask raises RuntimeError(f"ScriptTask fizzled! Return code: {returncodes}")
        # (fireworks/user_objects/firetasks/script_task.py) for a non-zero exit code
        assert f.error == "RuntimeError: ScriptTask fizzled! Return code: [3]"
        assert f.launch_dir == launch["launch_dir"]
        # the job templates write work_dir/pilot-<jobid>.out; without a config work_dir is the folder
        # above the recorded job script (work_dir/scripts/NAME.sh)
        assert f.pilot_output == "/scratch/w-c9/pilot-123.out"
        assert f.pilot == "fwp.md.zzz" and f.cluster == "c9"
        doc = report.to_dict()
        validate(doc)
        # FireWorks writes time_end as datetime.isoformat() of a UTC time; --json gives the same instant
        end = dt.datetime.fromisoformat(launch["time_end"])
        end = end if end.tzinfo else end.replace(tzinfo=dt.timezone.utc)
        assert epoch(doc["needs_you"]["fizzled"]["items"][0]["time"]) == pytest.approx(end.timestamp(), abs=1e-6)


def test_query_count_does_not_grow_with_the_number_of_fireworks(launchpad):
    """No per-Firework queries: 30 or 600 Fireworks, the same number of database round trips."""
    lp = launchpad
    for i in range(30):
        _add(lp, "md" if i % 2 else "post")
    small = gather_status(lp.db, None)
    docs = [{"fw_id": 10_000 + i, "name": f"bulk{i}", "state": "COMPLETED" if i % 3 else "READY",
             "spec": {"_category": "md" if i % 2 else "post"}, "launches": []} for i in range(570)]
    lp.fireworks.insert_many(docs)
    big = gather_status(lp.db, None)
    assert sum(c.total for c in big.categories) == 600
    assert big.queries <= small.queries + 4   # the counts of the new COMPLETED state, nothing per Firework


def test_unknown_categories_beyond_the_cap_are_summed(launchpad, monkeypatch):
    import pilot.status.gather as st

    monkeypatch.setattr(st, "MAX_DISCOVERED", 2)
    lp = launchpad
    for cat in ("a", "b", "c", "d"):
        _add(lp, cat)
    report = gather_status(lp.db, None)
    names = [c.name for c in report.categories]
    assert names[-1] == OTHER_CATEGORIES
    assert sum(c.count("READY") for c in report.categories) == 4
    assert report.categories[-1].count("READY") == 2


def test_status_cli_without_config_dir(launchpad, tmp_path):
    lp_file = tmp_path / "lp.yaml"
    launchpad.to_file(str(lp_file))
    _add(launchpad, "md")
    res = pilot_cli("--config-dir", str(tmp_path / "nothing"), "status", "-l", str(lp_file), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    validate(doc)
    assert doc["config_dir"] is None
    assert doc["categories"][0]["name"] == "md"
    res = pilot_cli("--config-dir", str(tmp_path / "nothing"), "status")
    assert res.returncode != 0 and "--launchpad-file" in res.stderr


def test_watch_redraws_until_interrupted(launchpad, tmp_path):
    """--watch: several frames, then SIGINT (Ctrl-C) ends it cleanly with exit code 0."""
    import signal

    lp_file = tmp_path / "lp.yaml"
    launchpad.to_file(str(lp_file))
    frames = tmp_path / "watch.out"   # a file, read while it runs (each frame is flushed: click.echo)
    with open(frames, "w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(tmp_path / "none"), "status",
                                 "-l", str(lp_file), "--watch", "0.3"], stdout=out_file, stderr=subprocess.PIPE,
                                text=True)
    try:
        # until it has drawn two frames (not a fixed time), and one more interval after them
        wait_for(lambda: frames.read_text().count("fireworks-pilot status at") >= 2 or proc.poll() is not None,
                 60, 0.1, "two frames")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert frames.read_text().count("fireworks-pilot status at") >= 2
    assert "Traceback" not in err


# ============================================================================ a real run on SLURM
def _run_with_a_failure_and_a_cluster_down(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    """The manager runs real pilots on pilotci until 3 Fireworks completed and one fizzled on purpose;
    pilotdown's sshd is not there. Then a category nobody serves and a Firework longer than pilotci's pilots
    are added. Returns (config dir, launchpad file, the failing Firework's id, the long one's id)."""
    from pilot.config import load_config
    from pilot.manager.cycle import Manager
    from tests.manager.helpers import add_sleepers, fw_states, run_cycles_until, ssh_cluster, write_config
    from tests.manager.test_slurm import scancel_all

    user = slurm_cluster.user
    lp_file = remote_tmp / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    shutil.chown(lp_file, user, user)
    os.chmod(lp_file, 0o600)
    prefix = "s" + os.urandom(3).hex()
    clusters = {
        "pilotci": ssh_cluster(slurm_cluster, str(remote_tmp / "pilotci"), str(lp_file), ["md"], cluster_venv),
        # a cluster whose sshd is not there: nothing listens on 127.0.0.2:2299
        "pilotdown": ssh_cluster(slurm_cluster, str(remote_tmp / "down"), str(lp_file), ["post"], cluster_venv,
                                 host="127.0.0.2", port=2299, connect_timeout=5),
    }
    cfg_dir = write_config(tmp_path / "cfg", lp_file, clusters, job_name_prefix=prefix,
                           backoff={"initial": 900, "max": 1800})
    add_sleepers(launchpad, "md", 3, 0.5)
    bad = Firework([ScriptTask.from_str("echo about to fail >&2; exit 3")], spec={"_category": "md"},
                   name="fails-on-purpose")
    launchpad.add_wf(Workflow([bad]))
    bad_id = max(launchpad.get_fw_ids({"name": "fails-on-purpose"}))
    add_sleepers(launchpad, "post", 1, 0.1)          # only pilotdown serves "post"
    mgr = Manager(load_config(cfg_dir), launchpad)
    try:
        run_cycles_until(mgr, lambda: fw_states(launchpad).get("COMPLETED") == 3
                         and fw_states(launchpad).get("FIZZLED") == 1, timeout=240)
    finally:
        mgr.close()
        scancel_all(slurm_cluster.slurm_conf, user, prefix)
    # after the run: work for a category nobody serves, and one Firework longer than pilotci's pilots
    orphan = Firework([ScriptTask.from_str("true")], spec={"_category": "orphan"}, name="orphan")
    launchpad.add_wf(Workflow([orphan]))
    long_fw = Firework([ScriptTask.from_str("true")], spec={"_category": "md", "_pilot": {"walltime": 3600}},
                       name="too-long")
    launchpad.add_wf(Workflow([long_fw]))
    long_id = max(launchpad.get_fw_ids({"name": "too-long"}))
    return cfg_dir, lp_file, bad_id, long_id


def _check_status_json(doc, launchpad, bad_id, long_id, launch, pilot_out, rec):
    """``pilot status --json`` of the real run against the database read directly."""
    validate(doc)
    cats = {c["name"]: c for c in doc["categories"]}
    for state in ("READY", "COMPLETED", "FIZZLED", "RUNNING", "WAITING"):
        assert cats["md"]["counts"][state] == launchpad.fireworks.count_documents(
            {"spec._category": "md", "state": state}), state
    assert cats["md"]["counts"]["COMPLETED"] == 3 and cats["md"]["counts"]["FIZZLED"] == 1
    assert cats["md"]["served_by"] == ["pilotci"] and cats["post"]["served_by"] == ["pilotdown"]
    clusters_doc = {c["name"]: c for c in doc["clusters"]}
    assert clusters_doc["pilotci"]["reachable"] is True
    contact = launchpad.db["pilot_clusters"].find_one({"_id": "pilotci"})["last_contact"]
    assert epoch(clusters_doc["pilotci"]["last_contact"]) == pytest.approx(contact, abs=1e-6)
    assert clusters_doc["pilotdown"]["reachable"] is False and clusters_doc["pilotdown"]["backed_off"] is True
    assert "127.0.0.2" in clusters_doc["pilotdown"]["last_error"] and "2299" in clusters_doc["pilotdown"]["last_error"]
    (fz,) = doc["needs_you"]["fizzled"]["items"]
    assert (fz["fw_id"], fz["launch_dir"], fz["pilot_output"], fz["pilot"]) == \
        (bad_id, launch["launch_dir"], pilot_out, rec["_id"])
    assert {"category": "orphan", "ready": 1} in doc["needs_you"]["unserved_categories"]
    assert [t["fw_ids"] for t in doc["needs_you"]["too_long"]] == [[long_id]]
    assert doc["needs_you"]["too_long"][0]["usable"] == 300 - 30   # walltime "5" (SLURM minutes) - margin 30


@pytest.mark.slurm
def test_status_after_a_real_run(launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path):
    cfg_dir, lp_file, bad_id, long_id = _run_with_a_failure_and_a_cluster_down(
        launchpad, remote_tmp, slurm_cluster, cluster_venv, tmp_path)

    # what the database and the file system say (read directly, not through pilot.status)
    launch = launchpad.launches.find_one({"fw_id": bad_id, "state": "FIZZLED"})
    fworker = launch["fworker"]["name"]
    rec = launchpad.db["pilots"].find_one({"fworker": fworker})
    pilot_out = f"{remote_tmp / 'pilotci'}/pilot-{rec['job_id']}.out"
    assert Path(pilot_out).is_file(), "SLURM wrote the pilot's output file there"
    assert Path(launch["launch_dir"]).is_dir()
    down = launchpad.db["pilot_clusters"].find_one({"_id": "pilotdown"})
    assert down and down["reachable"] is False

    res = pilot_cli("--config-dir", str(cfg_dir), "status")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    print(text)   # shown when the test fails
    assert f"fw {bad_id} fails-on-purpose (md): RuntimeError: ScriptTask fizzled! Return code: [3]" in text
    assert launch["launch_dir"] in text
    assert pilot_out in text
    assert "cluster pilotdown is backed off" in text and f"pilot --config-dir {cfg_dir} doctor pilotdown" in text
    assert "category orphan: 1 READY Firework but no cluster serves it" in text
    assert f"fw {long_id}" in text

    res = pilot_cli("--config-dir", str(cfg_dir), "status", "--json")
    assert res.returncode == 0, res.stderr
    _check_status_json(json.loads(res.stdout), launchpad, bad_id, long_id, launch, pilot_out, rec)

    # the doctor on the cluster that is down: its SSH check fails, with the fix, exit code 1
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg_dir), "doctor", "pilotdown"],
                         capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 1, res.stdout
    assert "[FAIL] SSH connection and host key: cannot connect to pilot@127.0.0.2:2299" in res.stdout
    assert "fix: check that sshd runs on 127.0.0.2 port 2299" in res.stdout

    # from another machine: only the launchpad file, no config dir
    res = pilot_cli("--config-dir", str(tmp_path / "absent"), "status", "-l", str(lp_file), "--json")
    assert res.returncode == 0, res.stderr
    doc2 = json.loads(res.stdout)
    validate(doc2)
    c2 = {c["name"]: c for c in doc2["clusters"]}
    assert c2["pilotdown"]["backed_off"] and c2["pilotci"]["categories"] == ["md"]
    assert doc2["needs_you"]["fizzled"]["items"][0]["pilot_output"] == pilot_out


def test_a_manager_that_stopped_cycling_is_reported(launchpad):
    now = time.time()
    launchpad.db["pilot_manager"].insert_one({"_id": "manager", "last_cycle": now - 4000, "last_cycle_duration": 1.5,
                                              "errors": {"c1": "boom"}})
    report = gather_status(launchpad.db, None, now=now)
    assert report.manager_stale == {"last_cycle": now - 4000, "limit": 600.0}
    assert report.problem_count == 1
    doc = report.to_dict()
    validate(doc)
    assert epoch(doc["manager"]["last_cycle"]) == pytest.approx(now - 4000, abs=1e-6)
    assert doc["manager"]["last_cycle_duration"] == 1.5
    assert doc["needs_you"]["manager_stale"]["limit"] == 600.0
    assert epoch(doc["needs_you"]["manager_stale"]["last_cycle"]) == pytest.approx(now - 4000, abs=1e-6)
    text = format_status(report, now=now)
    assert "manager: last cycle 1 h 6 min ago (took 1.5 s)" in text
    assert "the manager is not cycling (last cycle 1 h 6 min ago" in text
    assert "see `pilot manager status`, start it with `pilot manager start`" in text
    report.config_dir = "/srv/lab"   # made with --config-dir /srv/lab: the commands to type keep it
    assert ("see `pilot --config-dir /srv/lab manager status`, start it with "
            "`pilot --config-dir /srv/lab manager start`") in format_status(report, now=now)
    launchpad.db["pilot_manager"].update_one({"_id": "manager"}, {"$set": {"last_cycle": now - 30}})
    report = gather_status(launchpad.db, None, now=now)
    assert report.manager_stale is None and "NEEDS YOU: nothing" in format_status(report, now=now)
