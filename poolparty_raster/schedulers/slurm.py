"""SLURM: ``sbatch --array`` (or one ``sbatch`` per chunk), ``squeue``, ``scancel``.

Facts this module is built on (SLURM 22.05, see shared/notes/real-slurm.md):
- finished elements vanish from plain ``squeue``; ``--states=all`` shows them for MinJobAge;
- ``squeue -j`` exits 1 once an id is purged, so we select by ``--name`` and ``--user``;
- ``scancel`` of an unknown id exits 0; ``sbatch`` refuses indices >= MaxArraySize;
- without slurmdbd ``sacct`` does not work, so it is never used.
"""
from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterator, Sequence
from typing import Annotated

from poolparty_raster.schedulers.arrays import ArrayScheduler, ArrayThrottle
from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult,
                                              Submitter, SubmitSpec, TaskState, TaskStatus,
                                              cancel_targets, index_ranges, require_commands,
                                              refusal_kind, split_by_span, unparseable)
from poolparty_raster.schedulers.jobcommand import (SetupLines, checked_setup, node_shell_command,
                                                    scale_clock, scale_memory)

SQUEUE_FORMAT = "%i|%F|%K|%T|%r"
# What sbatch passes of the driver's environment: script.py carries the rest (0600, in the
# work_dir). SLURM stores what it passes in its state directory for every job (the default,
# ALL, would keep a second copy of every token the driver has there); PATH and the loader's
# path are what starting the interpreter may need. Without PATH (NONE, NIL), slurmd runs the
# user's login shell to make an environment: 1.3 s more per job start here.
EXPORT = "--export=PATH,LD_LIBRARY_PATH"

_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
            "SIGNALING", "STAGE_OUT"}
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED"}
# Held where nothing releases them: RESV_DEL_HOLD (its reservation was deleted), REQUEUE_HOLD
# (requeued held), SPECIAL_EXIT (requeued held after a special exit code); they stay queued.
_HELD = {"RESV_DEL_HOLD", "REQUEUE_HOLD", "SPECIAL_EXIT"}
_FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
# End states that say which request the job outgrew (a deadline is not the job's own).
EXCEEDED = {"TIMEOUT": "time", "OUT_OF_MEMORY": "mem"}
# Pending reasons that will not resolve by themselves, but that a new submission fixes.
ERROR_REASONS = ("launch failed requeued held", "JobHeldAdmin", "requeued in held state",
                 "JobHoldMaxRequeue")
# Pending reasons that no resubmission fixes: the map fails at once, naming the reason.
# (QOSJobLimit, PartitionDown and PartitionInactive pass by themselves: they stay pending.)
FATAL_REASONS = ("InvalidAccount", "InvalidQOS", "BadConstraints", "PartitionConfig",
                 "PartitionNodeLimit", "PartitionTimeLimit", "DependencyNeverSatisfied",
                 "AccountNotAllowed", "QOSNotAllowed", "MaxMemPerLimit")
# ... and the limits of SLURM 22.05 on what one job asks for (job_reason_string()): a job over
# a QOS's or association's per-job or per-node maximum (QOSMaxWallDurationPerJobLimit,
# AssocMaxCpuPerJobLimit, QOSMaxGRESPerNode, ...) or under a QOS's minimum (QOSMinCpu*,
# QOSMinMemory, ...) never starts. Per-user, per-account and group (Grp) limits do pass.
FATAL_LIMIT = re.compile(r"(QOS|Assoc)Max\w*Per(Job|Node)|QOSMin")
# sbatch refusals that pass once some of the user's jobs have ended: wait for ever.
LIMIT_MESSAGES = ("MaxSubmitJob", "QOSMaxSubmitJobPerUserLimit", "AssocMaxSubmitJobLimit")
# SLURM prints this both for a submit limit and for a job larger than a policy allows:
# it is waited out, but not for ever while none of the map's jobs is queued.
POLICY_MESSAGE = "Job violates accounting/QOS policy"
POLICY_GIVE_UP_AFTER = 600.0
# sbatch failures that say nothing about the job: the controller is busy, restarting or far.
TRANSIENT_MESSAGES = ("Unable to contact slurm controller", "temporarily unable",
                      "Resource temporarily unavailable", "Communication connection failure",
                      "Transport endpoint is not connected", "Connection refused")
# ... and after the request was sent: the job may be in (squeue --states=all will tell)
ANSWER_LOST_MESSAGES = ("Socket timed out", "Zero Bytes were transmitted")


