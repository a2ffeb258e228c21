"""Plain containers shared by the driver and the workers, named as in RIOS so that scripts
written for ``rios.applier`` carry over unchanged."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def _split_key(key: str | tuple[str, int | None]) -> tuple[str, int | None]:
    """RIOS indexes by ``(symbolicName, seqNum)`` or by the bare name."""
    return (key, None) if isinstance(key, str) else key


class FilenameAssociations:
    """Symbolic names for files: each attribute is a filename or a list of filenames.

    Iterating yields ``(name, seqNum, filename)`` in the order the attributes were set;
    ``seqNum`` is None for a single filename and the list index for a list. Indexing takes
    ``(name, seqNum)`` or ``name`` (a list then comes back whole), as in RIOS.
    """

    def __iter__(self) -> Iterator[tuple[str, int | None, str]]:
        for name, value in vars(self).items():
            if isinstance(value, (list, tuple)):
                for seq_num, filename in enumerate(value):
                    yield name, seq_num, str(filename)
            else:
                yield name, None, str(value)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key: str | tuple[str, int | None]) -> Any:
        name, seq_num = _split_key(key)
        if name not in vars(self):
            raise KeyError(key)
        value = vars(self)[name]
        if isinstance(value, (list, tuple)):
            if seq_num is None:
                return list(value)
            if not 0 <= seq_num < len(value):
                raise KeyError(key)
            return str(value[seq_num])
        if seq_num is not None:
            raise KeyError(key)
        return str(value)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return False
        return True


class BlockAssociations:
    """The arrays of one block, one attribute per symbolic name (a list where the
    FilenameAssociations had a list). Arrays are (bands, rows, cols). Made from a
    FilenameAssociations it starts with None (or lists of None) in the same structure."""

    def __init__(self, fnameAssoc: FilenameAssociations | None = None):
        if fnameAssoc is not None:
            for name, value in vars(fnameAssoc).items():
                setattr(self, name, [None] * len(value) if isinstance(value, (list, tuple))
                        else None)

    def __getitem__(self, key: str | tuple[str, int | None]) -> Any:
        name, seq_num = _split_key(key)
        if name not in vars(self):
            raise KeyError(key)
        value = vars(self)[name]
        if isinstance(value, list):
            if seq_num is None or not 0 <= seq_num < len(value):
                raise KeyError(key)
            return value[seq_num]
        return value

    def __setitem__(self, key: str | tuple[str, int | None], array: Any) -> None:
        name, seq_num = _split_key(key)
        if seq_num is None:
            setattr(self, name, array)
        else:
            values = vars(self).setdefault(name, [])
            values.extend([None] * (seq_num + 1 - len(values)))
            values[seq_num] = array

    def __len__(self) -> int:
        return sum(len(v) if isinstance(v, list) else 1 for v in vars(self).values())


class OtherInputs:
    """A generic namespace for whatever the user function needs besides the rasters.

    Each pool task works on its own copy (see ``ApplierReturn.otherArgsList``)."""


@dataclass(frozen=True, order=True)
class ApplierBlockDefn:
    """One block of the working grid, in pixels: ``top`` row and ``left`` column of its
    first pixel (0-based, overlap excluded) and its size ``nrows`` x ``ncols``. Hashable and
    ordered by (top, left, nrows, ncols), as in RIOS."""

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

    def add(self, name: str, seconds: float) -> None:
        """One interval measured by the caller (cheaper than ``interval`` in hot loops)."""
        self.pairs[name].append(seconds)

    def merge(self, other: Timers) -> None:
        for name, durations in other.pairs.items():
            self.pairs[name].extend(durations)

    def getDurationsForName(self, name: str) -> list[float]:
        return list(self.pairs.get(name, []))

    def formatReport(self, level: int = 0) -> str:
        """RIOS's report: the wall-clock time of the run (timer ``walltime``), then one line
        per timer with its total seconds; ``level=1`` adds, per timer, the number of
        intervals and their min, quartiles and max. Worker phases are summed over workers,
        so they can exceed the elapsed time."""
        totals = {name: sum(d) for name, d in self.pairs.items()}
        names = [n for n in sorted(self.pairs) if n != "walltime"]
        lines = [f"Wall clock elapsed time: {totals.get('walltime', 0.0):.1f} seconds", "",
                 f"{'Timer':14s}       {'Total (sec)':11s}", "-" * 32]
        lines += [f"{name:14s}    {totals[name]:8.1f}" for name in names]
        if level > 0:
            head = f"{'Timer':14s}       N,Min,Lower,Median,Upper,Max"
            lines += ["", "", head, "-" * len(head)]
            for name in names:
                d = sorted(self.pairs[name])
                q = [_quantile(d, f) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
                lines.append(f"{name:14s}    {len(d)}," + ",".join(f"{v:.4f}" for v in q))
        return "\n".join(lines)


def _quantile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the nearest ranks (numpy's default percentile rule)."""
    if not values:
        return 0.0
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


class SinglePassReport:
    """Which outputs' pyramids, basic statistics and histograms were made as the blocks were
    written, without a second pass over the output, in the terms of RIOS's
    ``ApplierReturn.singlePassMgr`` (keyed by output name): basic statistics always are;
    integer histograms are unless a band's range was too wide to count per value; float
    histograms never are (their bins need the final minimum and maximum, as in RIOS);
    pyramids are where ``directPyramidsSupported`` and the aggregation type is NEAREST."""

    def __init__(self) -> None:
        self.directPyramidsSupported: dict[str, bool] = {}
        self.pyramids: dict[str, bool] = {}
        self.basic_stats: dict[str, bool] = {}
        self.histogram: dict[str, bool] = {}

    def doSinglePassPyramids(self, symbolicName: str) -> bool:
        return self.pyramids.get(symbolicName, False)

    def doSinglePassStatistics(self, symbolicName: str) -> bool:
        return self.basic_stats.get(symbolicName, False)

    def doSinglePassHistogram(self, symbolicName: str) -> bool:
        return self.histogram.get(symbolicName, False)


@dataclass
class ApplierReturn:
    """What ``apply`` returns: ``timings``, one otherArgs copy per task, in task order
    (a single entry, the caller's own object, when run serially in-process), and
    ``singlePassMgr``, what was computed as the blocks were written."""

    timings: Timers = field(default_factory=Timers)
    otherArgsList: list[Any] = field(default_factory=list)
    singlePassMgr: SinglePassReport = field(default_factory=SinglePassReport)
