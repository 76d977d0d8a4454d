"""TFDS array_record data sets read by random access, without TensorFlow."""

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from dpjax.data import tfds_records as tr
from dpjax.errors import DataError
from dpjax.train import loop
from tests.helpers import assert_same_training, small_dp_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tfds")


def _encode(arr: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _toy(data_dir, n=30, size=12, shards=3):
    """A TFDS-layout set of lossless PNGs: (train images, train labels, test images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n + n // 3, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n + n // 3).astype(np.int32)
    labels[:3] = (0, 1, 2)
    splits = {"train": ([_encode(a) for a in images[:n]], labels[:n]),
              "test": ([_encode(a) for a in images[n:]], labels[n:])}
    tr.write_prepared(str(data_dir), "toy", splits, ["ant", "bee", "cat"], num_shards=shards,
                      image_format="png")
    return images[:n], labels[:n], images[n:], labels[n:]


def test_example_wire_format_round_trip():
    record = tr.serialize_example({"image": b"\x00\xffjpeg", "label": 999, "ids": [-1, 0, 2**40]})
    assert tr.parse_example(record) == {"image": [b"\x00\xffjpeg"], "label": [999],
                                        "ids": [-1, 0, 2**40]}
    assert tr.parse_example(record, ("label",)) == {"label": [999]}


def test_unpacked_int64_and_float_lists_parse():
    # Int64List written unpacked (wire type 0 per value) and a packed FloatList, as
    # other protobuf writers may produce them.
    ints = tr._delimited(3, b"".join(tr._varint_bytes(1 << 3) + tr._varint_bytes(v)
                                     for v in (7, 8)))
    floats = tr._delimited(2, tr._delimited(1, np.asarray([0.5, -2.0], "<f4").tobytes()))
    entries = (tr._delimited(1, tr._delimited(1, b"a") + tr._delimited(2, ints))
               + tr._delimited(1, tr._delimited(1, b"f") + tr._delimited(2, floats)))
    assert tr.parse_example(tr._delimited(1, entries)) == {"a": [7, 8], "f": [0.5, -2.0]}


def test_random_access_across_shards(tmp_path):
    images, labels, _, _ = _toy(tmp_path)
    source = tr.StreamingTfds("toy", str(tmp_path), "train", image_size=12, num_workers=2)
    assert len(source) == 30 and source.class_names == ("ant", "bee", "cat")
    order = [29, 0, 13, 10, 9]  # shards hold 0-9, 10-19, 20-29
    x, y = source.fetch_examples(order)
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_array_equal(source.labels, labels)
    assert source.fetch([]).shape == (0, 12, 12, 3)
    source.close()


def test_images_are_resized_and_grey_becomes_rgb(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    tr.write_prepared(str(tmp_path), "g", {"train": ([_encode(grey)], [0])}, ["x"],
                      image_format="png")
    x = tr.StreamingTfds("g", str(tmp_path), "train", image_size=16).fetch([0])
    assert x.shape == (1, 16, 16, 3) and np.all(x[..., 0] == x[..., 2])


def test_clear_errors(tmp_path):
    _toy(tmp_path)
    folder = os.path.join(tmp_path, "toy", "1.0.0")
    with pytest.raises(DataError, match="tfds build nope"):
        tr.StreamingTfds("nope", str(tmp_path), "train", 12)
    with pytest.raises(DataError, match="version 2.0.0"):
        tr.StreamingTfds("toy:2.0.0", str(tmp_path), "train", 12)
    with pytest.raises(DataError, match="image_size"):
        tr.StreamingTfds("toy", str(tmp_path), "train", 0)
    with pytest.raises(DataError, match=r"slices .*streaming=False"):
        tr.StreamingTfds("toy", str(tmp_path), "train[:10%]", 12)
    with pytest.raises(DataError, match="validation.*splits are \\['test', 'train'\\]"):
        tr.StreamingTfds("toy", str(tmp_path), "validation", 12)
    os.remove(os.path.join(folder, "toy-train.array_record-00001-of-00003"))
    with pytest.raises(DataError, match="incomplete"):
        tr.StreamingTfds("toy", str(tmp_path), "train", 12)
    info = json.load(open(os.path.join(folder, "dataset_info.json")))
    info["fileFormat"] = "tfrecord"
    json.dump(info, open(os.path.join(folder, "dataset_info.json"), "w"))
    with pytest.raises(DataError, match="--file_format=array_record"):
        tr.StreamingTfds("toy", str(tmp_path), "test", 12)


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
    images = source.fetch(indices)
    rate = len(indices) / (time.perf_counter() - start)
    print(f"TFDS array_record random access, 375x500 JPEG -> 224: {rate:.0f} images/s")
    assert images.shape == (256, 224, 224, 3) and rate > 20


def test_reads_what_tfds_itself_wrote():
    # tests/data/fixtures/tfds: the real imagenet2012 builder of tensorflow-datasets 4.9.10
    # (array-record 0.8.6) run on tiny fake ILSVRC2012 tars; expected.json is what
    # tfds.data_source returned for each index (see its "generated_by").
    expected = json.load(open(os.path.join(FIXTURE, "expected.json")))
    for split, rows in expected["splits"].items():
        source = tr.StreamingTfds("imagenet2012", FIXTURE, split, image_size=16)
        assert len(source) == len(rows) and len(source.class_names) == 1000
        assert source.class_names[0] == "n01440764"
        np.testing.assert_array_equal(source.labels, [r["label"] for r in rows])
        records = source._read(range(len(rows)))
        for row, record in zip(rows, records):
            example = tr.parse_example(record)
            assert example["file_name"] == [row["file_name"].encode()]
            image = np.asarray(Image.open(io.BytesIO(example["image"][0])).convert("RGB"))
            assert image.shape == (row["height"], row["width"], 3)
            assert int(image.sum(dtype=np.int64)) == row["pixel_sum"]
        x, y = source.fetch_examples([len(rows) - 1, 0])
        assert x.shape == (2, 16, 16, 3)
        assert list(y) == [rows[-1]["label"], rows[0]["label"]]
