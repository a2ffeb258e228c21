"""Workers mode: a few long-lived worker jobs claim chunks from the work_dir until none is left.

The driver's part, in the spirit of a worker manager: keep between ``min_workers`` and
``max_workers`` worker jobs while unclaimed chunks remain, never more pending workers than
unclaimed chunks, never submitting faster than ``min_seconds_between_submissions``; release the
claim of a worker that died (gone from the queue, or a stale heartbeat) so another worker takes
the chunk, counting toward ``max_num_resubmissions`` for that chunk.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from poolparty_raster.engine import MapRun
from poolparty_raster.errors import SchedulerError
from poolparty_raster.schedulers.base import TaskState
from poolparty_raster.worker import HEARTBEAT_SECONDS

STALE_AFTER = 6 * HEARTBEAT_SECONDS  # a claim untouched this long belongs to a hung or dead worker


@dataclass(frozen=True)
class WorkerScaling:
    min_workers: int = 1
    max_workers: int | None = None   # None: the pool's parallelism
    min_seconds_between_submissions: float = 0.0


@dataclass
class _Worker:
    job_id: str
    absent_polls: int = 0
    absent_since: float | None = None
    state: TaskState = TaskState.PENDING


class WorkersRun(MapRun):
    """A MapRun whose jobs are workers (numbered 0, 1, ...) rather than chunks."""

    def __init__(self, *args, scaling: WorkerScaling, parallelism: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_workers = scaling.max_workers or parallelism
        self.min_workers = min(scaling.min_workers, self.max_workers)
        self.min_gap = scaling.min_seconds_between_submissions
        self.workers: dict[int, _Worker] = {}
        self.releases: dict[int, int] = {}
        self.worker_errors = 0
        self._last_submission = float("-inf")

    def _reattach_or_submit(self) -> None:
        for job in self.jobs:  # a resumed map: the previous driver's workers may still run
            for worker in job["chunks"]:
                self.workers[worker] = _Worker(job["job_id"])
        if self.workers:
            statuses = self._safe_poll() or {}
            for worker_id, worker in self.workers.items():
                status = statuses.get((worker.job_id, worker_id))
                worker.state = status.state if status else TaskState.FINISHED
        self._scale()

    def _alive(self) -> dict[int, _Worker]:
        return {w: s for w, s in self.workers.items() if s.state in (TaskState.PENDING, TaskState.RUNNING)}

    def _scale(self) -> None:
        claims = self.work_dir.claims()
        unclaimed = [c for c in self._outstanding() if c not in claims]
        if not unclaimed or time.monotonic() - self._last_submission < self.min_gap:
            return
        alive = self._alive()
        pending = sum(1 for w in alive.values() if w.state is TaskState.PENDING)
        wanted = max(self.min_workers - len(alive), min(self.max_workers - len(alive), len(unclaimed) - pending))
        if wanted <= 0:
            return
        first = max(self.workers, default=-1) + 1
        new = list(range(first, first + wanted))
        records = self.scheduler.submit(self.spec, new)
        for record in records:
            record["submitted"] = time.time()
            for worker in record["chunks"]:
                self.workers[worker] = _Worker(record["job_id"])
        self.jobs.extend(records)
        self.work_dir.write_jobs(self.jobs)
        self.work_dir.log("workers_submitted", workers=new, unclaimed=len(unclaimed))
        self._last_submission = time.monotonic()

    def _poll_scheduler(self) -> bool:
        statuses = self._safe_poll()
        if statuses is None:
            return False
        self._collect()
        now = time.monotonic()
        changed = False
        for worker_id, worker in self._alive().items():
            status = statuses.get((worker.job_id, worker_id))
            if status is not None and status.state is TaskState.FATAL:
                raise SchedulerError(f"worker {worker_id} of map {self.spec.job_name} cannot run: "
                                     f"{status.reason}. The work_dir is kept: {self.work_dir.path}")
            if status is not None and status.state is TaskState.ERROR:
                self.work_dir.log("error_state", worker=worker_id, job_id=worker.job_id, reason=status.reason)
                self.scheduler.cancel(self.spec, [self._record(worker.job_id)], [worker_id])
                worker.state, changed = TaskState.FINISHED, True
                self.worker_errors += 1
                if self.worker_errors > self.options.max_num_resubmissions + self.max_workers:
                    raise SchedulerError(f"{self.worker_errors} worker jobs landed in error states "
                                         f"(last: {status.reason}); giving up. Work_dir: {self.work_dir.path}")
            elif status is None or status.state is TaskState.FINISHED:
                worker.absent_since = worker.absent_since or now
                worker.absent_polls += 1
                lag = self.scheduler.filesystem_lag
                if (lag == 0 or worker.absent_polls >= 2) and now - worker.absent_since >= lag:
                    worker.state, changed = TaskState.FINISHED, True
            else:
                worker.state, worker.absent_polls, worker.absent_since = status.state, 0, None
        changed |= self._release_dead_claims()
        self._scale()
        return changed

    def _release_dead_claims(self) -> bool:
        """Free the chunks held by workers that are gone or silent; give up on hopeless ones."""
        alive = self._alive()
        released = []
        for chunk, (holder, heartbeat) in self.work_dir.claims().items():
            if chunk in self.finished or chunk in self.lost_chunks:
                continue
            worker = int(holder.split()[0]) if holder.split() and holder.split()[0].isdigit() else None
            stale = time.time() - heartbeat > STALE_AFTER + self.scheduler.filesystem_lag
            if (worker is not None and worker not in alive) or stale:
                released.append(chunk)
        for chunk in released:
            self._collect()
            if chunk in self.finished:
                continue
            self.releases[chunk] = self.releases.get(chunk, 0) + 1
            self.chunks[chunk].attempts = self.releases[chunk]
            self._archive_dead_attempt(chunk)
            self.work_dir.log("lost", chunk=chunk, holder=self.work_dir.claims().get(chunk, ("?",))[0])
            if self.releases[chunk] > self.options.max_num_resubmissions:
                self.lost_chunks.add(chunk)  # its claim stays, so no worker takes it again
                self.progress.note_failed(len(self.manifest.chunk_range(chunk)))
            else:
                self.work_dir.release_claim(chunk)
                self.progress.note_resubmitted(1)
        return bool(released)
