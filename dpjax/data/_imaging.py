"""Image files to uint8 arrays: listing a folder or zip, decoding, resizing.

Private helpers of the loaders in `dpjax.data`. Everything here works on one image
at a time and is free of data-set logic, so the loaders can decode in a
thread pool: Pillow releases the GIL while it decodes and resamples, and
`zipfile` serialises its reads of the shared archive behind a lock.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dpjax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Pillow modes holding one grey channel; every other mode is read as RGB.
_GREY_MODES = ("1", "L", "LA", "La", "P;L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class FileTree:
    """The files and folders of a directory or a `.zip` archive, read uniformly.

    Names are relative, '/'-separated; folder names end with '/'. A zip is read
    in place (never extracted), so a 50 MB archive of 60,000 images costs no
    disk space and no unpacking step.
    """

    def __init__(self, path: str):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if os.path.isdir(path):
            files, dirs = [], []
            for root, dirnames, filenames in os.walk(path):
                rel = os.path.relpath(root, path).replace(os.sep, "/")
                rel = "" if rel == "." else rel + "/"
                dirs.extend(rel + d + "/" for d in dirnames)
                files.extend(rel + f for f in filenames)
            self.files, self.dirs = sorted(files), set(dirs)
        elif os.path.isfile(path):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"dataset.path={path!r} is neither a directory nor a readable "
                                f".zip archive ({e}): point it at an image folder or a zip."
                                ) from None
            infos = self._zip.infolist()
            self.files = sorted(i.filename for i in infos if not i.is_dir())
            self.dirs = {i.filename for i in infos if i.is_dir()}
            for name in self.files:  # zips need not store folder entries
                parts = name.split("/")[:-1]
                self.dirs.update("/".join(parts[:k]) + "/" for k in range(1, len(parts) + 1))
        else:
            raise DataError(f"dataset.path={path!r} does not exist: point it at an image "
                            "folder or a .zip archive of one.")

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def read(self, name: str) -> bytes:
        """The bytes of one file (thread-safe)."""
        if self._zip is not None:
            return self._zip.read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def fingerprint(self) -> str:
        """A digest that changes when any file changes (path, sizes, mtimes)."""
        h = hashlib.sha256(os.path.abspath(self.path).encode())
        if self._zip is not None:
            st = os.stat(self.path)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            for name in self.files:
                st = os.stat(os.path.join(self.path, name))
                h.update(f"|{name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def is_image_name(name: str) -> bool:
    """An image file by extension, not hidden and not macOS zip metadata."""
    parts = name.split("/")
    return (name.lower().endswith(IMAGE_EXTENSIONS) and "__MACOSX" not in parts
            and not any(p.startswith(".") for p in parts))


def is_grey_mode(mode: str) -> bool:
    return mode in _GREY_MODES


def _to_uint8(im) -> np.ndarray:
    """A decoded Pillow image as uint8 (H, W, 1) grey or (H, W, 3) RGB.

    16- and 32-bit integer grey (medical PNG/TIFF) is taken as 16-bit and
    scaled by 255/65535 rather than clipped; float images are clipped to
    [0, 255]. Alpha is dropped; palette and CMYK images become RGB.
    """
    mode = im.mode
    if mode.startswith("I"):
        arr = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    elif mode == "F":
        arr = np.clip(np.round(np.asarray(im)), 0, 255).astype(np.uint8)
    elif is_grey_mode(mode):
        arr = np.asarray(im.convert("L") if mode != "L" else im, np.uint8)
    else:
        arr = np.asarray(im.convert("RGB") if mode != "RGB" else im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def fit_array(arr: np.ndarray, image_size: int | None) -> np.ndarray:
    """Resizes uint8 (H, W, C) so the shorter side is `image_size`, then centre-crops.

    One bilinear resampling of the centred square (Pillow's `box`), which is
    the same as resizing the shorter side and cropping the middle. A no-op
    when `image_size` is None or the image already has that square size.
    """
    from PIL import Image

    h, w = arr.shape[:2]
    if not image_size or (h, w) == (image_size, image_size):
        return arr
    side = min(h, w)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(im.resize((image_size, image_size), Image.BILINEAR, box=box), np.uint8)
    return out[..., None] if out.ndim == 2 else out


def decode(data: bytes, image_size: int | None) -> np.ndarray:
    """Image file bytes -> uint8 (H, W, 1 or 3), resized when `image_size` is set.

    Raises whatever Pillow raises for an unreadable or truncated file.
    """
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if image_size and im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves
        # at least `image_size` pixels on the shorter side: large photographs
        # then decode several times faster.
        w, h = im.size
        scale = image_size / min(w, h)
        if scale < 0.5:
            im.draft(im.mode, (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
    im.load()
    return fit_array(_to_uint8(im), image_size)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, 1|3) with `channels` channels: grey repeated into RGB, or RGB made
    grey with ITU-R 601 luma (Pillow's "L" conversion)."""
    if arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    luma = arr.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def image_size_of(data: bytes) -> tuple[int, int]:
    """(height, width) from the header alone."""
    from PIL import Image

    w, h = Image.open(io.BytesIO(data)).size
    return h, w


def resize_all(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """`fit_array` over a uint8 (N, H, W, C) stack."""
    if not image_size or images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[-1]), np.uint8)
    for i, im in enumerate(images):
        out[i] = fit_array(im, image_size)
    return out


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def map_chunks(fn: Callable[[Sequence[Any]], Any], items: Sequence[Any], workers: int,
               chunk: int = 256) -> Iterator[Any]:
    """`fn` over consecutive chunks of `items` in a thread pool, results in order.

    Stopping the iteration early (an exception in the consumer) cancels the
    chunks not yet started.
    """
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        yield from pool.map(fn, chunks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
