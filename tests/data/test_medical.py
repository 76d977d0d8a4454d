"""Kermany chest X-ray and APTOS 2019 loaders on tiny fake data sets (folders and zips)."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from dpjax.config import base_config
from dpjax.data import medical, sources
from dpjax.errors import ConfigError, DataError


def _image(value: int, size: tuple[int, int], mode: str = "L", fmt: str = "PNG") -> bytes:
    """A uniform image of grey level `value` (RGB: (v, v, v)), as file bytes.

    Uniform images survive JPEG and resizing unchanged (to within 1), so the
    value identifies the file after loading.
    """
    fill = value if mode == "L" else (value, value, value)
    buf = io.BytesIO()
    Image.new(mode, size, fill).save(buf, format=fmt)
    return buf.getvalue()


def _write(root, files: dict[str, bytes], as_zip: bool) -> str:
    """Writes {relative name: bytes} to a directory or a zip; returns the path."""
    if as_zip:
        path = str(root) + ".zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return path
    for name, data in files.items():
        full = os.path.join(root, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return str(root)


def _values(ds) -> list[int]:
    """The grey level of each image (they are uniform), rounded to the file's code."""
    return [int(round(v / 10.0)) * 10 for v in ds.images.reshape(len(ds), -1).mean(axis=1)]


# --- Kermany ---------------------------------------------------------------------

# (split, class, file name, grey level, size, mode). Levels are unique multiples of 10.
_KERMANY = [
    ("train", "NORMAL", "IM-0115-0001.jpeg", 10, (40, 30), "L"),
    ("train", "NORMAL", "IM-0115-0002.jpeg", 20, (36, 48), "L"),    # same patient as above
    ("train", "NORMAL", "IM-0135-0001.jpeg", 30, (30, 30), "L"),
    ("train", "NORMAL", "NORMAL2-IM-0135-0001.jpeg", 40, (50, 40), "L"),  # other series
    ("train", "PNEUMONIA", "person1_bacteria_1.jpeg", 50, (44, 32), "L"),
    ("train", "PNEUMONIA", "person1_virus_6.jpeg", 60, (32, 44), "RGB"),  # same person
    ("train", "PNEUMONIA", "person2_bacteria_3.jpeg", 70, (40, 40), "L"),
    ("train", "PNEUMONIA", "scan.jpeg", 80, (40, 40), "L"),               # no id
    ("val", "NORMAL", "IM-0115-0009.jpeg", 90, (40, 40), "L"),            # a train patient
    ("val", "PNEUMONIA", "person9_virus_1.jpeg", 100, (40, 40), "L"),
    ("test", "NORMAL", "IM-0001-0001.jpeg", 110, (48, 40), "L"),
    ("test", "PNEUMONIA", "person100_virus_5.jpeg", 120, (40, 48), "RGB"),
]


def _kermany_files(prefix: str = "chest_xray/") -> dict[str, bytes]:
    files = {f"{prefix}{s}/{c}/{n}": _image(v, size, mode, "JPEG")
             for s, c, n, v, size, mode in _KERMANY}
    files["__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg"] = b"junk"
    files[f"{prefix}train/NORMAL/.DS_Store"] = b"junk"
    return files


def test_kermany_patient_id_parsing():
    pid = medical.kermany_patient_id
    assert pid("person1_bacteria_1.jpeg") == pid("chest_xray/train/PNEUMONIA/person1_virus_6.jpeg")
    assert pid("person1_bacteria_1.jpeg") != pid("person10_bacteria_1.jpeg")
    assert pid("IM-0115-0001.jpeg") == pid("IM-0115-0002.jpeg") == "IM-0115"
    assert pid("NORMAL2-IM-0135-0001.jpeg") == "NORMAL2-IM-0135"
    assert pid("NORMAL2-IM-0135-0001.jpeg") != pid("IM-0135-0001.jpeg")
    assert pid("scan.jpeg") is None and pid("IM-0115.jpeg") is None


