"""Fake (Son of) Grid Engine 8.1.9 commands: qsub, qstat, qdel.

Behaviour follows /work/shared/notes/real-sge.md: task ids are 1-based,
jobs get a minimal environment unless -V, SGE_TASK_ID is `undefined` outside
arrays, finished jobs vanish from qstat.
"""
from __future__ import annotations

import fnmatch
import os
import re
import sys
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError

DOWN = ('error: commlib error: got select error (Connection refused)\n'
        'error: unable to send message to qmaster using port 6444 on host "vm": '
        'got send error')
MESSAGES = {
    "qsub": {"fail": ("Unable to run job: unable to send message to qmaster using port 6444"
                      ' on host "vm": got send error\nExiting.', 1),
             "lose_id": ("Unable to run job: failed receiving gdi request response for mid=1 "
                         "(got syncron message receive timeout error).\nExiting.", 1)},
    "qstat": {"fail": (DOWN, 1)},
    "qdel": {"fail": (DOWN, 1)},
    "qconf": {"fail": (DOWN, 1)},
    "qacct": {"fail": (DOWN, 1)},
}
QSUB_OPTS = {
    "-terse": O("terse", False), "-N": O("name"), "-S": O("shell"), "-o": O("output"),
    "-e": O("error"), "-j": O("join"), "-wd": O("wd"), "-cwd": O("cwd", False),
    "-t": O("tasks"), "-tc": O("throttle"), "-q": O("queue"), "-l": O("resources", multi=True),
    "-pe": O("pe"), "-P": O("project"), "-h": O("hold", False), "-V": O("export_all", False),
    "-v": O("variables", multi=True), "-b": O("binary"), "-A": O("account"),
    "-M": O("mail"), "-m": O("mail_when"), "-r": O("rerun"), "-notify": O("notify", False),
    "-now": O("now"), "-p": O("priority"), "-hold_jid": O("hold_jid"),
    "-shell": O("use_shell"), "-R": O("reserve"),
}


def _unknown(arg: str) -> str:
    return f'qsub: invalid option argument "{arg}"'  # as Son of Grid Engine 8.1.9 prints it


