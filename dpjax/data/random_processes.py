"""Synthetic images from random processes, generated on the device.

DP-RandP (Tang et al. 2023) learns its Phase I prior from images that contain
no real data at all: the outputs of random processes studied by Baradad et al.
(2021), "Learning to See by Looking at Noise". This module regenerates those
families in pure JAX so that Phase I can draw fresh images endlessly instead
of downloading a fixed set. Every generator is

* pure and deterministic given its PRNG key (same key -> same batch);
* jittable, batch in and batch out, with no host round trip;
* float32 in [0, 1], shape (batch, resolution, resolution, 3), at any
  resolution >= 4 (32 and 224 are the ones that matter).

Families (`FAMILIES`):

* ``"stylegan_oriented"``: a randomly initialised StyleGAN2 synthesis network
  (Karras et al. 2020, "Analyzing and Improving the Image Quality of
  StyleGAN") whose 3x3 convolutions are drawn from a bank of 40 oriented
  filters, as in Baradad et al. (2021); the family DP-RandP uses.
* ``"dead_leaves"``: occluding shapes with radius law p(r) ∝ r^-3.
* ``"spectrum"``: random-phase noise with amplitude 1/(|fx|^sx + |fy|^sy).
* ``"cppn"``: random compositional pattern-producing networks over pixel
  coordinates, a cheap on-device stand-in for Baradad et al.'s (2022)
  Shaders21k, which renders real GLSL programs.
* ``"mixed"``: each image from a random family, optionally mixed up with a
  second one.

Use `generate(key, family, batch_size, resolution, **options)`; the family
functions (`stylegan_oriented`, `dead_leaves`, `spectrum`, `cppn`, `mixed`)
take the same leading arguments plus their own keyword options. `sample_grid`
and `save_grid_png` make a contact sheet for looking at the samples.

Example:

>>> import jax
>>> x = generate(jax.random.key(0), "dead_leaves", 2, 16)
>>> x.shape, str(x.dtype)
((2, 16, 16, 3), 'float32')
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError

FAMILIES: tuple[str, ...] = ("stylegan_oriented", "dead_leaves", "spectrum", "cppn", "mixed")
BASE_FAMILIES: tuple[str, ...] = FAMILIES[:-1]
DEAD_LEAVES_SHAPES: tuple[str, ...] = (
    "circle", "square", "rotated_square", "rectangle", "triangle", "quadrilateral")

# Colour statistics of the StyleGAN-Oriented output (design.md section 5):
# per-channel mean ~ N(_RGB_MEAN_MU, _RGB_MEAN_SD), std ~ N(_RGB_STD_MU, _RGB_STD_SD).
_RGB_MEAN_MU = (0.483, 0.455, 0.401)
_RGB_MEAN_SD = (0.145, 0.142, 0.161)
_RGB_STD_MU = (0.219, 0.213, 0.213)
_RGB_STD_SD = (0.063, 0.062, 0.069)
_W_DIM = 512  # latent width of StyleGAN2's w space (styles are cheap; kept as reference)


def _check_shape_args(batch_size: int, resolution: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Expected batch_size={batch_size!r} to be an integer >= 1.")
    if not isinstance(resolution, int) or resolution < 4:
        raise ConfigError(f"Expected resolution={resolution!r} to be an integer >= 4.")


def _finish(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0).astype(jnp.float32)


class _Draws:
    """All the random numbers of one unit of work from ONE uniform random call.

    Each `jax.random` call costs about 0.1-0.3 s of XLA compile time on a CPU
    (the threefry hash is unrolled each time), so a generator that made one
    call per layer took 10+ s to compile. Here one call fills a flat buffer
    that is cut into named pieces; normals come from the inverse normal CDF.
    """

    def __init__(self, key: jax.Array, **shapes: tuple[int, ...]):
        sizes = [math.prod(shape) for shape in shapes.values()]
        flat = jax.random.uniform(key, (sum(sizes),), minval=1e-7, maxval=1.0)
        offsets = np.cumsum([0] + sizes)
        self._parts = {name: flat[offsets[i]:offsets[i + 1]].reshape(shape)
                       for i, (name, shape) in enumerate(shapes.items())}

    def uniform(self, name: str, low=0.0, high=1.0) -> jax.Array:
        return low + (high - low) * self._parts[name]

    def normal(self, name: str) -> jax.Array:
        return jax.scipy.special.ndtri(self._parts[name])

    def integers(self, name: str, low, high) -> jax.Array:
        """Uniform integers in [low, high) (high may be an array)."""
        value = jnp.floor(low + (high - low) * self._parts[name]).astype(jnp.int32)
        return jnp.minimum(value, high - 1)

    def permutation(self, name: str) -> jax.Array:
        """A random permutation along the last axis (argsort of uniforms)."""
        return jnp.argsort(self._parts[name], axis=-1)


# --------------------------------------------------------------------------- StyleGAN-Oriented


def oriented_filter_bank() -> np.ndarray:
    """The 40 3x3 filters of StyleGAN-Oriented (Baradad et al. 2021), shape (40, 3, 3).

    Twenty base filters and their negatives: 8 step edges and 8 thin lines at
    orientations k·π/8 (the negatives supply the other half-turn of the
    edges), a delta, a centre-surround, a plus and a "±plus" (horizontal arm
    positive, vertical arm negative). Each filter has unit L2 norm; all but
    the delta and the plus have zero mean.
    """
    yy, xx = np.mgrid[-1:2, -1:2].astype(np.float64)
    base = []
    for k in range(8):  # step edges
        t = k * np.pi / 8
        base.append(np.tanh(2.0 * (xx * np.cos(t) + yy * np.sin(t))))
    for k in range(8):  # thin lines through the centre
        t = k * np.pi / 8
        dist = -xx * np.sin(t) + yy * np.cos(t)
        line = np.exp(-dist ** 2 / (2 * 0.4 ** 2))
        base.append(line - line.mean())
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    surround = np.full((3, 3), -1.0 / 8)
    surround[1, 1] = 1.0
    plus = np.zeros((3, 3))
    plus[1, :] = 1.0
    plus[:, 1] = 1.0
    pm_plus = np.zeros((3, 3))
    pm_plus[1, 0] = pm_plus[1, 2] = 1.0
    pm_plus[0, 1] = pm_plus[2, 1] = -1.0
    base += [delta, surround, plus, pm_plus]
    base = np.stack([f / np.linalg.norm(f) for f in base])
    return np.concatenate([base, -base]).astype(np.float32)


_FILTER_BANK = oriented_filter_bank()


def stylegan_widths(resolution: int, channels: int | None = None) -> dict[int, int]:
    """Feature widths per layer resolution of the StyleGAN-Oriented network.

    The network runs at `gen_res`, the power of two >= `resolution` (>= 4).
    `channels` is the width of the layers up to 32x32; above 32x32 the width
    halves with each doubling of resolution, never below 16 (StyleGAN2 also
    narrows its high-resolution layers, from 512). Default `channels`: 64
    when gen_res <= 64, else 128.

    Why so narrow: at the reference width of 512 generating a 32x32 image
    costs about 13 GFLOP, several times a WRN-16-4 training step on it. The
    look of a random, untrained StyleGAN comes from the oriented filters,
    the random styles, the multi-scale skip sum and the noise, not from the
    width: with demodulation every output channel is a unit-variance random
    mix of its inputs whatever the width, and 64 channels already give
    plenty of independent mixtures. At 32x32 the default costs about 0.2
    GFLOP per image (1/64 of the reference); at 224 (run at 256, channels
    128) about 3 GFLOP.
    """
    gen_res = _stylegan_gen_res(resolution)
    if channels is None:
        channels = 64 if gen_res <= 64 else 128
    if not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"Expected channels={channels!r} to be an integer >= 1.")
    widths = {}
    r = 4
    while r <= gen_res:
        widths[r] = max(min(channels, 16), min(channels, channels * 32 // r))
        r *= 2
    return widths


def _stylegan_gen_res(resolution: int) -> int:
    return max(4, 1 << (int(resolution) - 1).bit_length())


def _upsample2x(x: jax.Array) -> jax.Array:
    """2x upsampling with the FIR filter [1, 3, 3, 1] (separable), edge-padded.

    Zero insertion followed by [1, 3, 3, 1]·2/8 per axis gives, in polyphase
    form, out[2n] = ¾x[n] + ¼x[n-1] and out[2n+1] = ¾x[n] + ¼x[n+1].
    """
    for axis in (-3, -2):
        n = x.shape[axis]
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
        prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        y = jnp.stack([even, odd], axis=axis)  # (.., n, 2, ..): interleaved after reshape
        shape = list(x.shape)
        shape[axis] = 2 * n
        x = y.reshape(shape)
    return x


def _pink_noise(phase: jax.Array, alpha: jax.Array) -> jax.Array:
    """One (res, res) map with amplitude 1/f^alpha and the given phase, unit std."""
    res = phase.shape[0]
    f = jnp.fft.fftfreq(res)
    rad = jnp.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = jnp.where(rad > 0, jnp.power(jnp.where(rad > 0, rad, 1.0), -alpha), 0.0)
    field = jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * phase)))
    field = field - field.mean()
    return field / (field.std() + 1e-8)


def _sample_network(key: jax.Array, widths: dict[int, int]) -> dict:
    """Random StyleGAN2 synthesis weights for one group (one network).

    All layers are drawn at the widest width in a few large random calls and
    then sliced (far fewer random ops to compile than one call per layer).
    """
    resolutions = sorted(widths)
    shapes = [(widths[4], widths[4])]
    for lo, hi in zip(resolutions[:-1], resolutions[1:]):
        shapes += [(widths[lo], widths[hi]), (widths[hi], widths[hi])]
    n_conv, n_rgb, cmax = len(shapes), len(resolutions), max(widths.values())
    d = _Draws(key, n=(n_conv, 1, 1), subsets=(n_conv, 40), pick=(n_conv, cmax, cmax),
               scale=(n_conv, cmax, 1, 1, 1), affine=(n_conv + n_rgb, _W_DIM, cmax),
               bias=(n_conv, cmax), rgb=(n_rgb, cmax, 3), const=(4, 4, widths[4]))
    n = d.integers("n", 5, 41)  # subset size n ~ U{5..40}
    # A random order of the 40 filters from ranks (no sort: cheaper to compile).
    keys_ = d.uniform("subsets")
    rank = jnp.sum(keys_[:, None, :] < keys_[:, :, None], axis=-1)  # (layer, 40)
    subsets = jnp.argmax(rank[:, None, :] == jnp.arange(40)[None, :, None], axis=-1)
    pick = d.integers("pick", 0, n)
    pick = jnp.take_along_axis(subsets, pick.reshape(n_conv, -1), -1).reshape(pick.shape)
    bank = jnp.asarray(_FILTER_BANK)[pick] * d.normal("scale")  # (layer, cout, cin, 3, 3)
    affine = d.normal("affine") / math.sqrt(_W_DIM)
    bias = d.uniform("bias", -0.2, 0.2)
    rgb = d.normal("rgb")
    convs = []
    for i, (cin, cout) in enumerate(shapes):
        weight = bank[i, :cout, :cin]  # a filter per (output, input) channel pair
        convs.append(dict(weight=jnp.transpose(weight, (2, 3, 1, 0)),  # HWIO
                          weight_sq=jnp.sum(weight ** 2, axis=(2, 3)).T,  # (cin, cout)
                          affine=affine[i, :, :cin], bias=bias[i, :cout]))
    torgbs = [dict(weight=rgb[j, :widths[r]] / math.sqrt(widths[r]),
                   affine=affine[n_conv + j, :, :widths[r]]) for j, r in enumerate(resolutions)]
    return dict(const=d.normal("const"), convs=convs, torgbs=torgbs)


def _modulated_conv(x: jax.Array, p: dict, w: jax.Array) -> jax.Array:
    """StyleGAN2 modulated 3x3 conv with demodulation, in its unfused form.

    Scaling the input channels by the styles, convolving with the shared
    weight and scaling each output channel by the demodulation coefficient
    equals convolving with the per-sample modulated, demodulated weight.
    """
    styles = w @ p["affine"] + 1.0  # (n, cin), bias 1
    x = jnp.pad(x * styles[:, None, None, :], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    y = jax.lax.conv_general_dilated(x, p["weight"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    demod = jax.lax.rsqrt((styles ** 2) @ p["weight_sq"] + 1e-8)  # (n, cout)
    return y * demod[:, None, None, :]


def _synthesize_group(params: dict, ws: jax.Array, noise_maps: dict[int, jax.Array],
                      noise_strength: jax.Array) -> jax.Array:
    """Run one network over n images: ws (n, layers, w_dim), strength (n,)."""
    n = ws.shape[0]
    resolutions = sorted(noise_maps)
    layer = iter(range(ws.shape[1]))
    strength = noise_strength[:, None, None, None]

    def conv(x, p, res):
        y = _modulated_conv(x, p, ws[:, next(layer)])
        y = y + strength * noise_maps[res][None, :, :, None] + p["bias"]
        return jax.nn.relu(y) * math.sqrt(2.0)

    def torgb(x, p):
        styles = ws[:, next(layer)] @ p["affine"] + 1.0  # no demodulation
        return jnp.einsum("nhwc,nc,cd->nhwd", x, styles, p["weight"])

    x = jnp.broadcast_to(params["const"], (n,) + params["const"].shape)
    x = conv(x, params["convs"][0], 4)
    img = torgb(x, params["torgbs"][0])
    for i, res in enumerate(resolutions[1:]):
        x = conv(_upsample2x(x), params["convs"][1 + 2 * i], res)
        x = conv(x, params["convs"][2 + 2 * i], res)
        img = _upsample2x(img) + torgb(x, params["torgbs"][1 + i])
    return img


def stylegan_oriented(key: jax.Array, batch_size: int, resolution: int, *, group_size: int = 4,
                      channels: int | None = None, max_noise: float = 0.3) -> jax.Array:
    """StyleGAN-Oriented images (Baradad et al. 2021; network of Karras et al. 2020).

    A StyleGAN2 synthesis network with the skip architecture, never trained:
    a random 4x4 constant input; per resolution a [1, 3, 3, 1] FIR 2x
    upsampling, two modulated 3x3 convolutions with demodulation (inputs
    reflect-padded: StyleGAN's zero padding, untrained, paints a frame
    around every image), each
    followed by pink noise, a bias ~ U(-0.2, 0.2) and ReLU·√2; a 1x1 modulated
    ToRGB (no demodulation) per resolution, summed over the upsampled skip
    path. There is no mapping network: every layer of every image gets its
    own w = LeakyReLU_0.2(N(0, I_512)), mapped to styles by an affine with
    weight N(0, 1)/√512 and bias 1. Each conv's weight gives every (output,
    input) channel pair a filter drawn from a random subset of size
    n ~ U{5..40} of `oriented_filter_bank()`, times N(0, 1) per output
    channel (after demodulation only its sign survives).

    Images come in groups of `group_size`; each group has its own freshly
    drawn network (group g's network depends only on the key and g, image
    i's latents only on the key and i). One pink-noise map (amplitude
    1/f^α, α ~ U(0.5, 1.5), random phase) is shared by the batch,
    box-downsampled for the lower resolutions and scaled by U(0, max_noise)
    per image. The output channels are standardised
    per image, then given mean ~ N(0.483, 0.145), N(0.455, 0.142),
    N(0.401, 0.161) and std ~ |N(0.219, 0.063)|, |N(0.213, 0.062)|,
    |N(0.213, 0.069)| for R, G, B, and clipped to [0, 1].

    The network runs at the power of two >= `resolution`; other resolutions
    are resized (antialiased linear) with `jax.image.resize`. The network is
    one jitted computation per (batch_size, network resolution, group_size,
    channels), shared by all resolutions that round up to the same power.

    Args:
      key: PRNG key.
      batch_size: number of images.
      resolution: output height and width.
      group_size: images per random network. Images of one group share the
        network, the constant input and the noise map, so their layouts
        look alike (only the styles differ); the default 4 keeps batches
        diverse while a batch still runs as a few dense convolutions.
      channels: width of the layers up to 32x32 (see `stylegan_widths`).
      max_noise: noise strength is U(0, max_noise) per image.

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"Expected group_size={group_size!r} to be an integer >= 1.")
    gen_res = _stylegan_gen_res(resolution)
    imgs = _stylegan_core(key, batch_size, gen_res, group_size, channels, max_noise)
    if gen_res != resolution:
        imgs = _resize(imgs, resolution)
    return imgs


