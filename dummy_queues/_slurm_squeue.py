"""The fake squeue: filters, states and reasons as SLURM 22.05 prints them."""
from __future__ import annotations

import re
import time
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError

SHORT = {"PENDING": "PD", "RUNNING": "R", "COMPLETING": "CG", "COMPLETED": "CD",
         "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO", "OUT_OF_MEMORY": "OOM",
         "NODE_FAIL": "NF", "SUSPENDED": "S", "CONFIGURING": "CF"}
DEFAULT_STATES = {"PENDING", "RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING"}
HEADERS = {"i": "JOBID", "A": "JOBID", "F": "ARRAY_JOB_ID", "K": "ARRAY_TASK_ID", "j": "NAME",
           "T": "STATE", "t": "ST", "r": "REASON", "R": "NODELIST(REASON)", "u": "USER",
           "P": "PARTITION", "M": "TIME", "l": "TIME_LIMIT", "D": "NODES", "C": "CPUS",
           "N": "NODELIST", "V": "SUBMIT_TIME", "S": "START_TIME", "e": "END_TIME",
           "a": "ACCOUNT", "q": "QOS", "Z": "WORK_DIR", "o": "COMMAND", "Q": "PRIORITY",
           "x": "EXC_NODES", "B": "EXEC_HOST"}
DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
OPTS = {"--noheader": O("noheader", False), "-h": O("noheader", False),
        "--array": O("array", False), "-r": O("array", False),
        "--states": O("states"), "-t": O("states"), "--user": O("user"), "-u": O("user"),
        "--name": O("name"), "-n": O("name"), "--format": O("format"), "-o": O("format"),
        "--jobs": O("jobs"), "-j": O("jobs"), "--me": O("me", False),
        "--partition": O("partition"), "-p": O("partition"), "--all": O("all", False),
        "-a": O("all", False), "--long": O("long", False), "-l": O("long", False)}


def display_state(elem: dict[str, Any]) -> tuple[str, str]:
    word = elem["state"]
    long = {"HELD": "PENDING", "ERROR": "PENDING", "VANISHED": "NODE_FAIL"}.get(word, word)
    return long, SHORT[long]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "UNLIMITED"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else text


def _stamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "N/A"


def _reason(state: dict[str, Any], elem: dict[str, Any], free: int,
            per_job: dict[int, int]) -> str:
    word = elem["state"]
    if word == "HELD":
        return "JobHeldUser"
    if word == "ERROR":
        return elem.get("reason") or "launch failed requeued held"
    if word == "PENDING":
        throttle = state["jobs"][str(elem["job"])].get("throttle")
        if throttle and per_job.get(elem["job"], 0) >= throttle:
            return "JobArrayTaskLimit"
        return "Resources" if free <= 0 else "None"
    return elem.get("reason") or "None"


def _row(state: dict[str, Any], elem: dict[str, Any], now: float, free: int,
         per_job: dict[int, int], collapsed: str | None = None) -> dict[str, str]:
    job = state["jobs"][str(elem["job"])]
    long, short = display_state(elem)
    task = elem["task"]
    started = elem["start"] is not None and long != "PENDING"
    eid = elem.get("eid") if started and elem.get("eid") else elem["job"]
    if collapsed is not None:
        ident, ktext = f"{elem['job']}_[{collapsed}]", collapsed
    elif task is None:
        ident, ktext = str(elem["job"]), "N/A"
    else:
        ident, ktext = f"{elem['job']}_{task}", str(task)
    used = (elem["end"] or now) - elem["start"] if elem["start"] else 0.0
    host = state["cluster"]["hostname"] if long in ("RUNNING", "COMPLETING") else ""
    reason = _reason(state, elem, free, per_job)
    return {"i": ident, "A": str(eid), "F": str(elem["job"]), "K": ktext, "j": job["name"],
            "T": long, "t": short, "r": reason,
            "R": host if long == "RUNNING" else f"({reason})", "u": job["user"],
            "P": job["partition"], "M": _duration(used), "l": _duration(job["time_limit"]),
            "D": "1", "C": str(job["cpus"]), "N": host, "V": _stamp(job["submit_time"]),
            "S": _stamp(elem["start"]), "e": _stamp(elem["end"]), "a": job["account"],
            "q": job["qos"], "Z": job["cwd"], "o": job["command"], "Q": "4294901759",
            "x": "", "B": host or "n/a"}


