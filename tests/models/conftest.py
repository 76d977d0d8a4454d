"""Fixtures for the model tests."""

import jax
import numpy as np
import pytest


@pytest.fixture
def init():
    """`init(model, x)`: variables of the model's shapes, made cheaply with NumPy.

    `model.init` of a ResNet takes seconds to compile on a CPU (mostly its
    random number generation); these tests need plausible values, not the
    exact initialisation (whose shapes come from `jax.eval_shape(model.init)`
    all the same): kernels ~ N(0, 1/fan_in), scales and variances 1, biases
    and means 0.
    """
    def _init(model, x, seed=0):
        rng = np.random.default_rng(seed)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)

        def fill(path, leaf):
            name = path[-1].key
            if name == "kernel":
                fan_in = int(np.prod(leaf.shape[:-1]))
                return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
            if name in ("scale", "var"):
                return np.ones(leaf.shape, leaf.dtype)
            return np.zeros(leaf.shape, leaf.dtype)

        return jax.tree_util.tree_map_with_path(fill, shapes)
    return _init
