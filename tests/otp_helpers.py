"""The one-time-password sshd of a test cluster (tests/infra/services.sh: pilotci2's login node, port 2222, PAM's
pam_oath): codes as an authenticator app makes them, ``pilot connect`` answered in a terminal, and the server's
own count of logins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyotp

from tests.helpers import INFRA_STATE, ClusterInfo

_last_step = [0]


#: pam_oath's window (tests/infra/services.sh): it takes the codes of up to this many 30 s steps from now
WINDOW = 4


def totp_code(info: ClusterInfo) -> str:
    """A code the sshd takes now: pyotp's RFC 6238 code of a 30 s step after the last one pam_oath took (it
    refuses a code whose step is not later than the last one's: its users file keeps that code, beside the seed),
    after the last this process made, and within pam_oath's window (waiting when none is yet)."""
    totp = pyotp.TOTP(Path(info.otp_seed).read_text().strip())
    users = Path(info.otp_seed).with_name("users.oath").read_text().split()
    now = int(time.time() // 30)
    last = users[5] if len(users) > 5 else None
    taken = [s for s in range(now - 3 * WINDOW, now + WINDOW + 1) if totp.at(s * 30) == last]
    step = max(now, max(taken, default=now - 1) + 1, _last_step[0] + 1)
    while step > int(time.time() // 30) + WINDOW:
        time.sleep(1)
    _last_step[0] = step
    return totp.at(step * 30)


def otp_cluster_file(info: ClusterInfo, control_dir: Path, **over: object) -> dict[str, object]:
    """The cluster-file fields that reach the OTP sshd through a ControlMaster socket in ``control_dir``."""
    assert info.otp_port, f"{info.name} has no one-time-password sshd (tests/infra/services.sh OTP_CLUSTER)"
    return {"port": info.otp_port, "control_path": str(control_dir / "%C"), **over}


def pilot_connect(config_dir: Path, cluster: str, code: str | None, timeout: float = 30) -> tuple[int, str]:
    """``pilot connect CLUSTER`` in a terminal of its own, answering OpenSSH's prompt with ``code`` (None: a wrong
    code): (exit code, what the terminal showed)."""
    child = pexpect.spawn(sys.executable, ["-m", "pilot", "--config-dir", str(config_dir), "connect", cluster],
                          timeout=timeout, encoding="utf-8", env={**os.environ, "TERM": "dumb"})
    seen = []
    try:
        while True:
            i = child.expect([r"[Pp]assword[^\n]*:", pexpect.EOF])
            seen.append(child.before + (child.after if isinstance(child.after, str) else ""))
            if i == 1:
                break
            # a second prompt means the code was refused: answer wrong until OpenSSH gives up, as a person might
            child.sendline(code or "000000")
            code = None
    finally:
        child.close()
    return child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 1), "".join(seen)


def _otp_log(info: ClusterInfo) -> str:
    log = INFRA_STATE / info.name / "log" / "sshd-otp.log"
    return log.read_text(errors="replace") if log.exists() else ""


def otp_logins(info: ClusterInfo) -> int:
    """How many logins the OTP sshd accepted with a code (its own log: ``Accepted keyboard-interactive/pam``)."""
    return _otp_log(info).count("Accepted keyboard-interactive/pam")


def otp_connections(info: ClusterInfo) -> int:
    """How many TCP connections reached the OTP sshd at all (``Connection from``, LogLevel VERBOSE): a login
    attempt, even one that fails before a prompt, shows here."""
    return _otp_log(info).count("Connection from")


def end_otp_sessions(info: ClusterInfo) -> int:
    """End every open session of the OTP sshd from the server side, as a centre does when a login lapses: its
    children (one per connection) are killed; the listening sshd stays. Returns how many were killed."""
    pid = int((INFRA_STATE / info.name / "sshd-otp.pid").read_text())
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for c in children:
        try:
            os.kill(int(c), signal.SIGTERM)
        except ProcessLookupError:
            pass
    return len(children)


def close_masters(control_dir: Path) -> None:
    """``ssh -O exit`` to every master whose socket is in ``control_dir``."""
    for sock in control_dir.iterdir():
        subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                       capture_output=True, timeout=10)
