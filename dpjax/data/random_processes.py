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
  filters, as in Baradad et al. (2021); the family DP-RandP uses. Full
  StyleGAN2 width (512 channels), made cheap by an exact reformulation of
  its layers (see `stylegan_oriented`).
* ``"dead_leaves"``: occluding flat shapes with radius law p(r) ∝ r^-3.
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

# Colour statistics of the StyleGAN-Oriented output (Baradad et al. 2021; docs/methods.md):
# per-channel mean ~ N(_RGB_MEAN_MU, _RGB_MEAN_SD), std ~ N(_RGB_STD_MU, _RGB_STD_SD).
_RGB_MEAN_MU = (0.483, 0.455, 0.401)
_RGB_MEAN_SD = (0.145, 0.142, 0.161)
_RGB_STD_MU = (0.219, 0.213, 0.213)
_RGB_STD_SD = (0.063, 0.062, 0.069)
_W_DIM = 512  # width of StyleGAN2's latent w (the styles' input; cheap, kept as in the reference)
_SQRT2 = math.sqrt(2.0)


def _check_shape_args(batch_size: int, resolution: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Expected batch_size={batch_size!r} to be an integer >= 1.")
    if not isinstance(resolution, int) or resolution < 4:
        raise ConfigError(f"Expected resolution={resolution!r} to be an integer >= 4.")


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ConfigError(f"Expected {name}={tuple(value)!r} to be (low, high) with "
                          f"{low} <= low <= high <= {high}.")


def _fold_in_range(key: jax.Array, n: int) -> jax.Array:
    """Keys fold_in(key, i) for i < n: item i's randomness does not depend on n."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _finish(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0).astype(jnp.float32)


class _Draws:
    """All the random numbers of one unit of work from ONE uniform random call.

    Each `jax.random` call costs about 0.1-0.3 s of XLA compile time on a CPU
    (the threefry hash is unrolled each time), so a generator that made one
    call per layer took 10+ s to compile. Here one call fills a flat buffer
    that is cut into named pieces; normals come from the inverse normal CDF.
    """

    def __init__(self, key: jax.Array, *, batched: bool = False, **shapes: tuple[int, ...]):
        """One key, or with batched=True a 1-D array of keys (the parts get its leading axis)."""
        sizes = [math.prod(shape) for shape in shapes.values()]

        def draw(k):
            return jax.random.uniform(k, (sum(sizes),), minval=1e-7, maxval=1.0 - 1e-7)

        flat = jax.vmap(draw)(key) if batched else draw(key)
        lead = flat.shape[:-1]
        offsets = np.cumsum([0] + sizes)
        self._parts = {name: flat[..., offsets[i]:offsets[i + 1]].reshape(lead + shape)
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

    def sign(self, name: str) -> jax.Array:
        """±1 with probability 1/2 each."""
        return jnp.where(self._parts[name] < 0.5, -1.0, 1.0)


# --------------------------------------------------------------------------- StyleGAN-Oriented


def oriented_filter_bank() -> np.ndarray:
    """The 40 3x3 filters of StyleGAN-Oriented (Baradad et al. 2021), shape (40, 3, 3).

    Twenty base filters and their negatives, as the reference code builds
    them (an 11x11 pattern rotated with bilinear interpolation, the central
    3x3 cropped): 8 step edges (+1 | 0 | -1 across the edge) and 8 thin
    lines (-1 on the line, +1 around it), each with its mean removed, at
    orientations k·π/8; a delta; a centre-surround (+1 centre, -1 around);
    a plus (1 on the cross, 0 in the corners); a ±plus (+1 on the cross,
    -1 in the corners). They are not normalised: their norms weight the input
    channels against each other inside the demodulated convolution, as in
    the reference.
    """
    yy, xx = np.mgrid[-1:2, -1:2].astype(np.float64)
    base = []
    for k in range(8):  # step edges; bilinear interpolation of a step is a clipped ramp
        u = xx * np.cos(k * np.pi / 8) - yy * np.sin(k * np.pi / 8)
        edge = -np.clip(u, -1.0, 1.0)
        base.append(edge - edge.mean())
    for k in range(8):  # thin lines, one pixel wide
        u = xx * np.cos(k * np.pi / 8) - yy * np.sin(k * np.pi / 8)
        line = 1.0 - 2.0 * np.maximum(0.0, 1.0 - np.abs(u))
        base.append(line - line.mean())
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    surround = -np.ones((3, 3))
    surround[1, 1] = 1.0
    plus = np.zeros((3, 3))
    plus[1, :] = plus[:, 1] = 1.0
    base += [delta, surround, plus, 2.0 * plus - 1.0]
    base = np.stack(base)
    base[np.abs(base) < 1e-9] = 0.0  # exact zeros where cos/sin rounding left 1e-17
    return np.concatenate([base, -base]).astype(np.float32)


_FILTER_BANK = oriented_filter_bank().reshape(40, 9)


def _stylegan_gen_res(resolution: int, network_resolution: int | None = None) -> int:
    """The network's resolution: the power of two >= `resolution` (and >= 4)."""
    gen_res = max(4, 1 << (int(resolution) - 1).bit_length())
    if network_resolution is not None:
        if (not isinstance(network_resolution, int) or network_resolution < gen_res
                or network_resolution & (network_resolution - 1)):
            raise ConfigError(f"Expected network_resolution={network_resolution!r} to be a "
                              f"power of two >= {gen_res} (resolution={resolution}).")
        gen_res = network_resolution
    return gen_res


def stylegan_widths(resolution: int, channels: int = 512) -> dict[int, int]:
    """Feature width of each layer resolution of the StyleGAN-Oriented network.

    The network runs at the power of two >= `resolution`. Layers up to 64x64
    have `channels` features; above, the width halves with each doubling of
    resolution, never below min(16, channels). With the default 512 this is
    StyleGAN2's own schedule (channel_base 32768, channel_max 512): 512 up
    to 64x64, 256 at 128, 128 at 256.
    """
    gen_res = _stylegan_gen_res(resolution)
    if not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"Expected channels={channels!r} to be an integer >= 1.")
    widths, r = {}, 4
    while r <= gen_res:
        widths[r] = max(min(channels, 16), min(channels, channels * 64 // r))
        r *= 2
    return widths


def _upsample2x(x: jax.Array) -> jax.Array:
    """2x upsampling of (B, H, W, C) with the FIR filter [1, 3, 3, 1], edge-padded.

    Zero insertion followed by [1, 3, 3, 1]·2/8 per axis gives, in polyphase
    form, out[2n] = ¾x[n] + ¼x[n-1] and out[2n+1] = ¾x[n] + ¼x[n+1].
    """
    for axis in (1, 2):
        n = x.shape[axis]
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
        prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
        y = jnp.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] = 2 * n
        x = y.reshape(shape)  # (.., n, 2, ..) -> (.., 2n, ..): even and odd samples interleaved
    return x


def _pink_noise(phase: jax.Array, alpha: jax.Array, envelope: jax.Array) -> jax.Array:
    """One (res, res) map: amplitude 1/f^alpha, the given phase, times `envelope`; unit std."""
    res = phase.shape[0]
    f = jnp.fft.fftfreq(res)
    rad = jnp.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = jnp.where(rad > 0, jnp.power(jnp.where(rad > 0, rad, 1.0), -alpha), 0.0)
    field = jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * phase)))
    field = (field - field.mean()) * envelope
    return field / (field.std() + 1e-8)


