"""Throughput of the random-process generators (dpjax/data/random_processes.py).

Images per second per family at one resolution and batch size: compile and
warm up once, then the median over `--repeats` timed calls, each ending in
`block_until_ready`.

    python benchmarks/random_processes_speed.py --resolution 32 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from dpjax.data import random_processes as rp


def measure(family: str, batch: int, resolution: int, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median images/s) for one family."""
    key = jax.random.key(0)
    start = time.perf_counter()
    rp.generate(key, family, batch, resolution).block_until_ready()
    first = time.perf_counter() - start
    rp.generate(jax.random.key(1), family, batch, resolution).block_until_ready()  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        rp.generate(jax.random.key(2 + i), family, batch, resolution).block_until_ready()
        times.append(time.perf_counter() - start)
    return first, batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="*", default=list(rp.FAMILIES))
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, resolution {args.resolution}, "
          f"batch {args.batch}, median of {args.repeats}")
    print(f"{'family':<20} {'compile+1st (s)':>16} {'images/s':>12}")
    for family in args.families:
        first, rate = measure(family, args.batch, args.resolution, args.repeats)
        print(f"{family:<20} {first:>16.2f} {rate:>12.0f}")


if __name__ == "__main__":
    main()
