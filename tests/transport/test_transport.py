"""The Transport API, the same tests for LocalTransport and for SSHTransport against the real loopback sshd.

The sshd of cluster ``pilotci`` runs on this machine, so what a command did over SSH (files, modes,
processes) is checked here with the operating system's own view (os.stat, hashlib, psutil), never with the
code under test. Expected command outputs follow from the programs' documented behaviour (cited inline).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from pilot.transport.base import CompletedCommand, Transport
from pilot.transport.errors import CommandTimeout, RemotePathError, TransportConfigError, TransportError
from pilot.transport.local import LocalTransport
from pilot.transport.ssh import SSHTransport
from tests.helpers import wait_for

# Arguments a shell would otherwise interpret: quotes, expansions, separators, globs, escapes, whitespace.
TRICKY_ARGS = [
    "a b", "it's", 'say "hi"', "$HOME", "${PATH}", "x;y", "a|b", "&&", "`id`", "$(id)", "*", "~", "~/x",
    "back\\slash", "new\nline", "", "  lead and trail  ", "tab\there", "--", "-n", "ünïcödé ✓", "!bang", "#hash",
    "a=b", "'", '"', "\\",
]


@pytest.fixture(params=["local", "ssh"])
def tr(request, tmp_path) -> tuple[Transport, Path]:
    """(transport, a directory that the transport's user may write to)."""
    if request.param == "local":
        t: Transport = LocalTransport(name="local-test")
        workdir = tmp_path
    else:
        cluster = request.getfixturevalue("slurm_cluster")
        workdir = request.getfixturevalue("remote_tmp")
        t = SSHTransport(**cluster.ssh_kwargs(), name=cluster.name)
    try:
        yield t, Path(workdir)
    finally:
        t.close()


def _procs_with(tag: str) -> list[str]:
    """Command lines of live (non-zombie) processes on this machine whose command line contains ``tag``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if tag in cmd and p.pid != os.getpid():
            found.append(f"{p.pid}: {cmd}")
    return found


# --------------------------------------------------------------------------- commands
def test_arguments_arrive_verbatim(tr):
    t, _ = tr
    # POSIX printf: "The format operand shall be reused as often as necessary to satisfy the argument
    # operands", so printf '%s\n' A B ... prints each argument followed by a newline, byte for byte.
    res = t.run(["printf", "%s\\n", *TRICKY_ARGS])
    assert isinstance(res, CompletedCommand)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "".join(a + "\n" for a in TRICKY_ARGS)
    assert res.stderr == ""
    assert res.argv == ["printf", "%s\\n", *TRICKY_ARGS]
    assert res.host == t.host
    assert res.duration > 0


def test_nonzero_exit_is_returned_not_raised(tr):
    t, _ = tr
    res = t.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert not res.ok


def test_check_raises_not_retryable(tr):
    t, _ = tr
    with pytest.raises(TransportError) as ei:
        t.run(["sh", "-c", "echo 'sbatch: error: Invalid partition name specified' >&2; exit 1"], check=True)
    e = ei.value
    assert e.returncode == 1 and e.retryable is False
    assert e.argv[0] == "sh"
    assert "Invalid partition name specified" in e.stderr_tail
    assert "Invalid partition name specified" in str(e) and "exit code: 1" in str(e)


def test_command_not_found_is_127(tr):
    t, _ = tr
    # POSIX Shell Command Language 2.8.2: "If a command is not found, the exit status shall be 127."
    res = t.run([f"no-such-command-{uuid.uuid4().hex[:6]}", "x"])
    assert res.returncode == 127
    assert "no-such-command" in res.stderr


def test_stdin_text_and_binary(tr):
    t, _ = tr
    assert t.run(["cat"], stdin="hello\nwörld\n").stdout == "hello\nwörld\n"
    blob = os.urandom(3 * 1024 * 1024 + 17)  # several SSH windows worth of data
    res = t.run(["sha256sum"], stdin=blob, timeout=60)
    assert res.returncode == 0
    assert res.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    # without stdin the command reads end-of-file at once (sbatch without a script would otherwise hang)
    assert t.run(["cat"], timeout=10).stdout == ""


def test_cwd_and_env(tr):
    t, workdir = tr
    value = "a b $x ;'\" `id` ~"
    res = t.run(["sh", "-c", 'pwd; printf "%s\\n" "$PILOT_T1" "$PILOT_T2"'], cwd=str(workdir),
                env={"PILOT_T1": value, "PILOT_T2": ""})
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{workdir}\n{value}\n\n"


def test_bad_env_name_and_argv_type_rejected(tr):
    t, _ = tr
    with pytest.raises(TransportConfigError):
        t.run(["true"], env={"BAD-NAME": "x"})
    with pytest.raises(TypeError):
        t.run("squeue -u me")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.run([])


def test_non_utf8_output_is_replaced(tr):
    t, _ = tr
    # printf's \ddd is an octal byte (POSIX printf); 0xFF is never valid UTF-8.
    res = t.run(["printf", "\\377abc\\n"])
    assert res.stdout == b"\xffabc\n".decode("utf-8", errors="replace") == "\ufffdabc\n"


def test_stderr_and_stdout_large(tr):
    t, _ = tr
    # 2 MB on each stream, written at the same time by two processes: neither stream may block the other.
    script = ("head -c 2048000 /dev/zero | tr '\\0' o & "
              "head -c 2048000 /dev/zero | tr '\\0' e >&2; wait")
    res = t.run(["sh", "-c", script], timeout=60)
    assert res.returncode == 0
    assert res.stdout == "o" * 2048000 and res.stderr == "e" * 2048000


def test_timeout_kills_whole_process_group(tr):
    t, _ = tr
    tag = f"61.{uuid.uuid4().int % 10**8}"  # a unique `sleep` argument to find the processes by
    timeout = 2.0
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as ei:
        # `sh -c "sleep X; true"` forks sleep as a child: the kill must reach the group, not just the leader
        t.run(["sh", "-c", f"sleep {tag}; true"], timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed < timeout + 2.0, elapsed  # slack: one round trip for the kill request
    e = ei.value
    assert e.retryable is True and e.may_have_run is True
    assert "SIGTERM" in str(e)
    wait_for(lambda: not _procs_with(tag), timeout=5, interval=0.1, what=f"sleep {tag} to be gone")
    # the transport is still usable afterwards
    assert t.run(["true"]).returncode == 0


def test_timeout_kills_term_ignoring_group_after_grace(tr):
    t, _ = tr
    tag = f"62.{uuid.uuid4().int % 10**8}"
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        t.run(["sh", "-c", f"trap '' TERM; sleep {tag}; true"], timeout=1)
    assert time.monotonic() - t0 < 1 + 1.5
    # SIG_IGN is inherited across exec (POSIX exec), so the sleep ignores TERM too: only KILL ends it.
    assert _procs_with(tag), "the group should still be alive right after TERM"
    wait_for(lambda: not _procs_with(tag), timeout=t.kill_grace + 4, interval=0.1,
             what=f"sleep {tag} to be killed after the grace period")


def test_concurrent_runs(tr):
    t, _ = tr

    def worker(i: int) -> list[str]:
        return [t.run(["printf", "%s", f"{i}-{j}"]).stdout for j in range(3)]

    with ThreadPoolExecutor(10) as pool:  # result() re-raises a worker's exception here
        results = list(pool.map(worker, range(10), timeout=60))
    assert results == [[f"{i}-{j}" for j in range(3)] for i in range(10)]


# --------------------------------------------------------------------------- files
def _owner_of(t: Transport) -> str:
    return t.user if isinstance(t, SSHTransport) else psutil.Process().username()


def test_put_bytes_creates_parents_and_sets_mode(tr):
    t, workdir = tr
    dest = workdir / "a" / "b c" / "launchpad.yaml"
    content = b"host: mongodb://user:secret@db\n"
    t.put(content, str(dest), mode=0o600)
    st = os.stat(dest)
    assert dest.read_bytes() == content
    assert st.st_mode & 0o7777 == 0o600
    import pwd

    assert pwd.getpwuid(st.st_uid).pw_name == _owner_of(t)
    t.put(b"#!/bin/sh\necho hi\n", str(workdir / "run.sh"), mode=0o755)
    assert os.stat(workdir / "run.sh").st_mode & 0o7777 == 0o755
    assert t.run([str(workdir / "run.sh")]).stdout == "hi\n"


def test_put_local_file_and_get_round_trip(tr, tmp_path):
    t, workdir = tr
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1_500_000))
    t.put(src, str(workdir / "sub" / "copy.bin"), mode=0o640)
    assert (workdir / "sub" / "copy.bin").read_bytes() == src.read_bytes()
    back = tmp_path / "back" / "again.bin"
    t.get(str(workdir / "sub" / "copy.bin"), back)
    assert back.read_bytes() == src.read_bytes()
    assert os.stat(back).st_mode & 0o777 == 0o640  # the remote file's mode
    assert [p.name for p in back.parent.iterdir()] == ["again.bin"]  # no temporary left behind


def test_put_is_atomic(tr):
    t, workdir = tr
    dest = workdir / "state.json"
    old = b"O" * (4 * 1024 * 1024)
    new = b"N" * (4 * 1024 * 1024)
    t.put(old, str(dest))
    inode_before = os.stat(dest).st_ino
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = dest.read_bytes()
            except FileNotFoundError:
                seen.add("missing")
                continue
            seen.add("old" if data == old else "new" if data == new else f"partial({len(data)})")

    th = threading.Thread(target=reader)
    th.start()
    try:
        t.put(new, str(dest))
    finally:
        stop.set()
        th.join(30)
    assert dest.read_bytes() == new
    assert seen <= {"old", "new"}, seen  # a reader never saw a partial or missing file
    assert os.stat(dest).st_ino != inode_before  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in workdir.iterdir()) == ["state.json"]


def test_stat_exists_makedirs_sha256_remove(tr):
    t, workdir = tr
    d = workdir / "x" / "y"
    t.makedirs(str(d), 0o750)
    t.makedirs(str(d))  # existing: fine
    assert d.is_dir() and os.stat(d).st_mode & 0o777 == 0o750
    f = d / "data.txt"
    payload = os.urandom(100_000)
    t.put(payload, str(f))
    st = t.stat(str(f))
    real = os.stat(f)
    assert st.size == real.st_size == len(payload)
    assert abs(st.mtime - real.st_mtime) < 1.0  # SFTP reports whole seconds
    assert st.mode == real.st_mode & 0o7777 and not st.is_dir
    assert t.stat(str(d)).is_dir
    assert t.sha256(str(f)) == hashlib.sha256(payload).hexdigest()
    assert t.exists(str(f)) and t.exists(str(d))
    assert not t.exists(str(d / "nope"))
    with pytest.raises(RemotePathError) as ei:
        t.stat(str(d / "nope"))
    assert ei.value.errno == errno.ENOENT and not ei.value.retryable
    with pytest.raises(RemotePathError):
        t.sha256(str(d / "nope"))
    with pytest.raises(RemotePathError):
        t.get(str(d / "nope"), str(workdir / "local-nope"))
    t.remove(str(f))
    assert not f.exists()
    t.remove(str(f))  # missing: fine


def test_put_into_unwritable_dir_is_path_error(tr):
    t, _ = tr
    with pytest.raises(RemotePathError) as ei:
        t.put(b"x", "/proc/pilot-cannot-write-here/file")
    assert ei.value.retryable is False
    assert "/proc/pilot-cannot-write-here" in str(ei.value)


def test_context_manager_closes(tmp_path):
    with LocalTransport() as t:
        assert t.run(["true"]).returncode == 0


def test_command_killed_by_signal_is_a_result(tr):
    t, _ = tr
    # subprocess reports -N for a child killed by signal N; over SSH sshd sends "exit-signal" without an
    # exit status (RFC 4254 6.10), which the transport reports as -1. Either way: negative, not an exception.
    res = t.run(["sh", "-c", "echo before; kill -9 $$"])
    assert res.returncode < 0 and res.stdout == "before\n"
    assert t.run(["true"]).returncode == 0


def test_put_missing_local_source(tr, tmp_path):
    t, workdir = tr
    with pytest.raises(FileNotFoundError):
        t.put(tmp_path / "does-not-exist", str(workdir / "x"))
    assert not (workdir / "x").exists()


def test_missing_cwd_is_exit_code_1(tr):
    t, workdir = tr
    # POSIX cd: "If the directory cannot be changed ... exit status >0"; the shell's `&&` list ends with it
    res = t.run(["true"], cwd=str(workdir / "no-such-dir"))
    assert res.returncode == 1
    assert "no-such-dir" in res.stderr
