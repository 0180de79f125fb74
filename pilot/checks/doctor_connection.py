"""The doctor's connection checks: SSH and the host key, the scheduler's commands, a writable work_dir.

These run the way the manager runs its commands: through the same transport, on the non-login PATH, without
the setup lines.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from pilot.checks.doctor_base import DoctorBase
from pilot.checks.probes import address_of, last, ssh_prefix, tail
from pilot.checks.results import CheckResult, CheckStatus

if TYPE_CHECKING:
    from pilot.config import ClusterConfig

__all__ = ["ConnectionChecks", "scheduler_commands"]


def scheduler_commands(cluster: ClusterConfig) -> list[str]:
    """The programs the manager runs on the cluster: the first word of every adapter command."""
    from pilot.transport.clusters import adapter_for

    ad = adapter_for(cluster)
    argvs = [ad.submit_command("/x/pilot.sh"), ad.status_command(user=cluster.user), ad.cancel_command(["1"])]
    hist = ad.history_command(["1"])
    if hist:
        argvs.append(hist)
    out: list[str] = []
    for argv in argvs:
        words = list(argv)
        if words[:1] == ["env"]:   # env VAR=value program ...
            words = words[1:]
            while words and "=" in words[0] and not words[0].startswith("/"):
                words = words[1:]
        if words and words[0] not in out:
            out.append(words[0])
    return out



class ConnectionChecks(DoctorBase):
    """``ssh``, ``scheduler`` and ``work_dir``."""

    def check_ssh(self) -> CheckResult:
        from pilot.transport import AuthenticationError, ConnectError, HostKeyError, TransportError

        title = "SSH connection and host key" if not self.c.is_local else "this machine (scheduler local)"
        try:
            res = self._run(["id", "-un"], timeout=max(self.timeout, float(self.c.connect_timeout) + 5))
        except HostKeyError as e:
            kh = self.c.known_hosts
            fix = e.hint or (f"ssh-keyscan -p {self.c.port} {self.c.host} >> {kh}  (then compare the fingerprint "
                             "with the one the cluster's documentation gives)")
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=e.what, fix=fix)
        except AuthenticationError as e:
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=e.what, fix=e.hint)
        except (ConnectError, TransportError) as e:
            detail = e.what + (f" ({last(e.stderr_tail)})" if e.stderr_tail else "")
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=detail, fix=e.hint or (
                f"check host and port in {self.file}, and that you can log in: {ssh_prefix(self.c)}true"))
        if res.returncode != 0:
            return CheckResult("ssh", title, CheckStatus.FAIL, detail=f"`id -un` exited with {res.returncode}: "
                               f"{tail(res.stderr)}", fix="check the account's login shell on the cluster")
        who = res.stdout.strip()
        if self.c.is_local:
            return CheckResult("ssh", title, CheckStatus.PASS, detail=f"pilots run here as {who} (no SSH)")
        return CheckResult("ssh", title, CheckStatus.PASS,
                           detail=f"logged in as {who} on {address_of(self.c)} in {res.duration:.2f} s "
                                  f"(host key in {self.c.known_hosts})")

    def check_scheduler(self) -> CheckResult:
        title = "scheduler commands present"
        cmds = scheduler_commands(self.c)
        script = 'for c; do command -v "$c" >/dev/null 2>&1 || printf "%s\\n" "$c"; done'
        res = self._run(["sh", "-c", script, "pilot-doctor", *cmds])
        missing = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        if res.returncode != 0:
            return CheckResult("scheduler", title, CheckStatus.FAIL, detail=f"the shell exited with "
                               f"{res.returncode}: {tail(res.stderr)}", fix="check the login shell on the cluster")
        if missing:
            sched = self.c.scheduler.value
            return CheckResult(
                "scheduler", title, CheckStatus.FAIL,
                detail=f"not found on the PATH of a non-interactive SSH command: {', '.join(missing)} "
                       f"(scheduler: {sched} needs {', '.join(cmds)})",
                fix=(f"is this a {sched} cluster? check `scheduler:` in {self.file}. The manager runs these "
                     "commands without your setup lines: if they come from a module, make them available in "
                     "non-interactive shells (e.g. `module load` near the top of ~/.bashrc, before any "
                     f"interactive-only guard); test with: {ssh_prefix(self.c)}command -v {missing[0]}"))
        return CheckResult("scheduler", title, CheckStatus.PASS, detail=f"found {', '.join(cmds)}")

    def check_work_dir(self) -> CheckResult:
        from pilot.transport import RemotePathError

        title = "work_dir writable"
        wd = self.c.work_dir
        probe = f"{wd}/.pilot-doctor-{secrets.token_hex(4)}"
        tr = self.transport
        try:
            tr.makedirs(wd)
            tr.put(b"fireworks-pilot doctor probe\n", probe, mode=0o600)
            size = tr.stat(probe).size
            tr.remove(probe)
        except RemotePathError as e:
            return CheckResult("work_dir", title, CheckStatus.FAIL, detail=f"{e.what} ({last(e.stderr_tail)})",
                               fix=(f"create it or choose a directory you can write: {ssh_prefix(self.c)}"
                                    f"mkdir -p {wd}, or change work_dir in {self.file}"))
        if size != len(b"fireworks-pilot doctor probe\n"):
            return CheckResult("work_dir", title, CheckStatus.FAIL,
                               detail=f"a probe file written to {wd} came back with {size} bytes",
                               fix="check the file system's quota and health (`df`, `quota`)")
        return CheckResult("work_dir", title, CheckStatus.PASS, detail=f"created, wrote and removed a file in {wd}")
