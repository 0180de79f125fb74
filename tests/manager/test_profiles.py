"""Queue profiles as the policy sees them (:mod:`pilot.manager.profiles`): one offer and one view per profile, the
unit names of the manager's log, and which unit a pilot record counts for."""

from __future__ import annotations

import math

from pilot.config import load_config
from pilot.manager.profiles import offers_of, profile_shape, unit_of_record, views_of
from pilot.manager.records import Records
from tests.config import test_config
from tests.config.test_config import stampede, write_config

files = test_config.files  # the fixture: a key, a known_hosts and a LaunchPad file

PROFILES = {"cpu": {"walltime": "02:00:00", "cores": 32, "partition": "normal", "pack": True},
            "gpu": {"walltime": "01:00:00", "cores": 8, "gpus": 2, "memory": "64G", "partition": "gpu"}}


def _clusters(tmp_path, files):
    two = {**stampede(files), "profiles": PROFILES, "fworker": {"name": "lab-gpu"}}
    two.pop("pilot")
    return load_config(write_config(tmp_path, {"launchpad_file": str(files["launchpad"])},
                                    {"gpu1": two, "st": stampede(files)})).clusters


def test_one_offer_per_profile_with_its_resources(tmp_path, files):
    cl = _clusters(tmp_path, files)
    (st,) = offers_of("st", cl["st"])   # a pilot: section: one unit named as the cluster, as before profiles
    assert (st.cluster, st.profile, st.cores, st.gpus, st.memory, st.gpu_work_only, st.pack, st.pin) == \
        ("st", "default", 68.0, 0.0, None, False, False, "st")
    assert st.usable_seconds == 24 * 3600 - 600
    cpu, gpu = offers_of("gpu1", cl["gpu1"])
    assert (cpu.cluster, cpu.cores, cpu.gpus, cpu.pack, cpu.gpu_work_only) == ("gpu1[cpu]", 32.0, 0.0, True, False)
    assert (gpu.cluster, gpu.cores, gpu.gpus, gpu.memory, gpu.gpu_work_only) == ("gpu1[gpu]", 8.0, 2.0, 65536.0, True)
    assert gpu.usable_seconds == 3600 - 600 and gpu.pin == cpu.pin == "lab-gpu"
    assert cpu.slots(8, None) == 4 and cpu.slots(None, None) == 32 and gpu.slots(1, 1) == 1   # gpu: no pack
    assert profile_shape(cl["gpu1"], "gpu") == "<= 8 cores, 1-2 GPUs asked, <= 65536 MiB, <= 50 min"
    assert profile_shape(cl["gpu1"], "cpu") == "<= 32 cores, no GPU, <= 1.83 h, packed"
    assert math.isclose(cpu.usable_seconds, 6600.0)


def test_views_share_the_clusters_limits_and_keep_their_own_queue_waits(launchpad, tmp_path, files):
    cl = _clusters(tmp_path, files)
    records = Records(launchpad.db)
    for i, (profile, wait) in enumerate((("gpu", 30.0), ("gpu", 50.0), ("cpu", 600.0), (None, 900.0))):
        records.add_intent(f"fwp.md.{i}", "gpu1", "md", 3600.0, 600.0, "/dev/null", now=1000.0,
                           profile=profile or "default")
        records.update(f"fwp.md.{i}", start_time=1000.0 + wait, **({"profile": None} if profile is None else {}))
    cpu, gpu = views_of("gpu1", cl["gpu1"], records, True)
    assert (gpu.name, gpu.cluster, gpu.profile, gpu.queue_wait) == ("gpu1[gpu]", "gpu1", "gpu", 40.0)
    assert (cpu.name, cpu.queue_wait) == ("gpu1[cpu]", 600.0)
    assert cpu.limits == gpu.limits and cpu.limits.max_queued == 10
    (st,) = views_of("st", cl["st"], records, True)
    assert (st.name, st.cluster, st.cluster_name) == ("st", None, "st")


def test_which_unit_a_record_counts_for(tmp_path, files):
    cl = _clusters(tmp_path, files)
    assert unit_of_record({"cluster": "gpu1", "profile": "gpu"}, cl["gpu1"]) == "gpu1[gpu]"
    # written before the file had profiles (no field, or "default"): against the cluster's limits, no profile's
    assert unit_of_record({"cluster": "gpu1"}, cl["gpu1"]) == "gpu1"
    assert unit_of_record({"cluster": "gpu1", "profile": "default"}, cl["gpu1"]) == "gpu1"
    assert unit_of_record({"cluster": "st", "profile": "old"}, cl["st"]) == "st"


def test_report_counts_each_pilots_cores_by_its_profile(tmp_path, files):
    """CPU hours in ``pilot report``: an hour of a 32-core pilot and an hour of an 8-core one of the same cluster
    are 40 core-hours; a record without a profile (written before profiles) counts as the first profile's."""
    from pilot.report.fold import Fold

    cfg = load_config(write_config(tmp_path, {"launchpad_file": str(files["launchpad"])},
                                   {"gpu1": {**{k: v for k, v in stampede(files).items() if k != "pilot"},
                                             "profiles": PROFILES}}))
    fold = Fold(cfg, since=None, until=20000.0, now=20000.0)
    for i, profile in enumerate(("cpu", "gpu", None)):
        rec = {"_id": f"fwp.md.{i}", "cluster": "gpu1", "state": "COMPLETED", "submit_time": 0.0,
               "start_time": 1000.0, "end_time": 4600.0, **({"profile": profile} if profile else {})}
        fold.add_pilot(rec)
    c = fold.clusters["gpu1"]
    assert c.pilot_s == 3 * 3600 and c.cpu_s == (32 + 8 + 32) * 3600
