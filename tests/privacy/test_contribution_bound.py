"""Every example contributes at most C to the clipped sum: every model, dtype and method.

The sensitivity of DP-SGD's clipped sum is C only if each example's
contribution, as actually summed, has L2 norm ≤ C. Here each example of a
small batch is summed ALONE (a one-hot mask) through the step-level
accumulate functions the trainer uses (`accumulate_private`: per-example
gradients by vmap; `accumulate_private_fast`: norms and sum from one
backward pass), with augmult K = 2 (crop and flip), in float32 and bfloat16
compute, and the norm of the float32 sum is taken in float64.

The models: one small instance of each architecture of the zoo
(`models.MODEL_NAMES`): the WRN presets are the same class as "wrn" at a
smaller depth and width, ResNet-34/50 the same blocks as ResNet-18 at
fewer blocks per stage (the bound is per layer; depth adds nothing but
compile time). The instances also cover plain and weight-standardised
convolutions, GroupNorm and frozen BatchNorm, the small and the 7x7
stride-2 stem.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import models
from dpjax.train import step as step_lib

B, K, NUM_CLASSES = 4, 2, 5
C = 1e-3        # typical gradient norms here are 0.1–10: nearly every example is clipped
TOL = 1e-6

# name -> (model, input size): a small instance of each zoo architecture.
_INSTANCES = {
    "mlp": (lambda d: models.get_model("mlp", NUM_CLASSES, width=16, depth=2, dtype=d), 8),
    "small_cnn": (lambda d: models.get_model("small_cnn", NUM_CLASSES, width=8, groups=4,
                                             dtype=d), 8),
    "wrn": (lambda d: models.get_model("wrn", NUM_CLASSES, depth=10, width=1, groups=4,
                                       dtype=d), 8),
    "resnet_basic": (lambda d: models.ResNet(NUM_CLASSES, stage_sizes=(1,), width=8, groups=4,
                                             small_input=True, dtype=d), 8),
    "resnet_bottleneck": (lambda d: models.ResNet(NUM_CLASSES, stage_sizes=(1,),
                                                  bottleneck=True, width=4,
                                                  norm="batch_frozen",
                                                  weight_standardization=True, dtype=d), 8),
}
# Which instance stands for each name of the zoo.
ZOO = {"mlp": "mlp", "small_cnn": "small_cnn", "wrn16_4": "wrn", "wrn40_4": "wrn", "wrn": "wrn",
       "resnet18": "resnet_basic", "resnet34": "resnet_basic", "resnet50": "resnet_bottleneck"}


def test_every_model_of_the_zoo_is_covered():
    assert set(ZOO) == set(models.MODEL_NAMES)
    assert isinstance(_INSTANCES["wrn"][0](jnp.float32), type(models.get_model("wrn16_4", 2)))
    for name in ("resnet18", "resnet34", "resnet50"):
        zoo = models.get_model(name, 2)
        ours = _INSTANCES[ZOO[name]][0](jnp.float32)
        assert type(ours) is type(zoo) and ours.bottleneck == zoo.bottleneck


def _variables(model, size, seed=0):
    """Plausible variables of the model's shapes (NumPy; `model.init` compiles slowly):
    kernels ~ N(0, 1/fan_in), scales and variances near 1, biases and means near 0."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
        if name in ("scale", "var"):
            return (1 + 0.2 * rng.uniform(-1, 1, leaf.shape)).astype(leaf.dtype)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _batch(size, seed=1):
    """uint8 images whose contrast differs per example (so do the gradient norms)."""
    rng = np.random.default_rng(seed)
    contrast = np.array([1.0, 0.3, 0.05, 0.6])[:B, None, None, None]
    noise = rng.uniform(-127.5, 127.5, (B, size, size, 3))
    images = np.clip(127.5 + contrast * noise, 0, 255).astype(np.uint8)
    labels = rng.integers(0, NUM_CLASSES, B).astype(np.int32)
    return images, labels


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("instance", list(_INSTANCES))
def test_each_example_alone_contributes_at_most_c(instance, dtype):
    build, size = _INSTANCES[instance]
    model = build(dtype)
    variables = _variables(model, size)
    params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}
    spec = step_lib.InputSpec(mean=(0.5,) * 3, std=(0.2,) * 3, crop_padding=1, flip=True,
                              augmult=K)
    images, labels = _batch(size)
    indices = np.arange(B, dtype=np.int32)
    loss_fn = step_lib.make_example_loss(model, spec, extra)

    # LLVM's optimisation level 0: the same XLA program, compiled in about half the time.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def alone(params, mask):
        """Both methods' accumulators after one micro-batch in which only `mask` counts."""
        trainable, frozen = step_lib.split_params(params, None)
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
        key = jax.random.key(7)
        out = {}
        out["vmap"] = step_lib.accumulate_private(
            trainable, frozen, zeros, step_lib.zero_stats(), images, labels, indices, mask, key,
            C, loss_fn=loss_fn)
        out["fast"] = step_lib.accumulate_private_fast(
            params, zeros, step_lib.zero_stats(), images, labels, indices, mask, key, C,
            model=model, spec=spec, extra=extra, is_trainable=None)
        return out

    ratios = {"vmap": [], "fast": []}
    clipped = {"vmap": 0, "fast": 0}
    for i in range(B):
        out = alone(params, np.arange(B) == i)
        for method, (acc, stats) in out.items():
            leaves = [np.asarray(leaf, np.float32).astype(np.float64)
                      for leaf in jax.tree_util.tree_leaves(acc)]
            ratios[method].append(np.sqrt(sum(np.sum(x * x) for x in leaves)) / C)
            clipped[method] += int(stats.clipped)
    print(f"{instance} {jnp.dtype(dtype).name}: max ‖contribution‖ / C "
          + ", ".join(f"{m} {max(r):.8f}" for m, r in ratios.items()))
    for method in ratios:
        assert clipped[method] >= B - 1, (method, clipped)  # the bound is active
        worst = max(ratios[method])
        assert worst <= 1 + TOL, (method, ratios[method])
        assert worst > 1 - 1e-3  # a clipped example contributes C, not less
