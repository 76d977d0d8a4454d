"""Data sets too large for the accelerator: random access to image files, decoded on demand.

Poisson sampling needs random access: the examples of step t are a random
subset of the whole training set, not the next slice of a shuffled stream.
`StreamingImageFolder` (a `RandomAccessDataset`) keeps only the file names
and labels in memory (an ImageNet-size folder or zip: 1.28 M names), and
`fetch(indices)` reads and decodes exactly the requested images, returned
with their labels, in a pool of worker threads
(Pillow releases the GIL while decoding, and zip reads are thread-safe).
Each host fetches only its own rows of each batch. `Prefetcher` overlaps the
fetching of the next step with the current step's computation.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence

import numpy as np

from dpjax.data import _imaging
from dpjax.errors import DataError


class StreamingImageFolder:
    """`root/{train,test}/<class>/*` (directory or zip), images decoded on demand.

    Attributes:
      labels: int32 (N,), class indices (sorted class-folder names).
      class_names: the class folders.
      image_shape: (S, S, C) of every fetched image (`image_size` is required
        unless all images share one size; C follows the first image).
    """

    def __init__(self, path: str, split: str = "train", image_size: int = 0,
                 num_workers: int = 0, class_names: Sequence[str] | None = None):
        self.path = path
        self.tree = _imaging.FileTree(path)
        names = [n for n in self.tree.files if _imaging.is_image_name(n)]
        # root/.../<split>/<class>/<file>
        chosen = [(n.split("/")[-2], n) for n in names
                  if len(n.split("/")) >= 3 and n.split("/")[-3] == split]
        if not chosen:
            raise DataError(f"{path}: no images under {split}/<class>/ (expected "
                            f"root/{split}/<class>/image.jpg).")
        classes = sorted({c for c, _ in chosen}) if class_names is None else list(class_names)
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({c for c, _ in chosen} - set(index))
        if unknown:
            raise DataError(f"{path}: class {unknown[0]!r} of the {split} split is not among the "
                            "training classes.")
        self.names = [n for _, n in chosen]
        self.labels = np.asarray([index[c] for c, _ in chosen], np.int32)
        self.class_names = tuple(classes)
        self.image_size = image_size or None
        first = _imaging.decode(self.tree.read(self.names[0]), self.image_size)
        self.image_shape = tuple(int(d) for d in first.shape)
        self._channels = first.shape[-1]
        workers = num_workers or _imaging.default_workers()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)

    def __len__(self) -> int:
        return len(self.names)

    def _decode(self, i: int) -> np.ndarray:
        name = self.names[i]
        try:
            arr = _imaging.decode(self.tree.read(name), self.image_size)
        except Exception as e:
            raise DataError(f"{self.path}: {name} is not a readable image "
                            f"({type(e).__name__}: {e}).") from None
        if arr.shape[:2] != self.image_shape[:2]:
            raise DataError(f"{self.path}: {name} is {arr.shape[0]}x{arr.shape[1]}, not "
                            f"{self.image_shape[0]}x{self.image_shape[1]}: set "
                            "dataset.image_size.")
        if arr.shape[-1] != self._channels:
            arr = np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr.mean(
                -1, keepdims=True).astype(np.uint8)
        return arr

    def fetch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, S, S, C) images, int32 (n,) labels) of the given files, decoded in
        parallel, in order."""
        indices = [int(i) for i in indices]
        out = np.empty((len(indices),) + tuple(self.image_shape), np.uint8)
        for k, arr in enumerate(self._pool.map(self._decode, indices)):
            out[k] = arr
        return out, self.labels[np.asarray(indices, np.int64)]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.tree.close()


class Prefetcher:
    """Runs `produce(step)` for the next step in a background thread."""

    def __init__(self, produce: Callable[[int], object]):
        self._produce = produce
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._pending: dict[int, concurrent.futures.Future] = {}

    def get(self, step: int, next_step: int | None):
        future = self._pending.pop(step, None)
        result = future.result() if future is not None else self._produce(step)
        if next_step is not None and next_step not in self._pending:
            self._pending[next_step] = self._pool.submit(self._produce, next_step)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
