"""What to write instead: the text of each validation problem, with "did you mean" suggestions.

An unknown key is compared with the fields of its section (case, :data:`SYNONYMS` of other tools, close
spellings) and with the fields of the other sections ("it belongs under 'pilot:'"); a wrong type or bound
gets an example taken from the field's ``examples``.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from pilot.config.errors import describe
from pilot.config.models_cluster import ClusterConfig, Limits, PilotResources
from pilot.config.models_pilot import BackoffConfig, PilotConfig
from pilot.config.models_route import LaunchPadRoute
from pilot.config.units import Scheduler

__all__ = ["SYNONYMS", "error_message", "field_example", "model_at", "other_places", "unknown_key"]


#: Names people write for our fields (other tools' spellings) -> our field.
SYNONYMS = {
    "wallclock": "walltime", "wall_time": "walltime", "wallclock_time": "walltime", "time": "walltime",
    "time_limit": "walltime", "timelimit": "walltime", "runtime": "walltime", "walltime_limit": "walltime",
    "queue": "partition", "queue_name": "partition", "project": "account", "allocation": "account",
    "ncpus": "cores", "cpus": "cores", "ppn": "cores", "ntasks": "cores", "ntasks_per_node": "cores",
    "cpus_per_node": "cores", "nnodes": "nodes", "num_nodes": "nodes", "node": "nodes", "mem": "memory",
    "memory_per_node": "memory", "ngpus": "gpus", "gpus_per_node": "gpus", "hostname": "host",
    "username": "user", "login": "user", "key": "identity_file", "key_file": "identity_file",
    "keyfile": "identity_file", "ssh_key": "identity_file", "private_key": "identity_file",
    "identityfile": "identity_file", "jump_host": "proxy_jump", "proxyjump": "proxy_jump",
    "proxy": "proxy_jump", "gateway": "proxy_jump", "bastion": "proxy_jump", "known_hosts_file": "known_hosts",
    "queue_type": "scheduler", "q_type": "scheduler", "batch_system": "scheduler", "category": "categories",
    "fworker_category": "categories", "launchpad": "launchpad_file", "lpad_file": "launchpad_file",
    "launchpad_path": "launchpad_file", "workdir": "work_dir", "working_dir": "work_dir",
    "directives": "extra_directives", "extra": "extra_directives", "margin": "walltime_margin",
    "pre_rocket": "setup", "prerun": "setup", "modules": "setup", "environment": "env", "limit": "limits",
    "max_jobs_queue": "max_queued", "max_queue": "max_queued", "max_jobs_running": "max_running",
    "route": "launchpad_route", "lp_route": "launchpad_route", "tunnel": "launchpad_route",
    "forward": "launchpad_route", "remote_port": "port", "forward_port": "port", "login_host": "login_address",
    "login_node": "login_address", "login_ssh_port": "login_port", "ssh_port": "login_port",
    "interval": "poll_interval", "sleep_time": "poll_interval", "logdir": "log_dir", "prefix": "job_name_prefix",
}


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc[-1]`` (navigating nested models by field name, through
    optional sections such as ``pilot:`` and mappings of sections such as ``profiles: {NAME: ...}``)."""
    current: type[BaseModel] = model
    parts = [p for p in loc[:-1] if not isinstance(p, int)]
    i = 0
    while i < len(parts):
        f = current.model_fields.get(str(parts[i]))
        ann, keyed = _section(getattr(f, "annotation", None))
        if ann is None:
            return None
        current = ann
        i += 2 if keyed else 1   # a mapping's key (a profile's name) is no field
    return current


