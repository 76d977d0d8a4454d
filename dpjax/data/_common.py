"""Helpers shared by the loaders of `dpjax.data` (sources, medical, tfds_records).

Argument checks that raise one-line `ConfigError`s, the seeded stratified
split, the `root/{train,test}/<class>/*` layout of image folders and zips,
and the channel bookkeeping that local DP needs (`GREY_TO_RGB_KEY`). Nothing
here imports a loader module, so every loader can import it.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpjax.data import _imaging
from dpjax.errors import ConfigError, DataError

_EXTENSIONS = ", ".join(_imaging.IMAGE_EXTENSIONS)

USE_VAL = ("ignore", "train")
ON_BAD_IMAGE = ("error", "skip")
_SPLIT_DIRS = {"train": "train", "test": "test", "val": "val", "valid": "val",
               "validation": "val"}


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


def check_choice(field: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"Expected {field} in {tuple(options)}, got {value!r}.")


def check_image_size(image_size: Any) -> int | None:
    """None or 0 keep the stored size; otherwise a positive int."""
    if image_size is None or image_size == 0:
        return None
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) \
            or image_size < 1:
        raise ConfigError(f"Expected dataset.image_size={image_size!r} to be a positive integer "
                          "(or 0 to keep the stored size).")
    return int(image_size)


def check_test_fraction(test_fraction: Any) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ConfigError(f"Expected dataset.test_fraction={test_fraction!r} in (0, 1).")
    return float(test_fraction)


def unify_channels(*stacks: np.ndarray) -> tuple[np.ndarray, ...]:
    """All grey (C=1) unless any stack is RGB, then all RGB (grey repeated)."""
    if any(s.shape[-1] == 3 for s in stacks):
        return tuple(np.repeat(s, 3, axis=-1) if s.shape[-1] == 1 else s for s in stacks)
    return stacks


# `DataSplits.info` key (dpjax.privacy.ldp.GREY_TO_RGB_KEY): whether the training
# images are grey images repeated into three identical RGB channels. Local DP
# must perturb such an image once, before the repetition (see ldp.apply_local_dp).
GREY_TO_RGB_KEY = "train_grey_to_rgb"


def grey_to_rgb_mode(was_grey: np.ndarray, channels: int) -> str:
    """`info[GREY_TO_RGB_KEY]` from a per-training-image "decoded as grey" mask.

    "none" if the images keep their stored channels (all grey with C = 1, or
    all colour), "all" if every training image is a grey file repeated into
    RGB, "some" if grey and colour files are mixed (local DP refuses those).
    """
    was_grey = np.asarray(was_grey, bool)
    if channels == 1 or not was_grey.any():
        return "none"
    return "all" if was_grey.all() else "some"


def train_grey_to_rgb(train: np.ndarray, *others: np.ndarray) -> str:
    """`info[GREY_TO_RGB_KEY]` for `unify_channels(train, *others)`."""
    expands = train.shape[-1] == 1 and any(o.shape[-1] == 3 for o in others)
    return "all" if expands else "none"


@dataclasses.dataclass
class Layout:
    """Where the images of each split are, and their classes."""

    root: str                              # common leading folder, '' or 'chest_xray/'
    kind: str                              # "split" (train/ test/) or "flat" (<class>/)
    files: dict[str, list[tuple[str, str]]]  # split -> [(file name, class)]
    class_dirs: dict[str, str]            # class -> one folder naming it
    ignored: dict[str, int]                # what was left out, and how many files


def find_layout(tree: _imaging.FileTree, use_val: str) -> Layout:
    """Works out `root/<class>/*` or `root/{train,test[,val]}/<class>/*` from the names."""
    path = tree.path
    images = [n for n in tree.files if _imaging.is_image_name(n)]
    ignored: Counter = Counter()
    ignored["non-image files"] = len(tree.files) - len(images)
    if not images:
        raise DataError(f"dataset.path={path!r} holds no image files "
                        f"({_EXTENSIONS}): point it at a folder of class folders.")
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
                        f"({_EXTENSIONS}): add images or remove the folder.")
    if len(with_images) < 2:
        raise DataError(f"{path}: found {len(with_images)} class folder(s) {sorted(with_images)} "
                        f"under {root or './'}; put one sub-folder per class "
                        "(root/<class>/image.png or root/train/<class>/image.png).")
    return Layout(root, kind, files, class_dirs, {k: v for k, v in ignored.items() if v})


def describe_error(error: Exception) -> str:
    """A short, one-line reason for an unreadable image."""
    if type(error).__name__ == "UnidentifiedImageError":
        return "not a recognised image format"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def require_path(path: str, what: str) -> str:
    """`dataset.path`, user-expanded, after checking it is set and exists.

    Raises:
      DataError: the path is empty (naming `what` it should point at) or
        does not exist.
    """
    if not path:
        raise DataError(f"dataset.path is empty: set it to {what} (--config.dataset.path=...).")
    expanded = os.path.expanduser(path)
    if not os.path.exists(expanded):
        raise DataError(f"dataset.path={path!r} does not exist: check the path (relative paths "
                        f"start from {os.getcwd()}).")
    return expanded