@functools.partial(jax.jit, static_argnames=("resolution",))
def _resize(imgs: jax.Array, resolution: int) -> jax.Array:
    shape = (imgs.shape[0], resolution, resolution, imgs.shape[-1])
    return _finish(jax.image.resize(imgs, shape, "linear"))  # antialiased when shrinking


@functools.partial(jax.jit, static_argnames=("batch_size", "gen_res", "group_size", "channels"))
def _stylegan_core(key: jax.Array, batch_size: int, gen_res: int, group_size: int,
                   channels: int | None, max_noise: float) -> jax.Array:
    """`stylegan_oriented` at its network resolution `gen_res`, a power of two."""
    widths = stylegan_widths(gen_res, channels)
    n_groups = -(-batch_size // group_size)
    n_layers = 3 * len(widths) - 1  # convs + torgbs

    k_net, k_img, k_noise = jax.random.split(key, 3)
    res_list = sorted(widths)
    d = _Draws(k_noise, alpha=(), phase=(gen_res, gen_res))
    alpha = d.uniform("alpha", 0.5, 1.5)
    noise = _pink_noise(d.uniform("phase", 0.0, 2 * jnp.pi), alpha)
    noise_maps = {}
    for r in reversed(res_list):  # box-downsampled copies keep the 1/f^alpha law
        noise_maps[r] = noise / (noise.std() + 1e-8)
        noise = noise.reshape(r // 2, 2, r // 2, 2).mean((1, 3)) if r > 4 else noise

    def per_image(i):
        d = _Draws(jax.random.fold_in(k_img, i), ws=(n_layers, _W_DIM), strength=(),
                   mean=(3,), std=(3,))
        ws = jax.nn.leaky_relu(d.normal("ws"), 0.2)
        strength = d.uniform("strength", 0.0, max_noise)
        mean = jnp.asarray(_RGB_MEAN_MU) + jnp.asarray(_RGB_MEAN_SD) * d.normal("mean")
        std = jnp.abs(jnp.asarray(_RGB_STD_MU) + jnp.asarray(_RGB_STD_SD) * d.normal("std"))
        return ws, strength, mean, std

    total = n_groups * group_size
    ws, strength, mean, std = jax.vmap(per_image)(jnp.arange(total))

    def per_group(g, ws_g, strength_g):
        params = _sample_network(jax.random.fold_in(k_net, g), widths)
        return _synthesize_group(params, ws_g, noise_maps, strength_g)

    imgs = jax.vmap(per_group)(
        jnp.arange(n_groups), ws.reshape(n_groups, group_size, n_layers, _W_DIM),
        strength.reshape(n_groups, group_size))
    imgs = imgs.reshape(total, gen_res, gen_res, 3)[:batch_size]
    mu = imgs.mean(axis=(1, 2), keepdims=True)
    sd = imgs.std(axis=(1, 2), keepdims=True)
    imgs = (imgs - mu) / (sd + 1e-8)
    imgs = imgs * std[:batch_size, None, None, :] + mean[:batch_size, None, None, :]
    return _finish(imgs)


# --------------------------------------------------------------------------- dead leaves


def _dead_leaves_labels(key: jax.Array, batch_size: int, resolution: int, num_shapes: int,
                        shape: str, r_min: float, r_max: float):
    """Front-to-back painting. Returns (labels (B, H, W) int32, colours (B, L+1, 3))."""
    if shape != "mixed" and shape not in DEAD_LEAVES_SHAPES:
        raise ConfigError(f"Expected shape={shape!r} to be 'mixed' or one of "
                          f"{DEAD_LEAVES_SHAPES}.")
    if not 0 < r_min <= r_max:
        raise ConfigError(f"Expected 0 < r_min={r_min} <= r_max={r_max}.")
    if not isinstance(num_shapes, int) or num_shapes < 0:
        raise ConfigError(f"Expected num_shapes={num_shapes!r} to be an integer >= 0.")
    b, n = batch_size, num_shapes
    d = _Draws(key, kind=(n, b), radius=(n, b), centre=(n, b, 2), theta=(n, b),
               aspect=(n, b), angles=(n, b, 4), colours=(b, n + 1, 3))
    if shape == "mixed":
        kind = d.integers("kind", 0, len(DEAD_LEAVES_SHAPES))
    else:
        kind = jnp.full((n, b), DEAD_LEAVES_SHAPES.index(shape))
    # Inverse CDF of p(r) ∝ r^-3 on [r_min, r_max].
    u = d.uniform("radius")
    radius = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    centre = d.uniform("centre")
    theta = d.uniform("theta", 0.0, 2 * jnp.pi)
    theta = jnp.where((kind == 1) | (kind == 3), 0.0, theta)  # square, rectangle: axis-aligned
    half_h = jnp.where(kind == 3, d.uniform("aspect", 0.25, 1.0), 1.0)
    angles = jnp.sort(d.uniform("angles", 0.0, 2 * jnp.pi), axis=-1)
    angles = jnp.where((kind == 4)[..., None] & (jnp.arange(4) == 3), angles[..., 2:3], angles)
    colours = d.uniform("colours")

    coords = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution
    py, px = coords[:, None], coords[None, :]

    def paint(labels, xs):
        i, kind_i, r, c, t, hh, ang = xs
        dx = (px[None] - c[:, 0, None, None]) / r[:, None, None]
        dy = (py[None] - c[:, 1, None, None]) / r[:, None, None]
        cos, sin = jnp.cos(t)[:, None, None], jnp.sin(t)[:, None, None]
        u_, v_ = cos * dx + sin * dy, -sin * dx + cos * dy
        circle = dx ** 2 + dy ** 2 <= 1.0
        box = (jnp.abs(u_) <= 1.0) & (jnp.abs(v_) <= hh[:, None, None])
        vx, vy = jnp.cos(ang)[:, :, None, None], jnp.sin(ang)[:, :, None, None]
        polygon = circle  # vertices lie on the unit circle, so the polygon is inside it
        for e in range(4):  # left of every edge of the counter-clockwise polygon
            ex, ey = vx[:, (e + 1) % 4] - vx[:, e], vy[:, (e + 1) % 4] - vy[:, e]
            polygon &= ex * (dy - vy[:, e]) - ey * (dx - vx[:, e]) >= 0
        k3 = kind_i[:, None, None]
        inside = jnp.where(k3 == 0, circle, jnp.where(k3 >= 4, polygon, box))
        return jnp.where((labels < 0) & inside, i, labels), None

    labels0 = jnp.full((b, resolution, resolution), -1, jnp.int32)
    labels, _ = jax.lax.scan(paint, labels0, (jnp.arange(n, dtype=jnp.int32), kind, radius,
                                              centre, theta, half_h, angles))
    return labels, colours


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "num_shapes", "shape",
                                             "r_min", "r_max"))
