"""Streaming image folders: the same training run as the in-memory path, and its speed."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from dpjax.config import base_config
from dpjax.data import sources, streaming
from dpjax.errors import DataError
from dpjax.train import loop
from tests.helpers import SHARED_DATA


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
    order = [5, 0, 17, 3]
    np.testing.assert_array_equal(stream.fetch(order), memory.train.images[order])
    np.testing.assert_array_equal(stream.labels, memory.train.labels)


def test_streaming_training_equals_in_memory_training(tmp_path):
    _folder(tmp_path / "d")

    def config(stream):
        c = base_config()
        c.dataset.name = "folder"
        c.dataset.path = str(tmp_path / "d")
        c.dataset.streaming = stream
        c.model.name = "mlp"
        c.model.kwargs.width = 16
        c.privacy.target_epsilon = 2.0
        c.privacy.delta = 1e-3
        c.batch_size = 12
        c.micro_batch_size = 8
        c.num_steps = 3
        c.seed = 2
        c.progress_bar = False
        return c

    a = loop.train_and_evaluate(config(False), str(tmp_path / "memory"))
    b = loop.train_and_evaluate(config(True), str(tmp_path / "stream"))
    assert a["test_accuracy"] == b["test_accuracy"] and a["epsilon"] == b["epsilon"]
    np.testing.assert_allclose(a["test_probs"], b["test_probs"], rtol=1e-5, atol=1e-6)
    assert json.load(open(tmp_path / "stream" / "summary.json"))["test_train_overlap"] is None


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
    images = source.fetch(indices)
    rate = len(indices) / (time.perf_counter() - start)
    assert images.shape == (2048, 32, 32, 3)
    print(f"random-access decode: {rate:.0f} images/s")
    assert rate > 500