def render(fmt: str, values: dict[str, str]) -> str:
    """Apply a squeue --format string (%[.]size type; '.' = right-justify)."""
    def one(m: re.Match) -> str:
        dot, size, kind = m.group(1), m.group(2), m.group(3)
        if kind == "%":
            return "%"
        text = values[kind]
        if size:
            n = int(size)
            text = text[:n].rjust(n) if dot == "." else text[:n].ljust(n)
        return text
    return re.sub(r"%([.-]?)(\d*)([A-Za-z%])", one, fmt)


def _check_format(fmt: str) -> None:
    for kind in re.findall(r"%[.-]?\d*([A-Za-z%])", fmt):
        if kind != "%" and kind not in HEADERS:
            raise UsageError(f"squeue: error: Invalid job format specification: {kind}")


def _states_filter(text: str | None) -> set[str] | None:
    if text is None:
        return DEFAULT_STATES
    wanted: set[str] = set()
    for item in text.upper().split(","):
        if item == "ALL":
            return None
        long = {v: k for k, v in SHORT.items()}.get(item, item)
        if long not in SHORT:
            raise UsageError(f"squeue: error: Invalid job state specified: {item}")
        wanted.add(long)
    return wanted


def squeue(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, OPTS, "squeue", stop_at_positional=False)
    if pos:
        raise UsageError(f"squeue: error: Unrecognized option: {pos[0]}\n"
                         f"Usage: squeue [-A account] [--clusters names] [-i seconds] ...")
    fmt = opts.get("format") or DEFAULT_FORMAT
    _check_format(fmt)
    states = _states_filter(opts.get("states"))
    users = set(opts["user"].split(",")) if opts.get("user") else None
    if opts.get("me"):
        users = {_cmd.user()}
    names = set(opts["name"].split(",")) if opts.get("name") else None
    jobs = [j for j in opts["jobs"].split(",") if j] if opts.get("jobs") else None
    parts = set(opts["partition"].split(",")) if opts.get("partition") else None
    total, per_job = _state.running_counts(state)
    free = int(state["cluster"]["slots"]) - total
    if jobs is not None:
        known = {str(e["job"]) for e in state["elements"].values()}
        known |= {k for k in state["elements"]} | {str(e.get("eid")) for e in
                                                   state["elements"].values()}
        if not any(j in known for j in jobs):
            raise UsageError("slurm_load_jobs error: Invalid job id specified")
    selected = []
    for key, elem in state["elements"].items():
        job = state["jobs"][str(elem["job"])]
        long, _ = display_state(elem)
        if states is not None and long not in states:
            continue
        if users is not None and job["user"] not in users:
            continue
        if names is not None and job["name"] not in names:
            continue
        if parts is not None and job["partition"] not in parts:
            continue
        if jobs is not None and not ({str(elem["job"]), key, str(elem.get("eid"))} & set(jobs)):
            continue
        selected.append(elem)
    rows = []
    if opts.get("array"):
        rows = [_row(state, e, now, free, per_job) for e in selected]
    else:
        # Without -r, SLURM shows the array's still-pending tasks as one record.
        groups: dict[int, list[dict[str, Any]]] = {}
        for elem in selected:
            if elem["task"] is not None and elem["state"] == "PENDING":
                groups.setdefault(elem["job"], []).append(elem)
        done: set[int] = set()
        for elem in selected:
            group = groups.get(elem["job"]) if elem["state"] == "PENDING" else None
            if not group or len(group) == 1:
                rows.append(_row(state, elem, now, free, per_job))
            elif elem["job"] not in done:
                done.add(elem["job"])
                text = _cmd.compress([e["task"] for e in group])
                throttle = state["jobs"][str(elem["job"])].get("throttle")
                text += f"%{throttle}" if throttle else ""
                rows.append(_row(state, group[0], now, free, per_job, collapsed=text))
    out = [] if opts.get("noheader") else [render(fmt, HEADERS)]
    out += [render(fmt, r) for r in rows]
    return Result(out=out)
