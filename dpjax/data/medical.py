"""Medical imaging data sets as Kaggle ships them: Kermany chest X-rays and APTOS 2019.

* `load_kermany` (`dataset.name=kermany`): the pediatric chest X-ray
  pneumonia set (Kermany et al. 2018), `chest_xray/{train,val,test}/
  {NORMAL,PNEUMONIA}/*.jpeg`, from a folder or the Kaggle zip. File names
  carry patient ids, so training can protect whole patients
  (`privacy.unit=patient`), not only single images.
* `load_aptos` (`dataset.name=csv`): APTOS 2019 blindness detection,
  `train.csv` (`id_code`, `diagnosis` 0..4) with `train_images/<id_code>.png`,
  from a folder or the Kaggle zip, split 80/20 stratified and seeded. It has
  no patient ids: ε protects single images only.

Both read the files in place (no extraction) with the image-folder machinery
of `dpjax.data._common` and need `dataset.image_size`, because the images
come in many sizes. `DataSplits.info` holds no per-class counts of the
training set; `class_counts` computes them for callers who report them,
labelled as not covered by ε.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpjax.data import _common, _imaging, registry
from dpjax.data.protocol import ArrayDataset, DataSplits, RandomAccessDataset
from dpjax.errors import ConfigError, DataError

KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
APTOS_CLASSES = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative")
_CACHE_VERSION = 2  # 2: APTOS info records train_grey_to_rgb
_MAX_LISTED = 20

# `person1_bacteria_1.jpeg`, `person1_virus_6.jpeg` -> "person1";
# `IM-0115-0001.jpeg` -> "IM-0115"; `NORMAL2-IM-0135-0001.jpeg` -> "NORMAL2-IM-0135"
# (the NORMAL2 series numbers its patients separately from the IM series).
_PERSON_RE = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM_RE = re.compile(r"^((?:normal2-)?im-\d+)-\d+", re.IGNORECASE)


def kermany_patient_id(file_name: str) -> str | None:
    """The patient id in a Kermany file name, or None if the name has none.

    `person1_bacteria_1.jpeg` and `person1_virus_6.jpeg` are patient
    "person1"; `IM-0115-0001.jpeg` is "IM-0115"; `NORMAL2-IM-0135-0001.jpeg`
    is "NORMAL2-IM-0135", a different patient from "IM-0135". Folders in
    `file_name` are ignored; ids are case-normalised.
    """
    base = file_name.rsplit("/", 1)[-1]
    m = _PERSON_RE.match(base)
    if m:
        return m.group(1).lower()
    m = _IM_RE.match(base)
    return m.group(1).upper() if m else None


def class_counts(dataset: RandomAccessDataset | np.ndarray,
                 class_names: Sequence[str] | None = None) -> dict[Any, int]:
    """Images per class of a split: {class name (or index): count}, every class listed.

    These counts are statistics of the (private) data and are NOT covered by
    the ε of training: report them only when that is acceptable, labelled as
    such. This is why the loaders never put them in `DataSplits.info`.

    Args:
      dataset: a split (its `labels`) or an int label array (N,).
      class_names: names in class-index order; without them the keys are
        the class indices 0..max label.
    """
    labels = np.asarray(dataset if isinstance(dataset, np.ndarray) else dataset.labels).reshape(-1)
    n = len(class_names) if class_names is not None else (int(labels.max()) + 1
                                                          if labels.size else 0)
    counts = np.bincount(labels.astype(np.int64), minlength=n) if labels.size else np.zeros(n)
    if class_names is not None:
        if len(counts) > n:
            raise DataError(f"labels go up to {len(counts) - 1} but only {n} class names were "
                            "given: pass the data set's class_names.")
        return {str(c): int(k) for c, k in zip(class_names, counts)}
    return {i: int(k) for i, k in enumerate(counts)}


def _require_image_size(image_size: Any, what: str) -> int:
    size = _common.check_image_size(image_size)
    if size is None:
        raise ConfigError(f"dataset.image_size is {image_size!r}, but {what} images come in "
                          "many sizes: set dataset.image_size (e.g. 224) to resize them all.")
    return size


# --- decoding ----------------------------------------------------------------

def _decode_all(tree: _imaging.FileTree, names: Sequence[str], image_size: int,
                on_bad_image: str, grey: bool, workers: int
                ) -> tuple[list[np.ndarray | None], list[str], int]:
    """Decodes and resizes `names` in a thread pool.

    Returns the arrays (None for a skipped file), the skipped names and how
    many colour images were converted to grey (when `grey`).
    """
    path = tree.path

    def decode_chunk(chunk: Sequence[str]) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for name in chunk:
            try:
                out.append(_imaging.decode(tree.read(name), image_size))
            except Exception as e:  # Pillow raises many types for bad files
                out.append(e)
        return out

    arrays: list[np.ndarray | None] = []
    bad: list[str] = []
    converted = 0
    with contextlib.closing(_imaging.map_chunks(decode_chunk, list(names), workers)) as results:
        for chunk_out in results:
            for result in chunk_out:
                name = names[len(arrays)]
                if isinstance(result, Exception):
                    if on_bad_image == "error":
                        raise DataError(f"{path}: {name} is not a readable image "
                                        f"({_common.describe_error(result)}); fix or remove it, or "
                                        "set dataset.on_bad_image=skip.")
                    bad.append(name)
                    arrays.append(None)
                    continue
                if grey and result.shape[-1] == 3:
                    converted += 1
                    result = _to_grey(result)
                arrays.append(result)
    if all(a is None for a in arrays):
        raise DataError(f"{path}: none of its {len(arrays)} images could be read: check the "
                        "files.")
    return arrays, bad, converted


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (H, W, 1) with ITU-R 601 luma (Pillow's "L" conversion)."""
    luma = rgb.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def _stack(arrays: Sequence[np.ndarray], image_size: int, channels: int) -> np.ndarray:
    out = np.empty((len(arrays), image_size, image_size, channels), np.uint8)
    for k, a in enumerate(arrays):
        out[k] = a  # broadcasts grey (H, W, 1) into RGB
    return out


