"""HTCondorPool: HTCondor."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.htcondor import HTCondorScheduler


class HTCondorPool(Pool):
    """HTCondor: one cluster per submission (``queue N``, a proc per chunk) in the vanilla
    universe on a shared filesystem, throttled with ``max_materialize`` by
    ``num_simultaneously_running_tasks``. Its options: ``help(HTCondorPool.__init__)``, or
    docs/htcondor.md."""

    _scheduler_class = HTCondorScheduler
