"""Asking the scheduler about a map's jobs, and what its answer says of each member.

A scheduler poll runs in a thread of its own (one at a time per map): a command that hangs
holds back neither the results already in the work_dir nor the end of the map. That thread
only runs the poll; the driving thread alone reads its answer and changes the run's state.

:func:`observe` is the one reading of a member's state (a chunk in array mode, a worker in
workers mode): fatal, stuck in an error state, queued or running, or missing from the queue,
and after how long a missing member counts as gone.
"""
from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from poolparty_raster.errors import SchedulerError, SchedulerOutputError
from poolparty_raster.progress import Progress
from poolparty_raster.schedulers.base import (JobRecord, PollResult, Scheduler, SubmitSpec,
                                              TaskState, TaskStatus)
from poolparty_raster.workdir import WorkDir

UNREADABLE_POLLS = 3   # polls in a row whose output cannot be read: the map fails, quoting it
MAX_POLL_OUTAGE = 1800.0  # seconds of failing or hanging polls (results still arrive) before the map fails
# Seconds the loop waits for a poll it has just started before it looks at the work_dir again;
# a poll that takes longer is answered in the background.
POLL_PATIENCE = 0.05
# A job the scheduler saw end well has written its result; NFS may list the directory from a
# cache for up to its acdirmax (60 s by default) before the driver sees the file.
SUCCEEDED_GRACE = 60.0


class Seen(enum.Enum):
    """What one poll says of a member."""

    FATAL = "fatal"              # it can never run: the map fails
    ERROR_STATE = "error state"  # stuck (Eqw, a held array element): to be cancelled
    LISTED = "listed"            # queued or running
    VANISHED = "vanished"        # missing for the first time, not yet long enough to be gone
    MISSING = "missing"          # missing again, not yet long enough to be gone
    GONE = "gone"                # missing long enough: it ended, whatever it left


@dataclass(slots=True)
class Presence:
    """How long a member has been missing from the scheduler's answers."""

    absent_polls: int = 0
    absent_since: float | None = None


def observe(presence: Presence, status: TaskStatus | None, now: float, lag: float,
            succeeded_grace: bool = False) -> Seen:
    """Classify a member's ``status`` (None: not listed), keeping its ``presence`` up to date.

    A member that ended (finished, or no longer listed) is gone only after two polls and
    ``lag`` seconds, the time its last result may take to show on the driver's filesystem
    (one poll where the filesystem has no lag). ``succeeded_grace``: a member that ended well
    wrote its result, which a shared filesystem may show SUCCEEDED_GRACE late; a worker's
    grace is given to its claims instead (workersmode.py), so it is not asked for there."""
    if status is not None and status.state is TaskState.FATAL:
        return Seen.FATAL
    if status is not None and status.state is TaskState.ERROR:
        return Seen.ERROR_STATE
    if status is not None and status.state is not TaskState.FINISHED:
        presence.absent_polls, presence.absent_since = 0, None
        return Seen.LISTED
    vanished = presence.absent_since is None
    if vanished:
        presence.absent_since = now
    presence.absent_polls += 1
    if succeeded_grace and status is not None and status.succeeded and lag > 0:
        lag = max(lag, SUCCEEDED_GRACE)
    if (lag == 0 or presence.absent_polls >= 2) and now - presence.absent_since >= lag:
        return Seen.GONE
    return Seen.VANISHED if vanished else Seen.MISSING


def end_reason(status: TaskStatus | None) -> str:
    """Why a member that is gone ended, as the scheduler tells it."""
    return status.reason if status else "gone from the queue"


def cannot_run(what: str, spec: SubmitSpec, status: TaskStatus, work_dir: WorkDir) -> SchedulerError:
    """The error that fails the map when a member's state is fatal; ``what`` names it."""
    return SchedulerError(f"{what} of map {spec.job_name} cannot run: {status.reason}. "
                          f"The work_dir is kept: {work_dir.path}")


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


class SchedulerPolls:
    """A map's polls: at most one running, its answer read by the driving thread, and the
    count of failing ones (a failing command costs a poll, not the map, unless its output
    stays unreadable or the scheduler stays silent, failing or hanging, for MAX_POLL_OUTAGE)."""

    def __init__(self, scheduler: Scheduler, spec: SubmitSpec, work_dir: WorkDir,
                 jobs: Callable[[], list[JobRecord]], progress: Progress, verbose: bool):
        self.scheduler, self.spec, self.work_dir = scheduler, spec, work_dir
        self._jobs = jobs  # the map's job records now
        self.progress, self.verbose = progress, verbose
        self.last_answer: PollResult = {}
        self._failures = 0
        self._unreadable = 0  # polls in a row whose output could not be read
        self._failing_since: float | None = None
        self._poll: _Poll | None = None  # the poll running now, or answered and not yet read

    @property
    def running(self) -> bool:
        """A poll is running, or answered and not yet read."""
        return self._poll is not None

    def answered(self) -> bool:
        return self._poll is not None and self._poll.done.is_set()

    def drop_answer(self) -> None:
        """Forget an answer nobody read: nothing was in flight that it concerns."""
        if self.answered():
            self._poll = None

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``; a running poll's answer ends the sleep."""
        if self._poll is not None:
            self._poll.done.wait(timeout)
        else:
            self.scheduler.wait(timeout)

    def answer(self) -> PollResult | None:
        """The answer of a scheduler poll, or None: while the poll runs (it was started now,
        or earlier: one at a time), or when it failed. The caller collects the work_dir after
        it, so that a result written before the poll looked does not look lost."""
        poll = self._poll
        if poll is None:
            poll = self._poll = _Poll(self.scheduler, self.spec, list(self._jobs()))
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
            self._failed(exc, poll.started)
            return None
        self._failures, self._failing_since, self._unreadable = 0, None, 0
        statuses = poll.answer
        # Jobs submitted while the poll ran were not asked about: pending, as far as it knows.
        asked = {job["job_id"] for job in poll.jobs}
        for job in self._jobs():
            if job["job_id"] not in asked:
                for member in job["chunks"]:
                    statuses.setdefault((job["job_id"], member), TaskStatus(
                        TaskState.PENDING, "submitted while the scheduler was polled"))
        self.last_answer = statuses
        return statuses

    def _failed(self, exc: SchedulerError, started: float) -> None:
        now = time.monotonic()
        self._failures += 1
        self._failing_since = self._failing_since or started  # silent since it asked
        self._unreadable = self._unreadable + 1 if isinstance(exc, SchedulerOutputError) else 0
        if self._failures & (self._failures - 1) == 0:  # 1, 2, 4, ...: a short log
            self.work_dir.log("poll_failed", error=str(exc), failures=self._failures)
            if self.verbose:
                self.progress.write(f"poolparty_raster: poll failed, will retry: {exc}")
        kept = f"The work_dir is kept: {self.work_dir.path}"
        if self._unreadable >= UNREADABLE_POLLS:
            raise SchedulerOutputError(f"{exc} ({self._unreadable} polls in a row). {kept}") from exc
        if now - self._failing_since > MAX_POLL_OUTAGE:
            raise SchedulerError(f"the scheduler has not answered a poll for "
                                 f"{now - self._failing_since:.0f} s: {exc}. {kept}") from exc
