"""Soak test (issue 16, "Must show"): 500 short Fireworks through two real SLURM clusters under chaos.

Skipped unless ``PILOT_SOAK=1`` is set or ``--soak`` is given (it takes minutes; docs/testing.md). The manager
runs as the real daemon, ``pilot manager run``, a child process handled by its PID. One category is served by
both clusters (pilotci, pilotci2). A chaos loop, every 4-7 s, does one of (each once per round, in a shuffled
order):

* ``scancel`` a running pilot of ours (the worker gets SIGTERM and requeues what it runs);
* ``kill -9`` a running pilot's worker and its Firework at once, as a node crash would (no requeue, no exit
  record: the manager must find the work by the dead-pilot rule);
* stop the sshd the manager reaches one cluster through, with all its sessions, for one poll cycle (a private
  sshd on the login node, :class:`tests.helpers.OwnSshd`, so the shared one other tests use stays up);
* stop one cluster's slurmctld for one poll cycle, then start it again as tests/infra/services.sh does;
* ``kill -9`` the manager and start it again (it takes over the dead holder's lease at once);
* two at once: a pilot ``kill -9``-ed while its cluster's slurmctld is down for a cycle (the job's end is
  known only later), and a pilot ``scancel``-ed with the manager ``kill -9``-ed right after.

Chaos stops when no Firework is left to take (none READY or RESERVED), or after ``CHAOS_FOR`` seconds; then the
work is let finish (until none completed for ``STALL`` seconds). The promise checked at the end: every Firework
COMPLETED with exactly one COMPLETED launch, none RUNNING or RESERVED, the manager never died by itself, and no
Firework was rerun by the manager while its pilot still beat. The counts (and the chaos events, reruns, pilots,
times) are printed whatever the outcome, and a failure names each bad Firework with its launches, its rerun
history, its pilots' records and the manager's log lines about it.

Knobs (environment): ``PILOT_SOAK_FIREWORKS`` (default 500), ``PILOT_SOAK_SEED`` (the chaos order; printed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from fireworks import Firework, ScriptTask, Workflow

from tests.helpers import ClusterInfo, OwnSshd, wait_for
from tests.manager.helpers import completed_launches_per_fw, fw_states, launches_per_fw
from tests.manager.test_liveness import _slurmctld
from tests.manager.test_slurm import hard_kill_pilot, our_jobs
from tests.manager.test_slurm import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = [pytest.mark.soak, pytest.mark.slurm, pytest.mark.slow]

N_FIREWORKS = int(os.environ.get("PILOT_SOAK_FIREWORKS") or 500)
CATEGORY = "soak"
POLL = 3               # the manager's poll_interval (s)
BEAT = 1               # the pilots' heartbeat_interval (s): dead 3 s after the last beat
CHAOS_EVERY = (4.0, 7.0)
CHAOS_FOR = 480.0      # chaos ends after this long even with work left
TOTAL = 900.0          # the whole run's bound: chaos, then letting the work finish
STALL = 180.0          # after the chaos: give up once no Firework completed for this long
KINDS = ("scancel", "kill9-worker", "sshd-restart", "slurmctld-stop", "manager-kill9", "kill9-worker+slurmctld-stop",
         "scancel+manager-kill9")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class ManagerProcess:
    """``pilot manager run`` of one config dir as a child process: started, killed and stopped by its PID."""

    def __init__(self, config_dir: Path, out: Path) -> None:
        self.config_dir = config_dir
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.died: list[str] = []   # exits no chaos event caused, and refused starts

    def _spawn(self, timeout: float) -> bool:
        with open(self.out, "ab") as fh:
            fh.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            fh.flush()
            # FireWorks' lock expiry, after which the manager takes a stale workflow lock by force (a pilot
            # killed while FireWorks held the lock for its checkout): 30 s here, so that it happens within a run
            fw_config = self.config_dir / "FW_config.yaml"
            fw_config.write_text("WFLOCK_EXPIRATION_SECS: 30\n")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pilot", "--config-dir", str(self.config_dir), "manager", "run"],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, FW_CONFIG_FILE=str(fw_config)))
        pidfile = self.config_dir / "manager.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.died.append(f"{time.strftime('%H:%M:%S')} start refused (exit {self.proc.returncode}): "
                                 f"{_tail(self.out, 600)}")
                return False
            try:
                if int(pidfile.read_text().strip()) == self.proc.pid:   # written once it holds lock and lease
                    self.starts += 1
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the manager (pid {self.proc.pid}) did not take its lease in {timeout} s: "
                           f"{_tail(self.out)}")

    def start(self, timeout: float = 60.0) -> None:
        """Start it; a refused start is noted and tried again once a dead holder's lease has surely expired."""
        if not self._spawn(timeout):
            time.sleep(3 * POLL + 2)
            if not self._spawn(timeout):
                raise RuntimeError(f"the manager would not start twice: {self.died[-2:]}")

    def check(self) -> None:
        """Note, and start again, a manager that exited although nothing killed it."""
        if self.proc is not None and self.proc.poll() is not None:
            self.died.append(f"{time.strftime('%H:%M:%S')} exited by itself (code {self.proc.returncode}): "
                             f"{_tail(self.out, 600)}")
            self.start()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM (it finishes its cycle, releases its lease), then SIGKILL if it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def ensure_slurmctld(info: ClusterInfo) -> None:
    """Start the cluster's slurmctld if it is not running (a safety net after the chaos)."""
    pid_file = Path(info.slurm_conf or "").parent / "slurmctld.pid"
    try:
        if psutil.Process(int(pid_file.read_text().strip())).name() == "slurmctld":
            return
    except (OSError, ValueError, psutil.Error):
        pass
    _slurmctld(info, start=True)


