"""Workers mode (a few long-lived workers claim chunks) against array mode (one job, here one
new interpreter, per chunk), and its cost per chunk on a raster copy."""
from __future__ import annotations

import os
import shutil
import tempfile

import poolparty_raster as pp
from bench import rasters
from bench.applier import controls_for, copy_block, run_applier
from bench.common import Row, interleaved, repetitions, timed, verdict
from bench.pools import trivial


def rows(quick: bool) -> list[Row]:
    return _trivial_rows(quick) + _raster_rows(quick)


def _trivial_rows(quick: bool) -> list[Row]:
    # Array mode starts a process for each of the 1,000 chunks: two runs each, interleaved,
    # both after the pools' fork server started (a driver process starts it once).
    n, repeats = (100, 1) if quick else (1000, 2)
    with pp.LocalPool(2, mode="workers", progress=False) as workers, \
            pp.LocalPool(2, mode="array", progress=False) as array:
        workers.map(trivial, range(4))  # the fork server both pools share starts once, untimed
        t = interleaved({"workers": lambda: workers.map(trivial, range(n), chunksize=1),
                         "array": lambda: array.map(trivial, range(n), chunksize=1)}, repeats)
    speedup = t.ratio("array", "workers")
    return [(f"{n:,} trivial tasks in {n:,} chunks, LocalPool(2): array mode / workers mode",
             f"{speedup:.1f}x faster ({t['workers']:.2f} s vs {t['array']:.1f} s; "
             f"{t['workers'] / n * 1000:.1f} ms a chunk)", ">= 5x", verdict(speedup >= 5))]


def _raster_rows(quick: bool) -> list[Row]:
    """The applier's copy on a workers-mode LocalPool(2), one block per chunk against its own
    large chunks (16+ blocks). Two outputs: the applier's default creation options (DEFLATE,
    NUM_THREADS=ALL_CPUS: what a user gets) and no compression, where per-chunk cost shows
    most because nothing else takes time."""
    side = rasters.QUICK_SIDE if quick else rasters.FULL_SIDE
    tmp = tempfile.mkdtemp(prefix="pp-bench-workers-")
    out = []
    try:
        with pp.LocalPool(2, mode="workers", progress=False) as pool:
            for label, codec, extra in (("DEFLATE (applier defaults)", "DEFLATE",
                                         {"PREDICTOR": "2", "NUM_THREADS": "ALL_CPUS"}),
                                        ("no compression", "NONE", {})):
                src = rasters.make("int16", side, codec)
                options = {**rasters.creation_options(codec), **extra}
                large, single = os.path.join(tmp, "large.tif"), os.path.join(tmp, "single.tif")
                runs = {
                    "large": lambda: run_applier(copy_block, src, large,
                                                 controls_for(options, pool=pool)),
                    "single": lambda: run_applier(copy_block, src, single, controls_for(
                        options, single_block=True, pool=pool)),
                }
                t = interleaved(runs, repetitions(timed(runs["large"]), quick),
                                outputs={"large": large, "single": single})
                ratio = t.ratio("single", "large")
                blocks = len(rasters.windows(side, side))
                out.append((f"int16 copy, {label}, workers mode: {blocks} 1-block chunks / large chunks",
                            f"{ratio:.2f}x ({t['single']:.2f} s vs {t['large']:.2f} s)",
                            "<= 1.5x", verdict(ratio <= 1.5)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
