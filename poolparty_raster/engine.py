"""One map run: watch the work_dir and the scheduler, hand finished chunks over, reduce.

The same loop serves every backend and both modes. The worker's files decide success (a chunk
is finished when its result file exists); the scheduler's states only say what to run again
and when to give up. What runs the chunks is the run's mode, which the loop calls at set
points: :class:`~poolparty_raster.arraymode.ArrayMode` (a job per chunk, the default) or
:class:`~poolparty_raster.workersmode.WorkersMode` (workers that claim chunks).

The run owns the chunks' facts: which are finished, archived, lost, and the kinds of loose
output each has. The front (mapping.py) reads and changes them only through the public methods
below; the mode marks chunks lost through :meth:`MapRun.lose`.
"""
from __future__ import annotations

import array
import errno
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from poolparty_raster.arraymode import ArrayMode
from poolparty_raster.attempts import Attempts
from poolparty_raster.chunkset import ChunkKinds, ChunkSet
from poolparty_raster.errors import MapTerminated, TaskLostError, WorkDirFullError
from poolparty_raster.manifest import Manifest
from poolparty_raster.names import capture_stream, chunk_key, parse_worker_capture
from poolparty_raster.outcome import add_note, load_results, rebuild_exception
from poolparty_raster.polling import SchedulerPolls
from poolparty_raster.progress import Progress
from poolparty_raster.schedulers.base import JobRecord, PollResult, Scheduler, SubmitSpec
from poolparty_raster.settings import MapSettings
from poolparty_raster.submissions import Submissions
from poolparty_raster.workdir import WorkDir

FIRST_TICK = 0.02      # seconds; the adaptive interval starts here and backs off by BACKOFF
BACKOFF = 1.5
# Loose chunks before a reduction, then as many as are archived, up to LOOSE_AT_MOST. A
# reduction is wasted on a map whose work_dir is removed at its end; what it buys is a short
# listing at every scan (a thousand names list in well under a millisecond) and less held for
# the loose chunks the consumer read (a result kept for its reduce, looseresults.KEEP_RESULTS_BYTES
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
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunMode(Protocol):
    """How a map's chunks get run: what the loop calls, and when."""

    # Whether the mode acts at each poll's time even with nothing to ask the scheduler
    # about (workers mode: it may have to submit workers).
    polls_when_idle: bool

    def start(self) -> bool:
        """Reattach to an earlier driver's jobs, submit the rest; whether any was reattached."""

    def submit_waiting(self) -> None:
        """Submit what waits (a finished chunk or a poll may have made room)."""

    def watching(self) -> bool:
        """Whether any job of the map is there to ask the scheduler about."""

    def after_poll(self, statuses: PollResult) -> bool:
        """Act on a poll's answer (the work_dir just collected); whether anything changed."""

    def chunks_finished(self, chunks: list[int]) -> None:
        """Chunks whose results newly appeared."""

    def run_again(self, chunk: int, reason: str) -> None:
        """A chunk whose result cannot be read: run it again, or lose it."""

    def cancel_leftovers(self) -> None:
        """The map ended: cancel what of it still runs or waits for nothing."""


