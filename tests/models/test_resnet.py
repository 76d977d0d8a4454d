"""ResNets: parameter counts (torchvision's), stems and normalisation choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.errors import ConfigError
from dpjax.models import get_model


def _shapes(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + shape))


def _num_params(model, shape=(224, 224, 3)):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        _shapes(model, shape)["params"]))


@pytest.mark.parametrize("name, classes, expected", [
    ("resnet18", 1000, 11_689_512), ("resnet18", 10, 11_181_642),
    ("resnet34", 1000, 21_797_672), ("resnet50", 1000, 25_557_032)])
def test_parameter_counts_match_torchvision(name, classes, expected):
    assert _num_params(get_model(name, classes)) == expected


def test_batch_norm_has_as_many_parameters_as_group_norm_plus_statistics():
    frozen = _shapes(get_model("resnet18", 10, norm="batch_frozen"), (64, 64, 3))
    assert set(frozen) == {"params", "batch_stats"}
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(frozen["params"]))
    assert n == 11_181_642
    assert set(_shapes(get_model("resnet18", 10), (64, 64, 3))) == {"params"}


def test_imagenet_stem_downsamples_by_32_and_small_stem_by_8():
    x = jnp.zeros((1, 64, 64, 3))
    big = get_model("resnet18", 5)
    fmap = jax.eval_shape(lambda v: big.apply(v, x, return_feature_map=True),
                          _shapes(big, (64, 64, 3)))
    assert fmap.shape == (1, 2, 2, 512)
    small = get_model("resnet18", 5, small_input=True)
    variables = _shapes(small, (64, 64, 3))
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    fmap = jax.eval_shape(lambda v: small.apply(v, x, return_feature_map=True), variables)
    assert fmap.shape == (1, 8, 8, 512)


def test_resnet50_feature_map_has_2048_channels_and_no_final_norm():
    model = get_model("resnet50", 3, small_input=True)
    x = jnp.zeros((1, 16, 16, 3))
    variables = _shapes(model, (16, 16, 3))
    assert "final_norm" not in variables["params"] and "classifier" in variables["params"]
    fmap = jax.eval_shape(lambda v: model.apply(v, x, return_feature_map=True), variables)
    assert fmap.shape == (1, 2, 2, 2048)


def test_frozen_batch_norm_never_updates_its_statistics(init):
    model = get_model("resnet18", 4, norm="batch_frozen", small_input=True, width=8)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    variables = init(model, x)
    logits, state = model.apply(variables, x, mutable=["batch_stats"])
    assert logits.shape == (3, 4)
    for a, b in zip(jax.tree_util.tree_leaves(variables["batch_stats"]),
                    jax.tree_util.tree_leaves(state["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def test_weight_standardization_is_optional_and_changes_nothing_in_the_parameters():
    plain = _shapes(get_model("resnet18", 10, small_input=True), (32, 32, 3))
    ws = _shapes(get_model("resnet18", 10, small_input=True, weight_standardization=True),
                 (32, 32, 3))
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(ws)


@pytest.mark.parametrize("kwargs, field", [(dict(norm="layer"), "model.kwargs.norm"),
                                           (dict(small_input="yes"), "model.kwargs.small_input"),
                                           (dict(width=0), "model.kwargs.width")])
def test_bad_fields_raise_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        get_model("resnet18", 10, **kwargs)
