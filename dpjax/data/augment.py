"""On-device augmentation, one example at a time (vmap it over a batch).

Random crop with reflect padding and horizontal flip, as in De et al. (2022),
"Unlocking high-accuracy differentially private image classification through
scale", and their augmentation multiplicity (augmult): K independently
augmented views of one example, whose averaged loss gives that example's
single gradient, clipped once, so the sensitivity does not change.

Every function takes ONE example (H, W, C) and a key and is pure, so it runs
under `jit` and `vmap` and the augmentation of an example depends only on its
key. Normalisation uses per-channel constants from the config: public
numbers, never statistics of the private data (a mean computed from the
training images would be a release of private data that ε does not cover).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError


def to_float(image: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1].

    Raises:
      TypeError: the input is not uint8 (dividing floats by 255 twice is a
        silent bug, so it is refused).
    """
    if image.dtype != jnp.uint8:
        raise TypeError(f"to_float expects uint8 images in [0, 255], got {image.dtype}: pass "
                        "uint8, or skip to_float for images already in [0, 1].")
    return image.astype(jnp.float32) / 255.0


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(x - mean) / std per channel over the last axis.

    `mean` and `std` are public constants from the config (`dataset.mean`,
    `dataset.std`), one per channel or one for all; they must never be
    computed from the private training set.

    Raises:
      ConfigError: lengths other than 1 or the number of channels.
    """
    mean, std = tuple(mean), tuple(std)
    channels = x.shape[-1]
    for field, value in (("dataset.mean", mean), ("dataset.std", std)):
        if len(value) not in (1, channels):
            raise ConfigError(f"Expected {field}={value} to have 1 or {channels} values (one "
                              "per image channel).")
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(key: jax.Array, image: jax.Array, crop_padding: int,
                     flip: bool) -> jax.Array:
    """Random crop after reflect padding, and a random left-right flip.

    Pads (H, W, C) by `crop_padding` pixels on each side with reflection,
    takes the (H, W) window at an offset drawn uniformly from
    {0..2p} x {0..2p}, then flips it left-right with probability 1/2 when
    `flip`. `crop_padding=0, flip=False` returns the image unchanged. Shapes
    are static, so this traces once under `jit`.

    Args:
      key: a PRNG key for this example (and view).
      image: (H, W, C), any dtype.
      crop_padding: p >= 0 and p < min(H, W) (reflection needs that).
      flip: whether to flip at random.

    Returns:
      (H, W, C), same dtype.
    """
    h, w, _ = image.shape
    if not _is_int(crop_padding) or crop_padding < 0 or (crop_padding and
                                                          crop_padding >= min(h, w)):
        raise ConfigError(f"Expected augment.crop_padding={crop_padding!r} to be an integer in "
                          f"[0, {min(h, w) - 1}] for {h}x{w} images.")
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
        image = jax.lax.dynamic_slice(padded, (dy, dx, jnp.zeros_like(dy)), image.shape)
    if flip:
        image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image


def augmult_views(key: jax.Array, image: jax.Array, num_views: int, crop_padding: int,
                  flip: bool) -> jax.Array:
    """`num_views` independently augmented views of one image: (K, H, W, C).

    Augmentation multiplicity (De et al. 2022): the caller averages the loss
    over the K views and clips the resulting per-example gradient once. Every
    view is augmented, the first included, each with its own key split from
    `key`.
    """
    if not _is_int(num_views) or num_views < 1:
        raise ConfigError(f"Expected augmult={num_views!r} to be a positive integer.")
    keys = jax.random.split(key, num_views)
    return jax.vmap(lambda k: random_crop_flip(k, image, crop_padding, flip))(keys)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
