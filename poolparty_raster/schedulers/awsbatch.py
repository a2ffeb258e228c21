"""AWS Batch: ``submit_job`` with ``arrayProperties`` (one child per chunk), ``describe_jobs``,
``terminate_job``.

Facts this module is built on (the AWS Batch API reference, botocore's service model):
- an array job needs 2 <= size <= 10,000; its children are ``<jobId>:<index>`` and read their
  index from ``AWS_BATCH_JOB_ARRAY_INDEX``; a lone chunk is therefore a plain job;
- ``describe_jobs`` takes at most 100 ids, describes children by their ``<jobId>:<index>`` id
  and leaves unknown ids out; finished jobs stay visible for at least 24 hours;
- ``terminate_job`` cancels jobs not yet STARTING and kills running ones; on a parent it acts
  on every child;
- a job RUNNABLE for ever with a ``MISCONFIGURATION:`` status reason fits no compute
  environment: no resubmission fixes that.
Batch's own retries are switched off (``attempts: 1``): resubmission is this package's policy.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from poolparty_raster.errors import SchedulerError
from poolparty_raster.schedulers.base import (JobRecord, PollResult, Scheduler, SubmitSpec,
                                              TaskState, TaskStatus, contiguous_runs,
                                              split_by_span)
from poolparty_raster.schedulers.ecs import (aws_tags, call_with_retries, container_command,
                                             make_client)

ARRAY_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"
MAX_ARRAY_SIZE = 10_000
_STATES = {"SUBMITTED": TaskState.PENDING, "PENDING": TaskState.PENDING,
           "RUNNABLE": TaskState.PENDING, "STARTING": TaskState.PENDING,
           "RUNNING": TaskState.RUNNING, "SUCCEEDED": TaskState.FINISHED,
           "FAILED": TaskState.FINISHED}


def classify_job(job: dict[str, Any]) -> TaskStatus:
    """describe_jobs' job detail -> a status whose reason names the exit code and OOM kills."""
    status = job.get("status", "")
    if status not in _STATES:
        raise SchedulerError(f"batch describe_jobs: unknown status {status!r} of {job.get('jobId')}")
    reason = job.get("statusReason", "")
    if status == "RUNNABLE" and reason.startswith("MISCONFIGURATION"):
        return TaskStatus(TaskState.FATAL, reason)
    words = [status, reason]
    if _STATES[status] is TaskState.FINISHED:
        container = dict(job.get("container") or {})
        if job.get("attempts"):
            container.update({k: v for k, v in job["attempts"][-1].get("container", {}).items()
                              if v is not None})
        code = container.get("exitCode")
        if code is not None:
            words.append(f"exit code {code}")
        if container.get("reason"):
            words.append(container["reason"])
        if code == 137 or "OutOfMemory" in str(container.get("reason", "")):
            words.insert(0, "out of memory (container killed, exit 137):")
        if "spot" in reason.lower() or "Host EC2" in reason:
            words.insert(0, "instance reclaimed (spot interruption?):")
    return TaskStatus(_STATES[status], " ".join(w for w in words if w))


