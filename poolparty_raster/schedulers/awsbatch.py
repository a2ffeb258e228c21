"""AWS Batch: ``submit_job`` with ``arrayProperties`` (one child per chunk), ``describe_jobs``,
``terminate_job``.

Facts this module is built on (the AWS Batch API reference, botocore's service model):
- an array job needs 2 <= size <= 10,000; its children are ``<jobId>:<index>`` and read their
  index from ``AWS_BATCH_JOB_ARRAY_INDEX``; a lone chunk is therefore a plain job;
- ``submit_job`` has no idempotency token: a request whose answer was lost may have created
  the job. Every call has a name of its own, and ``list_jobs(filters=JOB_NAME)`` (paginated,
  and lagging by seconds) is asked whether it got in: before anything of the map is submitted
  again, in polls, cancels and at the map's end (botocore's own retries, which repeat such a
  request blindly, are off for the client this module makes);
- ``describe_jobs`` takes at most 100 ids, describes children by their ``<jobId>:<index>`` id
  and leaves unknown ids out (children of a just-submitted array may not be listed yet);
  finished jobs stay visible for at least 24 hours;
- ``terminate_job`` cancels jobs not yet STARTING and kills running ones; on a parent it acts
  on every child;
- a job RUNNABLE for ever with a ``MISCONFIGURATION:`` status reason fits no compute
  environment, and one that failed to pull its image or mount its volumes fails every
  resubmission the same way: no resubmission fixes either.
Batch's own retries are switched off (``attempts: 1``): resubmission is this package's policy;
so is the throttle (Batch has none per array: the engine submits at most that many chunks).
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from poolparty_raster.errors import SchedulerError, SchedulerOutputError, SubmissionRefused
from poolparty_raster.schedulers.awscommon import (AwsRequestError, AwsScheduler, aws_tags,
                                                   check_tags, checked_mapping, container_command,
                                                   describe_error, end_each, fatal_start,
                                                   make_client, safe_name, spot_or_host_loss,
                                                   submission_failure_kind)
from poolparty_raster.schedulers.base import (JobRecord, PollResult, SubmitSpec, TaskState,
                                              TaskStatus, contiguous_runs, map_path,
                                              split_by_span)
from poolparty_raster.schedulers.jobcommand import checked_setup, scale_memory, with_setup

ARRAY_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"
MAX_ARRAY_SIZE = 10_000
CANCEL_REASON = "poolparty_raster: cancelled by the driver"
DUPLICATE_REASON = "poolparty_raster: duplicate submission"
# list_jobs shows a new job within seconds: a lost submission not listed after this long never
# got in, and is no longer asked about.
LISTING_LAG = 600.0
# Batch not answering submissions: waited out this long while none of the map's jobs is queued.
SUBMIT_GIVE_UP_AFTER = 600.0
_STATES = {"SUBMITTED": TaskState.PENDING, "PENDING": TaskState.PENDING,
           "RUNNABLE": TaskState.PENDING, "STARTING": TaskState.PENDING,
           "RUNNING": TaskState.RUNNING, "SUCCEEDED": TaskState.FINISHED,
           "FAILED": TaskState.FINISHED}


def classify_job(job: dict[str, Any]) -> TaskStatus:
    """describe_jobs' job detail -> a status whose reason names the exit code, OOM kills and
    lost instances; an unknown status is quoted, never guessed."""
    status = job.get("status", "")
    if status not in _STATES:
        raise SchedulerOutputError(f"batch describe_jobs: unknown status {status!r} of {job.get('jobId')}")
    reason = job.get("statusReason", "")
    if status == "RUNNABLE" and reason.startswith("MISCONFIGURATION"):
        return TaskStatus(TaskState.FATAL, reason)
    words = [status, reason]
    if _STATES[status] is TaskState.FINISHED:
        container = dict(job.get("container") or {})
        if job.get("attempts"):
            container.update({k: v for k, v in job["attempts"][-1].get("container", {}).items()
                              if v is not None})
        code, why = container.get("exitCode"), str(container.get("reason", ""))
        words += [f"exit code {code}" if code is not None else "", why]
        if status == "FAILED" and fatal_start(why, reason):
            return TaskStatus(TaskState.FATAL, " ".join(w for w in words if w))
        if "OutOfMemory" in why and reason != CANCEL_REASON:  # 137 alone is any SIGKILL
            words.insert(0, f"out of memory (container killed{', exit 137' if code == 137 else ''}):")
            return TaskStatus(_STATES[status], " ".join(w for w in words if w), exceeded="mem")
        if loss := spot_or_host_loss(reason):
            words.insert(0, loss)
    # SUCCEEDED: the worker exited 0, after writing its result (see ecsstatus.classify_task).
    return TaskStatus(_STATES[status], " ".join(w for w in words if w), succeeded=status == "SUCCEEDED")


def child_id(job: JobRecord, chunk: int) -> str:
    return f"{job['job_id']}:{chunk - job['offset']}" if job.get("array") else job["job_id"]


def job_record(job_id: str, chunks: list[int], name: str) -> JobRecord:
    record: JobRecord = {"job_id": job_id, "chunks": chunks, "array": len(chunks) > 1, "job_name": name}
    if record["array"]:
        record["offset"] = chunks[0]
    return record


def map_of(job: JobRecord) -> str:
    """The map a record belongs to: its job name is ``<map>-<first chunk>-<random>``."""
    return str(job.get("job_name", "")).rsplit("-", 2)[0]


@dataclass
class Unsure:
    """A submit_job whose answer was lost (a read timeout, a 5xx, a dropped connection)."""

    chunks: list[int]
    since: float              # time.monotonic() of the call
    superseded: bool = False  # its chunks went to another job since: if it got in, a duplicate
    adopted: str | None = None  # the job that got in, taken as its chunks' (never terminated)


class AwsBatchScheduler(AwsScheduler):
    name = "awsbatch"

    def __init__(
            self, *,
            job_queue: Annotated[str, "the Batch job queue"],
            job_definition: Annotated[str, "the job definition (name:revision)"],
            container_overrides: Annotated[dict[str, Any] | None,
                                           "SubmitJob's containerOverrides, merged"] = None,
            vcpus: Annotated[float | None, "vCPUs per job (a resourceRequirements override)"] = None,
            memory: Annotated[int | None, "memory per job, MiB (an override)"] = None,
            gpus_per_task: Annotated[int | None, "GPUs per job (a resourceRequirements "
                                                  "override)"] = None,
            setup: Annotated[Sequence[str], "shell lines run in the container before each "
                                            "job's Python starts, in bash"] = (),
            tags: Annotated[dict[str, str] | None, "tags of the jobs"] = None,
            region: Annotated[str | None, "AWS region (default: boto3's)"] = None,
            container_python: Annotated[str | None, "the interpreter in the container "
                                                    "(default: python_path)"] = None,
            path_mapping: Annotated[dict[str, str] | None, "{driver prefix: container prefix} "
                                                           "where the work_dir is elsewhere"] = None,
            boto3_session: Annotated[Any, "a boto3.Session to make the client from"] = None,
            batch_client: Annotated[Any, "a ready boto3 Batch client (tests, custom endpoints)"] = None,
            retry_backoff: Annotated[float, "seconds before the first retry of a throttled "
                                            "call (doubling)"] = 0.5):
        if not job_queue or not job_definition:
            raise ValueError("AwsBatchPool needs job_queue and job_definition")
        for name, value in (("vcpus", vcpus), ("memory", memory)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.job_queue, self.job_definition = job_queue, job_definition
        self.overrides = dict(container_overrides or {})
        if "command" in self.overrides:
            raise ValueError("container_overrides may not set command: it runs the worker")
        requirements = list(self.overrides.pop("resourceRequirements", []))
        # resourceRequirements, not the deprecated vcpus/memory fields (refused on Fargate)
        for kind, value in (("VCPU", vcpus), ("MEMORY", memory), ("GPU", gpus_per_task)):
            if value is not None:
                requirements = [r for r in requirements if r.get("type") != kind]
                text = f"{value:g}" if isinstance(value, float) else str(value)
                requirements.append({"type": kind, "value": text})
        if requirements:
            self.overrides["resourceRequirements"] = requirements
        check_tags(dict(tags or {}))
        self.requests = {"mem": None if memory is None else str(memory)}
        self.request_options = {"mem": "memory"}
        self.setup = checked_setup(setup)
        self.tags, self.region = dict(tags or {}), region
        self.container_python, self.path_mapping = container_python, checked_mapping(path_mapping)
        self.backoff = retry_backoff
        self._session, self._client = boto3_session, batch_client
        self._submit_client = batch_client
        self._final: dict[str, TaskStatus] = {}  # finished children need no more describe calls
        # map -> job name -> lost submission. Polls run in a thread of their own (polling.py)
        # beside submissions: entries go with pop, and are iterated over copies.
        self._unsure: dict[str, dict[str, Unsure]] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("batch", self._session, self.region)
        return self._client

    @property
    def submit_client(self) -> Any:
        """The client for submit_job: botocore's retries off, since only we know how to
        repeat a submission safely (an injected client is used as it is)."""
        if self._submit_client is None:
            self._submit_client = make_client("batch", self._session, self.region, retries=False)
        return self._submit_client

    def check_available(self) -> None:
        self.client  # noqa: B018 -- raises a clear error when boto3 is missing

    def default_parallelism(self) -> int:
        return 32

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        return scale_memory(value, factor)  # MiB

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        """The map's lost submissions are looked up first: one that got in with chunks all
        waiting is their job, whatever else waits with them now (a duplicate is terminated)."""
        wanted = set(chunks)
        for record in self._adopt(spec.job_name, wanted):
            wanted.difference_update(record["chunks"])
            yield record
        for group in split_by_span(sorted(wanted), MAX_ARRAY_SIZE):
            for first, last in contiguous_runs(group):
                yield self._submit(spec, list(range(first, last + 1)))

    def submit_params(self, spec: SubmitSpec, chunks: list[int]) -> dict[str, Any]:
        array = len(chunks) > 1
        worker_args = (["--env", ARRAY_VARIABLE, "--offset", str(chunks[0])] if array
                       else [str(chunks[0])])
        overrides = dict(self.overrides)
        if "mem" in spec.resources:  # a retry after an out-of-memory kill asks for more
            overrides["resourceRequirements"] = [
                *(r for r in overrides.get("resourceRequirements", []) if r.get("type") != "MEMORY"),
                {"type": "MEMORY", "value": spec.resources["mem"]}]
        overrides["command"] = with_setup(
            container_command(spec, self.container_python, self.path_mapping, worker_args),
            self.setup, worker_args, os.path.dirname(map_path(spec.script_path, self.path_mapping)),
            spec.mode)
        # A name of its own for every call: a listing by name finds what that one call did.
        name = f"{safe_name(spec.job_name, 80)}-{chunks[0]}-{uuid.uuid4().hex[:12]}"
        params: dict[str, Any] = {
            "jobName": name, "jobQueue": self.job_queue, "jobDefinition": self.job_definition,
            "containerOverrides": overrides, "retryStrategy": {"attempts": 1},
            "propagateTags": True, "tags": aws_tags(self.tags, spec.job_name)}
        if array:
            params["arrayProperties"] = {"size": len(chunks)}
        return params

    def _submit(self, spec: SubmitSpec, chunks: list[int]) -> JobRecord:
        """submit_job, never repeated blindly: before a call is repeated, the calls whose answer
        was lost are looked up, so that one submission is one job."""
        delay, mine, failure = self.backoff, set(), None
        for attempt in range(self.retries + 1):
            if attempt:
                self.pause(delay)  # also gives a job that got in the time to be listed
                delay = min(delay * 2, 20.0)
                if mine and (adopted := self._adopt(spec.job_name, set(chunks), mine)):
                    return adopted[0]
            params = self.submit_params(spec, chunks)
            try:
                job_id = self.submit_client.submit_job(**params)["jobId"]
            except Exception as exc:
                if submission_failure_kind("batch submit_job", exc) == "maybe_sent":
                    mine.add(params["jobName"])
                    self._unsure.setdefault(spec.job_name, {})[params["jobName"]] = \
                        Unsure(chunks, time.monotonic())
                failure = exc
                continue
            self._supersede(spec.job_name, chunks)
            return job_record(job_id, chunks, params["jobName"])
        raise SubmissionRefused(f"{describe_error('batch submit_job', failure)} "  # type: ignore[arg-type]
                                f"(after {self.retries + 1} attempts)", SUBMIT_GIVE_UP_AFTER)

    def _supersede(self, map_name: str, chunks: Sequence[int]) -> None:
        for entry in list(self._unsure.get(map_name, {}).values()):
            if not entry.superseded and set(entry.chunks).intersection(chunks):
                entry.superseded = True

    def _adopt(self, map_name: str, wanted: set[int], names: set[str] | None = None) -> list[JobRecord]:
        """The records of the map's lost submissions (``names``, default all) that got in and
        whose chunks are all ``wanted``; the others that got in are terminated."""
        try:
            found = self._lost_jobs(map_name, lambda name, entry: names is None or name in names)
        except AwsRequestError:
            raise
        except SchedulerError as exc:  # no answer proves nothing: try again later
            raise SubmissionRefused(f"could not tell whether a lost submission of map {map_name} "
                                    f"got in: {exc}", SUBMIT_GIVE_UP_AFTER) from exc
        adopted = []
        for name, entry, jobs in found:
            jobs = [j for j in jobs if j["jobId"] != entry.adopted]
            if not entry.superseded and wanted.issuperset(entry.chunks):
                wanted = wanted.difference(entry.chunks)
                entry.adopted = jobs[0]["jobId"]  # the oldest: the one a lost answer was about
                adopted.append(job_record(entry.adopted, entry.chunks, name))
                self._supersede(map_name, entry.chunks)
                jobs = jobs[1:]
            entry.superseded = True
            if not self._terminate([j["jobId"] for j in jobs], DUPLICATE_REASON):
                self._unsure.get(map_name, {}).pop(name, None)  # else polls try again (adopted: recorded)
        return adopted

    def _lost_jobs(self, map_name: str, which: Callable[[str, Unsure], bool]
                   ) -> list[tuple[str, Unsure, list[dict[str, Any]]]]:
        """The map's lost submissions (those ``which`` picks) that a listing shows, with their
        jobs, oldest first; one not listed within LISTING_LAG never got in: forgotten."""
        entries, found = self._unsure.get(map_name, {}), []
        for name, entry in list(entries.items()):
            if which(name, entry):
                if jobs := self._listed(name):
                    found.append((name, entry, jobs))
                elif time.monotonic() - entry.since > LISTING_LAG:
                    entries.pop(name, None)
        return found

    def _listed(self, name: str) -> list[dict[str, Any]]:
        """The jobs named ``name``, oldest first, from every page of the listing."""
        jobs: list[dict[str, Any]] = []
        page: dict[str, str] = {}
        while True:
            answer = self._call(self.client.list_jobs, "batch list_jobs", jobQueue=self.job_queue,
                                filters=[{"name": "JOB_NAME", "values": [name]}], **page)
            jobs += [j for j in answer.get("jobSummaryList", []) if j.get("jobName") == name]
            if not answer.get("nextToken"):
                return sorted(jobs, key=lambda j: j.get("createdAt", 0))
            page = {"nextToken": answer["nextToken"]}

    def _settle(self, map_name: str, jobs: Sequence[JobRecord], everything: bool) -> list[str]:
        """Terminate the map's lost submissions that got in and are not recorded: the
        superseded ones, or with ``everything`` all (the map ends). Returns what failed."""
        recorded = {job["job_id"] for job in jobs}
        try:
            found = self._lost_jobs(map_name, lambda name, entry: everything or entry.superseded)
        except Exception as exc:
            return [f"lost submissions {sorted(self._unsure.get(map_name, {}))} not listed: {exc}"]
        left = []
        for name, _, listed in found:
            failed = self._terminate([j["jobId"] for j in listed if j["jobId"] not in recorded],
                                     DUPLICATE_REASON)
            if failed:
                left += failed
            else:
                self._unsure.get(map_name, {}).pop(name, None)
        return left

    def _terminate(self, job_ids: Sequence[str], reason: str) -> list[str]:
        """terminate_job on each, whatever fails on the way; returns what failed."""
        return end_each(lambda job_id: self._call(self.client.terminate_job, "batch terminate_job",
                                                  jobId=job_id, reason=reason), job_ids, "job")

    # -- poll and cancel ---------------------------------------------------------------
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        if any(e.superseded for e in list(self._unsure.get(spec.job_name, {}).values())):
            self._settle(spec.job_name, jobs, everything=False)  # what fails is tried next poll
        result: PollResult = {}
        ask: dict[str, tuple[str, int]] = {}
        parents: dict[str, list[str]] = {}  # array id -> its children we ask about
        for job in jobs:
            for chunk in job["chunks"]:
                child, key = child_id(job, chunk), (job["job_id"], chunk)
                if child in self._final:
                    result[key] = self._final[child]
                else:
                    ask[child] = key
                    if job.get("array"):
                        parents.setdefault(job["job_id"], []).append(child)
        ids = list(ask) + list(parents)
        seen: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 100):
            answer = self._call(self.client.describe_jobs, "batch describe_jobs",
                                jobs=ids[start:start + 100])
            seen.update({d.get("jobId", ""): d for d in answer.get("jobs", [])})
        for child, key in ask.items():
            if child in seen:
                status = result[key] = classify_job(seen[child])
                if status.state is TaskState.FINISHED:
                    self._final[child] = status
        for parent, children in parents.items():  # children not listed yet: as their parent
            detail = seen.get(parent)
            if detail and detail.get("status") in ("SUBMITTED", "PENDING", "RUNNABLE"):
                for child in children:
                    result.setdefault(ask[child], TaskStatus(TaskState.PENDING,
                                                             f"array {detail['status']}"))
        return result

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        """Terminate every target, whatever fails on the way; with ``chunks`` None also the
        map's lost submissions that got in. Raise what was left behind."""
        targets = []
        for job in jobs:
            if chunks is None:
                if not all(child_id(job, c) in self._final for c in job["chunks"]):
                    targets.append(job["job_id"])  # a parent: all its children at once
            else:
                targets += [child_id(job, c) for c in job["chunks"]
                            if c in chunks and child_id(job, c) not in self._final]
        left = self._terminate(targets, CANCEL_REASON)
        if chunks is None:  # those not listed yet are asked about again while the map lives
            left += self._settle(spec.job_name, jobs, everything=True)
        if left:
            raise SchedulerError(f"batch: {len(left)} job(s) of map {spec.job_name} may still run "
                                 f"(tagged poolparty_raster:map={spec.job_name}): " + "; ".join(left))

    def release(self, jobs: Sequence[JobRecord]) -> None:
        """The map ended: forget its children's states, and terminate its lost submissions
        that got in (a listing that lagged let a repeat through); what cannot be terminated is
        a warning. One still not listed is forgotten: polls have asked about it all along."""
        for job in jobs:
            for chunk in job["chunks"]:
                self._final.pop(child_id(job, chunk), None)
        for map_name in {map_of(job) for job in jobs} & set(self._unsure):
            left = self._settle(map_name, jobs, everything=True)
            self._unsure.pop(map_name, None)
            if left:
                warnings.warn(f"poolparty_raster: map {map_name} may have left jobs running (tagged "
                              f"poolparty_raster:map={map_name}): " + "; ".join(left), stacklevel=2)
