"""The wheel carries the job templates as package data (pilot/templates/*.j2) and renders from an installed copy.

The source is copied first so that the build neither writes build/ or *.egg-info into the working tree nor
races other processes installing the tree at the same time.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, clean_source_copy

TEMPLATES = ["_base.sh.j2", "local.sh.j2", "lsf.sh.j2", "pbs.sh.j2", "slurm.sh.j2"]


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = clean_source_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), "."], cwd=src)
    (whl,) = (tmp / "dist").glob("fireworks_pilot-*.whl")
    return whl


def test_wheel_contains_the_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for t in TEMPLATES:
        assert f"pilot/templates/{t}" in names, f"{t} is not in {wheel.name}"
    assert "pilot/templates/__init__.py" in names and "pilot/render.py" in names
    assert not any(n.startswith("templates/") for n in names)     # installed as pilot.templates only
    with zipfile.ZipFile(wheel) as z:
        assert z.read("pilot/templates/slurm.sh.j2") == (REPO / "templates" / "slurm.sh.j2").read_bytes()


RENDER_FROM_INSTALLED = r"""
import sys, pathlib, yaml
import pilot, pilot.render
from importlib import resources
from pilot.config import load_cluster
venv = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(pilot.__file__).resolve().is_relative_to(venv), pilot.__file__
tpl = resources.files("pilot.templates").joinpath("slurm.sh.j2")
assert pathlib.Path(str(tpl)).resolve().is_relative_to(venv), str(tpl)
d = pathlib.Path(sys.argv[2])
(d / "clusters").mkdir()
(d / "clusters" / "box.yaml").write_text(yaml.safe_dump({
    "scheduler": "local", "categories": ["md"], "launchpad_file": str(d / "lp.yaml"),
    "work_dir": str(d / "work"), "pilot": {"walltime": 600}}))
print(pilot.render.render_pilot_script(load_cluster(d / "clusters" / "box.yaml"), "box", "md", "fwp.md.w1"))
"""


def test_render_from_an_installed_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    # a venv without a pip of its own (ensurepip takes most of a venv's making: seconds); this pip installs
    # into it (pip --python: pip runs itself with the venv's interpreter, so the venv's site-packages)
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--force-reinstall",
          str(wheel)], cwd=tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    script = tmp_path / "check.py"
    script.write_text(RENDER_FROM_INSTALLED)
    # run outside the source tree, so that nothing is imported from it
    res = _run([str(py), str(script), str(venv), str(work)], cwd=work)
    out = res.stdout
    assert out.startswith("#!/bin/bash\n#LOCAL --name=fwp.md.w1\n#LOCAL --time=600\n")
    assert "PILOT_DEADLINE=$(( PILOT_START + PILOT_WALLTIME ))" in out
    res = subprocess.run(["bash", "-n"], check=False, input=out, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
