#!/usr/bin/env python3
"""A validation copy of CIFAR-10 for tuning: the test split never takes part.

Reads the CIFAR-10 image-folder zip (`train/<class>/NNNN.jpg`, 5,000 per
class; `test/...`) and writes a zip in the same layout whose

  * `train/<class>/` holds the first 4,500 training images of each class
    (sorted by file name): 45,000 images;
  * `test/<class>/` holds the last 500 training images of each class:
    5,000 images, the validation split.

The CIFAR-10 test images are not copied. JPEG bytes are copied unchanged
(no re-encoding). Tuning runs on this copy train on the 45,000 images and
score on the 5,000: the privacy they spend is that of the 45,000 training
images (not counted in the ε of any reported run); the reported runs are
separate, fresh runs on the real train/test splits.

    python benchmarks/make_cifar_val.py --src ../shared/data/cifar10-jpeg.zip \
        --out .data/cifar10-val.zip
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import zipfile


def make(src: str, out: str, val_per_class: int = 500) -> dict:
    """Writes the validation zip; returns {split: count}."""
    with zipfile.ZipFile(src) as z:
        by_class = collections.defaultdict(list)
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "train" and parts[2]:
                by_class[parts[1]].append(name)
        if not by_class:
            raise SystemExit(f"{src}: no train/<class>/<file> entries")
        counts = collections.Counter()
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as w:
            for cls in sorted(by_class):
                names = sorted(by_class[cls])
                if len(names) <= val_per_class:
                    raise SystemExit(f"{src}: class {cls} has {len(names)} training images, "
                                     f"not more than --val_per_class={val_per_class}")
                cut = len(names) - val_per_class
                for i, name in enumerate(names):
                    split = "train" if i < cut else "test"
                    w.writestr(f"{split}/{cls}/{os.path.basename(name)}", z.read(name))
                    counts[split] += 1
        os.replace(tmp, out)
    return dict(counts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--out", default=".data/cifar10-val.zip")
    parser.add_argument("--val_per_class", type=int, default=500)
    args = parser.parse_args(argv)
    counts = make(args.src, args.out, args.val_per_class)
    print(f"{args.out}: train {counts['train']}, validation (as test/) {counts['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
