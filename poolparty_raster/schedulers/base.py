"""What every scheduler backend provides to the engine, and the command runner they share.

A backend knows its scheduler's commands and output formats and nothing else: it never reads
results. The engine owns the policy (when to poll, resubmit, give up); a backend reports what the
scheduler says, normalised to :class:`TaskState`.
"""
from __future__ import annotations

import contextlib
import enum
import shutil
import subprocess
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from poolparty_raster.errors import (MapTerminated, SchedulerError, SchedulerOutputError,
                                     SchedulerUnavailableError, SubmissionRefused)


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"   # ended, successfully or not: the work_dir says which
    ERROR = "error"         # stuck in a state that cancelling and resubmitting fixes
    FATAL = "fatal"         # stuck in a state no resubmission fixes: fail the map


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState
    reason: str = ""
    # The scheduler says the job ended well (exit code 0): its result exists, and a driver
    # that does not see it yet is looking at a shared filesystem's stale directory cache.
    succeeded: bool = False
    # The scheduler killed it for outgrowing its request: "time" (wall time) or "mem".
    exceeded: str | None = None


@dataclass(frozen=True)
class SubmitSpec:
    """What a backend needs to submit a map's chunks."""

    work_dir: str
    script_path: str
    python_path: str
    job_name: str
    scheduler_log: str
    throttle: int | None = None
    cwd: str = "."
    mode: str = "array"  # the map's: a job runs one chunk ("array") or claims many ("workers")
    # This submission's requests in place of the pool's, by kind ("time", "mem": see
    # Scheduler.requests), in the backend's own format: a retry after a kill enlarges them.
    resources: dict[str, str] = field(default_factory=dict)


# A job record is the JSON-serialisable description of one submission that the backend yields
# and the engine stores (jobs.jsonl) so that a resumed driver can reattach. It always has
# "job_id" and "chunks"; backends add what they need to map their listing back to chunks.
JobRecord = dict[str, Any]
# Poll results are keyed by (job_id, chunk): a resubmitted chunk has several jobs.
PollResult = dict[tuple[str, int], TaskStatus]
# Seconds a scheduler out of reach is waited out before the map fails: the outage the
# engine's polls tolerate (polling.MAX_POLL_OUTAGE), here for submissions.
MAX_OUTAGE = 1800.0
# The id of a job that may have got in although its answer was lost (see Submitter).
UNCONFIRMED = "unconfirmed-"


class OutOfReach(SubmissionRefused):
    """The scheduler could not be reached: a refusal for now that no smaller job passes."""


_cancelling = threading.local()


@contextlib.contextmanager
def cancelling() -> Iterator[None]:
    """Within it (in this thread) retry waits run to their end even after terminate(): a
    cancel of the whole map is what terminating asked for."""
    _cancelling.active = True
    try:
        yield
    finally:
        _cancelling.active = False


