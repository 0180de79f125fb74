"""A cluster that becomes unreachable for real (the real SLURM test cluster behind a TCP relay that the test stops
and starts), driven by the real manager: nobody hears of it before ``unreachable_after``, then exactly one message
per channel, and exactly one more when it answers again."""

from __future__ import annotations

import logging
import os
import subprocess
import time

import pytest

from pilot.config import load_config
from pilot.manager.cycle import Manager
from pilot.manager.records import Records
from pilot.transport.clusters import transport_for
from tests.manager.helpers import job_prefix, readable_lp_file, ssh_cluster, write_config
from tests.notify.helpers import assert_no_secret, cycles, proc_cmdlines
from tests.notify.relay import Relay


@pytest.fixture
def relay(slurm_cluster):
    r = Relay((slurm_cluster.host, slurm_cluster.port)).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def held_job(slurm_cluster):
    """A held SLURM job of the test user, as a pilot record the manager tracks (it asks the cluster about it every
    cycle); cancelled afterwards."""
    made: list[str] = []

    def submit(lp, config, name):
        t = transport_for("pilotci", config.clusters["pilotci"])
        try:
            res = t.run(["sbatch", "--parsable", "--hold", f"--job-name={name}", "-p", "debug", "-t", "1",
                         "--wrap", "true"], timeout=30)
        finally:
            t.close()
        assert res.returncode == 0, res.stderr
        job_id = res.stdout.strip().split(";")[0]
        made.append(job_id)
        rec = Records(lp.db)
        rec.add_intent(name, "pilotci", "md", 60.0, 0.0, "/nonexistent/script.sh", now=time.time())
        rec.update(name, job_id=job_id, state="PENDING")
        return job_id

    yield submit
    if made:
        subprocess.run(["scancel", *made], env=dict(os.environ, SLURM_CONF=slurm_cluster.slurm_conf), timeout=30,
                       check=False)


def _record(lp, name):
    return lp.db["pilot_clusters"].find_one({"_id": name}) or {}


def _unreachable_events(lp):
    return list(lp.db["pilot_notifications"].find({"kind": "unreachable"}))


def test_unreachable_is_told_once_after_the_delay_and_once_when_it_recovers(
        launchpad, tmp_path, slurm_cluster, relay, held_job, smtp, hook, notify_secrets, notify_section, caplog):
    caplog.set_level(logging.INFO, logger="pilot")
    after = 3.0
    lp_file = readable_lp_file(launchpad, tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(slurm_cluster.host_key_line("127.0.0.1", relay.port))
    cluster = ssh_cluster(slurm_cluster, f"/tmp/notify-{tmp_path.name}", str(lp_file), ["md"], slurm_cluster.venv,
                          host="127.0.0.1", port=relay.port, known_hosts=str(known), command_timeout=5)
    prefix = job_prefix("n")
    cfg = write_config(tmp_path / "cfg", lp_file, {"pilotci": cluster}, backoff={"initial": 0.5, "max": 1},
                       job_name_prefix=prefix,
                       notify={**notify_section, "unreachable_after": after, "events": ["unreachable", "recovered"]})
    config = load_config(cfg)
    held_job(launchpad, config, f"{prefix}.md.{os.urandom(3).hex()}")
    mgr = Manager(config, launchpad)
    try:
        mgr.run_cycle()
        assert _record(launchpad, "pilotci").get("reachable") is True, _record(launchpad, "pilotci")
        relay.stop()                                  # the cluster goes away
        deadline = time.monotonic() + 30
        while _record(launchpad, "pilotci").get("reachable") is not False:
            assert time.monotonic() < deadline, "the manager never saw the cluster fail"
            mgr.run_cycle()
        down = float(_record(launchpad, "pilotci")["down_since"])
        # until unreachable_after has passed: nothing recorded, nothing sent (judged by when the manager recorded
        # the event, not by this test's clock before a cycle: a slow cycle may pass the mark within itself)
        quiet = 0
        deadline = time.monotonic() + 20
        while not (smtp.received() and hook.received()):
            assert time.monotonic() < deadline, "no message after unreachable_after"
            mgr.run_cycle()
            quiet += not _unreachable_events(launchpad)
            time.sleep(0.1)
        (event,) = _unreachable_events(launchpad)
        assert event["queued"] >= down + after, (event["queued"], down)
        assert min(event["sent"].values()) >= event["queued"]
        assert quiet >= 3, "the cycles before unreachable_after were not watched"
        cycles(mgr, 5, pause=0.2)                     # still down: nothing more
        assert len(smtp.received()) == 1 and len(hook.received()) == 1
        mail = smtp.received()[0]
        assert mail.subject.startswith("[pilot] pilotci unreachable for ")
        assert "Cluster pilotci has been unreachable (or refusing commands) since" in mail.body
        assert f"pilot --config-dir {cfg} doctor pilotci" in mail.body
        relay.start()                                 # it comes back on the same address
        deadline = time.monotonic() + 30
        while len(smtp.received()) < 2 or len(hook.received()) < 2:
            assert time.monotonic() < deadline, "no message after the cluster came back"
            mgr.run_cycle()
            time.sleep(0.1)
        assert _record(launchpad, "pilotci").get("reachable") is True
        cycles(mgr, 4, pause=0.2)
    finally:
        mgr.close()
    mails, calls = smtp.received(), hook.received()
    assert [m.subject for m in mails][1:] == ["[pilot] pilotci reachable again"], [m.subject for m in mails]
    assert len(calls) == 2 and calls[1].payload["text"].startswith("[pilot] pilotci reachable again")
    assert len(_unreachable_events(launchpad)) == 1
    assert_no_secret(notify_secrets.all(), log=caplog.text, mail=[m.message.as_string() for m in mails],
                     webhook=[str(c.payload) for c in calls], argv=proc_cmdlines())
