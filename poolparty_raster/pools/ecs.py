"""EcsPool: Amazon ECS tasks. boto3 is imported when a pool makes its client."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolparty_raster.pools.base import Pool
from poolparty_raster.schedulers.ecs import EcsScheduler


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
    Its options: ``help(EcsPool.__init__)``, or docs/aws.md.
    """

    _scheduler_class = EcsScheduler

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
