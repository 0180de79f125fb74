"""bjobs's output for the emulated LSF: job states, the default table, ``-o`` fields, ``-json``, and the
job report LSF appends to the ``-o`` file.

Layouts follow the LSF 10.1 command reference, the captures in ``reference/scheduler-outputs.yaml``
(entries ``lsf-*``) and openlava ``lsbatch/cmd/bjobs.c``.  No side effects: the commands in lsfemu.py
select the jobs and print what these functions return.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING  # noqa: E402

TERM_TEXT = {  # bjobs/bacct termination reasons (LSF 10.1 "Termination reasons")
    "TERM_RUNLIMIT": "job killed after reaching LSF run time limit",
    "TERM_OWNER": "job killed by owner",
    "TERM_FORCE_OWNER": "job killed by owner without time for cleanup",
}



def cfmt(fmt: str, *args: object) -> str:
    """printf-style formatting, kept to mirror the format strings of openlava bjobs.c."""
    return fmt % args


def stat(job: dict[str, Any]) -> str:
    s = job["state"]
    if s == QUEUED:
        return "PEND"
    if s == HELD:
        return "PSUSP"
    if s in (RUNNING, EXITING):
        return "RUN"
    return job.get("stat", "EXIT")


def lsf_time(t: float | None) -> str:
    return time.strftime("%b %e %H:%M", time.localtime(t)) if t else "-"



def job_report(job: dict[str, Any], settings: core.Settings) -> str:
    """The report LSF appends to the -o file (layout of LSB_STDOUT_DIRECT=y output)."""
    host = core.short_hostname()
    cluster = settings.server
    done = job.get("stat") == "DONE"

    def ctime(t: float) -> str:
        return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(t))

    if done:
        outcome = "Successfully completed."
    else:
        reason = job.get("term_reason")
        outcome = (f"{reason}: {TERM_TEXT[reason]}.\n" if reason in TERM_TEXT else "")
        outcome += f"Exited with exit code {job.get('exit_status')}."
    body = job["command"] if job.get("command_mode") else job["script_text"].rstrip("\n")
    run = int(job.get("end_time", 0) - job.get("stime", 0))
    turnaround = int(job.get("end_time", 0) - job["ctime"])
    return (f"\n------------------------------------------------------------\n"
            f"Sender: LSF System <lsfadmin@{host}>\n"
            f"Subject: Job {job['id']}: <{job['name']}> in cluster <{cluster}> {'Done' if done else 'Exited'}\n\n"
            f"Job <{job['name']}> was submitted from host <{job['submit_host']}> by user <{job['owner']}> "
            f"in cluster <{cluster}> at {ctime(job['ctime'])}\n"
            f"Job was executed on host(s) <{host}>, in queue <{job['queue']}>, as user <{job['owner']}> "
            f"in cluster <{cluster}> at {ctime(job['stime'])}\n"
            f"<{job['home']}> was used as the home directory.\n"
            f"<{job['cwd']}> was used as the working directory.\n"
            f"Started at {ctime(job['stime'])}\n"
            f"Terminated at {ctime(job['end_time'])}\n"
            f"Results reported at {ctime(job['end_time'])}\n\n"
            f"Your job looked like:\n\n"
            f"------------------------------------------------------------\n"
            f"# LSBATCH: User input\n{body}\n"
            f"------------------------------------------------------------\n\n"
            f"{outcome}\n\n"
            f"Resource usage summary:\n\n"
            f"    CPU time :{job.get('cpu_time', 0.0):>40.2f} sec.\n"
            f"    Max Memory :{max(1, job.get('max_rss_kb', 0) // 1024):>38} MB\n"
            f"    Run time :{run:>40} sec.\n"
            f"    Turnaround time :{turnaround:>33} sec.\n\n")


# =========================================================================== bjobs
FIELD_ALIASES = {
    "id": "jobid", "ugroup": "user_group", "name": "job_name", "description": "job_description",
    "proj": "proj_name", "project": "proj_name", "app": "application", "sla": "service_class",
    "group": "job_group", "priority": "job_priority", "cmd": "command", "estart_time": "estimated_start_time",
    "sstart_time": "specified_start_time", "sterminate_time": "specified_terminate_time",
    "warn_act": "warning_action", "warn_time": "action_warning_time", "except_stat": "exception_status",
    "cwd": "sub_cwd",
}
FIELDS = ["jobid", "jobindex", "stat", "user", "user_group", "queue", "job_name", "job_description",
          "proj_name", "application", "service_class", "job_group", "job_priority", "dependency", "pend_reason",
          "command", "pids", "exit_code", "exit_reason", "interactive", "from_host", "first_host", "exec_host",
          "nexec_host", "alloc_slot", "nalloc_slot", "host_file", "exclusive", "nreq_slot", "submit_time",
          "start_time", "estimated_start_time", "specified_start_time", "specified_terminate_time", "time_left",
          "finish_time", "%complete", "warning_action", "action_warning_time", "cpu_used", "run_time",
          "idle_factor", "exception_status", "slots", "mem", "max_mem", "avg_mem", "memlimit", "swap",
          "swaplimit", "min_req_proc", "max_req_proc", "nthreads", "runtimelimit", "exec_home", "exec_cwd",
          "output_file", "error_file", "input_file", "sub_cwd", "kill_reason", "suspend_reason",
          "resume_reason"]


class _JobView:
    """What several bjobs -o fields of one job derive from, worked out once."""

    def __init__(self, job: dict[str, Any], now: float) -> None:
        self.job = job
        self.stat = stat(job)
        self.started = bool(job.get("stime"))
        self.running = job["state"] in (RUNNING, EXITING)
        self.finished = job["state"] == FINISHED
        self.host = core.short_hostname()
        self.n = job["ncpus"]
        self.limit = job.get("runlimit")
        self.elapsed = 0.0
        if self.started:
            self.elapsed = ((job.get("end_time") or now) - job["stime"]) * job["time_scale"]


def field_value(job: dict[str, Any], f: str, now: float) -> str:
    """One bjobs -o field as LSF prints it ('-' when empty; JSON output turns '-' into '')."""
    v = _JobView(job, now)
    for group in (_identity_field, _host_field, _time_field, _usage_field):
        value = group(v, f)
        if value is not None:
            return value
    return "-"


def _identity_field(v: _JobView, f: str) -> str | None:
    """Who, what, where from, and how it ended."""
    job, s = v.job, v.stat
    if f == "jobid":
        return str(job["id"])
    if f == "jobindex":
        return "0"
    if f == "stat":
        return s
    if f == "user":
        return job["owner"]
    if f == "queue":
        return job["queue"]
    if f == "job_name":
        return job["name"]
    if f == "proj_name":
        return job["project"]
    if f == "command":
        return job["command"]
    if f == "pend_reason":
        return job.get("pend_reason", "-") if job["state"] == QUEUED else (
            "The job was suspended by the user while pending" if job["state"] == HELD else "-")
    if f == "pids":
        return ",".join(map(str, core.group_usage(job.get("pgid")).pids)) or "-" if v.running else "-"
    if f == "exit_code":
        return str(job["exit_status"]) if s == "EXIT" and job.get("exit_status") is not None else "-"
    if f == "exit_reason":
        r = job.get("term_reason")
        return f"{r}: {TERM_TEXT[r]}" if s == "EXIT" and r in TERM_TEXT else "-"
    if f == "from_host":
        return job["submit_host"]
    return None


def _host_field(v: _JobView, f: str) -> str | None:
    """Execution hosts and slots."""
    started, n, host = v.started, v.n, v.host
    if f in ("first_host", "exec_host"):
        if not started:
            return "-"
        return host if f == "first_host" or n == 1 else f"{n}*{host}"
    if f == "nexec_host":
        return "1" if started else "-"
    if f == "alloc_slot":
        return f"{n}*{host}" if started else "-"
    if f in ("nalloc_slot", "slots"):
        return str(n) if started else "-"
    if f in ("nreq_slot", "min_req_proc", "max_req_proc"):
        return str(n) if v.job.get("ncpus_requested") or f == "nreq_slot" else "-"
    return None


def _time_field(v: _JobView, f: str) -> str | None:
    """Submission, start and finish times, the run limit and its warning."""
    job, limit, elapsed = v.job, v.limit, v.elapsed
    if f == "submit_time":
        return lsf_time(job["ctime"])
    if f == "start_time":
        return lsf_time(job.get("stime"))
    if f == "finish_time":
        if v.finished:
            return lsf_time(job.get("end_time"))
        if v.running and limit:
            return lsf_time(job["stime"] + limit / job["time_scale"]) + " L"
        return "-"
    if f == "time_left":
        if v.running and limit:
            left = max(0, int(limit - elapsed))
            return f"{left // 3600}:{left % 3600 // 60:02d} L"
        return "-"
    if f == "%complete":
        if v.started and limit:
            return f"{min(100.0, elapsed * 100 / limit):.2f}% L"
        return "-"
    if f == "warning_action":
        return core.signal_name(job["warning_signal"]).removeprefix("SIG") if job.get("warning_signal") else "-"
    if f == "action_warning_time":
        return f"{int(job['warning_time'])} second(s)" if job.get("warning_time") is not None else "-"
    if f == "runtimelimit":
        return f"{limit / 60:.1f} min" if limit else "-"
    return None


def _usage_field(v: _JobView, f: str) -> str | None:
    """CPU and memory used, and the job's directories and files."""
    job, started = v.job, v.started
    if f == "cpu_used":
        if not started:
            return "-"
        cpu = job.get("cpu_time", 0.0) if v.finished else core.group_usage(job.get("pgid")).cpu_seconds
        return f"{cpu:.1f} second(s)"
    if f == "run_time":
        return f"{int(v.elapsed)} second(s)" if started else "-"
    if f in ("mem", "max_mem", "avg_mem"):
        if v.running:
            return f"{max(1, core.group_usage(job.get('pgid')).rss_kb // 1024)} Mbytes"
        if v.finished and started and f != "mem":
            return f"{max(1, job.get('max_rss_kb', 0) // 1024)} Mbytes"
        return "-"
    if f == "nthreads":
        return str(core.group_usage(job.get("pgid")).threads) if v.running else "-"
    if f == "exec_home":
        return job["home"] if started else "-"
    if f == "exec_cwd":
        return job["cwd"] if started else "-"
    if f == "output_file":
        return job.get("output_file") or "-"
    if f == "error_file":
        return job.get("error_file") or "-"
    if f == "sub_cwd":
        return job["sub_cwd"]
    return None


