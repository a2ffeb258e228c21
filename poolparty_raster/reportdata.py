"""What ``poolparty-raster report`` draws, gathered from a work_dir: each finished chunk's
record (records.py) with its attempt number, the attempts that died (the driver's ``lost``
and ``error_state`` events), queue wait against run time per job element, and the map's
settings. Plain dicts and lists, so that ``--json`` prints the same facts the pictures show.
"""
from __future__ import annotations

import collections
import statistics
from typing import Any

from poolparty_raster.manifest import Manifest
from poolparty_raster.records import read_record
from poolparty_raster.workdir import WorkDir

DEATHS = ("lost", "error_state")


def map_report(work_dir: WorkDir, manifest: Manifest) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    events = work_dir.read_log()
    jobs = work_dir.read_jobs()
    runs, without_record = _runs(work_dir, manifest, events)
    return {"work_dir": work_dir.path, "settings": _settings(manifest, events, jobs),
            "runs": runs, "chunks_without_record": without_record,
            "deaths": _deaths(events), "waits": _waits(runs, events, manifest.mode),
            "events": events}


def _runs(work_dir: WorkDir, manifest: Manifest,
          events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The record of each finished chunk, numbered: its attempt is one more than the deaths
    of its chunk that the driver logged before it ended (the node cannot know them)."""
    deaths_at = collections.defaultdict(list)
    for event in events:
        if event["event"] in DEATHS and "chunk" in event:
            deaths_at[event["chunk"]].append(event["time"])
    runs, without = [], 0
    for chunk in sorted(work_dir.finished_chunks()):
        data = work_dir.read_output(chunk, "result")
        record = read_record(data) if data is not None else None
        if record is None:  # written before records existed, or unreadable
            without += 1
            continue
        tasks = manifest.chunk_range(chunk)
        attempt = 1 + sum(t < record["end"] for t in deaths_at.get(chunk, ()))
        runs.append({"chunk": chunk, "first_task": tasks.start, "last_task": tasks.stop - 1,
                     **record, "seconds": record["end"] - record["start"], "attempt": attempt})
    return runs, without


def _deaths(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt that died or sat in an error state, with what the scheduler said; the host
    where the driver knows it (workers mode names the holder: "worker host pid token")."""
    found = []
    for event in events:
        if event["event"] not in DEATHS:
            continue
        holder = str(event.get("holder", "")).split()
        found.append({"time": event["time"], "event": event["event"],
                      "chunk": event.get("chunk"), "worker": event.get("worker"),
                      "job_id": event.get("job_id"), "reason": event.get("reason", ""),
                      "host": holder[1] if len(holder) > 1 else None})
    return found


def _waits(runs: list[dict[str, Any]], events: list[dict[str, Any]],
           mode: str) -> list[dict[str, Any]]:
    """Queue wait against run time per element a submission named: a chunk (array mode) or a
    worker (workers mode). Wait: from its last submission before it started to its first
    record's start; run: the time its records cover. Unknown for elements without records."""
    key = "worker" if mode == "workers" else "chunk"
    submitted = collections.defaultdict(list)
    for event in events:
        if event["event"] == "submitted":
            for member in event.get("members", ()):
                submitted[member].append((event["time"], event["job_id"]))
    by_element = collections.defaultdict(list)
    for run in runs:
        if run.get(key) is not None:
            by_element[run[key]].append(run)
    waits = []
    for element, element_runs in sorted(by_element.items()):
        start = min(r["start"] for r in element_runs)
        before = [s for s in submitted.get(element, ()) if s[0] <= start]
        if not before:
            continue
        at, job_id = max(before)
        waits.append({key: element, "job_id": job_id, "submitted": at, "wait": start - at,
                      "run": sum(r["seconds"] for r in element_runs)})
    return waits


def _settings(manifest: Manifest, events: list[dict[str, Any]],
              jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The map's settings as the work_dir records them (the pool's options live in the
    user's script): the manifest, what the driver logged when it prepared the map, the
    schedulers and jobs."""
    sizes = [len(manifest.chunk_range(c)) for c in range(manifest.num_chunks)]
    prepared = next((e for e in events if e["event"] == "prepared"), {})
    ended = [e["time"] for e in events if e["event"] == "map_finished"]
    wanted = [e["workers"] for e in events if e["event"] == "workers_wanted"]
    settings = {"job_name": manifest.job_name, "mode": manifest.mode,
                "tasks": manifest.num_tasks, "chunks": manifest.num_chunks,
                "tasks per chunk": (f"{min(sizes)}-{max(sizes)}" if sizes and min(sizes) != max(sizes)
                                    else str(sizes[0] if sizes else 0)),
                "scheduler": ", ".join(sorted({j["scheduler"] for j in jobs if "scheduler" in j}))
                or None,
                "jobs submitted": len(jobs),
                "workers wanted (most)": max(wanted) if wanted else None,
                "prepared": prepared.get("time"), "ended": ended[-1] if ended else None,
                "drivers (runs)": sum(e["event"] in ("prepared", "resumed") for e in events)}
    settings.update({k: v for k, v in prepared.items()
                     if k not in ("time", "event", "tasks", "chunks", "job_name")})
    return {k: v for k, v in settings.items() if v is not None}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline figures: span, busy time, medians, the largest peak."""
    runs = report["runs"]
    if not runs:
        return {}
    seconds = [r["seconds"] for r in runs]
    waits = [w["wait"] for w in report["waits"]]
    return {"first_start": min(r["start"] for r in runs), "last_end": max(r["end"] for r in runs),
            "busy_seconds": sum(seconds), "median_seconds": statistics.median(seconds),
            "max_peak_rss": max(r["peak_rss"] for r in runs),
            "median_wait": statistics.median(waits) if waits else None,
            "hosts": len({r["host"] for r in runs})}


def slowest(runs: list[dict[str, Any]], count: int = 10) -> list[dict[str, Any]]:
    return sorted(runs, key=lambda r: r["seconds"], reverse=True)[:count]


def ideal(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The ideal against which tasks done over time is drawn: the same work (the chunks' run
    times) on as many slots as ran at once at most, from the first start, with no waiting."""
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = slots = 0
    for _, change in edges:
        running += change
        slots = max(slots, running)
    start = min(r["start"] for r in runs)
    return {"slots": slots, "start": start,
            "end": start + sum(r["seconds"] for r in runs) / max(slots, 1)}


def job_label(run: dict[str, Any]) -> str:
    if run["job_id"] is None:
        return f"pid {run['pid']}"
    return run["job_id"] + (f"[{run['array_index']}]" if run["array_index"] is not None else "")


def timeline_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows of the timeline: per host, its processes packed into as few rows as overlap
    allows (a worker's chunks run one after the other in one process; in array mode each
    chunk is a process of its own)."""
    processes = collections.defaultdict(list)
    for run in runs:
        processes[(run["host"], run["pid"], run["job_id"], run["array_index"])].append(run)
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for host in sorted({key[0] for key in processes}):
        ends: list[float] = []
        host_rows: list[list[dict[str, Any]]] = []
        spans = sorted(((min(r["start"] for r in p), max(r["end"] for r in p), p)
                        for key, p in processes.items() if key[0] == host), key=lambda s: s[:2])
        for start, end, process in spans:
            free = next((i for i, e in enumerate(ends) if e <= start), None)
            if free is None:
                ends.append(end)
                host_rows.append(list(process))
            else:
                ends[free] = end
                host_rows[free].extend(process)
        for row in host_rows:
            jobs = {job_label(r) for r in row}
            several = f"{len(jobs)} {'processes' if row[0]['job_id'] is None else 'jobs'}"
            rows.append((f"{host} · {jobs.pop() if len(jobs) == 1 else several}", row))
    return rows
