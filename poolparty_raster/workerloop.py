"""Workers mode, the node's side: a long-lived worker claims chunks (claimmaker.py) and runs
them (node.run_and_store) until none is left or its driver is gone, touching the claim it
runs as its heartbeat, and freeing the rest of a run that a slow chunk holds up."""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from poolparty_raster.node import Captures, run_and_store

if TYPE_CHECKING:
    from poolparty_raster.records import ChunkClock

HEARTBEAT_SECONDS = 5.0  # how often a worker in workers mode touches its claim
DRIVER_CHECK_SECONDS = 2.0  # how often, at most, it looks for its driver before a claim


# A chunk of a run that has run this long frees the rest of its run for other workers. A run
# is sized to take RUN_SECONDS (50 ms) in all, of chunks that took under 10 ms each: one that
# runs 1 s is 100 times slower than its run's chunks were, not a filesystem hiccup (2-10 ms on
# a loaded GlusterFS, a GC pause), so a release is almost never wasted; and 1 s is what idle
# workers wait at most for what it frees, against the straggler policy's 60 s, while what a
# release costs (a name a freed chunk, ~1.6 ms on GlusterFS) is small beside the second.
RELEASE_AFTER_SECONDS = 1.0


class ChunkWatch:
    """The worker's watch over the chunk it runs, from one thread for the process's life
    (starting a thread a chunk costs more than a small chunk): it touches the chunk's claim
    every HEARTBEAT_SECONDS, and once the chunk has run RELEASE_AFTER_SECONDS it frees the
    unstarted rest of its run (ClaimMaker.free_unstarted), which would otherwise wait behind
    it. The loop claims each chunk through ``next_chunk``, under the same lock as the
    release: a chunk is either handed out before the release, or freed and never started
    here. It also commits the results the worker holds for a batch once they are due
    (ResultLog.commit_due), should the chunk after them run long."""

    def __init__(self, claims: Any, results: Any) -> None:
        self.claims = claims
        self.results = results  # the worker's ResultLog: held results are committed in time
        self.claim: str | None = None  # the running chunk's claim (the heartbeat's)
        self._started: float | None = None  # when it started, while its run has chunks left
        self._wake = threading.Condition()
        threading.Thread(target=self._watch, daemon=True, name="poolparty-watch").start()

    def next_chunk(self, claim: Callable[[], tuple[int, str] | None]) -> tuple[int, str] | None:
        """Claim the next chunk with ``claim`` (ClaimMaker.claim_next), and watch it."""
        with self._wake:
            self.claim, self._started = None, None
            claimed = claim()
            if claimed is not None:
                self.claim = claimed[1]
                if self.claims.has_unstarted():
                    self._started = time.monotonic()
                    self._wake.notify()  # a release may fall due before the next heartbeat
        return claimed

    def chunk_done(self) -> None:
        with self._wake:
            self.claim, self._started = None, None

    def _watch(self) -> None:
        beat_at = time.monotonic() + HEARTBEAT_SECONDS
        with self._wake:
            while True:
                now = time.monotonic()
                if self._started is not None and now >= self._started + RELEASE_AFTER_SECONDS:
                    self._started = None
                    try:
                        self.claims.free_unstarted()
                    except OSError:  # claims/ gone (the map ended), or a full disk: the
                        pass         # run's rest waits for this worker, as before runs
                    continue
                commit_at = self.results.commit_due()
                if commit_at is not None and now >= commit_at:
                    self._commit()
                    continue
                if now >= beat_at:
                    beat_at = now + HEARTBEAT_SECONDS
                    self._beat()
                    continue
                wake_at = min(beat_at, commit_at if commit_at is not None else beat_at)
                if self._started is not None:
                    wake_at = min(wake_at, self._started + RELEASE_AFTER_SECONDS)
                self._wake.wait(wake_at - now)

    def _commit(self) -> None:
        try:
            self.results.commit()
        except OSError:  # they stay held: the loop's next commit meets the error itself
            pass

    def _beat(self) -> None:
        if self.claim is not None:
            try:
                os.utime(self.claim)
            except FileNotFoundError:  # the driver released it: it gave up on this run
                pass


