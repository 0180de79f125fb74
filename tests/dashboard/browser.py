"""A real browser for the dashboard's tests: Debian's headless Chromium driven by Selenium through Debian's own
chromedriver (issue 22).

Why these choices:

- the driver is ``/usr/bin/chromedriver`` from the package ``chromium-driver`` (tests/run.sh installs it with
  ``chromium``): given a driver path, Selenium skips its Selenium Manager, which would otherwise try to download
  a driver and a browser build (this machine has no internet). ``SE_OFFLINE`` is set as well, so that a path
  that went missing fails at once instead of downloading;
- the flags: as root Chromium needs ``--no-sandbox``; ``--disable-background-networking``,
  ``--disable-component-update``, ``--disable-sync`` and ``--disable-quic`` keep it from opening connections
  to Google's hosts that this closed network refuses, many at a time, at every start; a fresh
  ``--user-data-dir`` per browser keeps one test's cookies (the dashboard's login) out of the next and names
  this browser's processes, so that teardown can prove none of them outlived the test;
- teardown quits the browser, stops the driver by its PID, and fails the test if any process of this browser
  is still alive afterwards (after killing it): a stray Chromium costs a CI machine of 2 cores dearly.

Helpers: :func:`shot` saves a PNG screenshot as a test artifact under ``$PILOT_TEST_LOG_DIR/screenshots``;
:func:`wait_visible`, :func:`wait_text` and :func:`wait_until` wait with ``WebDriverWait``;
:class:`DashboardProcess` runs ``pilot dashboard`` as a child process (the tests and
benchmarks/dashboard_pages.py share it) and :func:`make_token` makes its login token with the CLI.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 1000)
#: Chromium's flags (see the module docstring; /work/.library/env/machines/python.md lists the same set).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # no proxy from the environment between the browser and the dashboard on loopback
         "--no-proxy-server", "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}")


def log_dir() -> Path:
    """Where the test run keeps its artifacts (tests/run.sh: the JUnit XML goes there too)."""
    return Path(os.environ.get("PILOT_TEST_LOG_DIR", "/tmp/pilot-test-logs"))


def need_browser() -> None:
    """Skip when Chromium, its driver or Selenium is missing (outside tests/run.sh, which installs all three as
    root); in CI, where run.sh installed them, fail instead: a browser test skipped there would hide a gap."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium (pip install -e '.[test]')")
    if missing:
        msg = f"the browser tests need {', '.join(missing)}: tests/run.sh installs them (apt chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _processes_using(profile: Path) -> list[Any]:
    """Every live process whose command line names ``profile`` (this browser's own user-data-dir): the browser,
    its renderers, GPU/utility/zygote processes and crashpad handler."""
    import psutil

    needle = str(profile)
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(needle in arg for arg in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _reap_strays(profile: Path, driver_pid: int | None, timeout: float = 10.0) -> list[str]:
    """Wait for this browser's processes (and the driver) to end by themselves; kill, by PID, whatever is left
    after ``timeout``. Returns a description of each process that had to be killed (empty: a clean exit)."""
    import psutil

    def alive() -> list[Any]:
        procs = _processes_using(profile)
        if driver_pid is not None:
            try:
                d = psutil.Process(driver_pid)
                if d.status() != psutil.STATUS_ZOMBIE:
                    procs.append(d)
            except psutil.NoSuchProcess:
                pass
        return procs

    deadline = time.monotonic() + timeout
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive()
    strays = []
    for p in left:
        try:
            strays.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=5)
    return strays


