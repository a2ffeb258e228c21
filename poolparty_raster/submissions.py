"""A map's submissions: the jobs the scheduler accepted, the members waiting to be submitted,
and the cancelling of jobs.

Members are chunks (array mode) or worker numbers (workers mode). Every accepted job is stored
in the work_dir the moment the scheduler yields it, so a driver that dies, or a submission that
fails half-way, never forgets a job it started. Members wait when a scheduler limit refuses them
for now (they are tried again, backing off) or when the engine's own throttle holds them back.
"""
from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Callable, Iterator, Sequence

from poolparty_raster.errors import SchedulerError, SubmissionRefused
from poolparty_raster.progress import Progress
from poolparty_raster.schedulers.base import JobRecord, Scheduler, SubmitSpec, cancelling
from poolparty_raster.workdir import WorkDir

FIRST_RETRY = 2.0    # seconds before a refused submission is tried again; doubles to MAX_RETRY
MAX_RETRY = 60.0


class Submissions:
    """The map's jobs (``jobs``, as recorded in jobs.jsonl) and its members waiting to be
    submitted (``waiting``)."""

    def __init__(self, work_dir: WorkDir, scheduler: Scheduler, spec: SubmitSpec,
                 progress: Progress, verbose: bool):
        self.work_dir, self.scheduler, self.spec = work_dir, scheduler, spec
        self.progress, self.verbose = progress, verbose
        self.jobs: list[JobRecord] = work_dir.read_jobs()
        # Before anything is submitted: a lost answer's check must not take an earlier
        # driver's job, listed under the map's name, for the new one.
        scheduler.remember(spec, self.jobs)
        self.waiting: set[int] = set()
        # Members to submit with requests in place of the pool's (a retry after a kill);
        # the job record keeps them ("resources"), so jobs.jsonl shows what each job asked for.
        self.requests: dict[int, dict[str, str]] = {}
        self._retry_at = 0.0
        self._delay = FIRST_RETRY
        self._refused: tuple[str, float] | None = None  # (reason, since when)

    def record(self, job_id: str | None) -> JobRecord:
        return next(job for job in self.jobs if job["job_id"] == job_id)

    def add(self, members: Sequence[int], request: dict[str, str] | None = None) -> None:
        """Members to submit, with ``request`` in place of the pool's requests if given."""
        self.waiting.update(members)
        for member in members:
            if request:
                self.requests[member] = request
            else:
                self.requests.pop(member, None)

    def drop(self, members: Sequence[int]) -> None:
        self.waiting.difference_update(members)
        for member in members:
            self.requests.pop(member, None)

    def submit(self, accepted: Callable[[JobRecord], None], room: int | None = None,
               nothing_queued: bool = False) -> bool:
        """Submit what waits, at most ``room`` members; ``accepted(record)`` is called for each
        job as the scheduler accepts it. Returns whether anything was submitted.

        ``nothing_queued`` says that none of the map's jobs is queued or running: a refusal
        that lasts longer than its give-up time then fails the map, since nothing of ours will
        end and free the limit."""
        if not self.waiting or time.monotonic() < self._retry_at:
            return False
        batch = heapq.nsmallest(room, self.waiting) if room is not None else sorted(self.waiting)
        if not batch:
            return False
        submitted = False
        try:
            for record in self._submit_by_request(batch):
                record["submitted"] = time.time()
                record["scheduler"] = self.scheduler.name  # poolparty-raster cancel reads it
                self.jobs.append(record)
                self.work_dir.append_job(record)
                self.drop(record["chunks"])
                self.work_dir.log("submitted", job_id=record["job_id"], members=record["chunks"])
                accepted(record)
                submitted = True
        except SubmissionRefused as exc:
            self._defer(exc, nothing_queued and not submitted)
            return submitted
        self._delay, self._refused = FIRST_RETRY, None
        return submitted

    def _submit_by_request(self, batch: list[int]) -> Iterator[JobRecord]:
        """Submit ``batch``, one submission per distinct request (most members have the
        pool's)."""
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for member in batch:
            groups.setdefault(tuple(sorted(self.requests.get(member, {}).items())), []).append(member)
        for request, members in groups.items():
            spec = dataclasses.replace(self.spec, resources=dict(request)) if request else self.spec
            for record in self.scheduler.submit(spec, members):
                if request:
                    record["resources"] = dict(request)
                yield record

    def _defer(self, exc: SubmissionRefused, nothing_queued: bool) -> None:
        now = time.monotonic()
        reason = str(exc)
        if self._refused is None or self._refused[0] != reason:
            self._refused = (reason, now)
            self.work_dir.log("submit_deferred", reason=reason, waiting=len(self.waiting))
            if self.verbose:
                self.progress.write(f"poolparty_raster: {reason}; {len(self.waiting)} waiting, "
                                    f"trying again with backoff")
        waited = now - self._refused[1]
        if nothing_queued and exc.give_up_after is not None and waited > exc.give_up_after:
            raise SchedulerError(f"{reason} (refused for {waited:.0f} s while none of the map's "
                                 f"jobs was queued). The work_dir is kept: {self.work_dir.path}")
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, MAX_RETRY)

    def cancel(self, elements: dict[str, list[int]]) -> set[str]:
        """Cancel ``{job_id: [chunk or worker, ...]}``; a failing cancel is logged, not raised
        (at the end of a map that succeeded, say). Returns the jobs whose cancel failed."""
        failed = set()
        for job_id, members in elements.items():
            try:
                self.scheduler.cancel(self.spec, [self.record(job_id)], members)
                self.work_dir.log("cancelled_leftovers", job_id=job_id, elements=members)
            except Exception as exc:
                self.work_dir.log("cancel_failed", job_id=job_id, error=str(exc))
                failed.add(job_id)
        return failed

    def cancel_all(self, reason: str) -> None:
        """Cancel everything of the map, also when no job was recorded (a scheduler may hold
        more: a job whose submission seemed to fail, an ECS task definition)."""
        try:
            with cancelling():
                self.scheduler.cancel(self.spec, self.jobs)
            self.work_dir.log("cancelled", reason=reason)
        except Exception as exc:  # the original exception matters more; say what was left
            self.work_dir.log("cancel_failed", reason=reason, error=str(exc))

    def supersede(self) -> None:
        """Cancel and forget the jobs an earlier driver recorded (their members are of the
        other mode: chunks, or workers)."""
        if self.jobs:
            with cancelling():
                self.scheduler.cancel(self.spec, self.jobs)
            self.work_dir.log("superseded", jobs=[job["job_id"] for job in self.jobs])
            self.work_dir.forget_jobs()
            self.jobs = []
