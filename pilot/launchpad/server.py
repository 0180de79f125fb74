"""The embedded LaunchPad server process: TCP listener (TLS off loopback), data dir, journal, snapshots, shutdown.

Lifecycle of :meth:`LaunchPadServer.run`:

1. decide where to listen and whether TLS is on (:func:`pilot.launchpad.listen.plan_listen`): a name that does
   not resolve, a bad ``--tls-name`` or ``--no-tls`` off loopback exit 2 before anything is touched;
2. create and lock the data dir (``server.lock``, flock), write ``server.pid`` (exit 1 on failure); the data
   dir is 0700 and every file in it 0600 (an older one is tightened: :func:`pilot.configdir.tighten_tree`);
3. bind the port (exit 1 when busy); with TLS, make or reuse the CA and server certificate in ``DATA/tls``;
4. restore: snapshot + journals, dropping a torn last record; compact right away if anything was replayed;
5. accept connections (:mod:`pilot.launchpad.connections`: one thread each, which also runs the TLS
   handshake; the limits of :class:`pilot.launchpad.limits.Limits`), write ``server.json``
   ``{"pid", "host", "port", "listen", "tls", ...}``, print the banner;
6. on SIGTERM/SIGINT: stop accepting, refuse new commands, write a final snapshot, remove pid/json files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.configdir import open_private, private_dir, tighten_tree, write_private
from pilot.launchpad import listen, tls, wire
from pilot.launchpad.backend import Backend, error_reply
from pilot.launchpad.connections import Connections
from pilot.launchpad.credentials import ADMIN_FILE, ensure_admin
from pilot.launchpad.journal import (
    JOURNAL_MAGIC,
    Journal,
    JournalFailure,
    failure_code,
    fsync_dir,
    journal_files,
    write_snapshot,
)
from pilot.launchpad.limits import Limits
from pilot.launchpad.listen import ClientAddress, ListenPlan
from pilot.launchpad.listen import StartupError as StartupError  # the CLI's name for it
from pilot.launchpad.recovery import CorruptDataError, iter_ops, plan_restore, replay
from pilot.launchpad.store import release_memory
from pilot.launchpad.users import authorize

log = logging.getLogger(__name__)

DEFAULT_PORT = 27117
DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_INTERVAL_S = 300.0
#: While writes are refused (a journal write, rotation or snapshot failed), try a snapshot this often.
RESUME_RETRY_S = 1.0
PID_FILE = "server.pid"
INFO_FILE = "server.json"
LOCK_FILE = "server.lock"


def read_server_info(data_dir: Path) -> dict[str, Any] | None:
    """``server.json`` of a data dir, or None if missing/unreadable."""
    try:
        data = json.loads((Path(data_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class ServerOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    compact_bytes: int = DEFAULT_COMPACT_BYTES
    compact_interval: float = DEFAULT_COMPACT_INTERVAL_S
    #: None: TLS exactly when off loopback; True also on loopback; False is refused off loopback
    tls: bool | None = None
    #: more names (or addresses) for the server certificate: those clients use that the machine does not know
    tls_names: tuple[str, ...] = ()
    #: connections, idle timeout mid-message, message size, receive budget (pilot.launchpad.limits)
    limits: Limits = field(default_factory=Limits)


class LaunchPadServer:
    """One server process (see the module docstring for its lifecycle)."""

    def __init__(self, opts: ServerOptions) -> None:
        self.opts = opts
        self.data_dir = Path(opts.data_dir).expanduser().absolute()
        self.backend = Backend()
        self.journal: Journal | None = None
        self._lock_fd: int | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._compact_event = threading.Event()
        self._compact_lock = threading.Lock()
        self._last_compact = time.monotonic()
        self.connections: Connections | None = None
        self.port = opts.port
        self.host = opts.host
        self.plan: ListenPlan | None = None
        self.tls_files: tls.TLSFiles | None = None
        self._ssl: ssl.SSLContext | None = None
        self.snapshots = 0
        self._snapshot_bytes = 0
        self._refused_since: float | None = None  # writes refused since (see _refuse)

    # ------------------------------------------------------------------------------- startup
    def _prepare_data_dir(self) -> None:
        d = self.data_dir
        hint = "choose a writable directory with --data"
        try:
            private_dir(d)  # 0700; an older data dir is tightened below, files included
        except FileExistsError as exc:
            raise StartupError(f"cannot use data dir {d}: it exists and is not a directory; {hint}") from exc
        except OSError as exc:
            raise StartupError(f"cannot create data dir {d}: {exc.strerror}; {hint}") from exc
        if not d.is_dir():
            raise StartupError(f"cannot use data dir {d}: not a directory; {hint}")
        tighten_tree(d)
        try:
            fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot write in data dir {d}: {exc.strerror}; {hint}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            other = "unknown"
            try:
                other = (d / PID_FILE).read_text().strip() or other
            except OSError:
                pass
            # `pilot launchpad stop` alone stops the server of the default config dir's data dir: name this one
            stop = f"pilot launchpad stop --data {shlex.quote(str(d))}"
            raise StartupError(f"data dir {d} is in use by another embedded LaunchPad server (pid {other}); "
                               f"stop it with `{stop}` or use another --data") from exc
        self._lock_fd = fd
        try:
            write_private(d / PID_FILE, f"{os.getpid()}\n", fsync=True)
            probe = d / ".write-probe"
            with open_private(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StartupError(f"cannot write in data dir {d}: {exc.strerror}; {hint}") from exc

    def _bind(self) -> None:
        assert self.plan is not None
        addr = self.plan.address
        try:
            sock = listen.bind(self.plan, self.opts.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "address already in use (another server or a MongoDB?); choose another --port (--port 0 " \
                      "picks a free one)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = f"{addr} is not an address of this machine; give one of its addresses (or 0.0.0.0) as --host"
            else:
                why = f"{exc.strerror}; choose another --port (--port 0 picks a free one)"
            raise StartupError(f"cannot listen on {addr}:{self.opts.port}: {why}") from exc
        self._listener = sock
        self.host = self.plan.client_host
        self.port = sock.getsockname()[1]

    def _setup_tls(self) -> None:
        """With TLS: CA and server certificate in DATA/tls (made, reused or reissued), and the server context."""
        assert self.plan is not None
        if not self.plan.tls:
            return
        try:
            self.tls_files = tls.ensure_certificates(self.data_dir, listen.certificate_names(self.plan))
            self._ssl = tls.server_context(self.tls_files)
        except tls.TLSSetupError as exc:
            raise StartupError(str(exc)) from exc
        f = self.tls_files
        log.info("TLS: certificate %s (%s) for %s; CA %s (%s, SHA-256 %s)", f.server,
                 "issued now" if f.reissued else "reused", ", ".join(f.names), f.ca, "new" if f.new_ca else "reused",
                 f.ca_fingerprint)

    @property
    def client_address(self) -> ClientAddress:
        """Where and how clients reach this server: the host and port its LaunchPad files name, and the
        ``MongoClient`` keyword arguments for TLS (``{}`` without)."""
        host = self.plan.client_host if self.plan is not None else self.host
        return ClientAddress(host, self.port, tls.client_kwargs(self.data_dir, self._ssl is not None))

    def _restore(self) -> int:
        """Load snapshot + journals; returns the number of documents.

        Damage (anything but a torn tail of the newest journal) is a StartupError naming the file, the byte and
        the valid records after it; nothing in the data dir is changed then. Only a clean plan is replayed and
        compacted (which deletes the journals the new snapshot covers)."""
        t0 = time.perf_counter()
        try:
            plan = plan_restore(self.data_dir)
        except CorruptDataError as exc:
            raise StartupError(str(exc)) from exc
        except OSError as exc:  # reading a file, or keeping a torn tail aside on a full disk
            where = exc.filename or self.data_dir
            raise StartupError(f"cannot restore data dir {self.data_dir}: {where}: {exc.strerror or exc}") from exc
        for w in plan.warnings:
            log.warning("%s", w)
            print(f"warning: {w}", flush=True)
        nops = replay(self.backend, iter_ops(plan))  # restored effects are not re-journaled
        replayed = sum(len(recs) for _g, _p, recs in plan.journals)
        gens = [g for g, _p in journal_files(self.data_dir)]
        gen = max(gens + [plan.snapshot.gen if plan.snapshot else 1, 1])
        stale = bool(plan.stale)
        del plan  # the records read (as large as the data dir) are garbage now: give their memory back
        release_memory()
        try:
            self.journal = Journal(self.data_dir, gen)
        except OSError as exc:
            raise StartupError(f"cannot open the journal in data dir {self.data_dir}: {exc.strerror or exc}") from exc
        self.journal.on_failure = self._journal_failed
        self.backend.journal_append = self.journal.append
        self.backend.journal_seq = self._read_seq
        self.backend.extra_stats = self._journal_stats
        ndocs = sum(len(c["docs"]) for c in self._export_locked())
        log.info("restored %d documents (%d ops, %d journal records) in %.2fs", ndocs, nops, replayed,
                 time.perf_counter() - t0)
        if replayed or stale or len(gens) > 1:
            self._try_compact()
        return ndocs

    def _export_locked(self) -> list[dict[str, Any]]:
        with self.backend.lock:
            return self.backend.export()

    def _read_seq(self) -> int:
        """The journal record a read waits for: the last one appended, so that no reply shows what a crash could
        take back; while the journal is poisoned (writes refused) the last durable one, so that reads go on."""
        j = self.journal
        if j is None:
            return 0
        return j.last_seq if j.failure is None else j.durable_seq

    def _journal_stats(self) -> dict[str, Any]:
        j = self.journal
        if j is None:
            return {}
        out: dict[str, Any] = {
            "journal": {"generation": j.gen, "size": j.size, "records": j.records, "fsyncs": j.fsyncs,
                        "fsyncSeconds": j.fsync_seconds, "bytesWritten": j.bytes_written},
            "snapshots": self.snapshots, "dataDir": str(self.data_dir), "pid": os.getpid()}
        reason, since = self.backend.failure, self._refused_since
        if reason:
            out["writesRefused"] = {"reason": reason, "code": self.backend.failure_code,
                                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(since or 0))}
        return out

    # --------------------------------------------------------------------------- refusing writes
    def _refuse(self, reason: str, code: int) -> None:
        """Refuse writes (reads go on) until a snapshot succeeds again: the server cannot keep them now."""
        msg = (f"the embedded LaunchPad server refuses writes: {reason} (data dir {self.data_dir}); every "
               "acknowledged write is kept, reads go on, and writes resume by themselves once a snapshot can be "
               f"written there again (retried every {RESUME_RETRY_S:g} s)")
        first = self.backend.failure is None
        self.backend.failure_code = code
        self.backend.failure = msg
        if first:
            self._refused_since = time.time()
            log.error("%s", msg)

    def _refusing(self) -> bool:
        """Writes are refused, or the journal failed (and the hook is about to refuse them)."""
        return self.backend.failure is not None or (self.journal is not None and self.journal.failure is not None)

    def _journal_failed(self, exc: JournalFailure) -> None:
        """The journal's hook (flush lock held): refuse writes at once, before the failed write is answered."""
        self._refuse(exc.reason, exc.code)
        exc.args = (self.backend.failure,)  # whoever reports the exception says what the server does about it

    def _try_compact(self) -> bool:
        """Compact; on failure refuse writes with the reason (the compactor retries). True on success."""
        try:
            self.compact()
        except JournalFailure as exc:
            self._refuse(exc.reason, exc.code)
            return False
        except OSError as exc:
            what = f"writing a snapshot or a new journal file failed: {exc.strerror or exc}"
            self._refuse(what, failure_code(exc))
            return False
        if self.journal is not None and self.journal.failure is not None:
            return False  # the journal failed while the snapshot was written: the next try reopens it
        if self.backend.failure is not None:
            since = self._refused_since or time.time()
            self.backend.failure = None
            self._refused_since = None
            log.warning("writes resumed in data dir %s (refused for %.1f s): snapshot written", self.data_dir,
                        time.time() - since)
        return True

    # ------------------------------------------------------------------------------- serving
    def _dispatch(self, req: wire.Request, conn_id: int, peer: str) -> dict[str, Any]:
        """Run one command for the connection layer (:mod:`pilot.launchpad.connections`); its reply is returned
        once the command's effects are durable."""
        reply, seq = self.backend.execute(req.db, req.command, req.sequences, conn_id, peer)
        if seq and self.journal is not None:
            try:
                self.journal.wait_durable(seq)
            except JournalFailure as exc:  # writes are refused already (the journal's on_failure hook)
                reply = error_reply(str(exc), exc.code)
        if self.journal is not None and self.journal.size >= self.opts.compact_bytes:
            self._compact_event.set()
        return reply

    def _authorize(self, conn_id: int, db: str, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The Unauthorized reply for a command the connection may not run (for refusals made before dispatch)."""
        name = next(iter(cmd), "")
        return authorize(self.backend.principal(conn_id), name.lower(), name, db, cmd)

    # ----------------------------------------------------------------------------- compaction
    def compact(self) -> None:
        """Write a snapshot of everything in a new generation; then delete the journals it covers.

        Normally the journal rotates to a new file first (opened before the old one is closed) and the
        documents are encoded with the command lock held; the file is written without it. When the current
        journal file holds no record yet (a retry after a failed snapshot), the snapshot takes its generation
        and no file is opened. When the journal is poisoned (a write or fsync failed) the snapshot of memory is
        what makes the writes since the last good record durable: it is written with the lock held (writes are
        refused anyway) and only then does the journal reopen in the snapshot's generation.

        Raises OSError or JournalFailure; nothing is deleted then, and the journal still holds every
        acknowledged write.
        """
        assert self.journal is not None
        j = self.journal
        with self._compact_lock:
            t0 = time.perf_counter()
            with self.backend.lock:
                if j.failure is not None:
                    new_gen = j.gen + 1
                    colls = self.backend.export()
                    path = write_snapshot(self.data_dir, new_gen, colls)
                    j.reopen(new_gen)
                else:
                    new_gen = j.gen if j.empty else j.gen + 1
                    if new_gen != j.gen:
                        j.rotate(new_gen)
                    colls = self.backend.export()
                    path = None
            t_locked = time.perf_counter() - t0
            if path is None:
                path = write_snapshot(self.data_dir, new_gen, colls)
            self._snapshot_bytes = path.stat().st_size
            for gen, old in journal_files(self.data_dir):
                if gen < new_gen:
                    old.unlink()
            fsync_dir(self.data_dir)
            self._last_compact = time.monotonic()
            self.snapshots += 1
            log.info("snapshot generation %d: %d collections, %d documents in %.3fs (%.3fs with the lock held)",
                     new_gen, len(colls), sum(len(c["docs"]) for c in colls), time.perf_counter() - t0, t_locked)

    def _compactor(self) -> None:
        while not self._stop.is_set():
            wait = RESUME_RETRY_S if self._refusing() else min(5.0, self.opts.compact_interval)
            self._compact_event.wait(timeout=wait)
            self._compact_event.clear()
            if self._stop.is_set() or self.journal is None:
                return
            if self._refusing():
                self._try_compact()  # resumes writes when it succeeds
                continue
            size = self.journal.size
            stale = time.monotonic() - self._last_compact >= self.opts.compact_interval
            # A timed snapshot of a big database pauses commands while it is encoded: only take one when the
            # journal it replaces is worth it (a quarter of the snapshot), or the database is small.
            worth = self._snapshot_bytes < 8 * 2**20 or 4 * size >= self._snapshot_bytes
            if size >= self.opts.compact_bytes or (stale and size > len(JOURNAL_MAGIC) and worth):
                self._try_compact()

    # ------------------------------------------------------------------------------- lifecycle
    def _request_stop(self, signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        self._stop.set()

    def _start(self) -> int:
        """Steps 1-4 of the module docstring; returns the number of documents restored."""
        # refusals before touching anything
        self.plan = listen.plan_listen(self.opts.host, self.opts.tls, self.opts.tls_names)
        self._prepare_data_dir()
        try:
            self._bind()
            self._setup_tls()
            ndocs = self._restore()
            ensure_admin(self.backend, self.data_dir, self.client_address,  # first admin, DATA/my_launchpad.yaml
                         durable=self.journal.wait_durable if self.journal else None)
            return ndocs
        except BaseException:
            (self.data_dir / PID_FILE).unlink(missing_ok=True)
            self._release()
            raise

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down cleanly. Raises StartupError before serving."""
        ndocs = self._start()
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        assert self._listener is not None
        self.connections = Connections(self._listener, self.opts.limits, self._dispatch, self._authorize,
                                       self.backend.connection_closed, self._ssl)
        self.connections.start()
        journal_stats, conns = self.backend.extra_stats, self.connections
        self.backend.extra_stats = lambda: {**journal_stats(), "connections": conns.stats()}  # pilotStats
        threading.Thread(target=self._compactor, daemon=True, name="compactor").start()
        assert self.plan is not None
        write_private(self.data_dir / INFO_FILE, json.dumps(
            {"pid": os.getpid(), "host": self.host, "port": self.port, "listen": self.plan.address,
             "tls": self._ssl is not None, "data": str(self.data_dir),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n", fsync=True)
        self._banner(ndocs)
        while not self._stop.wait(0.5):
            pass
        self.shutdown()
        return 0

    def _banner(self, ndocs: int) -> None:
        """Where it listens, whether TLS is on (and what clients verify it with), and the admin's LaunchPad file."""
        assert self.plan is not None
        p = self.plan
        where = f"[{p.address}]" if ":" in p.address else p.address
        scope = ("" if not (p.wildcard or p.loopback) else " (loopback: this machine only)" if p.loopback
                 else " (every IPv4 address of this machine)" if p.family == socket.AF_INET
                 else " (every address of this machine)")
        if self.tls_files is not None:
            tls_line = (f"TLS on: clients verify the server with the CA {self.tls_files.ca}; the certificate names "
                        f"{', '.join(self.tls_files.names)}")
        else:
            tls_line = "TLS off (loopback; --tls turns it on)"
        print(f"pilot launchpad server: listening on {where}:{self.port}{scope}, data {self.data_dir} "
              f"({ndocs} documents), pid {os.getpid()}", flush=True)
        print(tls_line, flush=True)
        print(f"admin LaunchPad file: {self.data_dir / ADMIN_FILE} (clients use host {self.host}, port {self.port})",
              flush=True)

    def shutdown(self) -> None:
        """Stop accepting, refuse new commands, final snapshot, remove server.json/server.pid."""
        if self._listener is not None:
            self._listener.close()
        with self.backend.lock:
            self.backend.closing = True
        try:
            if self.journal is not None and not self._try_compact():
                log.error("no final snapshot in %s: %s", self.data_dir, self.backend.failure)
        finally:
            if self.journal is not None:
                try:
                    self.journal.close()
                except JournalFailure as exc:
                    log.error("%s", exc)
            if self.connections is not None:
                self.connections.close_all()
            st = self.backend.stats
            total = sum(st.count.values())
            log.info("served %d commands (%d errors)", total, st.errors)
            for name in (INFO_FILE, PID_FILE):
                try:
                    (self.data_dir / name).unlink()
                except FileNotFoundError:
                    pass
            self._release()
            final = "final snapshot" if self.backend.failure is None else "NO final snapshot (see the log)"
            print(f"pilot launchpad server: stopped ({final} in {self.data_dir})", flush=True)

    def _release(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
