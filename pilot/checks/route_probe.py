"""The route probe: a tiny batch job that tries, from a compute node, each way a pilot could reach the LaunchPad.

``pilot doctor``'s ``database`` check runs on the login node, which often reaches the fileserver when the
compute nodes do not: only a job on a compute node answers whether pilots will reach the LaunchPad. The job
runs :data:`ROUTE_PROBE` with the cluster's Python after its setup lines; for each candidate route it connects
and authenticates as a pilot would (ping and one read, with the credentials and CA file of the cluster's
LaunchPad file) and prints one line ``PILOT-PROBE {json}`` per candidate, then a last line ``{"done": true,
"node": ...}``:

``direct``  the LaunchPad at the host and port of the cluster's LaunchPad file (``launchpad_route: direct``), or,
            for a cluster routed through ssh, at the host and port of this machine's LaunchPad file (where the
            cluster's file would point after ``launchpad_route: direct`` and ``pilot bootstrap``);
``ssh``     through :class:`pilot.worker.tunnel.Tunnel` (the pilots' own code, installed on the cluster) to the
            forward port on the login node, with the route key and known_hosts that ``pilot bootstrap`` wrote.

Everything here is text: the probe, the job script around it (the cluster's own template, with the worker
replaced by the probe and the smallest resources), and reading the answers, the login node's files and the
errors. No transport, no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pilot.checks.probes import PROBE_MARK

if TYPE_CHECKING:
    from pilot.config import ClusterConfig, SshRoute

__all__ = [
    "PROBE_WALLTIME",
    "ROUTE_PROBE",
    "ProbeAnswer",
    "authorized_route_port",
    "describe_failure",
    "known_hosts_entry",
    "launchpad_host_port",
    "probe_outputs",
    "read_answers",
    "render_probe_script",
    "route_yaml",
    "usable_from_elsewhere",
]

#: The probe job's wall time (seconds): the probe needs well under a minute; a short job starts sooner.
PROBE_WALLTIME = 120
#: In the rendered script: shows that the cluster's template let the probe replace the worker.
SCRIPT_MARK = "PILOT-ROUTE-PROBE"

#: Run on a compute node by the cluster's Python after setup; argv[1] is the JSON spec (no secret in it: the
#: credentials stay in the cluster's LaunchPad file, which the probe reads there).
ROUTE_PROBE = r"""
import json, os, socket, sys, time
from urllib.parse import urlsplit, urlunsplit
spec = json.loads(sys.argv[1])

def say(out):
    print("PILOT-PROBE " + json.dumps(out), flush=True)

def where(doc):
    host = str(doc.get("host") or "")
    if doc.get("uri_mode") or host.startswith("mongodb"):
        return urlsplit(host).netloc.rpartition("@")[2]
    return "%s:%s" % (host, doc.get("port") or 27017)

def moved(doc, host, port):
    d = dict(doc)
    h = str(d.get("host") or "")
    hp = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    if d.get("uri_mode") or h.startswith("mongodb://"):
        p = urlsplit(h)
        user, at, _ = p.netloc.rpartition("@")
        d["host"] = urlunsplit(p._replace(netloc=user + at + hp))
    else:
        d["host"], d["port"] = host, port
    return d

def reach(doc):
    # a quick TCP connect first: a refused port or a missing route fails at once, where the driver would retry
    # for its whole server selection wait; no answer yet (a slow or filtering network) leaves it to the driver
    host, _, port = where(doc).rpartition(":")
    if not host or "," in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(spec["wait_ms"] / 1000.0, 5.0)).close()
    except socket.timeout:
        return

def attempt(doc):
    from fireworks import LaunchPad
    reach(doc)
    d = dict(doc)
    kw = dict(d.get("mongoclient_kwargs") or {})
    kw.setdefault("serverSelectionTimeoutMS", spec["wait_ms"])
    kw.setdefault("connectTimeoutMS", spec["wait_ms"])
    d["mongoclient_kwargs"] = kw
    d["strm_lvl"] = "ERROR"
    lp = LaunchPad.from_dict(d)
    t = time.time()
    try:
        lp.connection.admin.command("ping")
        lp.fireworks.find_one({}, {"_id": 1})
    finally:
        lp.connection.close()
    return round(time.time() - t, 3)

