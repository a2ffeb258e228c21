"""The working grid (the pixel grid every block is read on and written to) and how it is
cut into blocks and pool tasks. Pixel positions are (row, col) from the grid's top-left
corner; world coordinates are (x, y) in the grid's CRS."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from poolparty_raster.applier.controls import (BOUNDS_FROM_REFERENCE, INTERSECTION,
                                               ApplierControls)
from poolparty_raster.applier.structures import ApplierBlockDefn, FilenameAssociations

# Fraction of a pixel by which a bound may miss the reference grid and still count as on it.
_SNAP_TOLERANCE = 1e-6
# Task sizing (see task_sizes): a new interpreter with numpy and rasterio costs 0.4-0.7 s
# of CPU, so in array mode (one process per task) a task carries at least 64 blocks of
# 256 x 256 (4 Mpix: seconds of work for anything but a plain copy); workers mode pays the
# start-up once per worker and a chunk costs ~0.6 ms, so small tasks only buy load balance.
MIN_TASK_PIXELS_ARRAY = 64 * 256 * 256
MIN_TASK_PIXELS_WORKERS = 4 * 256 * 256
TASKS_PER_WORKER_ARRAY = 4
TASKS_PER_WORKER_WORKERS = 8
# The largest task: bounds what a task holds when its blocks cannot be streamed (threads,
# pools without a shared directory) and what a lost task costs to redo.
MAX_TASK_PIXELS = 64 * 1024 * 1024
# In-band results (threads) are held in memory until written: smaller tasks there.
MAX_INBAND_TASK_PIXELS = 4 * 1024 * 1024


class ResampleNeededError(ValueError):
    """The inputs are not all on one pixel grid and no reference image was given (RIOS's
    error of the same name): say which grid to resample onto with setReferenceImage."""


@dataclass(frozen=True)
class WorkingGrid:
    """A north-up pixel grid: ``transform`` maps (col, row) to (x, y); ``width`` columns,
    ``height`` rows."""

    transform: Affine
    crs: CRS | None
    width: int
    height: int


@dataclass(frozen=True)
class RasterInfo:
    """What the driver needs of an input file, read with one open: its grid, its bounds
    (left, bottom, right, top) in its CRS, its bytes per pixel over all bands, its first
    band's block shape (rows, cols), and each band's dtype name and nodata value."""

    transform: Affine
    crs: CRS | None
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    pixel_bytes: int
    block_shape: tuple[int, int]
    dtypes: tuple[str, ...] = ()
    nodatavals: tuple[float | None, ...] = ()

    @property
    def grid(self) -> WorkingGrid:
        return WorkingGrid(self.transform, self.crs, self.width, self.height)


def describe_rasters(filenames: list[str],
                     not_a_raster: Callable[[str, Exception], None] | None = None
                     ) -> dict[str, RasterInfo]:
    """Each distinct file opened once (an open costs milliseconds, more on a network
    filesystem). A file rasterio cannot open is left out where ``not_a_raster(filename,
    error)`` returns (it raises for a file that is no input of another kind)."""
    infos = {}
    for filename in dict.fromkeys(filenames):
        try:
            src = rasterio.open(filename)
        except rasterio.errors.RasterioIOError as error:
            if not_a_raster is None:
                raise
            not_a_raster(filename, error)
            continue
        with src:
            pixel_bytes = sum(np.dtype(d).itemsize for d in src.dtypes)
            infos[filename] = RasterInfo(src.transform, src.crs, src.width, src.height,
                                         tuple(src.bounds), pixel_bytes,
                                         tuple(src.block_shapes[0]), tuple(src.dtypes),
                                         tuple(src.nodatavals))
    return infos


def reference_name(infiles: FilenameAssociations, controls: ApplierControls) -> str:
    """The file whose grid the blocks are on: the reference image the user named (a
    filename, or the symbolic name of a single input), else the first input."""
    filenames = [filename for _, _, filename in infiles]
    if not filenames and controls.referenceImage is None:
        raise ValueError("apply needs at least one raster input, or a reference image "
                         "(setReferenceImage) or pixel grid (setReferencePixgrid): vector "
                         "inputs are burnt onto a grid, they do not make one")
    refname = controls.referenceImage
    if refname is None or refname in filenames:
        return refname or filenames[0]
    named = [f for name, _, f in infiles if name == refname]
    if len(named) > 1:
        raise ValueError(f"reference image {refname!r} names a list of inputs; give one "
                         "filename or the symbolic name of a single input")
    # Not an input: any raster file whose grid the user wants (it is only opened here).
    return named[0] if named else refname


def compute_working_grid(infiles: FilenameAssociations, controls: ApplierControls,
                         infos: dict[str, RasterInfo]) -> WorkingGrid:
    """The reference's CRS and pixel grid, over the extent the footprint type gives, of the
    inputs or of the files set with setFilesForExtent; ``infos`` (describe_rasters) covers
    the inputs, the reference image and the extent files."""
    filenames = [filename for _, _, filename in infiles]
    refname, ref = _reference(infiles, controls, infos)
    if controls.referenceImage is None and controls.referencePixgrid is None:
        _require_one_grid(refname, filenames, infos)
    reftransform, refcrs = ref.transform, ref.crs
    if reftransform.b != 0 or reftransform.d != 0 or reftransform.a < 0 or reftransform.e > 0:
        raise NotImplementedError(f"{refname}: only north-up grids are supported")
    if controls.footprint == BOUNDS_FROM_REFERENCE:
        bounds = ref.bounds
    else:
        extent_files = controls.files_for_extent or filenames
        if not extent_files:  # only vector inputs: the reference grid's own extent
            return _snapped(ref.bounds, reftransform, refcrs, outward=True)
        allbounds = [_bounds_in(infos[f], refcrs) for f in extent_files]
        pick = (max, max, min, min) if controls.footprint == INTERSECTION else (min, min, max, max)
        bounds = tuple(p(b[i] for b in allbounds) for i, p in enumerate(pick))
    return _snapped(bounds, reftransform, refcrs, outward=controls.footprint != INTERSECTION)


def _reference(infiles: FilenameAssociations, controls: ApplierControls,
               infos: dict[str, RasterInfo]) -> tuple[str, RasterInfo]:
    """A name for the reference grid (for messages) and its description."""
    pixgrid = controls.referencePixgrid
    if pixgrid is None:
        refname = reference_name(infiles, controls)
        return refname, infos[refname]
    return "the reference pixel grid", pixgrid_info(pixgrid)


def pixgrid_info(pixgrid: Any) -> RasterInfo:
    """A RasterInfo for a pixel grid given as RIOS's PixelGridDefn describes one: bounds
    ``xMin``, ``xMax``, ``yMin``, ``yMax`` and pixel sizes ``xRes``, ``yRes`` (positive) in
    the units of ``projection`` (WKT, or "" for none)."""
    try:
        x_min, x_max, y_min, y_max = (float(getattr(pixgrid, n)) for n in ("xMin", "xMax", "yMin",
                                                                        "yMax"))
        x_res, y_res = float(pixgrid.xRes), float(pixgrid.yRes)
        projection = pixgrid.projection
    except (AttributeError, TypeError) as exc:
        raise TypeError("setReferencePixgrid takes a pixel grid with xMin, xMax, yMin, yMax, "
                        "xRes, yRes and projection (as rios.pixelgrid.PixelGridDefn has): "
                        f"{exc}") from None
    crs = CRS.from_user_input(projection) if projection else None
    width, height = round((x_max - x_min) / x_res), round((y_max - y_min) / y_res)
    return RasterInfo(Affine(x_res, 0, x_min, 0, -y_res, y_max), crs, width, height,
                      (x_min, y_min, x_max, y_max), 0, (1, width))


def _require_one_grid(first: str, filenames: list[str], infos: dict[str, RasterInfo]) -> None:
    """RIOS resamples only onto a reference image the user chose."""
    grid = infos[first].grid
    for filename in filenames:
        if not on_grid(infos[filename].transform, infos[filename].crs, grid):
            raise ResampleNeededError(
                f"{filename} is not on the pixel grid of {first} (CRS, pixel size or "
                "alignment differ): call controls.setReferenceImage(...) with the "
                "image whose grid to resample onto")


def on_grid(transform: Affine, crs: CRS | None, grid: WorkingGrid) -> tuple[int, int] | None:
    """(rows, cols) from the grid's origin to a raster's with this transform and CRS, if it
    lies on the grid's pixel grid (same CRS and pixel size, whole-pixel offset); else None."""
    t, g = transform, grid.transform
    if crs != grid.crs or not (math.isclose(t.a, g.a) and math.isclose(t.e, g.e)
                               and t.b == g.b == 0 and t.d == g.d == 0):
        return None
    col = (t.c - g.c) / g.a
    row = (t.f - g.f) / g.e
    if abs(col - round(col)) > _SNAP_TOLERANCE or abs(row - round(row)) > _SNAP_TOLERANCE:
        return None
    return (round(row), round(col))


