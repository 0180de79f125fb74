"""Fixtures of the embedded-server tests: a fresh database on the session's MongoDB, a server of one's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pymongo
import pytest

from tests.helpers import EmbeddedServer

SERVE = [sys.executable, "-m", "pilot", "launchpad", "serve"]


@pytest.fixture
def db(mongo_uri):
    """A fresh database on the session's MongoDB (embedded or MONGODB_URI), dropped afterwards."""
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10000)
    name = f"dbtest_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def own_server(tmp_path):
    """An embedded server of this test only (its data dir under tmp_path)."""
    servers: list[EmbeddedServer] = []

    def start(data: Path | None = None, port: int = 0, extra: list[str] | None = None) -> EmbeddedServer:
        s = EmbeddedServer(data or tmp_path / "data", port=port, extra_args=extra).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop(signal.SIGKILL)


def client_for(server: EmbeddedServer) -> pymongo.MongoClient:
    return pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000)


def run_serve(args: list[str], timeout: float = 30, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SERVE + args, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
