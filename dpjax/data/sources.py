"""Data sources: every data set becomes uint8 images (N, H, W, C) and int32 labels.

Small and medium data sets (digits, CIFAR, MedMNIST, folders of a few
hundred thousand small images) are held whole as uint8 arrays, moved to the
accelerator once and augmented there. Sources, picked by `dataset.name`:

* `digits`: scikit-learn's 8x8 handwritten digits (ships with the package);
* `tfds`: TensorFlow Datasets by name, read from a prepared `data_dir`;
* `npz`: MedMNIST-style `.npz` files;
* `folder`: `root/<class>/*` or `root/{train,test}/<class>/*` image folders,
  from a directory or straight from a `.zip` archive (Kaggle's layout).

Every problem with the user's files is a `DataError` naming the file and the
fix; unreadable images either stop the run or are skipped and counted
(`dataset.on_bad_image`). `DataSplits.info` records how the data were read.
It holds no per-class counts of the training set: those are statistics of
the private data, not covered by ε.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpjax.data import _imaging
from dpjax.errors import ConfigError, DataError

IMAGE_EXTENSIONS = _imaging.IMAGE_EXTENSIONS
SOURCES = ("digits", "tfds", "npz", "folder")
_USE_VAL = ("ignore", "train")
_ON_BAD_IMAGE = ("error", "skip")
_SPLIT_DIRS = {"train": "train", "test": "test", "val": "val", "valid": "val",
               "validation": "val"}
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Images uint8 (N, H, W, C) with C in {1, 3}, and int32 labels (N,)."""

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


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """A training and a test split with their class names.

    `info` holds facts about loading (source, layout, split method, skipped
    files). Nothing in it is a statistic of the training labels.
    """

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    info: dict = dataclasses.field(default_factory=dict)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Train and test indices (sorted), stratified by label, reproducible from the seed.

    Falls back to a plain seeded random split when stratification is
    impossible (a class with a single example, or fewer test or training
    slots than classes); the third value says which one was made.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_test = int(np.ceil(test_fraction * n))
    if n < 2 or n_test < 1 or n_test >= n:
        raise DataError(f"{n} images cannot be split with dataset.test_fraction={test_fraction}: "
                        "add images or provide separate train/ and test/ folders.")
    counts = Counter(labels.tolist())
    stratify = (min(counts.values()) >= 2 and n_test >= len(counts)
                and n - n_test >= len(counts))
    train, test = train_test_split(np.arange(n), test_size=test_fraction, random_state=seed,
                                   stratify=labels if stratify else None)
    return np.sort(train), np.sort(test), stratify


def _check_choice(field: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"Expected {field} in {tuple(options)}, got {value!r}.")


def _check_image_size(image_size: Any) -> int | None:
    """None or 0 keep the stored size; otherwise a positive int."""
    if image_size is None or image_size == 0:
        return None
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) \
            or image_size < 1:
        raise ConfigError(f"Expected dataset.image_size={image_size!r} to be a positive integer "
                          "(or 0 to keep the stored size).")
    return int(image_size)


def _check_test_fraction(test_fraction: Any) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ConfigError(f"Expected dataset.test_fraction={test_fraction!r} in (0, 1).")
    return float(test_fraction)


# --- digits ------------------------------------------------------------------

