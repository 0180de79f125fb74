"""Emulated IBM Spectrum LSF 10.1 commands: bsub, bjobs, bkill, bresume.

Texts and layouts follow the LSF 10.1 command reference and the captures in
``reference/scheduler-outputs.yaml`` (entries ``lsf-*``); where both are silent the behaviour of
the openlava sources (the open LSF 4 code base: ``lsbatch/cmd/bjobs.c``, ``cmd.sig.c``,
``lsb.err.c``) is used.  Every error exits 255 (LSF's ``exit(-1)``).
See docs/emulated-schedulers.md for what is emulated and what is not.

This module holds the commands (option parsing, the job table, the supervisor's LSF policy) and the
entry point of the supervisor and the execution daemon (``lsfemu.py supervise <id>`` / ``lsfemu.py mom``);
what bjobs prints (and the report appended to the -o file) is built in lsfformat.py.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING
from lsfformat import BJOBS_HEADER, default_row, field_value, format_cell, job_report, lsf_json, parse_format, stat

KIND = "lsf"
DEFAULTS: dict[str, Any] = {"queues": ["normal"], "default_queue": "normal", "server": "emulsf"}
FAIL = 255


def load() -> tuple[core.Settings, core.Store, LsfPolicy]:
    settings = core.Settings.load(KIND, DEFAULTS)
    store = core.Store(settings)
    policy = LsfPolicy(settings)
    core.reap(policy, store)
    return settings, store, policy


def parse_minutes(text: str) -> float | None:
    """``[hour:]minute[/host_spec]`` -> minutes (bsub -W / -wt syntax), None when malformed."""
    value = text.split("/", 1)[0]
    parts = value.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]) * 60 + int(parts[1]) if len(parts) == 2 else float(int(parts[0]))


# =========================================================================== the policy
class LsfPolicy:
    """LSF-specific behaviour plugged into ``emucore.Supervisor``."""

    def __init__(self, settings: core.Settings) -> None:
        self.settings = settings

    def spawn_supervisor(self, store: core.Store, job_id: str) -> None:
        core.launch_supervisor(store, job_id, os.path.abspath(__file__))

    def on_wait(self, job: dict[str, Any], need: int, avail: int, slots: int) -> None:
        job["pend_reason"] = "Not enough job slot(s)"

    def launch_spec(self, job: dict[str, Any], store: core.Store) -> dict[str, Any]:
        jdir = store.job_dir(job["id"])
        host = core.short_hostname()
        tmpdir = str(store.dir / "tmp" / f"{job['id']}.tmpdir")   # real LSF: /tmp/<jobid>.tmpdir
        os.makedirs(tmpdir, exist_ok=True)
        env = dict(job["submit_env"])       # LSF copies the whole submission environment
        n = job["ncpus"]
        env.update(LSB_JOBID=str(job["id"]), LSB_JOBNAME=job["name"], LSB_QUEUE=job["queue"],
                   LSB_SUBCWD=job["cwd"], LS_SUBCWD=job["cwd"], LSB_JOBFILENAME=str(jdir / "script"),
                   LSB_JOBINDEX="0", LSB_HOSTS=" ".join([host] * n), LSB_MCPU_HOSTS=f"{host} {n}",
                   LSB_DJOB_NUMPROC=str(n), LSB_MAX_NUM_PROCESSORS=str(n), LSB_EXEC_CLUSTER=self.settings.server,
                   LSB_PROJECT_NAME=job["project"], LSB_JOB_EXECUSER=job["owner"], LSFUSER=job["owner"],
                   LSB_OUTPUTFILE=job.get("output_file") or "", LSB_ERRORFILE=job.get("error_file") or "",
                   TMPDIR=tmpdir, PILOT_EMU_STATE=str(store.dir))
        if job.get("command_mode"):
            argv = ["/bin/sh", "-c", job["command"]]
        elif job["script_text"].startswith("#!"):
            argv = [str(jdir / "script")]
        else:
            argv = ["/bin/sh", str(jdir / "script")]
        out = job.get("output_path") or str(jdir / "output")
        err = job.get("error_path") or out
        return {"argv": argv, "env": env, "cwd": job["cwd"], "fallback_cwd": "/tmp", "stdout": out,
                "stderr": err, "stdout_append": not job.get("output_overwrite"),
                "stderr_append": not job.get("error_overwrite"), "tmpdir": tmpdir}

    def on_start(self, job: dict[str, Any]) -> None:
        job.pop("pend_reason", None)

    def kill_sequence(self, job: dict[str, Any], request: dict[str, Any], now: float) -> list[tuple[float, int]]:
        if request.get("signal"):
            return [(now, int(request["signal"]))]
        if request.get("force"):
            return [(now, signal.SIGKILL)]
        step = job["kill_delay"] / job["time_scale"]   # JOB_TERMINATE_INTERVAL
        return [(now, signal.SIGINT), (now + step, signal.SIGTERM), (now + 2 * step, signal.SIGKILL)]

    def on_kill_request(self, job: dict[str, Any], request: dict[str, Any]) -> None:
        if not request.get("signal"):
            job["term_reason"] = job.get("term_reason") or "TERM_OWNER"

    def limit_events(self, job: dict[str, Any]) -> list[tuple[str, float]]:
        events = []
        if job.get("runlimit"):
            if job.get("warning_signal") and job.get("warning_time") is not None:
                events.append(("warning", max(0.0, job["runlimit"] - job["warning_time"])))
            events.append(("runlimit", job["runlimit"]))
        return events

    def on_limit(self, job: dict[str, Any], name: str, now: float, elapsed: float):
        if name == "warning":
            return [(now, job["warning_signal"])], {"warning_sent": now}
        grace = job["grace"] / job["time_scale"]
        step = job["kill_delay"] / job["time_scale"]
        steps = [(now, signal.SIGUSR2), (now + grace, signal.SIGINT), (now + grace + step, signal.SIGTERM),
                 (now + grace + 2 * step, signal.SIGKILL)]
        return steps, {"term_reason": "TERM_RUNLIMIT"}

    def on_finish(self, job: dict[str, Any]) -> None:
        if job.get("lost"):
            job.update(stat="EXIT", exit_status=None)
            return
        code = job.get("exit_code")
        if job.get("term_signal"):
            code = 128 + job["term_signal"]
        job["exit_status"] = code
        job["stat"] = "DONE" if code == 0 else "EXIT"

    def after_finish(self, job: dict[str, Any], store: core.Store) -> None:
        core.rmtree(job.get("tmpdir"))
        if job.get("output_path"):
            try:
                with open(job["output_path"], "a") as fh:
                    fh.write(job_report(job, self.settings))
            except OSError:
                pass


# =========================================================================== bsub
BSUB_ARG = {"-J", "-q", "-o", "-oo", "-e", "-eo", "-W", "-n", "-wa", "-wt", "-cwd", "-P", "-R", "-M", "-G",
            "-g", "-m", "-u", "-L", "-app", "-sla", "-w", "-E", "-Ep", "-i", "-is", "-b", "-t", "-c", "-F",
            "-D", "-S", "-v", "-C", "-p", "-T", "-Jd", "-We", "-k", "-a", "-env", "-outdir", "-rn", "-U",
            "-gpu", "-data", "-ext", "-eptl", "-ptl", "-Lp", "-f", "-s", "-sp"}
BSUB_FLAG = {"-H", "-x", "-N", "-B", "-K", "-I", "-Is", "-Ip", "-IS", "-ISs", "-ISp", "-IX", "-r", "-rn",
             "-Ne", "-tty", "-XF", "-hl"}
BSUB_USAGE = ("Usage: bsub [-h] [-V] [-H] [-x] [-r | -rn] [-N] [-B] [-K] [-I | -Ip | -Is]\n"
              "            [-q queue_name ...] [-m host_name[+[pref_level]] ...]\n"
              "            [-n min_processors[,max_processors]] [-R res_req]\n"
              "            [-J job_name] [-w depend_cond] [-E pre_exec_command]\n"
              "            [-i input_file | -is input_file] [-o out_file | -oo out_file]\n"
              "            [-e err_file | -eo err_file] [-cwd dir] [-W [hour:]minute]\n"
              "            [-wa signal] [-wt [hour:]minute] [-P project_name] [-M mem_limit]\n"
              "            [command [argument ...]]\n")


class BsubError(Exception):
    pass


def parse_bsub_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """LSF option syntax: multi-letter options; the first non-option word starts the command."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") or a == "-":
            break
        if a in BSUB_FLAG:
            opts[a] = True
            i += 1
            continue
        if a in BSUB_ARG:
            if i + 1 >= len(args):
                raise BsubError(f"{a}: option requires an argument.\n{BSUB_USAGE}")
            opts[a] = args[i + 1]
            i += 2
            continue
        if a[:2] in BSUB_ARG and len(a) > 2 and a[:2] not in ("-o", "-e", "-w", "-J", "-E", "-i", "-I"):
            opts[a[:2]] = a[2:]           # attached value, e.g. -n4
            i += 1
            continue
        if a in ("-h", "-V"):
            raise BsubError(BSUB_USAGE)
        raise BsubError(f"{a}: Illegal option.\n{BSUB_USAGE}")
    return opts, args[i:]


