"""Fake HTCondor commands: condor_submit (-terse), condor_q (-json, -factory), condor_history
(-json), condor_rm.

There is no HTCondor on the machines this was written on: formats, messages and exit codes
follow the HTCondor manual. A cluster's procs are the elements of one job, numbered from 0;
a proc is ``12.3`` to condor_q and condor_rm. Jobs in the queue (idle, running, held) are
listed by condor_q, ended ones (completed, removed) by condor_history. ``max_materialize``
keeps the procs beyond it out of the queue until earlier ones leave it; condor_q -factory
lists such a cluster with ``JobMaterializeNextProcId``. A proc past its
``allowed_execute_duration`` (or ``allowed_job_duration``, or a limit of inject_timeout) is
held with HoldReasonCode 47 (46), one over its memory (inject_oom) with 34, subcode 102,
naming its ``request_memory``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError
from ._condor_syntax import Constraint, expand, parse_submit, split_new_syntax

DOWN = ("-- Failed to fetch ads from: <127.0.0.1:9618?addrs=127.0.0.1-9618> : vm\n"
        "CEDAR:6001:Failed to connect to <127.0.0.1:9618?addrs=127.0.0.1-9618>")
MESSAGES = {
    "condor_submit": {"fail": ("ERROR: Can't find address of local schedd", 1),
                      "lose_id": ("ERROR: Failed to commit job submission into the queue.", 1)},
    "condor_q": {"fail": (DOWN, 1)},
    "condor_history": {"fail": (DOWN, 1)},
    "condor_rm": {"fail": ("Can't find address of local schedd", 1)},
}
# inject_error_state's hold: the starter could not start the job on its node (code 6,
# FailedToCreateProcess, the subcode an errno)
STARTER_FAILED = ("Error from slot1_1@vm: Failed to execute '/bin/sh': (errno=2: 'No such "
                  "file or directory')")
HOLD_CODES = {STARTER_FAILED: (6, 2)}
# hold codes of the manual's table: 34 JobOutOfResources (subcode 102: memory),
# 46 JobDurationExceeded, 47 JobExecuteExceeded; 1 condor_hold
MEMORY_HOLD, MEMORY_SUBCODE = 34, 102
DURATION_HOLDS = {47: ("allowed_execute_duration", "execute"),
                  46: ("allowed_job_duration", "job")}
DEFAULT_REQUEST_MEMORY_MB = 128  # what a job that asks for none gets here
_STATUS = {"PENDING": 1, "RUNNING": 2, "CANCELLED": 3, "COMPLETED": 4, "FAILED": 4,
           "HELD": 5, "ERROR": 5}
QUERY_OPTS = {"-json": O("json", False), "-attributes": O("attributes"),
              "-constraint": O("constraint", multi=True), "-factory": O("factory", False),
              "-allusers": O("allusers", False), "-nobatch": O("nobatch", False),
              "-limit": O("limit")}


def _unknown(prog: str):
    return lambda arg: f"{prog}: unknown option {arg}\nUse \"{prog} -help\" for details"


def condor_submit(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-terse": O("terse", False), "-batch-name": O("batch_name")},
                           "condor_submit", stop_at_positional=False, joined=False,
                           unknown=_unknown("condor_submit"))
    if len(pos) != 1:
        raise UsageError("ERROR: dummy_queues reads exactly one submit description file")
    try:
        with open(pos[0], encoding="utf-8") as fh:
            commands, (count, variable, items) = parse_submit(fh.read())
    except OSError as exc:
        raise UsageError(f"ERROR: Can't open \"{pos[0]}\"  with flags 00 ({exc.strerror})") from None
    if commands.get("universe", "vanilla").lower() != "vanilla":
        raise UsageError("ERROR: dummy_queues runs the vanilla universe only")
    executable = commands.get("executable")
    if not executable:
        raise UsageError("ERROR: No 'executable' parameter was provided")
    if not os.path.isabs(executable) or not os.access(executable, os.X_OK):
        raise UsageError(f"ERROR: Executable file {executable} does not exist")
    iwd = os.path.abspath(expand(commands.get("initialdir", ""), {"DOLLAR": "$"}) or os.getcwd())
    tasks = list(range(len(items) if items is not None else count))
    if not tasks:
        raise UsageError("ERROR: no jobs queued")
    who = _cmd.user()
    cap = state["cluster"].get("max_jobs_per_user")
    limit = int(commands.get("max_materialize") or 0) or None
    wanted = min(len(tasks), limit or len(tasks))
    if cap is not None and _active(state, who) + wanted > int(cap):
        raise UsageError(f"ERROR: Failed to queue job. Number of submitted jobs would exceed "
                         f"MAX_JOBS_PER_OWNER ({cap})")
    jid = _state.allocate_id(state)
    cluster_macros = {"DOLLAR": "$", "Cluster": str(jid), "ClusterId": str(jid)}
    arguments = split_new_syntax(expand(commands["arguments"], cluster_macros), "arguments") \
        if "arguments" in commands else []
    getenv = commands.get("getenv", "false").lower() in ("true", "1", "yes")
    spool = _state.write_spool(_cmd.CURRENT_PATH, jid, {
        "argv": [executable, *arguments],
        "env": dict(os.environ) if getenv else {}})
    job = {"name": opts.get("batch_name") or commands.get("batch_name") or "", "user": who,
           "spool": spool, "script": None, "cwd": iwd, "environment": commands.get("environment"),
           "output": commands.get("output"), "error": commands.get("error"),
           "cpus": commands.get("request_cpus", "1"), "items": items, "variable": variable,
           "materialize_limit": limit, "next_proc": 0, "procs": len(tasks), "commands": commands}
    _state.add_job(state, jid, job, tasks, False, now)
    _state.materialize(state)
    state["submissions"].append({"time": now, "command": "condor_submit", "argv": argv,
                                 "job_id": jid, "tasks": tasks, "name": job["name"],
                                 "commands": commands, "queue": [count, variable, items]})
    if opts.get("terse"):
        return Result(out=[f"{jid}.0 - {jid}.{tasks[-1]}"], submitted=jid)
    return Result(out=["Submitting job(s)" + "." * len(tasks),
                       f"{len(tasks)} job(s) submitted to cluster {jid}."], submitted=jid)


def _active(state: dict[str, Any], user: str) -> int:
    return sum(1 for e in state["elements"].values()
               if e["state"] in _state.ACTIVE and _materialized(state, e)
               and state["jobs"][str(e["job"])]["user"] == user)


def _materialized(state: dict[str, Any], elem: dict[str, Any]) -> bool:
    job = state["jobs"][str(elem["job"])]
    return not job.get("materialize_limit") or elem["task"] < job["next_proc"]


def _proc_macros(job: dict[str, Any], proc: int) -> dict[str, str]:
    macros = {"DOLLAR": "$", "Cluster": str(job["id"]), "ClusterId": str(job["id"]),
              "Process": str(proc), "ProcId": str(proc)}
    if job.get("variable"):
        macros[job["variable"]] = job["items"][proc]
    return macros


def launch_info(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any]) -> dict:
    proc = elem["task"]
    env = {"_CONDOR_SLOT": "slot1_1", "_CONDOR_JOB_IWD": job["cwd"],
           "_CONDOR_SCRATCH_DIR": job["cwd"], "BATCH_SYSTEM": "HTCondor",
           "OMP_NUM_THREADS": str(job["cpus"])}
    if job.get("environment"):
        for word in split_new_syntax(expand(job["environment"], _proc_macros(job, proc)),
                                     "environment"):
            name, _, value = word.partition("=")
            env[name] = value

    def path(name: str) -> str:
        value = expand(job.get(name) or os.devnull, _proc_macros(job, proc))
        return os.path.join(job["cwd"], value)

    # the shorter of the job's duration limits holds it (inject_timeout's: as 47's)
    limits = {code: float(job["commands"][command]) for code, (command, _) in
              DURATION_HOLDS.items() if job["commands"].get(command)}
    code = min(limits, key=limits.__getitem__) if limits else 47
    # HTCondor truncates a job's output files when the job starts
    return {"env": env, "cwd": job["cwd"], "stdout": path("output"), "stderr": path("error"),
            "append": False, "time_limit": limits.get(code), "on_error": "fail",
            "timeout_end": {"state": "ERROR", "reason": None, "hold_code": code,
                            "hold_subcode": 0}}


def memory_kill(job: dict[str, Any]) -> dict[str, Any]:
    """How a proc over its memory ends (inject_oom): held, as the starter holds it."""
    limit = _megabytes(job["commands"].get("request_memory"))
    return {"state": "ERROR", "hold_code": MEMORY_HOLD, "hold_subcode": MEMORY_SUBCODE,
            "reason": f"Error from slot1_1@vm: Job has gone over cgroup memory limit of {limit} "
                      f"megabytes. Last measured usage: {limit + 1} megabytes.  Consider "
                      f"resubmitting with a higher request_memory."}


def _megabytes(request: str | None) -> int:
    """request_memory in MB: a number is MB, or K, M, G, T (with an optional B)."""
    if not request:
        return DEFAULT_REQUEST_MEMORY_MB
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", request, re.I)
    if match is None:
        return DEFAULT_REQUEST_MEMORY_MB  # an expression: the dummy does not evaluate it
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _short_time(seconds: float) -> str:
    """HTCondor's format_time_short: ``00:03`` for 3 s, ``1:00:00`` for an hour."""
    total = int(seconds)
    text = (f"{total // 86400}+{total % 86400 // 3600:02d}:{total % 3600 // 60:02d}:"
            f"{total % 60:02d}").lstrip("0+")
    return text[1:] if text.startswith(":") else text


