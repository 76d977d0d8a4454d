"""Local DP by the Laplace mechanism: per-value independence, ε, determinism, cache."""

import doctest
import math
import os

import dp_accounting
import numpy as np
import pytest
from PIL import Image

from dpjax.errors import ConfigError
from dpjax.privacy import ldp


def _mid_grey(n=64, h=16, w=16, c=3):
    return np.full((n, h, w, c), 128, np.uint8)


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_noise_is_independent_per_value():
    # Small β on mid-grey: clipping is rare (P(|L| > 0.5) = e^-10 at β = 0.05).
    images = _mid_grey()
    out = ldp.LaplaceMechanism(scale=0.05).perturb(images, seed=3)
    noise = out.astype(np.float64) - 128.0
    assert noise.std() > 5  # the noise is there (β·255·√2 ≈ 18)
    # One draw per image (the original code) would make all of these ≈ 1.
    assert abs(_corr(noise[:, :, :-1], noise[:, :, 1:])) < 0.05   # horizontal neighbours
    assert abs(_corr(noise[:, :-1], noise[:, 1:])) < 0.05         # vertical neighbours
    assert abs(_corr(noise[..., 0], noise[..., 1])) < 0.05        # channels
    assert abs(_corr(noise[..., 1], noise[..., 2])) < 0.05
    # Per-image mean shifts are tiny compared with the per-value spread.
    assert noise.mean(axis=(1, 2, 3)).std() < 0.1 * noise.std()
    # Spread of the noise actually added: Laplace std √2·β on [0, 1], i.e. √2·255·β
    # in uint8 steps (rounding adds variance 1/12 of a step, negligible here).
    assert noise.std() == pytest.approx(math.sqrt(2) * 255 * 0.05, rel=0.03)
    assert abs(noise.mean()) < 0.5


def test_independence_check_catches_one_draw_per_image():
    # Control: the original code's mechanism (one Laplace value per image, added to
    # every pixel) fails the independence check above, so that check has teeth.
    rng = np.random.default_rng(0)
    shift = ldp.laplace_noise(rng, (64, 1, 1, 1), 0.05)
    noise = np.broadcast_to(shift, _mid_grey().shape)
    assert _corr(noise[:, :, :-1], noise[:, :, 1:]) > 0.99
    assert _corr(noise[..., 0], noise[..., 1]) > 0.99


def test_laplace_noise_std():
    rng = np.random.default_rng(0)
    for beta in (0.5, 2.0):
        x = ldp.laplace_noise(rng, (400_000,), beta)
        assert x.dtype == np.float64
        assert abs(x.std() / (math.sqrt(2) * beta) - 1) < 0.02
        assert abs(x.mean()) < 0.02 * beta


def test_perturb_range_dtype_and_clipping():
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    out = ldp.LaplaceMechanism(scale=4.0).perturb(images, seed=0)
    assert out.dtype == np.uint8 and out.shape == images.shape
    # Large β: most values are clipped to 0 or 255.
    assert np.mean((out == 0) | (out == 255)) > 0.8


@pytest.mark.parametrize("beta,eps", [(1.0, 1.0), (2.0, 0.5), (4.0, 0.25)])
def test_epsilon_for_paper_scales(beta, eps):
    mech = ldp.LaplaceMechanism(scale=beta)
    assert mech.epsilon_per_value() == pytest.approx(eps)
    assert mech.epsilon_per_image(28 * 28) == pytest.approx(784 * eps)
    assert mech.epsilon_per_image(224 * 224 * 3) == pytest.approx(150528 * eps)
    assert mech.dp_event() == dp_accounting.LaplaceDpEvent(noise_multiplier=beta)


def test_dp_event_accounts_to_epsilon_per_value():
    from dp_accounting import pld

    mech = ldp.LaplaceMechanism(scale=2.0)
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(mech.dp_event())
    # Pure DP: δ vanishes at ε = Δ/β and not below it.
    assert acc.get_delta(0.5) < 1e-9
    assert acc.get_delta(0.45) > 1e-3
    assert acc.get_epsilon(1e-9) == pytest.approx(0.5, abs=1e-3)


