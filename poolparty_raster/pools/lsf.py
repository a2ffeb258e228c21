"""LsfPool: IBM Spectrum LSF."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.lsf import LsfScheduler


class LsfPool(Pool):
    """IBM Spectrum LSF: one ``bsub -J "name[1-N]%K"`` array per map (split where the site's
    MAX_JOB_ARRAY_SIZE requires), one element per chunk, throttled with ``%K`` by
    ``num_simultaneously_running_tasks``. Its options: ``help(LsfPool.__init__)``, or
    docs/lsf.md."""

    _scheduler_class = LsfScheduler
