"""TFDS array_record data sets read by random access through tfds.data_source, without
TensorFlow."""

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from dpjax.data import sources
from dpjax.data import tfds_records as tr
from dpjax.data.protocol import RandomAccessDataset
from dpjax.errors import ConfigError, DataError
from dpjax.train import loop
from tests.helpers import assert_same_training, small_dp_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tfds")


def _encode(arr: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _toy(data_dir, n=30, size=12, shards=3, config=None):
    """A TFDS-layout set of lossless PNGs: (train images, train labels, test images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n + n // 3, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n + n // 3).astype(np.int32)
    labels[:3] = (0, 1, 2)
    splits = {"train": ([_encode(a) for a in images[:n]], labels[:n]),
              "test": ([_encode(a) for a in images[n:]], labels[n:])}
    tr.write_prepared(str(data_dir), "toy", splits, ["ant", "bee", "cat"], num_shards=shards,
                      image_format="png", config=config)
    return images[:n], labels[:n], images[n:], labels[n:]


def test_random_access_across_shards(tmp_path):
    images, labels, _, _ = _toy(tmp_path)
    source = tr.StreamingTfds("toy", str(tmp_path), "train", image_size=12, num_workers=2)
    assert isinstance(source, RandomAccessDataset) and source._labels is None  # not read
    assert len(source) == 30 and source.class_names == ("ant", "bee", "cat")
    assert source.image_shape == (12, 12, 3)
    order = [29, 0, 13, 10, 9, 13]  # shards hold 0-9, 10-19, 20-29
    x, y = source.fetch(order)
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    assert x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(source.labels, labels)
    x, y = source.fetch(np.asarray(range(30)))  # more than one worker's chunk
    np.testing.assert_array_equal(x, images)
    x, y = source.fetch([])
    assert x.shape == (0, 12, 12, 3) and y.shape == (0,)
    source.close()


def test_split_slices_select_tfds_records(tmp_path):
    images, labels, test_images, test_labels = _toy(tmp_path)
    for split, rows in (("train[:10%]", slice(0, 3)), ("train[12:20]", slice(12, 20)),
                        ("train[50%:]", slice(15, 30))):
        source = tr.StreamingTfds("toy", str(tmp_path), split, image_size=12)
        x, y = source.fetch(range(len(source)))
        np.testing.assert_array_equal(x, images[rows])
        np.testing.assert_array_equal(y, labels[rows])
        np.testing.assert_array_equal(source.labels, labels[rows])
    # In memory, a held-out part of train as the test split.
    d = sources.load({"name": "tfds", "tfds_name": "toy", "data_dir": str(tmp_path),
                      "train_split": "train[:80%]", "test_split": "train[80%:]"})
    assert isinstance(d.train, sources.ArrayDataset)
    np.testing.assert_array_equal(d.train.images, images[:24])
    np.testing.assert_array_equal(d.test.labels, labels[24:])
    assert d.info["split"] == "train[:80%] / train[80%:]"
    source = tr.StreamingTfds("toy", str(tmp_path), "train+test", image_size=12)
    np.testing.assert_array_equal(source.labels, np.concatenate([labels, test_labels]))


def test_builder_config_names(tmp_path):
    # A data set with builder configs keeps each config's data in NAME/CONFIG/VERSION, and
    # its shard files are still named NAME-SPLIT... (the template dataset_info.json records).
    images, labels, _, _ = _toy(tmp_path, config="small")
    assert os.path.exists(tmp_path / "toy" / "small" / "1.0.0"
                          / "toy-train.array_record-00000-of-00003")
    source = tr.StreamingTfds("toy/small", str(tmp_path), "train", image_size=12)
    x, y = source.fetch([3, 25])
    np.testing.assert_array_equal(x, images[[3, 25]])
    np.testing.assert_array_equal(y, labels[[3, 25]])
    d = sources.load({"name": "tfds", "tfds_name": "toy/small:1.0.0", "data_dir": str(tmp_path),
                      "streaming": True, "image_size": 12})
    assert len(d.train) == 30 and d.class_names == ("ant", "bee", "cat")
    assert isinstance(d.test, tr.StreamingTfds) and d.name == "toy/small"


def test_a_registered_builder_config(tmp_path):
    # imagenette/320px-v2 as `tfds build imagenette/320px-v2 --file_format=array_record`
    # lays it out; TFDS's registered imagenette builder reads it (nothing is downloaded).
    import tensorflow_datasets as tfds

    names = tfds.builder("imagenette/320px-v2", data_dir=str(tmp_path)).info.features[
        "label"].names
    rng = np.random.default_rng(5)
    arrays = rng.integers(0, 256, (12, 20, 30, 3), dtype=np.uint8)
    tr.write_prepared(str(tmp_path), "imagenette",
                      {"train": ([_encode(a) for a in arrays[:8]], np.arange(8)),
                       "validation": ([_encode(a) for a in arrays[8:]], np.arange(4))},
                      names, config="320px-v2", num_shards=2, image_format="png")
    d = sources.load({"name": "tfds", "tfds_name": "imagenette/320px-v2",
                      "data_dir": str(tmp_path), "test_split": "validation"})
    np.testing.assert_array_equal(d.train.images, arrays[:8])
    np.testing.assert_array_equal(d.test.labels, np.arange(4))
    assert d.class_names[0] == "n01440764" and d.num_classes == 10


def test_images_are_resized_and_grey_becomes_rgb(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    tr.write_prepared(str(tmp_path), "g", {"train": ([_encode(grey)], [0])}, ["x"],
                      image_format="png")
    x, _ = tr.StreamingTfds("g", str(tmp_path), "train", image_size=16).fetch([0])
    assert x.shape == (1, 16, 16, 3) and np.all(x[..., 0] == x[..., 2])
    d = tr.load_tfds("g", str(tmp_path), "train", "train", image_size=16)
    assert d.info["train_grey_to_rgb"] == "all"  # local DP must perturb these once


def test_grey_sets_stay_grey(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (6, 10, 10), dtype=np.uint8)
    colour = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    tr.write_prepared(str(tmp_path), "g1",
                      {"train": ([_encode(a) for a in grey] + [_encode(colour)], [0] * 7)},
                      ["x"], image_format="png", channels=1)
    source = tr.StreamingTfds("g1", str(tmp_path), "train", image_size=10)
    x, _ = source.fetch(range(7))
    assert source.image_shape == (10, 10, 1)
    np.testing.assert_array_equal(x[:6, ..., 0], grey)
    # A colour file in a grey set is converted with ITU-R 601 luma, as Pillow does.
    expected = np.asarray(Image.fromarray(colour).convert("L"))
    assert np.abs(x[6, ..., 0].astype(int) - expected).max() <= 1


def test_sizes_without_image_size(tmp_path):
    rng = np.random.default_rng(4)
    same = [_encode(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)) for _ in range(3)]
    tr.write_prepared(str(tmp_path), "same", {"train": (same, [0, 0, 0])}, ["x"],
                      image_format="png")
    with pytest.raises(DataError, match="have no fixed size.*set dataset.image_size"):
        tr.StreamingTfds("same", str(tmp_path), "train", 0)  # streaming must know the size
    d = tr.load_tfds("same", str(tmp_path), "train", "train")  # in memory it reads them all
    assert d.train.images.shape == (3, 9, 7, 3)
    mixed = same + [_encode(rng.integers(0, 256, (8, 7, 3), dtype=np.uint8))]
    tr.write_prepared(str(tmp_path), "mixed", {"train": (mixed, [0] * 4)}, ["x"],
                      image_format="png")
    with pytest.raises(DataError, match="record 3 of split 'train' is 7x8, not 7x9: set "
                                        "dataset.image_size"):
        tr.load_tfds("mixed", str(tmp_path), "train", "train")


def test_clear_errors(tmp_path):
    _toy(tmp_path)
    folder = os.path.join(tmp_path, "toy", "1.0.0")
    with pytest.raises(DataError, match="tfds build nope") as e:
        tr.StreamingTfds("nope", str(tmp_path), "train", 12)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="toy/2.0.0/dataset_info.json"):
        tr.StreamingTfds("toy:2.0.0", str(tmp_path), "train", 12)
    with pytest.raises(DataError, match="no fixed size"):
        tr.StreamingTfds("toy", str(tmp_path), "train", 0)
    with pytest.raises(DataError, match="'validation'.*splits are \\['test', 'train'\\]"):
        tr.StreamingTfds("toy", str(tmp_path), "validation", 12)
    with pytest.raises(ConfigError, match="tfds_name is empty"):
        sources.load({"name": "tfds"})
    os.remove(os.path.join(folder, "toy-train.array_record-00001-of-00003"))
    with pytest.raises(DataError, match="toy-train.array_record-00001-of-00003 .*incomplete"):
        tr.StreamingTfds("toy", str(tmp_path), "train", 12)
    tr.StreamingTfds("toy", str(tmp_path), "train[:10]", 12)  # only shard 0 is needed
    info = json.load(open(os.path.join(folder, "dataset_info.json")))
    info["fileFormat"] = "tfrecord"
    json.dump(info, open(os.path.join(folder, "dataset_info.json"), "w"))
    with pytest.raises(DataError, match="--file_format=array_record"):
        tr.StreamingTfds("toy", str(tmp_path), "test", 12)
    with pytest.raises(DataError, match="TFRecord, which needs TensorFlow"):
        tr.load_tfds("toy", str(tmp_path), "test", "test")  # (TensorFlow is not installed)


def test_the_layout_is_the_one_tfds_build_writes(tmp_path):
    # dataset_info.json and features.json as the real imagenet2012 builder wrote them
    # (tests/data/fixtures/tfds), up to the builder's own texts and byte counts.
    real = os.path.join(FIXTURE, "imagenet2012", "5.1.0")
    synsets = open(os.path.join(real, "label.labels.txt")).read().split()
    folder = tr.write_prepared(str(tmp_path), "imagenet2012",
                               {"train": ([b"x"] * 24, [0] * 24),
                                "validation": ([b"x"] * 8, [1] * 8)},
                               synsets, version="5.1.0", num_shards=2)

    def load(root, file):
        return json.load(open(os.path.join(root, file)))

    ours, theirs = load(folder, "dataset_info.json"), load(real, "dataset_info.json")
    for key in ("name", "version", "fileFormat", "supervisedKeys"):
        assert ours[key] == theirs[key]
    for a, b in zip(ours["splits"], theirs["splits"], strict=True):
        assert {k: a[k] for k in ("name", "shardLengths", "filepathTemplate")} == {
            k: b[k] for k in ("name", "shardLengths", "filepathTemplate")}
    assert load(folder, "features.json") == load(real, "features.json")
    assert sorted(os.listdir(folder)) == sorted(os.listdir(real))
    assert open(os.path.join(folder, "label.labels.txt")).read() == open(
        os.path.join(real, "label.labels.txt")).read()


def test_streamed_tfds_training_equals_in_memory_training(tmp_path):
    x_train, y_train, x_test, y_test = _toy(tmp_path / "tfds")
    np.savez(tmp_path / "same.npz", train_images=x_train, train_labels=y_train,
             test_images=x_test, test_labels=y_test)

    assert_same_training(
        small_dp_config(name="npz", path=str(tmp_path / "same.npz")),
        small_dp_config(name="tfds", tfds_name="toy", data_dir=str(tmp_path / "tfds"),
                        streaming=True, image_size=12), tmp_path)


def test_imagenet_config_on_a_tfds_layout(tmp_path):
    from dpjax import config as config_lib
    from tests.helpers import REPO

    rng = np.random.default_rng(3)
    jpegs = [_encode(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "JPEG")
             for _ in range(40)]
    tr.write_prepared(str(tmp_path), "imagenet2012",
                      {"train": (jpegs[:32], np.arange(32) % 4),
                       "validation": (jpegs[32:], np.arange(8) % 4)},
                      [f"n{i:08d}" for i in range(4)], version="5.1.0", num_shards=2)
    config = config_lib.load_config(
        f"{REPO}/configs/imagenet_resnet50.py:tfds={tmp_path},runlocal=True",
        ["batch_size=16", "privacy.delta=1e-3", "progress_bar=False"])
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 3 and summary["num_train"] == 32


def test_input_throughput_on_imagenet_size_jpegs(tmp_path):
    # ImageNet's mean image is about 400x350; decode + resize to 224 on 2 threads.
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    jpegs = [_encode(np.roll(base, 7 * i, axis=1), "JPEG", quality=90) for i in range(64)]
    tr.write_prepared(str(tmp_path), "big", {"train": (jpegs, np.zeros(64, int))}, ["x"],
                      num_shards=4)
    source = tr.StreamingTfds("big", str(tmp_path), "train", image_size=224, num_workers=2)
    indices = rng.choice(64, 256)
    source.fetch(indices[:16])  # warm the pool and the readers
    start = time.perf_counter()
    images, _ = source.fetch(indices)
    rate = len(indices) / (time.perf_counter() - start)
    # Printed, not asserted: a rate depends on the machine's load (benchmarks/input_speed.py).
    print(f"TFDS array_record random access, 375x500 JPEG -> 224: {rate:.0f} images/s")
    assert images.shape == (256, 224, 224, 3)


def test_reads_what_tfds_itself_wrote():
    # tests/data/fixtures/tfds: the real imagenet2012 builder of tensorflow-datasets 4.9.10
    # (array-record 0.8.6) run on tiny fake ILSVRC2012 tars; expected.json is what
    # tfds.data_source returned for each index (see its "generated_by").
    import tensorflow_datasets as tfds

    expected = json.load(open(os.path.join(FIXTURE, "expected.json")))
    for split, rows in expected["splits"].items():
        source = tr.StreamingTfds("imagenet2012", FIXTURE, split, image_size=16)
        assert source._raw  # the fast path: TFDS's raw records, parsed by TFDS's proto class
        assert len(source) == len(rows) and len(source.class_names) == 1000
        assert source.class_names[0] == "n01440764"
        np.testing.assert_array_equal(source.labels, [r["label"] for r in rows])
        reference = tfds.data_source("imagenet2012", split=split, data_dir=FIXTURE,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        records = source._read(range(len(rows)))
        for i, (row, (image_bytes, label)) in enumerate(zip(rows, records)):
            assert reference[i]["file_name"] == row["file_name"].encode()
            assert image_bytes == reference[i]["image"] and label == row["label"]
            image = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))
            assert image.shape == (row["height"], row["width"], 3)
            assert int(image.sum(dtype=np.int64)) == row["pixel_sum"]
        x, y = source.fetch([len(rows) - 1, 0])
        assert x.shape == (2, 16, 16, 3)
        assert list(y) == [rows[-1]["label"], rows[0]["label"]]
        # A slice of a split, as TFDS resolves it across the two shards.
        half = tr.StreamingTfds("imagenet2012", FIXTURE, f"{split}[50%:]", image_size=16)
        np.testing.assert_array_equal(half.labels, [r["label"] for r in rows[len(rows) // 2:]])


def test_full_tfds_parse_gives_the_same_examples(tmp_path, monkeypatch):
    # Feature specs other than one plain Image and ClassLabel are parsed by TFDS itself.
    images, labels, _, _ = _toy(tmp_path)
    fast = tr.StreamingTfds("toy", str(tmp_path), "train[5:25]", image_size=12)
    monkeypatch.setattr(tr, "_single_value", lambda feature, kinds: False)
    slow = tr.StreamingTfds("toy", str(tmp_path), "train[5:25]", image_size=12)
    assert fast._raw and not slow._raw
    order = [19, 0, 7, 7]
    for a, b in zip(fast.fetch(order), slow.fetch(order)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(slow.fetch(order)[0], images[5:25][order])
    np.testing.assert_array_equal(slow.labels, labels[5:25])
