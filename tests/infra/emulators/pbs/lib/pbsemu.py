"""Emulated PBS Pro (OpenPBS 23.06) commands: qsub, qstat, qdel, qhold, qrls.

Output formats follow OpenPBS ``src/cmds/qstat.c`` (default table, ``-a`` alternate table,
``-f`` text folded by ``prt_attr`` at 78 columns, ``-F json`` printed the way cJSON prints it,
``-F dsv``) and the captures in ``reference/scheduler-outputs.yaml`` (entries ``pbspro-*``).
Exit codes are the PBS error number modulo 256, as the real commands ``exit(pbs_errno)``:
15001 Unknown Job Id -> 153, 15139 Job has finished -> 35, 15018 Unknown queue -> 170.
See docs/emulated-schedulers.md for what is emulated and what is not.
"""

from __future__ import annotations

import getopt
import json
import math
import os
import pwd
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING

PBS_VERSION = "23.06.06"
KIND = "pbs"
DEFAULTS: dict[str, Any] = {"queues": ["workq"], "default_queue": "workq", "server": "pbsemu"}

# PBS error numbers (src/include/pbs_error.h) and their texts (pbse_to_txt)
PBSE_UNKJOBID, PBSE_BADATVAL, PBSE_BADSTATE, PBSE_UNKQUE, PBSE_HISTJOBID = 15001, 15014, 15016, 15018, 15139
PBSE_TEXT = {PBSE_UNKJOBID: "Unknown Job Id", PBSE_BADATVAL: "Illegal attribute or resource value",
             PBSE_BADSTATE: "Request invalid for state of job", PBSE_UNKQUE: "Unknown queue",
             PBSE_HISTJOBID: "Job has finished"}

STATE_LETTER = {QUEUED: "Q", HELD: "H", RUNNING: "R", EXITING: "E", FINISHED: "F"}
SUBSTATE = {QUEUED: 10, HELD: 20, RUNNING: 42, EXITING: 50}
JOB_EXEC_KILL_WALLTIME = -29   # Exit_status of a job killed for exceeding its walltime
JOB_EXEC_FAIL1 = -1            # used by the emulator when a job's supervisor vanished (no real analogue)


def cfmt(fmt: str, *args: object) -> str:
    """printf-style formatting, kept to mirror the format strings of OpenPBS qstat.c."""
    return fmt % args


def rc(pbs_errno: int) -> int:
    return pbs_errno % 256


def load() -> tuple[core.Settings, core.Store, PbsPolicy]:
    settings = core.Settings.load(KIND, DEFAULTS)
    store = core.Store(settings)
    policy = PbsPolicy(settings)
    core.reap(policy, store)
    return settings, store, policy


# =========================================================================== job ids
JOBID_RE = re.compile(r"^(\d+)(?:\.(.*))?$")


def parse_jobid(text: str, settings: core.Settings) -> tuple[str | None, str]:
    """-> (seq or None when the id names another server, id as PBS echoes it: '<seq>.<server>')."""
    m = JOBID_RE.match(text)
    if not m:
        raise ValueError(text)
    seq, server = m.group(1), m.group(2)
    if not server:
        return str(int(seq)), f"{seq}.{settings.server}"
    if server.split(".")[0] == settings.server:
        return str(int(seq)), f"{seq}.{server}"
    return None, text


def full_id(job: dict[str, Any], settings: core.Settings) -> str:
    return f"{job['id']}.{settings.server}"


# =========================================================================== resources
def parse_select(spec: str) -> list[dict[str, str]] | None:
    """``2:ncpus=4:mem=1gb+1:ncpus=1`` -> chunks [{'count': '2', 'ncpus': '4', ...}, ...]."""
    chunks = []
    for part in spec.split("+"):
        items = part.split(":")
        chunk: dict[str, str] = {"count": "1"}
        for i, item in enumerate(items):
            if i == 0 and item.isdigit():
                chunk["count"] = item
                continue
            if "=" not in item:
                return None
            k, v = item.split("=", 1)
            if not k or not v:
                return None
            chunk[k] = v
        if int(chunk["count"]) < 1:
            return None
        if "ncpus" in chunk and not chunk["ncpus"].isdigit():
            return None
        chunks.append(chunk)
    return chunks


def chunks_to_select(chunks: list[dict[str, str]]) -> str:
    return "+".join(":".join([c["count"]] + [f"{k}={v}" for k, v in c.items() if k != "count"]) for c in chunks)


def resource_list(res: dict[str, str]) -> tuple[dict[str, str], list[dict[str, str]]] | str:
    """Resolve ``-l`` resources into Resource_List and chunks; a string names the bad resource."""
    out = dict(res)
    if "walltime" in out:
        secs = core.parse_hms(out["walltime"])
        if secs is None:
            return "walltime"
        out["walltime"] = core.fmt_hms(secs)
    if "select" in out:
        chunks = parse_select(out["select"])
        if chunks is None:
            return "select"
    elif "nodes" in out:  # Torque-style nodes=N:ppn=M, converted by the PBS Pro server
        m = re.match(r"^(\d+)(?::ppn=(\d+))?$", out["nodes"])
        if not m:
            return "nodes"
        chunks = [{"count": m.group(1), "ncpus": m.group(2) or "1"}]
        out["select"] = chunks_to_select(chunks)
    else:
        ncpus = out.get("ncpus", "1")
        if not ncpus.isdigit():
            return "ncpus"
        chunks = [{"count": "1", "ncpus": ncpus}]
        if "mem" in out:
            chunks[0]["mem"] = out["mem"]
        out["select"] = chunks_to_select(chunks)
    out["ncpus"] = str(sum(int(c["count"]) * int(c.get("ncpus", "1")) for c in chunks))
    out["nodect"] = str(sum(int(c["count"]) for c in chunks))
    for name in ("mpiprocs", "ngpus"):   # the server sums consumable chunk resources into Resource_List
        if any(name in c for c in chunks):
            if not all(c.get(name, "0").isdigit() for c in chunks):
                return "select"
            out[name] = str(sum(int(c["count"]) * int(c.get(name, "0")) for c in chunks))
    if any("mem" in c for c in chunks):
        sizes = [_size_bytes(c.get("mem", "0b")) for c in chunks]
        if None in sizes:
            return "select"
        out["mem"] = _size_text(sum(int(c["count"]) * b for c, b in zip(chunks, sizes)))
    out.setdefault("place", "pack" if out["nodect"] == "1" else "free")
    return out, chunks


SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4, "w": 8, "kw": 8 * 1024,
              "mw": 8 * 1024**2, "gw": 8 * 1024**3, "tw": 8 * 1024**4}


def _size_bytes(text: str) -> int | None:
    m = re.match(r"^(\d+)([kmgt]?[bw]?)$", text.lower())
    if not m:
        return None
    unit = m.group(2) or "b"
    return int(m.group(1)) * SIZE_UNITS[unit if unit[-1] in "bw" else unit + "b"]


def _size_text(n: int) -> str:
    """Bytes as PBS prints a size: the largest unit that keeps an integer (8gb, 1536mb)."""
    for unit in ("tb", "gb", "mb", "kb"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return f"{n}b"


# =========================================================================== the policy
class PbsPolicy:
    """PBS-specific behaviour plugged into ``emucore.Supervisor``."""

    def __init__(self, settings: core.Settings) -> None:
        self.settings = settings

    def spawn_supervisor(self, store: core.Store, job_id: str) -> None:
        core.launch_supervisor(store, job_id, os.path.abspath(__file__))

    def on_wait(self, job: dict[str, Any], need: int, avail: int, slots: int) -> None:
        prefix = "Can Never Run" if need > slots else "Not Running"
        job["comment"] = f"{prefix}: Insufficient amount of resource: ncpus (R: {need} A: {avail} T: {slots})"

    def launch_spec(self, job: dict[str, Any], store: core.Store) -> dict[str, Any]:
        jdir = store.job_dir(job["id"])
        host = core.short_hostname()
        jid = full_id(job, self.settings)
        nodefile = jdir / "nodefile"
        nodefile.write_text("".join(f"{host}\n" * (int(c["count"]) * int(c.get("mpiprocs", "1")))
                                    for c in job["chunks"]))
        tmpdir = str(store.dir / "tmp" / f"pbs.{jid}")   # real PBS: /var/tmp/pbs.<jobid>
        os.makedirs(tmpdir, exist_ok=True)
        env = {"HOME": job["home"], "USER": job["owner"], "LOGNAME": job["owner"], "SHELL": job["login_shell"],
               "PATH": job["submit_env"].get("PATH", "/usr/bin:/bin"), "MAIL": f"/var/mail/{job['owner']}"}
        if job.get("export_all"):
            env.update(job["submit_env"])
        for k, v in job["variable_list"]:
            env[k] = v
        env.update(PBS_ENVIRONMENT="PBS_BATCH", PBS_JOBID=jid, PBS_JOBNAME=job["name"], PBS_QUEUE=job["queue"],
                   PBS_NODEFILE=str(nodefile), PBS_JOBDIR=job["home"], PBS_TASKNUM="1", PBS_NODENUM="0",
                   PBS_MOMPORT="15003", NCPUS=job["resources"].get("ncpus", "1"),
                   OMP_NUM_THREADS=job["chunks"][0].get("ompthreads", job["chunks"][0].get("ncpus", "1")),
                   TMPDIR=tmpdir, ENVIRONMENT="BATCH",
                   PILOT_EMU_STATE=str(store.dir))   # so qstat/qsub inside the job reach the same "server"
        script = str(jdir / "script")
        if job.get("command"):
            argv = list(job["command"])
        elif job.get("shell"):
            argv = [job["shell"], script]
        elif job["script_text"].startswith("#!"):
            argv = [script]
        else:
            argv = [job["login_shell"], script]
        argv[0] = _which(argv[0], env["PATH"])
        stdout = job["output_path"]
        stderr = stdout if job["join"] == "oe" else job["error_path"]
        if job["join"] == "eo":
            stdout = stderr = job["error_path"]
        return {"argv": argv, "env": env, "cwd": job["home"], "fallback_cwd": "/", "stdout": stdout,
                "stderr": stderr, "tmpdir": tmpdir}

    def on_start(self, job: dict[str, Any]) -> None:
        host = core.short_hostname()
        job["session_id"] = job["pid"]
        job["exec_host"] = "+".join(
            f"{host}/{i}" + (f"*{c.get('ncpus', '1')}" if c.get("ncpus", "1") != "1" else "")
            for i, c in enumerate(_expand_chunks(job["chunks"])))
        job["exec_vnode"] = "+".join(f"({host}:ncpus={c.get('ncpus', '1')})" for c in _expand_chunks(job["chunks"]))
        job["comment"] = (f"Job run at {time.strftime('%a %b %d at %H:%M', time.localtime(job['stime']))} "
                          f"on {job['exec_vnode']}")

    def kill_sequence(self, job: dict[str, Any], request: dict[str, Any], now: float) -> list[tuple[float, int]]:
        if request.get("force"):
            return [(now, signal.SIGKILL)]
        return [(now, signal.SIGTERM), (now + job["kill_delay"] / job["time_scale"], signal.SIGKILL)]

    def on_kill_request(self, job: dict[str, Any], request: dict[str, Any]) -> None:
        job.update(state=EXITING, term_reason=job.get("term_reason") or "deleted", mtime=time.time())

    def limit_events(self, job: dict[str, Any]) -> list[tuple[str, float]]:
        return [("walltime", job["walltime"])] if job.get("walltime") else []

    def on_limit(self, job: dict[str, Any], name: str, now: float, elapsed: float):
        path = job["output_path"] if job["join"] == "oe" else job["error_path"]
        with open(path, "a") as fh:   # MoM's message to the job's stderr
            fh.write(f"=>> PBS: job killed: walltime {int(elapsed)} exceeded limit {int(job['walltime'])}\n")
        steps = [(now, signal.SIGTERM), (now + job["kill_delay"] / job["time_scale"], signal.SIGKILL)]
        return steps, {"state": EXITING, "term_reason": "walltime", "mtime": now}

    def on_finish(self, job: dict[str, Any]) -> None:
        if job.get("lost"):
            job["exit_status"] = JOB_EXEC_FAIL1
        elif job.get("term_reason") == "walltime":
            job["exit_status"] = JOB_EXEC_KILL_WALLTIME
        elif job.get("term_signal"):
            job["exit_status"] = 256 + job["term_signal"]
        else:
            job["exit_status"] = job.get("exit_code") or 0
        if job.get("term_reason") == "deleted":
            how, job["substate"] = "terminated", 91
        elif job["exit_status"] == 0:
            how, job["substate"] = "finished", 92
        else:
            how, job["substate"] = "failed", 93
        if job.get("comment", "").startswith("Job run at"):
            job["comment"] = job["comment"] + f" and {how}"

    def after_finish(self, job: dict[str, Any], store: core.Store) -> None:
        core.rmtree(job.get("tmpdir"))


def _expand_chunks(chunks: list[dict[str, str]]) -> list[dict[str, str]]:
    return [c for c in chunks for _ in range(int(c["count"]))]


def _which(prog: str, path: str) -> str:
    if "/" in prog:
        return prog
    for d in path.split(":"):
        cand = os.path.join(d or ".", prog)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return prog


# =========================================================================== qsub
QSUB_OPTS = "a:A:c:C:e:hIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:Xz"
QSUB_USAGE = """usage: qsub [-a date_time] [-A account_string] [-c interval]
\t[-C directive_prefix] [-e path] [-f ] [-h ] [-I [-X]] [-j oe|eo] [-J X-Y[:Z]]
\t[-k keep] [-l resource_list] [-m mail_options] [-M user_list]
\t[-N jobname] [-o path] [-p priority] [-P project] [-q queue] [-r y|n]
\t[-R o|e|oe] [-S path] [-u user_list] [-W otherattributes=value...]
\t[-v variable_list] [-V ] [-z] [script | -- command [arg1 ...]]
       qsub --version
"""


class QsubError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _collect(opts: list[tuple[str, str]]) -> dict[str, Any]:
    """getopt pairs -> {'-N': 'x', '-l': {res: val}, '-v': [...], '-W': {k: v}, flags: True}."""
    out: dict[str, Any] = {"-l": {}, "-v": [], "-W": {}}
    for opt, val in opts:
        if opt == "-l":
            for item in _split_commas(val):
                if "=" in item:
                    k, v = item.split("=", 1)
                    out["-l"][k] = v
                else:
                    out["-l"][item] = "True"
        elif opt == "-v":
            out["-v"].extend(_split_commas(val))
        elif opt == "-W":
            for item in _split_commas(val):
                k, _, v = item.partition("=")
                out["-W"][k] = v
        elif opt in ("-h", "-V", "-z", "-I", "-X"):
            out[opt] = True
        else:
            out[opt] = val
    return out


def _split_commas(text: str) -> list[str]:
    """Split on commas outside quotes (qsub's comma_token)."""
    items, cur, quote = [], [], ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            quote = "" if quote == ch else (quote or ch)
            cur.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 1
        elif ch == "," and not quote:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    return [x for x in items if x != ""]


def _directives(script: str, prefix: str) -> list[str]:
    """Arguments from ``#PBS`` lines before the first executable line of the script."""
    args: list[str] = []
    for n, line in enumerate(script.splitlines()):
        s = line.strip()
        if n == 0 and s.startswith("#!"):
            continue
        if s == "":
            continue
        if not s.startswith("#"):
            break
        if line.startswith(prefix):
            rest = line[len(prefix):]
            if rest and not rest[0].isspace():
                continue
            try:
                args.extend(shlex.split(rest, posix=True))
            except ValueError:
                raise QsubError(f"qsub: directive error: {line}", 2)
    return args


def qsub(argv: list[str]) -> int:
    if argv and argv[0] == "--version":
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    settings, store, policy = load()
    try:
        return _qsub(argv, settings, store, policy)
    except QsubError as exc:
        sys.stderr.write(str(exc) + ("\n" if not str(exc).endswith("\n") else ""))
        return exc.code


def _qsub(argv: list[str], settings: core.Settings, store: core.Store, policy: PbsPolicy) -> int:
    try:
        opts, rest = getopt.getopt(argv, QSUB_OPTS)
    except getopt.GetoptError as exc:
        raise QsubError(f"qsub: {exc.msg}\n{QSUB_USAGE}", 2)
    cmdline = _collect(opts)
    command: list[str] | None = None
    cwd = os.getcwd()
    if len(argv) > len(rest) and argv[len(argv) - len(rest) - 1] == "--":
        command = rest
        if not command:
            raise QsubError(f"qsub: no executable after --\n{QSUB_USAGE}", 2)
        script_text, script_name = "", "STDIN"
    elif rest:
        if len(rest) > 1:
            raise QsubError(f"qsub: too many arguments\n{QSUB_USAGE}", 2)
        path = Path(rest[0])
        try:
            script_text = path.read_text()
        except OSError as exc:
            raise QsubError(f"qsub: script file:: {exc.strerror}", 1)
        script_name = path.name
    else:
        script_text, script_name = sys.stdin.read(), "STDIN"
        if not script_text.strip():
            raise QsubError("qsub: script file is empty", 1)

    prefix = cmdline.get("-C") or os.environ.get("PBS_DPREFIX") or "#PBS"
    merged = {"-l": {}, "-v": [], "-W": {}}
    if script_text:
        try:
            dopts, _ = getopt.getopt(_directives(script_text, prefix), QSUB_OPTS)
        except getopt.GetoptError as exc:
            raise QsubError(f"qsub: directive error: {exc.msg}", 2)
        merged.update({k: v for k, v in _collect(dopts).items() if k not in ("-l", "-v", "-W")})
        d = _collect(dopts)
        merged["-l"].update(d["-l"]); merged["-v"].extend(d["-v"]); merged["-W"].update(d["-W"])
    for k, v in cmdline.items():   # the command line wins over the script
        if k == "-l":
            merged["-l"].update(v)
        elif k == "-v":
            merged["-v"].extend(v)
        elif k == "-W":
            merged["-W"].update(v)
        else:
            merged[k] = v

    for opt, what in (("-J", "job arrays"), ("-I", "interactive jobs"), ("-a", "deferred execution (-a)")):
        if opt in merged:
            raise QsubError(f"qsub: {what} are not supported by the PBS emulator", 2)
    join = merged.get("-j", "n")
    if join not in ("oe", "eo", "n"):
        raise QsubError(f"qsub: illegal -j value\n{QSUB_USAGE}", 2)
    rerun = merged.get("-r", "y")
    if rerun not in ("y", "n"):
        raise QsubError(f"qsub: illegal -r value\n{QSUB_USAGE}", 2)
    name = merged.get("-N", script_name)
    if not name or any(ch.isspace() for ch in name) or len(name) > 236:
        raise QsubError(f"qsub: illegal -N value\n{QSUB_USAGE}", 2)

    queue = merged.get("-q", settings.default_queue).split("@")[0] or settings.default_queue
    if queue not in settings.queues:
        raise QsubError(f"qsub: {PBSE_TEXT[PBSE_UNKQUE]}", rc(PBSE_UNKQUE))
    resolved = resource_list(merged["-l"])
    if isinstance(resolved, str):
        raise QsubError(f"qsub: {PBSE_TEXT[PBSE_BADATVAL]} Resource_List.{resolved}", rc(PBSE_BADATVAL))
    resources, chunks = resolved

    submit_env = dict(os.environ)
    variables: list[list[str]] = []
    for item in merged["-v"]:
        k, eq, v = item.partition("=")
        if not eq:
            if k not in os.environ:
                raise QsubError("qsub: cannot send environment with the job", 1)
            v = os.environ[k]
        variables.append([k, v.strip("\"'") if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v])
    pw = pwd.getpwuid(os.getuid())
    user, home, login_shell = pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh"
    host = core.short_hostname()
    o_vars = [["PBS_O_HOME", home], ["PBS_O_LANG", submit_env.get("LANG", "C")], ["PBS_O_LOGNAME", user],
              ["PBS_O_PATH", submit_env.get("PATH", "/usr/bin:/bin")], ["PBS_O_MAIL", f"/var/mail/{user}"],
              ["PBS_O_SHELL", submit_env.get("SHELL", login_shell)], ["PBS_O_WORKDIR", cwd],
              ["PBS_O_SYSTEM", os.uname().sysname]]
    variable_list = o_vars + variables + [["PBS_O_QUEUE", queue], ["PBS_O_HOST", host]]
    walltime = core.parse_hms(resources["walltime"]) if "walltime" in resources else None
    hold = bool(merged.get("-h"))
    now = time.time()

    with store.locked() as st:
        seq = st["next_id"]
        st["next_id"] = seq + 1
        jid = str(seq)
        jdir = store.job_dir(jid)
        jdir.mkdir(parents=True, exist_ok=True)
        script_path = jdir / "script"
        script_path.write_text(script_text or "")
        script_path.chmod(0o700)
        out_path = _output_path(merged.get("-o"), cwd, f"{name}.o{seq}")
        err_path = _output_path(merged.get("-e"), cwd, f"{name}.e{seq}")
        submit_args = [a for a in argv]
        job = {
            "id": seq, "kind": KIND, "name": name, "owner": user, "home": home, "login_shell": login_shell,
            "submit_host": host, "queue": queue, "state": HELD if hold else QUEUED, "hold": hold,
            "ctime": now, "qtime": now, "mtime": now, "etime": now, "eligible_at": now + settings.start_delay,
            "time_scale": settings.time_scale, "kill_delay": settings.kill_delay,
            "walltime": walltime, "resources": resources, "chunks": chunks, "ncpus": int(resources["ncpus"]),
            "script_text": script_text, "command": command, "shell": merged.get("-S"), "cwd": cwd,
            "output_path": out_path, "error_path": err_path, "join": join, "rerunable": rerun == "y",
            "variable_list": variable_list, "export_all": bool(merged.get("-V")), "submit_env": submit_env,
            "account": merged.get("-A"), "project": merged.get("-P", "_pbs_project_default"),
            "priority": merged.get("-p", "0"), "other": merged["-W"],
            "submit_args": " ".join(submit_args), "spawned_at": now, "sup_pid": None,
        }
        st["jobs"][jid] = job
    policy.spawn_supervisor(store, jid)
    if not merged.get("-z"):
        print(f"{seq}.{settings.server}")
        sys.stdout.flush()
    if str(merged["-W"].get("block", "")).lower() in ("true", "t", "1", "y"):
        return _block(store, jid)
    return 0


def _block(store: core.Store, jid: str) -> int:
    while True:
        job = store.get(jid)
        if job is None:
            return 0
        if job["state"] == FINISHED:
            return job.get("exit_status", 0) % 256
        time.sleep(0.5)


def _output_path(value: str | None, cwd: str, default_name: str) -> str:
    if not value:
        return os.path.join(cwd, default_name)
    path = value.split(":", 1)[1] if ":" in value and not value.startswith("/") else value
    path = os.path.join(cwd, os.path.expanduser(path))
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    return os.path.normpath(path)


# =========================================================================== attributes
def ctime_str(t: float) -> str:
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(t))


