"""PbsPool: PBS Pro and OpenPBS."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.pbs import PbsScheduler


class PbsPool(Pool):
    """PBS Pro / OpenPBS: ``qsub -J`` arrays (a lone chunk is a plain job).
    Its options: ``help(PbsPool.__init__)``, or docs/pbs.md."""

    _scheduler_class = PbsScheduler
