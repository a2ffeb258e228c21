"""``python -m bench [--quick] [pools] [applier]``: print the benchmark table and write it to
docs/benchmarks.md with the machine it ran on."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from bench import pools


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return (f"{platform.node()}: {platform.platform()}, Python {platform.python_version()}, "
            f"{cpus} CPUs, {mem_kib / 2**20:.0f} GiB")


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| measurement | figure | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", default=["pools"], help="pools (default)")
    parser.add_argument("--quick", action="store_true", help="smallest setting: a smoke test")
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    sections = []
    for suite in args.suites:
        if suite == "pools":
            rows = pools.local_pool_rows(args.quick)
        else:
            parser.error(f"unknown suite {suite!r}")
        text = table(rows)
        print(f"\n## {suite}\n{text}\n")
        sections.append(f"## {suite}\n\n{text}\n")
    if not args.quick:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(f"# Benchmarks\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine()} with "
                    f"`python -m bench {' '.join(args.suites)}`.\nRatios are medians of interleaved "
                    f"runs measured in the same process.\n\n" + "\n".join(sections))
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