def _bounds_in(info: RasterInfo, crs: CRS | None) -> tuple[float, float, float, float]:
    if info.crs is None or crs is None or info.crs == crs:
        return info.bounds
    return transform_bounds(info.crs, crs, *info.bounds, densify_pts=21)


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


def make_blocks(grid: WorkingGrid, windowxsize: int, windowysize: int) -> list[ApplierBlockDefn]:
    """Blocks in row-major order; those on the right and bottom edges are smaller."""
    return [ApplierBlockDefn(top, left, min(windowysize, grid.height - top),
                             min(windowxsize, grid.width - left))
            for top in range(0, grid.height, windowysize)
            for left in range(0, grid.width, windowxsize)]


def task_sizes(num_blocks: int, parallelism: int, single_block: bool, how: str,
               block_pixels: int) -> list[int]:
    """How many consecutive blocks each task carries, in task order; ``how`` is "array" (a
    new interpreter per task), "workers" (long-lived workers claim tasks) or "threads".

    The rule (documented in the README): aim for TASKS_PER_WORKER_* tasks per slot of the
    pool, so that uneven tasks even out; never fewer pixels than MIN_TASK_PIXELS_* (a task
    must be worth its start-up: seconds of work in array mode); never more than
    MAX_TASK_PIXELS (MAX_INBAND_TASK_PIXELS for threads). As the blocks run out, tasks
    shrink to a 1/(2 x parallelism) share of the blocks left (guided self-scheduling): pools
    hand tasks out in order, so the slots then finish together instead of one running a
    whole task after the others are done. ``single_block`` is RIOS's one block per job.
    """
    if single_block:
        return [1] * num_blocks
    slots = max(parallelism, 1)
    block_pixels = max(block_pixels, 1)
    per_slot = TASKS_PER_WORKER_ARRAY if how == "array" else TASKS_PER_WORKER_WORKERS
    min_pixels = {"array": MIN_TASK_PIXELS_ARRAY, "workers": MIN_TASK_PIXELS_WORKERS}.get(how, 0)
    max_pixels = MAX_INBAND_TASK_PIXELS if how == "threads" else MAX_TASK_PIXELS
    min_blocks = math.ceil(min_pixels / block_pixels)
    largest = max(1, min(max(math.ceil(num_blocks / (per_slot * slots)), min_blocks),
                         max_pixels // block_pixels))
    smallest = max(1, min(largest, min_blocks))
    sizes = []
    left = num_blocks
    while left > 0:
        size = min(left, largest, max(smallest, math.ceil(left / (2 * slots))))
        sizes.append(size)
        left -= size
    return sizes


def group_blocks(blocks: list[ApplierBlockDefn], sizes: list[int]) -> list[list[ApplierBlockDefn]]:
    groups, start = [], 0
    for size in sizes:
        groups.append(blocks[start:start + size])
        start += size
    return groups
