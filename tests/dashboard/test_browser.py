"""The dashboard in a real browser (issue 22): Debian's headless Chromium driven by Selenium
(tests/dashboard/browser.py); ``pilot dashboard`` runs as its own process, as a person starts it.

1. Self-checks of the browser machinery that need no dashboard: a page served by the standard library's
   http.server, a click that changes a number through JavaScript, a screenshot that must be a real picture;
   the driver and browser are Debian's, and no process of theirs outlives the browser.
2. A long campaign's records (the benchmark's generator, benchmarks/dashboard_pages.py, at 2,000 Fireworks):
   the login, every category's numbers against ``pilot status --json``, a list page by page, the throughput
   page's trajectory against what the records add up to.
3. A real campaign on the test SLURM cluster: the overview against ``pilot status --json``, a completion seen
   live on the open page, a FIZZLED Firework rerun from its page through the confirmation.

The pages are read by their ``data-testid`` attributes (docs/dashboard.md); the screenshots go to
``$PILOT_TEST_LOG_DIR/screenshots`` (dashboard-overview.png, dashboard-throughput.png, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fireworks import Firework, ScriptTask, Workflow

from pilot.manager.cycle import Manager
from tests.dashboard.browser import (
    DashboardProcess,
    by_testid,
    check_screenshot,
    elements,
    make_token,
    pilot_cli,
    set_viewport,
    shot,
    wait_text,
    wait_until,
    wait_visible,
)
from tests.dashboard.browser import browser as browser  # noqa: PLC0414 - the fixture, used by name
from tests.manager.helpers import add_held, add_sleepers, fw_states, run_cycles_until
from tests.manager.test_slurm import world as world  # noqa: PLC0414 - the fixture, used by name
from tests.status.test_report import check_png

# ============================================================================ the self-check
#: A page that looks like the report's figure to check_png once clicked: 1000x650 px, a gradient (many
#: colours) and, after the click, a block in matplotlib's first colour (C0, #1f77b4) of 600x200 px. The click
#: handler changes the number a moment later (a timer), as a live page would: the test has to wait for it.
SELF_CHECK_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>browser self-check</title>
<style>
  html, body { margin: 0; padding: 0; width: 1000px; height: 650px; overflow: hidden;
               background: linear-gradient(90deg, #ffffff, #f4e1c0 50%, #c8e6c9); font: 20px sans-serif; }
  #bar { position: absolute; left: 100px; top: 300px; height: 200px; width: 0; background: #1f77b4; }
  button { position: absolute; left: 100px; top: 100px; font-size: 24px; }
  #count { position: absolute; left: 400px; top: 100px; font-size: 40px; }
</style></head>
<body>
  <button id="more" data-testid="more">more</button>
  <span id="count" data-testid="count">41</span>
  <div id="bar"></div>
  <script>
    document.getElementById("more").addEventListener("click", function () {
      setTimeout(function () {
        var c = document.getElementById("count");
        c.textContent = String(Number(c.textContent) + 1);
        document.getElementById("bar").style.width = "600px";
      }, 300);
    });
  </script>
</body></html>
"""


@pytest.fixture
def static_page() -> Iterator[str]:
    """The self-check page on a ThreadingHTTPServer of this test's own on 127.0.0.1 (stopped, thread joined)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:   # noqa: N802 (http.server's name)
            if self.path != "/":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(SELF_CHECK_PAGE)))
            self.end_headers()
            self.wfile.write(SELF_CHECK_PAGE)

        def log_message(self, format: str, *args: object) -> None:   # noqa: A002 (http.server's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="self-check-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_browser_clicks_and_sees_a_script_change_the_page(browser, static_page):
    """The whole chain works: Chromium loads a page over HTTP, runs its JavaScript, takes a click, shows the
    change, and the screenshot is a real picture of it (check_png: the report's own figure checker)."""
    browser.get(static_page)
    set_viewport(browser, 1000, 650)   # check_png's figure size
    assert browser.title == "browser self-check"
    before = shot(browser, "self-check-before")
    with pytest.raises(AssertionError):   # the checker can fail: before the click there is no C0 block
        check_png(before)
    by_testid(browser, "more").click()
    assert by_testid(browser, "count").text == "41"   # the change comes 0.3 s after the click, not at once
    assert wait_text(browser, '[data-testid="count"]', "42") == "42"
    wait_until_bar = wait_visible(browser, "#bar")
    assert wait_until_bar.size["width"] == 600
    after = shot(browser, "self-check-after")
    assert after.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_png(after, trajectory=False)   # the 1000 x 650 figure without a trajectory panel


def test_the_browser_is_debians_and_leaves_no_process_behind(tmp_path):
    """Selenium drives Debian's own chromedriver and chromium (no downloaded driver: their versions are the
    Debian packages'), and once the browser is closed no process of it is left; a process that does outlive it
    is found by its profile and killed."""
    import subprocess

    import psutil

    from tests.dashboard.browser import CHROMEDRIVER, _reap_strays, need_browser, start_browser
    from tests.helpers import pid_alive

    need_browser()
    debian = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "chromium"], capture_output=True, text=True,
                            check=True).stdout   # e.g. 156.0.8078.129-1~deb12u1
    with start_browser(tmp_path) as driver:
        driver_proc = psutil.Process(driver.service.process.pid)
        assert driver_proc.exe() == os.path.realpath(CHROMEDRIVER)
        family = [driver_proc, *driver_proc.children(recursive=True)]
        assert any(p.exe() == "/usr/lib/chromium/chromium" for p in family[1:]), [p.exe() for p in family]
        assert debian.startswith(driver.capabilities["browserVersion"] + "-"), (debian, driver.capabilities)
        assert debian.startswith(driver.capabilities["chrome"]["chromedriverVersion"].split()[0] + "-")
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

    # the teardown's check can fail: a process naming a profile is reported and killed
    profile = tmp_path / "chromium-profile-stray"
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--user-data-dir={profile}"])
    try:
        found = _reap_strays(profile, None, timeout=0.3)
        assert len(found) == 1 and found[0].startswith(f"{stray.pid} "), found
        assert not pid_alive(stray.pid)   # killed and reaped (psutil.wait_procs reaps its own children)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(5)