def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's 1797 handwritten digits, 8x8 grey, stratified split.

    Pixel values 0..16 map to round(v * 255 / 16), so 16 is 255. With the
    defaults the split is 1437 train / 360 test. The data ship with
    scikit-learn, so this works offline: the quickstart and the tests use it.
    """
    from sklearn.datasets import load_digits as sk_digits

    test_fraction = _check_test_fraction(test_fraction)
    raw = sk_digits()
    images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int32)
    train, test, _ = stratified_split(labels, test_fraction, split_seed)
    return DataSplits(ArrayDataset(images[train], labels[train]),
                      ArrayDataset(images[test], labels[test]), 10,
                      tuple(str(i) for i in range(10)), "digits",
                      {"source": "sklearn.datasets.load_digits",
                       "split": f"stratified, test_fraction={test_fraction}, seed={split_seed}"})


# --- TFDS ----------------------------------------------------------------------

def load_tfds(name: str, data_dir: str | None = None, train_split: str = "train",
              test_split: str = "test", image_size: int | None = None) -> DataSplits:
    """A prepared TFDS image-classification data set, read into uint8 arrays.

    Reads with `tfds.data_source` (array_record random access, no TensorFlow
    needed) and falls back to `tfds.as_numpy(builder.as_dataset(...))` when
    TensorFlow is installed and the data were prepared as TFRecord. Nothing is
    ever downloaded or built here: training machines are often offline, and
    building most data sets needs TensorFlow. Splits may use TFDS slicing,
    e.g. `train_split="train[:90%]", test_split="train[90%:]"`.

    Raises:
      DataError: unknown name, data not prepared in `data_dir`, unreadable
        format, or features that are not (image, class label).
    """
    if not name:
        raise ConfigError("dataset.tfds_name is empty: set it to a TFDS name such as cifar10.")
    image_size = _check_image_size(image_size)
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("tensorflow-datasets is not installed: pip install "
                        "tensorflow-datasets.") from None
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    where = data_dir or "the default TFDS folder (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    how = (f"prepare it on a machine with internet with `pip install 'dpjax[tf]'` and "
           f"`tfds build {name} --data_dir DIR --file_format=array_record`, copy DIR here and "
           "set dataset.data_dir=DIR, or use dataset.name=folder or npz with your own copy")
    try:
        # Unknown names make TFDS print its whole catalogue; keep the console clean.
        with contextlib.redirect_stdout(io.StringIO()):
            builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"dataset.tfds_name={name!r} is not a data set known to "
                        f"tensorflow-datasets {tfds.__version__} ({type(e).__name__}): check "
                        "the name against tfds.list_builders().") from None
    if not builder.is_prepared():
        raise DataError(f"TFDS data set {name!r} is not prepared in {where}: {how}.")

    features = builder.info.features
    image_key = _feature_key(features, "image", tfds.features.Image)
    label_key = _feature_key(features, "label", tfds.features.ClassLabel)
    if image_key is None or label_key is None:
        raise DataError(f"TFDS data set {name!r} has features {sorted(features.keys())}, not an "
                        "image and a class label: it is not an image-classification set.")
    class_names = tuple(features[label_key].names)

    def read(split: str) -> tuple[list[np.ndarray], np.ndarray]:
        try:
            source = builder.as_data_source(split=split)
            records = (source[i] for i in range(len(source)))
        except NotImplementedError:  # prepared as TFRecord: needs TensorFlow
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                raise DataError(f"TFDS data set {name!r} in {where} is stored as TFRecord, which "
                                f"needs TensorFlow: pip install 'dpjax[tf]', or rebuild it with "
                                f"`tfds build {name} --file_format=array_record`.") from None
            records = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        except Exception as e:
            raise DataError(f"TFDS data set {name!r}: split {split!r} could not be opened "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"its splits are {sorted(builder.info.splits.keys())}.") from None
        images, labels = [], []
        for record in records:
            image = np.asarray(record[image_key])
            images.append(image[..., None] if image.ndim == 2 else image)
            labels.append(int(record[label_key]))
        return images, np.asarray(labels, np.int32)

    def stack(images: list[np.ndarray], split: str) -> np.ndarray:
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
        return np.stack([_imaging.fit_array(im, image_size) for im in images])

    tr_images, tr_labels = read(train_split)
    te_images, te_labels = read(test_split)
    train_x, test_x = stack(tr_images, train_split), stack(te_images, test_split)
    train_x, test_x = _unify_channels(train_x, test_x)
    return DataSplits(ArrayDataset(train_x, tr_labels), ArrayDataset(test_x, te_labels),
                      len(class_names), class_names, name,
                      {"source": f"tfds:{name}", "data_dir": data_dir,
                       "split": f"{train_split} / {test_split}", "resized_to": image_size})


def _feature_key(features, preferred: str, kind) -> str | None:
    if preferred in features.keys() and isinstance(features[preferred], kind):
        return preferred
    keys = [k for k in features.keys() if isinstance(features[k], kind)]
    return keys[0] if len(keys) == 1 else None


def _unify_channels(*stacks: np.ndarray) -> tuple[np.ndarray, ...]:
    """All grey (C=1) unless any stack is RGB, then all RGB (grey repeated)."""
    if any(s.shape[-1] == 3 for s in stacks):
        return tuple(np.repeat(s, 3, axis=-1) if s.shape[-1] == 1 else s for s in stacks)
    return stacks


# --- npz (MedMNIST) ----------------------------------------------------------

_NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz(path: str, image_size: int | None = None, use_val: str = "ignore") -> DataSplits:
    """A MedMNIST-style `.npz`: train/val/test images and labels.

    Keys `train_images, train_labels, test_images, test_labels` are required,
    `val_images, val_labels` optional. Images are (N, H, W) or (N, H, W, 1)
    grey, or (N, H, W, 3) RGB. Pixel values follow one rule: uint8 as is;
    other integers must lie in [0, 255]; floats whose maximum is <= 1 are read
    as [0, 1] and scaled by 255, other floats must lie in [0, 255]; all are
    rounded to uint8. Labels are (N,) or (N, 1) integer class indices 0..K-1
    with K = largest label + 1, and every class must occur somewhere;
    multi-label files (N, k > 1, e.g. ChestMNIST) are refused.

    Args:
      path: the `.npz` file.
      image_size: resize every image (shorter side, then centre crop).
      use_val: "ignore" leaves the validation split out; "train" adds it to
        the training set (it then counts as private training data).

    Raises:
      DataError: missing keys, wrong shapes or dtypes, values out of range.
    """
    _check_choice("dataset.use_val", use_val, _USE_VAL)
    image_size = _check_image_size(image_size)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"dataset.path={path!r} does not exist: point it at a MedMNIST-style "
                        ".npz file.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") \
            from None
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    has_val = "val_images" in arrays or "val_labels" in arrays
    if has_val:
        missing += [k for k in ("val_images", "val_labels") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks keys {missing} (it has {sorted(arrays)}): expected "
                        f"MedMNIST keys {list(_NPZ_KEYS)} and optionally val_images, val_labels.")
    if use_val == "train" and not has_val:
        raise DataError(f"{path} has no val_images/val_labels: set dataset.use_val=ignore.")

    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val", "test") if has_val else ("train", "test"):
        images = _npz_images(arrays[f"{split}_images"], path, split)
        labels = _npz_labels(arrays[f"{split}_labels"], path, split)
        if len(images) != len(labels):
            raise DataError(f"{path}: {split}_images has {len(images)} rows but {split}_labels "
                            f"has {len(labels)}; they must match.")
        splits[split] = (_imaging.resize_all(images, image_size), labels)
    shapes = {s: v[0].shape[1:3] for s, v in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: splits have different image sizes {shapes}: set "
                        "dataset.image_size to resize them all.")
    if not len(splits["train"][1]):
        raise DataError(f"{path}: train_images is empty.")

    all_labels = np.concatenate([labels for _, labels in splits.values()])
    num_classes = int(all_labels.max()) + 1
    absent = sorted(set(range(num_classes)) - set(np.unique(all_labels).tolist()))
    if absent:
        raise DataError(f"{path}: labels go up to {num_classes - 1} but class {absent[0]} has no "
                        "example in any split; labels must be 0..K-1 (are they 1-based?).")
    val_note = "ignored"
    if "val" in splits:
        n_val = len(splits["val"][1])
        if use_val == "train":
            splits["train"] = tuple(np.concatenate(p) for p in zip(splits["train"],
                                                                    splits["val"]))
            val_note = f"added to train ({n_val} images)"
        else:
            val_note = f"ignored ({n_val} images)"
    train_x, test_x = _unify_channels(splits["train"][0], splits["test"][0])
    name = os.path.splitext(os.path.basename(path))[0]
    return DataSplits(ArrayDataset(train_x, splits["train"][1]),
                      ArrayDataset(test_x, splits["test"][1]), num_classes,
                      tuple(str(i) for i in range(num_classes)), name,
                      {"source": os.path.abspath(path), "split": "npz train/test",
                       "val": val_note if has_val else "absent", "resized_to": image_size})


def _npz_images(images: np.ndarray, path: str, split: str) -> np.ndarray:
    """Checks shape and value range of one split's images; returns uint8 (N, H, W, C)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) or "
                        "(N, H, W, 1) grey or (N, H, W, 3) RGB.")
    if images.dtype == np.uint8:
        return images
    kind = images.dtype.kind
    if kind not in "iuf":
        raise DataError(f"{path}: {split}_images has dtype {images.dtype}; expected uint8, "
                        "integers in [0, 255] or floats in [0, 1] or [0, 255].")
    if images.size == 0:
        return images.astype(np.uint8)
    if kind == "f" and not np.all(np.isfinite(images)):
        raise DataError(f"{path}: {split}_images contains NaN or infinite values.")
    lo, hi = images.min(), images.max()
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: {split}_images ({images.dtype}) has values in [{lo}, {hi}]; "
                        "expected [0, 255] (or [0, 1] for floats): convert it to uint8.")
    if kind == "f" and hi <= 1:
        images = images * 255.0
    return np.round(images).astype(np.uint8) if kind == "f" else images.astype(np.uint8)


