"""ApplierControls and ConcurrencyStyle: RIOS's option objects, plus ``setPool``."""
from __future__ import annotations

import warnings
from typing import Any

# Footprint types: how the working grid's extent follows from the inputs' extents.
INTERSECTION = 0
UNION = 1
BOUNDS_FROM_REFERENCE = 2

# Compute worker kinds (strings, as in RIOS).
CW_NONE = "CW_NONE"
CW_THREADS = "CW_THREADS"
CW_SUBPROC = "CW_SUBPROC"
CW_SLURM = "CW_SLURM"
CW_PBS = "CW_PBS"
CW_SGE = "CW_SGE"
CW_ECS = "CW_ECS"
CW_AWSBATCH = "CW_AWSBATCH"
ALL_KINDS = (CW_NONE, CW_THREADS, CW_SUBPROC, CW_SLURM, CW_PBS, CW_SGE, CW_ECS, CW_AWSBATCH)

DEFAULT_WINDOWSIZE = 256
DEFAULT_OVERVIEWLEVELS = (4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_MINOVERVIEWDIM = 33
RESAMPLE_METHODS = ("near", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode",
                    "min", "max", "med", "q1", "q3", "sum", "rms")


# RIOS's defaults for the options that only its network channel uses; a value other than
# these is something the user asked for, and is told it is ignored here.
_RIOS_TIMEOUTS = {"readBufferInsertTimeout": 10, "readBufferPopTimeout": 10,
                  "computeBufferInsertTimeout": 10, "computeBufferPopTimeout": 20,
                  "computeBarrierTimeout": 600}


class ConcurrencyStyle:
    """How blocks are spread over workers; RIOS's signature.

    numComputeWorkers: threads, or worker jobs for pool kinds (0: the pool's default).
    computeWorkerKind: one of the CW_* constants; CW_NONE runs every block in the calling
    process with nothing pickled. singleBlockComputeWorkers: one block per pool task (RIOS's
    one-job-per-block meaning) instead of many. computeWorkerExtraParams: keyword arguments
    for the pool class's constructor; they win over what this style implies.

    Compute workers always read their own inputs here, and there is no network channel, so
    numReadWorkers, computeWorkersRead, haveSharedTemp, the buffer time-outs and the barrier
    time-out are accepted for compatibility and ignored (one warning names those that were
    set to something other than RIOS's defaults).
    """

    def __init__(self, numReadWorkers: int = 0, numComputeWorkers: int = 0,
                 computeWorkerKind: str = CW_NONE, computeWorkersRead: bool = False,
                 singleBlockComputeWorkers: bool = False, haveSharedTemp: bool = True,
                 readBufferInsertTimeout: float | None = 10,
                 readBufferPopTimeout: float | None = 10,
                 computeBufferInsertTimeout: float | None = 10,
                 computeBufferPopTimeout: float | None = 20,
                 computeBarrierTimeout: float | None = 600,
                 computeWorkerExtraParams: dict[str, Any] | None = None):
        if computeWorkerKind not in ALL_KINDS:
            raise ValueError(f"unknown computeWorkerKind {computeWorkerKind!r}; "
                             f"expected one of {', '.join(ALL_KINDS)}")
        if numComputeWorkers < 0 or numReadWorkers < 0:
            raise ValueError("numComputeWorkers and numReadWorkers must be >= 0")
        if computeWorkerKind == CW_NONE and numComputeWorkers:
            raise ValueError("numComputeWorkers > 0 needs a computeWorkerKind other than CW_NONE")
        self.numReadWorkers = numReadWorkers
        self.numComputeWorkers = numComputeWorkers
        self.computeWorkerKind = computeWorkerKind
        self.computeWorkersRead = computeWorkersRead
        self.singleBlockComputeWorkers = singleBlockComputeWorkers
        self.haveSharedTemp = haveSharedTemp
        self.computeWorkerExtraParams = dict(computeWorkerExtraParams or {})
        given = dict(readBufferInsertTimeout=readBufferInsertTimeout,
                     readBufferPopTimeout=readBufferPopTimeout,
                     computeBufferInsertTimeout=computeBufferInsertTimeout,
                     computeBufferPopTimeout=computeBufferPopTimeout,
                     computeBarrierTimeout=computeBarrierTimeout)
        vars(self).update(given)
        ignored = [f"{k}={v!r}" for k, v in given.items() if v != _RIOS_TIMEOUTS[k]]
        if numReadWorkers:
            ignored.insert(0, f"numReadWorkers={numReadWorkers}")
        if ignored:
            warnings.warn(f"poolparty_raster.applier ignores {', '.join(ignored)}: compute "
                          "workers read their own inputs and there is no network channel, "
                          "so there are no read workers, buffers or barrier to time out",
                          UserWarning, stacklevel=2)


class ApplierControls:
    """Options for ``apply``. Setters taking ``imagename`` (a symbolic name from infiles or
    outfiles) set the option for that image only; without it they set the default."""

    def __init__(self) -> None:
        self.windowxsize = DEFAULT_WINDOWSIZE
        self.windowysize = DEFAULT_WINDOWSIZE
        self.overlap = 0
        self.footprint = INTERSECTION
        self.referenceImage: str | None = None
        self.progress: Any = None
        self.jobName: str | None = None
        self.concurrency = ConcurrencyStyle()
        self.pool: Any = None
        self.loggingstream: Any = None
        self.tempdir: str | None = None
        self._perImage: dict[str, dict[str | None, Any]] = {
            "resampleMethod": {None: "near"}, "inputNoData": {None: None},
            "statsIgnore": {None: 0}, "driverName": {None: "GTiff"},
            "creationOptions": {None: None}, "calcStats": {None: True},
            "omitPyramids": {None: False}, "overviewAggType": {None: "NEAREST"},
            "overviewLevels": {None: DEFAULT_OVERVIEWLEVELS},
            "overviewMinDim": {None: DEFAULT_MINOVERVIEWDIM}, "approxStats": {None: False},
            "layerselection": {None: None},
        }

    def getOptionForImagename(self, option: str, imagename: str | None) -> Any:
        values = self._perImage[option]
        return values.get(imagename, values[None])

    def _set(self, option: str, value: Any, imagename: str | None) -> None:
        self._perImage[option][imagename] = value

    # -- kept for scripts that read these attributes (RIOS has them too) ----------------
    @property
    def overviewLevels(self) -> tuple[int, ...]:
        return self._perImage["overviewLevels"][None]

    @property
    def minOverviewDim(self) -> int:
        return self._perImage["overviewMinDim"][None]

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
        """Any GDAL driver rasterio can create with, or "COG" (default "GTiff")."""
        self._set("driverName", driverName, imagename)

    def setCreationOptions(self, creationOptions: list[str] | dict[str, str] | None,
                           imagename: str | None = None) -> None:
        """GDAL creation options ("KEY=VALUE" strings or a dict). For GTiff they replace the
        default COMPRESS/PREDICTOR; TILED, BLOCKXSIZE/BLOCKYSIZE (= the window), BIGTIFF and
        NUM_THREADS are added when not given."""
        if isinstance(creationOptions, (list, tuple)):
            creationOptions = dict(opt.split("=", 1) for opt in creationOptions)
        if creationOptions is not None:
            creationOptions = {str(k).upper(): str(v) for k, v in creationOptions.items()}
        self._set("creationOptions", creationOptions, imagename)

    def setCalcStats(self, calcStats: bool, imagename: str | None = None) -> None:
        """Statistics, histogram and overviews (default on). As in RIOS, False also skips
        the overviews."""
        self._set("calcStats", bool(calcStats), imagename)

    def setOmitPyramids(self, omitPyramids: bool, imagename: str | None = None) -> None:
        """Skip building overviews (default: built, as RIOS does)."""
        self._set("omitPyramids", bool(omitPyramids), imagename)

    def setApproxStats(self, approxStats: bool, imagename: str | None = None) -> None:
        """Accepted for RIOS scripts; statistics here are always exact (they are gathered
        from the blocks as they are written, which costs no second pass)."""
        self._set("approxStats", bool(approxStats), imagename)

    def setOverviewLevels(self, overviewLevels: list[int], imagename: str | None = None) -> None:
        """Decimation factors tried for overviews (default 4, 8, ..., 512); a level is kept
        while the smaller image side divided by it exceeds the minimum dimension."""
        self._set("overviewLevels", tuple(int(lv) for lv in overviewLevels), imagename)

    def setOverviewMinDim(self, minOverviewDim: int, imagename: str | None = None) -> None:
        """Smallest overview side to build (default 33)."""
        self._set("overviewMinDim", int(minOverviewDim), imagename)

    def setOverviewAggregationType(self, aggType: str | None, imagename: str | None = None) -> None:
        """Overview resampling, as GDAL names it (default "NEAREST"; None: the default)."""
        self._set("overviewAggType", aggType or "NEAREST", imagename)

    # -- running -------------------------------------------------------------------------
    def setProgress(self, progress: Any) -> None:
        """A RIOS-style progress object (setTotalSteps, setProgress, reset)."""
        self.progress = progress

    def setJobName(self, jobName: str) -> None:
        """Name for cluster jobs, passed to pool classes that take ``job_name``."""
        self.jobName = jobName

    def setConcurrencyStyle(self, concurrencyStyle: ConcurrencyStyle) -> None:
        self.concurrency = concurrencyStyle

    def setNumThreads(self, numThreads: int) -> None:
        """RIOS's older way of asking for compute threads: numThreads > 1 means
        ``ConcurrencyStyle(numComputeWorkers=numThreads, computeWorkerKind=CW_THREADS)``."""
        if numThreads > 1:
            self.concurrency = ConcurrencyStyle(numComputeWorkers=int(numThreads),
                                                computeWorkerKind=CW_THREADS)
        else:
            self.concurrency = ConcurrencyStyle()

    def setPool(self, pool: Any) -> None:
        """Run the tasks on this pool (anything with ``imap_unordered(func, iterable)``);
        it overrides the concurrency style's worker kind and is not closed by ``apply``.
        Tasks are sized by ``pool.parallelism`` where the pool has it."""
        self.pool = pool

    def setTempdir(self, tempdir: str) -> None:
        """Accepted for RIOS scripts; blocks travel through the pool's work_dir instead."""
        self.tempdir = tempdir

    def setLoggingStream(self, loggingstream: Any) -> None:
        """Accepted and ignored, as in RIOS 2."""
        self.loggingstream = loggingstream

    # -- not supported: explicit, never silently ignored ---------------------------------
    def setThematic(self, thematicFlag: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setThematic is not supported by poolparty_raster")

    def setLayerNames(self, layerNames: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setLayerNames is not supported by poolparty_raster")

    def setAutoColorTableType(self, autoColorTableType: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setAutoColorTableType is not supported by poolparty_raster")

    def setReferencePixgrid(self, referencePixgrid: Any) -> None:
        raise NotImplementedError("setReferencePixgrid is not supported by poolparty_raster; "
                                  "use setReferenceImage")

    def setJobManagerType(self, jobMgrType: Any) -> None:
        raise NotImplementedError("setJobManagerType (RIOS 1's job managers) is not supported "
                                  "by poolparty_raster: use setConcurrencyStyle or setPool")

    def setVectorDatatype(self, vectordatatype: Any, imagename: str | None = None) -> None:
        _noVectors("setVectorDatatype")

    def setBurnValue(self, burnvalue: Any, vectorname: str | None = None) -> None:
        _noVectors("setBurnValue")

    def setBurnAttribute(self, burnattribute: Any, vectorname: str | None = None) -> None:
        _noVectors("setBurnAttribute")

    def setFilterSQL(self, filtersql: Any, vectorname: str | None = None) -> None:
        _noVectors("setFilterSQL")

    def setAlltouched(self, alltouched: Any, vectorname: str | None = None) -> None:
        _noVectors("setAlltouched")

    def setVectorNull(self, nullval: Any, vectorname: str | None = None) -> None:
        _noVectors("setVectorNull")

    def setVectorlayer(self, vectorlayer: Any, vectorname: str | None = None) -> None:
        _noVectors("setVectorlayer")


def _noVectors(setter: str) -> None:
    raise NotImplementedError(f"{setter}: vector inputs are not supported by poolparty_raster "
                              "(rasterise them first, e.g. with rasterio.features.rasterize)")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return int(value)