def usage(job: dict[str, Any], now: float) -> dict[str, str] | None:
    if not job.get("stime"):
        return None
    if job["state"] == FINISHED:
        cpu, rss, vmem = job.get("cpu_time", 0.0), job.get("max_rss_kb", 0), 0
        wall = job.get("walltime_used", 0.0)
        real = max(job.get("end_time", now) - job["stime"], 1e-9)
    else:
        u = core.group_usage(job.get("pgid"))
        cpu, rss, vmem = u.cpu_seconds, u.rss_kb, u.vsize_kb
        wall = (now - job["stime"]) * job["time_scale"]
        real = max(now - job["stime"], 1e-9)
    return {"cpupercent": str(int(cpu * 100 / real)), "cput": core.fmt_hms(cpu), "mem": f"{rss}kb",
            "ncpus": job["resources"]["ncpus"], "vmem": f"{vmem}kb", "walltime": core.fmt_hms(wall)}


def attributes(job: dict[str, Any], settings: core.Settings, now: float) -> list[tuple[str, str | None, str]]:
    """The job's attributes in the order a PBS Pro server returns them (qstat -f)."""
    a: list[tuple[str, str | None, str]] = []
    host = job["submit_host"]
    a.append(("Job_Name", None, job["name"]))
    a.append(("Job_Owner", None, f"{job['owner']}@{host}"))
    used = usage(job, now)
    if used:
        a.extend(("resources_used", k, v) for k, v in used.items())
    a.append(("job_state", None, STATE_LETTER[job["state"]]))
    a.append(("queue", None, job["queue"]))
    a.append(("server", None, settings.server))
    if job.get("account"):
        a.append(("Account_Name", None, job["account"]))
    a.append(("Checkpoint", None, "u"))
    a.append(("ctime", None, ctime_str(job["ctime"])))
    a.append(("Error_Path", None, f"{host}:{job['error_path']}"))
    if job.get("stime"):
        a.append(("exec_host", None, job["exec_host"]))
        a.append(("exec_vnode", None, job["exec_vnode"]))
    a.append(("Hold_Types", None, "u" if job["state"] == HELD else "n"))
    a.append(("Join_Path", None, job["join"]))
    a.append(("Keep_Files", None, "n"))
    a.append(("Mail_Points", None, "a"))
    a.append(("mtime", None, ctime_str(job["mtime"])))
    a.append(("Output_Path", None, f"{host}:{job['output_path']}"))
    a.append(("Priority", None, str(job.get("priority", "0"))))
    a.append(("qtime", None, ctime_str(job["qtime"])))
    a.append(("Rerunable", None, "True" if job.get("rerunable", True) else "False"))
    a.extend(("Resource_List", k, v) for k, v in sorted(job["resources"].items()))
    if job.get("stime"):
        a.append(("stime", None, ctime_str(job["stime"])))
    if job["state"] == FINISHED and job.get("stime"):
        a.append(("obittime", None, ctime_str(job["end_time"])))
    if job["state"] in (RUNNING, EXITING) and job.get("session_id"):
        a.append(("session_id", None, str(job["session_id"])))
        a.append(("jobdir", None, job["home"]))
    sub = job.get("substate") if job["state"] == FINISHED else SUBSTATE[job["state"]]
    a.append(("substate", None, str(sub if sub is not None else 92)))
    a.append(("Variable_List", None, ",".join(f"{k}={_escape_commas(v)}" for k, v in job["variable_list"])))
    if job.get("comment"):
        a.append(("comment", None, job["comment"]))
    a.append(("etime", None, ctime_str(job["etime"])))
    if job.get("run_count"):
        a.append(("run_count", None, str(job["run_count"])))
    if job["state"] == FINISHED and job.get("stime"):
        a.append(("Stageout_status", None, "1"))
        if job.get("exit_status") is not None:
            a.append(("Exit_status", None, str(job["exit_status"])))
    a.append(("Submit_arguments", None, job["submit_args"]))
    if job["state"] == FINISHED:
        a.append(("history_timestamp", None, str(int(job["end_time"]))))
    a.append(("project", None, job["project"]))
    a.append(("Submit_Host", None, host))
    return a


