"""Small CPU models for tiny images."""

import jax
import jax.numpy as jnp
import pytest

from dpjax.errors import ConfigError
from dpjax.models import get_model


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_small_cnn_shapes(shape, init):
    model = get_model("small_cnn", 10)
    x = jax.random.normal(jax.random.key(0), (2,) + shape)
    variables = init(model, x)
    assert set(variables) == {"params"}
    assert model.apply(variables, x).shape == (2, 10)
    fmap = model.apply(variables, x, return_feature_map=True)
    assert fmap.shape == (2, shape[0] // 2, shape[1] // 2, 32)


def test_small_cnn_width_and_activation():
    model = get_model("small_cnn", 3, width=8, activation="relu")
    x = jnp.zeros((1, 8, 8, 1))
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 8, 8)
    with pytest.raises(ConfigError, match="model.kwargs.activation"):
        get_model("small_cnn", 3, activation="gelu")


def test_mlp_shapes_and_depth(init):
    x = jnp.ones((4, 8, 8, 1))
    model = get_model("mlp", 10, width=16, depth=2)
    variables = init(model, x)
    assert set(variables["params"]) == {"hidden0", "hidden1", "classifier"}
    assert model.apply(variables, x).shape == (4, 10)
    assert model.apply(variables, x, return_feature_map=True).shape == (4, 16)
    logistic = get_model("mlp", 10, depth=0)
    assert logistic.apply(init(logistic, x), x).shape == (4, 10)


def test_small_cnn_pool_sets_the_classifier_inputs():
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)
    for pool, inputs in ((2, 16 * 16 * 16), (4, 8 * 8 * 16), (8, 4 * 4 * 16)):
        m = get_model("small_cnn", 10, width=16, pool=pool)
        v = m.init(jax.random.key(0), x)
        assert v["params"]["classifier"]["kernel"].shape == (inputs, 10)
        assert m.apply(v, x).shape == (2, 10)
        assert m.apply(v, x, return_feature_map=True).shape == (2, 32 // pool, 32 // pool, 16)


def test_small_cnn_pool_larger_than_the_image_is_a_config_error():
    m = get_model("small_cnn", 10, width=8, pool=16)
    with pytest.raises(ConfigError, match="model.kwargs.pool=16"):
        m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