@contextmanager
def start_browser(tmp: Path | None = None, driver_log: Path | None = None) -> Iterator[Any]:
    """A Selenium ``WebDriver`` on a new headless Chromium with a fresh profile under ``tmp`` (a new temporary
    directory when None, removed afterwards); on exit the browser quits, the driver is stopped by its PID and no
    process of either may be left: the exit raises ``AssertionError`` naming any that had to be killed (unless the
body raised: then its error stands and the strays are only printed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    own_tmp = tmp is None
    base = Path(tempfile.mkdtemp(prefix="pilot-browser-")) if tmp is None else Path(tmp)
    profile = base / f"chromium-profile-{os.urandom(4).hex()}"
    profile.mkdir(parents=True)
    old_offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"   # belt and braces: Selenium Manager, if ever run, must not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(driver_log) if driver_log else subprocess.DEVNULL)
    driver = None
    driver_pid = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        driver_pid = service.process.pid if service.process is not None else None
        driver.set_window_size(*WINDOW)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            try:
                driver.quit()   # closes the browser and stops the service
            except Exception as exc:   # noqa: BLE001 - a browser that already died: reaped below all the same
                print(f"browser quit failed: {exc!r}")
        if driver_pid is None and service.process is not None:
            driver_pid = service.process.pid
        if service.process is not None and service.process.poll() is None:
            service.process.kill()   # by PID: the driver we started
            service.process.wait(5)
        strays = _reap_strays(profile, driver_pid)
        if old_offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = old_offline
        shutil.rmtree(base if own_tmp else profile, ignore_errors=True)
        if strays:
            msg = f"browser processes outlived quit() and were killed: {strays}"
            if sys.exc_info()[1] is None:   # never hide the error the test itself raised
                raise AssertionError(msg)
            print(msg)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (Selenium ``WebDriver``), window 1400x1000, quit afterwards with no process left.

    The driver's log goes to ``tmp_path/chromedriver.log`` (kept with a failed test's tmp_path)."""
    need_browser()
    with start_browser(tmp_path, driver_log=tmp_path / "chromedriver.log") as driver:
        yield driver


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Make the page's viewport (what a screenshot shows) ``width`` x ``height`` CSS pixels: headless Chromium
    still draws a window frame (143 px of height seen with Chromium 156), so the window is sized by the
    difference between its outer and inner size."""
    outer_w, outer_h = (int(v) for v in driver.execute_script("return [window.outerWidth, window.outerHeight]"))
    inner_w, inner_h = (int(v) for v in driver.execute_script("return [window.innerWidth, window.innerHeight]"))
    driver.set_window_size(width + outer_w - inner_w, height + outer_h - inner_h)
    got = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    if [int(v) for v in got] != [width, height]:
        raise RuntimeError(f"viewport {got} after resizing, wanted {[width, height]}")


# --------------------------------------------------------------------------- artifacts
def shot(driver: Any, name: str) -> Path:
    """Save a screenshot of the browser's viewport as ``$PILOT_TEST_LOG_DIR/screenshots/NAME.png`` (a test
    artifact: kept after the run, outside the tree) and return its path. ``name`` may only hold letters,
    digits, ``-``, ``_`` and ``.``: it becomes a file name."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ValueError(f"screenshot name {name!r}: use letters, digits, '-', '_' and '.' only")
    out = log_dir() / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name if name.endswith(".png") else f"{name}.png")
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser could not save a screenshot to {path}")
    return path


def check_screenshot(path: Path, size: tuple[int, int] = WINDOW, min_colours: int = 20) -> None:
    """A real picture of a page: a PNG of ``size`` (width, height) that is not one colour with a little text:
    at least ``min_colours`` distinct colours and no single colour over 97 % of the pixels."""
    import matplotlib.image as mpimg
    import numpy as np

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = mpimg.imread(str(path))
    assert img.shape[1::-1] == size, f"{path}: {img.shape[1::-1]}, wanted {size}"
    rgb = (img[:, :, :3] * 255).round().astype(int).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) >= min_colours, f"{path}: only {len(colours)} colours"
    assert counts.max() / len(rgb) < 0.97, f"{path}: {counts.max() / len(rgb):.1%} of it is one colour"


# --------------------------------------------------------------------------- waiting
def wait_until(driver: Any, condition: Callable[[Any], Any], timeout: float = 10.0, what: str = "condition",
               poll: float = 0.1) -> Any:
    """``condition(driver)`` polled until truthy (its value is returned); on timeout, a TimeoutException that
    says ``what`` it waited for and on which page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=poll).until(condition)
    except TimeoutException as exc:
        raise TimeoutException(f"waited {timeout} s for {what} on {driver.current_url}; the page says: "
                               f"{page_text(driver)!r}") from exc


def page_text(driver: Any, limit: int = 600) -> str:
    """The start of the text the page shows (for error messages), or why it cannot be read."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)[:limit]
    except WebDriverException as exc:
        return f"(unreadable: {exc.__class__.__name__})"


