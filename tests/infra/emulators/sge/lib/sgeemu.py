"""Emulated Grid Engine (Son of Grid Engine 8.1.9) commands: qsub, qstat, qacct, qdel.

What they print follows the real programs as quoted in ``reference/scheduler-outputs.yaml`` (entries
``sge-*``) and the SGE manual pages (qsub(1), qstat(1), qacct(1), qdel(1), queue_conf(5), sge_types(1)):

* ``qsub [-terse] script``: ``Your job N ("name") has been submitted`` or, with ``-terse``, ``N``;
  ``#$`` directives (``-C``/``SGE_DPREFIX`` change the prefix), the command line wins.
* ``qstat -xml [-u user|*]``: running jobs under ``<queue_info>``, pending ones under the nested
  ``<job_info>`` (schema URL and layout of SoGE 8.1, ``sge-08``); ``qstat`` alone: the plain table.
* ``qacct -j N``: the accounting record (``sge-12``) once the job has ended; ``error: job id N not found``.
* ``qdel N``: ``<user> has registered the job N for deletion`` (running), ``<user> has deleted job N``
  (pending), ``denied: job "N" does not exist`` (exit 1).

Run time limits (queue_conf(5), RESOURCE LIMITS): ``h_rt`` ends the job with SIGKILL, ``s_rt`` sends SIGUSR1
and SIGKILL the queue's ``notify`` time later; with ``qsub -notify`` a SIGUSR2 comes ``notify`` seconds before
every SIGKILL (h_rt, qdel) (qsub(1) ``-notify``). ``notify`` is the ``kill_delay`` setting (default 60 s, the
default of ``notify`` in queue_conf(5)). See docs/emulated-schedulers.md.
"""

from __future__ import annotations

import getopt
import os
import pwd
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING  # noqa: E402

KIND = "sge"
DEFAULTS: dict[str, Any] = {"queues": ["all.q"], "default_queue": "all.q", "server": "sgeemu", "kill_delay": 60.0}
#: parallel environments of the emulated cell (qconf -spl): name -> allocation rule
PES = {"smp": "$pe_slots", "mpi": "$fill_up"}
XSD = "http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd"
FAILED_AFTER_JOB = "100 : assumedly after job"   # qacct "failed" of a job ended by a signal (h_rt, qdel)


def load() -> tuple[core.Settings, core.Store, SgePolicy]:
    settings = core.Settings.load(KIND, DEFAULTS)
    store = core.Store(settings)
    policy = SgePolicy(settings)
    core.reap(policy, store)
    return settings, store, policy


def expand_path(value: str, job: dict[str, Any], default_name: str) -> str:
    """An -o/-e path with the pseudo variables of qsub(1) ($HOME $USER $JOB_ID $JOB_NAME $HOSTNAME $TASK_ID)."""
    if not value:
        return os.path.join(job["home"], default_name)
    path = value.split(":", 1)[1] if ":" in value and not value.startswith("/") else value
    for var, val in (("$HOME", job["home"]), ("$USER", job["owner"]), ("$JOB_ID", str(job["id"])),
                     ("$JOB_NAME", job["name"]), ("$HOSTNAME", core.short_hostname()), ("$TASK_ID", "undefined")):
        path = path.replace(var, val)
    path = os.path.join(job["cwd"], path)
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    return os.path.normpath(path)


