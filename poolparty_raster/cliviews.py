"""What ``poolparty-raster status``, ``report`` and ``inspect`` show of a work_dir: each as a
dict (printed as JSON with ``--json``) and as text (the status's in statusview.py, with what
it adds while a map runs).

A map's tasks are counted from what the work_dir holds: a task is done when its chunk has a
result that records no exception for it, raised when the result records one, lost when its
chunk is in the lost list of the map's last end (``map_finished``) and has no result, pending
otherwise. Whether a driver runs the map is whether ``driver.lock`` is held.
"""
from __future__ import annotations

import collections
import os
import time
from typing import Any

from filelock import FileLock, Timeout

from poolparty_raster import reportdata
from poolparty_raster.manifest import Manifest
from poolparty_raster.outcome import load_exceptions, load_results
from poolparty_raster.workdir import WorkDir

# Events after which a map runs under a new driver: what an earlier end said is no longer news.
RUN_STARTS = ("prepared", "resumed")
SHOWN_AT_MOST = 5  # raised tasks, jobs, slow chunks named in the text (the JSON has them all)


def driver_running(work_dir: WorkDir) -> bool:
    """Whether a driver holds the map's ``driver.lock``. Taken for a moment when free: a
    worker looking for its driver holds it briefly too, hence the second of patience. A
    work_dir without the file has no driver (one makes it first): taking the lock would
    create it, and one made while the driver removes the work_dir at its end would keep the
    directory from going."""
    if not os.path.exists(work_dir.file("driver.lock")):
        return False
    lock = FileLock(work_dir.file("driver.lock"), mode=0o600, timeout=1)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def this_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events since the last driver took the map up (from its ``prepared`` or
    ``resumed``)."""
    starts = [i for i, e in enumerate(events) if e["event"] in RUN_STARTS]
    return events[starts[-1]:] if starts else events


def lost_chunks(events: list[dict[str, Any]], finished: set[int]) -> set[int]:
    """The chunks the map's last end declared lost and that have no result since; none while
    a new driver runs the map (its end will tell)."""
    ended = next((e for e in reversed(this_run(events)) if e["event"] == "map_finished"), None)
    return set(ended.get("lost", ())) - finished if ended else set()


def raised_tasks(work_dir: WorkDir, finished: set[int]) -> dict[int, str]:
    """``{task: "Type: message"}`` of the tasks whose chunk's result records an exception. Only
    chunks that also wrote an exception file are read (a worker writes one whenever a task
    raised); their result decides, since the file may be an earlier attempt's."""
    raised = {}
    for chunk in sorted(work_dir.chunks_with("exception") & finished):
        data = work_dir.read_output(chunk, "result")
        for record in load_results(data)[1] if data is not None else []:
            raised[record["index"]] = f"{record['type']}: {record['message']}"
    return dict(sorted(raised.items()))


def map_status(work_dir: WorkDir, manifest: Manifest, running: bool | None = None,
               events: list[dict[str, Any]] | None = None,
               finished: set[int] | None = None) -> dict[str, Any]:
    """What the work_dir says of the map (``running``, ``events`` and ``finished``: whether a
    driver runs it, its log and finished chunks, where the caller knows them already). The
    driver is looked for before the log is read: a driver that ends in between then shows as
    running, never as stopped before an end its log does not hold yet."""
    running = driver_running(work_dir) if running is None else running
    events = work_dir.read_log() if events is None else events
    ended = next((e["time"] for e in this_run(events) if e["event"] == "map_finished"), None)
    finished = work_dir.finished_chunks() if finished is None else finished
    raised = raised_tasks(work_dir, finished)
    lost = [t for c in sorted(lost_chunks(events, finished)) for t in manifest.chunk_range(c)]
    done = sum(len(manifest.chunk_range(c)) for c in finished) - len(raised)
    counts = collections.Counter(e["event"] for e in events)
    state = "running" if running else "ended" if ended is not None else "stopped"
    return {
        "work_dir": work_dir.path, "job_name": manifest.job_name, "mode": manifest.mode,
        "num_tasks": manifest.num_tasks, "num_chunks": manifest.num_chunks,
        "driver_running": running, "state": state, "ended_at": ended,
        "tasks": {"done": done, "raised": len(raised), "lost": len(lost),
                  "pending": manifest.num_tasks - done - len(raised) - len(lost)},
        "chunks_with_result": len(finished),
        "raised": [{"task": task, "error": error} for task, error in raised.items()],
        "lost_tasks": lost,
        "jobs": work_dir.read_jobs(),
        "events": {"submitted": counts["submitted"], "deaths": counts["lost"],
                   "error_states": counts["error_state"], "failed_polls": counts["poll_failed"]},
        "last_event": events[-1] if events else None,
    }


def report_text(report: dict[str, Any]) -> str:
    """The event log, one line per event, then what the chunks' records say."""
    lines = []
    for event in report["events"]:
        details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "event"))
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        lines.append(f"{stamp} {event['event']:<14} {details}"[:200])
    return "\n".join(lines + _records_lines(report))


