"""Tests for dpjax/data/random_processes.py (small: 32 px, batch 8).

Compiles dominate the run time on a CPU, so each family's batches are made
once per test process (`_batches`) and the other tests reuse those shapes
wherever they can.
"""

import functools

import jax
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


# 28 px runs the 32 px network (the compile of `_batches`) and resizes; 48 px runs a
# 64 px network; 224 px a 256 px network (narrow here to keep the test fast).
@pytest.mark.parametrize("resolution,batch,options", [
    (28, BATCH, {}), (48, 2, {}), (224, 1, {"channels": 16})])
def test_stylegan_other_resolutions(resolution, batch, options):
    x = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", batch, resolution,
                               **options))
    assert x.shape == (batch, resolution, resolution, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and np.all(x.std(axis=(1, 2, 3)) > 1e-3)


def test_stylegan_fresh_network_per_group():
    # Image i's latents depend only on (key, i) and group g's network only on (key, g).
    # group_size=2 (the fixture): images 2-3 are group 1. group_size=4: they join
    # group 0. Images 0-1 keep network and latents (identical); images 2-3 keep their
    # latents but get another network, so they change.
    two_per_group = _batches("stylegan_oriented")[0]
    four_per_group = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", BATCH, RES,
                                            group_size=4))
    np.testing.assert_allclose(two_per_group[:2], four_per_group[:2], atol=1e-5)
    diff = np.abs(two_per_group[2:4] - four_per_group[2:4]).mean(axis=(1, 2, 3))
    assert np.all(diff > 5e-2)
    # Colour statistics are per image: the two groups' images differ in their means.
    means = two_per_group.mean(axis=(1, 2))
    assert np.abs(means[:2].mean(0) - means[2:4].mean(0)).max() > 1e-2


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
    for family in ("dead_leaves", "spectrum"):
        jitted = jax.jit(lambda k, family=family: rp.generate(k, family, BATCH, RES))
        np.testing.assert_allclose(np.asarray(jitted(jax.random.key(0))),
                                   _batches(family)[0], atol=1e-6)


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