def _bsub_directives(script: str) -> list[str]:
    args: list[str] = []
    for line in script.splitlines():
        m = re.match(r"^\s*#BSUB(\s.*)?$", line)
        if m:
            try:
                args.extend(shlex.split(m.group(1) or "", comments=True))
            except ValueError:
                raise BsubError(f"{line}: bad #BSUB line. Job not submitted.") from None
    return args


def _command_string(words: list[str]) -> str:
    """The command as LSF records it (CopyCommand): words joined, those with spaces quoted."""
    out = []
    for w in words:
        if " " in w:
            out.append(f"'{w}'" if '"' in w or "$" in w else f'"{w}"')
        else:
            out.append(w)
    return " ".join(out)


def bsub(argv: list[str]) -> int:
    settings, store, policy = load()
    try:
        return _bsub(argv, settings, store, policy)
    except BsubError as exc:
        msg = str(exc)
        sys.stderr.write(msg if msg.endswith("\n") else msg + "\n")
        return FAIL


@dataclass
class Submission:
    """One bsub call: the job's command or script and its options (the command line over ``#BSUB`` lines)."""

    merged: dict[str, Any]
    command_words: list[str]
    command_mode: bool             # `bsub command args` (not a script)
    script_text: str


def _bsub(argv: list[str], settings: core.Settings, store: core.Store, policy: LsfPolicy) -> int:
    sub = _parse_submission(argv)
    fields = _checked_fields(sub.merged, settings)
    queue_given = "-q" in sub.merged
    seq, jid = _store_job(store, settings, sub, fields)
    policy.spawn_supervisor(store, jid)
    print(f"Job <{seq}> is submitted to {'queue' if queue_given else 'default queue'} <{fields['queue']}>.")
    return 0


