"""What ``poolparty-raster status`` shows: what the work_dir holds (cliviews.map_status) and,
while the map runs, what its scheduler says of its jobs now, the chunks claimed (workers
mode), and this run's throughput and the time left at that rate; as a dict and as text.

The scheduler is asked once, by whoever builds the status (cli.py rebuilds it from the
work_dir's job records); where it cannot be asked or does not answer, the status says why and
its counts are None: a status never fails for a scheduler.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from poolparty_raster import cliviews
from poolparty_raster.attempts import ranges
from poolparty_raster.manifest import Manifest
from poolparty_raster.records import read_record
from poolparty_raster.schedulers.base import PollResult, TaskState
from poolparty_raster.workdir import WorkDir

SHOWN_AT_MOST = cliviews.SHOWN_AT_MOST


class SchedulerNotAsked(Exception):
    """Why the scheduler of a map was not asked, or did not answer (the message says which);
    ``scheduler`` names it where the work_dir does."""

    def __init__(self, reason: str, scheduler: str | None = None):
        super().__init__(reason)
        self.scheduler = scheduler


# Given the map's job records: (the scheduler's name, its answer to one poll of them); raises
# SchedulerNotAsked.
AskScheduler = Callable[[list[dict[str, Any]]], tuple[str, PollResult]]

# A member the scheduler lists in several states (a chunk resubmitted while its first element
# still shows) counts once, in the state furthest along: an element in an error state is
# being cancelled and resubmitted, so a queued or running one is the chunk's future.
_COUNTED = {TaskState.PENDING: "queued", TaskState.ERROR: "error_state",
            TaskState.FATAL: "error_state", TaskState.RUNNING: "running"}
_PRECEDENCE = ("error_state", "queued", "running")


def live_status(work_dir: WorkDir, manifest: Manifest, ask_scheduler: AskScheduler,
                now: float) -> dict[str, Any]:
    """The map's status (cliviews.map_status) with ``scheduler`` (what it says now of the
    map's jobs), ``claimed`` (workers mode, while a driver runs: chunks claimed without a
    result) and ``throughput`` (this run's, at ``now``)."""
    running = cliviews.driver_running(work_dir)  # first: see cliviews.map_status
    events = work_dir.read_log()
    finished = work_dir.finished_chunks()
    status = cliviews.map_status(work_dir, manifest, running, events, finished)
    status["scheduler"] = scheduler_counts(status, finished, ask_scheduler)
    claiming = status["state"] == "running" and manifest.mode == "workers"
    # survey() only lists claims/ (read-only); it finds nothing once the driver removed it.
    status["claimed"] = len(work_dir.claims.survey(finished).claims) if claiming else None
    status["throughput"] = throughput(work_dir, manifest, status, events, finished, now)
    return status


def scheduler_counts(status: dict[str, Any], finished: set[int],
                     ask_scheduler: AskScheduler) -> dict[str, Any]:
    """How many members of the map's jobs the scheduler lists as queued, running or in an
    error state: chunks without a result (array mode) or workers (workers mode). Not asked
    once the map ended (its driver cancelled what was left) nor before any job is recorded."""
    workers = status["mode"] == "workers"
    counts: dict[str, Any] = {"name": None, "members": "workers" if workers else "chunks",
                              "queued": None, "running": None, "error_state": None,
                              "not_asked": None}
    try:
        if status["state"] == "ended":
            raise SchedulerNotAsked("the map has ended")
        if not status["jobs"]:
            raise SchedulerNotAsked("no job is recorded yet")
        counts["name"], answer = ask_scheduler(status["jobs"])
    except SchedulerNotAsked as exc:
        return {**counts, "name": exc.scheduler, "not_asked": str(exc)}
    states: dict[int, str] = {}
    for (_, member), task_status in answer.items():
        counted = _COUNTED.get(task_status.state)
        if counted is None or (not workers and member in finished):
            continue
        earlier = states.get(member, counted)
        states[member] = max(earlier, counted, key=_PRECEDENCE.index)
    tally = collections.Counter(states.values())
    return {**counts, **{kind: tally[kind] for kind in _PRECEDENCE}}


def throughput(work_dir: WorkDir, manifest: Manifest, status: dict[str, Any],
               events: list[dict[str, Any]], finished: set[int], now: float) -> dict[str, Any]:
    """Tasks done (returned or raised) per minute since this run started (its driver's
    ``prepared`` or ``resumed``), to ``now`` while it runs and to its end once it ended; and,
    while it runs, the seconds the pending tasks take at that rate. None where unknown: no
    task done yet in this run, or no driver runs a map that did not end."""
    run = cliviews.this_run(events)
    started = run[0]["time"] if run and run[0]["event"] in cliviews.RUN_STARTS else None
    shown: dict[str, Any] = {"since": started, "tasks_done": None, "tasks_per_minute": None,
                             "eta_seconds": None}
    until = {"running": now, "ended": status["ended_at"]}.get(status["state"])
    if started is None or until is None:
        return shown
    if run[0]["event"] == "prepared":  # every result is this run's
        done = status["tasks"]["done"] + status["tasks"]["raised"]
    else:  # a resumed map: the results whose record ends after this run started
        done = sum(len(manifest.chunk_range(chunk)) for chunk in finished
                   if _ended_after(work_dir, chunk, started))
    shown["tasks_done"] = done
    if done and until > started:
        rate = done / ((until - started) / 60)
        shown["tasks_per_minute"] = rate
        if status["state"] == "running":
            shown["eta_seconds"] = status["tasks"]["pending"] / rate * 60
    return shown


def _ended_after(work_dir: WorkDir, chunk: int, moment: float) -> bool:
    """Whether the chunk's record says it ended after ``moment`` (a result without a record
    was written by an earlier version of the package: an earlier run's)."""
    data = work_dir.read_output(chunk, "result")
    record = read_record(data) if data is not None else None
    return record is not None and record["end"] >= moment


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: "0.4 s", "45 s", "3 min 20 s", "2 h 05 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _rate(per_minute: float) -> str:
    return f"{per_minute:.0f}" if per_minute >= 100 else f"{per_minute:.3g}"


def _driver_line(status: dict[str, Any]) -> str:
    if status["state"] == "running":
        if status["ended_at"] is not None:
            return f"driver: running; the map ended {_when(status['ended_at'])}"
        return "driver: running"
    if status["state"] == "ended":
        return f"driver: not running; the map ended {_when(status['ended_at'])}"
    return ("driver: not running; it stopped before the map's end (interrupted or killed): "
            "run the same map with this work_dir to resume it")


def _scheduler_lines(status: dict[str, Any]) -> list[str]:
    counts = status["scheduler"]
    if status["state"] == "ended":
        return []
    members = counts["members"]
    if counts["not_asked"] is not None:
        line = f"{members} queued and running: unknown ({counts['not_asked']})"
    else:
        errors = f", in an error state: {counts['error_state']}" if counts["error_state"] else ""
        line = (f"{members} queued: {counts['queued']}, running: {counts['running']}{errors} "
                f"({counts['name']}, asked now)")
    lines = [line]
    if status["claimed"] is not None:
        lines.append(f"chunks claimed now: {status['claimed']}")
    return lines


def _throughput_line(status: dict[str, Any]) -> list[str]:
    shown = status["throughput"]
    if shown["tasks_done"] is None:
        return []
    since = _when(shown["since"])
    if shown["tasks_per_minute"] is None:
        return [f"throughput: no estimate yet (no task done since this run started {since})"]
    rate = f"throughput: {_rate(shown['tasks_per_minute'])} tasks/min"
    if status["state"] != "running":
        return [f"{rate} over this run ({duration(status['ended_at'] - shown['since'])})"]
    line = f"{rate} since this run started {since}"
    if shown["eta_seconds"] is not None and status["tasks"]["pending"]:
        line += (f"; at that rate the {status['tasks']['pending']} pending take "
                 f"{duration(shown['eta_seconds'])} more")
    return [line]


def status_text(status: dict[str, Any]) -> str:
    tasks = status["tasks"]
    pending = "pending (queued or running)" if status["driver_running"] else "not run"
    lines = [status["work_dir"],
             f"map {status['job_name']} ({status['mode']} mode): {status['num_tasks']} tasks "
             f"in {status['num_chunks']} chunks",
             _driver_line(status),
             f"tasks: {tasks['done']} done, {tasks['raised']} raised, {tasks['lost']} lost, "
             f"{tasks['pending']} {pending}"]
    lines += _scheduler_lines(status) + _throughput_line(status)
    raised = status["raised"]
    if raised:
        shown = "; ".join(f"task {r['task']}: {r['error']}"[:120] for r in raised[:SHOWN_AT_MOST])
        more = f" (and {len(raised) - SHOWN_AT_MOST} more)" if len(raised) > SHOWN_AT_MOST else ""
        lines.append(f"raised: {shown}{more}")
    if status["lost_tasks"]:
        lines.append(f"lost: tasks {ranges(status['lost_tasks'])}")
    jobs = status["jobs"]
    members = "workers" if status["mode"] == "workers" else "chunks"
    named = ", ".join(f"{j['job_id']} ({len(j['chunks'])} {members})"
                      for j in jobs[-SHOWN_AT_MOST:])
    lines.append(f"jobs recorded: {len(jobs)}" + (f", the last: {named}" if jobs else ""))
    events = status["events"]
    lines.append(f"submissions: {events['submitted']}, deaths: {events['deaths']}, error states: "
                 f"{events['error_states']}, failed polls: {events['failed_polls']}")
    last = status["last_event"]
    lines.append(f"last event: {_when(last['time'])} ({last['event']})" if last
                 else "last event: none")
    return "\n  ".join(lines)
