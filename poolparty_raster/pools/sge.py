"""SgePool: Grid Engine."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pool import Pool, explain_options
from poolparty_raster.schedulers.sge import SgeScheduler


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
