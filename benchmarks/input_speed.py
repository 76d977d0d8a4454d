"""Input throughput per host: random-access fetch + decode + resize, images/s.

Poisson sampling reads random records, so this times exactly that: batches
of random indices fetched from a streamed source (TFDS array_record or an
image folder/zip), decoded and resized by the source's worker threads, as
one host does for its rows of a batch (`dpjax.train.loop`'s prefetch thread).

    python benchmarks/input_speed.py --tfds imagenet2012 --data_dir /data/tfds --size 224
    python benchmarks/input_speed.py --folder /data/imagenet --split val --size 224
    python benchmarks/input_speed.py --synthetic 512 --size 224 --workers 1,2,4,8

`--synthetic N` writes N ImageNet-like JPEGs (500x375, quality 90, about
ImageNet's mean size) as a TFDS array_record layout in a temporary folder;
`--synthetic_small N` writes N 32x32 PNGs (CIFAR-like, 8 shards), where
reading and parsing the records is a larger share of the time. For TFDS
sources the table also times the record read alone (array_record read and
`tfds.data_source`'s parse of the tf.train.Example, image bytes undecoded).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time

import numpy as np


def synthetic_tfds(root: str, n: int) -> tuple[str, str]:
    from PIL import Image

    from dpjax.data import tfds_records

    rng = np.random.default_rng(0)
    # Smooth content with texture, so the JPEGs are about as large as photographs'.
    yy, xx = np.mgrid[0:375, 0:500]
    jpegs = []
    for i in range(n):
        phase = rng.uniform(0, 6.3, 3)
        smooth = 127 + 100 * np.sin(xx[..., None] / (20 + i % 7) + yy[..., None] / 31 + phase)
        arr = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="JPEG", quality=90)
        jpegs.append(out.getvalue())
    tfds_records.write_prepared(root, "synthetic", {"train": (jpegs, np.zeros(n, int))},
                                ["x"], num_shards=8)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    return "synthetic", f"synthetic: {n} JPEGs 500x375 q90, mean {mean_kb:.0f} KiB"


def synthetic_small_tfds(root: str, n: int) -> tuple[str, str]:
    from PIL import Image

    from dpjax.data import tfds_records

    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(n):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, format="PNG")
        pngs.append(out.getvalue())
    tfds_records.write_prepared(root, "small", {"train": (pngs, np.arange(n) % 10)},
                                [str(i) for i in range(10)], num_shards=8, image_format="png")
    return "small", f"synthetic_small: {n} PNGs 32x32"


def open_source(args, workers: int):
    if args.folder:
        from dpjax.data import streaming

        return streaming.StreamingImageFolder(args.folder, args.split, args.size, workers)
    from dpjax.data import tfds_records

    return tfds_records.StreamingTfds(args.tfds, args.data_dir, args.split, args.size, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tfds", default="", help="TFDS name prepared as array_record")
    parser.add_argument("--data_dir", default="", help="its TFDS data_dir")
    parser.add_argument("--folder", default="", help="an image folder or zip instead")
    parser.add_argument("--split", default="train")
    parser.add_argument("--synthetic", type=int, default=0, help="write N JPEGs and use them")
    parser.add_argument("--synthetic_small", type=int, default=0,
                        help="write N 32x32 PNGs and use them")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256, help="indices per fetch")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma-separated thread counts")
    args = parser.parse_args()
    tmp = None
    what = args.folder or f"tfds:{args.tfds} in {args.data_dir}"
    if args.synthetic or args.synthetic_small:
        tmp = tempfile.TemporaryDirectory()
        make = synthetic_tfds if args.synthetic else synthetic_small_tfds
        args.tfds, what = make(tmp.name, args.synthetic or args.synthetic_small)
        args.data_dir = tmp.name
    print(f"{what}; resize to {args.size}; {os.cpu_count()} CPUs ({platform.processor() or '?'})")
    print("| workers | images/s (fetch: read + decode + resize) | ms per batch of", args.batch,
          "| records/s (read + parse alone, 1 thread) |")
    print("|---|---|---|---|")
    for workers in [int(w) for w in args.workers.split(",")]:
        source = open_source(args, workers)
        rng = np.random.default_rng(workers)
        source.fetch(rng.choice(len(source), min(32, len(source))))  # warm up
        times, read_times = [], []
        for _ in range(args.batches):
            indices = rng.choice(len(source), args.batch)
            start = time.perf_counter()
            source.fetch(indices)
            times.append(time.perf_counter() - start)
            if hasattr(source, "_read"):  # TFDS: the records alone, image bytes undecoded
                start = time.perf_counter()
                source._read(indices)
                read_times.append(time.perf_counter() - start)
        source.close()
        t = float(np.median(times))
        reads = f"{args.batch / float(np.median(read_times)):.0f}" if read_times else "-"
        print(f"| {workers} | {args.batch / t:.0f} | {1000 * t:.0f} | {reads} |")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
