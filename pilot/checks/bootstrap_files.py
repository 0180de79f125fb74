"""The two files bootstrap writes: the launchpad file on the cluster (mode 600; the database host rewritten
with ``--db-host``, or to the forward's port for ``launchpad_route: ssh``; the CA file where bootstrap put it)
and the cluster's config file here (``setup``, ``launchpad_file``, ``python``), edited line by line so that
the user's other lines and comments stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from pilot.checks.bootstrap_context import BootstrapContext, BootstrapError
from pilot.checks.bootstrap_route import with_ca_file
from pilot.launchpad.files import find_launchpad_file, missing_file

__all__ = [
    "BOOTSTRAP_MARK",
    "activation_line",
    "cluster_launchpad",
    "edit_cluster_yaml",
    "new_setup",
    "read_launchpad",
    "rewrite_db_host",
    "split_host_port",
    "step_config",
    "step_launchpad",
    "strip_bootstrap_lines",
]

#: The comment that marks the setup line a bootstrap added (a later bootstrap replaces that line).
BOOTSTRAP_MARK = "# added by pilot bootstrap"
_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_./~+@,=-][A-Za-z0-9_./~+@,=:-]*$")


# ============================================================================ pure helpers
def activation_line(venv: str) -> str:
    """The setup line that activates ``venv`` (marked so that a later bootstrap can replace it)."""
    return f"source {venv}/bin/activate  {BOOTSTRAP_MARK}"


def strip_bootstrap_lines(setup: str) -> str:
    """``setup`` without the lines an earlier bootstrap added."""
    lines = [ln for ln in setup.splitlines() if BOOTSTRAP_MARK not in ln]
    text = "\n".join(lines).strip("\n")
    return text + "\n" if text else ""


def new_setup(setup: str, venv: str) -> str:
    """The user's own setup lines first (module loads ...), then the activation of ``venv``."""
    return strip_bootstrap_lines(setup) + activation_line(venv) + "\n"


def split_host_port(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6addr]:port`` -> (host, port)."""
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value)
    if m:
        return m.group(1), int(m.group(2)) if m.group(2) else None
    if value.count(":") == 1:
        h, p = value.split(":")
        if not p.isdigit():
            raise ValueError(f"--db-host {value!r}: the port after ':' must be a number")
        return h, int(p)
    return value, None


def rewrite_db_host(doc: dict[str, Any], db_host: str) -> dict[str, Any]:
    """A LaunchPad file's content with the database address replaced by ``db_host`` (``HOST[:PORT]``).

    Handles both forms FireWorks reads (``LaunchPad.from_dict``): ``host`` + ``port`` fields, and
    ``uri_mode: true`` with a ``mongodb://[user:pw@]host[:port]/...`` URI in ``host`` (user, password,
    database and options kept). Without a port in ``db_host`` the old port stays.
    """
    host, port = split_host_port(db_host.strip())
    if not host:
        raise ValueError("--db-host is empty: write the database's address as the cluster sees it, HOST[:PORT]")
    out = dict(doc)
    old = str(out.get("host") or "")
    if old.startswith(("mongodb://", "mongodb+srv://")):
        parts = urlsplit(old)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        old_port = None
        if "," not in hosts:
            _, old_port = split_host_port(hosts)
        shown = f"[{host}]" if ":" in host else host
        new_port = port if port is not None else old_port
        netloc = (userinfo + at) + shown + (f":{new_port}" if new_port and not parts.scheme.endswith("+srv") else "")
        out["host"] = urlunsplit(parts._replace(netloc=netloc))
    else:
        out["host"] = host
        if port is not None:
            out["port"] = port
    return out


def _yaml_scalar(value: str) -> str:
    return value if _PLAIN_SCALAR.match(value) else json.dumps(value)


def _yaml_block(key: str, value: str) -> list[str]:
    lines = value.rstrip("\n").split("\n")
    indicator = "|2" if lines and lines[0][:1] in (" ", "\t") else "|"
    if not value.endswith("\n"):
        indicator += "-"
    return [f"{key}: {indicator}", *(("  " + ln) if ln else "" for ln in lines)]


def _key_span(lines: list[str], key: str) -> tuple[int, int] | None:
    """Line range [start, end) of a top-level ``key:`` and its value (indented lines, ``- `` items)."""
    pat = re.compile(rf"^{re.escape(key)}\s*:(\s|$)")
    for i, line in enumerate(lines):
        if pat.match(line):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j][:1] in (" ", "\t")
                                      or lines[j].startswith("- ") or lines[j].rstrip() == "-"):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1   # trailing blank lines belong to what follows
            return i, j
    return None


def edit_cluster_yaml(text: str, updates: dict[str, str]) -> str:
    """Set top-level keys of a cluster file's text, keeping every other line and comment.

    A key's old value (one line, a ``|`` block or a list) is replaced; a missing key is appended. A
    one-line value keeps its trailing ``# comment``. Multi-line values are written as ``|`` blocks.

    Raises
    ------
    BootstrapError
        If the edited text does not read back as the old content plus exactly the updates.
    """
    try:
        before = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BootstrapError(f"the cluster file is not valid YAML ({e}); fix it first") from None
    lines = text.splitlines()
    for key, value in updates.items():
        span = _key_span(lines, key)
        if "\n" in value.rstrip("\n") or value.endswith("\n"):
            new = _yaml_block(key, value)
        else:
            new = [f"{key}: {_yaml_scalar(value)}"]
            if span and span[1] == span[0] + 1:
                m = re.search(r"\s+#.*$", lines[span[0]].split(":", 1)[1])
                if m and "'" not in lines[span[0]] and '"' not in lines[span[0]]:
                    new[0] += m.group(0)
        if span is None:
            while lines and not lines[-1].strip():
                lines.pop()
            lines += new
        else:
            lines[span[0]:span[1]] = new
    out = "\n".join(lines) + "\n"
    expected = dict(before) if isinstance(before, dict) else {}
    expected.update(updates)
    got = yaml.safe_load(out)
    if got != expected:
        changed = sorted(k for k in set(got or {}) | set(expected) if (got or {}).get(k) != expected.get(k))
        raise BootstrapError("could not edit the cluster file safely (these fields would not read back as "
                             f"intended: {', '.join(changed)}); set them by hand: "
                             + "; ".join(f"{k}: {v!r}" for k, v in updates.items()))
    return out


def read_launchpad(ctx: BootstrapContext) -> tuple[Path, bytes]:
    """The LaunchPad file the commands of this config dir use (found, and its absence told, as they do)."""
    lpf = find_launchpad_file(ctx.config.config_dir, pilot=ctx.config.pilot, option=None)
    if not lpf.path.is_file():
        raise BootstrapError(str(missing_file(lpf)))
    return lpf.path, lpf.path.read_bytes()


def cluster_launchpad(ctx: BootstrapContext, local: Path, data: bytes, ca_remote: str | None) -> bytes:
    """The LaunchPad file as the cluster gets it: the database address as the pilots reach it (``--db-host``,
    or ``127.0.0.1:PORT`` of the manager's forward for ``launchpad_route: ssh``, so that ``lpad`` on the login
    node works too) and the CA file where bootstrap copied it; the file's bytes unchanged when nothing changes."""
    route = ctx.cluster.ssh_route
    db_host = f"127.0.0.1:{route.port}" if route is not None else ctx.opts.db_host
    if not db_host and not ca_remote:
        return data
    try:
        doc = yaml.safe_load(data) or {}
        host = str(doc.get("host") or "")
        if route is not None and (host.startswith("mongodb+srv://") or "," in host.rpartition("@")[2].split("/")[0]):
            raise ValueError("launchpad_route: ssh carries one host:port, and this URI names an SRV record or "
                             "several hosts; write the LaunchPad's host and port (or one mongodb://HOST:PORT)")
        if db_host:
            doc = rewrite_db_host(doc, db_host)
    except (yaml.YAMLError, ValueError, AttributeError) as e:
        raise BootstrapError(f"cannot rewrite the database host in {local}: {e}") from None
    if db_host:
        ctx.rep.note(f"database address as the cluster sees it: {db_host}"
                     + (" (the manager's forward on the login node)" if route is not None else ""))
    if ca_remote:
        doc = with_ca_file(doc, ca_remote)
        ctx.rep.note(f"CA certificate: {ca_remote}")
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False).encode()


