"""Tests for dpjax/data/random_processes.py (small: 32 px, batch 8)."""

import jax
import numpy as np
import pytest

from dpjax.data import random_processes as rp
from dpjax.errors import ConfigError

RES, BATCH = 32, 8


@pytest.fixture(scope="module")
def batches():
    """Per family: (key 0, key 0 again, key 1), generated once for the module."""
    out = {}
    for family in rp.FAMILIES:
        a = np.asarray(rp.generate(jax.random.key(0), family, BATCH, RES))
        b = np.asarray(rp.generate(jax.random.key(0), family, BATCH, RES))
        c = np.asarray(rp.generate(jax.random.key(1), family, BATCH, RES))
        out[family] = (a, b, c)
    return out


@pytest.mark.parametrize("family", rp.FAMILIES)
def test_family_basic_properties(batches, family):
    a, b, c = batches[family]
    assert a.shape == (BATCH, RES, RES, 3)
    assert a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.all(a.std(axis=(1, 2, 3)) > 1e-3), "an image is constant"
    np.testing.assert_array_equal(a, b)  # same key, same images
    assert np.abs(a - c).mean() > 1e-2  # another key, other images
    assert np.abs(a[0] - a[1]).mean() > 1e-3  # images in a batch differ


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
    x = np.asarray(rp.spectrum(jax.random.key(2), BATCH, 64, s_range=(s, s), s_jitter=0.0,
                               contrast=(0.05, 0.05)))
    assert abs(_radial_slope(x) - (-2 * s)) < 0.25


def test_dead_leaves_covers_every_pixel():
    labels = np.asarray(rp.dead_leaves_layers(jax.random.key(0), BATCH, RES))
    assert labels.shape == (BATCH, RES, RES)
    assert labels.min() >= 0 and labels.max() <= 256  # 256 = the background layer
    assert (labels < 256).mean() > 0.9  # the shapes alone cover most of it
    # With no shapes the background layer alone covers everything.
    x = np.asarray(rp.dead_leaves(jax.random.key(0), 2, RES, num_shapes=0))
    assert np.all(np.ptp(x, axis=(1, 2)) == 0)


def test_dead_leaves_image_matches_layers():
    x = np.asarray(rp.dead_leaves(jax.random.key(0), BATCH, RES))
    labels = np.asarray(rp.dead_leaves_layers(jax.random.key(0), BATCH, RES))
    for i in range(2):  # one colour per layer
        for lab in np.unique(labels[i])[:10]:
            colours = x[i][labels[i] == lab]
            assert np.allclose(colours, colours[0])


# 28 px runs the 32 px network (same compiled core as the fixture), then resizes;
# 48 px runs a narrow 64 px network.
@pytest.mark.parametrize("resolution,batch,options", [(28, BATCH, {}), (48, 2, {"channels": 16})])
def test_stylegan_other_resolutions(resolution, batch, options):
    x = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", batch, resolution,
                               **options))
    assert x.shape == (batch, resolution, resolution, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and np.all(x.std(axis=(1, 2, 3)) > 1e-3)


def test_stylegan_widths():
    assert rp.stylegan_widths(32) == {4: 64, 8: 64, 16: 64, 32: 64}
    widths = rp.stylegan_widths(224)
    assert max(widths) == 256 and widths[32] == 128 and widths[256] == 16
    assert rp.oriented_filter_bank().shape == (40, 3, 3)


def test_stylegan_groups_get_different_networks(batches):
    # With group_size=8 all 8 images use network 0; with the default group_size=4,
    # images 0-3 keep network 0 and their latents (identical images), while 4-7
    # get network 1 with the same latents (different images).
    two_groups = batches["stylegan_oriented"][0]
    one_group = np.asarray(rp.generate(jax.random.key(0), "stylegan_oriented", BATCH, RES,
                                       group_size=8))
    np.testing.assert_allclose(two_groups[:4], one_group[:4], atol=1e-5)
    diff = np.abs(two_groups[4:] - one_group[4:]).mean(axis=(1, 2, 3))
    assert np.all(diff > 1e-2)


def test_generate_under_jit(batches):
    jitted = jax.jit(lambda k: rp.generate(k, "dead_leaves", BATCH, RES))
    np.testing.assert_array_equal(np.asarray(jitted(jax.random.key(0))),
                                  batches["dead_leaves"][0])


def test_mixed_with_mixup():
    x = np.asarray(rp.generate(jax.random.key(0), "mixed", BATCH, RES,
                               families=["spectrum"], mixup_prob=0.5))
    assert x.shape == (BATCH, RES, RES, 3) and x.min() >= 0.0 and x.max() <= 1.0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="family='noise'.*stylegan_oriented"):
        rp.generate(jax.random.key(0), "noise", BATCH, RES)
    with pytest.raises(ConfigError, match="group_sze"):
        rp.generate(jax.random.key(0), "stylegan_oriented", BATCH, RES, group_sze=4)
    with pytest.raises(ConfigError, match="resolution"):
        rp.generate(jax.random.key(0), "spectrum", BATCH, 2)


def test_sample_grid(tmp_path):
    grid = rp.sample_grid(jax.random.key(0), ("dead_leaves", "spectrum"), 3, 8, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    rp.save_grid_png(str(tmp_path / "grid.png"), grid)
    assert (tmp_path / "grid.png").stat().st_size > 0
