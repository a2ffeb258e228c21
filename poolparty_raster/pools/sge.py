"""SgePool: Grid Engine."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.sge import SgeScheduler


class SgePool(Pool):
    """Grid Engine: ``qsub -t`` arrays (``array=False``: one job per chunk).
    Its options: ``help(SgePool.__init__)``, or docs/sge.md."""

    _scheduler_class = SgeScheduler
