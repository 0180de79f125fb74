"""FireWorks through the LaunchPad server: the real ``lpad`` and ``rlaunch`` CLIs as subprocesses.

Tests that only need "a LaunchPad" use the ``launchpad`` fixture (the session's embedded server, or
MONGODB_URI); the kill -9 test starts its own embedded server. The module-level functions below are PyTask
targets that the rlaunch subprocesses import (PYTHONPATH is set to the repository).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo
import pymongo.errors
import yaml

from tests.helpers import REPO, EmbeddedServer, wait_for

BIG_ACTION_BYTES = 17 * 1024 * 1024  # above MongoDB's 16 MiB document limit: FireWorks falls back to GridFS


# ------------------------------------------------------------------- PyTask targets (rlaunch side)
def fw_add_child(tag: str):
    """Return an FWAction that adds a child Firework (FireWorks docs: "Dynamic workflows", additions)."""
    from fireworks import Firework, FWAction, ScriptTask

    return FWAction(additions=Firework(ScriptTask.from_str(f"echo added-{tag}"), name=f"added-{tag}"))


def fw_detour(tag: str):
    """Return an FWAction with a detour: runs before this Firework's children."""
    from fireworks import Firework, FWAction, ScriptTask

    return FWAction(detours=Firework(ScriptTask.from_str(f"echo detour-{tag}"), name=f"detour-{tag}"))


def fw_big_output(nbytes: int):
    """Return an FWAction whose stored_data makes the launch document larger than 16 MiB."""
    from fireworks import FWAction

    return FWAction(stored_data={"big": "x" * nbytes})


# ------------------------------------------------------------------------------------ helpers
def write_lp_file(path: Path, uri: str, name: str) -> Path:
    path.write_text(yaml.safe_dump({"host": uri, "name": name, "uri_mode": True, "logdir": None,
                                    "strm_lvl": "ERROR"}))
    return path


def fw_env(fw_config: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if fw_config is not None:
        env["FW_CONFIG_FILE"] = str(fw_config)
    return env


def lpad(lp_file: Path, *args: str, timeout: float = 120,
         fw_config: Path | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["lpad", "-l", str(lp_file), *args], capture_output=True, text=True, timeout=timeout,
                         env=fw_env(fw_config), check=False)
    assert res.returncode == 0, f"lpad {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}"
    return res


def lpads(lp_file: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several ``lpad`` commands that do not depend on each other, run at the same time; results in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: lpad(lp_file, *args), commands))