@pytest.mark.parametrize("as_zip", [False, True])
def test_kermany_shapes_labels_and_patients(tmp_path, as_zip):
    path = _write(tmp_path / "kermany", _kermany_files(), as_zip)
    d = medical.load_kermany(path, 16)
    assert d.class_names == ("NORMAL", "PNEUMONIA") and d.num_classes == 2
    assert d.train.images.shape == (8, 16, 16, 1) and d.test.images.shape == (2, 16, 16, 1)
    assert d.train.images.dtype == np.uint8 and d.train.labels.dtype == np.int32
    level = {v: (s, c, n) for s, c, n, v, _, _ in _KERMANY}
    train_values = _values(d.train)
    assert sorted(train_values) == [10, 20, 30, 40, 50, 60, 70, 80]
    assert d.train.labels.tolist() == [
        ("NORMAL", "PNEUMONIA").index(level[v][1]) for v in train_values]
    assert sorted(_values(d.test)) == [110, 120]
    # Patient grouping: two files of one person share an id; NORMAL2-IM-0135 != IM-0135.
    ids = d.info["train_patient_ids"]
    assert ids.dtype == np.int32 and ids.shape == (8,)
    by_value = dict(zip(train_values, ids.tolist()))
    assert by_value[10] == by_value[20]            # IM-0115
    assert by_value[50] == by_value[60]            # person1
    assert by_value[30] != by_value[40]            # IM-0135 vs NORMAL2-IM-0135
    assert len({by_value[v] for v in (10, 30, 40, 50, 70, 80)}) == 6
    assert sorted(set(ids.tolist())) == list(range(6)) and d.info["num_patients"] == 6
    assert d.info["unparsed_patient_ids"] == 1
    assert d.info["privacy_unit_available"] == "patient"
    assert d.info["converted_to_grey"] == 2 and d.info["channels"] == 1
    assert d.info["root"] == "chest_xray/"
    assert not any("count" in k for k in d.info)  # no class statistics in info


def test_kermany_use_val_merges_patients_across_train_and_val(tmp_path):
    path = _write(tmp_path / "kermany", _kermany_files(), True)
    d = medical.load_kermany(path, 8, use_val="train")
    assert len(d.train) == 10 and d.info["num_patients"] == 7
    by_value = dict(zip(_values(d.train), d.info["train_patient_ids"].tolist()))
    assert by_value[90] == by_value[10]  # val/IM-0115-0009 is patient IM-0115 of train/


def test_kermany_nested_duplicate_folder_and_path_inside(tmp_path):
    files = _kermany_files()
    # The Kaggle archive also holds a nested copy chest_xray/chest_xray/...: ignored.
    files.update({f"chest_xray/chest_xray/{k[len('chest_xray/'):]}": v
                  for k, v in _kermany_files().items() if k.startswith("chest_xray/")})
    d = medical.load_kermany(_write(tmp_path / "k", files, True), 8)
    assert len(d.train) == 8 and len(d.test) == 2
    folder = _write(tmp_path / "dir", _kermany_files(), False)
    d2 = medical.load_kermany(os.path.join(folder, "chest_xray"), 8)
    np.testing.assert_array_equal(d2.info["train_patient_ids"],
                                  medical.load_kermany(folder, 8).info["train_patient_ids"])


def test_kermany_errors(tmp_path):
    path = _write(tmp_path / "k", _kermany_files(), True)
    with pytest.raises(ConfigError, match="dataset.image_size"):
        medical.load_kermany(path, 0)
    wrong = {f"train/{c}/{i}.png": _image(9, (8, 8)) for c in ("cat", "dog") for i in range(2)}
    wrong.update({f"test/{c}/0.png": _image(9, (8, 8)) for c in ("cat", "dog")})
    with pytest.raises(DataError, match="NORMAL,PNEUMONIA"):
        medical.load_kermany(_write(tmp_path / "w", wrong, True), 8)
    bad = _kermany_files()
    bad["chest_xray/train/NORMAL/IM-0200-0001.jpeg"] = b"not an image"
    bad_path = _write(tmp_path / "bad", bad, False)
    with pytest.raises(DataError, match="IM-0200-0001.jpeg is not a readable image"):
        medical.load_kermany(bad_path, 8)
    d = medical.load_kermany(bad_path, 8, on_bad_image="skip")
    assert d.info["skipped_images"] == 1 and len(d.train) == 8
    assert d.info["train_patient_ids"].shape == (8,)