class AwsBatchScheduler(Scheduler):
    name = "awsbatch"
    filesystem_lag = 10.0  # EFS is close-to-open consistent; a result may show late

    def __init__(self, *, job_queue: str, job_definition: str,
                 container_overrides: dict[str, Any] | None = None, vcpus: float | None = None,
                 memory: int | None = None, tags: dict[str, str] | None = None,
                 region: str | None = None, container_python: str | None = None,
                 path_mapping: dict[str, str] | None = None, boto3_session: Any = None,
                 batch_client: Any = None):
        if not job_queue or not job_definition:
            raise ValueError("AwsBatchPool needs job_queue and job_definition")
        self.job_queue, self.job_definition = job_queue, job_definition
        self.overrides = dict(container_overrides or {})
        requirements = list(self.overrides.pop("resourceRequirements", []))
        # resourceRequirements, not the deprecated vcpus/memory fields (refused on Fargate)
        for kind, value in (("VCPU", vcpus), ("MEMORY", memory)):
            if value is not None:
                requirements = [r for r in requirements if r.get("type") != kind]
                requirements.append({"type": kind, "value": f"{value:g}" if isinstance(value, float) else str(value)})
        if requirements:
            self.overrides["resourceRequirements"] = requirements
        self.tags, self.region = dict(tags or {}), region
        self.container_python, self.path_mapping = container_python, dict(path_mapping or {})
        self._session, self._client = boto3_session, batch_client
        self._final: dict[str, TaskStatus] = {}  # finished children need no more describe calls

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("batch", None, self._session, self.region)
        return self._client

    def check_available(self) -> None:
        self.client  # noqa: B018 -- raises a clear error when boto3 is missing

    def default_parallelism(self) -> int:
        return 32

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> list[JobRecord]:
        records = []
        for group in split_by_span(sorted(chunks), MAX_ARRAY_SIZE):
            for first, last in contiguous_runs(group):
                records.append(self._submit(spec, list(range(first, last + 1))))
        return records

    def _submit(self, spec: SubmitSpec, chunks: list[int]) -> JobRecord:
        array = len(chunks) > 1
        worker_args = (["--env", ARRAY_VARIABLE, "--offset", str(chunks[0])] if array
                       else [str(chunks[0])])
        overrides = dict(self.overrides)
        overrides["command"] = container_command(spec, self.container_python, self.path_mapping,
                                                 worker_args)
        name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{spec.job_name}-{chunks[0]}")[:128]
        params: dict[str, Any] = {
            "jobName": name, "jobQueue": self.job_queue, "jobDefinition": self.job_definition,
            "containerOverrides": overrides, "retryStrategy": {"attempts": 1},
            "propagateTags": True, "tags": {t["key"]: t["value"] for t in aws_tags(self.tags, spec.job_name)}}
        if array:
            params["arrayProperties"] = {"size": len(chunks)}
        answer = call_with_retries(self.client.submit_job, "batch submit_job", **params)
        record: JobRecord = {"job_id": answer["jobId"], "chunks": chunks, "array": array}
        if array:
            record["offset"] = chunks[0]
        return record

    # -- poll and cancel ---------------------------------------------------------------
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        result: PollResult = {}
        ask: dict[str, tuple[str, int]] = {}
        for job in jobs:
            for chunk in job["chunks"]:
                child = f"{job['job_id']}:{chunk - job['offset']}" if job.get("array") else job["job_id"]
                key = (job["job_id"], chunk)
                if child in self._final:
                    result[key] = self._final[child]
                else:
                    ask[child] = key
        ids = list(ask)
        for start in range(0, len(ids), 100):
            answer = call_with_retries(self.client.describe_jobs, "batch describe_jobs",
                                       jobs=ids[start:start + 100])
            for detail in answer.get("jobs", []):
                key = ask.get(detail.get("jobId", ""))
                if key is None:
                    continue
                status = classify_job(detail)
                result[key] = status
                if status.state is TaskState.FINISHED:
                    self._final[detail["jobId"]] = status
        return result

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        targets = []
        for job in jobs:
            if chunks is None:
                if not all(f"{job['job_id']}:{c - job.get('offset', 0)}" in self._final
                           or job["job_id"] in self._final for c in job["chunks"]):
                    targets.append(job["job_id"])
            elif job.get("array"):
                targets += [f"{job['job_id']}:{c - job['offset']}" for c in chunks if c in job["chunks"]]
            elif job["chunks"][0] in chunks:
                targets.append(job["job_id"])
        for target in targets:
            call_with_retries(self.client.terminate_job, "batch terminate_job", jobId=target,
                              reason="poolparty_raster: cancelled by the driver")

    def release(self, jobs: Sequence[JobRecord]) -> None:
        for job in jobs:
            for chunk in job["chunks"]:
                self._final.pop(f"{job['job_id']}:{chunk - job.get('offset', 0)}", None)
            self._final.pop(job["job_id"], None)
