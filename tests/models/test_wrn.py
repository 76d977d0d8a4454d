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


def test_wrn16_4_layout_names_and_feature_map():
    model = get_model("wrn16_4", 7)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]
    assert set(variables) == {"params"}
    assert {"stem", "final_norm", "classifier"} <= set(params)
    assert sorted(k for k in params if k.startswith("group")) == [
        f"group{g}_block{b}" for g in range(3) for b in range(2)]
    assert params["stem"]["kernel"].shape == (3, 3, 3, 16)
    assert params["final_norm"]["scale"].shape == (256,)
    assert params["classifier"]["kernel"].shape == (256, 7)
    logits = model.apply(variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    fmap = model.apply(variables, x, return_feature_map=True)
    assert fmap.shape == (2, 2, 2, 256)
    assert float(fmap.min()) >= 0.0  # after final_norm and ReLU


@pytest.mark.parametrize("depth", [15, 4, "16"])
def test_wrn_rejects_depth_not_6n_plus_4(depth):
    with pytest.raises(ConfigError, match="model.kwargs.depth"):
        get_model("wrn", 10, depth=depth)