# ============================================================================ the dashboard
#: The viewport of the dashboard's screenshots (docs/dashboard.md shows them).
VIEW = (1400, 900)


@pytest.fixture
def dashboard_of(tmp_path: Path) -> Iterator[Callable[[Path], tuple[DashboardProcess, str]]]:
    """Start ``pilot dashboard`` for a config dir, with a token made by ``pilot dashboard token add``; every
    dashboard started is stopped (by PID) afterwards."""
    started: list[DashboardProcess] = []

    def start(config_dir: Path) -> tuple[DashboardProcess, str]:
        token = make_token(config_dir, "tester")
        dash = DashboardProcess(config_dir, tmp_path / f"dashboard-{len(started)}.log")
        started.append(dash)
        return dash.start(), token

    yield start
    for dash in started:
        dash.stop()


def log_in(driver: Any, dash: DashboardProcess, token: str, path: str = "/") -> None:
    """Open ``path``: the dashboard answers a browser without a session with its login form in place of the
    page (HTTP 401); type the token there and submit, which must lead to ``path`` itself."""
    driver.get(dash.url + path)
    wait_visible(driver, '[data-testid="login-token"]').send_keys(token)
    by_testid(driver, "login-submit").click()
    wait_until(driver, lambda d: not elements(d, '[data-testid="login-token"]')
               and urlsplit(d.current_url).path == path, what=f"{path} after the login")


def status_json(config_dir: Path) -> dict[str, Any]:
    """What ``pilot status --json`` says now (the command, as a person runs it)."""
    return json.loads(pilot_cli(config_dir, "status", "--json"))


#: The states of a category the overview shows (docs/dashboard.md; ``pilot status`` shows the same ones).
SHOWN = ("READY", "WAITING", "RUNNING", "COMPLETED", "FIZZLED")


def status_numbers(doc: dict[str, Any], cluster: str, category: str) -> dict[str, str]:
    """The numbers of a ``pilot status --json`` document that the overview shows, by the overview's test ids."""
    c = next(x for x in doc["clusters"] if x["name"] == cluster)
    cat = next(x for x in doc["categories"] if x["name"] == category)
    out = {f"category-{category}-{state}": str(cat["counts"][state]) for state in SHOWN}
    out[f"category-{category}-total"] = str(cat["total"])
    out.update({f"cluster-{cluster}-pending": str(c["pilots"]["pending"]),
                f"cluster-{cluster}-running": str(c["pilots"]["running"]),
                f"cluster-{cluster}-ended": str(c["pilots"]["ended_recently"]),
                "fizzled-total": str(doc["needs_you"]["fizzled"]["total"]),
                "needs-you-count": str(doc["needs_you"]["count"])})
    return out


def shown_numbers(driver: Any, testids: list[str]) -> dict[str, str | None]:
    """The text of the element of each test id on the page (None: no such element)."""
    out: dict[str, str | None] = {}
    for t in testids:
        els = elements(driver, f'[data-testid="{t}"]')
        out[t] = els[0].text.strip() if els else None
    return out


