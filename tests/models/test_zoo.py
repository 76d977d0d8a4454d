"""The zoo's interface: get_model, shapes and dtypes, and the DP compatibility check."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import models
from dpjax.errors import ConfigError

# Tiny inputs: the small stems for the ResNets.
TINY = {"resnet18": dict(small_input=True), "resnet34": dict(small_input=True),
        "resnet50": dict(small_input=True), "wrn": dict(depth=10, width=1)}
FEATURES = {"mlp": 256, "small_cnn": 32, "wrn16_4": 256, "wrn40_4": 256, "wrn": 64,
            "resnet18": 512, "resnet34": 512, "resnet50": 2048}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_gives_float32_logits_and_only_params(name):
    model = models.get_model(name, 5, **TINY.get(name, {}))
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables) == {"params"}  # group norm: no batch statistics
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    fmap = jax.eval_shape(lambda v, x: model.apply(v, x, return_feature_map=True), variables, x)
    assert fmap.shape[0] == 2 and fmap.shape[-1] == FEATURES[name]


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ConfigError, match="model.name='vgg'.*wrn16_4.*resnet50"):
        models.get_model("vgg", 10)


def test_unknown_or_fixed_field_names_the_field():
    with pytest.raises(ConfigError, match=r"model\.kwargs\.widht.*valid fields:.*width"):
        models.get_model("small_cnn", 10, widht=8)
    with pytest.raises(ConfigError, match=r"model\.kwargs\.depth is fixed.*'wrn'"):
        models.get_model("wrn16_4", 10, depth=28)
    with pytest.raises(ConfigError, match=r"model\.kwargs\.norm"):
        models.get_model("wrn16_4", 10, norm="group")  # WRNs are GroupNorm only
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        models.get_model("mlp", 10, dtype=jnp.int32)


def test_generic_wrn_takes_any_depth_and_width():
    model = models.get_model("wrn", 10, depth=22, width=2)
    assert (model.depth, model.width) == (22, 2)


# --- per-example independence and the DP check ------------------------------

INDEPENDENCE = [("mlp", {}), ("small_cnn", {}), ("wrn", dict(depth=10, width=2)),
                ("resnet18", dict(small_input=True, width=8))]


@pytest.mark.parametrize("name, kwargs", INDEPENDENCE)
def test_group_norm_models_treat_each_example_alone(name, kwargs, init):
    """vmap over single examples (what per-example gradients do) = the batched call."""
    model = models.get_model(name, 4, **kwargs)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    variables = init(model, x)
    apply = jax.jit(model.apply)
    batched = apply(variables, x)
    one_by_one = jax.jit(jax.vmap(lambda xi: model.apply(variables, xi[None])[0]))(x)
    # Different shapes, so differently ordered float32 sums in every layer: a relative
    # tolerance, with an absolute one scaled to the logits (a logit near zero carries the
    # rounding of the terms that cancelled in it).
    scale = float(np.max(np.abs(batched)))
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4 * scale)
    # Different neighbours leave an example's logits unchanged.
    x2 = x.at[1:].set(-x[1:] * 3.0)
    np.testing.assert_allclose(apply(variables, x2)[0], batched[0], rtol=1e-4,
                               atol=1e-4 * scale)


@pytest.mark.parametrize("norm", ["group", "batch_frozen"])
def test_check_dp_compatible_accepts_group_and_frozen_batch_norm(norm, init):
    model = models.get_model("resnet18", 3, norm=norm, small_input=True, width=8)
    variables = init(model, jnp.zeros((1, 8, 8, 3)))
    models.check_dp_compatible(model, variables, (8, 8, 3))
    models.check_dp_compatible(model, variables)  # input shape guessed from the stem


@pytest.mark.parametrize("name, shape", [("small_cnn", (8, 8, 1)), ("mlp", (8, 8, 1))])
def test_check_dp_compatible_guesses_the_input_shape_and_ignores_bf16(name, shape, init):
    model = models.get_model(name, 3, width=8, dtype=jnp.bfloat16)
    variables = init(model, jnp.zeros((1,) + shape))
    models.check_dp_compatible(model, variables)


def test_check_dp_compatible_refuses_training_mode_batch_norm():
    model = models.get_model("resnet18", 3, norm="batch", small_input=True, width=8)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert "batch_stats" in variables
    with pytest.raises(ConfigError, match=r"norm='batch'.*norm='group'.*batch_frozen"):
        models.check_dp_compatible(model, variables, (8, 8, 3))


class _HiddenBatchNorm(nn.Module):
    """Training-mode BatchNorm that no `norm` field reveals."""

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1))
        return nn.Dense(2)(x)


class _BatchCentring(nn.Module):
    """Mixes examples without any stored statistic: subtracts the batch mean."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, name="hidden")(x.reshape(x.shape[0], -1))
        h = Centre(name="centre")(h)
        return nn.Dense(2, kernel_init=nn.initializers.zeros, name="classifier")(h)


class Centre(nn.Module):
    def __call__(self, h):
        return h - h.mean(axis=0, keepdims=True)


@pytest.mark.parametrize("module, match", [(_HiddenBatchNorm(), "batch_stats"),
                                           (_BatchCentring(), "'centre'")])
def test_check_dp_compatible_detects_mixing_by_behaviour(module, match, init):
    x = jnp.ones((2, 4, 4, 1))
    variables = init(module, x)
    with pytest.raises(ConfigError, match=match):
        models.check_dp_compatible(module, variables, (4, 4, 1))


class _BatchSizeNumerics(nn.Module):
    """No mixing, but a batch of one computes 1 % differently (as a GPU may pick another
    convolution algorithm for another batch size: seen on an H200 with WRN-16-4)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, name="hidden")(x.reshape(x.shape[0], -1))
        h = h * (1.01 if x.shape[0] == 1 else 1.0)
        return nn.Dense(2, name="classifier")(h)


def test_check_dp_compatible_ignores_numerics_that_depend_on_the_batch_size(init):
    module = _BatchSizeNumerics()
    variables = init(module, jnp.ones((2, 4, 4, 1)))
    models.check_dp_compatible(module, variables, (4, 4, 1))


# --- mixed precision ----------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [("small_cnn", {}), ("wrn", dict(depth=10, width=1)),
                                          ("resnet18", dict(small_input=True, width=8))])
def test_bf16_computes_in_bf16_with_float32_params_and_logits(name, kwargs, init):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    fp32 = models.get_model(name, 10, **kwargs)
    bf16 = models.get_model(name, 10, dtype=jnp.bfloat16, **kwargs)
    variables = init(bf16, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    logits = jax.jit(bf16.apply)(variables, x)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    fmap = jax.eval_shape(lambda v: bf16.apply(v, x, return_feature_map=True), variables)
    assert fmap.dtype == jnp.bfloat16
    np.testing.assert_allclose(logits, jax.jit(fp32.apply)(variables, x), rtol=0.1, atol=0.1)
