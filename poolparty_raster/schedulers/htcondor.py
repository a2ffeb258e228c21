"""HTCondor: one cluster per submission (``queue N``), ``condor_q -json`` with
``condor_history -json``, ``condor_rm``.

Built from the HTCondor manual (no HTCondor pool is available to test against here; the bundled
dummy follows the same manual):
- ``condor_submit -terse FILE`` prints the ids it queued as ``cluster.first - cluster.last``;
  ``queue N`` makes procs 0..N-1 of one cluster (``$(Process)`` in the submit description),
  ``queue NAME in (a b c)`` one proc per item, in order, ``$(NAME)`` its item;
- the submit description's ``environment`` is all a job gets with ``getenv = false``;
  ``$(DOLLAR)`` is a literal ``$`` (every other ``$(...)`` is a macro);
- ``max_materialize = K`` keeps at most K procs of the cluster in the queue (idle, running or
  held): the others are not jobs yet, and ``condor_q`` lists them in no job ad, only in the
  cluster's factory ad (``condor_q -factory``) as ``JobMaterializeNextProcId`` onwards;
- a job that ends leaves the queue for the history: ``condor_q -json`` and
  ``condor_history -json`` print a JSON array of ClassAds (nothing when none matches) with
  ``JobStatus`` 1 idle, 2 running, 3 removed, 4 completed, 5 held (``HoldReason``,
  ``HoldReasonCode``, ``HoldReasonSubCode``), 6 transferring output, 7 suspended; a completed
  job has ``ExitCode``, or ``ExitBySignal`` and ``ExitSignal``;
- a job over its memory is held with HoldReasonCode 34 (JobOutOfResources; subcode 102 since
  HTCondor 24, 104 is its disk); one past ``allowed_execute_duration`` (seconds executing)
  with 47, past ``allowed_job_duration`` (seconds in the running state) with 46;
- ``arguments`` is one line of the submit description; ``request_gpus`` asks for GPUs;
- ``condor_q`` shows only the caller's jobs, ``condor_history`` everyone's;
- ``condor_rm CLUSTER`` and ``condor_rm CLUSTER.PROC`` exit 1 when nothing matched.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from poolparty_raster import files
from poolparty_raster.errors import SchedulerOutputError
from poolparty_raster.schedulers.arrays import ArrayScheduler, ArrayThrottle
from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult,
                                              Submitter, SubmitSpec, TaskState, TaskStatus,
                                              refusal_kind, require_commands, unanswered,
                                              unparseable)
from poolparty_raster.schedulers.jobcommand import (SetupLines, checked_setup, node_shell_command,
                                                    scale_memory)

ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "HoldReason", "HoldReasonCode",
              "HoldReasonSubCode", "ExitCode", "ExitBySignal", "ExitSignal", "RemoveReason")
FACTORY_ATTRIBUTES = ("ClusterId", "JobMaterializeNextProcId")
# The node learns its chunk from this variable (the submit description's environment line).
CHUNK_VARIABLE = "POOLPARTY_RASTER_CHUNK"
CHUNK_MACRO = "PoolpartyChunk"  # the item of `queue PoolpartyChunk in (...)`
SUBMIT_FILE_NAME = "condor.submit"
_TERSE = re.compile(r"^\s*(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)\s*$", re.M)
_SUBMITTED = re.compile(r"job\(s\) submitted to cluster (\d+)\.")
_STATES = {1: (TaskState.PENDING, "idle"), 2: (TaskState.RUNNING, "running"),
           3: (TaskState.FINISHED, "removed"), 4: (TaskState.FINISHED, "completed"),
           # held: by the user, an admin or a policy (periodic_hold, out of memory); nothing
           # releases it for the pool, which removes it, then submits its chunk again (a
           # hold for the job's memory or time follows the kill policy: HOLD_KILLS)
           5: (TaskState.ERROR, "held"),
           6: (TaskState.RUNNING, "transferring output"), 7: (TaskState.RUNNING, "suspended")}
# HoldReasonCodes of a job HTCondor stopped for outgrowing its request: 34 JobOutOfResources
# (memory, unless its subcode says disk), 46 JobDurationExceeded, 47 JobExecuteExceeded.
HOLD_KILLS = {34: "mem", 46: "time", 47: "time"}
DISK_SUBCODE = 104  # 34's subcode for the disk: a request no retry enlarges here
# Submit commands the pool writes from its options (a retry changes them): not in submit_lines.
REQUEST_COMMANDS = {"time": "allowed_execute_duration", "mem": "request_memory"}
# refusals that pass once some of the user's jobs have left the queue
LIMIT_MESSAGES = ("MAX_JOBS_PER_OWNER", "MAX_JOBS_PER_SUBMISSION", "MAX_JOBS_SUBMITTED")
# failures before the request reached the schedd
TRANSIENT_MESSAGES = ("Can't find address of local schedd", "Failed to connect",
                      "CEDAR:6001", "Connection refused")
# ... and after it was sent: the cluster may be in (the listing will tell)
ANSWER_LOST_MESSAGES = ("Failed to commit job submission", "timed out", "Timed out")
# the submit description itself was refused: no repeat changes that
PERMANENT_MESSAGES = ("ERROR: on Line", "does not exist", "Parse error")


def classify_refusal(stderr: str) -> str:
    """What a condor_submit or condor_rm failure means (see Submitter)."""
    return refusal_kind(stderr, (("limit", LIMIT_MESSAGES), ("answer_lost", ANSWER_LOST_MESSAGES),
                                 ("transient", TRANSIENT_MESSAGES),
                                 ("permanent", PERMANENT_MESSAGES)), "unknown")


def parse_cluster_id(stdout: str) -> str | None:
    """``condor_submit -terse``'s ``123.0 - 123.9`` -> ``123``; also its verbose answer,
    ``10 job(s) submitted to cluster 123.``, should a version print that instead."""
    match = _TERSE.search(stdout) or _SUBMITTED.search(stdout)
    return match.group(1) if match else None


def read_ads(text: str, command: str) -> list[dict[str, Any]]:
    """The ClassAds of ``-json`` output: a JSON array, or nothing when no ad matched."""
    if not text.strip():
        return []
    try:
        ads = json.loads(text)
    except json.JSONDecodeError as exc:
        raise unparseable(command, text[:300]) from exc
    if not isinstance(ads, list) or not all(isinstance(ad, dict) for ad in ads):
        raise unparseable(command, text[:300])
    return ads


def classify(ad: dict[str, Any]) -> TaskStatus:
    """A job ad's JobStatus, normalised, with the words the log and the record keep."""
    code = ad.get("JobStatus")
    if code not in _STATES:
        raise unparseable("condor_q -json", json.dumps(ad))
    state, word = _STATES[code]
    if code == 5:
        held = ad.get("HoldReason") or "no reason given"
        code_words = f" (HoldReasonCode {ad['HoldReasonCode']})" if "HoldReasonCode" in ad else ""
        return TaskStatus(state, f"held: {held}{code_words}", exceeded=hold_kill(ad))
    if code == 3:
        removed = ad.get("RemoveReason")
        return TaskStatus(state, f"removed: {removed}" if removed else "removed")
    if code == 4:
        if ad.get("ExitBySignal"):
            return TaskStatus(state, f"completed, killed by signal {ad.get('ExitSignal')}")
        exit_code = ad.get("ExitCode")
        return TaskStatus(state, f"completed, exit code {exit_code}", exit_code == 0)
    return TaskStatus(state, word)


