"""Dummy ECS and AWS Batch clients: boto3's method names and response shapes, local processes.

``DummyEcs`` and ``DummyBatch`` stand in for ``boto3.client("ecs")`` / ``("batch")``. Every
request is checked against botocore's service model (as the real client does before sending),
and against the rules the model does not state but the service enforces (run_task count <= 10,
describe <= 100 ids, container overrides <= 8 KB, 2 <= array size <= 10,000, names' characters,
Fargate's cpu/memory and awsvpc networking, a network configuration for awsvpc); a refusal
raises botocore's ``ClientError`` with the service's error code. A task's or job's container
command runs as a local subprocess (own session, so it can be killed as a group) with the
environment of the task definition and the overrides, at most ``slots`` at a time; a daemon
thread moves states on, so nothing depends on how often the client is called.

Faults (see ``Service``): ``inject_throttle(operation, times)``, ``inject_error(operation,
code, message, times, status)``, ``inject_lost_reply(operation, times, error)`` (the call
acts, its answer is lost: ReadTimeoutError or another of botocore's transport errors),
``inject_transport_error(operation, error, times)`` (the call fails before it is sent),
``inject_stop(chunk=None, times=1, after=0, **how)`` (the service stops a task or kills a job:
spot interruption, OOM kill, host lost, failed start), and for ECS
``inject_placement_failures(times, reason="RESOURCE:MEMORY")`` (run_task answers with a
``failures`` list and no task). run_task's ``clientToken`` is kept per cluster as ECS keeps it:
a repeat gets the first answer again, the token with other parameters a ConflictException
naming its tasks (``resourceIds``). Batch's ``list_jobs`` answers in pages of
``list_page_size`` (default 100) jobs with a ``nextToken``.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from botocore.exceptions import ParamValidationError

from ._aws_service import ACCOUNT, Service, worker_chunk

_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_STARTED_BY = re.compile(r"[A-Za-z0-9_/-]{1,128}")
_FARGATE = {256: (512, 2048), 512: (1024, 4096), 1024: (2048, 8192), 2048: (4096, 16384),
            4096: (8192, 30720), 8192: (16384, 61440), 16384: (32768, 122880)}


class DummyEcs(Service):
    """ECS: register/deregister_task_definition, run_task, describe_tasks, stop_task."""

    service = "ecs"

    def __init__(self, directory: str, slots: int = 8, region: str = "us-east-1") -> None:
        self.definitions: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self._tokens: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}  # -> (request, answer)
        self._placement_failures: list[str] = []
        super().__init__(directory, slots, region)
        self.register_task_definition(
            family="poolparty-dummy", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
            cpu="512", memory="1024", containerDefinitions=[
                {"name": "poolparty", "image": "python:3", "essential": True}])

    def inject_placement_failures(self, times: int = 1, reason: str = "RESOURCE:MEMORY") -> None:
        with self._lock:
            self._placement_failures += [reason] * times

    def _units(self) -> list[dict[str, Any]]:
        return list(self.tasks.values())

    def register_task_definition(self, **params: Any) -> dict[str, Any]:
        self._request("RegisterTaskDefinition", params)
        op = "RegisterTaskDefinition"
        if not _NAME.fullmatch(params["family"]):
            raise self._error("ClientException", "Family contains invalid characters.", op)
        containers = params["containerDefinitions"]
        if "FARGATE" in params.get("requiresCompatibilities", []):
            if params.get("networkMode") != "awsvpc":
                raise self._error("ClientException", "Fargate only supports network mode 'awsvpc'.", op)
            if not params.get("cpu") or not params.get("memory"):
                raise self._error("ClientException", "Fargate requires that 'cpu' be defined at the task level.", op)
            low, high = _FARGATE.get(int(params["cpu"]), (0, -1))
            if not low <= int(params["memory"]) <= high:
                raise self._error("ClientException", "No Fargate configuration exists for given values.", op)
        elif not params.get("memory") and not all(c.get("memory") or c.get("memoryReservation") for c in containers):
            raise self._error("ClientException", f"Invalid setting for container '{containers[0]['name']}'. "
                              f"At least one of 'memory' or 'memoryReservation' must be specified.", op)
        volumes = {v["name"] for v in params.get("volumes", [])}
        for container in containers:
            for mount in container.get("mountPoints", []):
                if mount.get("sourceVolume") not in volumes or not mount.get("containerPath", "").startswith("/"):
                    raise self._error("ClientException", f"Invalid mount point {mount}.", op)
        with self._lock:
            revision = 1 + sum(1 for d in self.definitions.values() if d["family"] == params["family"])
            arn = f"arn:aws:ecs:{self.meta.region_name}:{ACCOUNT}:task-definition/{params['family']}:{revision}"
            definition = {**params, "taskDefinitionArn": arn, "revision": revision, "status": "ACTIVE"}
            definition.setdefault("networkMode", "bridge")
            self.definitions[arn] = definition
            return {"taskDefinition": definition, "tags": params.get("tags", [])}

    def deregister_task_definition(self, **params: Any) -> dict[str, Any]:
        self._request("DeregisterTaskDefinition", params)
        with self._lock:
            definition = self._definition(params["taskDefinition"], "DeregisterTaskDefinition")
            definition["status"] = "INACTIVE"
            return {"taskDefinition": definition}

    def _definition(self, name: str, operation: str) -> dict[str, Any]:
        for arn, definition in self.definitions.items():
            if name in (arn, f"{definition['family']}:{definition['revision']}"):
                return definition
        latest = [d for d in self.definitions.values() if d["family"] == name and d["status"] == "ACTIVE"]
        if not latest:
            raise self._error("ClientException", "Unable to describe task definition.", operation)
        return max(latest, key=lambda d: d["revision"])

    def _check_run_task(self, params: dict[str, Any], definition: dict[str, Any]) -> None:
        op = "RunTask"
        if not 1 <= params.get("count", 1) <= 10:
            raise self._error("InvalidParameterException", "count must be between 1 and 10", op)
        if len(json.dumps(params.get("overrides", {}).get("containerOverrides", []))) > 8192:
            raise self._error("InvalidParameterException", "Container Overrides length must be at most 8192", op)
        if "startedBy" in params and not _STARTED_BY.fullmatch(params["startedBy"]):
            raise self._error("InvalidParameterException", "startedBy contains invalid characters.", op)
        if len(params.get("clientToken", "")) > 64:
            raise self._error("InvalidParameterException", "clientToken is longer than 64.", op)
        if definition["status"] != "ACTIVE":
            raise self._error("ClientException", "TaskDefinition is inactive", op)
        awsvpc = definition["networkMode"] == "awsvpc"
        network = params.get("networkConfiguration", {}).get("awsvpcConfiguration")
        if awsvpc and not (network and network.get("subnets")):
            raise self._error("InvalidParameterException", "Network Configuration must be provided "
                              "when networkMode 'awsvpc' is specified.", op)
        if network and not awsvpc:
            raise self._error("InvalidParameterException", "Network Configuration is not valid for "
                              "the given networkMode of this task definition.", op)
        if params.get("launchType", "EC2") not in definition.get("requiresCompatibilities", ["EC2"]):
            raise self._error("InvalidParameterException", "Task definition does not support "
                              f"launch_type {params.get('launchType', 'EC2')}.", op)

    def run_task(self, **params: Any) -> dict[str, Any]:
        self._request("RunTask", params)
        overrides = params.get("overrides", {})
        with self._lock:
            definition = self._definition(params["taskDefinition"], "RunTask")
            self._check_run_task(params, definition)
            token = (params.get("cluster", "default"), params.get("clientToken"))
            request = json.dumps({k: v for k, v in params.items() if k != "clientToken"}, sort_keys=True)
            if token[1] and token in self._tokens:  # idempotent: the same token starts nothing new
                first, answer = self._tokens[token]
                if request != first:
                    raise self._error("ConflictException", "The clientToken is already in use with a "
                                      "different RunTask request.", "RunTask",
                                      resourceIds=[t["taskArn"] for t in answer["tasks"]])
                return self._reply("RunTask", {"tasks": [self._view(self.tasks[t["taskArn"]])
                                                         for t in answer["tasks"]],
                                               "failures": answer["failures"]})
            containers = {c["name"]: c for c in definition["containerDefinitions"]}
            started, failures = [], []
            for _ in range(params.get("count", 1)):
                if self._placement_failures:
                    failures.append({"arn": f"arn:aws:ecs:{self.meta.region_name}:{ACCOUNT}:container-instance/x",
                                     "reason": self._placement_failures.pop(0)})
                    continue
                container = next(iter(containers.values()))
                argv = list(container.get("command", []))
                env = {e["name"]: e["value"] for e in container.get("environment", [])}
                for override in overrides.get("containerOverrides", []):
                    if override.get("name") not in containers:
                        raise self._error("InvalidParameterException",
                                          f"Override for container named {override.get('name')} "
                                          f"is not a container in the TaskDefinition.", "RunTask")
                    argv = list(override.get("command", argv))
                    env.update({e["name"]: e["value"] for e in override.get("environment", [])})
                task_id = uuid.uuid4().hex
                arn = f"arn:aws:ecs:{self.meta.region_name}:{ACCOUNT}:task/{params.get('cluster', 'default')}/{task_id}"
                self.tasks[arn] = {"name": task_id, "arn": arn, "argv": argv, "env": env,
                                   "phase": "queued", "params": params, "lastStatus": "PENDING",
                                   "container": container["name"], "definition": definition}
                started.append(arn)
            answer = {"tasks": [self._view(self.tasks[a]) for a in started], "failures": failures}
            if token[1]:
                self._tokens[token] = (request, answer)
            self._note_active()
            return self._reply("RunTask", answer)

    def _ended(self, unit: dict[str, Any], code: int | None, how: dict[str, Any] | None) -> None:
        how = how or {}
        unit.update(phase="done", lastStatus="STOPPED", exitCode=code,
                    stopCode=how.get("stop_code", "EssentialContainerExited"),
                    stoppedReason=how.get("stopped_reason", "Essential container in task exited"),
                    containerReason=how.get("reason"), stoppedAt=time.time())

    def _view(self, task: dict[str, Any]) -> dict[str, Any]:
        status = {"queued": "PENDING", "running": "RUNNING"}.get(task["phase"], task["lastStatus"])
        container = {"name": task["container"], "lastStatus": status, "taskArn": task["arn"]}
        view = {"taskArn": task["arn"], "lastStatus": status, "desiredStatus":
                "STOPPED" if status == "STOPPED" else "RUNNING",
                "taskDefinitionArn": task["definition"]["taskDefinitionArn"],
                "startedBy": task["params"].get("startedBy", ""), "containers": [container],
                "tags": task["params"].get("tags", [])}
        if status == "STOPPED":
            view.update(stopCode=task["stopCode"], stoppedReason=task["stoppedReason"])
            if task["exitCode"] is not None:
                container["exitCode"] = task["exitCode"]
            if task.get("containerReason"):
                container["reason"] = task["containerReason"]
        return view

    def describe_tasks(self, **params: Any) -> dict[str, Any]:
        self._request("DescribeTasks", params)
        if len(params["tasks"]) > 100:
            raise self._error("InvalidParameterException", "Tasks cannot be longer than 100.", "DescribeTasks")
        with self._lock:
            self._tick()
            found = [self._view(self.tasks[a]) for a in params["tasks"] if a in self.tasks]
            missing = [{"arn": a, "reason": "MISSING"} for a in params["tasks"] if a not in self.tasks]
            return {"tasks": found, "failures": missing}

    def stop_task(self, **params: Any) -> dict[str, Any]:
        self._request("StopTask", params)
        with self._lock:
            task = self.tasks.get(params["task"])
            if task is None:
                raise self._error("InvalidParameterException", "The referenced task was not found.", "StopTask")
            if task["phase"] != "done":
                self._kill(task)
                self._ended(task, 137 if task["phase"] == "running" else None, {
                    "stop_code": "UserInitiated", "stopped_reason": params.get("reason", "")})
            return self._reply("StopTask", {"task": self._view(task)})


class DummyBatch(Service):
    """AWS Batch: submit_job (plain and array), describe_jobs, list_jobs, terminate_job."""

    service = "batch"
    throttle_code = "TooManyRequestsException"

    def __init__(self, directory: str, slots: int = 8, region: str = "us-east-1") -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.list_page_size = 100  # list_jobs' default maxResults
        super().__init__(directory, slots, region)

    def _units(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs.values() if not j.get("size")]

    def submit_job(self, **params: Any) -> dict[str, Any]:
        self._request("SubmitJob", params)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", params["jobName"]):
            raise self._error("ClientException", "Job name is invalid.", "SubmitJob")
        size = params.get("arrayProperties", {}).get("size")
        if size is not None and not 2 <= size <= 10_000:
            raise self._error("ClientException", "Array job size must be between 2 and 10,000", "SubmitJob")
        overrides = params.get("containerOverrides", {})
        env = {e["name"]: e["value"] for e in overrides.get("environment", [])}
        with self._lock:
            job_id = str(uuid.uuid4())
            base = {"jobId": job_id, "jobName": params["jobName"], "params": params,
                    "status": "RUNNABLE", "createdAt": int(time.time() * 1000)}
            if size:
                self.jobs[job_id] = {**base, "size": size}
                for i in range(size):
                    child = f"{job_id}:{i}"
                    self.jobs[child] = {**base, "jobId": child, "name": child.replace(":", "_"),
                                        "argv": overrides.get("command", []), "phase": "queued",
                                        "env": {**env, "AWS_BATCH_JOB_ARRAY_INDEX": str(i),
                                                "AWS_BATCH_JOB_ID": child}}
            else:
                self.jobs[job_id] = {**base, "name": job_id, "argv": overrides.get("command", []),
                                     "phase": "queued", "env": {**env, "AWS_BATCH_JOB_ID": job_id}}
            self._note_active()
            return self._reply("SubmitJob", {
                "jobArn": f"arn:aws:batch:{self.meta.region_name}:{ACCOUNT}:job/{job_id}",
                "jobName": params["jobName"], "jobId": job_id})

    def _ended(self, unit: dict[str, Any], code: int | None, how: dict[str, Any] | None) -> None:
        how = how or {}
        unit.update(phase="done", status="SUCCEEDED" if code == 0 else "FAILED", exitCode=code,
                    statusReason=how.get("status_reason", "Essential container in task exited"),
                    containerReason=how.get("reason"))

    def _view(self, job: dict[str, Any]) -> dict[str, Any]:
        params = job["params"]
        view = {"jobId": job["jobId"], "jobName": job["jobName"], "jobQueue": params["jobQueue"],
                "jobDefinition": params["jobDefinition"], "createdAt": job["createdAt"],
                "dependsOn": [], "tags": params.get("tags", {})}
        if job.get("size"):
            children = [self.jobs[f"{job['jobId']}:{i}"] for i in range(job["size"])]
            states = [self._view(c)["status"] for c in children]
            summary = {s: states.count(s) for s in set(states)}
            status = ("PENDING" if any(s not in ("SUCCEEDED", "FAILED") for s in states)
                      else "FAILED" if "FAILED" in states else "SUCCEEDED")
            view.update(status=status, arrayProperties={"size": job["size"], "statusSummary": summary})
            return view
        status = {"queued": "RUNNABLE", "running": "RUNNING"}.get(job["phase"], job.get("status"))
        view["status"] = status
        if ":" in job["jobId"]:
            view["arrayProperties"] = {"index": int(job["jobId"].rsplit(":", 1)[1])}
        if job["phase"] == "done":
            view["statusReason"] = job["statusReason"]
            container = {"exitCode": job["exitCode"]} if job["exitCode"] is not None else {}
            if job.get("containerReason"):
                container["reason"] = job["containerReason"]
            view["container"] = container
            view["attempts"] = [{"container": container}] if container else []
        return view

    def describe_jobs(self, **params: Any) -> dict[str, Any]:
        self._request("DescribeJobs", params)
        if len(params["jobs"]) > 100:
            raise self._error("ClientException", "jobs must contain at most 100 items", "DescribeJobs")
        with self._lock:
            self._tick()
            return {"jobs": [self._view(self.jobs[j]) for j in params["jobs"] if j in self.jobs]}

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        """By queue (and jobStatus, default RUNNING), array parent, or a JOB_NAME filter
        (case-insensitive, ``name*`` for a prefix; jobStatus is then ignored), newest first,
        in pages of maxResults (default ``list_page_size``) with a ``nextToken``."""
        self._request("ListJobs", params)
        with self._lock:
            parent = params.get("arrayJobId")
            jobs = [j for k, j in self.jobs.items()
                    if (parent and k.startswith(parent + ":")) or (not parent and ":" not in k
                                                                   and j["params"]["jobQueue"] == params.get("jobQueue"))]
            views = [self._view(j) for j in sorted(jobs, key=lambda j: -j["createdAt"])]
            filters = params.get("filters", [])
            for wanted in [f for f in filters if f["name"] == "JOB_NAME"]:
                value = wanted["values"][0].lower()
                views = [v for v in views if (v["jobName"].lower().startswith(value[:-1])
                                              if value.endswith("*") else v["jobName"].lower() == value)]
            status = None if filters else params.get("jobStatus", "RUNNING")
            listed = [{"jobId": v["jobId"], "jobName": v["jobName"], "status": v["status"],
                       "createdAt": v["createdAt"]} for v in views if status is None or v["status"] == status]
            start, size = int(params.get("nextToken") or 0), params.get("maxResults", self.list_page_size)
            answer: dict[str, Any] = {"jobSummaryList": listed[start:start + size]}
            if start + size < len(listed):
                answer["nextToken"] = str(start + size)
            return answer

    def terminate_job(self, **params: Any) -> dict[str, Any]:
        self._request("TerminateJob", params)
        with self._lock:
            job = self.jobs.get(params["jobId"])
            if job is None:
                raise self._error("ClientException", f"Job {params['jobId']} not found", "TerminateJob")
            targets = ([self.jobs[f"{job['jobId']}:{i}"] for i in range(job["size"])]
                       if job.get("size") else [job])
            for unit in targets:
                if unit["phase"] != "done":
                    running = unit["phase"] == "running"
                    self._kill(unit)
                    self._ended(unit, 137 if running else None, {"status_reason": params["reason"]})
            return self._reply("TerminateJob", {})


def pool_options(kind: str) -> dict[str, Any]:
    """The options that point a pool at the dummy the ``dummy_ecs``/``dummy_batch`` fixture
    made active (the shared contract suite builds pools with them)."""
    if kind == "ecs":
        return {"ecs_client": ACTIVE["ecs"], "cluster": "dummy", "task_definition": "poolparty-dummy",
                "subnets": ["subnet-dummy"], "security_groups": ["sg-dummy"]}
    return {"batch_client": ACTIVE["batch"], "job_queue": "dummy-queue", "job_definition": "poolparty-dummy:1"}


ACTIVE: dict[str, Any] = {}
__all__ = ["DummyBatch", "DummyEcs", "ParamValidationError", "pool_options", "worker_chunk"]
