"""Local DP by the Laplace mechanism: per-value independence, ε, OS entropy, the run's cache."""

import doctest
import json
import logging
import math
import os
import stat

import dp_accounting
import numpy as np
import pytest
from PIL import Image

from dpjax.data import sources
from dpjax.errors import ConfigError, DataError
from dpjax.privacy import ldp, randomness


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
    # Honest names: one stored value, one pixel of 3 values, one image of d values.
    assert rep["ldp_epsilon_per_value"] == pytest.approx(0.5)
    assert rep["ldp_epsilon_per_pixel"] == pytest.approx(1.5)
    assert rep["ldp_values_per_image"] == 150528 and rep["ldp_channels_perturbed"] == 3
    assert rep["ldp_epsilon_per_image"] == pytest.approx(75264)
    assert isinstance(rep["ldp_note"], str) and "75264" in rep["ldp_note"]
    # Labels are never perturbed, and the report says so in plain words.
    assert rep["ldp_labels_protected"] is False
    assert "not protected" in rep["ldp_labels_note"] and "not protected" in rep["ldp_note"]
    grey = ldp.ldp_report(ldp.LaplaceMechanism(1.0), (28, 28))
    assert grey["ldp_values_per_image"] == 784 and grey["ldp_epsilon_per_pixel"] == 1.0


def test_deterministic_from_seed():
    images = _mid_grey(4, 8, 8, 1)
    mech = ldp.LaplaceMechanism(scale=0.3)
    a, b = mech.perturb(images, 7), mech.perturb(images, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mech.perturb(images, 8))
    assert not np.array_equal(a, mech.perturb(images, 7, 1))  # another stream of the seed


