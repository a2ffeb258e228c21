"""Overviews (pyramid layers) as RIOS 2 writes them by default: pixel (i, j) of the overview
of factor f is the full-resolution pixel at (f//2 + i*f, f//2 + j*f), the centre of the cell
it stands for (GDAL's NEAREST takes the cell's top-left pixel). The pixels are gathered as the
driver writes each block, into an unnamed temporary file (so memory stays bounded whatever
the output's size), and written into the overview levels once the output is closed; the
levels themselves are created on the empty output, which costs nothing to resample."""
from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from poolparty_raster.applier.structures import ApplierBlockDefn

# Drivers whose overview levels can be written through GDAL's OVERVIEW_LEVEL open option
# (measured: GTiff, and HFA for .img); others get GDAL's overviews after the last block.
DIRECT_PYRAMID_DRIVERS = ("GTiff", "HFA")
# Rows of an overview written at a time: bounds the copy a non-contiguous slice costs.
_ROWS_PER_WRITE = 1024


def overview_levels(levels: tuple[int, ...], min_dim: int, width: int, height: int) -> list[int]:
    """RIOS's rule: as many of the first levels as there are levels by which the image's
    smaller side divided still exceeds ``min_dim`` pixels."""
    smaller = min(width, height)
    return list(levels[:sum(1 for level in levels if smaller // level > min_dim)])


def centred_pyramids_wanted(driver: str, agg_type: str, single_pass: bool | None) -> bool:
    """Whether RIOS would write this output's overviews block by block (its "single pass":
    NEAREST, not switched off, a driver that can); otherwise GDAL builds them after the
    last block. Asking for single-pass pyramids with another aggregation type is an error
    in RIOS, and here."""
    nearest = agg_type.upper() == "NEAREST"
    if single_pass is True and not nearest:
        raise ValueError(f"setSinglePassPyramids(True) needs the NEAREST aggregation type, "
                         f"not {agg_type!r} (RIOS's rule)")
    return single_pass is not False and nearest and driver in DIRECT_PYRAMID_DRIVERS


class CentredOverviews:
    """The overview pixels of one output, gathered block by block."""

    def __init__(self, levels: list[int], count: int, width: int, height: int,
                 dtype: np.dtype, directory: str):
        self.levels = levels
        self.width, self.height = width, height
        self.files = []
        self.arrays = []
        for level in levels:
            shape = (count, -(-height // level), -(-width // level))
            # O_TMPFILE where the filesystem has it: never visible, gone when closed.
            file = tempfile.TemporaryFile(dir=directory)
            self.files.append(file)
            self.arrays.append(np.memmap(file, dtype=dtype, mode="w+", shape=shape))

    @staticmethod
    def create_levels(ds: Any, levels: list[int]) -> None:
        """Create the levels on the new, still empty output (as RIOS does)."""
        ds.build_overviews(levels, Resampling.nearest)

    def add(self, block_defn: ApplierBlockDefn, array: np.ndarray) -> None:
        """Keep the block's pixels (bands, nrows, ncols) that are overview pixels."""
        for level, overview in zip(self.levels, self.arrays):
            rows = _picked(block_defn.top, block_defn.nrows, level)
            cols = _picked(block_defn.left, block_defn.ncols, level)
            if rows is None or cols is None:
                continue
            (r0, row_offset, nr), (c0, col_offset, nc) = rows, cols
            overview[:, r0:r0 + nr, c0:c0 + nc] = array[:, row_offset::level, col_offset::level]

    def write(self, path: str) -> None:
        """Write every level into the closed output at ``path``. Overview pixels whose
        centre lies beyond the image (the last row or column, where the size is not a
        multiple of the level) keep what GDAL made of the empty image, as in RIOS."""
        for index, (level, overview) in enumerate(zip(self.levels, self.arrays)):
            nr = _covered(self.height, level)
            nc = _covered(self.width, level)
            with rasterio.open(path, "r+", OVERVIEW_LEVEL=index) as ds:
                for top in range(0, nr, _ROWS_PER_WRITE):
                    rows = min(_ROWS_PER_WRITE, nr - top)
                    ds.write(np.ascontiguousarray(overview[:, top:top + rows, :nc]),
                             window=Window(0, top, nc, rows))

    def close(self) -> None:
        self.arrays = []
        for file in self.files:
            file.close()
        self.files = []


def _covered(size: int, level: int) -> int:
    """How many overview pixels along a side of ``size`` have their centre inside it."""
    first = level // 2
    return 0 if size <= first else -(-(size - first) // level)


def _picked(start: int, length: int, level: int) -> tuple[int, int, int] | None:
    """For a block's span start..start+length: (first overview index, its offset in the
    block, how many), or None where the span holds no overview pixel."""
    first = level // 2
    index = max(0, -(-(start - first) // level))
    offset = first + index * level - start
    if offset >= length:
        return None
    return index, offset, -(-(length - offset) // level)
