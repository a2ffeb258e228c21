"""Workers mode, the driver's policy: a few long-lived worker jobs claim chunks from the
work_dir until none is left (node.py is the workers' side).

- keep up to ``max_workers`` worker jobs while unclaimed chunks remain, never more pending
  workers than unclaimed chunks (surplus pending ones are cancelled), never submitting faster
  than ``min_seconds_between_submissions``;
- a worker that died holding a claim (gone from the queue) has the claim released, so another
  worker takes the chunk, counting toward ``max_num_resubmissions`` for that chunk (of a run
  of chunks, the one it ran: the rest of the run is freed uncharged); one that
  ended well is given SUCCEEDED_GRACE for its last result to show (a shared filesystem's
  directory cache); the second run of a straggler is watched the same way;
- a resumed map's claims held by workers of the earlier driver (or by any worker this driver
  did not start) are released only once their holder is gone: its process, when it ran on
  this host, else its heartbeat (a LocalPool's scheduler cannot see processes it did not
  start); such a release is not charged to the chunk, as this driver did not run it;
- a worker whose heartbeat stopped for STALE_AFTER seconds of the driver's clock while its job
  still runs may be hung, or only busy in one long call that holds the GIL (the heartbeat is a
  thread): its chunk is issued once more, as a straggler's is, and it is left to run, not
  cancelled and not charged; the first result wins;
- workers that keep ending without claiming anything (a broken environment on the nodes) are
  not resubmitted for ever: the map fails, quoting the scheduler's reason;
- stragglers: when nothing is left to claim, a chunk running far longer than the others took
  is issued once more; the first result wins and the other run is cancelled at the end.
"""
from __future__ import annotations

import collections
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from poolparty_raster.claimwatch import ClaimWatch, holder_id, holder_token, process_alive
from poolparty_raster.workerloop import HEARTBEAT_SECONDS
from poolparty_raster.polling import (SUCCEEDED_GRACE, Presence, Seen, cannot_run, end_reason,
                                      observe)
from poolparty_raster.schedulers.base import JobRecord, PollResult, TaskState
from poolparty_raster.workdir import tail_lines

if TYPE_CHECKING:
    from poolparty_raster.engine import MapRun

STALE_AFTER = 6 * HEARTBEAT_SECONDS  # a claim untouched this long belongs to a hung or dead worker
STRAGGLER_FACTOR = 3.0      # a chunk running this many times the median chunk time,
STRAGGLER_MIN_SECONDS = 60.0  # and at least this long, is issued once more,
MIN_DURATIONS = 3           # once this many chunks have finished to compare it with
DURATIONS_KEPT = 1024       # the median of the chunks that finished last, at most this many


@dataclass
class _Worker:
    job_id: str
    state: TaskState = TaskState.PENDING
    reason: str = ""
    presence: Presence = field(default_factory=Presence)
    surplus: bool = False    # cancelled while pending: it counts for nothing, its end for no one
    ended_well_at: float | None = None  # when it was seen to end with exit code 0


