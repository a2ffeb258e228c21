"""PbsPool: PBS Pro and OpenPBS."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pool import Pool, explain_options
from poolparty_raster.schedulers.pbs import PbsScheduler


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
