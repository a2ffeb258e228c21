"""EcsPool: Amazon ECS tasks.

The scheduler is imported when a pool is made: importing the pools (as every fork server
does) does not load the AWS modules."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pool import Pool, explain_options


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