def parse_tasks(spec: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", spec)
    if not m:
        raise UsageError(f'ERROR! -t option requires a range argument: "{spec}"')
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else first
    step = int(m.group(3)) if m.group(3) else 1
    if first < 1 or last < first or step < 1:
        raise UsageError(f'ERROR! invalid task range "{spec}": task ids must be >= 1')
    return first, last, step


def _job_env(opts: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ) if opts.get("export_all") else _cmd.env_of_job_minimal(os.environ)
    for item in ",".join(opts.get("variables", [])).split(","):
        if item:
            name, eq, value = item.partition("=")
            env[name] = value if eq else os.environ.get(name, "")
    return env


def qsub(argv: list[str], state: dict[str, Any], now: float) -> Result:
    args = list(argv)
    if "-pe" in args:  # the only two-valued option we accept: -pe NAME N
        i = args.index("-pe")
        args[i + 1:i + 3] = [" ".join(args[i + 1:i + 3])]
    opts, pos = _cmd.parse(args, QSUB_OPTS, "qsub", unknown=_unknown, unknown_rc=2, joined=False)
    if not pos:
        raise UsageError("qsub: no script given (dummy_queues does not read scripts from stdin)")
    conf = state["cluster"]
    who = _cmd.user()
    tasks: list[int | None] = [None]
    first = last = step = None
    if opts.get("tasks"):
        first, last, step = parse_tasks(opts["tasks"])
        tasks = list(range(first, last + 1, step))
        if len(tasks) > int(conf["max_array_size"]):
            raise UsageError(f"Unable to run job: job rejected: You try to submit a job with "
                             f"more than {conf['max_array_size']} tasks\nExiting.")
    cap = conf.get("max_jobs_per_user")
    current = _state.active_count(state, who, per_job=True)  # max_u_jobs counts jobs
    if cap is not None and current + 1 > int(cap):
        raise UsageError(f"Unable to run job: job rejected: Only {cap} jobs are allowed per "
                         f"user (current job count: {current})\nExiting.")
    binary = (opts.get("binary") or "n").lower().startswith("y")
    if not binary and not os.path.isfile(pos[0]):
        raise UsageError(f'Unable to read script file because of error: error opening '
                         f'{pos[0]}: No such file or directory')
    jid = _state.allocate_id(state)
    path = _cmd.CURRENT_PATH
    script = None
    if binary and (opts.get("use_shell") or "yes").lower().startswith("n"):
        cmd = list(pos)  # -b y -shell no: executed as given
    elif binary:  # -b y: the argv is rejoined and split again by the shell, as real SGE does
        cmd = [opts.get("shell") or "/bin/sh", "-c", " ".join(pos)]
    else:
        script = _state.copy_script(path, jid, pos[0])
        cmd = _state.script_argv(script, pos[1:], opts.get("shell"))
    env = _job_env(opts)
    home = os.environ.get("HOME") or os.path.expanduser("~")
    cwd = os.path.abspath(opts["wd"]) if opts.get("wd") else (
        os.getcwd() if opts.get("cwd") else home)
    env.update(SGE_O_WORKDIR=os.getcwd(), SGE_O_HOME=home, SGE_O_PATH=os.environ.get("PATH", ""),
               SGE_O_SHELL=os.environ.get("SHELL", "/bin/sh"), SGE_O_LOGNAME=who,
               SGE_O_HOST=conf["hostname"], SGE_CELL="default", SGE_ROOT="/var/lib/gridengine",
               ENVIRONMENT="BATCH", NSLOTS="1", QUEUE=opts.get("queue") or "all.q",
               HOSTNAME=conf["hostname"], REQUEST=opts.get("name") or os.path.basename(pos[0]))
    spool = _state.write_spool(path, jid, {"argv": cmd, "env": env})
    name = opts.get("name") or os.path.basename(pos[0])
    throttle = int(opts["throttle"]) if opts.get("throttle") else None
    job = {"name": name, "user": who, "spool": spool, "script": script, "cwd": cwd,
           "output": opts.get("output"), "error": opts.get("error"),
           "join": (opts.get("join") or "n").lower().startswith("y"), "throttle": throttle,
           "time_limit": None, "queue": opts.get("queue") or "all.q",
           "first": first, "last": last, "step": step, "home": home,
           "command": " ".join(pos), "shell": opts.get("shell") or "NONE",
           "resources": opts.get("resources", []), "project": opts.get("project")}
    for res in ",".join(job["resources"]).split(","):
        key, _, value = res.partition("=")
        if key in ("h_rt", "s_rt") and value:
            job["time_limit"] = _seconds(value)
    _state.add_job(state, jid, job, tasks, bool(opts.get("hold")), now)
    state["submissions"].append({"time": now, "command": "qsub", "argv": argv, "job_id": jid,
                                 "tasks": tasks if tasks != [None] else None, "name": name})
    ident = f"{jid}.{first}-{last}:{step}" if first is not None else str(jid)
    if opts.get("terse"):
        text = ident
    elif first is not None:
        text = f'Your job-array {ident} ("{name}") has been submitted'
    else:
        text = f'Your job {jid} ("{name}") has been submitted'
    return Result(out=[text], submitted=jid)


def _seconds(text: str) -> float:
    parts = [float(x or 0) for x in text.split(":")]
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def _out_path(pattern: str | None, job: dict[str, Any], task: int | None, kind: str,
              host: str) -> str:
    suffix = f".{kind}{job['id']}" + (f".{task}" if task is not None else "")
    if not pattern:
        return os.path.join(job["cwd"], job["name"] + suffix)
    pattern = pattern.split(":", 1)[1] if pattern.startswith("NONE:") else pattern
    subs = {"JOB_ID": str(job["id"]), "TASK_ID": str(task) if task is not None else "undefined",
            "JOB_NAME": job["name"], "USER": job["user"], "HOME": job["home"],
            "HOSTNAME": host}
    path = re.sub(r"\$(JOB_ID|TASK_ID|JOB_NAME|USER|HOME|HOSTNAME)",
                  lambda m: subs[m.group(1)], pattern)
    path = os.path.join(job["cwd"], path)
    if os.path.isdir(path):
        path = os.path.join(path, job["name"] + suffix)
    return path


def launch_info(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any]) -> dict:
    task = elem["task"]
    host = state["cluster"]["hostname"]
    undefined = "undefined"
    env = {"JOB_ID": str(job["id"]), "JOB_NAME": job["name"],
           "SGE_TASK_ID": str(task) if task is not None else undefined,
           "SGE_TASK_FIRST": str(job["first"]) if task is not None else undefined,
           "SGE_TASK_LAST": str(job["last"]) if task is not None else undefined,
           "SGE_TASK_STEPSIZE": str(job["step"]) if task is not None else undefined}
    out = _out_path(job["output"], job, task, "o", host)
    err = out if job["join"] else _out_path(job["error"], job, task, "e", host)
    env.update(SGE_STDOUT_PATH=out, SGE_STDERR_PATH=err)
    return {"env": env, "cwd": job["cwd"], "stdout": out, "stderr": err, "append": True,
            "time_limit": job.get("time_limit"), "on_error": "error_state",
            "error_exit_codes": [100]}