def ssh_doc(cand, base):
    from pathlib import Path
    from pilot.worker.tunnel import SshRoute, Tunnel, launchpad_via_route, parse_route_target
    user, addr, port = parse_route_target(cand["target"])
    route = SshRoute(cand["port"], addr, port, user, Path(os.path.expanduser(cand["key"])),
                     Path(os.path.expanduser(cand["known_hosts"])))
    tunnel = Tunnel(route, start_timeout=spec["ssh_timeout"], up_timeout=spec["ssh_timeout"])
    return tunnel, launchpad_via_route(base, tunnel.start())

base = None
try:
    from fireworks import LaunchPad
    base = LaunchPad.from_file(os.path.expanduser(spec["launchpad_file"])).to_dict()
except Exception as e:
    failed = "cannot read the LaunchPad file %s: %s: %s" % (spec["launchpad_file"], type(e).__name__, e)
for cand in spec["candidates"]:
    out = {"route": cand["route"], "ok": False, "stage": "file"}
    t0, tunnel = time.time(), None
    try:
        if base is None:
            raise RuntimeError(failed)
        if cand["route"] == "ssh":
            out["stage"] = "ssh"
            tunnel, doc = ssh_doc(cand, base)
        elif "host" in cand:
            doc = moved(base, cand["host"], cand["port"])
        else:
            doc = base
        out["stage"], out["where"] = "database", where(doc)
        out["seconds"] = attempt(doc)
        out["ok"] = True
    except Exception as e:
        out["error"] = ("%s: %s" % (type(e).__name__, e))[:1500]
    finally:
        if tunnel is not None:
            tunnel.stop()
    out["elapsed"] = round(time.time() - t0, 3)
    say(out)
say({"done": True, "node": socket.gethostname()})
"""


# ============================================================================ the job script
def render_probe_script(cluster: ClusterConfig, name: str, job_name: str, argv: list[str], output: str) -> str:
    """The probe's job script: the cluster's template (its directives, environment and setup lines), with the
    worker replaced by ``argv``, everything after the redirect written to ``output``, no exit-code file (the
    manager never sees this job), and the smallest request the pilot settings allow: one node, one core, no
    memory or GPU request, :data:`PROBE_WALLTIME` (or less), the partition/account/qos and extra directives of
    the cluster file. A cluster template that does not keep the ``run`` block falls back to the built-in one,
    so that the probe job can never start a worker.

    Raises
    ------
    pilot.render.RenderError
        The template cannot be rendered (the ``render`` check says the same).
    """
    import jinja2

    from pilot.config import format_walltime
    from pilot.render import RenderError, get_environment, template_context, template_name_for

    seconds = min(PROBE_WALLTIME, int(cluster.walltime_seconds))
    ctx = template_context(cluster, name, "doctor", job_name)
    ctx.update(walltime=format_walltime(seconds, cluster.scheduler), walltime_seconds=seconds, walltime_margin=0,
               nodes=1, cores=1, memory_mb=None, gpus=None, probe_argv=argv, probe_output=output)
    child = ('{% extends base %}\n'
             '{% block header %}\n# fireworks-pilot {{ version }}: `pilot doctor` route probe {{ job_name }} for '
             'cluster {{ cluster_name }}: it tries each route to the LaunchPad from this compute node; no worker.\n'
             '{% endblock %}\n'
             '{% block redirect %}\nexec >>{{ probe_output | quote }} 2>&1\n{% endblock %}\n'
             '{% block exit_file %}{% endblock %}\n'
             '{% block run %}\n# ' + SCRIPT_MARK + '\n{{ probe_argv | map("quote") | join(" ") }}\n{% endblock %}\n')
    builtin = template_name_for(cluster.scheduler)
    bases = [str(cluster.template.resolve()), builtin] if cluster.template else [builtin]
    env = get_environment(cluster.template)
    for base in bases:
        try:
            text = env.from_string(child).render(ctx, base=base)
        except jinja2.TemplateError as e:
            raise RenderError(f"the route probe's job script for {name} does not render from {base}: {e}") from None
        if SCRIPT_MARK in text:
            return text
    raise RenderError(f"the built-in template {builtin} has no run block for the route probe")


def probe_outputs(work_dir: str, job_name: str, job_id: str) -> list[str]:
    """Every file the probe job may leave in ``work_dir``: what the templates name as the scheduler's output
    files (``pilot-ID.out/.err`` and the exit-code file; PBS's and the local scheduler's own copies)."""
    fid = job_id.replace("/", "_")
    return [f"{work_dir}/pilot-{fid}.{ext}" for ext in ("out", "err", "exit")] + \
        [f"{work_dir}/{job_name}.pbs.out", f"{work_dir}/{job_name}.local.out"]


# ============================================================================ the answers
@dataclass
class ProbeAnswer:
    """What the probe said about one route (``ok``; else ``error``, at ``stage`` file, ssh or database)."""

    route: str
    ok: bool
    seconds: float | None = None
    error: str = ""
    stage: str = ""
    where: str = ""


def read_answers(text: str) -> tuple[dict[str, ProbeAnswer], dict[str, Any] | None]:
    """The probe's answers per route, and its final line (None while it has not finished)."""
    answers: dict[str, ProbeAnswer] = {}
    done: dict[str, Any] | None = None
    for line in (text or "").splitlines():
        if not line.startswith(PROBE_MARK):
            continue
        try:
            data = json.loads(line[len(PROBE_MARK):])
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("done"):
            done = data
        elif isinstance(data.get("route"), str):
            answers[data["route"]] = ProbeAnswer(
                route=data["route"], ok=bool(data.get("ok")), seconds=data.get("seconds"),
                error=str(data.get("error") or ""), stage=str(data.get("stage") or ""),
                where=str(data.get("where") or ""))
    return answers, done


