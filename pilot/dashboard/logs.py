"""The tail of a pilot's output and error files, fetched over the manager's transport of its cluster.

Why on demand only: reading a file on a cluster is an SSH command (a second or more through a jump host), so the
pilot page links to it and nothing else asks. The files are the job templates' ``work_dir/pilot-<jobid>.out`` and
``.err`` (:func:`pilot.status.gather.pilot_files`, the names ``pilot status`` shows); the text is scrubbed of
the LaunchPad's secrets, as the manager scrubs a held cluster's stderr tail.
"""

from __future__ import annotations

import posixpath
import threading
from typing import Any

__all__ = ["TAIL_LINES", "pilot_log_tail"]

#: Lines of each file shown.
TAIL_LINES = 100
#: Seconds the ``tail`` on the cluster may take.
TIMEOUT_S = 20.0

# one log tail per cluster at a time: reloads and open tabs must not become a stream of SSH logins at the centre
# (its MaxStartups, fail2ban), which the manager's own connection would pay for
_busy: dict[str, threading.Lock] = {}
_busy_guard = threading.Lock()


def _cluster_lock(cluster: str) -> threading.Lock:
    with _busy_guard:
        return _busy.setdefault(cluster, threading.Lock())


def _work_dir(config: Any, rec: dict[str, Any]) -> str | None:
    """The pilot's work_dir: its cluster's config, else the folder above its job script (work_dir/scripts/)."""
    cluster = config.clusters.get(rec.get("cluster")) if config is not None else None
    if cluster is not None:
        return str(cluster.work_dir)
    script = rec.get("script_path")
    return posixpath.dirname(posixpath.dirname(script)) if isinstance(script, str) and script else None


def pilot_log_tail(config: Any, db: Any, job_name: str, secrets: list[str]) -> dict[str, Any]:
    """``{"record", "files": [{"path", "text" (or None), "error" (or None)}], "error"}`` for one pilot.

    ``error`` says why nothing could be read at all (no such pilot, no job id yet, a cluster the config does not
    define); a file that cannot be read has its own ``error`` (the transport's message, or tail's stderr).
    """
    from pilot.redact import scrub
    from pilot.status.gather import pilot_files
    from pilot.transport import ConnectError, TransportError
    from pilot.transport.clusters import transport_for

    rec = db["pilots"].find_one({"_id": job_name}, {"cluster": 1, "job_id": 1, "script_path": 1, "state": 1})
    out: dict[str, Any] = {"record": rec, "files": [], "error": None}
    if rec is None:
        out["error"] = f"no pilot {job_name} recorded"
        return out
    if config is None or rec.get("cluster") not in config.clusters:
        out["error"] = f"cluster {rec.get('cluster')!r} is not in the dashboard's config dir: cannot reach it"
        return out
    paths = [p for p in pilot_files(_work_dir(config, rec), rec.get("job_id")) if p]
    if not paths:
        out["error"] = "the pilot has no job id yet: no output files"
        return out
    lock = _cluster_lock(str(rec["cluster"]))
    if not lock.acquire(blocking=False):
        out["error"] = f"another log tail of {rec['cluster']} is under way: try again in a moment"
        return out
    transport = transport_for(str(rec["cluster"]), config.clusters[rec["cluster"]])
    try:
        for path in paths:
            try:
                res = transport.run(["tail", "-n", str(TAIL_LINES), "--", path], timeout=TIMEOUT_S)
            except ConnectError as e:   # nothing reached the cluster: the next file would fail the same way
                out["files"].append({"path": path, "text": None, "error": scrub(str(e), secrets)})
                break
            except TransportError as e:
                out["files"].append({"path": path, "text": None, "error": scrub(str(e), secrets)})
                continue
            if res.returncode != 0:
                why = (res.stderr or "").strip() or f"tail exited {res.returncode}"
                out["files"].append({"path": path, "text": None, "error": scrub(why, secrets)})
            else:
                out["files"].append({"path": path, "text": scrub(res.stdout, secrets), "error": None})
    finally:
        transport.close()
        lock.release()
    return out
