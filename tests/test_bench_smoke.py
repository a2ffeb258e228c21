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
