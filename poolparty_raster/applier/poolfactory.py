"""The pool a ConcurrencyStyle asks for, how wide a pool is, and where its workers can put
block files. A kind's pool class is imported from its backend's own module, which the
registry names, so an applier run never needs a backend it does not use."""
from __future__ import annotations

import importlib
import inspect
import os
import tempfile
import time
import uuid
from multiprocessing.pool import Pool as MultiprocessingPool
from multiprocessing.pool import ThreadPool
from typing import Any

from poolparty_raster.applier.blockfiles import Ledger
from poolparty_raster.applier.controls import CW_PROFILE, CW_THREADS, ConcurrencyStyle
from poolparty_raster.registry import BACKENDS

_BACKEND_OF_KIND = {backend.applier_kind: backend for backend in BACKENDS}


def pool_class_for(kind: str) -> type:
    """The pool class that runs a pool kind (CW_SUBPROC, CW_SLURM, ...): its backend's
    usual pool, imported from the backend's module by the name the registry gives."""
    backend = _BACKEND_OF_KIND[kind]
    return getattr(importlib.import_module(backend.pool_module), backend.pool_class)


def make_pool(style: ConcurrencyStyle, job_name: str | None) -> Any:
    """A new pool for ``style`` (not CW_NONE); the caller closes it.

    CW_THREADS: a ThreadPool of numComputeWorkers threads. CW_PROFILE: the site profile's
    pool (computeWorkerProfile, else $POOLPARTY_RASTER_PROFILE), with what follows from the
    style winning over the profile's options. Pool kinds (issue 7): with
    numComputeWorkers=N and singleBlockComputeWorkers=False, N long-lived worker jobs claim
    tasks until none is left (``mode="workers", max_workers=N``), so start-up and queue
    waits are paid N times, not once per task; singleBlockComputeWorkers=True keeps RIOS's
    one job per block (array mode), at most N at a time (num_simultaneously_running_tasks).
    Otherwise each pool's default mode (LocalPool: workers; clusters: array). A pool that
    takes ``num_workers`` (CW_SUBPROC's LocalPool) runs N processes at a time in either mode.
    computeWorkerExtraParams are passed as keyword arguments and win.
    """
    kind = style.computeWorkerKind
    workers = style.numComputeWorkers or None
    if kind == CW_THREADS:
        return ThreadPool(workers or os.cpu_count(), **style.computeWorkerExtraParams)
    profile = None
    if kind == CW_PROFILE:
        from poolparty_raster.profiles import load_profile  # reads the profiles file
        profile = load_profile(style.computeWorkerProfile)
        cls = profile.pool_class
    else:
        cls = pool_class_for(kind)
    options = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if workers and "num_workers" in options:  # else the pool's (or profile's) own
        kwargs["num_workers"] = workers
    if style.singleBlockComputeWorkers:
        kwargs["mode"] = "array"
        if workers and "num_workers" not in options:
            kwargs["num_simultaneously_running_tasks"] = workers
    elif workers:
        kwargs.update(mode="workers", max_workers=workers)
    if job_name is not None and "job_name" in options:
        kwargs["job_name"] = job_name
    kwargs.update(style.computeWorkerExtraParams)
    return cls(**kwargs) if profile is None else profile.make_pool(**kwargs)


def pool_width(pool: Any, style: ConcurrencyStyle) -> int:
    """How many tasks run at once, which task sizes follow: the style's numComputeWorkers
    when given (with setPool too: the user's word for how many will run), else what the pool
    says (``pool.parallelism`` for this package's pools, at most max_workers in workers
    mode; multiprocessing's ``_processes``), else the CPU count."""
    if style.numComputeWorkers:
        return style.numComputeWorkers
    parallelism = getattr(pool, "parallelism", None)
    if isinstance(parallelism, int) and parallelism > 0:
        max_workers = getattr(pool, "max_workers", None)
        if is_workers_mode(pool) and max_workers:
            return min(parallelism, max_workers)
        return parallelism
    return getattr(pool, "_processes", None) or os.cpu_count() or 1


def is_workers_mode(pool: Any) -> bool:
    return getattr(pool, "mode", None) == "workers"


def how_tasks_run(pool: Any) -> str:
    """How a pool runs tasks, which decides how they travel and how large they are (see
    grid.task_sizes):

    "threads": threads of this process (multiprocessing's ThreadPool, whoever made it).
    They share the process, so the spec and the arrays go in-band, and each task opens its
    own inputs: a block file or an open dataset shared between threads would be written or
    read by two at once. "workers": long-lived processes that run task after task (this
    package's pools in workers mode; multiprocessing's Pool unless its processes are
    replaced every few tasks), which pay their start-up once. "array": a new process per
    task, or a pool we know nothing of (the cautious sizing)."""
    if isinstance(pool, ThreadPool):
        return "threads"
    if is_workers_mode(pool):
        return "workers"
    if isinstance(pool, MultiprocessingPool) and getattr(pool, "_maxtasksperchild", None) is None:
        return "workers"
    return "array"


def throttles(pool: Any) -> bool:
    """Whether handing out tasks lazily bounds the results in flight: multiprocessing's
    pools pull tasks from a handler thread and return results as they finish. This
    package's pools take every task up front (results wait on disk, not in memory)."""
    return isinstance(pool, MultiprocessingPool)


class Scratch:
    """A private directory (0700) for block files, where driver and workers both see it:
    beside the pool's work_dirs (which must be shared for cluster pools), else in the
    temporary directory for pools on this machine. ``worker_path`` is the same directory as
    the workers see it (an ECS pool may mount the work_dir elsewhere); ``ledger`` removes
    each block file once the driver has read it. Removed on close."""

    def __init__(self, pool: Any):
        root = getattr(pool, "work_dir_parent", None) or tempfile.gettempdir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = os.path.join(os.path.abspath(root),
                                 f"poolparty_raster.applier.{stamp}.{uuid.uuid4().hex[:8]}")
        os.makedirs(self.path, mode=0o700)
        self.worker_path = (pool.worker_path(self.path) if hasattr(pool, "worker_path")
                            else self.path)
        self.ledger = Ledger(self.path)

    def file(self, name: str) -> str:
        return f"{self.path}{os.sep}{name}"  # not os.path.join: asked for every task

    def close(self) -> None:
        import shutil
        shutil.rmtree(self.path, ignore_errors=True)

