"""Queue profiles (``profiles:``) and the FWorker section (``fworker:``) of a cluster file: what loads, what is
refused with the file, the field and the fix, and what the job script of each profile tells the worker.

The expected directives are sbatch's own options (sbatch(1): ``--partition``, ``--gpus-per-node``,
``--ntasks-per-node``); the worker options are the contract of ``pilot worker --help``.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from click.testing import CliRunner

from pilot.cli import main as cli_main
from pilot.config import load_config
from pilot.render import RenderError, render_pilot_script
from tests.config import test_config
from tests.config.test_config import problems_of, stampede, write_config

files = test_config.files  # the fixture: a key, a known_hosts and a LaunchPad file

#: (written with yaml.safe_dump, which sorts the keys: the file lists cpu first)
TWO = {"cpu": {"walltime": "24:00:00", "cores": 32, "partition": "normal", "pack": True},
       "gpu": {"walltime": "12:00:00", "cores": 8, "gpus": 1, "partition": "gpu"}}


def _cluster(files: dict[str, Any], **over: Any) -> dict[str, Any]:
    data = copy.deepcopy(stampede(files))
    data.pop("pilot")
    data.update(over)
    return data


def _load(tmp_path, files, **over: Any):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"gpu1": _cluster(files, **over)})
    return cdir, load_config(cdir).clusters["gpu1"]


def _problems(tmp_path, files, **over: Any) -> tuple[str, list[str]]:
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"gpu1": _cluster(files, **over)})
    return str(cdir / "clusters" / "gpu1.yaml"), problems_of(cdir)


def test_two_profiles_load_in_the_order_written(tmp_path, files):
    _, c = _load(tmp_path, files, profiles=TWO)
    assert list(c.pilot_profiles) == ["cpu", "gpu"]
    assert c.profile("gpu").walltime_seconds == 12 * 3600 and c.profile("cpu").walltime_seconds == 24 * 3600
    assert c.walltime_seconds == 24 * 3600  # the longest: what a fresh pilot of the cluster can at most have
    assert c.profile_categories("gpu") == ("md",)


def test_a_pilot_section_is_the_default_profile(tmp_path, files):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"st": stampede(files)})
    c = load_config(cdir).clusters["st"]
    assert list(c.pilot_profiles) == ["default"] and c.profile().cores == 68


@pytest.mark.parametrize("over, field, phrases", [
    ({"profiles": TWO, "pilot": {"walltime": "1:00:00"}}, "profiles", ["both pilot and profiles"]),
    ({}, "pilot", ["missing", "profiles"]),
    ({"profiles": {"gpu": {**TWO["gpu"], "categories": ["analysis"]}}}, "profiles.gpu.categories[0]",
     ["'analysis' is not one of the cluster's categories"]),
    ({"profiles": {"gpu": {**TWO["gpu"], "walltime": "12 hours"}}}, "profiles.gpu.walltime", ["12 hours"]),
    ({"profiles": {"gpu": {**TWO["gpu"], "gpu": 1}}}, "profiles.gpu.gpu", ["unknown field 'gpu'", "gpus"]),
    ({"profiles": {"bad name": TWO["gpu"]}}, "profiles.bad name", ["not allowed"]),
    ({"profiles": {"short": {"walltime": "00:05:00"}}, "walltime_margin": 600}, "walltime_margin",
     ["profile short", "300 s"]),
    ({"categories": ["md", "ana"], "profiles": {"gpu": {**TWO["gpu"], "categories": ["md"]}}}, "profiles",
     ["no profile serves category 'ana'"]),
    ({"profiles": TWO, "fworker": {"query": {"a": 1}}, "fworker_query": {"b": 2}}, "fworker.query",
     ["both fworker.query and fworker_query"]),
    ({"profiles": TWO, "fworker": {"env": {"x": float("nan")}}}, "fworker.env", ["not plain values"]),
    ({"profiles": TWO, "fworker": {"nmae": "x"}}, "fworker.nmae", ["unknown field", "name"]),
])
def test_bad_profiles_and_fworker_name_the_file_field_and_fix(tmp_path, files, over, field, phrases):
    cfile, lines = _problems(tmp_path, files, **over)
    mine = [p for p in lines if p.startswith(f"{cfile}: {field}: ")]
    assert mine, f"no problem for {field!r} in {lines}"
    assert any(all(ph in p for ph in phrases) for p in mine), f"expected {phrases} in {mine}"


def _argv(script: str) -> list[str]:
    """The worker's command line as the job script writes it (the continued lines after the worker words)."""
    block = script.split("--launchpad-file", 1)[1].split("\n&\n")[0].split(" &\n")[0]
    return ["--launchpad-file", *[w for line in block.splitlines() for w in line.strip(" \\").split(" ", 1)
                                  if w]]


