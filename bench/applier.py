"""Applier benchmarks: the raster applier against a plain rasterio window loop (the floor),
and against RIOS itself where it can be imported (``rios_rows``).

Serial copies write with exactly the floor's creation options (tiled 256, the codec, and
``NUM_THREADS=1`` given explicitly, since the applier otherwise adds ``ALL_CPUS``), without
statistics or overviews, so the ratio measures the applier's own overhead and not extra or
less work. Inputs are stored with the codec they are copied to. Every arm's destination is
deleted before it is timed (replacing an existing file costs the unlink of its pages, which
the floor, writing a fresh file, would not pay).
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

import numpy as np
import rasterio

from bench import rasters
from bench.common import ROOT, Row, interleaved, repetitions, skipped, timed, verdict
from poolparty_raster import LocalPool, applier
from poolparty_raster.applier.gdalcache import (effective_cap, input_cache_bytes,
                                                output_cache_bytes)
from poolparty_raster.applier.grid import describe_rasters

# Work of the compute benchmarks: several seconds of CPU serially on 41 Mpix, far more than
# the I/O, as a compute-bound job would. numpy's speed differs between machines by its SIMD
# (6 rounds took 4-7 s serially on one machine here, 1 s on another with AVX-512), so its
# rounds are calibrated where the benchmark runs; pure Python's varies far less: 1 round of
# the GIL-bound function takes 6-10 s. (5 rounds of it took 37 s, too long to interleave.)
NUMPY_SECONDS = 4.0
GIL_ROUNDS = 1
SERIAL = {"NUM_THREADS": "1"}


def copy_block(info: Any, inputs: Any, outputs: Any) -> None:
    outputs.out = inputs.img


class NumpyHeavy:
    """A block function of vectorised float maths, ``rounds`` times over the block: numpy's
    ufuncs, one thread each (no BLAS in play). An instance pickles with its rounds, so
    workers run the same work as the driver."""

    def __init__(self, rounds: int):
        self.rounds = rounds

    def __call__(self, info: Any, inputs: Any, outputs: Any) -> None:
        a = inputs.img.astype(np.float32)
        for _ in range(self.rounds):
            a = np.sqrt(np.abs(np.sin(a) * 3.0 + np.cos(a * 0.5))) + np.log1p(np.abs(a))
        outputs.out = a


def calibrated_numpy_heavy(src: str, windows: list[Any], seconds: float) -> NumpyHeavy:
    """The NumpyHeavy whose rounds make all ``windows`` of ``src`` take about ``seconds``
    serially on this machine (timed on 16 windows spread over the raster, at 4 rounds,
    for half a second at least)."""
    sample = windows[::max(1, len(windows) // 16)][:16]
    with rasterio.open(src) as dataset:
        inputs = [types.SimpleNamespace(img=dataset.read(window=window)) for window in sample]
    probe, outputs = NumpyHeavy(4), types.SimpleNamespace()
    probe(None, inputs[0], outputs)  # warm up
    rounds, start = 0, time.perf_counter()
    while rounds == 0 or time.perf_counter() - start < 0.5:
        for block in inputs:
            probe(None, block, outputs)
        rounds += probe.rounds * len(inputs)
    per_round = (time.perf_counter() - start) / rounds
    return NumpyHeavy(max(1, round(seconds / (per_round * len(windows)))))


def gil_bound(info: Any, inputs: Any, outputs: Any) -> None:
    """Pure-Python arithmetic on every pixel: holds the GIL throughout, as threads cannot
    share it, only processes run it in parallel."""
    rows = inputs.img[0].tolist()
    for _ in range(GIL_ROUNDS):
        rows = [[(v * 7 + 3) % 1021 for v in row] for row in rows]
    outputs.out = np.array(rows, dtype=np.int16)[np.newaxis]


def controls_for(options: dict[str, str], workers: int = 0, single_block: bool = False,
                 pool: Any = None) -> applier.ApplierControls:
    controls = applier.ApplierControls()
    controls.setCreationOptions(dict(options))
    controls.setCalcStats(False)
    controls.setOmitPyramids(True)
    controls.setStatsIgnore(None)  # no nodata on the output, as the floor writes it
    if pool is not None:
        controls.setPool(pool)
        controls.setConcurrencyStyle(applier.ConcurrencyStyle(
            singleBlockComputeWorkers=single_block))
    elif workers:
        controls.setConcurrencyStyle(applier.ConcurrencyStyle(
            numComputeWorkers=workers, computeWorkerKind=applier.CW_SUBPROC,
            singleBlockComputeWorkers=single_block,
            computeWorkerExtraParams={"progress": False}))
    return controls


def run_applier(function: Any, src: str, dst: str, controls: applier.ApplierControls) -> None:
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img, outfiles.out = src, dst
    applier.apply(function, infiles, outfiles, controls=controls)


def rows(quick: bool) -> list[Row]:
    side = rasters.QUICK_SIDE if quick else rasters.FULL_SIDE
    tmp = tempfile.mkdtemp(prefix="pp-bench-applier-")
    try:
        # The compute rows' runs last 2-8 s each, six arms a repetition: 7 of them.
        return (_copy_rows(side, quick, tmp) + _parallel_copy_rows(side, quick, tmp)
                + _compute_rows(side, 1 if quick else 7, tmp) + rios_rows(quick))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_rows(side: int, quick: bool, tmp: str) -> list[Row]:
    out = []
    mpix = side * side / 1e6
    codecs = list(rasters.CODECS)[:2] if quick else list(rasters.CODECS)
    for dtype in ("int16", "float32"):
        for codec in codecs:
            src = rasters.make(dtype, side, codec)
            options = rasters.creation_options(codec)
            cap = _applier_cache_cap(src)
            dst_floor, dst_app = os.path.join(tmp, "floor.tif"), os.path.join(tmp, "app.tif")
            n = repetitions(timed(lambda: rasters.floor_copy(src, dst_floor, options)), quick)
            t = interleaved({
                "read": lambda: rasters.floor_read(src),
                "floor": lambda: rasters.floor_copy(src, dst_floor, options),
                "capped": lambda: _capped_floor(src, dst_floor, options, cap),
                "applier": lambda: run_applier(copy_block, src, dst_app,
                                               controls_for({**options, **SERIAL})),
            }, n, warmup=not quick,
                outputs={"floor": dst_floor, "capped": dst_floor, "applier": dst_app})
            ratio = t.ratio("applier", "floor")
            cpu_ratio = t.ratio("applier", "floor", cpu=True)
            out.append((f"{dtype} {mpix:.0f} Mpix, {codec}: rasterio loop read / read+write",
                        f"{t['read']:.2f} s / {t['floor']:.2f} s ({mpix / t['floor']:.0f} Mpix/s)",
                        "floor", "-"))
            out.append((f"{dtype} {codec}: applier serial copy / rasterio read+write loop",
                        f"{ratio:.3f}x ({t['applier']:.2f} s); CPU time {cpu_ratio:.3f}x "
                        f"({t.cpu_median('applier'):.2f} s vs {t.cpu_median('floor'):.2f} s)", "<= 1.05x",
                        verdict(ratio <= 1.05)))
            out.append((f"{dtype} {codec}: applier / the same loop with GDAL's cache capped "
                        "as the applier caps it", f"{t.ratio('applier', 'capped'):.3f}x (loop "
                        f"{t['capped']:.2f} s); CPU time "
                        f"{t.ratio('applier', 'capped', cpu=True):.3f}x",
                        "reported", "-"))
    return out


def _applier_cache_cap(src: str) -> int:
    """The GDAL_CACHEMAX the applier sets for a copy of ``src`` in 256-pixel windows (a
    plain loop keeps GDAL's default, 5 % of RAM)."""
    info = describe_rasters([src])[src]
    return effective_cap(input_cache_bytes([info], info.grid, 256, 256, 0)
                         + output_cache_bytes(256, 256, info.pixel_bytes))


def _capped_floor(src: str, dst: str, options: dict[str, str], cap: int) -> None:
    """The floor loop under the applier's cache cap, so that the ratio shows the applier's
    own overhead."""
    with rasterio.Env(GDAL_CACHEMAX=cap):
        rasters.floor_copy(src, dst, options)


def _parallel_copy_rows(side: int, quick: bool, tmp: str) -> list[Row]:
    """DEFLATE on 2 local workers (CW_SUBPROC, numComputeWorkers=2: workers mode). The
    driver writes, so compresses, every block; GDAL's NUM_THREADS=ALL_CPUS (the applier's
    default, added to the user's options) compresses on both cores."""
    codec = "DEFLATE"
    src = rasters.make("int16", side, codec)
    options = rasters.creation_options(codec)
    dst = {k: os.path.join(tmp, f"{k}.tif") for k in ("floor", "w2", "serial", "w2one")}
    t = interleaved({
        "floor": lambda: rasters.floor_copy(src, dst["floor"], options),
        "w2": lambda: run_applier(copy_block, src, dst["w2"], controls_for(options, workers=2)),
        "w2one": lambda: run_applier(copy_block, src, dst["w2one"],
                                     controls_for({**options, **SERIAL}, workers=2)),
        "serial": lambda: run_applier(copy_block, src, dst["serial"], controls_for(options)),
    }, repetitions(timed(lambda: rasters.floor_copy(src, dst["floor"], options)), quick),
        outputs=dst)
    ratio = {k: t.ratio(k, "floor") for k in ("w2", "w2one", "serial")}
    return [
        ("int16 DEFLATE copy, applier on 2 local workers / serial rasterio loop",
         f"{ratio['w2']:.2f}x ({t['w2']:.2f} s vs {t['floor']:.2f} s)", "<= 0.6x",
         verdict(ratio["w2"] <= 0.6)),
        ("same, output with NUM_THREADS=1 (one compressing thread)",
         f"{ratio['w2one']:.2f}x ({t['w2one']:.2f} s)", "reported", "-"),
        ("same copy serial (CW_NONE) with the applier's default NUM_THREADS=ALL_CPUS",
         f"{ratio['serial']:.2f}x ({t['serial']:.2f} s)", "reported", "-"),
    ]


def _compute_rows(side: int, repeats: int, tmp: str) -> list[Row]:
    """Serial against CW_SUBPROC with 2 workers (workers mode: two long-lived processes),
    and against a LocalPool(2, mode='workers') given with setPool. Beside them the machine's
    own ceiling for the function: its rasterio window loop against an already running
    multiprocessing.Pool(2) over the same windows, nothing written (two processes doing
    vectorised float maths share more of a core here than pure Python does); and a
    LocalPool(1), which splits the speed-up into what one worker process gains or loses
    against the caller's process (its heap setting, applier/heap.py, and the blocks'
    transfer) and what the second worker adds."""
    src = rasters.make("int16", side, "NONE")
    options = rasters.creation_options("NONE")
    out = []
    windows = rasters.windows(side, side)
    # Before the pools start: their processes' imports would slow the timing down.
    numpy_heavy = calibrated_numpy_heavy(  # the quick raster in proportion
        src, windows, NUMPY_SECONDS * (side / rasters.FULL_SIDE) ** 2)
    with LocalPool(2, mode="workers", progress=False) as workers_pool, \
            LocalPool(1, mode="workers", progress=False) as one_pool, \
            multiprocessing.get_context("spawn").Pool(2, _open_source, (src,)) as mp_pool:
        for name, function, target in (
                (f"numpy-heavy ({numpy_heavy.rounds} rounds)", numpy_heavy, 1.75),
                ("GIL-bound", gil_bound, 1.7)):
            dst = {k: os.path.join(tmp, f"{k}.tif") for k in ("serial", "w2", "wm", "w1")}
            call = functools.partial(_compute_window, function)

            def loop() -> None:
                _open_source(src)
                for window in windows:
                    call(window)
            t = interleaved({
                "serial": lambda: run_applier(function, src, dst["serial"], controls_for(options)),
                "w2": lambda: run_applier(function, src, dst["w2"],
                                          controls_for(options, workers=2)),
                "wm": lambda: run_applier(function, src, dst["wm"],
                                          controls_for(options, pool=workers_pool)),
                "w1": lambda: run_applier(function, src, dst["w1"],
                                          controls_for(options, pool=one_pool)),
                "loop": loop,
                "mp": lambda: mp_pool.map(call, windows, chunksize=8),
            }, repeats, warmup=True, outputs=dst)  # the first to run starts the fork server
            speedup, wm = t.ratio("serial", "w2"), t.ratio("serial", "wm")
            ceiling = t.ratio("loop", "mp")
            one, scaling = t.ratio("serial", "w1"), t.ratio("w1", "wm")
            out.append((f"{name} block function: serial / 2 local workers (CW_SUBPROC)",
                        f"{speedup:.2f}x ({t['serial']:.1f} s vs {t['w2']:.1f} s)",
                        f">= {target}x", verdict(speedup >= target)))
            out.append((f"{name}: serial / LocalPool(2, mode='workers') via setPool",
                        f"{wm:.2f}x ({t['wm']:.1f} s)", f">= {target}x", verdict(wm >= target)))
            out.append((f"{name}: serial / LocalPool(1) via setPool; LocalPool(1) / LocalPool(2)",
                        f"{one:.2f}x ({t['w1']:.1f} s); {scaling:.2f}x", "reported", "-"))
            out.append((f"{name}: the machine's ceiling, window loop / running multiprocessing.Pool(2), "
                        "no output", f"{ceiling:.2f}x ({t['loop']:.1f} s vs {t['mp']:.1f} s)",
                        "reported", "-"))
    return out


_source: Any = None


def _open_source(path: str) -> None:
    """The ceiling's input, opened once per process (as an applier worker keeps it open)."""
    global _source
    if _source is None or _source.name != path:
        _source = rasterio.open(path)


def _compute_window(function: Any, window: Any) -> None:
    outputs = types.SimpleNamespace()
    function(None, types.SimpleNamespace(img=_source.read(window=window)), outputs)


# RIOS against the applier. RIOS is not on PyPI and needs GDAL's own Python bindings, which
# this package does not: it runs in the interpreter this variable names (one where both
# `import rios` and `import poolparty_raster` work), else in this one if it has RIOS.
RIOS_PYTHON_VARIABLE = "POOLPARTY_BENCH_RIOS_PYTHON"
# 9.4 Mpix: RIOS with statistics and pyramids takes seconds per run on it, and the
# comparison has 12 arms.
RIOS_SIDE = 3072
RIOS_STYLES = {"serial": ("CW_NONE", 0), "2 threads": ("CW_THREADS", 2),
               "2 processes": ("CW_SUBPROC", 2)}
# The same GTiff for both (RIOS's GTiff defaults with 256-pixel tiles): RIOS would write
# HFA whatever the name. The applier adds NUM_THREADS=ALL_CPUS to them, as it always does.
RIOS_GTIFF = ["TILED=YES", "COMPRESS=DEFLATE", "INTERLEAVE=BAND", "BIGTIFF=IF_SAFER",
              "BLOCKXSIZE=256", "BLOCKYSIZE=256"]


def rios_rows(quick: bool) -> list[Row]:
    """The applier against RIOS in one run, both with their default statistics and
    pyramids, on a copy and a numpy-heavy function, serially, on 2 threads and on 2
    processes; each arm pair interleaved. Skipped, saying why, where RIOS cannot be run."""
    python = os.environ.get(RIOS_PYTHON_VARIABLE) or sys.executable
    if subprocess.run([python, "-c", "import rios.applier, osgeo"],
                      capture_output=True).returncode != 0:
        return skipped("applier vs RIOS", f"RIOS (with GDAL's bindings, osgeo) is not "
                       f"importable by {python}: install it from its source (ubarsc/rios) "
                       f"and set {RIOS_PYTHON_VARIABLE} to that interpreter")
    side, repeats = (rasters.QUICK_SIDE, 1) if quick else (RIOS_SIDE, 5)
    # RIOS's CW_SUBPROC starts rios_computeworker from PATH: the interpreter's scripts.
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PATH=os.path.dirname(python) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([python, "-m", "bench.applier", "rios", str(side), str(repeats)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=7200)
    if result.returncode != 0:
        raise RuntimeError(f"the RIOS comparison failed:\n{result.stderr[-3000:]}")
    return [tuple(row) for row in json.loads(result.stdout.strip().splitlines()[-1])]


def _rios_comparison(side: int, repeats: int) -> list[Row]:
    """Run in an interpreter with RIOS (rios_rows)."""
    from rios import applier as rios_applier
    from rios.structures import ConcurrencyStyle as RiosStyle

    src = rasters.make("int16", side, "DEFLATE")
    tmp = tempfile.mkdtemp(prefix="pp-bench-rios-")
    numpy_heavy = calibrated_numpy_heavy(src, rasters.windows(side, side),
                                         NUMPY_SECONDS * (side / rasters.FULL_SIDE) ** 2)

    def run(module: Any, style: Any, function: Any, dst: str) -> None:
        controls = module.ApplierControls()
        controls.setOutputDriverName("GTiff")
        controls.setCreationOptions(RIOS_GTIFF)
        controls.setConcurrencyStyle(style)
        infiles, outfiles = module.FilenameAssociations(), module.FilenameAssociations()
        infiles.img, outfiles.out = src, dst
        module.apply(function, infiles, outfiles, controls=controls)

    out = []
    try:
        for work, function in (("copy", copy_block),
                               (f"numpy-heavy ({numpy_heavy.rounds} rounds)", numpy_heavy)):
            for style_name, (kind, workers) in RIOS_STYLES.items():
                ours = applier.ConcurrencyStyle(
                    numComputeWorkers=workers, computeWorkerKind=kind,
                    computeWorkerExtraParams={"progress": False} if kind == "CW_SUBPROC" else {})
                # RIOS reads in a read worker where compute workers do not read their own
                # inputs (its own tests' threads and subprocess styles).
                theirs = RiosStyle(numReadWorkers=1 if workers else 0,
                                   numComputeWorkers=workers, computeWorkerKind=kind)
                dst = {k: os.path.join(tmp, f"{k}.tif") for k in ("applier", "rios")}
                t = interleaved({
                    "applier": lambda: run(applier, ours, function, dst["applier"]),
                    "rios": lambda: run(rios_applier, theirs, function, dst["rios"]),
                }, repeats, warmup=repeats > 1, outputs=dst)
                ratio = t.ratio("applier", "rios")
                out.append((f"int16 {side}x{side} DEFLATE GTiff, statistics and pyramids, "
                            f"{work}, {style_name}: applier / RIOS",
                            f"{ratio:.2f}x ({t['applier']:.2f} s vs {t['rios']:.2f} s)",
                            "<= 1.00x", verdict(ratio <= 1.0)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    # python -m bench.applier rios SIDE REPEATS: the RIOS rows, as JSON on the last line.
    if sys.argv[1:2] == ["rios"]:
        print(json.dumps(_rios_comparison(int(sys.argv[2]), int(sys.argv[3]))))
