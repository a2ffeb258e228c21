"""Fake HTCondor commands: condor_submit (-terse), condor_q (-json, -factory), condor_history
(-json), condor_rm.

There is no HTCondor on the machines this was written on: formats, messages and exit codes
follow the HTCondor manual. A cluster's procs are the elements of one job, numbered from 0;
a proc is ``12.3`` to condor_q and condor_rm. Jobs in the queue (idle, running, held) are
listed by condor_q, ended ones (completed, removed) by condor_history. ``max_materialize``
keeps the procs beyond it out of the queue until earlier ones leave it; condor_q -factory
lists such a cluster with ``JobMaterializeNextProcId``. A run limit (inject_timeout) removes
a proc as a ``periodic_remove`` policy would.
"""
from __future__ import annotations

import json
import os
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
HELD_FOR_MEMORY = ("Error from slot1_1@vm: Job has gone over cgroup memory limit of 2048 "
                   "megabytes. Peak usage: 2231 megabytes.  Consider resubmitting with a "
                   "higher request_memory.")
# hold codes of the manual's table: 34 the job used more memory than it asked; 1 condor_hold
HOLD_CODES = {HELD_FOR_MEMORY: 34}
RUN_LIMIT_REMOVED = ("The job attribute PeriodicRemove expression '(time() - "
                     "JobCurrentStartDate) > MaxRuntime' evaluated to TRUE")
_STATUS = {"PENDING": 1, "RUNNING": 2, "CANCELLED": 3, "TIMEOUT": 3, "COMPLETED": 4,
           "FAILED": 4, "HELD": 5, "ERROR": 5}
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

    # HTCondor truncates a job's output files when the job starts
    return {"env": env, "cwd": job["cwd"], "stdout": path("output"), "stderr": path("error"),
            "append": False, "time_limit": None, "on_error": "fail"}


def _ad(state: dict[str, Any], elem: dict[str, Any]) -> dict[str, Any]:
    job = state["jobs"][str(elem["job"])]
    word = elem["state"]
    ad: dict[str, Any] = {"ClusterId": job["id"], "ProcId": elem["task"], "Owner": job["user"],
                          "JobBatchName": job["name"], "JobStatus": _STATUS[word],
                          "QDate": int(job["submit_time"]), "Iwd": job["cwd"]}
    if word in ("HELD", "ERROR"):
        reason = elem.get("reason") or "via condor_hold (by user %s)" % job["user"]
        ad.update(HoldReason=reason, HoldReasonCode=HOLD_CODES.get(reason, 1 if word == "HELD" else 0))
    if word in ("COMPLETED", "FAILED"):
        signal = elem.get("signal") or 0
        ad.update(ExitBySignal=bool(signal))
        ad.update(ExitSignal=signal) if signal else ad.update(ExitCode=elem.get("exit_code") or 0)
    if word == "TIMEOUT":
        ad["RemoveReason"] = RUN_LIMIT_REMOVED
    elif word == "CANCELLED":
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
            _kill(elem, now)
        if hit:
            res.out.append(f"Job {text} marked for removal" if dot else
                           f"{what[0].upper()}{what[1:]} have been marked for removal")
        else:
            res.err.append(f"Job {text} not found" if dot else f"Couldn't find/remove {what}")
            res.rc = 1
    return res


def _kill(elem: dict[str, Any], now: float) -> None:
    running = elem["state"] == "RUNNING"
    if running:
        _state.kill_group(elem["pid"], elem["pstart"])
    _state.finish(elem, "CANCELLED", now, exit_code=0, signal=15 if running else 0)


def main() -> None:
    funcs = {"condor_submit": condor_submit, "condor_q": condor_q,
             "condor_history": condor_history, "condor_rm": condor_rm}
    _cmd.dispatch({n: (lambda n=n, f=f: _cmd.run(n, f, MESSAGES[n])) for n, f in funcs.items()})


if __name__ == "__main__":
    main()
    sys.exit(0)
