"""PBS Pro / OpenPBS: ``qsub -J`` arrays (or plain jobs), ``qstat -t -f -F json -x``, ``qdel``,
``qselect``.

Built from PBS Pro's documentation (no PBS server is available to test against here; the
bundled dummy follows the same documentation):
- arrays need at least two elements, so a lone chunk is submitted as a plain job;
- ``qsub`` prints ``123[].server`` for an array and ``124.server`` for a job; sub-jobs are
  ``123[4].server`` with ``PBS_ARRAY_INDEX=4``;
- ``qstat -x`` includes finished jobs; ``-t`` lists sub-jobs; ``-F json`` is machine-readable;
- ``qstat -u`` belongs to the alternate (tabular) displays only: with ``-f`` OpenPBS prints
  that table, not JSON. The jobs of a user and name are listed by ``qselect -N NAME -u USER
  -x``, one id per line (arrays as ``123[].server``; sub-jobs only with ``-T``).
"""
from __future__ import annotations

import getpass
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Annotated

from poolparty_raster.schedulers.arrays import ArrayScheduler, ArrayThrottle
from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult, Submitter,
                                              SubmitSpec, TaskState, TaskStatus, cancel_targets,
                                              contiguous_runs, require_commands, refusal_kind,
                                              split_by_span, unanswered, unparseable)
from poolparty_raster.schedulers.jobcommand import (SetupLines, checked_setup, node_argv,
                                                    scale_clock, scale_memory)

_JOB_ID = re.compile(r"^\d+(\[\])?(\.\S+)?$")
MAX_ARRAY_SIZE = 10_000  # PBS Pro's default max_array_size
# qsub refusals that pass once some of the user's jobs have ended (queue and server limits)
LIMIT_MESSAGES = ("Maximum number of jobs already in queue", "would exceed",
                  "max_queued", "max_run")
TRANSIENT_MESSAGES = ("cannot connect to server", "Connection refused", "Server is busy")
ANSWER_LOST_MESSAGES = ("End of File", "timed out")  # sent; qstat -x will tell


def classify_refusal(stderr: str) -> str:
    return refusal_kind(stderr, (("limit", LIMIT_MESSAGES), ("answer_lost", ANSWER_LOST_MESSAGES),
                                 ("transient", TRANSIENT_MESSAGES)))


def parse_job_id(stdout: str) -> str | None:
    """``qsub`` prints ``123.server`` for a job and ``123[].server`` for an array."""
    job_id = stdout.strip()
    return job_id if _JOB_ID.match(job_id) else None

# PBS Pro's Exit_status when the MoM killed a job at a limit (JOB_EXEC_KILL_*): walltime,
# mem, vmem.
EXCEEDED = {-29: "time", -27: "mem", -26: "mem"}

_SUBJOB = re.compile(r"^(?P<base>[^\[]+)\[(?P<index>\d*)\](?P<server>.*)$")
_STATES = {"Q": TaskState.PENDING, "W": TaskState.PENDING, "T": TaskState.PENDING,
           "M": TaskState.PENDING, "B": TaskState.RUNNING, "R": TaskState.RUNNING,
           "E": TaskState.RUNNING, "S": TaskState.RUNNING, "U": TaskState.RUNNING,
           "F": TaskState.FINISHED, "X": TaskState.FINISHED,
           # held: nothing will release it for us; a fresh submission will run
           "H": TaskState.ERROR}