class WorkersMode:
    """The run's jobs are workers (numbered 0, 1, ...) that claim chunks."""

    polls_when_idle = True  # with no worker alive, a poll's time is when workers are submitted

    def __init__(self, run: MapRun, parallelism: int):
        settings = run.options
        self.run = run
        self.submissions = run.submissions
        self.claims = ClaimWatch(run)
        self.max_workers = settings.max_workers or parallelism
        # At least one: a map with chunks left and no worker at all never waits out the gap.
        self.min_workers = max(1, min(settings.min_workers, self.max_workers))
        self.min_gap = settings.min_seconds_between_submissions
        self.workers: dict[int, _Worker] = {}
        self.releases: dict[int, int] = {}
        self.failed_starts = 0   # workers in a row that ended without claiming a chunk
        self._earlier_workers: set[int] = set()  # reattached: an earlier driver started them
        self._last_submission = float("-inf")
        # Of the chunks seen running (claimed, not finished): when the driver first saw the
        # claim, and (claim mtime, when it last changed). A chunk's go when it finishes.
        self._claim_seen: dict[int, float] = {}
        self._beats: dict[int, tuple[float, float]] = {}
        self._durations: collections.deque[float] = collections.deque(maxlen=DURATIONS_KEPT)
        self._running: dict[tuple[str, int], int] = {}  # (holder, run start) -> chunk it runs

    # -- submission --------------------------------------------------------------------------
    def start(self) -> bool:
        self.run.work_dir.claims.create()
        for job in self.run.jobs:  # a resumed map: taken to be alive until the polls say otherwise
            for worker in job["chunks"]:
                self.workers[worker] = _Worker(job["job_id"])
        self._earlier_workers = set(self.workers)
        if self.workers:
            self.run.work_dir.log("reattached", workers=sorted(self.workers))
        self._scale()
        return bool(self.workers)

    def _accepted(self, record: JobRecord) -> None:
        for worker in record["chunks"]:
            self.workers[worker] = _Worker(record["job_id"])

    def submit_waiting(self) -> None:
        self.submissions.submit(self._accepted, nothing_queued=not self._alive())

    def _alive(self) -> dict[int, _Worker]:
        """Workers the scheduler has not seen end (surplus ones being cancelled included: one
        that started meanwhile may hold a claim)."""
        return {w: s for w, s in self.workers.items() if s.state in (TaskState.PENDING, TaskState.RUNNING)}

    def _counted(self) -> dict[int, _Worker]:
        """The alive workers that scaling counts: not those cancelled as surplus."""
        return {w: s for w, s in self._alive().items() if not s.surplus}

    def _pending(self) -> list[int]:
        """Counted workers still waiting to start: the scheduler said so at the last poll,
        and they hold no claim (one that does has started since)."""
        holders = self.claims.holders()
        return sorted(w for w, s in self._counted().items()
                      if s.state is TaskState.PENDING and w not in holders)

    def _scale(self) -> None:
        unclaimed = self.claims.unclaimed()
        if not unclaimed or self.submissions.waiting:
            return
        alive = self._counted()
        wanted = min(self.max_workers - len(alive), unclaimed - len(self._pending()))
        if time.monotonic() - self._last_submission < self.min_gap:
            wanted = min(wanted, self.min_workers - len(alive))  # the gap paces growth above it
        if wanted <= 0:
            return
        first = max(self.workers, default=-1) + 1
        self.submissions.add(list(range(first, first + wanted)))
        self.run.work_dir.log("workers_wanted", workers=wanted, unclaimed=unclaimed)
        self.submit_waiting()
        # From the end of the call: the scheduler sees the gap however long sbatch took.
        self._last_submission = time.monotonic()

    def _trim_pending(self) -> None:
        """Never more pending workers than unclaimed chunks: cancel the newest surplus. A
        cancelled worker stays tracked until the scheduler reports it gone: one that started
        just before the cancel may hold a claim, which is released only once it is gone (and
        not charged to the chunk: the driver ended that run)."""
        surplus = self._pending()[self.claims.unclaimed():]
        by_job: dict[str, list[int]] = {}
        for worker in surplus:
            by_job.setdefault(self.workers[worker].job_id, []).append(worker)
        failed = self.submissions.cancel(by_job)
        for worker in surplus:
            if self.workers[worker].job_id not in failed:  # else: tried again next poll
                self.workers[worker].surplus, self.workers[worker].reason = True, "surplus"

    # -- observation -------------------------------------------------------------------------
    def chunks_finished(self, chunks: list[int]) -> None:
        now = time.monotonic()
        for chunk in chunks:
            seen = self._claim_seen.pop(chunk, None)
            self._beats.pop(chunk, None)
            if seen is not None:
                self._durations.append(now - seen)
            self.claims.finished(chunk)

    def watching(self) -> bool:
        return bool(self._alive())

    def after_poll(self, statuses: PollResult) -> bool:
        run = self.run
        now = time.monotonic()
        ended = []
        for worker_id, worker in self._alive().items():
            status = statuses.get((worker.job_id, worker_id))
            seen = observe(worker.presence, status, now, run.scheduler.filesystem_lag)
            if seen is Seen.FATAL:
                raise cannot_run(f"worker {worker_id}", run.spec, status, run.work_dir)
            if seen is Seen.ERROR_STATE:
                run.work_dir.log("error_state", worker=worker_id, job_id=worker.job_id, reason=status.reason)
                self.submissions.cancel({worker.job_id: [worker_id]})
                ended.append((worker_id, f"stuck in {status.reason}"))
            elif seen is Seen.GONE:
                ended.append((worker_id, end_reason(status)))
                if status is not None and status.succeeded:
                    worker.ended_well_at = now
            elif seen is Seen.LISTED:
                worker.state = status.state
        for worker_id, reason in ended:
            self.workers[worker_id].state, self.workers[worker_id].reason = TaskState.FINISHED, reason
            run.work_dir.log("worker_ended", worker=worker_id, reason=reason)
        changed = bool(ended)
        self.claims.forget(list_next=changed)  # a new poll; an ended worker's claims are new
        self._count_failed_starts([w for w, _ in ended])
        changed |= self._release_dead_claims()
        self._reissue_stragglers()
        self._trim_pending()
        self._scale()
        return changed

    def _count_failed_starts(self, ended: list[int]) -> None:
        """Workers that end without ever holding a claim, while chunks wait, failed to start
        (not an earlier driver's: their claims went with that map's end)."""
        ended = [w for w in ended if w not in self._earlier_workers and not self.workers[w].surplus]
        if not ended or not self.claims.unclaimed():
            return
        holders = self.claims.holders()
        for worker in ended:
            self.failed_starts = 0 if worker in holders else self.failed_starts + 1
        if self.failed_starts:
            self.run.stop_if_disk_full()
        if self.failed_starts > self.max_workers + self.run.options.max_num_resubmissions:
            reason = (f"{self.failed_starts} worker jobs in a row ended without running a chunk "
                      f"(last: {self.workers[ended[-1]].reason})")
            with open(self.run.work_dir.scheduler_log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 20_000))
                tail = tail_lines(f.read())
            outstanding = self.run.outstanding()
            for chunk in outstanding:
                self.run.attempts[chunk].deaths.append((reason, tail))
            self.run.lose(outstanding)

    # -- dead and silent workers -------------------------------------------------------------
    def _release_dead_claims(self) -> bool:
        """Free the chunks held by workers that are gone; issue once more those whose worker
        went silent; give up on hopeless ones."""
        run = self.run
        now = time.monotonic()
        released = False
        view = self.claims.view()
        previous, self._running = self._running, {}
        for chunk, (holder, mtime) in sorted(view.claims.items()):
            if run.settled(chunk):
                continue
            # A run's worker runs its chunks in order: the first unfinished one is the one
            # it runs (and dies of), the others it has not started; unless a second run
            # finished the one it was seen in, where it may be still.
            key = (holder, view.run_starts.get(chunk, chunk))
            if key not in self._running:
                at = previous.get(key)
                held_up = at is not None and run.settled(at) and at in self.claims.reissued
                self._running[key] = at if held_up else chunk
            started = self._running[key] == chunk
            self._claim_seen.setdefault(chunk, now)
            if self._beats.get(chunk, (None,))[0] != mtime:
                self._beats[chunk] = (mtime, now)
            silence = now - self._beats[chunk][1]
            worker = holder_id(holder)
            if not self._holder_gone(worker, now, holder, chunk):
                # The chunk a silent worker runs; the rest of its run waits for it, as any
                # chunk running long does (the straggler policy).
                if started and silence > STALE_AFTER + run.scheduler.filesystem_lag:
                    self.claims.reissue(chunk, f"no heartbeat for {silence:.0f} s")
                continue
            run.collect()
            # A result that came meanwhile, or that the dead worker held for a batch commit
            # (written, not linked: adopted here, not run again); the next chunk of the run
            # is then the one it ran. Or a chunk its worker had freed behind a slow chunk.
            if chunk in run.finished or run.work_dir.adopt_result(chunk):
                run.collect()
                if self._running.get(key) == chunk:
                    del self._running[key]
                continue
            if self.claims.claims.freed_by_its_worker(chunk):
                continue
            surplus = worker in self.workers and self.workers[worker].surplus
            token = holder_token(holder)
            captures = run.work_dir.worker_captures(token) if token and started else []
            self._release(chunk, holder, self._end_reason(worker), captures,
                          charged=started and not surplus and not self._earlier(worker),
                          started=started)
            released = True
        for chunk, holder in view.duplicated.items():
            if run.settled(chunk):
                continue
            worker = holder_id(holder)
            if not self._holder_gone(worker, now, holder):
                continue
            run.collect()
            if chunk not in run.finished:
                self._release_second_run(chunk, holder, self._end_reason(worker),
                                         charged=not self._earlier(worker))
                released = True
        return released

    def _earlier(self, worker: int | None) -> bool:
        """A worker this driver did not start: an earlier driver's (reattached), or one never
        recorded (its driver was killed between the submission and the record)."""
        return worker in self._earlier_workers or worker not in self.workers

    def _holder_gone(self, worker: int | None, now: float, holder: str = "",
                     chunk: int | None = None) -> bool:
        """Whether a claim's worker is gone for good. One that ended well wrote the results
        of all it claimed: its last may take SUCCEEDED_GRACE to show on a shared filesystem.
        One this driver did not start may run although the scheduler does not show it (a
        LocalPool's knows only its own processes): it is gone once its process is, when it
        ran on this host, else once the heartbeat of its claim (``chunk``, a first run's)
        stopped for STALE_AFTER."""
        if worker is None or worker in self._alive():
            return False
        if self._earlier(worker) and self._earlier_holder_alive(holder, chunk, now):
            return False
        state = self.workers.get(worker)
        lag = self.run.scheduler.filesystem_lag
        if state is not None and state.ended_well_at is not None and lag > 0:
            return now - state.ended_well_at >= max(lag, SUCCEEDED_GRACE)
        return True

    def _earlier_holder_alive(self, holder: str, chunk: int | None, now: float) -> bool:
        parts = holder.split()  # "<worker> <host> <pid> <token>"
        if len(parts) == 4 and parts[2].isdigit() and parts[1] == socket.gethostname():
            return process_alive(int(parts[2]), parts[3])
        if chunk is None:  # a second run's claim: no heartbeat followed, the scheduler's word
            return False
        silence = now - self._beats.get(chunk, (None, now))[1]
        return silence <= STALE_AFTER + self.run.scheduler.filesystem_lag

    def _end_reason(self, worker: int | None) -> str:
        state = self.workers.get(worker) if worker is not None else None
        return (state.reason if state is not None else "") or "its worker is gone"

    def run_again(self, chunk: int, reason: str) -> None:
        """This mode submits workers, not chunks: a chunk to run again has its claim
        released, so that a worker takes it."""
        claims = self.run.work_dir.claims
        claims.redo(chunk)  # workers count it done: its result is archived
        self._release(chunk, claims.holder_of(chunk), reason, [])

    def _release(self, chunk: int, holder: str, reason: str, captures: list[str],
                 charged: bool = True, started: bool = True) -> None:
        """Free the chunk (or give up on it); ``captures``: its dead worker's, which hold
        what the chunk printed. ``charged``: the run counts toward ``max_num_resubmissions``
        (not when the driver itself cancelled its worker); ``started``: False for a chunk of
        a dead worker's run that it never reached, which is freed and nothing more."""
        run = self.run
        if charged:
            run.stop_if_disk_full()
            self.releases[chunk] = self.releases.get(chunk, 0) + 1
            run.attempts[chunk].attempts = self.releases[chunk]
        if started:
            run.attempts.record_death(chunk, reason, captures)
            run.work_dir.log("lost", chunk=chunk, holder=holder, reason=reason, charged=charged)
        else:
            run.work_dir.log("released", chunk=chunk, holder=holder, reason=reason)
        self._claim_seen.pop(chunk, None)
        self._beats.pop(chunk, None)
        if self.releases.get(chunk, 0) > run.options.max_num_resubmissions:
            run.lose([chunk])  # its claim stays, so no worker takes it again
            run.progress.note_failed(len(run.manifest.chunk_range(chunk)))
        else:
            self.claims.release(chunk, holder)
            if started:
                run.progress.note_resubmitted(1)

    def _release_second_run(self, chunk: int, holder: str, reason: str,
                            charged: bool = True) -> None:
        """The second run of a re-issued chunk died: another worker may take it, unless the
        chunk has used up its resubmissions (its first run goes on either way)."""
        run = self.run
        if charged:
            self.releases[chunk] = self.releases.get(chunk, 0) + 1
        run.attempts.record_death(chunk, f"second run: {reason}", [])
        run.work_dir.log("lost", chunk=chunk, holder=holder, reason=reason, second_run=True,
                         charged=charged)
        spent = self.releases.get(chunk, 0) > run.options.max_num_resubmissions
        self.claims.release_second_run(chunk, spent)

    def _reissue_stragglers(self) -> None:
        if len(self._durations) < MIN_DURATIONS or self.claims.unclaimed():
            return
        limit = max(STRAGGLER_FACTOR * statistics.median(self._durations), STRAGGLER_MIN_SECONDS)
        now = time.monotonic()
        for chunk in sorted(c for c in self._claim_seen if not self.run.settled(c)):
            running = now - self._claim_seen.get(chunk, now)
            if running > limit:
                self.claims.reissue(chunk, f"running {running:.0f} s, the median chunk "
                                           f"{statistics.median(self._durations):.0f} s")

    # -- the end -----------------------------------------------------------------------------
    def cancel_leftovers(self) -> None:
        """Cancel every worker still queued or running: nothing is left for them (a second
        run's, or a silent one's, chunk is done), and one that starts after the work_dir is
        gone fails (Grid Engine keeps such a job in Eqw for ever). Workers the scheduler saw
        end, and surplus ones already cancelled, are left alone."""
        by_job: dict[str, list[int]] = {}
        for worker, state in sorted(self._counted().items()):
            by_job.setdefault(state.job_id, []).append(worker)
        self.submissions.cancel(by_job)
