"""Array sources: digits, MedMNIST-style npz, TFDS error paths, the registry behind `load`."""

import socket

import ml_collections
import numpy as np
import pytest

from dpjax.data import registry, sources, tfds_records
from dpjax.errors import ConfigError, DataError


@pytest.fixture
def no_network(monkeypatch):
    """Refuses every connection and records the attempt (even if the caller swallows it)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert attempts == [], f"network access attempted: {attempts[:3]}"


# --- digits ------------------------------------------------------------------

def test_digits_sizes_and_stratification():
    d = sources.load_digits()
    assert (len(d.train), len(d.test)) == (1437, 360)
    assert d.train.images.shape == (1437, 8, 8, 1) and d.train.images.dtype == np.uint8
    assert d.train.labels.dtype == np.int32 and d.num_classes == 10
    assert d.train.images.max() == 255 and d.train.images.min() == 0
    # Stratified: every class's share of the test set is within one image of 20%.
    train_counts = np.bincount(d.train.labels, minlength=10)
    test_counts = np.bincount(d.test.labels, minlength=10)
    totals = train_counts + test_counts
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)


def test_digits_split_depends_only_on_seed():
    a, b = sources.load_digits(split_seed=3), sources.load_digits(split_seed=3)
    c = sources.load_digits(split_seed=4)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.test.images, c.test.images)


def test_array_dataset_refuses_wrong_dtypes():
    with pytest.raises(DataError, match="uint8"):
        sources.ArrayDataset(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(DataError, match="int32"):
        sources.ArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int32))


# --- npz ---------------------------------------------------------------------

def _medmnist(tmp_path, rgb=False, n=(12, 4, 6), size=6, num_classes=3, name="m.npz", **over):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % num_classes).reshape(-1, 1)
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path), arrays


def test_npz_grey(tmp_path):
    path, arrays = _medmnist(tmp_path)
    d = sources.load_npz(path)
    assert d.train.images.shape == (12, 6, 6, 1) and d.test.images.shape == (6, 6, 6, 1)
    np.testing.assert_array_equal(d.train.images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(d.train.labels, arrays["train_labels"][:, 0])
    assert d.num_classes == 3 and d.name == "m" and d.info["val"].startswith("ignored")


def test_npz_rgb_resize_and_val_into_train(tmp_path):
    path, _ = _medmnist(tmp_path, rgb=True)
    d = sources.load_npz(path, image_size=4, use_val="train")
    assert d.train.images.shape == (16, 4, 4, 3) and d.test.images.shape == (6, 4, 4, 3)
    assert d.info["val"].startswith("added to train")


def test_npz_float_images_in_unit_range_are_scaled(tmp_path):
    images = np.linspace(0, 1, 12 * 36).reshape(12, 6, 6).astype(np.float32)
    path, _ = _medmnist(tmp_path, train_images=images)
    d = sources.load_npz(path)
    assert d.train.images.max() == 255 and d.train.images.min() == 0


@pytest.mark.parametrize("over, match", [
    (dict(test_labels=None), "lacks keys"),
    (dict(train_images=np.full((12, 6, 6), 300, np.int16)), "values in"),
    (dict(train_images=np.zeros((12, 6, 6), bool)), "dtype bool"),
    (dict(train_images=np.full((12, 6, 6), np.nan, np.float32)), "NaN"),
    (dict(train_images=np.zeros((12, 6, 6, 2), np.uint8)), "shape"),
    (dict(train_labels=-np.ones((12, 1), np.int64)), "out of range"),
    (dict(train_labels=np.full((12, 1), 0.5)), "non-integer"),
    (dict(train_labels=np.arange(12) % 3 + 1, val_labels=np.ones(4), test_labels=np.ones(6)),
     "1-based"),
    (dict(train_labels=np.zeros((12, 14), np.uint8)), "multi-label"),
    (dict(train_labels=np.zeros(11, np.int64)), "must match"),
])
def test_npz_refuses_malformed_files(tmp_path, over, match):
    path, _ = _medmnist(tmp_path, **over)
    with pytest.raises(DataError, match=match):
        sources.load_npz(path)


def test_npz_bad_options(tmp_path):
    path, _ = _medmnist(tmp_path, val_images=None, val_labels=None)
    with pytest.raises(DataError, match="use_val=ignore"):
        sources.load_npz(path, use_val="train")
    with pytest.raises(ConfigError, match="dataset.use_val"):
        sources.load_npz(path, use_val="test")
    with pytest.raises(DataError, match="does not exist"):
        sources.load_npz(str(tmp_path / "nope.npz"))


# --- tfds (error paths only: nothing is downloaded) ---------------------------

def test_tfds_not_prepared_says_how_to_provide_it(tmp_path, no_network):
    with pytest.raises(DataError, match="not prepared") as e:
        tfds_records.load_tfds("mnist", data_dir=str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and "tfds build mnist" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # nothing was written either


def test_tfds_unknown_name(tmp_path, no_network):
    with pytest.raises(DataError, match="dataset.tfds_name='no_such_set_xyz'") as e:
        tfds_records.load_tfds("no_such_set_xyz", data_dir=str(tmp_path))
    assert "\n" not in str(e.value)


# --- load --------------------------------------------------------------------

def test_load_dispatch_and_missing_fields(tmp_path):
    d = sources.load(ml_collections.ConfigDict({"name": "digits"}))
    assert len(d.train) == 1437
    path, _ = _medmnist(tmp_path)
    d = sources.load({"name": "npz", "path": path, "image_size": 0})
    assert d.train.images.shape[1:] == (6, 6, 1)
    with pytest.raises(DataError, match="dataset.path is empty"):
        sources.load({"name": "folder"})
    with pytest.raises(DataError, match="dataset.path="):
        sources.load({"name": "npz", "path": str(tmp_path / "missing.npz")})
    with pytest.raises(ConfigError, match="dataset.name") as e:
        sources.load({"name": "imagenet"})
    assert str(e.value) == ("Expected dataset.name in ('csv', 'digits', 'folder', 'kermany', "
                            "'npz', 'tfds'), got 'imagenet'.")
    with pytest.raises(ConfigError, match="dataset.image_size"):
        sources.load({"name": "npz", "path": path, "image_size": -3})


def test_use_val_is_a_config_field_the_loaders_read(tmp_path):
    from dpjax import config as config_lib

    path, _ = _medmnist(tmp_path)
    c = config_lib.base_config()
    c.dataset.name, c.dataset.path, c.dataset.use_val = "npz", path, "train"
    assert len(sources.load(c.dataset).train) == 16  # 12 train + 4 val
    c.dataset.use_val = "test"
    with pytest.raises(ConfigError, match="dataset.use_val"):
        config_lib.validate(c)
    with pytest.raises(ConfigError, match="dataset.use_val"):
        sources.load(c.dataset)


def test_fields_outside_the_dataset_block_are_refused():
    with pytest.raises(ConfigError, match="dataset.use_vall is not a dataset field"):
        sources.load({"name": "digits", "use_vall": "train"})


def test_a_registered_source_is_loadable_by_name(monkeypatch):
    from dpjax import config as config_lib

    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    seen = {}

    @registry.register("tiny")
    def tiny(c):
        seen["c"] = c
        images = np.zeros((4, 2, 2, 1), np.uint8)
        return sources.DataSplits(sources.ArrayDataset(images, np.arange(4, dtype=np.int32)),
                                  sources.ArrayDataset(images, np.zeros(4, np.int32)), 4,
                                  ("a", "b", "c", "d"), "tiny")

    assert "tiny" in registry.names()
    d = sources.load({"name": "tiny", "image_size": 3})
    assert len(d.train) == 4
    # The loader sees every field of the base config's dataset block, given values first.
    assert seen["c"].image_size == 3 and seen["c"].use_val == "ignore"
    assert set(seen["c"].keys()) == set(config_lib.base_config().dataset.keys())
    c = config_lib.base_config()
    c.dataset.name, c.privacy.target_epsilon = "tiny", 1.0
    config_lib.validate(c)  # registered names are valid config values
    with pytest.raises(ValueError, match="already registered"):
        registry.register("digits")(tiny)


def test_loaded_splits_satisfy_the_protocol(tmp_path):
    d = sources.load({"name": "digits"})
    for ds in (d.train, d.test):
        assert isinstance(ds, sources.RandomAccessDataset)
        assert isinstance(ds, sources.ArrayDataset)
    assert d.train.image_shape == (8, 8, 1)
    x, y = d.train.fetch([5, 0, 5])
    np.testing.assert_array_equal(x, d.train.images[[5, 0, 5]])
    np.testing.assert_array_equal(y, d.train.labels[[5, 0, 5]])
    assert x.dtype == np.uint8 and y.dtype == np.int32
    x, y = d.train.fetch([])
    assert x.shape == (0, 8, 8, 1) and y.shape == (0,)
