"""SlurmArrayPool and SlurmPool: SLURM, one array per map or one job per chunk."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pool import Pool, explain_options
from poolparty_raster.schedulers.slurm import SlurmScheduler


class SlurmArrayPool(Pool):
    """One ``sbatch --array`` per map (split where the site's MaxArraySize requires), one array
    element per chunk, throttled with ``%K`` by ``num_simultaneously_running_tasks``."""

    _array = True

    @explain_options
    def __init__(self, *, partition: str | None = None, time: str | None = None,
                 mem: str | None = None, cpus_per_task: int | None = None,
                 gres: str | None = None, account: str | None = None, qos: str | None = None,
                 job_name: str = "pp", sbatch_args: Sequence[str] = (),
                 slurm_call_timeout: float = 60.0, sbatch_path: str = "sbatch",
                 squeue_path: str = "squeue", scancel_path: str = "scancel",
                 scontrol_path: str | None = None, sinfo_path: str | None = None, **options: Any):
        scheduler = SlurmScheduler(
            array=self._array, partition=partition, time=time, mem=mem, cpus_per_task=cpus_per_task,
            gres=gres, account=account, qos=qos, sbatch_args=sbatch_args,
            slurm_call_timeout=slurm_call_timeout, sbatch_path=sbatch_path,
            squeue_path=squeue_path, scancel_path=scancel_path, scontrol_path=scontrol_path,
            sinfo_path=sinfo_path)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name


class SlurmPool(SlurmArrayPool):
    """One ``sbatch`` job per chunk, for sites that forbid or limit job arrays."""

    _array = False
