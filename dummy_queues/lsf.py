"""Fake IBM Spectrum LSF 10.1 commands: bsub, bjobs (-o, -json), bkill, badmin showconf mbd.

There is no LSF on the machines this was written on: formats, messages and exit codes follow
IBM's LSF 10.1 command reference (see the package docstring for the choices it leaves open).
Job ids are numbers; an array is ``name[1-10]%2`` to bsub, its elements ``12[3]`` to bkill and
``name[3]`` in bjobs' JOB_NAME, each with the array's JOBID. EXIT_REASON is LSF's termination
reason for the kills the fake makes, a run limit (inject_timeout, ``-W``) or a memory limit
(inject_oom), and empty otherwise (a real LSF also names bkill's, TERM_OWNER).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import sys
import time
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError

DOWN = "LSF is down. Please wait ...\nbatch system daemon not responding ... still trying"
MESSAGES = {
    "bsub": {"fail": (DOWN, 255),
             "lose_id": ("Failed in an LSF library call: Communication time out", 255)},
    "bjobs": {"fail": (DOWN, 255)},
    "bkill": {"fail": (DOWN, 255)},
    "badmin": {"fail": (DOWN, 255)},
}
BSUB_OPTS = {
    "-J": O("name"), "-o": O("output"), "-oo": O("output_over"), "-e": O("error"),
    "-eo": O("error_over"), "-q": O("queue"), "-W": O("run_limit"), "-M": O("mem_limit"),
    "-P": O("project"), "-R": O("requirements", multi=True), "-n": O("slots"),
    "-gpu": O("gpu"),
    "-env": O("env"), "-H": O("hold", False), "-cwd": O("cwd"), "-G": O("user_group"),
    "-app": O("application"), "-u": O("mail"), "-B": O("mail_begin", False),
    "-N": O("mail_end", False),
}
BSUB_USAGE = ("Usage: bsub [-H] [-B] [-N] [-q queue_name] [-n processors] [-R res_req]\n"
              "            [-J job_name] [-o out_file] [-oo out_file] [-e err_file] [-eo err_file]\n"
              "            [-W [hour:]minute] [-M mem_limit] [-P project_name] [-G user_group]\n"
              "            [-app application] [-u mail_user] [-cwd current_working_directory]\n"
              "            [-env \"none\" | \"all [,~var_name ...]\" | \"var_name[=var_value] ...\"]\n"
              "            command [argument ...]")
BJOBS_OPTS = {"-a": O("all", False), "-d": O("done", False), "-json": O("json", False),
              "-o": O("format"), "-u": O("user"), "-J": O("name"),
              "-noheader": O("noheader", False), "-w": O("wide", False)}
FIELDS = ("jobid", "jobindex", "stat", "user", "queue", "from_host", "exec_host", "job_name",
          "exit_code", "exit_reason", "pend_reason", "proj_name", "command", "submit_time",
          "start_time", "finish_time")
DEFAULT_FIELDS = "jobid user stat queue from_host exec_host job_name submit_time"
FINISHED_WORDS = {"COMPLETED": "DONE", "FAILED": "EXIT", "TIMEOUT": "EXIT", "CANCELLED": "EXIT"}
ADMIN_SUSPENDED = "The job was suspended by LSF admin or root while pending"
# LSF's termination reasons (bjobs -l, bhist -l; bjobs -o exit_reason) for the fake's kills
RUN_LIMIT_REASON = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
MEMORY_LIMIT_REASON = "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit"
_ARRAY = re.compile(r"^(?P<name>[^\[\]%]+)\[(?P<spec>[^\]]+)\](?:%(?P<limit>\d+))?$")


def parse_array(spec: str) -> list[int]:
    """'1-5,7,10-20:5' -> [1, 2, 3, 4, 5, 7, 10, 15, 20]."""
    tasks: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not match or int(match.group(1)) < 1:
            raise UsageError("Bad job name. Job not submitted.", rc=255)
        first = int(match.group(1))
        last = int(match.group(2) or first)
        step = int(match.group(3) or 1)
        if last < first or step < 1:
            raise UsageError("Bad job name. Job not submitted.", rc=255)
        tasks.update(range(first, last + 1, step))
    return sorted(tasks)


def run_limit(text: str) -> float:
    """``-W [hour:]minute`` -> seconds."""
    hours, _, minutes = text.rpartition(":")
    try:
        return (int(hours or 0) * 60 + int(minutes)) * 60.0
    except ValueError:
        raise UsageError(f"{text}: Bad RUNLIMIT specification. Job not submitted.", rc=255) from None


def job_environment(spec: str | None) -> dict[str, str]:
    """What ``-env`` passes: all of the submitter's environment by default (LSF's default),
    nothing with "none", "all, ~VAR" all but VAR, "VAR[=value], ..." only those."""
    items = [item.strip() for item in (spec or "all").split(",") if item.strip()]
    if items[0].lower() == "none":
        return _cmd.env_of_job_minimal(os.environ)
    env = dict(os.environ) if items[0].lower() == "all" else _cmd.env_of_job_minimal(os.environ)
    for item in items[1:] if items[0].lower() == "all" else items:
        name, eq, value = item.partition("=")
        if name.startswith("~"):
            env.pop(name[1:], None)
        elif eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def bsub(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, BSUB_OPTS, "bsub", joined=False, unknown_rc=255,
                           unknown=lambda a: f"bsub: illegal option -- {a.lstrip('-')}\n{BSUB_USAGE}")
    if not pos:
        raise UsageError("bsub: dummy_queues needs a command (no job script on stdin)", rc=255)
    conf = state["cluster"]
    name = opts.get("name") or " ".join(pos)
    tasks: list[int | None] = [None]
    throttle = None
    array = _ARRAY.match(name) if "[" in name else None
    if "[" in name and array is None:
        raise UsageError("Bad job name. Job not submitted.", rc=255)
    if array is not None:
        name = array["name"]
        tasks = list(parse_array(array["spec"]))
        throttle = int(array["limit"]) if array["limit"] else None
        if len(tasks) > int(conf["max_array_size"]) or max(tasks) > int(conf["max_array_size"]):
            raise UsageError("Job array index too large. Job not submitted.", rc=255)
    who = _cmd.user()
    cap = conf.get("max_jobs_per_user")
    if cap is not None and _state.active_count(state, who) + len(tasks) > int(cap):
        raise UsageError(f"User <{who}>: Pending job threshold reached. Job not submitted.", rc=255)
    limit = run_limit(opts["run_limit"]) if opts.get("run_limit") else None
    jid = _state.allocate_id(state)
    # LSF runs the command line through a shell, as it was given
    spool = _state.write_spool(_cmd.CURRENT_PATH, jid, {"argv": ["/bin/sh", "-c", " ".join(pos)],
                                                       "env": job_environment(opts.get("env"))})
    queue = opts.get("queue") or "normal"
    output = opts.get("output_over") or opts.get("output")
    job = {"name": name, "user": who, "spool": spool, "script": None,
           "cwd": os.path.abspath(opts.get("cwd") or os.getcwd()), "output": output,
           "error": opts.get("error_over") or opts.get("error"),
           "append": not (opts.get("output_over") or opts.get("error_over")),
           "throttle": throttle, "time_limit": limit, "queue": queue,
           "project": opts.get("project") or "default", "command": " ".join(pos),
           "array": tasks != [None], "array_max": max(tasks) if tasks != [None] else 0}
    _state.add_job(state, jid, job, tasks, bool(opts.get("hold")), now)
    state["submissions"].append({"time": now, "command": "bsub", "argv": argv, "job_id": jid,
                                 "tasks": tasks if job["array"] else None, "name": name})
    return Result(out=[f"Job <{jid}> is submitted to queue <{queue}>."], submitted=jid)


def _expand(pattern: str, job: dict[str, Any], task: int | None) -> str:
    """%J (job id) and %I (array index) in an output file name, relative to the job's cwd."""
    path = pattern.replace("%J", str(job["id"])).replace("%I", str(task or 0))
    return os.path.join(job["cwd"], path)


