"""FireWorks' own test suite (it ships inside the fireworks package) against an embedded server of its own.

FireWorks' tests are the best description of what FireWorks expects from its database, so they run here as
they are, in a pytest subprocess, against ``pilot launchpad serve`` with authentication on:

* the installed package is copied to a temporary directory and run from there (its tests write launcher
  directories next to themselves, which must not land in site-packages); the copy gets the data files that the
  wheel lacks, from FireWorks' sdist of the pinned version (tests/fixtures/fireworks-2.1.4-testdata);
* ``tests.launchpad.fw_suite_plugin`` points FireWorks' default connection (localhost:27017, no credentials) at
  the server, logging in as its admin;
* the JUnit XML report is compared with :data:`KNOWN`: every test passes, except the ones listed there,
  each of which must fail (or skip) with its documented cause, and only while that cause is present. A new
  failure fails this test with the failing test's output; a known one that passes again fails it too, so that
  the list stays honest (docs/launchpad-server.md, "FireWorks' own test suite", holds the same list).

The suite is mostly FireWorks' own sleeps (about a minute): when this test is collected, ``tests/conftest.py``
starts it in the background right away, so that it overlaps the tests before this one, and the test waits for
it and judges it (run on its own, it runs in the foreground).

The version is pinned (pyproject.toml, the ``test`` extra): another FireWorks fails this test with a clear
message instead of silently checking something else.
"""

from __future__ import annotations

import atexit
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest

from tests.helpers import REPO, EmbeddedServer

TESTDATA = REPO / "tests" / "fixtures" / "fireworks-2.1.4-testdata"
#: Each test's own limit inside the subprocess, and the whole run's (a hang must not eat the suite's time).
PER_TEST_TIMEOUT, RUN_TIMEOUT = 300, 900
#: FireWorks' CI collects test_*.py only; its mongo_tests.py, multiprocessing_tests.py and master_tests.py hold
#: 45 more tests (34 on a LaunchPad), so they run too.
PYTEST_INI = """[pytest]
python_files = test_*.py *_tests.py
markers =
    mongodb: needs MongoDB (FireWorks' marker)
timeout = {timeout}
junit_logging = out-err
"""