class MapRun:
    """Drives the chunks of one prepared work_dir to completion; iterate to get finished chunks."""

    def __init__(self, work_dir: WorkDir, manifest: Manifest, scheduler: Scheduler,
                 spec: SubmitSpec, options: MapSettings, progress: Progress,
                 abort: threading.Event, mode: Callable[[MapRun], RunMode] = ArrayMode):
        """``mode`` makes the run's mode from the run: array mode unless told."""
        self.work_dir = work_dir
        self.manifest = manifest
        self.scheduler = scheduler
        self.spec = spec
        self.options = options
        self.progress = progress
        self.abort = abort
        self.submissions = Submissions(work_dir, scheduler, spec, progress, options.verbose)
        self.polls = SchedulerPolls(scheduler, spec, work_dir, lambda: self.submissions.jobs,
                                    progress, options.verbose)
        self.attempts = Attempts(work_dir)
        self.archived = ChunkSet(manifest.num_chunks, work_dir.archived_chunks())
        self.finished = self.archived.copy()
        self._resumed = self.archived.copy()
        # chunk -> the kinds of loose output the scan that found its result saw: the worker
        # writes the result last, so no other kind of the chunk's is anywhere else.
        self._unreduced = ChunkKinds(manifest.num_chunks, RESULT_ALONE)
        self.lost_chunks: set[int] = set()   # disjoint from finished
        self._fresh = array.array("q")  # finished chunks not yet handed to the consumer
        self._reattached: bool | None = None  # None until started
        self._next_scan = 0.0  # when the loop may scan the work_dir again (SCAN_SHARE)
        self.lost_error: TaskLostError | None = None  # set when the map ends with lost chunks
        self._released = False  # scheduler.release called
        self.mode = mode(self)

    @property
    def jobs(self) -> list[JobRecord]:
        return self.submissions.jobs

    # -- what the front calls ---------------------------------------------------------------
    def start(self) -> None:
        """Submit the map (called when it is created, as multiprocessing's imap does; what a
        previous driver's jobs delivered since it died is never run again)."""
        if self._reattached is not None:
            return
        try:
            self.collect()
            self._reattached = self.mode.start()
        except BaseException as exc:
            self.submissions.cancel_all(reason=type(exc).__name__)
            raise

    def supersede_earlier_jobs(self) -> None:
        """The map is resumed in the other mode: the earlier driver's jobs number members of
        the other kind (chunks, or workers), so they are cancelled and forgotten, not
        reattached (their results so far are kept, as always)."""
        self.submissions.supersede()

    def __iter__(self) -> Iterator[int]:
        """The chunks as they finish (those an earlier driver archived first)."""
        try:
            yield from self._resumed  # archived by an earlier driver; loose ones come fresh
            yield from self._drive()
        except OSError as exc:
            self.submissions.cancel_all(reason=type(exc).__name__)
            if exc.errno in DISK_FULL:  # the driver's own write met it
                raise self._full_error(exc) from exc
            raise
        except BaseException as exc:  # Ctrl-C and GeneratorExit too: nothing may keep running
            self.submissions.cancel_all(reason=type(exc).__name__)
            raise
        finally:
            self._release()
            self.progress.close()

    def output_kinds(self, chunk: int) -> list[str] | None:
        """The kinds of loose output a finished chunk has (a kind not listed is nowhere);
        None for an archived chunk, whose kinds are not known without looking."""
        return self._unreduced.get(chunk)

    def discard_output(self, chunk: int, kind: str) -> None:
        """Remove a loose output of a chunk that is not its run's (an exception file of an
        attempt that died, which the result disowns): it is not archived either."""
        self.work_dir.discard_loose(chunk, (kind,))
        kinds = self._unreduced.get(chunk)
        if kinds is not None:
            self._unreduced[chunk] = [k for k in kinds if k != kind]

    def requeue(self, chunk: int, reason: str) -> None:
        """A finished chunk whose output cannot be read counts as not run: its loose outputs
        are removed and it is run again (or lost, when out of attempts)."""
        self.finished.discard(chunk)
        self._unreduced.pop(chunk, None)
        self.archived.discard(chunk)
        self.work_dir.discard_loose(chunk)
        self.work_dir.log("unreadable_output", chunk=chunk, reason=reason)
        self.progress.advance(-len(self.manifest.chunk_range(chunk)))
        self.mode.run_again(chunk, f"its output could not be read: {reason}")

    def abandon(self, reason: str) -> None:
        """The caller dropped the results unfinished: cancel everything of the map."""
        self.submissions.cancel_all(reason=reason)
        self._release()

    def _release(self) -> None:
        """Once, at every map's end, a failed or abandoned one's too: the backend forgets the
        jobs and lets go of what it holds for them (ECS task definitions, a fork server's)."""
        if not self._released:
            self._released = True
            self.scheduler.release(self.jobs)

    def all_finished(self) -> bool:
        return len(self.finished) == self.manifest.num_chunks

    def left_something_to_see(self) -> bool:
        """Whether chunks were lost, or dead attempts wrote to stderr: the work_dir is kept."""
        return bool(self.lost_chunks) or self.attempts.wrote_stderr()

    def archive(self) -> None:
        """Move every loose file into the archives: what a kept work_dir holds at the end."""
        self._reduce(final=True)

    # -- what the mode calls ---------------------------------------------------------------
    def outstanding(self) -> list[int]:
        """Chunks neither finished nor lost."""
        return [c for c in self.finished.missing() if c not in self.lost_chunks]

    def outstanding_count(self) -> int:
        return self.manifest.num_chunks - len(self.finished) - len(self.lost_chunks)

    def settled(self, chunk: int) -> bool:
        """Finished or lost: nothing more to run for it."""
        return chunk in self.finished or chunk in self.lost_chunks

    def lose(self, chunks: Iterable[int]) -> None:
        """Give up on chunks (a result that arrives after all still counts)."""
        self.lost_chunks.update(chunks)

    def collect(self) -> bool:
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
                self._unreduced[chunk] = files["final"]
                self.lost_chunks.discard(chunk)  # its result arrived after all
                self._fresh.append(chunk)
        new = self._fresh[before:]
        if new:
            self.progress.advance(sum(len(self.manifest.chunk_range(c)) for c in new))
            self._reduce_if_due()
            self.mode.chunks_finished(new.tolist())
        return bool(new)

    def stop_if_disk_full(self) -> None:
        """Chunks died. Where the work_dir's disk or quota is full, every run would die the
        same way (and could say so nowhere: its stderr file is on that disk): the map stops,
        naming the cause, instead of spending resubmissions on it."""
        error = self.work_dir.space_error()
        if error is not None:
            raise self._full_error(error) from error

    # -- the loop ----------------------------------------------------------------------------
    def _done(self) -> bool:
        return len(self.finished) + len(self.lost_chunks) >= self.manifest.num_chunks

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
                changed = self.collect()
            if changed:
                self.mode.submit_waiting()  # a finished chunk may free the throttle
            # A poll's answer is acted on when it comes; a poll still running is not repeated
            # (the time of the next one passes: what a limit refused is tried again).
            if self.polls.answered() or time.monotonic() >= next_poll:
                if self._poll_scheduler():
                    changed = True
                    poll_interval = max(self.scheduler.min_poll_interval, FIRST_TICK)
                elif not self.polls.running:  # an answer that changed nothing: back off
                    poll_interval = min(poll_interval * BACKOFF, self.options.polling_interval)
                self.polls.drop_answer()  # not read: nothing is in flight that it concerns
                self.mode.submit_waiting()  # what a limit refused earlier
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
                self.polls.wait(max(0.0, min(wait, max(0.0, next_poll - now) + FIRST_TICK)))
        while self._fresh:  # found at the last collect
            yield from self._take_fresh()
        self.mode.cancel_leftovers()
        self.work_dir.claims.remove()
        self.work_dir.log("map_finished", chunks=self.manifest.num_chunks, lost=sorted(self.lost_chunks))
        if self.lost_chunks:
            self.lost_error = self.attempts.lost_error(self.lost_chunks, self.manifest,
                                                       self.options.max_num_resubmissions)
            raised = self._first_raised()
            if raised is None:
                raise self.lost_error
            # The user catches their own exception type, as with multiprocessing; the deaths
            # are told beside it rather than hidden behind a TaskLostError.
            add_note(raised, f"poolparty_raster: besides this exception, {self.lost_error}")
            raise raised

    def _poll_scheduler(self) -> bool:
        """Ask the scheduler (when the mode has jobs to ask about) and let the mode act on
        its answer. Returns whether anything changed."""
        if self.mode.watching():
            statuses = self.polls.answer()
            if statuses is None:
                return False
            self._show_queue(statuses)
        elif self.mode.polls_when_idle:
            statuses = {}
        else:
            return False
        self.collect()  # a result written just before the poll must not look lost
        return self.mode.after_poll(statuses)

    def _first_raised(self) -> BaseException | None:
        """The exception of the first task (by input index) that raised, read back from the
        results: only chunks with an exception file can hold one (a file the result
        disowns, another run's, holds none)."""
        archived_raised = self.work_dir.archived_chunks("exception")
        for chunk in self.finished:
            kinds = self._unreduced.get(chunk)
            if not (chunk in archived_raised if kinds is None else "exception" in kinds):
                continue
            try:
                _, records = load_results(self.work_dir.read_output(chunk, "result"))
            except Exception:  # a damaged result: the map ends anyway, with what is readable
                continue
            if records:
                first = min(records, key=lambda record: record["index"])
                return rebuild_exception(first, self.work_dir.path)
        return None

    def _show_queue(self, statuses: PollResult) -> None:
        """The poll's queued and running counts for the progress: of workers in workers
        mode, else of chunks still to finish (a finished chunk's job may be listed a while)."""
        if self.options.mode == "workers":
            self.progress.note_queue(statuses.values(), "workers")
        else:
            self.progress.note_queue((s for (_, chunk), s in statuses.items()
                                      if not self.settled(chunk)), "chunks")

    def _take_fresh(self) -> array.array[int]:
        """The next fresh chunks for the consumer, at most FRESH_AT_MOST: the loop reduces
        between two batches, so that a driver that fell behind its workers and found a
        million results at once holds no more of them loose, read, than any other."""
        fresh = self._fresh[:FRESH_AT_MOST]
        del self._fresh[:FRESH_AT_MOST]
        return fresh

    # -- reductions ----------------------------------------------------------------------------
    def _reduce_if_due(self) -> None:
        # The fresh chunks are all unreduced: counted without building _reducible().
        loose = len(self._unreduced) - len(self._fresh)
        if loose >= max(REDUCE_AT_LEAST, min(len(self.archived), LOOSE_AT_MOST)):
            self._reduce()

    def _reducible(self) -> ChunkKinds:
        """Unreduced chunks the consumer has had: it reads the fresh ones next, and a loose
        file reads faster than an archive entry."""
        return self._unreduced.without(self._fresh)

    def _reduce(self, final: bool = False) -> None:
        lost_captures = self.attempts.lost_captures
        if final:
            for chunk, files in self.work_dir.scan().items():
                if chunk in self.archived and files["final"]:  # a late duplicate: first result won
                    self.work_dir.discard_loose(chunk)
                for name in files["live"]:  # captures of attempts cancelled or superseded
                    entry = f"{chunk_key(chunk)}.orphan.{capture_stream(name)}"
                    lost_captures.setdefault(name, entry)
            for name in self.work_dir.worker_captures():  # of workers gone between chunks
                token, stream = parse_worker_capture(name)
                lost_captures.setdefault(name, f"{token}.orphan.{stream}")
        chunks = self._unreduced if final else self._reducible()
        if chunks or lost_captures:
            self.work_dir.reduce(chunks, lost_captures)
            self.work_dir.log("reduced", chunks=len(chunks))
            self.archived |= chunks.keys()
            if final:
                self._unreduced = ChunkKinds(self.manifest.num_chunks, RESULT_ALONE)
            else:
                for chunk in chunks:
                    del self._unreduced[chunk]
            self.attempts.lost_captures = {}
        if final:
            self.work_dir.remove_result_logs()

    def _full_error(self, exc: OSError) -> WorkDirFullError:
        return WorkDirFullError(
            f"the work_dir's filesystem is full or over quota ({exc}). Every finished result "
            f"is kept ({len(self.finished)} of {self.manifest.num_chunks} chunks): free space, "
            f"then run the same map with the same work_dir to resume it: {self.work_dir.path}")
