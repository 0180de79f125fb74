"""``budget:`` in a cluster file (issue 20, budgets): good forms load, every bad one says file, field and fix, and
``pilot config check`` shows each cluster's budget."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pilot.config import load_config
from tests.config.test_config import files, problems_of, run_cli, stampede, write_config  # noqa: F401  (fixture)


def config_with(tmp_path, files, budget, account="chem123"):  # noqa: F811
    c = stampede(files)
    c["pilot"]["account"] = account
    c["budget"] = budget
    return write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": c})


def test_one_mapping(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, {"core_hours": 5000, "account": "chem123", "since": dt.date(2026, 12, 1)})
    (b,) = load_config(cdir).clusters["stampede"].budget
    assert (b.core_hours, b.account, b.since) == (5000.0, "chem123", dt.date(2026, 12, 1))
    assert b.core_seconds == 18_000_000
    assert b.since_epoch == dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp()
    assert b.covers("CHEM123") and b.covers("chem123") and not b.covers("phys77") and not b.covers(None)
    assert b.label() == "5,000 core-h on chem123 since 2026-12-01"


def test_list_text_date_numeric_account_and_none(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, [{"core_hours": 0.05, "account": 4711},
                                         {"core_hours": 10, "since": "2026-01-31"}])
    a, b = load_config(cdir).clusters["stampede"].budget
    assert (a.account, a.core_seconds, b.account, b.since) == ("4711", 180, None, dt.date(2026, 1, 31))
    assert b.covers("anything") and b.covers(None)
    assert load_config(config_with(tmp_path / "n", files, None)).clusters["stampede"].budget == []


@pytest.mark.parametrize("budget,field,phrases", [
    ({"core_hours": -5}, "budget.core_hours", ["positive number", "core_hours: 5000"]),
    ({"core_hours": 0}, "budget.core_hours", ["positive number"]),
    ({"core_hours": "lots"}, "budget.core_hours", ["positive number", "'lots'"]),
    ({"core_hours": True}, "budget.core_hours", ["positive number"]),
    ({"account": "chem123"}, "budget.core_hours", ["required", "core_hours: 5000"]),
    ({"core_hours": 10, "since": "last week"}, "budget.since", ["expected a date", "YYYY-MM-DD"]),
    ({"core_hours": 10, "since": 20261201}, "budget.since", ["expected a date"]),
    ({"core_hours": 10, "account": ["a", "b"]}, "budget.account", ["account name", "account: chem123"]),
    ({"core_hours": 10, "account": "two words"}, "budget.account", ["one word"]),
    ({"core_hour": 10}, "budget.core_hour", ["unknown field", "did you mean 'core_hours'"]),
    ([{"core_hours": 10}, {"core_hours": -1, "account": "x"}], "budget[1].core_hours", ["positive number"]),
    ([{"core_hours": 1, "account": "a"}, {"core_hours": 2, "account": "A"}], "budget[1].account",
     ["second budget", "one entry per account"]),
    ([], "budget", ["mapping or a list", "core_hours: 5000"]),
    ("5000", "budget", ["mapping or a list", "core_hours: 5000"]),
    ([5000], "budget[0]", ["expected a mapping"]),
])
def test_bad_budget(tmp_path, files, budget, field, phrases):  # noqa: F811
    problems = problems_of(config_with(tmp_path, files, budget))
    assert len(problems) == 1, problems
    p = problems[0]
    assert p.startswith(f"{tmp_path / 'cfg' / 'clusters' / 'stampede.yaml'}: {field}: "), p
    for phrase in phrases:
        assert phrase in p, (phrase, p)


def test_every_problem_of_a_list_at_once(tmp_path, files):  # noqa: F811
    problems = problems_of(config_with(tmp_path, files, [{"core_hours": -1}, {"core_hours": 1, "since": "x"}]))
    assert [p.split(": ")[1] for p in problems] == ["budget[0].core_hours", "budget[1].since"]


def test_config_check_shows_budgets(tmp_path, files):  # noqa: F811
    cdir = config_with(tmp_path, files, [{"core_hours": 5000, "account": "chem123", "since": "2026-12-01"},
                                         {"core_hours": 250.5}])
    r = run_cli("--config-dir", str(cdir), "config", "check", "--no-render")
    assert r.exit_code == 0, r.output
    assert "budget: stampede: 5,000 core-h on chem123 since 2026-12-01; 250.5 core-h on all accounts\n" in r.stdout
    data = json.loads(run_cli("--config-dir", str(cdir), "config", "check", "--no-render", "--json").stdout)
    assert data["budgets"] == {"stampede": [{"core_hours": 5000.0, "account": "chem123", "since": "2026-12-01"},
                                            {"core_hours": 250.5, "account": None, "since": None}]}


def test_a_budget_of_an_account_needs_the_pilots_account(tmp_path, files):  # noqa: F811
    """A pilot charged to the user's default account is known only once it runs: no budget of an account could
    judge it before, so a budget with account: needs the file's pilots to name theirs."""
    cdir = config_with(tmp_path, files, {"core_hours": 5000, "account": "chem123"}, account=None)
    (problem,) = problems_of(cdir)
    assert problem.startswith(f"{cdir / 'clusters' / 'stampede.yaml'}: budget.account: "), problem
    assert "the pilot: section names no account: write account: chem123" in problem
    assert "or drop account from the budget" in problem
    cdir = config_with(tmp_path / "all", files, {"core_hours": 5000}, account=None)   # all accounts: fine
    assert load_config(cdir).clusters["stampede"].budget[0].account is None
