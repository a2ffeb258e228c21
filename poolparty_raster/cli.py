"""poolparty-raster: look into a map's work_dir, re-run one of its tasks, cancel the jobs of a
map whose driver is gone, and remove work_dirs that are no longer needed.

Resuming is done by running the same map again with the same work_dir (the pool's options
live in your script, not in the work_dir); status tells how much is already stored.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pdb
import reprlib
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from inspect import signature  # not `import inspect`: this module's inspect is the command
from typing import Any, TextIO

from filelock import FileLock, Timeout

from poolparty_raster import __version__, cliviews, htmlreport, ownership, reportdata, statusview
from poolparty_raster.debugging import KeptWorkDir, checked_work_dir, chunk_of
from poolparty_raster.errors import PoolPartyError, WorkDirMismatchError
from poolparty_raster.files import atomic_write
from poolparty_raster.manifest import Manifest
from poolparty_raster.registry import BACKENDS
from poolparty_raster.schedulers.base import PollResult, Scheduler, SubmitSpec, cancelling
from poolparty_raster.workdir import WorkDir

# The schedulers the command line rebuilds from a work_dir, to ask about its jobs (status) or
# cancel them: their commands need no option the work_dir does not hold. (LocalPool's
# processes belong to their driver; the AWS backends need the pool's cluster, queue and
# region.)
REBUILDABLE = ("slurm", "sge", "pbs", "lsf", "htcondor")
# Seconds the status waits for the scheduler's answer (one call, not retried): a status that
# says the scheduler did not answer is more use than one that hangs a minute for it.
STATUS_CALL_TIMEOUT = 15.0
# Seconds between two statuses of --watch, where not given.
WATCH_SECONDS = 5.0


def _open(path: str) -> tuple[WorkDir, Manifest]:
    """The work_dir at ``path`` once it has passed the driver's checks (ownership.py): the
    CLI unpickles from it and deletes it, so never through a symbolic link, never another
    user's or a directory others may write, never one without this package's mark."""
    try:
        return checked_work_dir(path)
    except FileNotFoundError:
        raise SystemExit(f"poolparty-raster: {path} does not exist") from None
    except WorkDirMismatchError as exc:
        raise SystemExit(f"poolparty-raster: {exc}") from None


@contextlib.contextmanager
def _without_driver(work_dir: WorkDir, refusal: str) -> Iterator[None]:
    """Hold the map's driver.lock, so that no driver starts meanwhile; refuse with
    ``refusal`` when a driver holds it."""
    # Not 0: a worker looking for its driver holds the lock briefly.
    lock = FileLock(work_dir.file("driver.lock"), mode=0o600, timeout=1)
    try:
        lock.acquire()
    except Timeout:
        raise SystemExit(f"poolparty-raster: a driver is running the map in {work_dir.path}; "
                         f"{refusal}") from None
    try:
        yield
    finally:
        lock.release()


def status(path: str, now: float | None = None) -> dict[str, Any]:
    """How far the map has got (statusview.py), its scheduler asked about its jobs once;
    throughput as of ``now`` (the clock's time where None)."""
    work_dir, manifest = _open(path)
    return statusview.live_status(work_dir, manifest, _asker(work_dir, manifest),
                                  time.time() if now is None else now)


def watch(path: str, seconds: float, as_json: bool, out: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Show the status every ``seconds`` until no driver runs the map or the map has ended,
    then show it once more, as it ended, and return 0 (also on Ctrl-C). On a terminal the
    screen is cleared before each; elsewhere a line of the time separates them; with
    ``as_json`` each is one line of JSON (JSON Lines)."""
    out = sys.stdout if out is None else out
    shown: dict[str, Any] | None = None
    try:
        while True:
            try:
                shown = status(path)
            except (SystemExit, OSError):
                if shown is None or not _removed(path):
                    raise
                # A clean map's driver removes its work_dir as the map ends.
                print(f"{path} is gone: its driver removed it as the map ended (a map in which "
                      "every task returned keeps no work_dir unless keep_work_dir=True)",
                      file=out, flush=True)
                return 0
            if as_json:
                print(json.dumps(shown), file=out, flush=True)
            else:
                heading = "\x1b[H\x1b[2J" if out.isatty() else f"--- {time.strftime('%H:%M:%S')}\n"
                print(heading + statusview.status_text(shown), file=out, flush=True)
            if shown["state"] != "running" or shown["ended_at"] is not None:
                return 0
            sleep(seconds)
    except KeyboardInterrupt:  # the user has seen enough: no traceback
        return 0


def _removed(path: str) -> bool:
    """Whether the work_dir at ``path`` is gone, or going (its manifest is)."""
    return not os.path.exists(os.path.join(path, "manifest.json"))


def report(path: str, html_path: str | None = None, png_path: str | None = None) -> dict[str, Any]:
    """The map's events and chunk records (reportdata.py); with ``html_path`` or
    ``png_path``, the pictures of them written there (under a temporary name, renamed)."""
    result = reportdata.map_report(*_open(path))
    if html_path:
        atomic_write(html_path, htmlreport.render(result).encode())
    if png_path:
        from poolparty_raster.pngreport import render_png

        atomic_write(png_path, render_png(result))
    return result


def inspect(path: str, task: int | None) -> dict[str, Any]:
    """Without a task: the chunks that raised or wrote to stderr, and the attempts that died.
    With one: its state, its exception's traceback and what its chunk printed."""
    work_dir, manifest = _open(path)
    if task is None:
        return cliviews.overview(work_dir, manifest)
    try:
        chunk = chunk_of(manifest, task)
    except IndexError as exc:
        raise SystemExit(f"poolparty-raster: {exc}") from None
    return cliviews.task_details(work_dir, manifest, task, chunk)


def rerun(path: str, task: int, debug: bool) -> int:
    """Run one task of the map in this process, printing its value, or its traceback (and
    then, with ``debug``, entering pdb at the frame that raised). Returns the exit status."""
    _, manifest = _open(path)  # the command line's refusals, before anything is unpickled
    if not 0 <= task < manifest.num_tasks:
        raise SystemExit(f"poolparty-raster: task {task} is not in the map's "
                         f"0..{manifest.num_tasks - 1}")
    with KeptWorkDir(path) as kept:
        try:
            value = kept.rerun(task)
        except Exception as exc:  # the task's own exception: a user debugs it here
            return _task_raised(exc, debug)
    print(reprlib.repr(value))
    return 0


def _task_raised(exc: Exception, debug: bool) -> int:
    traceback.print_exception(exc)
    if debug:
        pdb.post_mortem(exc.__traceback__)
    return 1


def _recorded_scheduler(jobs: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The scheduler the job records name, or None and why not."""
    recorded = {job["scheduler"] for job in jobs if "scheduler" in job}
    if len(recorded) == 1:
        return recorded.pop(), ""
    return None, (f"records jobs of several schedulers ({', '.join(sorted(recorded))})"
                  if recorded else "does not say which scheduler ran its jobs")


def _not_rebuildable(name: str) -> str:
    """Why the command line cannot ask about or cancel the jobs of scheduler ``name``."""
    if name == "local":
        return "LocalPool's processes belong to its driver, and end with it"
    if name in ("ecs", "awsbatch"):
        return ("the work_dir does not hold the jobs' AWS cluster, queue and region: a pool, or "
                "the AWS console, reaches them")
    return f"the command line does not reach {name}'s jobs yet"


def _rebuilt_scheduler(work_dir: WorkDir, manifest: Manifest, name: str,
                       call_timeout: float | None = None) -> tuple[Scheduler, SubmitSpec]:
    """The scheduler ``name`` (one of REBUILDABLE), its commands from PATH, each allowed
    ``call_timeout`` seconds (its default where None), and the map's spec for its calls."""
    backend = next(b for b in BACKENDS if b.name == name)
    module = importlib.import_module(backend.scheduler_module)
    scheduler_class = getattr(module, backend.scheduler_class)
    # Each backend's option for it is <name>_call_timeout ("slurm_call_timeout", ...).
    timeouts = [p for p in signature(scheduler_class).parameters
                if p.endswith("_call_timeout")]
    options = dict.fromkeys(timeouts, call_timeout) if call_timeout is not None else {}
    spec = SubmitSpec(work_dir=work_dir.path, script_path=work_dir.script_path,
                      python_path=sys.executable, job_name=manifest.job_name,
                      scheduler_log=work_dir.scheduler_log_path, mode=manifest.mode)
    return scheduler_class(**options), spec


def _asker(work_dir: WorkDir, manifest: Manifest) -> statusview.AskScheduler:
    """How the status asks the map's scheduler about its jobs: one poll, at most
    STATUS_CALL_TIMEOUT seconds; whatever keeps it from answering is said, not raised."""
    def ask(jobs: list[dict[str, Any]]) -> tuple[str, PollResult]:
        name, why_not = _recorded_scheduler(jobs)
        if name is None:
            raise statusview.SchedulerNotAsked(f"the work_dir {why_not}")
        if name not in REBUILDABLE:
            raise statusview.SchedulerNotAsked(f"{name}: {_not_rebuildable(name)}", name)
        try:
            scheduler, spec = _rebuilt_scheduler(work_dir, manifest, name, STATUS_CALL_TIMEOUT)
            return name, scheduler.poll(spec, jobs)
        # Whatever went wrong (a missing command, a timeout, output no parser expected) is
        # quoted in the status, which a scheduler never makes fail.
        except Exception as exc:
            raise statusview.SchedulerNotAsked(f"{name} did not answer: {exc}", name) from None
    return ask


def cancel(path: str, scheduler_name: str | None) -> str:
    """Cancel the map's jobs (its recorded ones, and, for SLURM and Grid Engine, whatever is
    queued under its job name) once no driver runs it; the cancel is logged in the work_dir."""
    work_dir, manifest = _open(path)
    with _without_driver(work_dir, "stop it (Ctrl-C, or kill -TERM its process): it cancels "
                                   "its own jobs"):
        jobs = work_dir.read_jobs()
        recorded, why_not = _recorded_scheduler(jobs)
        name = scheduler_name or recorded
        if name is None:
            raise SystemExit(f"poolparty-raster: {path} {why_not}; give it: "
                             f"--scheduler {{{','.join(REBUILDABLE)}}}")
        if name not in REBUILDABLE:
            raise SystemExit(f"poolparty-raster: the jobs of {path} ran on {name}, whose jobs "
                             f"the command line cannot cancel: {_not_rebuildable(name)}")
        scheduler, spec = _rebuilt_scheduler(work_dir, manifest, name)
        try:
            with cancelling():
                scheduler.cancel(spec, jobs)
        except PoolPartyError as exc:
            raise SystemExit(f"poolparty-raster: cancelling the jobs of {path} failed: "
                             f"{exc}") from None
        work_dir.log("cancelled", reason="poolparty-raster cancel",
                     jobs=[job["job_id"] for job in jobs])
    return (f"cancelled the jobs of map {manifest.job_name} on {name}: "
            f"{', '.join(job['job_id'] for job in jobs) or 'none recorded'}"
            f"{' and any queued under its name' if name in ('slurm', 'sge') else ''}")


def clean(paths: list[str], force: bool) -> Iterator[str]:
    """Remove the work_dirs, saying so as each goes. Every one is checked first, so that a
    refusal removes none: a map a driver is running (its lock is held) is never removed,
    --force or not; an unfinished one, or one whose tasks raised or were lost (the work_dir
    holds their tracebacks and attempts), only with --force."""
    with contextlib.ExitStack() as locks:
        work_dirs = []
        for path in paths:
            work_dir, manifest = _open(path)
            locks.enter_context(_without_driver(
                work_dir, "stop it first (clean never removes a running map)"))
            if not force:
                _refuse_keeping(path, work_dir, manifest)
            work_dirs.append(work_dir)
        for work_dir in work_dirs:
            mark = ownership.read_mark(work_dir.path)
            if mark is None or ownership.remove(work_dir.path, mark):
                yield f"removed {work_dir.path}"
            else:
                yield f"kept {work_dir.path}: it holds files poolparty_raster did not write"


def _refuse_keeping(path: str, work_dir: WorkDir, manifest: Manifest) -> None:
    finished = work_dir.finished_chunks()
    if cliviews.lost_chunks(work_dir.read_log(), finished):
        raise SystemExit(f"poolparty-raster: tasks of the map in {path} were lost (`poolparty-"
                         f"raster inspect {path}` shows their attempts); --force removes it anyway")
    if len(finished) < manifest.num_chunks:
        raise SystemExit(f"poolparty-raster: {path} holds an unfinished map; --force removes "
                         "it anyway")
    if cliviews.raised_tasks(work_dir, finished):
        raise SystemExit(f"poolparty-raster: tasks of the map in {path} raised (`poolparty-raster "
                         f"inspect {path}` shows them); --force removes it anyway")


def _print(result: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=1) if as_json else text)


def _status_target(args: argparse.Namespace) -> tuple[str, float | None]:
    """The work_dir and --watch's seconds (None: not watching) of ``status``. --watch's
    SECONDS is optional, so in ``status --watch WORK_DIR`` argparse gave it the work_dir: a
    value that is no number is the work_dir where none follows."""
    work_dir, watch = args.work_dir, args.watch
    if work_dir is None and watch is not None and math.isnan(_number(watch)):
        work_dir, watch = watch, f"{WATCH_SECONDS:g}"
    if work_dir is None:
        args.usage_error("the following arguments are required: work_dir (one named like a "
                         "number goes before --watch, or as ./NAME)")
    seconds = None if watch is None else _number(watch)
    if seconds is not None and not 0 < seconds < math.inf:  # NaN fails too
        args.usage_error(f"argument --watch: {watch!r} is not a positive number of seconds "
                         f"(give one, as in --watch 30, or none for {WATCH_SECONDS:g})")
    return work_dir, seconds


def _number(text: str) -> float:
    """``text`` as a float; NaN where it is none."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolparty-raster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, json_output: bool = True,
                **work_dir: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("work_dir", **work_dir)
        if json_output:
            sub.add_argument("--json", action="store_true", help="print it as JSON, for scripts")
        return sub

    shower = command("status", "how far a map has got: tasks done, raised, lost and pending, "
                               "queued and running, its jobs, whether its driver runs, "
                               "throughput and time left", nargs="?")
    # work_dir is optional to argparse only: `status --watch WORK_DIR` gives it to --watch
    # (_status_target takes it back)
    shower.usage = "%(prog)s [-h] [--json] [--watch [SECONDS]] work_dir"
    shower.set_defaults(usage_error=shower.error)  # exits 2 after status's usage
    shower.add_argument("--watch", nargs="?", const=f"{WATCH_SECONDS:g}", metavar="SECONDS",
                        help=f"show it again every SECONDS (default {WATCH_SECONDS:g}) until the "
                             "map ends or its driver stops; before or after the work_dir")
    reporter = command("report", "the map's event log and where and how its chunks ran; "
                                 "--html or --png draws them")
    reporter.add_argument("--html", metavar="FILE", help="write a self-contained HTML page: "
                          "timeline, tasks done over time, queue waits, memory, settings")
    reporter.add_argument("--png", metavar="FILE", help="write a static picture (needs "
                          "matplotlib: pip install poolparty_raster[plot])")
    inspector = command("inspect", "a task's state, traceback and output, or the chunks that "
                                   "raised, wrote to stderr or died")
    inspector.add_argument("--task", type=int, help="input index of the task")
    rerunner = command("rerun", "run one task of the map again in this process", json_output=False)
    rerunner.add_argument("--task", type=int, required=True, help="input index of the task")
    rerunner.add_argument("--pdb", action="store_true",
                          help="enter the debugger (pdb) where the task raised")
    canceller = command("cancel", "cancel the jobs of a map whose driver is gone",
                        json_output=False)
    canceller.add_argument("--scheduler", choices=REBUILDABLE,
                           help="the scheduler its jobs ran on, where the work_dir does not say")
    cleaner = commands.add_parser("clean", help="remove work_dirs that are no longer needed",
                                  description="remove work_dirs that are no longer needed")
    cleaner.add_argument("work_dirs", nargs="+")
    cleaner.add_argument("--force", action="store_true", help="remove unfinished ones, and "
                         "ones whose tasks raised or were lost, too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "clean":
        for line in clean([os.path.abspath(p) for p in args.work_dirs], args.force):
            print(line, flush=True)
        return 0
    if args.command == "status":
        args.work_dir, args.watch = _status_target(args)
    path = os.path.abspath(args.work_dir)
    if args.command == "status" and args.watch is not None:
        return watch(path, args.watch, args.json)
    if args.command == "status":
        result = status(path)
        _print(result, args.json, statusview.status_text(result))
    elif args.command == "report":
        result = report(path, args.html, args.png)
        _print(result, args.json, cliviews.report_text(result))
    elif args.command == "inspect":
        result = inspect(path, args.task)
        text = cliviews.overview_text(result) if args.task is None else cliviews.task_text(result)
        _print(result, args.json, text)
    elif args.command == "rerun":
        return rerun(path, args.task, args.pdb)
    else:
        print(cancel(path, args.scheduler))
    return 0


if __name__ == "__main__":
    sys.exit(main())
