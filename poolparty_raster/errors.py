"""The exceptions a caller of a pool may see."""
from __future__ import annotations

from typing import Any

# multiprocessing's own classes, re-exported: a task's exception has a RemoteTraceback
# (attribute ``tb``) as its ``__cause__``, and a result that cannot be pickled raises
# MaybeEncodingError, as with multiprocessing.Pool, whose users catch and inspect these very
# classes (CPython's Pool tests check the exact type). Imported on first use: a worker imports
# this module, and multiprocessing.pool would add 12 ms to every interpreter start.
MULTIPROCESSING_CLASSES = ("MaybeEncodingError", "RemoteTraceback")


def __getattr__(name: str) -> Any:
    if name in MULTIPROCESSING_CLASSES:
        import multiprocessing.pool
        return getattr(multiprocessing.pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PoolPartyError(Exception):
    """Base class of this package's own errors."""


class TaskLostError(PoolPartyError):
    """Tasks died without a result more often than ``max_num_resubmissions`` allowed.

    Where other tasks of the map raised, the map raises the first of their exceptions
    instead (the caller catches their own exception type, as with multiprocessing), with this
    error's message, naming the lost tasks and what the scheduler said, in a note; an
    executor's futures of the lost tasks get this error.

    ``task_indices`` are the lost tasks' positions in the input, ``attempts`` how often each
    of their chunks ran, ``stderr_tails`` the last lines each attempt wrote to stderr.
    """

    def __init__(self, message: str, task_indices: list[int], attempts: dict[int, int],
                 stderr_tails: dict[int, list[str]], work_dir: str):
        super().__init__(message)
        self.task_indices = task_indices
        self.attempts = attempts
        self.stderr_tails = stderr_tails
        self.work_dir = work_dir


class SchedulerError(PoolPartyError):
    """A scheduler command failed in a way no retry or resubmission can fix."""


class SchedulerUnavailableError(SchedulerError):
    """The scheduler's commands are missing or its controller does not answer."""


class SchedulerOutputError(SchedulerError):
    """A scheduler command printed something this package cannot read (the line is quoted)."""


class SubmissionRefused(SchedulerError):
    """The scheduler refused a submission for now (a per-user or queue limit).

    The engine keeps the refused chunks and submits them again later, backing off; after
    ``give_up_after`` seconds of refusals while none of the map's jobs is queued it fails the map.
    """

    def __init__(self, message: str, give_up_after: float | None = None):
        super().__init__(message)
        self.give_up_after = give_up_after


class MapTerminated(PoolPartyError):
    """The pool was terminated while this map ran (its work_dir is kept)."""


class WorkDirMismatchError(PoolPartyError):
    """The work_dir holds a different map than the one asked for."""


class UnsafeWorkDirError(WorkDirMismatchError):
    """The work_dir is a symbolic link, another user's directory, or writable by others:
    nothing is read from it or written into it."""


class WorkDirFullError(PoolPartyError):
    """The work_dir's filesystem is full or over quota (the OSError is the ``__cause__``).
    Every finished result is kept: free space and run the same map again to resume it."""


class WorkDirBusyError(PoolPartyError):
    """Another driver is running a map in this work_dir right now."""


class RemoteTaskError(PoolPartyError):
    """Stands in for a task's exception that could not be unpickled on the driver."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
