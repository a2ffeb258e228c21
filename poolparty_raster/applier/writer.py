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

from poolparty_raster.applier.colortables import (table_writer, write_color_tables,
                                                  write_rat_color_tables)
from poolparty_raster.applier.controls import ApplierControls
from poolparty_raster.applier.gdalcache import CacheCap, output_cache_bytes
from poolparty_raster.applier.finishing import call_with_gdal_dataset, write_second_pass_histograms
from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.histogram import HistogramPlan, histogram_tags
from poolparty_raster.applier.pyramids import (DIRECT_PYRAMID_DRIVERS, CentredOverviews,
                                               centred_pyramids_wanted, overview_levels)
from poolparty_raster.applier.sitedefaults import driver_for_filename
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


def default_creation_options(driver: str, dtype: np.dtype, windowxsize: int,
                             windowysize: int) -> dict[str, str]:
    """GTiff: tiled (tiles = blocks, so each block write fills whole tiles), DEFLATE with
    the predictor suited to the dtype, BigTIFF when needed, all cores compressing. HFA:
    RIOS's (compressed; IGNOREUTM keeps a transverse Mercator projection as given)."""
    if driver == "HFA":
        return dict(_HFA_OPTIONS)
    if driver != "GTiff":
        return {}
    options = {**_structural_options(windowxsize, windowysize), "COMPRESS": "DEFLATE"}
    if dtype.kind in "iu":
        options["PREDICTOR"] = "2"
    elif dtype.kind == "f":
        options["PREDICTOR"] = "3"
    return options


