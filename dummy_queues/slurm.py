"""Fake SLURM 22.05 commands: sbatch, squeue, scancel, scontrol show config, sinfo.

Behaviour and messages follow the real SLURM observed in
/work/shared/notes/real-slurm.md (Debian 22.05.8).
"""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from . import _cmd, _state
from ._cmd import Option, Result, UsageError

O = Option
SBATCH_OPTS = {
    "--parsable": O("parsable", False), "--job-name": O("name"), "-J": O("name"),
    "--output": O("output"), "-o": O("output"), "--error": O("error"), "-e": O("error"),
    "--open-mode": O("open_mode"), "--array": O("array"), "-a": O("array"),
    "--partition": O("partition"), "-p": O("partition"), "--time": O("time"),
    "-t": O("time"), "--mem": O("mem"), "--cpus-per-task": O("cpus"), "-c": O("cpus"),
    "--gres": O("gres"), "--gpus-per-task": O("gpus_per_task"), "--account": O("account"), "-A": O("account"),
    "--qos": O("qos"), "-q": O("qos"), "--chdir": O("chdir"), "-D": O("chdir"),
    "--hold": O("hold", False), "-H": O("hold", False), "--wrap": O("wrap"),
    "--export": O("export"), "--nodes": O("nodes"), "-N": O("nodes"),
    "--ntasks": O("ntasks"), "-n": O("ntasks"), "--mem-per-cpu": O("mem_per_cpu"),
    "--quiet": O("quiet", False), "-Q": O("quiet", False),
}
FAIL_PREFIX = "sbatch: error: Batch job submission failed: "
CONTROLLER_DOWN = "Unable to contact slurm controller (connect failure)"
MESSAGES = {
    "sbatch": {"fail": (FAIL_PREFIX + CONTROLLER_DOWN, 1),
               "lose_id": (FAIL_PREFIX + "Socket timed out on send/recv operation", 1)},
    "squeue": {"fail": ("slurm_load_jobs error: " + CONTROLLER_DOWN, 1)},
    "scancel": {"fail": ("scancel: error: Kill job error: " + CONTROLLER_DOWN, 8)},
    "scontrol": {"fail": ("slurm_load_ctl_conf error: " + CONTROLLER_DOWN, 1)},
    "sinfo": {"fail": ("slurm_load_partitions: " + CONTROLLER_DOWN, 1)},
}


def parse_array(spec: str, max_array_size: int) -> tuple[list[int], int | None]:
    """'0-99%4', '3,7,12', '1-9:2' -> (sorted task ids, throttle)."""
    bad = UsageError(FAIL_PREFIX + "Invalid job array specification")
    throttle = None
    if "%" in spec:
        spec, limit = spec.split("%", 1)
        if not limit.isdigit():
            raise bad
        throttle = int(limit) or None
    tasks: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise bad
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        step = int(m.group(3)) if m.group(3) else 1
        if last < first or step < 1 or last > max_array_size - 1:
            raise bad
        tasks.update(range(first, last + 1, step))
    return sorted(tasks), throttle


