"""Throughput of the random-process generators (dpjax/data/random_processes.py).

Images per second per family and resolution on the current default device:
one call to compile, one warm-up call, then the median over `--repeats`
timed calls, each ending in `block_until_ready` (a fresh key per call).

    python benchmarks/random_processes_speed.py                       # 32 and 224 px, batch 256
    python benchmarks/random_processes_speed.py --resolutions 32 --batch 64     # a small CPU run
    python benchmarks/random_processes_speed.py --families stylegan_oriented --channels 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from dpjax.data import random_processes as rp


def measure(family: str, batch: int, resolution: int, repeats: int,
            options: dict) -> tuple[float, float]:
    """(compile + first call seconds, median images/s) for one family and resolution."""
    def run(seed: int) -> None:
        rp.generate(jax.random.key(seed), family, batch, resolution,
                    **options).block_until_ready()

    start = time.perf_counter()
    run(0)
    first = time.perf_counter() - start
    run(1)  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(2 + i)
        times.append(time.perf_counter() - start)
    return first, batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(rp.FAMILIES))
    parser.add_argument("--channels", type=int, default=None,
                        help="stylegan_oriented width (default: the generator's, 512)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'family':<20} {'res':>5} {'compile+1st (s)':>16} {'images/s':>12}")
    for resolution in args.resolutions:
        for family in args.families:
            options = ({"channels": args.channels}
                       if family == "stylegan_oriented" and args.channels else {})
            first, rate = measure(family, args.batch, resolution, args.repeats, options)
            print(f"{family:<20} {resolution:>5} {first:>16.2f} {rate:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
