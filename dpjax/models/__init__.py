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
                        sample_shape: Sequence[int] | None = None) -> None:
    """Refuses a model whose forward pass mixes the examples of a batch.

    DP-SGD bounds each example's influence by clipping its own gradient; a
    layer that normalises with batch statistics (training-mode BatchNorm)
    makes every example's output, and gradient, depend on the others, so the
    bound, and ε, no longer hold. Two checks:

    1. The model's fields: `norm="batch"` is refused outright.
    2. Behaviour, for any module: the model runs on a random batch of two
       inputs of `sample_shape` with 'batch_stats' mutable (in float32).
       It is refused if any stored statistic changes, or if any layer's
       output for the batch differs from its output for each example alone.
       GroupNorm and frozen BatchNorm pass.

    Args:
        model: the module, as `get_model` returns it.
        variables: what `model.init` returned ('params', maybe 'batch_stats').
        sample_shape: one input's shape (H, W, C), e.g. the training images'.
            If omitted it is guessed from the first kernel: (32, 32, C_in) for
            a convolution, (1, 1, fan_in) for a dense layer; pass it for
            models whose dense layers depend on the resolution ("small_cnn").

    Raises:
        ConfigError: the model computes statistics across examples.
    """
    if getattr(model, "norm", None) == "batch":
        raise ConfigError(_BATCH_MESSAGE)
    shape = tuple(sample_shape) if sample_shape is not None else _guess_sample_shape(variables)
    probe = model.clone(dtype=np.float32) if hasattr(model, "dtype") else model
    x = jax.random.normal(jax.random.key(0), (2,) + shape)

    def run(inputs):
        return probe.apply(variables, inputs, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=True)

    try:
        _, state = run(x)
        singles = [run(x[i:i + 1])[1]["intermediates"] for i in range(2)]
    except Exception as e:
        if sample_shape is None:
            raise ValueError(f"check_dp_compatible could not run the model on a guessed input "
                             f"of shape {shape}; pass sample_shape=(H, W, C).") from e
        raise
    before = jax.tree_util.tree_leaves(variables.get("batch_stats", {}))
    after = jax.tree_util.tree_leaves(state.get("batch_stats", {}))
    if len(before) != len(after) or any(
            not np.array_equal(a, b) for a, b in zip(before, after)):
        raise ConfigError("the model updates its batch_stats on a training forward pass, so it "
                          "normalises with statistics of the whole batch, which breaks "
                          "per-example DP; use model.kwargs.norm='group', or "
                          "norm='batch_frozen' with statistics from public pre-training.")
    mixed = _first_mixing_layer(state["intermediates"], singles)
    if mixed is not None:
        raise ConfigError(f"model layer {mixed!r} computes its output for one example from "
                          f"other examples of the batch, which breaks per-example DP; use "
                          f"model.kwargs.norm='group' (GroupNorm) or frozen statistics.")


def _guess_sample_shape(variables: Any) -> tuple[int, ...]:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
    for path, leaf in flat.items():
        if path[-1] == "kernel" and np.ndim(leaf) == 4:
            return (32, 32, int(np.shape(leaf)[2]))
        if path[-1] == "kernel" and np.ndim(leaf) == 2:
            return (1, 1, int(np.shape(leaf)[0]))
    raise ValueError("check_dp_compatible found no kernel to guess the input shape from; "
                     "pass sample_shape=(H, W, C).")


def _first_mixing_layer(batched: Any, singles: list) -> str | None:
    """Path of the first captured layer output where batch != per-example outputs."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(batched))
    flat_singles = [flax.traverse_util.flatten_dict(flax.core.unfreeze(s)) for s in singles]
    for path, outputs in flat.items():
        for i, out in enumerate(outputs):
            pieces = [s[path][i] for s in flat_singles]
            if not all(isinstance(o, jax.Array) for o in [out, *pieces]):
                continue
            out = np.asarray(out, np.float32)
            if out.ndim == 0 or out.shape[0] != 2 or any(p.shape[0] != 1 for p in pieces):
                continue
            alone = np.concatenate([np.asarray(p, np.float32) for p in pieces])
            scale = max(1.0, float(np.max(np.abs(out))))
            if not np.allclose(out, alone, rtol=1e-3, atol=1e-4 * scale):
                return "/".join(str(p) for p in path[:-1]) or "(top level)"
    return None