def _escape_commas(v: str) -> str:
    return v.replace(",", "\\,")


# ---- text (-f): prt_attr folding
CHAR_LINE_LIMIT = 78


def fold_attr(name: str, value: str, one_line: bool = False) -> str:
    """One attribute as qstat -f prints it (OpenPBS prt_attr): comma tokens, 78-column fold, tab."""
    if one_line:
        return f"    {name} = " + value.replace("\n", "\\n")
    out = [f"    {name} = "]
    start = len(name) + 7
    tokens = [t for t in value.split(",") if t != ""]   # strtok() drops empty tokens
    first = True
    for i, tok in enumerate(tokens):
        if len(tok) + start < CHAR_LINE_LIMIT:
            out.append(tok)
            start += len(tok)
        else:
            if not first:
                out.append("\n\t")
                start = 9
            for ch in tok:
                out.append(ch)
                start += 1
                if start > CHAR_LINE_LIMIT:
                    start = 8
                    out.append("\n\t")
        if i + 1 < len(tokens):
            first = False
            out.append(",")
    return "".join(out)


def format_full_text(job: dict[str, Any], settings: core.Settings, now: float, one_line: bool) -> str:
    lines = [fold_attr(f"{n}.{r}" if r else n, v, one_line) for n, r, v in attributes(job, settings, now)]
    return f"Job Id: {full_id(job, settings)}\n" + "\n".join(lines) + "\n\n"