# =========================================================================== the policy
class SgePolicy:
    """Grid Engine behaviour plugged into ``emucore.Supervisor``."""

    def __init__(self, settings: core.Settings) -> None:
        self.settings = settings

    def spawn_supervisor(self, store: core.Store, job_id: str) -> None:
        core.launch_supervisor(store, job_id, os.path.abspath(__file__))

    def on_wait(self, job: dict[str, Any], need: int, avail: int, slots: int) -> None:
        job["comment"] = f"cannot run: {need} slots requested, {avail} free of {slots}"

    def launch_spec(self, job: dict[str, Any], store: core.Store) -> dict[str, Any]:
        host = core.short_hostname()
        jdir = store.job_dir(job["id"])
        tmpdir = str(store.dir / "tmp" / f"{job['id']}.1.{job['queue']}")   # real: <tmpdir>/<job>.<task>.<queue>
        os.makedirs(tmpdir, exist_ok=True)
        env = {"HOME": job["home"], "USER": job["owner"], "LOGNAME": job["owner"], "SHELL": job["shell"],
               "PATH": "/usr/local/bin:/bin:/usr/bin"}
        if job.get("export_all"):
            env.update(job["submit_env"])
        env.update(job["variables"])
        hostfile = jdir / "pe_hostfile"
        hostfile.write_text(f"{host} {job['ncpus']} {job['queue']}@{host} UNDEFINED\n")
        env.update(JOB_ID=str(job["id"]), JOB_NAME=job["name"], JOB_SCRIPT=str(jdir / "script"),
                   NSLOTS=str(job["ncpus"]), NHOSTS="1", NQUEUES="1", QUEUE=job["queue"], SGE_TASK_ID="undefined",
                   ENVIRONMENT="BATCH",
                   REQUEST=job["name"], HOSTNAME=host, TMPDIR=tmpdir, TMP=tmpdir, SGE_CELL="default",
                   SGE_O_HOME=job["home"], SGE_O_LOGNAME=job["owner"], SGE_O_WORKDIR=job["cwd"],
                   SGE_O_PATH=job["submit_env"].get("PATH", ""), SGE_O_SHELL=job["submit_env"].get("SHELL", ""),
                   SGE_O_HOST=job["submit_host"], SGE_STDOUT_PATH=job["output_path"],
                   SGE_STDERR_PATH=job["error_path"], PILOT_EMU_STATE=str(store.dir))
        if job.get("pe"):
            env.update(PE=job["pe"], PE_HOSTFILE=str(hostfile))
        script = str(jdir / "script")
        argv = list(job["command"]) if job.get("command") else [job["shell"], script]
        stderr = job["output_path"] if job["join"] else job["error_path"]
        return {"argv": argv, "env": env, "cwd": job["workdir_req"] or job["home"], "fallback_cwd": "/",
                "stdout": job["output_path"], "stderr": stderr, "tmpdir": tmpdir}

    def on_start(self, job: dict[str, Any]) -> None:
        job["queue_instance"] = f"{job['queue']}@{core.short_hostname()}"

    def _kill(self, job: dict[str, Any], now: float) -> list[tuple[float, int]]:
        """SIGKILL; with -notify SIGUSR2 first and SIGKILL the queue's notify time later."""
        if job.get("notify"):
            return [(now, signal.SIGUSR2), (now + job["kill_delay"] / job["time_scale"], signal.SIGKILL)]
        return [(now, signal.SIGKILL)]

    def kill_sequence(self, job: dict[str, Any], request: dict[str, Any], now: float) -> list[tuple[float, int]]:
        return self._kill(job, now)

    def on_kill_request(self, job: dict[str, Any], request: dict[str, Any]) -> None:
        job.update(state=EXITING, term_reason=job.get("term_reason") or "deleted", mtime=time.time())

    def limit_events(self, job: dict[str, Any]) -> list[tuple[str, float]]:
        events = []
        if job.get("s_rt"):
            events.append(("s_rt", job["s_rt"]))
        if job.get("h_rt"):
            events.append(("h_rt", job["h_rt"]))
        return events

    def on_limit(self, job: dict[str, Any], name: str, now: float, elapsed: float):
        if name == "s_rt":   # warned with SIGUSR1, killed the notify time later
            return [(now, signal.SIGUSR1), (now + job["kill_delay"] / job["time_scale"], signal.SIGKILL)], \
                {"term_reason": "s_rt", "mtime": now}
        return self._kill(job, now), {"term_reason": "h_rt", "mtime": now}

    def on_finish(self, job: dict[str, Any]) -> None:
        if job.get("term_signal"):
            job["exit_status"] = 128 + job["term_signal"]
        else:
            job["exit_status"] = job.get("exit_code") if job.get("exit_code") is not None else 0
        ran = bool(job.get("stime")) and not job.get("lost")
        if job.get("lost"):
            job["failed"] = "1 : assumedly before job"
        elif job.get("term_signal"):
            job["failed"] = FAILED_AFTER_JOB
        else:
            job["failed"] = "0"
        job["accounted"] = ran or bool(job.get("lost"))

    def after_finish(self, job: dict[str, Any], store: core.Store) -> None:
        core.rmtree(job.get("tmpdir"))


