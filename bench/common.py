"""Shared by every suite: interleaved timing, table rows, verdicts, peak-memory probes.

Absolute times on a shared 2-core machine drift from minute to minute, so every comparison
runs its candidates A B C, C B A, ... in the same process and reports the median of the
ratios of neighbouring runs.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# (measurement, figure, target, verdict)
Row = tuple[str, str, str, str]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Timings(dict):
    """Each arm's median seconds (``timings[name]``), with every repetition kept for ratios.

    ``ratio(a, b)`` is the median of the per-repetition ratios ``a_i / b_i``: arms timed next
    to each other see the same machine, so a ratio of neighbours cancels the drift of this
    shared machine from minute to minute, where the ratio of two medians (picked from
    different repetitions) keeps it."""

    def __init__(self, wall: dict[str, list[float]], cpu: dict[str, list[float]]):
        super().__init__({name: statistics.median(values) for name, values in wall.items()})
        self.wall, self.cpu = wall, cpu

    def ratio(self, a: str, b: str, cpu: bool = False) -> float:
        samples = self.cpu if cpu else self.wall
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    def cpu_median(self, name: str) -> float:
        """Median CPU seconds of this process (meaningful for in-process, single-threaded
        arms: on a shared machine it is far steadier than wall time)."""
        return statistics.median(self.cpu[name])


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, warmup: bool = False,
                outputs: dict[str, str] | None = None) -> Timings:
    """Each run timed ``repeats`` times, in the order A B C, C B A, A B C, ... (so that drift
    hits all alike and no arm always follows the same one).

    ``warmup`` runs each once unmeasured first (page cache, imports, lazy pool threads).
    ``outputs`` names the file an arm writes: it is removed, and the dirty pages of earlier
    runs flushed (``os.sync``), before the arm is timed; otherwise an arm pays for replacing
    the last run's file, or for the writeback of the arm before it."""
    outputs = outputs or {}

    def once(name: str) -> tuple[float, float]:
        if name in outputs:
            if os.path.exists(outputs[name]):
                os.remove(outputs[name])
            os.sync()
        start, startCpu = time.perf_counter(), time.process_time()
        runs[name]()
        return time.perf_counter() - start, time.process_time() - startCpu
    if warmup:
        for name in runs:
            once(name)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
            wallSeconds, cpuSeconds = once(name)
            wall[name].append(wallSeconds)
            cpu[name].append(cpuSeconds)
    return Timings(wall, cpu)


def repetitions(seconds: float, quick: bool = False) -> int:
    """Repetitions for a comparison whose runs take about ``seconds``: identical runs here
    differ by up to ~15 % (one pair's ratio ranged 0.86x-1.10x over 15 repetitions, whose
    median was 1.009x, where 9 of them had given 1.052x), so runs of up to 2.5 s are
    repeated 15 times and longer ones 9."""
    if quick:
        return 1
    return 15 if seconds < 2.5 else 9


def timed(run: Callable[[], Any]) -> float:
    """Seconds one run takes (to choose the repetitions)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def skipped(suite: str, reason: str) -> list[Row]:
    return [(f"{suite}: skipped: {reason}", "-", "-", "skipped")]


def probe(kind: str, *args: Any, timeout: float = 900) -> dict[str, Any]:
    """Run ``bench.probe`` in a fresh interpreter and return its JSON report.

    One process per measurement: ``ru_maxrss`` is a high-water mark that never goes down, so
    two measurements in one process would hide each other."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "bench.probe", kind, *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"probe {kind} {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"
