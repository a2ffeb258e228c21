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
    (default ``os.cpu_count()``), through the same work_dir protocol as the cluster pools.

    ``start_method``: "forkserver" (default on Linux) forks each worker's process from a
    server started once per pool, which has imported what every chunk needs (and numpy and
    rasterio when the driver uses them); "spawn" starts a fresh interpreter for each.

    Workers mode is the default here: nothing queues on one machine, so long-lived workers
    (one per slot, as multiprocessing's) only save a process start per chunk. ``mode="array"``
    runs every chunk in a process of its own."""

    _shared_filesystem = False
    _default_mode = "workers"

    @explain_options
    def __init__(self, num_workers: int | None = None, *, start_method: str | None = None,
                 **options: Any):
        if num_workers is not None and num_workers < 1:  # as multiprocessing.Pool(0) does
            raise ValueError(f"num_workers must be at least 1 (or None: os.cpu_count()), "
                             f"not {num_workers}")
        super().__init__(LocalScheduler(num_workers, start_method), **options)


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


class EcsPool(Pool):
    """Amazon ECS (Fargate or EC2): one task per chunk (``run_task``), the chunk index in an
    environment override; the work_dir must be on a filesystem the tasks mount (EFS, see
    docs/aws.md). Needs boto3 (``pip install poolparty_raster[aws]``), imported on first use.

    Give ``task_definition`` (whose container ``container_name`` has Python, this package and the
    work_dir mounted), or ``container_image`` and the roles, from which the pool registers a task
    definition per map and deregisters it afterwards (with ``efs_file_system_id``, mounted at
    ``efs_container_path``). Fargate needs ``subnets``. ``container_python`` is the interpreter
    in the container (default: python_path); ``path_mapping={driver_prefix: container_prefix}``
    when the work_dir is mounted elsewhere in the container. ``num_simultaneously_running_tasks``
    caps the tasks started at once. Requests ECS would refuse are refused here, at construction.
    """

    @explain_options
    def __init__(self, *, cluster: str | None = None, task_definition: str | None = None,
                 container_image: str | None = None, execution_role_arn: str | None = None,
                 task_role_arn: str | None = None, container_name: str = "poolparty",
                 launch_type: str = "FARGATE", capacity_provider_strategy: Sequence[dict] | None = None,
                 subnets: Sequence[str] = (), security_groups: Sequence[str] = (),
                 assign_public_ip: bool = False, cpu: str | int | None = None,
                 memory: str | int | None = None, tags: dict[str, str] | None = None,
                 region: str | None = None, container_python: str | None = None,
                 path_mapping: dict[str, str] | None = None, efs_file_system_id: str | None = None,
                 efs_root_directory: str = "/", efs_container_path: str | None = None,
                 efs_access_point_id: str | None = None, log_group: str | None = None,
                 boto3_session: Any = None, ecs_client: Any = None, job_name: str = "pp",
                 **options: Any):
        from poolparty_raster.schedulers.awscommon import check_name_prefix
        from poolparty_raster.schedulers.ecs import EcsScheduler

        check_name_prefix(job_name)
        scheduler = EcsScheduler(
            cluster=cluster, task_definition=task_definition, container_image=container_image,
            execution_role_arn=execution_role_arn, task_role_arn=task_role_arn,
            container_name=container_name, launch_type=launch_type,
            capacity_provider_strategy=capacity_provider_strategy, subnets=subnets,
            security_groups=security_groups, assign_public_ip=assign_public_ip, cpu=cpu,
            memory=memory, tags=tags, region=region, container_python=container_python,
            path_mapping=path_mapping, efs_file_system_id=efs_file_system_id,
            efs_root_directory=efs_root_directory, efs_container_path=efs_container_path,
            efs_access_point_id=efs_access_point_id, log_group=log_group,
            boto3_session=boto3_session, ecs_client=ecs_client)
        super().__init__(scheduler, **options)
        self._settings.job_name_prefix = job_name

    @staticmethod
    def extra_params_fargate(*, container_image: str, execution_role_arn: str,
                             task_role_arn: str | None = None, subnet: str | None = None,
                             subnets: Sequence[str] = (), security_groups: Sequence[str] = (),
                             cpu: str = "0.5 vCPU", memory: str = "1GB",
                             cluster: str | None = None, efs_file_system_id: str | None = None,
                             efs_container_path: str | None = None,
                             log_group: str | None = None, tags: dict[str, str] | None = None,
                             **more: Any) -> dict[str, Any]:
        """EcsPool options for Fargate from the essentials, as RIOS's makeExtraParams_Fargate
        (for ``computeWorkerExtraParams``): the pool registers the task definition itself.
        ``efs_container_path``: where the tasks mount the EFS file system (the driver's mount
        point, so that the work_dir has the same path in both)."""
        return {"launch_type": "FARGATE", "container_image": container_image,
                "execution_role_arn": execution_role_arn, "task_role_arn": task_role_arn,
                "subnets": [subnet] if subnet else list(subnets),
                "security_groups": list(security_groups), "cpu": cpu, "memory": memory,
                "cluster": cluster, "efs_file_system_id": efs_file_system_id,
                "efs_container_path": efs_container_path,
                "log_group": log_group, "tags": dict(tags or {}), **more}

    @staticmethod
    def extra_params_private_cluster(*, cluster: str, container_image: str | None = None,
                                     task_definition: str | None = None,
                                     execution_role_arn: str | None = None,
                                     task_role_arn: str | None = None, subnet: str | None = None,
                                     security_groups: Sequence[str] = (), memory: int = 1024,
                                     efs_file_system_id: str | None = None,
                                     efs_container_path: str | None = None,
                                     tags: dict[str, str] | None = None, **more: Any) -> dict[str, Any]:
        """EcsPool options for an existing EC2-backed cluster (its container instances already
        registered), as RIOS's makeExtraParams_PrivateCluster; unlike RIOS, the pool does not
        start or stop the instances. Without ``subnet`` the tasks use bridge networking (the
        instance's); with one, awsvpc. ``efs_container_path`` as for extra_params_fargate."""
        return {"launch_type": "EC2", "cluster": cluster, "container_image": container_image,
                "task_definition": task_definition, "execution_role_arn": execution_role_arn,
                "task_role_arn": task_role_arn, "subnets": [subnet] if subnet else [],
                "security_groups": list(security_groups), "memory": memory,
                "efs_file_system_id": efs_file_system_id, "efs_container_path": efs_container_path,
                "tags": dict(tags or {}), **more}


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
