"""Model zoo: `get_model(name, num_classes, **kwargs)` and the DP compatibility check."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.models.cnn import MLP, SmallCNN
from dpjax.models.resnet import ResNet
from dpjax.models.wrn import WideResNet

_REGISTRY = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "wrn16_4": functools.partial(WideResNet, depth=16, width=4),
    "wrn40_4": functools.partial(WideResNet, depth=40, width=4),
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
}
MODEL_NAMES = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The model called `name`; kwargs set its fields (model.kwargs in a config)."""
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown model.name={name!r}; valid names: {', '.join(MODEL_NAMES)}.")
    factory = _REGISTRY[name]
    cls = factory.func if isinstance(factory, functools.partial) else factory
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(f"model.kwargs.{unknown[0]} is not a field of model {name!r}; "
                          f"valid: {', '.join(sorted(fields - {'num_classes'}))}.")
    if "norm" in kwargs and kwargs["norm"] not in ("group", "batch_frozen", "batch"):
        raise ConfigError(f"Expected model.kwargs.norm in ('group', 'batch_frozen', 'batch'), "
                          f"got {kwargs['norm']!r}.")
    return factory(num_classes=num_classes, **kwargs)


def check_dp_compatible(model: nn.Module, variables, sample_shape: tuple) -> None:
    """Refuses models that compute statistics across examples in training mode.

    Runs the model on a random batch of two inputs of `sample_shape` (H, W, C)
    with the batch-statistics collection mutable: if any statistic changes,
    the forward pass mixes examples (training-mode BatchNorm), which breaks
    per-example DP. Frozen BatchNorm and GroupNorm pass.
    """
    if "batch_stats" not in variables:
        return
    x = jax.random.normal(jax.random.key(0), (2,) + tuple(sample_shape))
    _, updated = model.apply(variables, x, mutable=["batch_stats"])
    changed = any(not jnp.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(variables["batch_stats"]),
        jax.tree_util.tree_leaves(updated["batch_stats"])))
    if changed:
        raise ConfigError(
            f"model.kwargs.norm={getattr(model, 'norm', 'batch')!r} uses BatchNorm in training "
            "mode, which mixes the examples of a batch and breaks per-example DP: use "
            "norm='group', or norm='batch_frozen' with statistics from public pre-training.")