def dead_leaves_layers(key: jax.Array, batch_size: int, resolution: int, *,
                       num_shapes: int = 256, shape: str = "mixed", r_min: float = 0.03,
                       r_max: float = 1.0) -> jax.Array:
    """Which layer painted each pixel of `dead_leaves` (same key, same options).

    Returns int32 (batch_size, resolution, resolution): the index in
    [0, num_shapes) of the front-most shape covering the pixel, `num_shapes`
    where only the background layer does, and -1 where nothing does (never:
    the background covers everything). Use it to check coverage or to measure
    how much of the image the shapes alone cover.
    """
    _check_shape_args(batch_size, resolution)
    labels, _ = _dead_leaves_labels(key, batch_size, resolution, num_shapes, shape, r_min, r_max)
    return jnp.where(labels < 0, num_shapes, labels)


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "num_shapes", "shape",
                                             "r_min", "r_max"))
def dead_leaves(key: jax.Array, batch_size: int, resolution: int, *, num_shapes: int = 256,
                shape: str = "mixed", r_min: float = 0.03, r_max: float = 1.0) -> jax.Array:
    """Dead-leaves images (Baradad et al. 2021, after Lee, Mumford & Huang 2001).

    Shapes of radius r·resolution with p(r) ∝ r^-3 on [r_min, r_max], uniform
    centre in the image and uniform RGB colour, painted front to back: a
    pixel takes the colour of the first shape that covers it. `shape` is one
    of `DEAD_LEAVES_SHAPES` or "mixed" (uniform per shape): circle; square
    and rectangle (half sides r and r·U(0.25, 1)), axis-aligned; rotated
    square; triangle and quadrilateral with vertices at random angles on the
    circle of radius r.

    Baradad et al. paint until every pixel is covered, an unbounded loop.
    Here a fixed `num_shapes` layers are painted (static shapes, jittable),
    followed by one background layer of a random uniform colour under
    everything, so every pixel is covered by construction. With the defaults
    (256 shapes, r on [0.03, 1]) the shapes alone cover about 95% of the
    image (measured at 32 and 224 px), so the background shows only in
    gaps, as one more large leaf at the back would; raise `num_shapes` to
    shrink them (512 shapes: about 99.7%) at a proportional cost.
    `dead_leaves_layers` returns the layer map.

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    labels, colours = _dead_leaves_labels(key, batch_size, resolution, num_shapes, shape,
                                          r_min, r_max)
    labels = jnp.where(labels < 0, num_shapes, labels)
    imgs = jax.vmap(lambda c, lab: c[lab])(colours, labels)
    return _finish(imgs)


# --------------------------------------------------------------------------- spectrum


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution"))
def spectrum(key: jax.Array, batch_size: int, resolution: int, *,
             s_range: tuple[float, float] = (0.5, 3.5), s_jitter: float = 0.05,
             contrast: tuple[float, float] = (0.1, 0.2)) -> jax.Array:
    """Random-phase images with a power-law spectrum (Baradad et al. 2021).

    Amplitude 1/(|fx|^sx + |fy|^sy) (zero at DC) with s ~ U(s_range) per image
    and sx, sy = s + N(0, s_jitter²) each; its radially averaged power falls
    as f^(-2s) when sx = sy = s. Three fields with independent uniform phases
    share the amplitude; a random 3x3 colour matrix mixes them, each channel
    is standardised and mapped to mean ~ U(0.3, 0.7) and std ~ U(contrast),
    then clipped to [0, 1].

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    f = jnp.fft.fftfreq(resolution)
    afx, afy = jnp.abs(f)[None, :], jnp.abs(f)[:, None]
    dc = (afx == 0) & (afy == 0)

    def one(k):
        d = _Draws(k, s=(), sxy=(2,), phase=(3, resolution, resolution), mix=(3, 3),
                   mean=(3,), std=(3,))
        s = d.uniform("s", s_range[0], s_range[1])
        sxy = s + s_jitter * d.normal("sxy")
        denom = jnp.power(afx, sxy[0]) + jnp.power(afy, sxy[1])
        amp = jnp.where(dc, 0.0, 1.0 / jnp.where(dc, 1.0, denom))
        phase = d.uniform("phase", 0.0, 2 * jnp.pi)
        fields = jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * phase)))  # (3, H, W)
        x = jnp.einsum("chw,cd->hwd", fields, d.normal("mix"))
        x = (x - x.mean((0, 1))) / (x.std((0, 1)) + 1e-8)
        return x * d.uniform("std", contrast[0], contrast[1]) + d.uniform("mean", 0.3, 0.7)

    return _finish(jax.vmap(one)(jax.random.split(key, batch_size)))


