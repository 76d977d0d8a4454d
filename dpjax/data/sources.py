"""Data sources: every data set becomes a `RandomAccessDataset` of uint8 images and int32 labels.

Small and medium data sets (digits, CIFAR, MedMNIST, folders of a few
hundred thousand small images) are held whole as uint8 arrays
(`ArrayDataset`), moved to the accelerator once and augmented there; larger
ones are streamed, decoded on demand (`dataset.streaming=True`). `load`
picks the source registered (`dpjax.data.registry`) under `dataset.name`:

* `digits`: scikit-learn's 8x8 handwritten digits (ships with the package);
* `tfds`: TensorFlow Datasets by name, read from a prepared `data_dir`
  (`dpjax.data.tfds_records`);
* `npz`: MedMNIST-style `.npz` files;
* `folder`: `root/<class>/*` or `root/{train,test}/<class>/*` image folders,
  from a directory or straight from a `.zip` archive (Kaggle's layout);
* `kermany`, `csv`: the Kermany chest X-rays and APTOS 2019 as Kaggle ships
  them (`dpjax.data.medical`).

Every problem with the user's files is a `DataError` naming the file and the
fix; unreadable images either stop the run or are skipped and counted
(`dataset.on_bad_image`). `DataSplits.info` records how the data were read.
It holds no per-class counts of the training set: those are statistics of
the private data, not covered by ε.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

import numpy as np

# medical and tfds_records register their sources when imported.
from dpjax.data import _imaging, medical, registry, streaming, tfds_records  # noqa: F401
from dpjax.data._common import (
    GREY_TO_RGB_KEY,
    ON_BAD_IMAGE,
    USE_VAL,
    check_choice,
    check_image_size,
    check_test_fraction,
    describe_error,
    find_layout,
    grey_to_rgb_mode,
    require_path,
    stratified_split,
    train_grey_to_rgb,
    unify_channels,
)
from dpjax.data.protocol import ArrayDataset, DataSplits, RandomAccessDataset
from dpjax.errors import DataError

IMAGE_EXTENSIONS = _imaging.IMAGE_EXTENSIONS
_CACHE_VERSION = 2  # 2: info records train_grey_to_rgb


# --- digits ------------------------------------------------------------------

def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's 1797 handwritten digits, 8x8 grey, stratified split.

    Pixel values 0..16 map to round(v * 255 / 16), so 16 is 255. With the
    defaults the split is 1437 train / 360 test. The data ship with
    scikit-learn, so this works offline: the quickstart and the tests use it.
    """
    from sklearn.datasets import load_digits as sk_digits

    test_fraction = check_test_fraction(test_fraction)
    raw = sk_digits()
    images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int32)
    train, test, _ = stratified_split(labels, test_fraction, split_seed)
    return DataSplits(ArrayDataset(images[train], labels[train]),
                      ArrayDataset(images[test], labels[test]), 10,
                      tuple(str(i) for i in range(10)), "digits",
                      {"source": "sklearn.datasets.load_digits",
                       "split": f"stratified, test_fraction={test_fraction}, seed={split_seed}"})


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
    check_choice("dataset.use_val", use_val, USE_VAL)
    image_size = check_image_size(image_size)
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
    grey_to_rgb = train_grey_to_rgb(splits["train"][0], splits["test"][0])
    train_x, test_x = unify_channels(splits["train"][0], splits["test"][0])
    name = os.path.splitext(os.path.basename(path))[0]
    return DataSplits(ArrayDataset(train_x, splits["train"][1]),
                      ArrayDataset(test_x, splits["test"][1]), num_classes,
                      tuple(str(i) for i in range(num_classes)), name,
                      {"source": os.path.abspath(path), "split": "npz train/test",
                       "val": val_note if has_val else "absent", "resized_to": image_size,
                       GREY_TO_RGB_KEY: grey_to_rgb})


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
    keep one channel (`info["train_grey_to_rgb"]` says whether training
    images were grey files repeated into RGB: local DP perturbs those once,
    before the repetition, and refuses a mix of grey and colour files).
    Images of different sizes need `image_size`: each is resized (bilinear)
    so its shorter side is `image_size`, then centre cropped to a square. A
    flat layout gets a seeded stratified split.

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
    check_choice("dataset.on_bad_image", on_bad_image, ON_BAD_IMAGE)
    check_choice("dataset.use_val", use_val, USE_VAL)
    image_size = check_image_size(image_size)
    test_fraction = check_test_fraction(test_fraction)
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
    layout = find_layout(tree, use_val)
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
                                        f"({describe_error(result)}); fix or remove it, or set "
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
    grey: dict[str, np.ndarray] = {}  # per image: decoded as grey (then broadcast if RGB)
    for split in order:
        idx = [i for i, e in enumerate(entries) if e[2] == split and arrays[i] is not None]
        images = np.empty((len(idx), h, w, channels), np.uint8)
        grey[split] = np.asarray([arrays[i].shape[-1] == 1 for i in idx], bool)
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
        info[GREY_TO_RGB_KEY] = grey_to_rgb_mode(grey[""][tr], channels)
    else:
        if "val" in by_split:
            by_split["train"] = tuple(np.concatenate(p) for p in zip(by_split["train"],
                                                                     by_split.pop("val")))
            grey["train"] = np.concatenate([grey["train"], grey["val"]])
        info[GREY_TO_RGB_KEY] = grey_to_rgb_mode(grey["train"], channels)
        train, test = ArrayDataset(*by_split["train"]), ArrayDataset(*by_split["test"])
        info["split"] = "train/ and test/ folders" + (" (+ val/ in train)"
                                                      if use_val == "train" else "")
        if len(train) == 0:
            raise DataError(f"{path}: no readable images in {layout.root}train/.")
    info.update(skipped_images=len(bad), skipped_files=bad[:20], ignored=layout.ignored)
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return DataSplits(train, test, len(classes), tuple(classes), name, info)


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


