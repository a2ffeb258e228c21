"""Preparing a map's work_dir (tasks, manifest, script) and reading its outcomes back.

A :class:`MapHandle` is one map in flight; the pool's methods (map, imap, ...) are views of it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import pickle
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cloudpickle
from filelock import FileLock, Timeout

from poolparty_raster import ownership
from poolparty_raster import workdir as wd
from poolparty_raster.chunkset import ChunkSet
from poolparty_raster.engine import MapRun
from poolparty_raster.errors import WorkDirBusyError, WorkDirMismatchError
from poolparty_raster.files import atomic_write
from poolparty_raster.fsfeatures import check_filesystem
from poolparty_raster.manifest import FORMAT, Manifest, function_digest
from poolparty_raster.outcome import ChunkOutcome, load_results, loaded_values, rebuild_exception
from poolparty_raster.progress import Progress, function_label
from poolparty_raster.sigterm import SIGTERM_GUARD
from poolparty_raster.schedulers.base import Scheduler, SubmitSpec
from poolparty_raster.settings import MapSettings
from poolparty_raster.taskszip import TasksWriter
from poolparty_raster.node import render_script
from poolparty_raster.workersmode import WorkersMode

WORK_DIR_ROOT_VARIABLE = "POOLPARTY_RASTER_WORK_DIR_ROOT"


def default_chunksize(num_tasks: int, parallelism: int) -> int:
    """Four chunks per worker slot, as multiprocessing does: start-up is paid once per chunk."""
    return max(1, math.ceil(num_tasks / (4 * max(1, parallelism))))


def chunk_boundaries(num_tasks: int, chunksize: int) -> Sequence[int]:
    """The input index of each chunk's first task (a range: a list of a million chunks' starts
    is 36 MB)."""
    return range(0, num_tasks, chunksize)


def _resumable_chunk_starts(path: str, mark: ownership.Mark | None,
                            num_tasks: int) -> Sequence[int] | None:
    """A resumed map keeps its chunks when the caller did not choose a chunksize: the default
    follows the cluster's free CPUs, which change between the two runs."""
    existing = wd.WorkDir(path).read_manifest() if mark is not None else None
    return existing.chunk_starts if existing and existing.num_tasks == num_tasks else None


def new_work_dir_path(root: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"poolparty_raster.{stamp}.{uuid.uuid4().hex[:8]}")


