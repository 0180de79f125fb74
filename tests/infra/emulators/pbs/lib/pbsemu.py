"""Emulated PBS Pro (OpenPBS 23.06) commands: qsub, qstat, qdel, qhold, qrls.

Output formats follow OpenPBS ``src/cmds/qstat.c`` (default table, ``-a`` alternate table,
``-f`` text folded by ``prt_attr`` at 78 columns, ``-F json`` printed the way cJSON prints it,
``-F dsv``) and the captures in ``reference/scheduler-outputs.yaml`` (entries ``pbspro-*``).
Exit codes are the PBS error number modulo 256, as the real commands ``exit(pbs_errno)``:
15001 Unknown Job Id -> 153, 15139 Job has finished -> 35, 15018 Unknown queue -> 170.
See docs/emulated-schedulers.md for what is emulated and what is not.

This module holds the commands (option parsing, the job table, the supervisor's PBS policy) and the
entry point of the supervisor and the execution daemon (``pbsemu.py supervise <id>`` / ``pbsemu.py mom``);
what qstat prints is built in pbsformat.py, ``-l`` resources are resolved in pbsresources.py.
"""

from __future__ import annotations

import getopt
import os
import pwd
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING
from pbsformat import (
    DEFAULT_HEADER,
    WIDE_HEADER,
    alt_header,
    alt_row,
    cjson_print,
    default_row,
    format_dsv,
    format_full_text,
    full_id,
    job_json,
)
from pbsresources import resource_list

PBS_VERSION = "23.06.06"
KIND = "pbs"
DEFAULTS: dict[str, Any] = {"queues": ["workq"], "default_queue": "workq", "server": "pbsemu"}

# PBS error numbers (src/include/pbs_error.h) and their texts (pbse_to_txt)
PBSE_UNKJOBID, PBSE_BADATVAL, PBSE_BADSTATE, PBSE_UNKQUE, PBSE_HISTJOBID = 15001, 15014, 15016, 15018, 15139
PBSE_TEXT = {PBSE_UNKJOBID: "Unknown Job Id", PBSE_BADATVAL: "Illegal attribute or resource value",
             PBSE_BADSTATE: "Request invalid for state of job", PBSE_UNKQUE: "Unknown queue",
             PBSE_HISTJOBID: "Job has finished"}

JOB_EXEC_KILL_WALLTIME = -29   # Exit_status of a job killed for exceeding its walltime
JOB_EXEC_OVERLIMIT_WT = -11    # Torque's exit_status for the same (Torque 6.1 "Job exit status")
#: PILOT_EMU_FLAVOR=torque (set by the sshd of the emulated Torque cluster) makes the commands behave like Torque
#: 6.1: `qstat` lists finished jobs as state C while they are kept (keep_completed = the history setting), with
#: Torque's attribute names (exit_status, start_time, comp_time), and wall time ends with exit_status -11.
FLAVOR = os.environ.get("PILOT_EMU_FLAVOR", "pbspro")
JOB_EXEC_FAIL1 = -1            # used by the emulator when a job's supervisor vanished (no real analogue)


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
            job["exit_status"] = JOB_EXEC_OVERLIMIT_WT if job.get("flavor") == "torque" else JOB_EXEC_KILL_WALLTIME
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
                raise QsubError(f"qsub: directive error: {line}", 2) from None
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


@dataclass
class Submission:
    """One qsub call: where the job comes from and its options (the command line merged over the directives)."""

    argv: list[str]
    cwd: str
    command: list[str] | None      # `qsub -- command args...`
    script_text: str
    script_name: str               # the default job name: the script's file name, or STDIN
    merged: dict[str, Any] = field(default_factory=dict)


def _qsub(argv: list[str], settings: core.Settings, store: core.Store, policy: PbsPolicy) -> int:
    sub = _parse_submission(argv)
    fields = _checked_fields(sub, settings)
    fields.update(_environment(sub, fields["queue"]))
    seq, jid = _store_job(store, settings, sub, fields)
    policy.spawn_supervisor(store, jid)
    if not sub.merged.get("-z"):
        print(f"{seq}.{settings.server}")
        sys.stdout.flush()
    if str(sub.merged["-W"].get("block", "")).lower() in ("true", "t", "1", "y"):
        return _block(store, jid)
    return 0


