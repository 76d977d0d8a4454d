"""Streaming image folders: the same training run as the in-memory path, and its speed."""

import os
import time

import numpy as np
import pytest
from PIL import Image

from dpjax.data import sources, streaming
from dpjax.errors import DataError
from tests.helpers import SHARED_DATA, assert_same_training, small_dp_config


def _folder(root, n=12, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog", "fox"):
            os.makedirs(root / split / c)
            for i in range(n if split == "train" else n // 3):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_fetch_matches_in_memory_loader(tmp_path):
    _folder(tmp_path / "d")
    memory = sources.load_image_folder(str(tmp_path / "d"))
    stream = streaming.StreamingImageFolder(str(tmp_path / "d"), "train", num_workers=2)
    assert len(stream) == len(memory.train) and stream.class_names == memory.class_names
    assert isinstance(stream, sources.RandomAccessDataset)
    assert stream.image_shape == memory.train.image_shape == (12, 12, 3)
    order = [5, 0, 17, 3, 5]
    images, labels = stream.fetch(order)
    np.testing.assert_array_equal(images, memory.train.images[order])
    np.testing.assert_array_equal(labels, memory.train.labels[order])
    np.testing.assert_array_equal(stream.labels, memory.train.labels)
    images, labels = stream.fetch([])
    assert images.shape == (0, 12, 12, 3) and labels.shape == (0,) and labels.dtype == np.int32


def test_streaming_training_equals_in_memory_training(tmp_path):
    _folder(tmp_path / "d")
    path = str(tmp_path / "d")
    _, streamed = assert_same_training(small_dp_config(name="folder", path=path),
                                       small_dp_config(name="folder", path=path,
                                                       streaming=True), tmp_path)
    assert streamed.get("test_train_overlap") is None  # never counted on streamed splits


def test_missing_split_is_a_clear_error(tmp_path):
    _folder(tmp_path / "d")
    with pytest.raises(DataError, match="val"):
        streaming.StreamingImageFolder(str(tmp_path / "d"), "val")


CIFAR_ZIP = os.path.join(SHARED_DATA, "cifar10-jpeg.zip")


@pytest.mark.skipif(not os.path.exists(CIFAR_ZIP), reason="../shared/data is absent")
def test_random_access_throughput_on_real_jpegs():
    source = streaming.StreamingImageFolder(CIFAR_ZIP, "train", num_workers=2)
    assert len(source) == 50_000
    indices = np.random.default_rng(0).choice(50_000, 2048, replace=False)
    start = time.perf_counter()
    images, _ = source.fetch(indices)
    rate = len(indices) / (time.perf_counter() - start)
    assert images.shape == (2048, 32, 32, 3)
    print(f"random-access decode: {rate:.0f} images/s")  # a measurement, not a check