def test_report():
    rep = ldp.ldp_report(ldp.LaplaceMechanism(scale=2.0), (224, 224, 3))
    assert rep["ldp_scale"] == 2.0
    assert rep["ldp_epsilon_per_pixel"] == pytest.approx(0.5)
    assert rep["ldp_values_per_image"] == 150528
    assert rep["ldp_epsilon_per_image"] == pytest.approx(75264)
    assert isinstance(rep["ldp_note"], str) and "75264" in rep["ldp_note"]
    assert ldp.ldp_report(ldp.LaplaceMechanism(1.0), (28, 28))["ldp_values_per_image"] == 784


def test_deterministic_from_seed():
    images = _mid_grey(4, 8, 8, 1)
    mech = ldp.LaplaceMechanism(scale=0.3)
    a, b = mech.perturb(images, 7), mech.perturb(images, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mech.perturb(images, 8))


def test_chunking_does_not_change_result(monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    mech = ldp.LaplaceMechanism(scale=0.2)
    full = mech.perturb(images, 11)
    monkeypatch.setattr(ldp, "_CHUNK_VALUES", 100)
    np.testing.assert_array_equal(full, mech.perturb(images, 11))


def test_cache_hit(tmp_path, monkeypatch):
    images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    mech = ldp.LaplaceMechanism(scale=1.0)
    first = ldp.perturb_dataset_cached(images, mech, 5, str(tmp_path / "cache"))
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].endswith(".npy")  # no temporary left behind
    np.testing.assert_array_equal(first, mech.perturb(images, 5))

    def fail(*args, **kwargs):
        raise AssertionError("perturb called despite a cache hit")

    monkeypatch.setattr(ldp.LaplaceMechanism, "perturb", fail)
    second = ldp.perturb_dataset_cached(images, mech, 5, str(tmp_path / "cache"))
    np.testing.assert_array_equal(first, second)
    # A different β, seed or data set is a different cache entry.
    monkeypatch.undo()
    ldp.perturb_dataset_cached(images, ldp.LaplaceMechanism(2.0), 5, str(tmp_path / "cache"))
    ldp.perturb_dataset_cached(images, mech, 6, str(tmp_path / "cache"))
    ldp.perturb_dataset_cached(images[:3], mech, 5, str(tmp_path / "cache"))
    assert len(os.listdir(tmp_path / "cache")) == 4


@pytest.mark.parametrize("field,kwargs", [
    ("ldp.scale", dict(scale=-1)),
    ("ldp.scale", dict(scale=0.0)),
    ("ldp.scale", dict(scale=float("inf"))),
    ("ldp.scale", dict(scale=float("nan"))),
    ("ldp.scale", dict(scale="1")),
    ("ldp.sensitivity", dict(scale=1.0, sensitivity=0)),
])
def test_validation(field, kwargs):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ldp.LaplaceMechanism(**kwargs)


def test_validation_message():
    with pytest.raises(ConfigError, match=r"Expected ldp\.scale=-1 > 0"):
        ldp.LaplaceMechanism(scale=-1)


def test_perturb_rejects_bad_input():
    mech = ldp.LaplaceMechanism(1.0)
    with pytest.raises(ValueError, match="uint8"):
        mech.perturb(np.zeros((2, 4, 4, 1), np.float32), 0)
    with pytest.raises(ConfigError, match="seed"):
        mech.perturb(np.zeros((2, 4, 4, 1), np.uint8), -1)
    with pytest.raises(ConfigError, match="num_values"):
        mech.epsilon_per_image(0)


def test_comparison_grid_and_png(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (3, 10, 12), dtype=np.uint8)
    grid = ldp.comparison_grid(images, [1.0, 2.0, 4.0], seed=0, pad=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (3 * 10 + 2 * 2, 4 * 12 + 3 * 2, 1)
    np.testing.assert_array_equal(grid[:10, :12, 0], images[0])       # original column
    np.testing.assert_array_equal(grid[12:22, :12, 0], images[1])
    np.testing.assert_array_equal(grid[:10, 14:26], ldp.LaplaceMechanism(1.0).perturb(
        images[..., None], 0)[0])
    path = tmp_path / "fig" / "ldp.png"
    ldp.save_png(str(path), grid)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, grid[..., 0])

    rgb = ldp.comparison_grid(np.zeros((2, 4, 4, 3), np.uint8), [1.0], seed=0)
    assert rgb.shape == (2 * 4 + 2, 2 * 4 + 2, 3)
    ldp.save_png(str(tmp_path / "rgb.png"), rgb)
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"


def test_docstring_examples():
    result = doctest.testmod(ldp, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
