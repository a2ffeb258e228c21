"""``python -m bench [suites...] [--quick]``: measure the pools and the applier against their
references, print the table, and (unless --quick) write it to docs/benchmarks.md with the
machine it ran on. Suites: pools, workers, slurm, sge, applier, memory, million, executor,
filesystems (default: all; ``python -m bench.million N`` runs million at any N)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

from bench import applier, cluster, executor, filesystems, memory, million, pools, workers
from bench.common import ROOT, Row

SUITES: dict[str, Callable[[bool], list[Row]]] = {
    "pools": pools.rows,
    "workers": workers.rows,
    "slurm": lambda quick: cluster.rows("slurm", quick),
    "sge": lambda quick: cluster.rows("sge", quick),
    "applier": applier.rows,
    "memory": memory.rows,
    "million": million.rows,
    "executor": executor.rows,
    "filesystems": filesystems.rows,
}


def machine() -> str:
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import numpy
    import rasterio
    return (f"{platform.node()}: {platform.platform()}, {os.cpu_count()} x {cpu}, "
            f"{mem_kib / 2**20:.0f} GiB RAM; Python {platform.python_version()}, numpy "
            f"{numpy.__version__}, rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__})")


def table(rows: list[Row]) -> str:
    lines = ["| measurement | figure | target | verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest setting, a smoke test: figures are not comparable and "
                             "nothing is written")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args(argv)
    suites = args.suites or list(SUITES)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    sections = []
    started = time.perf_counter()
    for suite in suites:
        t0 = time.perf_counter()
        rows = SUITES[suite](args.quick)
        if args.quick:  # tiny sizes: the figures say nothing about the targets
            rows = [(a, b, c, "smoke" if d in ("met", "MISSED") else d) for a, b, c, d in rows]
        text = f"## {suite}\n\n{table(rows)}\n\n({time.perf_counter() - t0:.0f} s)\n"
        print(text, flush=True)
        sections.append(text)
    total = time.perf_counter() - started
    if not args.quick:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(HEADER.format(date=time.strftime("%Y-%m-%d %H:%M"), machine=machine(),
                                  command=" ".join(["python -m bench", *args.suites]),
                                  minutes=total / 60) + "\n".join(sections))
        print(f"written to {args.output}", file=sys.stderr)
    return 0


HEADER = """# Benchmarks

Measured {date} on {machine}, with `{command}` ({minutes:.1f} min).

How to read it: every comparison was measured in this one run, its candidates interleaved
(A B C, C B A, ...); a ratio is the median of the ratios of neighbouring runs (one per
repetition, so the machine's drift from minute to minute cancels), seconds are medians; ratios
matter more than seconds on a shared 2-core machine, where identical runs differ by up to
15 %: raster copies are repeated 15 times where one lasts under 2.5 s, else 9 times, the
applier's compute rows 7 times. Rasters are made from a fixed seed by `bench/rasters.py`
(41 Mpix int16 and float32, tiled 256) and never committed; copies write with the floor's exact
creation options, without statistics or overviews, unless a row says otherwise. Memory is the
driver's peak RSS (VmHWM; `ru_maxrss` would include the parent's, as Linux keeps it across fork and exec), one fresh interpreter per figure. Real-scheduler rows count
the scheduler commands the pool ran through wrapper scripts first on PATH. Re-run with
`python -m bench` (or name suites: `python -m bench pools applier`).

"""

if __name__ == "__main__":
    sys.exit(main())
