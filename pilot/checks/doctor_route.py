"""The doctor's ``route`` check: the LaunchPad reached and logged in to *from a compute node*, by each route.

The ``database`` check runs on the login node, which often reaches the fileserver when the compute nodes do
not; only a job on a compute node tells whether pilots will. So this check submits one tiny batch job through
the cluster's scheduler adapter, as the manager submits pilots (the cluster's template, setup lines and
partition/account/qos; one core, two minutes; a job name with the config's ``job_name_prefix`` so that
``pilot status`` and the scheduler show whose it is), whose probe (:mod:`pilot.checks.route_probe`) tries
``direct`` and, when the route key is on the cluster, ``ssh``. For ``ssh`` the forward on the login node must be
up while the job runs: the doctor opens one for the check (:meth:`DoctorBase.route_forward`), or finds the
port held, most likely by the running manager's own forward, and lets the probe tell whether it leads to the
LaunchPad.

The verdict names the configured route that works, or, when it does not work, the exact ``launchpad_route``
line of the route that did; when none did, what each got (no route to host, refused, TLS, authentication) and
what to do. A job still pending when the wait ends is a warning (a busy queue is no fault of the cluster);
every job is cancelled by its id when it outlives the check, and its files are removed.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilot.checks.doctor_base import DoctorBase
from pilot.checks.probes import tail
from pilot.checks.results import CheckResult, CheckStatus
from pilot.checks.route_probe import (
    PROBE_WALLTIME,
    ROUTE_PROBE,
    ProbeAnswer,
    authorized_route_port,
    describe_failure,
    known_hosts_entry,
    launchpad_host_port,
    probe_outputs,
    read_answers,
    render_probe_script,
    route_yaml,
    usable_from_elsewhere,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pilot.config import ClusterConfig, SshRoute
    from queue_adapters.base import JobStatus

__all__ = ["ROUTE_TITLE", "RouteChecks"]

ROUTE_TITLE = "LaunchPad reachable from a compute node"
#: Seconds between two looks at the probe job (one queue listing and one file read over the pooled connection):
#: FIRST_POLL for the first FAST_LOOKS looks, POLL after them. A probe job that starts at once has answered
#: within a second or two (the doctor need not wait a whole POLL to see it); one that waits in a busy queue
#: is not asked about twice a second for minutes.
POLL = 2.0
FIRST_POLL = 0.5
FAST_LOOKS = 20


def _pauses() -> Iterator[float]:
    """The waits between two looks at a probe job: FAST_LOOKS of FIRST_POLL, then POLL."""
    for _ in range(FAST_LOOKS):
        yield FIRST_POLL
    while True:
        yield POLL


#: Server selection timeout of each attempt in the probe (ms), and how long its ssh may take to forward (s).
PROBE_WAIT_MS = 10000
PROBE_SSH_TIMEOUT = 25


@dataclass
class Candidate:
    """A route the probe tries: what it is told, the line that selects it, and (ssh) the route itself."""

    route: str
    spec: dict[str, Any]
    yaml: str
    ssh: SshRoute | None = None
    cluster: ClusterConfig | None = None     # ssh: the cluster with this route (for the forward)


@dataclass
class RoutePlan:
    """What the check tries, and why it leaves a route out."""

    configured: str
    candidates: dict[str, Candidate] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing_route_files: bool = False        # no route key / known_hosts on the cluster: bootstrap makes them
    loopback: str | None = None              # this machine's LaunchPad listens where only it can connect
    forward: str | None = None               # why the doctor's own forward is not up (None: it is, or no ssh)


@dataclass
class ProbeJob:
    """The probe's batch job and its files on the cluster."""

    job_id: str
    name: str
    script: str
    output: str


@dataclass
class ProbeOutcome:
    """What became of the probe job."""

    answers: dict[str, ProbeAnswer] = field(default_factory=dict)
    done: dict[str, Any] | None = None
    text: str = ""
    state: JobStatus | None = None
    running_since: float | None = None
    waited: float = 0.0
    ended: bool = False                      # the job left the queue (or reached a final state)
    timed_out: bool = False

    @property
    def started(self) -> bool:
        """The job got to a compute node (a job that never did is a busy queue, not a failed route)."""
        return self.running_since is not None or bool(self.text) or bool(self.answers)


