"""Shared helpers for the dummy_queues tests: bounded waits only, never fixed sleeps."""
from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def run(*args: str, timeout: float = 20, cwd: str | os.PathLike | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def wait_for(pred: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll pred until truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def file_text(path: os.PathLike | str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of [start, end) intervals open at once."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best
