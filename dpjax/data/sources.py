"""Data sources: every data set becomes uint8 arrays (N, H, W, C) and int32 labels.

Small and medium data sets (digits, CIFAR, MedMNIST, folders of a few
hundred thousand small images) live on the accelerator as uint8 and are
augmented there. Sources:

* `digits`: scikit-learn's 8x8 handwritten digits (ships with the package);
* `tfds`: TensorFlow Datasets by name, from a prepared `data_dir`;
* `npz`: MedMNIST-style `.npz` files;
* `folder`: `root/<class>/*` or `root/{train,test}/<class>/*` image folders,
  from a directory or straight from a `.zip` archive (Kaggle's layout).

Every problem with the user's files is a `DataError` naming the file and the
fix; unreadable images either stop the run or are skipped and counted
(`dataset.on_bad_image`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections import Counter
from collections.abc import Sequence

import numpy as np

from dpjax.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Images uint8 (N, H, W, C), C in {1, 3}, and labels int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """A training and a test split with their class names.

    `info` holds facts about loading (source, split method, skipped files).
    Class counts of the training set are statistics of private data and are
    NOT covered by ε; they are only reported when asked for.
    """

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    info: dict = dataclasses.field(default_factory=dict)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by label, reproducible from the seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = Counter(labels.tolist())
    stratify = labels if min(counts.values()) >= 2 else None
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                   stratify=stratify)
    return np.sort(train), np.sort(test)


# --- digits ------------------------------------------------------------------

def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's 1797 handwritten digits, 8x8 grey, stratified split.

    Pixel values 0..16 map to 0..255. With the defaults: 1437 train / 360 test.
    """
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int32)
    train, test = stratified_split(labels, test_fraction, split_seed)
    return DataSplits(ArrayDataset(images[train], labels[train]),
                      ArrayDataset(images[test], labels[test]), 10,
                      tuple(str(i) for i in range(10)), "digits",
                      {"source": "sklearn.datasets.load_digits", "split_seed": split_seed})


# --- TFDS ----------------------------------------------------------------------

