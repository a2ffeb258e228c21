"""The ``info`` object handed to the user function: where the current block lies and what
the inputs are. Method names and return conventions follow RIOS's ReaderInfo: sizes are
(numCols, numRows), positions (col, row) unless the name says RowCol."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.structures import ApplierBlockDefn


class Coord(NamedTuple):
    """A world coordinate, as RIOS's ``imageio.Coord``."""

    x: float
    y: float


class BlockInfo:
    """Per-block information. Attributes: ``blockDefn`` (the block, overlap excluded),
    ``workingGrid``, ``transform`` (affine.Affine), ``crs`` (rasterio CRS), ``overlap``,
    ``xblock``/``yblock`` (block column and row numbers, from 0), and RIOS's ``xsize``/
    ``ysize`` (working grid), ``blockwidth``/``blockheight`` (this block, overlap excluded),
    ``blocktl``/``blockbr`` (world coordinates of the block's outer corners, ``.x``/``.y``),
    ``xtotalblocks``/``ytotalblocks``, ``windowxsize``/``windowysize``."""

    def __init__(self, grid: WorkingGrid, block_defn: ApplierBlockDefn, windowxsize: int,
                 windowysize: int, overlap: int, input_meta: dict[int, tuple[str, list]]):
        self.workingGrid = grid
        self.transform: Affine = grid.transform
        self.crs: CRS | None = grid.crs
        self.blockDefn = block_defn
        self.windowxsize = windowxsize
        self.windowysize = windowysize
        self.overlap = overlap
        self.xblock = block_defn.left // windowxsize
        self.yblock = block_defn.top // windowysize
        self.xtotalblocks = -(-grid.width // windowxsize)
        self.ytotalblocks = -(-grid.height // windowysize)
        self.xsize, self.ysize = grid.width, grid.height
        self.blockwidth, self.blockheight = block_defn.ncols, block_defn.nrows
        # Keyed by id() of the input arrays given to the user function (as RIOS does), so
        # getFilenameFor(inputs.img) works; values are (filename, per-band nodata list).
        self._input_meta = input_meta

    @property
    def blocktl(self) -> Coord:
        """World coordinate of the block's top-left corner (overlap excluded)."""
        return Coord(*(self.transform @ (self.blockDefn.left, self.blockDefn.top)))

    @property
    def blockbr(self) -> Coord:
        """World coordinate of the block's bottom-right corner (overlap excluded)."""
        b = self.blockDefn
        return Coord(*(self.transform @ (b.left + b.ncols, b.top + b.nrows)))

    def getWindowSize(self) -> tuple[int, int]:
        """(numCols, numRows) of a full block."""
        return (self.windowxsize, self.windowysize)

    def getOverlapSize(self) -> int:
        """Margin in pixels around each block."""
        return self.overlap

    def getTotalSize(self) -> tuple[int, int]:
        """(numCols, numRows) of the working grid."""
        return (self.workingGrid.width, self.workingGrid.height)

    def getTransform(self) -> tuple[float, ...]:
        """The working grid's GDAL geotransform (x0, xres, 0, y0, 0, yres), yres < 0."""
        return self.transform.to_gdal()

    def getProjection(self) -> str:
        """The working grid's CRS as WKT ("" if it has none)."""
        return self.crs.to_wkt() if self.crs is not None else ""

    def getPixelSize(self) -> tuple[float, float]:
        """(xRes, yRes), both positive, in CRS units."""
        return (self.transform.a, -self.transform.e)

    def getTotalBlocks(self) -> tuple[int, int]:
        """(numBlockCols, numBlockRows) of the block grid."""
        return (self.xtotalblocks, self.ytotalblocks)

    def getBlockCount(self) -> tuple[int, int]:
        """(xblock, yblock): the current block's column and row in the block grid."""
        return (self.xblock, self.yblock)

    def getBlockSize(self) -> tuple[int, int]:
        """(numCols, numRows) of the current block, overlap excluded."""
        return (self.blockDefn.ncols, self.blockDefn.nrows)

    def getBlockCoordArrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(xBlock, yBlock): world x and y of every pixel centre of the block's arrays,
        overlap included, each shaped (rows, cols)."""
        o = self.overlap
        rows = np.arange(self.blockDefn.top - o, self.blockDefn.top + self.blockDefn.nrows + o)
        cols = np.arange(self.blockDefn.left - o, self.blockDefn.left + self.blockDefn.ncols + o)
        col_grid, row_grid = np.meshgrid(cols + 0.5, rows + 0.5)
        return self.transform @ (col_grid, row_grid)

    def getPixColRow(self, x: int, y: int) -> tuple[int, int]:
        """(col, row) in the working grid of column ``x``, row ``y`` of the block
        (overlap excluded)."""
        return (self.blockDefn.left + x, self.blockDefn.top + y)

    def getPixRowColBlock(self, x: float, y: float) -> tuple[int | None, int | None]:
        """(row, col) in the block's arrays (overlap included) of the pixel containing world
        point (x, y); (None, None) when it lies outside them."""
        col, row = ~self.transform @ (x, y)
        block_row = int(np.floor(row)) - (self.blockDefn.top - self.overlap)
        block_col = int(np.floor(col)) - (self.blockDefn.left - self.overlap)
        if (0 <= block_row < self.blockDefn.nrows + 2 * self.overlap
                and 0 <= block_col < self.blockDefn.ncols + 2 * self.overlap):
            return (block_row, block_col)
        return (None, None)

    def isFirstBlock(self) -> bool:
        return self.xblock == 0 and self.yblock == 0

    def isLastBlock(self) -> bool:
        return self.xblock == self.xtotalblocks - 1 and self.yblock == self.ytotalblocks - 1

    def getPercent(self) -> int:
        """Share of the blocks before this one, in percent (row-major order)."""
        done = self.yblock * self.xtotalblocks + self.xblock
        return int(100 * done / (self.xtotalblocks * self.ytotalblocks))

    def getFilenameFor(self, block: Any) -> str:
        """Filename of the input an array of ``inputs`` came from."""
        return self._lookup(block)[0]

    def getNoDataValueFor(self, block: Any, band: int = 1) -> Any:
        """Nodata value (cast to the array's dtype, or None) of band ``band`` (from 1) of
        the input an array of ``inputs`` came from."""
        nodata = self._lookup(block)[1][band - 1]
        return None if nodata is None else np.asarray(nodata, dtype=block.dtype)

    def _lookup(self, block: Any) -> tuple[str, list]:
        try:
            return self._input_meta[id(block)]
        except KeyError:
            raise KeyError("getFilenameFor/getNoDataValueFor take an array of `inputs` "
                           "as given to the user function") from None
