"""Image folders and zip archives: layouts, colour modes, sizes, bad files, cache, CIFAR-10."""

import io
import os
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from dpjax.config import base_config
from dpjax.data import sources
from dpjax.errors import ConfigError, DataError

CIFAR_ZIP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                          "..", "shared", "data", "cifar10-jpeg.zip"))


def _png(value, size=(8, 8), mode="RGB", fmt="PNG") -> bytes:
    """An image filled with `value` (an int, or a tuple per channel), as file bytes."""
    w, h = size
    if mode == "RGB" and isinstance(value, int):
        value = (value, (value + 1) % 256, (value + 2) % 256)
    buf = io.BytesIO()
    Image.new(mode, (w, h), value).save(buf, format=fmt)
    return buf.getvalue()


def _write(root, files: dict, as_zip: bool, dirs=()) -> str:
    """Writes {relative name: bytes} to a directory or a zip; returns the path."""
    if as_zip:
        path = str(root) + ".zip"
        with zipfile.ZipFile(path, "w") as z:
            for d in dirs:
                z.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
            for name, data in files.items():
                z.writestr(name, data)
        return path
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for name, data in files.items():
        full = os.path.join(root, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return str(root)


def _split_layout(prefix="", n_train=3, n_test=2, classes=("cat", "ant", "bee"), mode="RGB"):
    """Class k, image i has pixel value 10 * k + i (lossless PNG), so labels can be checked."""
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(sorted(classes)):
            for i in range(n):
                files[f"{prefix}{split}/{c}/{i}.png"] = _png(10 * k + i + 100 * (split == "test"),
                                                             mode=mode)
    return files


@pytest.mark.parametrize("as_zip", [False, True])
def test_train_test_layout(tmp_path, as_zip):
    path = _write(tmp_path / "data", _split_layout(), as_zip)
    d = sources.load_image_folder(path)
    assert d.class_names == ("ant", "bee", "cat") and d.num_classes == 3
    assert d.train.images.shape == (9, 8, 8, 3) and d.test.images.shape == (6, 8, 8, 3)
    assert d.train.images.dtype == np.uint8 and d.train.labels.dtype == np.int32
    # The pixel value encodes the class: labels follow the sorted class folders.
    np.testing.assert_array_equal(d.train.images[:, 0, 0, 0] // 10, d.train.labels)
    np.testing.assert_array_equal((d.test.images[:, 0, 0, 0] - 100) // 10, d.test.labels)
    assert d.info["format"] == ("zip" if as_zip else "directory")
    assert d.info["split"].startswith("train/ and test/")


@pytest.mark.parametrize("as_zip", [False, True])
def test_top_folder_val_and_junk(tmp_path, as_zip):
    files = _split_layout("chest_xray/")
    files["chest_xray/val/ant/0.png"] = _png(7)
    files["chest_xray/val/ant/1.png"] = _png(8)
    files["__MACOSX/chest_xray/train/ant/._0.png"] = b"junk"
    files["chest_xray/train/ant/.DS_Store"] = b"junk"
    files["chest_xray/README.txt"] = b"notes"
    path = _write(tmp_path / "data", files, as_zip)
    d = sources.load_image_folder(path)
    assert len(d.train) == 9 and len(d.test) == 6 and d.info["root"] == "chest_xray/"
    assert any("val" in k for k in d.info["ignored"])
    d = sources.load_image_folder(path, use_val="train")
    assert len(d.train) == 11 and len(d.test) == 6


@pytest.mark.parametrize("as_zip", [False, True])
def test_flat_layout_stratified_split(tmp_path, as_zip):
    files = {f"{c}/{i}.png": _png(10 * k + i) for k, c in enumerate("abc") for i in range(10)}
    path = _write(tmp_path / "data", files, as_zip)
    d = sources.load_image_folder(path, test_fraction=0.2, split_seed=1)
    assert (len(d.train), len(d.test)) == (24, 6)
    assert np.bincount(d.test.labels).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(d.train.images[:, 0, 0, 0] // 10, d.train.labels)
    again = sources.load_image_folder(path, test_fraction=0.2, split_seed=1)
    other = sources.load_image_folder(path, test_fraction=0.2, split_seed=2)
    np.testing.assert_array_equal(d.test.images, again.test.images)
    assert not np.array_equal(d.test.images, other.test.images)
    assert d.info["split"].startswith("stratified")


def test_grey_stays_one_channel_and_mixed_becomes_rgb(tmp_path):
    grey = _split_layout(mode="L")
    d = sources.load_image_folder(_write(tmp_path / "grey", grey, True))
    assert d.train.images.shape[-1] == 1 and d.info["channels"] == 1
    mixed = dict(grey)
    mixed["train/ant/9.png"] = _png((1, 2, 3))
    d = sources.load_image_folder(_write(tmp_path / "mixed", mixed, True))
    assert d.train.images.shape[-1] == 3 and d.test.images.shape[-1] == 3
    # A grey image converted to RGB has three equal channels.
    first = d.train.images[0]
    np.testing.assert_array_equal(first[..., 0], first[..., 2])


@pytest.mark.parametrize("as_zip", [False, True])
def test_mixed_sizes_need_image_size(tmp_path, as_zip):
    files = _split_layout()
    files["train/bee/big.png"] = _png(5, size=(16, 12))
    path = _write(tmp_path / "data", files, as_zip)
    with pytest.raises(DataError, match="dataset.image_size") as e:
        sources.load_image_folder(path)
    assert "train/bee/big.png is 16x12" in str(e.value) and "is 8x8" in str(e.value)
    d = sources.load_image_folder(path, image_size=4)
    assert d.train.images.shape == (10, 4, 4, 3) and d.test.images.shape == (6, 4, 4, 3)


def test_non_square_resize_keeps_the_centre(tmp_path):
    # 24 wide x 8 high: red | green | blue thirds. Shorter side 8 -> 4, centre crop = green.
    arr = np.zeros((8, 24, 3), np.uint8)
    arr[:, :8, 0] = arr[:, 8:16, 1] = arr[:, 16:, 2] = 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    files = {"a/0.png": buf.getvalue(), "a/1.png": buf.getvalue(),
             "b/0.png": buf.getvalue(), "b/1.png": buf.getvalue()}
    d = sources.load_image_folder(_write(tmp_path / "d", files, False), image_size=4,
                                  test_fraction=0.5)
    assert d.train.images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(d.train.images[0, 1:3, 1:3], [[[0, 200, 0]] * 2] * 2)


def test_large_jpeg_is_reduced_while_decoding(tmp_path):
    files = {f"{c}/{i}.jpg": _png(60 * k + 30, size=(256, 192), fmt="JPEG")
             for k, c in enumerate("ab") for i in range(3)}
    d = sources.load_image_folder(_write(tmp_path / "d", files, True), image_size=16,
                                  test_fraction=0.5)
    assert d.train.images.shape == (3, 16, 16, 3)
    assert np.all(np.abs(d.train.images[..., 0].astype(int) - (60 * d.train.labels + 30)[
        :, None, None]) <= 3)


@pytest.mark.parametrize("as_zip", [False, True])
def test_bad_images_error_or_skip(tmp_path, as_zip):
    files = _split_layout()
    files["train/ant/garbage.png"] = b"not an image at all"
    files["test/cat/truncated.png"] = _png(3, size=(64, 64))[:60]
    path = _write(tmp_path / "data", files, as_zip)
    with pytest.raises(DataError, match="train/ant/garbage.png.*on_bad_image=skip"):
        sources.load_image_folder(path)
    d = sources.load_image_folder(path, on_bad_image="skip")
    assert len(d.train) == 9 and len(d.test) == 6
    assert d.info["skipped_images"] == 2
    assert sorted(d.info["skipped_files"]) == ["test/cat/truncated.png", "train/ant/garbage.png"]
    with pytest.raises(ConfigError, match="dataset.on_bad_image"):
        sources.load_image_folder(path, on_bad_image="ignore")


def test_class_with_only_bad_images_is_an_error(tmp_path):
    files = _split_layout(classes=("a", "b"))
    files["train/c/0.png"] = b"broken"
    path = _write(tmp_path / "data", files, True)
    with pytest.raises(DataError, match="class 'c'"):
        sources.load_image_folder(path, on_bad_image="skip")


@pytest.mark.parametrize("as_zip", [False, True])
def test_empty_class_folder_is_named(tmp_path, as_zip):
    files = _split_layout(classes=("a", "b"))
    files["test/dog/notes.txt"] = b"no images here"
    path = _write(tmp_path / "data", files, as_zip, dirs=["train/emu"])
    with pytest.raises(DataError, match=r"class folder (train/emu|test/dog)/ has no images"):
        sources.load_image_folder(path)


def test_class_missing_from_one_split_is_fine(tmp_path):
    files = _split_layout(classes=("a", "b"))
    files["train/c/0.png"] = _png(1)
    d = sources.load_image_folder(_write(tmp_path / "data", files, True))
    assert d.class_names == ("a", "b", "c") and 2 not in d.test.labels


@pytest.mark.parametrize("files, match", [
    ({"a.txt": b"x"}, "no image files"),
    ({"only/0.png": _png(1), "only/1.png": _png(2)}, "class folder"),
    ({"train/a/0.png": _png(1), "train/b/0.png": _png(2)}, "no test/ folder"),
])
def test_unusable_layouts(tmp_path, files, match):
    with pytest.raises(DataError, match=match):
        sources.load_image_folder(_write(tmp_path / "data", files, True))


def test_not_a_zip_or_missing(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(DataError, match="neither a directory nor a readable .zip"):
        sources.load_image_folder(str(tmp_path / "x.zip"))
    with pytest.raises(DataError, match="does not exist"):
        sources.load_image_folder(str(tmp_path / "missing"))


def test_cache_is_reused_and_invalidated(tmp_path):
    path = _write(tmp_path / "data", _split_layout(), True)
    cache = tmp_path / "cache"
    first = sources.load_image_folder(path, cache_dir=str(cache))
    assert "cache" not in first.info and len(os.listdir(cache)) == 1
    second = sources.load_image_folder(path, cache_dir=str(cache))
    assert second.info["cache"].startswith(str(cache))
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    assert second.class_names == first.class_names
    sources.load_image_folder(path, image_size=4, cache_dir=str(cache))  # another key
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "modified" archive
    assert "cache" not in sources.load_image_folder(path, cache_dir=str(cache)).info
    assert len(os.listdir(cache)) == 3


def test_load_dispatches_to_folder(tmp_path):
    path = _write(tmp_path / "data", _split_layout(), True)
    config = base_config().dataset  # locked, as in training
    config.name, config.path, config.on_bad_image = "folder", path, "skip"
    d = sources.load(config)
    assert len(d.train) == 9 and d.class_names == ("ant", "bee", "cat")


@pytest.mark.skipif(not os.path.isfile(CIFAR_ZIP), reason="shared CIFAR-10 zip not present")
def test_real_cifar10_zip():
    start = time.perf_counter()
    d = sources.load_image_folder(CIFAR_ZIP)
    seconds = time.perf_counter() - start
    print(f"CIFAR-10 zip loaded in {seconds:.1f} s")
    assert d.train.images.shape == (50000, 32, 32, 3) and d.test.images.shape == (10000, 32, 32, 3)
    assert d.num_classes == 10 and d.class_names[0] == "airplane"
    assert np.bincount(d.train.labels).tolist() == [5000] * 10
    assert np.bincount(d.test.labels).tolist() == [1000] * 10
    with zipfile.ZipFile(CIFAR_ZIP) as z:  # spot check: first truck test image
        name = min(n for n in z.namelist() if n.startswith("test/truck/") and n.endswith(".jpg"))
        expected = np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB"))
    np.testing.assert_array_equal(d.test.images[np.flatnonzero(d.test.labels == 9)[0]], expected)
