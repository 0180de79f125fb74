"""The local scheduler: real detached processes, wall time, pre-walltime signal, cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import wait_for


@pytest.fixture
def lsched(tmp_path):
    env = dict(os.environ, PILOT_LOCAL_STATE=str(tmp_path / "state"))
    started: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "pilot.localsched", *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
        if args[0] == "submit" and res.returncode == 0:
            started.append(res.stdout.strip())
        return res

    def status(jid: str) -> dict[str, str]:
        line = run("status", jid).stdout.strip()
        keys = ["id", "state", "name", "submit", "start", "end", "exit", "reason"]
        return dict(zip(keys, line.split("|"), strict=False)) if line else {}

    run.status = status  # type: ignore[attr-defined]
    yield run
    # stop whatever is still running, by the job's PID group (the jobs are real processes)
    if started:
        run("cancel", *started)
        for jid in started:
            try:
                wait_for(lambda j=jid: status(j).get("state") not in ("PENDING", "RUNNING"), 15, 0.2)
            except TimeoutError:
                pass


def script(tmp_path, fname: str, body: str, **directives: str) -> str:
    lines = ["#!/bin/bash"] + [f"#LOCAL --{k}={v}" for k, v in directives.items()] + [body]
    p = tmp_path / f"{fname}.sh"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_job_runs_and_completes(lsched, tmp_path):
    out = tmp_path / "out.txt"
    jid = lsched("submit", script(tmp_path, "ok", 'echo "id=$PILOT_LOCAL_JOBID"', name="fwp-md-aaaaaa",
                                  output=str(out))).stdout.strip()
    assert jid.isdigit()
    st = wait_for(lambda: (s := lsched.status(jid)).get("state") == "COMPLETED" and s, 15, 0.2)
    assert st["name"] == "fwp-md-aaaaaa" and st["exit"] == "0"
    assert out.read_text().strip() == f"id={jid}"


def test_failure_keeps_exit_code(lsched, tmp_path):
    jid = lsched("submit", script(tmp_path, "bad", "exit 3")).stdout.strip()
    st = wait_for(lambda: (s := lsched.status(jid)).get("state") == "FAILED" and s, 15, 0.2)
    assert st["exit"] == "3"


def test_walltime_signal_then_timeout(lsched, tmp_path):
    out = tmp_path / "sig.txt"
    body = (f"trap 'echo got-USR1 >> {out}' USR1\n"
            "for i in $(seq 100); do sleep 0.1; done\n")
    t0 = time.time()
    jid = lsched("submit", script(tmp_path, "long", body, time="3", signal="USR1@2")).stdout.strip()
    st = wait_for(lambda: (s := lsched.status(jid)).get("state") == "TIMEOUT" and s, 20, 0.2)
    assert st["reason"] == "TimeLimit"
    assert 2.5 < float(st["end"]) - t0 < 15
    assert "got-USR1" in out.read_text()


def test_cancel_running_job(lsched, tmp_path):
    jid = lsched("submit", script(tmp_path, "sleep", "sleep 60")).stdout.strip()
    wait_for(lambda: lsched.status(jid).get("state") == "RUNNING", 10, 0.1)
    assert lsched("cancel", jid).stdout.strip() == f"{jid}|cancelled"
    st = wait_for(lambda: (s := lsched.status(jid)).get("state") == "CANCELLED" and s, 15, 0.2)
    assert st["end"]
    assert lsched("cancel", jid).stdout.strip() == f"{jid}|gone"


def test_bad_input(lsched, tmp_path):
    res = lsched("submit", str(tmp_path / "missing.sh"))
    assert res.returncode == 1 and "no such script" in res.stderr
    res = lsched("submit", script(tmp_path, "t", "true", time="1:00"))
    assert res.returncode == 1 and "--time must be seconds" in res.stderr
    assert lsched("status", "424242").stdout == ""


def test_local_adapter_parses_what_localsched_prints(lsched, tmp_path):
    from queue_adapters import JobState, get_adapter

    ad = get_adapter("local")
    ok = lsched("submit", script(tmp_path, "ok", "true", name="fwp.md.abc123")).stdout.strip()
    bad = lsched("submit", script(tmp_path, "bad", "exit 4")).stdout.strip()
    for jid in (ok, bad):
        wait_for(lambda j=jid: lsched.status(j).get("state") in ("COMPLETED", "FAILED"), 15, 0.2)
    res = lsched("status", ok, bad)
    st = ad.parse_status(res.returncode, res.stdout, res.stderr)
    assert st[ok].state is JobState.COMPLETED and st[ok].name == "fwp.md.abc123" and st[ok].exit_code == 0
    assert st[bad].state is JobState.FAILED and st[bad].exit_code == 4 and st[bad].reason == "exit code 4"
    assert st[ok].start_time is not None and st[ok].end_time >= st[ok].start_time
    res = lsched("cancel", ok)
    assert ad.parse_cancel(res.returncode, res.stdout, res.stderr, [ok]).already_gone == [ok]
    sub = ad.parse_submit(0, "17\n", "")
    assert sub.job_id == "17"