def launch_info(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any]) -> dict:
    task = elem["task"]
    host = state["cluster"]["hostname"]
    env = {"LSB_JOBID": str(job["id"]), "LSB_JOBINDEX": str(task or 0),
           "LSB_JOBNAME": element_name(job, task), "LSB_QUEUE": job["queue"],
           "LSB_HOSTS": host, "LSB_MCPU_HOSTS": f"{host} 1", "LSB_JOBINDEX_STEP": "1",
           "LSB_JOBINDEX_END": str(job["array_max"]), "LS_SUBCWD": job["cwd"],
           "LSF_ENVDIR": "/etc/lsf"}
    # no -o: LSF mails the output; the fake throws it away
    out = _expand(job["output"], job, task) if job.get("output") else os.devnull
    err = _expand(job["error"], job, task) if job.get("error") else out
    return {"env": env, "cwd": job["cwd"], "stdout": out, "stderr": err,
            "append": job["append"], "time_limit": job.get("time_limit"), "on_error": "fail",
            "timeout_message": f"{RUN_LIMIT_REASON}."}


def memory_kill(job: dict[str, Any]) -> dict[str, Any]:
    """How an element over its -M ends (inject_oom): LSF's SIGKILL, TERM_MEMLIMIT."""
    return {"state": "FAILED", "exit_code": 0, "signal": 9, "reason": MEMORY_LIMIT_REASON}


