"""SLURM: ``sbatch --array`` (or one ``sbatch`` per chunk), ``squeue``, ``scancel``.

Facts this module is built on (SLURM 22.05, see shared/notes/real-slurm.md):
- finished elements vanish from plain ``squeue``; ``--states=all`` shows them for MinJobAge;
- ``squeue -j`` exits 1 once an id is purged, so we select by ``--name`` and ``--user``;
- ``scancel`` of an unknown id exits 0; ``sbatch`` refuses indices >= MaxArraySize;
- without slurmdbd ``sacct`` does not work, so it is never used.
"""
from __future__ import annotations

import getpass
import shlex
import time
from collections.abc import Sequence

from poolparty_raster.errors import SchedulerError
from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult, Scheduler,
                                              SubmitSpec, TaskState, TaskStatus, cancel_targets,
                                              index_ranges,
                                              require_commands, split_by_span, unparseable)

SQUEUE_FORMAT = "%i|%F|%K|%T|%r"

_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
            "SIGNALING", "STAGE_OUT"}
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
_FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
# Pending reasons that will not resolve by themselves, but that a new submission fixes.
ERROR_REASONS = ("launch failed requeued held", "JobHeldAdmin", "requeued in held state")
# Pending reasons that no resubmission fixes: the map fails at once, naming the reason.
FATAL_REASONS = ("InvalidAccount", "InvalidQOS", "BadConstraints", "PartitionConfig",
                 "PartitionNodeLimit", "PartitionTimeLimit", "DependencyNeverSatisfied",
                 "QOSJobLimit", "AccountNotAllowed", "PartitionDown", "PartitionInactive")
# sbatch refusals that pass once some of the user's jobs have ended.
LIMIT_MESSAGES = ("QOSMaxSubmitJobPerUserLimit", "AssocMaxSubmitJobLimit", "job submit limit",
                  "MaxSubmitJobs", "Resource temporarily unavailable", "Slurm temporarily unable")


class _LimitRefusal(Exception):
    """sbatch refused a submission for a per-user limit."""


def classify(state: str, reason: str) -> TaskStatus:
    """Normalise squeue's state word and reason."""
    if state in _PENDING:
        if reason.startswith(FATAL_REASONS):
            return TaskStatus(TaskState.FATAL, reason)
        if any(r in reason for r in ERROR_REASONS):
            return TaskStatus(TaskState.ERROR, reason)
        return TaskStatus(TaskState.PENDING, reason)
    if state in _RUNNING:
        return TaskStatus(TaskState.RUNNING, reason)
    if state in _FINISHED:
        return TaskStatus(TaskState.FINISHED, f"{state} {reason}".strip())
    raise ValueError(state)


def parse_squeue(text: str, jobs: Sequence[JobRecord]) -> PollResult:
    """Lines of ``squeue --format=%i|%F|%K|%T|%r`` -> {(job_id, chunk): status} for our jobs."""
    by_id = {job["job_id"]: job for job in jobs}
    result: PollResult = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|", 4)
        if len(fields) != 5:
            raise unparseable("squeue", line)
        element, array_job, task, state, reason = fields
        try:
            status = classify(state, reason)
        except ValueError:
            raise unparseable("squeue", line) from None
        if task.isdigit():
            job = by_id.get(array_job)
            if job is not None and job.get("array"):
                result[(array_job, job["offset"] + int(task))] = status
        elif element.isdigit() or element in by_id:
            job = by_id.get(element)
            if job is not None and not job.get("array"):
                result[(element, job["chunks"][0])] = status
        elif "_[" not in element:  # "12_[3-9]" is a collapsed pending range, not ours to parse
            raise unparseable("squeue", line)
    return result


