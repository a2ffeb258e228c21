"""Grid Engine: ``qsub -t`` arrays (or one ``qsub`` per chunk), ``qstat -xml``, ``qdel``.

Facts this module is built on (Son of Grid Engine 8.1.9, see shared/notes/real-sge.md):
- array task ids start at 1 and ``-t`` takes one range, so each contiguous run of chunks is an
  array whose task id minus one, plus the run's first chunk, is the chunk;
- plain ``qstat`` cuts names to 10 characters and lists only the caller's jobs: use
  ``qstat -xml -u USER``; running tasks sit under <queue_info>, the rest under <job_info>, and
  pending tasks collapse into ranges (``3-10:1``) or lists (``9,10``);
- jobs do not inherit PATH, so the interpreter is named by absolute path, and run as a binary
  job without a shell (``-b y -shell no``): arguments arrive unsplit, and no copy of script.py
  lands in the execd's world-readable spool;
- ``Eqw`` does not resolve by itself: delete the task and submit it again.
"""
from __future__ import annotations

import getpass
import os
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from typing import Annotated

from poolparty_raster.errors import SchedulerError, SchedulerOutputError, SchedulerUnavailableError
from poolparty_raster.schedulers.arrays import ArrayScheduler, ArrayThrottle
from poolparty_raster.schedulers.base import (UNCONFIRMED, CommandRunner, JobRecord, PollResult,
                                              Submitter, SubmitSpec, TaskState, TaskStatus,
                                              contiguous_runs, require_commands, split_by_span,
                                              refusal_kind, unanswered, unparseable)
from poolparty_raster.schedulers.jobcommand import (SetupLines, checked_setup, node_argv,
                                                    scale_clock, scale_memory)

# qsub refusals that pass once some of the user's jobs have ended (max_u_jobs, max_jobs)
LIMIT_MESSAGES = ("jobs are allowed per user", "jobs are allowed per cluster")
# qsub failures before the request reached qmaster: busy, restarting or unreachable
TRANSIENT_MESSAGES = ("unable to send message", "commlib error", "unable to contact qmaster")
# ... and after: the request was sent, its answer lost; the job may be in
ANSWER_LOST_MESSAGES = ("failed receiving gdi request", "timeout")
DEFAULT_MAX_ARRAY_TASKS = 75_000  # Grid Engine's max_aj_tasks default


def classify_refusal(stderr: str) -> str:
    return refusal_kind(stderr, (("limit", LIMIT_MESSAGES), ("answer_lost", ANSWER_LOST_MESSAGES),
                                 ("transient", TRANSIENT_MESSAGES)))


def parse_job_id(stdout: str) -> str | None:
    """``qsub -terse`` prints ``4`` for a job and ``18.1-10:1`` for an array."""
    job_id = stdout.strip().split(".")[0]
    return job_id if job_id.isdigit() else None