def parse_qstat_json(text: str, jobs: Sequence[JobRecord]) -> PollResult:
    by_id = {job["job_id"]: job for job in jobs}
    try:
        listing = json.loads(text).get("Jobs", {}) if text.strip() else {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise unparseable("qstat -f -F json", text[:300]) from exc
    result: PollResult = {}
    for name, fields in listing.items():
        letter = fields.get("job_state", "")
        if letter not in _STATES:
            raise unparseable("qstat -f -F json", f"{name}: job_state {letter!r}")
        reason = " ".join(str(fields[k]) for k in ("comment", "Exit_status") if k in fields)
        succeeded = _STATES[letter] is TaskState.FINISHED and fields.get("Exit_status") == 0
        status = TaskStatus(_STATES[letter], f"{letter} {reason}".strip(), succeeded,
                            EXCEEDED.get(fields.get("Exit_status")) if letter in "FX" else None)
        match = _SUBJOB.match(name)
        if match and match["index"]:
            parent = f"{match['base']}[]{match['server']}"
            job = by_id.get(parent)
            if job is not None:
                result[(parent, job["offset"] + int(match["index"]))] = status
        elif name in by_id and not by_id[name].get("array"):
            result[(name, by_id[name]["chunks"][0])] = status
    return result


class PbsScheduler(ArrayScheduler):
    name = "pbs"

    def __init__(
            self, *,
            array: Annotated[bool, "one qsub -J array per map, else one job per chunk"] = True,
            queue: Annotated[str | None, "qsub -q"] = None,
            resources: Annotated[Sequence[str], "qsub -l requests ('select=1:ncpus=2:mem=4gb')"] = (),
            walltime: Annotated[str | None, "qsub -l walltime ('1:00:00')"] = None,
            mem: Annotated[str | None, "qsub -l mem, the job's memory ('4gb')"] = None,
            gpus_per_task: Annotated[int | None, "GPUs for each chunk's job: ngpus=N in its "
                                                  "select (one is added if none is given)"] = None,
            setup: SetupLines = (),
            account: Annotated[str | None, "qsub -A"] = None,
            qsub_args: Annotated[Sequence[str], "more qsub arguments, as given"] = (),
            pbs_call_timeout: Annotated[float, "seconds one PBS command may take"] = 60.0,
            qsub_path: Annotated[str, "the qsub command"] = "qsub",
            qstat_path: Annotated[str, "the qstat command"] = "qstat",
            qdel_path: Annotated[str, "the qdel command"] = "qdel",
            qselect_path: Annotated[str | None, "the qselect command (default: beside qsub)"] = None):
        self.array = array
        args: list[str] = []
        if queue:
            args += ["-q", queue]
        selects = [r for r in resources if r.startswith("select=")]
        if gpus_per_task and not selects:
            resources = [*resources, "select=1"]
        for resource in resources:
            if gpus_per_task and resource.startswith("select="):
                resource = f"{resource}:ngpus={gpus_per_task}"
            args += ["-l", resource]
        self.requests = {"time": walltime, "mem": mem}
        self.request_options = {"time": "walltime", "mem": "mem"}
        self.setup = checked_setup(setup)
        if account:
            args += ["-A", account]
        self.resource_args = args + list(qsub_args)
        self.paths = {"qsub_path": qsub_path, "qstat_path": qstat_path, "qdel_path": qdel_path,
                      "qselect_path": qselect_path or os.path.join(os.path.dirname(qsub_path),
                                                                   "qselect")}
        self.runner = CommandRunner(timeout=pbs_call_timeout, pause=self.pause)
        self.user = getpass.getuser()
        self.submitter = Submitter(self, self.runner, parse_job_id, self._listed_job_ids,
                                   classify_refusal)
        self.throttle = ArrayThrottle()

    def check_available(self) -> None:
        require_commands("PBS", self.paths)

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        return scale_clock(value, factor, 1) if kind == "time" else scale_memory(value, factor)

    def _request_args(self, spec: SubmitSpec) -> list[str]:
        """-l walltime and -l mem: the pool's, or this submission's (a retry's)."""
        requests = {**self.requests, **spec.resources}
        return [arg for kind, value in requests.items() if value is not None
                for arg in ("-l", f"{self.request_options[kind]}={value}")]

    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        if not self.array:
            for chunk in chunks:
                yield self._qsub(spec, [chunk], None)
            return
        groups = [group for first, last in contiguous_runs(sorted(chunks))
                  for group in split_by_span(list(range(first, last + 1)), MAX_ARRAY_SIZE)]
        for group, share in self.throttle.throttled(spec, groups):
            # PBS arrays need at least two elements
            yield self._qsub(spec, group, group[0] if len(group) > 1 else None, share)

    def _qsub(self, spec: SubmitSpec, chunks: list[int], offset: int | None,
              share: int | None = None) -> JobRecord:
        argv = [self.paths["qsub_path"], "-N", spec.job_name, "-o", spec.scheduler_log, "-j", "oe"]
        if offset is None:
            worker_args = [str(chunks[0])]
        else:
            throttle = f"%{share}" if share else ""
            argv += ["-J", f"0-{len(chunks) - 1}{throttle}"]
            worker_args = ["--env", "PBS_ARRAY_INDEX", "--offset", str(offset)]
        argv += [*self.resource_args, *self._request_args(spec), "--",
                 *node_argv(spec.python_path, spec.script_path, worker_args, self.setup, spec.mode)]
        record: JobRecord = {"job_id": self.submitter.submit(spec, argv), "chunks": chunks,
                             "array": offset is not None}
        if offset is not None:
            record["offset"] = offset
        self.throttle.note(spec, [record])  # a lone chunk's plain job takes a share too
        return record

    def _listed_job_ids(self, spec: SubmitSpec) -> set[str] | None:
        """Ids of this user's jobs and arrays named like the map (finished ones too); None
        when qselect did not answer, or answered something that is not a list of ids."""
        argv = [self.paths["qselect_path"], "-N", spec.job_name, "-u", self.user, "-x"]
        result = self.runner.run_once(argv)
        if result is None or result.returncode != 0:
            return None
        ids = set(result.stdout.split())
        return ids if all(_JOB_ID.match(job_id) for job_id in ids) else None

    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self.submitter.note(spec, jobs)
        if not jobs:
            return {}
        argv = [self.paths["qstat_path"], "-t", "-f", "-F", "json", "-x", *(j["job_id"] for j in jobs)]
        # qstat exits non-zero when some ids are unknown (purged) but still lists the others
        result = self.runner.run(argv, ok_codes=(0, 35, 153), retry=False)
        return parse_qstat_json(result.stdout, jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        if chunks is None:
            self.throttle.forget(spec)
        targets = cancel_targets(jobs, chunks, _subjob_id)
        if targets:
            # 35 and 153: already finished or unknown, the expected case
            self.runner.run([self.paths["qdel_path"], *targets], ok_codes=(0, 1, 35, 153),
                            transient=unanswered(classify_refusal))


def _subjob_id(job: JobRecord, chunk: int) -> str:
    """``123[].server`` and chunk 7 at offset 5 -> ``123[2].server``."""
    base, _, server = job["job_id"].partition("[]")
    return f"{base}[{chunk - job['offset']}]{server}"