def parse_config_value(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            digits = value.strip().split()[0] if value.strip() else ""
            return int(digits) if digits.isdigit() else None
    return None


class SlurmScheduler(Scheduler):
    name = "slurm"

    def __init__(self, *, array: bool = True, partition: str | None = None,
                 time: str | None = None, mem: str | None = None,
                 cpus_per_task: int | None = None, gres: str | None = None,
                 account: str | None = None, qos: str | None = None,
                 sbatch_args: Sequence[str] = (), slurm_call_timeout: float = 60.0,
                 sbatch_path: str = "sbatch", squeue_path: str = "squeue",
                 scancel_path: str = "scancel", scontrol_path: str = "scontrol",
                 sinfo_path: str = "sinfo"):
        self.array = array
        options = {"partition": partition, "time": time, "mem": mem, "cpus-per-task": cpus_per_task,
                   "gres": gres, "account": account, "qos": qos}
        self.resource_args = [f"--{k}={v}" for k, v in options.items() if v is not None]
        self.resource_args += list(sbatch_args)
        self.paths = {"sbatch_path": sbatch_path, "squeue_path": squeue_path,
                      "scancel_path": scancel_path}
        self.scontrol_path, self.sinfo_path = scontrol_path, sinfo_path
        self.runner = CommandRunner(timeout=slurm_call_timeout)
        self.user = getpass.getuser()
        self._max_array_size: int | None = None
        self._parallelism: int | None = None
        self._known: dict[str, set[str]] = {}  # job ids submitted per map name

    def check_available(self) -> None:
        require_commands("SLURM", self.paths)

    # -- site facts, read once per pool --------------------------------------------------
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            result = self.runner.run_once([self.scontrol_path, "show", "config"])
            size = parse_config_value(result.stdout, "MaxArraySize") if result and result.returncode == 0 else None
            self._max_array_size = size or 1001
        return self._max_array_size

    def default_parallelism(self) -> int:
        """The cluster's CPU count from ``sinfo %C`` (allocated/idle/other/total), else 16."""
        if self._parallelism is None:
            result = self.runner.run_once([self.sinfo_path, "--noheader", "--format=%C"])
            totals = [line.split("/")[-1] for line in (result.stdout.split() if result else [])]
            self._parallelism = sum(int(t) for t in totals if t.isdigit()) or 16
        return self._parallelism

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> list[JobRecord]:
        if not self.array:
            return [self._submit_one(spec, [chunk], None) for chunk in chunks]
        records: list[JobRecord] = []
        for group in split_by_span(sorted(chunks), self.max_array_size()):
            records += self._submit_array(spec, group)
        return records

    def _submit_array(self, spec: SubmitSpec, chunks: list[int]) -> list[JobRecord]:
        """One array; halved while a per-user limit refuses it, which a smaller one may pass."""
        try:
            return [self._submit_one(spec, chunks, chunks[0], wait_on_limit=len(chunks) == 1)]
        except _LimitRefusal:
            half = len(chunks) // 2
            return self._submit_array(spec, chunks[:half]) + self._submit_array(spec, chunks[half:])

    def _submit_one(self, spec: SubmitSpec, chunks: list[int], offset: int | None,
                    wait_on_limit: bool = True) -> JobRecord:
        if offset is None:
            worker_args = [str(chunks[0])]
            array_args: list[str] = []
        else:
            worker_args = ["--env", "SLURM_ARRAY_TASK_ID", "--offset", str(offset)]
            throttle = f"%{spec.throttle}" if spec.throttle else ""
            array_args = [f"--array={index_ranges([c - offset for c in chunks])}{throttle}"]
        command = shlex.join(["exec", spec.python_path, spec.script_path, *worker_args])
        argv = [self.paths["sbatch_path"], "--parsable", f"--job-name={spec.job_name}",
                f"--output={spec.scheduler_log}", "--open-mode=append", *array_args,
                *self.resource_args, f"--wrap={command}"]
        job_id = self._sbatch(spec, argv, wait_on_limit)
        record: JobRecord = {"job_id": job_id, "chunks": list(chunks), "array": offset is not None}
        if offset is not None:
            record["offset"] = offset
        return record

    def _sbatch(self, spec: SubmitSpec, argv: list[str], wait_on_limit: bool) -> str:
        """Submit; wait out per-user limits (or raise _LimitRefusal at once, for the caller to
        split the array); never let a timed-out call create a duplicate."""
        known = self._known.setdefault(spec.job_name, set())
        delay = 2.0
        attempt = 0
        while True:
            attempt += 1
            result = self.runner.run_once(argv)
            if result is not None and result.returncode == 0 and result.stdout.strip():
                job_id = result.stdout.strip().split(";")[0]
                known.add(job_id)
                return job_id
            # Timed out, failed, or answered without an id: did the job get in anyway?
            created = self._listed_job_ids(spec) - known
            if created:
                job_id = max(created, key=int)
                known.add(job_id)
                return job_id
            stderr = "" if result is None else result.stderr.strip()
            refused = result is not None and "submission failed" in stderr
            limited = any(m in stderr for m in LIMIT_MESSAGES)
            if refused and not limited:
                raise SchedulerError(f"sbatch refused the job: {stderr}")
            if limited and not wait_on_limit:
                raise _LimitRefusal(stderr)
            if not limited and attempt > self.runner.retries:
                raise SchedulerError(f"sbatch did not accept the job after {attempt} attempts: "
                                     f"{stderr or 'timed out'}")
            time.sleep(delay)  # a per-user limit (waited out for ever) or an unreachable controller
            delay = min(delay * 2, 60.0)

    def _listed_job_ids(self, spec: SubmitSpec) -> set[str]:
        """Ids of the (array) jobs the scheduler lists under this map's name."""
        result = self.runner.run_once(self._squeue_argv(spec, "%F"))
        if result is None or result.returncode != 0:
            return set()
        return {line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()}

    # -- poll and cancel ---------------------------------------------------------------
    def _squeue_argv(self, spec: SubmitSpec, fmt: str) -> list[str]:
        return [self.paths["squeue_path"], "--noheader", "--array", "--states=all",
                f"--user={self.user}", f"--name={spec.job_name}", f"--format={fmt}"]

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self._known.setdefault(spec.job_name, set()).update(job["job_id"] for job in jobs)
        result = self.runner.run(self._squeue_argv(spec, SQUEUE_FORMAT), retry=False)
        return parse_squeue(result.stdout, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        targets = cancel_targets(jobs, chunks, lambda job, c: f"{job['job_id']}_{c - job['offset']}")
        if targets:
            self.runner.run([self.paths["scancel_path"], *targets])
