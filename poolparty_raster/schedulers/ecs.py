"""Amazon ECS: one ``run_task`` per chunk (Fargate or EC2), ``describe_tasks``, ``stop_task``.

Facts this module is built on (the ECS API reference, botocore's service model):
- ``run_task`` starts up to 10 tasks per call (``count``), all with the *same* overrides. The
  chunk index (array mode) and the worker number (workers mode: the worker's identity in its
  claims, which the driver maps back to the task to tell a dead worker's claim) travel in an
  environment override, so every call starts one task;
- a call can succeed and start nothing, listing ``failures`` (RESOURCE:CPU, capacity, quota):
  the engine is told (SubmissionRefused) and tries again later; ``clientToken`` (24 hours)
  makes a repeat idempotent: an answer lost in transit is asked for again (by a resumed driver
  too: see RunTokens), never guessed; the same token with other parameters (a new task
  definition revision) is a ConflictException naming the token's task in ``resourceIds``;
- ``describe_tasks`` takes at most 100 ids; unknown ids come back as ``MISSING`` failures;
  stopped tasks stay visible about an hour; ``stop_task`` of a stopped task is harmless;
- container overrides are limited to 8 KB: they carry the command (paths) and the index only;
- a task stopped ``TaskFailedToStart`` by CannotPullContainerError or
  ResourceInitializationError (image, registry auth, secrets, EFS mount) fails every
  resubmission the same way: the map fails at once, naming it, unless a rate limit (ECR's,
  Secrets Manager's, Docker Hub's) stopped it, which passes: an ordinary death.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from poolparty_raster.errors import SchedulerError, SubmissionRefused
from poolparty_raster.schedulers.awscommon import (AwsScheduler, RunTokens, absolute, aws_tags,
                                                   check_tags, checked_mapping, container_command,
                                                   end_each, error_code, make_client, safe_name,
                                                   submission_failure_kind)
from poolparty_raster.schedulers.base import (JobRecord, PollResult, SubmitSpec, TaskState,
                                              TaskStatus, map_path)
from poolparty_raster.schedulers.ecsstatus import classify_task
from poolparty_raster.schedulers.jobcommand import checked_setup, with_setup

CHUNK_VARIABLE = "POOLPARTY_RASTER_CHUNK"
OVERRIDES_LIMIT = 8192
# A placement refusal (no instance or Fargate capacity fits) passes when capacity frees up;
# while none of the map's tasks runs, it is waited out this long before the map fails.
PLACEMENT_GIVE_UP_AFTER = 600.0
# Fargate's cpu units -> the memory sizes (MiB) it allows with them.
FARGATE_MEMORY = {256: (512, 1024, 2048), 512: tuple(range(1024, 4097, 1024)),
                  1024: tuple(range(2048, 8193, 1024)), 2048: tuple(range(4096, 16385, 1024)),
                  4096: tuple(range(8192, 30721, 1024)), 8192: tuple(range(16384, 61441, 4096)),
                  16384: tuple(range(32768, 122881, 8192))}
FARGATE_DEFAULT = (512, 1024)  # 0.5 vCPU, 1 GB: the defaults of extra_params_fargate


def size(value: str | int | None, unit: str) -> int | None:
    """CPU units or MiB: ``1024``, ``"1024"``, or 1024 per ``unit``: ``"1 vCPU"``, ``"2GB"``."""
    if value is None:
        return None
    match = re.fullmatch(rf"\s*([\d.]+)\s*({unit})?\s*", str(value), re.I)
    if not match:
        raise ValueError(f"{value!r}: give a number (CPU units, MiB) or '<n> {unit}'")
    return round(float(match[1]) * 1024) if match[2] else int(float(match[1]))


class EcsScheduler(AwsScheduler):
    name = "ecs"

    def __init__(
            self, *,
            cluster: Annotated[str | None, "the ECS cluster (default: the account's default)"] = None,
            task_definition: Annotated[str | None, "an existing task definition (family:revision)"] = None,
            container_image: Annotated[str | None, "else: the image the pool registers a task "
                                                   "definition for, per map"] = None,
            execution_role_arn: Annotated[str | None, "role that pulls the image, writes logs"] = None,
            task_role_arn: Annotated[str | None, "role the tasks run with"] = None,
            container_name: Annotated[str, "the container that runs the chunks"] = "poolparty",
            launch_type: Annotated[str, "'FARGATE' or 'EC2'"] = "FARGATE",
            capacity_provider_strategy: Annotated[Sequence[dict] | None,
                                                  "RunTask's capacityProviderStrategy"] = None,
            subnets: Annotated[Sequence[str], "awsvpc subnets (Fargate needs them)"] = (),
            security_groups: Annotated[Sequence[str], "awsvpc security groups"] = (),
            assign_public_ip: Annotated[bool, "Fargate: give each task a public IP"] = False,
            cpu: Annotated[str | int | None, "task CPU: units (1024 a vCPU) or '0.5 vCPU'"] = None,
            memory: Annotated[str | int | None, "task memory: MiB or '1GB'"] = None,
            gpus_per_task: Annotated[int | None, "GPUs for each task's container (EC2 "
                                                  "launch type: Fargate has none)"] = None,
            setup: Annotated[Sequence[str], "shell lines run in the container before each "
                                            "task's Python starts, in bash"] = (),
            tags: Annotated[dict[str, str] | None, "tags of the tasks and task definitions"] = None,
            region: Annotated[str | None, "AWS region (default: boto3's)"] = None,
            container_python: Annotated[str | None, "the interpreter in the container "
                                                    "(default: python_path)"] = None,
            path_mapping: Annotated[dict[str, str] | None, "{driver prefix: container prefix} "
                                                           "where the work_dir is elsewhere"] = None,
            efs_file_system_id: Annotated[str | None, "EFS to mount in a registered definition"] = None,
            efs_root_directory: Annotated[str, "the EFS directory mounted"] = "/",
            efs_container_path: Annotated[str | None, "where the container mounts EFS"] = None,
            efs_access_point_id: Annotated[str | None, "an EFS access point"] = None,
            log_group: Annotated[str | None, "CloudWatch log group of a registered definition"] = None,
            boto3_session: Annotated[Any, "a boto3.Session to make the client from"] = None,
            ecs_client: Annotated[Any, "a ready boto3 ECS client (tests, custom endpoints)"] = None,
            retry_backoff: Annotated[float, "seconds before the first retry of a throttled "
                                            "call (doubling)"] = 0.5):
        if (task_definition is None) == (container_image is None):
            raise ValueError("EcsPool needs task_definition, or container_image to register one "
                             "(not both)")
        if launch_type not in ("FARGATE", "EC2"):
            raise ValueError(f"launch_type must be FARGATE or EC2, not {launch_type!r}")
        fargate = launch_type == "FARGATE"
        if fargate and not subnets:
            raise ValueError("launch_type FARGATE needs subnets: every Fargate task gets its own "
                             "network interface (networkMode awsvpc) in one of them")
        if (security_groups or assign_public_ip) and not subnets:
            raise ValueError("security_groups and assign_public_ip need subnets (awsvpc)")
        if gpus_per_task and fargate:
            raise ValueError("Fargate offers no GPUs: gpus_per_task needs launch_type='EC2'")
        if assign_public_ip and not fargate:
            raise ValueError("assign_public_ip works on Fargate only; on EC2 use a NAT gateway")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", container_name):
            raise ValueError(f"container_name {container_name!r}: letters, digits, '-', '_' only")
        for role, arn in (("execution_role_arn", execution_role_arn), ("task_role_arn", task_role_arn)):
            if arn is not None and not arn.startswith("arn:"):
                raise ValueError(f"{role} must be a role ARN (arn:aws:iam::...:role/...), not {arn!r}")
        self.cpu, self.memory = size(cpu, "vCPU"), size(memory, "GB")
        if container_image is not None:
            if fargate:  # Fargate needs both at task level; EC2 needs memory somewhere
                self.cpu, self.memory = self.cpu or FARGATE_DEFAULT[0], self.memory or FARGATE_DEFAULT[1]
                if not execution_role_arn and (log_group or ".dkr.ecr." in container_image):
                    raise ValueError("Fargate needs execution_role_arn to pull from ECR or write "
                                     "to CloudWatch logs")
            else:
                self.memory = self.memory or 1024
        if fargate and self.cpu and self.memory and self.memory not in FARGATE_MEMORY.get(self.cpu, ()):
            raise ValueError(f"Fargate does not offer cpu={self.cpu} with memory={self.memory} MiB; "
                             f"valid cpu units: {sorted(FARGATE_MEMORY)} (see the ECS docs' table)")
        if efs_file_system_id and task_definition is not None:
            raise ValueError("efs_* options describe the task definition the pool registers: "
                             "with task_definition, mount EFS in that definition")
        if efs_file_system_id and not efs_container_path:
            raise ValueError("efs_file_system_id needs efs_container_path: where the container "
                             "mounts the file system (the driver's EFS mount point as the "
                             "container sees it, e.g. /mnt/efs); the work_dir must be below it")
        if efs_access_point_id and not efs_file_system_id:
            raise ValueError("efs_access_point_id needs efs_file_system_id")
        check_tags(dict(tags or {}))
        self.cluster, self.task_definition = cluster, task_definition
        self.container_image, self.container_name = container_image, container_name
        self.roles = {"executionRoleArn": execution_role_arn, "taskRoleArn": task_role_arn}
        self.launch_type, self.capacity = launch_type, list(capacity_provider_strategy or [])
        self.subnets, self.security_groups = list(subnets), list(security_groups)
        self.assign_public_ip = assign_public_ip
        self.tags, self.region = dict(tags or {}), region
        self.container_python = container_python
        self.path_mapping = checked_mapping(path_mapping)
        self.efs = {"fileSystemId": efs_file_system_id, "rootDirectory": efs_root_directory,
                    "containerPath": efs_container_path and absolute(efs_container_path, "efs_container_path"),
                    "accessPointId": efs_access_point_id}
        self.log_group, self.backoff = log_group, retry_backoff
        self.gpus_per_task = gpus_per_task
        self.setup = checked_setup(setup)
        self.request_options = {"mem": "memory"}  # named in an out-of-memory kill's message
        self._session, self._client = boto3_session, ecs_client
        self._registered: dict[str, str] = {}  # map name -> task definition ARN we registered
        self._deregistered: set[str] = set()
        self._started: set[str] = set()        # maps that started a task in this driver
        self._tokens = RunTokens()  # run_task's clientTokens, derived again by a resumed driver
        self._final: dict[str, TaskStatus] = {}  # stopped tasks need no more describe calls

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("ecs", self._session, self.region)
        return self._client

    def check_available(self) -> None:
        self.client  # noqa: B018 -- raises a clear error when boto3 is missing

    def default_parallelism(self) -> int:
        return 32

    def _where(self) -> dict[str, str]:
        return {"cluster": self.cluster} if self.cluster else {}

    # -- task definition -----------------------------------------------------------------
    def _task_definition(self, spec: SubmitSpec) -> str:
        if self.task_definition is not None:
            return self.task_definition
        if spec.job_name not in self._registered:
            answer = self._call(self.client.register_task_definition, "ecs register_task_definition",
                                **self.task_definition_params(spec))
            self._registered[spec.job_name] = answer["taskDefinition"]["taskDefinitionArn"]
        return self._registered[spec.job_name]

    def task_definition_params(self, spec: SubmitSpec) -> dict[str, Any]:
        """What register_task_definition gets, checked against what ECS would refuse."""
        container: dict[str, Any] = {"name": self.container_name, "image": self.container_image,
                                     "essential": True}
        awsvpc = self.launch_type == "FARGATE" or bool(self.subnets)
        params: dict[str, Any] = {
            "family": safe_name(f"poolparty-{spec.job_name}", 255), "containerDefinitions": [container],
            "requiresCompatibilities": [self.launch_type], "networkMode": "awsvpc" if awsvpc else "bridge",
            "tags": [{"key": k, "value": v} for k, v in aws_tags(self.tags, spec.job_name).items()]}
        params.update({k: v for k, v in self.roles.items() if v})
        params.update({k: str(v) for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v})
        if self.efs["fileSystemId"]:
            mount = self.efs["containerPath"]
            seen = map_path(spec.work_dir, self.path_mapping)
            if not (seen == mount or seen.startswith(mount.rstrip("/") + "/")):
                raise SchedulerError(
                    f"the work_dir is {seen} in the container, not below efs_container_path "
                    f"{mount}: put the work_dir on the EFS mount (POOLPARTY_RASTER_WORK_DIR_ROOT), "
                    f"or give path_mapping={{driver mount: container mount}}")
            volume: dict[str, Any] = {"fileSystemId": self.efs["fileSystemId"],
                                      "rootDirectory": self.efs["rootDirectory"],
                                      "transitEncryption": "ENABLED"}
            if self.efs["accessPointId"]:
                volume["rootDirectory"] = "/"  # the access point sets the root
                volume["authorizationConfig"] = {
                    "accessPointId": self.efs["accessPointId"],
                    "iam": "ENABLED" if self.roles["taskRoleArn"] else "DISABLED"}
            params["volumes"] = [{"name": "work", "efsVolumeConfiguration": volume}]
            container["mountPoints"] = [{"sourceVolume": "work", "containerPath": mount,
                                         "readOnly": False}]
        if self.log_group:
            container["logConfiguration"] = {"logDriver": "awslogs", "options": {
                "awslogs-group": self.log_group, "awslogs-stream-prefix": safe_name(spec.job_name, 100),
                "awslogs-region": self.region or self.client.meta.region_name}}
        return params

    def _deregister(self, arns: set[str]) -> list[str]:
        """Deregister what this pool registered; running tasks keep running on an INACTIVE
        definition. Returns what could not be deregistered."""
        failed = []
        for arn in sorted(arns - self._deregistered):
            try:
                self._call(self.client.deregister_task_definition, "ecs deregister_task_definition",
                           taskDefinition=arn)
                self._deregistered.add(arn)
            except Exception as exc:  # whatever it is, the next one is still deregistered
                failed.append(f"task definition {arn}: {exc}")
            self._registered = {n: a for n, a in self._registered.items() if a != arn}
        return failed

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        try:
            definition = self._task_definition(spec)
            for chunk in chunks:
                answer = self._run_task(spec, chunk, definition)
                if not answer.get("tasks"):
                    reasons = sorted({" ".join(filter(None, (f.get("reason"), f.get("detail"))))
                                      for f in answer.get("failures", [])}) or ["no task started"]
                    quota = any("limit" in r.lower() for r in reasons)  # the account's, shared
                    raise SubmissionRefused(f"ecs run_task could not start a task: {'; '.join(reasons)}",
                                            None if quota else PLACEMENT_GIVE_UP_AFTER)
                arn = answer["tasks"][0]["taskArn"]
                self._started.add(spec.job_name)
                record: JobRecord = {"job_id": arn.rsplit("/", 1)[-1], "chunks": [chunk],
                                     "task_arn": arn}
                if spec.job_name in self._registered:
                    record["registered_definition"] = definition
                self._tokens.note(spec.job_name, [record])
                yield record
        except SubmissionRefused:
            raise
        except SchedulerError:
            if spec.job_name not in self._started and spec.job_name in self._registered:
                self._deregister({self._registered[spec.job_name]})  # the engine has no job to cancel
            raise

    def _run_task(self, spec: SubmitSpec, chunk: int, definition: str) -> dict[str, Any]:
        """run_task, repeated with the same clientToken when its answer was lost: the service
        starts a task for a token once. A throttle is the engine's to wait out."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                answer = self.client.run_task(**self.run_task_params(spec, definition, chunk))
            except Exception as exc:
                if error_code(exc) == "ConflictException":  # the token ran with other parameters
                    if arns := exc.response.get("resourceIds"):  # type: ignore[attr-defined]
                        return {"tasks": [{"taskArn": arns[0]}]}  # that chunk's task: ours
                    self._tokens.refused(spec.job_name, chunk)  # it started nothing: a new token
                    continue
                submission_failure_kind("ecs run_task", exc)
                if attempt == self.retries:  # the next try asks for the same task again
                    raise SubmissionRefused(f"ecs run_task did not answer: {type(exc).__name__}",
                                            PLACEMENT_GIVE_UP_AFTER) from exc
                self.pause(delay)
                delay = min(delay * 2, 20.0)
                continue
            if not answer.get("tasks"):
                self._tokens.refused(spec.job_name, chunk)
            return answer
        raise SubmissionRefused("ecs run_task: its client tokens conflict", PLACEMENT_GIVE_UP_AFTER)

    def run_task_params(self, spec: SubmitSpec, definition: str, chunk: int) -> dict[str, Any]:
        worker_args = ["--env", CHUNK_VARIABLE]
        command = with_setup(
            container_command(spec, self.container_python, self.path_mapping, worker_args),
            self.setup, worker_args, os.path.dirname(map_path(spec.script_path, self.path_mapping)),
            spec.mode)
        override = {"name": self.container_name, "command": command,
                    "environment": [{"name": CHUNK_VARIABLE, "value": str(chunk)}]}
        if self.gpus_per_task:
            override["resourceRequirements"] = [{"type": "GPU", "value": str(self.gpus_per_task)}]
        if len(json.dumps([override])) > OVERRIDES_LIMIT:
            raise SchedulerError(f"the container command is longer than ECS's {OVERRIDES_LIMIT} "
                                 f"bytes of overrides (a long path_mapping or paths?): {command}")
        params: dict[str, Any] = {
            "taskDefinition": definition, "count": 1,
            "clientToken": self._tokens.token(spec, chunk),
            "startedBy": safe_name(spec.job_name, 128), "overrides": {"containerOverrides": [override]},
            "tags": [{"key": k, "value": v} for k, v in aws_tags(self.tags, spec.job_name).items()],
            **self._where()}
        if self.capacity:
            params["capacityProviderStrategy"] = self.capacity
        else:
            params["launchType"] = self.launch_type
        if self.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": self.subnets, "securityGroups": self.security_groups,
                "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED"}}
        if self.task_definition is not None:  # a registered one has them already
            sizes = (("cpu", self.cpu), ("memory", self.memory))
            params["overrides"].update({k: str(v) for k, v in sizes if v})
        return params

    # -- poll and cancel ---------------------------------------------------------------
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        result: PollResult = {}
        ask: dict[str, tuple[str, int]] = {}
        self._tokens.note(spec.job_name, jobs)  # a killed driver's records count as attempts
        for job in jobs:
            key = (job["job_id"], job["chunks"][0])
            if job["job_id"] in self._final:
                result[key] = self._final[job["job_id"]]
            elif job.get("task_arn"):
                ask[job["task_arn"]] = key
        arns = list(ask)
        for start in range(0, len(arns), 100):
            answer = self._call(self.client.describe_tasks, "ecs describe_tasks",
                                tasks=arns[start:start + 100], **self._where())
            for task in answer.get("tasks", []):
                key = ask.get(task.get("taskArn", ""))
                if key is not None:
                    status = result[key] = classify_task(task, self.container_name)
                    if status.state in (TaskState.FINISHED, TaskState.FATAL):
                        self._final[key[0]] = status
        return result

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        """Stop every target, whatever fails on the way (one error must not leave the rest
        running); with ``chunks`` None, deregister the task definitions the map registered too,
        and forget its tokens. Raise what was left behind, naming it."""
        arns = [job["task_arn"] for job in jobs if job.get("task_arn")
                 and (chunks is None or job["chunks"][0] in chunks) and job["job_id"] not in self._final]
        left = end_each(lambda arn: self._call(
            self.client.stop_task, "ecs stop_task", task=arn,
            reason="poolparty_raster: cancelled by the driver", **self._where()), arns, "task")
        if chunks is None:
            left += self._deregister(self._definitions(spec.job_name, jobs))
            self._tokens.forget(spec.job_name)
        if left:
            raise SchedulerError(f"ecs: {len(left)} thing(s) of map {spec.job_name} were left "
                                 f"behind (tagged poolparty_raster:map={spec.job_name}): " + "; ".join(left))

    def _definitions(self, job_name: str | None, jobs: Sequence[JobRecord]) -> set[str]:
        """The task definitions a map registered: this driver's, and a killed driver's."""
        ours = {job["registered_definition"] for job in jobs if job.get("registered_definition")}
        return ours | ({self._registered[job_name]} if job_name in self._registered else set())

    def release(self, jobs: Sequence[JobRecord]) -> None:
        """The map ended: forget its tasks and tokens (a run of the same map later counts its
        attempts from its records again), deregister its task definitions (a killed driver's
        too); what cannot be deregistered is a warning, not a failed map."""
        for job in jobs:
            self._final.pop(job["job_id"], None)
        self._tokens.forget(jobs=jobs)
        if failed := self._deregister(self._definitions(None, jobs)):
            warnings.warn("poolparty_raster: left behind: " + "; ".join(failed), stacklevel=2)