def parse_format(spec: str) -> tuple[list[tuple[str, int | None, bool]], str | None]:
    """``"jobid stat:5 exit_code:-3 delimiter='|'"`` -> [(field, width, right_justify)], delimiter."""
    delim = None
    m = re.search(r"""delimiter=(['"])(.*?)\1""", spec)
    if m:
        delim = m.group(2)
        spec = spec[: m.start()] + spec[m.end():]
    fields = []
    for tok in spec.split():
        parts = tok.split(":")
        name = parts[0].lower()
        name = FIELD_ALIASES.get(name, name)
        if name not in FIELDS:
            raise ValueError(parts[0])
        width, right = None, False
        if len(parts) > 1 and parts[1]:
            w = parts[1]
            right = w.startswith("-")
            w = w.lstrip("-")
            if w:
                if not w.isdigit():
                    raise ValueError(tok)
                width = int(w)
        fields.append((name, width, right))
    return fields, delim


def format_cell(value: str, width: int | None, right: bool, job_name: bool) -> str:
    if width is None:
        return value
    if len(value) > width:
        value = "*" + value[len(value) - width + 1:] if job_name else value[:width]
    return value.rjust(width) if right else value.ljust(width)


def lsf_json(records: list[dict[str, str]]) -> str:
    """bjobs -json layout: two-space indent, no space after ':', every value a string."""
    lines = ["{", '  "COMMAND":"bjobs",', f'  "JOBS":{len(records)},', '  "RECORDS":[']
    for i, rec in enumerate(records):
        lines.append("    {")
        items = [f"      {json.dumps(k)}:{json.dumps(v)}" for k, v in rec.items()]
        lines.append(",\n".join(items))
        lines.append("    }" + ("," if i + 1 < len(records) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


BJOBS_HEADER = "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME"


def default_row(job: dict[str, Any], wide: bool) -> str:
    name = job["name"]
    started = bool(job.get("stime"))
    n = job["ncpus"]
    host = core.short_hostname()
    exec_host = "" if not started else (host if n == 1 else f"{n}*{host}")
    if wide:
        return cfmt("%-7d %-7s %-5.5s %-10s %-11s %-11s %-10s %s",
            job["id"], job["owner"], stat(job), job["queue"], job["submit_host"], exec_host or "   -    ", name,
            lsf_time(job["ctime"]))
    if len(name) > 10:
        name = "*" + name[-9:]
    return cfmt("%-7d %-7.7s %-5.5s %-10.10s %-11.11s %-11.11s %-10.10s %s",
        job["id"], job["owner"], stat(job), job["queue"], job["submit_host"], exec_host, name,
        lsf_time(job["ctime"]))
