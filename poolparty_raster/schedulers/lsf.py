"""IBM Spectrum LSF: ``bsub -J "name[1-N]%K"`` arrays, ``bjobs -a -json``, ``bkill``.

Built from IBM's documentation of LSF 10.1 (no LSF cluster is available to test against here;
the bundled dummy follows the same documentation):
- an array is named ``name[index_list]%slot_limit``; indices start at 1 and may not exceed
  MAX_JOB_ARRAY_SIZE (lsb.params, default 1000; ``badmin showconf mbd`` prints it to any
  user); an element reads its index from ``LSB_JOBINDEX``;
- ``bsub`` prints ``Job <123> is submitted to queue <normal>.``; it passes the submitter's
  whole environment unless told ``-env none``;
- an element is ``123[4]`` to ``bkill``; ``bkill -J NAME 0`` kills every job of that name;
- ``bjobs -a`` lists finished jobs too (for CLEAN_PERIOD, an hour by default); with ``-json``
  and ``-o`` it prints ``{"COMMAND": "bjobs", "JOBS": n, "RECORDS": [{"JOBID": ...}, ...]}``,
  an array's elements as records of the array's JOBID, named ``name[4]``; ``-J NAME`` selects
  an array by its name without indices;
- ``bjobs -o``'s ``exit_reason`` is LSF's termination reason for an ended job, led by its
  keyword: ``TERM_MEMLIMIT: job killed after reaching LSF memory usage limit``,
  ``TERM_RUNLIMIT: job killed after reaching LSF run time limit`` (the table "Termination
  reasons displayed by bacct, bhist, and bjobs"); a job LSF killed at its run limit exits 140;
- ``bjobs`` exits non-zero, saying "No job found" or "is not found", when nothing matches;
- LSF before 10.1 has no ``-json`` (bjobs refuses it as an illegal option): ``-noheader -o
  "jobid stat delimiter='^'"`` prints a line a job instead, ``-`` for an empty field.
"""
from __future__ import annotations

import getpass
import json
import math
import re
import subprocess
from collections.abc import Iterator, Sequence
from typing import Annotated

from poolparty_raster.errors import SchedulerError, SchedulerOutputError
from poolparty_raster.schedulers.arrays import ArrayScheduler, ArrayThrottle
from poolparty_raster.schedulers.base import (CommandRunner, JobRecord, PollResult,
                                              Submitter, SubmitSpec, TaskState, TaskStatus,
                                              cancel_targets, index_ranges, refusal_kind,
                                              require_commands, split_by_span, unanswered,
                                              unparseable)
from poolparty_raster.schedulers.jobcommand import (SetupLines, checked_setup, node_shell_command,
                                                    scale_memory)

# The pending reason last: it is free text, which may hold the delimiter of -noheader lines.
BJOBS_FIELDS = "jobid stat job_name exit_code exit_reason pend_reason"
EXIT_REASON_FIELD = "exit_reason"
DEFAULT_MAX_ARRAY_SIZE = 1000  # lsb.params MAX_JOB_ARRAY_SIZE's default
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
_ELEMENT = re.compile(r"^(?P<name>.*)\[(?P<index>\d+)\]$")
_STATES = {"PEND": TaskState.PENDING, "WAIT": TaskState.PENDING,
           "RUN": TaskState.RUNNING, "PROV": TaskState.RUNNING,
           # suspended while running (by its owner or an admin; by LSF for load): it goes on
           "USUSP": TaskState.RUNNING, "SSUSP": TaskState.RUNNING,
           # suspended while pending (held): nothing releases it for the pool
           "PSUSP": TaskState.ERROR,
           # its host is out of reach: the job may never report again; the result decides
           # whether a duplicate ran
           "UNKWN": TaskState.ERROR,
           "DONE": TaskState.FINISHED, "EXIT": TaskState.FINISHED,
           # killed while its host was unreachable, or requeued under a new id: ended here
           "ZOMBI": TaskState.FINISHED}
# bsub refusals that pass once some of the user's jobs have ended (MAX_PEND_JOBS and kin)
LIMIT_MESSAGES = ("Pending job threshold reached", "pending job limit")
# failures before the request reached mbatchd: restarting, busy, unreachable
TRANSIENT_MESSAGES = ("batch system daemon not responding", "Cannot connect to LSF",
                      "LSF is down", "Connection refused")
# ... and after it was sent: the job may be in (bjobs -a will tell)
ANSWER_LOST_MESSAGES = ("Communication time out", "timed out")
NOTHING_LISTED = ("No job found", "is not found", "No matching job found")
# LSF before 10.1 has no bjobs -json: its -o output, one delimited line a job, instead
TEXT_DELIMITER = "^"


