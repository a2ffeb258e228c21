"""ApplierControls and ConcurrencyStyle: RIOS's option objects, plus ``setPool``."""
from __future__ import annotations

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


class ConcurrencyStyle:
    """How blocks are spread over workers.

    numComputeWorkers: threads or pool workers (0: the machine's CPU count where a pool
      needs a number). computeWorkerKind: one of the CW_* constants; CW_NONE runs every
      block in the calling process with nothing pickled. singleBlockComputeWorkers: one
      block per pool task instead of many. computeWorkerExtraParams: keyword arguments for
      the pool class's constructor. Compute workers always read their own inputs, so
      separate read workers (numReadWorkers > 0, computeWorkersRead=False) are not offered.
    """

    def __init__(self, numReadWorkers: int = 0, numComputeWorkers: int = 0,
                 computeWorkerKind: str = CW_NONE, computeWorkersRead: bool = True,
                 singleBlockComputeWorkers: bool = False,
                 computeWorkerExtraParams: dict[str, Any] | None = None):
        if computeWorkerKind not in ALL_KINDS:
            raise ValueError(f"unknown computeWorkerKind {computeWorkerKind!r}; "
                             f"expected one of {', '.join(ALL_KINDS)}")
        if numReadWorkers or not computeWorkersRead:
            raise NotImplementedError("read workers are not implemented: compute workers "
                                      "read their own inputs (use numReadWorkers=0, "
                                      "computeWorkersRead=True)")
        if numComputeWorkers < 0:
            raise ValueError(f"numComputeWorkers must be >= 0, not {numComputeWorkers}")
        if computeWorkerKind == CW_NONE and numComputeWorkers:
            raise ValueError("numComputeWorkers > 0 needs a computeWorkerKind other than CW_NONE")
        self.numReadWorkers = numReadWorkers
        self.numComputeWorkers = numComputeWorkers
        self.computeWorkerKind = computeWorkerKind
        self.computeWorkersRead = computeWorkersRead
        self.singleBlockComputeWorkers = singleBlockComputeWorkers
        self.computeWorkerExtraParams = dict(computeWorkerExtraParams or {})


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
        self.overviewLevels = DEFAULT_OVERVIEWLEVELS
        self.minOverviewDim = DEFAULT_MINOVERVIEWDIM
        self._perImage: dict[str, dict[str | None, Any]] = {
            "resampleMethod": {None: "near"}, "inputNoData": {None: None},
            "statsIgnore": {None: 0}, "driverName": {None: "GTiff"},
            "creationOptions": {None: None}, "calcStats": {None: True},
            "omitPyramids": {None: False}, "overviewAggType": {None: "NEAREST"},
        }

    def getOptionForImagename(self, option: str, imagename: str | None) -> Any:
        values = self._perImage[option]
        return values.get(imagename, values[None])

    def _set(self, option: str, value: Any, imagename: str | None) -> None:
        self._perImage[option][imagename] = value

    def setWindowXsize(self, windowxsize: int) -> None:
        """Block width in pixels (default 256); also the output tile width where GTiff allows."""
        self.windowxsize = _positive("windowxsize", windowxsize)

    def setWindowYsize(self, windowysize: int) -> None:
        """Block height in pixels (default 256)."""
        self.windowysize = _positive("windowysize", windowysize)

    def setOverlap(self, overlap: int) -> None:
        """Margin in pixels read around every block (input and output arrays include it;
        outside the working grid it holds the input's nodata value, else 0)."""
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, not {overlap}")
        self.overlap = int(overlap)

    def setReferenceImage(self, referenceImage: str) -> None:
        """The input (filename or symbolic name) whose CRS and pixel grid are the working
        grid's; default the first input."""
        self.referenceImage = referenceImage

    def setFootprintType(self, footprint: int) -> None:
        """INTERSECTION (default), UNION or BOUNDS_FROM_REFERENCE."""
        if footprint not in (INTERSECTION, UNION, BOUNDS_FROM_REFERENCE):
            raise ValueError(f"unknown footprint type {footprint!r}")
        self.footprint = footprint

    def setResampleMethod(self, resampleMethod: str, imagename: str | None = None) -> None:
        """GDAL resampling name ("near", "bilinear", "cubic", ...) for inputs not on the
        working grid."""
        if resampleMethod not in RESAMPLE_METHODS:
            raise ValueError(f"unknown resample method {resampleMethod!r}; "
                             f"expected one of {', '.join(RESAMPLE_METHODS)}")
        self._set("resampleMethod", resampleMethod, imagename)

    def setInputNoDataValue(self, nodataValue: float | None, imagename: str | None = None) -> None:
        """Override the nodata value stored in the input file(s)."""
        self._set("inputNoData", nodataValue, imagename)

    def setStatsIgnore(self, statsIgnore: float | None, imagename: str | None = None) -> None:
        """Value left out of statistics and set as the output's nodata (default 0; None:
        count every pixel and set no nodata)."""
        self._set("statsIgnore", statsIgnore, imagename)

    def setOutputDriverName(self, driverName: str, imagename: str | None = None) -> None:
        """Any GDAL driver rasterio can create with, or "COG" (default "GTiff")."""
        self._set("driverName", driverName, imagename)

    def setCreationOptions(self, creationOptions: list[str] | dict[str, str] | None,
                           imagename: str | None = None) -> None:
        """GDAL creation options ("KEY=VALUE" strings or a dict); they replace the defaults."""
        if isinstance(creationOptions, (list, tuple)):
            creationOptions = dict(opt.split("=", 1) for opt in creationOptions)
        self._set("creationOptions", creationOptions, imagename)

    def setCalcStats(self, calcStats: bool, imagename: str | None = None) -> None:
        """Write STATISTICS_MINIMUM/MAXIMUM/MEAN/STDDEV metadata on each band (default on)."""
        self._set("calcStats", bool(calcStats), imagename)

    def setOmitPyramids(self, omitPyramids: bool, imagename: str | None = None) -> None:
        """Skip building overviews (default: built, as RIOS does)."""
        self._set("omitPyramids", bool(omitPyramids), imagename)

    def setOverviewLevels(self, overviewLevels: list[int]) -> None:
        """Decimation factors tried for overviews (default 4, 8, ..., 512); a level is kept
        while the smaller image side divided by it exceeds the minimum dimension (33)."""
        self.overviewLevels = tuple(overviewLevels)

    def setOverviewAggregationType(self, aggType: str, imagename: str | None = None) -> None:
        """Overview resampling, as GDAL names it (default "NEAREST")."""
        self._set("overviewAggType", aggType, imagename)

    def setProgress(self, progress: Any) -> None:
        """A RIOS-style progress object (setTotalSteps, setProgress, reset)."""
        self.progress = progress

    def setJobName(self, jobName: str) -> None:
        """Name for cluster jobs, passed to pool classes that take ``job_name``."""
        self.jobName = jobName

    def setConcurrencyStyle(self, concurrencyStyle: ConcurrencyStyle) -> None:
        self.concurrency = concurrencyStyle

    def setPool(self, pool: Any) -> None:
        """Run the tasks on this pool (anything with ``imap_unordered(func, iterable)``);
        it overrides the concurrency style's worker kind and is not closed by ``apply``."""
        self.pool = pool

    def setLayerSelection(self, layerselection: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setLayerSelection is not supported by poolparty_raster")

    def setThematic(self, thematicFlag: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setThematic is not supported by poolparty_raster")

    def setLayerNames(self, layerNames: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setLayerNames is not supported by poolparty_raster")

    def setAutoColorTableType(self, autoColorTableType: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("setAutoColorTableType is not supported by poolparty_raster")

    def setReferencePixgrid(self, referencePixgrid: Any) -> None:
        raise NotImplementedError("setReferencePixgrid is not supported by poolparty_raster; "
                                  "use setReferenceImage")

    def setVectorDatatype(self, vectordatatype: Any, imagename: str | None = None) -> None:
        raise NotImplementedError("vector inputs are not supported by poolparty_raster")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return int(value)