def test_kermany_cache_keeps_patient_ids(tmp_path):
    path = _write(tmp_path / "k", _kermany_files(), True)
    first = medical.load_kermany(path, 8, cache_dir=str(tmp_path / "cache"))
    again = medical.load_kermany(path, 8, cache_dir=str(tmp_path / "cache"))
    assert "cache" in again.info and "cache" not in first.info
    np.testing.assert_array_equal(first.info["train_patient_ids"],
                                  again.info["train_patient_ids"])
    np.testing.assert_array_equal(first.train.images, again.train.images)
    assert again.info["num_patients"] == first.info["num_patients"]


# --- APTOS 2019 --------------------------------------------------------------------

def _aptos_files(prefix: str = "", n_per_grade: int = 4, rows: list[str] | None = None,
                 header: str = "id_code,diagnosis") -> dict[str, bytes]:
    """Row k has grade k % 5 and grey level 10 * k + 5; sizes vary, every 3rd image is grey."""
    files, lines = {}, [header]
    for k in range(5 * n_per_grade):
        id_code = f"{k:04x}abcd{k}"
        lines.append(f"{id_code},{k % 5}")
        size = (20 + k, 16 + (k % 4) * 3)
        files[f"{prefix}train_images/{id_code}.png"] = _image(10 * k + 5, size,
                                                              "L" if k % 3 == 0 else "RGB")
    lines += rows or []
    files[f"{prefix}train.csv"] = ("\n".join(lines) + "\n").encode()
    files[f"{prefix}test.csv"] = b"id_code\nzzz\n"
    return files