_NO_ROUTE = ("no route to host", "network is unreachable", "errno 113", "errno 101")
_REFUSED = ("connection refused", "errno 111")
_CERT = ("certificate_verify_failed", "certificate verify failed", "hostname mismatch", "doesn't match")
_TLS = (*_CERT, "wrong version number", "ssl handshake failed", "tlsv1 alert")
_AUTH = ("authentication failed", "authenticationfailed", "unauthorized", "'code': 18", "'code': 13")
_TIMEOUT = ("timed out", "timeout")


def _has(text: str, words: tuple[str, ...]) -> bool:
    return any(w in text for w in words)


def _short(error: str, limit: int = 200) -> str:
    """The first part of a driver error (pymongo appends its whole topology description)."""
    text = error.split(", Timeout:")[0].split(" (configured timeouts")[0].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ssh_failure(err: str) -> str:
    low = err.lower()
    if "permission denied" in low:
        return f"the login node's sshd refused the route key ({_short(err)})"
    if "host key" in low or "identification has changed" in low:
        return f"the login node's host key is not the one in ~/.pilot/route_known_hosts ({_short(err)})"
    unreachable = _unreachable(err, "")
    if unreachable is not None:
        return f"ssh to the login node: {unreachable}"
    return f"ssh to the login node failed ({_short(err, 300)})"


def _unreachable(err: str, at: str) -> str | None:
    """No route to host, or connection refused: the same words for the pilot's ssh to the login node and for its
    direct connection to the LaunchPad (``at``: where it tried, or empty); None for any other failure."""
    low = err.lower()
    if _has(low, _NO_ROUTE):
        return f"no route to host{at}: {_short(err)}"
    if _has(low, _REFUSED):
        return f"connection refused{at}: nothing listens there ({_short(err)})"
    return None


