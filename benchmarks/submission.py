"""Benchmark 1, submission: one manager cycle versus ``qlaunch rapidfire -m CAP``.

R READY Fireworks of one category; pilots run ``fireworks_per_pilot: 4`` each, so ceil(R/4) pilots is the
right number. Both sides submit to the real SLURM cluster ``pilotci`` as the cluster user ``pilot``:

* ours: one :meth:`pilot.manager.Manager.run_cycle` in this process, over the loopback sshd. Counted: the
  commands it runs (``ClusterRuntime.calls`` and, by program, a counting wrapper around its transport), the
  file uploads (one job script per pilot) and the SSH connections opened.
* FireWorks: ``qlaunch -l ... -w ... -q my_qadapter.yaml rapidfire -m CAP --nlaunches CAP`` run *on the
  cluster* as ``pilot`` (one SSH command), with FireWorks' own CommonAdapter and its SLURM template. Its
  ``sbatch`` and ``squeue`` calls are counted by wrapper scripts placed first on its ``PATH`` for that run,
  each appending a time-stamped line to a log before ``exec``-ing the real program.

Every job of both sides is submitted held (``#SBATCH --hold``: our cluster file's ``extra_directives``; a copy
of FireWorks' SLURM template with that one line added for qlaunch) so that nothing runs, and cancelled
right after it is counted.

``qlaunch rapidfire`` sleeps ``QUEUE_UPDATE_INTERVAL`` (FireWorks default 5 s) after every submission. The
main rows use ``QUEUE_UPDATE_INTERVAL: 0`` (set in an ``FW_config.yaml`` given by ``FW_CONFIG_FILE``) so that
the machinery is compared, not the sleep; one extra row (full mode) runs qlaunch with the default 5 s.

qlaunch counts *every* job of the user in the queue (``squeue -u USER``), other work included; on this shared
test machine other helpers' jobs come and go, so ``-m`` is raised by the number of the user's jobs queued just
before the run (reported as ``other_jobs_of_user_in_queue``) and ``--sleep 5`` replaces the 60 s pause
between rounds that qlaunch takes when it finds the queue full.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    BenchError,
    CommandCounter,
    Database,
    Slurm,
    counting_factory,
    ensure_cluster_venv,
    make_remote_dir,
    require_infra,
    short_id,
    ssh_connects,
)

FIREWORKS_DEFAULT_UPDATE_INTERVAL = 5  # fireworks/fw_config.py QUEUE_UPDATE_INTERVAL


def _add_ready(lp: Any, category: str, n: int) -> None:
    from fireworks import Firework
    from fireworks.user_objects.firetasks.script_task import PyTask

    lp.bulk_add_wfs([Firework([PyTask(func="os.getpid")], spec={"_category": category}, name=f"sub-{i}")
                     for i in range(n)])


def _fireworks_slurm_template() -> str:
    from fireworks.user_objects.queue_adapters import common_adapter

    return (Path(common_adapter.__file__).parent / "SLURM_template.txt").read_text()


def run_ours(db: Database, info: Any, venv: str, remote: Path, category: str, n_ready: int, per_pilot: int,
             slurm: Slurm) -> dict[str, Any]:
    """One manager cycle against ``n_ready`` READY Fireworks; the pilots are counted, then cancelled."""
    from pilot.config import load_config
    from pilot.manager.cycle import Manager
    from tests.manager.helpers import ssh_cluster, write_config

    counter = CommandCounter()
    lp = db.launchpad(listener=counter.listener)
    _add_ready(lp, category, n_ready)
    lp_file = remote / f"lp-{lp.db.name}.yaml"
    lp_file.write_text(yaml.safe_dump(db.launchpad_file_dict(lp)))
    os.chmod(lp_file, 0o644)
    prefix = "bs" + short_id()[:4]
    cfg_dir = Path(tempfile.mkdtemp(prefix="pilot-bench-cfg-"))
    try:
        cluster = ssh_cluster(info, str(remote / "ours"), str(lp_file), [category], venv,
                              fireworks_per_pilot=per_pilot, limits={"max_queued": 1000, "max_running": 1000},
                              pilot={"walltime": "5", "cores": 1, "partition": "debug",
                                     "extra_directives": ["#SBATCH --hold"]})
        # a user's poll interval (it is also how long a cycle waits for a cluster's submissions): the tests' 2 s
        # reported a loaded machine's 2-pilot submission as "unreachable"
        cfg = load_config(write_config(cfg_dir, lp_file, {"pilotci": cluster}, poll_interval=60,
                                       job_name_prefix=prefix))
        factory, made = counting_factory()
        mgr = Manager(cfg, lp, transport_factory=factory)
        report = None
        before_srv = db.server_stats(lp)
        before = counter.snapshot()
        t0 = time.perf_counter()
        try:
            report = mgr.run_cycle()
            wall = time.perf_counter() - t0
            db_cmds = CommandCounter.diff(counter.snapshot(), before)
            srv = Database.stats_diff(db.server_stats(lp), before_srv)
            rt = mgr.clusters["pilotci"]
            commands: dict[str, int] = {}
            transfers = 0
            for t in made:
                for k, v in t.commands.items():
                    commands[k] = commands.get(k, 0) + v
                transfers += t.transfers
            connects = ssh_connects(made)
        finally:
            queued = [j for j in slurm.jobs() if j[1].startswith(prefix)]
            slurm.cancel([s["job_id"] for s in (report.submitted if report is not None else [])])
            slurm.cancel_names(prefix)
            mgr.close()
        if report.errors:
            raise BenchError(f"the manager's cycle reported errors: {report.errors}")
        return {
            "jobs": len(report.submitted), "jobs_in_queue": len(queued), "wall_s": wall,
            "scheduler_calls": sum(v for k, v in commands.items() if k in ("sbatch", "squeue", "sacct", "scancel")),
            "commands": commands, "cluster_runtime_calls": rt.calls, "file_uploads": transfers,
            "ssh_connects": connects, "ssh_operations": sum(commands.values()) + transfers,
            "db_commands": sum(db_cmds.values()), "db_commands_by_name": db_cmds,
            "db_commands_server": sum(srv.values()) if srv is not None else None,
        }
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)
        db.drop(lp)


def run_qlaunch(db: Database, info: Any, venv: str, remote: Path, category: str, n_ready: int, cap: int,
                update_interval: int, slurm: Slurm) -> dict[str, Any]:
    """``qlaunch rapidfire -m cap --nlaunches cap`` as the cluster user, its sbatch/squeue calls logged."""
    from pilot.transport import SSHTransport

    lp = db.launchpad()
    _add_ready(lp, category, n_ready)
    qdir = remote / f"qlaunch-{short_id()}"
    job_name = "fwq" + short_id()[:5]
    tr = SSHTransport(**info.ssh_kwargs(), name=info.name)
    try:
        res = tr.run(["which", "sbatch", "squeue"], timeout=60)
        paths = res.stdout.split()
        if res.returncode != 0 or len(paths) != 2:
            raise BenchError(f"cannot find sbatch/squeue for {info.user}@{info.host}:{info.port} "
                             f"(which: exit {res.returncode}, {res.stdout!r} {res.stderr[-300:]!r})")
        remote_path = tr.run(["printenv", "PATH"], timeout=60).stdout.strip()
        tr.makedirs(str(qdir / "bin"))
        log = qdir / "calls.log"
        for prog, real in zip(("sbatch", "squeue"), paths, strict=True):
            wrapper = (f"#!/bin/sh\n# counts {prog} calls for the benchmark, then runs the real one\n"
                       f"printf '%s %s\\n' \"$(date +%s.%N)\" {prog} >> {log}\nexec {real} \"$@\"\n")
            tr.put(wrapper.encode(), str(qdir / "bin" / prog), mode=0o755)
        template = _fireworks_slurm_template().replace("#!/bin/bash -l\n", "#!/bin/bash -l\n#SBATCH --hold\n", 1)
        if "#SBATCH --hold" not in template:
            raise BenchError("FireWorks' SLURM_template.txt does not start with '#!/bin/bash -l': cannot add "
                             "--hold to it; update benchmarks/submission.py")
        tr.put(template.encode(), str(qdir / "SLURM_hold_template.txt"))
        lp_file = qdir / "my_launchpad.yaml"
        tr.put(yaml.safe_dump(db.launchpad_file_dict(lp)).encode(), str(lp_file))
        tr.put(yaml.safe_dump({"name": "bench-qlaunch", "category": category, "query": "{}"}).encode(),
               str(qdir / "my_fworker.yaml"))
        tr.put(yaml.safe_dump({
            "_fw_name": "CommonAdapter", "_fw_q_type": "SLURM",
            "_fw_template_file": str(qdir / "SLURM_hold_template.txt"),
            "rocket_launch": f"{venv}/bin/rlaunch -l {lp_file} singleshot",
            "nodes": 1, "ntasks": 1, "walltime": "00:05:00", "queue": "debug", "job_name": job_name,
        }).encode(), str(qdir / "my_qadapter.yaml"))
        tr.put(yaml.safe_dump({"QUEUE_UPDATE_INTERVAL": update_interval}).encode(), str(qdir / "FW_config.yaml"))
        tr.makedirs(str(qdir / "launch"))
        others = len(slurm.jobs())
        before_srv = db.server_stats(lp)
        # qlaunch counts every job of the user in the queue (squeue -u USER), other people's work included:
        # raise -m by the user's jobs already queued so that it submits `cap` of its own, and keep its sleep
        # between rounds (default 60 s) short in case a job of someone else arrives meanwhile
        argv = [f"{venv}/bin/qlaunch", "-l", str(lp_file), "-w", str(qdir / "my_fworker.yaml"),
                "-q", str(qdir / "my_qadapter.yaml"), "--launch_dir", str(qdir / "launch"),
                "rapidfire", "-m", str(cap + others), "--nlaunches", str(cap), "--sleep", "5"]
        env = {"PATH": f"{qdir / 'bin'}:{remote_path}", "FW_CONFIG_FILE": str(qdir / "FW_config.yaml")}
        t0 = time.perf_counter()
        try:
            res = tr.run(argv, timeout=max(600.0, cap * (update_interval + 5.0)), env=env, cwd=str(qdir))
            wall = time.perf_counter() - t0
            queued = [j for j in slurm.jobs() if j[1] == job_name]
        finally:
            slurm.cancel_names(job_name)
        if res.returncode != 0:
            raise BenchError(f"qlaunch exited {res.returncode} on {info.host}: {res.stderr[-1500:]}")
        srv = Database.stats_diff(db.server_stats(lp), before_srv)
        calls = [line.split() for line in tr.run(["cat", str(log)], timeout=60).stdout.splitlines() if line]
        sb = [float(c[0]) for c in calls if c[1] == "sbatch"]
        sq = [float(c[0]) for c in calls if c[1] == "squeue"]
        stamps = sorted(sb + sq)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "ERROR" in line]
        return {
            "jobs": len(sb), "jobs_in_queue": len(queued), "wall_s": wall,
            "loop_s": (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0,
            "scheduler_calls": len(sb) + len(sq), "commands": {"sbatch": len(sb), "squeue": len(sq)},
            "ssh_connects": 1, "ssh_operations": 1, "update_interval_s": update_interval,
            "other_jobs_of_user_in_queue": others, "maxjobs_queue": cap + others,
            "db_commands_server": sum(srv.values()) if srv is not None else None,
            "db_commands_by_name_server": srv, "errors": errors[:5],
        }
    finally:
        tr.close()
        db.drop(lp)


def run(sizes: list[int], cap: int = 20, per_pilot: int = 4, default_interval_for: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    clusters = require_infra()
    info = clusters["pilotci"]
    venv = ensure_cluster_venv(info.venv)
    slurm = Slurm(info.slurm_conf or "/etc/slurm/slurm.conf", info.user)
    db = Database().start()
    remote = make_remote_dir("pilot-bench-sub-", info.user)
    rows: list[dict[str, Any]] = []
    try:
        for r in sizes:
            cat = f"sub{short_id()}"
            log(f"submission: R={r}: our manager, one cycle ...")
            ours = run_ours(db, info, venv, remote, cat, r, per_pilot, slurm)
            log(f"submission: R={r}: qlaunch rapidfire -m {cap} (QUEUE_UPDATE_INTERVAL 0) ...")
            theirs = run_qlaunch(db, info, venv, remote, cat, r, cap, 0, slurm)
            row: dict[str, Any] = {"ready": r, "right_number": math.ceil(r / per_pilot), "cap": cap,
                                   "ours": ours, "qlaunch": theirs}
            if default_interval_for == r:
                log(f"submission: R={r}: qlaunch with FireWorks' default QUEUE_UPDATE_INTERVAL "
                    f"{FIREWORKS_DEFAULT_UPDATE_INTERVAL} s ...")
                row["qlaunch_default_interval"] = run_qlaunch(db, info, venv, remote, cat, r, cap,
                                                              FIREWORKS_DEFAULT_UPDATE_INTERVAL, slurm)
            rows.append(row)
    finally:
        server_mib = db.server_peak_mib()
        db.stop()
        shutil.rmtree(remote, ignore_errors=True)
    return {"rows": rows, "server_peak_rss_mib": server_mib,
            "method": "scheduler calls: ours = commands through the manager's transport (ClusterRuntime.calls "
                      "plus a counting wrapper by program); qlaunch = wrapper scripts first on its PATH that "
                      "log each sbatch/squeue call. Jobs submitted held, cancelled after counting."}
