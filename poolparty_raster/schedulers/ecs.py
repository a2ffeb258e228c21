"""Amazon ECS: one ``run_task`` per chunk (Fargate or EC2), ``describe_tasks``, ``stop_task``.

Facts this module is built on (the ECS API reference, botocore's service model):
- ``run_task`` starts at most 10 tasks per call, all with the *same* overrides; our chunk index
  travels in an environment override, so each call starts one task (count=1). A call can
  succeed with a ``failures`` list (RESOURCE:CPU, AGENT, capacity...): retryable, with backoff;
- ``describe_tasks`` takes at most 100 ids; unknown ids come back as ``MISSING`` failures;
  stopped tasks stay visible about an hour; ``stop_task`` of a stopped task is harmless;
- container overrides are limited to 8 KB: they carry only the command (work_dir path) and the
  chunk index, never the payload, which stays in the work_dir on the shared (EFS) filesystem.
boto3 is imported only when a client is first needed (``pip install poolparty_raster[aws]``).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from poolparty_raster.errors import SchedulerError, SchedulerUnavailableError
from poolparty_raster.schedulers.base import (JobRecord, PollResult, Scheduler, SubmitSpec,
                                              TaskState, TaskStatus)

CHUNK_VARIABLE = "POOLPARTY_RASTER_CHUNK"
RETRYABLE_ERRORS = ("ThrottlingException", "TooManyRequestsException", "ServerException",
                    "ServiceUnavailableException", "RequestLimitExceeded", "Throttling",
                    "InternalError", "LimitExceededException")
_PENDING = {"PROVISIONING", "PENDING", "ACTIVATING"}
_RUNNING = {"RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"}
# Runs a mapped script: its text names the driver's paths, which the mapping rewrites.
_BOOTSTRAP = ("import json,sys\nm=json.loads(sys.argv[1]);p=sys.argv[2];s=open(p).read()\n"
              "for a,b in m:s=s.replace(a,b)\nsys.argv=sys.argv[2:]\n"
              "exec(compile(s,p,'exec'),{'__name__':'__main__','__file__':p})")


def make_client(service: str, client: Any, session: Any, region: str | None) -> Any:
    """The injected client, else one from the injected session, else from a new boto3 session."""
    if client is not None:
        return client
    if session is None:
        try:
            import boto3  # optional: only the AWS pools need it
        except ImportError as exc:
            raise SchedulerUnavailableError(
                f"the AWS pools need boto3: pip install 'poolparty_raster[aws]' ({exc})") from exc
        session = boto3.Session(region_name=region)
    return session.client(service, region_name=region) if region else session.client(service)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (duck-typed: botocore may be absent)."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def is_retryable(exc: BaseException) -> bool:
    code = error_code(exc) or ""
    return code in RETRYABLE_ERRORS or "Throttl" in code or type(exc).__name__ in (
        "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")


def call_with_retries(func: Any, what: str, retries: int = 5, backoff: float = 0.5,
                      **params: Any) -> Any:
    """One API call; throttling and 5xx errors are retried with exponential backoff."""
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return func(**params)
        except Exception as exc:
            if error_code(exc) is None and not is_retryable(exc):
                raise
            if not is_retryable(exc) or attempt == retries:
                raise SchedulerError(f"{what} failed: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 20.0)
    raise AssertionError("unreachable")


def map_path(path: str, mapping: dict[str, str] | None) -> str:
    """A driver path as the container sees it (the longest matching prefix wins)."""
    for driver, container in sorted((mapping or {}).items(), key=lambda kv: -len(kv[0])):
        driver = driver.rstrip("/")
        if path == driver or path.startswith(driver + "/"):
            return container.rstrip("/") + path[len(driver):]
    return path


def container_command(spec: SubmitSpec, python: str | None, mapping: dict[str, str] | None,
                      worker_args: Sequence[str]) -> list[str]:
    """``[python, script.py, *worker_args]``; with a path mapping, a bootstrap that rewrites the
    driver's paths in script.py (work_dir, sys.path, cwd) before running it."""
    python = python or spec.python_path
    if not mapping:
        return [python, spec.script_path, *worker_args]
    pairs = [(d.rstrip("/") + "/", c.rstrip("/") + "/") for d, c in mapping.items()]
    pairs += [(repr(d.rstrip("/")), repr(c.rstrip("/"))) for d, c in mapping.items()]
    return [python, "-c", _BOOTSTRAP, json.dumps(pairs), map_path(spec.script_path, mapping),
            *worker_args]


