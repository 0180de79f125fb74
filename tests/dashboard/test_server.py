"""The dashboard's server (issue 22): a real server on a free loopback port in a thread, the real LaunchPad
server fixture, http.client as the browser. Login, tokens, 401/403 rules, CSRF, each action's effect on the
LaunchPad, the pages' contents, pagination, and the JSON endpoint against ``pilot status --json``.

Expected values come from the real programs: FireWorks' own states after its own rerun/defuse/reignite,
Python's own error text of a failing PyTask, the local scheduler's own answer after a cancel, hashlib's scrypt
recomputed here from the stored salt, ``pilot status --json`` run as a separate process.
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.client
import json
import logging
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fireworks import Firework, FWorker, PyTask, Workflow
from fireworks.core.rocket_launcher import launch_rocket

from pilot.dashboard.server import DashboardError, make_server, open_dashboard, serve_in_thread, tls_context
from pilot.dashboard.tokens import TOKENS_FILE, TokenStore
from pilot.manager.records import Records
from tests.helpers import wait_for
from tests.manager.helpers import add_sleepers, cancel_local_pilots, local_cluster, write_config

#: FireWorks' rocket looks its FireTasks up by walking its own packages, its test modules too, whose marks
#: (``mongodb``) this suite does not register: their warnings say nothing about the dashboard
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")]


def pilot(cfg: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(cfg), *args], capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Client:
    """A browser in miniature: one cookie jar (the session cookie), http.client underneath."""

    port: int
    tls: ssl.SSLContext | None = None
    cookie: str | None = None
    set_cookies: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], str]:
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=30)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            for k, v in resp.getheaders():
                if k.lower() == "set-cookie":
                    self.set_cookies.append(v)
                    self.cookie = v.split(";")[0] if "Max-Age=0" not in v else None
            return resp.status, hdrs, text
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form)

    def login(self, token: str) -> None:
        status, hdrs, _ = self.post("/login", {"token": token, "next": "/"})
        assert status == 303 and hdrs["location"] == "/" and self.cookie, (status, hdrs)

    def csrf(self, path: str = "/") -> str:
        status, _, text = self.get(path)
        assert status == 200, text
        m = re.search(r'name="csrf" value="([^"]+)"', text)
        assert m, "no CSRF field in the page"
        return m.group(1)

    def act(self, action: str, target: str, cluster: str = "") -> tuple[int, str]:
        """The two steps a person takes: the confirm page (changes nothing), then its form's POST."""
        status, _, page = self.get(f"/confirm?{urlencode({'action': action, 'target': target, 'cluster': cluster})}")
        assert status == 200 and 'data-testid="confirm-yes"' in page, page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        status, _, text = self.post("/action", {"csrf": csrf.group(1), "action": action, "target": target,
                                                "cluster": cluster})
        return status, html.unescape(text)


@dataclass
class Env:
    cfg: Path
    lp: object
    port: int
    token: str
    work: Path
    dash: object

    def client(self) -> Client:
        return Client(self.port)


@pytest.fixture
def env(launchpad, tmp_path):
    """A config dir with one local cluster ``loc``, a token made by the CLI, and the dashboard serving it."""
    lp_file = tmp_path / "my_launchpad.yaml"
    launchpad.to_file(str(lp_file))
    work = tmp_path / "work"
    cfg = write_config(tmp_path / "cfg", lp_file, {"loc": local_cluster(work, lp_file, ["md"], idle_timeout=120)})
    res = pilot(cfg, "dashboard", "token", "add", "alice")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    dash = open_dashboard(cfg)
    server = make_server(dash, "127.0.0.1", 0)
    thread = serve_in_thread(server)
    try:
        yield Env(cfg, launchpad, server.server_address[1], token, work, dash)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        dash.write_lp.connection.close()


def _fizzle(lp, tmp_path: Path, monkeypatch, fworker: str = "pilot-loc-w1") -> int:
    """A Firework that really fizzles, run by FireWorks' own rocket under ``fworker``'s name."""
    fw = Firework([PyTask(func="builtins.int", args=["not a number"])], spec={"_category": "md"}, name="bad")
    old = fw.fw_id
    fw_id = int(lp.add_wf(Workflow([fw]))[old])
    run_dir = tmp_path / "launches"
    run_dir.mkdir(exist_ok=True)
    monkeypatch.chdir(run_dir)
    assert launch_rocket(lp, FWorker(name=fworker, category="md"), strm_lvl="ERROR")
    assert lp.fireworks.find_one({"fw_id": fw_id})["state"] == "FIZZLED"
    return fw_id