def compare_overview(driver: Any, config_dir: Path, cluster: str, category: str) -> dict[str, str]:
    """Reload the overview and compare its numbers with ``pilot status --json`` run before and after the page
    (the two runs agreeing, so that nothing changed in between; three tries). Returns the numbers compared."""
    for _ in range(3):
        before = status_numbers(status_json(config_dir), cluster, category)
        driver.refresh()
        wait_visible(driver, '[data-testid="clusters"]')
        shown = shown_numbers(driver, list(before))
        after = status_numbers(status_json(config_dir), cluster, category)
        if before == after:
            assert shown == before, f"overview {shown} != pilot status --json {before}"
            return before
    raise AssertionError(f"pilot status --json kept changing: {before} -> {after}")


# ---------------------------------------------------------------------------- a long campaign's records
def test_login_pages_and_throughput_of_a_generated_campaign(browser, launchpad, tmp_path, dashboard_of):
    """2,000 Fireworks written as a campaign of 4 clusters leaves them (benchmarks/dashboard_pages.py: the
    benchmark's own generator, at a test's size): the login, the overview against ``pilot status --json``, a
    list page by page, and the throughput plot with the trajectory the records add up to."""
    from benchmarks.dashboard_pages import CLUSTERS, generate, write_config_dir

    gen = generate(launchpad, 2000)
    cfg = write_config_dir(tmp_path, launchpad)
    pilot_cli(cfg, "config", "check")   # the config loads: the pages show its clusters, not only the records'
    dash, token = dashboard_of(cfg)

    # a wrong token is refused on the form; the right one leads to the overview
    browser.get(dash.url + "/")
    wait_visible(browser, '[data-testid="login-token"]').send_keys("tester." + "x" * 43)
    by_testid(browser, "login-submit").click()
    wait_visible(browser, '[data-testid="login-error"]')
    log_in(browser, dash, token)
    assert [w.text for w in elements(browser, '[data-testid="warning"]')] == []

    # every category's numbers as `pilot status --json` gives them
    for cluster, category in zip(CLUSTERS, ("md", "md-long", "analysis", "post"), strict=True):
        seen = compare_overview(browser, cfg, cluster, category)
    assert seen["fizzled-total"] == str(gen["by_state"]["FIZZLED"])   # and as generated

    # the COMPLETED list, a page at a time: newest fw_id first (the LaunchPad's own ids, sorted here)
    completed = sorted((d["fw_id"] for d in launchpad.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1})),
                       reverse=True)
    browser.get(dash.url + "/fireworks?state=COMPLETED")
    rows = row_ids(browser)
    assert rows == completed[:len(rows)] and 10 <= len(rows) < len(completed)
    by_testid(browser, "page-next").click()
    wait_text(browser, '[data-testid="page-number"]', lambda t: "2" in t)
    assert row_ids(browser) == completed[len(rows):2 * len(rows)]

    # throughput: every COMPLETED segment ran 500,000 steps of 2 fs, 1 ns (FIZZLED ones recorded no steps)
    browser.get(dash.url + "/throughput")
    set_viewport(browser, *VIEW)
    unavailable = elements(browser, '[data-testid="throughput-unavailable"]')
    assert not unavailable, f"the throughput page shows no trajectory: {unavailable[0].text}"
    assert wait_text(browser, '[data-testid="throughput-total-ns"]', lambda t: bool(t)) == \
        f"{gen['by_state']['COMPLETED'] * 1.0:.1f}"
    wait_visible(browser, '[data-testid="plot-cumulative"] canvas')
    wait_visible(browser, '[data-testid="plot-daily"] canvas')
    check_screenshot(shot(browser, "dashboard-throughput"), VIEW)


def row_ids(driver: Any) -> list[int]:
    """The fw_ids of the rows of the Fireworks list, top to bottom (``data-testid="fw-row-ID"``)."""
    return [int(el.get_attribute("data-testid").removeprefix("fw-row-"))
            for el in elements(driver, '[data-testid^="fw-row-"]')]


# ---------------------------------------------------------------------------- a real campaign on SLURM
def fail_once(lp: Any, category: str, marker: Path) -> int:
    """A Firework that fails (exit 3) the first time it runs and succeeds afterwards: FIZZLED until rerun."""
    fw = Firework([ScriptTask.from_str(f"if mkdir {marker}; then exit 3; fi")], spec={"_category": category},
                  name=f"fail-once-{category}")
    old = fw.fw_id
    return int(lp.add_wf(Workflow([fw]))[old])


def fw_state(lp: Any, fw_id: int) -> str:
    return str(lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1})["state"])


