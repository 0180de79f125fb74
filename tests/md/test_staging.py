"""Staging and pull: idempotent, verified (size + SHA-256), clear errors; on a shared file system (local copy)
and over the real sshd of the test cluster (pilot.transport.SSHTransport as the cluster user)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from fireworks import FWAction

from tasks.staging import PullTask, StageTask, StagingError


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    (src / "md.tpr").write_bytes(os.urandom(200_000))
    (src / "sub").mkdir()
    (src / "sub" / "top.itp").write_text("[ moleculetype ]\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o750)
    return src


# ------------------------------------------------------------------------------------------ shared file system
def test_local_stage_copies_then_skips_identical(archive, tmp_path):
    work = tmp_path / "scratch" / "work"
    task = StageTask(src_dir=str(archive), dest_dir=str(work), files=["md.tpr", "sub/top.itp", "run.sh"],
                     optional_files=["md.cpt"])
    action = task.run_task({})
    assert isinstance(action, FWAction)
    rep = action.stored_data["stage"]
    assert rep["copied"] == ["md.tpr", "sub/top.itp", "run.sh"]
    assert rep["missing_optional"] == ["md.cpt"] and rep["skipped"] == []
    assert rep["bytes_copied"] == 200_000 + len("[ moleculetype ]\n") + len("#!/bin/sh\necho hi\n")
    for name in ("md.tpr", "sub/top.itp", "run.sh"):
        assert sha(work / name) == sha(archive / name)
    assert (work / "run.sh").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in work.rglob("*")) == ["md.tpr", "run.sh", "sub", "top.itp"]  # no temporary files

    mtime = (work / "md.tpr").stat().st_mtime_ns
    time.sleep(0.01)
    rep2 = task.run_task({}).stored_data["stage"]
    assert rep2["copied"] == [] and rep2["skipped"] == ["md.tpr", "sub/top.itp", "run.sh"]
    assert (work / "md.tpr").stat().st_mtime_ns == mtime  # not rewritten


def test_local_stage_detects_same_size_different_content(archive, tmp_path):
    work = tmp_path / "work"
    task = StageTask(src_dir=str(archive), dest_dir=str(work), files=["md.tpr"])
    task.run_task({})
    data = bytearray((work / "md.tpr").read_bytes())
    data[1000] ^= 0xFF  # one flipped byte: same size, different SHA-256
    (work / "md.tpr").write_bytes(bytes(data))
    rep = task.run_task({}).stored_data["stage"]
    assert rep["copied"] == ["md.tpr"]
    assert sha(work / "md.tpr") == sha(archive / "md.tpr")


def test_missing_required_file_names_file_and_place(archive, tmp_path):
    task = StageTask(src_dir=str(archive), dest_dir=str(tmp_path / "w"), files=["md.tpr", "md.cpt", "topol.top"])
    with pytest.raises(StagingError) as err:
        task.run_task({})
    msg = str(err.value)
    assert "md.cpt, topol.top" in msg and str(archive) in msg and "md.tpr" in msg  # lists what is there
    assert err.value.to_dict()["missing"] == ["md.cpt", "topol.top"]


def test_unsafe_file_names_are_refused(archive, tmp_path):
    for bad in ("../etc/passwd", "/etc/passwd"):
        with pytest.raises(StagingError, match="relative"):
            StageTask(src_dir=str(archive), dest_dir=str(tmp_path / "w"), files=[bad]).run_task({})


def test_pull_requires_checkpoint_only_when_the_segment_wrote_one(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "md.xtc").write_bytes(b"frames")
    task = PullTask(src_dir=str(work), dest_dir=str(tmp_path / "archive"), checkpoint_files=["md.cpt"],
                    optional_files=["md.xtc", "md.edr"])
    with pytest.raises(StagingError, match="md.cpt"):
        task.run_task({"md_segment": {"checkpoint_step": 5000}})
    rep = task.run_task({"md_segment": {"checkpoint_step": None}}).stored_data["pull"]
    assert rep["copied"] == ["md.xtc"] and rep["missing_optional"] == ["md.cpt", "md.edr"]
    (work / "md.cpt").write_bytes(b"cpt")
    rep = task.run_task({"md_segment": {"checkpoint_step": 5000}}).stored_data["pull"]
    assert rep["copied"] == ["md.cpt"] and rep["skipped"] == ["md.xtc"]


# ------------------------------------------------------------------------------------------ over SSH
@pytest.fixture
def remote(slurm_cluster):
    return {"host": slurm_cluster.host, "port": slurm_cluster.port, "user": slurm_cluster.user,
            "identity_file": slurm_cluster.key, "known_hosts": slurm_cluster.known_hosts}


@pytest.mark.slurm
def test_ssh_stage_and_pull_idempotent_and_verified(archive, tmp_path, remote, remote_tmp, slurm_cluster):
    work = remote_tmp / "work"
    stage = StageTask(src_dir=str(archive), dest_dir=str(work), files=["md.tpr", "sub/top.itp", "run.sh"],
                      optional_files=["md.cpt"], remote=remote)
    rep = stage.run_task({}).stored_data["stage"]
    assert rep["copied"] == ["md.tpr", "sub/top.itp", "run.sh"] and rep["missing_optional"] == ["md.cpt"]
    for name in ("md.tpr", "sub/top.itp", "run.sh"):
        assert sha(work / name) == sha(archive / name)
    assert (work / "md.tpr").stat().st_uid == (work.stat().st_uid)  # written by the cluster user over SSH
    assert (work / "run.sh").stat().st_mode & 0o777 == 0o750
    assert stage.run_task({}).stored_data["stage"]["skipped"] == ["md.tpr", "sub/top.itp", "run.sh"]

    data = bytearray((work / "md.tpr").read_bytes())
    data[5] ^= 0x01
    (work / "md.tpr").write_bytes(bytes(data))
    assert stage.run_task({}).stored_data["stage"]["copied"] == ["md.tpr"]
    assert sha(work / "md.tpr") == sha(archive / "md.tpr")

    # results back
    (work / "md.cpt").write_bytes(os.urandom(5000))
    back = tmp_path / "back"
    pull = PullTask(src_dir=str(work), dest_dir=str(back), checkpoint_files=["md.cpt"], optional_files=["md.xtc"],
                    remote=remote)
    rep = pull.run_task({"md_segment": {"checkpoint_step": 10}}).stored_data["pull"]
    assert rep["copied"] == ["md.cpt"] and rep["missing_optional"] == ["md.xtc"]
    assert sha(back / "md.cpt") == sha(work / "md.cpt")
    assert pull.run_task({"md_segment": {"checkpoint_step": 10}}).stored_data["pull"]["skipped"] == ["md.cpt"]


@pytest.mark.slurm
def test_ssh_missing_remote_file_names_host_and_file(tmp_path, remote, remote_tmp):
    pull = PullTask(src_dir=str(remote_tmp / "nothing"), dest_dir=str(tmp_path / "back"), files=["md.log"],
                    remote=remote)
    with pytest.raises(StagingError) as err:
        pull.run_task({})
    assert "md.log" in str(err.value) and str(remote_tmp / "nothing") in str(err.value)
    assert remote["host"] in str(err.value)


@pytest.mark.slurm
def test_ssh_unreachable_host_is_retried_then_reported(archive, tmp_path, slurm_cluster):
    from pilot.transport import TransportError

    remote = {"host": "127.0.0.1", "port": 1, "user": slurm_cluster.user, "identity_file": slurm_cluster.key,
              "known_hosts": slurm_cluster.known_hosts, "connect_timeout": 5}
    task = StageTask(src_dir=str(archive), dest_dir="/tmp/never", files=["md.tpr"], remote=remote, max_retry=2,
                     retry_delay_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(TransportError) as err:
        task.run_task({})
    assert err.value.retryable  # connection refused: retryable, so it was retried (0.2 + 0.4 s of waiting)
    assert time.monotonic() - t0 >= 0.6
