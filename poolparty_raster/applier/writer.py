"""Driver side: output files. Each is created when its first block arrives (its dtype and
band count are those of the user's arrays) and written block by block under a temporary
name in the destination directory. Finishing is two-phase: every output is completed
(overviews, statistics, COG conversion, closed) before any is moved into place, so a failure
of the processing leaves every old output as it was, and an existing output is never touched
before its replacement is complete. The renames themselves are one per output: a failure
among them (a full or vanished destination) can leave some outputs new and some old."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from poolparty_raster.applier.controls import ApplierControls
from poolparty_raster.applier.gdalcache import CacheCap, outputCacheBytes
from poolparty_raster.applier.finishing import callWithGdalDataset, writeSecondPassHistograms
from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.histogram import HistogramPlan, histogramTags
from poolparty_raster.applier.pyramids import (DIRECT_PYRAMID_DRIVERS, CentredOverviews,
                                               centredPyramidsWanted, overviewLevels)
from poolparty_raster.applier.sitedefaults import driverForFilename
from poolparty_raster.applier.stats import BandStats
from poolparty_raster.applier.structures import (ApplierBlockDefn, FilenameAssociations,
                                                 SinglePassReport, Timers)

# GTiff tiles must be multiples of 16 pixels; other window sizes fall back to this.
_FALLBACK_TILE = 256
# Marks our temporary files, so that a user who finds one after a crash knows what it is.
TEMP_MARK = "poolparty_raster-partial"
# Sidecars GDAL keeps beside a file by appending to its name; a previous output's are
# replaced or removed with it (stale .aux.xml statistics or .ovr overviews would otherwise
# describe the old data).
_APPENDED_SIDECARS = (".aux.xml", ".ovr", ".ovr.aux.xml", ".msk", ".msk.aux.xml", ".aux")
_FALSE = ("NO", "FALSE", "OFF", "0")
_HFA_OPTIONS = {"COMPRESSED": "YES", "IGNOREUTM": "YES"}


def defaultCreationOptions(driver: str, dtype: np.dtype, windowxsize: int,
                           windowysize: int) -> dict[str, str]:
    """GTiff: tiled (tiles = blocks, so each block write fills whole tiles), DEFLATE with
    the predictor suited to the dtype, BigTIFF when needed, all cores compressing. HFA:
    RIOS's (compressed; IGNOREUTM keeps a transverse Mercator projection as given)."""
    if driver == "HFA":
        return dict(_HFA_OPTIONS)
    if driver != "GTiff":
        return {}
    options = {**_structuralOptions(windowxsize, windowysize), "COMPRESS": "DEFLATE"}
    if dtype.kind in "iu":
        options["PREDICTOR"] = "2"
    elif dtype.kind == "f":
        options["PREDICTOR"] = "3"
    return options