@pytest.mark.slurm
def test_a_real_campaign_live_and_a_rerun(browser, world, launchpad, slurm_cluster, remote_tmp, tmp_path,
                                          dashboard_of):
    """Real pilots on the test SLURM cluster run 3 sleepers, one Firework that fails once, one that runs until
    the test lets it end. The overview agrees with ``pilot status --json``; a Firework's completion shows on
    the open page without a reload; the FIZZLED one is rerun from its page (a confirmation first) and the
    LaunchPad has it READY."""
    config, cluster, _prefix = world
    cfg = config({"pilotci": cluster(slurm_cluster, ["md"], idle_timeout=3, fireworks_per_pilot=3)})
    cfg_dir = tmp_path / "cfg"   # where world's config() wrote it
    add_sleepers(launchpad, "md", 3, 0.2)
    failing = fail_once(launchpad, "md", remote_tmp / "failed-once")
    release = remote_tmp / "release"
    (held,) = add_held(launchpad, "md", release)
    mgr = Manager(cfg, launchpad)
    try:
        run_cycles_until(mgr, lambda: fw_states(launchpad) == {"COMPLETED": 3, "FIZZLED": 1, "RUNNING": 1},
                         timeout=150, interval=1)
        dash, token = dashboard_of(cfg_dir)
        log_in(browser, dash, token)
        set_viewport(browser, *VIEW)
        seen = compare_overview(browser, cfg_dir, "pilotci", "md")
        assert (seen["category-md-COMPLETED"], seen["category-md-FIZZLED"], seen["category-md-RUNNING"]) == \
            ("3", "1", "1")   # as the LaunchPad's own documents say (fw_states above)
        check_screenshot(shot(browser, "dashboard-overview"), VIEW)

        # live: the held Firework completes; the open page shows it without being loaded again
        browser.execute_script("window.__notReloaded = true;")
        release.touch()
        wait_text(browser, '[data-testid="category-md-COMPLETED"]', "4", timeout=40)
        wait_text(browser, '[data-testid="category-md-RUNNING"]', "0", timeout=10)
        assert browser.execute_script("return window.__notReloaded === true;"), "the page was loaded again"
        assert fw_state(launchpad, held) == "COMPLETED"
        shot(browser, "dashboard-overview-live")

        # the cluster page lists each pilot the manager recorded, with its job id
        browser.get(f"{dash.url}/cluster/pilotci")
        for rec in launchpad.db["pilots"].find({"cluster": "pilotci"}, {"job_name": 1, "job_id": 1}):
            assert str(rec["job_id"]) in by_testid(browser, f"pilot-{rec['job_name']}").text
        # a pilot's output, read over SSH when its page opens: what `tail` prints of the file the SLURM job wrote
        rec = launchpad.db["pilots"].find_one({"cluster": "pilotci"}, sort=[("submit_time", 1)])
        out = remote_tmp / "pilotci" / f"pilot-{rec['job_id']}.out"   # world's work_dir; the templates' name
        want = subprocess.run(["tail", "-n", "100", str(out)], capture_output=True, text=True, check=True).stdout
        browser.get(f"{dash.url}/pilot/{rec['job_name']}/log")
        shown = by_testid(browser, "log-out").text
        assert want.strip() and [ln.rstrip() for ln in shown.strip().splitlines()] == \
            [ln.rstrip() for ln in want.strip().splitlines()]

        # no pilot left to take it: the rerun's READY stays READY for the LaunchPad to show
        run_cycles_until(mgr, lambda: launchpad.db["pilots"].count_documents(
            {"state": {"$nin": ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "LOST"]}}) == 0, timeout=90)
        rerun_from_the_page(browser, dash, launchpad, failing)
    finally:
        mgr.close()


def rerun_from_the_page(driver: Any, dash: DashboardProcess, lp: Any, fw_id: int) -> None:
    """Open the FIZZLED Firework's page, see why it failed, click rerun, confirm; the LaunchPad has it READY."""
    driver.get(f"{dash.url}/fw/{fw_id}")
    assert by_testid(driver, "fw-state").text == "FIZZLED"
    assert by_testid(driver, "fw-error").text.strip()
    by_testid(driver, f"action-rerun-{fw_id}").click()
    assert str(fw_id) in wait_visible(driver, '[data-testid="confirm-question"]').text
    assert fw_state(lp, fw_id) == "FIZZLED"   # asking changes nothing
    by_testid(driver, "confirm-yes").click()
    result = wait_visible(driver, '[data-testid="action-result"]')
    assert result.get_attribute("data-ok") == "true", result.text
    assert fw_state(lp, fw_id) == "READY"
    doc = lp.fireworks.find_one({"fw_id": fw_id}, {"archived_launches": 1, "launches": 1})
    assert len(doc["archived_launches"]) == 1 and doc["launches"] == []   # FireWorks' rerun_fw archives the run
    by_testid(driver, "action-back").click()
    wait_text(driver, '[data-testid="fw-state"]', "READY")