# --- sources by name -------------------------------------------------------------
#
# Each loader takes the whole `dataset` block (`registry.fields`: every field of
# the base config, the given values first) and reads only the fields listed in
# its docstring.

@registry.register("digits")
def _digits_from_config(c) -> DataSplits:
    """Reads test_fraction, split_seed."""
    return load_digits(c.test_fraction, c.split_seed)


@registry.register("npz")
def _npz_from_config(c) -> DataSplits:
    """Reads path, image_size, use_val."""
    path = require_path(c.path, "a MedMNIST-style .npz file")
    return load_npz(path, check_image_size(c.image_size), c.use_val)


@registry.register("folder")
def _folder_from_config(c) -> DataSplits:
    """Reads path, image_size, num_workers and streaming; in memory also test_fraction,
    split_seed, on_bad_image, cache_dir, use_val; streamed also train_split, test_split
    (the split folders)."""
    path = require_path(c.path, "an image folder or .zip")
    image_size = check_image_size(c.image_size)
    if not c.streaming:
        return load_image_folder(path, image_size, c.test_fraction, c.split_seed,
                                 c.on_bad_image, c.cache_dir or None, c.use_val,
                                 c.num_workers or None)
    train = streaming.StreamingImageFolder(path, c.train_split, image_size or 0, c.num_workers)
    test = streaming.StreamingImageFolder(path, c.test_split, image_size or 0, c.num_workers,
                                          class_names=train.class_names)
    return DataSplits(train, test, len(train.class_names), train.class_names,
                      os.path.splitext(os.path.basename(os.path.normpath(path)))[0],
                      {"source": path, "streaming": True,
                       "split": f"{c.train_split}/ and {c.test_split}/ folders"})


def load(dataset_config) -> DataSplits:
    """Loads the data set described by a config's `dataset` block.

    `dataset_config` is a ConfigDict (or dict) whose `name` is a registered
    source (`registry.names()`: digits, tfds, npz, folder, kermany, csv and
    any registered by the user); fields it lacks take the base config's
    defaults (`dpjax.config.base_config().dataset`).

    Raises:
      ConfigError: unknown `dataset.name`, a field that is not a `dataset`
        field, or a value out of range.
      DataError: missing or malformed data.
    """
    c = registry.fields(dataset_config)
    splits = registry.loader(c.name)(c)
    _check_splits(splits)
    return splits


def _check_splits(splits: DataSplits) -> None:
    """Class names match, in-memory labels are class indices, training is not empty."""
    if len(splits.class_names) != splits.num_classes:
        raise DataError(f"{splits.name}: {len(splits.class_names)} class names for "
                        f"{splits.num_classes} classes.")
    for split in ("train", "test"):
        ds = getattr(splits, split)
        if not isinstance(ds, RandomAccessDataset):
            raise DataError(f"{splits.name}: the {split} split ({type(ds).__name__}) lacks "
                            "__len__, image_shape, labels or fetch.")
        # Streamed splits build their labels from the class list (folders, TFDS
        # ClassLabel); reading a TFDS split's labels here would be a pass over it.
        labels = ds.labels if isinstance(ds, ArrayDataset) else None
        if labels is not None and labels.size and (labels.min() < 0
                                                   or labels.max() >= splits.num_classes):
            raise DataError(f"{splits.name}: {split} labels span [{labels.min()}, "
                            f"{labels.max()}], outside the {splits.num_classes} classes.")
    if len(splits.train) == 0:
        raise DataError(f"{splits.name}: the training split is empty.")