# =========================================================================== qsub
QSUB_OPTS = "a:A:b:c:C:e:hj:l:m:M:N:o:p:P:q:r:S:v:Vw:"
QSUB_LONG = ["terse", "notify", "cwd", "wd=", "pe=", "now="]


class QsubError(Exception):
    pass


def _args(argv: list[str]) -> list[str]:
    """SGE options are single-dash words (-terse, -pe smp 4): make them getopt long options."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-terse", "-notify", "-cwd"):
            out.append("-" + a)
        elif a in ("-wd", "-now"):
            out.extend(["-" + a, argv[i + 1] if i + 1 < len(argv) else ""])
            i += 1
        elif a == "-pe":
            out.extend(["--pe", " ".join(argv[i + 1:i + 3])])
            i += 2
        elif len(a) == 2 and a[0] == "-" and a[1] + ":" in QSUB_OPTS:   # -N name: the value is not the script
            out.extend(argv[i:i + 2])
            i += 1
        else:
            out.append(a)
            if not a.startswith("-"):
                out.extend(argv[i + 1:])
                break
        i += 1
    return out


def _collect(words: list[str]) -> tuple[dict[str, Any], list[str]]:
    try:
        opts, rest = getopt.getopt(_args(words), QSUB_OPTS, QSUB_LONG)
    except getopt.GetoptError as exc:
        raise QsubError(f"qsub: ERROR! invalid option argument \"{exc.opt}\"\nUsage: qsub [options] [script]") \
            from None
    out: dict[str, Any] = {"-l": {}, "-v": []}
    for opt, val in opts:
        key = opt.lstrip("-")
        if opt == "-l":
            for item in val.split(","):
                k, _, v = item.partition("=")
                out["-l"][k.strip()] = v.strip()
        elif opt == "-v":
            out["-v"].extend(x for x in val.split(",") if x)
        elif opt in ("-h", "-V", "--terse", "--notify", "--cwd"):
            out[key] = True
        else:
            out[key] = val
    return out, rest


def _directives(script: str, prefix: str) -> list[str]:
    """Words of the ``#$`` lines before the first line that is not a comment."""
    words: list[str] = []
    for n, line in enumerate(script.splitlines()):
        s = line.strip()
        if (n == 0 and s.startswith("#!")) or not s:
            continue
        if not s.startswith("#"):
            break
        if line.startswith(prefix) and (len(line) == len(prefix) or line[len(prefix)].isspace()):
            words.extend(shlex.split(line[len(prefix):], comments=True))
    return words


def parse_time(text: str) -> float | None:
    """sge_types(1) TIME_SPECIFIER: seconds, or h:m:s with empty fields meaning 0 (``1::1``)."""
    t = text.strip()
    if t.isdigit():
        return float(t)
    parts = t.split(":")
    if len(parts) != 3 or not all(p == "" or p.isdigit() for p in parts):
        return None
    h, m, s = (int(p or 0) for p in parts)
    return float(h * 3600 + m * 60 + s)


def qsub(argv: list[str]) -> int:
    settings, store, policy = load()
    try:
        cmdline, rest = _collect(argv)
        binary = cmdline.get("b", "n") == "y"
        if rest and not binary:
            path = Path(rest[0])
            try:
                script_text = path.read_text()
            except OSError:
                raise QsubError(f"Unable to read script file because of error: error opening {rest[0]}: "
                                "No such file or directory") from None
            name, command = path.name, None
        elif rest:
            script_text, name, command = "", Path(rest[0]).name, rest
        else:
            script_text, name, command = sys.stdin.read(), "STDIN", None
        merged: dict[str, Any] = {"-l": {}, "-v": []}
        prefix = cmdline.get("C") or os.environ.get("SGE_DPREFIX") or "#$"
        if script_text:
            d, _ = _collect(_directives(script_text, prefix))
            merged.update(d)
        for k, v in cmdline.items():
            if k == "-l":
                merged["-l"].update(v)
            elif k == "-v":
                merged["-v"].extend(v)
            else:
                merged[k] = v
        job = _new_job(merged, settings, name, script_text, command, argv)
    except QsubError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1 if not str(exc).startswith("qsub: ERROR!") else 2
    jid = _store(store, settings, job)
    policy.spawn_supervisor(store, jid)
    print(jid if merged.get("terse") else f'Your job {jid} ("{job["name"]}") has been submitted')
    return 0


