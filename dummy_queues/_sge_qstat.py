"""The fake Grid Engine qstat: plain, -xml and -j output as SGE 8.1.9 prints them."""
from __future__ import annotations

import time
from typing import Any
from xml.sax.saxutils import escape

from . import _cmd
from ._cmd import Option as O, Result, UsageError

XMLNS = "http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd"
HEADER = ("job-ID  prior   name       user         state submit/start at     queue          "
          "                slots ja-task-ID ")
WORD = {"PENDING": "qw", "HELD": "hqw", "ERROR": "Eqw", "RUNNING": "r"}


def task_ranges(ids: list[int], step: int) -> str:
    """SGE's range list: runs of 3+ as 'a-b:step', shorter runs as single ids."""
    ids = sorted(ids)
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] - ids[j] == step:
            j += 1
        if j - i >= 2:
            parts.append(f"{ids[i]}-{ids[j]}:{step}")
        else:
            parts.extend(str(x) for x in ids[i:j + 1])
        i = j + 1
    return ",".join(parts)


def records(state: dict[str, Any], users: set[str] | None) -> list[dict[str, Any]]:
    """One record per qstat line: running/Eqw tasks alone, qw and hqw tasks grouped."""
    running, pending = [], []
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for elem in state["elements"].values():
        word = WORD.get(elem["state"])
        job = state["jobs"][str(elem["job"])]
        if word is None or (users is not None and job["user"] not in users):
            continue
        rec = {"job": job, "state": word, "tasks": elem["task"], "elem": elem}
        if word == "r":
            running.append(rec)
        elif word == "Eqw" or elem["task"] is None:
            pending.append(rec)
        else:
            group = groups.get((job["id"], word))
            if group is None:
                group = groups[(job["id"], word)] = dict(rec, tasks=[])
                pending.append(group)
            group["tasks"].append(elem["task"])
    for rec in pending:
        if isinstance(rec["tasks"], list):
            rec["tasks"] = task_ranges(rec["tasks"], rec["job"]["step"] or 1)
    pending.sort(key=lambda r: (r["state"] == "hqw", r["job"]["id"]))
    return running + pending


def _tasks_text(rec: dict[str, Any]) -> str:
    return "" if rec["tasks"] is None else str(rec["tasks"])


def plain(recs: list[dict[str, Any]]) -> list[str]:
    if not recs:
        return []  # real qstat prints nothing at all, not even the header
    out = [HEADER, "-" * 113]
    for rec in recs:
        job = rec["job"]
        prio = "0.00000" if rec["state"] == "hqw" else "0.50000"
        when = rec["elem"]["start"] if rec["state"] == "r" else job["submit_time"]
        stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(when))
        queue = f"{job['queue']}@vm" if rec["state"] == "r" else ""
        out.append(f"{job['id']:>7} {prio} {job['name'][:10]:<10} {job['user'][:12]:<12} "
                   f"{rec['state']:<5} {stamp} {queue[:30]:<30} {1:>5} "
                   f"{_tasks_text(rec):<7}")
    return out


def xml(recs: list[dict[str, Any]]) -> list[str]:
    def block(rec: dict[str, Any], running: bool) -> list[str]:
        job = rec["job"]
        when = rec["elem"]["start"] if running else job["submit_time"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))
        lines = [f'    <job_list state="{"running" if running else "pending"}">',
                 f"      <JB_job_number>{job['id']}</JB_job_number>",
                 f"      <JAT_prio>{'0.00000' if rec['state'] == 'hqw' else '0.50000'}"
                 "</JAT_prio>",
                 f"      <JB_name>{escape(job['name'])}</JB_name>",
                 f"      <JB_owner>{escape(job['user'])}</JB_owner>",
                 f"      <state>{rec['state']}</state>",
                 f"      <{'JAT_start_time' if running else 'JB_submission_time'}>{stamp}"
                 f"</{'JAT_start_time' if running else 'JB_submission_time'}>",
                 f"      <queue_name>{escape(job['queue']) + '@vm' if running else ''}"
                 "</queue_name>",
                 "      <slots>1</slots>"]
        if rec["tasks"] is not None:
            lines.append(f"      <tasks>{rec['tasks']}</tasks>")
        return lines + ["    </job_list>"]

    out = ["<?xml version='1.0'?>", f'<job_info  xmlns:xsd="{XMLNS}">', "  <queue_info>"]
    for rec in recs:
        if rec["state"] == "r":
            out += block(rec, True)
    out += ["  </queue_info>", "  <job_info>"]
    for rec in recs:
        if rec["state"] != "r":
            out += block(rec, False)
    return out + ["  </job_info>", "</job_info>"]