def parse_config_value(text: str, key: str) -> int | None:
    """``max_aj_tasks 75000`` from ``qconf -sconf``."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key and fields[1].isdigit():
            return int(fields[1])
    return None


def parse_qacct(text: str) -> TaskStatus | None:
    """``qacct -j ID [-t TASK]`` -> how the (last) run ended; None when nothing is listed.
    ``failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem limit`` is a kill at a limit: the
    wall time, since an h_vmem limit is a setrlimit under which allocations fail (a
    MemoryError in Python, the task's own exception), not a kill."""
    failed = exit_status = None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "failed":
            failed = " ".join(value.split())
        elif key == "exit_status":
            exit_status = " ".join(value.split())
    if failed is None:
        return None
    reason = f"qacct: failed {failed}, exit_status {exit_status}"
    killed = failed.split()[0] == "37"
    return TaskStatus(TaskState.FINISHED, reason, failed.split()[0] == "0" and exit_status == "0",
                      "time" if killed else None)


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


def qstat_entries(text: str) -> Iterator[tuple[str, str | None, str, ElementTree.Element]]:
    """(job id, name, state letters, element) of every <job_list> of ``qstat -xml``."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise unparseable("qstat -xml", text[:300]) from exc
    for entry in root.iter("job_list"):
        job_id = (entry.findtext("JB_job_number") or "").strip()
        state_text = (entry.findtext("state") or "").strip()
        if not job_id.isdigit() or not state_text:
            raise unparseable("qstat -xml", ElementTree.tostring(entry, encoding="unicode")[:300])
        yield job_id, entry.findtext("JB_name"), state_text, entry


def parse_qstat_xml(text: str, job_name: str, jobs: Sequence[JobRecord]) -> PollResult:
    by_id = {job["job_id"]: job for job in jobs}
    result: PollResult = {}
    for job_id, name, state_text, entry in qstat_entries(text):
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


class SgeScheduler(ArrayScheduler):
    name = "sge"

    def __init__(
            self, *,
            array: Annotated[bool, "one qsub -t array per map, else one job per chunk"] = True,
            queue_name: Annotated[str | None, "qsub -q, the cluster queue"] = None,
            resources: Annotated[Sequence[str], "qsub -l requests ('h_vmem=4G', 'h_rt=1:00:00')"] = (),
            parallel_environment: Annotated[tuple[str, int] | None,
                                            "qsub -pe (name, slots) for a multi-slot task"] = None,
            project: Annotated[str | None, "qsub -P"] = None,
            gpus_per_task: Annotated[int | None, "GPUs for each chunk's job, as -l "
                                                  "<gpu_resource>=N"] = None,
            gpu_resource: Annotated[str, "the site's consumable that counts GPUs"] = "gpu",
            setup: SetupLines = (),
            qsub_args: Annotated[Sequence[str], "more qsub arguments, as given"] = (),
            sge_call_timeout: Annotated[float, "seconds one Grid Engine command may take"] = 60.0,
            qsub_path: Annotated[str, "the qsub command"] = "qsub",
            qstat_path: Annotated[str, "the qstat command"] = "qstat",
            qdel_path: Annotated[str, "the qdel command"] = "qdel",
            qconf_path: Annotated[str, "the qconf command (the cluster's slots and limits)"] = "qconf"):
        self.array = array
        args: list[str] = []
        if queue_name:
            args += ["-q", queue_name]
        # h_rt and h_vmem are what a retry may enlarge: kept apart (see _request_args).
        self.requests = {"time": None, "mem": None}
        self.request_options = {"time": "h_rt", "mem": "h_vmem"}
        for resource in resources:
            name, _, value = resource.partition("=")
            kind = {"h_rt": "time", "h_vmem": "mem"}.get(name.strip())
            if kind is not None and "," not in resource:
                self.requests[kind] = value.strip()
            else:
                args += ["-l", resource]
        if gpus_per_task:
            args += ["-l", f"{gpu_resource}={gpus_per_task}"]
        if parallel_environment:
            args += ["-pe", parallel_environment[0], str(parallel_environment[1])]
        if project:
            args += ["-P", project]
        self.resource_args = args + list(qsub_args)
        self.paths = {"qsub_path": qsub_path, "qstat_path": qstat_path, "qdel_path": qdel_path}
        self.qconf_path = qconf_path
        # qacct beside the qsub in use: an accounting of another installation knows nothing.
        self.qacct_path = os.path.join(os.path.dirname(shutil.which(qsub_path) or qsub_path),
                                       "qacct")
        self.setup = checked_setup(setup)
        self.runner = CommandRunner(timeout=sge_call_timeout, pause=self.pause)
        self.user = getpass.getuser()
        # qstat lists a job only until it ends: a lost answer stays unconfirmed (see Submitter)
        self.submitter = Submitter(self, self.runner, parse_job_id, self._listed_job_ids,
                                   classify_refusal, lists_finished=False)
        self.throttle = ArrayThrottle()
        self._max_array_tasks: int | None = None
        self._parallelism: int | None = None

    def check_available(self) -> None:
        require_commands("Grid Engine", self.paths)

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        return scale_clock(value, factor, 1) if kind == "time" else scale_memory(value, factor)

    asks_after_end = True  # qstat drops an ended job: qacct tells why it ended

    def end_status(self, spec: SubmitSpec, job: JobRecord, chunk: int) -> TaskStatus | None:
        if job["job_id"].startswith(UNCONFIRMED):
            return TaskStatus(TaskState.FINISHED, "gone from the queue")
        argv = [self.qacct_path, "-j", job["job_id"]]
        if job.get("array"):
            argv += ["-t", str(chunk - job["offset"] + 1)]
        try:
            result = self.runner.run_once(argv)
        except SchedulerUnavailableError:  # no qacct here: it ended, nobody says how
            return TaskStatus(TaskState.FINISHED, "gone from the queue")
        return parse_qacct(result.stdout) if result is not None else None

    def _request_args(self, spec: SubmitSpec) -> list[str]:
        """-l h_rt and -l h_vmem: the pool's, or this submission's (a retry's)."""
        requests = {**self.requests, **spec.resources}
        return [arg for kind, value in requests.items() if value is not None
                for arg in ("-l", f"{self.request_options[kind]}={value}")]

    def release(self, jobs: Sequence[JobRecord]) -> None:
        """A job whose qsub answer was lost may have got in unseen: queued after the map
        ended, it would start without its work_dir and sit in Eqw for ever. Cancelled by the
        map's name, and only then (qdel of nothing costs a call and exits 1)."""
        for name in self.submitter.unconfirmed_maps(jobs):
            try:
                self._qdel([name])
            except SchedulerError:  # the map succeeded; what is left is only queue clutter
                pass

    def default_parallelism(self) -> int:
        """The slots of the cluster's queues (``qstat -g c``, column TOTAL), else 16."""
        if self._parallelism is None:
            result = self.runner.run_once([self.paths["qstat_path"], "-g", "c"])
            lines = result.stdout.splitlines()[2:] if result and result.returncode == 0 else []
            totals = [line.split()[5] for line in lines if len(line.split()) > 5]
            self._parallelism = sum(int(t) for t in totals if t.isdigit()) or 16
        return self._parallelism

    def max_array_tasks(self) -> int:
        """The site's ``max_aj_tasks`` (``qconf -sconf``), read once per pool."""
        if self._max_array_tasks is None:
            try:
                result = self.runner.run_once([self.qconf_path, "-sconf"])
            except SchedulerUnavailableError:  # qconf is not installed everywhere qsub is
                result = None
            size = parse_config_value(result.stdout, "max_aj_tasks") if result and result.returncode == 0 else None
            self._max_array_tasks = size or DEFAULT_MAX_ARRAY_TASKS
        return self._max_array_tasks

    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        if not self.array:
            for chunk in chunks:
                yield self._qsub(spec, [chunk], None)
            return
        groups = [group for first, last in contiguous_runs(sorted(chunks))
                  for group in split_by_span(list(range(first, last + 1)), self.max_array_tasks())]
        for group, share in self.throttle.throttled(spec, groups):
            yield self._qsub(spec, group, group[0], share)

    def _qsub(self, spec: SubmitSpec, chunks: list[int], offset: int | None,
              throttle: int | None = None) -> JobRecord:
        # A binary job run without a shell: Grid Engine copies a job *script* into its spool
        # with mode 0755, and script.py carries the caller's environment. The work_dir exists
        # on every node (the driver's cwd may not); script.py then moves to the driver's cwd.
        argv = [self.paths["qsub_path"], "-terse", "-N", spec.job_name, "-b", "y", "-shell", "no",
                "-o", spec.scheduler_log, "-j", "y", "-wd", spec.work_dir]
        if offset is None:
            worker_args = [str(chunks[0])]
        else:
            argv += ["-t", f"1-{len(chunks)}"]
            if throttle:
                argv += ["-tc", str(throttle)]
            worker_args = ["--env", "SGE_TASK_ID", "--offset", str(offset - 1)]
        # Set-up lines make the job `bash -c TEXT`: the user's own lines, never the
        # driver's environment, so what the spool keeps of the argv is harmless.
        argv += [*self.resource_args, *self._request_args(spec),
                 *node_argv(spec.python_path, spec.script_path, worker_args, self.setup, spec.mode)]
        record: JobRecord = {"job_id": self.submitter.submit(spec, argv), "chunks": chunks,
                             "array": offset is not None}
        if offset is not None:
            record["offset"] = offset
            self.throttle.note(spec, [record])
        return record

    def _qstat(self) -> list[str]:
        return [self.paths["qstat_path"], "-xml", "-u", self.user]

    def _listed_job_ids(self, spec: SubmitSpec) -> set[str] | None:
        result = self.runner.run_once(self._qstat())
        if result is None or result.returncode != 0:
            return None
        try:
            return {job_id for job_id, name, _, _ in qstat_entries(result.stdout)
                    if name == spec.job_name}
        except SchedulerOutputError:  # garbled: no answer either
            return None

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self.submitter.note(spec, jobs)
        result = self.runner.run(self._qstat(), retry=False)
        return parse_qstat_xml(result.stdout, spec.job_name, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        jobs = [job for job in jobs if not job["job_id"].startswith(UNCONFIRMED)]  # no such ids
        if chunks is None:  # by name too: catches a job whose submission seemed to fail
            self._qdel([spec.job_name, *(job["job_id"] for job in jobs)])
            self.throttle.forget(spec)
            return
        for job in jobs:
            tasks = [chunk - job["offset"] + 1 for chunk in chunks if chunk in job["chunks"]] \
                if job.get("array") else []
            if job.get("array") and tasks:
                for first, last in contiguous_runs(sorted(tasks)):
                    self._qdel([job["job_id"], "-t", f"{first}-{last}"])
            elif not job.get("array") and job["chunks"][0] in chunks:
                self._qdel([job["job_id"]])

    def _qdel(self, args: list[str]) -> None:
        """qdel exits 1 when an id is already gone: that is the expected case. A qmaster that
        does not answer is asked again; anything else it refuses (another user's job) is an
        error."""
        result = self.runner.run([self.paths["qdel_path"], *args], ok_codes=(0, 1),
                                 transient=unanswered(classify_refusal))
        refused = [line for line in result.stderr.splitlines()
                   if line.strip() and "does not exist" not in line]
        if result.returncode == 1 and refused:
            raise SchedulerError(f"`qdel {' '.join(args)}` failed: {' | '.join(refused)[:500]}")

    def describe(self, spec: SubmitSpec, job: JobRecord, chunk: int) -> str:
        """The ``error reason`` line of ``qstat -j`` for this task (why it sits in Eqw)."""
        result = self.runner.run_once([self.paths["qstat_path"], "-j", job["job_id"]])
        if result is None:
            return ""
        task = str(chunk - job["offset"] + 1) if job.get("array") else None
        reasons = [line.strip() for line in result.stdout.splitlines() if "error reason" in line]
        mine = [r for r in reasons if task is None or r.split(":")[0].split()[-1] == task]
        return " | ".join(mine or reasons)
