"""A chunk's outcome: its result file as a worker encodes it, and its values and exceptions
as the driver turns them back."""
from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from typing import Any

import cloudpickle

from poolparty_raster.errors import RemoteTaskError, RemoteTraceback


def dump_results(values: list[bytes | None], errors: list[dict[str, Any]]) -> bytes:
    """A chunk's result file: each task's pickled value (None where it raised) and the
    records of the exceptions raised. They travel together because the result is the commit:
    an ``.exception`` file (kept for ``inspect`` and the archive) may come from another run of
    the chunk, one killed before its result, or a straggler's second run."""
    return pickle.dumps((values, errors), protocol=5)


def load_results(data: bytes) -> tuple[list[bytes | None], list[dict[str, Any]]]:
    """(pickled values, exception records) of a chunk's result file; an error here means
    the file is damaged (each value is unpickled on its own: loaded_values)."""
    return pickle.loads(data)


def dump_exceptions(records: list[dict[str, Any]]) -> bytes:
    return pickle.dumps(records, protocol=5)


def load_exceptions(data: bytes) -> list[dict[str, Any]]:
    return pickle.loads(data)


@dataclass
class ChunkOutcome:
    """The values of one chunk's tasks; ``errors`` maps a task index to its exception."""

    chunk: int
    first_index: int
    values: list[Any]
    errors: dict[int, BaseException]


def add_note(exc: BaseException, note: str) -> None:
    """PEP 678 ``add_note``, also on Python 3.10."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10 only
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def rebuild_exception(record: dict[str, Any], work_dir: str | None) -> BaseException:
    """The task's own exception where it unpickles, a :class:`RemoteTaskError` where not,
    with the remote traceback as ``__cause__`` and a note naming the task and the work_dir."""
    exc: BaseException | None = None
    if record.get("pickled") is not None:
        try:
            exc = cloudpickle.loads(record["pickled"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteTaskError(f"{record['module']}.{record['type']}", record["message"])
    exc.__cause__ = RemoteTraceback(record["traceback"])
    where = f"; its work_dir is kept: {work_dir}" if work_dir else ""
    add_note(exc, f"poolparty_raster: raised by task {record['index']}{where}")
    return exc


def loaded_values(pickled: list[bytes | None], first_index: int,
                  errors: dict[int, BaseException]) -> list[Any]:
    """Each task's value unpickled. A value that does not unpickle here (a library of
    another version on the driver: numpy's "dtype size changed" is a ValueError) is that
    task's failure, not a damaged file: its exception goes into ``errors``, noted."""
    values: list[Any] = []
    for offset, data in enumerate(pickled):
        try:
            values.append(None if data is None else cloudpickle.loads(data))
        except Exception as exc:
            values.append(None)
            add_note(exc, f"poolparty_raster: task {first_index + offset} ran, but its result "
                          "cannot be unpickled in the driver (is the same software installed "
                          "where the tasks ran?)")
            errors[first_index + offset] = exc
    return values