def _aptos_values(ds) -> np.ndarray:
    return np.asarray([(int(round(v)) - 5) // 10 for v in ds.images[:, :, :, 0].mean(axis=(1, 2))])


@pytest.mark.parametrize("as_zip,prefix", [(False, ""), (True, "aptos2019-blindness-detection/")])
def test_aptos_shapes_labels_and_split(tmp_path, as_zip, prefix):
    path = _write(tmp_path / "aptos", _aptos_files(prefix), as_zip)
    d = medical.load_aptos(path, 12, test_fraction=0.25, split_seed=3)
    assert d.class_names == medical.APTOS_CLASSES and d.num_classes == 5
    assert d.train.images.shape == (15, 12, 12, 3) and d.test.images.shape == (5, 12, 12, 3)
    for ds in (d.train, d.test):
        np.testing.assert_array_equal(_aptos_values(ds) % 5, ds.labels)
    assert sorted(d.test.labels.tolist()) == [0, 1, 2, 3, 4]  # stratified
    assert d.info["split"].startswith("stratified")
    assert d.info["privacy_unit_available"] == "image" and "train_patient_ids" not in d.info
    assert d.info["csv"] == f"{prefix}train.csv" and d.info["skipped_images"] == 0
    again = medical.load_aptos(path, 12, test_fraction=0.25, split_seed=3)
    np.testing.assert_array_equal(d.test.images, again.test.images)
    np.testing.assert_array_equal(d.train.labels, again.train.labels)
    other = medical.load_aptos(path, 12, test_fraction=0.25, split_seed=4)
    assert not np.array_equal(_aptos_values(d.test), _aptos_values(other.test))


def test_aptos_path_to_csv_and_load_dispatch(tmp_path):
    folder = _write(tmp_path / "aptos", _aptos_files(), False)
    d = medical.load_aptos(os.path.join(folder, "train.csv"), 8)
    assert (len(d.train), len(d.test)) == (16, 4)
    cfg = base_config().dataset
    cfg.name, cfg.path, cfg.image_size = "csv", folder, 8
    d2 = sources.load(cfg)
    np.testing.assert_array_equal(d.test.images, d2.test.images)
    cfg.image_size = 0
    with pytest.raises(ConfigError, match="dataset.image_size"):
        sources.load(cfg)


def test_aptos_grey_files_among_colour_are_marked_for_local_dp(tmp_path):
    # Grey files broadcast into RGB next to colour ones: local DP cannot perturb the grey
    # ones once (no single mechanism fits both), so it refuses rather than release three
    # noisy copies of each grey value.
    from dpjax.privacy import ldp

    files = _aptos_files()  # every 3rd image is grey
    d = medical.load_aptos(_write(tmp_path / "mixed", files, False), 8)
    assert d.train.images.shape[-1] == 3 and d.info[ldp.GREY_TO_RGB_KEY] == "some"
    with pytest.raises(ConfigError, match="mixes grey and colour"):
        ldp.apply_local_dp(d.train.images, 1.0, -1, str(tmp_path / "run"),
                           grey_to_rgb=d.info[ldp.GREY_TO_RGB_KEY])
    colour = {n: _image(7, (10, 10), "RGB") if n.endswith(".png") else b
              for n, b in files.items()}
    d = medical.load_aptos(_write(tmp_path / "colour", colour, False), 8)
    assert d.info[ldp.GREY_TO_RGB_KEY] == "none"


def test_aptos_missing_image_error_and_skip(tmp_path):
    path = _write(tmp_path / "a", _aptos_files(rows=["deadbeef,2"]), True)
    with pytest.raises(DataError, match="'deadbeef'.*train_images/deadbeef.png"):
        medical.load_aptos(path, 8)
    d = medical.load_aptos(path, 8, on_bad_image="skip")
    assert d.info["skipped_images"] == 1 and d.info["missing_images"] == 1
    assert d.info["skipped_files"] == ["train_images/deadbeef.png"]
    assert len(d.train) + len(d.test) == 20


def test_aptos_unreadable_image_skip(tmp_path):
    files = _aptos_files(rows=["cafe,1"])
    files["train_images/cafe.png"] = b"broken"
    path = _write(tmp_path / "a", files, False)
    with pytest.raises(DataError, match="cafe.png is not a readable image"):
        medical.load_aptos(path, 8)
    d = medical.load_aptos(path, 8, on_bad_image="skip")
    assert d.info["skipped_images"] == 1 and d.info["missing_images"] == 0


@pytest.mark.parametrize("value", ["7", "-1", "abc", "2.5", ""])
def test_aptos_bad_diagnosis(tmp_path, value):
    files = _aptos_files(rows=[f"00ffabcd99,{value}"])
    path = _write(tmp_path / "a", files, True)
    with pytest.raises(DataError, match=r"row at line 22 \(id_code='00ffabcd99'\)") as e:
        medical.load_aptos(path, 8)
    assert "0..4" in str(e.value) and "\n" not in str(e.value)


def test_aptos_missing_columns_and_no_csv(tmp_path):
    path = _write(tmp_path / "a", _aptos_files(header="id_code,level"), True)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['diagnosis'\].*id_code, diagnosis"):
        medical.load_aptos(path, 8)
    files = {k: v for k, v in _aptos_files().items() if not k.endswith("train.csv")}
    with pytest.raises(DataError, match="no train.csv"):
        medical.load_aptos(_write(tmp_path / "b", files, False), 8)
    with pytest.raises(ConfigError, match="dataset.image_size"):
        medical.load_aptos(path, 0)


def test_class_counts_is_explicit_and_not_in_info(tmp_path):
    d = medical.load_aptos(_write(tmp_path / "a", _aptos_files(), True), 8)
    counts = medical.class_counts(d.train, d.class_names)
    assert list(counts) == list(medical.APTOS_CLASSES) and sum(counts.values()) == 16
    assert counts["0 no DR"] == int(np.sum(d.train.labels == 0))
    assert medical.class_counts(np.asarray([0, 2, 2], np.int32)) == {0: 1, 1: 0, 2: 2}
    assert not any(isinstance(v, dict) and set(v) >= {"0 no DR"} for v in d.info.values())


def test_kermany_load_dispatch(tmp_path):
    cfg = base_config().dataset
    cfg.name, cfg.path, cfg.image_size = "kermany", _write(tmp_path / "k", _kermany_files(),
                                                           True), 8
    d = sources.load(cfg)
    assert d.name == "kermany" and d.info["train_patient_ids"].shape == (len(d.train),)
    assert len(d.train) == 8
    # A plain dict works too, with fields the config may not have yet.
    assert len(sources.load(dict(cfg.to_dict(), use_val="train")).train) == 10