def _parse_submission(argv: list[str]) -> Submission:
    """Options, the job's script (or command) and its directives; the command line wins over the script."""
    try:
        opts, rest = getopt.getopt(argv, QSUB_OPTS)
    except getopt.GetoptError as exc:
        raise QsubError(f"qsub: {exc.msg}\n{QSUB_USAGE}", 2) from None
    cmdline = _collect(opts)
    sub = _job_source(argv, rest, os.getcwd())
    prefix = cmdline.get("-C") or os.environ.get("PBS_DPREFIX") or "#PBS"
    merged: dict[str, Any] = {"-l": {}, "-v": [], "-W": {}}
    if sub.script_text:
        try:
            dopts, _ = getopt.getopt(_directives(sub.script_text, prefix), QSUB_OPTS)
        except getopt.GetoptError as exc:
            raise QsubError(f"qsub: directive error: {exc.msg}", 2) from None
        merged.update({k: v for k, v in _collect(dopts).items() if k not in ("-l", "-v", "-W")})
        d = _collect(dopts)
        merged["-l"].update(d["-l"])
        merged["-v"].extend(d["-v"])
        merged["-W"].update(d["-W"])
    for k, v in cmdline.items():   # the command line wins over the script
        if k == "-l":
            merged["-l"].update(v)
        elif k == "-v":
            merged["-v"].extend(v)
        elif k == "-W":
            merged["-W"].update(v)
        else:
            merged[k] = v
    sub.merged = merged
    return sub


def _job_source(argv: list[str], rest: list[str], cwd: str) -> Submission:
    """`-- command args`, a script file, or the script on stdin."""
    command: list[str] | None = None
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
            raise QsubError(f"qsub: script file:: {exc.strerror}", 1) from None
        script_name = path.name
    else:
        script_text, script_name = sys.stdin.read(), "STDIN"
        if not script_text.strip():
            raise QsubError("qsub: script file is empty", 1)
    return Submission(argv=argv, cwd=cwd, command=command, script_text=script_text, script_name=script_name)


def _checked_fields(sub: Submission, settings: core.Settings) -> dict[str, Any]:
    """The options the server checks (name, queue, join, rerun, resources), refused as qsub refuses them."""
    merged = sub.merged
    for opt, what in (("-J", "job arrays"), ("-I", "interactive jobs"), ("-a", "deferred execution (-a)")):
        if opt in merged:
            raise QsubError(f"qsub: {what} are not supported by the PBS emulator", 2)
    join = merged.get("-j", "n")
    if join not in ("oe", "eo", "n"):
        raise QsubError(f"qsub: illegal -j value\n{QSUB_USAGE}", 2)
    rerun = merged.get("-r", "y")
    if rerun not in ("y", "n"):
        raise QsubError(f"qsub: illegal -r value\n{QSUB_USAGE}", 2)
    name = merged.get("-N", sub.script_name)
    if not name or any(ch.isspace() for ch in name) or len(name) > 236:
        raise QsubError(f"qsub: illegal -N value\n{QSUB_USAGE}", 2)

    queue = merged.get("-q", settings.default_queue).split("@")[0] or settings.default_queue
    if queue not in settings.queues:
        raise QsubError(f"qsub: {PBSE_TEXT[PBSE_UNKQUE]}", rc(PBSE_UNKQUE))
    resolved = resource_list(merged["-l"])
    if isinstance(resolved, str):
        raise QsubError(f"qsub: {PBSE_TEXT[PBSE_BADATVAL]} Resource_List.{resolved}", rc(PBSE_BADATVAL))
    resources, chunks = resolved
    walltime = core.parse_hms(resources["walltime"]) if "walltime" in resources else None
    return {"name": name, "queue": queue, "join": join, "rerunable": rerun == "y", "resources": resources,
            "chunks": chunks, "ncpus": int(resources["ncpus"]), "walltime": walltime}


def _environment(sub: Submission, queue: str) -> dict[str, Any]:
    """The submitter and the job's Variable_List: PBS_O_* of the submission, then -v, then queue and host."""
    submit_env = dict(os.environ)
    variables: list[list[str]] = []
    for item in sub.merged["-v"]:
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
              ["PBS_O_SHELL", submit_env.get("SHELL", login_shell)], ["PBS_O_WORKDIR", sub.cwd],
              ["PBS_O_SYSTEM", os.uname().sysname]]
    variable_list = o_vars + variables + [["PBS_O_QUEUE", queue], ["PBS_O_HOST", host]]
    return {"owner": user, "home": home, "login_shell": login_shell, "submit_host": host,
            "variable_list": variable_list, "submit_env": submit_env}