def hold_kill(ad: dict[str, Any]) -> str | None:
    """The request a held job outgrew ("time" or "mem"), or None for any other hold."""
    code = ad.get("HoldReasonCode")
    kind = HOLD_KILLS.get(code) if isinstance(code, int) else None
    if kind == "mem" and ad.get("HoldReasonSubCode") == DISK_SUBCODE:
        return None
    return kind


def parse_ads(queue: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]],
              factories: Sequence[dict[str, Any]], jobs: Sequence[JobRecord]) -> PollResult:
    """Statuses of the chunks of ``jobs`` from ``condor_q`` and ``condor_history`` ads (the
    history read second, so it wins for a job that left the queue in between) and the
    factory ads of throttled clusters: a proc not materialized yet is pending."""
    by_cluster = {job["job_id"]: job for job in jobs}
    result: PollResult = {}
    for ad in (*queue, *history):
        job = by_cluster.get(str(ad.get("ClusterId")))
        proc = ad.get("ProcId")
        if job is None or not isinstance(proc, int) or not 0 <= proc < len(job["chunks"]):
            continue
        result[(job["job_id"], job["chunks"][proc])] = classify(ad)
    waiting = TaskStatus(TaskState.PENDING, "not materialized yet (max_materialize)")
    for ad in factories:
        job = by_cluster.get(str(ad.get("ClusterId")))
        first = ad.get("JobMaterializeNextProcId")
        if job is None or not isinstance(first, int):
            continue
        for chunk in job["chunks"][max(first, 0):]:
            result.setdefault((job["job_id"], chunk), waiting)
    return result


