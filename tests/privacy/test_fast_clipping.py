"""Fast (ghost / book-keeping) clipping equals vmap clipping, layer type by layer type."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax.models import get_model
from dpjax.privacy import clipping, fast_clipping

NUM_CLASSES = 5


def _vmap_reference(model, params, extra, inputs, labels, mask, clip_norm, num_views):
    """clipping.clipped_grad_sum with ℓ_i = mean cross-entropy over example i's views."""
    views = inputs.reshape((labels.shape[0], num_views) + inputs.shape[1:])

    def loss(p, example):
        x, y = example
        logits = model.apply({"params": p, **extra}, x)
        value = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.full((num_views,), y)).mean()
        return value, value

    total, norms, _ = clipping.clipped_grad_sum(loss, params, (views, labels), mask, clip_norm)
    return total, norms


def _setup(name, batch, num_views, size, channels=3, seed=0, **kwargs):
    model = get_model(name, NUM_CLASSES, **kwargs)
    inputs = jax.random.normal(jax.random.key(seed + 1), (batch * num_views, size, size, channels))
    variables = model.init(jax.random.key(seed), inputs[:1])
    extra = {k: v for k, v in variables.items() if k != "params"}
    labels = jnp.arange(batch) % NUM_CLASSES
    mask = jnp.arange(batch) < batch - 1          # the last row is padding
    return model, variables["params"], extra, inputs, labels, mask


def _assert_sums_close(actual, desired, rel=1e-4):
    """Gradient sums computed two ways (different reductions, shapes and orders).

    rtol `rel`, and atol `rel` times the largest entry: an entry near zero,
    where the terms cancel, carries the rounding of the terms' size, not its own.
    """
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rel,
                               atol=rel * float(np.max(np.abs(desired))))


def _rel(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.maximum(jnp.linalg.norm(b.ravel()),
                                                                  1e-30))


def _compare(name, batch=3, num_views=1, size=8, clip_norm=1.0, method="auto", tol=1e-4,
             **kwargs):
    model, params, extra, inputs, labels, mask = _setup(name, batch, num_views, size, **kwargs)
    fast = jax.jit(lambda p: fast_clipping.fast_clipped_grad_sum(
        model, p, extra, inputs, labels, mask, clip_norm, num_views, method=method))
    ref = jax.jit(lambda p: _vmap_reference(model, p, extra, inputs, labels, mask, clip_norm,
                                            num_views))
    (total, norms), (ref_total, ref_norms) = fast(params), ref(params)
    np.testing.assert_allclose(norms, ref_norms, rtol=tol)
    assert _rel(jnp.stack([clipping.global_norm(total)]),
                jnp.stack([clipping.global_norm(ref_total)])) < tol
    for path, leaf in jax.tree_util.tree_leaves_with_path(total):
        want = ref_total
        for key in path:
            want = want[key.key]
        assert leaf.dtype == jnp.float32
        # Per leaf, relative to the whole sum's norm (a tiny leaf may be rounding noise).
        err = float(jnp.linalg.norm((leaf - want).ravel()) / clipping.global_norm(ref_total))
        assert err < tol, (jax.tree_util.keystr(path), err)
    return norms, ref_norms


# Dense, plain conv + GroupNorm, WS conv; K = 1 and K = 3; each norm form.
@pytest.mark.parametrize("name,num_views,method,kwargs", [
    ("mlp", 1, "auto", dict(channels=1, depth=2, width=16)),
    ("small_cnn", 1, "auto", dict(width=8, weight_standardization=False)),
    ("small_cnn", 3, "direct", dict(width=8, weight_standardization=False)),
    ("small_cnn", 3, "ghost", dict(width=8, weight_standardization=True)),
    ("small_cnn", 3, "direct", dict(width=8, weight_standardization=True)),
    ("small_cnn", 2, "vmap", dict(width=8, weight_standardization=True)),
])
def test_matches_vmap_per_layer_type(name, num_views, method, kwargs):
    _compare(name, num_views=num_views, method=method, **kwargs)


@pytest.mark.parametrize("ws,norm", [(True, "group"), (False, "batch_frozen")])
def test_resnet18(ws, norm):
    _compare("resnet18", batch=2, num_views=1, size=8, width=4, groups=2, small_input=True,
             weight_standardization=ws, norm=norm)


def test_wide_resnet():
    """WRN blocks (pre-activation GN, WS convs, 1x1 shortcuts); WRN-16-4 is this, wider
    (benchmarks/step_speed.py --check compares it at full size)."""
    _compare("wrn", batch=2, size=8, depth=10, width=1, groups=4)


def test_bfloat16_compute_close():
    _compare("small_cnn", num_views=3, width=8, dtype=jnp.bfloat16, tol=5e-2)


def test_infinite_clip_is_plain_gradient_sum():
    model, params, extra, inputs, labels, _ = _setup("small_cnn", 3, 2, 8, width=8)
    mask = jnp.ones(3, bool)
    total, _ = jax.jit(lambda p: fast_clipping.fast_clipped_grad_sum(
        model, p, extra, inputs, labels, mask, jnp.inf, 2))(params)

    def batch_loss(p):
        logits = model.apply({"params": p}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.repeat(labels, 2)).reshape(3, 2).mean(1).sum()

    direct = jax.jit(jax.grad(batch_loss))(params)
    for a, b in zip(jax.tree_util.tree_leaves(total), jax.tree_util.tree_leaves(direct)):
        _assert_sums_close(a, b)


