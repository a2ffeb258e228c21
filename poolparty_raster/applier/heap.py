"""Worker processes keep the heap memory a block freed for the next block (glibc only).

A block function's numpy temporaries are block-sized (256 KiB for a 256 x 256 float32 band).
glibc hands the top of the heap back to the system whenever more than its trim threshold is
free there (as little as 128 KiB at first), so the next block's temporaries take fresh pages
again, one page fault each 4 KiB: a sixth to a fifth of a numpy-heavy block function's time
on 256 x 256 blocks here, more or less from run to run as the heap's layout happens to fall.
A worker process of this package serves one map and ends, so it keeps up to TRIM_BYTES free
instead (its peak use is unchanged: it only keeps what it had already needed); arrays above
MMAP_BYTES, the ceiling glibc's own adaptive rule reaches, are still mapped and unmapped on
their own.

Never done in the caller's process, and not where the user tunes glibc's allocator in the
environment (``MALLOC_*_``, ``GLIBC_TUNABLES``).
"""
from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 * 1024 * 1024
TRIM_BYTES = 2 * MMAP_BYTES  # glibc's own ratio between the two
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")

_kept: bool | None = None  # decided once per process


def keep_freed_heap() -> bool:
    """Set this process's glibc trim and mmap thresholds, once; True if they are set, False
    where this is not glibc or the user set their own."""
    global _kept
    if _kept is None:
        _kept = _is_glibc() and not any(name in os.environ for name in _USER_SETTINGS)
        if _kept:
            libc = ctypes.CDLL(None)
            # The mmap threshold first: setting either freezes glibc's adaptive thresholds,
            # and the trim threshold alone would leave every block-sized array mapped.
            _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)
                         and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _kept


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False
