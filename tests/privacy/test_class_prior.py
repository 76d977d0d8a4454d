"""DP class priors: sensitivity, the Laplace noise, the DpEvent, composition into ε, the stream."""

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from dpjax import config as config_lib
from dpjax.errors import ConfigError
from dpjax.privacy import accounting, class_prior, randomness
from dpjax.train import imbalance, loop
from tests.helpers import make_splits


def test_histogram_l1_sensitivity_is_one_under_add_remove():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    base = class_prior.class_histogram(labels, 4)
    assert base.sum() == 200 and np.array_equal(base, np.bincount(labels, minlength=4))
    for i in range(0, 200, 37):  # remove one example: one count moves by exactly one
        removed = class_prior.class_histogram(np.delete(labels, i), 4)
        assert np.abs(base - removed).sum() == 1.0
    for label in range(4):       # add one example
        added = class_prior.class_histogram(np.append(labels, label), 4)
        assert np.abs(base - added).sum() == 1.0


def test_histogram_of_privacy_units_keeps_sensitivity_one():
    # A patient with several images (even of different labels) adds its label fractions.
    labels = np.array([0, 1, 1, 0, 2, 2, 2])
    units = np.array([[0, 1, 2], [3, -1, -1], [4, 5, 6]])
    hist = class_prior.class_histogram(labels, 3, units)
    np.testing.assert_allclose(hist, [1 / 3 + 1, 2 / 3, 1.0])
    without_first = class_prior.class_histogram(labels, 3, units[1:])
    assert np.abs(hist - without_first).sum() == pytest.approx(1.0)


def test_noise_is_laplace_with_scale_one_over_epsilon():
    eps = 0.5
    assert class_prior.laplace_scale(eps) == 2.0
    counts = np.array([100.0, 1000.0])
    draws = np.stack([class_prior.noisy_counts(counts, eps, np.random.default_rng([7, i]))
                      for i in range(4000)]) - counts
    # Independent per class, Laplace(0, 2): Kolmogorov-Smirnov against the exact law.
    for col in draws.T:
        assert stats.kstest(col, stats.laplace(scale=2.0).cdf).pvalue > 1e-3
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.1


def test_dp_event_is_laplace_and_accounts_to_epsilon():
    event = class_prior.dp_event(0.2)
    assert event == dp_accounting.LaplaceDpEvent(noise_multiplier=5.0)
    # Pure ε-DP: ε at any δ is (at most) 0.2 with either accountant.
    assert accounting.epsilon([], 1e-5, "pld", (event,)) == pytest.approx(0.2, abs=1e-3)
    assert accounting.epsilon([], 1e-5, "rdp", (event,)) <= 0.21
    name, ev, eps = class_prior.pre_release(0.2)
    assert (name, ev, eps) == ("class_counts", event, 0.2)
    with pytest.raises(ConfigError):
        class_prior.dp_event(0.0)


def test_prior_post_processing_and_offsets():
    prior = class_prior.prior_from_counts(np.array([-3.0, 9.0, 90.0]), floor=1.0)
    np.testing.assert_allclose(prior, [1 / 100, 9 / 100, 90 / 100])
    offsets = class_prior.logit_offsets(prior, tau=2.0)
    np.testing.assert_allclose(offsets, 2.0 * np.log(prior))
    with pytest.raises(ValueError):
        class_prior.logit_offsets([0.5, 0.6])


def _config(**imbalance_fields):
    c = config_lib.base_config()
    c.privacy.target_epsilon = 2.0
    c.privacy.accountant = "rdp"   # fast calibration; the PLD composition is checked below
    c.batch_size, c.num_steps = 64, 50
    for key, value in imbalance_fields.items():
        c.imbalance[key] = value
    return c


def test_plan_composes_the_release_and_calibration_leaves_room():
    plain = loop.plan_from_config(_config(), 1000)
    adjusted = loop.plan_from_config(_config(method="logit_adjustment", prior_epsilon=0.3), 1000)
    assert plain.pre_releases == () and [r[0] for r in adjusted.pre_releases] == ["class_counts"]
    # Calibrated to the same total: the training gets more noise, the total stays at target.
    assert adjusted.noise_multiplier > plain.noise_multiplier
    assert adjusted.planned_epsilon() <= 2.0 and adjusted.planned_epsilon() > 1.99
    # Given σ: the total is the composition, above training alone and at most the sum.
    c = _config(method="logit_adjustment", prior_epsilon=0.3)
    c.privacy.target_epsilon, c.privacy.noise_multiplier = 0.0, 1.0
    c.privacy.accountant = "pld"
    given = loop.plan_from_config(c, 1000)
    alone = accounting.epsilon(given._planned_phases(), given.delta)
    assert alone < given.planned_epsilon() <= alone + 0.3 + 1e-6
    assert loop.account(c, 1000)["epsilon"] == pytest.approx(given.planned_epsilon())
    # A public prior releases nothing.
    public = loop.plan_from_config(_config(method="logit_adjustment", prior="public",
                                           public_prior=(0.1, 0.9)), 1000)
    assert public.pre_releases == ()


def test_prior_drawn_from_the_runs_class_counts_stream():
    assert "class_counts" in randomness.TAGS
    data = make_splits(num_train=300, num_classes=3)
    c = _config(method="logit_adjustment", prior_epsilon=0.5)
    seed = randomness.os_seed()
    a = imbalance.summary_entries(imbalance.attach_prior(c, data, None, seed))
    b = imbalance.summary_entries(imbalance.attach_prior(c, data, None, seed))
    other = imbalance.summary_entries(imbalance.attach_prior(c, data, None, seed + 1))
    assert a == b and a["class_prior_noisy_counts"] != other["class_prior_noisy_counts"]
    # Exactly the "class_counts" stream of the seed: counts + Laplace(1/ε).
    expected = np.bincount(data.train.labels, minlength=3) + randomness.numpy_rng(
        seed, "class_counts").laplace(0.0, 2.0, 3)
    np.testing.assert_allclose(a["class_prior_noisy_counts"], expected)
    sampling = np.bincount(data.train.labels, minlength=3) + randomness.numpy_rng(
        seed, "sampling").laplace(0.0, 2.0, 3)
    assert not np.allclose(a["class_prior_noisy_counts"], sampling)
    assert a["class_prior_epsilon"] == 0.5 and math.isclose(sum(a["class_prior"]), 1.0)
    np.testing.assert_allclose(a["logit_offsets"], np.log(a["class_prior"]))