def describe_failure(answer: ProbeAnswer, forward_port: int | None = None) -> str:
    """What a failed route got, in words a person acts on: no route to host, refused, TLS, authentication.

    Through the ssh route, a forward that is not up shows as a connection that closes at once (the pilot's
    ssh accepts it, then the login node has nothing to join it to): that is told apart from TLS failures.
    """
    err = answer.error
    low = err.lower()
    at = f" ({answer.where})" if answer.where else ""
    if answer.stage == "file":
        return f"the cluster's LaunchPad file could not be read on the compute node ({_short(err, 300)})"
    if answer.stage == "ssh":
        return _ssh_failure(err)
    if "no such file" in low or "filenotfounderror" in low:
        return f"a file the LaunchPad file names is missing on the compute node, such as its CA file ({_short(err)})"
    if _has(low, _AUTH):
        return f"authentication refused: the username/password of the cluster's LaunchPad file{at}"
    if answer.route == "ssh":
        if _has(low, _CERT):
            return f"ssh worked; TLS failed: the certificate was not accepted with the CA file ({_short(err)})"
        port = f"127.0.0.1:{forward_port}" if forward_port is not None else "forward port"
        return (f"ssh worked, but the login node's {port} did not lead to the LaunchPad (no forward there: "
                f"neither the manager's nor the doctor's was up) ({_short(err)})")
    unreachable = _unreachable(err, at)
    if unreachable is not None:
        return unreachable
    if _has(low, _TLS):
        return f"TLS failed{at}: the server's certificate was not accepted with the CA file ({_short(err)})"
    if _has(low, _TIMEOUT):
        return f"timed out{at}: {_short(err)}"
    return f"failed{at}: {_short(err, 300)}"


# ============================================================================ the login node's route files
def known_hosts_entry(text: str) -> tuple[str, int, str] | None:
    """(address, port, base64 host key) of the first line of a known_hosts file as ``pilot bootstrap`` writes
    it (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT: ``[ADDRESS]:PORT TYPE KEY``, or ``ADDRESS TYPE KEY`` for
    port 22); None when there is no such line (hashed names cannot be read back)."""
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "|", "@")):
            continue
        name = fields[0].split(",")[0]
        m = re.fullmatch(r"\[(.+)\]:(\d{1,5})", name)
        return (m.group(1), int(m.group(2)), fields[2]) if m else (name, 22, fields[2])
    return None


def authorized_route_port(text: str) -> int | None:
    """The port of the route key's line in an authorized_keys file (``permitopen="127.0.0.1:PORT"``, comment
    ``pilot-route``, as ``pilot bootstrap`` writes it); None without one."""
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-1] == "pilot-route":
            m = re.search(r'permitopen="(?:127\.0\.0\.1|localhost):(\d{1,5})"', fields[0])
            if m:
                return int(m.group(1))
    return None


# ============================================================================ addresses and the YAML to write
def launchpad_host_port(settings: dict[str, Any]) -> tuple[str, int] | None:
    """The host and port of a LaunchPad file's settings (the first host of a ``mongodb://`` URI); None for a
    DNS seed list (``mongodb+srv://``) or a Unix socket."""
    host = str(settings.get("host") or "")
    if host.startswith("mongodb+srv://"):
        return None
    if settings.get("uri_mode") or host.startswith("mongodb://"):
        first = urlsplit(host).netloc.rpartition("@")[2].split(",")[0]
        if first.startswith("["):
            name, _, rest = first[1:].partition("]")
            port = rest.lstrip(":")
        else:
            name, _, port = first.partition(":")
        if not name or name.endswith(".sock") or "%2f" in name.lower():
            return None
        return name, int(port or 27017)
    return (host, int(settings.get("port") or 27017)) if host else None


def usable_from_elsewhere(host: str) -> bool:
    """False for loopback and wildcard addresses: a compute node connecting there reaches itself."""
    if host in ("localhost", "0.0.0.0", "::", "[::]", ""):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def route_yaml(route: SshRoute | None) -> str:
    """The exact ``launchpad_route`` line of a cluster file for ``route`` (None: direct)."""
    if route is None:
        return "launchpad_route: direct"
    return (f"launchpad_route: {{via: ssh, port: {route.port}, login_address: {route.login_address}, "
            f"login_port: {route.login_port}}}")
