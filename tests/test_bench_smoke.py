"""The benchmark's smallest setting runs and prints its table. No timings are asserted: the
figures belong to docs/benchmarks.md, not to the test suite."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_prints_a_table():
    result = subprocess.run([sys.executable, "-m", "bench", "pools", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| measurement | figure | target | verdict |" in result.stdout
    assert "1-task map latency" in result.stdout


def test_quick_million_benchmark_reports_time_and_peak_memory():
    result = subprocess.run([sys.executable, "-m", "bench", "million", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "one-task chunks, LocalPool(2) (workers mode) .map: wall time a chunk" in result.stdout
    assert "driver peak RSS (VmHWM)" in result.stdout
    assert "failed:" not in result.stdout


def test_a_ratio_compares_the_runs_of_one_repetition():
    sys.path.insert(0, ROOT)
    from bench.common import Timings
    # Repetition by repetition the first arm takes 2x, 1x and 3x the second: the median of
    # those is 2x, where the ratio of the two medians (3 s / 3 s) would say 1x.
    timings = Timings({"a": [2.0, 3.0, 9.0], "b": [1.0, 3.0, 3.0]},
                      {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]})
    assert timings["a"] == 3.0
    assert timings.ratio("a", "b") == 2.0
    assert timings.ratio("a", "b", cpu=True) == 0.5
    assert timings.cpu_median("b") == 2.0