def _record_pilot(lp, job_name: str, cluster: str, fworker: str | None = None, **fields) -> None:
    """A pilot record as the manager writes it (its own Records calls)."""
    rec = Records(lp.db)
    rec.add_intent(job_name, cluster, "md", 300, 20, "/nowhere/pilot.sh", now=fields.pop("now", None))
    rec.update(job_name, fworker=fworker, **fields)


# ------------------------------------------------------------------------------------------------ tokens
def test_token_store_keeps_only_a_salted_hash(env):
    path = env.cfg / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(env.cfg.stat().st_mode) == 0o700
    name, secret = env.token.split(".", 1)
    assert name == "alice" and len(secret) >= 40
    raw = path.read_text()
    assert secret not in raw and env.token not in raw
    entry = json.loads(raw)["tokens"]["alice"]
    want = hashlib.scrypt(secret.encode(), salt=base64.b64decode(entry["salt"]), n=entry["n"], r=entry["r"],
                          p=entry["p"], maxmem=64 * 1024 * 1024, dklen=32)
    assert base64.b64decode(entry["hash"]) == want
    store = TokenStore(env.cfg)
    assert store.verify(env.token) == "alice"
    assert store.verify("alice." + secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.verify(secret) is None and store.verify("bob." + secret) is None
    res = pilot(env.cfg, "dashboard", "token", "list")
    assert res.returncode == 0 and res.stdout.startswith("alice\tmade ") and secret not in res.stdout
    # a second token, then remove: that one no longer logs in, and its session ends
    second = pilot(env.cfg, "dashboard", "token", "add", "bob").stdout.strip()
    c = env.client()
    c.login(second)
    assert c.get("/")[0] == 200
    assert pilot(env.cfg, "dashboard", "token", "remove", "bob").returncode == 0
    assert store.verify(second) is None
    status, _, body = c.get("/")
    assert status == 401 and 'id="login-form"' in body
    # a token made again for a name (after a leak) ends the sessions the old one opened
    leaked = env.client()
    leaked.login(env.token)
    assert leaked.get("/")[0] == 200
    assert pilot(env.cfg, "dashboard", "token", "add", "alice").returncode == 0
    assert leaked.get("/")[0] == 401
    bad = pilot(env.cfg, "dashboard", "token", "add", "no spaces")
    assert bad.returncode == 1 and "use 1-64 letters" in bad.stderr


# ------------------------------------------------------------------------------------------------ login rules
@pytest.mark.parametrize("path", ["/", "/cluster/loc", "/fw/1", "/fireworks", "/throughput", "/pilot/x",
                                  "/confirm?action=drain&target=loc"])
def test_pages_are_refused_without_a_session(env, path):
    """401, and the login form as the body, which leads back to the page asked for."""
    c = env.client()
    status, _, body = c.get(path)
    assert status == 401 and 'id="login-form"' in body, (status, body[:200])
    assert "Campaign" not in body and 'data-testid="action-' not in body and 'data-testid="confirm-' not in body
    assert f'name="next" value="{html.escape(path)}"' in body
    status, hdrs, _ = c.post("/login", {"token": env.token, "next": path})
    assert status == 303 and hdrs["location"] == path


def test_api_and_posts_refused_without_a_session(env):
    c = env.client()
    for api in ("/api/overview", "/api/cluster/loc", "/api/fw/1", "/api/throughput"):
        status, hdrs, body = c.get(api)
        assert status == 401 and hdrs["content-type"].startswith("application/json"), (api, status)
    status, _, _ = c.post("/action", {"action": "drain", "target": "loc", "csrf": "x"})
    assert status == 401
    assert Records(env.lp.db).drained() == {}
    # a wrong token: 401 and no cookie
    status, _, body = c.post("/login", {"token": env.token + "x"})
    assert status == 401 and c.cookie is None and "not valid" in body


def test_no_token_session_or_csrf_token_in_the_log(env, caplog):
    """The log has a line per request and per login/action, never the token, the session id or the CSRF token,
    also not for a wrong token, a forged form or a query string that carries a secret."""
    caplog.set_level(logging.DEBUG)
    c = env.client()
    c.post("/login", {"token": env.token + "x"})   # a wrong token (one character more)
    c.login(env.token)
    sid = c.cookie.split("=", 1)[1]
    csrf = c.csrf()
    c.get("/?token=" + env.token)
    c.post("/action", {"action": "drain", "target": "loc", "csrf": "forged-" + csrf})
    c.act("drain", "loc")
    c.act("resume", "loc")
    text = caplog.text
    assert "login by alice" in text and "drain" in text   # the log said something: the search looked at it
    for secret in (env.token.split(".", 1)[1], sid, csrf):
        assert secret not in text


def test_login_cookie_and_headers(env):
    c = env.client()
    c.login(env.token)
    (cookie,) = c.set_cookies
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie   # no TLS here
    status, hdrs, body = c.get("/")
    assert status == 200 and "Campaign overview" in body
    assert "script-src 'self'" in hdrs["content-security-policy"] and hdrs["cache-control"] == "no-store"
    # no secret in any page: neither the token nor the session id
    sid = c.cookie.split("=", 1)[1]
    for path in ("/", "/cluster/loc", "/fireworks", "/throughput", "/api/overview"):
        text = c.get(path)[2]
        assert env.token.split(".", 1)[1] not in text and sid not in text
    # no way out to another site: a login's "next", a confirm page's "back"
    other = env.client()
    for nxt in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        status, hdrs, _ = other.post("/login", {"token": env.token, "next": nxt})
        assert status == 303 and hdrs["location"] == "/", (nxt, hdrs["location"])
    page = c.get("/confirm?action=drain&target=loc&back=https://evil.example/")[2]
    assert 'href="/" data-testid="confirm-no"' in page and "evil" not in page
    # logout ends the session
    assert c.post("/logout", {"csrf": c.csrf()})[0] == 303
    c.cookie = f"pilot_dashboard={sid}"
    assert c.get("/api/overview")[0] == 401


def test_a_flood_of_wrong_tokens_is_slowed_and_a_cut_form_never_acted_on(env):
    """Five wrong tokens within a minute, then the address waits (429 with Retry-After), even with the right one;
    a form longer than the server reads, or one without a length, is refused before anything is parsed."""
    c = env.client()
    for _ in range(5):
        assert c.post("/login", {"token": env.token + "x"})[0] == 401
    status, hdrs, _ = c.post("/login", {"token": env.token})
    assert status == 429 and 0 < int(hdrs["retry-after"]) <= 61 and c.cookie is None
    other = env.client()
    other.cookie = None
    env.dash.logins = type(env.dash.logins)()   # a new minute (the throttle keeps its own clock)
    other.login(env.token)
    big = {"action": "drain", "target": "loc", "csrf": other.csrf(), "pad": "x" * 20_000}
    status, _, body = other.post("/action", big)
    assert status == 413 and "at most" in body
    assert Records(env.lp.db).drained() == {}
    conn = http.client.HTTPConnection("127.0.0.1", other.port, timeout=30)
    try:
        conn.putrequest("POST", "/action")
        conn.putheader("Cookie", str(other.cookie))
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"0\r\n\r\n")
        assert conn.getresponse().status == 501
    finally:
        conn.close()