def _npz_labels(labels: np.ndarray, path: str, split: str) -> np.ndarray:
    """Checks one split's labels are single integer class indices; returns int32 (N,)."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(f"{path}: {split}_labels has shape {labels.shape}: multi-label data "
                        "(e.g. ChestMNIST) is not supported; use a single-label data set.")
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
        raise DataError(f"{path}: {split}_labels has shape {labels.shape}; expected (N,) or "
                        "(N, 1).")
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {split}_labels has dtype {labels.dtype} with non-integer "
                        "values; expected integer class indices 0..K-1.")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise DataError(f"{path}: {split}_labels has label {bad} out of range; expected class "
                        "indices 0..K-1.")
    return labels.astype(np.int32)


# --- image folders (directory or zip) ----------------------------------------

@dataclasses.dataclass
class _Layout:
    """Where the images of each split are, and their classes."""

    root: str                              # common leading folder, '' or 'chest_xray/'
    kind: str                              # "split" (train/ test/) or "flat" (<class>/)
    files: dict[str, list[tuple[str, str]]]  # split -> [(file name, class)]
    class_dirs: dict[str, str]            # class -> one folder naming it
    ignored: dict[str, int]                # what was left out, and how many files


def _find_layout(tree: _imaging.FileTree, use_val: str) -> _Layout:
    """Works out `root/<class>/*` or `root/{train,test[,val]}/<class>/*` from the names."""
    path = tree.path
    images = [n for n in tree.files if _imaging.is_image_name(n)]
    ignored: Counter = Counter()
    ignored["non-image files"] = len(tree.files) - len(images)
    if not images:
        raise DataError(f"dataset.path={path!r} holds no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}): point it at a folder of class folders.")
    # Strip leading folders that hold everything (`chest_xray/`), as long as
    # the images stay inside a class folder below them.
    root = ""
    while True:
        rel = [n[len(root):] for n in images]
        tops = {r.split("/", 1)[0] for r in rel}
        top = next(iter(tops))
        if len(tops) == 1 and top.lower() not in _SPLIT_DIRS and all(
                r.count("/") >= 2 for r in rel):
            root += top + "/"
        else:
            break
    by_top: dict[str, list[str]] = {}
    for n in images:
        rel = n[len(root):]
        by_top.setdefault(rel.split("/", 1)[0] if "/" in rel else "", []).append(n)
    split_dirs = {_SPLIT_DIRS[t.lower()]: t for t in by_top if t.lower() in _SPLIT_DIRS}
    if "train" in split_dirs or "test" in split_dirs:
        kind = "split"
        for needed in ("train", "test"):
            if needed not in split_dirs:
                raise DataError(f"{path}: has a {root}{next(iter(split_dirs.values()))}/ folder "
                                f"but no {root}{needed}/ folder: add it, or put the class folders "
                                "directly under the root for a seeded split.")
        used = ["train", "test"] + (["val"] if use_val == "train" and "val" in split_dirs else [])
        roots = {s: root + split_dirs[s] + "/" for s in used}
        for t, names in by_top.items():
            if t not in [split_dirs[s] for s in used]:
                what = "files at the top" if t == "" else f"folder {root}{t}/"
                if t == split_dirs.get("val"):
                    what += " (dataset.use_val=ignore)"
                ignored[what] += len(names)
    else:
        kind, roots = "flat", {"": root}
    files: dict[str, list[tuple[str, str]]] = {}
    class_dirs: dict[str, str] = {}
    for split, split_root in roots.items():
        entries = []
        for n in images:
            if n.startswith(split_root):
                rel = n[len(split_root):]
                if "/" in rel:
                    entries.append((n, rel.split("/", 1)[0]))
                else:
                    ignored[f"images directly in {split_root or './'}"] += 1
        files[split] = entries
        for d in tree.dirs:  # class folders, with or without images
            if d.startswith(split_root) and d != split_root:
                c = d[len(split_root):].split("/", 1)[0]
                if c and not c.startswith(".") and c != "__MACOSX":
                    class_dirs.setdefault(c, split_root + c + "/")
    with_images = {c for entries in files.values() for _, c in entries}
    empty = sorted(set(class_dirs) - with_images)
    if empty:
        raise DataError(f"{path}: class folder {class_dirs[empty[0]]} has no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder.")
    if len(with_images) < 2:
        raise DataError(f"{path}: found {len(with_images)} class folder(s) {sorted(with_images)} "
                        f"under {root or './'}; put one sub-folder per class "
                        "(root/<class>/image.png or root/train/<class>/image.png).")
    return _Layout(root, kind, files, class_dirs, {k: v for k, v in ignored.items() if v})


def load_image_folder(path: str, image_size: int | None = None, test_fraction: float = 0.2,
                      split_seed: int = 0, on_bad_image: str = "error",
                      cache_dir: str | None = None, use_val: str = "ignore",
                      num_workers: int | None = None) -> DataSplits:
    """Image folders `root/<class>/*` or `root/{train,test[,val]}/<class>/*`.

    Reads a directory or a `.zip` archive in place (no extraction); a single
    top-level folder such as `chest_xray/` is looked through. Class names are
    the sorted class-folder names, one list for train and test (a class may
    be missing from one split; a class folder without any image is an
    error). If any image is colour, all become RGB; if all are grey, they
    keep one channel. Images of different sizes need `image_size`: each is
    resized (bilinear) so its shorter side is `image_size`, then centre
    cropped to a square. A flat layout gets a seeded stratified split.

    Args:
      path: directory or `.zip`.
      image_size: None (or 0) keeps the stored size, which must then be the
        same for all images.
      test_fraction, split_seed: the split of a flat layout.
      on_bad_image: "error" stops at the first unreadable or truncated file;
        "skip" leaves such files out and lists them in `info`
        (`skipped_images`, `skipped_files`: the first 20).
      cache_dir: if set, the decoded arrays are saved there as `.npz`, keyed
        by the path, its size and modification time and these arguments, and
        reused on the next call. The cache holds the private images: keep it
        where the data may be kept.
      use_val: "ignore" leaves a `val/` folder out; "train" adds it to the
        training set.
      num_workers: decoding threads (default: the CPU count, at most 8).

    Raises:
      DataError: no images, no class folders, an empty class, mixed sizes
        without `image_size`, an unreadable image with on_bad_image="error".
    """
    _check_choice("dataset.on_bad_image", on_bad_image, _ON_BAD_IMAGE)
    _check_choice("dataset.use_val", use_val, _USE_VAL)
    image_size = _check_image_size(image_size)
    test_fraction = _check_test_fraction(test_fraction)
    path = os.path.expanduser(path)
    tree = _imaging.FileTree(path)
    try:
        cache_path = None
        if cache_dir:
            key = hashlib.sha256(json.dumps(
                [_CACHE_VERSION, tree.fingerprint(), image_size, test_fraction, split_seed,
                 on_bad_image, use_val]).encode()).hexdigest()[:20]
            base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
            cache_path = os.path.join(os.path.expanduser(cache_dir), f"{base}-{key}.npz")
            if os.path.isfile(cache_path):
                cached = _load_cached(cache_path)
                if cached is not None:
                    return cached
        result = _read_image_folder(tree, image_size, test_fraction, split_seed, on_bad_image,
                                    use_val, num_workers or _imaging.default_workers())
    finally:
        tree.close()
    if cache_path:
        _save_cached(cache_path, result)
    return result


def _read_image_folder(tree: _imaging.FileTree, image_size: int | None, test_fraction: float,
                       split_seed: int, on_bad_image: str, use_val: str,
                       workers: int) -> DataSplits:
    path = tree.path
    layout = _find_layout(tree, use_val)
    classes = sorted(layout.class_dirs)
    index = {c: i for i, c in enumerate(classes)}
    order = [s for s in ("train", "val", "test", "") if s in layout.files]
    entries = [(n, index[c], s) for s in order for n, c in layout.files[s]]

    def decode_chunk(chunk):
        out = []
        for name, _, _ in chunk:
            try:
                out.append(_imaging.decode(tree.read(name), image_size))
            except Exception as e:  # Pillow raises many types for bad files
                out.append(e)
        return out

    arrays: list[np.ndarray | None] = []
    bad: list[str] = []
    reference: tuple[str, tuple[int, int]] | None = None
    with contextlib.closing(_imaging.map_chunks(decode_chunk, entries, workers)) as results:
        for chunk_out in results:
            for result in chunk_out:
                name = entries[len(arrays)][0]
                if isinstance(result, Exception):
                    if on_bad_image == "error":
                        raise DataError(f"{path}: {name} is not a readable image "
                                        f"({_describe(result)}); fix or remove it, or set "
                                        "dataset.on_bad_image=skip.")
                    bad.append(name)
                    arrays.append(None)
                    continue
                size = result.shape[:2]
                if reference is None:
                    reference = (name, size)
                elif size != reference[1]:
                    (a, (ah, aw)), (bh, bw) = reference, size
                    raise DataError(f"{path}: images differ in size ({a} is {aw}x{ah}, {name} is "
                                    f"{bw}x{bh}): set dataset.image_size to resize them all.")
                arrays.append(result)
    if reference is None:
        raise DataError(f"{path}: none of its {len(entries)} images could be read.")

    channels = 3 if any(a is not None and a.shape[-1] == 3 for a in arrays) else 1
    h, w = reference[1]
    by_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in order:
        idx = [i for i, e in enumerate(entries) if e[2] == split and arrays[i] is not None]
        images = np.empty((len(idx), h, w, channels), np.uint8)
        for k, i in enumerate(idx):
            images[k] = arrays[i]  # broadcasts grey (H, W, 1) into RGB
            arrays[i] = None
        by_split[split] = (images, np.asarray([entries[i][1] for i in idx], np.int32))
    present = {int(c) for _, labels in by_split.values() for c in np.unique(labels)}
    lost = [c for c in classes if index[c] not in present]
    if lost:
        raise DataError(f"{path}: every image of class {lost[0]!r} was unreadable and skipped: "
                        "fix those files or remove the class folder.")

    info: dict[str, Any] = {"source": os.path.abspath(path),
                            "format": "zip" if tree.is_zip else "directory",
                            "root": layout.root or "./", "channels": channels,
                            "resized_to": image_size}
    if layout.kind == "flat":
        images, labels = by_split[""]
        tr, te, stratified = stratified_split(labels, test_fraction, split_seed)
        train = ArrayDataset(images[tr], labels[tr])
        test = ArrayDataset(images[te], labels[te])
        how = "stratified" if stratified else "random (too few images per class to stratify)"
        info["split"] = f"{how}, test_fraction={test_fraction}, seed={split_seed}"
    else:
        if "val" in by_split:
            by_split["train"] = tuple(np.concatenate(p) for p in zip(by_split["train"],
                                                                     by_split.pop("val")))
        train, test = ArrayDataset(*by_split["train"]), ArrayDataset(*by_split["test"])
        info["split"] = "train/ and test/ folders" + (" (+ val/ in train)"
                                                      if use_val == "train" else "")
        if len(train) == 0:
            raise DataError(f"{path}: no readable images in {layout.root}train/.")
    info.update(skipped_images=len(bad), skipped_files=bad[:20], ignored=layout.ignored)
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return DataSplits(train, test, len(classes), tuple(classes), name, info)


def _describe(error: Exception) -> str:
    """A short, one-line reason for an unreadable image."""
    if type(error).__name__ == "UnidentifiedImageError":
        return "not a recognised image format"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _save_cached(path: str, splits: DataSplits) -> None:
    """Writes the arrays and metadata atomically (write then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, train_images=splits.train.images, train_labels=splits.train.labels,
             test_images=splits.test.images, test_labels=splits.test.labels,
             meta=np.asarray(json.dumps({"num_classes": splits.num_classes,
                                         "class_names": list(splits.class_names),
                                         "name": splits.name, "info": splits.info})))
    os.replace(tmp, path)


