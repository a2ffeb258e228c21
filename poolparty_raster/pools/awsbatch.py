"""AwsBatchPool: AWS Batch array jobs.

The scheduler is imported when a pool is made: importing the pools (as every fork server
does) does not load the AWS modules."""
from __future__ import annotations

from typing import Any

from poolparty_raster.pool import Pool, explain_options


class AwsBatchPool(Pool):
    """AWS Batch: one array job per map (children ``<jobId>:<index>``, a lone chunk is a plain
    job); the job definition's container must have Python, this package and the work_dir
    mounted (EFS, see docs/aws.md). Needs boto3, imported on first use. ``vcpus`` and
    ``memory`` (MiB) become resourceRequirements overrides; Batch retries are off, this pool
    resubmits. Batch has no array throttle: with ``num_simultaneously_running_tasks`` the pool
    submits no more chunks than that at a time. ``container_python`` and ``path_mapping`` as
    for :class:`EcsPool`.
    """

    @explain_options
    def __init__(self, *, job_queue: str, job_definition: str,
                 container_overrides: dict[str, Any] | None = None, vcpus: float | None = None,
                 memory: int | None = None, tags: dict[str, str] | None = None,
                 region: str | None = None, container_python: str | None = None,
                 path_mapping: dict[str, str] | None = None, boto3_session: Any = None,
                 batch_client: Any = None, job_name: str = "pp", **options: Any):
        from poolparty_raster.schedulers.awsbatch import AwsBatchScheduler
        from poolparty_raster.schedulers.awscommon import check_name_prefix

        check_name_prefix(job_name)
        scheduler = AwsBatchScheduler(
            job_queue=job_queue, job_definition=job_definition,
            container_overrides=container_overrides, vcpus=vcpus, memory=memory, tags=tags,
            region=region, container_python=container_python, path_mapping=path_mapping,
            boto3_session=boto3_session, batch_client=batch_client)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name
