"""On-device augmentation, one example at a time (vmap it over a batch).

Random crop with reflect padding and horizontal flip, as in De et al. (2022)'s
CIFAR recipe, and augmentation multiplicity: K independently augmented views
of one example, whose averaged loss gives that example's single (clipped)
gradient. Normalisation uses constants from the config — public numbers,
never statistics of the private data.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def to_float(image: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return image.astype(jnp.float32) / 255.0


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(x − mean) / std per channel; mean/std are public config constants."""
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(key: jax.Array, image: jax.Array, crop_padding: int,
                     flip: bool) -> jax.Array:
    """Reflect-pad by `crop_padding`, crop back to the input size at a random
    offset, and flip left-right with probability 1/2. (H, W, C) -> (H, W, C)."""
    h, w, _ = image.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
        image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
    if flip:
        image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image


def augmult_views(key: jax.Array, image: jax.Array, num_views: int, crop_padding: int,
                  flip: bool) -> jax.Array:
    """`num_views` independently augmented copies of one image: (K, H, W, C)."""
    keys = jax.random.split(key, num_views)
    return jax.vmap(lambda k: random_crop_flip(k, image, crop_padding, flip))(keys)
