"""GDAL's block cache during an apply, in the driver and in every worker process.

GDAL keeps decoded blocks up to GDAL_CACHEMAX, by default 5 % of the machine's RAM whatever
the job may use (26 GiB of a 512 GiB node, under a SLURM ``--mem=4G``), and caches every
block it reads or writes, whether or not it will be needed again. The applier reads each
window once and writes each block once; a tile is read again only where windows share it:
the overlap margin, windows not aligned with the file's tiles, resampled inputs. So the cache
is capped at what those re-reads need (each input's tiles across one row of blocks) plus the
outputs' blocks in flight. Smaller is faster, too: a cache filling with fresh memory takes a
page fault every 4 KiB (a third of an uncompressed copy's time here).

A user who sets GDAL_CACHEMAX (in the environment, or in a ``rasterio.Env`` around apply)
keeps their own.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

import rasterio
import rasterio.env

from poolparty_raster.applier.grid import RasterInfo, WorkingGrid, on_grid

# GDAL's own default: the cap never exceeds it.
_GDAL_DEFAULT_FRACTION = 0.05
# Room for what the estimate does not see (GDAL's own small allocations, the VRT's blocks).
MIN_CACHE_BYTES = 4 * 1024 * 1024
# Blocks kept per window read or written: the one in use and the next.
_SLACK = 2
# A WarpedVRT's blocks are not the source's: margins this wide cover either.
_WARP_MARGIN = 512


def user_chose_cache() -> bool:
    """True when GDAL_CACHEMAX comes from the user, not from GDAL's default."""
    if "GDAL_CACHEMAX" in os.environ:
        return True
    return rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv()


def input_cache_bytes(inputs: Iterable[RasterInfo], grid: WorkingGrid, windowxsize: int,
                      windowysize: int, overlap: int) -> int:
    """Bytes of decoded tiles that reading every block's window on ``grid`` (sizes in pixels,
    overlap on each side) re-reads: per input (an entry of the inputs, as each is opened on
    its own), one window where windows fall on whole tiles, else the tiles spanning a whole
    row of windows."""
    total = 0
    width, o = grid.width + 2 * overlap, overlap
    for info in inputs:
        rows, cols = info.block_shape
        offset = on_grid(info.transform, info.crs, grid)
        if offset is None:
            density = _source_pixels_per_grid_pixel(info, grid)
            pixels = density * (width + 2 * _WARP_MARGIN) * (windowysize + 2 * o + 2 * _WARP_MARGIN)
        elif o == 0 and (offset[0] % rows, offset[1] % cols, windowysize % rows,
                         windowxsize % cols) == (0, 0, 0, 0):
            pixels = windowxsize * windowysize
        else:
            pixels = (width + 2 * cols) * (windowysize + 2 * o + 2 * rows)
        total += int(pixels * info.pixel_bytes)
    return _SLACK * total


def output_cache_bytes(windowxsize: int, windowysize: int, pixel_bytes: int) -> int:
    """An output's share: its blocks (all bands, ``pixel_bytes`` per pixel) in flight."""
    return _SLACK * windowxsize * windowysize * pixel_bytes


def _source_pixels_per_grid_pixel(info: RasterInfo, grid: WorkingGrid) -> float:
    """How many source pixels a resampled grid pixel covers (1 across CRSs, an estimate)."""
    if info.crs is not None and grid.crs is not None and info.crs != grid.crs:
        return 1.0
    source = abs(info.transform.a * info.transform.e)
    return max(1.0, abs(grid.transform.a * grid.transform.e) / source) if source else 1.0


def effective_cap(nbytes: int) -> int:
    """The GDAL_CACHEMAX a cap of ``nbytes`` sets: at least MIN_CACHE_BYTES, never above
    GDAL's own default."""
    return min(max(nbytes, MIN_CACHE_BYTES), _gdal_default())


def _gdal_default() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62  # unknown: GDAL's own default then bounds it
    return int(ram * _GDAL_DEFAULT_FRACTION)


class CacheCap:
    """GDAL_CACHEMAX for the duration of a ``with`` block, raised with ``grow`` as the
    outputs are created. ``nbytes`` None: leave the cache as it is (the user's choice)."""

    def __init__(self, nbytes: int | None):
        self.nbytes = nbytes
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CacheCap:
        self._set()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def grow(self, nbytes: int) -> None:
        if self.nbytes is not None:
            self.nbytes += nbytes
            self._set()

    def _set(self) -> None:
        if self.nbytes is not None:
            # rasterio applies GDAL_CACHEMAX at once (GDALSetCacheMax64) and restores the
            # previous size when the innermost Env exits.
            self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=effective_cap(self.nbytes)))