def test_padding_and_nonfinite_rows_contribute_exactly_zero():
    model, params, extra, inputs, labels, mask = _setup("small_cnn", 4, 2, 8, width=8)
    fast = jax.jit(lambda x, m: fast_clipping.fast_clipped_grad_sum(
        model, params, extra, x, labels, m, 1.0, 2))
    mask = jnp.array([True, True, False, True])
    base, _ = fast(inputs, mask)
    garbage = inputs.at[4:6].set(1e30)          # example 2 (padding): huge
    again, _ = fast(garbage, mask)
    nan = inputs.at[7].set(jnp.nan)             # one view of example 3: NaN
    dropped, norms = fast(nan, mask)
    without, _ = fast(inputs, mask.at[3].set(False))
    assert not np.isfinite(norms[3])
    for a, b, c, d in zip(*(jax.tree_util.tree_leaves(t) for t in (base, again, dropped,
                                                                    without))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, d)


def test_each_clipped_contribution_at_most_c():
    model, params, extra, inputs, labels, _ = _setup("small_cnn", 3, 1, 8, width=8)
    fast = jax.jit(lambda m: fast_clipping.fast_clipped_grad_sum(
        model, params, extra, inputs, labels, m, 0.1, 1))
    for i in range(3):
        total, norms = fast(jnp.zeros(3, bool).at[i].set(True))
        assert float(norms[i]) > 0.1                 # so the bound is active
        assert float(clipping.global_norm(total)) <= 0.1 * (1 + 1e-5)


def test_frozen_parameters_are_not_clipped_over():
    model, params, extra, inputs, labels, mask = _setup("small_cnn", 3, 1, 8, width=8)
    probe = lambda path: path.startswith("classifier")  # noqa: E731
    total, norms = jax.jit(lambda p: fast_clipping.fast_clipped_grad_sum(
        model, p, extra, inputs, labels, mask, 1.0, 1, is_trainable=probe))(params)
    head = {"classifier": params["classifier"]}

    def loss(p, example):
        x, y = example
        logits = model.apply({"params": {**params, **p}}, x[None])
        value = optax.softmax_cross_entropy_with_integer_labels(logits, y[None]).mean()
        return value, value

    ref, ref_norms, _ = jax.jit(lambda h: clipping.clipped_grad_sum(
        loss, h, (inputs, labels), mask, 1.0))(head)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
    _assert_sums_close(total["classifier"]["kernel"], ref["classifier"]["kernel"])
    assert not np.any(total["conv0"]["kernel"])


def test_layers_it_cannot_take_apart_fall_back_to_per_example_gradients():
    """A free parameter and a shared (twice-called) Dense get per-example gradients by
    vmap; the result still equals the vmap method's."""
    import flax.linen as nn

    class Unusual(nn.Module):
        @nn.compact
        def __call__(self, x):
            scale = self.param("free_scale", nn.initializers.ones, ())
            shared = nn.Dense(8, name="shared")
            h = x.reshape(x.shape[0], -1) * scale
            h = shared(nn.relu(nn.Dense(8, name="first")(h)))
            return nn.Dense(NUM_CLASSES, name="head")(nn.tanh(shared(h)))

    model = Unusual()
    inputs = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))
    params = model.init(jax.random.key(0), inputs)["params"]
    labels, mask = jnp.array([0, 1, 2, 0]), jnp.array([True, True, True, False])
    total, norms = jax.jit(lambda p: fast_clipping.fast_clipped_grad_sum(
        model, p, {}, inputs, labels, mask, 0.5, 1))(params)
    ref, ref_norms = _vmap_reference(model, params, {}, inputs, labels, mask, 0.5, 1)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(total), jax.tree_util.tree_leaves(ref)):
        _assert_sums_close(a, b)


def test_memory_within_one_and_a_half_of_the_non_private_step(batch=2, num_views=8):
    # XLA's plan for the compiled steps (arguments + outputs + temporaries). The
    # per-offset input windows are built one at a time: as a Python sum of 9 windows
    # they all lived at once and WRN-16-4 at 4 x 16 needed 3.2x (docs/performance.md).
    from dpjax.train.memory import compiled_bytes

    model, params, _, inputs, labels, mask = _setup("wrn", batch, num_views, 16, depth=10,
                                                    width=2, groups=4)

    def nonprivate(p, x):
        return jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": q}, x), jnp.repeat(labels, num_views)).sum())(p)

    def fast(p, x):
        return fast_clipping.fast_clipped_grad_sum(model, p, {}, x, labels, mask, 1.0,
                                                   num_views)

    ratio = compiled_bytes(fast, params, inputs) / compiled_bytes(nonprivate, params, inputs)
    print(f"fast / non-private compiled memory: {ratio:.2f}")
    assert ratio <= 1.5, ratio


def test_measured_norm_forms(monkeypatch):
    model, params, extra, inputs, labels, mask = _setup("small_cnn", 3, 2, 8, width=8,
                                                        weight_standardization=True)
    chosen = fast_clipping.measure_norm_methods(model, params, extra, inputs.shape, 2,
                                                repeats=1)
    assert set(chosen) == {"conv0", "conv1", "classifier"}  # not the GroupNorms
    assert set(chosen.values()) <= {"direct", "ghost"}
    # (tests/train/test_memory.py trains with a measured choice and compares with vmap.)
    monkeypatch.setattr(fast_clipping, "GHOST_GRAM_BYTES", 0)  # no Gram fits: all direct
    assert set(fast_clipping.measure_norm_methods(model, params, extra, inputs.shape, 2,
                                                  repeats=1).values()) == {"direct"}
