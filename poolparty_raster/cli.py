"""``poolparty-raster``: look into a work_dir (status, report, inspect) and remove finished ones
(clean).

Resuming is done by running the same map again with the same ``work_dir`` (the pool's options
live in the user's script, not in the work_dir); ``status`` tells how much is already stored.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
from collections.abc import Iterator

from filelock import FileLock, Timeout

from poolparty_raster import names, ownership
from poolparty_raster.errors import WorkDirMismatchError
from poolparty_raster.outcome import load_exceptions
from poolparty_raster.workdir import WorkDir


def _open(path: str) -> WorkDir:
    """The work_dir at ``path``, once it has passed the driver's checks (ownership.py): the
    CLI unpickles from it and deletes it, so never through a symbolic link, never another
    user's or a directory others may write, never one without this package's mark."""
    try:
        ownership.check_private(path)
        mark = ownership.read_mark(path)
    except FileNotFoundError:
        raise SystemExit(f"poolparty-raster: {path} does not exist") from None
    except WorkDirMismatchError as exc:
        raise SystemExit(f"poolparty-raster: {exc}") from None
    work_dir = WorkDir(path)
    if mark is None or work_dir.read_manifest() is None:
        raise SystemExit(f"poolparty-raster: {path} is not a poolparty_raster work_dir (no "
                         f"{names.MARK_NAME} or no manifest.json)")
    return work_dir


def status(path: str) -> str:
    work_dir = _open(path)
    manifest = work_dir.read_manifest()
    done = work_dir.finished_chunks()
    events = work_dir.read_log()
    counts = collections.Counter(event["event"] for event in events)
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(events[-1]["time"])) if events else "never"
    return (f"{path}\n  map {manifest.job_name}: {manifest.num_tasks} tasks in {manifest.num_chunks} chunks\n"
            f"  chunks with a stored result: {len(done)}/{manifest.num_chunks}\n"
            f"  submissions: {counts['submitted']}, lost: {counts['lost']}, "
            f"error states: {counts['error_state']}, failed polls: {counts['poll_failed']}\n"
            f"  last event: {last} ({events[-1]['event'] if events else '-'})")


def report(path: str) -> str:
    work_dir = _open(path)
    lines = []
    for event in work_dir.read_log():
        stamp = time.strftime("%H:%M:%S", time.localtime(event.pop("time")))
        name = event.pop("event")
        details = ", ".join(f"{k}={v}" for k, v in event.items())
        lines.append(f"{stamp} {name:<14} {details}"[:200])
    return "\n".join(lines)


def inspect(path: str, task: int | None) -> str:
    """A task's chunk: its exception's traceback and what it printed; without a task, the
    chunks that raised or wrote to stderr, and the attempts that died."""
    work_dir = _open(path)
    manifest = work_dir.read_manifest()
    if task is None:
        lines = []
        having = {kind: work_dir.chunks_with(kind) for kind in ("exception", "stderr")}
        for chunk in range(manifest.num_chunks):
            kinds = [kind for kind, chunks in having.items() if chunk in chunks]
            if kinds:
                tasks = manifest.chunk_range(chunk)
                lines.append(f"chunk {chunk} (tasks {tasks.start}-{tasks.stop - 1}): {', '.join(kinds)}")
        deaths = [e for e in work_dir.read_log() if e["event"] in ("lost", "error_state")]
        lines += [f"{_subject(e)}: {e['event']} ({e.get('reason', '')})" for e in deaths]
        return "\n".join(lines) or "no task raised, wrote to stderr or died"
    if not 0 <= task < manifest.num_tasks:
        raise SystemExit(f"poolparty-raster: task {task} is not in 0..{manifest.num_tasks - 1}")
    chunk = next(c for c in range(manifest.num_chunks) if task in manifest.chunk_range(c))
    out = [f"task {task} is in chunk {chunk} (tasks {manifest.chunk_range(chunk).start}-"
           f"{manifest.chunk_range(chunk).stop - 1})"]
    raw = work_dir.read_output(chunk, "exception")
    for record in load_exceptions(raw) if raw else []:
        if record["index"] == task:
            out.append(f"--- exception of task {task}\n{record['traceback'].rstrip()}")
    for stream in ("stdout", "stderr"):
        text = work_dir.read_output(chunk, stream)
        if text:
            out.append(f"--- {stream} of chunk {chunk}\n{text.decode('utf-8', 'replace').rstrip()}")
    if work_dir.read_output(chunk, "result") is None:
        out.append(f"--- chunk {chunk} has no result (yet)")
    return "\n".join(out)


def _subject(event: dict) -> str:
    """What an event of the log is about: a chunk, or (workers mode) a worker job."""
    return f"worker {event['worker']}" if "worker" in event else f"chunk {event.get('chunk')}"


def clean(paths: list[str], force: bool) -> Iterator[str]:
    """Remove the work_dirs, saying so as each goes. Every one is checked first, so that a
    refusal removes none: a map a driver is running (its lock is held) is never removed,
    --force or not; an unfinished one only with --force."""
    with contextlib.ExitStack() as locks:
        work_dirs = []
        for path in paths:
            work_dir = _open(path)
            try:
                locks.enter_context(FileLock(work_dir.file("driver.lock"), mode=0o600,
                                             timeout=1))  # a worker may hold it briefly
            except Timeout:
                raise SystemExit(f"poolparty-raster: a driver is running the map in {path}; "
                                 "stop it first (clean never removes a running map)") from None
            manifest = work_dir.read_manifest()
            if len(work_dir.finished_chunks()) < manifest.num_chunks and not force:
                raise SystemExit(f"poolparty-raster: {path} holds an unfinished map; --force "
                                 "removes it anyway")
            work_dirs.append(work_dir)
        for work_dir in work_dirs:
            mark = ownership.read_mark(work_dir.path)
            if mark is None or ownership.remove(work_dir.path, mark):
                yield f"removed {work_dir.path}"
            else:
                yield f"kept {work_dir.path}: it holds files poolparty_raster did not write"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolparty-raster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="how far a map has got").add_argument("work_dir")
    commands.add_parser("report", help="the map's event log, one line per event").add_argument("work_dir")
    inspector = commands.add_parser("inspect", help="a task's traceback and output, or the "
                                    "chunks that raised, wrote to stderr or died")
    inspector.add_argument("work_dir")
    inspector.add_argument("--task", type=int, help="input index of the task")
    cleaner = commands.add_parser("clean", help="remove finished work_dirs")
    cleaner.add_argument("work_dirs", nargs="+")
    cleaner.add_argument("--force", action="store_true", help="remove unfinished ones too")
    args = parser.parse_args(argv)
    if args.command == "status":
        print(status(os.path.abspath(args.work_dir)))
    elif args.command == "report":
        print(report(os.path.abspath(args.work_dir)))
    elif args.command == "inspect":
        print(inspect(os.path.abspath(args.work_dir), args.task))
    else:
        for line in clean([os.path.abspath(p) for p in args.work_dirs], args.force):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
