"""Worker side: a task opens its inputs once, reads each block's window (plus the overlap
margin) on the working grid, calls the user function and keeps the outputs' inner parts.

Windows are (row, col) offsets and sizes in pixels of the working grid."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.info import BlockInfo
from poolparty_raster.applier.structures import (ApplierBlockDefn, BlockAssociations,
                                                 FilenameAssociations, Timers)

_RESAMPLING_NAMES = {"near": "nearest", "cubicspline": "cubic_spline"}
# Offsets closer than this fraction of a pixel to a whole number count as grid-aligned.
_ALIGN_TOLERANCE = 1e-6


@dataclass
class InputSpec:
    """One input file: its key in ``inputs``, resampling name and nodata override (None:
    the file's own)."""

    name: str
    seqNum: int | None
    filename: str
    resampleMethod: str
    nodataOverride: float | None


@dataclass
class TaskSpec:
    """Everything a worker needs for its blocks; cloudpickled for process pools."""

    taskIndex: int
    userFunction: Callable[..., Any]
    inputs: list[InputSpec]
    outputNames: list[tuple[str, int | None]]
    grid: WorkingGrid
    windowxsize: int
    windowysize: int
    overlap: int
    blocks: list[ApplierBlockDefn]
    otherArgs: Any = None
    passOtherArgs: bool = False


@dataclass
class TaskResult:
    """A task's outputs, per block the arrays without the overlap margin, keyed like
    ``outputNames``; its otherArgs copy; the time it spent reading and computing."""

    taskIndex: int
    blocks: list[tuple[ApplierBlockDefn, dict[tuple[str, int | None], np.ndarray]]]
    otherArgs: Any
    timings: Timers = field(default_factory=Timers)


def runTask(task: TaskSpec | bytes) -> TaskResult:
    """The function every pool runs: one task, many blocks. ``task`` is cloudpickled bytes
    for process pools, so user functions defined anywhere (even lambdas) travel."""
    if isinstance(task, bytes):
        task = cloudpickle.loads(task)
    timings = Timers()
    blocks = list(iterTaskBlocks(task, timings))
    return TaskResult(task.taskIndex, blocks, task.otherArgs, timings)


def iterTaskBlocks(task: TaskSpec, timings: Timers) -> Iterator[
        tuple[ApplierBlockDefn, dict[tuple[str, int | None], np.ndarray]]]:
    """Yields each block's outputs as soon as it is computed (the in-process path writes
    them straight away)."""
    with contextlib.ExitStack() as stack:
        with timings.interval("opening"):
            readers = [stack.enter_context(_InputReader(spec, task.grid)) for spec in task.inputs]
        o = task.overlap
        for blockDefn in task.blocks:
            inputs = BlockAssociations()
            meta = {}
            with timings.interval("reading"):
                for reader in readers:
                    array = reader.read(blockDefn.top - o, blockDefn.left - o,
                                        blockDefn.nrows + 2 * o, blockDefn.ncols + 2 * o)
                    inputs[reader.spec.name, reader.spec.seqNum] = array
                    meta[id(array)] = (reader.spec.filename, reader.nodata)
            info = BlockInfo(task.grid, blockDefn, task.windowxsize, task.windowysize, o, meta)
            outputs = BlockAssociations()
            with timings.interval("userfunction"):
                try:
                    if task.passOtherArgs:
                        task.userFunction(info, inputs, outputs, task.otherArgs)
                    else:
                        task.userFunction(info, inputs, outputs)
                except Exception as exc:
                    exc.add_note(f"poolparty_raster.applier: raised by the user function on "
                                 f"the block at top={blockDefn.top}, left={blockDefn.left} "
                                 f"(rows, cols of the working grid)")
                    raise
            yield blockDefn, _innerOutputs(outputs, task.outputNames, blockDefn, o)


def _innerOutputs(outputs: BlockAssociations, names: list[tuple[str, int | None]],
                  blockDefn: ApplierBlockDefn, o: int) -> dict[tuple[str, int | None], np.ndarray]:
    inner = {}
    for key in names:
        try:
            array = np.asarray(outputs[key])
        except (AttributeError, IndexError, TypeError):
            raise ValueError(f"the user function set no array for output {_label(key)} on the "
                             f"block at top={blockDefn.top}, left={blockDefn.left}") from None
        if array.ndim == 2:
            array = array[np.newaxis]
        expected = (blockDefn.nrows + 2 * o, blockDefn.ncols + 2 * o)
        if array.ndim != 3 or array.shape[1:] != expected:
            raise ValueError(f"output {_label(key)} has shape {array.shape} on the block at "
                             f"top={blockDefn.top}, left={blockDefn.left}; expected "
                             f"(bands, {expected[0]}, {expected[1]})")
        inner[key] = array[:, o:o + blockDefn.nrows, o:o + blockDefn.ncols] if o else array
    return inner


def _label(key: tuple[str, int | None]) -> str:
    return key[0] if key[1] is None else f"{key[0]}[{key[1]}]"


class _InputReader:
    """One open input. A file already on the working grid's pixel grid (same CRS and pixel
    size, whole-pixel offset) is read directly; any other is read through one WarpedVRT
    covering the whole working grid, which matches warping the whole file at once (warping
    each block separately would not, at block edges)."""

    def __init__(self, spec: InputSpec, grid: WorkingGrid):
        self.spec = spec
        self.grid = grid

    def __enter__(self) -> _InputReader:
        self._stack = contextlib.ExitStack()
        src = self._stack.enter_context(rasterio.open(self.spec.filename))
        override = self.spec.nodataOverride
        self.nodata = [override] * src.count if override is not None else list(src.nodatavals)
        offset = _pixelOffset(src, self.grid)
        if offset is None:
            kwargs = {}
            if self.nodata[0] is not None:
                kwargs = {"src_nodata": self.nodata[0], "nodata": self.nodata[0]}
            self.ds = self._stack.enter_context(WarpedVRT(
                src, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                height=self.grid.height, resampling=_resampling(self.spec.resampleMethod),
                **kwargs))
            offset = (0, 0)
        else:
            self.ds = src
        self.rowOffset, self.colOffset = offset
        self.fill = np.array([0 if v is None else v for v in self.nodata],
                             dtype=self.ds.dtypes[0])[:, None, None]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def read(self, row: int, col: int, nrows: int, ncols: int) -> np.ndarray:
        """Rows row..row+nrows, cols col..col+ncols of the working grid, shaped (bands,
        nrows, ncols); pixels beyond the file hold its nodata value (0 where it has none)."""
        ds = self.ds
        r0, c0 = row - self.rowOffset, col - self.colOffset
        ra, rb = max(r0, 0), min(r0 + nrows, ds.height)
        ca, cb = max(c0, 0), min(c0 + ncols, ds.width)
        if (ra, rb, ca, cb) == (r0, r0 + nrows, c0, c0 + ncols):
            return ds.read(window=Window(c0, r0, ncols, nrows))
        array = np.empty((ds.count, nrows, ncols), dtype=ds.dtypes[0])
        array[:] = self.fill
        if ra < rb and ca < cb:
            array[:, ra - r0:rb - r0, ca - c0:cb - c0] = ds.read(
                window=Window(ca, ra, cb - ca, rb - ra))
        return array


def _pixelOffset(src: Any, grid: WorkingGrid) -> tuple[int, int] | None:
    """(rows, cols) from the grid's origin to the file's, if the file lies on the grid's
    pixel grid; else None."""
    t, g = src.transform, grid.transform
    if src.crs != grid.crs or not (math.isclose(t.a, g.a) and math.isclose(t.e, g.e)
                                   and t.b == g.b == 0 and t.d == g.d == 0):
        return None
    col = (t.c - g.c) / g.a
    row = (t.f - g.f) / g.e
    if abs(col - round(col)) > _ALIGN_TOLERANCE or abs(row - round(row)) > _ALIGN_TOLERANCE:
        return None
    return (round(row), round(col))


def _resampling(name: str) -> Resampling:
    return Resampling[_RESAMPLING_NAMES.get(name, name)]


def inputSpecs(infiles: FilenameAssociations, controls: Any) -> list[InputSpec]:
    return [InputSpec(name, seqNum, filename,
                      controls.getOptionForImagename("resampleMethod", name),
                      controls.getOptionForImagename("inputNoData", name))
            for name, seqNum, filename in infiles]