def test_each_profile_renders_its_own_resources(tmp_path, files):
    _, c = _load(tmp_path, files, profiles=TWO, fworker={"name": "gpu one", "env": {"scratch_dir": "/s/a b"}})
    gpu = render_pilot_script(c, "gpu1", "md", "fwp.md.aaa", profile="gpu")
    cpu = render_pilot_script(c, "gpu1", "md", "fwp.md.bbb", profile="cpu")
    for script in (gpu, cpu):
        assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert "#SBATCH --partition=gpu" in gpu and "#SBATCH --gpus-per-node=1" in gpu
    assert "#SBATCH --ntasks-per-node=8" in gpu and "PILOT_PROFILE=gpu" in gpu
    assert "#SBATCH --partition=normal" in cpu and "--gpus-per-node" not in cpu and "#SBATCH --time=1-00:00:00" in cpu
    assert "--gpus 1 \\" in gpu and "--gpu-work-only \\" in gpu and "--pack" not in gpu
    assert "--cores 32 \\" in cpu and "--pack \\" in cpu and "--gpu-work-only" not in cpu
    # the FWorker travels as quoted words: the shell gives the worker the exact values
    assert "--fworker-name 'gpu one' \\" in cpu
    env_word = [line for line in cpu.splitlines() if "--fworker-env" in line][0].strip(" \\").split(" ", 1)[1]
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {env_word}"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [json.loads(w) for w in words] == [{"scratch_dir": "/s/a b"}]


def test_a_single_gpu_profile_takes_any_work_as_before(tmp_path, files):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])},
                        {"st": {**stampede(files), "pilot": {"walltime": "1:00:00", "gpus": 2}}})
    script = render_pilot_script(load_config(cdir).clusters["st"], "st", "md", "fwp.md.ccc")
    assert "--gpus 2 \\" in script and "--gpu-work-only" not in script
    # without fworker.name the pilots answer to the cluster's name (spec._fworker: st, and _preserve_fworker)
    assert "--fworker-name st \\" in script and "--fworker-env" not in script


def test_an_unknown_profile_is_a_render_error(tmp_path, files):
    _, c = _load(tmp_path, files, profiles=TWO)
    with pytest.raises(RenderError, match="has no profile 'big'; its profiles are: cpu, gpu"):
        render_pilot_script(c, "gpu1", "md", "fwp.md.ddd", profile="big")


def test_config_check_lists_the_profiles(tmp_path, files):
    cdir, _ = _load(tmp_path, files, profiles=TWO)
    res = CliRunner().invoke(cli_main, ["--config-dir", str(cdir), "config", "check"])
    assert res.exit_code == 0, res.output
    assert "queue profiles: gpu1: cpu (32 cores, 24 h, md, packed), gpu (1 GPU, 8 cores, 12 h, md)" in res.output
    res = CliRunner().invoke(cli_main, ["--config-dir", str(cdir), "config", "check", "--json"])
    assert json.loads(res.output)["profiles"] == {"gpu1": ["cpu", "gpu"]}


def test_a_gpu_profile_takes_only_gpu_work_where_a_cpu_profile_serves_the_rest(tmp_path, files):
    cpu_md = {**TWO["cpu"], "categories": ["md"]}
    _, c = _load(tmp_path / "a", files, categories=["md", "ana"], profiles={"gpu": TWO["gpu"], "cpu": cpu_md})
    # the GPU profile alone serves "ana": its CPU work has nowhere else to go, so the GPU pilots take any work
    assert not c.gpu_work_only("gpu") and not c.gpu_work_only("cpu")
    _, c = _load(tmp_path / "b", files, categories=["md", "ana"], profiles={"gpu": {**TWO["gpu"], "categories": ["md"]},
                                                                           "cpu": TWO["cpu"]})
    assert c.gpu_work_only("gpu")
    with pytest.raises(RenderError, match="profile 'gpu' does not serve category 'ana'; the profiles that do: cpu"):
        render_pilot_script(c, "gpu1", "ana", "fwp.ana.eee", profile="gpu")


def test_config_show_prints_the_form_the_file_uses(tmp_path, files):
    cdir, _ = _load(tmp_path, files, profiles=TWO)
    res = CliRunner().invoke(cli_main, ["--config-dir", str(cdir), "config", "show", "gpu1", "--json"])
    data = json.loads(res.output)
    assert "pilot" not in data and data["profiles"]["gpu"]["gpus"] == 1 and data["fworker"]["name"] is None
