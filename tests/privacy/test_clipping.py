"""Per-example clipping and noise: norms, masks, NaN examples, noise scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpjax.privacy import clipping


def _loss(params, example):
    x, y = example
    pred = jnp.tanh(x @ params["w"] + params["b"])
    loss = jnp.sum((pred - y) ** 2)
    return loss, loss


def _assert_sums_close(actual, desired, rel=3e-5):
    """Two float32 sums of the same terms, added in different orders or shapes.

    Each may be off by ~n·2⁻²⁴ times the size of its terms (a few 1e-6 here),
    whatever the thread count: rtol `rel`, and atol `rel` times the largest
    entry, so that an entry near zero (where terms cancel) is judged against
    the size of the terms, not its own.
    """
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rel,
                               atol=rel * float(np.max(np.abs(desired))))


def _data(n=16, d=5, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(d, 3)), jnp.float32),
              "b": jnp.zeros(3, jnp.float32)}
    x = jnp.asarray(rng.normal(size=(n, d)) * 3, jnp.float32)
    y = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    return params, (x, y)


@pytest.mark.parametrize("clip_norm", [0.01, 0.1, 1.0, 10.0])
def test_each_clipped_gradient_has_norm_at_most_c(clip_norm):
    params, (x, y) = _data()
    for i in range(4):
        mask = jnp.zeros(16, bool).at[i].set(True)
        total, norms, _ = clipping.clipped_grad_sum(_loss, params, (x, y), mask, clip_norm)
        norm = clipping.global_norm(total)
        assert norm <= clip_norm * (1 + 1e-5)
        if norms[i] > clip_norm:
            assert norm == pytest.approx(clip_norm, rel=1e-5)


def test_infinite_clip_equals_plain_gradient_sum():
    params, (x, y) = _data()
    mask = jnp.ones(16, bool)
    total, _, _ = clipping.clipped_grad_sum(_loss, params, (x, y), mask, jnp.inf)
    direct = jax.grad(lambda p: sum(_loss(p, (x[i], y[i]))[0] for i in range(16)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(total), jax.tree_util.tree_leaves(direct)):
        _assert_sums_close(a, b)


def test_padding_rows_contribute_exactly_zero():
    params, (x, y) = _data()
    mask = jnp.arange(16) < 10
    full, _, _ = clipping.clipped_grad_sum(_loss, params, (x, y), mask, 1.0)
    # Replace the padding rows with garbage: the sum must not change at all.
    x2 = x.at[10:].set(1e6)
    y2 = y.at[10:].set(-1e6)
    again, _, _ = clipping.clipped_grad_sum(_loss, params, (x2, y2), mask, 1.0)
    few, _, _ = clipping.clipped_grad_sum(_loss, params, (x[:10], y[:10]),
                                          jnp.ones(10, bool), 1.0)
    for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (full, again, few))):
        np.testing.assert_array_equal(a, b)  # same shapes, same order: exactly
        _assert_sums_close(a, c)             # 16 rows against 10: a different reduction


def test_all_masked_gives_zero():
    params, (x, y) = _data()
    total, _, _ = clipping.clipped_grad_sum(_loss, params, (x, y), jnp.zeros(16, bool), 1.0)
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree_util.tree_leaves(total))


def test_nan_example_is_dropped_not_propagated():
    params, (x, y) = _data()
    x = x.at[3].set(jnp.nan)
    total, norms, _ = clipping.clipped_grad_sum(_loss, params, (x, y), jnp.ones(16, bool), 1.0)
    assert not np.isfinite(norms[3])
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(total))
    assert clipping.global_norm(total) <= 15 * 1.0 + 1e-4


def test_noise_standard_deviation():
    """The added noise is N(0, σ²C²) per coordinate, then divided by B."""
    zeros = {"a": jnp.zeros((200, 100)), "b": jnp.zeros((5000,))}
    sigma, c, b = 1.7, 0.5, 64.0
    out = clipping.privatize_sum(jax.random.key(0), zeros, sigma, c, b)
    samples = np.concatenate([np.asarray(v).ravel() for v in jax.tree_util.tree_leaves(out)])
    samples = samples * b / (sigma * c)  # should be standard normal
    assert samples.dtype == np.float32
    assert abs(samples.mean()) < 4 / np.sqrt(samples.size)
    assert samples.std() == pytest.approx(1.0, abs=0.01)
    assert stats.kstest(samples, "norm").pvalue > 1e-3
    # Leaves get independent draws.
    a, bb = np.asarray(out["a"]).ravel()[:5000], np.asarray(out["b"])
    assert abs(np.corrcoef(a, bb)[0, 1]) < 0.06


def test_noise_is_deterministic_in_key():
    tree = {"w": jnp.zeros(10)}
    a = clipping.privatize_sum(jax.random.key(1), tree, 1.0, 1.0, 1.0)
    b = clipping.privatize_sum(jax.random.key(1), tree, 1.0, 1.0, 1.0)
    c = clipping.privatize_sum(jax.random.key(2), tree, 1.0, 1.0, 1.0)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])
