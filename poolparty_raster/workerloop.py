"""Workers mode, the node's side: a long-lived worker claims chunks (claimmaker.py) and runs
them (node.run_and_store) until none is left or its driver is gone, touching the claim it
runs as its heartbeat."""
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


class Heartbeat:
    """Touches the claim of the chunk this worker runs every HEARTBEAT_SECONDS, from one
    thread for the process's life: starting a thread a chunk costs more than a small chunk."""

    def __init__(self) -> None:
        self.claim: str | None = None
        threading.Thread(target=self._beat, daemon=True, name="poolparty-heartbeat").start()

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            claim = self.claim
            if claim is not None:
                try:
                    os.utime(claim)
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
    from poolparty_raster.claimmaker import RunPacer
    from poolparty_raster.resultlog import ResultLog

    num_chunks = manifest.num_chunks
    name = f"{worker} {socket.gethostname()} {os.getpid()} {captures.worker_token}"
    done = work_dir.finished_chunks()
    driver = DriverWatch(work_dir.file("driver.lock"))
    heartbeat = Heartbeat()
    results = ResultLog(work_dir.path)
    pacer = RunPacer()  # how many chunks to claim at once
    ran, limit = 0, None
    try:
        while driver.present():
            run = min(pacer.length, limit - ran) if limit else pacer.length
            claimed = work_dir.claims.claim_next(num_chunks, name, done, run)
            if claimed is None:
                return
            started = time.monotonic()
            chunk, heartbeat.claim = claimed
            try:
                seconds = run_and_store(work_dir, manifest, load_function, chunk, captures,
                                        clock, results)
            finally:
                heartbeat.claim = None
            if seconds is None:
                return
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
