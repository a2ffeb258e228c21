"""Pool benchmarks: LocalPool (and real schedulers where they answer) against their references.

Every comparison is measured in one run, interleaved (A B A B ...), and reported as the median
ratio, because absolute times on a shared 2-core machine are noisy.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import poolparty_raster as pp


def trivial(x: int) -> int:
    return x + 1


def one_second(x: int) -> int:
    time.sleep(1.0)
    return x


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, measured A B A B so that drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: statistics.median(values) for name, values in times.items()}


def work_dir_file_count(pool_factory: Callable[..., pp.LocalPool], tasks: int) -> int:
    root = tempfile.mkdtemp(prefix="pp-bench-")
    try:
        pool = pool_factory(work_dir=os.path.join(root, "w"), keep_work_dir=True)
        pool.map(trivial, range(tasks))
        return len(os.listdir(os.path.join(root, "w")))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def local_pool_rows(quick: bool) -> list[tuple[str, str, str, str]]:
    """(measurement, figure, target, verdict) rows for LocalPool against multiprocessing."""
    repeats = 1 if quick else 3
    rows = []
    n_trivial = 200 if quick else 1000
    with multiprocessing.Pool(2) as mp_pool, pp.LocalPool(2, progress=False) as local:
        t = interleaved({"mp": lambda: mp_pool.map(trivial, range(n_trivial)),
                         "local": lambda: local.map(trivial, range(n_trivial))}, repeats)
        ratio = t["local"] / t["mp"]
        rows.append((f"{n_trivial} trivial tasks, LocalPool(2) / multiprocessing.Pool(2)",
                     f"{ratio:.1f}x ({t['local']:.2f} s vs {t['mp']:.3f} s)", "<= 3x", _verdict(ratio <= 3)))
        one = interleaved({"local": lambda: local.map(trivial, [1])}, 5 if not quick else 2)["local"]
        rows.append(("1-task map latency, LocalPool", f"{one:.3f} s", "< 0.5 s", _verdict(one < 0.5)))
        n_sleep = 8 if quick else 40
        floor = n_sleep / 2
        t = interleaved({"local": lambda: local.map(one_second, range(n_sleep)),
                         "mp": lambda: mp_pool.map(one_second, range(n_sleep))}, 1)
        rows.append((f"{n_sleep} tasks of 1 s, LocalPool(2) / {floor:.0f} s floor",
                     f"{t['local'] / floor:.3f}x (multiprocessing {t['mp'] / floor:.3f}x)",
                     "<= 1.10x", _verdict(t["local"] / floor <= 1.10)))
    files = work_dir_file_count(lambda **kw: pp.LocalPool(2, progress=False, **kw), 10_000)
    rows.append(("files left in a kept work_dir after 10,000 tasks", str(files), "<= 16", _verdict(files <= 16)))
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