def _section(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model of a nested section's annotation (``M``, ``M | None``, ``dict[str, M]``), and whether it is
    a mapping of them."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    args = typing.get_args(ann)
    if typing.get_origin(ann) is dict and len(args) == 2:
        inner, _ = _section(args[1])
        return inner, True
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
    return None, False


def field_example(model: type[BaseModel] | None, name: str) -> str:
    """``name: VALUE`` from the field's first example (``""`` when there is none)."""
    if model is None or name not in model.model_fields:
        return ""
    ex = model.model_fields[name].examples
    if not ex:
        return ""
    val = ex[0]
    if isinstance(val, str) and "\n" in val:
        return f"{name}: |\n  ..."
    return f"{name}: {json.dumps(val)}"


_OTHER_PLACES: dict[str, dict[str, str]] = {}


def other_places() -> dict[str, dict[str, str]]:
    """field name -> {model name -> where it belongs}, to say 'walltime belongs under pilot:'."""
    if not _OTHER_PLACES:
        places: dict[type[BaseModel], str] = {
            ClusterConfig: "at the top level of the cluster file", PilotResources: "under 'pilot:' (or a profile)",
            Limits: "under 'limits:'", LaunchPadRoute: "under 'launchpad_route:'", PilotConfig: "in pilot.yaml",
            BackoffConfig: "under 'backoff:' in pilot.yaml",
        }
        for model, where in places.items():
            for name in model.model_fields:
                _OTHER_PLACES.setdefault(name, {})[model.__name__] = where
    return _OTHER_PLACES


def unknown_key(model: type[BaseModel] | None, key: str) -> str:
    """The message for a key ``model`` does not have: wrong case, wrong section, a synonym or a close spelling."""
    known = list(model.model_fields) if model is not None else []
    hint = ""
    where = {k: v for k, v in other_places().get(key, {}).items() if model is None or k != model.__name__}
    if key.lower() in known:
        hint = f"did you mean '{key.lower()}'? (field names are lower case)"
    elif where:
        hint = f"it belongs {' or '.join(sorted(set(where.values())))}: move it there"
    elif SYNONYMS.get(key.lower()) in known:
        hint = f"did you mean '{SYNONYMS[key.lower()]}'?"
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean '{close[0]}'?"
    if hint:
        return f"unknown field '{key}'; {hint}"
    return (f"unknown field '{key}'; remove it or correct the name"
            + (f" (known fields here: {', '.join(known)})" if known else ""))


def error_message(err: ErrorDetails, model: type[BaseModel] | None, name: str, value: Any) -> str:
    """The text of one pydantic error ``err`` about field ``name`` of ``model``: what is wrong, what to write."""
    t = err["type"]
    ctx = err.get("ctx") or {}
    if t == "pilot_config":
        return str(ctx.get("message", err["msg"]))
    if t == "extra_forbidden":
        return unknown_key(model, name)
    if t == "missing":
        ex = field_example(model, name)
        return f"required field is missing; add it{', e.g. ' + ex if ex else ''}"
    if t == "enum" and name == "scheduler":
        known = ", ".join(s.value for s in Scheduler)
        close = difflib.get_close_matches(str(value).lower(), [s.value for s in Scheduler], n=1, cutoff=0.5)
        did = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown scheduler {value!r}{did}; write one of: {known}"
    if t == "enum":
        return f"{describe(value)} is not allowed; write one of: {ctx.get('expected', '')}"
    if t in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {describe(value)}; write e.g. {field_example(model, name) or '1'}"
    if t in ("float_type", "float_parsing"):
        return f"expected a number, got {describe(value)}; write e.g. {field_example(model, name) or '60'}"
    if t in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {describe(value)}; write {name}: true or {name}: false"
    if t == "string_type":
        return f"expected text, got {describe(value)}; write e.g. {field_example(model, name) or name + ': text'}"
    if t == "list_type":
        return f"expected a list, got {describe(value)}; write e.g. {field_example(model, name) or name + ': [a, b]'}"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return (f"expected a mapping (indented key: value lines), got {describe(value)}; "
                f"see docs/configuration.md for the '{name}:' section")
    if t in ("path_type",):
        return f"expected a file path, got {describe(value)}"
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), "")
        fix = {"greater_than": f"too small: write more than {bound}",
               "greater_than_equal": f"too small: write {bound} or more",
               "less_than": f"too large: write less than {bound}",
               "less_than_equal": f"too large: write {bound} or less"}[t]
        return f"{value!r} is {fix}"
    if t in ("too_short", "string_too_short"):
        return f"must not be empty; write e.g. {field_example(model, name) or name + ': ...'}"
    return f"{err['msg']} (got {describe(value)})"