def _cut(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (a byte sent now and then meanwhile)."""
    end = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            sock.sendall(b"X")
            if sock.recv(100) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_slow_or_crowding_client_costs_bounded_time_and_threads(env, monkeypatch):
    """Before any login: a client that sends its headers a byte at a time is cut at the header deadline, and
    connections past the server's cap are closed at once while the others are served."""
    import pilot.dashboard.handler as handler
    import pilot.dashboard.server as server_mod

    monkeypatch.setattr(handler, "HEADER_DEADLINE_S", 1.0)
    slow = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    try:
        slow.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert _cut(slow, 6) and time.monotonic() - t0 < 4
    finally:
        slow.close()
    monkeypatch.setattr(handler, "HEADER_DEADLINE_S", 8.0)
    monkeypatch.setattr(server_mod, "MAX_CONNECTIONS", 3)
    server = make_server(env.dash, "127.0.0.1", 0)
    thread = serve_in_thread(server)
    idle = [socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        with extra:
            assert _cut(extra, 2)   # the fourth is closed at once
        for sock in idle:
            sock.close()
        def served() -> bool:
            try:
                return Client(server.server_address[1]).get("/login")[0] == 200
            except ConnectionError:   # closed at once: the slots are not free yet (their threads see the EOF)
                return False

        wait_for(served, 10, what="a free slot")
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_forged_post_without_csrf_is_refused(env):
    c = env.client()
    c.login(env.token)
    for form in ({"action": "drain", "target": "loc"}, {"action": "drain", "target": "loc", "csrf": "forged"}):
        status, _, body = c.post("/action", form)
        assert status == 403 and "CSRF" in body
    assert Records(env.lp.db).drained() == {}
    # another session's CSRF token does not do either
    other = env.client()
    other.login(env.token)
    status, _, _ = c.post("/action", {"action": "drain", "target": "loc", "csrf": other.csrf()})
    assert status == 403 and Records(env.lp.db).drained() == {}


# ------------------------------------------------------------------------------------------------ actions
def test_drain_and_resume_through_the_confirm_step(env):
    c = env.client()
    c.login(env.token)
    c.get("/confirm?action=drain&target=loc")
    assert Records(env.lp.db).drained() == {}          # the confirm page changes nothing
    status, text = c.act("drain", "loc")
    assert status == 200 and 'data-ok="true"' in text
    drain = Records(env.lp.db).drained()["loc"]
    assert drain["until"] is None and drain["by"] == "dashboard:alice"
    # what `pilot status --json` (another process) says about it
    st = json.loads(pilot(env.cfg, "status", "--json").stdout)
    assert next(x for x in st["clusters"] if x["name"] == "loc")["drain"]["by"] == "dashboard:alice"
    assert "resume" in c.get("/cluster/loc")[2]
    status, text = c.act("resume", "loc")
    assert status == 200 and Records(env.lp.db).drained() == {}
    status, text = c.act("drain", "nosuch")
    assert status == 409 and "no cluster named 'nosuch'" in text


def test_rerun_defuse_reignite_and_the_firework_page(env, tmp_path, monkeypatch):
    _record_pilot(env.lp, "fwp.md.aaa111", "loc", fworker="pilot-loc-w1", job_id="4242", state="RUNNING")
    fw_id = _fizzle(env.lp, tmp_path, monkeypatch)
    c = env.client()
    c.login(env.token)
    status, _, page = c.get(f"/fw/{fw_id}")
    assert status == 200
    err = re.search(r'data-testid="fw-error">([^<]*)<', page)
    assert err and err.group(1) == "ValueError: invalid literal for int() with base 10: &#39;not a number&#39;"
    assert "fwp.md.aaa111" in page and ">4242<" in page and 'href="/cluster/loc"' in page
    wf = re.search(r'data-testid="fw-workflow">([^<]*)<', page)
    assert wf and "FIZZLED" in wf.group(1) and "1 FIZZLED" in wf.group(1)
    overview = c.get("/")[2]
    assert f'data-testid="fizzled-{fw_id}"' in overview and f"action-rerun-{fw_id}" in overview
    state = lambda: env.lp.fireworks.find_one({"fw_id": fw_id})["state"]   # noqa: E731
    assert json.loads(c.get(f"/api/fw/{fw_id}")[2])["live"] == {"fw-state": "FIZZLED"}
    status, text = c.act("rerun", str(fw_id))
    assert status == 200 and state() == "READY", text
    assert json.loads(c.get(f"/api/fw/{fw_id}")[2])["live"] == {"fw-state": "READY"}   # what the page polls
    status, text = c.act("rerun", str(fw_id))           # not FIZZLED any more: refused, unchanged
    assert status == 409 and "not FIZZLED" in text and state() == "READY"
    assert c.act("defuse", str(fw_id))[0] == 200 and state() == "DEFUSED"
    assert c.act("reignite", str(fw_id))[0] == 200 and state() == "READY"
    assert c.get(f"/api/fw/{fw_id}")[2].count('"archived": true') == 1   # the fizzled launch, archived by rerun


def test_cancel_a_local_pilot(env):
    res = pilot(env.cfg, "submit", "loc")
    assert res.returncode == 0, res.stderr
    job_id, job_name = res.stdout.split()
    try:
        c = env.client()
        c.login(env.token)
        page = c.get("/cluster/loc")[2]
        assert f"action-cancel-{job_name}" in page and f">{job_id}<" in page
        status, text = c.act("cancel", job_name, cluster="loc")
        assert status == 200 and "cancelled" in text, text
        def state() -> str:
            out = subprocess.run([sys.executable, "-m", "pilot.localsched", "--state", str(env.work / "localsched"),
                                  "status", job_id], capture_output=True, text=True, timeout=30).stdout
            return out.split("|")[1]

        wait_for(lambda: state() == "CANCELLED", 15, 0.2, what=f"local job {job_id} CANCELLED")
        # the pilot's output, read over the local transport: what `tail` itself prints of the file
        assert 'data-testid="pilot-log-link"' in c.get(f"/pilot/{job_name}")[2]
        status, _, page = c.get(f"/pilot/{job_name}/log")
        assert status == 200
        texts = []
        for kind in ("out", "err"):
            want = subprocess.run(["tail", "-n", "100", str(env.work / f"pilot-{job_id}.{kind}")],
                                  capture_output=True, text=True).stdout
            shown = re.search(rf'data-testid="log-{kind}">(.*?)</pre>', page, re.S)
            assert shown and html.unescape(shown.group(1)) == want
            texts.append(want)
        assert "".join(texts).strip()   # the worker wrote something: the comparison compared something
        status, text = c.act("cancel", "not-a-pilot", cluster="loc")
        assert status == 409 and "not a live pilot" in text
    finally:
        cancel_local_pilots()


# ------------------------------------------------------------------------------------------------ pages
def test_cluster_pages_are_paginated(env):
    t0 = time.time() - 10_000
    for i in range(120):
        _record_pilot(env.lp, f"fwp.md.p{i:03d}", "loc", now=t0 + i, state="COMPLETED", job_id=str(1000 + i))
    c = env.client()
    c.login(env.token)
    rows = lambda text: re.findall(r'data-testid="pilot-(fwp\.md\.p\d+)"', text)   # noqa: E731
    p1 = c.get("/cluster/loc")[2]
    assert rows(p1) == [f"fwp.md.p{i:03d}" for i in range(119, 69, -1)] and 'data-testid="page-next"' in p1
    p3 = c.get("/cluster/loc?page=3")[2]
    assert rows(p3) == [f"fwp.md.p{i:03d}" for i in range(19, -1, -1)] and 'data-testid="page-next"' not in p3
    api = json.loads(c.get("/api/cluster/loc?page=2")[2])
    assert len(api["pilots"]) == 50 and api["more"] is True and api["page"] == 2
    add_sleepers(env.lp, "md", 55)
    f1 = c.get("/fireworks?state=READY")[2]
    f2 = c.get("/fireworks?state=READY&page=2")[2]
    assert len(re.findall(r'data-testid="fw-row-', f1)) == 50 and len(re.findall(r'data-testid="fw-row-', f2)) == 5


def test_overview_json_equals_pilot_status_json(env):
    add_sleepers(env.lp, "md", 3)
    _record_pilot(env.lp, "fwp.md.live01", "loc", job_id="77", state="RUNNING")
    _record_pilot(env.lp, "fwp.md.wait01", "loc", job_id="78", state="PENDING")
    c = env.client()
    c.login(env.token)
    ours = json.loads(c.get("/api/overview")[2])
    res = pilot(env.cfg, "status", "--json")
    assert res.returncode == 0, res.stderr
    theirs = json.loads(res.stdout)
    mine = ours["status"]
    assert mine["categories"] == theirs["categories"]
    assert [x["pilots"] for x in mine["clusters"]] == [x["pilots"] for x in theirs["clusters"]]
    assert mine["needs_you"]["count"] == theirs["needs_you"]["count"]
    (loc,) = [x for x in theirs["clusters"] if x["name"] == "loc"]
    (md,) = [x for x in theirs["categories"] if x["name"] == "md"]
    live = ours["live"]
    assert live["cluster-loc-running"] == loc["pilots"]["running"] == 1
    assert live["cluster-loc-pending"] == loc["pilots"]["pending"] == 1
    assert live["category-md-READY"] == md["counts"]["READY"] == 3
    page = c.get("/")[2]
    assert re.search(r'data-testid="category-md-READY">3<', page)
    assert re.search(r'data-testid="cluster-loc-running">1<', page)
    assert 'data-testid="usage"' not in page            # no core-hours yet: no section (as in `pilot status`)
    # core-hours charged by a scheduler: the page shows the lines `pilot status` prints for them
    _record_pilot(env.lp, "fwp.md.done01", "loc", job_id="79", state="COMPLETED", end_time=time.time() - 60,
                  usage={"core_seconds": 7200, "account": "proj1", "settled": True})
    shown = re.search(r'data-testid="usage">(.*?)</pre>', c.get("/")[2], re.S)
    text = pilot(env.cfg, "status").stdout
    assert shown and "proj1" in shown.group(1)
    assert all(line.strip() in text for line in html.unescape(shown.group(1)).splitlines() if line.strip())


def test_throughput_page(env):
    c = env.client()
    c.login(env.token)
    status, _, page = c.get("/throughput")
    api = json.loads(c.get("/api/throughput")[2])
    assert status == 200
    res = pilot(env.cfg, "report", "--json")
    assert res.returncode == 0, res.stderr
    days = json.loads(res.stdout)["trajectory"]["days"]
    assert api["available"] is True and 'data-testid="plot-cumulative"' in page
    assert [(r["day"], r["cluster"], r["segments"], r["ns"]) for r in api["rows"]] == \
        [(r["day"], r["cluster"], r["segments"], r["ns"]) for r in days]
    for asset in ("/static/uPlot.iife.min.js", "/static/uPlot.min.css", "/static/throughput.js"):
        assert c.get(asset)[0] == 200
    assert c.get("/static/../app.py")[0] == 404


def test_throughput_series_by_hand():
    from pilot.dashboard.throughput import normalise_rows, series

    rows = normalise_rows([{"cluster": "b", "day": "2026-12-03", "segments": 2, "core_hours": 8.0, "ns": 5.0},
                           {"cluster": "a", "day": "2026-12-01", "segments": 1, "core_hours": 4.0, "ns": 10.0},
                           {"cluster": "a", "day": "2026-12-03", "segments": 3, "core_hours": 12.0, "ns": None,
                            "ns_unknown_segments": 3},
                           {"cluster": "(not a pilot)", "day": "2026-12-04", "segments": 1, "ns": 7.0}])
    s = series(rows)
    assert s["days"] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert s["x"] == [1796083200.0, 1796169600.0, 1796256000.0]   # `date -u -d 2026-12-01 +%s` and the next days
    assert s["clusters"]["a"]["ns"] == [10.0, 0.0, 0.0] and s["clusters"]["a"]["cumulative"] == [10.0, 10.0, 10.0]
    assert s["clusters"]["b"]["cumulative"] == [0.0, 0.0, 5.0] and s["total_ns"] == 15.0
    assert s["clusters"]["a"]["segments"] == [1.0, 0.0, 3.0]


# ------------------------------------------------------------------------------------------------ address, TLS
def test_other_addresses_need_tls(env):
    with pytest.raises(DashboardError, match=r"needs TLS. Add --tls.*ssh -L 8765:127.0.0.1:8765"):
        make_server(env.dash, "0.0.0.0", 0)
    res = pilot(env.cfg, "dashboard", "--host", "0.0.0.0", "--port", "0")
    assert res.returncode == 1 and "needs TLS" in res.stderr
    # reachable from other machines: pages read with a read-only user, or the person says --single-role
    res = pilot(env.cfg, "dashboard", "--host", "0.0.0.0", "--port", "0", "--tls")
    assert res.returncode == 1 and "read-only LaunchPad user" in res.stderr and "--single-role" in res.stderr


def test_tls_with_the_launchpads_ca(env):
    from pilot.launchpad.tls import ensure_certificates

    lp_files = ensure_certificates(env.cfg / "lpserver", ["127.0.0.1"])   # as `pilot launchpad init --host` does
    lp_pem = lp_files.server.read_bytes()
    ctx = tls_context(env.cfg, "127.0.0.1", ["dash.example.org"])
    # the LaunchPad server's certificate and key are left alone: the dashboard has its own, from the same CA
    assert lp_files.server.read_bytes() == lp_pem
    own = lp_files.server.parent / "dashboard.pem"
    assert own.stat().st_mode & 0o777 == 0o600 and own.read_bytes() != lp_pem
    server = make_server(env.dash, "127.0.0.1", 0, ctx)
    thread = serve_in_thread(server)
    try:
        ca = env.cfg / "lpserver" / "tls" / "ca.pem"
        assert ca == lp_files.ca
        client_ctx = ssl.create_default_context(cafile=str(ca))
        c = Client(server.server_address[1], tls=client_ctx)
        c.login(env.token)
        assert "Secure" in c.set_cookies[0]
        status, hdrs, _ = c.get("/")
        assert status == 200 and hdrs["strict-transport-security"].startswith("max-age=")
        with pytest.raises(ssl.SSLError):   # a client that does not trust the CA
            Client(server.server_address[1], tls=ssl.create_default_context()).get("/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_dashboard_makes_the_indexes_its_overview_reads(env):
    """Before any manager ran: the dashboard (with the credential that acts) creates the manager's demand indexes,
    which the overview's status reads its waiting-work groups from (pilot/status/shapes.py)."""
    from pilot.manager.demand import DEMAND_INDEXES

    leads = {spec["key"][0][0] for spec in env.lp.fireworks.index_information().values()}
    assert set(DEMAND_INDEXES) <= leads


def test_no_token_no_server(tmp_path, env):
    os.remove(env.cfg / TOKENS_FILE)
    with pytest.raises(DashboardError, match="pilot dashboard token add NAME"):
        make_server(env.dash, "127.0.0.1", 0)


def test_pages_read_with_the_read_only_user_actions_write_with_the_other(env, launchpad):
    if os.environ.get("MONGODB_URI"):
        pytest.skip("the users are made on the embedded server (MONGODB_URI given)")
    user = f"viewer{os.urandom(3).hex()}"
    res = pilot(env.cfg, "launchpad", "user", "add", user, "--role", "read", "--file",
                str(env.cfg / "launchpad-viewer.yaml"))
    assert res.returncode == 0, res.stderr
    try:
        dash = open_dashboard(env.cfg)
        assert dash.single_role is False and dash.read_lp is not dash.write_lp
        from pymongo.errors import OperationFailure

        with pytest.raises(OperationFailure):          # the server itself refuses the read-only user's writes
            dash.read_lp.db["pilot_clusters"].insert_one({"_id": "probe"})
        server = make_server(dash, "127.0.0.1", 0)
        thread = serve_in_thread(server)
        try:
            c = Client(server.server_address[1])
            c.login(env.token)
            status, _, page = c.get("/")
            assert status == 200 and 'data-testid="single-role"' not in page
            assert c.act("drain", "loc")[0] == 200 and "loc" in Records(launchpad.db).drained()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
            dash.read_lp.connection.close()
            dash.write_lp.connection.close()
    finally:
        pilot(env.cfg, "launchpad", "user", "remove", user)


def test_database_down_is_503_without_its_password(env, tmp_path):
    import socket

    import yaml

    with socket.socket() as s:   # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = "Sekr1tPassw0rdForTheTest"
    down = tmp_path / "down.yaml"
    down.write_text(yaml.safe_dump({"host": f"mongodb://admin:{password}@127.0.0.1:{port}/?authSource=admin",
                                    "uri_mode": True, "name": "fireworks",
                                    "mongoclient_kwargs": {"serverSelectionTimeoutMS": 300}}))
    dash = open_dashboard(env.cfg, launchpad_file=down)
    server = make_server(dash, "127.0.0.1", 0)
    thread = serve_in_thread(server)
    try:
        c = Client(server.server_address[1])
        c.login(env.token)
        for path in ("/", "/api/overview", "/cluster/loc", "/fw/1"):
            status, _, body = c.get(path)
            assert status == 503 and "did not answer" in body and password not in body, (path, status, body)
        status, text = c.act("drain", "loc")
        assert status == 503 and password not in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        dash.write_lp.connection.close()