def _load_cached(path: str) -> DataSplits | None:
    """The cached splits, or None if the file cannot be read (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return DataSplits(ArrayDataset(z["train_images"], z["train_labels"]),
                              ArrayDataset(z["test_images"], z["test_labels"]),
                              meta["num_classes"], tuple(meta["class_names"]), meta["name"],
                              dict(meta["info"], cache=path))
    except Exception:
        return None


# --- dispatch ------------------------------------------------------------------

def load(dataset_config) -> DataSplits:
    """Loads the data set described by a config's `dataset` block.

    `dataset_config` is a ConfigDict (or dict) with `name` in
    ("digits", "tfds", "npz", "folder") and the fields that source uses:
    tfds_name, data_dir, path, image_size, test_fraction, split_seed,
    on_bad_image, cache_dir, use_val, train_split, test_split. Missing fields
    take the defaults of the loader functions.

    Raises:
      ConfigError: unknown `dataset.name` or a field out of range.
      DataError: missing or malformed data.
    """
    get = dataset_config.get
    name = get("name", "digits")
    image_size = _check_image_size(get("image_size", None))
    if name == "folder" and get("streaming", False):
        from dpjax.data import streaming

        path = get("path", "")
        if not path or not os.path.exists(os.path.expanduser(path)):
            raise DataError(f"dataset.path={path!r} does not exist: point it at an image "
                            "folder or zip with train/ and test/ folders.")
        workers = get("num_workers", 0)
        train = streaming.StreamingImageFolder(path, "train", image_size or 0, workers)
        test = streaming.StreamingImageFolder(path, get("test_split", "test"), image_size or 0,
                                              workers, class_names=train.class_names)
        return DataSplits(train, test, len(train.class_names), train.class_names,
                          os.path.splitext(os.path.basename(path.rstrip("/")))[0],
                          {"source": path, "streaming": True})
    if name == "tfds" and get("streaming", False):
        from dpjax.data import tfds_records

        tfds_name, data_dir = get("tfds_name", ""), get("data_dir", None) or None
        if not tfds_name:
            raise ConfigError("dataset.tfds_name is empty: set it to a TFDS name such as "
                              "imagenet2012.")
        workers = get("num_workers", 0)
        train = tfds_records.StreamingTfds(tfds_name, data_dir, get("train_split", "train"),
                                           image_size or 0, workers)
        test = tfds_records.StreamingTfds(tfds_name, data_dir, get("test_split", "test"),
                                          image_size or 0, workers)
        return DataSplits(train, test, len(train.class_names), train.class_names,
                          tfds_name.partition(":")[0],
                          {"source": f"tfds:{tfds_name}", "data_dir": train.folder,
                           "streaming": True})
    if name == "digits":
        splits = load_digits(get("test_fraction", 0.2), get("split_seed", 0))
    elif name == "tfds":
        splits = load_tfds(get("tfds_name", ""), get("data_dir", None) or None,
                           get("train_split", "train"), get("test_split", "test"), image_size)
    elif name in ("npz", "folder"):
        path = get("path", "")
        if not path:
            what = "a MedMNIST-style .npz file" if name == "npz" else "an image folder or .zip"
            raise DataError(f"dataset.path is empty: set it to {what} "
                            "(--config.dataset.path=...).")
        if not os.path.exists(os.path.expanduser(path)):
            raise DataError(f"dataset.path={path!r} does not exist: check the path (relative "
                            f"paths start from {os.getcwd()}).")
        if name == "npz":
            splits = load_npz(path, image_size, get("use_val", "ignore"))
        else:
            splits = load_image_folder(path, image_size, get("test_fraction", 0.2),
                                       get("split_seed", 0), get("on_bad_image", "error"),
                                       get("cache_dir", None) or None, get("use_val", "ignore"))
    elif name in ("csv", "kermany"):
        from dpjax.data import medical

        path = get("path", "")
        what = ("the Kermany chest_xray folder or Kaggle .zip" if name == "kermany"
                else "the APTOS 2019 folder or .zip (train.csv, train_images/)")
        if not path:
            raise DataError(f"dataset.path is empty: set it to {what} "
                            "(--config.dataset.path=...).")
        if not os.path.exists(os.path.expanduser(path)):
            raise DataError(f"dataset.path={path!r} does not exist: check the path (relative "
                            f"paths start from {os.getcwd()}).")
        workers = get("num_workers", 0) or None
        if name == "kermany":
            splits = medical.load_kermany(path, get("image_size", 0), get("on_bad_image", "error"),
                                          get("use_val", "ignore"),
                                          get("cache_dir", None) or None, workers)
        else:
            splits = medical.load_aptos(path, get("image_size", 0), get("test_fraction", 0.2),
                                        get("split_seed", 0), get("on_bad_image", "error"),
                                        get("cache_dir", None) or None, workers)
    else:
        raise ConfigError(f"Expected dataset.name in {SOURCES}, got {name!r}.")
    _check_labels(splits)
    return splits


def _check_labels(splits: DataSplits) -> None:
    """Every label is a class index and the training split is not empty."""
    if len(splits.class_names) != splits.num_classes:
        raise DataError(f"{splits.name}: {len(splits.class_names)} class names for "
                        f"{splits.num_classes} classes.")
    for split in ("train", "test"):
        labels = getattr(splits, split).labels
        if labels.size and (labels.min() < 0 or labels.max() >= splits.num_classes):
            raise DataError(f"{splits.name}: {split} labels span [{labels.min()}, "
                            f"{labels.max()}], outside the {splits.num_classes} classes.")
    if len(splits.train) == 0:
        raise DataError(f"{splits.name}: the training split is empty.")
