"""A million trivial one-task chunks (issue 21): ``LocalPool(2).map(trivial, range(N),
chunksize=1)`` in workers mode (LocalPool's default) completes, at what wall time per chunk,
and with what driver peak memory. Every chunk costs the driver its bookkeeping (claims, result
logs, scans, reductions) and nothing else, so the two figures are the per-chunk overhead.

``python -m bench million`` measures N = 1,000,000 (several minutes), ``--quick`` a few
thousand; ``python -m bench.million N`` any N, printed and not written anywhere.

The map runs in a fresh interpreter (``bench.probe map_trivial``): its VmHWM is the driver's
own peak (the workers are other processes), next to the bare interpreter's with the same
imports (``bench.probe baseline``).
"""
from __future__ import annotations

import sys

from bench.common import Row, probe, verdict

N = 1_000_000
QUICK_N = 2_000
MS_PER_CHUNK = 0.1       # target: at most 0.1 ms of overhead a chunk (100 s for 1M on 2 cores)
PEAK_MB = 300            # target: the driver stays under 300 MB (10^6 bytes)
SECONDS_PER_CHUNK_TIMEOUT = 0.002  # the probe is given 2 ms a chunk (and at least 15 min)


def rows(quick: bool, n: int | None = None) -> list[Row]:
    n = n or (QUICK_N if quick else N)
    base = probe("baseline")
    label = f"{n:,} trivial tasks in {n:,} one-task chunks, LocalPool(2) (workers mode) .map"
    try:
        run = probe("map_trivial", n, 1, timeout=max(900.0, n * SECONDS_PER_CHUNK_TIMEOUT))
    except Exception as exc:  # a map that fails or hangs is the finding: say so, do not stop
        last = (str(exc).strip().splitlines() or ["?"])[-1]
        return [(f"{label}: completes", f"failed: {last[:300]}", "completes", "MISSED")]
    ms = run["seconds"] / n * 1000
    cpu_ms = run["cpu_seconds"] / n * 1000
    peak_mb = run["maxrss_kib"] * 1024 / 1e6
    extra_kib = run["maxrss_kib"] - base["maxrss_kib"]
    return [
        (f"{label}: wall time a chunk", f"{ms:.3f} ms ({run['seconds']:.1f} s; the driver's CPU "
                                        f"{cpu_ms:.3f} ms a chunk)",
         f"<= {MS_PER_CHUNK} ms", verdict(ms <= MS_PER_CHUNK)),
        ("same: driver peak RSS (VmHWM)",
         f"{peak_mb:.0f} MB (+{extra_kib * 1024 / 1e6:.0f} MB over the bare interpreter's "
         f"{base['maxrss_kib'] * 1024 / 1e6:.0f} MB: {extra_kib * 1024 / n:,.0f} bytes a chunk)",
         f"< {PEAK_MB} MB", verdict(peak_mb < PEAK_MB)),
    ]


def main(argv: list[str]) -> int:
    from bench.__main__ import table

    n = int(argv[0].replace("_", "").replace(",", "")) if argv else N
    print(table(rows(False, n)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