def cluster_constraint(jobs: Sequence[JobRecord]) -> str:
    """``ClusterId == 12 || ClusterId == 15``: the map's clusters, for one query."""
    return " || ".join(f"ClusterId == {int(job['job_id'])}" for job in jobs)


def quote_argument(text: str) -> str:
    """One argument in condor_submit's new ``arguments`` syntax (inside its double quotes):
    single-quoted, a ``'`` doubled, a ``"`` doubled."""
    return "'" + text.replace("'", "''").replace('"', '""') + "'"


def escape_macros(text: str) -> str:
    """``$`` as condor_submit reads it literally: every ``$(...)`` is a macro otherwise."""
    return text.replace("$", "$(DOLLAR)")


def contiguous(chunks: Sequence[int]) -> bool:
    return chunks[-1] - chunks[0] == len(chunks) - 1


def submit_description(spec: SubmitSpec, chunks: Sequence[int], throttle: int | None,
                       resource_lines: Sequence[str], setup: Sequence[str] = ()) -> str:
    """The submit description of one cluster running ``chunks`` (sorted): its procs are the
    chunks in order, each learning its chunk from CHUNK_VARIABLE (``$(Process)`` plus the
    first chunk, or its item where the chunks have gaps), after the ``setup`` lines. No part
    of the driver's environment is in it: that travels in script.py (0600, in the work_dir)."""
    if contiguous(chunks):
        source, offset, queue = "$(Process)", chunks[0], f"queue {len(chunks)}"
    else:
        source, offset = f"$({CHUNK_MACRO})", 0
        queue = f"queue {CHUNK_MACRO} in ({' '.join(map(str, chunks))})"
    # The shell appends to scheduler.log (HTCondor would truncate an output file) and runs
    # Python by its absolute path: HTCondor names a job's argv[0] condor_exec.exe.
    # Set-up lines make the program bash's, as one line (jobcommand writes their newlines
    # as escapes): the submit description's arguments end at the end of their line.
    command = (f"exec >>{shlex.quote(spec.scheduler_log)} 2>&1; " + node_shell_command(
        spec.python_path, spec.script_path, ["--env", CHUNK_VARIABLE, "--offset", str(offset)],
        setup, spec.mode))
    if "\n" in command or "\r" in command:
        raise ValueError(f"an HTCondor job's command is one line: a path of the map holds a "
                         f"line break ({command!r})")
    lines = [f"# poolparty_raster: the map {spec.job_name}",
             "universe = vanilla",
             "executable = /bin/sh",
             "transfer_executable = false",
             f'arguments = "-c {escape_macros(quote_argument(command))}"',
             # the work_dir, on a filesystem the nodes share, is the only channel
             "should_transfer_files = NO",
             "getenv = false",
             f'environment = "{CHUNK_VARIABLE}={source}"',
             f"initialdir = {escape_macros(spec.work_dir)}",
             "output = /dev/null",
             "error = /dev/null",
             f"batch_name = {spec.job_name}",
             "notification = never",
             *resource_lines]
    if throttle and throttle < len(chunks):
        lines.append(f"max_materialize = {throttle}")
    return "\n".join([*lines, queue]) + "\n"


