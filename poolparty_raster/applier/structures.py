"""Plain containers shared by the driver and the workers, named as in RIOS so that scripts
written for ``rios.applier`` carry over unchanged."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class FilenameAssociations:
    """Symbolic names for files: each attribute is a filename or a list of filenames.

    Iterating yields ``(name, seqNum, filename)`` in the order the attributes were set;
    ``seqNum`` is None for a single filename and the list index for a list.
    """

    def __iter__(self) -> Iterator[tuple[str, int | None, str]]:
        for name, value in vars(self).items():
            if isinstance(value, (list, tuple)):
                for seqNum, filename in enumerate(value):
                    yield name, seqNum, str(filename)
            else:
                yield name, None, str(value)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key: tuple[str, int | None]) -> str:
        name, seqNum = key
        value = getattr(self, name)
        return str(value if seqNum is None else value[seqNum])


class BlockAssociations:
    """The arrays of one block, one attribute per symbolic name (a list where the
    FilenameAssociations had a list). Arrays are (bands, rows, cols)."""

    def __getitem__(self, key: tuple[str, int | None]) -> Any:
        name, seqNum = key
        value = getattr(self, name)
        return value if seqNum is None else value[seqNum]

    def __setitem__(self, key: tuple[str, int | None], array: Any) -> None:
        name, seqNum = key
        if seqNum is None:
            setattr(self, name, array)
        else:
            values = vars(self).setdefault(name, [])
            values.extend([None] * (seqNum + 1 - len(values)))
            values[seqNum] = array


class OtherInputs:
    """A generic namespace for whatever the user function needs besides the rasters.

    Each pool task works on its own copy (see ``ApplierReturn.otherArgsList``)."""


@dataclass(frozen=True)
class ApplierBlockDefn:
    """One block of the working grid, in pixels: ``top`` row and ``left`` column of its
    first pixel (0-based, overlap excluded) and its size ``nrows`` x ``ncols``."""

    top: int
    left: int
    nrows: int
    ncols: int


class Timers:
    """Wall-clock seconds spent in named phases, summed over blocks, tasks and workers."""

    def __init__(self) -> None:
        self.pairs: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def interval(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.pairs[name].append(time.perf_counter() - start)

    def merge(self, other: Timers) -> None:
        for name, durations in other.pairs.items():
            self.pairs[name].extend(durations)

    def getDurationsForName(self, name: str) -> list[float]:
        return list(self.pairs.get(name, []))

    def formatReport(self) -> str:
        """One line per phase: total seconds and number of intervals. Worker phases are
        summed over workers, so they can exceed the elapsed time of the run."""
        width = max((len(n) for n in self.pairs), default=0)
        lines = ["Wall clock elapsed time (seconds)"]
        for name in sorted(self.pairs):
            durations = self.pairs[name]
            lines.append(f"  {name:<{width}}  {sum(durations):10.3f}  ({len(durations)} intervals)")
        return "\n".join(lines)


@dataclass
class ApplierReturn:
    """What ``apply`` returns: ``timings`` and one otherArgs copy per task, in task order
    (a single entry, the caller's own object, when run serially in-process)."""

    timings: Timers = field(default_factory=Timers)
    otherArgsList: list[Any] = field(default_factory=list)
