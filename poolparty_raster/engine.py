"""One map run: submit the chunks, poll the work_dir and the scheduler, resubmit, reduce.

The same loop serves every backend. The worker's files decide success (a chunk is finished when
its result file exists); the scheduler's states only say what to resubmit and when to give up.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from poolparty_raster.errors import PoolPartyError, SchedulerError, TaskLostError
from poolparty_raster.progress import Progress
from poolparty_raster.schedulers.base import (JobRecord, Scheduler, SubmitSpec, TaskState,
                                              contiguous_runs)
from poolparty_raster.workdir import Manifest, WorkDir, chunk_key, tail_lines

FIRST_TICK = 0.02      # seconds; the adaptive interval starts here and backs off by BACKOFF
BACKOFF = 1.5
REDUCE_AT_LEAST = 64   # loose chunks before a reduction; then at least as many as are archived


class MapTerminated(PoolPartyError):
    """The pool was terminated while this map ran."""


@dataclass
class RunOptions:
    max_num_resubmissions: int = 3
    polling_interval: float = 5.0
    verbose: bool = False


@dataclass
class _Chunk:
    attempts: int = 0
    job_id: str | None = None
    absent_polls: int = 0
    absent_since: float | None = None
    stderr_tails: list[list[str]] = field(default_factory=list)


class MapRun:
    """Drives the chunks of one prepared work_dir to completion; iterate to get finished chunks."""

    def __init__(self, work_dir: WorkDir, manifest: Manifest, scheduler: Scheduler,
                 spec: SubmitSpec, options: RunOptions, progress: Progress,
                 abort: threading.Event):
        self.work_dir = work_dir
        self.manifest = manifest
        self.scheduler = scheduler
        self.spec = spec
        self.options = options
        self.progress = progress
        self.abort = abort
        self.jobs: list[JobRecord] = work_dir.read_jobs()
        self.chunks = {c: _Chunk() for c in range(manifest.num_chunks)}
        self.archived = work_dir.archived_chunks()
        self.finished: set[int] = set(self.archived)
        self.unreduced: set[int] = set()
        self.lost_chunks: set[int] = set()
        self._lost_captures: dict[str, str] = {}
        self._fresh: list[int] = []  # finished chunks not yet handed to the consumer

    # -- the loop ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        try:
            yield from self.finished
            yield from self._drive()
        except BaseException as exc:  # Ctrl-C and GeneratorExit too: nothing may keep running
            self._cancel_all(reason=type(exc).__name__)
            raise
        finally:
            self.progress.close()

    def _drive(self) -> Iterator[int]:
        self._reattach_or_submit()
        tick = FIRST_TICK
        poll_interval = max(self.scheduler.min_poll_interval, FIRST_TICK)
        next_poll = time.monotonic() + self.scheduler.min_poll_interval
        while len(self.finished) + len(self.lost_chunks) < self.manifest.num_chunks:
            if self.abort.is_set():
                raise MapTerminated(f"the pool was terminated; the work_dir is kept: {self.work_dir.path}")
            changed = self._collect()
            if time.monotonic() >= next_poll and self._outstanding():
                if self._poll_scheduler():
                    changed = True
                    poll_interval = max(self.scheduler.min_poll_interval, FIRST_TICK)
                else:
                    poll_interval = min(poll_interval * BACKOFF, self.options.polling_interval)
                next_poll = time.monotonic() + poll_interval
            yield from self._fresh
            self._fresh = []
            tick = FIRST_TICK if changed else min(tick * BACKOFF, self.options.polling_interval)
            if len(self.finished) + len(self.lost_chunks) < self.manifest.num_chunks:
                self.scheduler.wait(min(tick, max(0.0, next_poll - time.monotonic()) + FIRST_TICK))
        self._reduce(final=True)
        self.work_dir.remove_claims()
        self.scheduler.release(self.jobs)
        self.work_dir.log("map_finished", chunks=self.manifest.num_chunks, lost=sorted(self.lost_chunks))
        if self.lost_chunks:
            raise self._lost_error()

    def _outstanding(self) -> list[int]:
        return [c for c in self.chunks if c not in self.finished and c not in self.lost_chunks]

    # -- submission --------------------------------------------------------------------
    def _reattach_or_submit(self) -> None:
        """Submit what has no result, unless a previous driver's job for it is still queued."""
        todo = self._outstanding()
        if self.jobs and todo:
            for job in self.jobs:
                for chunk in job["chunks"]:
                    self.chunks[chunk].job_id = job["job_id"]
                    self.chunks[chunk].attempts = max(self.chunks[chunk].attempts, job.get("attempt", 1))
            alive = {chunk for (job_id, chunk), status in (self._safe_poll() or {}).items()
                     if status.state in (TaskState.PENDING, TaskState.RUNNING)
                     and self.chunks.get(chunk) and self.chunks[chunk].job_id == job_id}
            self.work_dir.log("reattached", chunks=sorted(alive))
            todo = [c for c in todo if c not in alive]
        if todo:
            self._submit(todo)

    def _submit(self, chunks: list[int]) -> None:
        attempt = max(self.chunks[c].attempts for c in chunks) + 1
        records = self.scheduler.submit(self.spec, chunks)
        for record in records:
            record["attempt"] = attempt
            record["submitted"] = time.time()
            for chunk in record["chunks"]:
                state = self.chunks[chunk]
                state.attempts += 1
                state.job_id = record["job_id"]
                state.absent_polls, state.absent_since = 0, None
        self.jobs.extend(records)
        self.work_dir.write_jobs(self.jobs)
        self.work_dir.log("submitted", jobs=[{"job_id": r["job_id"], "chunks": r["chunks"]} for r in records],
                          attempt=attempt)

    # -- observation -------------------------------------------------------------------
    def _collect(self) -> bool:
        """Note the chunks whose result newly appeared in the work_dir (in ``_fresh``)."""
        new = []
        for chunk, files in self.work_dir.scan().items():
            if "result" in files["final"] and chunk not in self.finished and chunk in self.chunks:
                self.finished.add(chunk)
                self.unreduced.add(chunk)
                new.append(chunk)
        if new:
            self.progress.advance(sum(len(self.manifest.chunk_range(c)) for c in new))
            if len(self.unreduced) >= max(REDUCE_AT_LEAST, len(self.archived)):
                self._reduce()
        self._fresh.extend(new)
        return bool(new)

    def _safe_poll(self) -> dict | None:
        """One scheduler poll; a failing scheduler command costs a poll (None), not the map."""
        try:
            return self.scheduler.poll(self.spec, self.jobs)
        except SchedulerError as exc:
            if self.options.verbose:
                self.progress.write(f"poolparty_raster: poll failed, will retry: {exc}")
            self.work_dir.log("poll_failed", error=str(exc))
            return None

    def _poll_scheduler(self) -> bool:
        """Act on what the scheduler says. Returns whether anything changed."""
        statuses = self._safe_poll()
        if statuses is None:
            return False
        self._collect()  # a result written just before the poll must not look lost
        now = time.monotonic()
        changed, resubmit, lost = False, [], []
        for chunk in self._outstanding():
            state = self.chunks[chunk]
            status = statuses.get((state.job_id, chunk))
            if status is not None and status.state is TaskState.FATAL:
                raise SchedulerError(f"chunk {chunk} of map {self.spec.job_name} cannot run: "
                                     f"{status.reason}. The work_dir is kept: {self.work_dir.path}")
            if status is not None and status.state is TaskState.ERROR:
                detail = self.scheduler.describe(self.spec, self._record(state.job_id), chunk)
                self.work_dir.log("error_state", chunk=chunk, job_id=state.job_id,
                                  reason=status.reason, detail=detail)
                self.scheduler.cancel(self.spec, [self._record(state.job_id)], [chunk])
                (resubmit if state.attempts <= self.options.max_num_resubmissions else lost).append(chunk)
                changed = True
            elif status is None or status.state is TaskState.FINISHED:
                if state.absent_since is None:
                    state.absent_since = now
                    changed = True
                state.absent_polls += 1
                lag = self.scheduler.filesystem_lag
                if (lag == 0 or state.absent_polls >= 2) and now - state.absent_since >= lag:
                    self.work_dir.log("lost", chunk=chunk, job_id=state.job_id,
                                      reason=status.reason if status else "gone from the queue")
                    (resubmit if state.attempts <= self.options.max_num_resubmissions else lost).append(chunk)
            else:
                state.absent_polls, state.absent_since = 0, None
        for chunk in resubmit + lost:
            self._archive_dead_attempt(chunk)
        self.lost_chunks.update(lost)
        if resubmit:
            self.progress.note_resubmitted(len(resubmit))
            self._submit(resubmit)
        if lost:
            self.progress.note_failed(sum(len(self.manifest.chunk_range(c)) for c in lost))
        return changed or bool(resubmit or lost)

    def _record(self, job_id: str | None) -> JobRecord:
        return next(job for job in self.jobs if job["job_id"] == job_id)

    def _archive_dead_attempt(self, chunk: int) -> None:
        """Keep a dead attempt's stderr tail for the report and its captures for the archive."""
        state = self.chunks[chunk]
        tail: list[str] = []
        for name in self.work_dir.scan().get(chunk, {}).get("live", []):
            entry = f"{chunk_key(chunk)}.attempt-{state.attempts}.{'stderr' if '.stderr.' in name else 'stdout'}"
            self._lost_captures[name] = entry
            if ".stderr." in name:
                with open(self.work_dir.file(name), "rb") as f:
                    tail = tail_lines(f.read())
        state.stderr_tails.append(tail)

    # -- endings -----------------------------------------------------------------------
    def _reduce(self, final: bool = False) -> None:
        if final:  # captures of attempts cancelled or superseded: archive, do not lose them
            for chunk, files in self.work_dir.scan().items():
                for name in files["live"]:
                    self._lost_captures.setdefault(name, f"{chunk_key(chunk)}.orphan.{name.split('.')[1]}")
        if not self.unreduced and not self._lost_captures:
            return
        self.work_dir.reduce(self.unreduced, self._lost_captures)
        self.work_dir.log("reduced", chunks=len(self.unreduced))
        self.archived |= self.unreduced
        self.unreduced = set()
        self._lost_captures = {}

    def _cancel_all(self, reason: str) -> None:
        if not self.jobs:
            return
        try:
            self.scheduler.cancel(self.spec, self.jobs)
            self.work_dir.log("cancelled", reason=reason)
        except Exception as exc:  # the original exception matters more; say what was left
            self.work_dir.log("cancel_failed", reason=reason, error=str(exc))

    def _lost_error(self) -> TaskLostError:
        tasks = sorted(i for c in self.lost_chunks for i in self.manifest.chunk_range(c))
        attempts = {c: self.chunks[c].attempts for c in sorted(self.lost_chunks)}
        tails = {c: [line for tail in self.chunks[c].stderr_tails for line in tail[-5:]]
                 for c in sorted(self.lost_chunks)}
        lines = [f"{len(tasks)} task(s) died without a result after "
                 f"{self.options.max_num_resubmissions} resubmission(s): task indices {_ranges(tasks)}."]
        for chunk in sorted(self.lost_chunks)[:5]:
            lines.append(f"  chunk {chunk} (tasks {_ranges(list(self.manifest.chunk_range(chunk)))}), "
                         f"{attempts[chunk]} attempt(s); last stderr lines:")
            lines.extend(f"    | {line}" for line in tails[chunk] or ["(nothing written)"])
        lines.append(f"The work_dir is kept: {self.work_dir.path} (see log.jsonl and scheduler.log)")
        return TaskLostError("\n".join(lines), tasks, attempts, tails, self.work_dir.path)


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(indices))