class Chaos:
    """The faults, one per call of :meth:`one`, counted by kind."""

    def __init__(self, lp: Any, infos: list[ClusterInfo], sshds: dict[str, OwnSshd], manager: ManagerProcess,
                 prefix: str, rng: random.Random) -> None:
        self.lp, self.infos, self.sshds, self.manager = lp, infos, sshds, manager
        self.prefix, self.rng = prefix, rng
        self.counts: Counter[str] = Counter()
        self.events: list[str] = []
        self.t0 = time.monotonic()

    def one(self, kind: str) -> None:
        info = self.rng.choice(self.infos)
        what = getattr(self, "_" + kind.replace("-", "_").replace("+", "_and_"))(info)
        self.counts[kind if what else f"{kind} (no running pilot)"] += 1
        self.events.append(f"{time.monotonic() - self.t0:6.1f}s {kind}: {what or 'nothing to do'}")

    def _running_pilot(self) -> tuple[ClusterInfo, str] | None:
        """A pilot of ours that SLURM lists RUNNING and whose worker beats (so it may hold work), at random."""
        beating = {(r["cluster"], r["job_id"]) for r in self.lp.db["pilots"].find(
            {"state": "RUNNING", "heartbeat": {"$exists": True}, "exit": {"$exists": False}},
            {"cluster": 1, "job_id": 1})}
        found = [(info, j[0]) for info in self.infos for j in our_jobs(info.slurm_conf, info.user, self.prefix)
                 if j[2] == "RUNNING" and (info.name, j[0]) in beating]
        return self.rng.choice(found) if found else None

    def _scancel(self, _info: ClusterInfo) -> str:
        got = self._running_pilot()
        if got is None:
            return ""
        info, job = got
        subprocess.run(info.on_login(["scancel", job]), check=True, timeout=30,
                       env=dict(os.environ, SLURM_CONF=info.slurm_conf or ""))
        return f"{info.name} job {job}"

    def _kill9_worker(self, _info: ClusterInfo) -> str:
        got = self._running_pilot()
        if got is None:
            return ""
        info, job = got
        n = hard_kill_pilot(f"{info.name}-{job}")
        return f"{info.name} job {job}: {n} processes" if n else ""

    def _sshd_restart(self, info: ClusterInfo) -> str:
        sshd = self.sshds[info.name]
        sshd.stop()   # the listener and every session: the manager's pooled connection drops
        try:
            time.sleep(POLL + 1)
        finally:
            sshd.start()
        return f"{info.name} sshd :{sshd.port} down {POLL + 1} s"

    def _slurmctld_stop(self, info: ClusterInfo) -> str:
        _slurmctld(info, start=False)
        try:
            time.sleep(POLL + 1)
        finally:
            _slurmctld(info, start=True)
        return f"{info.name} slurmctld down {POLL + 1} s"

    def _kill9_worker_and_slurmctld_stop(self, _info: ClusterInfo) -> str:
        """A pilot crashes while its cluster's slurmctld is down: the job's end is known only later."""
        got = self._running_pilot()
        if got is None:
            return ""
        info, job = got
        _slurmctld(info, start=False)
        try:
            n = hard_kill_pilot(f"{info.name}-{job}")
            time.sleep(POLL + 1)
        finally:
            _slurmctld(info, start=True)
        return f"{info.name} job {job}: {n} processes, slurmctld down {POLL + 1} s meanwhile" if n else ""

    def _scancel_and_manager_kill9(self, info: ClusterInfo) -> str:
        """A pilot cancelled, and the manager killed at once: the next manager finds the record as it was left."""
        what = self._scancel(info)
        return f"{what}; then {self._manager_kill9(info)}" if what else ""

    def _manager_kill9(self, _info: ClusterInfo) -> str:
        pid = self.manager.proc.pid if self.manager.proc else 0
        self.manager.kill9()
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.manager.start()
        return f"manager pid {pid} killed, now pid {self.manager.proc.pid if self.manager.proc else 0}"