def _new_job(m: dict[str, Any], settings: core.Settings, default_name: str, script_text: str,
             command: list[str] | None, argv: list[str]) -> dict[str, Any]:
    """The job record, refused the way qsub/qmaster refuse it."""
    name = m.get("N", default_name)
    if not name or name[0].isdigit() or any(c in name for c in "\n\t\r/:@\\*?"):
        raise QsubError(f'Unable to run job: denied: "{name}" is not a valid object name (cannot start with a '
                        'digit).\nExiting.' if name[:1].isdigit() else
                        f'Unable to run job: denied: "{name}" is not a valid object name.\nExiting.')
    queue = m.get("q", settings.default_queue).split("@")[0]
    if queue not in settings.queues:
        raise QsubError(f'Unable to run job: Job was rejected because job requests unknown queue "{queue}".\n'
                        "Exiting.")
    limits: dict[str, float | None] = {}
    for res in ("h_rt", "s_rt"):
        if res in m["-l"]:
            limits[res] = parse_time(m["-l"][res])
            if limits[res] is None:
                raise QsubError(f'Unable to run job: unable to parse time value "{m["-l"][res]}" for '
                                f'"{res}".\nExiting.')
    slots, pe = 1, None
    if m.get("pe"):
        words = m["pe"].split()
        if len(words) != 2:
            raise QsubError("qsub: ERROR! -pe option must have range as 2nd argument")
        pe, count = words
        if pe not in PES:
            raise QsubError(f'Unable to run job: job rejected: the requested parallel environment "{pe}" does '
                            "not exist.\nExiting.")
        if not count.isdigit() or int(count) < 1:
            raise QsubError(f"qsub: ERROR! invalid range \"{count}\" for -pe (only a number is emulated)")
        slots = int(count)
    pw = pwd.getpwuid(os.getuid())
    cwd = os.getcwd()
    variables = {}
    for item in m["-v"]:
        k, eq, v = item.partition("=")
        variables[k] = v if eq else os.environ.get(k, "")
    return {"name": name, "queue": queue, "ncpus": slots, "pe": pe, "h_rt": limits.get("h_rt"),
            "s_rt": limits.get("s_rt"), "resources": dict(m["-l"]), "notify": bool(m.get("notify")),
            "join": m.get("j", "n") in ("y", "yes"), "hold": bool(m.get("h")), "account": m.get("A", "sge"),
            "project": m.get("P", "NONE"), "rerunable": m.get("r", "n") in ("y", "yes"),
            "shell": m.get("S", "/bin/sh"), "export_all": bool(m.get("V")), "variables": variables,
            "owner": pw.pw_name, "home": pw.pw_dir, "cwd": cwd, "submit_env": dict(os.environ),
            "workdir_req": cwd if m.get("cwd") else m.get("wd"), "submit_host": core.short_hostname(),
            "o": m.get("o", ""), "e": m.get("e", ""), "script_text": script_text, "command": command,
            "submit_args": " ".join(argv)}


def _store(store: core.Store, settings: core.Settings, job: dict[str, Any]) -> str:
    now = time.time()
    with store.locked() as st:
        seq = st["next_id"]
        st["next_id"] = seq + 1
        jid = str(seq)
        jdir = store.job_dir(jid)
        jdir.mkdir(parents=True, exist_ok=True)
        (jdir / "script").write_text(job["script_text"])
        (jdir / "script").chmod(0o700)
        job.update(id=seq, kind=KIND, state=HELD if job["hold"] else QUEUED, ctime=now, qtime=now, mtime=now,
                   eligible_at=now + settings.start_delay, time_scale=settings.time_scale,
                   kill_delay=settings.kill_delay, spawned_at=now, sup_pid=None)
        job["output_path"] = expand_path(job.pop("o"), job, f"{job['name']}.o{seq}")
        job["error_path"] = expand_path(job.pop("e"), job, f"{job['name']}.e{seq}")
        st["jobs"][jid] = job
    return jid