def classify(state: str, reason: str) -> TaskStatus:
    """Normalise squeue's state word and reason."""
    if state in _PENDING:
        if reason.startswith(FATAL_REASONS) or FATAL_LIMIT.match(reason):
            return TaskStatus(TaskState.FATAL, reason)
        if any(r in reason for r in ERROR_REASONS):
            return TaskStatus(TaskState.ERROR, reason)
        return TaskStatus(TaskState.PENDING, reason)
    if state in _HELD:
        return TaskStatus(TaskState.ERROR, f"{state} {reason}".strip())
    if state in _RUNNING:
        return TaskStatus(TaskState.RUNNING, reason)
    if state in _FINISHED:
        return TaskStatus(TaskState.FINISHED, f"{state} {reason}".strip(), state == "COMPLETED",
                          EXCEEDED.get(state))
    raise ValueError(state)


def classify_refusal(stderr: str) -> str:
    """What an sbatch failure means: "limit", "policy", "answer_lost", "transient",
    "permanent" or "unknown"."""
    # sbatch says "submission failed" when the controller judged the job; any other failure
    # (a crash, a bad option, a message not known here) is "unknown": it may have happened
    # after the request went out, and a few repeats that fail alike fail the map.
    otherwise = "permanent" if "submission failed" in stderr else "unknown"
    return refusal_kind(stderr, (("limit", LIMIT_MESSAGES), ("policy", (POLICY_MESSAGE,)),
                                 ("answer_lost", ANSWER_LOST_MESSAGES),
                                 ("transient", TRANSIENT_MESSAGES)), otherwise)


def parse_job_id(stdout: str) -> str | None:
    """``sbatch --parsable`` prints ``123`` or ``123;cluster``; anything else is no id."""
    job_id = stdout.strip().split(";")[0]
    return job_id if job_id.isdigit() else None


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


def sibling(path: str, command: str) -> str:
    """``scontrol`` beside a given ``/opt/slurm/bin/sbatch``, or on PATH when none was given."""
    directory = os.path.dirname(path)
    return os.path.join(directory, command) if directory else command