def load_tfds(name: str, data_dir: str = "", train_split: str = "train",
              test_split: str = "test") -> DataSplits:
    """A prepared TFDS data set read with `tfds.data_source` (no TensorFlow needed).

    Nothing is downloaded: the data must have been prepared in `data_dir`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - a dependency
        raise DataError("tensorflow-datasets is not installed: pip install "
                        "tensorflow-datasets.") from e
    how = (f"prepare it where there is internet with `pip install 'dpjax[tf]'` and "
           f"`tfds build {name} --data_dir DIR`, then set dataset.data_dir=DIR; or use "
           "dataset.name=folder/npz with your own copy")
    data_dir = data_dir or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"TFDS data set {name!r} is unknown to tensorflow-datasets ({e}).") \
            from None
    if not builder.is_prepared():
        raise DataError(f"TFDS data set {name!r} is not prepared in "
                        f"{data_dir or '~/tensorflow_datasets'}: {how}.")
    try:
        sources = {s: tfds.data_source(name, split=s, data_dir=data_dir, download=False)
                   for s in (train_split, test_split)}
    except Exception as e:
        raise DataError(f"TFDS data set {name!r} could not be opened ({type(e).__name__}: "
                        f"{e}): {how}.") from None

    def to_arrays(source) -> ArrayDataset:
        images, labels = [], []
        for record in source:
            images.append(np.asarray(record["image"], np.uint8))
            labels.append(int(record["label"]))
        return ArrayDataset(np.stack(images), np.asarray(labels, np.int32))

    info = builder.info
    names = tuple(info.features["label"].names)
    return DataSplits(to_arrays(sources[train_split]), to_arrays(sources[test_split]),
                      len(names), names, name, {"source": f"tfds:{name}"})


# --- npz (MedMNIST) ----------------------------------------------------------

_NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz(path: str, image_size: int = 0, use_val: str = "ignore") -> DataSplits:
    """A MedMNIST-style `.npz` (train/val/test images and labels).

    Images uint8 (N, S, S) grey or (N, S, S, 3); float images in [0, 1] are
    scaled to uint8. Labels (N,) or (N, 1); multi-label files (N, k > 1, e.g.
    ChestMNIST) are refused. `use_val="train"` adds the validation split to the
    training set.
    """
    if not os.path.isfile(path):
        raise DataError(f"dataset.path={path!r} does not exist (expected a MedMNIST .npz).")
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") \
            from None
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks keys {missing} (has {sorted(arrays)}): expected MedMNIST "
                        f"keys {list(_NPZ_KEYS)} (+ val_images, val_labels).")
    splits = {}
    for split in ("train", "val", "test"):
        if f"{split}_images" not in arrays:
            continue
        images = _npz_images(arrays[f"{split}_images"], path, split)
        labels = _npz_labels(arrays[f"{split}_labels"], path, split)
        if len(images) != len(labels):
            raise DataError(f"{path}: {split}_images has {len(images)} rows but {split}_labels "
                            f"has {len(labels)}.")
        splits[split] = (images, labels)
    if use_val == "train" and "val" in splits:
        splits["train"] = tuple(np.concatenate([a, b]) for a, b in
                                zip(splits["train"], splits["val"]))
    num_classes = int(max(labels.max() for _, labels in splits.values() if len(labels))) + 1
    if image_size:
        splits = {k: (_resize_all(v[0], image_size), v[1]) for k, v in splits.items()}
    name = os.path.splitext(os.path.basename(path))[0]
    return DataSplits(ArrayDataset(*splits["train"]), ArrayDataset(*splits["test"]), num_classes,
                      tuple(str(i) for i in range(num_classes)), name,
                      {"source": path, "val_used_for_training": use_val == "train"})


def _npz_images(images: np.ndarray, path: str, split: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: {split}_images has shape {images.shape}; expected (N, S, S) "
                        "or (N, S, S, 3).")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        lo, hi = float(images.min(initial=0)), float(images.max(initial=0))
        if lo >= 0 and hi <= 1:
            return np.round(images * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.round(images).astype(np.uint8)
    elif np.issubdtype(images.dtype, np.integer):
        if images.min(initial=0) >= 0 and images.max(initial=0) <= 255:
            return images.astype(np.uint8)
    raise DataError(f"{path}: {split}_images has dtype {images.dtype} with values outside "
                    "[0, 255] (or [0, 1] for floats): convert it to uint8.")


def _npz_labels(labels: np.ndarray, path: str, split: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(f"{path}: {split}_labels has shape {labels.shape}: multi-label data "
                        "(e.g. ChestMNIST) is not supported; use a single-label subset.")
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{path}: {split}_labels has dtype {labels.dtype}; expected "
                            "integer class indices.")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {split}_labels has negative label {labels.min()}; expected "
                        "class indices 0..K-1.")
    return labels.astype(np.int32)


# --- image folders (directory or zip) ----------------------------------------

class _Files:
    """Uniform listing and reading for a directory or a zip archive."""

    def __init__(self, path: str):
        self.path = path
        self.zip = None
        if os.path.isdir(path):
            names = []
            for root, _, files in os.walk(path):
                for f in files:
                    names.append(os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/"))
            self.names = sorted(names)
        elif os.path.isfile(path) and zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            self.names = sorted(n for n in self.zip.namelist() if not n.endswith("/"))
        elif os.path.isfile(path):
            raise DataError(f"dataset.path={path!r} is neither a directory nor a zip archive.")
        else:
            raise DataError(f"dataset.path={path!r} does not exist.")

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()


def _is_image(name: str) -> bool:
    base = os.path.basename(name)
    return (name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")
            and "__MACOSX" not in name)


def _find_layout(names: Sequence[str]) -> tuple[str, dict[str, list[str]]]:
    """(prefix, {split: [image names]}) with split in train/test/val or '' for flat."""
    images = [n for n in names if _is_image(n)]
    if not images:
        raise DataError("no image files found")
    # Strip common leading folders that hold everything (e.g. `chest_xray/`).
    prefix = ""
    while True:
        parts = {n[len(prefix):].split("/", 1)[0] for n in images}
        if len(parts) == 1 and all("/" in n[len(prefix):] for n in images):
            candidate = prefix + parts.pop() + "/"
            if candidate.rstrip("/").rsplit("/", 1)[-1].lower() in ("train", "test", "val"):
                break
            prefix = candidate
        else:
            break
    tops = {n[len(prefix):].split("/", 1)[0] for n in images}
    if tops & {"train", "test"} and "train" in tops:
        split_names = {}
        for n in images:
            top = n[len(prefix):].split("/", 1)[0]
            if top in ("train", "test", "val"):
                split_names.setdefault(top, []).append(n)
        return prefix, split_names
    return prefix, {"": images}


def _class_of(name: str, root: str) -> str | None:
    rel = name[len(root):].split("/")
    return rel[0] if len(rel) >= 2 else None


def load_image_folder(path: str, image_size: int = 0, test_fraction: float = 0.2,
                      split_seed: int = 0, on_bad_image: str = "error",
                      cache_dir: str = "") -> DataSplits:
    """Image folders `root/<class>/*` or `root/{train,test[,val]}/<class>/*`.

    Reads a directory or a `.zip` (without extracting). Class names are the
    sorted sub-folder names. Grey and colour images are unified (all RGB if
    any is RGB). Images of different sizes need `image_size` (shorter side
    resized, then centre-cropped). A flat layout gets a seeded stratified
    split; a `val` folder is ignored (it is not test data and not used to
    train unless you move it).
    """
    if on_bad_image not in ("error", "skip"):
        raise ConfigError(f"Expected dataset.on_bad_image in ('error', 'skip'), got "
                          f"{on_bad_image!r}.")
    cache_path = None
    if cache_dir:
        stat = os.stat(path)
        key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_mtime_ns}|{stat.st_size}|"
                             f"{image_size}|{test_fraction}|{split_seed}|{on_bad_image}"
                             .encode()).hexdigest()[:16]
        cache_path = os.path.join(cache_dir, f"folder-{key}.npz")
        if os.path.isfile(cache_path):
            return _load_cached(cache_path)
    files = _Files(path)
    try:
        prefix, splits = _find_layout(files.names)
    except DataError:
        raise DataError(f"dataset.path={path!r} holds no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}).") from None
    roots = {s: prefix + (s + "/" if s else "") for s in splits}
    classes = sorted({c for s, names in splits.items() for n in names
                      if (c := _class_of(n, roots[s])) is not None})
    if not classes:
        raise DataError(f"{path}: images must sit in one sub-folder per class "
                        "(root/<class>/image.png).")
    # Classes present as (empty) folders anywhere but with no image at all.
    folder_classes = set()
    for n in files.names:
        for s in splits:
            c = _class_of(n, roots[s])
            if c is not None and n.startswith(roots[s]):
                folder_classes.add(c)
    empty = sorted(folder_classes - set(classes))
    if empty:
        raise DataError(f"{path}: class folder {empty[0]!r} has no images: remove it or add "
                        "images.")
    index = {c: i for i, c in enumerate(classes)}
    skipped: list[str] = []

    def decode_all(names):
        kept, images = [], []
        for n in names:
            c = _class_of(n, roots[split])
            if c is None:
                continue
            try:
                images.append(_decode(files.read(n)))
                kept.append(index[c])
            except Exception as e:
                if on_bad_image == "error":
                    raise DataError(f"{path}: {n} is not a readable image ({type(e).__name__}: "
                                    f"{e}); fix or remove it, or set dataset.on_bad_image=skip."
                                    ) from None
                skipped.append(n)
        return images, kept

    decoded = {}
    for split in [s for s in ("train", "test", "") if s in splits]:
        decoded[split] = decode_all(splits[split])
    all_images = [im for ims, _ in decoded.values() for im in ims]
    if not all_images:
        raise DataError(f"{path}: no readable images.")
    mode = "RGB" if any(im.mode != "L" for im in all_images) else "L"
    sizes = Counter(im.size for im in all_images)
    if not image_size and len(sizes) > 1:
        (a, _), (b, _) = sizes.most_common(2)
        raise DataError(f"{path}: images have different sizes ({a[0]}x{a[1]} and {b[0]}x{b[1]}"
                        "): set dataset.image_size to resize them all.")

    def to_array(images, labels) -> ArrayDataset:
        arrays = [_to_array(im, mode, image_size) for im in images]
        channels = 3 if mode == "RGB" else 1
        shape = arrays[0].shape if arrays else (image_size, image_size, channels)
        stacked = np.stack(arrays) if arrays else np.zeros((0,) + shape, np.uint8)
        return ArrayDataset(stacked, np.asarray(labels, np.int32))

    if "" in decoded:
        full = to_array(*decoded[""])
        tr, te = stratified_split(full.labels, test_fraction, split_seed)
        train = ArrayDataset(full.images[tr], full.labels[tr])
        test = ArrayDataset(full.images[te], full.labels[te])
        split_method = f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%}, seed {split_seed}"
    else:
        if "test" not in decoded:
            raise DataError(f"{path}: has a train/ folder but no test/ folder.")
        train, test = to_array(*decoded["train"]), to_array(*decoded["test"])
        split_method = "train/ and test/ folders"
    info = {"source": path, "split": split_method, "skipped_images": len(skipped),
            "skipped_files": skipped[:20]}
    result = DataSplits(train, test, len(classes), tuple(classes),
                        os.path.splitext(os.path.basename(path.rstrip("/")))[0], info)
    if cache_path:
        _save_cached(cache_path, result)
    return result


def _decode(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB") if im.mode not in ("I", "I;16", "F", "1", "LA") else \
            im.convert("L")
    return im


def _to_array(im, mode: str, image_size: int) -> np.ndarray:
    from PIL import Image

    if im.mode != mode:
        im = im.convert(mode)
    if image_size and im.size != (image_size, image_size):
        w, h = im.size
        scale = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                       Image.BILINEAR)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _resize_all(images: np.ndarray, image_size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1:3] == (image_size, image_size):
        return images
    mode = "L" if images.shape[-1] == 1 else "RGB"
    out = [_to_array(Image.fromarray(im[..., 0] if mode == "L" else im), mode, image_size)
           for im in images]
    return np.stack(out)


def _save_cached(path: str, splits: DataSplits) -> None:
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, train_images=splits.train.images, train_labels=splits.train.labels,
             test_images=splits.test.images, test_labels=splits.test.labels,
             meta=json.dumps({"num_classes": splits.num_classes,
                              "class_names": splits.class_names, "name": splits.name,
                              "info": splits.info}))
    os.replace(tmp, path)


def _load_cached(path: str) -> DataSplits:
    import json

    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return DataSplits(ArrayDataset(z["train_images"], z["train_labels"]),
                      ArrayDataset(z["test_images"], z["test_labels"]), meta["num_classes"],
                      tuple(meta["class_names"]), meta["name"], dict(meta["info"], cached=path))


# --- dispatch ------------------------------------------------------------------

def load(cfg) -> DataSplits:
    """Loads the data set described by a config's `dataset` block."""
    name = cfg.get("name", "digits")
    if name == "digits":
        splits = load_digits(cfg.get("test_fraction", 0.2), cfg.get("split_seed", 0))
    elif name == "tfds":
        splits = load_tfds(cfg.get("tfds_name", ""), cfg.get("data_dir", ""))
    elif name in ("npz", "folder"):
        path = cfg.get("path", "")
        if not path:
            raise DataError(f"dataset.path is empty: set it to the {name} data.")
        if not os.path.exists(path):
            raise DataError(f"dataset.path={path!r} does not exist.")
        if name == "npz":
            splits = load_npz(path, cfg.get("image_size", 0))
        else:
            splits = load_image_folder(path, cfg.get("image_size", 0),
                                       cfg.get("test_fraction", 0.2), cfg.get("split_seed", 0),
                                       cfg.get("on_bad_image", "error"), cfg.get("cache_dir", ""))
    else:
        raise ConfigError(f"Unknown dataset.name={name!r}.")
    _check_labels(splits)
    return splits


def _check_labels(splits: DataSplits) -> None:
    for split in ("train", "test"):
        labels = getattr(splits, split).labels
        if labels.size and (labels.min() < 0 or labels.max() >= splits.num_classes):
            raise DataError(f"{splits.name}: {split} label {int(labels.max())} is outside the "
                            f"{splits.num_classes} classes.")
    if len(splits.train) == 0:
        raise DataError(f"{splits.name}: the training split is empty.")
