"""PoolExecutor against pool.map: 1,000 trivial ``submit`` calls and a map of the same tasks,
on LocalPool (both modes) and, where they answer, the real SLURM and Grid Engine.

Three arms, interleaved on one pool: ``pool.map``; ``submit`` then ``result()`` in order (a
result waited on sends the batch at once); ``submit`` then ``as_completed`` (whose waiters
send the batch at once too: before, it waited out the executor's linger, 0.05 s, a third of a
1,000-task map's time on LocalPool). Each arm's maps and
scheduler submissions are counted: on LocalPool the work_dirs a kept run leaves (one per map),
on a cluster the ``sbatch``/``qsub`` calls its wrapper scripts log (bench/cluster.py).
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import poolparty_raster as pp
from bench import cluster
from bench.common import Row, interleaved, repetitions, skipped, verdict
from bench.pools import trivial
from poolparty_raster.executor import PoolExecutor

TASKS = 1000
TARGET = 1.5  # the executor's wall time against pool.map's
SUBMIT_COMMAND = {"slurm": "sbatch", "sge": "qsub"}


def run_map(pool: Any, n: int) -> None:
    assert pool.map(trivial, range(n)) == [i + 1 for i in range(n)]


def run_submit_result(pool: Any, n: int) -> None:
    with PoolExecutor(pool) as executor:
        futures = [executor.submit(trivial, i) for i in range(n)]
        assert [f.result() for f in futures] == [i + 1 for i in range(n)]


def run_submit_as_completed(pool: Any, n: int) -> None:
    with PoolExecutor(pool) as executor:
        futures = [executor.submit(trivial, i) for i in range(n)]
        assert sorted(f.result() for f in cf.as_completed(futures)) == [i + 1 for i in range(n)]


ARMS: dict[str, Callable[[Any, int], None]] = {
    "pool.map": run_map, "submit + result()": run_submit_result,
    "submit + as_completed": run_submit_as_completed}


@contextmanager
def work_dir_root() -> Iterator[str]:
    """New work_dirs go into a directory of this run (on the shared disk for a cluster)."""
    root = tempfile.mkdtemp(prefix="pp-bench-executor-", dir=os.environ.get("PP_BENCH_SHARED_DIR"))
    saved = os.environ.get("POOLPARTY_RASTER_WORK_DIR_ROOT")
    os.environ["POOLPARTY_RASTER_WORK_DIR_ROOT"] = root
    try:
        yield root
    finally:
        if saved is None:
            del os.environ["POOLPARTY_RASTER_WORK_DIR_ROOT"]
        else:
            os.environ["POOLPARTY_RASTER_WORK_DIR_ROOT"] = saved
        shutil.rmtree(root, ignore_errors=True)


def maps_made(make_pool: Callable[..., Any], arm: Callable[[Any, int], None], n: int) -> int:
    """How many maps one run of ``arm`` makes: the work_dirs it leaves when they are kept."""
    with work_dir_root() as root:
        pool = make_pool(keep_work_dir=True)
        try:
            arm(pool, n)
        finally:
            pool.terminate()
        return len(os.listdir(root))


def local_rows(quick: bool) -> list[Row]:
    n = 100 if quick else TASKS
    out: list[Row] = []
    for mode in ("workers", "array"):
        def make_pool(**options: Any) -> pp.LocalPool:
            return pp.LocalPool(2, mode=mode, progress=False, **options)
        with work_dir_root():
            pool = make_pool()
            try:
                runs = {name: (lambda arm=arm: arm(pool, n)) for name, arm in ARMS.items()}
                timings = interleaved(runs, repetitions(0.1, quick), warmup=True)
            finally:
                pool.terminate()
        for name, arm in ARMS.items():
            maps = maps_made(make_pool, arm, n)
            if name == "pool.map":
                out.append((f"LocalPool(2, {mode}): pool.map of {n} trivial tasks",
                            f"{timings[name]:.3f} s; {maps} map", "-", "-"))
                continue
            ratio = timings.ratio(name, "pool.map")
            out.append((f"LocalPool(2, {mode}): {n} submit calls, {name} / pool.map",
                        f"{ratio:.2f}x ({timings[name]:.3f} s); {maps} map(s)",
                        f"<= {TARGET}x", verdict(ratio <= TARGET)))
    return out


def cluster_rows(kind: str, quick: bool) -> list[Row]:
    reason = cluster.availability(kind)
    if reason is not None:
        return skipped(f"executor on {kind}", reason)
    name = "SLURM" if kind == "slurm" else "Grid Engine"
    command = SUBMIT_COMMAND[kind]
    n = 100 if quick else TASKS
    repeats = 1 if quick else 3
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    submissions: dict[str, list[int]] = {arm: [] for arm in ARMS}
    with cluster.counting_wrappers(kind) as log, work_dir_root():
        for repeat in range(repeats):
            order = list(ARMS) if repeat % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                before = open(log).read().split().count(command)
                pool = cluster.make_pool(kind, polling_interval=0.5)
                start = time.perf_counter()
                try:
                    ARMS[arm](pool, n)
                    seconds[arm].append(time.perf_counter() - start)
                finally:
                    pool.terminate()
                submissions[arm].append(open(log).read().split().count(command) - before)
    median = {arm: sorted(values)[len(values) // 2] for arm, values in seconds.items()}
    out: list[Row] = [(f"{name}: pool.map of {n} trivial tasks",
                       f"{median['pool.map']:.2f} s; {command} calls {submissions['pool.map']}",
                       "-", "-")]
    for arm in list(ARMS)[1:]:
        ratio = median[arm] / median["pool.map"]
        out.append((f"{name}: {n} submit calls, {arm} / pool.map",
                    f"{ratio:.2f}x ({median[arm]:.2f} s); {command} calls {submissions[arm]}",
                    f"<= {TARGET}x, a handful of {command}",
                    verdict(ratio <= TARGET and max(submissions[arm]) <= 5)))
    return out


def rows(quick: bool) -> list[Row]:
    return local_rows(quick) + cluster_rows("slurm", quick) + cluster_rows("sge", quick)


if __name__ == "__main__":
    import sys

    from bench.__main__ import table
    print(table(rows("--quick" in sys.argv)))