def rlaunch(lp_file: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["rlaunch", "-l", str(lp_file), "-s", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=fw_env(), check=False)
    assert res.returncode == 0, f"rlaunch {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}"
    return res


def states(lp, fw_ids=None) -> dict[int, str]:
    q = {"fw_id": {"$in": list(fw_ids)}} if fw_ids is not None else {}
    return {d["fw_id"]: d["state"] for d in lp.fireworks.find(q, {"fw_id": 1, "state": 1})}


def by_name(lp) -> dict[str, int]:
    return {d["name"]: d["fw_id"] for d in lp.fireworks.find({}, {"fw_id": 1, "name": 1})}


# --------------------------------------------------------------------------- lpad commands
def test_lpad_commands(launchpad, mongo_uri, tmp_path):
    from fireworks import Firework, ScriptTask, Workflow

    lp = launchpad
    lp_file = write_lp_file(tmp_path / "my_launchpad.yaml", mongo_uri, lp.name)
    today = datetime.date.today().isoformat()  # `lpad reset --password` wants today's date (lpad reset -h)
    lpad(lp_file, "reset", "--password", today)
    assert lp.get_fw_ids() == [] and lp.fw_id_assigner.count_documents({}) == 1

    a = Firework(ScriptTask.from_str("echo a"), name="A", fw_id=-1)
    b = Firework(ScriptTask.from_str("echo b"), name="B", fw_id=-2, parents=[a])
    c = Firework(ScriptTask.from_str("echo c"), name="C", fw_id=-3, parents=[b])
    Workflow([a, b, c], name="chain").to_file(str(tmp_path / "wf.yaml"))
    lpad(lp_file, "add", str(tmp_path / "wf.yaml"))
    ids = by_name(lp)
    A, B, C = ids["A"], ids["B"], ids["C"]
    assert states(lp) == {A: "READY", B: "WAITING", C: "WAITING"}

    # three queries that change nothing: at the same time (each lpad is a process start-up of its own)
    ids_out, count_out, wf_out = lpads(lp_file, ["get_fws", "-d", "ids"], ["get_fws", "-s", "READY", "-d", "count"],
                                       ["get_wflows", "-d", "more"])
    assert sorted(json.loads(ids_out.stdout)) == sorted([A, B, C])
    assert count_out.stdout.strip() == "1"
    wf = json.loads(wf_out.stdout)
    assert wf["state"] == "READY" and sorted(wf["states"].values()) == ["READY", "WAITING", "WAITING"]

    rlaunch(lp_file, tmp_path / "run1", "singleshot")
    assert states(lp) == {A: "COMPLETED", B: "READY", C: "WAITING"}

    lpad(lp_file, "rerun_fws", "-i", str(A))
    assert states(lp) == {A: "READY", B: "WAITING", C: "WAITING"}
    assert lp.launches.count_documents({"fw_id": A}) == 1  # the old launch is archived, not lost
    assert lp.fireworks.find_one({"fw_id": A})["archived_launches"]

    lpad(lp_file, "defuse_fws", "-i", str(A))
    assert states(lp, [A])[A] == "DEFUSED"
    lpad(lp_file, "reignite_fws", "-i", str(A))
    assert states(lp, [A])[A] == "READY"
    lpad(lp_file, "pause_fws", "-i", str(A))
    assert states(lp, [A])[A] == "PAUSED"
    lpad(lp_file, "resume_fws", "-i", str(A))
    assert states(lp, [A])[A] == "READY"
    # FireWorks 2.1.4 wires `lpad defuse_wflows` to pause_wfs (fireworks/scripts/lpad_run.py:
    # defuse_wf_parser.set_defaults(func=pause_wfs)), so the real CLI pauses; a fixed lpad defuses.
    lpad(lp_file, "defuse_wflows", "-i", str(A))
    after = set(states(lp).values())
    assert after in ({"PAUSED"}, {"DEFUSED"})
    if after == {"PAUSED"}:
        lpad(lp_file, "resume_fws", "-i", f"{A},{B},{C}")
        lp.defuse_wf(A)  # the LaunchPad call behind a working defuse_wflows
    assert set(states(lp).values()) == {"DEFUSED"}
    assert lp.workflows.find_one({"nodes": A})["state"] == "DEFUSED"
    lpad(lp_file, "reignite_wflows", "-i", str(A))
    assert states(lp) == {A: "READY", B: "WAITING", C: "WAITING"}
    lpad(lp_file, "pause_wflows", "-i", str(A))
    assert states(lp) == {A: "PAUSED", B: "PAUSED", C: "PAUSED"}
    lpad(lp_file, "resume_fws", "-i", f"{A},{B},{C}")
    assert states(lp)[A] == "READY"

    # a lost run: a Firework checked out by a "rocket" that then never reports back (checked out before the
    # rapidfire below, which leaves a RUNNING Firework without WAITING children alone: its launch ages meanwhile)
    L, checked_out = _lost_run(lp, tmp_path / "lost")
    rlaunch(lp_file, tmp_path / "run2", "rapidfire", "--sleep", "1")
    assert states(lp, [A, B, C]) == {A: "COMPLETED", B: "COMPLETED", C: "COMPLETED"}
    assert states(lp, [L])[L] == "RUNNING"   # rapidfire did not take it

    time.sleep(max(0.0, checked_out + 1.5 - time.monotonic()))   # its launch is older than --time (1 s)
    out = lpad(lp_file, "detect_lostruns", "--time", "1", "--rerun").stdout
    assert "Lost FireWorks: 1" in out
    assert states(lp, [L])[L] == "READY"

    rep_out, all_out = lpads(lp_file, ["report"], ["get_fws", "-i", str(A), "-d", "all"])
    rep = rep_out.stdout
    assert "Stats on fws" in rep and "COMPLETED" in rep
    all_fws = json.loads(all_out.stdout)
    assert all_fws["state"] == "COMPLETED" and all_fws["launches"][0]["state"] == "COMPLETED"


def _lost_run(lp, launch_dir: Path) -> tuple[int, float]:
    """A Firework checked out as a rocket would, that then never reports back: (its fw_id, when)."""
    from fireworks import Firework, FWorker, ScriptTask

    lp.add_wf(Firework(ScriptTask.from_str("echo lost"), name="L"))
    fw_id = by_name(lp)["L"]
    launch_dir.mkdir()
    fw, _launch_id = lp.checkout_fw(FWorker(), str(launch_dir), fw_id=fw_id)
    checked_out = time.monotonic()
    assert fw.fw_id == fw_id and states(lp, [fw_id])[fw_id] == "RUNNING"
    return fw_id, checked_out


def test_rocket_fwactions_additions_detours_and_gridfs(launchpad, mongo_uri, tmp_path):
    from fireworks import Firework, PyTask, ScriptTask, Workflow

    lp = launchpad
    lp_file = write_lp_file(tmp_path / "my_launchpad.yaml", mongo_uri, lp.name)
    mod = "tests.launchpad.test_fireworks"
    adder = Firework(PyTask(func=f"{mod}.fw_add_child", args=["x"]), name="adder", fw_id=-1)
    det = Firework(PyTask(func=f"{mod}.fw_detour", args=["y"]), name="detourer", fw_id=-2)
    after = Firework(ScriptTask.from_str("echo after"), name="after", fw_id=-3, parents=[det])
    big = Firework(PyTask(func=f"{mod}.fw_big_output", args=[BIG_ACTION_BYTES]), name="big", fw_id=-4)
    lp.add_wf(Workflow([adder, det, after, big], name="actions"))
    rlaunch(lp_file, tmp_path / "run", "rapidfire", "--sleep", "1")

    ids = by_name(lp)
    assert set(ids) == {"adder", "detourer", "after", "big", "added-x", "detour-y"}
    assert set(states(lp).values()) == {"COMPLETED"}
    links = lp.workflows.find_one({"nodes": ids["adder"]})["links"]
    assert links[str(ids["adder"])] == [ids["added-x"]]
    assert ids["detour-y"] in links[str(ids["detourer"])]
    assert links[str(ids["detour-y"])] == [ids["after"]]
    # the detour ran before "after"
    end = {d["fw_id"]: d["time_end"] for d in lp.launches.find({}, {"fw_id": 1, "time_end": 1})}
    assert end[ids["detour-y"]] <= end[ids["after"]]
    # the oversized action went to GridFS (fireworks/core/launchpad.py, complete_launch) and reads back
    raw = lp.launches.find_one({"fw_id": ids["big"]})
    assert set(raw["action"]) == {"gridfs_id"}
    assert lp.db["fw_gridfs.files"].count_documents({}) == 1
    launch = lp.get_launch_by_id(raw["launch_id"])
    assert len(launch.action.stored_data["big"]) == BIG_ACTION_BYTES


# ------------------------------------------------------------------------- concurrent runs
ADDER = r"""
import json, os, sys, time
import pymongo.errors
from fireworks import Firework, LaunchPad, ScriptTask, Workflow

lp_file, ack_path, n, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lp = LaunchPad.from_file(lp_file)
done = 0
with open(ack_path, "a") as ack:
    def record(**kw):
        ack.write(json.dumps(kw) + "\n")
        ack.flush()
        os.fsync(ack.fileno())
    while done < n:
        fws = [Firework(ScriptTask.from_str("echo run"), name=f"c{done}-{j}", fw_id=-(j + 1)) for j in range(3)]
        wf = Workflow(fws, {fws[0]: [fws[1]], fws[1]: [fws[2]]}, name=f"chain{done}")
        try:
            id_map = lp.add_wf(wf)
        except pymongo.errors.PyMongoError as exc:
            # add_wf is several commands; the server died during it. Once it is back, keep the chain if all
            # of it arrived, otherwise remove the part that did and add the chain again.
            while True:
                try:
                    lp.connection.admin.command("ping")
                    break
                except pymongo.errors.PyMongoError:
                    time.sleep(0.2)
            ids = sorted(fw.fw_id for fw in fws if fw.fw_id > 0)
            complete = len(ids) == 3 and lp.fireworks.count_documents({"fw_id": {"$in": ids}}) == 3 and \
                lp.workflows.count_documents({"nodes": ids[0]}) == 1
            if complete:
                record(chain=done, fw_ids=ids, acked=False)
                done += 1
            else:
                if ids:
                    lp.fireworks.delete_many({"fw_id": {"$in": ids}})
                    lp.workflows.delete_many({"nodes": {"$in": ids}})
                    lp.launches.delete_many({"fw_id": {"$in": ids}})
                record(chain=done, removed=ids, error=type(exc).__name__)
            continue
        record(chain=done, fw_ids=sorted(id_map.values()), acked=True)
        done += 1
        time.sleep(delay)
    record(finished=True)
"""


class Fleet:
    """The adder and the rlaunch processes of a run, each stopped by its pid at the end."""

    def __init__(self, lp_file: Path, workdir: Path, rlaunch_args: list[str], fw_config: Path | None = None) -> None:
        self.env = fw_env(fw_config)
        self.lp_file = lp_file
        self.workdir = workdir
        self.rlaunch_args = rlaunch_args
        self.adder: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.exits: list[int] = []
        self.starts = 0
        self.ack = workdir / "acked.jsonl"

    def start_adder(self, chains: int, delay: float) -> None:
        with open(self.workdir / "adder.log", "ab") as log:
            self.adder = subprocess.Popen([sys.executable, "-c", ADDER, str(self.lp_file), str(self.ack),
                                           str(chains), str(delay)], stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env)

    def adder_done(self) -> bool:
        return self.adder is not None and self.adder.poll() is not None

    def ensure_workers(self, n: int = 3) -> None:
        for i in range(n):
            p = self.workers.get(i)
            if p is not None and p.poll() is None:
                continue
            if p is not None:
                self.exits.append(p.returncode)
            d = self.workdir / f"worker{i}"
            d.mkdir(exist_ok=True)
            with open(self.workdir / f"worker{i}.log", "ab") as log:
                self.workers[i] = subprocess.Popen(["rlaunch", "-l", str(self.lp_file), "-s", "rapidfire",
                                                    *self.rlaunch_args], cwd=d, stdout=log,
                                                   stderr=subprocess.STDOUT, env=self.env)
            self.starts += 1

    def workers_running(self) -> bool:
        return any(p.poll() is None for p in self.workers.values())

    def acked(self) -> list[dict]:
        if not self.ack.exists():
            return []
        return [json.loads(line) for line in self.ack.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        procs = list(self.workers.values()) + ([self.adder] if self.adder else [])
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for p in self.workers.values():
            self.exits.append(p.returncode)
        self.workers = {}


def _count_states(lp) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in lp.fireworks.find({}, {"state": 1}):
        out[d["state"]] = out.get(d["state"], 0) + 1
    return out


def _pilot_stats(lp) -> dict | None:
    try:
        return lp.connection.admin.command("pilotStats")
    except pymongo.errors.OperationFailure:
        return None  # a real MongoDB


def test_three_rlaunchers_and_an_adder_run_every_firework_exactly_once(launchpad, mongo_uri, tmp_path):
    lp = launchpad
    lp_file = write_lp_file(tmp_path / "my_launchpad.yaml", mongo_uri, lp.name)
    fleet = Fleet(lp_file, tmp_path, ["--sleep", "1"])
    stats0 = _pilot_stats(lp)
    t0 = time.monotonic()
    try:
        fleet.start_adder(chains=100, delay=0.01)
        wait_for(lambda: lp.fireworks.count_documents({}) > 0, timeout=60, interval=0.1, what="first workflow")
        deadline = time.monotonic() + 180
        while True:
            counts = _count_states(lp)
            finished = fleet.adder_done() and counts.get("COMPLETED", 0) == 300 and len(counts) == 1
            if finished:
                break
            assert time.monotonic() < deadline, f"run did not finish: {counts}"
            # rapidfire ends when nothing is READY/WAITING: restart it while the adder still adds
            if not fleet.adder_done() or any(s in counts for s in ("READY", "WAITING")):
                fleet.ensure_workers(3)
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        wait_for(lambda: not fleet.workers_running(), timeout=60, interval=0.2, what="rlaunchers to exit")
    finally:
        fleet.stop()
    assert fleet.adder.returncode == 0, (tmp_path / "adder.log").read_text()[-2000:]
    assert all(rc == 0 for rc in fleet.exits), f"rlaunch exit codes {fleet.exits}"
    acked = [r for r in fleet.acked() if r.get("acked")]
    assert len(acked) == 100
    assert lp.fireworks.count_documents({}) == 300
    # every Firework ran exactly once: one launch each, completed, nothing archived, nothing left running
    per_fw: dict[int, list[str]] = {}
    for launch in lp.launches.find({}, {"fw_id": 1, "state": 1}):
        per_fw.setdefault(launch["fw_id"], []).append(launch["state"])
    assert sorted(per_fw) == sorted(i for r in acked for i in r["fw_ids"])
    assert all(v == ["COMPLETED"] for v in per_fw.values()), {k: v for k, v in per_fw.items() if v != ["COMPLETED"]}
    for fw in lp.fireworks.find({}, {"fw_id": 1, "launches": 1, "archived_launches": 1, "state": 1}):
        assert len(fw["launches"]) == 1 and not fw.get("archived_launches") and fw["state"] == "COMPLETED"
    stats1 = _pilot_stats(lp)
    msg = f"300 Fireworks, 3 rlaunch + 1 adder: {elapsed:.1f}s, {300 / elapsed:.1f} Fireworks/s"
    if stats0 and stats1:
        ncmd = sum(stats1["commands"].values()) - sum(stats0["commands"].values())
        busy = sum(stats1["commandSeconds"].values()) - sum(stats0["commandSeconds"].values())
        j0, j1 = stats0["journal"], stats1["journal"]
        fs = j1["fsyncs"] - j0["fsyncs"]
        fs_ms = 1000 * (j1["fsyncSeconds"] - j0["fsyncSeconds"]) / max(fs, 1)
        msg += (f"; {ncmd} commands = {ncmd / elapsed:.0f}/s (server busy {busy:.1f}s, "
                f"{1000 * busy / max(ncmd, 1):.2f} ms/command); {fs} fsyncs, {fs_ms:.2f} ms each")
    print(msg)


def _assert_nothing_acknowledged_lost(data_dir, old_port, acked_at_kill, completed_before) -> None:
    """Restart the killed server's data on another port and check that every acknowledged write is there.

    Another port, so that the surviving rockets cannot reconnect and move on before the check (a rocket whose
    command died with the server may, for example, mark its Firework FIZZLED).
    """
    check = EmbeddedServer(data_dir, port=0).start()
    assert check.port != old_port
    # nothing acknowledged is lost: the adder's workflows and every Firework seen COMPLETED
    with pymongo.MongoClient(check.uri, serverSelectionTimeoutMS=10000) as c:
        db = c.killrun
        for rec in acked_at_kill:
            assert db.fireworks.count_documents({"fw_id": {"$in": rec["fw_ids"]}}) == 3, rec
            assert db.workflows.count_documents({"nodes": rec["fw_ids"][0]}) == 1, rec
        now_done = {d["fw_id"] for d in db.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1})}
        missing = completed_before - now_done
        assert not missing, [(d, list(db.launches.find({"fw_id": d["fw_id"]}, {"state_history": 1, "_id": 0})))
                             for d in db.fireworks.find({"fw_id": {"$in": list(missing)}},
                                                        {"spec": 0, "_id": 0})]
    assert check.stop() == 0