# --- cache ---------------------------------------------------------------------

def _cache_path(tree: _imaging.FileTree, cache_dir: str | None, tag: str,
                args: Sequence[Any]) -> str | None:
    if not cache_dir:
        return None
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, tag, tree.fingerprint(), *args]).encode()
                         ).hexdigest()[:20]
    base = os.path.splitext(os.path.basename(os.path.normpath(tree.path)))[0]
    return os.path.join(os.path.expanduser(cache_dir), f"{tag}-{base}-{key}.npz")


def _save_cached(path: str, splits: DataSplits) -> None:
    """Writes the arrays, patient ids and metadata atomically (write then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    info = dict(splits.info)
    extra = {}
    if "train_patient_ids" in info:
        extra["train_patient_ids"] = np.asarray(info.pop("train_patient_ids"), np.int32)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, train_images=splits.train.images, train_labels=splits.train.labels,
             test_images=splits.test.images, test_labels=splits.test.labels, **extra,
             meta=np.asarray(json.dumps({"num_classes": splits.num_classes,
                                         "class_names": list(splits.class_names),
                                         "name": splits.name, "info": info})))
    os.replace(tmp, path)


def _load_cached(path: str) -> DataSplits | None:
    """The cached splits, or None if the file cannot be read (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            info = dict(meta["info"], cache=path)
            if "train_patient_ids" in z.files:
                info["train_patient_ids"] = z["train_patient_ids"]
            return DataSplits(ArrayDataset(z["train_images"], z["train_labels"]),
                              ArrayDataset(z["test_images"], z["test_labels"]),
                              meta["num_classes"], tuple(meta["class_names"]), meta["name"],
                              info)
    except Exception:
        return None


def _cached(path: str, cache_dir: str | None, tag: str, args: Sequence[Any], read) -> DataSplits:
    """`read(tree)`, or its cached result when `cache_dir` holds one for these files and args."""
    tree = _imaging.FileTree(path)
    try:
        cache_path = _cache_path(tree, cache_dir, tag, args)
        if cache_path and os.path.isfile(cache_path):
            cached = _load_cached(cache_path)
            if cached is not None:
                return cached
        result = read(tree)
    finally:
        tree.close()
    if cache_path:
        _save_cached(cache_path, result)
    return result


# --- Kermany chest X-ray -------------------------------------------------------

def load_kermany(path: str, image_size: int, on_bad_image: str = "error",
                 use_val: str = "ignore", cache_dir: str | None = None,
                 num_workers: int | None = None) -> DataSplits:
    """The Kermany pediatric chest X-ray pneumonia set, with patient ids.

    Layout `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg` in a
    directory or the Kaggle zip (read in place; a top-level `chest_xray/`
    and the archive's nested duplicate `chest_xray/chest_xray/` and
    `__MACOSX/` are looked through or ignored). Classes are NORMAL (0) and
    PNEUMONIA (1). X-rays are grey: the few files stored as RGB are converted
    to grey (ITU-R 601 luma), so images are (N, S, S, 1) with S=`image_size`
    (shorter side resized, then centre crop).

    Patient ids come from the file names (`kermany_patient_id`): `info`
    holds `train_patient_ids`, int32 (N_train,) group indices 0..P-1 in the
    order of the sorted ids, `num_patients` (P), and
    `privacy_unit_available="patient"`. A training file whose name carries
    no id is its own patient; `unparsed_patient_ids` counts them. Ids are
    matched across train/ and val/ (val/ was carved out of the training
    patients), which can only merge patients, never split one.

    Args:
      path: directory (holding `chest_xray/` or its splits) or `.zip`.
      image_size: required (> 0): the side of the square images.
      on_bad_image: "error" stops at an unreadable file; "skip" leaves it
        out and counts it in `info` (`skipped_images`, `skipped_files`).
      use_val: "ignore" leaves `val/` out; "train" adds it to training.
      cache_dir: if set, the decoded arrays and patient ids are cached there
        (they are private data: keep the cache where the data may be kept).
      num_workers: decoding threads (default: the CPU count, at most 8).

    Raises:
      ConfigError: `image_size` 0 or an option out of range.
      DataError: not the Kermany layout, or an unreadable image with
        on_bad_image="error".
    """
    _common.check_choice("dataset.on_bad_image", on_bad_image, _common.ON_BAD_IMAGE)
    _common.check_choice("dataset.use_val", use_val, _common.USE_VAL)
    size = _require_image_size(image_size, "Kermany chest X-ray")
    workers = num_workers or _imaging.default_workers()
    return _cached(os.path.expanduser(path), cache_dir, "kermany",
                   [size, on_bad_image, use_val],
                   lambda tree: _read_kermany(tree, size, on_bad_image, use_val, workers))


def _read_kermany(tree: _imaging.FileTree, image_size: int, on_bad_image: str, use_val: str,
                  workers: int) -> DataSplits:
    path = tree.path
    layout = _common.find_layout(tree, use_val)
    expected = ("expected the Kermany layout chest_xray/{train,test}/{NORMAL,PNEUMONIA}/"
                "*.jpeg (use dataset.name=folder for other image folders)")
    if layout.kind != "split":
        raise DataError(f"{path}: has no train/ and test/ folders: {expected}.")
    by_upper = {c.upper(): c for c in layout.class_dirs}
    if set(by_upper) != set(KERMANY_CLASSES):
        raise DataError(f"{path}: class folders {sorted(layout.class_dirs)} under "
                        f"{layout.root or './'}: {expected}.")
    index = {by_upper[c]: i for i, c in enumerate(KERMANY_CLASSES)}
    order = [s for s in ("train", "val", "test") if s in layout.files]
    entries = [(n, index[c], s) for s in order for n, c in layout.files[s]]
    arrays, bad, converted = _decode_all(tree, [e[0] for e in entries], image_size,
                                         on_bad_image, True, workers)
    kept = {s: [i for i, e in enumerate(entries) if e[2] == s and arrays[i] is not None]
            for s in order}
    train_idx = kept["train"] + kept.get("val", [])
    if not train_idx:
        raise DataError(f"{path}: no readable images in {layout.root}train/.")

    def split(idx: list[int]) -> ArrayDataset:
        return ArrayDataset(_stack([arrays[i] for i in idx], image_size, 1),
                            np.asarray([entries[i][1] for i in idx], np.int32))

    keys, unparsed = [], 0
    for i in train_idx:
        pid = kermany_patient_id(entries[i][0])
        if pid is None:
            unparsed += 1
            pid = "file:" + entries[i][0]  # cannot collide with a parsed id
        keys.append(pid)
    group = {k: g for g, k in enumerate(sorted(set(keys)))}
    patient_ids = np.asarray([group[k] for k in keys], np.int32)
    num_patients = len(group)

    info: dict[str, Any] = {
        "source": os.path.abspath(path), "format": "zip" if tree.is_zip else "directory",
        "root": layout.root or "./", "channels": 1, "resized_to": image_size,
        "converted_to_grey": converted,
        "split": "train/ and test/ folders" + (" (+ val/ in train)" if use_val == "train"
                                               else ""),
        "skipped_images": len(bad), "skipped_files": bad[:_MAX_LISTED],
        "ignored": layout.ignored,
        "privacy_unit_available": "patient",
        "train_patient_ids": patient_ids, "num_patients": num_patients,
        "unparsed_patient_ids": unparsed,
        "patient_id_note": ("patient ids from file names (personN_*, IM-XXXX-*, "
                            "NORMAL2-IM-XXXX-*); files without one count as their own patient"),
    }
    return DataSplits(split(train_idx), split(kept["test"]), len(KERMANY_CLASSES),
                      KERMANY_CLASSES, "kermany", info)


# --- APTOS 2019 ------------------------------------------------------------------

_APTOS_COLUMNS = ("id_code", "diagnosis")


def load_aptos(path: str, image_size: int, test_fraction: float = 0.2, split_seed: int = 0,
               on_bad_image: str = "error", cache_dir: str | None = None,
               num_workers: int | None = None) -> DataSplits:
    """APTOS 2019 blindness detection: `train.csv` and `train_images/<id_code>.png`.

    `train.csv` has columns `id_code` and `diagnosis` (grade 0..4); the csv
    and `train_images/` may sit under one top-level folder of a directory or
    of the Kaggle zip (read in place), and `path` may also be the csv itself.
    Images (colour fundus photographs of many sizes) are resized so their
    shorter side is `image_size`, then centre cropped; all become RGB if any
    is colour (`info["train_grey_to_rgb"]` says whether training images were
    grey files repeated into RGB: local DP refuses a mix). A seeded
    stratified split makes the test set. The data have no patient ids (one
    patient's two eyes may both be in it), so `info["privacy_unit_available"]`
    is "image": ε protects single images.

    Args:
      path: directory, `.zip` or the `train.csv` file.
      image_size: required (> 0): the side of the square images.
      test_fraction, split_seed: the stratified train/test split.
      on_bad_image: "error" stops at a row without an image file or an
        unreadable image; "skip" leaves such rows out and counts them in
        `info` (`skipped_images`, `missing_images`, `skipped_files`).
      cache_dir: if set, the decoded arrays are cached there (private data).
      num_workers: decoding threads (default: the CPU count, at most 8).

    Raises:
      ConfigError: `image_size` 0 or an option out of range.
      DataError: no train.csv, missing columns, a bad diagnosis or id_code,
        a missing or unreadable image with on_bad_image="error".
    """
    _common.check_choice("dataset.on_bad_image", on_bad_image, _common.ON_BAD_IMAGE)
    size = _require_image_size(image_size, "APTOS 2019")
    test_fraction = _common.check_test_fraction(test_fraction)
    workers = num_workers or _imaging.default_workers()
    path = os.path.expanduser(path)
    csv_name = None
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        path, csv_name = os.path.dirname(path) or ".", os.path.basename(path)
    return _cached(path, cache_dir, "aptos", [size, test_fraction, split_seed, on_bad_image,
                                              csv_name],
                   lambda tree: _read_aptos(tree, csv_name, size, test_fraction, split_seed,
                                            on_bad_image, workers))


def _find_csv(tree: _imaging.FileTree) -> str:
    """The shallowest `train.csv` (case-insensitive), skipping hidden and macOS files."""
    found = [n for n in tree.files if n.rsplit("/", 1)[-1].lower() == "train.csv"
             and "__MACOSX" not in n.split("/")
             and not any(p.startswith(".") for p in n.split("/"))]
    if not found:
        raise DataError(f"{tree.path}: holds no train.csv: expected the APTOS 2019 layout "
                        "train.csv (id_code, diagnosis) with train_images/<id_code>.png, "
                        "optionally under one top-level folder.")
    return min(found, key=lambda n: (n.count("/"), n))


def _read_csv(tree: _imaging.FileTree, csv_name: str) -> list[tuple[int, str, int]]:
    """(line number, id_code, diagnosis) for every non-empty row, checked."""
    where = f"{tree.path}: {csv_name}" if tree.is_zip else os.path.join(tree.path, csv_name)
    try:
        text = tree.read(csv_name).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text: save it as a UTF-8 csv.") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    columns = [h.strip() for h in header] if header else []
    missing = [c for c in _APTOS_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{where} lacks column(s) {missing} (it has {columns}): expected "
                        "columns id_code, diagnosis (the APTOS 2019 train.csv).")
    col_id, col_dx = columns.index("id_code"), columns.index("diagnosis")
    rows: list[tuple[int, str, int]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        id_code = row[col_id].strip() if col_id < len(row) else ""
        value = row[col_dx].strip() if col_dx < len(row) else ""
        if not id_code:
            raise DataError(f"{where}: row at line {line} has an empty id_code: fill it in or "
                            "remove the row.")
        if id_code in seen:
            raise DataError(f"{where}: row at line {line} repeats id_code {id_code!r} of line "
                            f"{seen[id_code]}: remove the duplicate.")
        seen[id_code] = line
        grade = _parse_grade(value)
        if grade is None:
            raise DataError(f"{where}: row at line {line} (id_code={id_code!r}) has diagnosis "
                            f"{value!r}; expected an integer grade 0..4 "
                            f"({', '.join(APTOS_CLASSES)}): fix the row.")
        rows.append((line, id_code, grade))
    if not rows:
        raise DataError(f"{where} has no rows: expected one row per image (id_code, diagnosis).")
    return rows


def _parse_grade(value: str) -> int | None:
    """An integer 0..4 from "2" or "2.0"; None for anything else."""
    try:
        grade = int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        grade = int(f)
    return grade if 0 <= grade < len(APTOS_CLASSES) else None


def _read_aptos(tree: _imaging.FileTree, csv_name: str | None, image_size: int,
                test_fraction: float, split_seed: int, on_bad_image: str,
                workers: int) -> DataSplits:
    path = tree.path
    csv_name = csv_name or _find_csv(tree)
    rows = _read_csv(tree, csv_name)
    base = csv_name.rsplit("/", 1)[0] + "/" if "/" in csv_name else ""
    image_dir = base + "train_images/"
    by_stem: dict[str, str] = {}
    for n in tree.files:
        if n.startswith(image_dir) and _imaging.is_image_name(n):
            rel = n[len(image_dir):]
            if "/" not in rel:
                stem, ext = os.path.splitext(rel)
                if stem not in by_stem or ext.lower() == ".png":
                    by_stem[stem] = n
    if not by_stem:
        raise DataError(f"{path}: no images in {image_dir} next to {csv_name}: expected "
                        f"{image_dir}<id_code>.png for each csv row.")
    names, labels, missing = [], [], []
    for line, id_code, grade in rows:
        name = by_stem.get(id_code)
        if name is None:
            expected_file = f"{image_dir}{id_code}.png"
            if on_bad_image == "error":
                raise DataError(f"{path}: {csv_name} row at line {line} has id_code "
                                f"{id_code!r} but there is no image {expected_file}: add it, "
                                "remove the row, or set dataset.on_bad_image=skip.")
            missing.append(expected_file)
            continue
        names.append(name)
        labels.append(grade)
    if not names:
        raise DataError(f"{path}: none of the {len(rows)} rows of {csv_name} has an image in "
                        f"{image_dir}.")
    arrays, bad, _ = _decode_all(tree, names, image_size, on_bad_image, False, workers)
    idx = [i for i, a in enumerate(arrays) if a is not None]
    channels = 3 if any(arrays[i].shape[-1] == 3 for i in idx) else 1
    was_grey = np.asarray([arrays[i].shape[-1] == 1 for i in idx], bool)
    images = _stack([arrays[i] for i in idx], image_size, channels)
    labels_arr = np.asarray([labels[i] for i in idx], np.int32)
    del arrays
    tr, te, stratified = _common.stratified_split(labels_arr, test_fraction, split_seed)
    how = "stratified" if stratified else "random (too few images per class to stratify)"
    skipped = missing + bad
    info: dict[str, Any] = {
        "source": os.path.abspath(path), "format": "zip" if tree.is_zip else "directory",
        "csv": csv_name, "images": image_dir, "channels": channels, "resized_to": image_size,
        _common.GREY_TO_RGB_KEY: _common.grey_to_rgb_mode(was_grey[tr], channels),
        "split": f"{how}, test_fraction={test_fraction}, seed={split_seed}",
        "skipped_images": len(skipped), "missing_images": len(missing),
        "skipped_files": skipped[:_MAX_LISTED],
        "privacy_unit_available": "image",
        "privacy_note": ("APTOS 2019 has no patient ids (a patient's two eyes may both be "
                         "in it): epsilon protects single images only, not patients"),
    }
    return DataSplits(ArrayDataset(images[tr], labels_arr[tr]),
                      ArrayDataset(images[te], labels_arr[te]), len(APTOS_CLASSES),
                      APTOS_CLASSES, "aptos2019", info)


# --- sources by name (see dpjax.data.registry) -------------------------------------

@registry.register("kermany")
def _kermany_from_config(c) -> DataSplits:
    """Reads path, image_size, on_bad_image, use_val, cache_dir, num_workers."""
    path = _common.require_path(c.path, "the Kermany chest_xray folder or Kaggle .zip")
    return load_kermany(path, c.image_size, c.on_bad_image, c.use_val, c.cache_dir or None,
                        c.num_workers or None)


@registry.register("csv")
def _aptos_from_config(c) -> DataSplits:
    """Reads path, image_size, test_fraction, split_seed, on_bad_image, cache_dir,
    num_workers."""
    path = _common.require_path(c.path, "the APTOS 2019 folder or .zip (train.csv, "
                                        "train_images/)")
    return load_aptos(path, c.image_size, c.test_fraction, c.split_seed, c.on_bad_image,
                      c.cache_dir or None, c.num_workers or None)
