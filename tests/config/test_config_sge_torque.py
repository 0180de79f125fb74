"""`scheduler: torque` and `scheduler: sge`: accepted with their own wall-time formats and directive prefixes, and
refused, with a message that says what to write, where the scheduler has no way to express a field.

Formats and values come from the schedulers' documentation:
- Torque 6.1 "Requesting resources": walltime "seconds, or [[HH:]MM:]SS" (as PBS); directives start with #PBS.
- Grid Engine sge_types(1), TIME_SPECIFIER: "a positive decimal ... integer constant, in which case the value is
  interpreted to be in seconds, or ... 3 decimal integer numbers separated by colon signs where the first number
  counts the hours, the second the minutes and the third the seconds. If a number would be zero it can be left out
  but the separating colon must remain (e.g. 1:0:1 = 1::1 means 1 hours and 1 second)". qsub(1): directives start
  with "#$" (the default of -C); slots beyond one come only with "-pe parallel_environment n"; Grid Engine has no
  built-in GPU resource (sites add a complex, qconf -sc).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pilot.config import Scheduler, format_walltime, load_config, parse_walltime
from pilot.config.units import scheduler_resource_problems, sge_parallel_environment
from tests.config.test_config import problems_of, stampede, write_config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A fake SSH key, known_hosts and LaunchPad file (validation checks that they exist, not what they hold)."""
    paths = {"key": tmp_path / "id_ed25519", "known_hosts": tmp_path / "known_hosts",
             "launchpad": tmp_path / "my_launchpad.yaml"}
    for p in paths.values():
        p.write_text("x\n")
    return paths


@pytest.mark.parametrize("sched, value, seconds", [
    ("torque", "24:00:00", 86400), ("torque", 3600, 3600), ("torque", "48:00:00", 172800), ("torque", "10:30", 630),
    ("sge", "24:00:00", 86400), ("sge", "1::1", 3601), ("sge", "2::", 7200), ("sge", "::59", 59),
    ("sge", "3600", 3600), ("sge", 5400, 5400), ("sge", "100:00:00", 360000),
])
def test_walltime_formats(sched, value, seconds):
    assert parse_walltime(value, sched) == seconds


@pytest.mark.parametrize("sched, value", [
    ("torque", "1-00:00:00"), ("torque", "1:2:3:4"), ("torque", "24h"),
    ("sge", "10:30"), ("sge", "1:2:3:4"), ("sge", "::90"), ("sge", "1-00:00:00"), ("sge", "::"), ("sge", "24h"),
    ("sge", "0"),
])
def test_walltime_formats_refused(sched, value):
    with pytest.raises(ValueError, match="write"):
        parse_walltime(value, sched)


@pytest.mark.parametrize("sched, seconds, text", [
    ("torque", 172800, "48:00:00"), ("sge", 90061, "25:01:01"), ("sge", 3600, "01:00:00"),
])
def test_walltime_is_written_in_the_scheduler_format(sched, seconds, text):
    assert format_walltime(seconds, sched) == text
    assert parse_walltime(text, sched) == seconds


def test_directive_prefixes():
    assert (Scheduler("torque").directive_prefix, Scheduler("sge").directive_prefix) == ("#PBS", "#$")


def _cluster(files: dict[str, Path], sched: str, **pilot: Any) -> dict[str, Any]:
    d = copy.deepcopy(stampede(files))
    d["scheduler"] = sched
    d["pilot"].update({"walltime": "24:00:00", "cores": 1, **pilot})
    return d


def test_torque_and_sge_clusters_load(tmp_path, files):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {
        "tq": _cluster(files, "torque", cores=8, gpus=1, extra_directives=["#PBS -l naccesspolicy=singlejob"]),
        "gs": _cluster(files, "SGE", cores=8, extra_directives=["-pe smp", "#$ -l arch=lx-amd64"])})
    cfg = load_config(cdir)
    tq, gs = cfg.clusters["tq"], cfg.clusters["gs"]
    assert (tq.scheduler, gs.scheduler) == (Scheduler.TORQUE, Scheduler.SGE)
    assert tq.walltime_seconds == gs.walltime_seconds == 86400
    assert gs.directive_lines() == ["#$ -pe smp", "#$ -l arch=lx-amd64"]
    assert tq.directive_lines() == ["#PBS -l naccesspolicy=singlejob"]


@pytest.mark.parametrize("sched, change, field, phrases", [
    ("torque", {"qos": "high"}, "pilot.qos", ["qos is a SLURM option and torque has none"]),
    ("sge", {"qos": "high"}, "pilot.qos", ["qos is a SLURM option and sge has none"]),
    ("sge", {"walltime": "10:30"}, "pilot.walltime", ["not valid for sge", "HH:MM:SS"]),
    ("sge", {"extra_directives": ["#PBS -l nodes=1"]}, "pilot.extra_directives[0]",
     ["is not a sge directive", "'#$ '"]),
    ("torque", {"extra_directives": ["#$ -pe smp 2"]}, "pilot.extra_directives[0]", ["is not a torque directive"]),
])
def test_what_they_refuse(tmp_path, files, sched, change, field, phrases):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"c": _cluster(files, sched, **change)})
    mine = [p for p in problems_of(cdir) if f"c.yaml: {field}: " in p]
    assert mine and all(ph in mine[0] for ph in phrases), mine


@pytest.mark.parametrize("typo, suggestion", [("sgee", "sge"), ("torq", "torque")])
def test_misspelt_scheduler(tmp_path, files, typo, suggestion):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"c": _cluster(files, typo)})
    (msg,) = [p for p in problems_of(cdir) if "c.yaml: scheduler: " in p]
    assert f"did you mean '{suggestion}'" in msg and "torque, sge" in msg


def test_sge_parallel_environment_is_read_from_extra_directives():
    assert sge_parallel_environment(["-l arch=x", "-pe smp"]) == ("smp", None)
    assert sge_parallel_environment(["#$ -pe mpi 16"]) == ("mpi", 16)
    assert sge_parallel_environment(["#$ -pe mpi 4-16"]) == ("mpi", None)
    assert sge_parallel_environment(["-l h_vmem=2G"]) is None


@pytest.mark.parametrize("sched, nodes, cores, gpus, extra, fields", [
    ("sge", 1, 1, None, [], []),                                   # one slot needs no parallel environment
    ("sge", 1, 8, None, ["-pe smp"], []),
    ("sge", 2, 8, None, ["#$ -pe mpi 16"], []),
    ("sge", 1, 8, None, [], ["extra_directives"]),                 # 8 slots without a PE: SGE would give one
    ("sge", 1, 8, None, ["-pe smp 4"], ["extra_directives"]),      # the PE asks for fewer slots than cores
    ("sge", 1, 1, 1, [], ["gpus"]),                                # no standard GPU request
    ("torque", 2, 8, 2, [], []),                                   # nodes=2:ppn=8:gpus=2
    ("pbs", 1, 8, 1, [], []),
])
def test_scheduler_resource_problems(sched, nodes, cores, gpus, extra, fields):
    problems = scheduler_resource_problems(sched, nodes, cores, gpus, extra)
    assert [f for f, _ in problems] == fields
    for field, msg in problems:
        assert {"gpus": "extra_directives, e.g. '-l gpu=1'", "extra_directives": "'-pe"}[field] in msg
