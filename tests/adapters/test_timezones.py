"""Scheduler times read in the cluster's time zone (issue 16, item 14: they were read as UTC).

PBS (``qstat``) and LSF (``bjobs``) print the cluster's local wall-clock time with no zone. The outputs here are
the real ones of tests/fixtures/scheduler/{pbs,lsf}.yaml (copied from /work/shared/reference with their sources).
Each is parsed under two zones through the cluster file's ``timezone`` (:func:`pilot.transport.clusters.adapter_for`
/ :func:`~pilot.transport.clusters.cluster_zone`); the expected instants are computed here with zoneinfo and
datetime, and the two parses differ by exactly the zones' offset difference on that date.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pilot.config.models_cluster import ClusterConfig
from pilot.transport.clusters import adapter_for, cluster_zone, local_zone
from queue_adapters import LsfAdapter, PbsAdapter

UTC = dt.timezone.utc
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scheduler"


def _case(scheduler: str, case_id: str) -> dict[str, Any]:
    cases = yaml.safe_load((FIXTURES / f"{scheduler}.yaml").read_text(encoding="utf-8"))["cases"]
    return next(c for c in cases if c["id"] == case_id)


def _cluster(scheduler: str, timezone: str | None) -> ClusterConfig:
    """A cluster file of ``scheduler``; ``timezone`` None leaves the field out (the default)."""
    walltime = {"pbs": "01:00:00", "lsf": "60"}[scheduler]
    return ClusterConfig.model_validate({
        "scheduler": scheduler, "host": "login.example.org", "strict_host_key_checking": False,
        "categories": ["md"], "launchpad_file": "~/lp.yaml", "work_dir": "/scratch/pilot",
        "pilot": {"walltime": walltime}, **({} if timezone is None else {"timezone": timezone})})


def _instant(wall: dt.datetime, zone: str) -> dt.datetime:
    """The expected instant, computed independently: the wall-clock time in ``zone``, as UTC."""
    return wall.replace(tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(UTC)


def _offset_gap(wall: dt.datetime, a: str, b: str) -> dt.timedelta:
    """How much later the same wall-clock time is, as an instant, in zone ``a`` than in zone ``b``."""
    off_a, off_b = (zoneinfo.ZoneInfo(z).utcoffset(wall) for z in (a, b))
    assert off_a is not None and off_b is not None
    return off_b - off_a


# (zone a, zone b): on every date below they are hours apart, and one of each pair keeps daylight saving time
PAIRS = [("Europe/Berlin", "Australia/Brisbane"), ("America/New_York", "Europe/Dublin")]


@pytest.mark.parametrize("a,b", PAIRS)
def test_pbspro_qstat_json_stime_obittime(a: str, b: str) -> None:
    """OpenPBS 22.05 ``qstat -f -x -F json`` (baw-finished): ``stime``/``obittime`` Tue Oct 11 08:13:45/47 2022."""
    case = _case("pbs", "baw-finished")
    got = {}
    for zone in (a, b):
        ad = adapter_for(_cluster("pbs", zone))
        assert isinstance(ad, PbsAdapter)
        got[zone] = ad.parse_history(case["returncode"], case["stdout"], case["stderr"])["0.725ccdf1a5fb"]
    start, end = dt.datetime(2022, 10, 11, 8, 13, 45), dt.datetime(2022, 10, 11, 8, 13, 47)
    for zone in (a, b):
        assert got[zone].start_time == _instant(start, zone)
        assert got[zone].end_time == _instant(end, zone)
    assert got[a].start_time - got[b].start_time == _offset_gap(start, a, b)
    assert got[a].start_time != got[b].start_time


@pytest.mark.parametrize("a,b", PAIRS)
def test_torque_qstat_f_ctime_qtime_start_time(a: str, b: str) -> None:
    """Torque ``qstat -f`` text (torque-01, ICHEC Fionn): job 555716, ``ctime``/``qtime`` Fri Jun 26 14:04:56 2015,
    ``start_time`` Sun Jun 28 23:20:51 2015."""
    case = _case("pbs", "torque-01")
    got = {}
    for zone in (a, b):
        ad = PbsAdapter(flavor="torque", tz=cluster_zone(_cluster("pbs", zone)))
        got[zone] = ad.parse_status(case["returncode"], case["stdout"], case["stderr"])["555716"]
    queued, start = dt.datetime(2015, 6, 26, 14, 4, 56), dt.datetime(2015, 6, 28, 23, 20, 51)
    for zone in (a, b):
        assert got[zone].submit_time == _instant(queued, zone)
        assert got[zone].start_time == _instant(start, zone)
    assert got[a].submit_time - got[b].submit_time == _offset_gap(queued, a, b)
    assert got[a].start_time - got[b].start_time == _offset_gap(start, a, b)


@pytest.mark.parametrize("a,b", [("Asia/Kolkata", "America/Denver"), *PAIRS])
def test_lsf_bjobs_json_start_time(a: str, b: str) -> None:
    """LSF ``bjobs -o ... -json`` (mkwind-status): job 4 RUN, ``START_TIME`` "Sep 13 05:55" (no year, no zone)."""
    case = _case("lsf", "mkwind-status")
    now = dt.datetime(2023, 10, 1, tzinfo=UTC)   # LSF prints no year: the adapter takes the latest one not ahead
    got = {}
    for zone in (a, b):
        ad = LsfAdapter(tz=cluster_zone(_cluster("lsf", zone)), now=lambda: now)
        got[zone] = ad.parse_status(case["returncode"], case["stdout"], case["stderr"])["4"]
    start = dt.datetime(2023, 9, 13, 5, 55)
    for zone in (a, b):
        assert got[zone].start_time == _instant(start, zone)
    assert got[a].start_time - got[b].start_time == _offset_gap(start, a, b)


def test_adapter_for_passes_the_cluster_zone() -> None:
    for scheduler in ("pbs", "lsf"):
        assert adapter_for(_cluster(scheduler, "America/Chicago")).tz == zoneinfo.ZoneInfo("America/Chicago")
        assert adapter_for(_cluster(scheduler, None)).tz == local_zone()   # default: the fileserver's zone


def test_default_is_the_fileservers_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Left out, ``timezone`` is this machine's: ``TZ`` when it names a zone (DST rules and all)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert cluster_zone(_cluster("pbs", None)) == zoneinfo.ZoneInfo("Asia/Tokyo")
    monkeypatch.setenv("TZ", ":America/Chicago")
    zone = cluster_zone(_cluster("lsf", None))
    assert zone.utcoffset(dt.datetime(2024, 1, 15)) == dt.timedelta(hours=-6)
    assert zone.utcoffset(dt.datetime(2024, 7, 15)) == dt.timedelta(hours=-5)
    monkeypatch.delenv("TZ")
    assert cluster_zone(_cluster("pbs", None)) is not None


@pytest.mark.parametrize("name,hint", [("Europe/Berln", "did you mean Europe/Berlin"), ("utc", "did you mean UTC"),
                                       ("../../etc/passwd", "write an IANA name"), ("", "write an IANA name")])
def test_a_bad_zone_name_is_refused_with_a_hint(name: str, hint: str) -> None:
    with pytest.raises(ValidationError) as e:
        _cluster("pbs", name)
    assert "timezone" in str(e.value) and "is not a time zone name" in str(e.value) and hint in str(e.value)
