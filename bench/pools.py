"""Pool benchmarks on this machine: LocalPool against multiprocessing.Pool(2).

Task functions live at module level so that both pools can pickle them by reference.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import poolparty_raster as pp
from bench.common import Row, interleaved, verdict


def trivial(x: int) -> int:
    return x + 1


def one_second(x: int) -> int:
    time.sleep(1.0)
    return x


def _cold_map(n: int) -> list[int]:
    with multiprocessing.Pool(2) as pool:
        return pool.map(trivial, range(n))


def count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def files_left(pool_factory: Callable[..., pp.LocalPool], tasks: int, chunksize: int | None = None) -> int:
    """Files in a kept work_dir after a clean map: what a user finds on the shared disk."""
    root = tempfile.mkdtemp(prefix="pp-bench-")
    try:
        pool = pool_factory(work_dir=os.path.join(root, "w"), keep_work_dir=True)
        pool.map(trivial, range(tasks), chunksize)
        return count_files(os.path.join(root, "w"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rows(quick: bool) -> list[Row]:
    repeats = 1 if quick else 3
    out = []
    n_trivial = 200 if quick else 1000
    with multiprocessing.Pool(2) as mp_pool, pp.LocalPool(2, progress=False) as local, \
            pp.LocalPool(2, mode="array", progress=False) as local_array:
        # LocalPool starts its processes in every map; a warm multiprocessing pool has them
        # already, so it is measured both warm and started (and closed) within the run.
        t = interleaved({"mp": lambda: mp_pool.map(trivial, range(n_trivial)),
                         "mp_cold": lambda: _cold_map(n_trivial),
                         "local": lambda: local.map(trivial, range(n_trivial)),
                         "array": lambda: local_array.map(trivial, range(n_trivial))},
                        repeats, warmup=True)
        cold, warm = t.ratio("local", "mp_cold"), t.ratio("local", "mp")
        out.append((f"{n_trivial} trivial tasks, LocalPool(2) (workers mode, its default) / "
                    "multiprocessing.Pool(2) started in the run",
                    f"{cold:.1f}x ({t['local']:.3f} s vs {t['mp_cold']:.3f} s)", "<= 3x", verdict(cold <= 3)))
        out.append(("same / an already running multiprocessing.Pool(2)",
                    f"{warm:.0f}x (vs {t['mp'] * 1000:.1f} ms)", "<= 3x", verdict(warm <= 3)))
        out.append(("same, LocalPool(2, mode='array') (a process per chunk) / multiprocessing "
                    "started in the run", f"{t.ratio('array', 'mp_cold'):.1f}x ({t['array']:.3f} s)",
                    "reported", "-"))
        t = interleaved({"local": lambda: local.map(trivial, [1]),
                         "mp": lambda: mp_pool.map(trivial, [1])}, 2 if quick else 5)
        out.append(("1-task map latency, LocalPool(2)",
                     f"{t['local']:.3f} s (multiprocessing {t['mp'] * 1000:.1f} ms)",
                     "< 0.5 s", verdict(t["local"] < 0.5)))
        if not quick:  # the only long measurement: 20 s a run
            n_sleep, floor = 40, 20.0
            t = interleaved({"local": lambda: local.map(one_second, range(n_sleep)),
                             "mp": lambda: mp_pool.map(one_second, range(n_sleep))}, 2)
            out.append((f"{n_sleep} tasks of 1 s, LocalPool(2) / {floor:.0f} s floor",
                        f"{t['local'] / floor:.3f}x (multiprocessing {t['mp'] / floor:.3f}x)",
                        "<= 1.10x", verdict(t["local"] / floor <= 1.10)))
    n_files = 1000 if quick else 10_000
    files = files_left(lambda **kw: pp.LocalPool(2, progress=False, **kw), n_files)
    out.append((f"files left in a kept work_dir after {n_files:,} tasks", str(files), "<= 16",
                verdict(files <= 16)))
    return out
