"""The doctor's LaunchPad checks: the database answers *from the cluster*, with the cluster's launchpad
file, and that file is readable by its owner alone (it holds the database password).
"""

from __future__ import annotations

from pilot.checks.doctor_base import DoctorBase
from pilot.checks.probes import DB_PROBE, last, read_probe, ssh_prefix
from pilot.checks.results import CheckResult, CheckStatus
from pilot.launchpad.files import scrub, short_reason

__all__ = ["LaunchpadChecks"]


class LaunchpadChecks(DoctorBase):
    """``database`` and ``launchpad_file``."""

    def check_database(self) -> CheckResult:
        """The login node reaches the database with the cluster's LaunchPad file. For an ssh route that file
        names the forward's port on the login node, so the doctor opens the forward for the check (a running
        manager's forward holds the port already, and serves)."""
        title = "database reachable from the cluster"
        lpf = self.c.launchpad_file
        wait_ms = int(min(20.0, max(5.0, self.timeout / 3)) * 1000)
        forward: str | None = None
        if self.c.ssh_route is not None:
            with self.route_forward(self.c) as forward:
                res = self._after_setup([self.interpreter, "-c", DB_PROBE, lpf, str(wait_ms)])
        else:
            res = self._after_setup([self.interpreter, "-c", DB_PROBE, lpf, str(wait_ms)])
        info = read_probe(res.stdout)
        if res.returncode == 0 and info is not None:
            through = f" (through the ssh route's forward on port {self.c.ssh_route.port})" if self.c.ssh_route else ""
            return CheckResult("database", title, CheckStatus.PASS,
                               detail=(f"{lpf}: database {info.get('database')} answered in {info.get('seconds')} "
                                       f"s{through}"))
        err = short_reason(scrub(last(res.stderr), self._known_secrets()), limit=300) or f"exit code {res.returncode}"
        unreachable = "ServerSelectionTimeout" in err or "Connection refused" in err or "timed out" in err
        if self.c.ssh_route is not None and forward is not None and unreachable:
            return CheckResult(
                "database", title, CheckStatus.WARN,
                detail=(f"{lpf}: {err}; this file names the ssh route's end on the login node (127.0.0.1:"
                        f"{self.c.ssh_route.port}), which is open only while a forward is up, and {forward}"),
                fix=("the route check below tries the route from a compute node; the manager opens the forward "
                     f"when it starts (`{self.command('manager start')}`)"))
        return CheckResult("database", title, CheckStatus.FAIL, detail=f"{lpf}: {err}",
                           fix=self._database_fix(err, unreachable))

    def _database_fix(self, err: str, unreachable: bool) -> str:
        """What to do when the login node cannot use the cluster's LaunchPad file: only commands that exist and
        settings that work (the address is set where the LaunchPad is started, and written by bootstrap)."""
        lpf = self.c.launchpad_file
        bootstrap = self.command(f"bootstrap {self.name}")
        if "FileNotFoundError" in err or "No such file" in err:
            return (f"a file is missing on the cluster (the LaunchPad file or the CA file it names): `{bootstrap}` "
                    f"copies both there (mode 600), or correct launchpad_file in {self.file}")
        if "PermissionError" in err:
            return f"the cluster user cannot read {lpf}: {ssh_prefix(self.c)}chmod 600 {lpf} (as its owner)"
        if unreachable:
            return ("the cluster cannot reach the database at the address in its LaunchPad file. If the LaunchPad is "
                    "this project's server and listens on loopback only, start it on an address the cluster reaches "
                    f"(`{self.command('launchpad stop')}`, then `{self.command('launchpad init --host ADDRESS')}`); "
                    f"then `{bootstrap}` writes that address into the cluster's file (`--db-host ADDRESS` when the "
                    "cluster reaches it under another name); check firewalls between the cluster and that port. If "
                    f"the cluster cannot reach this machine at all, write `launchpad_route: ssh` in {self.file} and "
                    f"run `{bootstrap}` (docs/deploying.md)")
        if "CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err:
            return (f"the server's certificate does not match the CA file that {lpf} names: `{bootstrap}` copies "
                    "the LaunchPad's CA again")
        if "Authentication" in err or "auth" in err.lower():
            return (f"the database refused the credentials in {lpf}: `{bootstrap}` writes that file anew from this "
                    "config dir's LaunchPad file")
        return f"read the error above; test by hand: {ssh_prefix(self.c)}lpad -l {lpf} get_fws -d count"

    def check_launchpad_file(self) -> CheckResult:
        import errno

        from pilot.transport import RemotePathError

        title = "launchpad file readable by its owner only"
        lpf = self.c.launchpad_file
        try:
            st = self.transport.stat(lpf)
        except RemotePathError as e:
            if e.errno == errno.ENOENT:
                return CheckResult("launchpad_file", title, CheckStatus.FAIL, detail=f"{lpf} does not exist",
                                   fix=(f"`{self.command(f'bootstrap {self.name}')}` copies your launchpad file "
                                        f"there with mode 600, or correct launchpad_file in {self.file}"))
            raise
        if st.mode & 0o077:
            return CheckResult("launchpad_file", title, CheckStatus.FAIL,
                               detail=(f"{lpf} has mode {st.mode:03o}: other users can read the database "
                                       "credentials in it"),
                               fix=f"{ssh_prefix(self.c)}chmod 600 {lpf}")
        return CheckResult("launchpad_file", title, CheckStatus.PASS, detail=f"{lpf} has mode {st.mode:03o}")
