"""The pools users construct: one small class per backend, each a Pool with its scheduler."""
from __future__ import annotations

from poolparty_raster.pool import Pool, explain_options
from poolparty_raster.schedulers.local import LocalScheduler


class LocalPool(Pool):
    """Runs the worker script as subprocesses on this machine, ``num_workers`` at a time
    (default ``os.cpu_count()``), through the same work_dir protocol as the cluster pools."""

    _shared_filesystem = False

    @explain_options
    def __init__(self, num_workers: int | None = None, **options):
        super().__init__(LocalScheduler(num_workers), **options)
