"""Shared fixtures: the LaunchPad (embedded server or MONGODB_URI) and the real test clusters."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    INFRA_STATE,
    ClusterInfo,
    EmbeddedServer,
    clean_source_copy,
    launchpad_host,
    load_clusters,
    source_digest,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- the soak test (tests/soak)
def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the long chaos soak test (marker `soak`; or set PILOT_SOAK=1)")


@pytest.hookimpl(trylast=True)  # after -k/-m/--deselect have taken their items out
def pytest_collection_modifyitems(config, items):
    """Tests marked ``soak`` take many minutes and stop shared daemons: skipped unless asked for. FireWorks'
    own suite, when collected, starts now in the background (tests/launchpad/test_fireworks_suite.py)."""
    from tests.launchpad import test_fireworks_suite

    test_fireworks_suite.start_in_background(config, items)
    if config.getoption("--soak") or os.environ.get("PILOT_SOAK", "") == "1":
        return
    skip = pytest.mark.skip(reason="the soak test runs only with --soak or PILOT_SOAK=1 (docs/testing.md)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """Whatever of FireWorks' background suite is left (its test was not reached): stopped, its files removed."""
    from tests.launchpad import test_fireworks_suite

    test_fireworks_suite.stop_background()


def _need_infra() -> None:
    """Skip (or, in CI, fail) when the real test services are not there."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test clusters are started by `bash tests/infra/services.sh up` as root")
    if not (INFRA_STATE / "clusters.json").exists():
        msg = (f"the test services are not running ({INFRA_STATE}/clusters.json missing): "
               "run `bash tests/infra/services.sh up` as root, or use tests/run.sh")
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# --------------------------------------------------------------------------- LaunchPad
@pytest.fixture(scope="session")
def mongo_uri():
    """A MongoDB URI for the whole session: ``MONGODB_URI`` when set, else a session-wide embedded server.

    With the test clusters up, the server listens on the fileserver's address on the test network, so that
    pilots on the clusters' compute nodes reach it over the network as in a real deployment (and pilots on
    the unrouted cluster cannot); without them, on 127.0.0.1.
    """
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    tmp = Path(tempfile.mkdtemp(prefix="pilot-lpserver-"))
    os.chmod(tmp, 0o755)
    server = EmbeddedServer(tmp / "data", host=launchpad_host()).start()
    server.publish_ca(tmp / "ca.pem")   # the cluster users' pilots verify the server with it
    try:
        yield server.uri
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def launchpad(mongo_uri):
    """A FireWorks LaunchPad on a fresh database, dropped after the test."""
    from fireworks import LaunchPad

    name = f"pilottest_{uuid.uuid4().hex[:12]}"
    lp = LaunchPad(host=mongo_uri, name=name, uri_mode=True, logdir=None, strm_lvl="ERROR")
    lp.reset("", require_password=False, max_reset_wo_password=1000)
    try:
        yield lp
    finally:
        lp.connection.drop_database(name)


# --------------------------------------------------------------------------- clusters
@pytest.fixture(scope="session")
def clusters() -> dict[str, ClusterInfo]:
    _need_infra()
    return load_clusters()


@pytest.fixture(scope="session")
def cluster_venv(clusters) -> str:
    """The venv the test user's batch jobs use, holding this very source tree (reinstalled when it changed since
    it was built: tests/infra/services.sh writes the digest of what it built the venv from)."""
    venv = next(iter(clusters.values())).venv
    stamp = Path(venv) / ".pilot-source-digest"
    digest = source_digest()
    with open("/tmp/pilot-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != digest:
            with tempfile.TemporaryDirectory(prefix="pilot-src-") as tmp:
                src = clean_source_copy(Path(tmp) / "src")
                subprocess.run([f"{venv}/bin/pip", "install", "-q", "--no-deps", "--force-reinstall", str(src)],
                               check=True, capture_output=True)
            subprocess.run(["chmod", "-R", "a+rX", venv], check=True)
            stamp.write_text(digest)
    return venv


@pytest.fixture(scope="session")
def slurm_cluster(clusters) -> ClusterInfo:
    return clusters["pilotci"]


@pytest.fixture(scope="session")
def slurm_cluster2(clusters) -> ClusterInfo:
    return clusters["pilotci2"]


@pytest.fixture(scope="session")
def pbs_cluster(clusters) -> ClusterInfo:
    return clusters["emupbs"]


@pytest.fixture(scope="session")
def lsf_cluster(clusters) -> ClusterInfo:
    return clusters["emulsf"]


def _added_cluster(clusters: dict[str, ClusterInfo], name: str) -> ClusterInfo:
    """A cluster host that services.sh `up` starts, but that services started before it was added lack."""
    if name not in clusters:
        msg = f"the test cluster {name} is not up: bash tests/infra/services.sh host {name} (or up)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return clusters[name]


@pytest.fixture(scope="session")
def sge_cluster(clusters) -> ClusterInfo:
    """The emulated Grid Engine cluster (tests/infra/emulators/sge)."""
    return _added_cluster(clusters, "emusge")


@pytest.fixture(scope="session")
def torque_cluster(clusters) -> ClusterInfo:
    """The emulated Torque cluster: the PBS emulator with PILOT_EMU_FLAVOR=torque."""
    return _added_cluster(clusters, "emutorque")


@pytest.fixture(scope="session")
def unrouted_cluster(clusters) -> ClusterInfo:
    """The SLURM cluster whose compute node has no route to the fileserver."""
    return clusters["pilotci3"]


@pytest.fixture
def remote_tmp(clusters):
    """A fresh directory owned by the test user (the clusters' user), removed after the test."""
    user = next(iter(clusters.values())).user
    path = Path(tempfile.mkdtemp(prefix="pilot-remote-", dir="/tmp"))
    shutil.chown(path, user, user)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def echo(clusters):
    """A TCP echo server on the fileserver's address, closed after the test: the far end of the forward tests'
    routes (tests/transport/forward_helpers.py; a forward only moves bytes)."""
    from tests.transport.forward_helpers import EchoServer

    server = EchoServer()
    try:
        yield server
    finally:
        server.close()
