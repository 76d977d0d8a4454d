"""Model zoo: `get_model(name, num_classes, **kwargs)` and the DP compatibility check.

Every model is a `flax.linen.Module` called as `model.apply(variables, x)`
with x float32 NHWC, already normalised, returning float32 logits
(N, num_classes); `return_feature_map=True` returns the last feature map
before pooling instead (DP-RandP's projection head uses it). A `dtype` field
sets the computation dtype (bf16 mixed precision); parameters are float32.

DP-SGD needs each example's gradient to depend on that example only, so the
default normalisation everywhere is GroupNorm, never training-mode BatchNorm
(De et al. 2022). `check_dp_compatible` enforces this before private
training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError
from dpjax.models.cnn import MLP, SmallCNN
from dpjax.models.layers import NORM_KINDS, WSConv, norm_layer, standardize_kernel
from dpjax.models.resnet import ResNet
from dpjax.models.wrn import WideResNet

__all__ = [
    "MLP", "MODEL_NAMES", "NORM_KINDS", "ResNet", "SmallCNN", "WSConv", "WideResNet",
    "check_dp_compatible", "get_model", "norm_layer", "standardize_kernel",
]

# name -> (module class, fields the name fixes)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "small_cnn": (SmallCNN, {}),
    "wrn16_4": (WideResNet, dict(depth=16, width=4)),
    "wrn40_4": (WideResNet, dict(depth=40, width=4)),
    "wrn": (WideResNet, {}),  # any depth and width through kwargs (e.g. WRN-28-10)
    "resnet18": (ResNet, dict(stage_sizes=(2, 2, 2, 2), bottleneck=False)),
    "resnet34": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=False)),
    "resnet50": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=True)),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The model called `name` with `num_classes` outputs; `kwargs` set its fields.

    `kwargs` are `config.model.kwargs` (plus `dtype` from `config.model.dtype`),
    e.g. `get_model("resnet18", 2, norm="batch_frozen", small_input=True)`.

    Raises:
        ConfigError: unknown `name`, a field the model does not have, a field
            the name already fixes (`depth` of "wrn16_4": use "wrn"), or a
            value out of range.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown model.name={name!r}; valid names: {', '.join(MODEL_NAMES)}.")
    cls, preset = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name", "num_classes")]
    for key in kwargs:
        if key in preset:
            raise ConfigError(f"model.kwargs.{key} is fixed to {preset[key]!r} by "
                              f"model.name={name!r}; remove it"
                              + (" or use model.name='wrn'." if cls is WideResNet else "."))
        if key not in fields:
            allowed = ", ".join(f for f in fields if f not in preset)
            raise ConfigError(f"model.kwargs.{key} is not a field of model {name!r}; "
                              f"valid fields: {allowed}.")
    return cls(num_classes=num_classes, **preset, **kwargs)


_BATCH_MESSAGE = (
    "model.kwargs.norm='batch' uses BatchNorm in training mode, which mixes examples within a "
    "batch and breaks per-example DP; use norm='group', or norm='batch_frozen' with statistics "
    "from public pre-training.")


def check_dp_compatible(model: nn.Module, variables: Any,
                        sample_shape: Sequence[int] | None = None,
                        apply_kwargs: dict | None = None) -> None:
    """Refuses a model whose forward pass mixes the examples of a batch.

    DP-SGD bounds each example's influence by clipping its own gradient; a
    layer that normalises with batch statistics (training-mode BatchNorm)
    makes every example's output, and gradient, depend on the others, so the
    bound, and ε, no longer hold. Two checks:

    1. The model's fields: `norm="batch"` is refused outright.
    2. Behaviour, for any module: the model runs on a random batch of two
       inputs of `sample_shape` with 'batch_stats' mutable (in float32).
       It is refused if any stored statistic changes, or if any layer's
       output for the first example changes when the second example is
       replaced by another. Both batches have the same shape, so they run
       the same compiled program: on a GPU, where a batch of one may pick
       another convolution algorithm (TF32, bf16) and differ from a batch
       of two by 1e-3, the comparison stays exact. GroupNorm and frozen
       BatchNorm pass.

    Args:
        model: the module, as `get_model` returns it.
        variables: what `model.init` returned ('params', maybe 'batch_stats').
        sample_shape: one input's shape (H, W, C), e.g. the training images'.
            If omitted, a shape that reproduces the parameters' shapes is
            looked for (square sizes 32, 28, 8, 16, 64, 224); pass it when
            you know it.
        apply_kwargs: extra `apply` arguments of a training step (e.g.
            `train=True` for models that take it).

    Raises:
        ConfigError: the model computes statistics across examples.
    """
    if getattr(model, "norm", None) == "batch":
        raise ConfigError(_BATCH_MESSAGE)
    shape = tuple(sample_shape) if sample_shape is not None else _guess_sample_shape(
        model, variables)
    probe = model.clone(dtype=np.float32) if hasattr(model, "dtype") else model
    x = jax.random.normal(jax.random.key(0), (2,) + shape)
    # The same first example beside a different second one.
    x_other = x.at[1].set(jax.random.normal(jax.random.key(1), shape))

    names = []  # layer paths in the order the layers return (jit would sort dict keys)
    training = dict(apply_kwargs or {})
    # Layer outputs are compared without random layers (a dropout mask depends on the
    # batch's shape): `train=False` where the model takes it; batch statistics are
    # checked in training mode.
    compare = {k: v for k, v in training.items() if k != "rngs"}
    if "train" in compare:
        compare["train"] = False

    def run(inputs, kwargs):
        _, state = probe.apply(variables, inputs, mutable=["batch_stats", "intermediates"],
                               capture_intermediates=True, **kwargs)
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state["intermediates"]))
        names[:] = ["/".join(map(str, path[:-1])) or "(top level)" for path in flat]
        return state.get("batch_stats", {}), list(flat.values())

    stats, _ = jax.jit(lambda inputs: run(inputs, training))(x)
    run_compare = jax.jit(lambda inputs: run(inputs, compare))
    _, batched = run_compare(x)
    _, beside_other = run_compare(x_other)
    before = jax.tree_util.tree_leaves(variables.get("batch_stats", {}))
    after = jax.tree_util.tree_leaves(stats)
    if len(before) != len(after) or any(
            not np.array_equal(a, b) for a, b in zip(before, after)):
        raise ConfigError("the model updates its batch_stats on a training forward pass, so it "
                          "normalises with statistics of the whole batch, which breaks "
                          "per-example DP; use model.kwargs.norm='group', or "
                          "norm='batch_frozen' with statistics from public pre-training.")
    for name, outputs, other in zip(names, batched, beside_other):
        if _mixes(outputs, other):
            raise ConfigError(f"model layer {name!r} computes its output for one example from "
                              f"other examples of the batch, which breaks per-example DP; use "
                              f"model.kwargs.norm='group' (GroupNorm) or frozen statistics.")


def _guess_sample_shape(model: nn.Module, variables: Any) -> tuple[int, ...]:
    """An input shape (H, W, C) for which `model.init` makes `variables`' parameter shapes.

    Tries square sizes 32, 28, 8, 16, 64, 224 with every input-channel count
    of a conv kernel (a dense kernel's fan-in as (1, 1, fan_in) for MLPs),
    by shape inference only.
    """
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    kernels = [leaf.shape for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
    channels = sorted({s[2] for s in kernels if len(s) == 4})
    candidates = [(size, size, c) for size in (32, 28, 8, 16, 64, 224) for c in channels]
    candidates += [(1, 1, s[0]) for s in kernels if len(s) == 2]
    want = jax.tree_util.tree_map(np.shape, flax.core.unfreeze(variables["params"]))
    for shape in candidates:
        try:
            got = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + shape))
        except Exception:  # a shape the model cannot take: try the next one
            continue
        if jax.tree_util.tree_map(lambda a: a.shape, flax.core.unfreeze(got["params"])) == want:
            return shape
    raise ValueError("check_dp_compatible could not infer the model's input shape from its "
                     "parameters; pass sample_shape=(H, W, C).")


def _mixes(outputs: Any, beside_other: Any) -> bool:
    """Whether a layer's output for example 0 changed when example 1 was replaced."""
    for out, other in zip(jax.tree_util.tree_leaves(outputs),
                          jax.tree_util.tree_leaves(beside_other)):
        out, other = np.asarray(out, np.float32), np.asarray(other, np.float32)
        if out.ndim == 0 or out.shape[0] != 2 or other.shape != out.shape:
            continue  # not an (examples, ...) array
        scale = max(1.0, float(np.max(np.abs(out[0]))))
        if not np.allclose(out[0], other[0], rtol=1e-5, atol=1e-6 * scale):
            return True
    return False
