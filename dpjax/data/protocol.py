"""The one interface every data split is read through: `RandomAccessDataset`.

A split is N labelled images with random access: Poisson sampling draws a
random subset of all N examples at every step, so the trainer asks for
examples by index, never for "the next batch". Three kinds of split satisfy
the protocol:

* `ArrayDataset`: uint8 arrays in memory (digits, npz, image folders, small
  TFDS sets). The trainer may put such a split whole on the accelerators
  (`isinstance(ds, ArrayDataset)`) instead of fetching rows.
* `dpjax.data.streaming.StreamingImageFolder`: an image folder or zip,
  decoded on demand.
* `dpjax.data.tfds_records.StreamingTfds`: a TFDS array_record split, read
  through `tfds.data_source` and decoded on demand.

The trainer uses only `len(ds)`, `ds.image_shape`, `ds.labels` and
`ds.fetch(indices)`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from dpjax.errors import DataError

_MEMBERS = ("__len__", "image_shape", "labels", "fetch")
_ABSENT = object()


class _StaticProtocolMeta(type(Protocol)):
    """`isinstance` looks the members up without evaluating them.

    Python 3.12 does this for every runtime protocol; 3.11 calls `hasattr`,
    which would run a lazily computed `labels` property, a pass over a whole
    TFDS split, just to answer `isinstance`.
    """

    def __instancecheck__(cls, instance) -> bool:
        if not cls.__dict__.get("_is_protocol", False):  # a class deriving from it
            return super().__instancecheck__(instance)
        return all(inspect.getattr_static(instance, m, _ABSENT) is not _ABSENT for m in _MEMBERS)


@runtime_checkable
class RandomAccessDataset(Protocol, metaclass=_StaticProtocolMeta):
    """N labelled images, read by index.

    Attributes:
      image_shape: (H, W, C) of every image `fetch` returns; C is 1 or 3.
      labels: int32 (N,), the class index of every example of the split.
        Streamed TFDS splits read them on first use (one pass over the
        records); training itself needs only `fetch`.
    """

    image_shape: tuple[int, int, int]
    labels: np.ndarray

    def __len__(self) -> int:
        """N, the number of examples."""
        ...

    def fetch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, H, W, C) images, int32 (n,) labels) of `indices`, in the order given.

        Indices may repeat and need not be sorted; an empty sequence gives
        empty arrays of the right shapes.
        """
        ...


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Images uint8 (N, H, W, C) with C in {1, 3}, and int32 labels (N,), in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        im, lb = self.images, self.labels
        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 4
                and im.shape[-1] in (1, 3)):
            raise DataError(f"ArrayDataset.images must be uint8 (N, H, W, 1|3), got "
                            f"{getattr(im, 'dtype', type(im).__name__)} "
                            f"{getattr(im, 'shape', '')}.")
        if not (isinstance(lb, np.ndarray) and lb.dtype == np.int32 and lb.ndim == 1
                and len(lb) == len(im)):
            raise DataError(f"ArrayDataset.labels must be int32 (N,) with N={len(im)}, got "
                            f"{getattr(lb, 'dtype', type(lb).__name__)} "
                            f"{getattr(lb, 'shape', '')}.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def fetch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of `indices`, in order (copies)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        return self.images[idx], self.labels[idx]


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """A training and a test split with their class names.

    `info` holds facts about loading (source, layout, split method, skipped
    files). Nothing in it is a statistic of the training labels.
    """

    train: RandomAccessDataset
    test: RandomAccessDataset
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    info: dict = dataclasses.field(default_factory=dict)