def parse_time(text: str) -> float | None:
    """SLURM time formats -> seconds (None = unlimited)."""
    if text.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(x) for x in text.split(":")] + [0, 0]
        h, m, s = parts[:3]
    else:
        parts = [int(x) for x in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return float(days * 86400 + h * 3600 + m * 60 + s)


def _export_env(spec: str | None) -> dict[str, str]:
    if not spec or spec.upper() == "ALL":
        return dict(os.environ)
    items = spec.split(",")
    env = dict(os.environ) if items[0].upper() == "ALL" else _cmd.env_of_job_minimal(os.environ)
    for item in items:
        if item.upper() in ("ALL", "NONE"):
            continue
        name, _, value = item.partition("=")
        if _:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _sbatch_unknown(arg: str) -> str:
    """SLURM 22.05's getopt messages."""
    first = f"sbatch: unrecognized option '{arg}'" if arg.startswith("--") else \
        f"sbatch: invalid option -- '{arg[1:2]}'"
    return first + '\nTry "sbatch --help" for more information'


def sbatch(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, SBATCH_OPTS, "sbatch", unknown=_sbatch_unknown, unknown_rc=255)
    conf = state["cluster"]
    if opts.get("wrap") is not None:
        cmd = ["/bin/sh", "-c", opts["wrap"]]
    elif pos:
        if not os.path.isfile(pos[0]):
            raise UsageError(f"sbatch: error: Unable to open file {pos[0]}")
    else:
        raise UsageError("sbatch: error: Batch script is empty!")
    tasks: list[int | None] = [None]
    throttle = None
    if opts.get("array") is not None:
        tasks, throttle = parse_array(opts["array"], int(conf["max_array_size"]))
    if opts.get("open_mode") not in (None, "append", "truncate"):
        raise UsageError(f"sbatch: error: Invalid --open-mode argument: {opts['open_mode']}")
    try:
        limit = parse_time(opts["time"]) if opts.get("time") else None
    except ValueError:
        raise UsageError("sbatch: error: Invalid --time specification") from None
    who = _cmd.user()
    cap = conf.get("max_jobs_per_user")
    if cap is not None and _state.active_count(state, who) + len(tasks) > int(cap):
        raise UsageError(FAIL_PREFIX + "Job violates accounting/QOS policy (job submit "
                         "limit, user's size and/or time limits)")
    if len(state["elements"]) + len(tasks) > int(conf["max_job_count"]):
        raise UsageError(FAIL_PREFIX + "Resource temporarily unavailable")
    jid = _state.allocate_id(state)
    script = None
    if opts.get("wrap") is None:
        script = _state.copy_script(state_path_of(state), jid, pos[0])
        cmd = _state.script_argv(script, pos[1:], None)
    cwd = os.getcwd()
    workdir = os.path.abspath(opts.get("chdir") or cwd)
    spool = _state.write_spool(state_path_of(state), jid, {
        "argv": cmd, "env": _export_env(opts.get("export"))})
    name = opts.get("name") or ("wrap" if opts.get("wrap") is not None
                                else os.path.basename(pos[0]))
    default_out = "slurm-%A_%a.out" if tasks != [None] else "slurm-%j.out"
    job = {"name": name, "user": who, "spool": spool, "script": script, "cwd": workdir,
           "output": opts.get("output") or default_out, "error": opts.get("error"),
           "append": opts.get("open_mode") == "append", "throttle": throttle,
           "time_limit": limit, "partition": opts.get("partition") or "debug",
           "account": opts.get("account") or "", "qos": opts.get("qos") or "normal",
           "cpus": opts.get("cpus") or "1", "command": opts.get("wrap") or " ".join(pos),
           "ntasks_array": 0 if tasks == [None] else len(tasks),
           "array_max": max(tasks) if tasks != [None] else None,
           "array_min": min(tasks) if tasks != [None] else None}
    _state.add_job(state, jid, job, tasks, bool(opts.get("hold")), now)
    state["submissions"].append({"time": now, "command": "sbatch", "argv": argv,
                                 "job_id": jid, "tasks": tasks if tasks != [None] else None,
                                 "name": name})
    text = str(jid) if opts.get("parsable") else f"Submitted batch job {jid}"
    return Result(out=[] if opts.get("quiet") else [text], submitted=jid)


def state_path_of(state: dict[str, Any]) -> str:
    return _cmd.CURRENT_PATH


def expand_pattern(pattern: str, job: dict[str, Any], elem: dict[str, Any],
                   eid: int, host: str) -> str:
    """Substitute %A %a %j %x %u %N %% in an --output path (relative to the workdir)."""
    task = elem["task"]
    subs = {"A": str(job["id"]), "a": str(task) if task is not None else "4294967294",
            "j": str(eid), "x": job["name"], "u": job["user"], "N": host, "%": "%",
            "J": str(eid), "s": "batch", "t": "0", "n": "0"}
    out = re.sub(r"%(\d*)([AajxuN%Jstn])",
                 lambda m: subs[m.group(2)].zfill(int(m.group(1) or 0)), pattern)
    return os.path.join(job["cwd"], out)


def launch_info(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any]) -> dict:
    """Environment, output paths and limits of one starting element."""
    task = elem["task"]
    eid = job["id"] if task is None else _state.allocate_id(state)
    host = state["cluster"]["hostname"]
    env = {"SLURM_JOB_ID": str(eid), "SLURM_JOBID": str(eid), "SLURM_JOB_NAME": job["name"],
           "SLURM_SUBMIT_DIR": job["cwd"], "SLURM_JOB_PARTITION": job["partition"],
           "SLURM_CPUS_PER_TASK": str(job["cpus"]), "SLURM_RESTART_COUNT": "0",
           "SLURM_CLUSTER_NAME": "dummy", "SLURMD_NODENAME": host, "SLURM_JOB_USER": job["user"],
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": host}
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job["id"]), SLURM_ARRAY_TASK_ID=str(task),
                   SLURM_ARRAY_TASK_COUNT=str(job["ntasks_array"]),
                   SLURM_ARRAY_TASK_MAX=str(job["array_max"]),
                   SLURM_ARRAY_TASK_MIN=str(job["array_min"]), SLURM_ARRAY_TASK_STEP="1")
    out = expand_pattern(job["output"], job, elem, eid, host)
    err = expand_pattern(job["error"], job, elem, eid, host) if job.get("error") else None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    return {"eid": eid, "env": env, "cwd": job["cwd"], "stdout": out, "stderr": err,
            "append": job["append"], "time_limit": job.get("time_limit"),
            "on_error": "fail",
            "timeout_message": f"slurmstepd: error: *** JOB {eid} ON {host} CANCELLED AT "
                               f"{stamp} DUE TO TIME LIMIT ***"}