# --------------------------------------------------------------------------- CPPN


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "hidden", "depth"))
def cppn(key: jax.Array, batch_size: int, resolution: int, *, hidden: int = 16,
         depth: int = 4, zoom: tuple[float, float] = (0.5, 3.0)) -> jax.Array:
    """Random procedural images: a random CPPN over pixel coordinates.

    A stand-in for the procedural programs of Shaders21k (Baradad et al.
    2022), which run real GLSL and cannot run in JAX. Each image gets its own
    random MLP (Stanley 2007's compositional pattern-producing network) from
    (x, y, r) to RGB: coordinates in [-1, 1] scaled by zoom ~ U(zoom), shifted
    by U(-0.5, 0.5); `depth` hidden layers of `hidden` units, weights
    N(0, g²/fan_in) with gain g ~ U(1, 4) per layer, biases N(0, 1), and an
    activation per unit drawn from sin, tanh and a Gaussian exp(-h²); a
    sigmoid output layer, then each channel is stretched to its own random
    range inside [0, 1].

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    t = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution * 2 - 1
    yy, xx = jnp.meshgrid(t, t, indexing="ij")

    def one(k):
        d = _Draws(k, zoom=(), shift=(2,), weights=(depth, max(hidden, 3), hidden),
                   biases=(depth, hidden), gains=(depth,), acts=(depth, hidden),
                   w_out=(hidden, 3), ends=(2, 3))
        zoom_ = d.uniform("zoom", zoom[0], zoom[1])
        shift = d.uniform("shift", -0.5, 0.5)
        weights, biases = d.normal("weights"), d.normal("biases")
        gains = d.uniform("gains", 1.0, 4.0)
        acts = d.integers("acts", 0, 3)
        x, y = xx * zoom_ + shift[0], yy * zoom_ + shift[1]
        h = jnp.stack([x, y, jnp.sqrt(x ** 2 + y ** 2)], -1).reshape(-1, 3)
        for layer in range(depth):
            fan_in = h.shape[-1]
            z = h @ weights[layer, :fan_in] * (gains[layer] / math.sqrt(fan_in)) + biases[layer]
            act = acts[layer]
            h = jnp.where(act == 0, jnp.sin(z), jnp.where(act == 1, jnp.tanh(z),
                                                           jnp.exp(-z ** 2)))
        w_out = d.normal("w_out") * 2.0 / math.sqrt(hidden)
        rgb = jax.nn.sigmoid(h @ w_out).reshape(resolution, resolution, 3)
        lo, hi = rgb.min((0, 1)), rgb.max((0, 1))
        rgb = (rgb - lo) / (hi - lo + 1e-6)
        ends = jnp.sort(d.uniform("ends"), axis=0)
        ends = ends.at[1].set(jnp.maximum(ends[1], ends[0] + 0.3))
        return ends[0] + rgb * (ends[1] - ends[0])

    return _finish(jax.vmap(one)(jax.random.split(key, batch_size)))


# --------------------------------------------------------------------------- mixed


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "families",
                                             "mixup_prob"))
def mixed(key: jax.Array, batch_size: int, resolution: int, *,
          families: tuple[str, ...] = BASE_FAMILIES, mixup_prob: float = 0.0) -> jax.Array:
    """Each image from a random family; with probability `mixup_prob` mixed up.

    Families are assigned by a random permutation of a balanced assignment
    (batch_size // F images of each of the F `families`, the remainder to
    the first ones), so a batch costs one image per image rather than one
    per family. With mixup (Baradad et al. 2021 found mixing families helps)
    a second batch is drawn the same way and, for a random subset of images
    (probability `mixup_prob` each), the output is λ·a + (1 − λ)·b with
    λ ~ U(0, 1); the others keep λ = 1. Sub-families use their defaults.

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    families = tuple(families)
    bad = [f for f in families if f not in BASE_FAMILIES]
    if not families or bad:
        raise ConfigError(f"Expected families={families!r} to be a non-empty tuple of "
                          f"{BASE_FAMILIES}.")
    if not 0.0 <= mixup_prob <= 1.0:
        raise ConfigError(f"Expected mixup_prob={mixup_prob} in [0, 1].")

    def draw(k):
        k_perm, *k_fam = jax.random.split(k, 1 + len(families))
        order = _Draws(k_perm, order=(batch_size,)).permutation("order")
        counts = [batch_size // len(families) + (i < batch_size % len(families))
                  for i in range(len(families))]
        parts = [_FAMILY_FNS[f](kf, c, resolution)
                 for f, kf, c in zip(families, k_fam, counts) if c > 0]
        return jnp.concatenate(parts)[order]

    k_a, k_b, k_mix = jax.random.split(key, 3)
    out = draw(k_a)
    if mixup_prob > 0:
        d = _Draws(k_mix, lam=(batch_size, 1, 1, 1), mix=(batch_size, 1, 1, 1))
        lam = jnp.where(d.uniform("mix") < mixup_prob, d.uniform("lam"), 1.0)
        out = lam * out + (1 - lam) * draw(k_b)
    return _finish(out)


