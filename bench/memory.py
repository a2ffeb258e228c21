"""Driver peak memory, each figure from a fresh interpreter (``bench.probe``): a 100,000-task
imap, and the applier on a raster four times the size of the others."""
from __future__ import annotations

from bench import probe as probe_module
from bench import rasters
from bench.common import Row, mib, probe, verdict

# A ratio of peaks this close to 1 is flat: allocator noise stays well inside it. The
# applier caps GDAL's block cache itself; the rasterio loop's is capped in its probe
# (GDAL_CACHEMAX, bench/probe.py), as GDAL's default (5 % of RAM) would fill with the raster.
FLAT = 1.10


def rows(quick: bool) -> list[Row]:
    return _imap_rows(quick) + _applier_rows(quick)


def _imap_rows(quick: bool) -> list[Row]:
    n = 10_000 if quick else 100_000
    chunksize = 1000  # 100 chunks: imap's default of 1 would start 100,000 interpreters
    base = probe("baseline")["maxrss_kib"]
    small = probe("imap_poolparty", 1000, chunksize, "array")
    big = probe("imap_poolparty", n, chunksize, "array")
    workers = probe("imap_poolparty", n, chunksize, "workers")
    mp = probe("imap_multiprocessing", n, chunksize)
    return [
        (f"driver peak RSS, LocalPool(2).imap of {n:,} small tasks (chunksize {chunksize})",
         f"{mib(big['maxrss_kib'])} (+{mib(big['maxrss_kib'] - base)} over the bare "
         f"interpreter; 1,000 tasks: +{mib(small['maxrss_kib'] - base)}; "
         f"multiprocessing.Pool(2): {mib(mp['maxrss_kib'])}; {big['seconds']:.1f} s)",
         "reported", "-"),
        ("same in workers mode", f"{mib(workers['maxrss_kib'])} ({workers['seconds']:.1f} s)",
         "reported", "-"),
    ]


def _applier_rows(quick: bool) -> list[Row]:
    side = 1024 if quick else rasters.FULL_SIDE
    sides = (side, 2 * side)  # twice the side: four times the pixels
    for s in sides:  # made here, so that no probe's high-water mark includes making them
        rasters.make("int16", s)
    mpix = [s * s / 1e6 for s in sides]
    out = []
    for label, kind, args in (("applier serial", "applier_copy", (0,)),
                              ("applier on 2 local workers", "applier_copy", (2,)),
                              ("rasterio loop (reference)", "rasterio_copy", ())):
        peaks = [probe(kind, s, *args) for s in sides]
        ratio = peaks[1]["maxrss_kib"] / peaks[0]["maxrss_kib"]
        target = "reference" if kind == "rasterio_copy" else f"<= {FLAT}x (flat)"
        cache = (f"GDAL_CACHEMAX={probe_module.GDAL_CACHEMAX_MB} MB" if kind == "rasterio_copy"
                 else "GDAL's cache as the applier caps it")
        out.append((f"driver peak RSS, {label}, int16 copy with default options ({cache}): "
                    f"{mpix[1]:.0f} Mpix / {mpix[0]:.0f} Mpix",
                    f"{ratio:.2f}x ({mib(peaks[1]['maxrss_kib'])} vs {mib(peaks[0]['maxrss_kib'])}; "
                    f"{peaks[1]['seconds']:.1f} s vs {peaks[0]['seconds']:.1f} s)",
                    target, "-" if kind == "rasterio_copy" else verdict(ratio <= FLAT)))
    return out