def _hold(job: dict[str, Any], elem: dict[str, Any], word: str) -> dict[str, Any]:
    """HoldReason, HoldReasonCode and HoldReasonSubCode of a held proc."""
    code, subcode = elem.get("hold_code"), elem.get("hold_subcode", 0)
    reason = elem.get("reason")
    if code in DURATION_HOLDS:
        reason = (f"The job exceeded allowed {DURATION_HOLDS[code][1]} duration of "
                  f"{_short_time(elem.get('time_limit') or 0)}")
    reason = reason or "via condor_hold (by user %s)" % job["user"]
    if code is None:
        code, subcode = HOLD_CODES.get(reason, (1 if word == "HELD" else 0, 0))
    return {"HoldReason": reason, "HoldReasonCode": code, "HoldReasonSubCode": subcode}


def _ad(state: dict[str, Any], elem: dict[str, Any]) -> dict[str, Any]:
    job = state["jobs"][str(elem["job"])]
    word = elem["state"]
    ad: dict[str, Any] = {"ClusterId": job["id"], "ProcId": elem["task"], "Owner": job["user"],
                          "JobBatchName": job["name"], "JobStatus": _STATUS[word],
                          "QDate": int(job["submit_time"]), "Iwd": job["cwd"]}
    if word in ("HELD", "ERROR"):
        ad.update(_hold(job, elem, word))
    if word in ("COMPLETED", "FAILED"):
        signal = elem.get("signal") or 0
        ad.update(ExitBySignal=bool(signal))
        ad.update(ExitSignal=signal) if signal else ad.update(ExitCode=elem.get("exit_code") or 0)
    if word == "CANCELLED":
        ad["RemoveReason"] = f"via condor_rm (by user {job['user']})"
    if elem.get("start"):
        ad["JobCurrentStartDate"] = int(elem["start"])
    if elem.get("end"):
        ad["CompletionDate"] = int(elem["end"])
    return ad