def driver_lock_held(path: str) -> bool | None:
    """Whether a process holds the flock on ``path`` (the driver's driver.lock): the lock is
    tried shared and without waiting, and let go at once. Shared, so that workers trying it
    at the same time do not see each other; a driver that holds it (exclusive) is never
    disturbed. None where it cannot be told (no flock on this filesystem)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:  # the work_dir was removed: the map is over
        return False
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return True if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class DriverWatch:
    """Whether the map's driver is still there, asked before each claim. A worker whose driver
    died (nothing tells a cluster job that) stops claiming chunks: a driver that resumes the
    map would find them claimed by a worker it does not know, and each chunk run after the
    map ended writes into a work_dir that may be removed.

    The driver holds driver.lock for the whole map; a worker that can take it found no
    driver. It looks at most every DRIVER_CHECK_SECONDS (an open and two flocks, round trips
    on NFS). Where locks do not reach from node to node (Lustre mounted with localflock,
    BeeGFS without global file locks) every node sees the lock free: a free lock counts only
    once this worker has seen it held, so a worker there runs on as it did before."""

    def __init__(self, lock_path: str):
        self.lock_path = lock_path
        self._seen_held = False
        self._checked = float("-inf")

    def present(self) -> bool:
        now = time.monotonic()
        if now - self._checked < DRIVER_CHECK_SECONDS:
            return True
        self._checked = now
        held = driver_lock_held(self.lock_path)
        if held:
            self._seen_held = True
        return held is not False or not self._seen_held


def claim_and_run(work_dir: Any, manifest: Any, load_function: Callable[[], Any],
                  worker: int, captures: Captures, clock: ChunkClock) -> None:
    """Workers mode: claim the next free chunk, run it, and again, until none is left or the
    driver is gone (DriverWatch). A worker whose node cannot load the function fails the
    chunk it holds and stops, leaving the rest to workers elsewhere."""
    from poolparty_raster.claimmaker import FAST_CHUNK_SECONDS, RunPacer
    from poolparty_raster.resultlog import ResultLog

    num_chunks = manifest.num_chunks
    name = f"{worker} {socket.gethostname()} {os.getpid()} {captures.worker_token}"
    done = work_dir.finished_chunks()
    driver = DriverWatch(work_dir.file("driver.lock"))
    results = ResultLog(work_dir.path)
    watch = ChunkWatch(work_dir.claims, results)
    pacer = RunPacer()  # how many chunks to claim at once
    ran, limit = 0, None
    try:
        while driver.present():
            run = min(pacer.length, limit - ran) if limit else pacer.length
            claimed = watch.next_chunk(
                lambda: work_dir.claims.claim_next(num_chunks, name, done, run))
            if claimed is None:
                return
            started = time.monotonic()
            chunk, claim = claimed
            # A run's results are committed together (one name for the run); a chunk
            # claimed alone (freed, or a straggler's second run) commits its own at once.
            results.batching = os.path.basename(claim).isdigit()
            try:
                seconds = run_and_store(work_dir, manifest, load_function, chunk, captures,
                                        clock, results)
            finally:
                watch.chunk_done()
            if seconds is None:
                return
            due = results.commit_due()
            if due is not None and (seconds >= FAST_CHUNK_SECONDS or time.monotonic() >= due
                                    or not work_dir.claims.has_unstarted()):
                results.commit()  # a run's end, a slow chunk (the next may be too), or time
            pacer.ran(seconds, time.monotonic() - started)
            ran += 1
            # The pool's maxtasksperchild (processsetup.py): this process ends, and the driver
            # starts a fresh worker for the chunks left, as multiprocessing replaces its own
            # (a run claims no more than that).
            limit = getattr(load_function(), "maxtasksperchild", None)
            if ran == limit:
                return
    finally:
        results.close()