def format_dsv(job: dict[str, Any], settings: core.Settings, now: float, delim: str) -> str:
    def esc(v: str) -> str:
        return v.replace(delim, "\\" + delim).replace("\n", "\\n").replace("\f", "\\f")
    parts = [f"{n}.{r}={esc(v)}" if r else f"{n}={esc(v)}" for n, r, v in attributes(job, settings, now)]
    return f"Job Id: {full_id(job, settings)}{delim}" + delim.join(parts) + "\n"


# ---- JSON (-F json): values parsed like pbs_json_insert_parsed, printed like cJSON_Print
NUMBER_RE = re.compile(r"^-?(0|[1-9]\d*|\d+)(\.\d+)?([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    if NUMBER_RE.match(text):
        v = float(text)
        return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if text[:1] in ('"', "[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def job_json(job: dict[str, Any], settings: core.Settings, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, res, value in attributes(job, settings, now):
        if name == "Variable_List":
            out[name] = {k: parse_value(v) for k, v in job["variable_list"]}
        elif res:
            out.setdefault(name, {})[res] = parse_value(value)
        else:
            out[name] = parse_value(value)
    return out


def cjson_print(value: Any, depth: int = 0) -> str:
    """cJSON_Print: tabs for indentation, a tab after ':', integers without a fraction."""
    if isinstance(value, dict):
        if not value:
            return "{\n" + "\t" * depth + "}"
        items = [("\t" * (depth + 1)) + _cjson_string(k) + ":\t" + cjson_print(v, depth + 1) for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "\t" * depth + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[" + ", ".join(cjson_print(v, depth + 1) for v in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        d = float(value)
        if math.isnan(d) or math.isinf(d):
            return "null"
        if d.is_integer() and abs(d) <= 2**31 - 1:
            return str(int(d))
        s = cfmt("%1.15g", d)
        return s if float(s) == d else cfmt("%1.17g", d)
    return _cjson_string(str(value))


def _cjson_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# ---- tables
def _trunc(value: str, width: int) -> str:
    return value[: width - 1] + "*" if len(value) > width else value


def default_row(job: dict[str, Any], settings: core.Settings, now: float, wide: bool) -> str:
    jid = full_id(job, settings)
    jid = ".".join(jid.split(".")[:2])       # the job id up to the first part of the server name
    used = usage(job, now)
    timeu = used["cput"] if used else "0"
    name = job["name"]
    if wide:
        name = name[:14] + "*" if len(name) >= 15 else name
        return cfmt("%-30s %-15s %-15s  %8s %1s %-15s\n", 
            _trunc(jid, 30), name, _trunc(job["owner"], 15), _trunc(timeu, 8), STATE_LETTER[job["state"]],
            _trunc(job["queue"], 15))
    name = name[:15] + "*" if len(name) >= 16 else name
    return cfmt("%-17s %-16s %-16s  %8s %1s %-16s\n", 
        _trunc(jid, 17), name, _trunc(job["owner"], 16), _trunc(timeu, 8), STATE_LETTER[job["state"]],
        _trunc(job["queue"], 16))


DEFAULT_HEADER = ("Job id            Name             User              Time Use S Queue\n"
                  "----------------  ---------------- ----------------  -------- - -----\n")
WIDE_HEADER = ("Job id                         Name            User             Time Use S Queue\n"
               "-----------------------------  --------------- ---------------  -------- - ---------------\n")


def cnv_size(value: str) -> str:
    """qstat's cnv_size without -M/-G: keep the unit, scale up while > 9999."""
    m = re.match(r"^(\d+)([kmgt]?)([bw]?)$", value.lower())
    if not m:
        return value
    n, mag = int(m.group(1)), " kmgt".index(m.group(2) or " ")
    suffix = m.group(3) or "b"
    while n > 9999:
        n = (n + 1023) >> 10
        mag += 1
    return f"{n}{' kmgtp?'[mag].strip()}{suffix}"


def alt_header(settings: core.Settings) -> str:
    return (f"\n{settings.server}: \n" + cfmt("%60s%-7s%-8s%s\n", " ", "Req'd", "Req'd", "Elap")
            + "Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n"
            + "--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n")


def alt_row(job: dict[str, Any], settings: core.Settings, now: float, show_nodes: bool, show_comment: bool,
            one_line: bool) -> str:
    blank = " -- "
    used = usage(job, now)
    res = job["resources"]
    sess = str(job["session_id"]) if job["state"] in (RUNNING, EXITING) and job.get("session_id") else blank
    mem = cnv_size(res["mem"]) if "mem" in res else blank
    line = cfmt("%-15.15s %-8.8s %-8.8s ", _trunc(full_id(job, settings), 15), _trunc(job["owner"], 8),
                                        _trunc(job["queue"], 8))
    line += cfmt("%-10.10s %6.6s %3.3s %3.3s ", _trunc(job["name"], 10), _trunc(sess, 6), _trunc(res["nodect"], 3),
                                             _trunc(res["ncpus"], 3))
    line += cfmt("%6.6s %5.5s %1.1s %5.5s", mem, res.get("walltime", blank), STATE_LETTER[job["state"]],
                                         used["walltime"] if used else blank)
    extra = ""
    if show_nodes:
        nodes = job.get("exec_host", "") if job.get("stime") else ""
        extra += (nodes + "\n") if one_line else (f"   {nodes}\n" if nodes else "")
    if show_comment and job.get("comment"):
        extra += f"   {job['comment']}\n"
    return line + (" " if one_line else "\n") + extra


# =========================================================================== qstat
QSTAT_USAGE = """usage: 
qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]
qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G|-M] [-1] [-w]
\t[ job_identifier... | destination... ]
qstat -Q [-f] [-F format] [-D delim] [ destination... ]
qstat -q [-G|-M] [ destination... ]
qstat -B [-f] [-F format] [-D delim] [ server_name... ]
qstat --version
"""


def qstat(argv: list[str]) -> int:
    if argv and argv[0] == "--version":
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    try:
        opts, operands = getopt.getopt(argv, "ainpqrstwxu:fGHJMQEBW:T1F:D:")
    except getopt.GetoptError as exc:
        sys.stderr.write(f"qstat: {exc.msg}\n{QSTAT_USAGE}qstat --version\n")
        return 2
    flags = {o for o, _ in opts}
    fmt, delim, users = "default", "|", None
    errflg = False
    for o, v in opts:
        if o == "-F":
            if v.lower() not in ("default", "dsv", "json"):
                errflg = True
            fmt = v.lower()
        elif o == "-D":
            delim = v
        elif o == "-u":
            users = set(v.split(","))
    for unsupported in ("-Q", "-B", "-q", "-T", "-p", "-W", "-E"):
        if unsupported in flags:
            sys.stderr.write(f"qstat: option {unsupported} is not supported by the PBS emulator\n")
            return 2
    full = "-f" in flags
    wide = "-w" in flags
    alt = bool(flags & {"-a", "-i", "-r", "-u", "-n", "-s", "-H", "-G", "-M"}) and not full
    if fmt != "default" and not full:
        sys.stderr.write("qstat: conflicting options.\n")
        errflg = True
    if wide and fmt != "default":
        sys.stderr.write("qstat: option w cannot be used with -F\n")
        errflg = True
    if errflg:
        sys.stderr.write(f"{QSTAT_USAGE}qstat --version\n")
        return 2
    history = bool(flags & {"-x", "-H"})
    states: set[str] | None = None
    if "-i" in flags:
        states = {EXITING, HELD, QUEUED}
    elif "-r" in flags:
        states = {RUNNING}
    elif "-H" in flags:
        states = {FINISHED}

    settings, store, _policy = load()
    now = time.time()
    jobs = store.read()["jobs"]
    out: list[str] = []
    json_jobs: dict[str, Any] = {}
    any_failed = 0
    header_pending = True     # qstat prints the header with the first operand's answer only
    groups: list[list[dict[str, Any]]] = []

    def visible(j: dict[str, Any]) -> bool:
        if "-J" in flags:          # only array jobs, and the emulator has none
            return False
        if j["state"] == FINISHED and not history:
            return False
        if states is not None and j["state"] not in states:
            return False
        return users is None or j["owner"] in users

    if not operands:
        groups.append([j for _, j in sorted(jobs.items(), key=lambda kv: int(kv[0])) if visible(j)])
    for operand in operands:
        if operand[:1].isdigit():
            try:
                seq, shown = parse_jobid(operand, settings)
            except ValueError:
                sys.stderr.write(f"qstat: illegally formed job identifier: {operand}\n")
                any_failed = 1
                groups.append([])
                continue
            job = jobs.get(seq) if seq is not None else None
            if job is None:
                sys.stderr.write(f"qstat: {PBSE_TEXT[PBSE_UNKJOBID]} {shown}\n")
                any_failed = rc(PBSE_UNKJOBID)
                groups.append([])
            elif job["state"] == FINISHED and not history:
                sys.stderr.write(f"qstat: {shown} {PBSE_TEXT[PBSE_HISTJOBID]}, "
                                 "use -x or -H to obtain historical job information\n")
                any_failed = rc(PBSE_HISTJOBID)
                groups.append([])
            else:
                groups.append([job] if (states is None or job["state"] in states) else [])
        else:
            queue = operand.split("@")[0]
            if queue and queue not in settings.queues:
                sys.stderr.write(f"qstat: {PBSE_TEXT[PBSE_UNKQUE]} {queue}\n")
                any_failed = rc(PBSE_UNKQUE)
                groups.append([])
                continue
            groups.append([j for _, j in sorted(jobs.items(), key=lambda kv: int(kv[0]))
                           if visible(j) and (not queue or j["queue"] == queue)])

    for i, group in enumerate(groups):
        with_header = i == 0
        for job in group:
            if fmt == "json":
                json_jobs[full_id(job, settings)] = job_json(job, settings, now)
            elif fmt == "dsv":
                out.append(format_dsv(job, settings, now, delim))
            elif full:
                out.append(format_full_text(job, settings, now, one_line=wide))
            elif alt:
                if with_header and header_pending:
                    out.append(alt_header(settings))
                    header_pending = False
                out.append(alt_row(job, settings, now, "-n" in flags, "-s" in flags, "-1" in flags))
            else:
                if with_header and header_pending:
                    out.append(WIDE_HEADER if wide else DEFAULT_HEADER)
                    header_pending = False
                out.append(default_row(job, settings, now, wide))
        if group:
            header_pending = False
    if fmt == "json":
        doc: dict[str, Any] = {"timestamp": int(now), "pbs_version": PBS_VERSION, "pbs_server": settings.server}
        if json_jobs:
            doc["Jobs"] = json_jobs
        out.append(cjson_print(doc) + "\n")
    sys.stdout.write("".join(out))
    return any_failed


# =========================================================================== qdel / qhold / qrls
def _job_operands(cmd: str, operands: list[str], settings: core.Settings):
    """Yield (operand, seq|None, shown id); bad ids are reported here."""
    for operand in operands:
        try:
            seq, shown = parse_jobid(operand, settings)
        except ValueError:
            sys.stderr.write(f"{cmd}: illegally formed job identifier: {operand}\n")
            yield operand, "bad", operand
            continue
        yield operand, seq, shown


def qdel(argv: list[str]) -> int:
    if argv and argv[0] == "--version":
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    try:
        opts, operands = getopt.getopt(argv, "W:x")
    except getopt.GetoptError:
        operands, opts = [], [("?", "")]
    force = any(o == "-W" and v == "force" for o, v in opts)
    delete_history = any(o == "-x" for o, _ in opts)
    if not operands or any(o == "?" or (o == "-W" and v != "force" and not v.startswith("suppress_email="))
                           for o, v in opts):
        sys.stderr.write("usage:\n\tqdel [-W force|suppress_email=X] [-x] job_identifier...\n\tqdel --version\n")
        return 2
    settings, store, _policy = load()
    any_failed = 0
    for operand, seq, shown in _job_operands("qdel", operands, settings):
        if seq == "bad":
            any_failed = 1
            continue
        now = time.time()
        message, code = None, 0
        with store.locked() as st:
            job = st["jobs"].get(seq) if seq is not None else None
            if job is None:
                message, code = PBSE_TEXT[PBSE_UNKJOBID], PBSE_UNKJOBID
            elif job["state"] == FINISHED:
                if delete_history:
                    del st["jobs"][seq]
                else:
                    message, code = PBSE_TEXT[PBSE_HISTJOBID], PBSE_HISTJOBID
            elif job["state"] in (QUEUED, HELD):
                job.update(state=FINISHED, end_time=now, mtime=now, term_reason="deleted", substate=91)
                job.pop("starting", None)
            else:
                core.write_kill_request(store, seq, {"force": force, "by": "qdel", "at": now})
                job.update(state=EXITING, mtime=now, term_reason=job.get("term_reason") or "deleted")
        if message:
            sys.stderr.write(f"qdel: {message} {operand}\n")
            any_failed = rc(code)
    return any_failed


def qhold_qrls(cmd: str, argv: list[str]) -> int:
    if argv and argv[0] == "--version":
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    try:
        opts, operands = getopt.getopt(argv, "h:")
    except getopt.GetoptError:
        opts, operands = [("?", "")], []
    if not operands or any(o == "?" for o, _ in opts):
        sys.stderr.write(f"usage: {cmd} [-h hold_list] job_identifier_list\n       {cmd} --version\n")
        return 2
    settings, store, _policy = load()
    any_failed = 0
    for operand, seq, shown in _job_operands(cmd, operands, settings):
        if seq == "bad":
            any_failed = 1
            continue
        err = None
        with store.locked() as st:
            job = st["jobs"].get(seq) if seq is not None else None
            if job is None:
                err = PBSE_UNKJOBID
            elif job["state"] == FINISHED:
                err = PBSE_HISTJOBID
            elif cmd == "qhold":
                if job["state"] == QUEUED and not job.get("starting"):
                    job.update(state=HELD, hold=True, mtime=time.time())
                elif job["state"] != HELD:
                    err = PBSE_BADSTATE
            else:
                if job["state"] == HELD:
                    now = time.time()
                    job.update(state=QUEUED, hold=False, mtime=now, eligible_at=now)
        if err:
            sys.stderr.write(f"{cmd}: {PBSE_TEXT[err]} {shown}\n")
            any_failed = rc(err)
    return any_failed


# =========================================================================== entry points
def main(cmd: str, argv: list[str]) -> int:
    if cmd == "qsub":
        return qsub(argv)
    if cmd == "qstat":
        return qstat(argv)
    if cmd == "qdel":
        return qdel(argv)
    if cmd in ("qhold", "qrls"):
        return qhold_qrls(cmd, argv)
    sys.stderr.write(f"{cmd}: not emulated\n")
    return 2


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "supervise":
    _settings = core.Settings.load(KIND, DEFAULTS)
    sys.exit(core.Supervisor(PbsPolicy(_settings), core.Store(_settings), sys.argv[2]).run())
if __name__ == "__main__" and sys.argv[1:] == ["mom"]:   # the execution daemon (root, on the compute node)
    sys.exit(core.run_exec_daemon(os.path.abspath(__file__)))