def _query(argv: list[str], prog: str) -> tuple[dict[str, Any], list[str], Constraint | None]:
    opts, pos = _cmd.parse(argv, QUERY_OPTS, prog, stop_at_positional=False, joined=False,
                           unknown=_unknown(prog))
    constraints = [Constraint(text) for text in opts.get("constraint", [])]
    ids = []
    for text in pos:
        cluster, dot, proc = text.partition(".")
        if not cluster.isdigit() or (dot and not proc.isdigit()):
            raise UsageError(f"{prog}: dummy_queues takes job ids and -constraint, not {text!r}")
        ids.append(f"ClusterId == {cluster}" + (f" && ProcId == {proc}" if dot else ""))
    if ids:
        constraints.append(Constraint(" || ".join(f"({i})" for i in ids)))
    combined = None
    if constraints:
        combined = constraints[0]
        for more in constraints[1:]:
            combined = Constraint(f"({combined.text}) && ({more.text})")
    return opts, pos, combined


def _print(ads: list[dict[str, Any]], opts: dict[str, Any]) -> Result:
    if opts.get("attributes"):
        keep = {a.strip().lower() for a in opts["attributes"].split(",")}
        ads = [{k: v for k, v in ad.items() if k.lower() in keep} for ad in ads]
    if not opts.get("json"):
        raise UsageError("dummy_queues prints ads only with -json")
    # condor_q -json prints nothing at all when no ad matched
    return Result(out=json.dumps(ads, indent=2).splitlines() if ads else [])


