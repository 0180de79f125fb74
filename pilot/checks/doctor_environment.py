"""The doctor's checks of the worker's environment: the setup lines, the Python after them, the worker
command, and the pilot script rendered for every category (``bash -n`` on the cluster).

These run the way the pilot job runs: after the setup lines, under ``bash`` with ``set -e``.
"""

from __future__ import annotations

from pilot.checks.doctor_base import DoctorBase
from pilot.checks.probes import PY_PROBE, read_probe, ssh_prefix, tail
from pilot.checks.results import CheckResult, CheckStatus

__all__ = ["EnvironmentChecks"]


class EnvironmentChecks(DoctorBase):
    """``setup``, ``python``, ``worker`` and ``render``."""

    def check_setup(self) -> CheckResult:
        title = "setup lines run"
        if not self.c.setup.strip():
            return CheckResult("setup", title, CheckStatus.PASS,
                               detail="no setup lines: the worker runs in the login environment")
        res = self._after_setup(["true"])
        n = len(self.c.setup.strip("\n").splitlines())
        if res.returncode != 0:
            return CheckResult(
                "setup", title, CheckStatus.FAIL,
                detail=f"bash -c 'set -e; <setup>' exited with {res.returncode}:\n{tail(res.stderr)}",
                fix=(f"correct the failing line of `setup:` in {self.file} (line numbers count the setup "
                     f"lines); try the lines by hand in a login on the cluster: {ssh_prefix(self.c)}"))
        return CheckResult("setup", title, CheckStatus.PASS,
                           detail=f"{n} line{'s' if n != 1 else ''} ran with set -e under bash")

    def check_python(self) -> CheckResult:
        title = "Python imports fireworks and pilot"
        py = self.interpreter
        res = self._after_setup([py, "-c", PY_PROBE])
        info = read_probe(res.stdout)
        bootstrap = self.command(f"bootstrap {self.name}")
        fix = (f"install fireworks-pilot {self.local_version} in the environment your setup lines activate: "
               f"`{bootstrap}` does it (a venv in work_dir), or set python: in {self.file}")
        if res.returncode != 0 or info is None:
            why = f"{py} exited with {res.returncode}" if res.returncode != 127 else f"{py}: command not found"
            return CheckResult("python", title, CheckStatus.FAIL, detail=f"{why}: {tail(res.stderr, 3)}", fix=fix)
        self.python_info = info
        where = f"Python {info.get('python')} ({info.get('executable')})"
        if info.get("error"):
            return CheckResult("python", title, CheckStatus.FAIL, detail=f"{where}: {info['error']}", fix=fix)
        detail = f"{where}, fireworks {info.get('fireworks')}, fireworks-pilot {info.get('pilot')}"
        if info.get("pilot") != self.local_version:
            return CheckResult("python", title, CheckStatus.WARN,
                               detail=detail + f"; this machine has fireworks-pilot {self.local_version}",
                               fix=f"use the same version on both sides: `{bootstrap}`")
        return CheckResult("python", title, CheckStatus.PASS, detail=detail)

    def check_worker(self) -> CheckResult:
        import shlex

        title = "pilot worker starts"
        argv = list(self.c.worker_argv)
        res = self._after_setup([*argv, "--help"])
        shown = shlex.join(argv)
        if res.returncode != 0 or "--launchpad-file" not in res.stdout:
            what = (f"{argv[0]}: command not found" if res.returncode == 127 else
                    f"`{shown} --help` exited with {res.returncode}")
            return CheckResult("worker", title, CheckStatus.FAIL, detail=f"{what}: {tail(res.stderr, 3)}",
                               fix=(f"the job starts the worker as `{shown}` after the setup lines: install "
                                    f"fireworks-pilot there (`{self.command(f'bootstrap {self.name}')}`), or correct "
                                    f"worker_command / python in {self.file}"))
        return CheckResult("worker", title, CheckStatus.PASS, detail=f"`{shown} --help` works after setup")

    def check_render(self) -> CheckResult:
        from pilot.render import RenderError, render_pilot_script
        from queue_adapters.base import job_name

        title = "pilot script renders"
        scripts = []
        for cat in self.c.categories:
            try:
                scripts.append((cat, render_pilot_script(self.c, self.name, cat,
                                                         job_name(cat, "doctor", prefix=self.prefix))))
            except RenderError as e:
                return CheckResult("render", title, CheckStatus.FAIL, detail=str(e),
                                   fix=("correct the template or the field named above; see "
                                        f"`{self.command(f'render {self.name}')}`"))
        if self.state.get("ssh") not in (CheckStatus.PASS, CheckStatus.WARN):
            return CheckResult("render", title, CheckStatus.PASS,
                               detail=f"rendered for {', '.join(c for c, _ in scripts)} (bash -n skipped: no SSH)")
        for cat, text in scripts:
            res = self._run(["bash", "-n"], stdin=text)
            if res.returncode != 0:
                return CheckResult("render", title, CheckStatus.FAIL,
                                   detail=f"bash -n on the cluster rejects the script for {cat}: {tail(res.stderr)}",
                                   fix=(f"look at the script with `{self.command(f'render {self.name} -c {cat}')}` "
                                        "and correct the setup lines or the template"))
        return CheckResult("render", title, CheckStatus.PASS,
                           detail=f"rendered for {', '.join(c for c, _ in scripts)}; bash -n on the cluster passes")
