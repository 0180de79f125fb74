"""``clusters/NAME.yaml``: one cluster, its ``pilot:`` resources and its ``limits:``.

The scheduler comes first: the validators of the fields after it (host, walltime, directives, ...) depend
on it, and pydantic validates fields in the order they are declared.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from pilot.config.checks_cluster import (
    check_control_path,
    check_fworker_query,
    check_host,
    check_known_hosts,
    check_ssh_field,
    check_use_ssh_config,
    check_zone_name,
)
from pilot.config.errors import field_error, field_errors
from pilot.config.models_budget import Budget, budgets_from
from pilot.config.models_fworker import FWorkerSettings
from pilot.config.models_resources import (
    DEFAULT_PROFILE,
    PilotResources,
    check_one_form,
    check_profiles,
    check_resources,
)
from pilot.config.models_route import LaunchPadRoute, SshRoute
from pilot.config.units import (
    ENV_NAME_RE,
    PATH_RE,
    RESERVED_ENV,
    SLURM_MAX_SIGNAL_TIME,
    Scheduler,
    base_dir_of,
    existing_file,
    expand_path,
    one_line,
    validate_name,
)

__all__ = ["ClusterConfig", "Limits", "PilotResources"]



class Limits(BaseModel):
    """How many pilots of this manager may be on the cluster at once (the policy in pilot/manager/policy.py)."""

    model_config = ConfigDict(extra="forbid")

    max_queued: int = Field(10, ge=1, description="Most pilots of this manager waiting in the cluster's queue "
                            "at once, all categories together (at least 1: a new pilot waits first).",
                            examples=[10])
    max_running: int = Field(20, ge=1, description="Most pilots of this manager on the cluster at once, queued "
                             "or running, all categories together.", examples=[20])
    min_pilots: int = Field(0, ge=0, description="Pilots kept (queued or running) for each category even when "
                            "no Firework is READY, a warm pool; 0 submits on demand only. With several queue "
                            "profiles: per category on the cluster, all profiles together.", examples=[0])

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if self.max_queued > self.max_running:
            raise field_error(f"max_queued ({self.max_queued}) is more than max_running ({self.max_running}), which "
                              "counts queued and running pilots together, so the extra queue room is never used: write "
                              f"max_queued: {self.max_running} or less, or raise max_running", subfield="max_queued")
        if self.min_pilots > self.max_running:
            raise field_error(f"min_pilots ({self.min_pilots}) is more than max_running ({self.max_running}): "
                              f"that many pilots may never be on the cluster; write min_pilots: {self.max_running} "
                              "or less",
                              subfield="min_pilots")
        return self


class ClusterConfig(BaseModel):
    """``clusters/NAME.yaml``: one cluster (or this machine, with ``scheduler: local``)."""

    model_config = ConfigDict(extra="forbid")

    # -- the scheduler first: the validators of the fields below depend on it
    scheduler: Scheduler = Field(description="The cluster's batch system: slurm, pbs (PBS Pro / OpenPBS), torque, "
                                 "lsf, sge (Grid Engine), or local (pilots run as processes on this machine, no "
                                 "SSH).", examples=["slurm"])
    # -- reaching the cluster
    host: str | None = Field(None, validate_default=True,
                             description="Login host to reach over SSH (a ~/.ssh/config alias works with "
                             "use_ssh_config). Required unless scheduler is local.",
                             examples=["login.stampede.example.org"])
    user: str | None = Field(None, description="User name on the cluster; null: from ~/.ssh/config "
                             "(use_ssh_config) or your local user name.", examples=["alice"])
    port: int = Field(22, ge=1, le=65535, description="SSH port. With use_ssh_config, a Port line in "
                      "~/.ssh/config replaces the default 22.", examples=[22])
    identity_file: Path | None = Field(None, description="Private key file for SSH ('~' is expanded); "
                                       "null: your SSH agent / ~/.ssh/config / default keys.",
                                       examples=["~/.ssh/id_ed25519"])
    proxy_jump: str | None = Field(None, description="A gateway to hop through, as [user@]host[:port] "
                                   "(like ssh -J); null for a direct connection.",
                                   examples=["alice@gateway.example.org:22"])
    strict_host_key_checking: bool = Field(True, description="Refuse hosts whose key is not in known_hosts "
                                           "(true, recommended). false accepts and records unknown keys.",
                                           examples=[True])
    known_hosts: Path = Field(Path("~/.ssh/known_hosts"), validate_default=True,
                              description="known_hosts file with the cluster's host key ('~' is expanded).",
                              examples=["~/.ssh/known_hosts"])
    control_path: str | None = Field(None, description="For a cluster that asks for a one-time password (TOTP, "
                                     "Duo) at each login: the OpenSSH ControlMaster socket that `pilot connect` "
                                     "opens (asking for the code once) and everything else uses without a code; "
                                     "ssh's tokens work (%C, %h, %p, %r). null: keys alone log in.",
                                     examples=["~/.ssh/pilot-%C"])
    use_ssh_config: bool = Field(False, description="Also read ~/.ssh/config for this host (HostName, User, "
                                 "Port, IdentityFile, ProxyJump, UserKnownHostsFile) where this file leaves "
                                 "the value unset; the file must exist.", examples=[False])
    connect_timeout: float = Field(30.0, gt=0, description="Seconds the whole SSH connection set-up (TCP, "
                                   "banner, key exchange, authentication) may take.", examples=[30])
    command_timeout: float = Field(120.0, gt=0, description="Seconds any one remote command (sbatch, squeue, "
                                   "...) or file transfer (the job script's upload; counted from the last data "
                                   "that moved) may take before it counts as failed.", examples=[120])
    timezone: str | None = Field(None, description="IANA time zone in which the cluster's scheduler prints its "
                                 "times (PBS and LSF print local times without a zone), e.g. Europe/Berlin; null: "
                                 "the time zone of the machine the manager runs on.", examples=["America/Chicago"])
    # -- what the pilots do
    categories: list[str] = Field(min_length=1, description="FireWorks _category values this cluster serves; "
                                  "each pilot serves one category.", examples=[["md"]])
    fworker_query: dict[str, Any] = Field(default_factory=dict, description="A FireWorks FWorker query (a "
                                          "MongoDB filter on the fireworks collection) that the pilots of "
                                          "this cluster add to their own: they take only Fireworks it "
                                          "matches, and only those count as demand for this cluster.",
                                          examples=[{"spec.needs_gpu": {"$ne": True}}])
    launchpad_file: str = Field(description="The LaunchPad file as the pilot on the cluster sees it "
                                "(absolute, or starting with ~/ for the cluster user's home).",
                                examples=["/home/alice/.pilot/my_launchpad.yaml"])
    launchpad_route: LaunchPadRoute = Field(default_factory=lambda: LaunchPadRoute.model_validate({}),
                                            description="How the pilots on the "
                                            "compute nodes reach the LaunchPad: direct (the host and port of "
                                            "launchpad_file), or ssh (through a forward the manager keeps on the "
                                            "login node); a word or a mapping (see docs/configuration.md).",
                                            examples=["direct"])
    work_dir: str = Field(description="Absolute directory on the cluster for job scripts, pilot output and "
                          "exit-code files ('~' is not expanded in scheduler directives, so write the full "
                          "path; for local, '~' is expanded).", examples=["/scratch/alice/pilot"])
    python: str | None = Field(None, description="Python interpreter on the cluster; when set the worker is "
                               "started as PYTHON -m pilot worker (instead of worker_command).",
                               examples=["/home/alice/venvs/pilot/bin/python"])
    worker_command: str = Field("pilot worker", description="Command that starts the pilot worker, as shell "
                                "words (the worker options are appended).", examples=["pilot worker"])
    setup: str = Field("", description="Shell lines run (with set -e) before the worker starts: module "
                       "loads, venv activation. A list of lines is accepted too.",
                       examples=["module load gromacs/2022\nsource ~/venvs/pilot/bin/activate\n"])
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables exported in "
                                "the pilot job (values are quoted; use setup for shell expansions).",
                                examples=[{"OMP_NUM_THREADS": "1"}])
    pilot: PilotResources | None = Field(None, description="What every pilot job requests from the scheduler "
                                         "(one queue profile, named default). Write either pilot or profiles.")
    profiles: dict[str, PilotResources] = Field(default_factory=dict, description="Several queue profiles "
                                                "(name: resources, as pilot), e.g. a GPU and a CPU partition: "
                                                "for the READY work, the manager submits pilots of the profile "
                                                "whose resources fit what the Fireworks ask for (spec._pilot: "
                                                "walltime, cores, gpus, memory) and whose queue waits least.",
                                                examples=[{"gpu": {"walltime": "12:00:00", "cores": 8, "gpus": 1,
                                                                   "partition": "gpu"},
                                                           "cpu": {"walltime": "24:00:00", "cores": 32,
                                                                   "partition": "normal"}}])
    fworker: FWorkerSettings = Field(default_factory=lambda: FWorkerSettings.model_validate({}),
                                     description="The FireWorks FWorker the pilots are (name, query, env), as "
                                     "rlaunch -w my_fworker.yaml reads it.")
    walltime_margin: int = Field(600, ge=0, description="Seconds before the end of the wall time at which "
                                 "the pilot stops starting work (and the scheduler's warning signal USR1 is "
                                 "asked for).", examples=[600])
    grace: int = Field(60, ge=0, description="Seconds the worker waits for a running task after forwarding "
                       "SIGTERM to it before killing it; must be less than walltime_margin.", examples=[60])
    idle_timeout: int = Field(300, ge=0, description="Seconds a pilot waits with no READY Firework before it "
                              "exits (0: exit as soon as there is no work).", examples=[300])
    heartbeat_interval: int = Field(60, ge=1, le=3600, description="Seconds between two heartbeats the pilot "
                                    "writes into its record. The manager takes a pilot whose job ended for dead "
                                    "(and reruns the work it held) once its heartbeat is older than three "
                                    "intervals, or at once when the pilot wrote its exit record.",
                                    examples=[60])
    fireworks_per_pilot: int = Field(1, ge=1, description="How many READY Fireworks one pilot is expected to "
                                     "run, used when Fireworks give no expected duration: READY / this = "
                                     "pilots wanted.", examples=[1])
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}),
                           description="How many pilots may be queued/running at once.")
    budget: list[Budget] = Field(default_factory=list, description="Core-hours this manager may spend on the "
                                 "cluster, per account: new pilots stop when they would go over (one mapping or a "
                                 "list; see docs/campaign.md).",
                                 examples=[{"core_hours": 5000, "account": "chem123", "since": "2026-12-01"}])
    template: Path | None = Field(None, description="A custom Jinja2 job template (may {% extends "
                                  "\"slurm.sh.j2\" %} and override blocks); relative to the clusters/ folder. "
                                  "null uses the built-in template of the scheduler.",
                                  examples=["../templates/my-slurm.sh.j2"])

    _source: Path | None = PrivateAttr(None)

    # ------------------------------------------------------------------ derived values
    @property
    def source_file(self) -> Path | None:
        """The file this cluster was loaded from (``None`` when built in code)."""
        return self._source

    @property
    def pilot_profiles(self) -> dict[str, PilotResources]:
        """The queue profiles by name: ``profiles``, or ``{"default": pilot}`` for the one-profile form."""
        if self.profiles:
            return dict(self.profiles)
        if self.pilot is None:
            raise RuntimeError("a validated ClusterConfig has pilot or profiles")
        return {DEFAULT_PROFILE: self.pilot}

    def profile(self, name: str | None = None) -> PilotResources:
        """One queue profile by name; None: the first (``pilot:``'s, or the first written under ``profiles:``).

        Raises
        ------
        KeyError
            When the cluster has no profile of that name (a record written before its file changed).
        """
        profiles = self.pilot_profiles
        return next(iter(profiles.values())) if name is None else profiles[name]

    def pilot_cores(self, profile: str | None = None) -> int:
        """Cores of one pilot of ``profile`` (a record's): its nodes times cores; a profile the file no longer has
        (or None): the first profile's, as :meth:`profile` gives it."""
        return self.profile(profile if profile in self.pilot_profiles else None).total_cores

    def profile_categories(self, name: str) -> tuple[str, ...]:
        """The categories one profile serves: its own ``categories``, else the cluster's."""
        return tuple(self.profile(name).categories or self.categories)

    def profiles_for(self, category: str) -> list[str]:
        """The profiles that serve ``category``, in the order the file lists them."""
        return [name for name in self.pilot_profiles if category in self.profile_categories(name)]

    def gpu_work_only(self, name: str) -> bool:
        """Does profile ``name`` take only Fireworks that ask for a GPU? Yes for a profile with GPUs when every
        category it serves is also served by a profile without GPUs, which takes the CPU work: GPU allocations are
        then never spent on it. A cluster's only profile, or a GPU profile that alone serves a category, takes
        any work (nothing else would)."""
        if not self.profile(name).gpus:
            return False
        cpu = [p for p in self.pilot_profiles if not self.profile(p).gpus]
        return bool(cpu) and all(any(c in self.profile_categories(p) for p in cpu)
                                 for c in self.profile_categories(name))

    @property
    def walltime_seconds(self) -> int:
        """The longest wall time of the cluster's profiles (that of ``pilot:`` when it has one profile)."""
        return max(p.walltime_seconds for p in self.pilot_profiles.values())

    @property
    def memory_mb(self) -> int | None:
        """The first profile's ``memory`` in MiB, or ``None``."""
        return self.profile().memory_mb

    @property
    def query(self) -> dict[str, Any]:
        """The FWorker query of its pilots: ``fworker.query`` or (the older field) ``fworker_query``."""
        return dict(self.fworker.query or self.fworker_query)

    @property
    def worker_argv(self) -> list[str]:
        """The words that start the worker (its options are appended by the template)."""
        if self.python:
            return [self.python, "-m", "pilot", "worker"]
        return shlex.split(self.worker_command)

    @property
    def worker_is_pilot(self) -> bool:
        """Is the worker command ``pilot worker`` itself (``python: ...``, ``[.../]pilot worker ...`` or
        ``PYTHON -m pilot worker ...``) rather than a wrapper of the user's (``srun ...``, a script)? The job script
        starts pilot's own worker with SIGUSR1 ignored until the worker sets its handler (a shell wrapper could
        not trap it then)."""
        argv = self.worker_argv
        own = bool(argv) and Path(argv[0]).name == "pilot" and argv[1:2] == ["worker"]
        return self.python is not None or own or argv[1:4] == ["-m", "pilot", "worker"]

    @property
    def ssh_route(self) -> SshRoute | None:
        """The ssh route with its defaults filled in (login node = ``host``:``port``), ``None`` for ``direct``."""
        import getpass

        return self.launchpad_route.resolve(self.host, self.port, self.user or getpass.getuser())

    @property
    def is_local(self) -> bool:
        """True for ``scheduler: local`` (no SSH)."""
        return self.scheduler is Scheduler.LOCAL

    def directive_lines(self, profile: str | None = None) -> list[str]:
        """A profile's ``extra_directives`` as full directive lines (the scheduler's prefix added to plain
        options)."""
        prefix = self.scheduler.directive_prefix
        out = []
        for line in self.profile(profile).extra_directives:
            out.append(line if line.startswith("#") or prefix is None else f"{prefix} {line}")
        return out

    # ------------------------------------------------------------------ validators (in field order)
    @staticmethod
    def _sched(info: ValidationInfo) -> Scheduler | None:
        s = info.data.get("scheduler")
        return s if isinstance(s, Scheduler) else None

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in {s.value for s in Scheduler}:
            return v.lower()
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None, info: ValidationInfo) -> str | None:
        return check_host(v, cls._sched(info))

    @field_validator("user", "port", "identity_file", "proxy_jump")
    @classmethod
    def _ssh_only(cls, v: Any, info: ValidationInfo) -> Any:
        return check_ssh_field(str(info.field_name), v, cls._sched(info))

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts(cls, v: Path, info: ValidationInfo) -> Path:
        return check_known_hosts(v, cls._sched(info), info.data)

    @field_validator("control_path")
    @classmethod
    def _control_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return check_control_path(v, cls._sched(info), info.data)

    @field_validator("use_ssh_config")
    @classmethod
    def _ssh_config(cls, v: bool, info: ValidationInfo) -> bool:
        return check_use_ssh_config(v, cls._sched(info))

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        return None if v is None else check_zone_name(v)

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: list[str]) -> list[str]:
        problems = []
        seen: set[str] = set()
        for i, c in enumerate(v):
            try:
                validate_name(c, "category")
            except ValueError as e:
                problems.append((f"[{i}]", str(e)))
            if c in seen:
                problems.append((f"[{i}]", f"category {c!r} is listed twice: remove one"))
            seen.add(c)
        if problems:
            raise field_errors(problems)
        return v

    @field_validator("fworker_query")
    @classmethod
    def _fworker_query(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_fworker_query(v)

    @field_validator("launchpad_file")
    @classmethod
    def _launchpad_file(cls, v: str, info: ValidationInfo) -> str:
        one_line(v, "launchpad_file")
        if cls._sched(info) is Scheduler.LOCAL:
            return str(expand_path(v, base_dir_of(info)))
        if not (v.startswith(("/", "~/")) or v == "~"):
            raise field_error(f"{v!r} is relative: write the absolute path on the cluster, e.g. "
                              "/home/alice/.pilot/my_launchpad.yaml, or ~/.pilot/my_launchpad.yaml for the cluster "
                              "user's home")
        return v

    @field_validator("launchpad_route")
    @classmethod
    def _launchpad_route(cls, v: LaunchPadRoute, info: ValidationInfo) -> LaunchPadRoute:
        if v.is_ssh and cls._sched(info) is Scheduler.LOCAL:
            raise field_error("scheduler local runs pilots on this machine, which reaches the LaunchPad itself: "
                              "remove launchpad_route (or write launchpad_route: direct)")
        if v.is_ssh and info.data.get("control_path"):
            raise field_error("launchpad_route: ssh keeps a forward on a connection of its own, which a cluster "
                              "with one-time-password logins (control_path) cannot open unattended: use "
                              "launchpad_route: direct, or a cluster without control_path")
        return v

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, v: str, info: ValidationInfo) -> str:
        one_line(v, "work_dir")
        if cls._sched(info) is Scheduler.LOCAL:
            v = str(expand_path(v, None))
        if not v.startswith("/"):
            hint = (" ('~' is not expanded in scheduler directives such as #SBATCH --output)"
                    if v.startswith("~") else "")
            raise field_error(f"{v!r} is not an absolute path{hint}: write the full path on the cluster, "
                              "e.g. /scratch/alice/pilot")
        if not PATH_RE.match(v):
            raise field_error(f"{v!r} holds characters that break scheduler directives (spaces, quotes, %, $ ...): "
                              "choose a directory whose path has only letters, digits and '_ . / + @ , = -'")
        return v.rstrip("/") or "/"

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None:
            one_line(v, "python")
            if not v.strip():
                raise field_error("empty: write the interpreter path, e.g. ~/venvs/pilot/bin/python, or null")
        return v

    @field_validator("worker_command")
    @classmethod
    def _worker_command(cls, v: str, info: ValidationInfo) -> str:
        one_line(v, "worker_command")
        try:
            words = shlex.split(v)
        except ValueError as e:
            raise field_error(f"cannot split {v!r} into words ({e}): fix the quoting, e.g. pilot worker") from None
        if not words:
            raise field_error("empty: write the command that starts the worker, e.g. pilot worker")
        if info.data.get("python") and v != "pilot worker":
            raise field_error("both python and worker_command are set: keep one (python X runs X -m pilot worker)")
        return v

    @field_validator("setup", mode="before")
    @classmethod
    def _setup(cls, v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = "\n".join(v)
        if isinstance(v, str) and "\0" in v:
            raise field_error("holds a NUL character: remove it")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x)
                    for k, x in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        problems = []
        for k, x in v.items():
            if not ENV_NAME_RE.match(k):
                msg = f"{k!r} is not a variable name: use letters, digits and '_', not starting with a digit"
                problems.append((k, msg))
            elif k in RESERVED_ENV:
                problems.append((k, f"{k} is set by the pilot script itself: remove it"))
            elif "\0" in x:
                problems.append((k, "value holds a NUL character: remove it"))
        if problems:
            raise field_errors(problems)
        return v

    @field_validator("pilot")
    @classmethod
    def _pilot(cls, v: PilotResources | None, info: ValidationInfo) -> PilotResources | None:
        sched = cls._sched(info)
        if v is not None and sched is not None:
            problems = check_resources(v, sched)
            if problems:
                raise field_errors(problems)
        return v

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: dict[str, PilotResources], info: ValidationInfo) -> dict[str, PilotResources]:
        return check_profiles(v, cls._sched(info), info.data)

    @field_validator("fworker")
    @classmethod
    def _fworker(cls, v: FWorkerSettings, info: ValidationInfo) -> FWorkerSettings:
        if v.query and info.data.get("fworker_query"):
            raise field_error("both fworker.query and fworker_query are set: keep one (fworker_query is the older "
                              "name of fworker.query)", subfield="query")
        return v

    @field_validator("walltime_margin")
    @classmethod
    def _margin(cls, v: int, info: ValidationInfo) -> int:
        sched = cls._sched(info)
        walltimes = [(name, p._walltime_seconds) for name, p in _given_profiles(info.data).items()
                     if p._walltime_seconds is not None]
        if walltimes:
            name, wt = min(walltimes, key=lambda x: x[1])
            which = "the wall time" if name == DEFAULT_PROFILE else f"the wall time of profile {name}"
            if v >= wt:
                raise field_error(f"{v} s is not less than {which} ({wt} s): the pilot would have no time to "
                                  f"work; write a smaller margin (e.g. {max(wt // 10, 0)}) or a longer walltime")
        if sched is Scheduler.SLURM and v > SLURM_MAX_SIGNAL_TIME:
            raise field_error(f"SLURM sends the warning signal at most {SLURM_MAX_SIGNAL_TIME} s before the end: "
                              f"write {SLURM_MAX_SIGNAL_TIME} or less")
        return v

    @field_validator("grace")
    @classmethod
    def _grace(cls, v: int, info: ValidationInfo) -> int:
        margin = info.data.get("walltime_margin")
        if isinstance(margin, int) and margin > 0 and v >= margin:
            raise field_error(f"{v} s is not less than walltime_margin ({margin} s): a task stopped at the margin "
                              f"must finish before the wall time; write grace: {max(margin // 2, 0)} or raise "
                              "walltime_margin")
        return v

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: Limits, info: ValidationInfo) -> Limits:
        cats = info.data.get("categories")
        if isinstance(cats, list) and v.min_pilots * len(cats) > v.max_running:
            raise field_error(f"min_pilots ({v.min_pilots}) for each of the {len(cats)} categories makes "
                              f"{v.min_pilots * len(cats)} pilots, more than max_running ({v.max_running}): write "
                              f"min_pilots: {v.max_running // len(cats)} or less, or raise max_running",
                              subfield="min_pilots")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        return existing_file(v, base_dir_of(info), "write the path of your Jinja2 template (relative paths are "
                                                   "relative to the clusters/ folder), or null for the built-in "
                                                   "template")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v: Any, info: ValidationInfo) -> list[Budget]:
        budgets = budgets_from(v)
        named = [b.account for b in budgets if b.account]
        silent = sorted(n for n, p in _given_profiles(info.data).items() if not p.account)
        if named and silent:
            # a pilot whose account the file does not name is charged to the user's default, known only once it
            # runs: until then no budget of an account could judge it, and an account's budget would be overrun
            which = "the pilot: section" if silent == [DEFAULT_PROFILE] else f"profile {', '.join(silent)}"
            raise field_error(f"a budget of account {named[0]} judges the pilots charged to it, but {which} names no "
                              f"account: write account: {named[0]} (or the account it is charged to) there, or drop "
                              "account from the budget to cover every pilot of this file", subfield="account")
        return budgets

    @model_validator(mode="after")
    def _one_form(self) -> ClusterConfig:
        check_one_form(self.pilot, self.profiles)
        return self


def _given_profiles(data: dict[str, Any]) -> dict[str, PilotResources]:
    """The profiles validated so far (``pilot:`` as ``default``, or ``profiles:``), during validation."""
    pilot, profiles = data.get("pilot"), data.get("profiles")
    if isinstance(profiles, dict) and profiles:
        return {k: p for k, p in profiles.items() if isinstance(p, PilotResources)}
    return {DEFAULT_PROFILE: pilot} if isinstance(pilot, PilotResources) else {}
