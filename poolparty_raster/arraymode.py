"""Array mode, the run's default mode: each chunk is a member of a job (an array element, or a
job of its own); a chunk whose job died without its result is submitted again, up to
``max_num_resubmissions`` times, then lost. Deaths that the same job would die again are not
resubmitted unchanged: a failed set-up line loses the chunk at once, and a wall-time or
memory kill too, unless ``retry_resources`` says what larger request to resubmit with."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from poolparty_raster.attempts import describe_request, next_request
from poolparty_raster.errors import SchedulerError
from poolparty_raster.polling import Seen, cannot_run, end_reason, observe
from poolparty_raster.schedulers.base import JobRecord, PollResult, TaskState, TaskStatus
from poolparty_raster.schedulers.jobcommand import SETUP_FAILED

if TYPE_CHECKING:
    from poolparty_raster.engine import MapRun

# Seconds a chunk gone from a listing that drops ended jobs (Grid Engine) waits for the
# scheduler's accounting to say how it ended (a wall-time kill is not resubmitted unchanged);
# Grid Engine writes its accounting every reporting_params flush_time (15 s by default), so
# qacct may show an ended job that late (ci/sge sets accounting_flush_time=00:00:00).
ACCOUNTING_PATIENCE = 60.0


class ArrayMode:
    """Submits chunks, resubmits those whose job died, cancels those stuck in an error state."""

    polls_when_idle = False  # with no chunk in flight there is nothing to do at a poll

    def __init__(self, run: MapRun):
        self.run = run
        self.attempts = run.attempts
        self.submissions = run.submissions
        self.attempts.request_options = run.scheduler.request_options
        self._asking: dict[int, float] = {}  # chunk gone -> since when its end is asked about

    # -- submission --------------------------------------------------------------------------
    def start(self) -> bool:
        """Chunks whose job a previous driver recorded are taken to be still in flight: the
        polls tell whether they are, and resubmit them if not. The rest is submitted.
        Returns whether anything was reattached."""
        todo = set(self.run.outstanding())
        for job in self.run.jobs:  # the previous driver's jobs do not count toward this one's budget
            for chunk in job["chunks"]:
                if chunk in todo:
                    self.attempts[chunk].job_id = job["job_id"]
                    self.attempts[chunk].request = job.get("resources")
        reattached = sorted(c for c in todo if self.attempts[c].job_id is not None)
        if reattached:
            self.run.work_dir.log("reattached", chunks=reattached)
        self._submit(sorted(todo.difference(reattached)))
        return bool(reattached)

    def _submit(self, chunks: list[int]) -> None:
        if chunks:
            self.submissions.add(chunks)
            self.submit_waiting()

    def submit_waiting(self) -> None:
        in_flight = self._in_flight()
        room = None
        spec, scheduler = self.run.spec, self.run.scheduler
        if spec.throttle and not scheduler.throttles(spec):
            room = max(0, spec.throttle - len(in_flight))
        self.submissions.submit(self._accepted, room, nothing_queued=not in_flight)

    def _accepted(self, record: JobRecord) -> None:
        for chunk in record["chunks"]:
            state = self.attempts[chunk]
            state.attempts += 1
            state.job_id = record["job_id"]
            state.request = record.get("resources")
            state.absent_polls, state.absent_since = 0, None

    def _in_flight(self) -> list[int]:
        finished, lost = self.run.finished, self.run.lost_chunks
        return sorted(c for c, state in self.attempts.items() if state.job_id is not None
                      and c not in finished and c not in lost)

    def chunks_finished(self, chunks: list[int]) -> None:
        """Finished chunks waiting for a resubmission (their earlier run delivered after all)
        are not submitted."""
        self.submissions.drop(chunks)

    # -- polls -------------------------------------------------------------------------------
    def watching(self) -> bool:
        return bool(self._in_flight())

    def after_poll(self, statuses: PollResult) -> bool:
        run = self.run
        now = time.monotonic()
        changed = False
        dead: list[tuple[int, str, str | None]] = []
        errors: dict[str, list[tuple[int, TaskStatus]]] = {}
        dead += self._ask_how_they_ended(now)
        told = {chunk for chunk, _, _ in dead}
        for chunk in self._in_flight():
            if chunk in self._asking or chunk in told:
                continue
            state = self.attempts[chunk]
            status = statuses.get((state.job_id, chunk))
            seen = observe(state, status, now, run.scheduler.filesystem_lag, succeeded_grace=True)
            if seen is Seen.FATAL:
                raise cannot_run(f"chunk {chunk}", run.spec, status, run.work_dir)
            if seen is Seen.ERROR_STATE:
                errors.setdefault(state.job_id, []).append((chunk, status))
            elif seen is Seen.VANISHED:
                changed = True
            elif seen is Seen.GONE and status is None and run.scheduler.asks_after_end:
                self._asking[chunk] = now
                dead += self._ask_how_they_ended(now, [chunk])
            elif seen is Seen.GONE:
                reason = end_reason(status)
                run.work_dir.log("lost", chunk=chunk, job_id=state.job_id, reason=reason)
                dead.append((chunk, reason, status.exceeded if status else None))
        dead += self._cancel_error_states(errors)
        self._retry_or_lose(dead)
        return changed or bool(dead)

    def _ask_how_they_ended(self, now: float, chunks: list[int] | None = None
                            ) -> list[tuple[int, str, str | None]]:
        """Ask the scheduler's accounting how chunks gone from its listing ended (all those
        waiting for an answer, or ``chunks``); those it does not know yet are asked again at
        the next poll, until ACCOUNTING_PATIENCE has passed."""
        run = self.run
        dead = []
        for chunk in list(self._asking) if chunks is None else chunks:
            state = self.attempts[chunk]
            if run.settled(chunk) or state.job_id is None:
                del self._asking[chunk]
                continue
            try:
                status = run.scheduler.end_status(run.spec, self.submissions.record(state.job_id),
                                                  chunk)
            except SchedulerError:
                status = None
            if status is None and now - self._asking[chunk] < ACCOUNTING_PATIENCE:
                continue
            del self._asking[chunk]
            reason = end_reason(status)
            run.work_dir.log("lost", chunk=chunk, job_id=state.job_id, reason=reason)
            dead.append((chunk, reason, status.exceeded if status else None))
        return dead

    def _cancel_error_states(self, errors: dict[str, list[tuple[int, TaskStatus]]]
                             ) -> list[tuple[int, str, str | None]]:
        """Cancel stuck elements, one call per job; one that cannot be cancelled now stays in
        its error state and is tried again at the next poll."""
        run = self.run
        dead = []
        for job_id, members in errors.items():
            record = self.submissions.record(job_id)
            chunks = [chunk for chunk, _ in members]
            try:
                detail = run.scheduler.describe(run.spec, record, chunks[0])
                run.scheduler.cancel(run.spec, [record], chunks)
            except SchedulerError as exc:
                run.work_dir.log("cancel_failed", job_id=job_id, chunks=chunks, error=str(exc))
                continue
            for chunk, status in members:
                run.work_dir.log("error_state", chunk=chunk, job_id=job_id,
                                 reason=status.reason, detail=detail)
                # HTCondor holds a job it killed at its request: a kill, not a stuck state
                said = status.reason if status.exceeded else f"stuck in {status.reason}"
                dead.append((chunk, said + (f": {detail}" if detail else ""), status.exceeded))
        return dead

    # -- dead attempts ---------------------------------------------------------------------------
    def run_again(self, chunk: int, reason: str) -> None:
        self._retry_or_lose([(chunk, reason, None)])

    def _retry_or_lose(self, dead: list[tuple[int, str, str | None]]) -> None:
        """Resubmit the chunks whose attempt died (``exceeded``: killed at its "time" or "mem"
        request), or give up on those out of attempts or that would die the same way."""
        if not dead:
            return
        run = self.run
        run.stop_if_disk_full()
        run.work_dir.scan()
        live = run.work_dir.live_captures()
        resubmit: dict[tuple[tuple[str, str], ...], list[int]] = {}  # by the next request
        lost = []
        for chunk, reason, exceeded in dead:
            state = self.attempts[chunk]
            asked = describe_request(run.scheduler, state.request)
            tail = self.attempts.record_death(
                chunk, f"{reason} (asked for {asked})" if asked and exceeded else reason,
                live.get(chunk, []))
            state.job_id = None
            state.cause = "setup" if tail and tail[-1].startswith(SETUP_FAILED) else exceeded
            request = state.request
            if exceeded and state.cause == exceeded:
                request = next_request(run.options.retry_resources, run.scheduler,
                                       state.attempts + 1, exceeded, state.request)
                if request is not None:
                    run.work_dir.log("retry_resources", chunk=chunk, exceeded=exceeded,
                                     request=request)
                    state.cause = None
            if state.cause or state.attempts > run.options.max_num_resubmissions:
                lost.append(chunk)
            else:
                resubmit.setdefault(tuple(sorted((request or {}).items())), []).append(chunk)
        run.lose(lost)
        for request, chunks in resubmit.items():
            run.progress.note_resubmitted(len(chunks))
            self.submissions.add(chunks, dict(request) or None)
        if resubmit:
            self.submit_waiting()
        if lost:
            run.progress.note_failed(sum(len(run.manifest.chunk_range(c)) for c in lost))

    # -- the end ---------------------------------------------------------------------------------
    def cancel_leftovers(self) -> None:
        """Cancel the duplicates of chunks that finished anyway (a resubmission whose earlier
        attempt still delivered): queued, they would start against a removed work_dir;
        running, they hold an allocation for a result that is not needed."""
        leftovers: dict[str, list[int]] = {}
        last_answer = self.run.polls.last_answer
        for chunk, state in self.attempts.items():
            status = last_answer.get((state.job_id, chunk))
            if state.deaths and state.job_id and (status is None or status.state is not TaskState.FINISHED):
                leftovers.setdefault(state.job_id, []).append(chunk)
        self.submissions.cancel(leftovers)
