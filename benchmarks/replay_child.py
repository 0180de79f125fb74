"""The manager of the replay benchmark, in a process of its own: the real :class:`pilot.manager.cycle.Manager`
with the real config files, its own LaunchPad client and a clock the benchmark sets before each cycle.

Why a process of its own: its CPU time and peak RSS are then the manager's alone (the simulated pilots and
schedulers live in the benchmark's process), as in the scale benchmark.

The only thing replaced is the transport (:class:`PipeTransport`, given to the manager as its
``transport_factory``): each command and upload goes over a pipe to the benchmark, whose simulated SLURM
answers with the real programs' text. The protocol is one JSON object per line: the benchmark sends
``{"op": "cycle", "now": T}`` and answers the requests (``run``, ``put``) until this process sends
``{"op": "done", ...}``; ``{"op": "exit"}`` ends it with its totals (``{"op": "bye", ...}``).

Run as ``python -m benchmarks.replay_child --config-dir DIR --db NAME`` with the database URI in
``PILOT_BENCH_URI`` (it carries a password: argv is visible in ps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from pilot.transport.base import CompletedCommand, FileStat, Transport
from pilot.transport.errors import TransportError

URI_ENV = "PILOT_BENCH_URI"


class Channel:
    """Request/answer lines over two pipes; the manager's cluster threads take turns (a lock)."""

    def __init__(self, rfile: IO[str], wfile: IO[str]) -> None:
        self.rfile, self.wfile = rfile, wfile
        self.lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(msg) + "\n")
        self.wfile.flush()

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.send(msg)
            line = self.rfile.readline()
        if not line:
            raise TransportError("the replay benchmark closed the pipe", host="sim", retryable=False)
        answer: dict[str, Any] = json.loads(line)
        return answer


class PipeTransport(Transport):
    """A cluster's transport whose commands the benchmark's simulated scheduler answers."""

    def __init__(self, name: str, chan: Channel) -> None:
        self.host = self.name = name
        self.chan = chan

    def _execute(self, argv: list[str], timeout: float, stdin: bytes | None, cwd: str | None,
                 env: dict[str, str]) -> CompletedCommand:
        t0 = time.perf_counter()
        r = self.chan.call({"op": "run", "cluster": self.name, "argv": argv, "env": env})
        return CompletedCommand(argv=argv, returncode=int(r["rc"]), stdout=r["out"], stderr=r["err"],
                                host=self.host, duration=time.perf_counter() - t0)

    def put(self, data_or_path: bytes | str | os.PathLike[str], remote_path: str, mode: int = 0o644) -> None:
        data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
        self.chan.call({"op": "put", "cluster": self.name, "path": remote_path, "data": data.decode()})

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        raise TransportError("the simulated cluster has no files to fetch", host=self.host, retryable=False)

    def stat(self, path: str) -> FileStat:
        raise TransportError("the simulated cluster has no file system", host=self.host, retryable=False)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        pass

    def remove(self, path: str) -> None:
        pass

    def sha256(self, path: str) -> str:
        raise TransportError("the simulated cluster has no file system", host=self.host, retryable=False)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(argv: list[str] | None = None) -> int:
    """Build the manager, then run a cycle at each virtual time the benchmark sends."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.replay_child")
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--db", required=True)
    a = ap.parse_args(argv)
    # the protocol owns the real stdout; anything else that prints goes to stderr (the log)
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    chan = Channel(sys.stdin, proto)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from fireworks import LaunchPad

    from benchmarks.common import CommandCounter
    from pilot.config import load_config
    from pilot.manager.cycle import Manager

    counter = CommandCounter()
    lp = LaunchPad(host=os.environ[URI_ENV], name=a.db, uri_mode=True, logdir=None, strm_lvl="ERROR",
                   mongoclient_kwargs={"event_listeners": [counter.listener]})
    clock = {"now": time.time()}
    mgr = Manager(load_config(Path(a.config_dir)), lp, transport_factory=lambda name, _c: PipeTransport(name, chan),
                  clock=lambda: clock["now"])
    cpu_cycles = 0.0
    while True:
        line = sys.stdin.readline()
        if not line:
            return 1
        msg = json.loads(line)
        if msg["op"] == "cycle":
            clock["now"] = float(msg["now"])
            before = counter.snapshot()
            c0, w0 = time.process_time(), time.perf_counter()
            report = mgr.run_cycle()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            cpu_cycles += cpu
            db = CommandCounter.diff(counter.snapshot(), before)
            chan.send({"op": "done", "cpu_s": cpu, "wall_s": wall, "db_commands": sum(db.values()),
                       "submitted": len(report.submitted), "reruns": report.reruns, "fizzled": report.fizzled,
                       "errors": report.errors})
        elif msg["op"] == "exit":
            mgr.close()
            ru = resource.getrusage(resource.RUSAGE_SELF)
            db = CommandCounter.diff(counter.snapshot(), counter.snapshot().__class__())
            chan.send({"op": "bye", "cpu_s": ru.ru_utime + ru.ru_stime, "cpu_cycles_s": cpu_cycles,
                       "peak_rss_mib": _peak_rss_mib(), "db_commands": sum(db.values()), "db_by_name": db})
            return 0


if __name__ == "__main__":
    sys.exit(main())
