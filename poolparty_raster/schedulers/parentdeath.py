"""Processes that die with the process that started them (Linux: a parent-death signal).

A chunk left running after its driver died would go on claiming chunks (workers mode) that a
resumed driver then counts as lost and runs again, and write into a work_dir after its map
ended. Used by LocalPool's fork server and its children, LocalPool's spawned chunks, and a
workers-mode job's slots.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_T = TypeVar("_T")
_prctl: Any = None


def _load_prctl() -> Any:
    """libc's prctl, or None off Linux. Loaded before a fork: the child only calls it."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # a libc without prctl: nothing to set
            _prctl = False
    return _prctl or None


def can_die_with_parent() -> bool:
    """Whether die_with_parent() does anything here (Linux); loads what it calls."""
    return _load_prctl() is not None


def die_with_parent(signum: int, parent: int) -> bool:
    """Have the kernel send this process ``signum`` when its parent dies (Linux; elsewhere a
    no-op). False when the parent is already gone (this process was orphaned before the call:
    the signal will never come), and the caller should exit. The parent is the *thread* that
    forked this process: it must live as long as its process (see ``in_lasting_thread``)."""
    prctl = _load_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    return os.getppid() == parent


class _LastingThread:
    """One daemon thread per process that runs calls handed to it and never ends: Linux sends
    a child's parent-death signal when the thread that forked it ends, and the threads that
    start chunks come and go."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # a forked driver has neither the thread nor a lock
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (call, box, done)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="poolparty-spawner")
                self._thread.start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._calls.put((call, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _serve(self) -> None:
        while True:
            call, box, done = self._calls.get()
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                box["error"] = exc
            finally:
                del call
                done.set()


in_lasting_thread = _LastingThread().run