def element_name(job: dict[str, Any], task: int | None) -> str:
    return job["name"] if task is None else f"{job['name']}[{task}]"


def display_state(elem: dict[str, Any]) -> str:
    word = elem["state"]
    if word == "PENDING":
        return "PEND"
    if word in ("HELD", "ERROR"):
        return "PSUSP"
    if word == "RUNNING":
        return "RUN"
    return FINISHED_WORDS[word]


def exit_code(elem: dict[str, Any]) -> str:
    """bjobs' EXIT_CODE: empty unless the job exited (a signal is 128 + its number; a run
    limit is LSF's TERM_RUNLIMIT, 140)."""
    if elem["state"] not in ("FAILED", "TIMEOUT", "CANCELLED") or not elem["start"]:
        return ""
    if elem["state"] == "TIMEOUT":
        return "140"
    return str(128 + elem["signal"] if elem.get("signal") else elem.get("exit_code") or 0)


def exit_reason(elem: dict[str, Any]) -> str:
    """bjobs' EXIT_REASON: the termination reason of a run or memory limit kill, else empty."""
    if elem["state"] == "TIMEOUT":
        return RUN_LIMIT_REASON
    return MEMORY_LIMIT_REASON if elem.get("reason") == MEMORY_LIMIT_REASON else ""


def _pend_reason(state: dict[str, Any], elem: dict[str, Any], free: int,
                 per_job: dict[int, int]) -> str:
    if elem["state"] == "HELD":
        return "The job was suspended by the user while pending"
    if elem["state"] == "ERROR":
        return elem.get("reason") or ADMIN_SUSPENDED
    if elem["state"] != "PENDING":
        return ""
    throttle = state["jobs"][str(elem["job"])].get("throttle")
    if throttle and per_job.get(elem["job"], 0) >= throttle:
        return "The job array has reached its running element limit"
    return "Not enough job slot(s)" if free <= 0 else "New job is waiting for scheduling"


def _stamp(t: float | None) -> str:
    return time.strftime("%b %d %H:%M", time.localtime(t)) if t else "-"


def _fields(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any], free: int,
            per_job: dict[int, int]) -> dict[str, str]:
    host = state["cluster"]["hostname"]
    return {"jobid": str(job["id"]), "jobindex": str(elem["task"] or 0),
            "stat": display_state(elem), "user": job["user"], "queue": job["queue"],
            "from_host": host, "exec_host": host if elem["start"] else "",
            "job_name": element_name(job, elem["task"]), "exit_code": exit_code(elem),
            "exit_reason": exit_reason(elem), "pend_reason": _pend_reason(state, elem, free, per_job),
            "proj_name": job["project"], "command": job["command"],
            "submit_time": _stamp(job["submit_time"]), "start_time": _stamp(elem["start"]),
            "finish_time": _stamp(elem["end"])}


def parse_format(text: str) -> tuple[list[str], str]:
    """``-o "jobid stat:8 job_name delimiter='|'"`` -> (field names, delimiter)."""
    delimiter = " "
    match = re.search(r"delimiter='([^']*)'", text)
    if match:
        delimiter = match.group(1)
        text = text[:match.start()] + text[match.end():]
    names = [item.split(":")[0].lower() for item in text.split()]
    for name in names:
        if name not in FIELDS:
            raise UsageError(f"{name}: Illegal field name", rc=255)
    return names, delimiter


