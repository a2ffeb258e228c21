"""The pool a ConcurrencyStyle asks for. Pool classes are imported lazily from
``poolparty_raster``, so an applier run never needs a backend it does not use."""
from __future__ import annotations

import inspect
import os
from multiprocessing.pool import ThreadPool
from typing import Any

from poolparty_raster.applier.controls import (CW_AWSBATCH, CW_ECS, CW_PBS, CW_SGE, CW_SLURM,
                                               CW_SUBPROC, CW_THREADS, ConcurrencyStyle)

_POOL_CLASS_NAMES = {CW_SUBPROC: "LocalPool", CW_SLURM: "SlurmArrayPool", CW_SGE: "SgePool",
                     CW_PBS: "PbsPool", CW_ECS: "EcsPool", CW_AWSBATCH: "AwsBatchPool"}


def makePool(style: ConcurrencyStyle, jobName: str | None) -> Any:
    """A new pool for ``style`` (not CW_NONE); the caller closes it.

    CW_THREADS: a ThreadPool of numComputeWorkers threads. CW_SUBPROC: LocalPool with
    num_workers=numComputeWorkers. Cluster kinds: numComputeWorkers caps the tasks running
    at once (num_simultaneously_running_tasks). computeWorkerExtraParams are passed as
    keyword arguments and win over both.
    """
    kind = style.computeWorkerKind
    workers = style.numComputeWorkers or None
    if kind == CW_THREADS:
        return ThreadPool(workers or os.cpu_count(), **style.computeWorkerExtraParams)
    className = _POOL_CLASS_NAMES[kind]
    import poolparty_raster
    poolClass = getattr(poolparty_raster, className, None)
    if poolClass is None:
        raise NotImplementedError(f"computeWorkerKind {kind} needs poolparty_raster.{className}, "
                                  "which this installation does not provide")
    kwargs: dict[str, Any] = {}
    if kind == CW_SUBPROC:
        kwargs["num_workers"] = workers
    elif workers:
        kwargs["num_simultaneously_running_tasks"] = workers
    if jobName is not None and "job_name" in inspect.signature(poolClass).parameters:
        kwargs["job_name"] = jobName
    kwargs.update(style.computeWorkerExtraParams)
    return poolClass(**kwargs)


def poolWidth(pool: Any, style: ConcurrencyStyle) -> int:
    """How many tasks the pool runs at once, as far as can be told: the style's
    numComputeWorkers, else multiprocessing's ``_processes``, else the CPU count."""
    return (style.numComputeWorkers or getattr(pool, "_processes", None)
            or getattr(pool, "num_workers", None) or os.cpu_count() or 1)
