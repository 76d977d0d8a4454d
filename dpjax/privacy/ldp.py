"""Local differential privacy for images by the Laplace mechanism.

Singh et al. (2020) benchmark "local DP" on medical images by adding Laplace
noise to the training images before training. Their code
(sahibsin/DP_DeepLearning_Pneumonia) draws ONE Laplace value per image
(`np.random.laplace(0, b, 1)`) and adds it to every pixel: a brightness shift
that leaves every detail of the image readable, so it gives no privacy at all.

Here every stored value (each channel of each pixel) of every image gets its
own independent draw. With pixels scaled to [0, 1] a value's sensitivity is
Δ = 1 (a neighbouring image may change it from 0 to 1), so Laplace noise of
scale β makes each value (Δ/β)-DP, a pixel of C channels (C·Δ/β)-DP and an
image of d perturbed values (d·Δ/β)-DP by basic composition (pure ε-DP,
δ = 0, image-level neighbours). The noisy value is then clipped to [0, 1]
and rounded to uint8 for storage; both are post-processing and cost no
privacy. The report names the three numbers `ldp_epsilon_per_value`,
`ldp_epsilon_per_pixel` and `ldp_epsilon_per_image`.

Grey images. A grey training set that the loader repeated into three
identical RGB channels (the test split was colour) is perturbed BEFORE the
repetition: one draw per grey value, then the noisy value is copied into
the three channels (post-processing). Three independent draws on three
copies of one value would release three noisy copies of it (averaging them
cuts the noise by √3). A training set that mixes grey files and colour files
is refused: no single mechanism perturbs both without either releasing three
copies of the grey values or choosing the noise by the image's content.

Labels are NOT perturbed: local DP here protects the pixels only, and each
training label is used as it is (`ldp_labels_protected: false`).

The paper's β = 1, 2, 4 are, in its code, Laplace scales on the [0, 1] scale,
i.e. per-value ε = 1, 0.5, 0.25 (scale 255·β on the 0–255 scale). Per image
that is ε = 784/β for a 28×28 grey image and 150,528/β at 224×224×3: honest,
and vacuous as a formal guarantee, which is why dpjax reports all of them.

Randomness. The noise is drawn from OS entropy by default (`ldp.seed = -1`;
`randomness.shared_seed` draws it on process 0 and broadcasts it, so every
host perturbs identically), through the domain-separated stream
`randomness.numpy_rng(seed, "ldp")`. The seed is never written anywhere:
anyone who knew it could subtract the noise exactly. A fixed `ldp.seed >= 0`
is a DEBUGGING option, labelled as such in the summary (`ldp_seed_source:
"config"`): a fixed seed is no privacy against whoever knows it, and two
runs at different β with the same seed share their draws (2·y₁ − y₂ gives
the image back, for unclipped values).

Because an OS seed cannot be recomputed, `apply_local_dp` perturbs the
training set once and keeps it in the run's workdir (`WORKDIR/private/
ldp_train.npz`, private like the checkpoints), so a resumed run trains on
exactly the same noisy images. `comparison_grid` draws the paper's Figure 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence

import dp_accounting
import jax
import numpy as np

from dpjax import validate
from dpjax.errors import ConfigError, DataError
from dpjax.privacy import randomness

# Values perturbed per chunk: bounds the float64 working memory (~32 MiB per
# array) for large data sets such as 224x224x3 chest X-rays. The noise stream
# of a numpy Generator does not depend on the chunking, so neither does the
# result.
_CHUNK_VALUES = 1 << 22

# `DataSplits.info` key the loaders set when they turned grey training images
# into RGB: "none" (no grey image was repeated), "all" (every training image
# is a grey image repeated into three channels) or "some" (a mix of grey files
# and colour files).
GREY_TO_RGB_KEY = "train_grey_to_rgb"
GREY_TO_RGB = ("none", "all", "some")

# The perturbed training set, relative to the run's workdir.
CACHE_FILE = os.path.join("private", "ldp_train.npz")
_CACHE_FORMAT = 1

LABELS_NOTE = ("Labels are not protected by local DP: the Laplace noise is added to the "
               "pixels only, and every training label is used as it is (no randomized "
               "response), so the labels have no epsilon.")


def _check_seed(seed: int) -> None:
    """A resolved seed: an integer in [0, 2**63) (not -1: resolve that first)."""
    validate.integer("ldp.seed", seed, 0, 2 ** randomness.SEED_BITS, high_open=True,
                     fix="resolve -1 (OS entropy) with randomness.shared_seed first")


def _check_images(images: np.ndarray) -> None:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8):
        kind = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"Expected uint8 images (pixels 0-255), got {kind}.")


def laplace_noise(rng: np.random.Generator, shape: Sequence[int] | int,
                  scale: float) -> np.ndarray:
    """Independent Laplace(0, `scale`) draws of the given shape (float64, unclipped).

    Every entry is its own draw (standard deviation √2·scale); this is the
    per-value noise that the original code replaced with one draw per image.
    """
    validate.positive_finite("ldp.scale", scale)
    return rng.laplace(0.0, float(scale), size=shape)


@dataclasses.dataclass(frozen=True)
class LaplaceMechanism:
    """Independent Laplace noise of scale β on every value of an image on [0, 1].

    Attributes:
      scale: β, the Laplace scale on the [0, 1] pixel scale (255·β on 0–255).
      sensitivity: Δ, how much one value can differ between neighbouring
        images; 1 for values on [0, 1] (the only honest choice unless the
        neighbouring relation itself is restricted).

    Example (the paper's β = 2 on a 28×28 grey image; seed 0 is a fixed
    debugging seed, fine for an example and never for a release):
      >>> mech = LaplaceMechanism(scale=2.0)
      >>> mech.epsilon_per_value(), mech.epsilon_per_pixel(3), mech.epsilon_per_image(28 * 28)
      (0.5, 1.5, 392.0)
      >>> mech.perturb(np.full((1, 2, 2), 128, np.uint8), seed=0).dtype
      dtype('uint8')
    """

    scale: float
    sensitivity: float = 1.0

    def __post_init__(self):
        validate.positive_finite("ldp.scale", self.scale)
        validate.positive_finite("ldp.sensitivity", self.sensitivity)

    def epsilon_per_value(self) -> float:
        """ε of one perturbed stored value (one channel of one pixel): Δ/β."""
        return self.sensitivity / self.scale

    def epsilon_per_pixel(self, channels: int) -> float:
        """ε of one pixel of `channels` perturbed values: C·Δ/β."""
        return self.epsilon_per_image(channels)

    def epsilon_per_image(self, num_values: int) -> float:
        """ε of a whole image of `num_values` perturbed values: d·Δ/β.

        Basic composition of d pure-DP releases; d = H·W·C of the images as
        perturbed (any later resize or channel replication is post-processing).
        """
        return validate.positive_int("num_values", num_values) * self.epsilon_per_value()

    def dp_event(self) -> dp_accounting.DpEvent:
        """The `DpEvent` of one perturbed value (compose it d times for an image)."""
        return dp_accounting.LaplaceDpEvent(noise_multiplier=self.scale / self.sensitivity)

    def perturb(self, images_uint8: np.ndarray, seed: int, *counters: int) -> np.ndarray:
        """Perturbed copy of uint8 images (any shape), deterministic in (`seed`, `counters`).

        Each value is mapped to [0, 1], gets its own Laplace(0, β) draw, is
        clipped to [0, 1] and rounded back to uint8. Clipping and rounding are
        post-processing of the noisy value and do not weaken the guarantee.

        The draws come from `randomness.numpy_rng(seed, "ldp", *counters)`:
        the "ldp" stream of `seed`, never `seed` itself, and a different
        stream for each `counters`. `seed` must already be resolved (an OS
        seed from `randomness.shared_seed(-1)` for anything released; a fixed
        seed only for debugging and tests).
        """
        _check_images(images_uint8)
        _check_seed(seed)
        rng = randomness.numpy_rng(int(seed), "ldp", *counters)
        flat = images_uint8.reshape(-1)
        out = np.empty(flat.shape, np.uint8)
        for start in range(0, flat.size, _CHUNK_VALUES):
            chunk = flat[start:start + _CHUNK_VALUES].astype(np.float64) / 255.0
            chunk += laplace_noise(rng, chunk.shape, self.scale)
            np.clip(chunk, 0.0, 1.0, out=chunk)
            out[start:start + _CHUNK_VALUES] = np.rint(chunk * 255.0).astype(np.uint8)
        return out.reshape(images_uint8.shape)


def ldp_report(mechanism: LaplaceMechanism, image_shape: Sequence[int], *,
               replicated_to: int = 0) -> dict:
    """Summary entries stating the local-DP guarantee for images of `image_shape`.

    Args:
      mechanism: the Laplace mechanism applied.
      image_shape: (H, W) or (H, W, C) of the images AS PERTURBED: C counts
        the channels that got their own draws (1 for a grey image perturbed
        before it was repeated into RGB).
      replicated_to: if > 0, the perturbed channel was then copied into this
        many channels (post-processing; the note says so).

    Returns:
      `ldp_epsilon_per_value` (Δ/β, one stored value), `ldp_epsilon_per_pixel`
      (C·Δ/β), `ldp_epsilon_per_image` (d·Δ/β for the d = H·W·C values
      perturbed), `ldp_values_per_image` (d), `ldp_channels_perturbed` (C),
      `ldp_scale`, `ldp_sensitivity`, `ldp_labels_protected` (False: labels
      are never perturbed), `ldp_labels_note` and `ldp_note`.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"Expected an image shape (H, W) or (H, W, C) of positive sizes, "
                         f"got {shape}.")
    channels = shape[2] if len(shape) == 3 else 1
    d = math.prod(shape)
    eps_value = mechanism.epsilon_per_value()
    eps_pixel = mechanism.epsilon_per_pixel(channels)
    eps_image = mechanism.epsilon_per_image(d)
    replication = (f" The perturbed grey value was then copied into {replicated_to} channels "
                   "(post-processing: no further draw, no extra noisy copy)."
                   if replicated_to else "")
    note = (f"Independent Laplace noise of scale {mechanism.scale:g} (on [0, 1] pixels, "
            f"sensitivity {mechanism.sensitivity:g}) on each of the {d} stored values "
            f"({channels} per pixel) of every training image gives pure epsilon = "
            f"{eps_value:g} per value, {eps_pixel:g} per pixel and {eps_image:g} per image by "
            f"basic composition (delta = 0).{replication} Labels are not protected.")
    return {
        "ldp_scale": float(mechanism.scale),
        "ldp_sensitivity": float(mechanism.sensitivity),
        "ldp_epsilon_per_value": float(eps_value),
        "ldp_epsilon_per_pixel": float(eps_pixel),
        "ldp_epsilon_per_image": float(eps_image),
        "ldp_values_per_image": int(d),
        "ldp_channels_perturbed": int(channels),
        "ldp_labels_protected": False,
        "ldp_labels_note": LABELS_NOTE,
        "ldp_note": note,
    }


