"""A minimal batch scheduler for one machine: the ``local`` scheduler.

Pilots become local processes with a wall time, so ``pilot demo`` and single-workstation users need no
SLURM. It is driven through argument lists like any other scheduler (``queue_adapters/local.py`` builds
them and parses what this prints), so the manager treats it like a cluster reached by LocalTransport.

    python -m pilot.localsched [--state DIR] submit SCRIPT -> prints the job id
    python -m pilot.localsched status [JOBID ...]     -> one line per job: id|state|name|submit|start|end|exit|reason
    python -m pilot.localsched cancel JOBID ...       -> one line per job: id|cancelled or id|gone

The script's directives (lines ``#LOCAL --name=NAME``, ``#LOCAL --time=SECONDS``,
``#LOCAL --signal=USR1@SECONDS``, ``#LOCAL --output=PATH``) set the job name, the wall time, the
pre-walltime signal sent to the script's shell, and where its output goes. At the wall time the whole
process group gets SIGTERM, then SIGKILL ``KILL_WAIT`` seconds later, and the job ends TIMEOUT (as SLURM
does). State lives in ``$PILOT_LOCAL_STATE`` (default ``~/.pilot/localsched``): one JSON file per job,
written atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KILL_WAIT = 5.0
DIRECTIVE = re.compile(r"^#LOCAL\s+--([a-z]+)=(.*?)\s*$")


def state_dir() -> Path:
    """``--state DIR`` (set by the local adapter: the cluster's work_dir), else $PILOT_LOCAL_STATE, else
    ``~/.pilot/localsched``."""
    d = Path(os.environ.get("PILOT_LOCAL_STATE", os.path.expanduser("~/.pilot/localsched")))
    (d / "jobs").mkdir(parents=True, exist_ok=True)
    return d


def _job_path(jid: str) -> Path:
    return state_dir() / "jobs" / f"{jid}.json"


def _write(job: dict[str, Any]) -> None:
    p = _job_path(job["id"])
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, p)


def _read(jid: str) -> dict[str, Any] | None:
    try:
        return json.loads(_job_path(jid).read_text())
    except (OSError, ValueError):
        return None


def _next_id() -> str:
    with open(state_dir() / "seq.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read().strip() or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n))
    return str(n)


def parse_directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = DIRECTIVE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _supervise(jid: str) -> None:
    """Run in the detached supervisor process: start the job, enforce its wall time, record the end."""
    job = _read(jid)
    if job is None:
        return
    d = job["directives"]
    walltime = float(d.get("time", "0") or 0)
    sig_name, _, lead = d.get("signal", "").partition("@")
    out = open(d.get("output", os.devnull), "ab")
    env = dict(os.environ, PILOT_LOCAL_JOBID=jid, PILOT_LOCAL_JOBNAME=job["name"])
    proc = subprocess.Popen(["bash", job["script"]], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            cwd=job["cwd"], env=env, start_new_session=True)
    out.close()
    job.update(state="RUNNING", start=time.time(), pid=proc.pid)
    _write(job)
    deadline = job["start"] + walltime if walltime > 0 else None
    signalled = timed_out = False
    while proc.poll() is None:
        now = time.time()
        cur = _read(jid) or job
        if cur.get("cancel_requested") and not timed_out:
            _kill_group(proc, reason="cancelled")
            break
        if deadline is not None and sig_name and not signalled and now >= deadline - float(lead or 0):
            try:
                proc.send_signal(getattr(signal, "SIG" + sig_name.upper().removeprefix("SIG")))
            except (AttributeError, ProcessLookupError):
                pass
            signalled = True
        if deadline is not None and now >= deadline:
            timed_out = True
            _kill_group(proc, reason="timeout")
            break
        time.sleep(0.2)
    rc = proc.wait()
    cur = _read(jid) or job
    reason: str | None
    if timed_out:
        state, reason = "TIMEOUT", "TimeLimit"
    elif cur.get("cancel_requested"):
        state, reason = "CANCELLED", "cancelled"
    else:
        state, reason = ("COMPLETED", None) if rc == 0 else ("FAILED", f"exit code {rc}")
    cur.update(state=state, end=time.time(), exit=rc, reason=reason)
    _write(cur)


def _kill_group(proc: subprocess.Popen[bytes], reason: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.time() + KILL_WAIT
    while time.time() < end and proc.poll() is None:
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def submit(script: str) -> str:
    path = Path(script).resolve()
    if not path.is_file():
        print(f"localsched: error: no such script: {script}", file=sys.stderr)
        raise SystemExit(1)
    d = parse_directives(path.read_text(errors="replace"))
    time_s = d.get("time", "0")
    if not re.fullmatch(r"\d+(\.\d+)?", time_s):
        print(f"localsched: error: --time must be seconds, got {time_s!r}", file=sys.stderr)
        raise SystemExit(1)
    jid = _next_id()
    job = {"id": jid, "name": d.get("name", path.stem), "script": str(path), "cwd": os.getcwd(),
           "directives": d, "state": "PENDING", "submit": time.time(), "start": None, "end": None,
           "exit": None, "reason": None, "pid": None, "supervisor": None}
    _write(job)
    # double fork: the supervisor outlives the submitting process (and its SSH session)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        cur = _read(jid) or job
        cur["supervisor"] = os.getpid()
        _write(cur)
        try:
            _supervise(jid)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return jid


def _refresh(job: dict[str, Any]) -> dict[str, Any]:
    """A job whose supervisor died (machine reboot, kill -9) cannot stay RUNNING forever."""
    if job["state"] in ("PENDING", "RUNNING") and job.get("supervisor") and not _alive(job["supervisor"]):
        if not _alive(job.get("pid")):
            job.update(state="FAILED", end=time.time(), reason="supervisor lost")
            _write(job)
    return job


def status(ids: list[str]) -> list[str]:
    if ids:
        jobs = [j for j in (_read(i) for i in ids) if j is not None]
    else:
        jobs = []
        for p in sorted((state_dir() / "jobs").glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
            j = _read(p.stem)
            if j is not None:
                jobs.append(j)
    lines = []
    for j in jobs:
        j = _refresh(j)
        fields = [j["id"], j["state"], j["name"], j["submit"], j["start"], j["end"], j["exit"], j["reason"]]
        lines.append("|".join("" if v is None else str(v) for v in fields))
    return lines


def cancel(ids: list[str]) -> list[str]:
    out = []
    for jid in ids:
        j = _read(jid)
        if j is None or j["state"] not in ("PENDING", "RUNNING"):
            out.append(f"{jid}|gone")
            continue
        j["cancel_requested"] = True
        _write(j)
        out.append(f"{jid}|cancelled")
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "--state":
        # the jobs' supervisors inherit it through the environment
        os.environ["PILOT_LOCAL_STATE"] = os.path.abspath(os.path.expanduser(args[1]))
        args = args[2:]
    if not args or args[0] not in ("submit", "status", "cancel"):
        print("usage: python -m pilot.localsched [--state DIR] submit SCRIPT | status [JOBID...] | cancel JOBID...",
              file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd == "submit":
        if len(rest) != 1:
            print("localsched: error: submit takes one script", file=sys.stderr)
            return 2
        print(submit(rest[0]))
    elif cmd == "status":
        for line in status(rest):
            print(line)
    else:
        for line in cancel(rest):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
