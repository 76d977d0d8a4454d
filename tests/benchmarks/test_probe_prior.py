"""benchmarks/probe_prior.py's DP probe: its closed-form per-example gradient norms,
its calibrated σ, and that it learns a separable task with a loose budget and not
with none to spare."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks import probe_prior  # noqa: E402
from dpjax.privacy import accounting  # noqa: E402


def test_closed_form_norms_match_autodiff():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=3), jnp.float32)

    def loss(wb, xi, yi):
        return optax.softmax_cross_entropy_with_integer_labels(xi @ wb[0] + wb[1], yi)

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))((w, b), x, y)
    expected = jnp.sqrt(jnp.sum(grads[0] ** 2, axis=(1, 2)) + jnp.sum(grads[1] ** 2, axis=1))
    residual = jax.nn.softmax(x @ w + b) - jax.nn.one_hot(y, 3)
    np.testing.assert_allclose(probe_prior.linear_example_grad_norms(x, residual), expected,
                               rtol=1e-5)


def _task(n, rng):
    """Two classes, ±1.5 apart on feature 0 under unit noise on 50 features (Bayes 93 %)."""
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 50)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 1.5, -1.5)
    return x, y


def test_dp_probe_learns_and_reports_calibrated_sigma():
    rng = np.random.default_rng(1)
    (tx, ty), (vx, vy) = _task(4000, rng), _task(1000, rng)
    loose = probe_prior.dp_probe(tx, ty, vx, vy, 2, epsilon=8.0, delta=1e-5, batch=400,
                                 steps=50, learning_rate=0.5)
    assert loose["dp_test_accuracy"] > 0.88
    sigma = accounting.calibrate_noise_multiplier(8.0, 1e-5, 400 / 4000, 50)
    assert loose["dp_noise_multiplier"] == round(sigma, 3)
    # A tiny budget on a tiny set drowns the signal: the noise is the mechanism's.
    tight = probe_prior.dp_probe(tx[:200], ty[:200], vx, vy, 2, epsilon=0.05, delta=1e-5,
                                 batch=20, steps=50, learning_rate=0.5)
    assert tight["dp_noise_multiplier"] > 10 * loose["dp_noise_multiplier"]
    assert tight["dp_test_accuracy"] < 0.7


def test_a_wrong_prior_path_is_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe_prior.main(["--config", "configs/quickstart.py", "--prior", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("(params.msgpack, prior.json)") and str(tmp_path) in err[-1]
