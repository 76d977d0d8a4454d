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


def small_dp_config(**dataset):
    """A 3-step DP-SGD run of a small MLP, with the given `dataset` fields set."""
    from dpjax.config import base_config

    c = base_config()
    for key, value in dataset.items():
        c.dataset[key] = value
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


def assert_same_training(config_a, config_b, tmp_path):
    """Both configs train to the same ε, accuracy and test probabilities."""
    from dpjax.train import loop

    a = loop.train_and_evaluate(config_a, str(tmp_path / "a"))
    b = loop.train_and_evaluate(config_b, str(tmp_path / "b"))
    assert a["epsilon"] == b["epsilon"] and a["test_accuracy"] == b["test_accuracy"]
    np.testing.assert_allclose(a["test_probs"], b["test_probs"], rtol=1e-5, atol=1e-6)
    return a, b
