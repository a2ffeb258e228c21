"""Workers mode: a few long-lived worker jobs claim chunks from the work_dir until none is left.

The driver's part, in the spirit of a worker manager:
- keep up to ``max_workers`` worker jobs while unclaimed chunks remain, never more pending
  workers than unclaimed chunks (surplus pending ones are cancelled), never submitting faster
  than ``min_seconds_between_submissions``;
- a worker that died holding a claim (gone from the queue) has the claim released, so another
  worker takes the chunk, counting toward ``max_num_resubmissions`` for that chunk; one that
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
import functools
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

from poolparty_raster.claims import ClaimsView
from poolparty_raster.engine import SUCCEEDED_GRACE, MapRun
from poolparty_raster.errors import SchedulerError
from poolparty_raster.schedulers.base import JobRecord, TaskState
from poolparty_raster.settings import MapSettings
from poolparty_raster.node import HEARTBEAT_SECONDS
from poolparty_raster.workdir import tail_lines

STALE_AFTER = 6 * HEARTBEAT_SECONDS  # a claim untouched this long belongs to a hung or dead worker
STRAGGLER_FACTOR = 3.0      # a chunk running this many times the median chunk time,
STRAGGLER_MIN_SECONDS = 60.0  # and at least this long, is issued once more,
MIN_DURATIONS = 3           # once this many chunks have finished to compare it with
DURATIONS_KEPT = 1024       # the median of the chunks that finished last, at most this many
# Claims are seen through a listing of claims/, which holds a claim for every chunk that ever
# ran (a million entries, a second to list, for a map of a million chunks): a poll lists it
# when the last listing's cost is at most 1/LISTING_SHARE of the time since; in between it
# looks up by name the claims it saw running (their heartbeats). Where no more than
# PROBE_AT_MOST chunks are left, or few beside those finished, they are looked up by name
# at every poll instead of listing; a worker that ended makes the next poll list.
LISTING_SHARE = 30
PROBE_AT_MOST = 4096


@dataclass
class _Worker:
    job_id: str
    state: TaskState = TaskState.PENDING
    reason: str = ""
    absent_polls: int = 0
    absent_since: float | None = None
    surplus: bool = False    # cancelled while pending: it counts for nothing, its end for no one
    ended_well_at: float | None = None  # when it was seen to end with exit code 0


def holder_id(holder: str) -> int | None:
    """A claim holds ``"<worker> <host> <pid> <token>"``."""
    first = holder.split()[0] if holder.split() else ""
    return int(first) if first.isdigit() else None


def holder_token(holder: str) -> str | None:
    """The token that names a claim's worker process's captures: ``"<worker> <host> <pid>
    <token>"``."""
    parts = holder.split()
    return parts[3] if len(parts) == 4 else None