class MapHandle:
    """One map: its work_dir, its run, and the reading of its outcomes."""

    def __init__(self, scheduler: Scheduler, settings: MapSettings, func: Callable[[Any], Any],
                 tasks: Sequence[Any], chunksize: int | None, abort: threading.Event):
        func_bytes = cloudpickle.dumps(func)  # an unpicklable function fails before anything runs
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        path = os.path.abspath(settings.work_dir or new_work_dir_path(settings.work_dir_root))
        existing = ownership.inspect(path)  # a directory not ours is refused untouched
        def parallelism() -> int:  # asks the scheduler only when needed
            return settings.throttle or scheduler.default_parallelism()

        starts = _resumable_chunk_starts(path, existing, len(tasks)) if chunksize is None else None
        chunk_starts = starts or chunk_boundaries(
            len(tasks), chunksize or default_chunksize(len(tasks), parallelism()))
        self._mode_changed = False  # resumed in the other mode (set by _prepare)
        self.work_dir = wd.WorkDir(path)
        self._mark = self.work_dir.create()
        try:
            _check_filesystem_once(path)
        except BaseException:  # a filesystem the protocol cannot run on: leave nothing there
            if existing is None:
                ownership.remove(path, self._mark)
            raise
        # Not thread-local: an imap dropped in another thread (its finalizer) releases it too.
        self._lock = FileLock(self.work_dir.file("driver.lock"), mode=0o600, thread_local=False)
        try:
            self._lock.acquire(timeout=1)  # not 0: a worker looking for its driver holds it briefly
        except Timeout:
            raise WorkDirBusyError(f"another driver is running a map in {path}") from None
        try:
            self.work_dir.remove_driver_temporaries()  # a killed driver's, never a worker's
            self.manifest = self._prepare(func_bytes, tasks, chunk_starts, settings,
                                          scheduler.unstored_variables)
        except BaseException:  # e.g. an unpicklable task: nothing was submitted
            self._lock.release()
            if existing is None:
                ownership.remove(path, self._mark)
            raise
        self.settings = settings
        spec = SubmitSpec(work_dir=self.work_dir.path, script_path=self.work_dir.script_path,
                          python_path=settings.python_path, job_name=self.manifest.job_name,
                          scheduler_log=self.work_dir.scheduler_log_path, throttle=settings.throttle,
                          cwd=os.getcwd(), mode=settings.mode)
        archived = self.work_dir.archived_chunks()
        progress = Progress(self.manifest.num_tasks, settings.progress, function_label(func),
                            done=sum(len(self.manifest.chunk_range(c)) for c in archived))
        run_args = (self.work_dir, self.manifest, scheduler, spec, settings, progress, abort)
        if settings.mode == "workers":
            workers_parallelism = settings.max_workers or parallelism()
            self.run = MapRun(*run_args, mode=lambda run: WorkersMode(run, workers_parallelism))
        else:
            self.run = MapRun(*run_args)
        self.wrote_stderr = False
        self.failed = False
        self._holds_sigterm = False

    def _prepare(self, func_bytes: bytes, tasks: Sequence[Any], chunk_starts: Sequence[int],
                 settings: MapSettings, unstored_variables: Sequence[str]) -> Manifest:
        writer = TasksWriter(self.work_dir.path, func_bytes)
        try:
            for start, end in zip(chunk_starts, itertools.chain(chunk_starts[1:], [len(tasks)])):
                writer.add_chunk(list(tasks[start:end]))
            digest = writer.finish()
        except BaseException:
            writer.discard()
            raise
        existing = self.work_dir.read_manifest()
        if existing is not None:
            writer.discard()
            if existing.format != FORMAT:
                raise WorkDirMismatchError(
                    f"work_dir {self.work_dir.path} was written by another version of "
                    f"poolparty_raster (format {existing.format}; this version reads format "
                    f"{FORMAT}), so it cannot be resumed. Use a new work_dir, or finish the "
                    f"map with the version that started it.")
            if existing.digest != digest and not self._same_map(existing, func_bytes, tasks):
                raise WorkDirMismatchError(
                    f"work_dir {self.work_dir.path} holds a different map (another function, other "
                    f"tasks or another chunksize). Use a new work_dir, or delete this one if its "
                    f"results are not needed.")
            self.work_dir.log("resumed", mode=settings.mode)
            if existing.mode != settings.mode:  # results are the same whichever way chunks run
                self._mode_changed = True
            if (existing.mode, existing.slots_per_worker) != (settings.mode,
                                                               settings.slots_per_worker):
                existing = dataclasses.replace(existing, mode=settings.mode,
                                               slots_per_worker=settings.slots_per_worker)
                self.work_dir.write_manifest(existing)
            return existing
        name_hash = hashlib.sha1(f"{self.work_dir.path}:{digest}".encode()).hexdigest()[:10]
        manifest = Manifest(digest, writer.num_tasks, writer.chunk_starts,
                               f"{settings.job_name}{name_hash}", settings.mode,
                               function_digest(func_bytes),
                               slots_per_worker=settings.slots_per_worker)
        os.replace(writer.tmp_path, self.work_dir.tasks_path)
        script = render_script(self.work_dir.path, settings.python_path, os.environ, sys.path,
                               os.getcwd(), unstored_variables)
        atomic_write(self.work_dir.script_path, script.encode())
        # Schedulers append to this file; created here so that it is 0600 like the rest.
        os.close(os.open(self.work_dir.scheduler_log_path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.work_dir.write_manifest(manifest)  # last: a manifest means the work_dir is complete
        self.work_dir.log("prepared", tasks=manifest.num_tasks, chunks=manifest.num_chunks,
                          job_name=manifest.job_name)
        return manifest

    def _same_map(self, existing: Manifest, func_bytes: bytes, tasks: Sequence[Any]) -> bool:
        """Pickles of equal tasks can differ between processes (a set's order follows string
        hashing, which is salted per process): compare the stored tasks by value."""
        if existing.function_digest != function_digest(func_bytes) or existing.num_tasks != len(tasks):
            return False
        try:
            return all(self.work_dir.load_tasks(c) == list(tasks[r.start:r.stop])
                       for c, r in enumerate(map(existing.chunk_range, range(existing.num_chunks))))
        except Exception as exc:  # a stored task that does not load here (its module gone)
            raise WorkDirMismatchError(
                f"work_dir {self.work_dir.path} holds a map of the same function whose stored "
                f"tasks cannot be compared with these ({type(exc).__name__}: {exc}). Use a new "
                f"work_dir, or delete this one if its results are not needed.") from exc
        finally:
            self.work_dir.close()  # the driver holds no file of a work_dir it may remove

    # -- reading outcomes --------------------------------------------------------------
    def outcome(self, chunk: int) -> ChunkOutcome:
        first = self.manifest.chunk_starts[chunk]
        # A kind the scan did not see is not there: not looking for it saves two failed
        # lookups a chunk (round trips on NFS). Archived chunks are looked up in full.
        seen = self.run.output_kinds(chunk)

        def read(kind: str) -> bytes | None:
            if seen is not None and kind not in seen:
                return None
            return self.work_dir.read_output(chunk, kind)
        pickled, records = load_results(read("result"))
        if not records and seen is not None and "exception" in seen:  # another run's: disowned
            self.run.discard_output(chunk, "exception")
        errors = {r["index"]: rebuild_exception(r, self.work_dir.path) for r in records}
        values = loaded_values(pickled, first, errors)
        self.failed = self.failed or bool(errors)
        stderr = read("stderr")
        self.wrote_stderr = self.wrote_stderr or bool(stderr)
        return ChunkOutcome(chunk, first, values, errors)

    def _readable(self, chunk: int) -> ChunkOutcome | None:
        """The chunk's outcome; None when its output cannot be read (a corrupt or truncated
        file): the run then counts the chunk as not run and resubmits it."""
        try:
            return self.outcome(chunk)
        except (pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            self.run.requeue(chunk, f"{type(exc).__name__}: {exc}")
            return None

    def _finished_chunks(self) -> Iterator[int]:
        """Chunk numbers in the order they finish; the map is closed when this ends."""
        chunks = iter(self.run)
        try:
            yield from chunks
        except BaseException:
            self.failed = True
            raise
        finally:
            chunks.close()  # cancels the map's jobs if it did not run to its end
            self.close()

    def completed(self) -> Iterator[ChunkOutcome]:
        """Outcomes in the order chunks finish."""
        for chunk in self._finished_chunks():
            outcome = self._readable(chunk)
            if outcome is not None:
                yield outcome

    def ordered(self) -> Iterator[ChunkOutcome]:
        """Outcomes in input order; chunks that finish early wait on disk, not in memory (a
        byte each here: a set's table, which never shrinks, held a slot for every chunk that
        ever waited)."""
        ready = ChunkSet(self.manifest.num_chunks)
        next_chunk = 0
        for chunk in self._finished_chunks():
            ready.add(chunk)
            while next_chunk in ready:
                ready.discard(next_chunk)
                outcome = self._readable(next_chunk)
                if outcome is None:
                    break  # it comes again when its resubmission finishes
                yield outcome
                next_chunk += 1

    def start(self) -> None:
        self._holds_sigterm = SIGTERM_GUARD.hold()  # until close(): jobs run from now on
        try:
            if self._mode_changed:
                self.run.supersede_earlier_jobs()
            self.run.start()
        except BaseException:
            self.failed = True
            self.close()
            raise

    def abandon(self) -> None:
        """The caller dropped the results unfinished: cancel the map's jobs, keep its work_dir."""
        if self._lock.is_locked:
            self.run.abandon(reason="abandoned")
            self.failed = True
            self.close()

    def close(self) -> None:
        """Remove the work_dir if the map finished cleanly and is not to be kept; else move its
        loose files into the archives (a work_dir that is removed needs none of that). Then
        release it."""
        if not self._lock.is_locked:
            return
        if self._holds_sigterm:
            self._holds_sigterm = False
            SIGTERM_GUARD.release()
        try:
            self.work_dir.close()
            clean = not (self.failed or self.wrote_stderr or self.run.left_something_to_see())
            if clean and self.run.all_finished() and not self.settings.keep_work_dir:
                ownership.remove(self.work_dir.path, self._mark)  # under the lock, till it is gone
                return
            try:
                self.run.archive()
            except OSError as exc:  # a full disk: the loose files are as good, just more of them
                self.work_dir.log("archive_failed", error=str(exc))
        finally:
            self._lock.release()


_PROBED_DEVICES: set[int] = set()


def _check_filesystem_once(path: str) -> None:
    """Probe the work_dir's filesystem for what the protocol needs (fsfeatures.py) once per
    filesystem and process: a map of a few tasks should not pay the probe's round trips again."""
    device = os.stat(path).st_dev
    if device not in _PROBED_DEVICES:
        check_filesystem(path)
        _PROBED_DEVICES.add(device)


def default_work_dir_root(shared: bool) -> str:
    """Where new work_dirs go: $POOLPARTY_RASTER_WORK_DIR_ROOT, else the current directory for
    cluster pools (it must be on a filesystem the nodes share), else the temporary directory."""
    return os.environ.get(WORK_DIR_ROOT_VARIABLE) or (os.getcwd() if shared else tempfile.gettempdir())


def materialise(iterable: Iterable[Any]) -> Sequence[Any]:
    return iterable if isinstance(iterable, Sequence) else list(iterable)