def qdel(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-t": O("tasks"), "-u": O("user"), "-f": O("force", False)},
                           "qdel", stop_at_positional=False,
                           unknown=lambda a: f"qdel: Unknown option {a}")
    who = _cmd.user()
    ids = [x for p in pos for x in p.split(",") if x]
    task_sel = None
    if opts.get("tasks"):
        first, last, step = parse_tasks(opts["tasks"])
        task_sel = set(range(first, last + 1, step))
    res = Result()
    targets: list[tuple[str, list[str]]] = []
    for ident in ids:
        if ident.split(".")[0].isdigit():
            keys = [k for k, e in state["elements"].items()
                    if str(e["job"]) == ident.split(".")[0] and e["state"] in _state.ACTIVE]
            targets.append((ident.split(".")[0], keys))
            continue
        by_name: dict[str, list[str]] = {}  # a job name (wildcards allowed), as qdel takes it
        for k, e in state["elements"].items():
            job = state["jobs"][str(e["job"])]
            if e["state"] in _state.ACTIVE and fnmatch.fnmatchcase(job["name"], ident) \
                    and job["user"] == who:
                by_name.setdefault(str(e["job"]), []).append(k)
        targets += list(by_name.items()) or [(ident, [])]
    if opts.get("user"):
        users = set(opts["user"].split(","))
        by_job: dict[str, list[str]] = {}
        for k, e in state["elements"].items():
            if e["state"] in _state.ACTIVE and state["jobs"][str(e["job"])]["user"] in users:
                by_job.setdefault(str(e["job"]), []).append(k)
        targets += list(by_job.items())
    if not targets:
        raise UsageError("qdel: no job id given")
    for jid, keys in targets:
        if task_sel is not None:
            keys = [k for k in keys if state["elements"][k]["task"] in task_sel]
        if not keys:
            res.err.append(f'denied: job "{jid}" does not exist')
            res.rc = 1
            continue
        pending = []
        for key in keys:
            elem = state["elements"][key]
            label = f"job-array task {jid}.{elem['task']}" if elem["task"] is not None \
                else f"job {jid}"
            if elem["state"] == "RUNNING":
                _state.kill_group(elem["pid"], elem["pstart"])
                res.out.append(f"{who} has registered the {label} for deletion")
            else:
                pending.append(label)
            _state.finish(elem, "CANCELLED", now, exit_code=0,
                          signal=15 if elem["state"] == "RUNNING" else 0)
        if pending and task_sel is None:
            res.out.append(f"{who} has deleted job {jid}")
        else:
            res.out += [f"{who} has deleted {label}" for label in pending]
    return res


def qstat(argv: list[str], state: dict[str, Any], now: float) -> Result:
    from ._sge_qstat import qstat as impl
    return impl(argv, state, now)


def qconf(argv: list[str], state: dict[str, Any], now: float) -> Result:
    """Only ``qconf -sconf``, the global configuration limits a pool reads."""
    if argv not in (["-sconf"], ["-sconf", "global"]):
        raise UsageError("error: dummy_queues supports only 'qconf -sconf [global]'", rc=1)
    conf = state["cluster"]
    return Result(out=["#global:", "max_aj_instances             2000",
                       f"max_aj_tasks                 {conf['max_array_size']}",
                       f"max_u_jobs                   {conf.get('max_jobs_per_user') or 0}",
                       "max_jobs                     0"])


# qacct's "failed" for a job qmaster killed at its h_rt (SGE 8.1.9, see shared/notes)
LIMIT_FAILED = "37  : qmaster enforced h_rt, h_cpu, or h_vmem limit"


def qacct(argv: list[str], state: dict[str, Any], now: float) -> Result:
    """``qacct -j ID [-t TASK]``: the accounting of ended elements (failed, exit_status), as
    SGE 8.1.9 prints it, without its lag; a job that did not end: rc 1."""
    opts, pos = _cmd.parse(argv, {"-j": O("job"), "-t": O("task")}, "qacct",
                           unknown=lambda a: f"error: invalid option argument \"{a}\"")
    if pos or not opts.get("job"):
        raise UsageError("error: dummy_queues supports only 'qacct -j ID [-t TASK]'", rc=1)
    jid = opts["job"]
    out = []
    for elem in state["elements"].values():
        task = opts.get("task")
        if str(elem["job"]) != jid or elem["end"] is None or elem["state"] == "VANISHED":
            continue
        if task is not None and str(elem["task"]) != task:
            continue
        killed = elem["state"] == "TIMEOUT"
        code = 137 if killed or elem["state"] == "CANCELLED" else elem.get("exit_code") or 0
        out += ["=" * 62, f"{'taskid':<13}{elem['task'] or 'undefined'}",
                f"{'failed':<13}{LIMIT_FAILED if killed else '0'}",
                f"{'exit_status':<13}{code}"]
    if not out:
        what = f"Job-array tasks {jid}.{opts['task']}-{opts['task']}:1" if opts.get("task") else f"job id {jid}"
        return Result(rc=1, err=[f"error: {what} not found"])
    return Result(out=out)


def main() -> None:
    funcs = {"qsub": qsub, "qstat": qstat, "qdel": qdel, "qconf": qconf, "qacct": qacct}
    _cmd.dispatch({n: (lambda n=n, f=f: _cmd.run(n, f, MESSAGES[n])) for n, f in funcs.items()})


if __name__ == "__main__":
    main()
    sys.exit(0)
