"""``scontrol show reservation``: the parser against real outputs (tests/fixtures/scheduler/slurm_reservations.yaml).

The expected values are read off the captured text by hand: the epoch times are the ones scontrol printed with
SLURM_TIME_FORMAT=%s, and the same reservations printed without it show them as the wall clock of the capturing
machine (UTC): 1796703164 is 2026-12-08T04:12:44Z.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest
import yaml

from queue_adapters.base import SchedulerQueryError
from queue_adapters.slurm_reservations import parse_reservations, reservations_command

CASES = {c["id"]: c for c in yaml.safe_load(
    (Path(__file__).parents[1] / "fixtures" / "scheduler" / "slurm_reservations.yaml").read_text())["cases"]}
UTC = dt.timezone.utc

#: (name, start, end, flags, partition) of the three captured reservations, from the capture's text
THREE = [
    ("maint-cap24231", 1796703164, 1796706764, ("MAINT", "SPEC_NODES", "ALL_NODES"), None),
    ("maint-cap24231-p", 1796789564, 1796796764, ("MAINT", "IGNORE_JOBS", "SPEC_NODES", "PART_NODES"), "gpu"),
    ("plain-30797", 1796875964, 1796877764, ("SPEC_NODES", "ALL_NODES"), None),
]


def parse(case_id: str, tz: dt.tzinfo = UTC):
    c = CASES[case_id]
    return parse_reservations(c["returncode"], c["stdout"], c["stderr"], tz)


def test_the_command_is_one_line_each_with_epoch_times():
    assert reservations_command() == ["env", "SLURM_TIME_FORMAT=%s", "scontrol", "-o", "show", "reservation"]
    assert CASES["cap-three-epoch"]["command"] == " ".join(reservations_command())


@pytest.mark.parametrize("case_id", ["cap-three-epoch", "cap-three-local", "cap-three-multiline"])
def test_three_reservations_in_every_form(case_id):
    got = parse(case_id)
    assert [(r.name, int(r.start.timestamp()), int(r.end.timestamp()), r.flags, r.partition) for r in got] == THREE
    assert all(r.start.tzinfo is not None and r.nodes == "pilotci2node" and r.state == "INACTIVE" for r in got)
    assert [r.maintenance for r in got] == [True, True, False]


def test_wall_clock_times_are_read_in_the_cluster_zone():
    # the same text read as a cluster in Berlin would print it: 04:12:44 CET is 03:12:44 UTC
    (first, *_) = parse("cap-three-local", zoneinfo.ZoneInfo("Europe/Berlin"))
    assert first.start == dt.datetime(2026, 12, 8, 3, 12, 44, tzinfo=UTC)
    # epoch times do not depend on the zone
    (first, *_) = parse("cap-three-epoch", zoneinfo.ZoneInfo("Europe/Berlin"))
    assert first.start == dt.datetime(2026, 12, 8, 4, 12, 44, tzinfo=UTC)


def test_no_reservation():
    assert CASES["cap-none"]["stdout"].strip() == "No reservations in the system"
    assert parse("cap-none") == []


def test_controller_down_is_a_retryable_query_error():
    with pytest.raises(SchedulerQueryError) as e:
        parse("cap-down")
    assert e.value.retryable and e.value.returncode == 1
    assert "Unable to contact slurm controller" in str(e.value)


def test_a_block_without_a_start_time_is_left_out():
    text = CASES["cap-three-epoch"]["stdout"].replace("StartTime=1796703164", "StartTime=Unknown")
    assert [r.name for r in parse_reservations(0, text, "")] == ["maint-cap24231-p", "plain-30797"]