def _store_job(store: core.Store, settings: core.Settings, sub: Submission, fields: dict[str, Any]) -> tuple[int, str]:
    """Give the job the next id, keep a copy of its script and add its record to the job table."""
    merged = sub.merged
    hold = bool(merged.get("-h"))
    now = time.time()
    with store.locked() as st:
        seq = st["next_id"]
        st["next_id"] = seq + 1
        jid = str(seq)
        jdir = store.job_dir(jid)
        jdir.mkdir(parents=True, exist_ok=True)
        script_path = jdir / "script"
        script_path.write_text(sub.script_text or "")
        script_path.chmod(0o700)
        name = fields["name"]
        st["jobs"][jid] = {
            "id": seq, "kind": KIND, "flavor": FLAVOR, **fields, "state": HELD if hold else QUEUED, "hold": hold,
            "ctime": now, "qtime": now, "mtime": now, "etime": now, "eligible_at": now + settings.start_delay,
            "time_scale": settings.time_scale, "kill_delay": settings.kill_delay,
            "script_text": sub.script_text, "command": sub.command, "shell": merged.get("-S"), "cwd": sub.cwd,
            "output_path": _output_path(merged.get("-o"), sub.cwd, f"{name}.o{seq}"),
            "error_path": _output_path(merged.get("-e"), sub.cwd, f"{name}.e{seq}"),
            "export_all": bool(merged.get("-V")),
            "account": merged.get("-A"), "project": merged.get("-P", "_pbs_project_default"),
            "priority": merged.get("-p", "0"), "other": merged["-W"],
            "submit_args": " ".join(sub.argv), "spawned_at": now, "sup_pid": None,
        }
    return seq, jid


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


# =========================================================================== qstat
QSTAT_USAGE = ("usage: \n"   # sic: qstat.c prints a blank after "usage:"
               """qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]
qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G|-M] [-1] [-w]
\t[ job_identifier... | destination... ]
qstat -Q [-f] [-F format] [-D delim] [ destination... ]
qstat -q [-G|-M] [ destination... ]
qstat -B [-f] [-F format] [-D delim] [ server_name... ]
qstat --version
""")


@dataclass
class QstatRequest:
    """What a qstat command line asks for: which jobs (operands and filters) and in which layout."""

    flags: set[str]
    operands: list[str]
    fmt: str = "default"             # -F: default, dsv or json
    delim: str = "|"                 # -D
    users: set[str] | None = None    # -u
    states: set[str] | None = None   # -i / -r / -H
    full: bool = False               # -f
    wide: bool = False               # -w
    alt: bool = False                # the alternate table (-a and friends)
    history: bool = False            # -x / -H: finished jobs too


def qstat(argv: list[str]) -> int:
    if argv and argv[0] == "--version":
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    req = _qstat_request(argv)
    if isinstance(req, int):
        return req
    settings, store, _policy = load()
    now = time.time()
    groups, any_failed = _qstat_groups(req, store.read()["jobs"], settings)
    sys.stdout.write(_qstat_output(req, groups, settings, now))
    return any_failed


def _qstat_request(argv: list[str]) -> QstatRequest | int:
    """Parse and check the options like qstat.c; an int is the exit code after the usage was printed."""
    try:
        opts, operands = getopt.getopt(argv, "ainpqrstwxu:fGHJMQEBW:T1F:D:")
    except getopt.GetoptError as exc:
        sys.stderr.write(f"qstat: {exc.msg}\n{QSTAT_USAGE}qstat --version\n")
        return 2
    req = QstatRequest(flags={o for o, _ in opts}, operands=operands)
    flags = req.flags
    errflg = False
    for o, v in opts:
        if o == "-F":
            if v.lower() not in ("default", "dsv", "json"):
                errflg = True
            req.fmt = v.lower()
        elif o == "-D":
            req.delim = v
        elif o == "-u":
            req.users = set(v.split(","))
    for unsupported in ("-Q", "-B", "-q", "-T", "-p", "-W", "-E"):
        if unsupported in flags:
            sys.stderr.write(f"qstat: option {unsupported} is not supported by the PBS emulator\n")
            return 2
    req.full = "-f" in flags
    req.wide = "-w" in flags
    req.alt = bool(flags & {"-a", "-i", "-r", "-u", "-n", "-s", "-H", "-G", "-M"}) and not req.full
    if req.fmt != "default" and not req.full:
        sys.stderr.write("qstat: conflicting options.\n")
        errflg = True
    if req.wide and req.fmt != "default":
        sys.stderr.write("qstat: option w cannot be used with -F\n")
        errflg = True
    if errflg:
        sys.stderr.write(f"{QSTAT_USAGE}qstat --version\n")
        return 2
    req.history = bool(flags & {"-x", "-H"})
    if "-i" in flags:
        req.states = {EXITING, HELD, QUEUED}
    elif "-r" in flags:
        req.states = {RUNNING}
    elif "-H" in flags:
        req.states = {FINISHED}
    return req


