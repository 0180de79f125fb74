"""``share:`` in pilot.yaml (issue 20, fair share): good weights load, every bad one names pilot.yaml, the field
``share.<category>`` and the fix; ``pilot config check`` and ``pilot config show`` show the weights."""

from __future__ import annotations

import json

import pytest
import yaml

from pilot.config import load_config
from tests.config.test_config import files, problems_of, run_cli, stampede, write_config  # noqa: F401  (fixture)


def config_with(tmp_path, files, pilot_text):  # noqa: F811
    md, an = stampede(files), stampede(files)
    md["categories"], an["categories"] = ["md"], ["analysis", "md"]
    text = f"launchpad_file: {files['launchpad']}\n" + pilot_text
    return write_config(tmp_path, text, {"stampede": md, "other": an})


def test_weights_load_and_unlisted_categories_weigh_one(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share: {md: 3, analysis: 0.5}\nshare_window: 3600\n")
    cfg = load_config(cdir)
    assert cfg.pilot.share == {"md": 3.0, "analysis": 0.5} and cfg.pilot.share_window == 3600
    assert load_config(config_with(tmp_path / "x", files, "")).pilot.share == {}


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("-2", "-2"), ("-0.5", "-0.5"), (".inf", "inf"),
                                              (".nan", "nan"), ("lots", "'lots'"), ("true", "True"), ("", "None")])
def test_a_weight_that_is_not_a_positive_finite_number(tmp_path, files, value, shown):  # noqa: F811
    cdir = config_with(tmp_path, files, f"share:\n  md: 3\n  analysis: {value}\n")
    (problem,) = problems_of(cdir)
    assert problem.startswith(f"{cdir / 'pilot.yaml'}: share.analysis: {shown} is not a usable weight: write a "
                              "positive number (e.g. analysis: 1"), problem
    assert "or remove analysis to give it weight 1" in problem


def test_share_must_be_a_mapping(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share: [md, analysis]\n")
    (problem,) = problems_of(cdir)
    assert problem.startswith(f"{cdir / 'pilot.yaml'}: share: "), problem


def test_a_category_no_cluster_serves(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share: {md: 3, analysys: 1, qm: 2}\n")
    problems = problems_of(cdir)
    assert problems == [
        f"{cdir / 'pilot.yaml'}: share.analysys: no cluster serves category 'analysys' (did you mean 'analysis'?); "
        "the clusters serve: analysis, md: write one of them, or add analysys to a cluster's categories",
        f"{cdir / 'pilot.yaml'}: share.qm: no cluster serves category 'qm'; the clusters serve: analysis, md: "
        "write one of them, or add qm to a cluster's categories"]


def test_a_negative_window(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share_window: -1\n")
    (problem,) = problems_of(cdir)
    assert problem.startswith(f"{cdir / 'pilot.yaml'}: share_window: "), problem


def test_config_check_and_show_show_the_share(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share: {md: 3}\n")
    r = run_cli("--config-dir", str(cdir), "config", "check", "--no-render")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["share: md 3 (others 1)", "2 clusters, 2 categories: OK"]
    data = json.loads(run_cli("--config-dir", str(cdir), "config", "check", "--no-render", "--json").stdout)
    assert data["share"] == {"analysis": 1.0, "md": 3.0}
    shown = yaml.safe_load(run_cli("--config-dir", str(cdir), "config", "show").stdout)
    assert shown["pilot"]["share"] == {"md": 3.0} and shown["pilot"]["share_window"] == 86400.0
    # both listed: no "others"
    cdir = config_with(tmp_path / "b", files, "share: {md: 3, analysis: 1}\n")
    r = run_cli("--config-dir", str(cdir), "config", "check", "--no-render")
    assert r.stdout.splitlines()[0] == "share: md 3, analysis 1"
    # a bad weight fails the check with file, field and fix
    cdir = config_with(tmp_path / "c", files, "share: {md: -1}\n")
    r = run_cli("--config-dir", str(cdir), "config", "check", "--no-render")
    assert r.exit_code == 1
    assert f"{cdir / 'pilot.yaml'}: share.md: -1 is not a usable weight" in r.stdout


def test_status_shows_no_fair_share_section_for_one_category_without_weights(tmp_path, files):  # noqa: F811
    from pilot.status.share import gather_share

    one = stampede(files)
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": one})

    class NoQueries:   # the section is decided from the config alone: no query is made
        def find(self, *args, **kw):
            raise AssertionError("no query expected")

    assert gather_share(NoQueries(), load_config(cdir), None, 0.0) is None
    assert gather_share(NoQueries(), None, None, 0.0) is None


def test_a_category_name_that_is_not_text(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, "share: {md: 3, 5: 1}\n")
    (problem,) = problems_of(cdir)
    assert problem.startswith(f"{cdir / 'pilot.yaml'}: share.5: 5 is not a category name: write a category the "
                              "clusters serve as text (quote it, '5': 1, if that is its name)"), problem