def add_work(lp: Any, n: int, rng: random.Random) -> list[int]:
    """``n`` one-Firework workflows of CATEGORY, each a ``sleep`` of 0.5 to 1 s."""
    wfs = [Workflow([Firework([ScriptTask.from_str(f"sleep {rng.uniform(0.5, 1.0):.2f}")],
                              spec={"_category": CATEGORY}, name=f"soak-{i}")]) for i in range(n)]
    lp.bulk_add_wfs(wfs)
    return sorted(lp.get_fw_ids({"spec._category": CATEGORY}))


def done(lp: Any, n: int) -> bool:
    """All work COMPLETED, or none left to take (nothing READY or RESERVED): chaos has nothing more to hit."""
    return (lp.fireworks.count_documents({"state": "COMPLETED"}) >= n
            or lp.fireworks.count_documents({"state": {"$in": ["READY", "RESERVED"]}}) == 0)


def chaos_loop(chaos: Chaos, n: int, until: float) -> None:
    """One fault every CHAOS_EVERY seconds, each kind once per round, until the work is done or ``until``."""
    kinds: list[str] = []
    while time.monotonic() < until and not done(chaos.lp, n):
        if not kinds:
            kinds = list(KINDS)
            chaos.rng.shuffle(kinds)
        pause_end = time.monotonic() + chaos.rng.uniform(*CHAOS_EVERY)
        while time.monotonic() < pause_end and not done(chaos.lp, n):
            chaos.manager.check()
            time.sleep(1)
        if not done(chaos.lp, n):
            chaos.one(kinds.pop())


def finish(lp: Any, n: int, manager: ManagerProcess, until: float) -> None:
    """Wait for the work to finish, until ``until`` or until no Firework completed for STALL seconds."""
    last, since = -1, time.monotonic()
    while time.monotonic() < until and time.monotonic() - since < STALL:
        manager.check()
        now = lp.fireworks.count_documents({"state": "COMPLETED"})
        if now >= n:
            return
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(2)


#: pilot record states after which a record is never polled again (scheduler final states, and ours)
OVER = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "SUBMIT_FAILED")


def drain(lp: Any, manager: ManagerProcess, infos: list[ClusterInfo], prefix: str) -> str:
    """Let the idle pilots leave (idle_timeout 5 s) and the manager record it; "" when no pilot is left in a
    queue and every record is over, else what is left after 120 s."""
    def left() -> str:
        manager.check()
        jobs = [j for info in infos for j in our_jobs(info.slurm_conf, info.user, prefix)
                if j[2] in ("PENDING", "RUNNING", "COMPLETING")]
        recs = [f"{r['_id']}={r.get('state')}" for r in lp.db["pilots"].find(
            {"$nor": [{"state": {"$in": list(OVER)}}, {"state": "VANISHED", "reconciled": True}]})]
        return f"pilot jobs still queued or running: {jobs}; pilot records not over: {recs}" if jobs or recs else ""

    try:
        wait_for(lambda: not left(), timeout=120, interval=2, what="the pilots to end")
    except TimeoutError:
        return left()
    return ""