def test_perturb_draws_from_the_ldp_stream_not_the_raw_seed():
    # The noise comes from randomness.numpy_rng(seed, "ldp"), never default_rng(seed):
    # a seed picked for another use (or by an auditor) does not reproduce it.
    images = _mid_grey(2, 8, 8, 1)
    mech = ldp.LaplaceMechanism(scale=0.05)
    out = mech.perturb(images, 7)
    expected = np.rint(np.clip(128 / 255 + ldp.laplace_noise(
        randomness.numpy_rng(7, "ldp"), images.shape, 0.05), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    raw = np.rint(np.clip(128 / 255 + ldp.laplace_noise(
        np.random.default_rng(7), images.shape, 0.05), 0, 1) * 255).astype(np.uint8)
    assert not np.array_equal(out, raw)


def test_chunking_does_not_change_result(monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    mech = ldp.LaplaceMechanism(scale=0.2)
    full = mech.perturb(images, 11)
    monkeypatch.setattr(ldp, "_CHUNK_VALUES", 100)
    np.testing.assert_array_equal(full, mech.perturb(images, 11))


# --- apply_local_dp: the run's perturbed training set --------------------------------

def _train_images(n=6, h=8, w=8, c=1, seed=2):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_config_defaults_to_os_entropy_and_has_no_cache_dir():
    from dpjax.config import base_config, validate

    config = base_config()
    assert config.ldp.seed == -1 and "cache_dir" not in config.ldp
    config.privacy.mode, config.ldp.scale = "none", 1.0
    validate(config)
    config.ldp.seed = 5  # a fixed seed: allowed (debugging)
    validate(config)
    config.ldp.seed = -2
    with pytest.raises(ConfigError, match=r"ldp\.seed"):
        validate(config)


def test_os_entropy_by_default_each_run_its_own_draw(tmp_path):
    images = _mid_grey(16, 32, 32, 1)  # 16k values: |corr| of independent draws ~0.008
    a, info_a = ldp.apply_local_dp(images, 0.05, -1, str(tmp_path / "a"))
    b, info_b = ldp.apply_local_dp(images, 0.05, -1, str(tmp_path / "b"))
    assert info_a["ldp_seed_source"] == info_b["ldp_seed_source"] == "os"
    assert "ldp_warning" not in info_a
    assert not np.array_equal(a, b)
    # Independent draws: the two runs' noise is uncorrelated (a shared draw gives 1).
    assert abs(_corr(a.astype(float) - 128, b.astype(float) - 128)) < 0.1


def test_two_scales_do_not_share_a_draw(tmp_path):
    # With a shared seed, 2·y1 − y2 = x for unclipped values (Laplace(2β) = 2·Laplace(β)):
    # the sweep's β columns must be independent draws.
    images = _mid_grey(16, 32, 32, 1)  # 16k values: |corr| of independent draws ~0.008
    y1, _ = ldp.apply_local_dp(images, 0.02, -1, str(tmp_path / "b1"))
    y2, _ = ldp.apply_local_dp(images, 0.04, -1, str(tmp_path / "b2"))
    n1, n2 = y1.astype(float) - 128, y2.astype(float) - 128
    assert abs(_corr(n1, n2)) < 0.1
    assert np.mean(np.abs(2 * y1.astype(float) - y2.astype(float) - 128)) > 5


def test_os_seed_is_used_and_never_written(tmp_path, monkeypatch, caplog):
    seed = 6_917_529_027_641_081_857  # recognisable in any text or byte dump
    monkeypatch.setattr(randomness, "os_seed", lambda: seed)
    images = _train_images()
    workdir = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        out, info = ldp.apply_local_dp(images, 0.5, -1, str(workdir))
    np.testing.assert_array_equal(out, ldp.LaplaceMechanism(0.5).perturb(images, seed))
    assert info["ldp_seed_source"] == "os"
    needles = [str(seed).encode(), seed.to_bytes(8, "little"), seed.to_bytes(8, "big"),
               hex(seed).encode()]
    assert not any(n in json.dumps(info).encode() for n in needles)
    assert not any(n in caplog.text.encode() for n in needles)
    for path in workdir.rglob("*"):
        if path.is_file():
            assert not any(n in path.read_bytes() for n in needles), path


def test_cached_in_the_workdir_and_reused_on_resume(tmp_path, monkeypatch):
    images = _train_images()
    workdir = tmp_path / "run"
    first, info = ldp.apply_local_dp(images, 1.0, -1, str(workdir))
    private = workdir / "private"
    assert sorted(os.listdir(private)) == ["ldp_train.npz"]  # no temporary left behind
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert "WORKDIR/private/ldp_train.npz" in info["ldp_training_set"]

    def fail(*args, **kwargs):
        raise AssertionError("perturbed again on resume")

    monkeypatch.setattr(ldp.LaplaceMechanism, "perturb", fail)
    # A resumed run draws a new OS seed, but trains on exactly the kept set.
    again, info_again = ldp.apply_local_dp(images, 1.0, -1, str(workdir))
    np.testing.assert_array_equal(first, again)
    assert info_again["ldp_seed_source"] == "os" and "reused" in info_again["ldp_training_set"]


@pytest.mark.parametrize("change", ["scale", "images", "shape"])
def test_changed_data_or_scale_in_a_workdir_is_refused(tmp_path, change):
    images = _train_images()
    ldp.apply_local_dp(images, 1.0, -1, str(tmp_path))
    other = {"scale": (images, 2.0), "images": (255 - images, 1.0),
             "shape": (images[:3], 1.0)}[change]
    with pytest.raises(ConfigError, match="new workdir"):
        ldp.apply_local_dp(other[0], other[1], -1, str(tmp_path))


def test_damaged_cache_is_refused(tmp_path):
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "ldp_train.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="cannot be read"):
        ldp.apply_local_dp(_train_images(), 1.0, -1, str(tmp_path))


def test_fixed_seed_is_a_labelled_debugging_option(tmp_path):
    images = _train_images()
    a, info = ldp.apply_local_dp(images, 0.5, 987_654_321, str(tmp_path / "a"))
    b, _ = ldp.apply_local_dp(images, 0.5, 987_654_321, str(tmp_path / "b"))
    np.testing.assert_array_equal(a, b)  # reproducible, hence not private
    assert info["ldp_seed_source"] == "config"
    assert "debugging" in info["ldp_warning"] and "not a private release" in info["ldp_warning"]
    assert "987654321" not in json.dumps(info)


def test_grey_repeated_into_rgb_is_perturbed_once(tmp_path):
    grey = _mid_grey(8, 8, 8, 1)
    rgb = np.repeat(grey, 3, axis=-1)
    out, info = ldp.apply_local_dp(rgb, 0.05, -1, str(tmp_path / "g"), grey_to_rgb="all")
    assert out.shape == rgb.shape
    # One draw per grey value, copied into the three channels: no three noisy copies.
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert info["ldp_values_per_image"] == 8 * 8 and info["ldp_channels_perturbed"] == 1
    assert info["ldp_epsilon_per_pixel"] == pytest.approx(20.0)
    assert info["ldp_epsilon_per_image"] == pytest.approx(64 * 20.0)
    assert "copied into 3 channels" in info["ldp_note"]
    # Genuine RGB: every stored value gets its own draw, and ε counts all of them.
    out_rgb, info_rgb = ldp.apply_local_dp(rgb, 0.05, -1, str(tmp_path / "c"))
    assert abs(_corr(out_rgb[..., 0].astype(float), out_rgb[..., 1].astype(float))) < 0.1
    assert info_rgb["ldp_values_per_image"] == 8 * 8 * 3
    assert info_rgb["ldp_epsilon_per_pixel"] == pytest.approx(60.0)


def test_grey_mode_checks(tmp_path):
    with pytest.raises(ConfigError, match="mixes grey and colour"):
        ldp.apply_local_dp(_train_images(c=3), 1.0, -1, str(tmp_path), grey_to_rgb="some")
    with pytest.raises(ValueError, match="identical channels"):
        ldp.apply_local_dp(_train_images(c=3), 1.0, -1, str(tmp_path), grey_to_rgb="all")
    assert not (tmp_path / "private").exists()
    assert ldp.GREY_TO_RGB_KEY == sources.GREY_TO_RGB_KEY


def test_npz_grey_train_with_colour_test_is_marked(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.npz"
    np.savez(path, train_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
             train_labels=np.arange(6) % 2,
             test_images=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
             test_labels=np.arange(4) % 2)
    d = sources.load_npz(str(path))
    assert d.train.images.shape[-1] == 3 and d.info[ldp.GREY_TO_RGB_KEY] == "all"
    out, info = ldp.apply_local_dp(d.train.images, 0.3, -1, str(tmp_path / "run"),
                                   grey_to_rgb=d.info[ldp.GREY_TO_RGB_KEY])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert info["ldp_values_per_image"] == 64
    np.savez(path, train_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
             train_labels=np.arange(6) % 2,
             test_images=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
             test_labels=np.arange(4) % 2)
    assert sources.load_npz(str(path)).info[ldp.GREY_TO_RGB_KEY] == "none"


@pytest.mark.parametrize("test_mode,expected", [("RGB", "all"), ("L", "none")])
def test_folder_grey_train_is_marked(tmp_path, test_mode, expected):
    for split, cls, mode in [("train", "a", "L"), ("train", "b", "L"), ("test", "a", test_mode),
                             ("test", "b", "L")]:
        folder = tmp_path / "data" / split / cls
        folder.mkdir(parents=True)
        for k in range(2):
            Image.new(mode, (6, 6), 40 * k + 10 if mode == "L" else (10, 20, 30)).save(
                folder / f"{k}.png")
    d = sources.load_image_folder(str(tmp_path / "data"))
    assert d.info[ldp.GREY_TO_RGB_KEY] == expected
    assert d.train.images.shape[-1] == (3 if expected == "all" else 1)


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
        images[..., None], 0, 0)[0])
    path = tmp_path / "fig" / "ldp.png"
    ldp.save_png(str(path), grid)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, grid[..., 0])

    rgb = ldp.comparison_grid(np.zeros((2, 4, 4, 3), np.uint8), [1.0], seed=0)
    assert rgb.shape == (2 * 4 + 2, 2 * 4 + 2, 3)
    ldp.save_png(str(tmp_path / "rgb.png"), rgb)
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"


def test_comparison_grid_columns_are_independent_draws():
    # One seed, but each column its own stream: the β = 0.02 and β = 0.04 columns do
    # not share a draw (with a shared one, column 2 − 2·column 1 would cancel the noise).
    images = _mid_grey(8, 8, 8, 1)
    grid = ldp.comparison_grid(images, [0.02, 0.04], seed=3, pad=0)
    n1 = grid[:, 8:16].astype(float) - 128
    n2 = grid[:, 16:24].astype(float) - 128
    assert n1.std() > 3 and n2.std() > 6
    assert abs(_corr(n1, n2)) < 0.1


def test_docstring_examples():
    result = doctest.testmod(ldp, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
