"""What DP-RandP's Phase II trains (the head) and how wide Phase I's projection head is."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import models
from dpjax.config import base_config
from dpjax.randp import pretrain, priors
from dpjax.train import model as model_lib

# Per zoo model: (kwargs, image side, the head the probe must train).
FINAL_NORM = {"final_norm/scale", "final_norm/bias", "classifier/kernel", "classifier/bias"}
CLASSIFIER = {"classifier/kernel", "classifier/bias"}
ZOO = {
    "mlp": ({}, 8, CLASSIFIER),
    "small_cnn": ({"width": 8}, 8, FINAL_NORM),
    "wrn16_4": ({}, 16, FINAL_NORM),
    "wrn40_4": ({}, 16, FINAL_NORM),
    "wrn": ({"depth": 10, "width": 1}, 16, FINAL_NORM),
    "resnet18": ({"small_input": True, "width": 16}, 16, CLASSIFIER),
    "resnet34": ({"small_input": True, "width": 16}, 16, CLASSIFIER),
    "resnet50": ({"small_input": True, "width": 16}, 16, CLASSIFIER),
}


def test_every_zoo_model_is_listed():
    assert set(ZOO) == set(models.MODEL_NAMES)


def _calls(module, side):
    """Parameter paths (flattened) and the order in which parameterised layers run."""
    order = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)  # a layer is recorded when it finishes
        path = "/".join(context.module.scope.path)
        if context.method_name == "__call__" and path not in order:
            order.append(path)
        return out

    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    return set(flat), order


@pytest.mark.parametrize("name", sorted(ZOO))
def test_head_is_the_last_norm_and_the_classifier(name):
    kwargs, side, expected = ZOO[name]
    module = models.get_model(name, 10, **kwargs)
    paths, order = _calls(module, side)
    head = {p for p in paths if model_lib.is_head_param(p)}
    assert head == expected
    # Structure: the classifier is the last layer to run, and `final_norm`, where a model
    # has one, is the last layer with parameters before it (nothing trainable between).
    with_params = [m for m in order if any(p.startswith(m + "/") for p in paths) and m]
    leaves = [m for m in with_params if not any(o.startswith(m + "/") for o in with_params)]
    assert leaves[-1] == "classifier"
    if "final_norm/scale" in expected:
        assert leaves[-2] == "final_norm"


def test_old_small_cnn_prior_loads_its_last_norm(tmp_path):
    params = models.get_model("small_cnn", 10, width=8).init(
        jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    old = {"conv0": {"kernel": np.full((3, 3, 1, 8), 2.0, np.float32)},
           "norm1": {"scale": np.full(8, 3.0, np.float32), "bias": np.zeros(8, np.float32)}}
    priors.save_prior(str(tmp_path / "prior"), old, {"model": "small_cnn"})
    loaded, info = priors.load_into(str(tmp_path / "prior"), params)
    assert np.all(loaded["final_norm"]["scale"] == 3.0) and info["tensors_loaded"] == 3


@pytest.mark.parametrize("hidden, feature, width", [
    (4096, 8 * 8 * 256, 4096),   # WRN-16-4 at 32 px: the paper's head
    (4096, 16 * 16 * 16, 1024),  # small CNN width 16 at 32 px
    (4096, 4 * 4 * 8, 256),      # tiny maps: at least 256
    (64, 4 * 4 * 8, 64),         # an explicit smaller width is kept
    (512, 16 * 16 * 16, 512),
])
def test_projection_width_follows_the_feature_size(hidden, feature, width):
    assert pretrain.head_width(hidden, feature) == width


def test_build_scales_the_projection_head():
    c = base_config()
    c.model.name = "small_cnn"
    c.model.kwargs.width = 16
    c.pretrain.resolution = 32
    model, _ = pretrain.build(c)
    assert model.head.hidden_dim == 1024           # not the default 4096
    c.pretrain.hidden_dim = 256
    assert pretrain.build(c)[0].head.hidden_dim == 256