def classify_refusal(stderr: str) -> str:
    """What a bsub failure means. bsub says "Job not submitted." when mbatchd judged the job;
    any other failure may have happened after the request went out ("unknown")."""
    otherwise = "permanent" if "not submitted" in stderr else "unknown"
    return refusal_kind(stderr, (("limit", LIMIT_MESSAGES), ("answer_lost", ANSWER_LOST_MESSAGES),
                                 ("transient", TRANSIENT_MESSAGES)), otherwise)


def parse_job_id(stdout: str) -> str | None:
    """``Job <123> is submitted to queue <normal>.`` -> ``123``."""
    match = _SUBMITTED.search(stdout)
    return match.group(1) if match else None


def parse_max_array_size(text: str) -> int | None:
    """``MAX_JOB_ARRAY_SIZE = 1000`` from ``badmin showconf mbd``."""
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "MAX_JOB_ARRAY_SIZE" and value.strip().isdigit():
            return int(value.strip())
    return None


# The exit code of a job LSF killed at its run limit (TERM_RUNLIMIT: 128 + SIGUSR2): all
# there is to go by where bjobs gives no exit_reason.
RUN_LIMIT_EXIT_CODE = "140"
# Termination reasons of a kill at a request retry_resources can enlarge (-M, -W). The CPU
# time (TERM_CPULIMIT) and swap (TERM_SWAP) limits are requests the pool does not make.
REQUEST_KILLS = {"TERM_MEMLIMIT": "mem", "TERM_RUNLIMIT": "time"}
_TERM_KEYWORD = re.compile(r"\bTERM_[A-Z_]+")


def run_limit_scaled(text: str, factor: float) -> str:
    """bsub -W's ``[hours:]minutes`` times ``factor``, rounded up to the minute."""
    hours, _, minutes = text.strip().rpartition(":")
    total = math.ceil((float(hours or 0) * 60 + float(minutes)) * factor)
    return f"{total // 60}:{total % 60:02d}"


def killed_for(state: str, exit_code: str, exit_reason: str) -> str | None:
    """The request ("time" or "mem") LSF killed an ended job for outgrowing, else None. The
    termination reason's keyword decides; without one (an LSF whose bjobs lacks exit_reason),
    exit code 140 is the run limit."""
    if state != "EXIT":
        return None
    keyword = _TERM_KEYWORD.search(exit_reason)
    if keyword:
        return REQUEST_KILLS.get(keyword.group())
    return "time" if exit_code == RUN_LIMIT_EXIT_CODE else None


def classify(state: str, exit_code: str, reason: str, exit_reason: str = "") -> TaskStatus:
    """Normalise a bjobs STAT, with its exit code, pending reason and termination reason
    (exit_reason) for the log."""
    words = " ".join(w for w in (state, f"exit {exit_code}" if exit_code else "", reason,
                                 exit_reason) if w)
    return TaskStatus(_STATES[state], words, state == "DONE",
                      killed_for(state, exit_code, exit_reason))


def read_records(text: str) -> list[dict[str, str]]:
    """The RECORDS of ``bjobs -json`` output."""
    try:
        records = json.loads(text)["RECORDS"] if text.strip() else []
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise unparseable("bjobs -json", text[:300]) from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise unparseable("bjobs -json", text[:300])
    return records


def read_text_records(text: str, fields: str) -> list[dict[str, str]]:
    """The lines of ``bjobs -noheader -o "<fields> delimiter='^'"`` as the records of -json
    ("-" is an empty field). The last field may hold the delimiter: the pending reason is
    last."""
    names = [name.upper() for name in fields.split()]
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = line.split(TEXT_DELIMITER, len(names) - 1)
        if len(values) != len(names):
            raise unparseable("bjobs -noheader -o", line)
        records.append({name: "" if value.strip() == "-" else value.strip()
                        for name, value in zip(names, values)})
    return records


def field_refused(returncode: int, stderr: str, field: str) -> bool:
    """Whether bjobs refused an -o field, naming it, as an LSF older than the field does."""
    return returncode != 0 and field in stderr.lower()


def without_field(fields: str, field: str) -> str:
    """An -o field list less ``field``."""
    return " ".join(name for name in fields.split() if name != field)


def json_refused(returncode: int, stderr: str) -> bool:
    """Whether bjobs refused -json, as an LSF before 10.1 does (the other options of the call
    are older)."""
    return returncode != 0 and any(words in stderr.lower() for words in (
        "illegal option", "invalid option", "unknown option"))


def listing(returncode: int, stdout: str, stderr: str) -> str | None:
    """bjobs' output: its JSON; "" when it found no job (it exits 255 saying so); None when
    it failed."""
    if returncode == 0:
        return stdout
    return "" if any(message in stderr for message in NOTHING_LISTED) else None


