"""``python -m bench.probe KIND ARGS...``: one measurement in a fresh interpreter; prints one
JSON line with the driver's peak RSS (KiB) and the seconds taken.

Only this process is measured (RUSAGE_SELF): pool workers are other processes, so their
memory is not the driver's."""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time

import poolparty_raster as pp
from bench import rasters
from bench.pools import trivial


def baseline() -> None:
    """The interpreter with what every other probe imports, and nothing run."""
    import numpy  # noqa: F401
    import rasterio  # noqa: F401
    from poolparty_raster import applier  # noqa: F401


def imap_poolparty(n: str, chunksize: str, mode: str) -> None:
    with pp.LocalPool(2, progress=False, mode=mode) as pool:
        for _ in pool.imap(trivial, range(int(n)), chunksize=int(chunksize)):
            pass


def map_trivial(n: str, chunksize: str = "1") -> None:
    """``LocalPool(2).map`` (workers mode, its default) of ``n`` trivial tasks, one chunk
    each unless told: what the driver holds per chunk, and its cost per chunk."""
    with pp.LocalPool(2, progress=False) as pool:
        results = pool.map(trivial, range(int(n)), chunksize=int(chunksize))
    if len(results) != int(n) or results[-1] != int(n):
        raise AssertionError(f"{len(results)} results, the last {results[-1:]}")


def imap_multiprocessing(n: str, chunksize: str) -> None:
    with multiprocessing.Pool(2) as pool:
        for _ in pool.imap(trivial, range(int(n)), chunksize=int(chunksize)):
            pass


# GDAL's block cache defaults to 5 % of RAM (1.2 GiB here) and fills with whatever is
# written: capped for the rasterio loop (the applier caps its own), so that its peak shows
# GDAL's working memory, not the cache's.
GDAL_CACHEMAX_MB = "64"


def applier_copy(side: str, workers: str) -> None:
    """The applier's copy with its default creation options, statistics and overviews: all
    the driver does for a user who changes nothing."""
    from poolparty_raster import applier
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = rasters.make("int16", int(side))
    with tempfile.TemporaryDirectory(prefix="pp-bench-mem-") as tmp:
        outfiles.out = f"{tmp}/out.tif"
        controls = applier.ApplierControls()
        if int(workers):
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                numComputeWorkers=int(workers), computeWorkerKind=applier.CW_SUBPROC,
                computeWorkerExtraParams={"progress": False}))
        applier.apply(_copy, infiles, outfiles, controls=controls)


def rasterio_copy(side: str) -> None:
    """The floor loop with the applier's default creation options, for GDAL's own share."""
    os.environ["GDAL_CACHEMAX"] = GDAL_CACHEMAX_MB
    src = rasters.make("int16", int(side))
    with tempfile.TemporaryDirectory(prefix="pp-bench-mem-") as tmp:
        rasters.floor_copy(src, f"{tmp}/out.tif", {**rasters.TILED, "COMPRESS": "DEFLATE",
                                                   "PREDICTOR": "2", "NUM_THREADS": "ALL_CPUS"})


def _copy(info, inputs, outputs) -> None:
    outputs.out = inputs.img


KINDS = {"baseline": baseline, "imap_poolparty": imap_poolparty, "map_trivial": map_trivial,
         "imap_multiprocessing": imap_multiprocessing, "applier_copy": applier_copy,
         "rasterio_copy": rasterio_copy}

if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    baseline()
    start, start_cpu = time.perf_counter(), time.process_time()
    KINDS[kind](*args)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    # ru_maxrss survives fork and exec on Linux: a probe started by a big parent reports at
    # least the parent's RSS. VmHWM belongs to this process image alone, so it is the figure;
    # ru_maxrss is kept beside it for the record.
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"maxrss_kib": hwm, "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "seconds": seconds, "cpu_seconds": cpu_seconds}))
