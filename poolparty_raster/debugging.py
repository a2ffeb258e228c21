"""Looking into a kept work_dir from Python: the function and argument of one task, and running
that task again in this process, under a debugger if wanted (``open_work_dir``; the command
line's ``rerun`` is built on it).

The function and the tasks are unpickled from ``tasks.zip``, which runs code: a work_dir is
opened only once it has passed the checks the driver makes (ownership.py).
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from poolparty_raster import names, ownership
from poolparty_raster.errors import WorkDirMismatchError
from poolparty_raster.manifest import Manifest
from poolparty_raster.outcome import add_note
from poolparty_raster.workdir import WorkDir


def checked_work_dir(path: str) -> tuple[WorkDir, Manifest]:
    """The work_dir at ``path`` and its manifest, once it has passed the driver's checks: not a
    symbolic link, this user's, writable by no one else, carrying the package's mark and a
    manifest. Raises FileNotFoundError, or WorkDirMismatchError (UnsafeWorkDirError for the
    ownership checks) naming what is wrong; nothing in the directory is read before."""
    ownership.check_private(path)
    mark = ownership.read_mark(path)
    work_dir = WorkDir(path)
    manifest = work_dir.read_manifest() if mark is not None else None
    if manifest is None:
        raise WorkDirMismatchError(f"{path} is not a poolparty_raster work_dir (no "
                                   f"{names.MARK_NAME} or no manifest.json)")
    return work_dir, manifest


def chunk_of(manifest: Manifest, index: int) -> int:
    """The chunk that holds task ``index`` (its input position); IndexError when the map has
    no such task."""
    if not 0 <= index < manifest.num_tasks:
        raise IndexError(f"task {index} is not in the map's 0..{manifest.num_tasks - 1}")
    return bisect.bisect_right(manifest.chunk_starts, index) - 1


class TaskCall(NamedTuple):
    """One task as the map ran it: ``function(argument)`` (a starmap's function takes the
    tuple of arguments as one argument, as it did on the node)."""

    function: Callable[[Any], Any]
    argument: Any


class KeptWorkDir:
    """A map's work_dir, opened to look at and run its tasks in this process. Close it (or use
    it in a ``with`` block) to release ``tasks.zip``."""

    def __init__(self, path: str):
        self._work_dir, self.manifest = checked_work_dir(path)
        self.path = self._work_dir.path
        self._function: Callable[[Any], Any] | None = None

    def __enter__(self) -> KeptWorkDir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._work_dir.close()

    @property
    def num_tasks(self) -> int:
        return self.manifest.num_tasks

    def task(self, index: int) -> TaskCall:
        """The function and argument of task ``index``, unpickled from ``tasks.zip``."""
        chunk = chunk_of(self.manifest, index)
        tasks = self._loaded(lambda: self._work_dir.load_tasks(chunk))
        return TaskCall(self._load_function(), tasks[index - self.manifest.chunk_starts[chunk]])

    def rerun(self, index: int) -> Any:
        """Run task ``index`` in this process: its value, or its exception raised here with
        this process's traceback (``pdb.pm()`` then steps into the task's frames)."""
        function, argument = self.task(index)
        return function(argument)

    def _load_function(self) -> Callable[[Any], Any]:
        if self._function is None:
            self._function = self._loaded(self._work_dir.load_function)
        return self._function

    def _loaded(self, load: Callable[[], Any]) -> Any:
        """What ``load`` unpickles; an error names the likely cause: a function imported by
        reference needs its module importable here, as it was on the nodes."""
        try:
            return load()
        except Exception as exc:
            add_note(exc, f"poolparty_raster: the map's function or tasks in {self.path} cannot "
                          "be loaded in this process; run it where your script's modules "
                          "import (its directory, or with PYTHONPATH set)")
            raise


def open_work_dir(path: str) -> KeptWorkDir:
    """Open a kept work_dir to debug one of its tasks::

        with poolparty_raster.open_work_dir("/project/me/run42") as kept:
            function, argument = kept.task(7)
            kept.rerun(7)          # the value, or task 7's exception raised here

    Refuses (UnsafeWorkDirError) a directory that is a symbolic link, another user's or
    writable by others, and (WorkDirMismatchError) one that is not a work_dir: opening it
    unpickles what it holds."""
    return KeptWorkDir(os.path.abspath(path))