# =========================================================================== qstat
def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def state_code(job: dict[str, Any]) -> str:
    if job["state"] == HELD:
        return "hqw"
    if job["state"] == QUEUED:
        return "qw"
    if job["state"] == EXITING and job.get("term_reason") == "deleted":
        return "dr"
    return "r"


def qstat_xml(jobs: list[dict[str, Any]]) -> str:
    running = [j for j in jobs if j["state"] in (RUNNING, EXITING)]
    pending = [j for j in jobs if j["state"] in (QUEUED, HELD)]
    out = ["<?xml version='1.0'?>", f'<job_info  xmlns:xsd="{XSD}">', "  <queue_info>"]
    for j in running:
        out += _xml_job(j, "running")
    out += ["  </queue_info>", "  <job_info>"]
    for j in pending:
        out += _xml_job(j, "pending")
    out += ["  </job_info>", "</job_info>"]
    return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_job(j: dict[str, Any], kind: str) -> list[str]:
    lines = [f'    <job_list state="{kind}">', f"      <JB_job_number>{j['id']}</JB_job_number>",
             f"      <JAT_prio>{0.55500 if kind == 'running' else 0.00000:.5f}</JAT_prio>",
             f"      <JB_name>{_esc(j['name'])}</JB_name>", f"      <JB_owner>{j['owner']}</JB_owner>",
             f"      <state>{state_code(j)}</state>"]
    if kind == "running":
        lines.append(f"      <JAT_start_time>{_iso(j['stime'])}</JAT_start_time>")
        lines.append(f"      <queue_name>{j.get('queue_instance', j['queue'])}</queue_name>")
    else:
        lines.append(f"      <JB_submission_time>{_iso(j['ctime'])}</JB_submission_time>")
        lines.append("      <queue_name></queue_name>")
    lines += [f"      <slots>{j['ncpus']}</slots>", "    </job_list>"]
    return lines


QSTAT_HEADER = ("job-ID  prior   name       user         state submit/start at     queue                          "
                "slots ja-task-ID \n" + "-" * 113 + "\n")


def qstat_table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return ""
    rows = []
    for j in jobs:
        t = j["stime"] if j["state"] in (RUNNING, EXITING) else j["ctime"]
        queue = j.get("queue_instance", "") if j["state"] in (RUNNING, EXITING) else ""
        rows.append(f"{j['id']:>7} {0.555 if queue else 0.0:.5f} {j['name'][:10]:<10} {j['owner'][:12]:<12} "
                    f"{state_code(j):<5} {time.strftime('%m/%d/%Y %H:%M:%S', time.localtime(t))} "
                    f"{queue[:30]:<30} {j['ncpus']:>5}        \n")
    return QSTAT_HEADER + "".join(rows)


def qstat(argv: list[str]) -> int:
    try:
        opts, rest = getopt.getopt(["--xml" if a == "-xml" else a for a in argv], "u:", ["xml"])
    except getopt.GetoptError as exc:
        sys.stderr.write(f"error: ERROR! invalid option argument \"{exc.opt}\"\n")
        return 1
    if rest:
        sys.stderr.write(f"error: ERROR! invalid option argument \"{rest[0]}\" (the emulator knows -u and -xml)\n")
        return 1
    users = {core.current_user()}
    for o, v in opts:
        if o == "-u":
            users = set(v.split(","))
    _settings, store, _policy = load()
    jobs = [j for _, j in sorted(store.read()["jobs"].items(), key=lambda kv: int(kv[0]))
            if j["state"] != FINISHED and ("*" in users or j["owner"] in users)]
    sys.stdout.write(qstat_xml(jobs) if any(o == "--xml" for o, _ in opts) else qstat_table(jobs))
    return 0


# =========================================================================== qacct
def _ctime(t: float) -> str:
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(t))