_FAMILY_FNS = {"stylegan_oriented": stylegan_oriented, "dead_leaves": dead_leaves,
               "spectrum": spectrum, "cppn": cppn, "mixed": mixed}


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


def generate(key: jax.Array, family: str, batch_size: int, resolution: int,
             **options) -> jax.Array:
    """A batch of synthetic images from one family (see the module docstring).

    Args:
      key: PRNG key; the same key and arguments give the same images.
      family: one of `FAMILIES`.
      batch_size: number of images.
      resolution: height and width, >= 4.
      **options: keyword options of that family's function (e.g.
        `group_size=8` for "stylegan_oriented", `mixup_prob=0.5` for "mixed").

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1], computed on
      the device by a jitted function (compiled once per family, shape and
      set of static options).

    Raises:
      ConfigError: unknown family or option, or a value out of range.
    """
    if family not in _FAMILY_FNS:
        raise ConfigError(f"Expected family={family!r} to be one of {FAMILIES}.")
    fn = _FAMILY_FNS[family]
    allowed = [p.name for p in inspect.signature(fn).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for family={family!r}; valid: {allowed}.")
    _check_shape_args(batch_size, resolution)
    return fn(key, batch_size, resolution, **{k: _freeze(v) for k, v in options.items()})


# --------------------------------------------------------------------------- grids


def sample_grid(key: jax.Array, families: Sequence[str] = FAMILIES, per_family: int = 8,
                resolution: int = 64, pad: int = 2) -> np.ndarray:
    """A uint8 contact sheet: one row of `per_family` images per family.

    Returns:
      uint8 (rows·(resolution + pad) + pad, per_family·(resolution + pad) + pad, 3),
      white between images.
    """
    families = tuple(families)
    step = resolution + pad
    grid = np.full((len(families) * step + pad, per_family * step + pad, 3), 255, np.uint8)
    for row, (family, k) in enumerate(zip(families, jax.random.split(key, len(families)))):
        imgs = np.asarray(generate(k, family, per_family, resolution))
        imgs = np.round(imgs * 255).astype(np.uint8)
        for col in range(per_family):
            y, x = pad + row * step, pad + col * step
            grid[y:y + resolution, x:x + resolution] = imgs[col]
    return grid


def save_grid_png(path: str, grid: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) grid from `sample_grid` as a PNG file."""
    from PIL import Image

    Image.fromarray(np.asarray(grid, np.uint8)).save(path)
