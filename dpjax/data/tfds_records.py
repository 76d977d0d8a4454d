"""TFDS data sets prepared as array_record, read by random access without TensorFlow.

ImageNet does not fit in memory, and Poisson sampling needs random access:
the examples of step t are a random subset of all 1.28 M, not the next slice
of a shuffled stream. `tfds build imagenet2012 --manual_dir ...
--file_format=array_record` writes the data set as array_record shards, a
format with an index of its records, so record i is one seek away.
`StreamingTfds` opens those shards with the `array_record` package alone
(no TensorFlow, no tensorflow-datasets at run time), parses each record's
`tf.train.Example` protobuf itself (`parse_example`: a few dozen lines of the
protobuf wire format), and decodes the JPEGs in a pool of worker threads
(Pillow releases the GIL while decoding). Each host fetches only its own
rows of each Poisson batch; `streaming.Prefetcher` overlaps that with the
previous step's computation.

The record order is TFDS's own: global index i is record i − offset_s of
shard s, shards in order, which is what `tfds.data_source(name, split)[i]`
returns (checked in the tests against a data set TFDS itself wrote).

Labels live inside the records, so `fetch_examples` returns them with the
images; the `labels` array of a whole split (needed only to evaluate on it)
is read on first use by one pass over the split's records.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from dpjax.data import _imaging
from dpjax.errors import DataError

# --- tf.train.Example, from the protobuf wire format -------------------------
#
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }   (entries: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
#                      Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }   Int64List { repeated int64 value = 1; }
#   FloatList { repeated float value = 1; }   (packed or not)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a message; value is bytes for length-delimited."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _int64s(field: bytes) -> list[int]:
    out = []
    for number, wire, value in _fields(field):
        if number != 1:
            continue
        if wire == 2:  # packed
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
        else:
            out.append(value)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]


def _feature_value(feature: bytes):
    for number, _, value in _fields(feature):
        if number == 1:    # BytesList
            return [v for n, _, v in _fields(value) if n == 1]
        if number == 3:    # Int64List
            return _int64s(value)
        if number == 2:    # FloatList
            floats = b"".join(v for n, _, v in _fields(value) if n == 1)
            return np.frombuffer(floats, "<f4").tolist()
    return []


def parse_example(record: bytes, keys: Sequence[str] | None = None) -> dict[str, list]:
    """A serialized `tf.train.Example` -> {feature name: list of values}.

    bytes_list features give lists of bytes, int64_list lists of ints,
    float_list lists of floats. With `keys`, other features are skipped
    without being decoded.
    """
    out: dict[str, list] = {}
    for number, _, features in _fields(record):
        if number != 1:
            continue
        for n, _, entry in _fields(features):
            if n != 1:
                continue
            key, value = None, b""
            for m, _, v in _fields(entry):
                if m == 1:
                    key = bytes(v).decode()
                elif m == 2:
                    value = v
            if key is not None and (keys is None or key in keys):
                out[key] = _feature_value(value)
    return out


# --- the prepared data set on disk -------------------------------------------

def find_prepared(name: str, data_dir: str | None) -> str:
    """The folder `data_dir/<name>/<version>` TFDS prepared (newest version if unset).

    `name` is a TFDS name, optionally with a version: "imagenet2012" or
    "imagenet2012:5.1.0". `data_dir` defaults to $TFDS_DATA_DIR or
    ~/tensorflow_datasets, as in TFDS.
    """
    data_dir = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "")
                                  or "~/tensorflow_datasets")
    base, _, version = name.partition(":")
    root = os.path.join(data_dir, base)
    how = (f"prepare it with `tfds build {base} --data_dir DIR --file_format=array_record` "
           "(ImageNet: add --manual_dir with the downloaded tars) and set dataset.data_dir=DIR")
    if not os.path.isdir(root):
        raise DataError(f"dataset.tfds_name={name!r}: {root} does not exist: {how}.")
    versions = sorted((v for v in os.listdir(root)
                       if re.fullmatch(r"\d+\.\d+\.\d+", v)
                       and os.path.exists(os.path.join(root, v, "dataset_info.json"))),
                      key=lambda v: tuple(int(p) for p in v.split(".")))
    if version:
        if version not in versions:
            raise DataError(f"dataset.tfds_name={name!r}: version {version} is not prepared in "
                            f"{root} (prepared: {versions or 'none'}).")
        return os.path.join(root, version)
    if not versions:
        raise DataError(f"dataset.tfds_name={name!r}: no prepared version (no "
                        f"dataset_info.json) under {root}: {how}.")
    return os.path.join(root, versions[-1])


def _read_info(folder: str) -> dict:
    try:
        with open(os.path.join(folder, "dataset_info.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}/dataset_info.json is unreadable ({type(e).__name__}: {e}): "
                        "prepare the data set again.") from None


def _features(folder: str) -> tuple[str, str, tuple[str, ...]]:
    """(image key, label key, class names) from features.json and <label>.labels.txt."""
    try:
        with open(os.path.join(folder, "features.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}/features.json is unreadable ({type(e).__name__}: {e}).") \
            from None
    features = spec.get("featuresDict", {}).get("features", {})
    kinds = {k: v.get("pythonClassName", "").rsplit(".", 1)[-1] for k, v in features.items()}
    images = [k for k, kind in kinds.items() if kind == "Image"]
    labels = [k for k, kind in kinds.items() if kind == "ClassLabel"]
    image_key = "image" if "image" in images else (images[0] if len(images) == 1 else None)
    label_key = "label" if "label" in labels else (labels[0] if len(labels) == 1 else None)
    if image_key is None or label_key is None:
        raise DataError(f"{folder}: features {sorted(kinds)} are not an image and a class "
                        "label: not an image-classification data set.")
    names_file = os.path.join(folder, f"{label_key}.labels.txt")
    if os.path.exists(names_file):
        with open(names_file) as f:
            class_names = tuple(line.strip() for line in f if line.strip())
    else:
        num = int(features[label_key].get("classLabel", {}).get("numClasses", 0))
        class_names = tuple(str(i) for i in range(num))
    if not class_names:
        raise DataError(f"{folder}: the class label {label_key!r} has no classes.")
    return image_key, label_key, class_names


def split_shards(folder: str, name: str, split: str) -> tuple[list[str], list[int]]:
    """The split's array_record shard paths in order and their record counts."""
    info = _read_info(folder)
    fmt = info.get("fileFormat", "tfrecord")
    splits = {s["name"]: s for s in info.get("splits", [])}
    if split not in splits:
        hint = " (slices such as train[:10%] need dataset.streaming=False)" if "[" in split \
            else ""
        raise DataError(f"{folder}: no split {split!r}{hint}; its splits are "
                        f"{sorted(splits)}.")
    if fmt != "array_record":
        raise DataError(f"{folder} is stored as {fmt}, which has no random access: rebuild it "
                        f"with `tfds build {name} --file_format=array_record`, or set "
                        "dataset.streaming=False (reads it all into memory, needs TensorFlow).")
    lengths = [int(n) for n in splits[split].get("shardLengths", [])]
    base = name.partition(":")[0]
    paths = sorted(glob.glob(os.path.join(folder, f"{base}-{split}.array_record-*-of-*")))
    if len(paths) != len(lengths):
        raise DataError(f"{folder}: dataset_info.json lists {len(lengths)} shards of split "
                        f"{split!r} but {len(paths)} files are there: the copy is incomplete.")
    return paths, lengths


