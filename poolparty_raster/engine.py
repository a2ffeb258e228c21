"""One map run: submit the chunks, poll the work_dir and the scheduler, resubmit, reduce.

The same loop serves every backend. The worker's files decide success (a chunk is finished when
its result file exists); the scheduler's states only say what to resubmit and when to give up.
A scheduler poll runs in a thread of its own (one at a time per map): a command that hangs
holds back neither the results already in the work_dir nor the end of the map. That thread
only runs the poll; the driving thread alone reads its answer and changes the run's state.
"""
from __future__ import annotations

import array
import errno
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from poolparty_raster.chunkset import ChunkKinds, ChunkSet
from poolparty_raster.errors import (MapTerminated, SchedulerError, SchedulerOutputError,
                                     TaskLostError, WorkDirFullError)
from poolparty_raster.progress import Progress
from poolparty_raster.schedulers.base import (JobRecord, PollResult, Scheduler, SubmitSpec,
                                              TaskState, TaskStatus, cancelling,
                                              contiguous_runs)
from poolparty_raster.settings import MapSettings
from poolparty_raster.submissions import Submissions
from poolparty_raster.names import capture_stream, chunk_key, parse_worker_capture
from poolparty_raster.manifest import Manifest
from poolparty_raster.workdir import WorkDir, tail_lines

FIRST_TICK = 0.02      # seconds; the adaptive interval starts here and backs off by BACKOFF
BACKOFF = 1.5
# Loose chunks before a reduction, then as many as are archived, up to LOOSE_AT_MOST. A
# reduction is wasted on a map whose work_dir is removed at its end; what it buys is a short
# listing at every scan (a thousand names list in well under a millisecond) and less held for
# the loose chunks the consumer read (a result kept for its reduce, workdir.KEEP_RESULTS_BYTES
# at most). Its cost is the new entries' plus a copy of the archive's bytes: reducing as
# often as chunks are archived bounds the copies to about twice the archive, but a map of a
# million chunks would then hold half of them loose; past LOOSE_AT_MOST the copies grow
# instead (a byte copy of each older entry at every reduce, ~8 of each for a million chunks).
REDUCE_AT_LEAST = 1024
LOOSE_AT_MOST = 65536
# A scan lists the work_dir (~0.5 us a name: 30 ms with LOOSE_AT_MOST results loose): the loop
# scans again once SCAN_SHARE times the last scan's time has passed, so that scans take at
# most ~1/SCAN_SHARE of the driver's time, however fast the consumer takes results.
SCAN_SHARE = 10
FRESH_AT_MOST = 16384  # chunks handed to the consumer between two looks at the work_dir
RESULT_ALONE = ["result"]  # the kinds of the loose outputs of nearly every chunk
UNREADABLE_POLLS = 3   # polls in a row whose output cannot be read: the map fails, quoting it
MAX_POLL_OUTAGE = 1800.0  # seconds of failing or hanging polls (results still arrive) before the map fails
# Seconds the loop waits for a poll it has just started before it looks at the work_dir again;
# a poll that takes longer is answered in the background.
POLL_PATIENCE = 0.05
# A job the scheduler saw end well has written its result; NFS may list the directory from a
# cache for up to its acdirmax (60 s by default) before the driver sees the file.
SUCCEEDED_GRACE = 60.0
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class _Chunk:
    attempts: int = 0            # submissions by this driver (a resumed map starts afresh)
    job_id: str | None = None    # the job running it now; None while it waits to be submitted
    absent_polls: int = 0
    absent_since: float | None = None
    deaths: list[tuple[str, list[str]]] = field(default_factory=list)  # (reason, stderr tail)


class _Chunks(dict[int, _Chunk]):
    """The chunks' state, made when a chunk is first looked up: only chunks submitted or
    that died have any (an entry a chunk cost ~250 bytes a chunk in a map of a million)."""

    def __missing__(self, chunk: int) -> _Chunk:
        state = self[chunk] = _Chunk()
        return state


