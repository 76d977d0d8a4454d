"""Data: sources by name (`dataset.name`), the random-access protocol, arrays as data.

`from_arrays(train=(images, labels), test=(images, labels))` turns arrays in
memory into the splits `dpjax.train` takes; any object with `__len__`,
`image_shape`, `labels` and `fetch(indices) -> (images, labels)`
(`RandomAccessDataset`) may stand in for a split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpjax.data.protocol import ArrayDataset, DataSplits, RandomAccessDataset
from dpjax.errors import DataError

__all__ = ["ArrayDataset", "DataSplits", "RandomAccessDataset", "from_arrays"]


def _split(name: str, value: Any):
    if isinstance(value, RandomAccessDataset) and not isinstance(value, tuple):
        return value
    if not (isinstance(value, tuple) and len(value) == 2):
        raise DataError(f"from_arrays: {name} must be (images, labels) or a dataset with "
                        f"__len__, image_shape, labels and fetch; got {type(value).__name__}.")
    images, labels = np.asarray(value[0]), np.asarray(value[1])
    if images.ndim == 3:  # (N, H, W): grey
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"from_arrays: {name} images must be uint8 (N, H, W[, 1|3]) with pixels "
                        f"0-255; got {images.dtype} {images.shape} (scale and cast with "
                        "np.uint8(np.clip(x * 255, 0, 255)) if they are floats in [0, 1]).")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                           np.integer):
        raise DataError(f"from_arrays: {name} labels must be integers of shape (N,) with "
                        f"N = {len(images)}; got {labels.dtype} {labels.shape}.")
    if len(labels) and labels.min() < 0:
        raise DataError(f"from_arrays: {name} labels must be class indices >= 0.")
    return ArrayDataset(np.ascontiguousarray(images), labels.astype(np.int32))


def from_arrays(train: Any, test: Any, num_classes: int | None = None,
                class_names: tuple[str, ...] | None = None, name: str = "arrays") -> DataSplits:
    """Training and test splits from uint8 NHWC images and integer labels (or datasets).

    `num_classes` defaults to 1 + the largest label of either split.
    """
    tr, te = _split("train", train), _split("test", test)
    if len(tr) == 0:
        raise DataError("from_arrays: the training split is empty.")
    if tuple(tr.image_shape) != tuple(te.image_shape) and len(te):
        raise DataError(f"from_arrays: train images are {tuple(tr.image_shape)} but test images "
                        f"are {tuple(te.image_shape)}.")
    largest = max(int(np.max(tr.labels)), int(np.max(te.labels)) if len(te) else 0)
    num_classes = num_classes or largest + 1
    if largest >= num_classes:
        raise DataError(f"from_arrays: a label is {largest} but num_classes={num_classes}.")
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"from_arrays: {len(names)} class names for {num_classes} classes.")
    return DataSplits(tr, te, num_classes, names, name)