def _records_lines(report: dict[str, Any]) -> list[str]:
    facts = reportdata.summary(report)
    if not facts:
        return []
    lines = [f"chunks run: {len(report['runs'])} on {facts['hosts']} host(s), "
             f"{facts['last_end'] - facts['first_start']:.2f} s from the first start to the last "
             f"end, {facts['busy_seconds']:.2f} s busy, median chunk "
             f"{facts['median_seconds']:.3f} s, largest peak RSS "
             f"{facts['max_peak_rss'] / 1e6:.1f} MB"]
    for run in reportdata.slowest(report["runs"], SHOWN_AT_MOST):
        lines.append(f"  slow: chunk {run['chunk']} (tasks {run['first_task']}-"
                     f"{run['last_task']}) {run['seconds']:.3f} s, CPU {run['cpu']:.3f} s, "
                     f"{run['peak_rss'] / 1e6:.1f} MB, on {run['host']}, job "
                     f"{reportdata.job_label(run)}, attempt {run['attempt']}: {run['exit']}")
    return lines


def _subject(event: dict[str, Any]) -> str:
    """What an event of the log is about: a chunk, or (workers mode) a worker job."""
    return f"worker {event['worker']}" if "worker" in event else f"chunk {event.get('chunk')}"


def deaths(work_dir: WorkDir) -> list[dict[str, Any]]:
    """Every attempt that died or sat in an error state, a chunk's numbered in the order the
    log tells them, across drivers (a worker job's are not attempts of a chunk: no number)."""
    numbered: collections.Counter[str] = collections.Counter()
    found = []
    for event in work_dir.read_log():
        if event["event"] in ("lost", "error_state"):
            subject = _subject(event)
            numbered[subject] += 1
            found.append({"subject": subject,
                          "attempt": None if "worker" in event else numbered[subject],
                          "event": event["event"], "reason": event.get("reason", ""),
                          "job_id": event.get("job_id")})
    return found


def overview(work_dir: WorkDir, manifest: Manifest) -> dict[str, Any]:
    """The chunks that raised or wrote to stderr, and the attempts that died."""
    having = {kind: work_dir.chunks_with(kind) for kind in ("exception", "stderr")}
    chunks = []
    for chunk in sorted(having["exception"] | having["stderr"]):
        tasks = manifest.chunk_range(chunk)
        chunks.append({"chunk": chunk, "tasks": [tasks.start, tasks.stop - 1],
                       "outputs": [kind for kind, found in having.items() if chunk in found]})
    return {"work_dir": work_dir.path, "chunks": chunks, "deaths": deaths(work_dir)}


def _death_line(death: dict[str, Any]) -> str:
    attempt = f", attempt {death['attempt']}" if death["attempt"] is not None else ""
    what = "died" if death["event"] == "lost" else "error state"
    return f"{death['subject']}{attempt}: {what} ({death['reason']})"


def overview_text(found: dict[str, Any]) -> str:
    lines = [f"chunk {c['chunk']} (tasks {c['tasks'][0]}-{c['tasks'][1]}): "
             f"{', '.join(c['outputs'])}" for c in found["chunks"]]
    lines += [_death_line(d) for d in found["deaths"]]
    return "\n".join(lines) or "no task raised, wrote to stderr or died"


def task_details(work_dir: WorkDir, manifest: Manifest, task: int, chunk: int) -> dict[str, Any]:
    """Task ``task`` (in chunk ``chunk``): its state, its exception's traceback, what its chunk
    printed."""
    tasks = manifest.chunk_range(chunk)
    raw = work_dir.read_output(chunk, "exception")
    tracebacks = [r["traceback"] for r in load_exceptions(raw) if r["index"] == task] if raw else []
    has_result = work_dir.read_output(chunk, "result") is not None
    status = map_status(work_dir, manifest)
    if has_result:
        state = "raised" if any(r["task"] == task for r in status["raised"]) else "done"
    elif task in status["lost_tasks"]:
        state = "lost"
    else:
        state = "pending" if status["driver_running"] else "not run"
    outputs = {stream: work_dir.read_output(chunk, stream) for stream in ("stdout", "stderr")}
    return {"work_dir": work_dir.path, "task": task, "chunk": chunk,
            "tasks": [tasks.start, tasks.stop - 1], "state": state,
            # Of a chunk without a result, the exception file is a dead attempt's: shown too.
            "exception": tracebacks[-1] if tracebacks else None,
            **{stream: data.decode("utf-8", "replace") if data else ""
               for stream, data in outputs.items()},
            "deaths": [d for d in deaths(work_dir) if d["subject"] == f"chunk {chunk}"]}


_STATE_WORDS = {
    "done": "done: it returned a value",
    "raised": "raised: its traceback is below",
    "lost": "lost: its chunk died without a result as often as the map allowed",
    "pending": "pending: its chunk has no result yet; the map is running",
    "not run": "not run: the map stopped before its chunk had a result (run the map again to "
               "resume it)",
}


def task_text(details: dict[str, Any]) -> str:
    task, chunk = details["task"], details["chunk"]
    out = [f"task {task} is in chunk {chunk} (tasks {details['tasks'][0]}-{details['tasks'][1]}): "
           f"{_STATE_WORDS[details['state']]}"]
    out += [_death_line(d) for d in details["deaths"]]
    if details["exception"]:
        out.append(f"--- exception of task {task}\n{details['exception'].rstrip()}")
    for stream in ("stdout", "stderr"):
        if details[stream]:
            out.append(f"--- {stream} of chunk {chunk}\n{details[stream].rstrip()}")
    return "\n".join(out)
