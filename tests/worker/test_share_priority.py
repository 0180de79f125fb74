"""``_priority`` is respected within a category (issue 20, fair share): fair share decides which category gets a
pilot; inside a category the real ``pilot worker`` takes READY Fireworks highest ``spec._priority`` first, as
FireWorks documents it (docs_rst/priority_tutorial.rst, "Assigning job priority"): "Higher priorities are run
first." and "FireWorks with *any* value of priority will be run before jobs without a priority defined."

The Fireworks are added lowest priority first, so that creation order (FIFO) would give the opposite order.
"""

from __future__ import annotations

import time

from tests.worker.test_worker import add, workers  # noqa: F401  (fixture)
from tests.worker.test_worker_tasks import EnvTask


def test_one_worker_takes_its_category_by_priority(launchpad, tmp_path, workers):  # noqa: F811
    plain = add(launchpad, EnvTask(), "plain", "prio")                       # no _priority: last
    by_priority = {p: add(launchpad, EnvTask(), f"p{p}", "prio", priority=p) for p in (1, 5, 3, 10, 7)}
    other = add(launchpad, EnvTask(), "other", "elsewhere", priority=100)    # another category: never taken
    w = workers(launchpad, tmp_path, ["prio"], "--deadline", str(int(time.time()) + 3600), "--margin", "60",
                "--idle-timeout", "1", "--grace", "5", "--launch-dir", str(tmp_path / "launches"))
    assert w.wait(60) == 0, w.log()
    launches = sorted(launchpad.launches.find({}, {"fw_id": 1, "launch_id": 1, "time_start": 1}),
                      key=lambda d: d["launch_id"])
    order = [d["fw_id"] for d in launches]
    expected = [by_priority[p] for p in (10, 7, 5, 3, 1)] + [plain]
    assert order == expected, (order, expected)
    # the start times agree with the launch ids (one worker, one Firework at a time)
    starts = [d["time_start"] for d in launches]
    assert starts == sorted(starts)
    assert launchpad.fireworks.find_one({"fw_id": other})["state"] == "READY"
