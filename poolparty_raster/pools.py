"""The pools users construct: one small class per backend, each a Pool with its scheduler.

Every pool takes the common options documented on :class:`poolparty_raster.pool.Pool`; the
options listed here are the backend's own.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pool import Pool, explain_options
from poolparty_raster.schedulers.local import LocalScheduler
from poolparty_raster.schedulers.pbs import PbsScheduler
from poolparty_raster.schedulers.sge import SgeScheduler
from poolparty_raster.schedulers.slurm import SlurmScheduler


class LocalPool(Pool):
    """Runs the worker script as subprocesses on this machine, ``num_workers`` at a time
    (default ``os.cpu_count()``), through the same work_dir protocol as the cluster pools."""

    _shared_filesystem = False

    @explain_options
    def __init__(self, num_workers: int | None = None, **options: Any):
        super().__init__(LocalScheduler(num_workers), **options)


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
                 squeue_path: str = "squeue", scancel_path: str = "scancel", **options: Any):
        scheduler = SlurmScheduler(
            array=self._array, partition=partition, time=time, mem=mem, cpus_per_task=cpus_per_task,
            gres=gres, account=account, qos=qos, sbatch_args=sbatch_args,
            slurm_call_timeout=slurm_call_timeout, sbatch_path=sbatch_path,
            squeue_path=squeue_path, scancel_path=scancel_path)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name


class SlurmPool(SlurmArrayPool):
    """One ``sbatch`` job per chunk, for sites that forbid or limit job arrays."""

    _array = False


class SgePool(Pool):
    """Grid Engine: ``qsub -t`` arrays (``array=False``: one job per chunk)."""

    @explain_options
    def __init__(self, *, array: bool = True, queue_name: str | None = None,
                 resources: Sequence[str] = (), parallel_environment: tuple[str, int] | None = None,
                 project: str | None = None, job_name: str = "pp", qsub_args: Sequence[str] = (),
                 sge_call_timeout: float = 60.0, qsub_path: str = "qsub",
                 qstat_path: str = "qstat", qdel_path: str = "qdel", **options: Any):
        scheduler = SgeScheduler(
            array=array, queue_name=queue_name, resources=resources,
            parallel_environment=parallel_environment, project=project, qsub_args=qsub_args,
            sge_call_timeout=sge_call_timeout, qsub_path=qsub_path, qstat_path=qstat_path,
            qdel_path=qdel_path)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name


class PbsPool(Pool):
    """PBS Pro / OpenPBS: ``qsub -J`` arrays (a lone chunk is a plain job)."""

    @explain_options
    def __init__(self, *, array: bool = True, queue: str | None = None,
                 resources: Sequence[str] = (), walltime: str | None = None,
                 account: str | None = None, job_name: str = "pp", qsub_args: Sequence[str] = (),
                 pbs_call_timeout: float = 60.0, qsub_path: str = "qsub",
                 qstat_path: str = "qstat", qdel_path: str = "qdel", **options: Any):
        scheduler = PbsScheduler(
            array=array, queue=queue, resources=resources, walltime=walltime, account=account,
            qsub_args=qsub_args, pbs_call_timeout=pbs_call_timeout, qsub_path=qsub_path,
            qstat_path=qstat_path, qdel_path=qdel_path)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name
