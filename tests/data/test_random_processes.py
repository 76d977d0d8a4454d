"""Tests for dpjax/data/random_processes.py (small: 32 px, batch 8).

Compiles dominate the run time on a CPU, so each family's batches are made
once per test process (`_batches`) and the other tests reuse those shapes
wherever they can.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.data import random_processes as rp
from dpjax.errors import ConfigError

RES, BATCH = 32, 8


@functools.cache
def _batches(family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key 0, key 0 again, key 1) for one family at the default options."""
    return tuple(np.asarray(rp.generate(jax.random.key(k), family, BATCH, RES))
                 for k in (0, 0, 1))


@pytest.mark.parametrize("family", rp.FAMILIES)
def test_family_basic_properties(family):
    a, b, c = _batches(family)
    assert a.shape == (BATCH, RES, RES, 3)
    assert a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.all(a.std(axis=(1, 2, 3)) > 1e-3), "an image is constant"
    np.testing.assert_array_equal(a, b)  # same key, same images
    assert np.abs(a - c).mean() > 1e-2  # another key, other images
    diffs = np.abs(a[:, None] - a[None]).mean(axis=(2, 3, 4))
    assert np.all(diffs[~np.eye(BATCH, dtype=bool)] > 1e-3)  # images in a batch differ


def _radial_slope(x: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of grey images."""
    g = x.mean(-1)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    res = g.shape[1]
    power = (np.abs(np.fft.fft2(g)) ** 2).mean(0)
    f = np.fft.fftfreq(res)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    centres = np.arange(2, res // 2) / res
    idx = np.digitize(radius, centres - 0.5 / res)
    radial = np.array([power[idx == i].mean() for i in range(1, len(centres))])
    return float(np.polyfit(np.log(centres[:-1]), np.log(radial), 1)[0])


@pytest.mark.parametrize("s", [1.0, 2.0, 3.0])
def test_spectrum_slope_is_minus_two_s(s):
    # s_range is traced, not static: the three exponents share one compile.
    x = np.asarray(rp.spectrum(jax.random.key(2), BATCH, 64, s_range=(s, s), s_jitter=0.0))
    assert abs(_radial_slope(x) - (-2 * s)) < 0.25


def test_dead_leaves_covers_every_pixel():
    layers = np.asarray(rp.dead_leaves_layers(jax.random.key(0), BATCH, RES))
    assert layers.shape == (BATCH, RES, RES)
    # Every pixel has a layer: a shape in [0, 1024) or the background 1024.
    assert layers.min() >= 0 and layers.max() <= 1024
    assert (layers < 1024).mean() > 0.99  # the shapes alone cover almost everything
    # With no shapes the background layer alone covers everything, in one colour.
    x = np.asarray(rp.dead_leaves(jax.random.key(0), 2, RES, num_shapes=0))
    assert np.all(np.ptp(x, axis=(1, 2)) == 0)


def test_dead_leaves_image_matches_layers():
    x = _batches("dead_leaves")[0]
    layers = np.asarray(rp.dead_leaves_layers(jax.random.key(0), BATCH, RES))
    for i in range(2):  # one flat colour per layer
        for layer in np.unique(layers[i]):
            colours = x[i][layers[i] == layer]
            assert np.allclose(colours, colours[0])
        assert len(np.unique(layers[i])) > 10  # many shapes are visible


def test_dead_leaves_single_shapes():
    for shape in ("circle", "triangle"):
        x = np.asarray(rp.dead_leaves(jax.random.key(3), 2, 16, num_shapes=64, shape=shape))
        assert x.shape == (2, 16, 16, 3) and np.all(x.std(axis=(1, 2, 3)) > 1e-3)


# 28 px runs the 32 px network and resizes (batch 2 at 32 px is also what `mixed` asks of
# stylegan_oriented at batch 8: one compile). 48 px runs a 128 px network here, to cover
# `network_resolution` and the width halving above 64 px (64 channels, then 32) in one
# compile; 224 px (a 256 px network) is left to benchmarks/random_processes_speed.py.
@pytest.mark.parametrize("resolution,batch,options", [
    (28, 2, {}), (48, 2, {"network_resolution": 128, "channels": 64})])
def test_stylegan_other_resolutions(resolution, batch, options):
    x = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", batch, resolution,
                               **options))
    assert x.shape == (batch, resolution, resolution, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and np.all(x.std(axis=(1, 2, 3)) > 1e-3)


def test_stylegan_fresh_network_per_group():
    # Image i's latents and colour statistics depend only on (key, i), group g's network
    # only on (key, g). With group_size=2 both images are group 0; with group_size=1
    # image 1 is group 1: same latents, a fresh network.
    one_group = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", 2, RES))
    two_groups = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", 2, RES,
                                        group_size=1))
    np.testing.assert_allclose(one_group[0], two_groups[0], atol=1e-5)
    assert np.abs(one_group[1] - two_groups[1]).mean() > 5e-2
    # The fresh network changes the structure: the two versions of image 1 are far less
    # alike than the same image under the same network.
    def grad(x):
        g = np.diff(x.mean(-1), axis=0).ravel()
        return (g - g.mean()) / g.std()
    assert abs(np.mean(grad(one_group[1]) * grad(two_groups[1]))) < 0.5


def test_rank_one_layer_equals_dense_modulated_conv():
    # Filters per input channel and a scale per output channel: after demodulation
    # every output channel of the dense modulated conv is ±(the one map `_taps` makes).
    rng = np.random.default_rng(4)
    b, h, cin, cout = 2, 6, 5, 7
    x = rng.normal(size=(b, h, h, cin)).astype(np.float32)
    filters = rp.oriented_filter_bank()[[0, 9, 17, 25, 38]]  # (cin, 3, 3)
    styles = 1.0 + 0.7 * rng.normal(size=(b, cin))
    scales = rng.normal(size=cout)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    dense = np.zeros((b, h, h, cout))
    for i in range(b):  # weight[o, c] = scale_o · style_c · filter_c, then demodulated
        w = scales[:, None, None, None] * styles[i][None, :, None, None] * filters[None]
        w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True))
        for dy in range(3):
            for dx in range(3):
                dense[i] += padded[i, dy:dy + h, dx:dx + h] @ w[:, :, dy, dx].T
    taps = styles[:, :, None] * filters.reshape(cin, 9)[None]  # (b, cin, 9)
    taps = taps / np.sqrt((taps ** 2).sum(axis=(1, 2), keepdims=True))
    m = np.asarray(rp._taps(jnp.asarray(np.einsum("bhwc,bck->bhwk", x, taps),
                                        dtype=jnp.float32), up=False))
    np.testing.assert_allclose(dense, np.sign(scales) * m[..., None], atol=1e-5)


def test_relu_contract_equals_dense():
    rng = np.random.default_rng(5)
    b, h, w, c, k = 2, 4, 5, 37, 6
    m, e = rng.normal(size=(2, b, h, w)) * np.array([1.0, 0.3])[:, None, None, None]
    knots = np.sort(rng.uniform(-0.2, 0.2, size=(b, c)), axis=-1)
    sign = rng.choice([-1.0, 1.0], size=(b, c))
    weight = rng.normal(size=(b, c, k))
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    fast = jax.jit(lambda *a: rp._relu_contract(*a[:3], rp._prefix_tables(*a[2:])))(
        *map(f32, (m, e, knots, sign, weight)))
    act = np.sqrt(2) * np.maximum(0.0, sign[:, None, None] * m[..., None] + e[..., None]
                                  - knots[:, None, None])
    np.testing.assert_allclose(fast, np.einsum("bhwc,bck->bhwk", act, weight), atol=1e-4)


def test_oriented_filter_bank():
    bank = rp.oriented_filter_bank()
    assert bank.shape == (40, 3, 3)
    np.testing.assert_array_equal(bank[20:], -bank[:20])  # the negatives
    np.testing.assert_allclose(bank[:16].sum(axis=(1, 2)), 0.0, atol=1e-6)  # edges, lines
    np.testing.assert_array_equal(bank[0], [[1, 0, -1]] * 3)  # vertical step edge
    np.testing.assert_array_equal(bank[4], np.array([[-1, 0, 1]] * 3).T)  # turned by 90°
    np.testing.assert_allclose(bank[8], [[2 / 3, -4 / 3, 2 / 3]] * 3, rtol=1e-6)  # thin line
    assert len({tuple(f.ravel()) for f in bank}) == 40


def test_stylegan_widths():
    assert rp.stylegan_widths(32) == {4: 512, 8: 512, 16: 512, 32: 512}
    assert rp.stylegan_widths(224) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256,
                                       256: 128}  # StyleGAN2's schedule
    assert rp.stylegan_widths(48, channels=64)[64] == 64


def test_generate_under_jit():
    # Inside an outer jit the generators trace into the caller's computation (as in
    # Phase I's jitted step); one family is enough to check it, the cheapest to compile.
    jitted = jax.jit(lambda k: rp.generate(k, "dead_leaves", BATCH, RES))
    np.testing.assert_array_equal(np.asarray(jitted(jax.random.key(0))),
                                  _batches("dead_leaves")[0])


def test_mixed_with_mixup():
    kwargs = dict(families=["spectrum", "dead_leaves"], mixup_prob=1.0)
    x = np.asarray(rp.generate(jax.random.key(0), "mixed", BATCH, RES, **kwargs))
    assert x.shape == (BATCH, RES, RES, 3) and x.min() >= 0.0 and x.max() <= 1.0
    pure = np.asarray(rp.generate(jax.random.key(0), "mixed", BATCH, RES,
                                  families=["spectrum", "dead_leaves"]))
    assert np.abs(x - pure).mean() > 1e-2  # mixing changed the images


def test_bad_arguments():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="family='noise'.*stylegan_oriented"):
        rp.generate(key, "noise", BATCH, RES)
    with pytest.raises(ConfigError, match="group_sze"):
        rp.generate(key, "stylegan_oriented", BATCH, RES, group_sze=4)
    with pytest.raises(ConfigError, match="resolution"):
        rp.generate(key, "spectrum", BATCH, 2)
    with pytest.raises(ConfigError, match="network_resolution"):
        rp.generate(key, "stylegan_oriented", BATCH, RES, network_resolution=48)
    with pytest.raises(ConfigError, match="s_range"):
        rp.generate(key, "spectrum", BATCH, RES, s_range=(3.0, 1.0))
    with pytest.raises(ConfigError, match="shape='hexagon'"):
        rp.generate(key, "dead_leaves", BATCH, RES, shape="hexagon")


def test_sample_grid(tmp_path):
    grid = rp.sample_grid(jax.random.key(0), ("dead_leaves", "spectrum"), 3, 8, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    rp.save_grid_png(str(tmp_path / "grid.png"), grid)
    assert (tmp_path / "grid.png").stat().st_size > 0
