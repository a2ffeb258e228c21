"""SerialPool: the pool contract, run in the calling process (so pdb can step into a task)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from poolparty_raster.mapping import materialise
from poolparty_raster.outcome import ChunkOutcome, add_note
from poolparty_raster.pools.base import Pool
from poolparty_raster.pools.options import check_names
from poolparty_raster.settings import MapSettings


class _SerialHandle:
    """Runs the tasks one by one when iterated; nothing is pickled and nothing is written."""

    def __init__(self, func: Callable[[Any], Any], tasks: list[Any]):
        self._func = func
        self._tasks = tasks

    def completed(self) -> Iterator[ChunkOutcome]:
        for index, task in enumerate(self._tasks):
            try:
                outcome = ChunkOutcome(index, index, [self._func(task)], {})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a task's failure, as on a worker
                add_note(exc, f"poolparty_raster: raised by task {index}")
                outcome = ChunkOutcome(index, index, [None], {index: exc})
            yield outcome

    ordered = completed

    def abandon(self) -> None:
        """Nothing runs unless it is asked for: nothing to cancel."""


class SerialPool(Pool):
    """Runs every task in the calling process, in order, with the same semantics as the other
    pools: results in order, a task's exception re-raised (the first by index) after all ran."""

    def __init__(self, *, verbose: bool = False, progress: bool | None = None, **unknown: Any):
        check_names("SerialPool", unknown, {"verbose": verbose, "progress": progress})
        super().__init__(None, MapSettings(verbose=verbose, progress=progress))

    @property
    def parallelism(self) -> int:
        return 1

    def worker_path(self, path: str) -> str:
        return path  # the tasks run in this process

    def _start(self, func: Callable[[Any], Any], iterable: Iterable[Any],
               chunksize: int | None) -> _SerialHandle | None:
        self._check_running()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        tasks = list(materialise(iterable))
        return _SerialHandle(func, tasks) if tasks else None