class _Poll:
    """One scheduler poll, running in a daemon thread: nothing waits for a poll that hangs
    when the map has ended. The thread only calls ``scheduler.poll`` and keeps its answer or
    exception; the driving thread reads them once ``done`` is set."""

    def __init__(self, scheduler: Scheduler, spec: SubmitSpec, jobs: list[JobRecord]):
        self.jobs = jobs   # the records asked about (a copy: the map may submit meanwhile)
        self.started = time.monotonic()
        self.done = threading.Event()
        self.answer: PollResult = {}
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(scheduler, spec), daemon=True,
                         name=f"poolparty_raster poll {spec.job_name}").start()

    def _run(self, scheduler: Scheduler, spec: SubmitSpec) -> None:
        try:
            self.answer = scheduler.poll(spec, self.jobs)
        except BaseException as exc:  # handed to the driving thread, which raises it there
            self.error = exc
        finally:
            self.done.set()


class MapRun:
    """Drives the chunks of one prepared work_dir to completion; iterate to get finished chunks."""

    def __init__(self, work_dir: WorkDir, manifest: Manifest, scheduler: Scheduler,
                 spec: SubmitSpec, options: MapSettings, progress: Progress,
                 abort: threading.Event):
        self.work_dir = work_dir
        self.manifest = manifest
        self.scheduler = scheduler
        self.spec = spec
        self.options = options
        self.progress = progress
        self.abort = abort
        self.submissions = Submissions(work_dir, scheduler, spec, progress, options.verbose)
        self.chunks = _Chunks()
        self.archived = ChunkSet(manifest.num_chunks, work_dir.archived_chunks())
        self.finished = self.archived.copy()
        self._resumed = self.archived.copy()
        # chunk -> the kinds of loose output the scan that found its result saw: the worker
        # writes the result last, so no other kind of the chunk's is anywhere else.
        self.unreduced = ChunkKinds(manifest.num_chunks, RESULT_ALONE)
        self.lost_chunks: set[int] = set()   # disjoint from finished
        self._lost_captures: dict[str, str] = {}
        self._fresh = array.array("q")  # finished chunks not yet handed to the consumer
        self._last_poll: PollResult = {}
        self._poll_failures = 0
        self._unreadable = 0  # polls in a row whose output could not be read
        self._failing_since: float | None = None
        self._poll: _Poll | None = None  # the poll running now, or answered and not yet read
        self._reattached: bool | None = None  # None until started
        self._next_scan = 0.0  # when the loop may scan the work_dir again (SCAN_SHARE)

    @property
    def jobs(self) -> list[JobRecord]:
        return self.submissions.jobs

    # -- the loop ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        try:
            yield from self._resumed  # archived by an earlier driver; loose ones come fresh
            yield from self._drive()
        except OSError as exc:
            self._cancel_all(reason=type(exc).__name__)
            if exc.errno in DISK_FULL:  # the driver's own write met it
                raise self._full_error(exc) from exc
            raise
        except BaseException as exc:  # Ctrl-C and GeneratorExit too: nothing may keep running
            self._cancel_all(reason=type(exc).__name__)
            raise
        finally:
            self.progress.close()

    def _done(self) -> bool:
        return len(self.finished) + len(self.lost_chunks) >= self.manifest.num_chunks

    def start(self) -> None:
        """Submit the map (called when it is created, as multiprocessing's imap does; what a
        previous driver's jobs delivered since it died is never run again)."""
        if self._reattached is not None:
            return
        try:
            self._collect()
            self._reattached = self._reattach_or_submit()
        except BaseException as exc:
            self._cancel_all(reason=type(exc).__name__)
            raise

    def supersede_earlier_jobs(self) -> None:
        """The map is resumed in the other mode: the earlier driver's jobs number members of
        the other kind (chunks, or workers), so they are cancelled and forgotten, not
        reattached (their results so far are kept, as always)."""
        jobs = self.submissions.jobs
        if jobs:
            with cancelling():
                self.scheduler.cancel(self.spec, jobs)
            self.work_dir.log("superseded", jobs=[job["job_id"] for job in jobs])
            self.work_dir.forget_jobs()
            self.submissions.jobs = []

    def _drive(self) -> Iterator[int]:
        self.start()
        yield from self._take_fresh()  # what start() found already done
        tick = FIRST_TICK
        poll_interval = max(self.scheduler.min_poll_interval, FIRST_TICK)
        # A reattached job may be long gone: the first poll starts counting its absence.
        next_poll = time.monotonic() + (0.0 if self._reattached else self.scheduler.min_poll_interval)
        while not self._done():
            if self.abort.is_set():
                raise MapTerminated(f"the pool was terminated; the work_dir is kept: {self.work_dir.path}")
            changed = None  # not looked: the last scan's share of the time is spent
            if time.monotonic() >= self._next_scan:
                changed = self._collect()
            if changed:
                self._submit_waiting()  # a finished chunk may free the throttle
            # A poll's answer is acted on when it comes; a poll still running is not repeated
            # (the time of the next one passes: what a limit refused is tried again).
            if self._poll_answered() or time.monotonic() >= next_poll:
                if self._poll_scheduler():
                    changed = True
                    poll_interval = max(self.scheduler.min_poll_interval, FIRST_TICK)
                elif self._poll is None:  # an answer that changed nothing: back off
                    poll_interval = min(poll_interval * BACKOFF, self.options.polling_interval)
                if self._poll_answered():  # not read: nothing is in flight that it concerns
                    self._poll = None
                self._submit_waiting()  # what a limit refused earlier
                next_poll = time.monotonic() + poll_interval
            fresh = self._take_fresh()
            yield from fresh
            if fresh:
                self._reduce_if_due()
            if changed is not None:
                tick = FIRST_TICK if changed else min(tick * BACKOFF, self.options.polling_interval)
            # A consumer that took results spent time on them (the applier writes blocks):
            # what finished meanwhile is collected at once, not after another sleep, once the
            # last scan's share of the time is spent.
            now = time.monotonic()
            if not self._done() and not self._fresh and (not fresh or now < self._next_scan):
                wait = max(0.0 if fresh else tick, self._next_scan - now)
                self._wait(max(0.0, min(wait, max(0.0, next_poll - now) + FIRST_TICK)))
        while self._fresh:  # found at the last collect
            yield from self._take_fresh()
        self._cancel_leftovers()
        self.work_dir.claims.remove()
        self.scheduler.release(self.jobs)
        self.work_dir.log("map_finished", chunks=self.manifest.num_chunks, lost=sorted(self.lost_chunks))
        if self.lost_chunks:
            raise self._lost_error()

    def _wait(self, timeout: float) -> None:
        """Sleep until the next tick; a running poll's answer ends the sleep."""
        if self._poll is not None:
            self._poll.done.wait(timeout)
        else:
            self.scheduler.wait(timeout)

    def _poll_answered(self) -> bool:
        return self._poll is not None and self._poll.done.is_set()

    def _take_fresh(self) -> array.array[int]:
        """The next fresh chunks for the consumer, at most FRESH_AT_MOST: the loop reduces
        between two batches, so that a driver that fell behind its workers and found a
        million results at once holds no more of them loose, read, than any other."""
        fresh = self._fresh[:FRESH_AT_MOST]
        del self._fresh[:FRESH_AT_MOST]
        return fresh

    def _outstanding(self) -> list[int]:
        return [c for c in self.finished.missing() if c not in self.lost_chunks]

    def _outstanding_count(self) -> int:
        return self.manifest.num_chunks - len(self.finished) - len(self.lost_chunks)

    def _in_flight(self) -> list[int]:
        return sorted(c for c, state in self.chunks.items() if state.job_id is not None
                      and c not in self.finished and c not in self.lost_chunks)

    # -- submission --------------------------------------------------------------------
    def _reattach_or_submit(self) -> bool:
        """Chunks whose job a previous driver recorded are taken to be still in flight: the
        polls tell whether they are, and resubmit them if not. The rest is submitted.
        Returns whether anything was reattached."""
        todo = set(self._outstanding())
        for job in self.jobs:  # the previous driver's jobs do not count toward this one's budget
            for chunk in job["chunks"]:
                if chunk in todo:
                    self.chunks[chunk].job_id = job["job_id"]
        reattached = sorted(c for c in todo if self.chunks[c].job_id is not None)
        if reattached:
            self.work_dir.log("reattached", chunks=reattached)
        self._submit(sorted(todo.difference(reattached)))
        return bool(reattached)

    def _submit(self, chunks: list[int]) -> None:
        if chunks:
            self.submissions.add(chunks)
            self._submit_waiting()

    def _submit_waiting(self) -> None:
        in_flight = self._in_flight()
        room = None
        if self.spec.throttle and not self.scheduler.throttles(self.spec):
            room = max(0, self.spec.throttle - len(in_flight))
        self.submissions.submit(self._accepted, room, nothing_queued=not in_flight)

    def _accepted(self, record: JobRecord) -> None:
        for chunk in record["chunks"]:
            state = self.chunks[chunk]
            state.attempts += 1
            state.job_id = record["job_id"]
            state.absent_polls, state.absent_since = 0, None

    # -- observation -------------------------------------------------------------------
    def _collect(self) -> bool:
        """Note the chunks whose result newly appeared in the work_dir (in ``_fresh``)."""
        before = len(self._fresh)
        started = time.monotonic()
        scanned, changed = self.work_dir.scan_changed()
        self._next_scan = started + SCAN_SHARE * (time.monotonic() - started)
        for chunk in changed:  # ascending: as submitted, so an ordered consumer holds few back
            files = scanned.get(chunk)
            if (files is not None and "result" in files["final"] and chunk not in self.finished
                    and chunk < self.manifest.num_chunks):
                self.finished.add(chunk)
                self.unreduced[chunk] = files["final"]
                self.lost_chunks.discard(chunk)  # its result arrived after all
                self._fresh.append(chunk)
        new = self._fresh[before:]
        if new:
            self._no_longer_needed(new.tolist())
            self.progress.advance(sum(len(self.manifest.chunk_range(c)) for c in new))
            self._reduce_if_due()
        return bool(new)

    def _reduce_if_due(self) -> None:
        # The fresh chunks are all unreduced: counted without building _reducible().
        loose = len(self.unreduced) - len(self._fresh)
        if loose >= max(REDUCE_AT_LEAST, min(len(self.archived), LOOSE_AT_MOST)):
            self._reduce()

    def _no_longer_needed(self, chunks: list[int]) -> None:
        """Finished chunks waiting for a resubmission (their earlier run delivered after all)
        are not submitted."""
        self.submissions.drop(chunks)

    def _reducible(self) -> ChunkKinds:
        """Unreduced chunks the consumer has had: it reads the fresh ones next, and a loose
        file reads faster than an archive entry."""
        return self.unreduced.without(self._fresh)

    def _safe_poll(self) -> PollResult | None:
        """The answer of a scheduler poll, or None: while the poll runs (it was started now, or
        earlier: one at a time), or when it failed. A failing command costs a poll, not the
        map, unless its output stays unreadable or the scheduler stays silent (failing or
        hanging) for MAX_POLL_OUTAGE. The caller collects the work_dir after it, so that a
        result written before the poll looked does not look lost."""
        poll = self._poll
        if poll is None:
            poll = self._poll = _Poll(self.scheduler, self.spec, list(self.jobs))
            poll.done.wait(POLL_PATIENCE)
        if not poll.done.is_set():
            silent = time.monotonic() - (self._failing_since or poll.started)
            if silent > MAX_POLL_OUTAGE:
                raise SchedulerError(f"the scheduler has not answered a poll for {silent:.0f} s "
                                     f"(one has hung for {time.monotonic() - poll.started:.0f} s). "
                                     f"The work_dir is kept: {self.work_dir.path}")
            return None
        self._poll = None
        try:
            if poll.error is not None:
                raise poll.error
        except SchedulerError as exc:
            now = time.monotonic()
            self._poll_failures += 1
            self._failing_since = self._failing_since or poll.started  # silent since it asked
            self._unreadable = self._unreadable + 1 if isinstance(exc, SchedulerOutputError) else 0
            if self._poll_failures & (self._poll_failures - 1) == 0:  # 1, 2, 4, ...: a short log
                self.work_dir.log("poll_failed", error=str(exc), failures=self._poll_failures)
                if self.options.verbose:
                    self.progress.write(f"poolparty_raster: poll failed, will retry: {exc}")
            kept = f"The work_dir is kept: {self.work_dir.path}"
            if self._unreadable >= UNREADABLE_POLLS:
                raise SchedulerOutputError(f"{exc} ({self._unreadable} polls in a row). {kept}") from exc
            if now - self._failing_since > MAX_POLL_OUTAGE:
                raise SchedulerError(f"the scheduler has not answered a poll for "
                                     f"{now - self._failing_since:.0f} s: {exc}. {kept}") from exc
            return None
        self._poll_failures, self._failing_since, self._unreadable = 0, None, 0
        statuses = poll.answer
        # Jobs submitted while the poll ran were not asked about: pending, as far as it knows.
        asked = {job["job_id"] for job in poll.jobs}
        for job in self.jobs:
            if job["job_id"] not in asked:
                for member in job["chunks"]:
                    statuses.setdefault((job["job_id"], member), TaskStatus(
                        TaskState.PENDING, "submitted while the scheduler was polled"))
        self._last_poll = statuses
        return statuses

    def _poll_scheduler(self) -> bool:
        """Act on what the scheduler says. Returns whether anything changed."""
        if not self._in_flight():
            return False
        statuses = self._safe_poll()
        if statuses is None:
            return False
        self._collect()  # a result written just before the poll must not look lost
        now = time.monotonic()
        changed = False
        dead: list[tuple[int, str]] = []
        errors: dict[str, list[tuple[int, TaskStatus]]] = {}
        for chunk in self._in_flight():
            state = self.chunks[chunk]
            status = statuses.get((state.job_id, chunk))
            if status is not None and status.state is TaskState.FATAL:
                raise SchedulerError(f"chunk {chunk} of map {self.spec.job_name} cannot run: "
                                     f"{status.reason}. The work_dir is kept: {self.work_dir.path}")
            if status is not None and status.state is TaskState.ERROR:
                errors.setdefault(state.job_id, []).append((chunk, status))
            elif status is None or status.state is TaskState.FINISHED:
                if state.absent_since is None:
                    state.absent_since, changed = now, True
                state.absent_polls += 1
                lag = self.scheduler.filesystem_lag
                if status is not None and status.succeeded and lag > 0:
                    lag = max(lag, SUCCEEDED_GRACE)
                if (lag == 0 or state.absent_polls >= 2) and now - state.absent_since >= lag:
                    reason = status.reason if status else "gone from the queue"
                    self.work_dir.log("lost", chunk=chunk, job_id=state.job_id, reason=reason)
                    dead.append((chunk, reason))
            else:
                state.absent_polls, state.absent_since = 0, None
        dead += self._cancel_error_states(errors)
        self._retry_or_lose(dead)
        return changed or bool(dead)

    def _cancel_error_states(self, errors: dict[str, list[tuple[int, TaskStatus]]]
                             ) -> list[tuple[int, str]]:
        """Cancel stuck elements, one call per job; one that cannot be cancelled now stays in
        its error state and is tried again at the next poll."""
        dead = []
        for job_id, members in errors.items():
            record = self.submissions.record(job_id)
            chunks = [chunk for chunk, _ in members]
            try:
                detail = self.scheduler.describe(self.spec, record, chunks[0])
                self.scheduler.cancel(self.spec, [record], chunks)
            except SchedulerError as exc:
                self.work_dir.log("cancel_failed", job_id=job_id, chunks=chunks, error=str(exc))
                continue
            for chunk, status in members:
                self.work_dir.log("error_state", chunk=chunk, job_id=job_id,
                                  reason=status.reason, detail=detail)
                dead.append((chunk, f"stuck in {status.reason}" + (f": {detail}" if detail else "")))
        return dead

    def _retry_or_lose(self, dead: list[tuple[int, str]]) -> None:
        """Resubmit the chunks whose attempt died, or give up on those out of attempts."""
        if not dead:
            return
        self._stop_if_disk_full()
        self.work_dir.scan()
        live = self.work_dir.live_captures()
        resubmit, lost = [], []
        for chunk, reason in dead:
            self._archive_dead_attempt(chunk, reason, live.get(chunk, []))
            state = self.chunks[chunk]
            state.job_id = None
            (resubmit if state.attempts <= self.options.max_num_resubmissions else lost).append(chunk)
        self.lost_chunks.update(lost)
        if resubmit:
            self.progress.note_resubmitted(len(resubmit))
            self._submit(resubmit)
        if lost:
            self.progress.note_failed(sum(len(self.manifest.chunk_range(c)) for c in lost))

    def _archive_dead_attempt(self, chunk: int, reason: str, captures: list[str]) -> None:
        """Keep a dead attempt's reason and stderr tail for the report, its captures for the
        archive."""
        state = self.chunks[chunk]
        tail: list[str] = []
        for name in captures:
            stream = capture_stream(name)
            if stream == "stderr":
                try:
                    with open(self.work_dir.file(name), "rb") as f:
                        tail = tail_lines(f.read())
                except FileNotFoundError:  # the attempt lives on (a silent worker) and moved it
                    continue
            self._lost_captures[name] = f"{chunk_key(chunk)}.attempt-{len(state.deaths) + 1}.{stream}"
        state.deaths.append((reason, tail))

    def requeue(self, chunk: int, reason: str) -> None:
        """A finished chunk whose output cannot be read counts as not run: its loose outputs
        are removed and it is resubmitted (or lost, when out of attempts)."""
        self.finished.discard(chunk)
        self.unreduced.pop(chunk, None)
        self.archived.discard(chunk)
        self.work_dir.discard_loose(chunk)
        self.work_dir.log("unreadable_output", chunk=chunk, reason=reason)
        self.progress.advance(-len(self.manifest.chunk_range(chunk)))
        self._retry_or_lose([(chunk, f"its output could not be read: {reason}")])

    # -- endings -----------------------------------------------------------------------
    def archive(self) -> None:
        """Move every loose file into the archives: what a kept work_dir holds at the end."""
        self._reduce(final=True)

    def _reduce(self, final: bool = False) -> None:
        if final:
            for chunk, files in self.work_dir.scan().items():
                if chunk in self.archived and files["final"]:  # a late duplicate: first result won
                    self.work_dir.discard_loose(chunk)
                for name in files["live"]:  # captures of attempts cancelled or superseded
                    entry = f"{chunk_key(chunk)}.orphan.{capture_stream(name)}"
                    self._lost_captures.setdefault(name, entry)
            for name in self.work_dir.worker_captures():  # of workers gone between chunks
                token, stream = parse_worker_capture(name)
                self._lost_captures.setdefault(name, f"{token}.orphan.{stream}")
        chunks = self.unreduced if final else self._reducible()
        if chunks or self._lost_captures:
            self.work_dir.reduce(chunks, self._lost_captures)
            self.work_dir.log("reduced", chunks=len(chunks))
            self.archived |= chunks.keys()
            if final:
                self.unreduced = ChunkKinds(self.manifest.num_chunks, RESULT_ALONE)
            else:
                for chunk in chunks:
                    del self.unreduced[chunk]
            self._lost_captures = {}
        if final:
            self.work_dir.remove_result_logs()

    def _cancel_leftovers(self) -> None:
        """Cancel the duplicates of chunks that finished anyway (a resubmission whose earlier
        attempt still delivered): queued, they would start against a removed work_dir;
        running, they hold an allocation for a result that is not needed."""
        leftovers: dict[str, list[int]] = {}
        for chunk, state in self.chunks.items():
            status = self._last_poll.get((state.job_id, chunk))
            if state.deaths and state.job_id and (status is None or status.state is not TaskState.FINISHED):
                leftovers.setdefault(state.job_id, []).append(chunk)
        self._cancel_elements(leftovers)

    def _cancel_elements(self, elements: dict[str, list[int]]) -> set[str]:
        """Cancel ``{job_id: [chunk or worker, ...]}``; a failing cancel is logged, not raised
        (at the end of a map that succeeded, say). Returns the jobs whose cancel failed."""
        failed = set()
        for job_id, members in elements.items():
            try:
                self.scheduler.cancel(self.spec, [self.submissions.record(job_id)], members)
                self.work_dir.log("cancelled_leftovers", job_id=job_id, elements=members)
            except Exception as exc:
                self.work_dir.log("cancel_failed", job_id=job_id, error=str(exc))
                failed.add(job_id)
        return failed

    def _cancel_all(self, reason: str) -> None:
        """Cancel everything of the map, also when no job was recorded (a scheduler may hold
        more: a job whose submission seemed to fail, an ECS task definition)."""
        try:
            with cancelling():
                self.scheduler.cancel(self.spec, self.jobs)
            self.work_dir.log("cancelled", reason=reason)
        except Exception as exc:  # the original exception matters more; say what was left
            self.work_dir.log("cancel_failed", reason=reason, error=str(exc))

    def _stop_if_disk_full(self) -> None:
        """Chunks died. Where the work_dir's disk or quota is full, every run would die the
        same way (and could say so nowhere: its stderr file is on that disk): the map stops,
        naming the cause, instead of spending resubmissions on it."""
        error = self.work_dir.space_error()
        if error is not None:
            raise self._full_error(error) from error

    def _full_error(self, exc: OSError) -> WorkDirFullError:
        return WorkDirFullError(
            f"the work_dir's filesystem is full or over quota ({exc}). Every finished result "
            f"is kept ({len(self.finished)} of {self.manifest.num_chunks} chunks): free space, "
            f"then run the same map with the same work_dir to resume it: {self.work_dir.path}")

    def _lost_error(self) -> TaskLostError:
        lost = sorted(self.lost_chunks)
        tasks = sorted(i for c in lost for i in self.manifest.chunk_range(c))
        attempts = {c: self.chunks[c].attempts for c in lost}
        tails = {c: [line for _, tail in self.chunks[c].deaths for line in tail[-5:]] for c in lost}
        lines = [f"{len(tasks)} task(s) died without a result after "
                 f"{self.options.max_num_resubmissions} resubmission(s): task indices {_ranges(tasks)}."]
        for chunk in lost[:5]:
            lines.append(f"  chunk {chunk} (tasks {_ranges(list(self.manifest.chunk_range(chunk)))}), "
                         f"{attempts[chunk]} attempt(s):")
            told: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # the same death, told once
            for number, (reason, tail) in enumerate(self.chunks[chunk].deaths, 1):
                told.setdefault((reason, tuple(tail[-5:])), []).append(number)
            for (reason, tail), numbers in told.items():
                which = f"attempt {numbers[0]}" if len(numbers) == 1 else f"attempts {_ranges(numbers)}"
                short = reason if len(reason) <= 300 else reason[:297] + "..."
                lines.append(f"    {which}: {short}; last stderr lines:")
                lines.extend(f"      | {line}" for line in tail or ("(nothing written)",))
        lines.append(f"The work_dir is kept: {self.work_dir.path} (see log.jsonl and scheduler.log)")
        return TaskLostError("\n".join(lines), tasks, attempts, tails, self.work_dir.path)


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(indices))
