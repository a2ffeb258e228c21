"""The main example: a multiprocessing-style map, run as jobs through a work_dir.

It uses LocalPool, so it runs on any machine. On a cluster, change one line:
    pool = poolparty_raster.SlurmArrayPool(partition="short", time="00:10:00")
"""
import math

import poolparty_raster


def slow_prime_count(limit: int) -> int:
    """How many primes are below ``limit`` (deliberately plain Python: real work per task)."""
    return sum(1 for n in range(2, limit) if all(n % d for d in range(2, math.isqrt(n) + 1)))


def main() -> None:
    limits = [10_000 * (i + 1) for i in range(16)]
    with poolparty_raster.LocalPool() as pool:
        counts = pool.map(slow_prime_count, limits)
    assert counts[:2] == [slow_prime_count(limit) for limit in limits[:2]]  # spot check
    for limit, count in zip(limits[:4], counts):
        print(f"primes below {limit:>7,}: {count:>6,}")
    print(f"... {len(counts)} tasks done through LocalPool, results in input order")


if __name__ == "__main__":
    main()