def _structuralOptions(windowxsize: int, windowysize: int) -> dict[str, str]:
    aligned = windowxsize % 16 == 0 and windowysize % 16 == 0
    return {"TILED": "YES", "BLOCKXSIZE": str(windowxsize if aligned else _FALLBACK_TILE),
            "BLOCKYSIZE": str(windowysize if aligned else _FALLBACK_TILE),
            "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}


def creationOptions(driver: str, dtype: np.dtype, user: dict[str, str] | None,
                    windowxsize: int, windowysize: int) -> dict[str, str]:
    """The user's options (they choose COMPRESS and PREDICTOR) with the structural GTiff
    defaults added where not given: tiles aligned with the windows, BIGTIFF, NUM_THREADS."""
    if user is None:
        return defaultCreationOptions(driver, dtype, windowxsize, windowysize)
    options = dict(user)
    if driver == "GTiff":
        for key, value in _structuralOptions(windowxsize, windowysize).items():
            if key.startswith("BLOCK") and options.get("TILED", "YES").upper() in _FALSE:
                continue  # stripped, as asked: no tile sizes
            options.setdefault(key, value)
    return options


class OutputFile:
    """One output raster being written; ``finish`` then ``commit``, or ``abort``."""

    def __init__(self, name: str, filename: str, grid: WorkingGrid, controls: ApplierControls,
                 cacheCap: CacheCap | None = None):
        self.name = name
        self.cacheCap = cacheCap
        self.filename = os.path.abspath(filename)
        self.grid = grid
        self.controls = controls
        option = lambda key: controls.getOptionForImagename(key, name)  # noqa: E731
        self.driver = option("driverName") or driverForFilename(self.filename)
        self.statsIgnore = option("statsIgnore")
        self.basicStats = not option("omitBasicStats")
        self.histogram = not option("omitHistogram")
        # Whether the workers gather statistics for this output at all.
        self.calcStats = self.basicStats or self.histogram
        self.buildPyramids = not option("omitPyramids")
        self.thematic = option("thematic")
        self.callBeforeClose = option("callBeforeClose")
        gdalDriver = "GTiff" if self.driver == "COG" else self.driver
        self.centredPyramids = self.buildPyramids and centredPyramidsWanted(
            gdalDriver, controls.overviewAggTypeFor(name), option("singlePassPyramids"))
        self.overviews: CentredOverviews | None = None
        directory, base = os.path.split(self.filename)
        stem, ext = os.path.splitext(base)
        self._finalStem = os.path.join(directory, stem)
        self._tmpStem = os.path.join(directory, f".{base}.{TEMP_MARK}.{uuid.uuid4().hex[:8]}")
        self._tmpName = self._tmpStem + ext
        self.ds: Any = None
        self.dtype: np.dtype | None = None
        self.stats: list[BandStats] = []

    def write(self, blockDefn: ApplierBlockDefn, array: np.ndarray) -> None:
        """Write an array (bands, nrows, ncols) at the block's place."""
        if self.ds is None:
            self._create(array)
        if array.shape[0] != self._count:
            raise ValueError(f"output {self.name}: {array.shape[0]} bands on the block at "
                             f"top={blockDefn.top}, left={blockDefn.left}, {self._count} "
                             "on earlier blocks")
        if array.dtype is not self.dtype and array.dtype != self.dtype:
            array = array.astype(self.dtype)
        self.ds.write(array, window=Window(blockDefn.left, blockDefn.top,
                                           blockDefn.ncols, blockDefn.nrows))
        if self.overviews is not None:
            self.overviews.add(blockDefn, array)

    def addStats(self, bands: list[BandStats]) -> None:
        """Merge one task's statistics of this output."""
        if not self.stats:
            self.stats = [BandStats(self.statsIgnore) for _ in bands]
        for mine, theirs in zip(self.stats, bands):
            mine.merge(theirs)

    def _create(self, array: np.ndarray) -> None:
        self.dtype = dtype = array.dtype
        self._count = array.shape[0]
        if self.cacheCap is not None:
            self.cacheCap.grow(outputCacheBytes(self.controls.windowxsize,
                                                self.controls.windowysize,
                                                self._count * dtype.itemsize))
        gdalDriver = "GTiff" if self.driver == "COG" else self.driver
        user = self.controls.creationOptionsFor(self.name, self.driver)
        # COG: the user's options are for the conversion; the intermediate is our tiled GTiff.
        options = creationOptions(gdalDriver, dtype, None if self.driver == "COG" else user,
                                  self.controls.windowxsize, self.controls.windowysize)
        self.ds = rasterio.open(
            self._tmpName, "w", driver=gdalDriver, width=self.grid.width,
            height=self.grid.height, count=array.shape[0], dtype=dtype, crs=self.grid.crs,
            transform=self.grid.transform, nodata=_nodataFor(self.statsIgnore, dtype),
            **options)
        if self.thematic:
            for bandNum in range(1, self._count + 1):
                self.ds.update_tags(bandNum, LAYER_TYPE="thematic")
        if self.centredPyramids:
            levels = self._levels()
            if levels:
                CentredOverviews.createLevels(self.ds, levels)
                self.overviews = CentredOverviews(levels, self._count, self.grid.width,
                                                  self.grid.height, dtype,
                                                  os.path.dirname(self._tmpName))

    def finish(self, timings: Timers) -> None:
        """Phase one: overviews, statistics, the user's callback, close, COG conversion;
        nothing renamed yet."""
        if self.ds is None:
            raise ValueError(f"output {self.name}: the user function wrote no blocks")
        if self.buildPyramids and not self.centredPyramids:
            with timings.interval("pyramids"):
                self._buildGdalOverviews()
        secondPass = []
        if self.calcStats:
            with timings.interval("basicstats"):
                secondPass = self._writeGatheredStats()
        with timings.interval("closing"):
            self.ds.close()
        if secondPass:
            with timings.interval("histogram"):
                writeSecondPassHistograms(self._tmpName, secondPass, self.statsIgnore,
                                          self.dtype)
        if self.overviews is not None:
            with timings.interval("pyramids"):
                self.overviews.write(self._tmpName)
                self.overviews.close()
        if self.callBeforeClose is not None:
            with timings.interval("beforeclose"):
                callWithGdalDataset(self._tmpName, *self.callBeforeClose)
        if self.driver == "COG":
            with timings.interval("cog"):
                self._toCog()

    def _writeGatheredStats(self) -> list[tuple[int, HistogramPlan]]:
        """Tags of what the blocks gave; returns the bands whose histogram needs a second
        pass over the output (float bands, integer bands of too wide a range)."""
        secondPass = []
        for bandNum, bandStats in enumerate(self.stats, start=1):
            tags = bandStats.basicTags() if self.basicStats else {}
            plan = bandStats.histogramPlan(self.dtype, self.thematic) if self.histogram else None
            if plan is not None:
                hist = bandStats.countedHistogram(plan)
                if hist is None:
                    secondPass.append((bandNum, plan))
                else:
                    tags.update(histogramTags(plan, hist, self.dtype))
            if tags:
                self.ds.update_tags(bandNum, **tags)
        return secondPass

    def report(self, singlePass: SinglePassReport) -> None:
        """Say what was made as the blocks were written (ApplierReturn.singlePassMgr)."""
        gdalDriver = "GTiff" if self.driver == "COG" else self.driver
        singlePass.directPyramidsSupported[self.name] = gdalDriver in DIRECT_PYRAMID_DRIVERS
        singlePass.pyramids[self.name] = self.centredPyramids
        singlePass.basicStats[self.name] = self.basicStats
        singlePass.histogram[self.name] = (self.histogram and self.dtype is not None
                                           and self.dtype.kind in "iu"
                                           and all(b.counts is not None or b.count == 0
                                                   for b in self.stats))

    def commit(self) -> None:
        """Phase two: replace the destination's whole family. The old sidecars go first
        (the old output stays valid without them), then the new main file replaces the old
        one atomically, then the new sidecars join it: at no instant does a new file sit
        beside an old one."""
        newFamily = _family(self._tmpStem)
        for path in _staleFamily(self.filename, self._finalStem):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        for path in sorted(newFamily, key=lambda p: p != self._tmpName):
            os.replace(path, self._finalStem + path[len(self._tmpStem):])

    def _levels(self) -> list[int]:
        option = lambda key: self.controls.getOptionForImagename(key, self.name)  # noqa: E731
        return overviewLevels(option("overviewLevels"), option("overviewMinDim"),
                              self.grid.width, self.grid.height)

    def _buildGdalOverviews(self) -> None:
        """GDAL's overviews after the last block, where RIOS leaves them to GDAL too
        (setSinglePassPyramids(False), an aggregation type other than NEAREST)."""
        levels = self._levels()
        if levels:
            aggType = self.controls.overviewAggTypeFor(self.name)
            self.ds.build_overviews(levels, Resampling[_overviewResampling(aggType)])

    def _toCog(self) -> None:
        """rasterio's COG driver holds the whole raster in memory, so the tiled GTiff
        written block by block is converted at the end instead, on all cores."""
        options = dict(self.controls.creationOptionsFor(self.name, "COG") or {})
        options.setdefault("NUM_THREADS", "ALL_CPUS")
        options.setdefault("BIGTIFF", "IF_SAFER")
        if not self.buildPyramids:
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
            with contextlib.suppress(Exception):
                self.ds.close()
        if self.overviews is not None:
            self.overviews.close()
        _removeFamily(self._tmpStem)


def openOutputs(outfiles: FilenameAssociations, grid: WorkingGrid, controls: ApplierControls,
                cacheCap: CacheCap | None = None) -> dict[tuple[str, int | None], OutputFile]:
    """The outputs, none created yet; each raises ``cacheCap`` by its share when it is."""
    outputs = {}
    for name, seqNum, filename in outfiles:
        outputs[name, seqNum] = OutputFile(name, filename, grid, controls, cacheCap)
    finals = [o.filename for o in outputs.values()]
    if len(set(finals)) != len(finals):
        raise ValueError("two outputs have the same filename")
    return outputs


def finishAll(outputs: dict[Any, OutputFile], timings: Timers) -> None:
    """Complete every output, then move them all into place (see the module's doc)."""
    for output in outputs.values():
        output.finish(timings)
    with timings.interval("closing"):
        for output in outputs.values():
            output.commit()


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


def _staleFamily(filename: str, finalStem: str) -> list[str]:
    """The sidecars of the output now at ``filename``: those GDAL lists for it, and the
    usual appended ones, limited to names of this output (``out.tif.*``, ``out.<ext>``) so
    that nothing else in the directory is ever removed (a VRT lists its sources too)."""
    candidates = {filename + suffix for suffix in _APPENDED_SIDECARS}
    if os.path.exists(filename):
        with contextlib.suppress(Exception), rasterio.open(filename) as old:
            candidates.update(os.path.abspath(f) for f in old.files)
    ours = [p for p in candidates if p != filename and (
        p.startswith(filename + ".") or os.path.splitext(p)[0] == finalStem)]
    return sorted(p for p in ours if os.path.exists(p))


def _removeFamily(stem: str, keep: str | None = None) -> None:
    for path in _family(stem):
        if keep is None or not path.startswith(keep):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