def qacct_record(j: dict[str, Any]) -> str:
    wall = int(round(j["end_time"] - j.get("stime", j["end_time"])))
    fields = [("qname", j["queue"]), ("hostname", j.get("exec_host", "")), ("group", _group(j["owner"])),
              ("owner", j["owner"]), ("project", j["project"]), ("department", "defaultdepartment"),
              ("jobname", j["name"]), ("jobnumber", str(j["id"])), ("taskid", "undefined"),
              ("account", j["account"]), ("priority", "0"), ("qsub_time", _ctime(j["ctime"])),
              ("start_time", _ctime(j.get("stime", j["end_time"]))), ("end_time", _ctime(j["end_time"])),
              ("granted_pe", j.get("pe") or "NONE"), ("slots", str(j["ncpus"])), ("failed", j["failed"]),
              ("exit_status", str(j["exit_status"])), ("ru_wallclock", str(wall)),
              ("ru_utime", f"{j.get('cpu_time', 0.0):.3f}"), ("ru_stime", "0.000"),
              ("ru_maxrss", str(j.get("max_rss_kb", 0))), ("cpu", f"{j.get('cpu_time', 0.0):.3f}"),
              ("mem", "0.000"), ("io", "0.000"), ("iow", "0.000"), ("maxvmem", "0.000"), ("arid", "undefined")]
    return "=" * 62 + "\n" + "".join(f"{k:<13}{v}\n" for k, v in fields)


def _group(user: str) -> str:
    import grp
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def qacct(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "-j":
        sys.stderr.write("the emulated qacct knows only: qacct -j JOB_ID\n")
        return 1
    _settings, store, _policy = load()
    jobs = store.read()["jobs"]
    found = [j for j in jobs.values() if j["state"] == FINISHED and j.get("accounted")
             and (str(j["id"]) == argv[1] or j["name"] == argv[1])]
    if not found:
        what = "job id" if argv[1].isdigit() else "job name"
        sys.stderr.write(f"error: {what} {argv[1]} not found\n")
        return 1
    sys.stdout.write("".join(qacct_record(j) for j in found))
    return 0


# =========================================================================== qdel
def qdel(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: qdel [options] job_task_list\n")
        return 1
    _settings, store, _policy = load()
    me = core.current_user()
    failed = 0
    for jid in argv:
        now = time.time()
        with store.locked() as st:
            job = st["jobs"].get(jid) if jid.isdigit() else None
            if job is None or job["state"] == FINISHED:
                msg, out = f'denied: job "{jid}" does not exist', sys.stderr
                failed = 1
            elif job["owner"] != me:
                msg, out = f'{me} - you do not have the necessary privileges to delete the job "{jid}"', sys.stderr
                failed = 1
            elif job["state"] in (QUEUED, HELD):
                job.update(state=FINISHED, end_time=now, mtime=now, term_reason="deleted", accounted=False)
                job.pop("starting", None)
                msg, out = f"{me} has deleted job {jid}", sys.stdout
            elif job.get("term_reason") == "deleted":
                msg, out = f"job {jid} is already in deletion", sys.stdout
            else:
                core.write_kill_request(store, jid, {"by": "qdel", "at": now})
                job.update(state=EXITING, mtime=now, term_reason="deleted")
                msg, out = f"{me} has registered the job {jid} for deletion", sys.stdout
        out.write(msg + "\n")
    return failed


# =========================================================================== entry points
def main(cmd: str, argv: list[str]) -> int:
    commands = {"qsub": qsub, "qstat": qstat, "qacct": qacct, "qdel": qdel}
    if cmd not in commands:
        sys.stderr.write(f"{cmd}: not emulated\n")
        return 2
    return commands[cmd](argv)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "supervise":
    _settings = core.Settings.load(KIND, DEFAULTS)
    sys.exit(core.Supervisor(SgePolicy(_settings), core.Store(_settings), sys.argv[2]).run())
if __name__ == "__main__" and sys.argv[1:] == ["mom"]:   # the execution daemon (root, on the compute node)
    sys.exit(core.run_exec_daemon(os.path.abspath(__file__)))
