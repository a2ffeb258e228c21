"""Per-chunk records: where and how each chunk ran (host, the scheduler's job id and array
index, process, wall-clock start and end, CPU time, peak RSS, how it ended).

A record travels inside the chunk's result, as a trailer after the pickle of values and
exceptions (``pickle.loads`` ignores bytes after a pickle's STOP opcode, so every reader of
results is unchanged). It is therefore exactly as durable as the result, which is the commit
(a renamed file, or a record of a worker's result log and its hard link); it adds no file to
the work_dir, and it is archived with the result.

Trailer: the process's identity (UTF-8 JSON, the same for every chunk a process runs, encoded
once), then ``_TIMES`` (start, end, CPU seconds, peak RSS in bytes, exit code), then
``_FOOTER`` (the identity's length, the format version, ``MAGIC``). A pickle ends with its
STOP opcode (``.``), never with ``MAGIC``, so a result without a record is told apart.

Per chunk this costs a ``time.time`` at each end, one ``getrusage`` (CPU time and peak RSS;
a chunk's CPU time runs from the end of the process's previous chunk, so its claim is
counted, and a clock read at each end is saved), a one-byte write to ``/proc/self/clear_refs``
(Linux: it resets the process's peak RSS, so that each chunk of a long-lived worker reports
its own peak) and a ``struct.pack``: about 15 microseconds in a worker with threads, where
JSON a chunk cost 30 more.
"""
from __future__ import annotations

import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

MAGIC = b"PPCR"
VERSION = 1
_TIMES = struct.Struct("<dddQB")  # start, end, CPU seconds, peak RSS bytes, exit code
_FOOTER = struct.Struct("<IB4s")  # identity length, VERSION, MAGIC
EXITS = ("returned", "raised", "load_failed")  # exit codes 0, 1, 2
# ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024
_RESET_PEAK = "/proc/self/clear_refs"  # writing "5" resets the peak RSS (Linux 4.0+)


def _defined(value: str | None) -> str | None:
    """A scheduler variable's value, None where unset or Grid Engine's ``undefined``."""
    return None if value in (None, "", "undefined") else value


def scheduler_identity(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The scheduler's own names for the job this process runs in: ``scheduler``, ``job_id``
    (of the array, for an array element: what ``squeue``/``qstat`` and ``jobs.jsonl`` show),
    ``array_index`` and ``element_id`` (SLURM gives each array element an id of its own).
    ``local`` with no job id outside any scheduler (LocalPool's processes: the pid tells)."""
    if "SLURM_JOB_ID" in environ:
        return {"scheduler": "slurm",
                "job_id": _defined(environ.get("SLURM_ARRAY_JOB_ID")) or environ["SLURM_JOB_ID"],
                "array_index": _defined(environ.get("SLURM_ARRAY_TASK_ID")),
                "element_id": environ["SLURM_JOB_ID"]}
    if "PBS_JOBID" in environ:
        return {"scheduler": "pbs", "job_id": environ["PBS_JOBID"],
                "array_index": _defined(environ.get("PBS_ARRAY_INDEX")), "element_id": None}
    if "JOB_ID" in environ and ("SGE_TASK_ID" in environ or "SGE_ROOT" in environ):
        return {"scheduler": "sge", "job_id": environ["JOB_ID"],
                "array_index": _defined(environ.get("SGE_TASK_ID")), "element_id": None}
    if "AWS_BATCH_JOB_ID" in environ:
        return {"scheduler": "awsbatch", "job_id": environ["AWS_BATCH_JOB_ID"],
                "array_index": _defined(environ.get("AWS_BATCH_JOB_ARRAY_INDEX")),
                "element_id": None}
    return {"scheduler": "local", "job_id": None, "array_index": None, "element_id": None}


def process_identity(environ: Mapping[str, str], worker: int | None) -> bytes:
    """What every record of this process shares, encoded once: host, pid, the scheduler's
    ids, and the worker number in workers mode."""
    identity = {"host": socket.gethostname(), "pid": os.getpid(),
                **scheduler_identity(environ), "worker": worker}
    return json.dumps(identity, separators=(",", ":")).encode()


class ChunkClock:
    """Measures one chunk at a time in this process and encodes its record."""

    def __init__(self, identity: bytes):
        self.identity = identity
        self._footer = _FOOTER.pack(len(identity), VERSION, MAGIC)
        self._start = 0.0
        self._cpu: float | None = None  # the process's CPU seconds when the chunk started
        try:
            self._reset_fd = os.open(_RESET_PEAK, os.O_WRONLY)
        except OSError:  # not Linux, or not allowed: the peak is the process's so far
            self._reset_fd = -1

    def start(self) -> None:
        if self._reset_fd >= 0:
            try:
                os.write(self._reset_fd, b"5")
            except OSError:
                os.close(self._reset_fd)
                self._reset_fd = -1
        if self._cpu is None:  # a process's first chunk; later ones start where the last ended
            self._cpu = time.process_time()
        self._start = time.time()

    def finish(self, exit_code: int) -> bytes:
        """The record's trailer, to append to the chunk's result. One getrusage gives both
        the CPU time and the peak (in a worker with threads a clock read costs as much)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, self._cpu = usage.ru_utime + usage.ru_stime - self._cpu, usage.ru_utime + usage.ru_stime
        return (self.identity + _TIMES.pack(self._start, time.time(), cpu,
                                            usage.ru_maxrss * _MAXRSS_BYTES, exit_code)
                + self._footer)

    def close(self) -> None:
        if self._reset_fd >= 0:
            os.close(self._reset_fd)
            self._reset_fd = -1


def read_record(result: bytes) -> dict[str, Any] | None:
    """The record carried by a chunk's result; None when it has none (written by a version
    of this package before records) or it is not readable."""
    if len(result) < _FOOTER.size + _TIMES.size or result[-len(MAGIC):] != MAGIC:
        return None
    length, version, _ = _FOOTER.unpack_from(result, len(result) - _FOOTER.size)
    times_at = len(result) - _FOOTER.size - _TIMES.size
    if version != VERSION or length > times_at:
        return None
    try:
        record = json.loads(result[times_at - length:times_at])
    except ValueError:
        return None
    start, end, cpu, peak, exit_code = _TIMES.unpack_from(result, times_at)
    record.update(start=start, end=end, cpu=cpu, peak_rss=peak,
                  exit=EXITS[exit_code] if exit_code < len(EXITS) else str(exit_code))
    return record
