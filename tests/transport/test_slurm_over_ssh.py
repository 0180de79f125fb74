"""The SLURM adapter driven through SSHTransport on the real cluster ``pilotci``: real jobs, real states.

Four jobs run at the same time (the whole test takes about as long as slurmctld's next time-limit pass, at
most 30 s, after the timeout job's limit is lowered to now; tests.helpers.time_limit_now):

============  =========================================  ==========================================
job           script                                     states expected (squeue(1)/sacct(1) JOB STATE CODES)
============  =========================================  ==========================================
held          ``sbatch --hold``, then ``scancel``        PENDING with reason JobHeldUser (= HELD), CANCELLED
ok            ``sleep 10; exit 0``                       RUNNING, COMPLETED with exit code 0
fail          ``sleep 2; exit 3``                        FAILED with exit code 3
timeout       ``--time=1``, ``sleep 600``; once RUNNING  RUNNING, TIMEOUT ("terminated upon reaching its time limit")
              its owner lowers the limit to now
============  =========================================  ==========================================

State meanings: https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES and
https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES (a job exiting non-zero is FAILED; exit code
``code:signal``).
"""

from __future__ import annotations

import time
import uuid

import pytest

from pilot.transport.ssh import SSHTransport
from tests.helpers import time_limit_now

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _script(name: str, body: str, out_dir: str, extra: tuple[str, ...] = ()) -> str:
    lines = ["#!/bin/sh", f"#SBATCH -J {name}", "#SBATCH -n 1", f"#SBATCH -o {out_dir}/%x-%j.out",
             *(f"#SBATCH {e}" for e in extra), body, ""]
    return "\n".join(lines)


def test_slurm_states_over_ssh(slurm_cluster, remote_tmp):
    from queue_adapters import JobState, SubmitOutcome, get_adapter

    adapter = get_adapter("slurm")
    tag = uuid.uuid4().hex[:6]
    jobs = {
        "held": _script(f"pilot-t-held-{tag}", "sleep 60", str(remote_tmp), ("--hold",)),
        "ok": _script(f"pilot-t-ok-{tag}", "sleep 10\nexit 0", str(remote_tmp)),
        "fail": _script(f"pilot-t-fail-{tag}", "sleep 2\nexit 3", str(remote_tmp)),
        "timeout": _script(f"pilot-t-timeout-{tag}", "sleep 600", str(remote_tmp), ("--time=1",)),
    }
    ids: dict[str, str] = {}
    seen: dict[str, list[JobState]] = {k: [] for k in jobs}
    final: dict[str, object] = {}
    with SSHTransport(**slurm_cluster.ssh_kwargs(), name=slurm_cluster.name) as t:
        try:
            for key, text in jobs.items():
                path = f"{remote_tmp}/{key}.sh"
                t.put(text.encode(), path, mode=0o755)
                res = t.run(adapter.submit_command(path), timeout=30)
                sub = adapter.parse_submit(res.returncode, res.stdout, res.stderr)
                assert sub.outcome is SubmitOutcome.SUBMITTED, (sub, res)
                ids[key] = sub.job_id

            cancelled_held = lowered = False
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and len(final) < len(jobs):
                res = t.run(adapter.status_command(list(ids.values())), timeout=30)
                statuses = adapter.parse_status(res.returncode, res.stdout, res.stderr)
                gone = []
                for key, jid in ids.items():
                    st = statuses.get(jid)
                    if st is None:
                        gone.append(key)
                        continue
                    if not seen[key] or seen[key][-1] is not st.state:
                        seen[key].append(st.state)
                    if st.state.final and key not in final:
                        final[key] = st
                if JobState.RUNNING in seen["timeout"] and not lowered:
                    # the same time-limit kill at slurmctld's next pass, not a minute after the start
                    c = t.run(time_limit_now(ids["timeout"]), timeout=30)
                    assert c.returncode == 0, c
                    lowered = True
                if JobState.HELD in seen["held"] and not cancelled_held:
                    c = t.run(adapter.cancel_command([ids["held"]]), timeout=30)
                    cancel = adapter.parse_cancel(c.returncode, c.stdout, c.stderr, [ids["held"]])
                    assert cancel.ok, cancel
                    cancelled_held = True
                if gone:  # left the queue (MinJobAge passed): ask accounting
                    h = t.run(adapter.history_command([ids[k] for k in gone]), timeout=30)
                    for key in gone:
                        st = adapter.parse_history(h.returncode, h.stdout, h.stderr).get(ids[key])
                        if st is not None and st.state.final and key not in final:
                            seen[key].append(st.state)
                            final[key] = st
                time.sleep(1.5)
            assert len(final) == len(jobs), f"not all jobs ended within the deadline: seen={seen}"
            print("states seen:", {k: [s.value for s in v] for k, v in seen.items()})

            assert seen["held"][0] is JobState.HELD and final["held"].state is JobState.CANCELLED, seen
            assert JobState.RUNNING in seen["ok"] and final["ok"].state is JobState.COMPLETED, seen
            assert final["fail"].state is JobState.FAILED, seen
            assert JobState.RUNNING in seen["timeout"] and final["timeout"].state is JobState.TIMEOUT, seen

            # accounting agrees, with exit codes (sacct ExitCode "3:0" -> 3)
            h = t.run(adapter.history_command(list(ids.values())), timeout=30)
            hist = adapter.parse_history(h.returncode, h.stdout, h.stderr)
            assert hist[ids["ok"]].state is JobState.COMPLETED and hist[ids["ok"]].exit_code == 0
            assert hist[ids["fail"]].state is JobState.FAILED and hist[ids["fail"]].exit_code == 3
            assert hist[ids["timeout"]].state is JobState.TIMEOUT
            assert hist[ids["held"]].state is JobState.CANCELLED
        finally:
            if ids:
                t.run(["scancel", *ids.values()], timeout=30)