def memory_kill(job: dict[str, Any]) -> dict[str, Any]:
    """How an element over its --mem ends (inject_oom): the cgroup's OOM kill."""
    return {"state": "OUT_OF_MEMORY", "exit_code": 0, "signal": 9, "reason": "OutOfMemory"}


def _ids(spec: str) -> list[str]:
    return [x for x in spec.split(",") if x]


def scancel(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {
        "--name": O("name"), "-n": O("name"), "--user": O("user"), "-u": O("user"),
        "--jobname": O("name"), "--quiet": O("quiet", False), "-Q": O("quiet", False),
        "--verbose": O("verbose", False), "-v": O("verbose", False),
        "--me": O("me", False), "--state": O("state"), "-t": O("state"),
        "--signal": O("signal"), "-s": O("signal")}, "scancel", stop_at_positional=False)
    if opts.get("signal"):
        raise UsageError("scancel: error: --signal is not supported by dummy_queues")
    targets = [t for p in pos for t in _ids(p)]
    if not targets and not (opts.get("name") or opts.get("user") or opts.get("me")):
        raise UsageError("scancel: error: No job identification provided")
    users = set(_ids(opts["user"])) if opts.get("user") else None
    if opts.get("me"):
        users = {_cmd.user()}
    names = set(_ids(opts["name"])) if opts.get("name") else None
    wanted_state = opts.get("state", "").upper() or None
    for key, elem in list(state["elements"].items()):
        if elem["state"] not in _state.ACTIVE:
            continue
        job = state["jobs"][str(elem["job"])]
        if users is not None and job["user"] not in users:
            continue
        if names is not None and job["name"] not in names:
            continue
        if wanted_state and not _state_matches(elem, wanted_state):
            continue
        if targets:
            ids = {str(elem["job"]), str(elem.get("eid"))}
            if elem["task"] is not None:
                ids.add(f"{elem['job']}_{elem['task']}")
            hit = [t for t in targets if t in ids]
            if not hit:
                continue
            single = all("_" in t for t in hit)  # element-scancel of a pending task: it vanishes
        else:
            single = False
        if elem["state"] == "RUNNING":
            _state.kill_group(elem["pid"], elem["pstart"])
            _state.finish(elem, "CANCELLED", now, exit_code=0, signal=15, reason=None)
        elif single:
            del state["elements"][key]
        else:
            _state.finish(elem, "CANCELLED", now, exit_code=0, signal=0, reason=None)
    return Result()


