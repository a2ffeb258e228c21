"""Fake PBS Pro (2022.1) commands: qsub, qstat -f -F json, qdel, qselect.

There is no real PBS Pro on the machines this was written on, so nothing here
was checked against a live server: formats, messages and exit codes follow the
PBS Pro reference guide and user guide as remembered (see the package
docstring for the exact choices).  Job ids look like ``123.pbsserver`` and
``123[].pbsserver`` / ``123[4].pbsserver`` for arrays.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError

DOWN = "Connection refused\n{cmd}: cannot connect to server pbsserver (errno=15010)"
MESSAGES = {
    "qsub": {"fail": (DOWN.format(cmd="qsub"), 2),
             "lose_id": ("qsub: End of File", 1)},
    "qstat": {"fail": (DOWN.format(cmd="qstat"), 2)},
    "qdel": {"fail": (DOWN.format(cmd="qdel"), 2)},
    # qselect exits with pbs_errno (15010 here, so 162 as an exit status)
    "qselect": {"fail": (DOWN.format(cmd="qselect"), 162)},
}
QSUB_OPTS = {
    "-N": O("name"), "-o": O("output"), "-e": O("error"), "-j": O("join"), "-J": O("array"),
    "-q": O("queue"), "-l": O("resources", multi=True), "-A": O("account"),
    "-h": O("hold", False), "-V": O("export_all", False), "-v": O("variables", multi=True),
    "-W": O("attributes", multi=True), "-P": O("project"), "-m": O("mail_when"),
    "-M": O("mail"), "-r": O("rerun"), "-S": O("shell"), "-k": O("keep"), "-p": O("priority"),
}
USAGE = ("usage: qsub [-a date_time] [-A account_string] [-c interval]\n"
         "\t[-C directive_prefix] [-e path] [-f ] [-h ] [-I [-X]] [-j o|e|n] [-J X-Y[:Z]]\n"
         "\t[-k keep] [-l resource_list] [-m mail_options] [-M user_list]\n"
         "\t[-N jobname] [-o path] [-p priority] [-P project] [-q queue] [-r y|n]\n"
         "\t[-R o|e|oe] [-S path] [-u user_list] [-W otherattributes=value...]\n"
         "\t[-v variable_list] [-V ] [-z] [script | -- command [arg1 ...]]\n"
         "       qsub --version")


def server(state: dict[str, Any]) -> str:
    return state["cluster"]["server"]


def parse_range(spec: str) -> tuple[list[int], int, int | None]:
    """'0-9', '1-10:2', '0-99%4' -> (indices, step, max_run_subjobs)."""
    m = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?", spec)
    if not m:
        raise UsageError("qsub: illegal -J value", rc=2)
    first, last = int(m.group(1)), int(m.group(2))
    step = int(m.group(3) or 1)
    if last <= first or step < 1:  # a PBS array must have at least two subjobs
        raise UsageError("qsub: illegal -J value", rc=2)
    tasks = list(range(first, last + 1, step))
    if len(tasks) < 2:
        raise UsageError("qsub: illegal -J value", rc=2)
    return tasks, step, int(m.group(4)) if m.group(4) else None


def walltime(text: str) -> float:
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part or 0)
    return total


def qsub(argv: list[str], state: dict[str, Any], now: float) -> Result:
    try:
        opts, pos = _cmd.parse(argv, QSUB_OPTS, "qsub",
                               unknown=lambda a: f"qsub: invalid option -- '{a[1:2]}'\n{USAGE}")
    except UsageError as exc:
        raise UsageError(str(exc), rc=2) from None
    if not pos:
        raise UsageError("qsub: dummy_queues needs a script or '-- command' (no stdin)", rc=2)
    conf = state["cluster"]
    who = _cmd.user()
    tasks: list[int | None] = [None]
    step, throttle = 1, None
    if opts.get("array"):
        tasks, step, throttle = parse_range(opts["array"])
        if len(tasks) > int(conf["max_array_size"]):
            raise UsageError("qsub: Array job exceeds server or queue size limit", rc=1)
    cap = conf.get("max_jobs_per_user")
    if cap is not None and _state.active_count(state, who) + len(tasks) > int(cap):
        raise UsageError("qsub: Maximum number of jobs already in queue for user", rc=1)
    direct = "--" in argv[:len(argv) - len(pos)]  # "-- command args": run directly, no script
    if not direct and not os.path.isfile(pos[0]):
        raise UsageError("qsub: script file:: No such file or directory", rc=2)  # sic, PBS
    jid = _state.allocate_id(state)
    path = _cmd.CURRENT_PATH
    script = None
    if direct:
        cmd = list(pos)
    else:
        script = _state.copy_script(path, jid, pos[0])
        cmd = _state.script_argv(script, pos[1:], opts.get("shell"))
    env = dict(os.environ) if opts.get("export_all") else _cmd.env_of_job_minimal(os.environ)
    for item in ",".join(opts.get("variables", [])).split(","):
        if item:
            key, eq, value = item.partition("=")
            env[key] = value if eq else os.environ.get(key, "")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    queue = opts.get("queue") or "workq"
    for var in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ"):
        if var in os.environ:
            env[f"PBS_O_{var}"] = os.environ[var]
    env.update(PBS_O_WORKDIR=os.getcwd(), PBS_O_HOST=conf["hostname"], PBS_O_QUEUE=queue,
               PBS_QUEUE=queue, PBS_O_SYSTEM="Linux", PBS_ENVIRONMENT="PBS_BATCH",
               PBS_O_SERVER=server(state))
    spool = _state.write_spool(path, jid, {"argv": cmd, "env": env})
    name = opts.get("name") or ("STDIN" if direct else os.path.basename(pos[0]))[:236]
    resources = {}
    for item in ",".join(opts.get("resources", [])).split(","):
        key, _, value = item.partition("=")
        if key:
            resources[key] = value
    job = {"name": name, "user": who, "spool": spool, "script": script, "cwd": home,
           "submit_dir": os.getcwd(), "output": opts.get("output"), "error": opts.get("error"),
           "join": opts.get("join") or "n", "throttle": throttle, "queue": queue,
           "time_limit": walltime(resources["walltime"]) if resources.get("walltime") else None,
           "resources": resources, "array": tasks != [None], "step": step,
           "account": opts.get("account"), "project": opts.get("project"),
           "argv": argv, "env_vars": {k: v for k, v in env.items() if k.startswith("PBS_O_")}}
    _state.add_job(state, jid, job, tasks, bool(opts.get("hold")), now)
    ident = f"{jid}[].{server(state)}" if job["array"] else f"{jid}.{server(state)}"
    state["submissions"].append({"time": now, "command": "qsub", "argv": argv, "job_id": jid,
                                 "tasks": tasks if job["array"] else None, "name": name})
    return Result(out=[ident], submitted=jid)


def job_ident(state: dict[str, Any], jid: int, task: int | None, array: bool) -> str:
    if not array:
        return f"{jid}.{server(state)}"
    return f"{jid}[{'' if task is None else task}].{server(state)}"


def _out_path(pattern: str | None, job: dict[str, Any], task: int | None, kind: str) -> str:
    seq = f"{job['id']}" + (f".{task}" if task is not None else "")
    if not pattern:
        return os.path.join(job["submit_dir"], f"{job['name']}.{kind}{seq}")
    pattern = pattern.split(":", 1)[1] if re.match(r"^[\w.-]+:/", pattern) else pattern
    pattern = pattern.replace("^array_index^", str(task) if task is not None else "")
    path = os.path.join(job["submit_dir"], pattern)
    if os.path.isdir(path):
        path = os.path.join(path, f"{job['name']}.{kind}{seq}")
    return path


def launch_info(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any]) -> dict:
    task = elem["task"]
    ident = job_ident(state, job["id"], task, job["array"])
    env = {"PBS_JOBID": ident, "PBS_JOBNAME": job["name"],
           "PBS_JOBDIR": job["cwd"], "PBS_NODEFILE": "/dev/null",
           "TMPDIR": "/tmp"}
    if job["array"]:
        env.update(PBS_ARRAY_INDEX=str(task),
                   PBS_ARRAY_ID=job_ident(state, job["id"], None, True))
    out = _out_path(job["output"], job, task, "o")
    err = out if job["join"] == "oe" else _out_path(job["error"], job, task, "e")
    if job["join"] == "eo":
        out = err
    return {"env": env, "cwd": job["cwd"], "stdout": out, "stderr": err, "append": True,
            "time_limit": job.get("time_limit"), "on_error": "fail"}


def memory_kill(job: dict[str, Any]) -> dict[str, Any]:
    """How a job over its mem ends (inject_oom): qstat -x shows Exit_status -27."""
    return {"state": "OUT_OF_MEMORY", "exit_code": -27, "signal": 9, "reason": None}


def parse_ident(text: str) -> tuple[str, str | None]:
    """'123[4].srv' -> ('123', '4'); '123[]' -> ('123', ''); '124' -> ('124', None)."""
    m = re.fullmatch(r"(\d+)(?:\[(\d*)\])?(?:\..*)?", text)
    if not m:
        raise UsageError(f"qstat: illegally formed job identifier: {text}", rc=1)
    return m.group(1), m.group(2)


def qdel(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-W": O("wait"), "-x": O("history", False)}, "qdel",
                           stop_at_positional=False,
                           unknown=lambda a: f"qdel: invalid option -- '{a[1:2]}'\n"
                                             "usage: qdel [-W force|suppress_email=X] [-x] "
                                             "job_identifier...")
    if not pos:
        raise UsageError("usage: qdel [-W force|suppress_email=X] [-x] job_identifier...", 2)
    res = Result()
    for text in pos:
        try:
            jid, index = parse_ident(text)
        except UsageError:
            res.err.append(f"qdel: illegally formed job identifier: {text}")
            res.rc = 1
            continue
        job = state["jobs"].get(jid)
        full = f"{text}" if "." in text else f"{text}.{server(state)}"
        elems = [e for e in state["elements"].values() if str(e["job"]) == jid and
                 (index in (None, "") or str(e["task"]) == index)]
        if job is None or not elems:
            res.err.append(f"qdel: Unknown Job Id {full}")
            res.rc = 153
            continue
        live = [e for e in elems if e["state"] in _state.ACTIVE]
        if not live:
            res.err.append(f"qdel: Job has finished {full}")
            res.rc = 35
            continue
        for elem in live:
            running = elem["state"] == "RUNNING"
            if running:
                _state.kill_group(elem["pid"], elem["pstart"])
            _state.finish(elem, "CANCELLED", now, exit_code=271 if running else None,
                          signal=15 if running else 0)
    return res


def qstat(argv: list[str], state: dict[str, Any], now: float) -> Result:
    from ._pbs_qstat import qstat as impl
    return impl(argv, state, now)


def qselect(argv: list[str], state: dict[str, Any], now: float) -> Result:
    from ._pbs_qstat import qselect as impl
    return impl(argv, state, now)


def main() -> None:
    funcs = {"qsub": qsub, "qstat": qstat, "qdel": qdel, "qselect": qselect}
    _cmd.dispatch({n: (lambda n=n, f=f: _cmd.run(n, f, MESSAGES[n])) for n, f in funcs.items()})


if __name__ == "__main__":
    main()
    sys.exit(0)
