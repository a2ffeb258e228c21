"""The local backend: runs the worker script as subprocesses on this machine.

It is a scheduler like the others (same work_dir protocol, same engine), with a queue held in
memory: ``processes`` threads each start one worker process at a time and wait for it. On
Linux the processes are forked by a fork server (forkserver.py), which saves each chunk the
interpreter start and the import of numpy and rasterio; elsewhere, or should the server fail,
each chunk starts ``python script.py chunk`` afresh.

Its processes do not outlive the driver (on Linux: a parent-death signal, see parentdeath.py),
and a cancel returns once the processes it killed are gone, those being started included: a
process left running in workers mode goes on claiming chunks.
"""
from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Annotated

from poolparty_raster.schedulers.base import (JobRecord, PollResult, Scheduler, SubmitSpec,
                                              TaskState, TaskStatus)
from poolparty_raster.schedulers import forkserver, parentdeath
from poolparty_raster.schedulers.forkserver import Launch

# How long cancel() waits for the processes it killed to be gone: a start through a fork
# server that does not answer gives up after 30 s (the chunk then starts the slow way, and is
# killed as soon as it has).
CANCEL_WAIT = 45.0


class LocalScheduler(Scheduler):
    name = "local"
    filesystem_lag = 0.0
    min_poll_interval = 0.0

    def __init__(
            self,
            processes: Annotated[int | None, "processes at once (default: os.cpu_count())"] = None,
            *,
            start_method: Annotated[str | None,
                                    "'forkserver' (default on Linux) or 'spawn'"] = None,
            num_workers: Annotated[int | None, "the former name of processes"] = None):
        if num_workers is not None:
            if processes is not None:
                raise TypeError("give processes or num_workers (its former name), not both")
            processes = num_workers
        if processes is not None and processes < 1:  # as multiprocessing.Pool(0)
            raise ValueError(f"Number of processes must be at least 1 (or None: "
                             f"os.cpu_count()), not {processes}")
        self.processes = processes or os.cpu_count() or 1
        start_method = start_method or ("forkserver" if sys.platform.startswith("linux") else "spawn")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        self.fork = start_method == "forkserver"
        self._queue: queue.SimpleQueue[tuple[str, int, SubmitSpec]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._states: dict[tuple[str, int], TaskStatus] = {}
        self._processes: dict[tuple[str, int], subprocess.Popen[bytes] | Launch] = {}
        # job_id -> the fork server its chunks went to, and its work_dir
        self._servers: dict[str, tuple[forkserver.ForkServer, str]] = {}
        self._cancelled: set[tuple[str, int]] = set()
        self._threads = 0
        self._busy = 0  # threads running a chunk
        self._ids = itertools.count(1)
        self._changed = threading.Event()
        self._ended = threading.Condition(self._lock)  # a RUNNING chunk became FINISHED

    def check_available(self) -> None:
        """Always available: it needs nothing but this machine."""

    def default_parallelism(self) -> int:
        return self.processes

    def throttles(self, spec: SubmitSpec) -> bool:
        return True  # at most min(processes, throttle) chunks run at once

    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        job_id = f"local-{os.getpid()}-{next(self._ids)}"
        cap = min(self.processes, spec.throttle or self.processes)
        with self._lock:
            for chunk in chunks:
                self._states[(job_id, chunk)] = TaskStatus(TaskState.PENDING)
                self._queue.put((job_id, chunk, spec))
            # Threads busy with running chunks take nothing from the queue until they finish.
            wanted = min(cap, self._busy + self._queue.qsize())
            for _ in range(max(0, wanted - self._threads)):
                self._threads += 1
                threading.Thread(target=self._work, daemon=True, name="poolparty-local").start()
        yield {"job_id": job_id, "chunks": list(chunks)}

    def _work(self) -> None:
        while True:
            with self._lock:
                try:
                    job_id, chunk, spec = self._queue.get_nowait()
                except queue.Empty:
                    self._threads -= 1
                    return
                key = (job_id, chunk)
                if key in self._cancelled or key not in self._states:  # cancelled, or released
                    continue
                self._busy += 1
                self._states[key] = TaskStatus(TaskState.RUNNING)
            try:
                process = self._start(job_id, spec, chunk)  # unlocked: polls need not wait for a start
            except OSError as exc:  # the work_dir was removed, or no such interpreter
                with self._lock:
                    self._busy -= 1
                    self._finish(key, f"could not start: {exc}")
                self._changed.set()
                continue
            with self._lock:
                self._processes[key] = process
                if key in self._cancelled:  # cancelled while it started: cancel() waits
                    _kill(process)
            code = process.wait()
            with self._lock:
                self._busy -= 1
                del self._processes[key]
                self._finish(key, "cancelled" if key in self._cancelled else f"exit code {code}")
            self._changed.set()

    def _finish(self, key: tuple[str, int], reason: str) -> None:
        """A started chunk ended (the caller holds the lock); a released job is not brought
        back."""
        if key in self._states:
            self._states[key] = TaskStatus(TaskState.FINISHED, reason)
        self._ended.notify_all()

    def _start(self, job_id: str, spec: SubmitSpec, chunk: int) -> subprocess.Popen[bytes] | Launch:
        # Started in the work_dir, which exists while the map runs: script.py enters the
        # driver's directory itself, and says so in the chunk's stderr if it has gone.
        if self.fork:
            try:
                server = forkserver.shared(spec.python_path)
                with self._lock:
                    self._servers[job_id] = (server, spec.work_dir)
                return server.launch([spec.script_path, str(chunk)], spec.work_dir,
                                     spec.scheduler_log)
            except OSError:
                self.fork = False  # it died: start this chunk, and the next ones, the slow way
        # Started from this thread, which waits for the process: the parent-death signal
        # comes when the thread that forked ends, not only when the driver does.
        driver = os.getpid()

        def dies_with_driver() -> None:
            if not parentdeath.die_with_parent(signal.SIGKILL, driver):
                os._exit(1)  # the driver died while this process started
        preexec = dies_with_driver if parentdeath.can_die_with_parent() else None
        with open(spec.scheduler_log, "ab") as log:
            os.chmod(spec.scheduler_log, 0o600)
            return subprocess.Popen([spec.python_path, spec.script_path, str(chunk)], cwd=spec.work_dir,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=preexec)

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        wanted = {job["job_id"] for job in jobs}
        with self._lock:
            return {key: status for key, status in self._states.items() if key[0] in wanted}

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        """Kill the chunks' processes, and return once they are gone: those being started
        too, which are killed as soon as they have started (up to CANCEL_WAIT)."""
        with self._lock:
            stopping = []
            for job in jobs:
                for chunk in job["chunks"] if chunks is None else chunks:
                    key = (job["job_id"], chunk)
                    status = self._states.get(key)
                    if status is None:
                        continue
                    self._cancelled.add(key)
                    if status.state is TaskState.PENDING:  # still queued: never started
                        self._states[key] = TaskStatus(TaskState.FINISHED, "cancelled")
                    elif status.state is TaskState.RUNNING:
                        process = self._processes.get(key)
                        if process is not None:  # else being started: _work kills it
                            _kill(process)
                        stopping.append(key)
            deadline = time.monotonic() + CANCEL_WAIT
            while any(self._states.get(key, _GONE).state is TaskState.RUNNING for key in stopping):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ended.wait(left)

    def wait(self, timeout: float) -> None:
        self._changed.wait(timeout)
        self._changed.clear()

    def release(self, jobs: Sequence[JobRecord]) -> None:
        """Forget the jobs, and have the fork server let go of their work_dir (forkmaps.py)
        before the driver removes it."""
        wanted = {job["job_id"] for job in jobs}
        with self._lock:
            for key in [k for k in self._states if k[0] in wanted]:
                del self._states[key]
                self._cancelled.discard(key)
            servers = {self._servers.pop(job_id) for job_id in wanted if job_id in self._servers}
        for server, work_dir in servers:
            server.forget(work_dir)


_GONE = TaskStatus(TaskState.FINISHED, "released")


def _kill(process: subprocess.Popen[bytes] | Launch) -> None:
    """Kill a chunk's process with all it started (the caller holds the lock)."""
    if isinstance(process, Launch):
        process.kill()  # by the fork server, which knows whether it has reaped it
    elif process.returncode is None:  # not reaped: its pid is not another process's
        forkserver.kill_session(process.pid)
