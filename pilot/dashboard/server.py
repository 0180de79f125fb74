"""Serve the dashboard: which LaunchPads, which address, TLS or not, and the server's threads.

* :func:`open_dashboard` reads the config dir (its config when it loads, its LaunchPad files) into a
  :class:`~pilot.dashboard.app.Dashboard`;
* :func:`check_address` enforces the rule: loopback by default; any other address only with TLS;
* :func:`tls_context` reuses the LaunchPad's TLS material (``CONFIG_DIR/lpserver/tls``, what
  ``pilot launchpad init --host`` makes): its CA, and its server certificate reissued with the dashboard's
  names added (the names it had are kept, so the LaunchPad's clients go on verifying it);
* :func:`make_server` is a :class:`http.server.ThreadingHTTPServer` (one thread per request); under TLS the
  handshake happens in the request's thread, so a silent client never holds up the others.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pilot.config.models_notify import is_loopback
from pilot.dashboard.app import Dashboard
from pilot.dashboard.handler import Handler

log = logging.getLogger("pilot.dashboard")

__all__ = ["READ_LAUNCHPAD_FILE", "DashboardError", "DashboardServer", "check_address", "is_loopback",
           "make_server", "open_dashboard", "tls_context"]

#: The read-only LaunchPad file the dashboard reads with when it exists (``pilot launchpad user add viewer
#: --role read`` writes it).
READ_LAUNCHPAD_FILE = "launchpad-viewer.yaml"


class DashboardError(Exception):
    """The dashboard cannot start as asked; the message says what to do."""


def check_address(host: str, tls: bool, config_dir: Path) -> None:
    """Raise :class:`DashboardError` for a non-loopback address without TLS (the message names the fix)."""
    if is_loopback(host) or tls:
        return
    raise DashboardError(
        f"--host {host} is not a loopback address: off loopback the dashboard needs TLS. Add --tls (a "
        f"certificate from the LaunchPad's CA in {config_dir}/lpserver/tls; give the name the laptop "
        "uses with --tls-name), or keep the default 127.0.0.1 and reach it through ssh: "
        "`ssh -L 8765:127.0.0.1:8765 FILESERVER`")


def _load_config(config_dir: Path) -> tuple[Any, list[str]]:
    from pilot.config import CLUSTERS_DIR, PILOT_FILE, ConfigError, load_config

    if not ((config_dir / PILOT_FILE).exists() or (config_dir / CLUSTERS_DIR).is_dir()):
        return None, [f"no config in {config_dir}: clusters known from the records only; no cancel"]
    try:
        return load_config(config_dir), []
    except ConfigError as e:
        first = e.problems[0] if e.problems else e
        return None, [f"the config in {config_dir} does not load ({first}): no cancel; see `pilot config check`"]


def open_dashboard(config_dir: Path, launchpad_file: Path | None = None, read_launchpad_file: Path | None = None,
                   tls: bool = False) -> Dashboard:
    """The dashboard of ``config_dir``: acts through the config dir's LaunchPad file (or ``launchpad_file``),
    reads through ``read_launchpad_file`` (default ``CONFIG_DIR/launchpad-viewer.yaml`` when it exists; else
    the same file as the actions).

    Raises
    ------
    DashboardError
        A LaunchPad file is missing or unusable (the message names the file and the command that writes it).
    """
    from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, open_launchpad
    from pilot.status import describe_launchpad

    config, warnings = _load_config(config_dir)
    try:
        lpf = find_launchpad_file(config_dir, launchpad_file, pilot=config.pilot if config else None)
        write_lp = open_launchpad(lpf, quiet=True)
        read_path = read_launchpad_file or (config_dir / READ_LAUNCHPAD_FILE)
        single = read_launchpad_file is None and not read_path.is_file()
        read_lp = write_lp if single else open_launchpad(
            find_launchpad_file(config_dir, read_path, option="--read-launchpad-file"), quiet=True)
    except LaunchPadUnavailable as e:
        raise DashboardError(str(e)) from None
    if single:
        log.warning("one LaunchPad file (%s): the dashboard reads with the credential that acts; add a read-only "
                    "user (`pilot launchpad user add viewer --role read`) to read with that one", lpf.path)
    _index_for_status(write_lp)
    return Dashboard(config_dir=config_dir, config=config, read_lp=read_lp, write_lp=write_lp, single_role=single,
                     tls=tls, warnings=warnings, launchpad_info=describe_launchpad(read_lp))


def _index_for_status(lp: Any) -> None:
    """Create the manager's demand indexes if no manager has yet (:func:`pilot.manager.demand.ensure_demand_indexes`,
    with the credential that acts): the overview's status reads its waiting-work groups from them
    (:mod:`pilot.status.shapes`: 0.3 s instead of 1.3 s at 100,000 Fireworks). Without the right, a warning."""
    from pymongo.errors import PyMongoError

    from pilot.manager.demand import ensure_demand_indexes

    try:
        why = ensure_demand_indexes(lp.fireworks)
    except PyMongoError as exc:
        why = f"could not index the LaunchPad's fireworks ({type(exc).__name__}): the overview will be slower"
    if why:
        log.warning("%s", why)


#: The dashboard's certificate and key, beside the LaunchPad server's in ``CONFIG_DIR/lpserver/tls``
DASHBOARD_PEM = "dashboard.pem"


def tls_context(config_dir: Path, host: str, names: list[str]) -> ssl.SSLContext:
    """A server context with a certificate of its own (:data:`DASHBOARD_PEM`: the LaunchPad server's key is
    never served by a second program) from the LaunchPad's CA, valid for ``host`` and ``names``. One CA: a
    browser, like the pilots, trusts ``ca.pem`` once. Without a LaunchPad CA (a MongoDB of one's own) one is
    made, and said so."""
    from pilot.launchpad.control import SERVER_DIR
    from pilot.launchpad.tls import TLSSetupError, ensure_certificates, normalize_name, server_context

    wanted = [n for n in (normalize_name(x) for x in [host, *names, socket.gethostname()]) if n]
    try:
        files = ensure_certificates(config_dir / SERVER_DIR, [n for n in wanted if n not in ("0.0.0.0", "::")],
                                    server_file=DASHBOARD_PEM)
        ctx = server_context(files)
    except TLSSetupError as e:
        raise DashboardError(f"TLS: {e}") from None
    if files.new_ca:
        log.warning("TLS: no LaunchPad CA in %s yet: made one (%s); the browser must trust it", files.ca.parent,
                    files.ca)
    log.info("TLS: certificate %s for %s, from the CA %s (SHA-256 %s): the laptop's browser trusts that CA",
             files.server, ", ".join(files.names), files.ca, files.ca_fingerprint)
    return ctx


#: Connections served at once (each has a thread); browsers open about 6 per tab.
MAX_CONNECTIONS = 64


class DashboardServer(ThreadingHTTPServer):
    """One thread per request; TLS (when given) handshaken in that thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dashboard = dashboard
        self.ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most :data:`MAX_CONNECTIONS` at once: one more is closed at once (a flood of
        connections, before any login, costs no more threads than that)."""
        if not self._slots.acquire(blocking=False):
            log.warning("%s: connection refused: %d connections open already", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or broke TLS) is one log line; anything else keeps its traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            log.info("%s: connection ended: %s", client_address[0], type(exc).__name__)
            return
        log.exception("request from %s failed", client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            from pilot.launchpad.tls import handshake

            tls = handshake(self.ssl_context, request, str(client_address[0]))
            if tls is None:
                return
            tls.settimeout(60)
            try:
                super().finish_request(tls, client_address)
            finally:
                tls.close()   # the base class closes the plain socket it was given, not this one
            return
        request.settimeout(60)
        super().finish_request(request, client_address)


def make_server(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8765,
                ssl_context: ssl.SSLContext | None = None) -> DashboardServer:
    """Bind (port 0: any free port; ``server.server_address`` says which). Raises :class:`DashboardError`
    when the address is not loopback and there is no TLS, or it cannot be bound."""
    check_address(host, ssl_context is not None, dashboard.config_dir)
    if not dashboard.tokens.list():
        raise DashboardError(f"no dashboard token in {dashboard.tokens.path}: make one with "
                             "`pilot dashboard token add NAME` (it is printed once), then log in with it")
    try:
        return DashboardServer((host, port), dashboard, ssl_context)
    except OSError as e:
        raise DashboardError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_in_thread(server: DashboardServer) -> threading.Thread:
    """Run ``server`` in a thread (tests, the demo); stop it with ``server.shutdown(); server.server_close()``."""
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pilot-dashboard",
                         daemon=True)
    t.start()
    return t