def process_alive(pid: int, token: str) -> bool:
    """Whether process ``pid`` of this host, which made the claim token ``token``
    ("<host>-<pid>-<ns>", claims.process_token), still runs: not a zombie, and not a later
    process that got the same pid (it started after the token was made)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not a worker of ours, but it runs
        pass
    if not os.path.isdir("/proc/self"):  # no /proc: the pid is all there is to go by
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command's name
    except (FileNotFoundError, ProcessLookupError):
        return False
    if fields[0] == b"Z":
        return False
    made = token.rsplit("-", 1)[-1]
    if made.isdigit() and _boot_time() is not None:
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if started > int(made) / 1e9 + 2.0:  # boot time is told in whole seconds
            return False
    return True


@functools.cache
def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class WorkersRun(MapRun):
    """A MapRun whose jobs are workers (numbered 0, 1, ...) rather than chunks."""

    def __init__(self, *args: Any, scaling: MapSettings, parallelism: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_workers = scaling.max_workers or parallelism
        # At least one: a map with chunks left and no worker at all never waits out the gap.
        self.min_workers = max(1, min(scaling.min_workers, self.max_workers))
        self.min_gap = scaling.min_seconds_between_submissions
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
        self._reissued: set[int] = set()       # chunks a second run may take
        self._reissue_spent: set[int] = set()  # chunks whose second runs used up their budget
        self._claims_view: ClaimsView | None = None  # this poll's; None: to be looked at
        self._last_view = ClaimsView()  # the last one, for the claims seen running
        self._holder_ids: set[int | None] = set()  # the workers seen holding a claim
        self._listed_at = float("-inf")  # the last listing of claims/: when, and its cost
        self._listing_cost = 0.0
        self._list_next = True  # the next look lists claims/ (or probes all that is left)

    # -- submission --------------------------------------------------------------------
    def _reattach_or_submit(self) -> bool:
        self.work_dir.claims.create()
        for job in self.jobs:  # a resumed map: taken to be alive until the polls say otherwise
            for worker in job["chunks"]:
                self.workers[worker] = _Worker(job["job_id"])
        self._earlier_workers = set(self.workers)
        if self.workers:
            self.work_dir.log("reattached", workers=sorted(self.workers))
        self._scale()
        return bool(self.workers)

    def _accepted(self, record: JobRecord) -> None:
        for worker in record["chunks"]:
            self.workers[worker] = _Worker(record["job_id"])

    def _submit_waiting(self) -> None:
        self.submissions.submit(self._accepted, nothing_queued=not self._alive())

    def _no_longer_needed(self, chunks: list[int]) -> None:
        """What waits to be submitted here are workers, whom a finished chunk does not
        concern."""

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
        holders = self._holders()
        return sorted(w for w, s in self._counted().items()
                      if s.state is TaskState.PENDING and w not in holders)

    def _holders(self) -> set[int | None]:
        """The workers seen holding a claim, of a first or a second run (finished chunks keep
        their claims; a worker's are released only once it is gone)."""
        self._claims()
        return self._holder_ids

    def _claims(self) -> tuple[dict[int, tuple[str, float]], dict[int, str]]:
        """(first-run claims of chunks not finished, second runs' claims), looked at once a
        poll: on a shared filesystem every claim read is a round trip. A change the driver
        makes drops the copy."""
        if self._claims_view is None:
            self._claims_view = self._look_at_claims()
            self._last_view = self._claims_view
            self._holder_ids.update(map(holder_id, self._claims_view.holders))
        view = self._claims_view
        return view.claims, view.duplicated

    def _look_at_claims(self) -> ClaimsView:
        """All claims of unfinished chunks where a listing is due (or a probe of every chunk
        left is cheaper: few are left); else the claims seen running at the last look, and
        the second runs', looked up again by name."""
        claims = self.work_dir.claims
        left = self._outstanding_count()
        second_runs = self._reissued | self._last_view.duplicated.keys()
        now = time.monotonic()
        if left <= PROBE_AT_MOST or 4 * left <= len(self.finished):
            if self._list_next or left <= PROBE_AT_MOST or \
                    now - self._listed_at >= LISTING_SHARE * self._listing_cost:
                view = claims.probe(self._outstanding(), second_runs)
                self._listed(now)
                return view
        elif self._list_next or now - self._listed_at >= LISTING_SHARE * self._listing_cost:
            view = claims.survey(self.finished)
            self._listed(now)
            return view
        running = [c for c in self._last_view.claims
                   if c not in self.finished and c not in self.lost_chunks]
        return claims.probe(running, second_runs)

    def _listed(self, started: float) -> None:
        self._listed_at, self._list_next = started, False
        self._listing_cost = time.monotonic() - started

    def _unclaimed(self) -> int:
        """How many chunks a worker could take now: unclaimed, or re-issued and not yet taken
        again."""
        claims, duplicated = self._claims()
        taken = sum(1 for c in claims if c not in self.finished and c not in self.lost_chunks
                    and (c not in self._reissued or c in duplicated))
        return self._outstanding_count() - taken

    def _scale(self) -> None:
        unclaimed = self._unclaimed()
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
        self.work_dir.log("workers_wanted", workers=wanted, unclaimed=unclaimed)
        self._submit_waiting()
        # From the end of the call: the scheduler sees the gap however long sbatch took.
        self._last_submission = time.monotonic()

    def _trim_pending(self) -> None:
        """Never more pending workers than unclaimed chunks: cancel the newest surplus. A
        cancelled worker stays tracked until the scheduler reports it gone: one that started
        just before the cancel may hold a claim, which is released only once it is gone (and
        not charged to the chunk: the driver ended that run)."""
        surplus = self._pending()[self._unclaimed():]
        by_job: dict[str, list[int]] = {}
        for worker in surplus:
            by_job.setdefault(self.workers[worker].job_id, []).append(worker)
        failed = self._cancel_elements(by_job)
        for worker in surplus:
            if self.workers[worker].job_id not in failed:  # else: tried again next poll
                self.workers[worker].surplus, self.workers[worker].reason = True, "surplus"

    # -- observation -------------------------------------------------------------------
    def _collect(self) -> bool:
        before = len(self._fresh)
        changed = super()._collect()
        now = time.monotonic()
        for chunk in self._fresh[before:]:
            seen = self._claim_seen.pop(chunk, None)
            self._beats.pop(chunk, None)
            if seen is not None:
                self._durations.append(now - seen)
            if chunk in self._reissued:
                self.work_dir.claims.withdraw_reissue(chunk)
        return changed

    def _poll_scheduler(self) -> bool:
        self._claims_view = None
        alive = self._alive()
        statuses = self._safe_poll() if alive else {}
        if statuses is None:
            return False
        self._collect()
        now = time.monotonic()
        changed = False
        ended = []
        for worker_id, worker in alive.items():
            status = statuses.get((worker.job_id, worker_id))
            if status is not None and status.state is TaskState.FATAL:
                raise SchedulerError(f"worker {worker_id} of map {self.spec.job_name} cannot run: "
                                     f"{status.reason}. The work_dir is kept: {self.work_dir.path}")
            if status is not None and status.state is TaskState.ERROR:
                self.work_dir.log("error_state", worker=worker_id, job_id=worker.job_id, reason=status.reason)
                self._cancel_elements({worker.job_id: [worker_id]})
                ended.append((worker_id, f"stuck in {status.reason}"))
            elif status is None or status.state is TaskState.FINISHED:
                worker.absent_since = worker.absent_since or now
                worker.absent_polls += 1
                lag = self.scheduler.filesystem_lag
                if (lag == 0 or worker.absent_polls >= 2) and now - worker.absent_since >= lag:
                    ended.append((worker_id, status.reason if status else "gone from the queue"))
                    if status is not None and status.succeeded:
                        worker.ended_well_at = now
            else:
                worker.state, worker.absent_polls, worker.absent_since = status.state, 0, None
        for worker_id, reason in ended:
            self.workers[worker_id].state, self.workers[worker_id].reason = TaskState.FINISHED, reason
            self.work_dir.log("worker_ended", worker=worker_id, reason=reason)
        changed = bool(ended)
        self._list_next = self._list_next or changed  # its claims, made since the last listing
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
        if not ended or not self._unclaimed():
            return
        holders = self._holders()
        for worker in ended:
            self.failed_starts = 0 if worker in holders else self.failed_starts + 1
        if self.failed_starts:
            self._stop_if_disk_full()
        if self.failed_starts > self.max_workers + self.options.max_num_resubmissions:
            reason = (f"{self.failed_starts} worker jobs in a row ended without running a chunk "
                      f"(last: {self.workers[ended[-1]].reason})")
            with open(self.work_dir.scheduler_log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 20_000))
                tail = tail_lines(f.read())
            for chunk in self._outstanding():
                self.chunks[chunk].deaths.append((reason, tail))
            self.lost_chunks.update(self._outstanding())

    def _release_dead_claims(self) -> bool:
        """Free the chunks held by workers that are gone; issue once more those whose worker
        went silent; give up on hopeless ones."""
        now = time.monotonic()
        released = False
        claims, duplicated = self._claims()
        for chunk, (holder, mtime) in claims.items():
            if chunk in self.finished or chunk in self.lost_chunks:
                continue
            self._claim_seen.setdefault(chunk, now)
            if self._beats.get(chunk, (None,))[0] != mtime:
                self._beats[chunk] = (mtime, now)
            silence = now - self._beats[chunk][1]
            worker = holder_id(holder)
            if not self._holder_gone(worker, now, holder, chunk):
                if silence > STALE_AFTER + self.scheduler.filesystem_lag:
                    self._reissue(chunk, f"no heartbeat for {silence:.0f} s")
                continue
            self._collect()
            if chunk in self.finished:
                continue
            surplus = worker in self.workers and self.workers[worker].surplus
            token = holder_token(holder)
            captures = self.work_dir.worker_captures(token) if token else []
            self._release(chunk, holder, self._end_reason(worker), captures,
                          charged=not surplus and not self._earlier(worker))
            released = True
        for chunk, holder in duplicated.items():
            if chunk in self.finished or chunk in self.lost_chunks:
                continue
            worker = holder_id(holder)
            if not self._holder_gone(worker, now, holder):
                continue
            self._collect()
            if chunk not in self.finished:
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
        lag = self.scheduler.filesystem_lag
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
        return silence <= STALE_AFTER + self.scheduler.filesystem_lag

    def _end_reason(self, worker: int | None) -> str:
        state = self.workers.get(worker) if worker is not None else None
        return (state.reason if state is not None else "") or "its worker is gone"

    def _retry_or_lose(self, dead: list[tuple[int, str]]) -> None:
        """This run submits workers, not chunks: a chunk to run again (its output unreadable)
        has its claim released, so that a worker takes it."""
        for chunk, reason in dead:
            self.work_dir.claims.redo(chunk)  # workers count it done: its result is archived
            self._release(chunk, self.work_dir.claims.holder_of(chunk), reason, [])

    def _release(self, chunk: int, holder: str, reason: str, captures: list[str],
                 charged: bool = True) -> None:
        """Free the chunk (or give up on it); ``captures``: its dead worker's, which hold
        what the chunk printed. ``charged``: the run counts toward ``max_num_resubmissions``
        (not when the driver itself cancelled its worker)."""
        if charged:
            self._stop_if_disk_full()
            self.releases[chunk] = self.releases.get(chunk, 0) + 1
            self.chunks[chunk].attempts = self.releases[chunk]
        self._archive_dead_attempt(chunk, reason, captures)
        self.work_dir.log("lost", chunk=chunk, holder=holder, reason=reason, charged=charged)
        self._claim_seen.pop(chunk, None)
        self._beats.pop(chunk, None)
        if self.releases.get(chunk, 0) > self.options.max_num_resubmissions:
            self.lost_chunks.add(chunk)  # its claim stays, so no worker takes it again
            self.progress.note_failed(len(self.manifest.chunk_range(chunk)))
        else:
            self.work_dir.claims.release(chunk)
            self._claims_view = None
            self.progress.note_resubmitted(1)

    def _release_second_run(self, chunk: int, holder: str, reason: str,
                            charged: bool = True) -> None:
        """The second run of a re-issued chunk died: another worker may take it, unless the
        chunk has used up its resubmissions (its first run goes on either way)."""
        if charged:
            self.releases[chunk] = self.releases.get(chunk, 0) + 1
        self._archive_dead_attempt(chunk, f"second run: {reason}", [])
        self.work_dir.log("lost", chunk=chunk, holder=holder, reason=reason, second_run=True,
                          charged=charged)
        if self.releases.get(chunk, 0) > self.options.max_num_resubmissions:
            self.work_dir.claims.withdraw_reissue(chunk)
            self._reissued.discard(chunk)
            self._reissue_spent.add(chunk)
        self.work_dir.claims.release_second_run(chunk)
        self._claims_view = None

    def _reissue_stragglers(self) -> None:
        if len(self._durations) < MIN_DURATIONS or self._unclaimed():
            return
        limit = max(STRAGGLER_FACTOR * statistics.median(self._durations), STRAGGLER_MIN_SECONDS)
        now = time.monotonic()
        for chunk in sorted(c for c in self._claim_seen
                            if c not in self.finished and c not in self.lost_chunks):
            running = now - self._claim_seen.get(chunk, now)
            if running > limit:
                self._reissue(chunk, f"running {running:.0f} s, the median chunk "
                                     f"{statistics.median(self._durations):.0f} s")

    def _reissue(self, chunk: int, reason: str) -> None:
        """Let one more worker run the chunk (once per chunk); the first result wins."""
        if chunk in self._reissued or chunk in self._reissue_spent:
            return
        self.work_dir.claims.reissue(chunk)
        self._reissued.add(chunk)
        self._claims_view = None
        self.work_dir.log("reissued", chunk=chunk, reason=reason)

    # -- endings -----------------------------------------------------------------------
    def _cancel_leftovers(self) -> None:
        """Cancel every worker still queued or running: nothing is left for them (a second
        run's, or a silent one's, chunk is done), and one that starts after the work_dir is
        gone fails (Grid Engine keeps such a job in Eqw for ever). Workers the scheduler saw
        end, and surplus ones already cancelled, are left alone."""
        by_job: dict[str, list[int]] = {}
        for worker, state in sorted(self._counted().items()):
            by_job.setdefault(state.job_id, []).append(worker)
        self._cancel_elements(by_job)