def _drive_to_completion(lp, fleet, lp_file, fw_config, timeout: float = 120) -> None:
    """Keep rlaunchers going until every Firework is COMPLETED, rerunning what the crash left behind."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _count_states(lp)
        if fleet.adder_done() and set(counts) == {"COMPLETED"}:
            return
        assert time.monotonic() < deadline, f"run did not complete after the restart: {counts}"
        if not fleet.adder_done() or "READY" in counts:
            fleet.ensure_workers(3)
        elif not fleet.workers_running():
            # only rockets killed with the server remain (RUNNING/RESERVED/FIZZLED): nothing runs now
            time.sleep(1.5)
            lpad(lp_file, "detect_lostruns", "--time", "1", "--rerun", "--refresh", fw_config=fw_config)
            lpad(lp_file, "detect_unreserved", "--time", "1", "--rerun", fw_config=fw_config)
            # a rocket killed between reserving a Firework and creating its launch leaves it RESERVED
            # with no launch (detect_unreserved looks at launches): rerun those too
            for st in ("FIZZLED", "RESERVED"):
                if counts.get(st):
                    lpad(lp_file, "rerun_fws", "-s", st, fw_config=fw_config)
        time.sleep(0.3)


def test_kill9_mid_run_loses_no_acknowledged_write_and_the_run_completes(tmp_path):
    from fireworks import LaunchPad

    server = EmbeddedServer(tmp_path / "lpdata").start()
    port = server.port
    lp_file = write_lp_file(tmp_path / "my_launchpad.yaml", server.uri, "killrun")
    lp = LaunchPad.from_file(str(lp_file))
    lp.reset("", require_password=False)
    # A rocket that dies inside FireWorks' workflow lock leaves the workflow locked; let FireWorks break such a
    # lock after 5 s instead of 5 min (FW_config: WFLOCK_EXPIRATION_SECS / WFLOCK_EXPIRATION_KILL).
    fw_config = tmp_path / "FW_config.yaml"
    fw_config.write_text(yaml.safe_dump({"WFLOCK_EXPIRATION_SECS": 5, "WFLOCK_EXPIRATION_KILL": True}))
    fleet = Fleet(lp_file, tmp_path, ["--sleep", "1", "--max_loops", "2"], fw_config=fw_config)
    try:
        fleet.start_adder(chains=100, delay=0.03)
        wait_for(lambda: lp.fireworks.count_documents({}) > 0, timeout=60, interval=0.1, what="first workflow")
        fleet.ensure_workers(3)
        completed_before: set[int] = set()

        def enough_done() -> bool:
            fleet.ensure_workers(3)
            done = {d["fw_id"] for d in lp.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1})}
            completed_before.update(done)
            return len(done) >= 90

        wait_for(enough_done, timeout=120, interval=0.1, what="90 completed Fireworks")
        server.kill9()
        acked_at_kill = [r for r in fleet.acked() if r.get("acked")]
        assert not fleet.adder_done() or len(acked_at_kill) == 100
        _assert_nothing_acknowledged_lost(tmp_path / "lpdata", port, acked_at_kill, completed_before)
        server = EmbeddedServer(tmp_path / "lpdata", port=port).start()
        assert server.port == port

        # the run completes: restart rlaunchers that died; recover the rockets the crash killed
        _drive_to_completion(lp, fleet, lp_file, fw_config)
        wait_for(lambda: not fleet.workers_running(), timeout=60, interval=0.2, what="rlaunchers to exit")
        assert fleet.adder.returncode == 0, (tmp_path / "adder.log").read_text()[-2000:]
        records = fleet.acked()
        kept = [r for r in records if "fw_ids" in r]
        assert len(kept) == 100
        assert lp.fireworks.count_documents({}) == 300
        assert sorted(d["fw_id"] for d in lp.fireworks.find({}, {"fw_id": 1})) == sorted(
            i for r in kept for i in r["fw_ids"])
    finally:
        fleet.stop()
        server.stop()
    print(f"kill -9 run: {fleet.starts} rlaunch starts, exits {sorted(set(fleet.exits))}, "
          f"{sum(1 for r in records if 'removed' in r)} partial adds removed")
