"""Small data sets made inside the tests (no downloads)."""

import os

import numpy as np

from dpjax.data.sources import ArrayDataset, DataSplits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def make_splits(num_train=64, num_test=32, size=8, channels=1, num_classes=3, seed=0):
    """Random images whose class shifts the mean brightness (learnable)."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, num_classes, n).astype(np.int32)
        base = (labels[:, None, None, None] + 1) * (200 // num_classes)
        noise = rng.integers(0, 50, (n, size, size, channels))
        return ArrayDataset(np.clip(base + noise, 0, 255).astype(np.uint8), labels)

    return DataSplits(make(num_train), make(num_test), num_classes,
                      tuple(str(i) for i in range(num_classes)), "synthetic")