def _missing(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is None


def _monty_zopen_needs_mode() -> bool:
    """monty 2025.x made ``zopen``'s ``mode`` required; FireWorks 2.1.4's rocket.py still calls ``zopen(path)``."""
    from monty.io import zopen

    mode = inspect.signature(zopen).parameters.get("mode")
    return mode is not None and mode.default is inspect.Parameter.empty


def _pymongo_4() -> bool:
    return int(pymongo.version_tuple[0]) > 3


@dataclass(frozen=True)
class Known:
    """A FireWorks test that does not pass here, why, and how to recognise exactly that cause."""

    reason: str
    pattern: str                        # must appear in the test's failure/skip message or output
    present: Callable[[], bool]         # is the cause present in this environment? (if not, it must pass)
    outcome: str = "failure"            # failure | error | skipped


_MONTY = ("monty incompatibility: monty >= 2025 requires zopen's mode, FireWorks 2.1.4 calls zopen(path) when it "
          "reads FW_offline.json (offline mode); no server involved (passes with mode='rt' supplied)")
KNOWN: dict[str, Known] = {
    "fireworks.utilities.tests.test_dagflow": Known(
        "python-igraph is not installed (FireWorks' extra `workflow-checks`): the module cannot be imported; "
        "DAGFlow checks workflows in memory, no database involved", "No module named 'igraph'", _missing("igraph"),
        "error"),
    "fireworks.utilities.tests.test_visualize.test_wf_to_graph": Known(
        "the graphviz Python package is not installed (FireWorks' extra `graph-plotting`); no database involved",
        "graphviz package required", _missing("graphviz")),
    "fireworks.core.tests.test_launchpad.LaunchPadOfflineTest.test__recover_completed": Known(
        _MONTY, "zopen() missing 1 required positional argument: 'mode'", _monty_zopen_needs_mode),
    "fireworks.core.tests.test_launchpad.GridfsStoredDataTest.test_many_detours_offline": Known(
        _MONTY, "zopen() missing 1 required positional argument: 'mode'", _monty_zopen_needs_mode),
    "fireworks.tests.mongo_tests.MongoTests.test_basic_fw_offline": Known(
        _MONTY, "zopen() missing 1 required positional argument: 'mode'", _monty_zopen_needs_mode),
    "fireworks.tests.mongo_tests.MongoTests.test_offline_fw_passinfo": Known(
        _MONTY, "zopen() missing 1 required positional argument: 'mode'", _monty_zopen_needs_mode),
    "fireworks.tests.master_tests.BasicTests.test_parent_connector": Known(
        "FireWorks test bug: it expects the fw_ids -2/-3 of a fresh process, but Fireworks made by earlier tests "
        "advance the counter (FireWorks' CI does not collect master_tests.py); in-memory only",
        "FW_id: -3 defines a dependent link to FW_id: -2", lambda: True),
    "fireworks.core.tests.test_launchpad.LaunchPadLostRunsDetectTest.test_detect_lostruns": Known(
        "skipped by FireWorks itself with pymongo >= 4", "not supported for pymongo major version > 3", _pymongo_4,
        "skipped"),
    "fireworks.core.tests.test_launchpad.LaunchPadLostRunsDetectTest.test_detect_lostruns_defuse": Known(
        "skipped by FireWorks itself with pymongo >= 4", "not supported for pymongo major version > 3", _pymongo_4,
        "skipped"),
    "fireworks.core.tests.test_launchpad.LaunchPadLostRunsDetectTest.test_state_after_run_start": Known(
        "skipped by FireWorks itself with pymongo >= 4", "not supported for pymongo major version > 3", _pymongo_4,
        "skipped"),
    "fireworks.user_objects.firetasks.tests.test_filepad_tasks.FilePadTasksTest.test_getfilesbyquerytask_run": Known(
        "skipped by FireWorks itself (unconditional @unittest.skip)", "fails after fixing the identical names",
        lambda: True, "skipped"),
}

#: Left out unless PILOT_FW_SUITE_FULL=1: FireWorks' own sleeps, 45 s each (SlowAdditionTask sleeps 5 s, then
#: its SlowToDictTask sleeps 10 s in each of its four to_dict() calls while the rocket holds the workflow lock);
#: the server is idle meanwhile. Both pass against the server (docs/launchpad-server.md).
DESELECTED = {
    "fireworks/core/tests/test_launchpad.py::WFLockTest::test_fix_db_inconsistencies_completed": "45 s of sleeps",
    "fireworks/core/tests/test_launchpad.py::WFLockTest::test_fix_db_inconsistencies_fizzled": "45 s of sleeps",
}


def pinned_version() -> str:
    """The FireWorks version of pyproject.toml's ``test`` extra (``fireworks==X``)."""
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(r'"fireworks==([0-9][^"]*)"', text)
    assert m, "pyproject.toml's test extra does not pin FireWorks (\"fireworks==X.Y.Z\")"
    return m.group(1)


def copy_package(dest: Path) -> list[str]:
    """Copy the installed fireworks package to ``dest/fireworks``, adding the sdist's test data files the wheel
    lacks. Returns those files (relative to the package)."""
    import fireworks

    src = Path(fireworks.__file__).parent
    shutil.copytree(src, dest / "fireworks", ignore=shutil.ignore_patterns("__pycache__"))
    added = []
    for f in sorted(p for p in (TESTDATA / "fireworks").rglob("*") if p.is_file()):
        rel = f.relative_to(TESTDATA)
        if not (dest / rel).exists():
            shutil.copyfile(f, dest / rel)
            added.append(str(rel))
    return added


def start_suite(server: EmbeddedServer, work: Path, junit: Path) -> subprocess.Popen[bytes]:
    """Start FireWorks' suite (a pytest subprocess) against ``server``; its output goes to ``work/suite.out``."""
    pkg, home, cwd = work / "pkg", work / "home", work / "run"
    for d in (home, cwd):
        d.mkdir(parents=True)
    (pkg / "pytest.ini").write_text(PYTEST_INI.format(timeout=PER_TEST_TIMEOUT))
    admin = server.admin
    env = {k: v for k, v in os.environ.items()
           if k not in ("FW_CONFIG_FILE", "MONGOMOCK_SERVERSTORE_FILE", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env.update(PYTHONPATH=os.pathsep.join([str(pkg), str(REPO)]),
               # a home of its own: a developer's ~/.fireworks (FW_config.yaml, my_launchpad.yaml) stays out
               HOME=str(home), PYTHONUSERBASE=site.getuserbase(),
               PILOT_FW_SUITE_SERVER=json.dumps({"host": server.host, "port": server.port,
                                                 "username": admin["username"], "password": admin["password"],
                                                 "authsource": admin.get("authsource") or "admin"}))
    full = os.environ.get("PILOT_FW_SUITE_FULL") == "1"
    deselect = [] if full else [a for nodeid in DESELECTED for a in ("--deselect", nodeid)]
    cmd = [sys.executable, "-m", "pytest", "-c", str(pkg / "pytest.ini"), "--rootdir", str(pkg),
           "-p", "tests.launchpad.fw_suite_plugin", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           "-q", "-rfEs", f"--junitxml={junit}", *deselect, str(pkg / "fireworks")]
    with open(work / "suite.out", "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass
class SuiteRun:
    """FireWorks' suite running against a server of its own, in ``work`` (see :func:`begin`)."""

    work: Path
    server: EmbeddedServer
    proc: subprocess.Popen[bytes]
    added: list[str]
    commands_before: int
    t0: float

    def finish(self) -> tuple[int, str, float, int]:
        """Wait for the suite (at most RUN_TIMEOUT from its start), stop the server: exit code, output tail,
        seconds, server commands it caused. Interrupted (Ctrl-C, pytest-timeout), it kills the suite first."""
        try:
            try:
                code = self.proc.wait(max(1.0, RUN_TIMEOUT - (time.monotonic() - self.t0)))
            except subprocess.TimeoutExpired:
                code = -9
            elapsed = time.monotonic() - self.t0
            commands = _server_commands(self.server) - self.commands_before
        finally:
            self.stop()
        return code, (self.work / "suite.out").read_text(errors="replace")[-5000:], elapsed, commands

    def stop(self) -> None:
        """Kill what is left of the suite's process group, then stop the server (each step whatever happened)."""
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:
            self.server.stop()


def begin(work: Path) -> SuiteRun:
    """Copy the package, start a server and the suite in ``work``; the caller finishes or kills the run."""
    added = copy_package(work / "pkg")
    server = EmbeddedServer(work / "data").start()
    try:
        before = _server_commands(server)
        return SuiteRun(work, server, start_suite(server, work, work / "junit.xml"), added, before, time.monotonic())
    except BaseException:
        server.stop()
        raise


# ---------------------------------------------------------------- started at collection, judged by the test
#: the run started by :func:`start_in_background` (tests/conftest.py, when the test is collected)
_BACKGROUND: dict[str, SuiteRun] = {}
TEST_NAME = "test_fireworks_own_suite_passes_against_the_server"


def start_in_background(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the suite's test is collected, start FireWorks' suite now, in the background: it is mostly
    FireWorks' own sleeps (a minute), which then overlap the tests before it instead of adding to the run's
    time. The test waits for it and judges it; :func:`stop_background` (session end, and at exit should the
    session die first) cleans up whatever is left. Not for ``--collect-only`` or an xdist worker."""
    if config.option.collectonly or hasattr(config, "workerinput") or _version_problem():
        return
    if "run" in _BACKGROUND or not any(item.name == TEST_NAME for item in items):
        return
    work = Path(tempfile.mkdtemp(prefix="pilot-fw-suite-"))
    try:
        _BACKGROUND["run"] = begin(work)
    except Exception:  # noqa: BLE001 - the test starts it again in the foreground and reports the error
        shutil.rmtree(work, ignore_errors=True)
        return
    atexit.register(stop_background)


def stop_background() -> None:
    run = _BACKGROUND.pop("run", None)
    if run is not None:
        try:
            run.stop()
        finally:
            shutil.rmtree(run.work, ignore_errors=True)


@dataclass
class Result:
    outcome: str    # passed | failure | error | skipped
    text: str       # message and output of a test that did not pass


def parse_junit(path: Path) -> dict[str, Result]:
    """``{dotted id: Result}``: ``fireworks.core.tests.test_launchpad.WFLockTest.test_x``; a module that could
    not be collected is its dotted module name."""
    out: dict[str, Result] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
        result = Result("passed", "")
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                captured = "".join(f"\n--- {t}\n{e.text}" for t in ("system-out", "system-err")
                                   for e in case.findall(t) if e.text)
                result = Result(tag, f"{el.get('message') or ''}\n{el.text or ''}{captured}")
                break
        out[tid] = result
    return out


def _shown(text: str, head: int = 3000, tail: int = 1500) -> str:
    """A test's report for the failure message: its start (the traceback) and its end (the captured output)."""
    return text if len(text) <= head + tail else f"{text[:head]}\n[...]\n{text[-tail:]}"


def judge(results: dict[str, Result]) -> tuple[list[str], list[str]]:
    """(problems, notes): what fails this test (new failures, stale known ones), and what is expected."""
    problems, notes = [], []
    for tid, known in KNOWN.items():
        res = results.get(tid)
        if res is None:
            problems.append(f"{tid}: listed in KNOWN but not run (renamed or removed in this FireWorks?)")
        elif not known.present():
            if res.outcome != "passed":
                problems.append(f"{tid}: {res.outcome} although its known cause is gone ({known.reason}):\n"
                                f"{_shown(res.text)}")
        elif res.outcome == "passed":
            problems.append(f"{tid}: PASSES now; remove it from KNOWN (tests/launchpad/test_fireworks_suite.py) and "
                            f"from docs/launchpad-server.md (its reason was: {known.reason})")
        elif res.outcome != known.outcome or known.pattern not in res.text:
            problems.append(f"{tid}: {res.outcome}, but not with its known cause ({known.reason}):\n"
                            f"{_shown(res.text)}")
        else:
            notes.append(f"{tid}: {res.outcome} (known: {known.reason})")
    for tid, res in sorted(results.items()):
        if tid not in KNOWN and res.outcome != "passed":
            problems.append(f"NEW {res.outcome.upper()}: {tid}\n{_shown(res.text)}")
    return problems, notes


def _server_commands(server: EmbeddedServer) -> int:
    with pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10000) as c:
        return int(sum(c.admin.command("pilotStats")["commands"].values()))


def _version_problem() -> str | None:
    import fireworks

    pin = pinned_version()
    if fireworks.__version__ == pin:
        return None
    return (f"FireWorks {fireworks.__version__} is installed, but its own test suite is checked against FireWorks "
            f"{pin} (pyproject.toml, test extra) with a list of known failures for that version: install it (pip "
            f"install -e '.[test]'), or move the pin and review KNOWN in {__file__} and docs/launchpad-server.md")


@pytest.mark.slow
def test_fireworks_own_suite_passes_against_the_server(tmp_path):
    problem = _version_problem()
    if problem:
        pytest.fail(problem)
    run = _BACKGROUND.get("run") or begin(tmp_path)   # started at collection unless run on its own
    try:
        code, out, elapsed, commands = run.finish()
        log = run.server.log_path.read_text()[-2000:]
        junit = run.work / "junit.xml"
        tail = f"\n--- pytest output (tail)\n{out}"
        assert junit.exists(), f"FireWorks' suite wrote no report (exit {code}){tail}"
        results = parse_junit(junit)
    finally:
        if _BACKGROUND.get("run") is run:
            stop_background()   # stopped already by finish(); its files removed
    counts = {o: sum(1 for r in results.values() if r.outcome == o) for o in ("passed", "failure", "error", "skipped")}
    print(f"FireWorks {pinned_version()} suite against the embedded server: {counts} in {elapsed:.1f} s, {commands} "
          f"server commands; data files supplied from the sdist: {run.added}")
    # the suite really talked to this server (and not, say, to a MongoDB on localhost:27017)
    assert commands > 5000, f"only {commands} commands reached the server{tail}"
    assert counts["passed"] >= 190, f"only {counts['passed']} FireWorks tests passed{tail}"
    problems, notes = judge(results)
    print("\n".join(notes))
    assert not problems, "\n\n".join(problems) + f"\n--- server log (tail)\n{log}"


def _as_expected() -> dict[str, Result]:
    """What a clean run reports in this environment, as judge() expects it."""
    out = {tid: Result(k.outcome, f"... {k.pattern} ...") if k.present() else Result("passed", "")
           for tid, k in KNOWN.items()}
    out["fireworks.tests.mongo_tests.MongoTests.test_add_fw"] = Result("passed", "")
    return out


def test_judge_flags_new_failures_stale_known_ones_and_other_causes():
    """The comparison itself (no subprocess): only exactly the known causes pass through."""
    assert judge(_as_expected())[0] == []
    new = _as_expected()
    new["fireworks.tests.mongo_tests.MongoTests.test_add_fw"] = Result("failure", "OperationFailure: boom")
    assert [p.splitlines()[0] for p in judge(new)[0]] == [
        "NEW FAILURE: fireworks.tests.mongo_tests.MongoTests.test_add_fw"]
    skipped = _as_expected()
    skipped["fireworks.tests.mongo_tests.MongoTests.test_add_fw"] = Result(
        "skipped", "MongoDB is not running in localhost:27017! Skipping tests.")
    assert judge(skipped)[0][0].startswith("NEW SKIPPED")
    tid = "fireworks.tests.master_tests.BasicTests.test_parent_connector"   # its cause is always present
    stale, other = _as_expected(), _as_expected()
    stale[tid] = Result("passed", "")
    other[tid] = Result("failure", "ServerSelectionTimeoutError: localhost:27017")
    assert "PASSES now" in judge(stale)[0][0]
    assert "not with its known cause" in judge(other)[0][0]
    gone = _as_expected()
    del gone[tid]
    assert "not run" in judge(gone)[0][0]