def rerun_facts(lp: Any) -> dict[str, Any]:
    """What ``pilot_reruns`` holds: Fireworks rerun, reruns by whom, and manager reruns of pilots that still beat
    afterwards (the dead-pilot rule broken: the pilot was alive when its work was given away)."""
    docs = list(lp.db["pilot_reruns"].find())
    by: Counter[str] = Counter()
    alive_after: list[str] = []
    for d in docs:
        for h in d.get("history") or []:
            who = "manager" if h.get("by") == "manager" else "worker requeue"
            by[who] += 1
            if who == "manager":
                rec = lp.db["pilots"].find_one({"_id": h.get("pilot")}) or {}
                if float(rec.get("heartbeat") or 0) > float(h.get("time") or 0):
                    alive_after.append(f"fw {d['_id']}: rerun at {h.get('time')} by the manager, but pilot "
                                       f"{h.get('pilot')} beat at {rec.get('heartbeat')} ({h.get('reason')})")
    return {"fireworks": len(docs), "entries": sum(by.values()), "counted": sum(int(d.get("count") or 0) for d in docs),
            "by": dict(by), "most": max((len(d.get("history") or []) for d in docs), default=0),
            "alive_after": alive_after}


def log_errors(log: Path) -> str:
    """The manager log's ERROR lines, counted by message (digits folded), most frequent first."""
    import re

    text = log.read_text(errors="replace") if log.exists() else ""
    kinds = Counter(re.sub(r"\d+", "N", ln.split(" ERROR ", 1)[1])[:140] for ln in text.splitlines()
                    if " ERROR " in ln)
    return f"{sum(kinds.values())} ERROR lines" + "".join(f"\n    {n} x {k}" for k, n in kinds.most_common(5))


def diagnose(lp: Any, fw_ids: list[int], log: Path) -> str:
    """Everything known about each bad Firework: its launches, rerun history, pilots and the manager's log."""
    lines = (log.read_text(errors="replace") if log.exists() else "").splitlines()
    out = []
    for fw_id in fw_ids[:10]:
        fw = lp.fireworks.find_one({"fw_id": fw_id}) or {}
        out.append(f"== fw {fw_id}: state {fw.get('state')}, launches {fw.get('launches')}, "
                   f"archived {fw.get('archived_launches')}")
        names = set()
        for launch in lp.launches.find({"fw_id": fw_id}).sort("launch_id"):
            name = (launch.get("fworker") or {}).get("name")
            names.add(name)
            hist = [(h.get("state"), str(h.get("created_on"))) for h in launch.get("state_history") or []]
            out.append(f"   launch {launch['launch_id']} {launch.get('state')} on {name} host {launch.get('host')}: "
                       f"{hist}")
        out.append(f"   reruns: {lp.db['pilot_reruns'].find_one({'_id': fw_id})}")
        for rec in lp.db["pilots"].find({"fworker": {"$in": sorted(n for n in names if n)}}):
            keep = ("state", "native_state", "job_id", "submit_time", "start_time", "end_time", "heartbeat",
                    "exit", "reconciled", "reason")
            out.append(f"   pilot {rec['_id']}: { {k: rec.get(k) for k in keep} }")
        needles = [f"fw {fw_id}:", f"fw {fw_id} "] + [n.split("-", 1)[1] for n in names if n and "-" in n]
        hits = ["   log: " + ln for ln in lines if any(s in ln for s in needles)]
        out += hits[:10] + ([f"   log: ... {len(hits) - 14} more ...", *hits[-4:]] if len(hits) > 14 else hits[10:])
    return "\n".join(out)


