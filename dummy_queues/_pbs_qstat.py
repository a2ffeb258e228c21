"""The fake PBS Pro ``qstat [-t] -f -F json [-x] [ID...]`` and ``qselect`` (from the PBS Pro
docs and OpenPBS's qstat.c and qselect.c)."""
from __future__ import annotations

import json
import time
from typing import Any

from . import _cmd, _state
from ._cmd import Option as O, Result, UsageError
from .pbs import job_ident, parse_ident, server

LETTER = {"PENDING": "Q", "HELD": "H", "ERROR": "H", "RUNNING": "R"}


def _ctime(t: float | None) -> str:
    return time.ctime(t or time.time())


def _letter(elem: dict[str, Any], array: bool) -> str:
    if elem["state"] in LETTER:
        return LETTER[elem["state"]]
    return "X" if array else "F"  # finished subjobs are X (expired), jobs F


def _base(state: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    host = state["cluster"]["hostname"]
    res = {"ncpus": 1, "nodect": 1, "place": "pack", "select": "1:ncpus=1"}
    res.update(job["resources"])
    rec = {"Job_Name": job["name"], "Job_Owner": f"{job['user']}@{host}",
           "queue": job["queue"], "server": server(state), "Checkpoint": "u",
           "ctime": _ctime(job["submit_time"]),
           "Error_Path": f"{host}:{job['error'] or job['submit_dir']}",
           "Join_Path": job["join"], "Keep_Files": "n", "Mail_Points": "a",
           "Output_Path": f"{host}:{job['output'] or job['submit_dir']}", "Priority": 0,
           "qtime": _ctime(job["submit_time"]), "Rerunable": "True", "Resource_List": res,
           "euser": job["user"], "project": job.get("project") or "_pbs_project_default",
           "Submit_arguments": " ".join(job["argv"]), "Submit_Host": host,
           "Variable_List": job["env_vars"]}
    if job.get("account"):
        rec["Account_Name"] = job["account"]
    return rec


def _elem_record(state: dict[str, Any], job: dict[str, Any], elem: dict[str, Any],
                 now: float) -> dict[str, Any]:
    rec = _base(state, job)
    letter = _letter(elem, job["array"])
    held = elem["state"] in ("HELD", "ERROR")
    rec.update(job_state=letter, Hold_Types=("s" if elem["state"] == "ERROR" else "u")
               if held else "n", mtime=_ctime(elem["end"] or elem["start"] or job["submit_time"]))
    if elem["state"] == "ERROR":
        rec["comment"] = "job held, too many failed attempts to run"
    if elem["start"]:
        rec.update(stime=_ctime(elem["start"]), exec_host=f"{state['cluster']['hostname']}/0",
                   exec_vnode=f"({state['cluster']['hostname']}:ncpus=1)", run_count=1)
        used = int((elem["end"] or now) - elem["start"])
        rec["resources_used"] = {"cput": "00:00:00", "ncpus": 1,
                                 "walltime": time.strftime("%H:%M:%S", time.gmtime(used))}
    if elem["state"] in _state.FINISHED:
        code = elem.get("exit_code")
        if elem["state"] == "TIMEOUT":
            code = -29  # JOB_EXEC_KILL_WALLTIME
        elif elem["state"] == "OUT_OF_MEMORY":
            code = -27  # JOB_EXEC_KILL_MEM
        elif elem.get("signal") and elem["state"] != "CANCELLED":
            code = 256 + elem["signal"]
        if code is not None and elem["start"]:
            rec["Exit_status"] = code
    if job["array"]:
        rec.update(array_id=job_ident(state, job["id"], None, True), array_index=elem["task"])
    return rec


def _parent_record(state: dict[str, Any], job: dict[str, Any],
                   elems: list[dict[str, Any]]) -> dict[str, Any]:
    rec = _base(state, job)
    counts = {"Queued": 0, "Running": 0, "Exiting": 0, "Expired": 0}
    for elem in elems:
        if elem["state"] == "RUNNING":
            counts["Running"] += 1
        elif elem["state"] in _state.FINISHED:
            counts["Expired"] += 1
        else:
            counts["Queued"] += 1
    queued = [e["task"] for e in elems if e["state"] in ("PENDING", "HELD", "ERROR")]
    if counts["Expired"] == len(elems):
        letter = "F"
    elif counts["Running"] or counts["Expired"]:
        letter = "B"
    else:
        letter = "Q"
    submitted = _cmd.compress(sorted(e["task"] for e in elems), job["step"],
                              fmt="{a}-{b}:{s}" if job["step"] > 1 else "{a}-{b}")
    remaining = _cmd.compress(queued, job["step"],
                              fmt="{a}-{b}:{s}" if job["step"] > 1 else "{a}-{b}")
    rec.update(job_state=letter, Hold_Types="n", array="True",
               array_indices_submitted=submitted, array_indices_remaining=remaining or "-",
               array_state_count=" ".join(f"{k}:{v}" for k, v in counts.items()) + " ",
               mtime=_ctime(job["submit_time"]))
    if job.get("throttle"):
        rec["max_run_subjobs"] = job["throttle"]
    return rec


# OpenPBS's usage text: -u belongs to the alternate (tabular) displays, not to -f / -F json
# (given both, the real qstat prints the table instead of JSON; the fake refuses them).
QSTAT_USAGE = """usage:
qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]
qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G|-M] [-1] [-w]
\t[ job_identifier... | destination... ]
qstat -Q [-f] [-F format] [-D delim] [ destination... ]
qstat -q [-G|-M] [ destination... ]
qstat -B [-f] [-F format] [-D delim] [ server_name... ]
qstat --version"""
QSELECT_USAGE = """usage: qselect [-a [op]date_time] [-A account_string] [-c [op]interval]
\t[-h hold_list] [-H] [-J] [-l resource_list] [-N name] [-p [op]priority]
\t[-q destination] [-r y|n] [-s states] [-t subopt[op]date_time] [-T] [-P project_name]
\t[-x] [-u user_name]
       qselect --version"""


def qstat(argv: list[str], state: dict[str, Any], now: float) -> Result:
    opts, pos = _cmd.parse(argv, {"-t": O("subjobs", False), "-f": O("full", False),
                                  "-F": O("format"), "-x": O("history", False),
                                  "-u": O("user"), "-J": O("arrays_only", False)},
                           "qstat", stop_at_positional=False,
                           unknown=lambda a: f"qstat: invalid option -- '{a[1:2]}'\n{QSTAT_USAGE}",
                           unknown_rc=2)
    if opts.get("user"):
        raise UsageError(QSTAT_USAGE, rc=2)
    if not opts.get("full") or (opts.get("format") or "").lower() != "json":
        raise UsageError("qstat: dummy_queues supports only 'qstat [-t] [-x] -f -F json "
                         "[id...]'", rc=2)
    history = bool(opts.get("history"))
    by_job: dict[str, list[dict[str, Any]]] = {}
    for elem in state["elements"].values():
        by_job.setdefault(str(elem["job"]), []).append(elem)
    wanted: list[tuple[str, str | None]] = []
    res = Result()
    for text in pos:
        try:
            jid, index = parse_ident(text)
        except UsageError as exc:
            res.err.append(str(exc))
            res.rc = 1
            continue
        full = text if "." in text else f"{text}.{server(state)}"
        elems = [e for e in by_job.get(jid, [])
                 if index in (None, "") or str(e["task"]) == index]
        if not elems:
            res.err.append(f"qstat: Unknown Job Id {full}")
            res.rc = 153
        elif not history and all(e["state"] in _state.FINISHED for e in elems):
            res.err.append(f"qstat: {full} Job has finished, use -x or -H to obtain "
                           "historical job information")
            res.rc = 35
        else:
            wanted.append((jid, index))
    if not pos:
        wanted = [(jid, None) for jid in by_job]
    jobs_out: dict[str, Any] = {}
    for jid, index in wanted:
        job = state["jobs"][jid]
        elems = by_job[jid]
        if job["array"] and index in (None, ""):
            parent = _parent_record(state, job, elems)
            if history or parent["job_state"] != "F":
                jobs_out[job_ident(state, job["id"], None, True)] = parent
            if not opts.get("subjobs"):
                continue
        for elem in elems:
            if index not in (None, "") and str(elem["task"]) != index:
                continue
            if elem["state"] == "VANISHED" or (not history and elem["state"] in _state.FINISHED):
                continue
            jobs_out[job_ident(state, job["id"], elem["task"], job["array"])] = \
                _elem_record(state, job, elem, now)
    doc: dict[str, Any] = {"timestamp": int(now), "pbs_version": "2022.1.3",
                           "pbs_server": server(state)}
    if jobs_out:  # PBS omits "Jobs" entirely when there is nothing to show
        doc["Jobs"] = jobs_out
    res.out = json.dumps(doc, indent=4).splitlines()
    return res


def qselect(argv: list[str], state: dict[str, Any], now: float) -> Result:
    """``qselect [-N name] [-u users] [-x] [-J] [-T]``: the ids of the selected jobs, one a
    line (arrays as ``N[].server``; their sub-jobs only with -T; finished jobs only with -x)."""
    opts, pos = _cmd.parse(argv, {"-N": O("name"), "-u": O("user"), "-x": O("history", False),
                                  "-J": O("arrays_only", False), "-T": O("subjobs", False)},
                           "qselect", stop_at_positional=False,
                           unknown_rc=2, unknown=lambda a: f"qselect: invalid option -- "
                                                           f"'{a[1:2]}'\n{QSELECT_USAGE}")
    if pos:
        raise UsageError(QSELECT_USAGE, rc=2)
    users = set(opts["user"].split(",")) if opts.get("user") else None
    by_job: dict[str, list[dict[str, Any]]] = {}
    for elem in state["elements"].values():
        if elem["state"] != "VANISHED":
            by_job.setdefault(str(elem["job"]), []).append(elem)
    out = []
    for jid, elems in sorted(by_job.items(), key=lambda item: int(item[0])):
        job = state["jobs"][jid]
        if (users is not None and job["user"] not in users) or \
                (opts.get("name") is not None and job["name"] != opts["name"]) or \
                (opts.get("arrays_only") and not job["array"]):
            continue
        if not opts.get("history"):
            elems = [e for e in elems if e["state"] not in _state.FINISHED]
        if elems:
            out.append(job_ident(state, job["id"], None, job["array"]))
        if job["array"] and opts.get("subjobs"):
            out += [job_ident(state, job["id"], e["task"], True) for e in elems]
    return Result(out=out)
