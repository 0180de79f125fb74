"""qstat's output for the emulated PBS Pro: job attributes and the ways qstat prints them.

``-f`` text folded by ``prt_attr`` at 78 columns, ``-F dsv``, ``-F json`` printed the way cJSON prints it,
the default table and the ``-a`` alternate table (OpenPBS ``src/cmds/qstat.c``).  No side effects: the
qstat command in pbsemu.py selects the jobs and prints what these functions return.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Any

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402
from emucore import EXITING, FINISHED, HELD, QUEUED, RUNNING  # noqa: E402

STATE_LETTER = {QUEUED: "Q", HELD: "H", RUNNING: "R", EXITING: "E", FINISHED: "F"}
TORQUE_LETTER = {**STATE_LETTER, FINISHED: "C"}   # Torque: C = completed (kept for keep_completed seconds)


def letter(job: dict[str, Any]) -> str:
    return (TORQUE_LETTER if job.get("flavor") == "torque" else STATE_LETTER)[job["state"]]
SUBSTATE = {QUEUED: 10, HELD: 20, RUNNING: 42, EXITING: 50}


def cfmt(fmt: str, *args: object) -> str:
    """printf-style formatting, kept to mirror the format strings of OpenPBS qstat.c."""
    return fmt % args


def full_id(job: dict[str, Any], settings: core.Settings) -> str:
    return f"{job['id']}.{settings.server}"


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
    a.append(("job_state", None, letter(job)))
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
    torque = job.get("flavor") == "torque"   # Torque 6.1 names: start_time, comp_time, exit_status
    if job.get("stime"):
        a.append(("start_time" if torque else "stime", None, ctime_str(job["stime"])))
    if job["state"] == FINISHED and job.get("stime"):
        a.append(("comp_time" if torque else "obittime", None, ctime_str(job["end_time"])))
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
            a.append(("exit_status" if torque else "Exit_status", None, str(job["exit_status"])))
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
            _trunc(jid, 30), name, _trunc(job["owner"], 15), _trunc(timeu, 8), letter(job),
            _trunc(job["queue"], 15))
    name = name[:15] + "*" if len(name) >= 16 else name
    return cfmt("%-17s %-16s %-16s  %8s %1s %-16s\n",
        _trunc(jid, 17), name, _trunc(job["owner"], 16), _trunc(timeu, 8), letter(job),
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
    line += cfmt("%6.6s %5.5s %1.1s %5.5s", mem, res.get("walltime", blank), letter(job),
                                         used["walltime"] if used else blank)
    extra = ""
    if show_nodes:
        nodes = job.get("exec_host", "") if job.get("stime") else ""
        extra += (nodes + "\n") if one_line else (f"   {nodes}\n" if nodes else "")
    if show_comment and job.get("comment"):
        extra += f"   {job['comment']}\n"
    return line + (" " if one_line else "\n") + extra