def _laplace(u: jax.Array) -> jax.Array:
    """Standard Laplace variates from uniforms on (0, 1) (inverse CDF)."""
    return -jnp.sign(u - 0.5) * jnp.log1p(-2.0 * jnp.abs(u - 0.5))


def _taps(planes: jax.Array, up: bool) -> jax.Array:
    """Finish a 3x3 convolution whose 9 taps were contracted over channels first.

    `planes` is (B, h, w, 9): plane k holds Σ_c W[c, k]·x_c. Optionally
    upsample the planes 2x (FIR upsampling commutes with the channel
    contraction), reflect-pad by one and sum each plane shifted by its tap.
    """
    if up:
        planes = _upsample2x(planes)
    _, h, w, _ = planes.shape
    padded = jnp.pad(planes, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return sum(padded[:, dy:dy + h, dx:dx + w, 3 * dy + dx]
               for dy in range(3) for dx in range(3))


def _prefix_tables(knots: jax.Array, sign: jax.Array, weight: jax.Array) -> jax.Array:
    """Prefix sums for `_relu_contract`: (..., C), (..., C), (..., C, K) -> (..., C + 1, 4K).

    Channels in knot order; row j holds the sums over the first j channels of
    [w·[sign > 0], w·t·[sign > 0], w·[sign < 0], w·t·[sign < 0]].
    """
    w_pos = jnp.where(sign[..., None] > 0, weight, 0.0)
    w_neg = weight - w_pos
    t = knots[..., None]
    sums = jnp.cumsum(jnp.concatenate([w_pos, w_pos * t, w_neg, w_neg * t], axis=-1), axis=-2)
    return jnp.pad(sums, [(0, 0)] * (sums.ndim - 2) + [(1, 0), (0, 0)])


def _relu_contract(m: jax.Array, e: jax.Array, knots: jax.Array,
                   tables: jax.Array) -> jax.Array:
    """Σ_c w[c, k]·√2·ReLU(sign_c·m + e − t_c), without the C-channel tensor.

    This is a StyleGAN-Oriented layer's activation followed by the next
    contraction over its channels (see `stylegan_oriented`). The channels c
    have knots t_c = −bias_c, sorted ascending, signs ±1 and consumer
    weights w (C, K). For the channels of one sign and z = ±m + e,
    Σ_c w_c·ReLU(z − t_c) = z·Σ_{t_c<z} w_c − Σ_{t_c<z} w_c·t_c: two prefix
    sums over the sorted channels (`_prefix_tables`), read at the number of
    knots below z, found by binary search. O(K·log C) work per pixel
    instead of O(K·C), and no (H, W, C) activation in memory.

    Args:
      m, e: (B, H, W) the layer's demodulated map and its noise.
      knots: (B, C), ascending.
      tables: (B, C + 1, 4K) from `_prefix_tables(knots, sign, w)`.

    Returns:
      (B, H, W, K).
    """
    b, h, w = m.shape
    k = tables.shape[-1] // 4
    z = jnp.concatenate([(m + e).reshape(b, h * w), (e - m).reshape(b, h * w)], axis=1)
    below = jax.vmap(jnp.searchsorted)(knots, z)[..., None]  # (B, 2·H·W, 1): knots < z
    pos = jnp.take_along_axis(tables[..., :2 * k], below[:, :h * w], axis=1)  # (B, H·W, 2K)
    neg = jnp.take_along_axis(tables[..., 2 * k:], below[:, h * w:], axis=1)
    z = z[..., None]
    out = (z[:, :h * w] * pos[..., :k] - pos[..., k:] + z[:, h * w:] * neg[..., :k]
           - neg[..., k:])
    return (_SQRT2 * out).reshape(b, h, w, k)


def stylegan_oriented(key: jax.Array, batch_size: int, resolution: int, *, group_size: int = 2,
                      channels: int = 512, max_noise: float = 0.3,
                      network_resolution: int | None = None) -> jax.Array:
    """StyleGAN-Oriented images (Baradad et al. 2021; network of Karras et al. 2020).

    A StyleGAN2 synthesis network with the skip architecture, never trained,
    as Baradad et al.'s "StyleGAN-Oriented" configuration draws it:

    * no mapping network: every layer of every image gets its own
      w = LeakyReLU_0.2(N(0, I_512)), mapped to styles by an affine with
      weight N(0, 1)/√512 and bias 1; a random 4x4 constant input;
    * per resolution a 2x upsampling with the FIR filter [1, 3, 3, 1], two
      modulated 3x3 convolutions with demodulation, each followed by noise,
      a bias ~ U(-0.2, 0.2) and ReLU·√2; a 1x1 modulated ToRGB (weight
      N(0, 1), no demodulation) per resolution, summed along the upsampled
      skip path;
    * each convolution's weight is drawn afresh: a subset of size
      n ~ U{5..40} of `oriented_filter_bank()`, one filter from it for each
      input channel (shared by all output channels) and a N(0, 1) scale per
      output channel;
    * the noise is one pink-noise map (amplitude 1/f^α, α ~ U(0.5, 1.5),
      random phase, times a smooth Laplace envelope as in the reference),
      box-downsampled to each resolution and scaled by U(0, max_noise) per
      image and layer;
    * the output channels are standardised per image, then given mean
      ~ N(0.483, 0.145), N(0.455, 0.142), N(0.401, 0.161) and std
      ~ |N(0.219, 0.063)|, |N(0.213, 0.062)|, |N(0.213, 0.069)| for R, G, B,
      and clipped to [0, 1].

    Groups. The images come in groups of `group_size`; each group gets its
    own network: its own filters, output scales, biases, ToRGB weights and
    noise map (the reference redraws these at every forward pass, of 2
    images). The style affines and the constant input, the parameters
    StyleGAN2 would learn, are drawn once per call and shared by the groups
    (the reference redraws them every 400 images).

    How it is computed. Every output channel of a convolution sees the same
    filters, scaled by its own N(0, 1), and demodulation divides that scale
    out, so all output channels equal ±M, one map
    M = Σ_c s_c·(f_c ⋆ x_c) / √(Σ_c s_c²‖f_c‖²). A layer therefore contracts
    its input over channels first, Σ_c s_c·f_c[k]·x_c for the 9 taps k,
    upsamples those 9 planes when the layer upsamples and sums them shifted
    (`_taps`); its channels are x_c = √2·ReLU(±M + noise + bias_c). And as
    every x_c is a ReLU of one of two scalar maps, the next contraction
    Σ_c w_c·x_c is a piecewise-linear function of that scalar with a knot
    per channel, read from prefix sums over the channels sorted by bias
    (`_relu_contract`). The result is exactly the modulated, demodulated
    convolution (checked against the dense computation in the tests) at
    O(log C) work per pixel instead of O(C²), with no C-channel activation
    in memory. Inputs are reflect-padded: StyleGAN's zero padding,
    untrained, paints a frame around every image. Large batches at high
    resolution run in sequential chunks to bound the temporaries.

    Widths. `channels` is the width of the layers up to 64x64 (above, it
    halves per doubling; see `stylegan_widths`). The default is StyleGAN2's
    512. The width matters for the look: it sets how coherent the sum over
    channels is against the biases and the noise, and narrower networks
    (64-128 channels, tried at 32 and 128 px) give visibly blurrier,
    noisier images with less of the sharp, wavy oriented structure. With
    the computation above the width costs little: the remaining O(C) work
    is per image and layer (styles, weights, prefix sums), not per pixel,
    so 512 channels cost about 2-3x 128 on a CPU at 32x32
    (benchmarks/random_processes_speed.py) and much less than a dense
    512-channel network, which would cost more than a WRN-16-4 training
    step per image.

    Resolution. The network runs at `network_resolution`, by default the
    power of two >= `resolution`; other resolutions are resized
    (antialiased linear) with `jax.image.resize`. The reference generated
    256x256 images that DP-RandP then cropped and shrank to 32x32; pass
    network_resolution=256 for that (about 20x the time at 32 px on a CPU). The
    network is one jitted computation per (batch_size, network resolution,
    group_size, channels), shared by all resolutions that round up to the
    same power.

    Args:
      key: PRNG key.
      batch_size: number of images.
      resolution: output height and width.
      group_size: images per random network (2 by default, as in the
        reference). Images of a group share filters, biases and noise.
      channels: width of the layers up to 64x64.
      max_noise: noise strength is U(0, max_noise) per image and layer.
      network_resolution: run the network at this power of two (>= the
        default) and shrink its output to `resolution`.

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"Expected group_size={group_size!r} to be an integer >= 1.")
    gen_res = _stylegan_gen_res(resolution, network_resolution)
    stylegan_widths(gen_res, channels)  # validates channels
    imgs = _stylegan_core(key, batch_size, gen_res, group_size, channels, max_noise)
    if gen_res != resolution:
        imgs = _resize(imgs, resolution)
    return imgs


@functools.partial(jax.jit, static_argnames=("resolution",))
def _resize(imgs: jax.Array, resolution: int) -> jax.Array:
    shape = (imgs.shape[0], resolution, resolution, imgs.shape[-1])
    return _finish(jax.image.resize(imgs, shape, "linear"))  # antialiased when shrinking


_MAX_ACTIVATION_ELEMENTS = 2 ** 26  # per chunk of images: 256 MiB in float32


@functools.partial(jax.jit, static_argnames=("batch_size", "gen_res", "group_size", "channels"))
def _stylegan_core(key: jax.Array, batch_size: int, gen_res: int, group_size: int,
                   channels: int, max_noise: float) -> jax.Array:
    """`stylegan_oriented` at its network resolution `gen_res`, a power of two."""
    widths = stylegan_widths(gen_res, channels)
    res_list = sorted(widths)
    convs = [(4, widths[4], widths[4])]  # (resolution, in channels, out channels)
    for lo, hi in zip(res_list[:-1], res_list[1:]):
        convs += [(hi, widths[lo], widths[hi]), (hi, widths[hi], widths[hi])]
    n_conv, n_rgb = len(convs), len(res_list)
    # Images run in n_chunks sequential chunks of `chunk` (padding included); the largest
    # temporaries hold about 64 floats per pixel of the last layer.
    max_chunk = max(1, _MAX_ACTIVATION_ELEMENTS // (64 * gen_res ** 2))
    n_chunks = -(-batch_size // max_chunk)
    chunk = -(-batch_size // n_chunks)
    total = n_chunks * chunk
    n_groups = -(-total // group_size)
    group_of = jnp.arange(total) // group_size
    k_net, k_group, k_img = jax.random.split(key, 3)
    # All layers are drawn at the widest width `cmax` in one piece each, channels beyond
    # a layer's width masked to zero (far fewer ops to compile than a piece per layer).
    cmax, n_layers = max(widths.values()), n_conv + n_rgb
    in_mask = np.arange(cmax)[None, :] < np.array([cin for _, cin, _ in convs])[:, None]
    # ToRGB weight N(0, 1) times StyleGAN2's weight gain 1/√C, zero beyond the width C.
    rgb_mask = np.stack([(np.arange(cmax) < widths[r]) / np.sqrt(widths[r])
                         for r in res_list]).astype(np.float32)

    # Per call: what StyleGAN2 would learn (style affines, constant input).
    net = _Draws(k_net, const=(4, 4, widths[4]), affine=(n_layers, _W_DIM, cmax))
    # Per group g (from key and g only): the network's filters, signs, biases, ToRGB
    # weights and noise map.
    grp = _Draws(_fold_in_range(k_group, n_groups), batched=True, order=(n_conv, 40),
                 n=(n_conv, 1), pick=(n_conv, cmax), sign=(n_conv, cmax), bias=(n_conv, cmax),
                 rgb=(n_rgb, cmax, 3), alpha=(), phase=(gen_res, gen_res), envelope=(4, 4))
    # Per image i (from key and i only): latents, noise strengths, colour statistics.
    img = _Draws(_fold_in_range(k_img, total), batched=True, ws=(n_layers, _W_DIM),
                 strength=(n_conv,), mean=(3,), std=(3,))
    ws = jax.nn.leaky_relu(img.normal("ws"), 0.2)
    styles = jnp.einsum("tlw,lwc->tlc", ws, net.normal("affine") / math.sqrt(_W_DIM)) + 1.0

    # Filters: each input channel's from the first n ~ U{5..40} of a random order of the bank.
    pick = grp.integers("pick", 0, grp.integers("n", 5, 41))  # (groups, layers, cmax)
    filters = jnp.asarray(_FILTER_BANK)[
        jnp.take_along_axis(grp.permutation("order"), pick, axis=-1)]  # (.., cmax, 9)
    weight = styles[:, :n_conv, :, None] * filters[group_of] * in_mask[None, :, :, None]
    demod = jax.lax.rsqrt(jnp.sum(weight ** 2, axis=(2, 3)) + 1e-8)  # (total, layers)
    # Each conv's output channels sorted by their knot, -bias (for `_relu_contract`).
    knots = -grp.uniform("bias", -0.2, 0.2)  # (groups, n_conv, cmax)
    by_knot = jnp.argsort(knots, axis=-1)
    conv_w = weight * demod[:, :, None, None]  # (total, n_conv, cmax, 9)
    rgb_w = styles[:, n_conv:, :, None] * grp.normal("rgb")[group_of] * rgb_mask[:, :, None]
    # Who reads conv i's output channels: conv i + 1 (9 taps; none after the last) and,
    # for the last conv of block j (i = 2j), ToRGB j (3 columns).
    next_w = jnp.concatenate([conv_w[:, 1:], jnp.zeros_like(conv_w[:, :1])], axis=1)
    rgb_cols = jnp.zeros(conv_w.shape[:3] + (3,)).at[:, 0::2].set(rgb_w)
    readers = jnp.concatenate([next_w, rgb_cols], axis=-1)  # (total, n_conv, cmax, 12)
    readers = jnp.take_along_axis(readers, by_knot[group_of][..., None], axis=2)
    knots = jnp.take_along_axis(knots, by_knot, -1)[group_of]
    sign = jnp.take_along_axis(grp.sign("sign"), by_knot, -1)[group_of]
    # Everything per image (leading axis `total`), to be cut into chunks.
    per_image = dict(first_w=conv_w[:, 0, :widths[4]], knots=knots,
                     tables=_prefix_tables(knots, sign, readers),  # (.., cmax + 1, 48)
                     strength=img.uniform("strength", 0.0, max_noise), noise={})
    # One pink-noise map per group, box-downsampled to each resolution.
    envelope = jax.vmap(lambda e: jax.image.resize(e, (gen_res, gen_res), "lanczos3"))(
        _laplace(grp.uniform("envelope")))
    noise = jax.vmap(_pink_noise)(grp.uniform("phase", 0.0, 2 * jnp.pi),
                                  grp.uniform("alpha", 0.5, 1.5), envelope)
    for r in reversed(res_list):
        per_image["noise"][r] = noise[group_of]
        noise = noise.reshape(n_groups, r // 2, 2, r // 2, 2).mean((2, 4)) if r > 4 else noise
    const = net.normal("const")

    def synthesize(p):
        def read(m, i):  # conv i's map -> its readers' (B, H, W, 12): 9 taps and RGB
            noise_ = p["strength"][:, i, None, None] * p["noise"][convs[i][0]]
            return _relu_contract(m, noise_, p["knots"][:, i], p["tables"][:, i])

        m = _taps(jnp.einsum("hwc,bck->bhwk", const, p["first_w"]), up=False)  # conv 0
        out = None
        for j in range(n_rgb):  # block j ends with conv 2j
            planes = read(m, 2 * j)
            rgb = planes[..., 9:]
            out = rgb if out is None else _upsample2x(out) + rgb
            if j < n_rgb - 1:
                m = _taps(planes[..., :9], up=True)  # conv 2j + 1, upsampling
                m = _taps(read(m, 2 * j + 1)[..., :9], up=False)  # conv 2j + 2
        return out

    if n_chunks == 1:
        out = synthesize(per_image)
    else:
        chunks = jax.tree.map(lambda a: a.reshape((n_chunks, chunk) + a.shape[1:]), per_image)
        out = jax.lax.map(synthesize, chunks).reshape((total, gen_res, gen_res, 3))
    out = out[:batch_size]
    out = (out - out.mean(axis=(1, 2), keepdims=True)) / (out.std(axis=(1, 2), keepdims=True)
                                                           + 1e-8)
    mean = jnp.asarray(_RGB_MEAN_MU) + jnp.asarray(_RGB_MEAN_SD) * img.normal("mean")
    std = jnp.abs(jnp.asarray(_RGB_STD_MU) + jnp.asarray(_RGB_STD_SD) * img.normal("std"))
    return _finish(out * std[:batch_size, None, None, :] + mean[:batch_size, None, None, :])


# --------------------------------------------------------------------------- dead leaves


def _dead_leaves_labels(key: jax.Array, batch_size: int, resolution: int, num_shapes: int,
                        shape: str, r_min: float, r_max: float):
    """Front-to-back painting. Returns (labels (B, H, W) int32, colours (B, N + 1, 3)).

    labels[b, y, x] is the index of the front-most shape covering the pixel,
    N = num_shapes (the background layer) where none does.
    """
    if shape != "mixed" and shape not in DEAD_LEAVES_SHAPES:
        raise ConfigError(f"Expected shape={shape!r} to be 'mixed' or one of "
                          f"{DEAD_LEAVES_SHAPES}.")
    if not 0 < r_min <= r_max:
        raise ConfigError(f"Expected 0 < r_min={r_min} <= r_max={r_max}.")
    if not isinstance(num_shapes, int) or num_shapes < 0:
        raise ConfigError(f"Expected num_shapes={num_shapes!r} to be an integer >= 0.")
    b, n = batch_size, num_shapes
    # Shapes per step of the scan: bounds the (B, chunk, H, W) temporaries where XLA
    # does not fuse the reduction (CPU); a GPU fuses it whatever the chunk.
    chunk = max(1, min(64, 2 ** 16 // resolution ** 2, n))
    n_pad = -(-n // chunk) * chunk
    d = _Draws(key, kind=(b, n_pad), radius=(b, n_pad), centre=(b, n_pad, 2), theta=(b, n_pad),
               half=(b, n_pad), angles=(b, n_pad, 4), colours=(b, n + 1, 3))
    if shape == "mixed":
        kind = d.integers("kind", 0, len(DEAD_LEAVES_SHAPES))
    else:
        kind = jnp.full((b, n_pad), DEAD_LEAVES_SHAPES.index(shape))
    # Inverse CDF of p(r) ∝ r^-3 on [r_min, r_max], in pixels.
    u = d.uniform("radius")
    radius = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5 * resolution
    radius = jnp.where(jnp.arange(n_pad) < n, radius, -1.0)  # padding shapes cover nothing
    centre = d.uniform("centre", 0.0, resolution)
    # Every shape but the circle is a convex polygon inscribed in the circle of radius r,
    # given by 4 vertex angles in counter-clockwise order (a triangle repeats one).
    quarter = jnp.pi / 2 * jnp.arange(4)
    theta = jnp.where(kind == 2, d.uniform("theta", 0.0, 2 * jnp.pi), 0.0)[..., None]
    square = theta + jnp.pi / 4 + quarter  # half side r/√2; kind 2 rotated
    a = d.uniform("half", 0.0, jnp.pi / 2)[..., None]  # half sides r·cos a, r·sin a
    rectangle = jnp.concatenate([a, jnp.pi - a, jnp.pi + a, 2 * jnp.pi - a], axis=-1)
    polygon = jnp.sort(d.uniform("angles", 0.0, 2 * jnp.pi), axis=-1)
    triangle = polygon.at[..., 3].set(polygon[..., 2])
    k = kind[..., None]
    angles = jnp.where(k <= 2, square, jnp.where(k == 3, rectangle,
                                                 jnp.where(k == 4, triangle, polygon)))
    vx = centre[..., 0:1] + radius[..., None] * jnp.cos(angles)  # (B, N, 4)
    vy = centre[..., 1:2] + radius[..., None] * jnp.sin(angles)
    ex, ey = jnp.roll(vx, -1, axis=-1) - vx, jnp.roll(vy, -1, axis=-1) - vy
    # Inside edge e: ex·(py - vy) - ey·(px - vx) >= 0; circles get always-true edges.
    is_circle = (kind == 0)[..., None]
    ea = jnp.where(is_circle, 0.0, -ey)
    eb = jnp.where(is_circle, 0.0, ex)
    ec = jnp.where(is_circle, 1.0, ey * vx - ex * vy)
    r2 = jnp.where(radius > 0, radius ** 2, -1.0)

    coords = jnp.arange(resolution, dtype=jnp.float32) + 0.5

    def to_chunks(x):  # (B, N_pad, ...) -> (N_pad / chunk, B, chunk, ...)
        x = x.reshape((b, n_pad // chunk, chunk) + x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def paint(labels, xs):
        index, cx, cy, rr, ea_, eb_, ec_ = xs
        px = coords[None, None, None, :]  # (1, 1, 1, W)
        py = coords[None, None, :, None]  # (1, 1, H, 1)
        inside = ((px - cx[..., None, None]) ** 2 + (py - cy[..., None, None]) ** 2
                  <= rr[..., None, None])
        for e in range(4):
            inside &= (ea_[..., e, None, None] * px + eb_[..., e, None, None] * py
                       + ec_[..., e, None, None] >= 0)
        front = jnp.min(jnp.where(inside, index[:, :, None, None], n), axis=1)
        return jnp.minimum(labels, front), None

    index = jnp.broadcast_to(jnp.arange(n_pad, dtype=jnp.int32), (b, n_pad))
    labels0 = jnp.full((b, resolution, resolution), n, jnp.int32)
    if n == 0:
        return labels0, d.uniform("colours")
    labels, _ = jax.lax.scan(paint, labels0, tuple(to_chunks(x) for x in (
        index, centre[..., 0], centre[..., 1], r2, ea, eb, ec)))
    return labels, d.uniform("colours")


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "num_shapes", "shape",
                                             "r_min", "r_max"))
def dead_leaves_layers(key: jax.Array, batch_size: int, resolution: int, *,
                       num_shapes: int = 1024, shape: str = "mixed", r_min: float = 0.03,
                       r_max: float = 1.0) -> jax.Array:
    """Which layer paints each pixel of `dead_leaves` (same key and options).

    Returns int32 (batch_size, resolution, resolution): the index in
    [0, num_shapes) of the front-most shape covering the pixel, or
    `num_shapes` where only the background layer does. Every pixel gets a
    layer: that is the coverage guarantee. `layers < num_shapes` is the
    coverage by the shapes alone.
    """
    _check_shape_args(batch_size, resolution)
    labels, _ = _dead_leaves_labels(key, batch_size, resolution, num_shapes, shape, r_min, r_max)
    return labels


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "num_shapes", "shape",
                                             "r_min", "r_max"))
def dead_leaves(key: jax.Array, batch_size: int, resolution: int, *, num_shapes: int = 1024,
                shape: str = "mixed", r_min: float = 0.03, r_max: float = 1.0) -> jax.Array:
    """Dead-leaves images (Baradad et al. 2021, after Lee, Mumford & Huang 2001).

    Shapes of radius r·resolution with p(r) ∝ r^-3 on [r_min, r_max], centre
    uniform in the image and a uniform RGB colour, painted front to back: a
    pixel takes the colour of the first shape that covers it. `shape` is one
    of `DEAD_LEAVES_SHAPES` or "mixed" (uniform per shape). As in the
    reference code, all shapes but the circle are inscribed in the circle of
    radius r: an axis-aligned square (half side r/√2); a square rotated by
    U(0, 2π); an axis-aligned rectangle with half sides r·cos a, r·sin a,
    a ~ U(0, π/2); a triangle and a quadrilateral with vertices at uniform
    angles on the circle.

    Coverage. Baradad et al. paint until every pixel is covered, an
    unbounded loop. Here a fixed `num_shapes` layers are painted (static
    shapes, jittable) and one more layer, a uniform random colour under
    everything, covers whatever they leave, so every pixel is covered by
    construction (`dead_leaves_layers` returns the layer map). It acts as
    one more, infinitely large leaf at the back. With the default 1024
    shapes the shapes alone cover 99.94% of the pixels (measured at 32 and
    224 px; 99.5% in the corners, which fewer shapes reach; 98% with 512
    shapes, 88% with 256), so the background shows only in rare specks;
    raise `num_shapes` to shrink them, at a proportional cost. The painting
    is a min-reduction over the shapes, in chunks (no sequential loop over
    single shapes).

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    labels, colours = _dead_leaves_labels(key, batch_size, resolution, num_shapes, shape,
                                          r_min, r_max)
    return _finish(jax.vmap(lambda c, lab: c[lab])(colours, labels))


# --------------------------------------------------------------------------- spectrum


def _random_rotation(q: jax.Array) -> jax.Array:
    """A uniformly random 3x3 rotation from 4 standard normals (a random unit quaternion)."""
    w, x, y, z = q / jnp.linalg.norm(q)
    return jnp.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def spectrum(key: jax.Array, batch_size: int, resolution: int, *,
             s_range: tuple[float, float] = (0.5, 3.5), s_jitter: float = 0.05,
             colour_offset: float = 1.0) -> jax.Array:
    """Random-phase images with a power-law spectrum (Baradad et al. 2021).

    Amplitude 1/(|fx|^sx + |fy|^sy) (zero at DC) with s ~ U(s_range) per
    image and sx, sy = s ± δ, δ ~ N(0, s_jitter²); its radially averaged
    power falls as f^(-2s) when sx = sy = s. Three fields with independent
    uniform phases share the amplitude; as in the reference, they are
    standardised, mixed by a random rotation of colour space, offset by a
    random mean colour (U(-colour_offset, colour_offset) per channel, in
    units of the fields' std) and the whole image is stretched to [0, 1]
    (min to 0, max to 1).

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    _check_range("s_range", s_range, 0.0, 10.0)
    for name, value in (("s_jitter", s_jitter), ("colour_offset", colour_offset)):
        if not 0.0 <= value <= 10.0:
            raise ConfigError(f"Expected {name}={value!r} in [0, 10].")
    return _spectrum_core(key, batch_size, resolution, tuple(map(float, s_range)),
                          float(s_jitter), float(colour_offset))


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution"))
def _spectrum_core(key: jax.Array, batch_size: int, resolution: int,
                   s_range: tuple[float, float], s_jitter: float,
                   colour_offset: float) -> jax.Array:
    f = jnp.fft.fftfreq(resolution)
    afx, afy = jnp.abs(f)[None, :], jnp.abs(f)[:, None]
    dc = (afx == 0) & (afy == 0)

    def one(k):
        d = _Draws(k, s=(), delta=(), phase=(3, resolution, resolution), rot=(4,), mean=(3,))
        s = d.uniform("s", s_range[0], s_range[1])
        delta = s_jitter * d.normal("delta")
        denom = jnp.power(afx, s + delta) + jnp.power(afy, s - delta)
        amp = jnp.where(dc, 0.0, 1.0 / jnp.where(dc, 1.0, denom))
        phase = d.uniform("phase", 0.0, 2 * jnp.pi)
        fields = jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * phase)))  # (3, H, W)
        fields = fields / (fields.std(axis=(1, 2), keepdims=True) + 1e-12)
        x = jnp.einsum("chw,cd->hwd", fields, _random_rotation(d.normal("rot")))
        x = x + d.uniform("mean", -colour_offset, colour_offset)
        return (x - x.min()) / (x.max() - x.min() + 1e-12)

    return _finish(jax.vmap(one)(jax.random.split(key, batch_size)))

# --------------------------------------------------------------------------- CPPN


def cppn(key: jax.Array, batch_size: int, resolution: int, *, hidden: int = 16,
         depth: int = 4, zoom: tuple[float, float] = (0.5, 8.0)) -> jax.Array:
    """Random procedural images: a random CPPN over pixel coordinates.

    A stand-in for the procedural programs of Shaders21k (Baradad et al.
    2022), which run real GLSL and cannot run in JAX. Each image gets its own
    random MLP (Stanley 2007's compositional pattern-producing network) from
    (x, y, r) to RGB: coordinates in [-1, 1] scaled by a log-uniform zoom in
    `zoom` (small: smooth gradients; large: many repetitions) and shifted by
    U(-0.5, 0.5); `depth` hidden layers of `hidden` units, weights
    N(0, g²/fan_in) with gain g ~ U(1, 4) per layer, biases N(0, 1), and an
    activation per unit drawn from sin, tanh and a Gaussian exp(-h²); a
    sigmoid output layer, then each channel is stretched to its own random
    range, at least 0.5 wide, inside [0, 1].

    Returns:
      float32 (batch_size, resolution, resolution, 3) in [0, 1].
    """
    _check_shape_args(batch_size, resolution)
    for name, value in (("hidden", hidden), ("depth", depth)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"Expected {name}={value!r} to be an integer >= 1.")
    _check_range("zoom", zoom, 1e-3, 1e3)
    return _cppn_core(key, batch_size, resolution, hidden, depth, tuple(map(float, zoom)))


@functools.partial(jax.jit, static_argnames=("batch_size", "resolution", "hidden", "depth"))
def _cppn_core(key: jax.Array, batch_size: int, resolution: int, hidden: int, depth: int,
               zoom: tuple[float, float]) -> jax.Array:
    t = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution * 2 - 1
    yy, xx = jnp.meshgrid(t, t, indexing="ij")

    def one(k):
        d = _Draws(k, zoom=(), shift=(2,), weights=(depth, max(hidden, 3), hidden),
                   biases=(depth, hidden), gains=(depth,), acts=(depth, hidden),
                   w_out=(hidden, 3), ends=(2, 3))
        zoom_ = jnp.exp(d.uniform("zoom", jnp.log(zoom[0]), jnp.log(zoom[1])))
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
        ends = ends.at[0].set(ends[0] * 0.5)
        ends = ends.at[1].set(jnp.maximum(ends[1], ends[0] + 0.5))
        return ends[0] + rgb * (ends[1] - ends[0])

    return _finish(jax.vmap(one)(jax.random.split(key, batch_size)))


# --------------------------------------------------------------------------- mixed


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
    Not jitted as a whole: the families' own jitted functions run (and are
    compiled) as when called alone, and under an outer `jax.jit` it all
    traces into one computation.

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

    counts = [batch_size // len(families) + (i < batch_size % len(families))
              for i in range(len(families))]

    def draw(k):
        k_fam = jax.random.split(k, len(families))
        return [_FAMILY_FNS[f](kf, c, resolution)
                for f, kf, c in zip(families, k_fam, counts) if c > 0]

    k_a, k_b, k_mix = jax.random.split(key, 3)
    return _mix(k_mix, draw(k_a), draw(k_b) if mixup_prob > 0 else None, mixup_prob)


@functools.partial(jax.jit, static_argnames=("mixup_prob",))
def _mix(key: jax.Array, parts: list[jax.Array], others: list[jax.Array] | None,
         mixup_prob: float) -> jax.Array:
    """Shuffle the families' images together; mix up with `others`, shuffled apart."""
    n = sum(p.shape[0] for p in parts)
    d = _Draws(key, order=(n,), other_order=(n,), lam=(n, 1, 1, 1), mix=(n, 1, 1, 1))
    out = jnp.concatenate(parts)[d.permutation("order")]
    if others is not None:  # a second shuffle, so that families mix with each other
        lam = jnp.where(d.uniform("mix") < mixup_prob, d.uniform("lam"), 1.0)
        out = lam * out + (1 - lam) * jnp.concatenate(others)[d.permutation("other_order")]
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