def condor_q(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, _, constraint = _query(argv, "condor_q")
    who = _cmd.user()
    if opts.get("factory"):
        ads = []
        for jid, job in state["jobs"].items():
            procs = [e for e in state["elements"].values() if str(e["job"]) == jid]
            if job.get("materialize_limit") and any(e["state"] in _state.ACTIVE for e in procs):
                ads.append({"ClusterId": job["id"], "Owner": job["user"],
                            "JobBatchName": job["name"], "JobMaterializeLimit": job["materialize_limit"],
                            "JobMaterializeNextProcId": job["next_proc"],
                            "TotalSubmitProcs": len(procs)})
    else:
        ads = [_ad(state, e) for e in state["elements"].values()
               if e["state"] in _state.ACTIVE and _materialized(state, e)]
    ads = [ad for ad in ads if (opts.get("allusers") or ad["Owner"] == who)
           and (constraint is None or constraint.matches(ad))]
    return _print(ads, opts)


def condor_history(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, _, constraint = _query(argv, "condor_history")
    ended = [e for e in state["elements"].values() if e["state"] in _STATUS
             and e["state"] not in _state.ACTIVE]
    ended.sort(key=lambda e: e["end"] or 0, reverse=True)  # the newest first, as the file is read
    ads = [ad for ad in map(lambda e: _ad(state, e), ended)
           if constraint is None or constraint.matches(ad)]
    if opts.get("limit"):
        ads = ads[:int(opts["limit"])]
    return _print(ads, opts)


def condor_rm(argv: list[str], state: dict[str, Any], now: float) -> Result:
    """Each id (a whole cluster, its unmaterialized procs too; or one proc), or the
    constraint, answered on a line of its own; exit 1 when any of them matched nothing."""
    _, pos, constraint = _query(argv, "condor_rm")
    if constraint is None:
        raise UsageError("condor_rm: you must specify a job id, user or -constraint")
    res = Result()
    for text in pos or [None]:
        cluster, dot, proc = (text or "").partition(".")
        if text is None:
            only, what = constraint, f"all jobs matching constraint ({constraint.text})"
        elif dot:
            only, what = Constraint(f"ClusterId == {cluster} && ProcId == {proc}"), f"job {text}"
        else:
            only, what = Constraint(f"ClusterId == {cluster}"), f"all jobs in cluster {text}"
        hit = [e for e in state["elements"].values() if e["state"] in _state.ACTIVE
               and state["jobs"][str(e["job"])]["user"] == _cmd.user()
               and (not (dot or text is None) or _materialized(state, e))
               and only.matches(_ad(state, e))]
        for elem in hit:
            _state.cancel_element(elem, now)
        if hit:
            res.out.append(f"Job {text} marked for removal" if dot else
                           f"{what[0].upper()}{what[1:]} have been marked for removal")
        else:
            res.err.append(f"Job {text} not found" if dot else f"Couldn't find/remove {what}")
            res.rc = 1
    return res


def main() -> None:
    funcs = {"condor_submit": condor_submit, "condor_q": condor_q,
             "condor_history": condor_history, "condor_rm": condor_rm}
    _cmd.dispatch({n: (lambda n=n, f=f: _cmd.run(n, f, MESSAGES[n])) for n, f in funcs.items()})


if __name__ == "__main__":
    main()
    sys.exit(0)