def _parse_submission(argv: list[str]) -> Submission:
    """Options, the command or the script (stdin, or a file with LSB_BSUB_PARSE_SCRIPT) and its ``#BSUB`` lines."""
    cmdline, command_words = parse_bsub_args(argv)
    for opt, what in (("-K", "-K"), ("-I", "-I"), ("-Is", "-Is"), ("-Ip", "-Ip")):
        if opt in cmdline:
            raise BsubError(f"bsub: {what} (interactive or blocking jobs) is not supported by the LSF emulator")
    parse_script = os.environ.get("PILOT_EMU_LSB_BSUB_PARSE_SCRIPT", "").lower() in ("y", "yes", "1")
    command_mode = bool(command_words)
    script_text = ""
    if command_words and parse_script and len(command_words) == 1 and os.path.isfile(command_words[0]):
        script_text = Path(command_words[0]).read_text()
        command_mode = False
    elif not command_words:
        script_text = sys.stdin.read()
    merged: dict[str, Any] = {}
    if not command_mode:
        lines = [ln for ln in script_text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise BsubError("No command is specified in the script file. Job not submitted.")
        dopts, _ = parse_bsub_args(_bsub_directives(script_text))
        merged.update(dopts)
    merged.update(cmdline)   # the command line overrides #BSUB lines
    return Submission(merged=merged, command_words=command_words, command_mode=command_mode,
                      script_text=script_text)


def _checked_fields(merged: dict[str, Any], settings: core.Settings) -> dict[str, Any]:
    """Queue, run limit, warning action and slots, refused with bsub's messages."""
    queue = merged.get("-q", settings.default_queue)
    if queue not in settings.queues:
        raise BsubError(f"{queue}: No such queue. Job not submitted.")
    runlimit = None
    if "-W" in merged:
        minutes = parse_minutes(merged["-W"])
        if minutes is None:
            raise BsubError(f"{merged['-W']}: Bad RUNLIMIT specification. Job not submitted.")
        runlimit = minutes * 60.0
    warning_signal = warning_time = None
    if "-wa" in merged:
        warning_signal = core.parse_signal(merged["-wa"])
        if warning_signal is None:
            raise BsubError(f"{merged['-wa']}: Bad job warning action specification. Job not submitted.")
    if "-wt" in merged:
        minutes = parse_minutes(merged["-wt"])
        if minutes is None:
            raise BsubError(f"{merged['-wt']}: Bad job warning time specification. Job not submitted.")
        warning_time = minutes * 60.0
    ncpus = 1
    if "-n" in merged:
        m = re.match(r"^(\d+)(?:,(\d+))?$", merged["-n"])
        if not m or int(m.group(1)) < 1:
            raise BsubError("Bad argument for option -n. Job not submitted.")
        ncpus = int(m.group(1))
    if ncpus > settings.slots:
        raise BsubError("Too many processors requested. Job not submitted.")
    return {"queue": queue, "runlimit": runlimit, "warning_signal": warning_signal, "warning_time": warning_time,
            "ncpus": ncpus, "ncpus_requested": "-n" in merged}


def _output_file(merged: dict[str, Any], cwd: str, jid: str, opt_append: str, opt_over: str,
                 suffix: str) -> tuple[str | None, str | None, bool]:
    """-o/-oo (-e/-eo): (the name as given, the file it names, overwrite?); %J is the job id."""
    raw = merged.get(opt_over) or merged.get(opt_append)
    if not raw:
        return None, None, False
    shown = raw.replace("%J", jid).replace("%I", "0")
    full = os.path.normpath(os.path.join(cwd, os.path.expanduser(shown)))
    if os.path.isdir(full):          # a directory gets <dir>/<jobid>.out / .err
        full = os.path.join(full, f"{jid}.{suffix}")
    return raw, full, opt_over in merged


def _store_job(store: core.Store, settings: core.Settings, sub: Submission, fields: dict[str, Any]) -> tuple[int, str]:
    """Give the job the next id, keep a copy of its script and add its record to the job table."""
    merged, script_text = sub.merged, sub.script_text
    pw = pwd.getpwuid(os.getuid())
    submit_cwd = os.getcwd()
    cwd = os.path.join(submit_cwd, merged["-cwd"]) if "-cwd" in merged else submit_cwd
    host = core.short_hostname()
    now = time.time()
    with store.locked() as st:
        seq = st["next_id"]
        st["next_id"] = seq + 1
        jid = str(seq)
        jdir = store.job_dir(jid)
        jdir.mkdir(parents=True, exist_ok=True)
        (jdir / "script").write_text(script_text)
        (jdir / "script").chmod(0o700)
        command = _command_string(sub.command_words) if sub.command_mode else ";".join(
            ln for ln in script_text.splitlines() if ln.strip())
        out_given, out_path, out_over = _output_file(merged, cwd, jid, "-o", "-oo", "out")
        err_given, err_path, err_over = _output_file(merged, cwd, jid, "-e", "-eo", "err")
        hold = bool(merged.get("-H"))
        st["jobs"][jid] = {
            "id": seq, "kind": KIND, "name": merged.get("-J") or command, "owner": pw.pw_name, "home": pw.pw_dir,
            "submit_host": host, **fields, "state": HELD if hold else QUEUED, "hold": hold, "ctime": now,
            "mtime": now, "eligible_at": now + settings.start_delay, "time_scale": settings.time_scale,
            "kill_delay": settings.kill_delay, "grace": settings.grace, "script_text": script_text,
            "command": command, "command_mode": sub.command_mode, "cwd": cwd, "sub_cwd": submit_cwd,
            "output_file": out_given, "output_path": out_path, "output_overwrite": out_over,
            "error_file": err_given, "error_path": err_path, "error_overwrite": err_over,
            "project": merged.get("-P", "default"), "submit_env": dict(os.environ),
            "res_req": merged.get("-R"), "mem_limit": merged.get("-M"),
            "pend_reason": "New job is waiting for scheduling", "spawned_at": now, "sup_pid": None,
        }
    return seq, jid


# =========================================================================== bjobs
BJOBS_WITH_ARG = {"-o", "-u", "-q", "-J", "-m", "-P", "-g", "-G", "-app", "-sla", "-N", "-Lp"}
BJOBS_FLAGS = {"-a", "-d", "-p", "-r", "-s", "-w", "-W", "-l", "-noheader", "-json", "-A", "-x", "-X", "-UF", "-hms"}
Fields = list[tuple[str, int | None, bool]]   # bjobs -o: (field, width, right-justified)


def bjobs(argv: list[str]) -> int:
    request = _bjobs_request(argv)
    if isinstance(request, int):
        return request
    opts, ids, fields, delim = request
    _settings, store, _policy = load()
    now = time.time()
    jobs = store.read()["jobs"]
    if ids:
        selected, errors, json_errors = _jobs_by_id(ids, jobs)
    else:
        selected, errors, json_errors = _jobs_by_filter(opts, jobs), [], []
        if not selected:
            errors.append(_no_job_message(opts))
    sys.stdout.write(_bjobs_output(opts, fields, delim, selected, json_errors, now))
    for e in errors:
        sys.stderr.write(e + "\n")
    return FAIL if errors else 0


def _bjobs_request(argv: list[str]) -> tuple[dict[str, Any], list[str], Fields, str | None] | int:
    """(options, job ids, -o fields, -o delimiter), or the exit code after an error was printed."""
    opts: dict[str, Any] = {}
    ids: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in BJOBS_WITH_ARG:
            if i + 1 >= len(argv):
                sys.stderr.write(f"{a}: option requires an argument.\n")
                return FAIL
            opts[a] = argv[i + 1]
            i += 2
        elif a in BJOBS_FLAGS:
            opts[a] = True
            i += 1
        elif a.startswith("-"):
            sys.stderr.write(f"{a}: Illegal option.\n")
            return FAIL
        else:
            ids.append(a)
            i += 1
    if "-l" in opts or "-UF" in opts:
        sys.stderr.write("bjobs: the long format (-l/-UF) is not supported by the LSF emulator; use -o\n")
        return FAIL
    if "-json" in opts and "-o" not in opts:
        sys.stderr.write("bjobs: -json requires -o (customized output)\n")
        return FAIL
    fields: Fields = []
    delim = None
    if "-o" in opts:
        try:
            fields, delim = parse_format(opts["-o"])
        except ValueError as exc:
            sys.stderr.write(f"{exc.args[0]}: Illegal field name or format for bjobs -o.\n")
            return FAIL
    return opts, ids, fields, delim


def _jobs_by_id(ids: list[str], jobs: dict[str, dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[str], list[tuple[int, dict[str, str]]]]:
    """Explicit job ids -> (jobs found, error lines, -json error records with their positions)."""
    errors: list[str] = []
    selected: list[dict[str, Any]] = []
    json_errors: list[tuple[int, dict[str, str]]] = []
    for raw in ids:
        if not raw.isdigit():
            errors.append(f"{raw}: Illegal job ID.")
            continue
        job = jobs.get(str(int(raw)))
        if job is None:
            errors.append(f"Job <{raw}> is not found")
            json_errors.append((len(selected), {"ERROR": f"Job <{raw}> is not found"}))
        else:
            selected.append(job)
    return selected, errors, json_errors


BJOBS_STATES = [  # option -> (stats shown, message when none is), first match wins; default: unfinished jobs
    ("-d", {"DONE", "EXIT"}, "No recently finished job found"),
    ("-p", {"PEND", "PSUSP"}, "No pending job found"),
    ("-r", {"RUN"}, "No running job found"),
    ("-s", {"PSUSP", "USUSP", "SSUSP"}, "No suspended job found"),
    ("-a", {"PEND", "PSUSP", "RUN", "DONE", "EXIT"}, "No job found"),
    ("", {"PEND", "PSUSP", "RUN"}, "No unfinished job found"),
]


def _state_filter(opts: dict[str, Any]) -> tuple[set[str], str]:
    return next((want, empty) for opt, want, empty in BJOBS_STATES if not opt or opt in opts)


def _jobs_by_filter(opts: dict[str, Any], jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """No job ids: the user's (-u) jobs in the states the options ask for, by -q queue and -J name."""
    user = opts.get("-u", core.current_user())
    want, _empty = _state_filter(opts)
    selected = []
    for _, job in sorted(jobs.items(), key=lambda kv: int(kv[0])):
        if stat(job) not in want or (user != "all" and job["owner"] != user):
            continue
        if "-q" in opts and job["queue"] != opts["-q"]:
            continue
        if "-J" in opts and job["name"] != opts["-J"]:
            continue
        selected.append(job)
    return selected


def _no_job_message(opts: dict[str, Any]) -> str:
    if "-J" in opts:
        return f"Job <{opts['-J']}> is not found"
    return _state_filter(opts)[1]


def _bjobs_output(opts: dict[str, Any], fields: Fields, delim: str | None, selected: list[dict[str, Any]],
                  json_errors: list[tuple[int, dict[str, str]]], now: float) -> str:
    """Everything bjobs prints on stdout: -json records, -o columns, or the default table."""
    out: list[str] = []
    if "-json" in opts:
        records: list[dict[str, str]] = []
        for job in selected:
            rec = {}
            for name, _, _ in fields:
                v = field_value(job, name, now)
                rec[name.upper()] = "" if v == "-" else v
            records.append(rec)
        for pos, err in reversed(json_errors):
            records.insert(pos, err)
        out.append(lsf_json(records))
    elif fields:
        sep = delim if delim is not None else " "
        if selected and "-noheader" not in opts:
            out.append(sep.join(format_cell(n.upper(), w, r, False) for n, w, r in fields).rstrip() + "\n")
        for job in selected:
            out.append(sep.join(format_cell(field_value(job, n, now), w, r, n == "job_name") for n, w, r in fields)
                       .rstrip() + "\n")
    elif selected:
        if "-noheader" not in opts:
            out.append(BJOBS_HEADER + "\n")
        out.extend(default_row(job, bool(opts.get("-w") or opts.get("-W"))) + "\n" for job in selected)
    return "".join(out)


# =========================================================================== bkill / bresume
def _signal_ids(cmd: str, argv: list[str]) -> tuple[dict[str, Any], list[str]] | int:
    opts: dict[str, Any] = {}
    ids: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-s", "-J", "-q", "-u", "-m", "-C") and i + 1 < len(argv):
            opts[a] = argv[i + 1]
            i += 2
        elif a in ("-r", "-l", "-d", "-a"):
            opts[a] = True
            i += 1
        elif a.startswith("-"):
            sys.stderr.write(f"{cmd}: Illegal option -- {a.lstrip('-')}\n")
            return FAIL
        else:
            ids.append(a)
            i += 1
    if not ids and not any(k in opts for k in ("-J", "-q", "-u", "-m")):
        sys.stderr.write("Job ID or one of '-m', '-u' '-q' and '-J' must be specified.\n")
        return FAIL
    return opts, ids


def _targets(store: core.Store, opts: dict[str, Any], ids: list[str]) -> list[tuple[str, str | None]]:
    """[(shown id, job id or None)]: explicit ids, or the user's unfinished jobs matching -J/-q/0."""
    jobs = store.read()["jobs"]
    if ids and ids != ["0"]:
        return [(raw, str(int(raw)) if raw.isdigit() and str(int(raw)) in jobs else None) for raw in ids]
    user = opts.get("-u", core.current_user())
    out = []
    for jid, job in sorted(jobs.items(), key=lambda kv: int(kv[0])):
        if job["state"] == FINISHED or (user != "all" and job["owner"] != user):
            continue
        if "-J" in opts and job["name"] != opts["-J"] or "-q" in opts and job["queue"] != opts["-q"]:
            continue
        out.append((jid, jid))
    if ids == ["0"] or "-J" in opts or "-q" in opts or "-u" in opts:
        return out
    return out[-1:]


def bkill(argv: list[str]) -> int:
    parsed = _signal_ids("bkill", argv)
    if isinstance(parsed, int):
        return parsed
    opts, ids = parsed
    if "-l" in opts:
        print(" ".join(s.name.removeprefix("SIG") for s in signal.Signals if s.value < 32))
        return 0
    sig = None
    if "-s" in opts:
        sig = core.parse_signal(opts["-s"])
        if sig is None:
            sys.stderr.write(f"{opts['-s']}: Illegal signal value\n")
            return FAIL
    _settings, store, _policy = load()
    targets = _targets(store, opts, ids)
    if not targets:
        sys.stderr.write("No unfinished job found\n")
        return FAIL
    failed = False
    for shown, jid in targets:
        msg_out = msg_err = None
        now = time.time()
        with store.locked() as st:
            job = st["jobs"].get(jid) if jid else None
            if job is None:
                msg_err = f"Job <{shown}>: No matching job found"
            elif job["state"] == FINISHED:
                msg_err = f"Job <{shown}>: Job has already finished"
            elif sig is not None:
                if job["state"] in (RUNNING, EXITING):
                    core.write_kill_request(store, str(jid), {"signal": sig, "at": now})
                    msg_out = f"Job <{shown}> is being signaled"
                else:
                    msg_err = f"Job <{shown}>: Job has not started yet"
            elif job["state"] in (QUEUED, HELD):
                job.pop("starting", None)
                job.update(state=FINISHED, stat="EXIT", end_time=now, mtime=now, exit_status=None,
                           term_reason="TERM_OWNER")
                msg_out = f"Job <{shown}> is being signaled"
            else:
                force = bool(opts.get("-r"))
                core.write_kill_request(store, str(jid), {"force": force, "at": now})
                if force:
                    job["term_reason"] = "TERM_FORCE_OWNER"
                msg_out = f"Job <{shown}> is being terminated"
        if msg_out:
            print(msg_out)
        if msg_err:
            failed = True
            sys.stderr.write(msg_err + "\n")
    return FAIL if failed else 0


def bresume(argv: list[str]) -> int:
    parsed = _signal_ids("bresume", argv)
    if isinstance(parsed, int):
        return parsed
    opts, ids = parsed
    _settings, store, _policy = load()
    failed = False
    for shown, jid in _targets(store, opts, ids):
        with store.locked() as st:
            job = st["jobs"].get(jid) if jid else None
            if job is None:
                msg, ok = f"Job <{shown}>: No matching job found", False
            elif job["state"] == FINISHED:
                msg, ok = f"Job <{shown}>: Job has already finished", False
            elif job["state"] != HELD:
                msg, ok = f"Job <{shown}>: Job is not suspended", False
            else:
                now = time.time()
                job.update(state=QUEUED, hold=False, mtime=now, eligible_at=now)
                msg, ok = f"Job <{shown}> is being resumed", True
        if ok:
            print(msg)
        else:
            failed = True
            sys.stderr.write(msg + "\n")
    return FAIL if failed else 0


# =========================================================================== entry points
def main(cmd: str, argv: list[str]) -> int:
    if cmd == "bsub":
        return bsub(argv)
    if cmd == "bjobs":
        return bjobs(argv)
    if cmd == "bkill":
        return bkill(argv)
    if cmd == "bresume":
        return bresume(argv)
    sys.stderr.write(f"{cmd}: not emulated\n")
    return FAIL


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "supervise":
    _settings = core.Settings.load(KIND, DEFAULTS)
    sys.exit(core.Supervisor(LsfPolicy(_settings), core.Store(_settings), sys.argv[2]).run())
if __name__ == "__main__" and sys.argv[1:] == ["mom"]:   # the execution daemon (root, on the compute node)
    sys.exit(core.run_exec_daemon(os.path.abspath(__file__)))
