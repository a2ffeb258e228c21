"""Turning a chunk's stored outputs back into values and exceptions on the driver."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cloudpickle

from poolparty_raster.errors import RemoteTaskError, RemoteTraceback


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
