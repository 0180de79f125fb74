"""``pilot status`` shows a cluster held because its pilots cannot start (issue 16, item 13).

The hold is written the way the manager writes it (:meth:`pilot.manager.records.Records.set_failed_starts`);
the real manager writing it from real SLURM pilots is ``tests/manager/test_holds.py``.
"""

from __future__ import annotations

import time

import pytest

from pilot.manager.records import Records
from pilot.status import StatusOptions, format_status, gather_status
from tests.status.test_status import epoch, validate

TAIL = ("pilot: job 225: worker started as process 25117, deadline 1796554758\n"
        "/var/spool/slurm/job00225/slurm_script: line 78: /nonexistent/bin/python3: No such file or directory\n"
        "pilot: job 225: worker exited with status 127\n")
SEE = "ssh -i /home/alice/.ssh/id pilot@198.51.100.18 'tail -n 100 /scratch/w/pilot-225.err'"


def _hold(now: float, until: float) -> dict:
    return {"since": now - 60, "until": until, "delay": 240.0, "failures": 3, "config_digest": "abc",
            "pilot": {"job_name": "fwp.md.a1b2c3", "job_id": "225", "category": "md", "state": "FAILED",
                      "exit_code": 127, "reason": "NonZeroExitCode", "end_time": now - 5,
                      "why": "job ended FAILED with exit code 127 before running any Firework"},
            "stderr_path": "/scratch/w/pilot-225.err", "stderr_tail": TAIL, "see_more": SEE}


def test_a_held_cluster_in_json_and_text(launchpad):
    now = time.time()
    records = Records(launchpad.db)
    records.cluster_ok("held1", now - 10)
    records.set_failed_starts("held1", 3, _hold(now, now + 240))
    records.cluster_ok("fine", now - 10)
    records.set_failed_starts("fine", 1, None)          # one failed start, not held
    report = gather_status(launchpad.db, None, now=now, options=StatusOptions())
    doc = report.to_dict()
    validate(doc)
    clusters = {c["name"]: c for c in doc["clusters"]}
    assert clusters["fine"]["hold"] is None and clusters["fine"]["failed_starts"] == 1
    h = clusters["held1"]["hold"]
    assert h["failures"] == 3 and h["delay"] == 240.0 and h["stderr_tail"] == TAIL and h["see_more"] == SEE
    assert epoch(h["until"]) == pytest.approx(now + 240, abs=1e-6)
    assert epoch(h["pilot"]["end_time"]) == pytest.approx(now - 5, abs=1e-6)
    assert h["pilot"]["exit_code"] == 127 and h["pilot"]["job_id"] == "225"
    assert "config_digest" not in h
    assert doc["needs_you"]["held"] == [{"cluster": "held1", "until": h["until"], "failures": 3,
                                         "stderr_tail": TAIL, "see_more": SEE}]
    assert doc["needs_you"]["count"] == 1

    text = format_status(report, now=now)
    row = next(line for line in text.splitlines() if line.strip().startswith("held1"))
    assert "HELD, probe in 4 min" in row
    assert "* cluster held1 is held: 3 pilots in a row ended before running any Firework" in text
    assert "fwp.md.a1b2c3 (job 225) FAILED, exit code 127" in text
    assert "      /var/spool/slurm/job00225/slurm_script: line 78: /nonexistent/bin/python3: No such file" in text
    assert f"see the rest: {SEE}" in text
    assert "clusters/held1.yaml" in text


def test_a_hold_whose_wait_is_over_shows_the_probe(launchpad):
    now = time.time()
    records = Records(launchpad.db)
    records.set_failed_starts("c", 4, _hold(now, now - 1))
    report = gather_status(launchpad.db, None, now=now)
    validate(report.to_dict())
    text = format_status(report, now=now)
    assert "HELD, probing" in text and "a probe pilot is due or in the queue" in text
    # the manager ends the hold by writing None: status shows nothing then
    records.set_failed_starts("c", 0, None)
    report = gather_status(launchpad.db, None, now=now)
    assert report.to_dict()["needs_you"]["held"] == [] and "HELD" not in format_status(report, now=now)
