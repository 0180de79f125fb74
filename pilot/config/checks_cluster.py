"""Checks of single fields of a cluster file, kept out of :class:`pilot.config.models_cluster.ClusterConfig`.

Each takes the value (and, where the verdict depends on it, the cluster's scheduler) and returns the value to
keep or raises :func:`pilot.config.errors.field_error` with the fix; the model's validators only call them, so
the model reads as the list of fields it is.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from pathlib import Path
from typing import Any

from pilot.config.errors import field_error
from pilot.config.units import HOST_RE, PROXY_RE, USER_RE, Scheduler, existing_file, expand_path

__all__ = ["check_control_path", "check_fworker_query", "check_host", "check_known_hosts", "check_ssh_field",
           "check_use_ssh_config", "check_zone_name"]


def check_zone_name(v: str) -> str:
    """``timezone``: a name zoneinfo knows, checked when the file loads, since a typo would otherwise shift every
    start time, time left and queue wait of the cluster by hours, silently (issue 16)."""
    import difflib
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
        return v
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    names = sorted(zoneinfo.available_timezones())
    same = [n for n in names if n.lower() == v.lower()]   # utc, europe/berlin: only the case is wrong
    close = same or difflib.get_close_matches(v, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise field_error(f"{v!r} is not a time zone name{hint}: write an IANA name such as Europe/Berlin, "
                      "America/Chicago or UTC (the zone the cluster's scheduler prints its times in), or "
                      "null for this machine's zone")


#: Longest Unix socket path (``sun_path`` holds 108 bytes with its NUL) less the 17 characters OpenSSH adds to
#: the name of the socket it is making (``.`` and 16 random letters) before renaming it into place.
MAX_CONTROL_PATH = 107 - 17


def check_control_path(v: str | None, sched: Scheduler | None, data: dict[str, Any]) -> str | None:
    """``control_path``: an absolute or ``~/`` path short enough for a Unix socket (with ``%C``, ssh's 40-hex-digit
    hash of the connection, counted at its length), refused for ``local``."""
    if v is None:
        return v
    if sched is Scheduler.LOCAL:
        raise field_error("scheduler local runs pilots on this machine without SSH: remove control_path")
    if not (v.startswith(("/", "~/"))):
        raise field_error(f"{v!r} is relative: write an absolute path or one under ~/, e.g. ~/.ssh/pilot-%C")
    unknown = sorted(set(re.findall(r"%[^CdhijLlnpru%]", v)))
    if unknown:
        raise field_error(f"{v!r} has {', '.join(unknown)}, which ssh does not know in a ControlPath: use %C (a hash "
                          "of host, port and user), %h, %p, %r, %d, %u, %l, %L, %i, %j or %%")
    host = data.get("host") or "host"
    fill = {"%C": "0" * 40, "%r": data.get("user") or getpass.getuser(), "%h": host, "%n": host, "%p": "65535",
            "%%": "%", "%d": os.path.expanduser("~"), "%u": getpass.getuser(), "%l": socket.gethostname(),
            "%L": socket.gethostname().split(".")[0], "%i": str(os.getuid()), "%j": data.get("proxy_jump") or ""}
    sample = re.sub(r"%[CdhijLlnpru%]", lambda m: fill[m.group(0)], os.path.expanduser(v))
    if len(sample) > MAX_CONTROL_PATH:
        raise field_error(f"{v!r} becomes a socket path of {len(sample)} characters here, more than a Unix socket "
                          f"takes ({MAX_CONTROL_PATH} with ssh's suffix): use a shorter one, e.g. ~/.ssh/pilot-%C")
    return v


def check_host(v: str | None, sched: Scheduler | None) -> str | None:
    """``host``: required for a scheduler reached over SSH, meaningless (and refused) for ``local``."""
    if sched is Scheduler.LOCAL:
        if v not in (None, "localhost", "127.0.0.1"):
            raise field_error(f"scheduler local runs pilots on this machine without SSH, so host {v!r} is not "
                              "used: remove host (or write localhost), or choose the cluster's scheduler")
        return None
    if v is None:
        if sched is None:
            return v
        raise field_error(f"required for scheduler {sched.value}: write the login host, e.g. "
                          "host: login.cluster.example.org (or use scheduler: local for this machine)")
    if not HOST_RE.match(v):
        raise field_error(f"{v!r} is not a host name: write a name or address without spaces, "
                          "e.g. login.cluster.example.org (user and port have their own fields)")
    return v


def check_ssh_field(name: str, v: Any, sched: Scheduler | None) -> Any:
    """``user``, ``port``, ``identity_file``, ``proxy_jump``: SSH settings, refused for ``local``; an identity
    file must exist (it is expanded here), a jump host must read as ``[user@]host[:port]``."""
    if v is not None and sched is Scheduler.LOCAL:
        raise field_error(f"scheduler local does not use SSH: remove {name}")
    if v is None:
        return v
    if name == "user" and not USER_RE.match(v):
        raise field_error(f"{v!r} is not a user name: write the login name only, e.g. alice")
    if name == "identity_file":
        return existing_file(v, None, "write the path of your private key (e.g. ~/.ssh/id_ed25519), or null to "
                                      "use your SSH agent / ~/.ssh/config")
    if name == "proxy_jump":
        m = PROXY_RE.match(v)
        if not m or (m.group("port") and not 1 <= int(m.group("port")) <= 65535):
            raise field_error(f"{v!r} is not a jump host: write [user@]host[:port], "
                              "e.g. alice@gateway.example.org:22 (one hop)")
    return v


def check_known_hosts(v: Path, sched: Scheduler | None, data: dict[str, Any]) -> Path:
    """``known_hosts``: with strict host key checking (the default) the file must exist, or every connection
    would fail later with a less helpful message; the fix names the ``ssh-keyscan`` line for this host."""
    p = expand_path(v, None)
    if sched not in (Scheduler.LOCAL, None) and data.get("strict_host_key_checking", True) and not p.is_file():
        host = data.get("host") or "HOST"
        port = data.get("port") or 22
        raise field_error(f"file not found: {p}; with strict_host_key_checking: true the cluster's host key "
                          f"must be there: run `ssh-keyscan -p {port} {host} >> {p}` and check the fingerprint, "
                          "or point known_hosts at the right file")
    return p


def check_use_ssh_config(v: bool, sched: Scheduler | None) -> bool:
    """``use_ssh_config: true`` needs a ``~/.ssh/config`` to read."""
    if v and sched not in (Scheduler.LOCAL, None):
        cfg = expand_path("~/.ssh/config", None)
        if not cfg.is_file():
            raise field_error(f"use_ssh_config is true but {cfg} does not exist: create it, or write "
                              "use_ssh_config: false and give host, user, port and identity_file here")
    return v


def check_fworker_query(v: dict[str, Any]) -> dict[str, Any]:
    """``fworker_query``: JSON-clean, because it travels to the worker as one JSON argument on the job script's
    command line (quoted there), and without ``$where``: server-side JavaScript, which the embedded server
    cannot run."""
    import json

    try:
        text = json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise field_error(f"not a plain mapping of strings, numbers, booleans, lists and mappings ({e}): "
                          "write a MongoDB filter in YAML, e.g. {spec.needs_gpu: {$ne: true}}") from None
    if '"$where"' in text:
        raise field_error("$where (server-side JavaScript) is not allowed: write the condition with "
                          "query operators ($eq, $in, $exists, ...)")
    return v
