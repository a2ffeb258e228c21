"""Shared by every suite: interleaved timing, table rows, verdicts, peak-memory probes.

Absolute times on a shared 2-core machine drift from minute to minute, so every comparison
runs its candidates A B A B ... in the same process and reports the median ratio.
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


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int,
                warmup: bool = False) -> dict[str, float]:
    """Median seconds of each run, measured A B A B so that drift hits all alike.

    ``warmup`` runs each once unmeasured first (page cache, imports, lazy pool threads)."""
    if warmup:
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
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
