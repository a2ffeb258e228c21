"""Driver side: output files. Each is created when its first block arrives (its dtype and
band count are those of the user's arrays), written block by block under a temporary name
in the destination directory, and moved into place only once complete, so a failed run
leaves neither a partial output nor a damaged earlier one."""
from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from poolparty_raster.applier.controls import ApplierControls
from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.structures import ApplierBlockDefn, FilenameAssociations, Timers
from poolparty_raster.applier.stats import BandStats

# GTiff tiles must be multiples of 16 pixels; other window sizes fall back to this.
_FALLBACK_TILE = 256


def defaultCreationOptions(driver: str, dtype: np.dtype, windowxsize: int,
                           windowysize: int) -> dict[str, str]:
    """Tiled (tiles = blocks, so each block write fills whole tiles), DEFLATE with the
    predictor suited to the dtype, BigTIFF when needed, all cores compressing."""
    if driver != "GTiff":
        return {}
    aligned = windowxsize % 16 == 0 and windowysize % 16 == 0
    options = {"TILED": "YES",
               "BLOCKXSIZE": str(windowxsize if aligned else _FALLBACK_TILE),
               "BLOCKYSIZE": str(windowysize if aligned else _FALLBACK_TILE),
               "COMPRESS": "DEFLATE", "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}
    if dtype.kind in "iu":
        options["PREDICTOR"] = "2"
    elif dtype.kind == "f":
        options["PREDICTOR"] = "3"
    return options


class OutputFile:
    """One output raster being written; ``finish`` or ``abort`` must end it."""

    def __init__(self, name: str, filename: str, grid: WorkingGrid, controls: ApplierControls):
        self.name = name
        self.filename = os.path.abspath(filename)
        self.grid = grid
        self.controls = controls
        self.driver = controls.getOptionForImagename("driverName", name)
        self.statsIgnore = controls.getOptionForImagename("statsIgnore", name)
        self.calcStats = controls.getOptionForImagename("calcStats", name)
        self.omitPyramids = controls.getOptionForImagename("omitPyramids", name)
        directory, base = os.path.split(self.filename)
        stem, ext = os.path.splitext(base)
        # Sidecars (.aux.xml, .hdr, .ovr) share the temporary stem and are renamed with it.
        self._finalStem = os.path.join(directory, stem)
        self._tmpStem = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.partial")
        self._tmpName = self._tmpStem + ext
        self.ds: Any = None
        self.stats: list[BandStats] = []

    def write(self, blockDefn: ApplierBlockDefn, array: np.ndarray) -> None:
        """Write an array (bands, nrows, ncols) at the block's place."""
        if self.ds is None:
            self._create(array)
        if array.shape[0] != self.ds.count:
            raise ValueError(f"output {self.name}: {array.shape[0]} bands on the block at "
                             f"top={blockDefn.top}, left={blockDefn.left}, {self.ds.count} "
                             "on earlier blocks")
        array = array.astype(self.ds.dtypes[0], copy=False)
        self.ds.write(array, window=Window(blockDefn.left, blockDefn.top,
                                           blockDefn.ncols, blockDefn.nrows))
        if self.calcStats:
            for bandStats, band in zip(self.stats, array):
                bandStats.add(band)

    def _create(self, array: np.ndarray) -> None:
        dtype = array.dtype
        gdalDriver = "GTiff" if self.driver == "COG" else self.driver
        options = self.controls.getOptionForImagename("creationOptions", self.name)
        if options is None or self.driver == "COG":
            options = defaultCreationOptions(gdalDriver, dtype, self.controls.windowxsize,
                                             self.controls.windowysize)
        self.ds = rasterio.open(
            self._tmpName, "w", driver=gdalDriver, width=self.grid.width,
            height=self.grid.height, count=array.shape[0], dtype=dtype, crs=self.grid.crs,
            transform=self.grid.transform, nodata=_nodataFor(self.statsIgnore, dtype),
            **options)
        # GDAL's STATISTICS_* metadata has no meaning for complex bands.
        self.calcStats = self.calcStats and dtype.kind != "c"
        self.stats = [BandStats(self.statsIgnore) for _ in range(array.shape[0])]

    def finish(self, timings: Timers) -> None:
        """Overviews, statistics, then the move into place."""
        if self.ds is None:
            raise ValueError(f"output {self.name}: the user function wrote no blocks")
        if not self.omitPyramids:
            with timings.interval("pyramids"):
                self._buildOverviews()
        if self.calcStats:
            with timings.interval("basicstats"):
                for bandNum, bandStats in enumerate(self.stats, start=1):
                    tags = bandStats.gdalMetadata()
                    if tags:
                        self.ds.update_tags(bandNum, **tags)
        self.ds.close()
        if self.driver == "COG":
            with timings.interval("cog"):
                self._toCog()
        with timings.interval("closing"):
            _renameFamily(self._tmpStem, self._finalStem, self._tmpName)

    def _buildOverviews(self) -> None:
        """RIOS's rule: each level whose decimated smaller side still exceeds the minimum."""
        smaller = min(self.grid.width, self.grid.height)
        levels = [lv for lv in self.controls.overviewLevels
                  if smaller // lv > self.controls.minOverviewDim]
        if levels:
            aggType = self.controls.getOptionForImagename("overviewAggType", self.name)
            self.ds.build_overviews(levels, Resampling[_overviewResampling(aggType)])

    def _toCog(self) -> None:
        """rasterio's COG driver holds the whole raster in memory, so the tiled GTiff
        written block by block is converted at the end instead."""
        options = dict(self.controls.getOptionForImagename("creationOptions", self.name) or {})
        if self.omitPyramids:
            options.setdefault("OVERVIEWS", "NONE")
        cogStem = self._tmpStem + ".cog"
        cogName = cogStem + os.path.splitext(self._tmpName)[1]
        try:
            rasterio.shutil.copy(self._tmpName, cogName, driver="COG", **options)
        except BaseException:
            _removeFamily(cogStem)
            raise
        _removeFamily(self._tmpStem, keep=cogStem)
        self._tmpStem, self._tmpName = cogStem, cogName

    def abort(self) -> None:
        """Close and delete the temporary file(s); the destination is left as it was."""
        if self.ds is not None and not self.ds.closed:
            self.ds.close()
        _removeFamily(self._tmpStem)


def openOutputs(outfiles: FilenameAssociations, grid: WorkingGrid,
                controls: ApplierControls) -> dict[tuple[str, int | None], OutputFile]:
    outputs = {}
    for name, seqNum, filename in outfiles:
        outputs[name, seqNum] = OutputFile(name, filename, grid, controls)
    finals = [o.filename for o in outputs.values()]
    if len(set(finals)) != len(finals):
        raise ValueError("two outputs have the same filename")
    return outputs


def _nodataFor(value: float | None, dtype: np.dtype) -> float | None:
    """The stats-ignore value as the band nodata, when the dtype can hold it."""
    if value is None or dtype.kind == "c":
        return None
    if dtype.kind == "f":
        return value
    info = np.iinfo(dtype)
    return value if float(value).is_integer() and info.min <= value <= info.max else None


def _overviewResampling(aggType: str) -> str:
    name = aggType.lower()
    return {"near": "nearest", "cubicspline": "cubic_spline"}.get(name, name)


def _family(stem: str) -> list[str]:
    directory, prefix = os.path.split(stem)
    return [os.path.join(directory, f) for f in os.listdir(directory or ".")
            if f.startswith(prefix)]


def _removeFamily(stem: str, keep: str | None = None) -> None:
    for path in _family(stem):
        if keep is None or not path.startswith(keep):
            os.remove(path)


def _renameFamily(tmpStem: str, finalStem: str, mainFile: str) -> None:
    """Sidecars first, the main file last: the output's appearance marks completion."""
    for path in sorted(_family(tmpStem), key=lambda p: p == mainFile):
        os.replace(path, finalStem + path[len(tmpStem):])