def _structural_options(windowxsize: int, windowysize: int) -> dict[str, str]:
    aligned = windowxsize % 16 == 0 and windowysize % 16 == 0
    return {"TILED": "YES", "BLOCKXSIZE": str(windowxsize if aligned else _FALLBACK_TILE),
            "BLOCKYSIZE": str(windowysize if aligned else _FALLBACK_TILE),
            "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}


def creation_options(driver: str, dtype: np.dtype, user: dict[str, str] | None,
                     windowxsize: int, windowysize: int) -> dict[str, str]:
    """The user's options (they choose COMPRESS and PREDICTOR) with the structural GTiff
    defaults added where not given: tiles aligned with the windows, BIGTIFF, NUM_THREADS."""
    if user is None:
        return default_creation_options(driver, dtype, windowxsize, windowysize)
    options = dict(user)
    if driver == "GTiff":
        for key, value in _structural_options(windowxsize, windowysize).items():
            if key.startswith("BLOCK") and options.get("TILED", "YES").upper() in _FALSE:
                continue  # stripped, as asked: no tile sizes
            options.setdefault(key, value)
    return options


class OutputFile:
    """One output raster being written; ``finish`` then ``commit``, or ``abort``."""

    def __init__(self, name: str, filename: str, grid: WorkingGrid, controls: ApplierControls,
                 cache_cap: CacheCap | None = None):
        self.name = name
        self.cache_cap = cache_cap
        self.filename = os.path.abspath(filename)
        self.grid = grid
        self.controls = controls
        option = lambda key: controls.getOptionForImagename(key, name)  # noqa: E731
        self.driver = option("driverName") or driver_for_filename(self.filename)
        self.stats_ignore = option("statsIgnore")
        self.basic_stats = not option("omitBasicStats")
        self.histogram = not option("omitHistogram")
        # Whether the workers gather statistics for this output at all.
        self.calc_stats = self.basic_stats or self.histogram
        self.build_pyramids = not option("omitPyramids")
        self.thematic = option("thematic")
        self.layer_names = option("layerNames")
        # RIOS colours thematic outputs only; the table needs each band's maximum.
        self.color_table_type = option("autoColorTableType") if self.thematic else None
        self._table_writer: str | None = None  # colortables.table_writer, at the first block
        self.calc_stats = self.calc_stats or self.color_table_type is not None
        self.call_before_close = option("callBeforeClose")
        gdal_driver = "GTiff" if self.driver == "COG" else self.driver
        self.centred_pyramids = self.build_pyramids and centred_pyramids_wanted(
            gdal_driver, controls.overview_agg_type_for(name), option("singlePassPyramids"))
        self.overviews: CentredOverviews | None = None
        directory, base = os.path.split(self.filename)
        stem, ext = os.path.splitext(base)
        self._final_stem = os.path.join(directory, stem)
        self._tmp_stem = os.path.join(directory, f".{base}.{TEMP_MARK}.{uuid.uuid4().hex[:8]}")
        self._tmp_name = self._tmp_stem + ext
        self.ds: Any = None
        self.dtype: np.dtype | None = None
        self.stats: list[BandStats] = []

    def write(self, block_defn: ApplierBlockDefn, array: np.ndarray) -> None:
        """Write an array (bands, nrows, ncols) at the block's place."""
        if self.ds is None:
            self._create(array)
        if array.shape[0] != self._count:
            raise ValueError(f"output {self.name}: {array.shape[0]} bands on the block at "
                             f"top={block_defn.top}, left={block_defn.left}, {self._count} "
                             "on earlier blocks")
        if array.dtype is not self.dtype and array.dtype != self.dtype:
            array = array.astype(self.dtype)
        self.ds.write(array, window=Window(block_defn.left, block_defn.top,
                                           block_defn.ncols, block_defn.nrows))
        if self.overviews is not None:
            self.overviews.add(block_defn, array)

    def add_stats(self, bands: list[BandStats]) -> None:
        """Merge one task's statistics of this output."""
        if not self.stats:
            self.stats = [BandStats(self.stats_ignore) for _ in bands]
        for mine, theirs in zip(self.stats, bands):
            mine.merge(theirs)

    def _create(self, array: np.ndarray) -> None:
        self.dtype = dtype = array.dtype
        self._count = array.shape[0]
        if self.cache_cap is not None:
            self.cache_cap.grow(output_cache_bytes(self.controls.windowxsize,
                                                   self.controls.windowysize,
                                                   self._count * dtype.itemsize))
        if self.color_table_type is not None:
            self._table_writer = table_writer(self.driver, dtype, self.name)
        if self.layer_names is not None and len(self.layer_names) < self._count:
            raise ValueError(f"output {self.name}: {len(self.layer_names)} layer names "
                             f"(setLayerNames) for {self._count} bands")
        gdal_driver = "GTiff" if self.driver == "COG" else self.driver
        user = self.controls.creation_options_for(self.name, self.driver)
        # COG: the user's options are for the conversion; the intermediate is our tiled GTiff.
        options = creation_options(gdal_driver, dtype, None if self.driver == "COG" else user,
                                   self.controls.windowxsize, self.controls.windowysize)
        self.ds = rasterio.open(
            self._tmp_name, "w", driver=gdal_driver, width=self.grid.width,
            height=self.grid.height, count=array.shape[0], dtype=dtype, crs=self.grid.crs,
            transform=self.grid.transform, nodata=_nodata_for(self.stats_ignore, dtype),
            **options)
        if self.thematic:
            for band_num in range(1, self._count + 1):
                self.ds.update_tags(band_num, LAYER_TYPE="thematic")
        for band_num, layer_name in zip(range(1, self._count + 1), self.layer_names or []):
            self.ds.set_band_description(band_num, layer_name)
        if self.centred_pyramids:
            levels = self._levels()
            if levels:
                CentredOverviews.create_levels(self.ds, levels)
                self.overviews = CentredOverviews(levels, self._count, self.grid.width,
                                                  self.grid.height, dtype,
                                                  os.path.dirname(self._tmp_name))

    def finish(self, timings: Timers) -> None:
        """Phase one: overviews, statistics, the user's callback, close, COG conversion;
        nothing renamed yet."""
        if self.ds is None:
            raise ValueError(f"output {self.name}: the user function wrote no blocks")
        if self.build_pyramids and not self.centred_pyramids:
            with timings.interval("pyramids"):
                self._build_gdal_overviews()
        second_pass = []
        if self.calc_stats:
            with timings.interval("basicstats"):
                second_pass = self._write_gathered_stats()
        if self._table_writer == "colormap":
            with timings.interval("colortable"):
                write_color_tables(self.ds, self.color_table_type, self._class_maxima())
        with timings.interval("closing"):
            self.ds.close()
        if second_pass:
            with timings.interval("histogram"):
                write_second_pass_histograms(self._tmp_name, second_pass, self.stats_ignore,
                                             self.dtype)
        if self.overviews is not None:
            with timings.interval("pyramids"):
                self.overviews.write(self._tmp_name)
                self.overviews.close()
        if self._table_writer == "rat":
            with timings.interval("colortable"):
                write_rat_color_tables(self._tmp_name, self.color_table_type,
                                       self._class_maxima())
        if self.call_before_close is not None:
            with timings.interval("beforeclose"):
                call_with_gdal_dataset(self._tmp_name, *self.call_before_close)
        if self.driver == "COG":
            with timings.interval("cog"):
                self._to_cog()

    def _class_maxima(self) -> list[float]:
        """Each band's largest class (0 for a band with no counted pixel)."""
        return [max(b.maximum, 0) if b.count else 0 for b in self.stats]

    def _write_gathered_stats(self) -> list[tuple[int, HistogramPlan]]:
        """Tags of what the blocks gave; returns the bands whose histogram needs a second
        pass over the output (float bands, integer bands of too wide a range)."""
        second_pass = []
        for band_num, band_stats in enumerate(self.stats, start=1):
            tags = band_stats.basic_tags() if self.basic_stats else {}
            plan = band_stats.histogram_plan(self.dtype, self.thematic) if self.histogram else None
            if plan is not None:
                hist = band_stats.counted_histogram(plan)
                if hist is None:
                    second_pass.append((band_num, plan))
                else:
                    tags.update(histogram_tags(plan, hist, self.dtype))
            if tags:
                self.ds.update_tags(band_num, **tags)
        return second_pass

    def report(self, single_pass: SinglePassReport) -> None:
        """Say what was made as the blocks were written (ApplierReturn.singlePassMgr)."""
        gdal_driver = "GTiff" if self.driver == "COG" else self.driver
        single_pass.directPyramidsSupported[self.name] = gdal_driver in DIRECT_PYRAMID_DRIVERS
        single_pass.pyramids[self.name] = self.centred_pyramids
        single_pass.basic_stats[self.name] = self.basic_stats
        single_pass.histogram[self.name] = (self.histogram and self.dtype is not None
                                            and self.dtype.kind in "iu"
                                            and all(b.counts is not None or b.count == 0
                                                    for b in self.stats))

    def commit(self) -> None:
        """Phase two: replace the destination's whole family. The old sidecars go first
        (the old output stays valid without them), then the new main file replaces the old
        one atomically, then the new sidecars join it: at no instant does a new file sit
        beside an old one."""
        new_family = _family(self._tmp_stem)
        for path in _stale_family(self.filename, self._final_stem):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        for path in sorted(new_family, key=lambda p: p != self._tmp_name):
            os.replace(path, self._final_stem + path[len(self._tmp_stem):])

    def _levels(self) -> list[int]:
        option = lambda key: self.controls.getOptionForImagename(key, self.name)  # noqa: E731
        return overview_levels(option("overviewLevels"), option("overviewMinDim"),
                               self.grid.width, self.grid.height)

    def _build_gdal_overviews(self) -> None:
        """GDAL's overviews after the last block, where RIOS leaves them to GDAL too
        (setSinglePassPyramids(False), an aggregation type other than NEAREST)."""
        levels = self._levels()
        if levels:
            agg_type = self.controls.overview_agg_type_for(self.name)
            self.ds.build_overviews(levels, Resampling[_overview_resampling(agg_type)])

    def _to_cog(self) -> None:
        """rasterio's COG driver holds the whole raster in memory, so the tiled GTiff
        written block by block is converted at the end instead, on all cores."""
        options = dict(self.controls.creation_options_for(self.name, "COG") or {})
        options.setdefault("NUM_THREADS", "ALL_CPUS")
        options.setdefault("BIGTIFF", "IF_SAFER")
        if not self.build_pyramids:
            options.setdefault("OVERVIEWS", "NONE")
        cog_stem = self._tmp_stem + ".cog"
        cog_name = cog_stem + os.path.splitext(self._tmp_name)[1]
        try:
            rasterio.shutil.copy(self._tmp_name, cog_name, driver="COG", **options)
        except BaseException:
            _remove_family(cog_stem)
            raise
        _remove_family(self._tmp_stem, keep=cog_stem)
        self._tmp_stem, self._tmp_name = cog_stem, cog_name

    def abort(self) -> None:
        """Close and delete the temporary file(s); the destination is left as it was."""
        if self.ds is not None and not self.ds.closed:
            with contextlib.suppress(Exception):
                self.ds.close()
        if self.overviews is not None:
            self.overviews.close()
        _remove_family(self._tmp_stem)


def open_outputs(outfiles: FilenameAssociations, grid: WorkingGrid, controls: ApplierControls,
                 cache_cap: CacheCap | None = None) -> dict[tuple[str, int | None], OutputFile]:
    """The outputs, none created yet; each raises ``cache_cap`` by its share when it is."""
    outputs = {}
    for name, seq_num, filename in outfiles:
        outputs[name, seq_num] = OutputFile(name, filename, grid, controls, cache_cap)
    finals = [o.filename for o in outputs.values()]
    if len(set(finals)) != len(finals):
        raise ValueError("two outputs have the same filename")
    return outputs


def finish_all(outputs: dict[Any, OutputFile], timings: Timers) -> None:
    """Complete every output, then move them all into place (see the module's doc)."""
    for output in outputs.values():
        output.finish(timings)
    with timings.interval("closing"):
        for output in outputs.values():
            output.commit()


def _nodata_for(value: float | None, dtype: np.dtype) -> float | None:
    """The stats-ignore value as the band nodata, when the dtype can hold it."""
    if value is None or dtype.kind == "c":
        return None
    if dtype.kind == "f":
        return value
    info = np.iinfo(dtype)
    return value if float(value).is_integer() and info.min <= value <= info.max else None


def _overview_resampling(agg_type: str) -> str:
    name = agg_type.lower()
    return {"near": "nearest", "cubicspline": "cubic_spline"}.get(name, name)


def _family(stem: str) -> list[str]:
    directory, prefix = os.path.split(stem)
    return [os.path.join(directory, f) for f in os.listdir(directory or ".")
            if f.startswith(prefix)]


def _stale_family(filename: str, final_stem: str) -> list[str]:
    """The sidecars of the output now at ``filename``: those GDAL lists for it, and the
    usual appended ones, limited to names of this output (``out.tif.*``, ``out.<ext>``) so
    that nothing else in the directory is ever removed (a VRT lists its sources too)."""
    candidates = {filename + suffix for suffix in _APPENDED_SIDECARS}
    if os.path.exists(filename):
        with contextlib.suppress(Exception), rasterio.open(filename) as old:
            candidates.update(os.path.abspath(f) for f in old.files)
    ours = [p for p in candidates if p != filename and (
        p.startswith(filename + ".") or os.path.splitext(p)[0] == final_stem)]
    return sorted(p for p in ours if os.path.exists(p))


def _remove_family(stem: str, keep: str | None = None) -> None:
    for path in _family(stem):
        if keep is None or not path.startswith(keep):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