def summarize(lp: Any, ids: list[int], chaos: Chaos, manager: ManagerProcess, times: dict[str, float],
              seed: int) -> tuple[list[str], list[str], list[int]]:
    """The printed report, the broken promises, and the Fireworks that broke them."""
    states = fw_states(lp)
    completed = completed_launches_per_fw(lp)
    not_once = [i for i in ids if completed.get(i, 0) != 1]
    launches = launches_per_fw(lp)
    by_cluster = Counter(str((d.get("fworker") or {}).get("name", "?")).rsplit("-", 1)[0]
                         for d in lp.launches.find({"state": "COMPLETED"}, {"fworker": 1}))
    reruns = rerun_facts(lp)
    pilots = Counter(str(p.get("state")) for p in lp.db["pilots"].find({}, {"state": 1}))
    report = [
        f"soak: {len(ids)} Fireworks, 2 clusters, seed {seed}; total {times['total']:.0f} s "
        f"(chaos {times['chaos']:.0f} s, then {times['drain']:.0f} s to finish)",
        f"  Fireworks by state: {dict(sorted(states.items()))}",
        f"  with exactly one COMPLETED launch: {len(ids) - len(not_once)}; other: {len(not_once)}; "
        f"RUNNING {states.get('RUNNING', 0)}, RESERVED {states.get('RESERVED', 0)}",
        f"  launches: {sum(launches.values())} for {len(launches)} Fireworks "
        f"({sum(1 for v in launches.values() if v > 1)} Fireworks had more than one); "
        f"completed per cluster: {dict(sorted(by_cluster.items()))}",
        f"  chaos events ({sum(chaos.counts.values())}): {dict(sorted(chaos.counts.items()))}",
        f"  reruns (pilot_reruns): {reruns['entries']} for {reruns['fireworks']} Fireworks "
        f"(by {reruns['by']}; counted toward max_reruns {reruns['counted']}; most for one Firework "
        f"{reruns['most']})",
        f"  pilots: {sum(pilots.values())} submitted, by final record state {dict(sorted(pilots.items()))}; "
        f"manager started {manager.starts} times",
    ]
    problems = []
    if not_once:
        problems.append(f"{len(not_once)} Fireworks without exactly one COMPLETED launch: "
                        f"{ {i: completed.get(i, 0) for i in not_once[:20]} }")
    if states.get("RUNNING") or states.get("RESERVED"):
        problems.append(f"Fireworks left RUNNING/RESERVED: {states}")
    if manager.died:
        problems.append(f"the manager ended or was refused without a chaos event: {manager.died}")
    if reruns["alive_after"]:
        problems.append(f"reruns of pilots that still beat: {reruns['alive_after'][:10]}")
    return report, problems, not_once


@pytest.mark.timeout(TOTAL + 300)
def test_soak_many_fireworks_two_clusters_under_chaos(world, launchpad, slurm_cluster, slurm_cluster2, tmp_path,
                                                       capsys):
    config, cluster, prefix = world
    infos = [slurm_cluster, slurm_cluster2]
    seed = int(os.environ.get("PILOT_SOAK_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    sshds: dict[str, OwnSshd] = {}
    manager = ManagerProcess(tmp_path / "cfg", tmp_path / "manager.out")
    t0 = time.monotonic()
    try:
        for info in infos:
            sshds[info.name] = OwnSshd(info, tmp_path / f"sshd-{info.name}").start()
        config({info.name: cluster(info, [CATEGORY], port=sshds[info.name].port,
                                   known_hosts=str(sshds[info.name].known_hosts), heartbeat_interval=BEAT,
                                   idle_timeout=5, fireworks_per_pilot=10,
                                   limits={"max_queued": 2, "max_running": 2}) for info in infos},
               poll_interval=POLL, max_reruns=10)
        ids = add_work(launchpad, N_FIREWORKS, rng)
        assert len(ids) == N_FIREWORKS
        manager.start()
        chaos = Chaos(launchpad, infos, sshds, manager, prefix, rng)
        chaos_loop(chaos, N_FIREWORKS, until=t0 + CHAOS_FOR)
        t_chaos = time.monotonic()
        finish(launchpad, N_FIREWORKS, manager, until=t0 + TOTAL)   # the report below says what is left
        t_end = time.monotonic()
        drained = drain(launchpad, manager, infos, prefix)
    finally:
        manager.stop()
        for sshd in sshds.values():
            sshd.stop()
        for info in infos:
            ensure_slurmctld(info)
    times = {"total": t_end - t0, "chaos": t_chaos - t0, "drain": t_end - t_chaos}
    report, problems, bad = summarize(launchpad, ids, chaos, manager, times, seed)
    report.append(f"  after the work: {drained or 'every pilot ended and its record is final'}")
    report.append(f"  manager log: {log_errors(tmp_path / 'cfg' / 'logs' / 'manager.log')}")
    problems += [drained] if drained else []
    text = "\n".join(report + ["  chaos log:"] + ["    " + e for e in chaos.events])
    (tmp_path / "soak-report.txt").write_text(text + "\n")
    with capsys.disabled():
        print("\n" + text)
    if problems:
        detail = diagnose(launchpad, bad, tmp_path / "cfg" / "logs" / "manager.log")
        with capsys.disabled():
            print(detail)
        pytest.fail("\n".join(problems) + "\n" + detail, pytrace=False)