def parse_bjobs_json(text: str, jobs: Sequence[JobRecord]) -> PollResult:
    """``bjobs -a -json -o BJOBS_FIELDS`` -> statuses of the elements of ``jobs``. A record
    with an ERROR field (a job that is not found) is skipped."""
    return parse_bjobs_records(read_records(text), jobs)


def parse_bjobs_records(records: Sequence[dict[str, str]], jobs: Sequence[JobRecord]
                        ) -> PollResult:
    """Records of ``bjobs -json`` (or lines read by :func:`read_text_records`) -> statuses of
    the elements of ``jobs``."""
    by_id = {job["job_id"]: job for job in jobs}
    result: PollResult = {}
    for record in records:
        if "ERROR" in record:
            continue
        job = by_id.get(record.get("JOBID", ""))
        element = _ELEMENT.match(record.get("JOB_NAME", ""))
        if job is None or element is None:
            continue
        state = record.get("STAT", "")
        if state not in _STATES:
            raise unparseable("bjobs", json.dumps(record))
        status = classify(state, record.get("EXIT_CODE", ""), record.get("PEND_REASON", ""),
                          record.get("EXIT_REASON", ""))
        result[(job["job_id"], job["offset"] + int(element["index"]))] = status
    return result


def element_id(job: JobRecord, chunk: int) -> str:
    """Array ``1234`` at offset 9 and chunk 12 -> ``1234[3]``, as bkill names an element."""
    return f"{job['job_id']}[{chunk - job['offset']}]"