class RouteChecks(DoctorBase):
    """``route``."""

    def check_route(self) -> CheckResult:
        if self.c.is_local:
            return CheckResult("route", ROUTE_TITLE, CheckStatus.PASS,
                               detail="scheduler local: the pilots run on this machine, so the database check "
                                      "above answers for them")
        plan = self._route_plan()
        if not plan.candidates:
            return self._verdict(plan, ProbeOutcome(), None)
        ssh = plan.candidates.get("ssh")
        forward: AbstractContextManager[str | None] = (
            self.route_forward(ssh.cluster) if ssh is not None and ssh.cluster is not None else nullcontext())
        with forward as note:
            plan.forward = note
            job = self._submit_probe(plan)
            if isinstance(job, CheckResult):
                return job
            outcome = ProbeOutcome()
            try:
                outcome = self._await_probe(job)
            finally:
                self._finish(job, outcome)
        return self._verdict(plan, outcome, job)

    # ------------------------------------------------------------------ what to try
    def _route_plan(self) -> RoutePlan:
        """The candidates: ``direct`` as the cluster's file names it (or, for an ssh-routed cluster, as this
        machine's LaunchPad file names it), and ``ssh`` when the route key and known_hosts are on the cluster."""
        from pilot.launchpad.files import LaunchPadUnavailable

        plan = RoutePlan(configured="ssh" if self.c.ssh_route is not None else "direct")
        if plan.configured == "direct":
            plan.candidates["direct"] = Candidate("direct", {"route": "direct"}, route_yaml(None))
        else:
            try:
                here = launchpad_host_port(self.local_launchpad())
            except LaunchPadUnavailable as e:
                here, why = None, f"this config dir's LaunchPad file cannot be read ({e.problem})"
            else:
                why = "this config dir's LaunchPad file names no host and port (a DNS seed list or a socket)"
            if here is None:
                plan.skipped["direct"] = why
            elif not usable_from_elsewhere(here[0]):
                plan.loopback = here[0]
                plan.skipped["direct"] = (f"this config dir's LaunchPad file names {here[0]}, an address of this "
                                          "machine only")
            else:
                plan.candidates["direct"] = Candidate("direct", {"route": "direct", "host": here[0], "port": here[1]},
                                                      route_yaml(None))
        self._plan_ssh(plan)
        return plan

    def _plan_ssh(self, plan: RoutePlan) -> None:
        from pilot.render import ROUTE_KEY, ROUTE_KNOWN_HOSTS, route_context

        for path in (ROUTE_KEY, ROUTE_KNOWN_HOSTS):
            if not self.transport.exists(path):
                plan.missing_route_files = True
                plan.skipped["ssh"] = f"there is no {path} on the cluster (`pilot bootstrap` makes it for an ssh route)"
                return
        cluster: ClusterConfig | None = self.c
        if self.c.ssh_route is None:
            cluster, why = self._bootstrapped_route()
            if cluster is None:
                plan.skipped["ssh"] = why
                return
        assert cluster is not None and cluster.ssh_route is not None
        route = cluster.ssh_route
        ctx = route_context(cluster) or {}
        plan.candidates["ssh"] = Candidate(
            "ssh", {"route": "ssh", "target": ctx["target"], "port": route.port, "key": ROUTE_KEY,
                    "known_hosts": ROUTE_KNOWN_HOSTS}, route_yaml(route), ssh=route, cluster=cluster)

    def _bootstrapped_route(self) -> tuple[ClusterConfig | None, str]:
        """For a cluster set to ``direct``: the ssh route that an earlier ``pilot bootstrap`` set up, read back from
        the login node (the address and port of ``route_known_hosts``, the port of the route key's line in
        ``authorized_keys``), so that the check can offer it when it works. Only when the known host key is this
        login node's: a home shared with another cluster may hold that cluster's file."""
        from pilot.checks.bootstrap_route import AUTHORIZED_KEYS, verified_host_key
        from pilot.config import LaunchPadRoute
        from pilot.render import ROUTE_KNOWN_HOSTS

        entry = known_hosts_entry(self._read_remote(ROUTE_KNOWN_HOSTS) or "")
        if entry is None:
            return None, f"{ROUTE_KNOWN_HOSTS} on the cluster names no login node"
        key = verified_host_key(self.transport)
        if key is not None and key[1] != entry[2]:
            return None, (f"{ROUTE_KNOWN_HOSTS} on the cluster holds another machine's host key than this login "
                          "node's (left by another cluster?)")
        port = authorized_route_port(self._read_remote(AUTHORIZED_KEYS) or "")
        try:
            lr = LaunchPadRoute.model_validate({"via": "ssh", "port": port, "login_address": entry[0],
                                                "login_port": entry[1]})
        except ValueError as e:
            return None, f"{ROUTE_KNOWN_HOSTS} on the cluster names no usable login node ({e})"
        return self.c.model_copy(update={"launchpad_route": lr}), ""

    def _read_remote(self, path: str, tries: int = 5) -> str | None:
        """A small text file of the cluster (``~/`` allowed), None when it does not exist.

        The probe job appends to the file while the doctor polls it: a copy that sees the file grow under it
        (EIO, the size changed between stat and read) is tried again, a moment later."""
        import errno
        import tempfile
        from pathlib import Path

        from pilot.transport import RemotePathError

        with tempfile.TemporaryDirectory(prefix="pilot-doctor-") as tmp:
            for attempt in range(tries):
                try:
                    self.transport.get(path, Path(tmp) / "f")
                    break
                except RemotePathError as e:
                    if e.errno in (errno.ENOENT, None):
                        return None
                    if e.errno != errno.EIO or attempt == tries - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            return (Path(tmp) / "f").read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ the job
    def _submit_probe(self, plan: RoutePlan) -> ProbeJob | CheckResult:
        from pilot.render import RenderError
        from pilot.transport.clusters import adapter_for
        from queue_adapters.base import SubmitOutcome, job_name

        name = job_name("doctor", secrets.token_hex(3), prefix=self.prefix)
        work = self.c.work_dir.rstrip("/") or "/"
        script, output = f"{work}/scripts/{name}.sh", f"{work}/{name}.route"
        spec = {"launchpad_file": self.c.launchpad_file, "wait_ms": PROBE_WAIT_MS, "ssh_timeout": PROBE_SSH_TIMEOUT,
                "candidates": [c.spec for c in plan.candidates.values()]}
        try:
            text = render_probe_script(self.c, self.name, name, [self.interpreter, "-c", ROUTE_PROBE,
                                                                 json.dumps(spec)], output)
        except RenderError as e:
            return CheckResult("route", ROUTE_TITLE, CheckStatus.FAIL, detail=str(e),
                               fix=f"the render check names the problem; `{self.command(f'render {self.name}')}`")
        self.transport.put(text.encode(), script, mode=0o700)
        ad = adapter_for(self.c)
        res = self._run(ad.submit_command(script), stdin=text if ad.submit_stdin_from_script else None)
        sub = ad.parse_submit(res.returncode, res.stdout, res.stderr)
        if sub.outcome is SubmitOutcome.SUBMITTED and sub.job_id:
            self.progress(f"probe job {sub.job_id} submitted")
            return ProbeJob(str(sub.job_id), name, script, output)
        if sub.outcome is SubmitOutcome.UNKNOWN:
            self._cancel_by_name(name)
        self._remove([script, output])
        return CheckResult(
            "route", ROUTE_TITLE, CheckStatus.FAIL,
            detail=f"the scheduler did not take the probe job {name} (1 node, 1 core, {PROBE_WALLTIME // 60} min): "
                   f"{sub.reason}",
            fix=(f"the pilots are submitted the same way: correct partition/account/qos or extra_directives in "
                 f"{self.file} (see the scheduler's message above)"))

    def _job_status(self, job_id: str) -> tuple[bool, JobStatus | None]:
        """(the scheduler answered, the job's status: None when it has left the queue)."""
        from pilot.transport import TransportError
        from pilot.transport.clusters import adapter_for
        from queue_adapters.base import SchedulerQueryError

        ad = adapter_for(self.c)
        try:
            res = self._run(ad.status_command(job_ids=[job_id], user=self.c.user))
            return True, ad.parse_status(res.returncode, res.stdout, res.stderr).get(job_id)
        except (TransportError, SchedulerQueryError):
            return False, None

    def _await_probe(self, job: ProbeJob) -> ProbeOutcome:
        """Look at the job and its output (soon, then every :data:`POLL` seconds) until the probe has answered,
        the job has ended, or the wait is over: ``route_timeout`` for a job that has not started; once it runs,
        until its wall time is over (the scheduler ends it then)."""
        from queue_adapters.base import JobState

        out = ProbeOutcome()
        t0 = time.monotonic()
        pauses = _pauses()
        gone_since: float | None = None
        while True:
            out.text = self._read_remote(job.output) or ""
            out.answers, out.done = read_answers(out.text)
            if out.done is not None:
                return out
            answered, status = self._job_status(job.job_id)
            now = time.monotonic()
            out.waited = now - t0
            if answered:
                out.state = status or out.state
                if status is None or status.state.final:
                    gone_since = now if gone_since is None else gone_since
                    if now - gone_since >= 2 * POLL:   # its last lines may need a moment to show on a shared
                        out.ended = True                # file system
                        return out
                elif status.state in (JobState.RUNNING, JobState.COMPLETING) and out.running_since is None:
                    out.running_since = now
            limit = t0 + self.route_timeout
            if out.running_since is not None:
                limit = max(limit, out.running_since + PROBE_WALLTIME + 30)
            if now >= limit:
                out.timed_out = True
                return out
            shown = status.state.value if status is not None else "not in the queue"
            why = f" ({status.reason})" if status is not None and status.reason else ""
            self.progress(f"probe job {job.job_id}: {shown}{why}, {out.waited:.0f} s")
            time.sleep(next(pauses))

    def _wait_gone(self, job_id: str, seconds: float) -> bool:
        """Wait until the job has left the queue or ended; False when it is still there after ``seconds``."""
        end = time.monotonic() + seconds
        pauses = _pauses()
        while True:
            answered, status = self._job_status(job_id)
            if answered and (status is None or status.state.final):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(next(pauses))

    def _finish(self, job: ProbeJob, out: ProbeOutcome) -> None:
        """Cancel the job when it outlives the check (by its id), then remove its files (after it has left the
        queue: PBS copies its output file only at the end)."""
        from pilot.transport.clusters import adapter_for

        if not out.ended and not (out.done is not None and self._wait_gone(job.job_id, 30)):
            self._run(adapter_for(self.c).cancel_command([job.job_id]))
            self._wait_gone(job.job_id, 20)
        self._remove([job.script, job.output, *probe_outputs(self.c.work_dir.rstrip("/"), job.name, job.job_id)])

    def _cancel_by_name(self, name: str) -> None:
        """Cancel a job whose submission had no readable answer, found by its name (it may exist)."""
        from pilot.transport.clusters import adapter_for
        from queue_adapters.base import SchedulerQueryError

        ad = adapter_for(self.c)
        res = self._run(ad.status_command(user=self.c.user))
        try:
            ids = [s.job_id for s in ad.parse_status(res.returncode, res.stdout, res.stderr).values() if s.name == name]
        except SchedulerQueryError:
            return
        if ids:
            self._run(ad.cancel_command(ids))

    def _remove(self, paths: list[str]) -> None:
        self._run(["rm", "-f", "--", *paths])

    # ------------------------------------------------------------------ the verdict
    def _verdict(self, plan: RoutePlan, out: ProbeOutcome, job: ProbeJob | None) -> CheckResult:
        conf = plan.configured
        works = {r: a for r, a in out.answers.items() if a.ok}
        node = f"compute node {out.done['node']}" if out.done and out.done.get("node") else "a compute node"
        lines = self._candidate_lines(plan, out)
        if conf in works:
            head = (f"{conf} works from {node} (job {job.job_id if job else '?'}): connect+auth "
                    f"{works[conf].seconds} s")
            return CheckResult("route", ROUTE_TITLE, CheckStatus.PASS, detail="\n".join([head, *lines]))
        if job is not None and out.timed_out and not out.started:
            state = out.state.state.value if out.state is not None else "PENDING"
            why = f": {out.state.reason}" if out.state is not None and out.state.reason else ""
            return CheckResult(
                "route", ROUTE_TITLE, CheckStatus.WARN,
                detail=(f"the probe job {job.job_id} was still pending after {out.waited:.0f} s ({state}{why}); it "
                        "was cancelled, so no route was tried from a compute node"),
                fix=(f"a busy queue is no fault of the cluster: run `{self.command(f'doctor {self.name}')} "
                     "--route-timeout 900` when it is quieter"))
        if job is not None and not out.answers:
            what = "ran without an answer" if out.timed_out else "ended without an answer"
            shown = tail(self._scrubbed(out.text), 8) or "(no output)"
            return CheckResult(
                "route", ROUTE_TITLE, CheckStatus.FAIL,
                detail=f"the probe job {job.job_id} {what} after {out.waited:.0f} s; its output:\n{shown}",
                fix=("the job runs the setup lines and Python of the cluster file on a compute node: they must work "
                     "there as on the login node (modules, paths); test by hand with an interactive job"))
        head = (f"the configured route, {conf}, does not work from {node}" if works else
                f"no route reaches the LaunchPad from {node}" if job is not None else
                "no route could be tried from a compute node")
        return CheckResult("route", ROUTE_TITLE, CheckStatus.FAIL, detail="\n".join([head, *lines]),
                           fix=self._switch_fix(plan, works) if works else self._none_fix(plan, out))

    def _candidate_lines(self, plan: RoutePlan, out: ProbeOutcome) -> list[str]:
        lines = []
        for route in ("direct", "ssh"):
            cand, ans = plan.candidates.get(route), out.answers.get(route)
            if cand is None:
                if route in plan.skipped:
                    lines.append(f"{route}: not tried: {plan.skipped[route]}")
                continue
            port = cand.ssh.port if cand.ssh is not None else None
            via = (f" through {cand.spec['target']} to the login node's 127.0.0.1:{port}"
                   if cand.ssh is not None else "")
            if ans is None:
                lines.append(f"{route}: no answer (the probe did not get to it)")
            elif ans.ok:
                lines.append(f"{route}: works, connect+auth {ans.seconds} s ({ans.where}){via}")
            else:
                lines.append(f"{route}: {self._scrubbed(describe_failure(ans, port))}{via}")
        if "ssh" in plan.candidates and plan.forward:
            lines.append(f"forward: {plan.forward}")
        return lines

    def _scrubbed(self, text: str) -> str:
        from pilot.launchpad.files import scrub

        return scrub(text, self._known_secrets())

    def _switch_fix(self, plan: RoutePlan, works: dict[str, ProbeAnswer]) -> str:
        """The exact line of a route that worked, and what makes the rest of the setup follow it."""
        bootstrap = f"`{self.command(f'bootstrap {self.name}')}`"
        route = "ssh" if "ssh" in works else "direct"
        cand = plan.candidates[route]
        if route == "direct":
            return (f"write `{cand.yaml}` in {self.file} (direct worked from the compute node, to "
                    f"{works['direct'].where}), then run {bootstrap}: it points the cluster's LaunchPad file there")
        return (f"write `{cand.yaml}` in {self.file} (the ssh route worked from the compute node), then run "
                f"{bootstrap} (the cluster's LaunchPad file then names the route's end) and restart the manager if "
                f"it runs (`{self.command('manager stop')}`, `{self.command('manager start')}`): it keeps the "
                "forward of an ssh route")

    def _none_fix(self, plan: RoutePlan, out: ProbeOutcome) -> str:
        """What to do when no route worked: only commands that exist, and the deployment guide."""
        bootstrap = f"`{self.command(f'bootstrap {self.name}')}`"
        said = " ".join(describe_failure(a) for a in out.answers.values() if not a.ok)
        parts = []
        if "authentication refused" in said:
            parts.append(f"the LaunchPad refused the credentials of {self.c.launchpad_file}: {bootstrap} writes "
                         "it anew from this config dir's LaunchPad file")
        if "TLS failed" in said or "is missing on the compute node" in said:
            parts.append(f"{bootstrap} copies the LaunchPad's CA file to the cluster and names it in the cluster's "
                         "LaunchPad file")
        if plan.loopback is not None:
            parts.append(f"this machine's LaunchPad listens on {plan.loopback} only: `{self.command('launchpad stop')}`"
                         f", then `{self.command('launchpad init --host ADDRESS')}` with an address the compute "
                         f"nodes reach, then {bootstrap}")
        if plan.missing_route_files:
            how = "" if plan.configured == "ssh" else f"write `launchpad_route: ssh` in {self.file}, then "
            parts.append(f"to try the ssh route: {how}run {bootstrap} (it makes the route key and its known_hosts "
                         "file), then this doctor again")
        parts.append("if neither route can work on this cluster: docs/deploying.md#when-neither-route-works")
        return "; ".join(parts)
