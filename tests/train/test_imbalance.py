"""Class imbalance: logit adjustment moves decisions to the minority class; the wiring into a
run (offsets in the loss, ε composed, summary entries); the one-class warning; validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import config as config_lib
from dpjax.errors import ConfigError
from dpjax.privacy import class_prior
from dpjax.train import imbalance, loop, summary
from dpjax.train import model as model_lib
from dpjax.train import step as step_lib
from tests.helpers import make_splits, small_dp_config


def _fit_logistic(x, y, offsets, steps=400, lr=0.5):
    """Softmax regression on 1-D features by full-batch gradient descent on `training_loss`."""
    spec = step_lib.InputSpec(mean=(0.0,), std=(1.0,), logit_offsets=offsets)

    def loss(w):
        logits = x[:, None] * w[0] + w[1]
        return step_lib.training_loss(logits, y, spec).mean()

    grad = jax.jit(jax.grad(loss))
    w = jnp.zeros((2, 2))
    for _ in range(steps):
        w = w - lr * grad(w)
    return w


def test_logit_adjustment_moves_decisions_to_the_minority_class():
    rng = np.random.default_rng(0)
    n0, n1 = 100, 1900   # 5 % minority (class 0) at -1, majority at +1, unit variance
    x = jnp.asarray(np.concatenate([rng.normal(-1, 1, n0), rng.normal(1, 1, n1)]), jnp.float32)
    y = jnp.asarray(np.r_[np.zeros(n0), np.ones(n1)].astype(np.int32))
    test_x = jnp.asarray(np.concatenate([rng.normal(-1, 1, 2000), rng.normal(1, 1, 2000)]))
    test_y = np.r_[np.zeros(2000), np.ones(2000)]
    prior = class_prior.prior_from_counts(np.array([n0, n1], float))
    results = {}
    for name, offsets in (("plain", ()), ("adjusted", class_prior.logit_offsets(prior))):
        w = _fit_logistic(x, y, offsets)
        pred = np.asarray(jnp.argmax(test_x[:, None] * w[0] + w[1], -1))
        recall = [np.mean(pred[test_y == c] == c) for c in (0, 1)]
        results[name] = (np.mean(pred == 0), np.mean(recall))
    # Plain cross-entropy rarely answers the minority class; the adjusted loss's argmax is
    # the balanced (prior-free) decision, near the midpoint 0: half of the balanced test.
    assert results["plain"][0] < 0.3
    assert results["adjusted"][0] > results["plain"][0] + 0.15
    assert 0.35 < results["adjusted"][0] < 0.65
    assert results["adjusted"][1] > results["plain"][1] + 0.05   # balanced accuracy


def test_run_with_dp_prior_composes_epsilon_and_feeds_the_loss(tmp_path):
    data = make_splits(num_train=120, num_test=30, num_classes=3, seed=1)
    c = small_dp_config()
    c.imbalance.method = "logit_adjustment"
    c.imbalance.prior_epsilon = 0.5
    c.privacy.target_epsilon, c.privacy.noise_multiplier = 0.0, 2.0  # no calibration: fast
    result = loop.train_and_evaluate(c, str(tmp_path / "run"), data=data)
    plan = loop.plan_from_config(c, len(data.train))
    assert result["epsilon"] == pytest.approx(plan.planned_epsilon())
    assert result["epsilon_training_alone"] < result["epsilon"]
    assert result["epsilon"] <= result["epsilon_training_alone"] + 0.5 + 1e-9
    assert result["pre_releases"] == [{"name": "class_counts", "epsilon": 0.5}]
    assert result["phases"][0]["name"] == "class_counts"
    assert result["class_prior_source"] == "dp" and result["class_prior_epsilon"] == 0.5
    assert len(result["class_prior"]) == 3 and len(result["logit_offsets"]) == 3
    for key in ("test_balanced_accuracy", "test_auroc", "test_predicted_class_fractions",
                "one_class_predictor"):
        assert key in result
    # The offsets reach the training loss's input spec.
    with_prior = imbalance.attach_prior(c, data, None, seed=5)
    spec = model_lib.build(c, with_prior).spec
    assert spec.logit_offsets == imbalance.logit_offsets(with_prior) and len(spec.logit_offsets)
    assert model_lib.build(c, data).spec.logit_offsets == ()


def test_public_and_empirical_priors():
    data = make_splits(num_train=90, num_classes=3)
    c = config_lib.base_config()
    c.imbalance.method, c.imbalance.prior = "logit_adjustment", "public"
    c.imbalance.public_prior = (0.2, 0.3, 0.5)
    entries = imbalance.summary_entries(imbalance.attach_prior(c, data, None, seed=0))
    np.testing.assert_allclose(entries["logit_offsets"], np.log([0.2, 0.3, 0.5]))
    assert "class_prior_epsilon" not in entries
    c.imbalance.public_prior = (0.5, 0.5)
    with pytest.raises(ConfigError, match="3 classes"):
        imbalance.attach_prior(c, data, None, seed=0)
    c.imbalance.prior, c.imbalance.public_prior = "empirical", ()
    c.privacy.mode = "none"
    entries = imbalance.summary_entries(imbalance.attach_prior(c, data, None, seed=0))
    np.testing.assert_allclose(entries["class_prior"],
                               np.bincount(data.train.labels, minlength=3) / 90)


@pytest.mark.parametrize("fields, match", [
    (dict(prior="public"), "public_prior"),
    (dict(prior="public", public_prior=(0.5, 0.6)), "summing to 1"),
    (dict(prior="dp", public_prior=(0.5, 0.5)), "prior=public"),
    (dict(prior="empirical"), "not cover"),
    (dict(prior_epsilon=0.0), "prior_epsilon"),
    (dict(tau=-1.0), "tau"),
])
def test_config_validation(fields, match):
    c = config_lib.base_config()
    c.privacy.target_epsilon = 1.0
    c.imbalance.method = "logit_adjustment"
    for key, value in fields.items():
        c.imbalance[key] = value
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(c)


def test_one_class_warning():
    data = make_splits(num_train=10, num_test=40, num_classes=2, seed=3)
    labels = np.asarray(data.test.labels)
    always_one = np.tile([0.2, 0.8], (40, 1))
    entries = summary.run_entries(data, always_one)
    assert entries["test_predicted_class_fractions"] == [0.0, 1.0]
    assert entries["test_balanced_accuracy"] == 0.5
    warning = summary.one_class_warning(entries)
    assert warning and "one-class predictor" in warning and "100.0 %" in warning
    good = np.stack([1.0 - labels, labels.astype(float)], 1) * 0.8 + 0.1
    entries = summary.run_entries(data, good)
    assert summary.one_class_warning(entries) is None and entries["test_auroc"] == 1.0
