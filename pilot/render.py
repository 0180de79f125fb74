"""Render pilot job scripts from the Jinja2 templates (``templates/*.sh.j2``, installed as ``pilot.templates``).

The built-in templates are read with :mod:`importlib.resources`, so they work from a wheel as well as from
the source tree. A cluster's own template (``template:`` in its file) is loaded by its path and can
``{% extends "slurm.sh.j2" %}`` and override blocks. The Environment uses ``StrictUndefined``: a variable the
template uses but the context lacks is an error, never an empty gap in a script.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from pilot import __version__
from pilot.config import ClusterConfig, Scheduler, format_walltime, validate_job_name, validate_name

__all__ = ["ROUTE_KEY", "ROUTE_KNOWN_HOSTS", "RenderError", "builtin_template_names", "exit_file_path",
           "get_environment", "remote_path", "render_pilot_script", "route_context", "template_context",
           "template_name_for"]

TEMPLATE_PACKAGE = "pilot.templates"
#: The ssh route's private key on the cluster (made there by ``pilot bootstrap``, never copied anywhere).
ROUTE_KEY = "~/.pilot/route_key"
#: The login node's host key for the route's ssh, as ``pilot bootstrap``'s own connection verified it.
ROUTE_KNOWN_HOSTS = "~/.pilot/route_known_hosts"


class RenderError(ValueError):
    """A pilot script could not be rendered: the message names the cluster file, the template and the fix."""


def shell_quote(value: Any) -> str:
    """The ``quote`` filter: ``value`` as one shell word (shlex.quote of its text)."""
    return shlex.quote(str(value))


def remote_path(value: Any) -> str:
    """The ``remote_path`` filter: a path as a shell word, with a leading ``~`` left to the job's shell.

    ``~/x y`` becomes ``"$HOME"/'x y'``, so that ``~`` means the home directory of the user the job runs as.
    """
    text = str(value)
    if text == "~":
        return '"$HOME"'
    if text.startswith("~/"):
        rest = text[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"/'
    return shlex.quote(text)


class _Loader(jinja2.BaseLoader):
    """Built-in templates from the package ``pilot.templates``; a cluster's template by its absolute path,
    and files next to it (for its own ``{% include %}``s)."""

    def __init__(self, user_template: Path | None = None) -> None:
        self.user_template = user_template.resolve() if user_template else None

    def get_source(self, environment: jinja2.Environment,
                   template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        if self.user_template is not None and template == str(self.user_template):
            return self._file(self.user_template, template)
        res = resources.files(TEMPLATE_PACKAGE).joinpath(template)
        if "/" not in template and "\\" not in template and res.is_file():
            return res.read_text(encoding="utf-8"), f"{TEMPLATE_PACKAGE}/{template}", lambda: True
        if self.user_template is not None:
            beside = (self.user_template.parent / template).resolve()
            if beside.is_file() and self.user_template.parent in beside.parents:
                return self._file(beside, template)
        raise jinja2.TemplateNotFound(template)

    @staticmethod
    def _file(path: Path, name: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise jinja2.TemplateNotFound(name) from None
        mtime = path.stat().st_mtime

        def uptodate() -> bool:
            try:
                return path.stat().st_mtime == mtime
            except OSError:
                return False
        return text, str(path), uptodate

    def list_templates(self) -> list[str]:
        return builtin_template_names()


def builtin_template_names() -> list[str]:
    """The template files shipped in ``pilot.templates``."""
    return sorted(p.name for p in resources.files(TEMPLATE_PACKAGE).iterdir() if p.name.endswith(".j2"))


def get_environment(user_template: Path | None = None) -> jinja2.Environment:
    """The Jinja2 Environment for pilot scripts.

    Parameters
    ----------
    user_template : Path | None
        A cluster's own template file, loadable under its absolute path (``str(path)``).

    Returns
    -------
    jinja2.Environment
        ``StrictUndefined``, no autoescaping, ``trim_blocks``/``lstrip_blocks``, the filters ``quote``
        (one shell word) and ``remote_path`` (a path whose ``~`` the job's shell expands).
    """
    env = jinja2.Environment(loader=_Loader(user_template), undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["quote"] = shell_quote
    env.filters["remote_path"] = remote_path
    return env


def template_name_for(scheduler: Scheduler | str) -> str:
    """The built-in template of a scheduler: ``slurm.sh.j2`` and so on."""
    return f"{Scheduler(scheduler).value}.sh.j2"


def route_context(cluster: ClusterConfig) -> dict[str, Any] | None:
    """The ``route`` template variable: what the worker's ``--route-*`` options say for ``launchpad_route:
    ssh`` (None for ``direct``). The user is the cluster's ``user`` when the file names one; else ssh takes the
    job's own account, which is the one that logged in to submit it."""
    route = cluster.ssh_route
    if route is None:
        return None
    host = f"[{route.login_address}]" if ":" in route.login_address else route.login_address
    return {"target": (f"{cluster.user}@" if cluster.user else "") + f"{host}:{route.login_port}",
            "port": route.port, "login_address": route.login_address, "login_port": route.login_port,
            "key": ROUTE_KEY, "known_hosts": ROUTE_KNOWN_HOSTS}


def template_context(cluster: ClusterConfig, cluster_name: str, category: str, job_name: str,
                     job_id_hint: str | None = None, profile: str | None = None) -> dict[str, Any]:
    """The variables a pilot template sees (documented in docs/configuration.md), for one queue profile
    (None: the first, the one of ``pilot:``)."""
    sched = cluster.scheduler
    res = cluster.profile(profile)
    return {
        "version": __version__,
        "cluster": cluster,
        "cluster_name": cluster_name,
        "category": category,
        "job_name": job_name,
        "job_id_hint": job_id_hint,
        "scheduler": sched.value,
        "profile": profile or next(iter(cluster.pilot_profiles)),
        "work_dir": cluster.work_dir,
        "launchpad_file": cluster.launchpad_file,
        "walltime_seconds": res.walltime_seconds,
        "walltime": format_walltime(res.walltime_seconds, sched),
        "walltime_margin": cluster.walltime_margin,
        "warning_minutes": max(1, math.ceil(cluster.walltime_margin / 60)),
        "idle_timeout": cluster.idle_timeout,
        "heartbeat_interval": cluster.heartbeat_interval,
        "grace": cluster.grace,
        "nodes": res.nodes,
        "cores": res.cores,
        "memory_mb": res.memory_mb,
        "gpus": res.gpus,
        "partition": res.partition,
        "account": res.account,
        "qos": res.qos,
        "extra_directives": cluster.directive_lines(profile),
        "setup": cluster.setup.strip("\n"),
        "env": dict(cluster.env),
        "worker_argv": cluster.worker_argv,
        "worker_is_pilot": cluster.worker_is_pilot,
        "route": route_context(cluster),
        **worker_resources(cluster, profile),
        # one JSON argument (quoted by the template); None when the cluster file gives no FWorker query
        "fworker_query": _json(cluster.query),
        "fworker_name": cluster.fworker.name or cluster_name,
        "fworker_env": _json(cluster.fworker.env),
    }


def worker_resources(cluster: ClusterConfig, profile: str | None) -> dict[str, Any]:
    """What the worker is told of its pilot's resources: it takes only Fireworks whose ``spec._pilot`` asks fit
    them (:mod:`pilot.fit`). ``gpu_work_only``: a GPU profile beside CPU profiles that serve its categories takes
    only Fireworks asking for a GPU (the manager sends the others to the CPU profiles,
    :meth:`~pilot.config.ClusterConfig.gpu_work_only`); a cluster's one profile with GPUs takes any work."""
    name = profile or next(iter(cluster.pilot_profiles))
    return {"pack": cluster.profile(name).pack, "gpu_work_only": cluster.gpu_work_only(name)}


def _json(value: dict[str, Any]) -> str | None:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else None


def _where(cluster: ClusterConfig, cluster_name: str) -> str:
    return str(cluster.source_file) if cluster.source_file else f"cluster {cluster_name!r}"


def render_pilot_script(cluster: ClusterConfig, cluster_name: str, category: str, job_name: str,
                        job_id_hint: str | None = None, profile: str | None = None) -> str:
    """Render the job script of one pilot.

    Parameters
    ----------
    cluster : ClusterConfig
        The cluster's validated settings.
    cluster_name : str
        Its name (the cluster file's stem); the worker is named ``CLUSTER-JOBID``.
    category : str
        The FireWorks category this pilot serves; one of ``cluster.categories``.
    job_name : str
        The batch job name (``queue_adapters.base.job_name(category, uid, prefix)``).
    job_id_hint : str | None
        For ``scheduler: local`` only: the job id to use when the local scheduler does not set
        ``PILOT_LOCAL_JOBID`` (default: the script's PID).
    profile : str | None
        The queue profile the pilot is of (None: the first).

    Returns
    -------
    str
        The script text.

    Raises
    ------
    RenderError
        Unknown category, unsafe job name, missing or broken template, a variable the template needs and
        the context lacks; the message names the cluster file and the template.
    """
    where = _where(cluster, cluster_name)
    try:
        validate_name(cluster_name, "cluster name")
        validate_job_name(job_name)
    except ValueError as e:
        raise RenderError(f"{where}: {e}") from None
    if category not in cluster.categories:
        raise RenderError(f"{where}: categories: cluster {cluster_name!r} does not serve category {category!r}; "
                          f"its categories are: {', '.join(cluster.categories)} (add it to categories: to "
                          "serve it here)")
    if profile is not None and profile not in cluster.pilot_profiles:
        raise RenderError(f"{where}: profiles: cluster {cluster_name!r} has no profile {profile!r}; its profiles "
                          f"are: {', '.join(cluster.pilot_profiles)}")
    if profile is not None and category not in cluster.profile_categories(profile):
        raise RenderError(f"{where}: profiles.{profile}.categories: profile {profile!r} does not serve category "
                          f"{category!r}; the profiles that do: {', '.join(cluster.profiles_for(category))}")
    if job_id_hint is not None and (not job_id_hint or any(c in job_id_hint for c in "\n\r\0")):
        raise RenderError(f"{where}: job id hint {job_id_hint!r} is not usable: pass one line of text")

    user = cluster.template
    env = get_environment(user)
    name = str(user.resolve()) if user else template_name_for(cluster.scheduler)
    try:
        tmpl = env.get_template(name)
        return tmpl.render(template_context(cluster, cluster_name, category, job_name, job_id_hint, profile))
    except jinja2.TemplateNotFound as e:
        missing = e.name or name
        if user is not None and missing == name:
            raise RenderError(f"{where}: template: file not found: {user}; write the path of an existing "
                              "Jinja2 template (relative paths are relative to the clusters/ folder), or "
                              "null for the built-in one") from None
        raise RenderError(f"{where}: template: {name} refers to {missing!r}, which is neither a built-in "
                          f"template ({', '.join(builtin_template_names())}) nor a file next to it") from None
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"{where}: template: syntax error in {e.filename or e.name}, line {e.lineno}: "
                          f"{e.message}; fix the template") from None
    except jinja2.UndefinedError as e:
        known = ", ".join(sorted(template_context(cluster, cluster_name, category, job_name, job_id_hint, profile)))
        raise RenderError(f"{where}: template {name}: {e.message}; a pilot template can use: {known}") from None
    except jinja2.TemplateError as e:
        raise RenderError(f"{where}: template {name}: {e}; fix the template") from None


def exit_file_path(cluster: ClusterConfig, job_id: str) -> str:
    """Where the pilot script of job ``job_id`` writes its exit-code file (on the cluster).

    Same rule as ``queue_adapters.base.exit_file_name``: ``<work_dir>/pilot-<jobid>.exit`` with ``/``
    replaced by ``_``.
    """
    return f"{cluster.work_dir}/pilot-{job_id.replace('/', '_')}.exit"
