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
        title = "database reachable from the cluster"
        lpf = self.c.launchpad_file
        wait_ms = int(min(20.0, max(5.0, self.timeout / 3)) * 1000)
        res = self._after_setup([self.interpreter, "-c", DB_PROBE, lpf, str(wait_ms)])
        info = read_probe(res.stdout)
        if res.returncode == 0 and info is not None:
            return CheckResult("database", title, CheckStatus.PASS,
                               detail=f"{lpf}: database {info.get('database')} answered in {info.get('seconds')} s")
        err = short_reason(scrub(last(res.stderr), self._known_secrets()), limit=300) or f"exit code {res.returncode}"
        bootstrap = self.command(f"bootstrap {self.name}")
        if "FileNotFoundError" in err or "No such file" in err:
            fix = (f"the launchpad file is missing on the cluster: `{bootstrap}` copies yours there (mode 600), "
                   f"or correct launchpad_file in {self.file}")
        elif "PermissionError" in err:
            fix = f"the cluster user cannot read {lpf}: {ssh_prefix(self.c)}chmod 600 {lpf} (as its owner)"
        elif "ServerSelectionTimeout" in err or "Connection refused" in err or "timed out" in err:
            fix = ("the cluster cannot reach the database at the address in its launchpad file: the address "
                   "must be reachable from the cluster's nodes (not 'localhost' of your laptop); if the server "
                   "is the embedded one, run it with --host on a reachable address, then "
                   f"`{bootstrap} --db-host ADDRESS` writes that address into the cluster's file; "
                   "check firewalls between the cluster and the database")
        elif "Authentication" in err or "auth" in err.lower():
            fix = f"the database refused the credentials in {lpf}: check username/password there"
        else:
            fix = f"read the error above; test by hand: {ssh_prefix(self.c)}lpad -l {lpf} get_fws -d count"
        return CheckResult("database", title, CheckStatus.FAIL, detail=f"{lpf}: {err}", fix=fix)

    def _known_secrets(self) -> list[str]:
        """The passwords of the LaunchPad files on this machine (the config dir's, and the cluster's path when it
        is here too): the cluster's file is normally a copy, and the probe's error may quote its URI."""
        from pilot.launchpad.files import LaunchPadUnavailable, find_launchpad_file, read_settings, secrets_of

        out: list[str] = []
        for explicit in (None, self.c.launchpad_file):
            try:
                out += secrets_of(read_settings(find_launchpad_file(self.config_dir, explicit)))
            except (LaunchPadUnavailable, OSError):
                pass
        return out

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