class Scheduler(ABC):
    """A backend. Subclasses are small: submit, poll, cancel, and a check that it is there."""

    name = "scheduler"
    # Seconds a finished chunk's result may take to show on the driver's filesystem.
    filesystem_lag = 3.0
    # Shortest time between two polls, so a busy map does not flood a controller.
    min_poll_interval = 1.0
    # Set by the pool: a terminated pool interrupts waits inside backend calls.
    abort: threading.Event | None = None
    # {driver prefix: job prefix} where the jobs mount the work_dir elsewhere (containers).
    path_mapping: dict[str, str] = {}
    # The caller's variables that script.py must not carry: the jobs have their own (a
    # container's task role), and credentials have no business on a shared filesystem.
    unstored_variables: tuple[str, ...] = ()

    # The pool's requests a retry after a wall-time or memory kill may enlarge: {"time": the
    # wall time, "mem": the memory} in the backend's own format (None: the site's default),
    # and the option that sets each, for messages. Backends that can tell such kills set them.
    requests: dict[str, str | None] = {}
    request_options: dict[str, str] = {}

    # Whether a member gone from the listing is worth asking about (end_status): a
    # scheduler whose listing drops ended jobs tells why one ended only in its accounting.
    asks_after_end = False

    def end_status(self, spec: SubmitSpec, job: JobRecord, chunk: int) -> TaskStatus | None:
        """How a member that left the listing ended, from the scheduler's accounting; None
        while the accounting does not know yet (it is asked again at the next poll)."""
        return None

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        """A request of ``kind`` ("time" or "mem") times ``factor``, in the backend's format."""
        raise ValueError(f"{self.name} cannot enlarge its {kind} request")

    def check_job_name(self, job_name: str) -> None:
        """Raise ValueError if the scheduler refuses names that start with ``job_name``."""

    @abstractmethod
    def check_available(self) -> None:
        """Raise :class:`SchedulerUnavailableError` naming what is missing."""

    @abstractmethod
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        """Submit ``chunks`` (in one or several jobs or arrays), yielding each job's record as
        soon as the scheduler has accepted it: the engine stores it at once, so that a job is
        never forgotten when a later submission fails. Raise :class:`SubmissionRefused` when
        a limit refuses the rest for now; the engine submits those chunks again later."""

    def throttles(self, spec: SubmitSpec) -> bool:
        """Whether the scheduler itself keeps at most ``spec.throttle`` chunks running (an
        array throttle); if not, the engine submits no more than that many at a time."""
        return False

    def remember(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> None:
        """The jobs the map recorded before this driver started (a resumed map's jobs.jsonl),
        told before anything is submitted: they are not new jobs, whatever a listing says."""

    @abstractmethod
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        """The state of every job element the scheduler still lists. Missing = gone."""

    @abstractmethod
    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        """Cancel ``chunks`` of ``jobs`` (all of the map's jobs when ``chunks`` is None)."""

    def default_parallelism(self) -> int:
        """How many chunks are worth running at once when the user did not say."""
        return 16

    def wait(self, timeout: float) -> None:
        """Sleep until the next tick; a backend that knows when a job ends may return early."""
        time.sleep(timeout)

    def pause(self, seconds: float) -> None:
        """Sleep inside a backend call (a retry's backoff); a terminated pool cuts it short,
        unless the call is the cancel that terminating asked for (see :func:`cancelling`)."""
        if self.abort is None or getattr(_cancelling, "active", False):
            time.sleep(seconds)
        elif self.abort.wait(seconds):
            raise MapTerminated("the pool was terminated while a scheduler call was retried")

    def describe(self, spec: SubmitSpec, job: JobRecord, chunk: int) -> str:
        """Extra words on why a chunk is in an error state, for the log (optional)."""
        return ""

    def worker_path(self, path: str) -> str:
        """``path`` on the driver as the jobs see it (a container may mount it elsewhere)."""
        return map_path(path, self.path_mapping)

    def release(self, jobs: Sequence[JobRecord]) -> None:
        """Called at the end of every map: forget what the backend remembers of its jobs, and
        cancel what it may have left queued unseen (optional; never raises)."""


@dataclass
class CommandRunner:
    """Runs scheduler commands with a timeout and retries with exponential backoff.

    A command that times out is killed; one that exits non-zero is retried up to ``retries``
    times; after that :class:`SchedulerError` quotes its stderr. ``calls`` counts invocations.
    """

    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    pause: Callable[[float], None] = time.sleep
    calls: int = field(default=0, init=False)

    def run(self, argv: Sequence[str], *, retry: bool = True, ok_codes: Sequence[int] = (0,),
            stdin: str | None = None, transient: Callable[[str], bool] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """``transient(stderr)``, when given, tells the failures worth repeating from those
        no repeat changes (raised at once), also under an ok code: qdel's exit code 1 means
        "already gone" and "qmaster not answering" alike."""
        attempts = self.retries + 1 if retry else 1
        delay = self.backoff
        for attempt in range(attempts):
            result = self.run_once(argv, ok_codes=ok_codes, stdin=stdin)
            if result is not None and not (transient is not None and transient(result.stderr)):
                if result.returncode in ok_codes:
                    return result
                if transient is not None:
                    break
            if attempt + 1 < attempts:
                self.pause(delay)
                delay = min(delay * 2, self.max_backoff)
        what = "timed out" if result is None else f"exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        raise SchedulerError(f"`{' '.join(argv)}` {what} (after {attempts} attempt(s))")

    def run_once(self, argv: Sequence[str], *, ok_codes: Sequence[int] = (0,),
                 stdin: str | None = None) -> subprocess.CompletedProcess[str] | None:
        """One invocation; None when it timed out. A missing program raises at once."""
        self.calls += 1
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, input=stdin,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
        except FileNotFoundError as exc:
            raise SchedulerUnavailableError(f"`{argv[0]}` was not found: {exc}") from exc


def map_path(path: str, mapping: dict[str, str] | None) -> str:
    """A driver path as the container sees it (the longest matching prefix wins)."""
    for driver, container in sorted((mapping or {}).items(), key=lambda kv: -len(kv[0])):
        driver = driver.rstrip("/")
        if path == driver or path.startswith(driver + "/"):
            return container.rstrip("/") + path[len(driver):]
    return path


def require_commands(scheduler: str, paths: dict[str, str]) -> None:
    """Raise a clear error naming every missing command of a scheduler."""
    missing = [f"{option}={path!r}" for option, path in paths.items() if shutil.which(path) is None]
    if missing:
        raise SchedulerUnavailableError(
            f"{scheduler}: command(s) not found: {', '.join(missing)}. Install the {scheduler} "
            f"client tools, put them on PATH, or pass the paths to the pool.")


def split_by_span(chunks: Sequence[int], max_span: int) -> list[list[int]]:
    """Sorted chunks -> groups whose largest minus smallest is below ``max_span``
    (an array's indices run from 0 to its size limit - 1, counted from the group's first)."""
    groups: list[list[int]] = []
    for chunk in chunks:
        if groups and chunk - groups[-1][0] < max_span:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def contiguous_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices -> [(first, last), ...] of consecutive runs: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def index_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 7] -> '0-2,7' (SLURM's --array syntax)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(indices))


def cancel_targets(jobs: Sequence[JobRecord], chunks: Sequence[int] | None,
                   element_id: Callable[[JobRecord, int], str]) -> list[str]:
    """What to cancel: every job when ``chunks`` is None; else the array elements
    (``element_id(job, chunk)``) or the single jobs that hold those chunks."""
    targets = []
    for job in jobs:
        if chunks is None:
            targets.append(job["job_id"])
        elif job.get("array"):
            targets += [element_id(job, c) for c in chunks if c in job["chunks"]]
        elif job["chunks"][0] in chunks:
            targets.append(job["job_id"])
    return targets


def unparseable(command: str, line: str) -> SchedulerOutputError:
    return SchedulerOutputError(f"could not parse a line of `{command}` output: {line!r}")


def refusal_kind(stderr: str, kinds: Sequence[tuple[str, Sequence[str]]],
                 otherwise: str = "permanent") -> str:
    """The first kind in ``kinds`` (pairs of kind and the messages that mean it) whose message
    ``stderr`` contains; ``otherwise`` when none does."""
    return next((kind for kind, messages in kinds if any(m in stderr for m in messages)), otherwise)


def unanswered(classify_refusal: Callable[[str], str]) -> Callable[[str], bool]:
    """For ``CommandRunner.run(transient=...)``: the failures a scheduler's classification
    calls "transient" or "answer_lost", which an idempotent command may repeat."""
    return lambda stderr: classify_refusal(stderr) in ("transient", "answer_lost")


@dataclass
class Submitter:
    """Runs a submission command so that a lost answer never creates a duplicate job.

    ``refusal(stderr)`` says "transient" (out of reach: nothing arrived), "answer_lost" (it may
    have), "unknown" (it may have; fails after the retries), "permanent" or one of the
    ``limits``. Unless nothing can have arrived, the listing of
    the map's jobs by name is asked first whether a job it does not know (:meth:`note`: an
    earlier driver's too) got in. Out of reach is a refusal for now, given up after
    :data:`MAX_OUTAGE`. A listing that drops ended jobs (Grid Engine: ``lists_finished=False``)
    cannot tell a job that never got in from one that ended: such a submission gets an
    ``unconfirmed-`` id that no poll shows; the engine resubmits its chunks after the usual
    grace, and the backend cancels the map's leftovers by name at its end.
    """

    scheduler: Scheduler
    runner: CommandRunner
    parse_id: Callable[[str], str | None]
    listed_ids: Callable[[SubmitSpec], set[str] | None]
    refusal: Callable[[str], str]
    limits: dict[str, float | None] = field(default_factory=lambda: {"limit": None})
    lists_finished: bool = True
    known: dict[str, set[str]] = field(default_factory=dict)  # job ids per map name
    unconfirmed: dict[str, str] = field(default_factory=dict)  # unconfirmed id -> map name

    def submit(self, spec: SubmitSpec, argv: Sequence[str]) -> str:
        known = self.known.setdefault(spec.job_name, set())
        delay = self.runner.backoff
        for attempt in range(1, self.runner.retries + 2):
            result = self.runner.run_once(argv)
            job_id = self.parse_id(result.stdout) if result is not None and result.returncode == 0 else None
            if job_id:
                known.add(job_id)
                return job_id
            stderr = "" if result is None else (result.stderr.strip() or result.stdout.strip())
            kind = "answer_lost" if result is None or result.returncode == 0 else self.refusal(stderr)
            if kind != "transient":  # the request may have reached the scheduler
                adopted = self._adopt(spec, known)
                if adopted:
                    return adopted
            if kind == "answer_lost" and not self.lists_finished:
                job_id = f"{UNCONFIRMED}{uuid.uuid4().hex[:12]}"
                self.unconfirmed[job_id] = spec.job_name
                return job_id
            if kind in self.limits:
                raise SubmissionRefused(f"{argv[0]} refused for now: {stderr}", self.limits[kind])
            if kind == "permanent":
                raise SchedulerError(f"{argv[0]} refused the job: {stderr}")
            if attempt <= self.runner.retries:
                self.scheduler.pause(delay)
                delay = min(delay * 2, self.runner.max_backoff)
        what = "timed out" if result is None else (stderr or f"printed {result.stdout.strip()!r}")
        if kind == "unknown":  # a failure not understood, always alike: say so, quoting it
            raise SchedulerError(f"{argv[0]} did not accept the job after {attempt} attempts: "
                                 f"{what}")
        # Nothing got in (the listing said so, or nothing could arrive): the chunks wait.
        raise OutOfReach(f"{argv[0]} did not reach the scheduler ({attempt} attempts): {what}",
                         MAX_OUTAGE)

    def _adopt(self, spec: SubmitSpec, known: set[str]) -> str | None:
        """The id of a job of this map that got in although its submission seemed to fail;
        the listing is asked until it answers (a failed listing proves nothing)."""
        delay = self.runner.backoff
        for _ in range(self.runner.retries + 1):
            listed = self.listed_ids(spec)
            if listed is not None:
                created = listed - known
                if not created:
                    return None
                job_id = max(created, key=lambda j: (len(j), j))
                known.add(job_id)
                return job_id
            self.scheduler.pause(delay)
            delay = min(delay * 2, self.runner.max_backoff)
        raise SchedulerError(f"could not tell whether a submission of {spec.job_name} went in: "
                             f"neither the submission nor the listing answered")

    def note(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> None:
        """Jobs known from elsewhere (a resumed map's records, a poll's) are not new."""
        self.known.setdefault(spec.job_name, set()).update(job["job_id"] for job in jobs)
        self.unconfirmed.update((job["job_id"], spec.job_name) for job in jobs
                                if job["job_id"].startswith(UNCONFIRMED))

    def unconfirmed_maps(self, jobs: Sequence[JobRecord]) -> set[str]:
        """Names of the maps of ``jobs`` that submitted something unconfirmed (forgotten)."""
        return {self.unconfirmed.pop(job["job_id"]) for job in jobs
                if job["job_id"] in self.unconfirmed}
