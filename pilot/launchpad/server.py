"""The embedded LaunchPad server process: TCP listener (TLS off loopback), data dir, journal, snapshots, shutdown.

Lifecycle of :meth:`LaunchPadServer.run`:

1. decide where to listen and whether TLS is on (:func:`pilot.launchpad.listen.plan_listen`): a name that does
   not resolve, a bad ``--tls-name`` or ``--no-tls`` off loopback exit 2 before anything is touched;
2. create and lock the data dir (``server.lock``, flock), write ``server.pid`` (exit 1 on failure); the data
   dir is 0700 and every file in it 0600 (an older one is tightened: :func:`pilot.configdir.tighten_tree`);
3. bind the port (exit 1 when busy); with TLS, make or reuse the CA and server certificate in ``DATA/tls``;
4. restore: snapshot + journals, dropping a torn last record; compact right away if anything was replayed;
5. accept connections (one thread each, which also runs the TLS handshake), write ``server.json``
   ``{"pid", "host", "port", "listen", "tls", ...}``, print the banner;
6. on SIGTERM/SIGINT: stop accepting, refuse new commands, write a final snapshot, remove pid/json files.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import shlex
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson

from pilot.configdir import open_private, private_dir, tighten_tree, write_private
from pilot.launchpad import listen, tls, wire
from pilot.launchpad.backend import Backend, error_reply
from pilot.launchpad.credentials import ADMIN_FILE, ensure_admin
from pilot.launchpad.journal import (
    JOURNAL_MAGIC,
    CorruptDataError,
    Journal,
    JournalFailure,
    fsync_dir,
    iter_ops,
    journal_files,
    plan_restore,
    write_snapshot,
)
from pilot.launchpad.listen import ClientAddress, ListenPlan
from pilot.launchpad.listen import StartupError as StartupError  # the CLI's name for it

log = logging.getLogger(__name__)

DEFAULT_PORT = 27117
DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_INTERVAL_S = 300.0
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
        self._conn_ids = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.port = opts.port
        self.host = opts.host
        self.plan: ListenPlan | None = None
        self.tls_files: tls.TLSFiles | None = None
        self._ssl: ssl.SSLContext | None = None
        self.snapshots = 0
        self._snapshot_bytes = 0

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
        """Load snapshot + journals; returns the number of documents."""
        t0 = time.perf_counter()
        try:
            plan = plan_restore(self.data_dir)
        except CorruptDataError as exc:
            raise StartupError(str(exc)) from exc
        for w in plan.warnings:
            log.warning("%s", w)
            print(f"warning: {w}", flush=True)
        nops = 0
        with self.backend.lock:
            for op in iter_ops(plan):
                self.backend.apply(op)
                nops += 1
            self.backend.tracker.collect()  # rebuild the hash indexes; restored effects are not re-journaled
        replayed = sum(len(recs) for _g, _p, recs in plan.journals)
        gens = [g for g, _p in journal_files(self.data_dir)]
        gen = max(gens + [plan.snapshot.gen if plan.snapshot else 1, 1])
        self.journal = Journal(self.data_dir, gen)
        self.backend.journal_append = self.journal.append
        self.backend.journal_seq = lambda: self.journal.last_seq if self.journal else 0
        self.backend.extra_stats = self._journal_stats
        ndocs = sum(len(c._documents) for d in self.backend.store.database_stores() for c in d.collection_stores())
        log.info("restored %d documents (%d ops, %d journal records) in %.2fs", ndocs, nops, replayed,
                 time.perf_counter() - t0)
        if replayed or plan.stale or len(gens) > 1:
            self.compact()
        return ndocs

    def _journal_stats(self) -> dict[str, Any]:
        j = self.journal
        if j is None:
            return {}
        return {"journal": {"generation": j.gen, "size": j.size, "records": j.records, "fsyncs": j.fsyncs,
                            "fsyncSeconds": j.fsync_seconds, "bytesWritten": j.bytes_written},
                "snapshots": self.snapshots, "dataDir": str(self.data_dir), "pid": os.getpid()}

    # ------------------------------------------------------------------------------- serving
    def _accept_loop(self) -> None:
        assert self._listener is not None
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            sock.settimeout(None)
            threading.Thread(target=self._serve_conn, args=(sock, f"{peer[0]}:{peer[1]}"), daemon=True,
                             name=f"conn-{peer[1]}").start()

    def _serve_conn(self, sock: socket.socket, peer: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:  # here, not in the accept loop: a silent client delays nobody else
            wrapped = tls.handshake(self._ssl, sock, peer)
            if wrapped is None:
                return
            sock = wrapped
        conn_id = next(self._conn_ids)
        with self._conns_lock:
            self._conns.add(sock)
        try:
            while True:
                try:
                    request_id, opcode, body = wire.read_message(sock)
                    req = wire.parse_request(request_id, opcode, body)
                except wire.ProtocolError as exc:
                    log.warning("closing connection from %s: %s", peer, exc)
                    return
                if "$legacyQuery" in req.command:
                    reply = {"$err": f"legacy OP_QUERY on {req.command['$legacyQuery']} is not supported; use a "
                                     "driver that speaks OP_MSG (pymongo >= 3.7)", "code": 59, "ok": 0.0}
                    seq = 0
                else:
                    reply, seq = self.backend.execute(req.db, req.command, req.sequences, conn_id, peer)
                if seq and self.journal is not None:
                    try:
                        self.journal.wait_durable(seq)
                    except JournalFailure as exc:
                        self.backend.failure = str(exc)
                        log.error("%s", exc)
                        reply = error_reply(str(exc), 1)
                if self.journal is not None and self.journal.size >= self.opts.compact_bytes:
                    self._compact_event.set()
                if req.more_to_come:
                    continue
                try:
                    data = wire.encode_reply(req, reply)
                except (bson.errors.InvalidDocument, OverflowError, ValueError) as exc:
                    data = wire.encode_reply(req, error_reply(f"reply cannot be encoded: {exc}", 1))
                if len(data) > wire.MAX_MESSAGE_SIZE:
                    data = wire.encode_reply(req, error_reply(
                        f"reply of {len(data)} bytes exceeds the maximum message size; use a smaller batchSize", 10334))
                sock.sendall(data)
        except (ConnectionError, OSError):
            return
        finally:
            with self._conns_lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass
            self.backend.connection_closed(conn_id)  # hook: the cursors this connection owned are discarded

    # ----------------------------------------------------------------------------- compaction
    def compact(self) -> None:
        """Rotate the journal and write a snapshot of everything; delete journals the snapshot covers."""
        assert self.journal is not None
        with self._compact_lock:
            t0 = time.perf_counter()
            with self.backend.lock:
                new_gen = self.journal.gen + 1
                self.journal.rotate(new_gen)
                colls = self.backend.export()
            t_locked = time.perf_counter() - t0
            path = write_snapshot(self.data_dir, new_gen, colls)
            self._snapshot_bytes = path.stat().st_size
            for gen, path in journal_files(self.data_dir):
                if gen < new_gen:
                    path.unlink()
            fsync_dir(self.data_dir)
            self._last_compact = time.monotonic()
            self.snapshots += 1
            log.info("snapshot generation %d: %d collections, %d documents in %.3fs (%.3fs with the lock held)",
                     new_gen, len(colls), sum(len(c["docs"]) for c in colls), time.perf_counter() - t0, t_locked)

    def _compactor(self) -> None:
        while not self._stop.is_set():
            self._compact_event.wait(timeout=min(5.0, self.opts.compact_interval))
            self._compact_event.clear()
            if self._stop.is_set() or self.journal is None:
                return
            size = self.journal.size
            stale = time.monotonic() - self._last_compact >= self.opts.compact_interval
            # A timed snapshot of a big database pauses commands while it is encoded: only take one when the
            # journal it replaces is worth it (a quarter of the snapshot), or the database is small.
            worth = self._snapshot_bytes < 8 * 2**20 or 4 * size >= self._snapshot_bytes
            if size >= self.opts.compact_bytes or (stale and size > len(JOURNAL_MAGIC) and worth):
                try:
                    self.compact()
                except JournalFailure as exc:
                    self.backend.failure = str(exc)
                    log.error("%s", exc)
                except OSError as exc:
                    log.error("writing a snapshot in %s failed: %s (the journal still holds every write; "
                              "will retry)", self.data_dir, exc)

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
        threading.Thread(target=self._accept_loop, daemon=True, name="accept").start()
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
            if self.journal is not None and self.backend.failure is None:
                self.compact()
        finally:
            if self.journal is not None:
                try:
                    self.journal.close()
                except JournalFailure as exc:
                    log.error("%s", exc)
            with self._conns_lock:
                for s in list(self._conns):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            st = self.backend.stats
            total = sum(st.count.values())
            log.info("served %d commands (%d errors)", total, st.errors)
            for name in (INFO_FILE, PID_FILE):
                try:
                    (self.data_dir / name).unlink()
                except FileNotFoundError:
                    pass
            self._release()
            print(f"pilot launchpad server: stopped (final snapshot in {self.data_dir})", flush=True)

    def _release(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