def bjobs(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, BJOBS_OPTS, "bjobs", stop_at_positional=False, joined=False,
                           unknown_rc=255, unknown=lambda a: f"bjobs: illegal option -- {a.lstrip('-')}")
    if opts.get("json") and not state["cluster"].get("lsf_json", True):  # before LSF 10.1
        raise UsageError("bjobs: illegal option -- json", rc=255)
    names, delimiter = parse_format(opts.get("format") or DEFAULT_FIELDS)
    users = None if opts.get("user") == "all" else {opts.get("user") or _cmd.user()}
    total, per_job = _state.running_counts(state)
    free = int(state["cluster"]["slots"]) - total
    wanted = [_ident(text) for text in pos]
    rows, errors = [], []
    for jid, index in wanted:
        if not any(str(e["job"]) == jid and (index is None or e["task"] == index)
                   for e in state["elements"].values()):
            errors.append(f"Job <{jid if index is None else f'{jid}[{index}]'}> is not found")
    for elem in state["elements"].values():
        job = state["jobs"][str(elem["job"])]
        finished = elem["state"] in _state.FINISHED
        if elem["state"] == "VANISHED" or (finished and not (opts.get("all") or opts.get("done"))) \
                or (opts.get("done") and not finished):
            continue
        if users is not None and job["user"] not in users:
            continue
        if opts.get("name") and not fnmatch.fnmatchcase(job["name"], opts["name"]):
            continue
        if wanted and not any(str(elem["job"]) == jid and index in (None, elem["task"])
                              for jid, index in wanted):
            continue
        values = _fields(state, job, elem, free, per_job)
        rows.append({name: values[name] for name in names})
    if not rows and not errors:
        what = "job" if opts.get("all") or opts.get("done") else "unfinished job"
        return Result(rc=255, err=[f"No {what} found"])
    if opts.get("json"):
        records = [{k.upper(): v for k, v in row.items()} for row in rows]
        records += [{"ERROR": error} for error in errors]
        doc = {"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}
        return Result(out=json.dumps(doc, indent=2).splitlines(), rc=255 if not rows else 0)
    out = [] if opts.get("noheader") else [delimiter.join(n.upper() for n in names)]
    out += [delimiter.join(row[n] or "-" for n in names) for row in rows]
    return Result(out=out if rows else [], err=errors, rc=255 if not rows else 0)


def _ident(text: str) -> tuple[str, int | None]:
    """'12' -> ('12', None); '12[3]' -> ('12', 3)."""
    match = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", text)
    if not match:
        raise UsageError(f"{text}: Illegal job ID.", rc=255)
    return match.group(1), int(match.group(2)) if match.group(2) else None


def bkill(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-J": O("name"), "-u": O("user")}, "bkill",
                           stop_at_positional=False, joined=False, unknown_rc=255,
                           unknown=lambda a: f"bkill: illegal option -- {a.lstrip('-')}")
    if not pos:
        raise UsageError("Usage: bkill [-l] [-J job_name] [-u user_name | -u all] "
                         "[job_ID | \"job_ID[index_list]\" | 0] ...", rc=255)
    who = opts.get("user") or _cmd.user()
    res = Result()
    if pos == ["0"]:  # every unfinished job of the user (of that name, with -J)
        hit = [e for e in state["elements"].values() if e["state"] in _state.ACTIVE
               and (who == "all" or state["jobs"][str(e["job"])]["user"] == who)
               and (not opts.get("name") or fnmatch.fnmatchcase(
                   state["jobs"][str(e["job"])]["name"], opts["name"]))]
        if not hit:
            return Result(rc=255, err=["No unfinished job found"])
        for jid in sorted({e["job"] for e in hit}):
            res.out.append(f"Job <{jid}> is being terminated")
        for elem in hit:
            _state.cancel_element(elem, now)
        return res
    for text in pos:
        jid, index = _ident(text)
        elems = [e for e in state["elements"].values()
                 if str(e["job"]) == jid and index in (None, e["task"])]
        if not elems:
            res.err.append(f"Job <{text}>: No matching job found")
            res.rc = 255
            continue
        live = [e for e in elems if e["state"] in _state.ACTIVE]
        if not live:
            res.err.append(f"Job <{text}>: Job has already finished")
            res.rc = 255
            continue
        for elem in live:
            _state.cancel_element(elem, now)
        res.out.append(f"Job <{text}> is being terminated")
    return res


def badmin(argv: list[str], state: dict[str, Any], now: float) -> Result:
    if argv != ["showconf", "mbd"]:
        raise UsageError(f"badmin: dummy_queues supports only 'badmin showconf mbd', not: "
                         f"{shlex.join(argv)}", rc=255)
    conf = state["cluster"]
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(now))
    values = [("CLEAN_PERIOD", f"{conf['min_job_age']:g}"),
              ("MAX_JOB_ARRAY_SIZE", str(conf["max_array_size"])),
              ("MAX_JOBID", "999999"), ("MBD_SLEEP_TIME", "10"), ("SBD_SLEEP_TIME", "7")]
    return Result(out=[f"MBD configuration at {stamp}"] + [f"    {k} = {v}" for k, v in values])


def main() -> None:
    funcs = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill, "badmin": badmin}
    _cmd.dispatch({n: (lambda n=n, f=f: _cmd.run(n, f, MESSAGES[n])) for n, f in funcs.items()})


if __name__ == "__main__":
    main()
    sys.exit(0)