def wait_visible(driver: Any, css: str, timeout: float = 10.0) -> Any:
    """The first element matching the CSS selector ``css`` once it is displayed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait_until(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout,
                      f"a visible {css!r}")


def wait_text(driver: Any, css: str, expected: str | Callable[[str], bool], timeout: float = 10.0) -> str:
    """Wait until the text of the element matching ``css`` equals ``expected`` (or ``expected(text)`` is true);
    returns the text. The element may be replaced meanwhile (a live update swapping it): it is looked up anew
    at every poll."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    seen: list[str | None] = [None]

    def check(d: Any) -> str | None:
        try:
            text = d.find_element(By.CSS_SELECTOR, css).text.strip()
        except (NoSuchElementException, StaleElementReferenceException):
            return None
        seen[0] = text
        ok = expected(text) if callable(expected) else text == expected
        return text if ok else None

    from selenium.common.exceptions import TimeoutException

    try:
        return str(wait_until(driver, check, timeout, f"{css!r} to read {expected!r}"))
    except TimeoutException as exc:
        shown = "no such element" if seen[0] is None else f"it read {seen[0]!r}"
        raise TimeoutException(f"{exc.msg}; {shown}") from exc


def elements(driver: Any, css: str) -> list[Any]:
    """Every element matching the CSS selector ``css`` now (no waiting; an empty list when there is none)."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def by_testid(driver: Any, testid: str) -> Any:
    """The element with ``data-testid="testid"`` (the dashboard marks what its tests read that way)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


# --------------------------------------------------------------------------- the dashboard as a process
def pilot_cli(config_dir: Path, *args: str, timeout: float = 120) -> str:
    """``pilot --config-dir CONFIG_DIR ARGS...`` as a subprocess; its stdout (an exit code but 0 raises)."""
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(config_dir), *args],
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"pilot {' '.join(args)} exited {res.returncode}: {res.stderr[-2000:]}")
    return res.stdout


def make_token(config_dir: Path, name: str = "tester") -> str:
    """A login token from ``pilot dashboard token add NAME`` (printed once, as ``NAME.SECRET``)."""
    out = pilot_cli(config_dir, "dashboard", "token", "add", name)
    found = re.findall(rf"\b{re.escape(name)}\.[A-Za-z0-9_-]{{20,}}", out)
    if not found:
        raise RuntimeError(f"no token in what `pilot dashboard token add {name}` printed: {out!r}")
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DashboardProcess:
    """``pilot dashboard --host 127.0.0.1 --port N`` of ``config_dir`` as a child process (its own session),
    stopped by its PID; :meth:`request` and :meth:`login` are a plain HTTP client of it (keep-alive)."""

    def __init__(self, config_dir: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.config_dir = Path(config_dir)
        self.port = free_port()
        self.log_path = Path(log_path)
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.cookie = ""
        self.conn: http.client.HTTPConnection | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 60) -> DashboardProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pilot", "--config-dir", str(self.config_dir),
                                          "dashboard", "--host", "127.0.0.1", "--port", str(self.port),
                                          *self.extra_args], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the dashboard did not listen in {timeout} s: {self.log_path.read_text()[-2000:]}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection (opened again when the server closed it); with the session
        cookie once :meth:`login` has one. Returns (status, headers with lower-case names, body)."""
        hdrs = dict(headers or {})
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def login(self, token: str) -> None:
        """POST the token to /login (the login form's field ``token``); keep the session cookie it sets."""
        body = urllib.parse.urlencode({"token": token}).encode()
        status, headers, data = self.request("POST", "/login", body,
                                             {"Content-Type": "application/x-www-form-urlencoded"})
        cookie = headers.get("set-cookie", "")
        if status >= 400 or not cookie:
            raise RuntimeError(f"login refused: HTTP {status}, {data[:300]!r}")
        self.cookie = cookie.split(";", 1)[0]

    def stop(self) -> None:
        """Close the client; stop the server by its PID (SIGTERM, then SIGKILL)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