class StreamingTfds:
    """One split of a TFDS image-classification set prepared as array_record.

    Attributes:
      class_names: the ClassLabel's names (from <label>.labels.txt).
      image_shape: (S, S, 3) of every fetched image (images are resized to
        `image_size`, which must be set: ImageNet's images differ in size).
      labels: int32 (N,), read by one pass over the records on first use.
    """

    def __init__(self, name: str, data_dir: str | None, split: str, image_size: int,
                 num_workers: int = 0):
        try:
            from array_record.python import array_record_data_source
        except ImportError:
            raise DataError("dataset.streaming with dataset.name=tfds reads array_record "
                            "files: pip install array-record.") from None
        if not image_size:
            raise DataError("dataset.image_size is 0: streamed TFDS images differ in size; set "
                            "dataset.image_size (e.g. 224).")
        self.folder = find_prepared(name, data_dir)
        self.split = split
        self.image_key, self.label_key, self.class_names = _features(self.folder)
        paths, lengths = split_shards(self.folder, name, split)
        self._source = array_record_data_source.ArrayRecordDataSource(paths)
        if len(self._source) != sum(lengths):
            raise DataError(f"{self.folder}: split {split!r} has {len(self._source)} records, "
                            f"dataset_info.json says {sum(lengths)}: the copy is damaged.")
        self.image_size = int(image_size)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            num_workers or _imaging.default_workers())
        self._labels: np.ndarray | None = None
        first, _ = self._decode(self._read([0])[0], 0)
        self.image_shape = first.shape

    def __len__(self) -> int:
        return len(self._source)

    def _read(self, indices: Sequence[int]) -> list[bytes]:
        return self._source.__getitems__([int(i) for i in indices])

    def _decode(self, record: bytes, index: int) -> tuple[np.ndarray, int]:
        try:
            example = parse_example(record, (self.image_key, self.label_key))
            arr = _imaging.decode(bytes(example[self.image_key][0]), self.image_size)
            label = int(example[self.label_key][0])
        except Exception as e:
            raise DataError(f"{self.folder}: record {index} of split {self.split!r} is not a "
                            f"readable example ({type(e).__name__}: {e}).") from None
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, -1)
        return arr, label

    def fetch_examples(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, S, S, 3) images, int32 (n,) labels), decoded in parallel, in order."""
        indices = [int(i) for i in indices]
        records = self._read(indices) if indices else []
        images = np.empty((len(indices),) + tuple(self.image_shape), np.uint8)
        labels = np.empty((len(indices),), np.int32)
        for k, (arr, label) in enumerate(self._pool.map(self._decode, records, indices)):
            images[k], labels[k] = arr, label
        return images, labels

    def fetch(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 (n, S, S, 3) images of the given records, in order."""
        return self.fetch_examples(indices)[0]

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            def read_labels(start: int) -> list[int]:
                stop = min(start + 1024, len(self))
                return [int(parse_example(r, (self.label_key,))[self.label_key][0])
                        for r in self._read(range(start, stop))]

            chunks = self._pool.map(read_labels, range(0, len(self), 1024))
            self._labels = np.asarray([v for c in chunks for v in c], np.int32)
        return self._labels

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._source.__exit__(None, None, None)