def step_launchpad(ctx: BootstrapContext, ca_remote: str | None = None) -> str:
    """Write the cluster's LaunchPad file (mode 600; see :func:`cluster_launchpad`), unless it is there."""
    from pilot.transport import RemotePathError

    target = ctx.opts.launchpad_path or ctx.cluster.launchpad_file
    with ctx.rep.step(f"writing the launchpad file {target} on the cluster (mode 600)") as ev:
        local, data = read_launchpad(ctx)
        data = cluster_launchpad(ctx, local, data, ca_remote)
        want = hashlib.sha256(data).hexdigest()
        try:
            st = ctx.transport.stat(target)
            same = st.mode & 0o777 == 0o600 and ctx.transport.sha256(target) == want
        except RemotePathError:
            same = False
        if same:
            ev["result"] = "already there with the same content and mode 600: unchanged"
        else:
            ctx.transport.put(data, target, mode=0o600)
            ev["result"] = f"written from {local}"
        return target


def step_config(ctx: BootstrapContext, launchpad_path: str) -> None:
    from pydantic import ValidationError

    from pilot.config import ClusterConfig

    path = Path(ctx.cluster.source_file) if ctx.cluster.source_file else None
    with ctx.rep.step(f"updating the cluster file {path}") as ev:
        if path is None or not path.is_file():
            raise BootstrapError(f"cluster {ctx.name} has no file to update; write these fields by hand: "
                                 f"setup: {new_setup(ctx.cluster.setup, ctx.venv)!r}, "
                                 f"launchpad_file: {launchpad_path}")
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        updates: dict[str, str] = {}
        setup = new_setup(ctx.cluster.setup, ctx.venv)
        if ctx.cluster.setup != setup:
            updates["setup"] = setup
        if data.get("launchpad_file") != launchpad_path:
            updates["launchpad_file"] = launchpad_path
        if data.get("python") and data.get("python") != f"{ctx.venv}/bin/python":
            updates["python"] = f"{ctx.venv}/bin/python"
        if not updates:
            ev["result"] = "already up to date: unchanged"
            return
        new = edit_cluster_yaml(text, updates)
        candidate = yaml.safe_load(new)
        try:
            ClusterConfig.model_validate(candidate, context={"base_dir": path.parent})
        except ValidationError as e:  # the edit would break the file
            raise BootstrapError(f"the updated {path} would not load ({e}); set by hand: {updates}") from None
        bak = path.with_name(path.name + ".bak")
        shutil.copy2(path, bak)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(new)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        ev["result"] = f"set {', '.join(updates)} (the previous version is in {bak.name})"