def _state_matches(elem: dict[str, Any], wanted: str) -> bool:
    from ._slurm_squeue import display_state
    long, short = display_state(elem)
    return wanted in (long, short)


def scontrol(argv: list[str], state: dict[str, Any], now: float) -> Result:
    if argv[:2] != ["show", "config"]:
        raise UsageError(f"scontrol: error: dummy_queues supports only 'scontrol show config'"
                         f", not: {' '.join(argv)}", rc=1)
    conf = state["cluster"]
    values = [
        ("AccountingStorageType", "accounting_storage/none"),
        ("AuthType", "auth/munge"), ("ClusterName", "dummy"),
        ("JobCompType", "jobcomp/filetxt"), ("KillWait", f"{conf['kill_wait']:g} sec"),
        ("MaxArraySize", str(conf["max_array_size"])),
        ("MaxJobCount", str(conf["max_job_count"])),
        ("MinJobAge", f"{conf['min_job_age']:g} sec"),
        ("ProctrackType", "proctrack/linuxproc"),
        ("SchedulerParameters", "batch_sched_delay=0"), ("SchedulerType", "sched/backfill"),
        ("SelectType", "select/cons_tres"), ("SlurmctldHost[0]", f"{conf['hostname']}"),
        ("SLURM_CONF", "/etc/slurm/slurm.conf"), ("SLURM_VERSION", "22.05.8"),
        ("TaskPlugin", "task/none")]
    out = [f"Configuration data as of {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(now))}"]
    out += [f"{k:<23} = {v}" for k, v in values]
    return Result(out=out)


def sinfo(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"--noheader": O("noheader", False),
                                  "-h": O("noheader", False), "--format": O("format"),
                                  "-o": O("format"), "--Node": O("node", False),
                                  "-N": O("node", False), "--partition": O("partition"),
                                  "-p": O("partition")}, "sinfo", stop_at_positional=False)
    if pos:
        raise UsageError(f"sinfo: error: Unrecognized option: {pos[0]}")
    if opts.get("partition") and "debug" not in opts["partition"].split(","):
        return Result(out=[] if opts.get("noheader") else ["PARTITION AVAIL TIMELIMIT NODES STATE NODELIST"])
    slots = int(state["cluster"]["slots"])
    used, _ = _state.running_counts(state)
    used = min(used, slots)
    fields = {"C": ("CPUS(A/I/O/T)", f"{used}/{slots - used}/0/{slots}"),
              "P": ("PARTITION", "debug*"), "a": ("AVAIL", "up"), "D": ("NODES", "1"),
              "t": ("STATE", "mix" if 0 < used < slots else ("alloc" if used else "idle")),
              "N": ("NODELIST", state["cluster"]["hostname"]), "l": ("TIMELIMIT", "infinite")}
    fmt = opts.get("format") or "%P %a %l %D %t %N"
    try:
        head = re.sub(r"%[-.]?\d*([A-Za-z])", lambda m: fields[m.group(1)][0], fmt)
        line = re.sub(r"%[-.]?\d*([A-Za-z])", lambda m: fields[m.group(1)][1], fmt)
    except KeyError as exc:
        raise UsageError(f"sinfo: error: Invalid node format specification: {exc}") from None
    return Result(out=[line] if opts.get("noheader") else [head, line])


def squeue(argv: list[str], state: dict[str, Any], now: float) -> Result:
    from ._slurm_squeue import squeue as impl
    return impl(argv, state, now)


def main() -> None:
    commands = {name: (lambda n=name, f=func: _cmd.run(n, f, MESSAGES[n]))
                for name, func in (("sbatch", sbatch), ("squeue", squeue),
                                   ("scancel", scancel), ("scontrol", scontrol),
                                   ("sinfo", sinfo))}
    _cmd.dispatch(commands)


if __name__ == "__main__":
    main()
    sys.exit(0)