# --- writing the same layout (tests, benchmarks, your own data) ---------------

def _varint_bytes(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(payload)) + payload


def serialize_example(features: dict[str, bytes | int | Sequence[int]]) -> bytes:
    """{name: bytes | int | ints} -> a serialized `tf.train.Example` (bytes_list / int64_list)."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, (bytes, bytearray)):
            feature = _delimited(1, _delimited(1, bytes(value)))
        else:
            ints = [value] if isinstance(value, (int, np.integer)) else list(value)
            packed = b"".join(_varint_bytes(int(v)) for v in ints)
            feature = _delimited(3, _delimited(1, packed))
        entries += _delimited(1, _delimited(1, key.encode()) + _delimited(2, feature))
    return _delimited(1, entries)


def write_prepared(data_dir: str, name: str,
                   splits: dict[str, tuple[Sequence[bytes], Sequence[int]]],
                   class_names: Sequence[str], *, version: str = "1.0.0",
                   num_shards: int = 1, image_format: str = "jpeg") -> str:
    """Writes images and labels in the layout `tfds build --file_format=array_record` makes.

    `splits` maps a split name to (encoded image files, labels). Records are
    `tf.train.Example`s with "image" (the file bytes), "label" and
    "file_name", in `num_shards` array_record shards per split, with the
    dataset_info.json, features.json and label.labels.txt that
    `StreamingTfds` reads. Returns the folder data_dir/name/version.
    """
    from array_record.python import array_record_module

    folder = os.path.join(data_dir, name, version)
    os.makedirs(folder, exist_ok=True)
    info_splits = []
    for split, (images, labels) in splits.items():
        bounds = np.linspace(0, len(images), num_shards + 1).astype(int)
        lengths = []
        for s in range(num_shards):
            path = os.path.join(folder, f"{name}-{split}.array_record-{s:05d}-of-"
                                        f"{num_shards:05d}")
            writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
            for i in range(bounds[s], bounds[s + 1]):
                writer.write(serialize_example({
                    "file_name": f"{split}_{i}.{image_format}".encode(),
                    "image": images[i], "label": int(labels[i])}))
            writer.close()
            lengths.append(str(bounds[s + 1] - bounds[s]))
        info_splits.append({"name": split, "shardLengths": lengths,
                            "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"})
    info = {"name": name, "version": version, "fileFormat": "array_record",
            "splits": info_splits}
    features = {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                "featuresDict": {"features": {
                    "image": {"pythonClassName":
                              "tensorflow_datasets.core.features.image_feature.Image",
                              "image": {"shape": {"dimensions": ["-1", "-1", "3"]},
                                        "dtype": "uint8", "encodingFormat": image_format}},
                    "label": {"pythonClassName":
                              "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                              "classLabel": {"numClasses": str(len(class_names))}},
                    "file_name": {"pythonClassName":
                                  "tensorflow_datasets.core.features.text_feature.Text",
                                  "text": {}}}}}
    for file, content in (("dataset_info.json", info), ("features.json", features)):
        with open(os.path.join(folder, file), "w") as f:
            json.dump(content, f, indent=1)
    with open(os.path.join(folder, "label.labels.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")
    return folder
