"""pytest plugin (``-p tests.launchpad.fw_suite_plugin``) that points FireWorks' own test suite at our server.

FireWorks' packaged tests connect to MongoDB's defaults: ``LaunchPad(name=...)``, ``FilePad()`` and a bare
``fireworks.fw_config.MongoClient()`` all mean localhost:27017 with no credentials. The embedded server
always requires authentication and listens on a port of its own, so this plugin swaps FireWorks' MongoClient
(the hook FireWorks itself uses for mongomock, ``fw_config.MongoClient``) for a subclass that sends exactly
those default connections to the server named in ``PILOT_FW_SUITE_SERVER`` (JSON: host, port, username,
password, authsource), logging in as the server's admin when the test gave no credentials. A test that does
name a user (FireWorks' AuthenticationTest) keeps its own credentials; anything else passes through untouched.
Nothing in FireWorks or the server is changed, and authentication stays on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pymongo

_TARGET: dict[str, Any] = json.loads(os.environ.get("PILOT_FW_SUITE_SERVER") or "{}")
_DEFAULT_HOSTS = (None, "localhost", "127.0.0.1")
_DEFAULT_PORTS = (None, 27017)


class ServerClient(pymongo.MongoClient):
    """pymongo's MongoClient, with MongoDB's default address replaced by the embedded server's."""

    def __init__(self, host: Any = None, port: Any = None, *args: Any, **kwargs: Any) -> None:
        if _TARGET and host in _DEFAULT_HOSTS and port in _DEFAULT_PORTS:
            host, port = _TARGET["host"], int(_TARGET["port"])
            if kwargs.get("username") is None:
                kwargs.update(username=_TARGET["username"], password=_TARGET["password"],
                              authSource=_TARGET.get("authsource") or "admin")
        super().__init__(host, port, *args, **kwargs)


def pytest_configure(config: Any) -> None:
    """Patch before FireWorks' test modules are collected (they read ``fw_config.MongoClient`` at import)."""
    if not _TARGET:
        raise RuntimeError("PILOT_FW_SUITE_SERVER is not set: this plugin needs the server to point FireWorks at")
    import fireworks.core.launchpad
    import fireworks.fw_config
    import fireworks.utilities.filepad

    for module in (fireworks.fw_config, fireworks.core.launchpad, fireworks.utilities.filepad):
        module.MongoClient = ServerClient
    # FireWorks' tests hand a LaunchPad to multiprocessing.Process children. Forked children inherit the patch;
    # spawned ones (Python 3.14's default is forkserver) would rebuild it from MongoDB's defaults without it.
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)
