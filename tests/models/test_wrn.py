"""Wide-ResNets (De et al. 2022): size, layout and names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.errors import ConfigError
from dpjax.models import get_model


def _num_params(model, shape):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + shape))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))


def test_wrn16_4_has_2_75_million_parameters():
    n = _num_params(get_model("wrn16_4", 10), (32, 32, 3))
    assert n == 2_748_890 and abs(n - 2.75e6) / 2.75e6 < 0.01


def test_wrn40_4_parameter_count():
    assert _num_params(get_model("wrn40_4", 10), (32, 32, 3)) == 8_949_210


def test_wrn16_4_layout_and_names():
    model = get_model("wrn16_4", 7)
    x = jnp.zeros((2, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    params = variables["params"]
    assert set(variables) == {"params"}
    assert {"stem", "final_norm", "classifier"} <= set(params)
    assert sorted(k for k in params if k.startswith("group")) == [
        f"group{g}_block{b}" for g in range(3) for b in range(2)]
    assert params["stem"]["kernel"].shape == (3, 3, 3, 16)
    assert params["group0_block0"]["shortcut"]["kernel"].shape == (1, 1, 16, 64)
    assert "shortcut" not in params["group0_block1"]
    assert params["final_norm"]["scale"].shape == (256,)
    assert params["classifier"]["kernel"].shape == (256, 7)
    fmap = jax.eval_shape(lambda v: model.apply(v, x, return_feature_map=True), variables)
    assert fmap.shape == (2, 2, 2, 256)


def test_feature_map_is_taken_after_final_norm_and_relu(init):
    model = get_model("wrn", 3, depth=10, width=1)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = init(model, x)
    logits, fmap = jax.jit(lambda v: (model.apply(v, x),
                                      model.apply(v, x, return_feature_map=True)))(variables)
    assert fmap.shape == (2, 2, 2, 64) and float(fmap.min()) == 0.0
    # The logits are the classifier applied to the pooled map.
    dense = variables["params"]["classifier"]
    expected = fmap.mean(axis=(1, 2)) @ dense["kernel"] + dense["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [15, 4, "16"])
def test_wrn_rejects_depth_not_6n_plus_4(depth):
    with pytest.raises(ConfigError, match="model.kwargs.depth"):
        get_model("wrn", 10, depth=depth)
