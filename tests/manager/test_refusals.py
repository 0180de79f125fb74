"""A cluster that answers but refuses every submission (issue 21): the real SLURM cluster refusing ``sbatch`` for a
partition it does not have, as it would for an account or QOS that is gone. The manager keeps when the refusals
began (``refusing_since``, kept across refusals in a row) and the scheduler's reason in the cluster's record, where
notifications find them; the first submission that goes through ends the run."""

from __future__ import annotations

import pytest

from pilot.manager.cycle import Manager
from pilot.manager.records import Records
from tests.manager.helpers import add_sleepers
from tests.manager.test_slurm import world  # noqa: F401  (the fixture of the SLURM manager tests)

pytestmark = pytest.mark.slurm


def test_refusals_in_a_row_are_kept_until_a_submission_goes_through(world, launchpad, slurm_cluster):  # noqa: F811
    config, cluster, _ = world
    bad = cluster(slurm_cluster, ["md"], pilot={"walltime": "5", "cores": 1, "partition": "nosuchpartition"},
                  idle_timeout=2)
    add_sleepers(launchpad, "md", 2, 0.2)
    records = Records(launchpad.db)
    mgr = Manager(config({"pilotci": bad}), launchpad)
    try:
        first = mgr.run_cycle()
        assert "submission refused" in first.errors["pilotci"]
        since = records.cluster_state("pilotci")["refusing_since"]
        assert since is not None
        # sbatch's own words (slurm's "invalid partition specified"), not ours
        assert "invalid partition" in records.cluster_state("pilotci")["last_refusal"].lower()
        mgr.clusters["pilotci"].backoff_until = 0   # (not waiting out the back-off)
        mgr.run_cycle()
        assert records.cluster_state("pilotci")["refusing_since"] == since   # the run goes on
    finally:
        mgr.close()
    good = cluster(slurm_cluster, ["md"], idle_timeout=2)
    mgr = Manager(config({"pilotci": good}), launchpad)   # the partition fixed
    mgr.clusters["pilotci"].backoff_until = 0   # (restored from the record: not waiting it out)
    try:
        report = mgr.run_cycle()
        assert [s["cluster"] for s in report.submitted] == ["pilotci"], report.errors
        assert records.cluster_state("pilotci")["refusing_since"] is None
    finally:
        mgr.close()
