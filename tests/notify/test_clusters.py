"""Cluster events from records written the way the manager writes them (:class:`pilot.manager.records.Records`),
on the real LaunchPad and the local webhook server: one transient failure on an idle cluster is no outage, and a
cluster whose scheduler refuses every submission is told once per run of refusals, and once when it accepts again."""

from __future__ import annotations

import time

from pilot.manager.records import Records
from tests.notify.helpers import notifier_for

REFUSAL = ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination "
           "specified")


def _texts(hook) -> list[str]:
    return [c.payload["text"] for c in hook.received()]


def test_one_failure_on_an_idle_cluster_is_no_outage(launchpad, tmp_path, hook, notify_section):
    """One failure, then nobody asks the cluster anything for an hour: nothing is told. A second failure in a row:
    the outage is told (and, with ``recovered`` not among the events, no recovery message is promised)."""
    n = notifier_for(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0,
                                           "unreachable_after": 600, "events": ["unreachable"]})
    rec = Records(launchpad.db)
    t = time.time()
    rec.cluster_failed("alpha", "ssh: connect to host alpha: Connection timed out", 1, t + 30, now=t)
    n.cycle(t + 3600)
    assert _texts(hook) == [] and launchpad.db["pilot_notifications"].count_documents({"kind": "unreachable"}) == 0
    rec.cluster_failed("alpha", "ssh: connect to host alpha: Connection timed out", 2, t + 3660, now=t + 3601)
    n.cycle(t + 3602)
    n.cycle(t + 3603)
    (text,) = _texts(hook)
    assert text.startswith("[pilot] alpha unreachable for 60 min\nCluster alpha has been unreachable")
    assert "2 failed attempt(s)" in text and "one more message" not in text
    rec.cluster_ok("alpha", now=t + 3700)
    n.cycle(t + 3701)
    assert len(_texts(hook)) == 1


def test_a_cluster_refusing_every_submission_is_told_once_and_once_when_it_accepts_again(
        launchpad, tmp_path, hook, notify_section):
    n = notifier_for(launchpad, tmp_path, {"webhook": notify_section["webhook"], "batch": 0,
                                           "unreachable_after": 1200})
    rec = Records(launchpad.db)
    t = time.time()
    rec.cluster_ok("alpha", now=t)            # it answers its status queries all along
    rec.submission_refused("alpha", REFUSAL, now=t)
    n.cycle(t + 600)
    rec.submission_refused("alpha", REFUSAL, now=t + 900)
    n.cycle(t + 1199)
    assert _texts(hook) == []
    n.cycle(t + 1200)
    n.cycle(t + 1300)
    (told,) = _texts(hook)
    assert told.startswith("[pilot] alpha refuses pilot submissions\n"
                           "alpha has refused every submission for 20 min (since ")
    assert f"): {REFUSAL}\n" in told and "You will get one more message when it accepts them again." in told
    assert f"pilot --config-dir {n.config_dir} doctor alpha" in told
    assert f"pilot --config-dir {n.config_dir} status" in told
    rec.submission_accepted("alpha")
    n.cycle(t + 1500)
    n.cycle(t + 1600)
    assert len(_texts(hook)) == 2
    assert _texts(hook)[1].startswith("[pilot] alpha accepts submissions again\nCluster alpha accepts pilot "
                                      "submissions again, after refusing them for 25 min")
    # a later run of refusals that ends before unreachable_after: nobody hears of it, nor of its end
    rec.submission_refused("alpha", REFUSAL, now=t + 2000)
    n.cycle(t + 2100)
    rec.submission_accepted("alpha")
    n.cycle(t + 4000)
    assert len(_texts(hook)) == 2
    keys = sorted(d["_id"] for d in launchpad.db["pilot_notifications"].find({"_id": {"$ne": "_state"}}))
    assert keys == [f"accepting:alpha:{t}", f"refusing:alpha:{t}"]
