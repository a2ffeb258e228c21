"""LocalPool: the worker script as subprocesses of this machine."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.local import LocalScheduler


class LocalPool(Pool):
    """Runs the worker script as subprocesses on this machine, ``processes`` at a time
    (default ``os.cpu_count()``), through the same work_dir protocol as the cluster pools.
    Its first four options are multiprocessing.Pool's, in its order: ``LocalPool(processes,
    initializer, initargs, maxtasksperchild)``.

    ``start_method``: "forkserver" (default on Linux) forks each worker's process from a
    server started once per pool, which has imported what every chunk needs (and numpy and
    rasterio when the driver uses them); "spawn" starts a fresh interpreter for each.

    Workers mode is the default here: nothing queues on one machine, so long-lived workers
    (one per slot, as multiprocessing's) only save a process start per chunk. ``mode="array"``
    runs every chunk in a process of its own."""

    _scheduler_class = LocalScheduler
    _shared_filesystem = False
    _default_mode = "workers"
    _positional_options = ("processes", "initializer", "initargs", "maxtasksperchild")
