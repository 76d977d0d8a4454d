"""TFDS image-classification data sets, read through `tfds.data_source` (no TensorFlow).

`tfds build NAME --file_format=array_record` stores a data set as
array_record shards, which index their records: record i is one seek away,
which Poisson sampling needs (the examples of step t are a random subset of
all N, not the next slice of a shuffled stream). TFDS itself opens the data
(`tfds.builder(name, data_dir=...).as_data_source(split)`): it resolves
versions (`imagenet2012:5.1.0`), builder configs (`imagenette/320px-v2`),
the shard files recorded in dataset_info.json and split slices
(`train[:90%]`, `train[90%:]`) and reads the records. Each record is a
`tf.train.Example`, parsed by TFDS's own protobuf class, of which only the
image bytes and the label are kept (for feature specs other than one
top-level Image and ClassLabel, TFDS parses the whole record with the data
set's spec, images skipped: `tfds.decode.SkipDecoding`, several times slower
per record). The JPEG/PNG bytes are decoded and resized by `_imaging` in a
pool of worker threads (Pillow releases the GIL).

* `StreamingTfds`: one split, decoded on demand (a `RandomAccessDataset`).
* `load_tfds`: both splits read into memory (`ArrayDataset`s). Sets prepared
  as TFRecord have no random access and are read with TensorFlow when it is
  installed.
* `write_prepared`: writes images and labels in the layout
  `tfds build --file_format=array_record` makes (tests, benchmarks).

Nothing is ever downloaded or built here: training machines are often
offline, and building most data sets needs TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from dpjax.data import _common, _imaging, registry
from dpjax.data.protocol import ArrayDataset, DataSplits
from dpjax.errors import ConfigError, DataError

_CHUNK = 16  # records one worker thread parses and decodes at a time


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("tensorflow-datasets is not installed: pip install "
                        "tensorflow-datasets.") from None
    return tfds


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def open_builder(name: str, data_dir: str | None):
    """The TFDS builder of a prepared data set (nothing is downloaded or built).

    `name` is what `tfds.builder` takes: "cifar10", "imagenet2012:5.1.0",
    "imagenette/320px-v2". `data_dir` defaults to TFDS's own
    (~/tensorflow_datasets or $TFDS_DATA_DIR).

    Raises:
      ConfigError: `name` is empty.
      DataError: unknown name, version or config, or not prepared in `data_dir`.
    """
    if not name:
        raise ConfigError("dataset.tfds_name is empty: set it to a TFDS name such as cifar10.")
    tfds = _tfds()
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    base = name.partition(":")[0]
    where = data_dir or "the default TFDS folder (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    how = (f"prepare it on a machine with internet with `pip install 'dpjax[tf]'` and "
           f"`tfds build {base} --data_dir DIR --file_format=array_record` (ImageNet: add "
           "--manual_dir with the downloaded tars), copy DIR here and set dataset.data_dir=DIR, "
           "or use dataset.name=folder or npz with your own copy")
    try:
        # Unknown names make TFDS print its whole catalogue; keep the console clean.
        with contextlib.redirect_stdout(io.StringIO()):
            builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        folder = os.path.join(data_dir or "$TFDS_DATA_DIR", *name.replace(":", "/").split("/"))
        raise DataError(f"dataset.tfds_name={name!r} is neither a data set known to "
                        f"tensorflow-datasets {tfds.__version__} nor prepared in {where} (no "
                        f"{folder}/dataset_info.json; {type(e).__name__}): check the name "
                        f"against tfds.list_builders(), or {how}.") from None
    if not builder.is_prepared():
        raise DataError(f"TFDS data set {name!r} is not prepared in {where}: {how}.")
    return builder


def _feature_key(features, preferred: str, kind) -> str | None:
    if preferred in features.keys() and isinstance(features[preferred], kind):
        return preferred
    keys = [k for k in features.keys() if isinstance(features[k], kind)]
    return keys[0] if len(keys) == 1 else None


def _single_value(feature, kinds: str) -> bool:
    """Serialized as one scalar of a NumPy dtype kind in `kinds` ("O": bytes)."""
    info = feature.get_serialized_info()
    return (getattr(info, "shape", None) == () and getattr(info, "sequence_rank", 0) == 0
            and np.dtype(info.np_dtype).kind in kinds)


class _NoRandomAccess(DataError):
    """The split is stored in a format without random access (TFRecord)."""


def _open_split(builder, name: str, split: str, **how):
    """`builder.as_data_source(split, **how)`, after checking the format, split and shard
    files."""
    tfds = _tfds()
    fmt = builder.info.file_format
    if fmt not in tfds.core.FileFormat.with_random_access():
        raise _NoRandomAccess(
            f"TFDS data set {name!r} in {os.fspath(builder.data_dir)} is stored as "
            f"{getattr(fmt, 'value', None) or 'tfrecord'}, which has no random access: rebuild "
            f"it with `tfds build {name.partition(':')[0]} --file_format=array_record`, or set "
            "dataset.streaming=False (reads it all into memory, needs TensorFlow: pip install "
            "'dpjax[tf]').")
    try:
        instructions = builder.info.splits[split].file_instructions
    except Exception as e:
        raise DataError(f"TFDS data set {name!r}: split {split!r} could not be opened "
                        f"({_first_line(e)}); its splits are "
                        f"{sorted(builder.info.splits.keys())}.") from None
    for instruction in instructions:
        if not tfds.core.Path(instruction.filename).exists():
            raise DataError(f"TFDS data set {name!r}: {instruction.filename} of split {split!r} "
                            "is missing: the copy of the prepared data set is incomplete.")
    return builder.as_data_source(split=split, **how)


class StreamingTfds:
    """One split of a prepared TFDS image-classification set, decoded on demand.

    Satisfies `RandomAccessDataset`. Images are decoded, resized (shorter
    side to `image_size`, then centre crop) and given the channel count the
    image feature declares (1 for grey sets, else 3; grey files of a colour
    set are repeated into RGB) by `num_workers` threads.

    Attributes:
      class_names: the ClassLabel's names.
      image_shape: (H, W, C) of every fetched image: (S, S, C) with
        `image_size` S, or the feature's fixed size when `image_size` is 0.
      labels: int32 (N,), read on first use by one pass over the split's
        records (for ImageNet's training split, a pass over all of it).
      folder: the prepared data set's folder.
    """

    def __init__(self, name: str, data_dir: str | None, split: str = "train",
                 image_size: int = 0, num_workers: int = 0, *, builder=None,
                 sized_by_first: bool = False):
        """Opens `split` of `name` in `data_dir` (see `open_builder`).

        `builder`: the already opened `open_builder(name, data_dir)`.
        `sized_by_first`: with `image_size` 0 and an image feature without a
        fixed size, take (H, W) from record 0 (every other record must then
        match); otherwise such a set needs `image_size`.
        """
        tfds = _tfds()
        builder = builder if builder is not None else open_builder(name, data_dir)
        self.name, self.split, self.folder = name, split, os.fspath(builder.data_dir)
        features = builder.info.features
        self.image_key = _feature_key(features, "image", tfds.features.Image)
        self.label_key = _feature_key(features, "label", tfds.features.ClassLabel)
        if self.image_key is None or self.label_key is None:
            raise DataError(f"TFDS data set {name!r} has features {sorted(features.keys())}, not "
                            "an image and a class label: it is not an image-classification set.")
        self.class_names = tuple(features[self.label_key].names)
        if not self.class_names:
            raise DataError(f"TFDS data set {name!r}: the class label {self.label_key!r} has "
                            "no classes.")
        # The usual case, a top-level Image and ClassLabel each serialized as one value:
        # TFDS's reader hands over the raw records and TFDS's own tf.train.Example class
        # parses them, picking the two features. Otherwise TFDS parses every feature with
        # the data set's spec (images left encoded), several times slower per record.
        self._raw = (builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
                     and _single_value(features[self.image_key], "O")
                     and _single_value(features[self.label_key], "iu"))
        if self._raw:
            from tensorflow_datasets.proto import tf_example_pb2

            self._example = tf_example_pb2.Example
            how = {"deserialize_method": tfds.decode.DeserializeMethod.RAW_BYTES}
        else:
            how = {"decoders": {k: tfds.decode.SkipDecoding() for k in features.keys()
                                if isinstance(features[k], tfds.features.Image)}}
        self._source = _open_split(builder, name, split, **how)
        if len(self._source) == 0:
            raise DataError(f"TFDS data set {name!r}: split {split!r} is empty.")
        self.image_size = int(image_size) or None
        stored = tuple(features[self.image_key].shape)
        channels = 1 if stored[-1] == 1 else 3
        if self.image_size:
            size = (self.image_size, self.image_size)
        elif stored[0] and stored[1]:
            size = (int(stored[0]), int(stored[1]))
        elif sized_by_first:
            first = self._decode_bytes(self._read([0])[0], 0)
            size = first.shape[:2]
        else:
            raise DataError(f"dataset.image_size is 0, but the images of TFDS data set {name!r} "
                            f"have no fixed size (feature shape {stored}): set "
                            "dataset.image_size (e.g. 224).")
        self.image_shape: tuple[int, int, int] = (int(size[0]), int(size[1]), channels)
        self._workers = num_workers or _imaging.default_workers()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._source)

    def _pick(self, record) -> tuple[bytes, int]:
        """(encoded image, label) of one record as the data source returns it."""
        if not self._raw:
            return record[self.image_key], int(record[self.label_key])
        feature = self._example.FromString(record).features.feature
        return (feature[self.image_key].bytes_list.value[0],
                feature[self.label_key].int64_list.value[0])

    def _read(self, indices: Sequence[int]) -> list[tuple[bytes, int]]:
        """(encoded image, label) of the given records, in order."""
        return [self._pick(r) for r in self._source.__getitems__([int(i) for i in indices])]

    def _decode_bytes(self, record: tuple[bytes, int], index: int) -> np.ndarray:
        try:
            return _imaging.decode(record[0], self.image_size)
        except Exception as e:  # Pillow raises many types for bad files
            raise DataError(f"{self.folder}: record {index} of split {self.split!r} is not a "
                            f"readable image ({_first_line(e)}).") from None

    def _fetch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, labels, decoded-as-grey mask) of `indices`, in order.

        One read of all the records (array_record reads the shards in parallel),
        then the worker threads parse and decode chunks of them.
        """
        indices = [int(i) for i in indices]
        n = len(indices)
        images = np.empty((n,) + self.image_shape, np.uint8)
        labels = np.empty((n,), np.int32)
        grey = np.zeros((n,), bool)
        h, w, channels = self.image_shape
        records = self._source.__getitems__(indices) if n else []

        def work(start: int) -> None:
            for k in range(start, min(start + _CHUNK, n)):
                image, labels[k] = self._pick(records[k])
                arr = self._decode_bytes((image, labels[k]), indices[k])
                if arr.shape[:2] != (h, w):
                    raise DataError(f"TFDS data set {self.name!r}: record {indices[k]} of split "
                                    f"{self.split!r} is {arr.shape[1]}x{arr.shape[0]}, not "
                                    f"{w}x{h}: set dataset.image_size to resize them all.")
                grey[k] = arr.shape[-1] == 1 and channels == 3
                images[k] = _imaging.to_channels(arr, channels)

        for _ in self._pool.map(work, range(0, n, _CHUNK)):
            pass
        return images, labels, grey

    def fetch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, H, W, C) images, int32 (n,) labels) of the given records, in order."""
        images, labels, _ = self._fetch(indices)
        return images, labels

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            n = len(self)

            def read_labels(start: int) -> list[int]:
                return [int(label) for _, label in self._read(range(start,
                                                                    min(start + 1024, n)))]

            chunks = self._pool.map(read_labels, range(0, n, 1024))
            self._labels = np.asarray([v for c in chunks for v in c], np.int32)
        return self._labels

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        inner = getattr(self._source, "data_source", None)  # the array_record reader
        if hasattr(inner, "__exit__"):
            inner.__exit__(None, None, None)


# --- whole splits in memory ----------------------------------------------------

def load_tfds(name: str, data_dir: str | None = None, train_split: str = "train",
              test_split: str = "test", image_size: int | None = None,
              num_workers: int | None = None) -> DataSplits:
    """A prepared TFDS image-classification set, read into uint8 arrays.

    array_record sets are read by `StreamingTfds` (no TensorFlow needed);
    TFRecord sets with `tfds.as_numpy(builder.as_dataset(...))` when
    TensorFlow is installed. Splits may use TFDS slicing, e.g.
    `train_split="train[:90%]", test_split="train[90%:]"`. Without
    `image_size` all images must share one size.

    Raises:
      DataError: unknown name, data not prepared in `data_dir`, unreadable
        format, or features that are not (image, class label).
    """
    image_size = _common.check_image_size(image_size)
    builder = open_builder(name, data_dir)
    try:
        train, test = (StreamingTfds(name, data_dir, split, image_size or 0, num_workers or 0,
                                     builder=builder, sized_by_first=True)
                       for split in (train_split, test_split))
    except _NoRandomAccess:
        return _load_with_tensorflow(builder, name, data_dir, train_split, test_split,
                                     image_size)
    try:
        if train.image_shape != test.image_shape:
            raise DataError(f"TFDS data set {name!r}: split {train_split!r} has images of shape "
                            f"{train.image_shape}, split {test_split!r} {test.image_shape}: set "
                            "dataset.image_size to resize them all.")
        train_x, train_y, train_grey = train._fetch(range(len(train)))
        test_x, test_y, _ = test._fetch(range(len(test)))
    finally:
        train.close()
        test.close()
    info = {"source": f"tfds:{name}", "data_dir": train.folder,
            "split": f"{train_split} / {test_split}", "resized_to": image_size,
            _common.GREY_TO_RGB_KEY: _common.grey_to_rgb_mode(train_grey,
                                                               train.image_shape[-1])}
    return DataSplits(ArrayDataset(train_x, train_y), ArrayDataset(test_x, test_y),
                      len(train.class_names), train.class_names, name, info)


def _load_with_tensorflow(builder, name: str, data_dir: str | None, train_split: str,
                          test_split: str, image_size: int | None) -> DataSplits:
    """A TFRecord set: TFDS decodes it with TensorFlow (`builder.as_dataset`)."""
    tfds = _tfds()
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError(f"TFDS data set {name!r} in {os.fspath(builder.data_dir)} is stored as "
                        f"TFRecord, which needs TensorFlow: pip install 'dpjax[tf]', or rebuild "
                        f"it with `tfds build {name.partition(':')[0]} "
                        "--file_format=array_record`.") from None
    features = builder.info.features
    image_key = _feature_key(features, "image", tfds.features.Image)
    label_key = _feature_key(features, "label", tfds.features.ClassLabel)
    if image_key is None or label_key is None:
        raise DataError(f"TFDS data set {name!r} has features {sorted(features.keys())}, not an "
                        "image and a class label: it is not an image-classification set.")
    class_names = tuple(features[label_key].names)

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            records = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        except Exception as e:
            raise DataError(f"TFDS data set {name!r}: split {split!r} could not be opened "
                            f"({_first_line(e)}); its splits are "
                            f"{sorted(builder.info.splits.keys())}.") from None
        images, labels = [], []
        for record in records:
            image = np.asarray(record[image_key])
            images.append(image[..., None] if image.ndim == 2 else image)
            labels.append(int(record[label_key]))
        if not images:
            raise DataError(f"TFDS data set {name!r}: split {split!r} is empty.")
        if image_size is None:
            shapes = Counter(im.shape for im in images)
            if len(shapes) > 1:
                (a, _), (b, _) = shapes.most_common(2)
                raise DataError(f"TFDS data set {name!r} has images of shapes {a} and {b}: set "
                                "dataset.image_size to resize them all.")
        if any(im.dtype != np.uint8 or im.shape[-1] not in (1, 3) for im in images):
            raise DataError(f"TFDS data set {name!r}: images are not uint8 grey or RGB.")
        return (np.stack([_imaging.fit_array(im, image_size) for im in images]),
                np.asarray(labels, np.int32))

    (train_x, train_y), (test_x, test_y) = read(train_split), read(test_split)
    grey_to_rgb = _common.train_grey_to_rgb(train_x, test_x)
    train_x, test_x = _common.unify_channels(train_x, test_x)
    return DataSplits(ArrayDataset(train_x, train_y), ArrayDataset(test_x, test_y),
                      len(class_names), class_names, name,
                      {"source": f"tfds:{name}", "data_dir": data_dir,
                       "split": f"{train_split} / {test_split}", "resized_to": image_size,
                       _common.GREY_TO_RGB_KEY: grey_to_rgb})


@registry.register("tfds")
def load_from_config(c) -> DataSplits:
    """`dataset.name=tfds`: reads tfds_name, data_dir, train_split, test_split,
    image_size, streaming, num_workers."""
    if not c.tfds_name:
        raise ConfigError("dataset.tfds_name is empty: set it to a TFDS name such as cifar10 "
                          "(--config.dataset.tfds_name=...).")
    image_size = _common.check_image_size(c.image_size)
    data_dir = c.data_dir or None
    if not c.streaming:
        return load_tfds(c.tfds_name, data_dir, c.train_split, c.test_split, image_size,
                         c.num_workers or None)
    builder = open_builder(c.tfds_name, data_dir)
    train = StreamingTfds(c.tfds_name, data_dir, c.train_split, image_size or 0, c.num_workers,
                          builder=builder)
    test = StreamingTfds(c.tfds_name, data_dir, c.test_split, image_size or 0, c.num_workers,
                         builder=builder)
    return DataSplits(train, test, len(train.class_names), train.class_names,
                      c.tfds_name.partition(":")[0],
                      {"source": f"tfds:{c.tfds_name}", "data_dir": train.folder,
                       "split": f"{c.train_split} / {c.test_split}", "resized_to": image_size,
                       "streaming": True})


# --- writing the same layout (tests, benchmarks, your own data) ---------------

def write_prepared(data_dir: str, name: str,
                   splits: dict[str, tuple[Sequence[bytes], Sequence[int]]],
                   class_names: Sequence[str], *, version: str = "1.0.0",
                   config: str | None = None, num_shards: int = 1, image_format: str = "jpeg",
                   channels: int = 3) -> str:
    """Writes images and labels in the layout `tfds build --file_format=array_record` makes.

    `splits` maps a split name to (encoded image files, labels). Each record
    is the `tf.train.Example` TFDS's own serializer makes of {"image": the
    file's bytes as they are, "label", "file_name": "<split>_<i>.<format>"}
    for the features Image(shape=(None, None, `channels`), `image_format`),
    ClassLabel(`class_names`) and Text; the records are written in order
    into `num_shards` array_record shards per split named by TFDS's default
    template, and TFDS's `DatasetInfo` writes dataset_info.json (file format,
    shard lengths and template, `config`), features.json and
    label.labels.txt. Returns the folder data_dir/name[/config]/version.
    """
    from array_record.python import array_record_module

    tfds = _tfds()
    folder = os.path.join(data_dir, name, *([config] if config else []), version)
    os.makedirs(folder, exist_ok=True)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, channels), encoding_format=image_format),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "file_name": tfds.features.Text(),
    })
    split_infos = []
    for split, (images, labels) in splits.items():
        template = tfds.core.ShardedFileTemplate(
            data_dir=tfds.core.Path(folder), template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE,
            dataset_name=name, split=split, filetype_suffix="array_record")
        bounds = np.linspace(0, len(images), num_shards + 1).astype(int)
        num_bytes = 0
        for s, path in enumerate(template.sharded_filepaths(num_shards)):
            writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
            for i in range(bounds[s], bounds[s + 1]):
                record = features.serialize_example({
                    "image": io.BytesIO(bytes(images[i])), "label": int(labels[i]),
                    "file_name": f"{split}_{i}.{image_format}"})
                num_bytes += len(record)
                writer.write(record)
            writer.close()
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[int(b - a) for a, b in zip(bounds[:-1], bounds[1:])],
            num_bytes=num_bytes, filename_template=template))
    identity = tfds.core.DatasetIdentity(
        name=name, version=tfds.core.Version(version), data_dir=folder, module_name="",
        config_name=config, config_description=None)
    info = tfds.core.DatasetInfo(builder=identity, features=features,
                                 description="written by dpjax.data.tfds_records.write_prepared",
                                 supervised_keys=("image", "label"))
    info.set_file_format("array_record")
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.write_to_directory(folder)
    return folder