# --- the perturbed training set of a run ---------------------------------------------

def _digest(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((images.shape, images.dtype.str)).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def _cache_key(source: np.ndarray, mechanism: LaplaceMechanism, grey_to_rgb: str) -> dict:
    """What the cached set must have been made from to be reused (no seed: it is never kept)."""
    return {"format": _CACHE_FORMAT, "images": _digest(source),
            "shape": [int(s) for s in source.shape], "scale": repr(float(mechanism.scale)),
            "sensitivity": repr(float(mechanism.sensitivity)), "grey_to_rgb": grey_to_rgb}


def _read_cache(path: str) -> tuple[np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], json.loads(str(z["meta"]))
    except Exception as e:
        raise DataError(f"{path} (this run's local-DP training set) cannot be read "
                        f"({type(e).__name__}: {e}). It is written atomically, so it was damaged "
                        "afterwards. Start a new workdir; delete the file only if no model "
                        "was trained on it yet.") from None


def _write_cache(path: str, perturbed: np.ndarray, meta: dict) -> None:
    """Writes images and metadata as one .npz: a temporary file, fsync, then rename."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ldp_train.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=perturbed, meta=np.asarray(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_hosts_agree(perturbed: np.ndarray) -> None:
    """Every process must train on the same noisy set (one release, not one per host)."""
    if jax.process_count() == 1:
        return
    mine = int(_digest(perturbed)[:15], 16)  # 60 bits: fits the 64-bit broadcast
    if randomness.broadcast_from_process_zero(mine) != mine:
        raise DataError("The hosts' local-DP training sets differ (process "
                        f"{jax.process_index()} disagrees with process 0): the workdir must be "
                        "one shared directory, so that every host reads the set process 0 "
                        f"keeps in WORKDIR/{CACHE_FILE}.")


def apply_local_dp(images: np.ndarray, scale: float, configured_seed: int, workdir: str, *,
                   grey_to_rgb: str = "none") -> tuple[np.ndarray, dict]:
    """The training images with local-DP Laplace noise, made once per run and kept in it.

    The first call in a workdir draws the seed (`randomness.shared_seed
    (configured_seed)`: OS entropy for -1, the same on every host), perturbs
    the images through the "ldp" stream of that seed and writes them, never
    the seed, to `WORKDIR/private/ldp_train.npz` (process 0; a temporary file
    renamed into place, the directory created 0700). Later calls in the same
    workdir (a resumed run) return exactly that set, so training never sees
    two noisy copies of an image. The file holds training data: keep it as
    private as the checkpoints.

    A file made from other images (digest of their bytes and shape), another
    β or sensitivity, or another grey handling is refused (ConfigError), not
    recomputed: the run in that workdir may already have trained on it, and
    a second noisy copy of the same images would be a second release whose
    ε adds up. Start a new workdir for a new setting.

    Args:
      images: the training images, uint8 (N, H, W, C).
      scale: the Laplace scale β on [0, 1] (> 0).
      configured_seed: `ldp.seed`: -1 (the default) for OS entropy; a fixed
        seed >= 0 is a debugging option: anyone who knows it can subtract
        the noise exactly, and the summary says `ldp_seed_source: "config"`.
      workdir: the run's directory.
      grey_to_rgb: `data.info.get(GREY_TO_RGB_KEY, "none")`: "all" means the
        loader repeated grey images into three identical channels; channel 0
        is perturbed and the noisy value copied into all three (ε counts the
        H·W values perturbed). "some" (grey and colour files mixed) is
        refused. "none": every stored value is perturbed.

    Returns:
      (perturbed uint8 images of the same shape as `images`, summary entries:
      `ldp_report`'s, plus `ldp_seed_source` ("os" or "config"),
      `ldp_training_set` and, for a fixed seed, `ldp_warning`). The seed
      itself appears in neither.

    Raises:
      ConfigError: bad scale or seed, a mixed grey/colour training set, or a
        kept set that does not match these images and settings.
      DataError: an unreadable kept set, or hosts that disagree.
    """
    _check_images(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"Expected training images uint8 (N, H, W, 1|3), got {images.shape}.")
    mechanism = LaplaceMechanism(scale=float(scale))
    randomness.check_seed("ldp.seed", configured_seed)
    if grey_to_rgb not in GREY_TO_RGB:
        raise ValueError(f"Expected grey_to_rgb in {GREY_TO_RGB}, got {grey_to_rgb!r}.")
    if grey_to_rgb == "some":
        raise ConfigError(
            "Local DP (ldp.scale > 0) on a training set that mixes grey and colour image files "
            "is refused: the grey ones were repeated into three identical channels, and "
            "perturbing those would release three noisy copies of each grey value (or pick the "
            "noise by the image's content). Store all images in one format first.")
    if grey_to_rgb == "all":
        if images.shape[-1] != 3 or not (np.array_equal(images[..., 0], images[..., 1])
                                         and np.array_equal(images[..., 0], images[..., 2])):
            raise ValueError("grey_to_rgb='all' but the images are not three identical channels.")
        source = images[..., :1]
    else:
        source = images

    # Every process draws (a collective for OS entropy) before looking at the
    # file, so the hosts stay in step whether or not the file exists.
    seed, seed_source = randomness.shared_seed(configured_seed)
    path = os.path.join(workdir, CACHE_FILE)
    key = _cache_key(source, mechanism, grey_to_rgb)
    if os.path.isfile(path):
        perturbed, meta = _read_cache(path)
        if meta.get("key") != key or perturbed.shape != source.shape \
                or perturbed.dtype != np.uint8:
            raise ConfigError(
                f"{path} holds a local-DP training set made from other training images or "
                f"settings (ldp.scale, grey handling) than this run's (β = {scale:g}). A workdir "
                "holds one run: start a new workdir (delete the file only if no model was "
                "trained on it: a second noisy copy of the same images is a second release).")
        seed_source = meta["seed_source"]
        reused = True
    else:
        perturbed = mechanism.perturb(source, seed)
        if jax.process_index() == 0:
            _write_cache(path, perturbed, {"key": key, "seed_source": seed_source})
        reused = False
    del seed  # never stored, logged or returned
    _check_hosts_agree(perturbed)

    out = np.repeat(perturbed, 3, axis=-1) if grey_to_rgb == "all" else perturbed
    entries = ldp_report(mechanism, source.shape[1:], replicated_to=3 if grey_to_rgb == "all"
                         else 0)
    entries["ldp_seed_source"] = seed_source
    entries["ldp_training_set"] = (
        f"perturbed once per run and kept privately in WORKDIR/{CACHE_FILE}"
        + (" (reused on resume)" if reused else "") + "; only the training split is perturbed")
    if seed_source == "config":
        entries["ldp_warning"] = (
            "ldp.seed was fixed (a debugging option): anyone who knows it can regenerate the "
            "Laplace noise and subtract it exactly, and runs sharing it share their noise. "
            "This is not a private release; use ldp.seed=-1 (OS entropy).")
    return out, entries


def comparison_grid(images: np.ndarray, scales: Sequence[float], seed: int,
                    pad: int = 2) -> np.ndarray:
    """One row per image: the original, then its perturbation at each β (Figure 2).

    Args:
      images: uint8 (N, H, W) or (N, H, W, C).
      scales: the Laplace scales β of the columns after the original.
      seed: a resolved seed (an OS seed from `randomness.os_seed()` unless
        debugging). Column j draws from its own stream (`numpy_rng(seed,
        "ldp", j)`), so the columns are independent draws: no two columns
        share noise that a difference could cancel.
      pad: white pixels between tiles.

    Returns:
      uint8 (N·H + (N-1)·pad, (1+len(scales))·W + len(scales)·pad, C).
    """
    _check_images(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected images (N, H, W) or (N, H, W, C), got {images.shape}.")
    n, h, w, c = images.shape
    columns = [images] + [LaplaceMechanism(float(b)).perturb(images, seed, j)
                          for j, b in enumerate(scales)]
    ncol = len(columns)
    grid = np.full((n * h + (n - 1) * pad, ncol * w + (ncol - 1) * pad, c), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            y, x = i * (h + pad), j * (w + pad)
            grid[y:y + h, x:x + w] = col[i]
    return grid


def save_png(path: str, grid: np.ndarray) -> None:
    """Write a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as a PNG."""
    from PIL import Image

    _check_images(grid)
    if grid.ndim == 3 and grid.shape[-1] == 1:
        grid = grid[..., 0]
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