def detail(state: dict[str, Any], jid: str) -> list[str] | None:
    """qstat -j ID: the usual key/value block, with `error reason` lines for Eqw."""
    job = state["jobs"].get(jid)
    elems = [e for e in state["elements"].values()
             if str(e["job"]) == jid and e["state"] in WORD]
    if job is None or not elems:
        return None
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(job["submit_time"]))
    rows = [("job_number", jid), ("exec_file", f"job_scripts/{jid}"),
            ("submission_time", stamp), ("owner", job["user"]),
            ("sge_o_home", job["home"]), ("sge_o_log_name", job["user"]),
            ("sge_o_host", state["cluster"]["hostname"]), ("account", "sge"),
            ("cwd", job["cwd"]), ("merge", "y" if job["join"] else "n"),
            ("hard resource_list", ",".join(job["resources"]) or None),
            ("mail_list", f"{job['user']}@vm"), ("notify", "FALSE"), ("job_name", job["name"]),
            ("stdout_path_list", f"NONE:NONE:{job['output']}" if job["output"] else None),
            ("jobshare", "0"), ("hard_queue_list", job["queue"]),
            ("shell_list", f"NONE:{job['shell']}"), ("env_list", ""),
            ("script_file", job["command"].split(" ")[0]),
            ("project", job.get("project"))]
    if job["first"] is not None:
        rows.append(("job-array tasks", f"{job['first']}-{job['last']}:{job['step']}"))
    out = ["=" * 62] + [f"{k + ':':<28}{v}" for k, v in rows if v is not None]
    for elem in elems:
        if elem["state"] == "ERROR":
            when = time.strftime("%m/%d/%Y %H:%M:%S",
                                 time.localtime(elem.get("error_time") or time.time()))
            task = elem["task"] if elem["task"] is not None else 1
            out.append(f"{'error reason' + f'{task:>5}:':<28}{when} [0:0]: "
                       f"{elem.get('reason') or 'error'}")
    out.append(f"{'scheduling info:':<28}(Collecting of scheduler job information is "
               f"turned off)")
    return out


def qstat(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-xml": O("xml", False), "-u": O("user"), "-j": O("job"),
                                  "-s": O("states"), "-r": O("full", False), "-g": O("summary")},
                           "qstat", stop_at_positional=False,
                           unknown=lambda a: f"error: ERROR! invalid option argument \"{a}\"")
    if pos:
        raise UsageError(f'error: ERROR! invalid option argument "{pos[0]}"')
    if opts.get("summary") is not None:
        if opts["summary"] != "c":
            raise UsageError(f'error: ERROR! invalid option argument "-g {opts["summary"]}"')
        return Result(out=cluster_queue_summary(state))
    if opts.get("job"):
        out: list[str] = []
        missing = []
        for jid in opts["job"].split(","):
            block = detail(state, jid.split(".")[0])
            if block is None:
                missing.append(jid)
            else:
                out += block
        if missing:
            return Result(rc=1, out=out, err=[f"Following jobs do not exist: "
                                              f"{', '.join(missing)}"])
        return Result(out=out)
    user = opts.get("user")
    users = None if user == "*" else set((user or _cmd.user()).split(","))
    recs = records(state, users)
    return Result(out=xml(recs) if opts.get("xml") else plain(recs))


def cluster_queue_summary(state: dict[str, Any]) -> list[str]:
    """``qstat -g c``: one line for all.q with its used and total slots."""
    total = int(state["cluster"]["slots"])
    used = sum(1 for e in state["elements"].values() if e["state"] == "RUNNING")
    return ["CLUSTER QUEUE                   CQLOAD   USED    RES  AVAIL  TOTAL aoACDS  cdsuE  ",
            "-" * 80,
            f"{'all.q':<30}{0.0:>8.2f}{used:>7}{0:>7}{total - used:>7}{total:>7}{0:>7}{0:>7} "]
