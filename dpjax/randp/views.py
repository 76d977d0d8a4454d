"""Two-view augmentation for Phase I, on the device (SimCLR-style, as DP-RandP uses).

Per image: RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3) back to the input
size, horizontal flip (p = 1/2), colour jitter (brightness, contrast,
saturation 0.4; hue 0.4 · 0.5 turns) applied always, grayscale with p = 0.2.
Images are float32 in [0, 1], (H, W, C) with C = 3 (or 1: colour steps are
skipped). All of it is pure JAX and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def random_resized_crop(key, image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    h, w, _ = image.shape
    k1, k2, k3, k4 = jax.random.split(key, 4)
    area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1]) * h * w
    log_r = jax.random.uniform(k2, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    r = jnp.exp(log_r)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    y0 = jax.random.uniform(k3, ()) * (h - ch)
    x0 = jax.random.uniform(k4, ()) * (w - cw)
    sy, sx = h / ch, w / cw
    return jax.image.scale_and_translate(
        image, image.shape, (0, 1), jnp.array([sy, sx]), jnp.array([-y0 * sy, -x0 * sx]),
        method="linear", antialias=True)


def _gray(image):
    return jnp.sum(image * _LUMA, axis=-1, keepdims=True)


def color_jitter(key, image, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4):
    """torchvision-style ColorJitter with fixed order (brightness, contrast, saturation, hue)."""
    kb, kc, ks, kh = jax.random.split(key, 4)
    x = image * jax.random.uniform(kb, (), minval=1 - brightness, maxval=1 + brightness)
    x = jnp.clip(x, 0, 1)
    mean = jnp.mean(_gray(x) if x.shape[-1] == 3 else x)
    x = jnp.clip((x - mean) * jax.random.uniform(kc, (), minval=1 - contrast,
                                                  maxval=1 + contrast) + mean, 0, 1)
    if image.shape[-1] != 3:
        return x
    g = _gray(x)
    x = jnp.clip((x - g) * jax.random.uniform(ks, (), minval=1 - saturation,
                                               maxval=1 + saturation) + g, 0, 1)
    # Hue: rotate the chroma plane of YIQ by up to ±hue·π (hue is in half-turns
    # of the colour wheel, as torchvision's hue factor ≤ 0.5).
    angle = jax.random.uniform(kh, (), minval=-hue, maxval=hue) * jnp.pi
    to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], jnp.float32)
    c, s = jnp.cos(angle), jnp.sin(angle)
    rot = jnp.array([[1, 0, 0], [0, c, -s], [0, s, c]], jnp.float32)
    m = jnp.linalg.inv(to_yiq) @ rot @ to_yiq
    return jnp.clip(x @ m.T, 0, 1)


def ssl_view(key, image, grayscale_p: float = 0.2):
    kc, kf, kj, kg = jax.random.split(key, 4)
    x = random_resized_crop(kc, image)
    x = jnp.where(jax.random.bernoulli(kf), x[:, ::-1], x)
    x = color_jitter(kj, x)
    if image.shape[-1] == 3:
        x = jnp.where(jax.random.bernoulli(kg, grayscale_p), jnp.broadcast_to(_gray(x), x.shape),
                      x)
    return x


def two_views(key, images):
    """(view1, view2) of a batch (N, H, W, C), independent augmentations."""
    k1, k2 = jax.random.split(key)
    n = images.shape[0]
    v1 = jax.vmap(ssl_view)(jax.random.split(k1, n), images)
    v2 = jax.vmap(ssl_view)(jax.random.split(k2, n), images)
    return v1, v2
