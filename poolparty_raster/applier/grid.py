"""The working grid (the pixel grid every block is read on and written to) and how it is
cut into blocks and pool tasks. Pixel positions are (row, col) from the grid's top-left
corner; world coordinates are (x, y) in the grid's CRS."""
from __future__ import annotations

import math
from dataclasses import dataclass

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from poolparty_raster.applier.controls import (BOUNDS_FROM_REFERENCE, INTERSECTION,
                                               ApplierControls)
from poolparty_raster.applier.structures import ApplierBlockDefn, FilenameAssociations

# Fraction of a pixel by which a bound may miss the reference grid and still count as on it.
_SNAP_TOLERANCE = 1e-6
MIN_BLOCKS_PER_TASK = 16
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class WorkingGrid:
    """A north-up pixel grid: ``transform`` maps (col, row) to (x, y); ``width`` columns,
    ``height`` rows."""

    transform: Affine
    crs: CRS | None
    width: int
    height: int


def computeWorkingGrid(infiles: FilenameAssociations, controls: ApplierControls) -> WorkingGrid:
    """The reference image's CRS and pixel grid, over the extent the footprint type gives."""
    filenames = [filename for _, _, filename in infiles]
    if not filenames:
        raise ValueError("apply needs at least one input file")
    refname = controls.referenceImage
    if refname is not None and refname not in filenames:
        named = [f for name, _, f in infiles if name == refname]
        if len(named) != 1:
            raise ValueError(f"reference image {refname!r} is neither an input filename nor "
                             "the symbolic name of a single input")
        refname = named[0]
    refname = refname or filenames[0]
    with rasterio.open(refname) as ref:
        reftransform, refcrs = ref.transform, ref.crs
        refbounds = ref.bounds
    if reftransform.b != 0 or reftransform.d != 0 or reftransform.a < 0 or reftransform.e > 0:
        raise NotImplementedError(f"{refname}: only north-up grids are supported")
    if controls.footprint == BOUNDS_FROM_REFERENCE:
        bounds = tuple(refbounds)
    else:
        allbounds = [tuple(refbounds) if f == refname else _boundsIn(f, refcrs)
                     for f in filenames]
        pick = (max, max, min, min) if controls.footprint == INTERSECTION else (min, min, max, max)
        bounds = tuple(p(b[i] for b in allbounds) for i, p in enumerate(pick))
    return _snapped(bounds, reftransform, refcrs, outward=controls.footprint != INTERSECTION)


def _boundsIn(filename: str, crs: CRS | None) -> tuple[float, float, float, float]:
    with rasterio.open(filename) as src:
        if src.crs is None or crs is None or src.crs == crs:
            return tuple(src.bounds)
        return transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)


def _snapped(bounds: tuple[float, ...], ref: Affine, crs: CRS | None,
             outward: bool) -> WorkingGrid:
    """Bounds (left, bottom, right, top) moved onto the reference pixel grid; ``outward``
    grows them to whole pixels, else they shrink (an intersection must not reach past
    any input)."""
    left, bottom, right, top = bounds
    # Pixel edges as fractional column/row numbers of the reference grid.
    c0, r0 = ~ref @ (left, top)
    c1, r1 = ~ref @ (right, bottom)
    if outward:
        c0, r0 = math.floor(c0 + _SNAP_TOLERANCE), math.floor(r0 + _SNAP_TOLERANCE)
        c1, r1 = math.ceil(c1 - _SNAP_TOLERANCE), math.ceil(r1 - _SNAP_TOLERANCE)
    else:
        c0, r0 = math.ceil(c0 - _SNAP_TOLERANCE), math.ceil(r0 - _SNAP_TOLERANCE)
        c1, r1 = math.floor(c1 + _SNAP_TOLERANCE), math.floor(r1 + _SNAP_TOLERANCE)
    if c1 <= c0 or r1 <= r0:
        raise ValueError("the inputs do not overlap: the working grid would be empty")
    return WorkingGrid(ref @ Affine.translation(c0, r0), crs, c1 - c0, r1 - r0)


def makeBlocks(grid: WorkingGrid, windowxsize: int, windowysize: int) -> list[ApplierBlockDefn]:
    """Blocks in row-major order; those on the right and bottom edges are smaller."""
    return [ApplierBlockDefn(top, left, min(windowysize, grid.height - top),
                             min(windowxsize, grid.width - left))
            for top in range(0, grid.height, windowysize)
            for left in range(0, grid.width, windowxsize)]


def blocksPerTask(numBlocks: int, numWorkers: int, singleBlock: bool) -> int:
    """How many consecutive blocks one pool task carries.

    Aim for TASKS_PER_WORKER tasks per worker, so slow tasks even out, but never fewer than
    MIN_BLOCKS_PER_TASK blocks (16 blocks of 256x256 are seconds of work, well above the
    ~0.4 s it costs a worker to start Python and import numpy and rasterio).
    """
    if singleBlock:
        return 1
    perTask = math.ceil(numBlocks / (TASKS_PER_WORKER * max(numWorkers, 1)))
    return max(1, min(numBlocks, max(perTask, MIN_BLOCKS_PER_TASK)))


def groupBlocks(blocks: list[ApplierBlockDefn], perTask: int) -> list[list[ApplierBlockDefn]]:
    return [blocks[i:i + perTask] for i in range(0, len(blocks), perTask)]