class HTCondorScheduler(ArrayScheduler):
    name = "htcondor"

    def __init__(
            self, *,
            request_cpus: Annotated[int | None, "request_cpus, the cores of each job"] = None,
            request_memory: Annotated[str | None, "request_memory ('4GB'; a number is MB)"] = None,
            request_disk: Annotated[str | None, "request_disk ('2GB'; a number is KB)"] = None,
            gpus_per_task: Annotated[int | None, "request_gpus: GPUs for each chunk's job"] = None,
            allowed_execute_duration: Annotated[int | None, "allowed_execute_duration: seconds "
                                                            "a job may run before it is held"] = None,
            requirements: Annotated[str | None, "requirements, a ClassAd expression"] = None,
            accounting_group: Annotated[str | None, "accounting_group, the group charged"] = None,
            setup: SetupLines = (),
            submit_lines: Annotated[Sequence[str], "more submit description lines, as given"] = (),
            condor_call_timeout: Annotated[float, "seconds one HTCondor command may take"] = 60.0,
            condor_submit_path: Annotated[str, "the condor_submit command"] = "condor_submit",
            condor_q_path: Annotated[str, "the condor_q command"] = "condor_q",
            condor_history_path: Annotated[str, "the condor_history command"] = "condor_history",
            condor_rm_path: Annotated[str, "the condor_rm command"] = "condor_rm"):
        self.array = True  # a cluster of one proc is a job like any other
        for line in submit_lines:
            command = line.strip().lower().split("=", 1)[0].split(" ", 1)[0].strip()
            if command == "queue":
                raise ValueError(f"submit_lines may not hold a queue statement: {line!r} (the "
                                 f"pool writes its own)")
            if command in REQUEST_COMMANDS.values():  # a retry after a kill rewrites it
                raise ValueError(f"set {command}= as the pool's option, not in submit_lines: "
                                 f"{line!r}")
        self.resource_lines = [f"{command} = {value}" for command, value in (
            ("request_cpus", request_cpus), ("request_disk", request_disk),
            ("request_gpus", gpus_per_task), ("requirements", requirements),
            ("accounting_group", accounting_group)) if value is not None] + list(submit_lines)
        self.requests = {"time": None if allowed_execute_duration is None
                         else str(allowed_execute_duration),
                         "mem": None if request_memory is None else str(request_memory)}
        self.request_options = dict(REQUEST_COMMANDS)
        self.setup = checked_setup(setup)
        self.paths = {"condor_submit_path": condor_submit_path, "condor_q_path": condor_q_path,
                      "condor_history_path": condor_history_path,
                      "condor_rm_path": condor_rm_path}
        self.runner = CommandRunner(timeout=condor_call_timeout, pause=self.pause)
        self.user = getpass.getuser()
        self.submitter = Submitter(self, self.runner, parse_cluster_id, self._listed_clusters,
                                   classify_refusal)
        self.throttle = ArrayThrottle()

    def check_available(self) -> None:
        require_commands("HTCondor", self.paths)

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        if kind == "time":  # whole seconds
            return str(math.ceil(float(value) * factor))
        return scale_memory(value, factor)

    def request_lines(self, spec: SubmitSpec) -> list[str]:
        """request_memory and allowed_execute_duration: the pool's, or this submission's (a
        retry's after a kill)."""
        requests = {**self.requests, **spec.resources}
        return [f"{REQUEST_COMMANDS[kind]} = {value}" for kind, value in requests.items()
                if value is not None]

    def check_job_name(self, job_name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", job_name):
            raise ValueError(f"an HTCondor batch name here is letters, digits, '_', '.' and "
                             f"'-' only, not {job_name!r}")

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        # one cluster: a queue statement takes any chunks, and max_materialize throttles it
        for group, share in self.throttle.throttled(spec, [sorted(chunks)]):
            yield from self._submit_array(spec, group, share)

    def _submit_one_array(self, spec: SubmitSpec, chunks: list[int],
                          throttle: int | None) -> JobRecord:
        path = os.path.join(spec.work_dir, SUBMIT_FILE_NAME)
        text = submit_description(spec, chunks, throttle,
                                  [*self.request_lines(spec), *self.resource_lines], self.setup)
        # condor_submit reads it at once, on this machine: no need to reach the disk first
        files.atomic_write(path, text.encode(), durable=False)
        try:
            cluster = self.submitter.submit(spec, [self.paths["condor_submit_path"], "-terse",
                                                   path])
        finally:
            os.unlink(path)  # ours; the cluster holds its own copy of the description
        record: JobRecord = {"job_id": cluster, "chunks": chunks, "array": True}
        if throttle and throttle < len(chunks):
            record["throttle"] = throttle
        self.throttle.note(spec, [record])
        return record

    def _listed_clusters(self, spec: SubmitSpec) -> set[str] | None:
        """Clusters of the map's name, in the queue or the history; None when either failed."""
        constraint = f'JobBatchName == "{spec.job_name}" && Owner == "{self.user}"'
        found: set[str] = set()
        for path in ("condor_q_path", "condor_history_path"):
            result = self.runner.run_once(self._query_argv(path, constraint, ("ClusterId",)))
            if result is None or result.returncode != 0:
                return None
            try:
                found |= {str(ad["ClusterId"]) for ad in read_ads(result.stdout, path)
                          if "ClusterId" in ad}
            except SchedulerOutputError:
                return None
        return found

    # -- poll and cancel ---------------------------------------------------------------
    def _query_argv(self, path: str, constraint: str, attributes: Sequence[str],
                    factory: bool = False) -> list[str]:
        return [self.paths[path], *(["-factory"] if factory else []), "-json", "-attributes",
                ",".join(attributes), "-constraint", constraint]

    def _ads(self, path: str, constraint: str, attributes: Sequence[str],
             factory: bool = False) -> list[dict[str, Any]]:
        argv = self._query_argv(path, constraint, attributes, factory)
        result = self.runner.run(argv, retry=False)
        return read_ads(result.stdout, " ".join(argv[:2]))

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self.submitter.note(spec, jobs)
        if not jobs:
            return {}
        constraint = cluster_constraint(jobs)
        queue = self._ads("condor_q_path", constraint, ATTRIBUTES)
        history = self._ads("condor_history_path", constraint, ATTRIBUTES)
        throttled = [job for job in jobs if job.get("throttle")]
        factories = self._ads("condor_q_path", cluster_constraint(throttled),
                              FACTORY_ATTRIBUTES, factory=True) if throttled else []
        return parse_ads(queue, history, factories, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        if chunks is None:  # whole clusters: their procs not materialized yet too
            self.throttle.forget(spec)
            targets = [job["job_id"] for job in jobs]
        else:
            wanted = set(chunks)
            targets = [f"{job['job_id']}.{proc}" for job in jobs
                       for proc, chunk in enumerate(job["chunks"]) if chunk in wanted]
        if not targets:
            return
        # 1: nothing matched (already gone), the expected case; an unreachable schedd is retried
        self.runner.run([self.paths["condor_rm_path"], *targets], ok_codes=(0, 1),
                        transient=unanswered(classify_refusal))