def aws_tags(tags: dict[str, str], job_name: str, key: str = "key", value: str = "value"
             ) -> list[dict[str, str]]:
    merged = {"poolparty_raster:map": job_name, **tags}
    return [{key: k, value: v} for k, v in merged.items()]


def describe_stopped(task: dict[str, Any]) -> str:
    """Why a task stopped, in words, naming out-of-memory kills and spot interruptions."""
    container = (task.get("containers") or [{}])[0]
    code, why = container.get("exitCode"), container.get("reason", "")
    words = [task.get("stopCode", ""), task.get("stoppedReason", "")]
    if code is not None:
        words.append(f"exit code {code}")
    if why:
        words.append(why)
    if "OutOfMemory" in why or (code == 137 and task.get("stopCode") == "EssentialContainerExited"):
        words.insert(0, "out of memory (container killed, exit 137):")
    if task.get("stopCode") in ("SpotInterruption", "TerminationNotice"):
        words.insert(0, "spot interruption:")
    return " ".join(w for w in words if w)


class EcsScheduler(Scheduler):
    name = "ecs"
    filesystem_lag = 10.0  # EFS is close-to-open consistent; a result may show late

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
                 boto3_session: Any = None, ecs_client: Any = None, retry_delay: float = 2.0):
        if task_definition is None and container_image is None:
            raise ValueError("EcsPool needs task_definition, or container_image to register one")
        if launch_type not in ("FARGATE", "EC2", "EXTERNAL"):
            raise ValueError(f"launch_type must be FARGATE or EC2, not {launch_type!r}")
        self.cluster, self.task_definition = cluster, task_definition
        self.container_image, self.container_name = container_image, container_name
        self.roles = {"executionRoleArn": execution_role_arn, "taskRoleArn": task_role_arn}
        self.launch_type, self.capacity = launch_type, capacity_provider_strategy
        self.subnets, self.security_groups = list(subnets), list(security_groups)
        self.assign_public_ip = assign_public_ip
        self.cpu, self.memory = (str(cpu) if cpu else None), (str(memory) if memory else None)
        self.tags, self.region = dict(tags or {}), region
        self.container_python, self.path_mapping = container_python, dict(path_mapping or {})
        self.efs = {"fileSystemId": efs_file_system_id, "rootDirectory": efs_root_directory,
                    "containerPath": efs_container_path, "accessPointId": efs_access_point_id}
        self.log_group, self.retry_delay = log_group, retry_delay
        self._session, self._client = boto3_session, ecs_client
        self._registered: dict[str, str] = {}  # job_name -> task definition ARN we registered
        self._arns: dict[str, str] = {}  # our job id -> task ARN
        self._backlog: list[tuple[SubmitSpec, JobRecord]] = []  # throttled or refused for now
        self._backlog_status: dict[str, TaskStatus] = {}
        self._stopped: dict[str, TaskStatus] = {}  # final states need no more describe calls
        self._next_try, self._delay = 0.0, retry_delay

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("ecs", None, self._session, self.region)
        return self._client

    def check_available(self) -> None:
        self.client  # noqa: B018 -- raises a clear error when boto3 is missing

    def default_parallelism(self) -> int:
        return 32

    # -- task definition -----------------------------------------------------------------
    def _task_definition(self, spec: SubmitSpec) -> str:
        if self.task_definition is not None:
            return self.task_definition
        if spec.job_name not in self._registered:
            container: dict[str, Any] = {"name": self.container_name, "image": self.container_image,
                                         "essential": True}
            params: dict[str, Any] = {"family": f"poolparty-{spec.job_name}",
                                      "containerDefinitions": [container],
                                      "requiresCompatibilities": [self.launch_type],
                                      "networkMode": "awsvpc",
                                      "tags": aws_tags(self.tags, spec.job_name)}
            params.update({k: v for k, v in self.roles.items() if v})
            params.update({k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v})
            if self.efs["fileSystemId"]:
                volume = {"fileSystemId": self.efs["fileSystemId"],
                          "rootDirectory": self.efs["rootDirectory"], "transitEncryption": "ENABLED"}
                if self.efs["accessPointId"]:
                    volume["rootDirectory"] = "/"  # the access point sets the root
                    volume["authorizationConfig"] = {"accessPointId": self.efs["accessPointId"],
                                                     "iam": "ENABLED"}
                params["volumes"] = [{"name": "work", "efsVolumeConfiguration": volume}]
                container["mountPoints"] = [{"sourceVolume": "work", "readOnly": False,
                                             "containerPath": self.efs["containerPath"]
                                             or map_path(spec.work_dir, self.path_mapping)}]
            if self.log_group:
                container["logConfiguration"] = {"logDriver": "awslogs", "options": {
                    "awslogs-group": self.log_group, "awslogs-stream-prefix": spec.job_name,
                    "awslogs-region": self.region or self.client.meta.region_name}}
            answer = call_with_retries(self.client.register_task_definition,
                                       "ecs register_task_definition", **params)
            self._registered[spec.job_name] = answer["taskDefinition"]["taskDefinitionArn"]
        return self._registered[spec.job_name]

    def _deregister(self, job_name: str | None = None) -> None:
        for name in [job_name] if job_name else list(self._registered):
            arn = self._registered.pop(name, None)
            if arn:  # running tasks keep running on an INACTIVE definition
                call_with_retries(self.client.deregister_task_definition,
                                  "ecs deregister_task_definition", taskDefinition=arn)

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> list[JobRecord]:
        records = []
        for chunk in chunks:
            job_id = f"{spec.job_name}-c{chunk}-{uuid.uuid4().hex[:12]}"  # also the clientToken
            record: JobRecord = {"job_id": job_id, "chunks": [chunk]}
            self._backlog.append((spec, record))
            self._backlog_status[job_id] = TaskStatus(TaskState.PENDING, "not started yet")
            records.append(record)
        self._start_backlog(spec)
        return records

    def _running_count(self) -> int:
        return sum(1 for job_id in self._arns if job_id not in self._stopped)

    def _start_backlog(self, spec: SubmitSpec) -> None:
        """Start what the throttle allows; capacity refusals wait (backoff), they do not fail."""
        if time.monotonic() < self._next_try:
            return
        while self._backlog:
            if spec.throttle and self._running_count() >= spec.throttle:
                return
            task_spec, record = self._backlog[0]
            try:
                answer = self.client.run_task(**self._run_task_params(task_spec, record))
            except Exception as exc:
                if error_code(exc) is None and not is_retryable(exc):
                    raise
                if not is_retryable(exc):  # a bad request: no retry will help
                    status = TaskStatus(TaskState.FATAL, f"ecs run_task refused: {exc}")
                    self._backlog_status[record["job_id"]] = status
                    self._backlog.pop(0)
                    self._stopped[record["job_id"]] = status
                    return
                return self._refused(record, f"ecs run_task throttled: {exc}")
            if not answer.get("tasks"):
                failures = "; ".join(f"{f.get('reason')} {f.get('detail', '')}".strip()
                                     for f in answer.get("failures", [])) or "no task started"
                return self._refused(record, f"ecs run_task could not place the task: {failures}")
            self._backlog.pop(0)
            self._backlog_status.pop(record["job_id"], None)
            record["task_arn"] = self._arns[record["job_id"]] = answer["tasks"][0]["taskArn"]
            self._delay = self.retry_delay

    def _refused(self, record: JobRecord, reason: str) -> None:
        self._backlog_status[record["job_id"]] = TaskStatus(TaskState.PENDING, reason)
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, 60.0)

    def _run_task_params(self, spec: SubmitSpec, record: JobRecord) -> dict[str, Any]:
        command = container_command(spec, self.container_python, self.path_mapping,
                                    ["--env", CHUNK_VARIABLE])
        override: dict[str, Any] = {"name": self.container_name, "command": command,
                                    "environment": [{"name": CHUNK_VARIABLE,
                                                     "value": str(record["chunks"][0])}]}
        params: dict[str, Any] = {
            "taskDefinition": self._task_definition(spec), "count": 1,
            "startedBy": record["job_id"][:128], "clientToken": record["job_id"][-64:],
            "overrides": {"containerOverrides": [override]},
            "tags": aws_tags(self.tags, spec.job_name)}
        if self.cluster:
            params["cluster"] = self.cluster
        if self.capacity:
            params["capacityProviderStrategy"] = list(self.capacity)
        else:
            params["launchType"] = self.launch_type
        if self.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": self.subnets, "securityGroups": self.security_groups,
                "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED"}}
        if self.task_definition is not None:  # a registered one already has cpu and memory
            params["overrides"].update({k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v})
        return params

    # -- poll and cancel ---------------------------------------------------------------
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        for job in jobs:  # a resumed driver knows the ARNs from the stored job records
            if job.get("task_arn") and job["job_id"] not in self._arns:
                self._arns[job["job_id"]] = job["task_arn"]
        self._start_backlog(spec)
        result: PollResult = {}
        ask = {}
        for job in jobs:
            job_id = job["job_id"]
            key = (job_id, job["chunks"][0])
            if job_id in self._stopped:
                result[key] = self._stopped[job_id]
            elif job_id in self._backlog_status:
                result[key] = self._backlog_status[job_id]
            elif job_id in self._arns:
                ask[self._arns[job_id]] = key
        arns = list(ask)
        for start in range(0, len(arns), 100):
            params: dict[str, Any] = {"tasks": arns[start:start + 100]}
            if self.cluster:
                params["cluster"] = self.cluster
            answer = call_with_retries(self.client.describe_tasks, "ecs describe_tasks", **params)
            for task in answer.get("tasks", []):
                key = ask.get(task["taskArn"])
                if key is None:
                    continue
                last = task.get("lastStatus", "")
                if last == "STOPPED":
                    result[key] = self._stopped[key[0]] = TaskStatus(
                        TaskState.FINISHED, describe_stopped(task))
                elif last in _PENDING:
                    result[key] = TaskStatus(TaskState.PENDING, last)
                elif last in _RUNNING:
                    result[key] = TaskStatus(TaskState.RUNNING, last)
                else:
                    raise SchedulerError(f"ecs describe_tasks: unknown lastStatus {last!r} "
                                         f"of {task['taskArn']}")
        return result

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        targets = {job["job_id"] for job in jobs if chunks is None or job["chunks"][0] in chunks}
        self._backlog = [(s, r) for s, r in self._backlog if r["job_id"] not in targets]
        for job_id in targets:
            self._backlog_status.pop(job_id, None)
            arn = self._arns.get(job_id) or next(
                (j.get("task_arn") for j in jobs if j["job_id"] == job_id), None)
            if arn and job_id not in self._stopped:
                params = {"task": arn, "reason": "poolparty_raster: cancelled by the driver"}
                if self.cluster:
                    params["cluster"] = self.cluster
                call_with_retries(self.client.stop_task, "ecs stop_task", **params)
        if chunks is None:
            self._deregister(spec.job_name)

    def release(self, jobs: Sequence[JobRecord]) -> None:
        for job in jobs:
            self._arns.pop(job["job_id"], None)
            self._stopped.pop(job["job_id"], None)
            self._backlog_status.pop(job["job_id"], None)
        names = {job["job_id"].rsplit("-", 2)[0] for job in jobs}
        for name in names & set(self._registered):
            self._deregister(name)
