"""SlurmArrayPool and SlurmPool: SLURM, one array per map or one job per chunk."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.slurm import SlurmScheduler


class SlurmArrayPool(Pool):
    """One ``sbatch --array`` per map (split where the site's MaxArraySize requires), one array
    element per chunk, throttled with ``%K`` by ``num_simultaneously_running_tasks``.
    Its options: ``help(SlurmArrayPool.__init__)``, or docs/slurm.md."""

    _scheduler_class = SlurmScheduler
    _fixed_options = {"array": True}


class SlurmPool(SlurmArrayPool):
    """One ``sbatch`` job per chunk, for sites that forbid or limit job arrays."""

    _fixed_options = {"array": False}
