"""Grid Engine: ``qsub -t`` arrays (or one ``qsub`` per chunk), ``qstat -xml``, ``qdel``.

Facts this module is built on (Son of Grid Engine 8.1.9, see shared/notes/real-sge.md):
- array task ids start at 1 and ``-t`` takes one range, so each contiguous run of chunks is an
  array whose task id minus one, plus the run's first chunk, is the chunk;
- plain ``qstat`` cuts names to 10 characters and lists only the caller's jobs: use
  ``qstat -xml -u USER``; running tasks sit under <queue_info>, the rest under <job_info>, and
  pending tasks collapse into ranges (``3-10:1``) or lists (``9,10``);
- jobs do not inherit PATH, so the interpreter is named by absolute path (``-S``);
- ``Eqw`` does not resolve by itself: delete the task and submit it again.
"""
from __future__ import annotations

import getpass
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult, Scheduler,
                                              SubmitSpec, TaskState, TaskStatus, contiguous_runs,
                                              require_commands, unparseable)


def classify(state: str) -> TaskStatus:
    """Grid Engine state letters: E error, d being deleted, r/t/s/S/T running, q/w queued (Rq, hqw)."""
    if "E" in state:
        return TaskStatus(TaskState.ERROR, state)
    if "d" in state:
        return TaskStatus(TaskState.FINISHED, state)
    if any(letter in state for letter in "rtsST"):  # "Rr" is a restarted running task
        return TaskStatus(TaskState.RUNNING, state)
    if "q" in state or "w" in state:
        return TaskStatus(TaskState.PENDING, state)
    raise ValueError(state)


def expand_tasks(text: str) -> list[int]:
    """``1-10:2`` / ``9,10`` / ``4`` -> task ids."""
    ids: list[int] = []
    for part in text.split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        ids.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return ids


def parse_qstat_xml(text: str, job_name: str, jobs: Sequence[JobRecord]) -> PollResult:
    by_id = {job["job_id"]: job for job in jobs}
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise unparseable("qstat -xml", text[:300]) from exc
    result: PollResult = {}
    for entry in root.iter("job_list"):
        job_id = (entry.findtext("JB_job_number") or "").strip()
        name = entry.findtext("JB_name")
        state_text = (entry.findtext("state") or "").strip()
        if not job_id.isdigit() or not state_text:
            raise unparseable("qstat -xml", ElementTree.tostring(entry, encoding="unicode")[:300])
        job = by_id.get(job_id)
        if name != job_name or job is None:
            continue
        try:
            status = classify(state_text)
        except ValueError:
            raise unparseable("qstat -xml", f"state {state_text!r} of job {job_id}") from None
        tasks = entry.findtext("tasks")
        if job.get("array") and tasks:
            for task in expand_tasks(tasks.strip()):
                result[(job_id, job["offset"] + task - 1)] = status
        elif not job.get("array"):
            result[(job_id, job["chunks"][0])] = status
    return result


class SgeScheduler(Scheduler):
    name = "sge"

    def __init__(self, *, array: bool = True, queue_name: str | None = None,
                 resources: Sequence[str] = (), parallel_environment: tuple[str, int] | None = None,
                 project: str | None = None, qsub_args: Sequence[str] = (),
                 sge_call_timeout: float = 60.0, qsub_path: str = "qsub",
                 qstat_path: str = "qstat", qdel_path: str = "qdel"):
        self.array = array
        args: list[str] = []
        if queue_name:
            args += ["-q", queue_name]
        for resource in resources:
            args += ["-l", resource]
        if parallel_environment:
            args += ["-pe", parallel_environment[0], str(parallel_environment[1])]
        if project:
            args += ["-P", project]
        self.resource_args = args + list(qsub_args)
        self.paths = {"qsub_path": qsub_path, "qstat_path": qstat_path, "qdel_path": qdel_path}
        self.runner = CommandRunner(timeout=sge_call_timeout)
        self.user = getpass.getuser()

    def check_available(self) -> None:
        require_commands("Grid Engine", self.paths)

    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> list[JobRecord]:
        if not self.array:
            return [self._qsub(spec, [c], None) for c in chunks]
        return [self._qsub(spec, list(range(first, last + 1)), first)
                for first, last in contiguous_runs(sorted(chunks))]

    def _qsub(self, spec: SubmitSpec, chunks: list[int], offset: int | None) -> JobRecord:
        argv = [self.paths["qsub_path"], "-terse", "-N", spec.job_name, "-S", spec.python_path,
                "-o", spec.scheduler_log, "-j", "y", "-wd", spec.cwd]
        if offset is None:
            worker_args = [str(chunks[0])]
        else:
            argv += ["-t", f"1-{len(chunks)}"]
            if spec.throttle:
                argv += ["-tc", str(spec.throttle)]
            worker_args = ["--env", "SGE_TASK_ID", "--offset", str(offset - 1)]
        argv += [*self.resource_args, spec.script_path, *worker_args]
        # qsub has no idempotency key: a retried timeout could submit twice, so no retries
        # here; a duplicate array would only compute the same results again.
        output = self.runner.run(argv, retry=False).stdout.strip()
        job_id = output.split(".")[0]
        if not job_id.isdigit():
            raise unparseable("qsub -terse", output)
        record: JobRecord = {"job_id": job_id, "chunks": chunks, "array": offset is not None}
        if offset is not None:
            record["offset"] = offset
        return record

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        result = self.runner.run([self.paths["qstat_path"], "-xml", "-u", self.user], retry=False)
        return parse_qstat_xml(result.stdout, spec.job_name, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        qdel = self.paths["qdel_path"]
        if chunks is None:
            # qdel exits 1 when any id is already gone: that is the expected case, not an error
            self.runner.run([qdel, *(job["job_id"] for job in jobs)], ok_codes=(0, 1), retry=False)
            return
        for job in jobs:
            for chunk in chunks:
                if chunk not in job["chunks"]:
                    continue
                target = ["-t", str(chunk - job["offset"] + 1)] if job.get("array") else []
                self.runner.run([qdel, job["job_id"], *target], ok_codes=(0, 1), retry=False)

    def describe(self, spec: SubmitSpec, job: JobRecord, chunk: int) -> str:
        """The ``error reason`` lines of ``qstat -j`` (why a task sits in Eqw)."""
        result = self.runner.run_once([self.paths["qstat_path"], "-j", job["job_id"]])
        if result is None:
            return ""
        return " | ".join(line.strip() for line in result.stdout.splitlines() if "error reason" in line)
