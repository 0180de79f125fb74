"""The probes: small Python scripts run on the cluster after the ``setup`` lines, and how their answer is read.

The doctor and bootstrap ask the cluster the same way: the command goes through :func:`with_setup` (the
setup lines under ``bash`` with ``set -e``, as the pilot job script runs them), the script prints one line
``PILOT-PROBE {json}`` (:data:`PROBE_MARK`), and :func:`read_probe` finds that line among whatever the setup
lines printed; a failed command's stderr is cut to its end for messages (:func:`tail`, :func:`last`).
Everything here is text: no transport, no I/O.

Also here: how a cluster is named in messages (:func:`address_of`, used by ``pilot status`` too) and the
``ssh ...`` words a person types to reach it (:func:`ssh_prefix`, used in fixes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.config import ClusterConfig

__all__ = [
    "DB_PROBE",
    "LIST_WHEELS",
    "PROBE_MARK",
    "PYTHON_INFO_PROBE",
    "PY_PROBE",
    "VENV_PROBE",
    "address_of",
    "last",
    "read_probe",
    "ssh_prefix",
    "tail",
    "with_setup",
]

#: The line prefix under which the probes print their JSON result (setup lines may print other things).
PROBE_MARK = "PILOT-PROBE "

# ============================================================================ the doctor's probes
#: Run by the cluster's Python after setup: versions of Python, fireworks and fireworks-pilot.
PY_PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import fireworks
    out["fireworks"] = getattr(fireworks, "__version__", "?")
except Exception as e:
    out["error"] = "cannot import fireworks: %s: %s" % (type(e).__name__, e)
try:
    import pilot
    out["pilot"] = pilot.__version__
except Exception as e:
    out.setdefault("error", "cannot import pilot (fireworks-pilot): %s: %s" % (type(e).__name__, e))
print("PILOT-PROBE " + json.dumps(out))
"""

#: Run by the cluster's Python after setup: LaunchPad.from_file(argv[1]), then ping and one read.
#: argv[2] = server selection timeout in ms.
DB_PROBE = r"""
import json, os, sys, time
path = os.path.expanduser(sys.argv[1])
from fireworks import LaunchPad
lp = LaunchPad.from_file(path)
d = lp.to_dict()
kw = dict(d.get("mongoclient_kwargs") or {})
kw.setdefault("serverSelectionTimeoutMS", int(sys.argv[2]))
d["mongoclient_kwargs"] = kw
d["strm_lvl"] = "ERROR"
lp = LaunchPad.from_dict(d)
t = time.time()
lp.connection.admin.command("ping")
lp.fireworks.find_one({}, {"_id": 1})
print("PILOT-PROBE " + json.dumps({"database": lp.db.name, "seconds": round(time.time() - t, 3)}))
"""

# ============================================================================ bootstrap's probes
#: The cluster's Python: version, platform, glibc, and whether ``venv`` and ``ensurepip`` import.
PYTHON_INFO_PROBE = r"""
import json, platform, sys
out = {"version": platform.python_version(), "major": sys.version_info[0], "minor": sys.version_info[1],
       "implementation": sys.implementation.name, "machine": platform.machine(),
       "system": platform.system().lower(), "glibc": None, "executable": sys.executable}
lib, ver = platform.libc_ver()
if lib == "glibc":
    out["glibc"] = ver
for m in ("venv", "ensurepip"):
    try:
        __import__(m)
        out[m] = True
    except Exception:
        out[m] = False
print("PILOT-PROBE " + json.dumps(out))
"""

#: Run by the venv's Python: the installed fireworks-pilot version and the stamp file argv[1] (or None).
VENV_PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0]}
try:
    import pilot, fireworks
    out["pilot"] = pilot.__version__
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
try:
    with open(sys.argv[1]) as f:
        out["stamp"] = json.load(f)
except (OSError, ValueError):
    out["stamp"] = None
print("PILOT-PROBE " + json.dumps(out))
"""

#: Lists the wheels in a directory with their SHA-256 (argv[1] = the directory).
LIST_WHEELS = r"""
import hashlib, json, os, sys
out = {}
d = sys.argv[1]
if os.path.isdir(d):
    for n in sorted(os.listdir(d)):
        if n.endswith(".whl"):
            h = hashlib.sha256()
            with open(os.path.join(d, n), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[n] = h.hexdigest()
print("PILOT-PROBE " + json.dumps(out))
"""


# ============================================================================ running and reading them
def with_setup(setup: str, argv: list[str]) -> list[str]:
    """``argv`` run after the ``setup`` lines, as the pilot job script runs them (bash, ``set -e``).

    The setup text goes to ``bash -c`` as one argument and ``argv`` follows as ``"$@"``, so nothing is
    re-quoted: ``["bash", "-c", "set -e; trap ... ERR; <setup>\\ntrap - ERR\\nexec \\"$@\\"", "pilot-setup",
    *argv]``. The first setup line shares the script's first line, so that line numbers in bash's own
    messages (``pilot-setup: line N: ...``) and in ``pilot: setup failed at line N (exit code C)`` (from
    the ERR trap) are the numbers of the setup lines.
    """
    text = setup.strip("\n")
    if not text.strip():
        return ["bash", "-c", 'exec "$@"', "pilot-setup", *argv]
    script = ("set -e; trap 'echo \"pilot: setup failed at line $LINENO (exit code $?)\" >&2' ERR; "
              + text + "\ntrap - ERR\nexec \"$@\"")
    return ["bash", "-c", script, "pilot-setup", *argv]


def read_probe(stdout: str) -> dict[str, Any] | None:
    """The JSON object of the last :data:`PROBE_MARK` line of ``stdout``; ``None`` if there is none or it
    is not a JSON object (the probe did not get that far)."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                data = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def tail(text: str | None, lines: int = 6) -> str:
    """The last ``lines`` non-blank lines of ``text`` (the end of a stderr, for a check's detail or a
    bootstrap error). Not :func:`pilot.transport.errors.tail`: that one keeps a raw excerpt (blank lines and
    all, capped in characters) inside the transport's exceptions; this one is for a short message."""
    rows = [ln for ln in (text or "").rstrip().splitlines() if ln.strip()]
    return "\n".join(rows[-lines:])


def last(text: str | None) -> str:
    """The last non-blank line of ``text``, stripped (a Python error's final line)."""
    rows = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return rows[-1] if rows else ""


# ============================================================================ naming the cluster
def address_of(cluster: ClusterConfig) -> str:
    """``user@host:port`` (``local`` for a local cluster)."""
    if cluster.is_local or not cluster.host:
        return "local"
    user = f"{cluster.user}@" if cluster.user else ""
    port = f":{cluster.port}" if cluster.port != 22 else ""
    return f"{user}{cluster.host}{port}" + (f" via {cluster.proxy_jump}" if cluster.proxy_jump else "")


def ssh_prefix(cluster: ClusterConfig) -> str:
    """The ``ssh ...`` words a person types to run a command on the cluster (for fixes)."""
    if cluster.is_local or not cluster.host:
        return ""
    words = ["ssh"]
    if cluster.port != 22:
        words += ["-p", str(cluster.port)]
    if cluster.identity_file:
        words += ["-i", str(cluster.identity_file)]
    if cluster.proxy_jump:
        words += ["-J", cluster.proxy_jump]
    words.append(f"{cluster.user}@{cluster.host}" if cluster.user else cluster.host)
    return " ".join(words) + " "