def _qstat_visible(req: QstatRequest, j: dict[str, Any]) -> bool:
    """Whether a job listed by queue (or with no operand) passes the filters."""
    if "-J" in req.flags:          # only array jobs, and the emulator has none
        return False
    if j["state"] == FINISHED and not req.history and FLAVOR != "torque":
        return False
    if req.states is not None and j["state"] not in req.states:
        return False
    return req.users is None or j["owner"] in req.users


def _qstat_groups(req: QstatRequest, jobs: dict[str, dict[str, Any]],
                  settings: core.Settings) -> tuple[list[list[dict[str, Any]]], int]:
    """The jobs to show, one group per operand (errors reported here), and the exit code so far."""
    by_id = [j for _, j in sorted(jobs.items(), key=lambda kv: int(kv[0]))]
    if not req.operands:
        return [[j for j in by_id if _qstat_visible(req, j)]], 0
    groups: list[list[dict[str, Any]]] = []
    any_failed = 0
    for operand in req.operands:
        if operand[:1].isdigit():
            group, failed = _qstat_job_operand(req, operand, jobs, settings)
        else:
            queue = operand.split("@")[0]
            if queue and queue not in settings.queues:
                sys.stderr.write(f"qstat: {PBSE_TEXT[PBSE_UNKQUE]} {queue}\n")
                group, failed = [], rc(PBSE_UNKQUE)
            else:
                group, failed = [j for j in by_id if _qstat_visible(req, j) and (not queue or j["queue"] == queue)], 0
        groups.append(group)
        any_failed = failed or any_failed
    return groups, any_failed


def _qstat_job_operand(req: QstatRequest, operand: str, jobs: dict[str, dict[str, Any]],
                       settings: core.Settings) -> tuple[list[dict[str, Any]], int]:
    """One job id operand -> ([the job] or [], exit code: 0 or the error it reported)."""
    try:
        seq, shown = parse_jobid(operand, settings)
    except ValueError:
        sys.stderr.write(f"qstat: illegally formed job identifier: {operand}\n")
        return [], 1
    job = jobs.get(seq) if seq is not None else None
    if job is None:
        sys.stderr.write(f"qstat: {PBSE_TEXT[PBSE_UNKJOBID]} {shown}\n")
        return [], rc(PBSE_UNKJOBID)
    if job["state"] == FINISHED and not req.history and FLAVOR != "torque":
        sys.stderr.write(f"qstat: {shown} {PBSE_TEXT[PBSE_HISTJOBID]}, "
                         "use -x or -H to obtain historical job information\n")
        return [], rc(PBSE_HISTJOBID)
    return ([job] if (req.states is None or job["state"] in req.states) else []), 0


def _qstat_output(req: QstatRequest, groups: list[list[dict[str, Any]]], settings: core.Settings,
                  now: float) -> str:
    """Everything qstat prints on stdout, in the requested layout."""
    out: list[str] = []
    json_jobs: dict[str, Any] = {}
    header_pending = True     # qstat prints the header with the first operand's answer only
    for i, group in enumerate(groups):
        with_header = i == 0
        for job in group:
            if req.fmt == "json":
                json_jobs[full_id(job, settings)] = job_json(job, settings, now)
            elif req.fmt == "dsv":
                out.append(format_dsv(job, settings, now, req.delim))
            elif req.full:
                out.append(format_full_text(job, settings, now, one_line=req.wide))
            elif req.alt:
                if with_header and header_pending:
                    out.append(alt_header(settings))
                    header_pending = False
                out.append(alt_row(job, settings, now, "-n" in req.flags, "-s" in req.flags, "-1" in req.flags))
            else:
                if with_header and header_pending:
                    out.append(WIDE_HEADER if req.wide else DEFAULT_HEADER)
                    header_pending = False
                out.append(default_row(job, settings, now, req.wide))
        if group:
            header_pending = False
    if req.fmt == "json":
        doc: dict[str, Any] = {"timestamp": int(now), "pbs_version": PBS_VERSION, "pbs_server": settings.server}
        if json_jobs:
            doc["Jobs"] = json_jobs
        out.append(cjson_print(doc) + "\n")
    return "".join(out)


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
    for operand, seq, _shown in _job_operands("qdel", operands, settings):
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
    for _operand, seq, shown in _job_operands(cmd, operands, settings):
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
