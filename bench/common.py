"""Shared by every suite: interleaved timing, table rows, verdicts, peak-memory probes.

Absolute times on a shared 2-core machine drift from minute to minute, so every comparison
runs its candidates A B C, C B A, ... in the same process and reports the median ratio.
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


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, warmup: bool = False,
                outputs: dict[str, str] | None = None,
                cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds of each run, in the order A B C, C B A, A B C, ... (so that drift hits
    all alike and no arm always follows the same one).

    ``warmup`` runs each once unmeasured first (page cache, imports, lazy pool threads).
    ``outputs`` names the file an arm writes: it is removed, and the dirty pages of earlier
    runs flushed (``os.sync``), before the arm is timed; otherwise an arm pays for replacing
    the last run's file, or for the writeback of the arm before it. ``cpu``, if given,
    receives each arm's median CPU seconds of this process (meaningful for in-process,
    single-threaded arms: on a shared machine it is far steadier than wall time)."""
    outputs = outputs or {}
    cpuTimes: dict[str, list[float]] = {name: [] for name in runs}

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
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
            wall, cpuSeconds = once(name)
            times[name].append(wall)
            cpuTimes[name].append(cpuSeconds)
    if cpu is not None:
        cpu.update({name: statistics.median(v) for name, v in cpuTimes.items()})
    return {name: statistics.median(values) for name, values in times.items()}


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
