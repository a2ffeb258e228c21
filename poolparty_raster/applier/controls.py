"""ApplierControls: RIOS's option object, plus ``setPool``; ConcurrencyStyle and the CW_*
kinds (concurrency.py) are importable from here too."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poolparty_raster.applier.concurrency import (ALL_KINDS, CW_NONE,  # noqa: F401
                                                  CW_PROFILE, CW_THREADS, POOL_KINDS,
                                                  ConcurrencyStyle,
                                                  as_concurrency_style)
from poolparty_raster.applier.colortables import check_color_table_type
from poolparty_raster.applier.gdalbindings import require_gdal
from poolparty_raster.applier.sitedefaults import (DEFAULT_MINOVERVIEWDIM,  # noqa: F401
                                                   DEFAULT_OVERVIEWLEVELS, option_dict,
                                                   site_defaults)
from poolparty_raster.applier.vectors import (DEFAULT_BURN_VALUE, DEFAULT_VECTOR_DTYPE,
                                              DEFAULT_VECTOR_LAYER, DEFAULT_VECTOR_NULL,
                                              VectorSetters)

globals().update({kind: kind for kind in POOL_KINDS})  # CW_SLURM, ...: see concurrency.py

# Footprint types: how the working grid's extent follows from the inputs' extents.
INTERSECTION = 0
UNION = 1
BOUNDS_FROM_REFERENCE = 2

# RIOS's defaults, under RIOS's names (scripts compute with them, e.g. the extent of a
# block in world units).
DEFAULTWINDOWXSIZE = DEFAULTWINDOWYSIZE = 256
DEFAULTOVERLAP = 0
DEFAULTFOOTPRINT = INTERSECTION
DEFAULT_RESAMPLEMETHOD = "near"
RESAMPLE_METHODS = ("near", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode",
                    "min", "max", "med", "q1", "q3", "sum", "rms")


class ApplierControls(VectorSetters):
    """Options for ``apply``. Setters taking ``imagename`` (a symbolic name from infiles or
    outfiles) set the option for that image only; without it they set the default.

    The defaults a site sets for RIOS through its RIOS_DFLT_* environment variables (output
    driver, creation options per driver, overview levels, minimum size and aggregation
    type; see sitedefaults.py) are read when the controls are created."""

    def __init__(self) -> None:
        self.windowxsize = DEFAULTWINDOWXSIZE
        self.windowysize = DEFAULTWINDOWYSIZE
        self.overlap = DEFAULTOVERLAP
        self.footprint = DEFAULTFOOTPRINT
        self.referenceImage: str | None = None
        self.referencePixgrid: Any = None
        self.files_for_extent: list[str] | None = None
        self.progress: Any = None
        self.jobName: str | None = None
        self.concurrency = ConcurrencyStyle()
        self.pool: Any = None
        self.loggingstream: Any = None
        self.tempdir: str | None = None
        self.site = site = site_defaults()
        self._per_image: dict[str, dict[str | None, Any]] = {
            "resampleMethod": {None: DEFAULT_RESAMPLEMETHOD}, "inputNoData": {None: None},
            "statsIgnore": {None: 0}, "driverName": {None: site.driver_name},
            "creationOptions": {None: None}, "omitPyramids": {None: False},
            "omitBasicStats": {None: False}, "omitHistogram": {None: False},
            "overviewAggType": {None: None}, "overviewLevels": {None: site.overview_levels},
            "overviewMinDim": {None: site.overview_min_dim}, "approxStats": {None: False},
            "layerselection": {None: None}, "singlePassPyramids": {None: None},
            "singlePassBasicStats": {None: None}, "singlePassHistogram": {None: None},
            "thematic": {None: False}, "callBeforeClose": {None: None},
            "layerNames": {None: None},
            "autoColorTableType": {None: check_color_table_type(site.auto_color_table_type)},
            "burnValue": {None: DEFAULT_BURN_VALUE}, "burnAttribute": {None: None},
            "filterSQL": {None: None}, "allTouched": {None: False},
            "vectorDatatype": {None: DEFAULT_VECTOR_DTYPE},
            "vectorNull": {None: DEFAULT_VECTOR_NULL}, "vectorLayer": {None: DEFAULT_VECTOR_LAYER},
        }

    def getOptionForImagename(self, option: str, imagename: str | None) -> Any:
        values = self._per_image[option]
        return values.get(imagename, values[None])

    def _set(self, option: str, value: Any, imagename: str | None) -> None:
        self._per_image[option][imagename] = value

    # -- kept for scripts that read these attributes (RIOS has them too) ----------------
    @property
    def overviewLevels(self) -> tuple[int, ...]:
        return self._per_image["overviewLevels"][None]

    @property
    def minOverviewDim(self) -> int:
        return self._per_image["overviewMinDim"][None]

    overviewMinDim = minOverviewDim

    # -- what the writer asks ------------------------------------------------------------
    def creation_options_for(self, imagename: str | None,
                             driver_name: str) -> dict[str, str] | None:
        """The script's options for this image, else the site's for the driver
        (RIOS_DFLT_CREOPT_<driver>), else None: this package's defaults."""
        own = self.getOptionForImagename("creationOptions", imagename)
        return own if own is not None else self.site.creation_options.get(driver_name)

    def overview_agg_type_for(self, imagename: str | None) -> str:
        """The aggregation type set for this image, else RIOS 2's default: NEAREST where it
        writes overviews block by block (its default), the site's RIOS_DFLT_OVERVIEWAGGTYPE
        where it leaves them to GDAL after the last block (setSinglePassPyramids(False))."""
        agg_type = self.getOptionForImagename("overviewAggType", imagename)
        if agg_type is not None:
            return agg_type
        if self.getOptionForImagename("singlePassPyramids", imagename) is False:
            return self.site.overview_agg_type
        return "NEAREST"

    # -- blocks and the working grid -----------------------------------------------------
    def setWindowXsize(self, windowxsize: int) -> None:
        """Block width in pixels (default 256); also the output tile width where GTiff allows."""
        self.windowxsize = _positive("windowxsize", windowxsize)

    def setWindowYsize(self, windowysize: int) -> None:
        """Block height in pixels (default 256)."""
        self.windowysize = _positive("windowysize", windowysize)

    def setWindowSize(self, windowxsize: int, windowysize: int) -> None:
        """Both block dimensions at once, (cols, rows) as RIOS orders them."""
        self.setWindowXsize(windowxsize)
        self.setWindowYsize(windowysize)

    def setOverlap(self, overlap: int) -> None:
        """Margin in pixels read around every block (input and output arrays include it;
        outside the working grid it holds the input's nodata value, else 0)."""
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, not {overlap}")
        self.overlap = int(overlap)

    def setReferenceImage(self, referenceImage: str) -> None:
        """The image (an input's symbolic name or filename, or any other raster file) whose
        CRS and pixel grid are the working grid's. Without one, every input must be on the
        same grid (RIOS's rule), else ``ResampleNeededError``."""
        self.referenceImage = referenceImage

    def setReferencePixgrid(self, referencePixgrid: Any) -> None:
        """A pixel grid (RIOS's ``rios.pixelgrid.PixelGridDefn``, or any object with its
        xMin, xMax, yMin, yMax, xRes, yRes and projection WKT) whose CRS and pixel grid,
        and with BOUNDS_FROM_REFERENCE extent, are the working grid's; in place of
        setReferenceImage."""
        self.referencePixgrid = referencePixgrid

    def setFilesForExtent(self, filesForExtent: list[str] | None) -> None:
        """Raster files whose extents, combined by the footprint type, give the working
        grid's extent instead of the inputs' (they need not be inputs); ignored with
        BOUNDS_FROM_REFERENCE."""
        self.files_for_extent = None if filesForExtent is None else [str(f) for f in filesForExtent]

    def setFootprintType(self, footprint: int) -> None:
        """INTERSECTION (default), UNION or BOUNDS_FROM_REFERENCE."""
        if footprint not in (INTERSECTION, UNION, BOUNDS_FROM_REFERENCE):
            raise ValueError(f"unknown footprint type {footprint!r}")
        self.footprint = footprint

    # -- inputs --------------------------------------------------------------------------
    def setResampleMethod(self, resampleMethod: str, imagename: str | None = None) -> None:
        """GDAL resampling name ("near", "bilinear", "cubic", ...) for inputs not on the
        working grid."""
        if resampleMethod not in RESAMPLE_METHODS:
            raise ValueError(f"unknown resample method {resampleMethod!r}; "
                             f"expected one of {', '.join(RESAMPLE_METHODS)}")
        self._set("resampleMethod", resampleMethod, imagename)

    def setInputNoDataValue(self, nodataValue: float | list[float | None] | None,
                            imagename: str | None = None) -> None:
        """Override the nodata value stored in the input file(s): one value for every band,
        or a list with one per band (of the selected layers, if any)."""
        if isinstance(nodataValue, tuple):
            nodataValue = list(nodataValue)
        self._set("inputNoData", nodataValue, imagename)

    def selectInputImageLayers(self, layerselection: list[int] | None,
                               imagename: str | None = None) -> None:
        """Read only these bands (numbered from 1, in this order) of the input(s)."""
        if layerselection is not None:
            layerselection = [int(b) for b in layerselection]
            if not layerselection or min(layerselection) < 1:
                raise ValueError(f"layer numbers start at 1, not {layerselection}")
        self._set("layerselection", layerselection, imagename)

    setLayerSelection = selectInputImageLayers

    # -- outputs -------------------------------------------------------------------------
    def setStatsIgnore(self, statsIgnore: float | None, imagename: str | None = None) -> None:
        """Value left out of statistics and set as the output's nodata (default 0; None:
        count every pixel and set no nodata)."""
        self._set("statsIgnore", statsIgnore, imagename)

    def setOutputDriverName(self, driverName: str, imagename: str | None = None) -> None:
        """Any GDAL driver rasterio can create with, or "COG" (default: the site's
        RIOS_DFLT_DRIVER, else HFA for a ``.img`` output and GTiff for any other)."""
        self._set("driverName", driverName, imagename)

    def setCreationOptions(self, creationOptions: list[str] | dict[str, str] | None,
                           imagename: str | None = None) -> None:
        """GDAL creation options ("KEY=VALUE" strings or a dict; None: the site's
        RIOS_DFLT_CREOPT_<driver>, else ours). For GTiff they replace the default COMPRESS/
        PREDICTOR; TILED, BLOCKXSIZE/BLOCKYSIZE (= the window), BIGTIFF and NUM_THREADS
        are added when not given."""
        if isinstance(creationOptions, (list, tuple)):
            creationOptions = option_dict(creationOptions)
        if creationOptions is not None:
            creationOptions = {str(k).upper(): str(v) for k, v in creationOptions.items()}
        self._set("creationOptions", creationOptions, imagename)

    def setCalcStats(self, calcStats: bool, imagename: str | None = None) -> None:
        """Statistics, histogram and overviews (default on). As in RIOS 2, it sets the three
        omit options (setOmitPyramids, setOmitBasicStats, setOmitHistogram) at once."""
        for option in ("omitPyramids", "omitBasicStats", "omitHistogram"):
            self._set(option, not calcStats, imagename)

    def setOmitPyramids(self, omitPyramids: bool, imagename: str | None = None) -> None:
        """Skip building overviews (default: built, as RIOS does)."""
        self._set("omitPyramids", bool(omitPyramids), imagename)

    def setOmitBasicStats(self, omitBasicStats: bool, imagename: str | None = None) -> None:
        """Leave out STATISTICS_MINIMUM/MAXIMUM/MEAN/STDDEV (default: written)."""
        self._set("omitBasicStats", bool(omitBasicStats), imagename)

    def setOmitHistogram(self, omitHistogram: bool, imagename: str | None = None) -> None:
        """Leave out the histogram, and the median and mode taken from it (default:
        written)."""
        self._set("omitHistogram", bool(omitHistogram), imagename)

    def setThematic(self, thematicFlag: bool, imagename: str | None = None) -> None:
        """Thematic (classes, not quantities) outputs, as RIOS writes them: every band's
        LAYER_TYPE metadata is "thematic" and its histogram has a bin for every value from
        0 (so the output's values must not be negative). False (default): athematic."""
        self._set("thematic", bool(thematicFlag), imagename)

    def setLayerNames(self, layerNames: list[str] | None, imagename: str | None = None) -> None:
        """Band names (GDAL band descriptions; HFA layer names) of the output(s), one per
        band from the first; fewer names than bands is an error when the output is
        created, more are ignored, as in RIOS."""
        self._set("layerNames", None if layerNames is None else [str(n) for n in layerNames],
                  imagename)

    def setAutoColorTableType(self, autoColorTableType: str | None,
                              imagename: str | None = None) -> None:
        """A colour table, "rainbow", "gray" or "random", with an entry per class from 0
        to each band's maximum, on thematic outputs (athematic ones are left alone, as in
        RIOS); default: $RIOS_DFLT_AUTOCOLORTABLETYPE, else none. HFA outputs and GTiffs
        of Byte or UInt16 get a colour table; others a raster attribute table's colour
        columns, which needs GDAL's Python bindings (colortables.py)."""
        self._set("autoColorTableType", check_color_table_type(autoColorTableType), imagename)

    def setCallBeforeClose(self, func: Callable[..., Any], args: tuple = (),
                           imagename: str | None = None) -> None:
        """Call ``func(ds, *args)`` on each output (or this one) once its pixels,
        statistics and overviews are written, before it is moved into place; ``ds`` is a
        GDAL Dataset open for update, as in RIOS, so this needs GDAL's Python bindings
        (``osgeo``): an ImportError says what to install."""
        require_gdal("setCallBeforeClose")
        self._set("callBeforeClose", (func, tuple(args)), imagename)

    # RIOS 2.0.5's single-pass switches choose between gathering as blocks are written and
    # a second pass with GDAL.
    def setSinglePassPyramids(self, singlePassPyramids: bool | None,
                              imagename: str | None = None) -> None:
        """None (default) or True: overviews take the centre pixel of each cell, gathered as
        the blocks are written (RIOS's single pass; True with an aggregation type other
        than NEAREST is an error, as in RIOS). False: GDAL builds them after the last block,
        with RIOS_DFLT_OVERVIEWAGGTYPE as the default aggregation type, as in RIOS."""
        self._set("singlePassPyramids", singlePassPyramids, imagename)

    def setSinglePassBasicStats(self, singlePassBasicStats: bool | None,
                                imagename: str | None = None) -> None:
        """Accepted: statistics are always gathered in a single pass, exactly, as the
        workers compute the blocks."""
        self._set("singlePassBasicStats", singlePassBasicStats, imagename)

    def setSinglePassHistogram(self, singlePassHistogram: bool | None,
                               imagename: str | None = None) -> None:
        """Accepted: integer bands' histograms are counted in a single pass where their
        range allows, float bands' by a second pass over the output (as in RIOS; the bins
        are the same either way)."""
        self._set("singlePassHistogram", singlePassHistogram, imagename)

    def setApproxStats(self, approxStats: bool, imagename: str | None = None) -> None:
        """Accepted for RIOS scripts; statistics here are always exact (they are gathered
        from the blocks as they are written, which costs no second pass)."""
        self._set("approxStats", bool(approxStats), imagename)

    def setOverviewLevels(self, overviewLevels: list[int], imagename: str | None = None) -> None:
        """Decimation factors tried for overviews (default 4, 8, ..., 512); a level is kept
        while the smaller image side divided by it exceeds the minimum dimension."""
        self._set("overviewLevels", tuple(int(lv) for lv in overviewLevels), imagename)

    def setOverviewMinDim(self, minOverviewDim: int, imagename: str | None = None) -> None:
        """Overview levels are kept while the smaller image side divided by the level
        exceeds this many pixels (default 128, as RIOS 2, or RIOS_DFLT_MINOVERLEVELDIM)."""
        self._set("overviewMinDim", int(minOverviewDim), imagename)

    def setOverviewAggregationType(self, aggType: str | None, imagename: str | None = None) -> None:
        """Overview resampling, as GDAL names it ("NEAREST", "AVERAGE", ...; None: RIOS's
        default, see overview_agg_type_for)."""
        self._set("overviewAggType", aggType, imagename)

    # -- running -------------------------------------------------------------------------
    def setProgress(self, progress: Any) -> None:
        """A RIOS-style progress object: as RIOS's applier does, only its
        ``setProgress(percent)`` is called, with 0 to 100, when the percentage changes."""
        self.progress = progress

    def setJobName(self, jobName: str) -> None:
        """Name for cluster jobs, passed to pool classes that take ``job_name``."""
        self.jobName = jobName

    def setConcurrencyStyle(self, concurrencyStyle: Any) -> None:
        """A ConcurrencyStyle of this package, or RIOS's own ``rios.structures.
        ConcurrencyStyle`` (read attribute by attribute, so its None for
        computeWorkerExtraParams and its kinds' names work as they do in RIOS)."""
        self.concurrency = as_concurrency_style(concurrencyStyle)

    def setNumThreads(self, numThreads: int) -> None:
        """RIOS's older way of asking for compute threads: numThreads > 1 means
        ``ConcurrencyStyle(numComputeWorkers=numThreads, computeWorkerKind=CW_THREADS)``."""
        if numThreads > 1:
            self.concurrency = ConcurrencyStyle(numComputeWorkers=int(numThreads),
                                                computeWorkerKind=CW_THREADS)
        else:
            self.concurrency = ConcurrencyStyle()

    def setPool(self, pool: Any) -> None:
        """Run the tasks on this pool (anything with ``imap_unordered(func, iterable)``:
        this package's pools, multiprocessing's Pool and ThreadPool); it overrides the
        concurrency style's worker kind and is not closed by ``apply``. Tasks are sized by
        ``pool.parallelism`` where the pool has it."""
        if not callable(getattr(pool, "imap_unordered", None)):
            raise TypeError(f"setPool needs a pool with imap_unordered(func, iterable), such "
                            f"as multiprocessing.pool.ThreadPool; got {type(pool).__name__}")
        self.pool = pool

    def setTempdir(self, tempdir: str) -> None:
        """Accepted for RIOS scripts; blocks travel through the pool's work_dir instead."""
        self.tempdir = tempdir

    def setLoggingStream(self, loggingstream: Any) -> None:
        """Accepted and ignored, as in RIOS 2."""
        self.loggingstream = loggingstream

    # -- not supported: explicit, never silently ignored ---------------------------------
    def setAllowOverviewsGdalwarp(self, allowOverviewsGdalwarp: bool) -> None:
        """False (RIOS's default) is what happens here: resampling reads the inputs' full
        resolution, never their overviews. True is not supported."""
        if allowOverviewsGdalwarp:
            raise NotImplementedError("setAllowOverviewsGdalwarp(True) is not supported by "
                                      "poolparty_raster: inputs are always resampled from "
                                      "their full resolution")

    def setJobManagerType(self, jobMgrType: Any) -> None:
        raise NotImplementedError("setJobManagerType (RIOS 1's job managers) is not supported "
                                  "by poolparty_raster: use setConcurrencyStyle or setPool")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return int(value)
