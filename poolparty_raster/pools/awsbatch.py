"""AwsBatchPool: AWS Batch array jobs. boto3 is imported when a pool makes its client."""
from __future__ import annotations

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.awsbatch import AwsBatchScheduler


class AwsBatchPool(Pool):
    """AWS Batch: one array job per map (children ``<jobId>:<index>``, a lone chunk is a plain
    job); the job definition's container must have Python, this package and the work_dir
    mounted (EFS, see docs/aws.md). Needs boto3, imported on first use. ``vcpus`` and
    ``memory`` (MiB) become resourceRequirements overrides; Batch retries are off, this pool
    resubmits. Batch has no array throttle: with ``num_simultaneously_running_tasks`` the pool
    submits no more chunks than that at a time. ``container_python`` and ``path_mapping`` as
    for :class:`EcsPool`. Its options: ``help(AwsBatchPool.__init__)``, or docs/aws.md.
    """

    _scheduler_class = AwsBatchScheduler