class LsfScheduler(ArrayScheduler):
    name = "lsf"

    def __init__(
            self, *,
            queue: Annotated[str | None, "bsub -q"] = None,
            resources: Annotated[Sequence[str], "bsub -R requirements, one each ('span[hosts=1]')"] = (),
            walltime: Annotated[str | None, "bsub -W, a job's run limit ('[hours:]minutes')"] = None,
            memory: Annotated[str | None, "bsub -M, the memory limit ('4GB')"] = None,
            project: Annotated[str | None, "bsub -P, the project charged"] = None,
            gpus_per_task: Annotated[int | None, "bsub -gpu \"num=N\": GPUs for each chunk's job"] = None,
            setup: SetupLines = (),
            bsub_args: Annotated[Sequence[str], "more bsub arguments, as given"] = (),
            max_array_size: Annotated[int | None, "the site's MAX_JOB_ARRAY_SIZE (default: asked)"] = None,
            lsf_call_timeout: Annotated[float, "seconds one LSF command may take"] = 60.0,
            bsub_path: Annotated[str, "the bsub command"] = "bsub",
            bjobs_path: Annotated[str, "the bjobs command"] = "bjobs",
            bkill_path: Annotated[str, "the bkill command"] = "bkill",
            badmin_path: Annotated[str, "the badmin command (reads MAX_JOB_ARRAY_SIZE)"] = "badmin"):
        self.array = True  # always: an array of one element is a job like any other
        args: list[str] = []
        for flag, value in (("-q", queue), ("-P", project)):
            if value is not None:
                args += [flag, value]
        if gpus_per_task:
            args += ["-gpu", f"num={gpus_per_task}"]
        self.requests = {"time": walltime, "mem": memory}
        self.request_options = {"time": "walltime", "mem": "memory"}
        self.setup = checked_setup(setup)
        for requirement in resources:
            args += ["-R", requirement]
        self.resource_args = args + list(bsub_args)
        self.paths = {"bsub_path": bsub_path, "bjobs_path": bjobs_path, "bkill_path": bkill_path}
        self.badmin_path = badmin_path
        self.runner = CommandRunner(timeout=lsf_call_timeout, pause=self.pause)
        self.user = getpass.getuser()
        self.submitter = Submitter(self, self.runner, parse_job_id, self._listed_job_ids,
                                   classify_refusal)
        self.throttle = ArrayThrottle()
        self._max_array_size = max_array_size
        self.json_output = True  # until bjobs refuses -json (LSF before 10.1)
        self.poll_fields = BJOBS_FIELDS  # less exit_reason where bjobs does not know it

    def check_available(self) -> None:
        require_commands("LSF", self.paths)

    def scale_request(self, kind: str, value: str, factor: float) -> str:
        return run_limit_scaled(value, factor) if kind == "time" else scale_memory(value, factor)

    def max_array_size(self) -> int:
        """The site's MAX_JOB_ARRAY_SIZE, asked once: badmin's answer, else LSF's default."""
        if self._max_array_size is None:
            result = self.runner.run_once([self.badmin_path, "showconf", "mbd"])
            answered = result is not None and result.returncode == 0
            size = parse_max_array_size(result.stdout) if answered else None
            self._max_array_size = size or DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    # -- submit ------------------------------------------------------------------------
    def submit(self, spec: SubmitSpec, chunks: Sequence[int]) -> Iterator[JobRecord]:
        groups = split_by_span(sorted(chunks), self.max_array_size())
        for group, share in self.throttle.throttled(spec, groups):
            yield from self._submit_array(spec, group, share)

    def _submit_one_array(self, spec: SubmitSpec, chunks: list[int],
                          throttle: int | None) -> JobRecord:
        offset = chunks[0] - 1  # LSF's indices start at 1
        limit = f"%{throttle}" if throttle else ""
        name = f"{spec.job_name}[{index_ranges([c - offset for c in chunks])}]{limit}"
        # bsub hands its command to a shell: one quoted line, as SLURM's --wrap
        command = node_shell_command(spec.python_path, spec.script_path,
                                     ["--env", "LSB_JOBINDEX", "--offset", str(offset)],
                                     self.setup, spec.mode)
        requests = {**self.requests, **spec.resources}  # the pool's, or a retry's
        request_args = [arg for flag, kind in (("-W", "time"), ("-M", "mem"))
                        if requests.get(kind) is not None for arg in (flag, requests[kind])]
        # -env none: the driver's environment travels in script.py (0600), not in LSF's spool
        argv = [self.paths["bsub_path"], "-J", name, "-o", spec.scheduler_log, "-env", "none",
                *self.resource_args, *request_args, command]
        record: JobRecord = {"job_id": self.submitter.submit(spec, argv), "chunks": chunks,
                             "array": True, "offset": offset}
        self.throttle.note(spec, [record])
        return record

    def _bjobs_argv(self, spec: SubmitSpec, fields: str) -> list[str]:
        output = ["-json", "-o", fields] if self.json_output else [
            "-noheader", "-o", f"{fields} delimiter='{TEXT_DELIMITER}'"]
        return [self.paths["bjobs_path"], "-a", *output, "-u", self.user, "-J", spec.job_name]

    def _records(self, text: str, fields: str) -> list[dict[str, str]]:
        return read_records(text) if self.json_output else read_text_records(text, fields)

    def _bjobs(self, spec: SubmitSpec, fields: str, once: bool
               ) -> tuple[list[str], subprocess.CompletedProcess[str] | None, str]:
        """Run the map's listing of ``fields``; where bjobs refuses -json, again (and from now
        on) with the delimited text output; where it refuses exit_reason, again (and from now
        on) without it. Returns the call, its result and the fields it asked for."""
        for _ in range(3):  # each refusal is learnt once
            argv = self._bjobs_argv(spec, fields)
            result = (self.runner.run_once(argv) if once else
                      self.runner.run(argv, ok_codes=(0, 255), retry=False))
            if result is None:
                break
            if self.json_output and json_refused(result.returncode, result.stderr):
                self.json_output = False
            elif EXIT_REASON_FIELD in fields.split() and field_refused(
                    result.returncode, result.stderr, EXIT_REASON_FIELD):
                fields = self.poll_fields = without_field(fields, EXIT_REASON_FIELD)
            else:
                break
        return argv, result, fields

    def _listed_job_ids(self, spec: SubmitSpec) -> set[str] | None:
        """Ids of the map's jobs (finished ones too); None when bjobs did not answer."""
        _, result, _ = self._bjobs(spec, "jobid", once=True)
        text = None if result is None else listing(result.returncode, result.stdout, result.stderr)
        if text is None:
            return None
        try:
            return {r["JOBID"] for r in self._records(text, "jobid")
                    if r.get("JOBID") and "ERROR" not in r}
        except SchedulerOutputError:
            return None

    # -- poll and cancel ---------------------------------------------------------------
    def poll(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> PollResult:
        self.submitter.note(spec, jobs)
        argv, result, fields = self._bjobs(spec, self.poll_fields, once=False)
        assert result is not None  # runner.run raises rather than time out
        text = listing(result.returncode, result.stdout, result.stderr)
        if text is None:
            raise SchedulerError(f"`{' '.join(argv)}` exited {result.returncode}: "
                                 f"{result.stderr.strip()[-2000:]}")
        return parse_bjobs_records(self._records(text, fields), jobs)

    def cancel(self, spec: SubmitSpec, jobs: Sequence[JobRecord],
               chunks: Sequence[int] | None = None) -> None:
        if chunks is None:  # by name: also catches a job whose submission seemed to fail
            self.throttle.forget(spec)
            targets = ["-J", spec.job_name, "0"]
        else:
            targets = cancel_targets(jobs, chunks, element_id)
            if not targets:
                return
        # 255: already finished or not found, the expected case
        self.runner.run([self.paths["bkill_path"], *targets], ok_codes=(0, 255),
                        transient=unanswered(classify_refusal))