class SlurmScheduler(ArrayScheduler):
    name = "slurm"

    def __init__(
            self, *,
            array: Annotated[bool, "one sbatch --array per map, else one job per chunk"] = True,
            partition: Annotated[str | None, "sbatch --partition"] = None,
            time: Annotated[str | None, "sbatch --time, a job's wall time ('1:00:00')"] = None,
            mem: Annotated[str | None, "sbatch --mem, memory per node ('4G')"] = None,
            cpus_per_task: Annotated[int | None, "sbatch --cpus-per-task"] = None,
            gres: Annotated[str | None, "sbatch --gres ('gpu:1')"] = None,
            gpus_per_task: Annotated[int | None, "sbatch --gpus-per-task: GPUs for each chunk's job"] = None,
            setup: SetupLines = (),
            account: Annotated[str | None, "sbatch --account"] = None,
            qos: Annotated[str | None, "sbatch --qos"] = None,
            sbatch_args: Annotated[Sequence[str], "more sbatch arguments, as given"] = (),
            slurm_call_timeout: Annotated[float, "seconds one SLURM command may take"] = 60.0,
            sbatch_path: Annotated[str, "the sbatch command (scontrol and sinfo beside it)"] = "sbatch",
            squeue_path: Annotated[str, "the squeue command"] = "squeue",
            scancel_path: Annotated[str, "the scancel command"] = "scancel",
            scontrol_path: Annotated[str | None, "the scontrol command (default: beside sbatch)"] = None,
            sinfo_path: Annotated[str | None, "the sinfo command (default: beside sbatch)"] = None):
        self.array = array
        self.partition = partition
        options = {"partition": partition, "time": time, "mem": mem, "cpus-per-task": cpus_per_task,
                   "gres": gres, "gpus-per-task": gpus_per_task, "account": account, "qos": qos}
        self.resource_args = [f"--{k}={v}" for k, v in options.items() if v is not None]
        self.resource_args += list(sbatch_args)
        self.requests = {"time": time, "mem": mem}
        self.request_options = {"time": "time", "mem": "mem"}
        self.setup = checked_setup(setup)
        self.paths = {"sbatch_path": sbatch_path, "squeue_path": squeue_path,
                      "scancel_path": scancel_path}
        self.scontrol_path = scontrol_path or sibling(sbatch_path, "scontrol")
        self.sinfo_path = sinfo_path or sibling(sbatch_path, "sinfo")
        self.runner = CommandRunner(timeout=slurm_call_timeout, pause=self.pause)
        self.user = getpass.getuser()
        self.submitter = Submitter(self, self.runner, parse_job_id, self._listed_job_ids,
                                   classify_refusal, {"limit": None, "policy": POLICY_GIVE_UP_AFTER})
        self.throttle = ArrayThrottle()
        self._max_array_size: int | None = None
        self._parallelism: int | None = None

    def check_available(self) -> None:
        require_commands("SLURM", self.paths)

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        return scale_clock(value, factor, 60) if kind == "time" else scale_memory(value, factor)

    def _resource_args(self, spec: SubmitSpec) -> list[str]:
        """The pool's requests, with this submission's --time and --mem (a retry's) instead
        of the pool's."""
        replaced = tuple(f"--{kind}=" for kind in spec.resources)
        return ([arg for arg in self.resource_args if not (replaced and arg.startswith(replaced))]
                + [f"--{kind}={value}" for kind, value in spec.resources.items()])

    # -- site facts, read once per pool --------------------------------------------------
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            result = self.runner.run_once([self.scontrol_path, "show", "config"])
            size = parse_config_value(result.stdout, "MaxArraySize") if result and result.returncode == 0 else None
            self._max_array_size = size or 1001
        return self._max_array_size

    def default_parallelism(self) -> int:
        """The CPU count of the pool's partition (or all), from ``sinfo`` per node, else 16."""
        if self._parallelism is None:
            argv = [self.sinfo_path, "--noheader", "--Node", "--format=%N %C"]
            if self.partition:
                argv.append(f"--partition={self.partition}")
            result = self.runner.run_once(argv)
            totals: dict[str, int] = {}  # a node in several partitions is listed once per partition
            for line in result.stdout.splitlines() if result and result.returncode == 0 else []:
                node, _, cpus = line.partition(" ")
                total = cpus.strip().split("/")[-1]
                if total.isdigit():
                    totals[node] = int(total)
            self._parallelism = sum(totals.values()) or 16
        return self._parallelism

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        if not self.array:
            for chunk in chunks:
                yield self._submit_one(spec, [chunk], None, None)
            return
        groups = split_by_span(sorted(chunks), self.max_array_size())
        for group, share in self.throttle.throttled(spec, groups):
            yield from self._submit_array(spec, group, share)

    def _submit_one_array(self, spec: SubmitSpec, chunks: list[int],
                          throttle: int | None) -> JobRecord:
        return self._submit_one(spec, chunks, chunks[0], throttle)

    def _submit_one(self, spec: SubmitSpec, chunks: list[int], offset: int | None,
                    throttle: int | None) -> JobRecord:
        if offset is None:
            worker_args = [str(chunks[0])]
            array_args: list[str] = []
        else:
            worker_args = ["--env", "SLURM_ARRAY_TASK_ID", "--offset", str(offset)]
            limit = f"%{throttle}" if throttle else ""
            array_args = [f"--array={index_ranges([c - offset for c in chunks])}{limit}"]
        command = node_shell_command(spec.python_path, spec.script_path, worker_args, self.setup,
                                     spec.mode)
        argv = [self.paths["sbatch_path"], "--parsable", f"--job-name={spec.job_name}",
                f"--output={spec.scheduler_log}", "--open-mode=append", EXPORT, *array_args,
                *self._resource_args(spec), f"--wrap={command}"]
        job_id = self.submitter.submit(spec, argv)
        record: JobRecord = {"job_id": job_id, "chunks": list(chunks), "array": offset is not None}
        if offset is not None:
            record["offset"] = offset
            self.throttle.note(spec, [record])
        return record

    def _listed_job_ids(self, spec: SubmitSpec) -> set[str] | None:
        """Ids of the (array) jobs the scheduler lists under this map's name; None when squeue
        did not answer."""
        result = self.runner.run_once(self._squeue_argv(spec, "%F"))
        if result is None or result.returncode != 0:
            return None
        return {line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()}

    # -- poll and cancel ---------------------------------------------------------------
    def _squeue_argv(self, spec: SubmitSpec, fmt: str) -> list[str]:
        return [self.paths["squeue_path"], "--noheader", "--array", "--states=all",
                f"--user={self.user}", f"--name={spec.job_name}", f"--format={fmt}"]

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self.submitter.note(spec, jobs)
        result = self.runner.run(self._squeue_argv(spec, SQUEUE_FORMAT), retry=False)
        return parse_squeue(result.stdout, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        if chunks is None:  # by name: also catches a job whose submission seemed to fail
            self.runner.run([self.paths["scancel_path"], f"--user={self.user}",
                             f"--name={spec.job_name}"])
            self.throttle.forget(spec)
            return
        targets = cancel_targets(jobs, chunks, lambda job, c: f"{job['job_id']}_{c - job['offset']}")
        if targets:
            self.runner.run([self.paths["scancel_path"], *targets])
